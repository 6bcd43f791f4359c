"""Training examples from (prompt, response) text: token ids, response and changed-token masks,
truncation and collation into padded batches. Used by the reward models and by PPO's prompts.

Tokenisation, and the pitfalls it avoids:

* The prompt is rendered by template (:func:`render_prompt`): ``auto`` = the tokenizer's chat
  template when it has one (``apply_chat_template(..., add_generation_prompt=True)``), else plain
  ``"{prompt}\n"``; ``alpaca`` = the Alpaca template (with / without input) AlpacaFarm's SFT
  model was trained on. Instruction and input stay separate (:class:`~trainer.data.formats.Prompt`)
  until the template joins them.
* Prompt and response are tokenised **separately** (``add_special_tokens=False``) and
  concatenated, so no token straddles the boundary and the response mask is exact. For
  SentencePiece tokenizers (LLaMA) the response then starts with a ``▁``-prefixed piece (a
  leading space), identically for the original and the edited response, so their alignment
  never differs at the first token because of context.
* BOS is prepended once (when the tokenizer has one and the template did not already put it
  there); EOS is appended to the response (and counts as a response token) unless the
  response was truncated.
* Byte-fallback pieces (characters outside the vocabulary) are ordinary tokens to the diff;
  character spans reach them through the offsets (all pieces of one character share its range).

Masks are over the whole sequence: ``response_mask`` is True on response tokens (never prompt
or padding), ``changed_mask`` is True on changed response tokens (U1, the paper's §3.2 alignment) and always a
subset of ``response_mask``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trainer.data.align import char_spans_to_token_mask, token_diff
from trainer.data.formats import Prompt
from trainer.errors import ConfigError

__all__ = [
    "PROMPT_TEMPLATES",
    "TokenizedExample",
    "build_example",
    "build_pair",
    "build_prompt",
    "checked_template",
    "collate",
    "render_prompt",
    "resolve_template",
]


@dataclass
class TokenizedExample:
    """One tokenised prompt + response.

    Attributes:
        input_ids: ``[T]`` prompt ids then response ids (then EOS).
        response_mask: ``[T]`` True on response tokens (EOS included).
        changed_mask: ``[T]`` True on changed response tokens; False on the prompt.
        prompt_len: number of prompt tokens (the response starts there).
        truncated: the prompt or the response was cut to fit ``max_length``.
    """

    input_ids: list[int]
    response_mask: list[bool]
    changed_mask: list[bool]
    prompt_len: int
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)


PROMPT_TEMPLATES = ("auto", "plain", "alpaca", "chat")

# The Alpaca prompt (Taori et al. 2023), on which AlpacaFarm's LLaMA-7B SFT model was trained:
# one form with an input, one without.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)


def resolve_template(tokenizer: Any, template: str = "auto") -> str:
    """The concrete template name: ``auto`` is ``chat`` when the tokenizer has a chat template,
    else ``plain``.

    Raises:
        ValueError: an unknown name, or ``chat`` for a tokenizer without a chat template.
    """
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"prompt_template={template!r} is not one of {PROMPT_TEMPLATES}")
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "auto":
        return "chat" if has_chat else "plain"
    if template == "chat" and not has_chat:
        raise ValueError("prompt_template='chat' but the tokenizer has no chat template")
    return template


def checked_template(tokenizer: Any, template: str) -> str:
    """:func:`resolve_template` for a trainer: a template the tokenizer cannot render is a config
    error naming the key."""
    try:
        return resolve_template(tokenizer, template)
    except ValueError as e:
        raise ConfigError(f"config key 'prompt_template': {e}") from None


def render_prompt(tokenizer: Any, prompt: str | Prompt, prompt_template: str = "auto") -> str:
    """The prompt text the model sees, by template (:func:`resolve_template`):

    * ``chat`` — one user turn (instruction, then a blank line and the input) and the
      generation prompt, through the tokenizer's chat template;
    * ``plain`` — ``"{prompt}\n"`` with the same joined text;
    * ``alpaca`` — the Alpaca template, its with-input form when the input is not blank.

    ``prompt`` is a plain string (an instruction with no separate input) or a
    :class:`~trainer.data.formats.Prompt`.
    """
    p = prompt if isinstance(prompt, Prompt) else Prompt(prompt)
    template = resolve_template(tokenizer, prompt_template)
    if template == "chat":
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": p.text}], tokenize=False, add_generation_prompt=True
        )
    if template == "alpaca":
        if p.input.strip():
            return ALPACA_WITH_INPUT.replace("{instruction}", p.instruction).replace("{input}", p.input)
        return ALPACA_NO_INPUT.replace("{instruction}", p.instruction)
    return p.text + "\n"


def _encode(
    tokenizer: Any, text: str, offsets: bool = False
) -> tuple[list[int], list[tuple[int, int]] | None]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)
    return list(enc["input_ids"]), ([tuple(o) for o in enc["offset_mapping"]] if offsets else None)


def _prompt_ids(tokenizer: Any, prompt: str | Prompt, prompt_template: str, add_bos: bool) -> list[int]:
    ids, _ = _encode(tokenizer, render_prompt(tokenizer, prompt, prompt_template))
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def _assemble(
    prompt_ids: list[int],
    response_ids: list[int],
    changed: list[bool],
    eos_id: int | None,
    max_length: int | None,
    min_response_tokens: int,
    keep_first_prompt_token: bool,
) -> TokenizedExample:
    """Concatenate, then truncate: the prompt from the left (keeping BOS) down to what leaves
    ``min_response_tokens`` for the response, then the response from the right; EOS only when
    the response is whole. Every mask is sliced with the same indices as the ids."""
    resp = list(response_ids) + ([eos_id] if eos_id is not None else [])
    chg = list(changed) + ([False] if eos_id is not None else [])
    truncated = False
    if max_length is not None and len(prompt_ids) + len(resp) > max_length:
        truncated = True
        want_resp = min(len(resp), max(min_response_tokens, max_length - len(prompt_ids)), max_length)
        keep_prompt = max_length - want_resp
        if keep_prompt < len(prompt_ids):
            head = prompt_ids[:1] if keep_first_prompt_token and keep_prompt > 0 else []
            tail = keep_prompt - len(head)
            prompt_ids = head + (prompt_ids[len(prompt_ids) - tail :] if tail > 0 else [])
        n = max_length - len(prompt_ids)
        if n < len(resp):  # a cut response has no EOS: the model did not end it there
            resp, chg = list(response_ids)[:n], list(changed)[:n]
    p = len(prompt_ids)
    return TokenizedExample(
        input_ids=prompt_ids + resp,
        response_mask=[False] * p + [True] * len(resp),
        changed_mask=[False] * p + chg,
        prompt_len=p,
        truncated=truncated,
    )


def build_example(
    tokenizer: Any,
    prompt: str | Prompt,
    response: str,
    *,
    changed: Sequence[bool] | None = None,
    bad_spans: Sequence[tuple[int, int]] | None = None,
    max_length: int | None = None,
    min_response_tokens: int = 16,
    prompt_template: str = "auto",
    add_bos: bool = True,
    add_eos: bool = True,
) -> TokenizedExample:
    """Tokenise one (prompt, response).

    Args:
        tokenizer: a Hugging Face tokenizer (a fast one when ``bad_spans`` is given: offsets).
        prompt: the prompt (a string, or a :class:`~trainer.data.formats.Prompt` with a separate
            input), rendered by :func:`render_prompt`.
        response: response text.
        changed: per response token (as tokenised here, without EOS), True where changed.
        bad_spans: alternatively, character spans ``[start, end)`` of ``response`` marked bad;
            mapped to tokens through the offsets (:func:`trainer.data.align.char_spans_to_token_mask`).
        max_length: truncate to at most this many tokens (see :func:`_assemble`).
        min_response_tokens: response tokens kept at least when the prompt is cut.
        prompt_template: ``auto`` | ``plain`` | ``alpaca`` | ``chat`` (:func:`render_prompt`).
        add_bos: prepend BOS when the tokenizer has one and the prompt does not start with it.
        add_eos: append EOS to a whole response.

    Returns:
        A :class:`TokenizedExample`.
    """
    if changed is not None and bad_spans is not None:
        raise ValueError("give either changed or bad_spans, not both")
    resp_ids, offsets = _encode(tokenizer, response, offsets=bad_spans is not None)
    if bad_spans is not None:
        changed = char_spans_to_token_mask(offsets, bad_spans)
    changed = list(changed) if changed is not None else [False] * len(resp_ids)
    if len(changed) != len(resp_ids):
        raise ValueError(f"changed has {len(changed)} entries for {len(resp_ids)} response tokens")
    bos = getattr(tokenizer, "bos_token_id", None)
    return _assemble(
        _prompt_ids(tokenizer, prompt, prompt_template, add_bos),
        resp_ids,
        changed,
        tokenizer.eos_token_id if add_eos else None,
        max_length,
        min_response_tokens,
        keep_first_prompt_token=add_bos and bos is not None,
    )


def build_prompt(
    tokenizer: Any,
    prompt: str | Prompt,
    max_length: int | None = None,
    prompt_template: str = "auto",
) -> TokenizedExample:
    """Tokenise a prompt alone (for generation: PPO rollouts, evaluation), rendered and
    BOS-prefixed exactly as :func:`build_example` renders it for training, cut from the left to
    ``max_length`` tokens (BOS kept). Collate with ``padding_side="left"``."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return _assemble(
        _prompt_ids(tokenizer, prompt, prompt_template, add_bos=True),
        [],
        [],
        None,
        max_length,
        0,
        keep_first_prompt_token=bos is not None,
    )


