"""Token-level alignment of an original response with its minimal edit (Xu et al. 2024, §2.2:
U0 = unchanged tokens, U1 = changed ones).

Two ways to mark tokens as *changed*:

* :func:`token_diff` — a diff on token ids. The alignment is a longest common subsequence
  (LCS) of the two id sequences, computed by ``rapidfuzz.distance.Indel.opcodes`` (the Indel
  distance is ``len(a) + len(b) - 2 * LCS``, so its optimal edit script keeps an LCS). Tokens
  in the alignment are *unchanged* (U0); every other token is *changed* (U1): deleted or
  replaced tokens on the original side, inserted or replacing tokens on the edited side.
* :func:`char_spans_to_token_mask` — character spans ``[start, end)`` marked as bad on a
  response (as in qa-feedback's span errors), mapped to tokens through the tokenizer's
  offsets: a token is changed when its characters overlap a span.

Both return one boolean per token of each side, so they plug into the same masks.

Example::

    >>> token_diff([5, 6, 7, 8], [5, 9, 7, 8, 10])
    ([False, True, False, False], [False, True, False, False, True])
"""

from __future__ import annotations

from collections.abc import Sequence

from rapidfuzz.distance import Indel

__all__ = ["aligned_pairs", "char_spans_to_token_mask", "token_diff", "token_similarity"]


def aligned_pairs(original_ids: Sequence[int], edited_ids: Sequence[int]) -> list[tuple[int, int]]:
    """Positions ``(i, j)`` with ``original_ids[i] == edited_ids[j]`` kept by the alignment.

    The pairs are strictly increasing in both ``i`` and ``j`` and their number is the length
    of a longest common subsequence of the two sequences.

    Args:
        original_ids: token ids of the original response, length ``T_j``.
        edited_ids: token ids of the edited response, length ``T_i``.

    Returns:
        The aligned index pairs, in order.
    """
    pairs: list[tuple[int, int]] = []
    for op in Indel.opcodes(list(original_ids), list(edited_ids)):
        if op.tag == "equal":
            pairs.extend(zip(range(op.src_start, op.src_end), range(op.dest_start, op.dest_end)))
    return pairs


def token_diff(original_ids: Sequence[int], edited_ids: Sequence[int]) -> tuple[list[bool], list[bool]]:
    """Changed-token masks (U1) of an (original, edited) pair of token-id sequences.

    Args:
        original_ids: ids of the original (less-preferred) response, length ``T_j``.
        edited_ids: ids of the edited response, length ``T_i``.

    Returns:
        ``(original_changed, edited_changed)``: lists of length ``T_j`` and ``T_i``; True where
        the token is not part of the LCS alignment (U1), False where it is (U0). Both sides
        have the same number of False entries, and the tokens at those positions, read in
        order, are identical.
    """
    original_changed = [True] * len(original_ids)
    edited_changed = [True] * len(edited_ids)
    for i, j in aligned_pairs(original_ids, edited_ids):
        original_changed[i] = False
        edited_changed[j] = False
    return original_changed, edited_changed


def token_similarity(a: Sequence, b: Sequence) -> float:
    """Normalised LCS similarity ``2 * LCS / (len(a) + len(b))`` in [0, 1] (1.0 for two empties).

    Used by the edit collector's "edit is not minimal" gate.
    """
    return float(Indel.normalized_similarity(list(a), list(b)))


def char_spans_to_token_mask(
    offsets: Sequence[tuple[int, int]],
    spans: Sequence[tuple[int, int]],
) -> list[bool]:
    """Mark the tokens whose characters overlap any of the character spans.

    Args:
        offsets: per token, its ``(start, end)`` character range in the response, as returned
            by a fast tokenizer with ``return_offsets_mapping=True``. SentencePiece pieces with
            a leading ``▁`` may include the preceding space in their range, and byte-fallback
            pieces of one character all share that character's range: both are handled by the
            overlap rule. Special tokens (empty ``(0, 0)`` ranges) are never marked.
        spans: bad character ranges ``[start, end)`` of the response; empty or inverted spans
            are ignored, overlapping spans are fine.

    Returns:
        One boolean per token: True where ``[tok_start, tok_end)`` intersects a span. A token
        whose range is only whitespace leading into a span (the ``▁`` of ``"▁word"``) counts,
        since the piece carries the word.
    """
    merged = sorted((int(s), int(e)) for s, e in spans if int(e) > int(s))
    mask = []
    for start, end in offsets:
        hit = False
        if end > start:
            for s, e in merged:
                if s >= end:
                    break
                if e > start:
                    hit = True
                    break
        mask.append(hit)
    return mask