def build_pair(
    tokenizer: Any,
    prompt: str | Prompt,
    original: str,
    edited: str,
    **kwargs: Any,
) -> tuple[TokenizedExample, TokenizedExample]:
    """Tokenise an (edited, original) pair with changed-token masks from the token diff.

    The diff runs on the whole responses before any truncation, so truncating never moves the
    alignment. Keyword arguments go to :func:`build_example`.

    Returns:
        ``(edited_example, original_example)``: the chosen side (τⁱ, edited) first, then the
        rejected side (τʲ, original), as in the paper's eq. 3.
    """
    orig_ids, _ = _encode(tokenizer, original)
    edit_ids, _ = _encode(tokenizer, edited)
    orig_changed, edit_changed = token_diff(orig_ids, edit_ids)
    return (
        build_example(tokenizer, prompt, edited, changed=edit_changed, **kwargs),
        build_example(tokenizer, prompt, original, changed=orig_changed, **kwargs),
    )


def collate(
    examples: Sequence[TokenizedExample],
    pad_token_id: int,
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pad a list of examples into a batch.

    Right padding (the default) keeps every sequence at positions ``0..T_b-1``: what training
    the reward model wants. Left padding aligns the *ends*, what batched generation
    wants; position ids must then be derived from ``attention_mask``.

    Args:
        examples: the examples.
        pad_token_id: id written into padding (never attended, never in a mask).
        padding_side: ``"right"`` or ``"left"``.
        pad_to_multiple_of: round ``T`` up to a multiple of this.

    Returns:
        ``input_ids`` ``[B, T]`` int64; ``attention_mask``, ``response_mask``, ``changed_mask``
        ``[B, T]`` bool; ``response_lengths`` ``[B]`` int64 (T^i per row).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not examples:
        raise ValueError("collate needs at least one example")
    T = max(len(e) for e in examples)
    if pad_to_multiple_of:
        T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    B = len(examples)
    input_ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.bool)
    response = torch.zeros((B, T), dtype=torch.bool)
    changed = torch.zeros((B, T), dtype=torch.bool)
    for b, e in enumerate(examples):
        n = len(e)
        sl = slice(0, n) if padding_side == "right" else slice(T - n, T)
        input_ids[b, sl] = torch.tensor(e.input_ids, dtype=torch.long)
        attention[b, sl] = True
        response[b, sl] = torch.tensor(e.response_mask, dtype=torch.bool)
        changed[b, sl] = torch.tensor(e.changed_mask, dtype=torch.bool)
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "response_mask": response,
        "changed_mask": changed,
        "response_lengths": response.sum(dim=1),
    }
