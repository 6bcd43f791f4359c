"""Token alignment (trainer.data.align): LCS property tests, char-span masks, and real human edits
(qa-feedback dev set) tokenised with the real LLaMA SentencePiece tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainer.data.align import aligned_pairs, char_spans_to_token_mask, token_diff, token_similarity

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TOKENIZER_DIR = SHARED_DATA / "llama_tokenizer"
QA_FEEDBACK = SHARED_DATA / "qa_feedback" / "dev_feedback.json"


def lcs_length_reference(a: list[int], b: list[int]) -> int:
    """Textbook O(len(a)·len(b)) LCS length — the reference the library is checked against."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def check_alignment(a: list[int], b: list[int]) -> tuple[list[bool], list[bool]]:
    """Assert every invariant of token_diff on (a, b) except optimality; return the masks."""
    oc, ec = token_diff(a, b)
    assert len(oc) == len(a) and len(ec) == len(b)
    kept_a = [t for t, c in zip(a, oc) if not c]
    kept_b = [t for t, c in zip(b, ec) if not c]
    assert kept_a == kept_b, "unchanged tokens read in order differ between the two sides"
    return oc, ec


# 1. small hand-worked cases
def test_token_diff_hand_example():
    # original 5 6 7 8 ; edited 5 9 7 8 10: 6 replaced by 9, 10 appended. LCS = 5 7 8.
    oc, ec = token_diff([5, 6, 7, 8], [5, 9, 7, 8, 10])
    assert oc == [False, True, False, False]
    assert ec == [False, True, False, False, True]


@pytest.mark.parametrize(
    "a,b,expected",
    [
        ([], [], ([], [])),
        ([1, 2], [], ([True, True], [])),
        ([], [3], ([], [True])),
        ([1, 2, 3], [1, 2, 3], ([False] * 3, [False] * 3)),
        ([1, 2], [3, 4], ([True, True], [True, True])),
        ([1, 1, 1], [1], (None, [False])),  # which 1 is kept is not specified; counted below
    ],
)
def test_token_diff_edge_cases(a, b, expected):
    oc, ec = check_alignment(a, b)
    if expected[0] is not None:
        assert oc == expected[0]
    assert ec == expected[1]
    assert oc.count(False) == ec.count(False) == lcs_length_reference(a, b)


def test_token_similarity():
    assert token_similarity([], []) == 1.0
    assert token_similarity([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert token_similarity([1, 2], [3, 4]) == 0.0
    # LCS 3 of lengths 4 and 5 -> 2*3/9
    assert token_similarity([5, 6, 7, 8], [5, 9, 7, 8, 10]) == pytest.approx(6 / 9)


# 2. properties: the alignment is an LCS and the masks are consistent
small_ids = st.lists(st.integers(min_value=0, max_value=5), max_size=40)
big_ids = st.lists(st.integers(min_value=0, max_value=2**31 - 1), max_size=20)


@given(small_ids, small_ids)
def test_token_diff_is_lcs(a, b):
    oc, ec = check_alignment(a, b)
    assert oc.count(False) == ec.count(False) == lcs_length_reference(a, b)


@given(big_ids, small_ids)
def test_token_diff_is_lcs_large_ids(a, b):
    oc, _ = check_alignment(a + b, b + a)
    assert oc.count(False) == lcs_length_reference(a + b, b + a)


@given(small_ids, st.data())
def test_token_diff_of_a_pure_insertion(a, data):
    """Inserting tokens into a keeps all of a unchanged, and changes exactly len(insert) tokens."""
    pos = data.draw(st.integers(0, len(a)))
    ins = data.draw(st.lists(st.integers(6, 9), min_size=1, max_size=5))
    b = a[:pos] + ins + a[pos:]
    oc, ec = check_alignment(a, b)
    assert not any(oc)
    assert ec == [False] * pos + [True] * len(ins) + [False] * (len(a) - pos)


@given(small_ids, small_ids)
def test_aligned_pairs_are_increasing_matches(a, b):
    pairs = aligned_pairs(a, b)
    for (i0, j0), (i1, j1) in zip(pairs, pairs[1:]):
        assert i1 > i0 and j1 > j0
    assert all(a[i] == b[j] for i, j in pairs)


# 3. character spans -> token masks
def test_char_spans_to_token_mask():
    # "Hello world ok" with SentencePiece-style offsets ("▁world" includes its space).
    offsets = [(0, 5), (5, 11), (11, 14), (0, 0)]  # last: a special token
    assert char_spans_to_token_mask(offsets, [(6, 8)]) == [False, True, False, False]
    assert char_spans_to_token_mask(offsets, [(5, 6)]) == [False, True, False, False]  # the space
    assert char_spans_to_token_mask(offsets, [(4, 12)]) == [True, True, True, False]
    assert char_spans_to_token_mask(offsets, [(11, 11), (9, 3)]) == [False] * 4  # empty, inverted
    assert char_spans_to_token_mask(offsets, []) == [False] * 4
    assert char_spans_to_token_mask(offsets, [(12, 13), (0, 1)]) == [True, False, True, False]


# 4. real human minimal edits with the real LLaMA tokenizer
@pytest.fixture(scope="module")
def llama_tokenizer():
    if not (TOKENIZER_DIR / "tokenizer.model").exists():
        pytest.skip(f"shared data absent: {TOKENIZER_DIR}")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("sentencepiece")
    return transformers.LlamaTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="module")
def qa_feedback():
    if not QA_FEEDBACK.exists():
        pytest.skip(f"shared data absent: {QA_FEEDBACK}")
    return json.loads(QA_FEEDBACK.read_text())


def test_real_edits_alignment(llama_tokenizer, qa_feedback):
    """Every dev example: masks consistent; the first 25 also checked optimal against the DP."""
    tok = llama_tokenizer
    n_changed = 0
    for k, ex in enumerate(qa_feedback):
        orig = tok(ex["prediction 1"], add_special_tokens=False)["input_ids"]
        edit = tok(ex["feedback"]["corrected-prediction"], add_special_tokens=False)["input_ids"]
        assert orig and tok.bos_token_id not in orig
        oc, ec = check_alignment(orig, edit)
        if k < 25:
            assert oc.count(False) == lcs_length_reference(orig, edit), f"example {k}: not an LCS"
        n_changed += any(oc) or any(ec)
    assert n_changed >= 0.9 * len(qa_feedback)  # annotators edited (almost) every prediction


def test_real_edits_agree_with_human_error_spans(llama_tokenizer, qa_feedback):
    """Tokens inside the annotators' error spans are mostly removed/replaced by their own
    corrections, tokens outside mostly kept: the token diff recovers the human labels."""
    tok = llama_tokenizer
    in_span = in_span_changed = out_span = out_span_changed = 0
    for ex in qa_feedback:
        enc = tok(ex["prediction 1"], add_special_tokens=False, return_offsets_mapping=True)
        edit = tok(ex["feedback"]["corrected-prediction"], add_special_tokens=False)["input_ids"]
        oc, _ = token_diff(enc["input_ids"], edit)
        spans = [(e["start"], e["end"]) for e in ex["feedback"]["errors"]]
        bad = char_spans_to_token_mask(enc["offset_mapping"], spans)
        for b, c in zip(bad, oc):
            in_span += b
            in_span_changed += b and c
            out_span += not b
            out_span_changed += (not b) and c
    # Measured on the dev set: 88% and 9%.
    assert in_span_changed / in_span > 0.8
    assert out_span_changed / out_span < 0.15


def test_real_char_spans_cover_their_text(llama_tokenizer, qa_feedback):
    """The marked tokens of each error span cover the span's characters, and no marked token
    lies wholly outside every span (byte-fallback and ▁-prefixed pieces included)."""
    tok = llama_tokenizer
    for ex in qa_feedback[:100]:
        text = ex["prediction 1"]
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        for err in ex["feedback"]["errors"]:
            s, e = err["start"], err["end"]
            mask = char_spans_to_token_mask(enc["offset_mapping"], [(s, e)])
            marked = [off for off, m in zip(enc["offset_mapping"], mask) if m]
            if text[s:e].strip():
                assert marked and marked[0][0] <= s and marked[-1][1] >= min(e, len(text))
            assert all(a < e and b > s for a, b in marked)


def test_byte_fallback_and_leading_space(llama_tokenizer):
    """An emoji becomes byte-fallback pieces that share one character's range; a span on the
    emoji marks all of them and the '▁' piece before it only if the span includes the space."""
    tok = llama_tokenizer
    text = "Hello world 😀 ok"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    pieces = tok.convert_ids_to_tokens(enc["input_ids"])
    emoji = text.index("😀")
    mask = char_spans_to_token_mask(enc["offset_mapping"], [(emoji, emoji + 1)])
    assert [p for p, m in zip(pieces, mask) if m] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    # Replacing the emoji by another: only byte pieces differ, "▁ok" and the words are kept.
    other = tok("Hello world 😃 ok", add_special_tokens=False)["input_ids"]
    oc, ec = check_alignment(enc["input_ids"], other)
    assert sum(oc) == sum(ec) == 1


# 5. training examples (trainer.data.examples) with the real tokenizer
def _decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False)


def test_build_example_masks_and_special_tokens(llama_tokenizer):
    from trainer.data.examples import build_example

    tok = llama_tokenizer
    ex = build_example(tok, "What is 2+2?", "It is 4 😀.")
    resp_ids = tok("It is 4 😀.", add_special_tokens=False)["input_ids"]
    assert ex.input_ids[0] == tok.bos_token_id and ex.input_ids.count(tok.bos_token_id) == 1
    assert ex.input_ids[-1] == tok.eos_token_id and not ex.truncated
    assert ex.input_ids[ex.prompt_len :] == resp_ids + [tok.eos_token_id]
    assert ex.response_mask == [False] * ex.prompt_len + [True] * (len(resp_ids) + 1)
    assert not any(ex.changed_mask)
    assert _decode(tok, ex.input_ids[1 : ex.prompt_len]) == "What is 2+2?\n"
    assert _decode(tok, resp_ids) == "It is 4 😀."  # byte-fallback pieces round-trip


def test_build_pair_masks_follow_the_diff(llama_tokenizer, qa_feedback):
    from trainer.data.examples import build_pair

    tok = llama_tokenizer
    for ex in qa_feedback[:50]:
        good, bad = build_pair(
            tok, ex["question"], ex["prediction 1"], ex["feedback"]["corrected-prediction"]
        )
        for e in (good, bad):
            assert len(e.input_ids) == len(e.response_mask) == len(e.changed_mask)
            assert all(r or not c for r, c in zip(e.response_mask, e.changed_mask))  # changed ⊆ response
            assert good.input_ids[: good.prompt_len] == bad.input_ids[: bad.prompt_len]
        kept_good = [
            t for t, r, c in zip(good.input_ids, good.response_mask, good.changed_mask) if r and not c
        ]
        kept_bad = [t for t, r, c in zip(bad.input_ids, bad.response_mask, bad.changed_mask) if r and not c]
        assert kept_good == kept_bad and kept_good[-1] == tok.eos_token_id  # EOS is shared, unchanged


def test_build_example_char_spans(llama_tokenizer, qa_feedback):
    from trainer.data.examples import build_example

    tok = llama_tokenizer
    ex = qa_feedback[0]
    text = ex["prediction 1"]
    spans = [(e["start"], e["end"]) for e in ex["feedback"]["errors"]]
    e = build_example(tok, ex["question"], text, bad_spans=spans)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    expected = char_spans_to_token_mask(enc["offset_mapping"], spans)
    assert e.changed_mask[e.prompt_len : -1] == expected and e.changed_mask[-1] is False
    assert 0 < sum(expected) < len(expected)
    with pytest.raises(ValueError, match="either changed or bad_spans"):
        build_example(tok, "q", text, changed=[False], bad_spans=spans)
    with pytest.raises(ValueError, match="entries for"):
        build_example(tok, "q", text, changed=[False])


@pytest.mark.parametrize("max_length", [8, 20, 40, 1000])
def test_truncation_keeps_masks_aligned(llama_tokenizer, qa_feedback, max_length):
    from trainer.data.examples import build_example, build_pair

    tok = llama_tokenizer
    ex = qa_feedback[1]
    full_good, full_bad = build_pair(
        tok, ex["question"], ex["prediction 1"], ex["feedback"]["corrected-prediction"]
    )
    good, bad = build_pair(
        tok,
        ex["question"],
        ex["prediction 1"],
        ex["feedback"]["corrected-prediction"],
        max_length=max_length,
        min_response_tokens=4,
    )
    for full, cut in ((full_good, good), (full_bad, bad)):
        assert len(cut) <= max_length and len(cut.input_ids) == len(cut.changed_mask) == len(
            cut.response_mask
        )
        assert cut.truncated == (len(full) > max_length)
        assert cut.input_ids[0] == tok.bos_token_id
        # The response kept is a prefix of the whole one, with its own masks.
        n = len(cut) - cut.prompt_len
        assert cut.input_ids[cut.prompt_len :] == full.input_ids[full.prompt_len : full.prompt_len + n]
        assert cut.changed_mask[cut.prompt_len :] == full.changed_mask[full.prompt_len : full.prompt_len + n]
        assert n >= min(4, len(full) - full.prompt_len)
        if cut.truncated:
            assert tok.eos_token_id not in cut.input_ids[cut.prompt_len :]
    long = build_example(tok, "word " * 100, "short answer", max_length=30, min_response_tokens=4)
    assert (
        len(long) == 30 and long.input_ids[0] == tok.bos_token_id and long.input_ids[-1] == tok.eos_token_id
    )


def test_chat_template_is_used(llama_tokenizer):
    from trainer.data.examples import build_example, render_prompt

    tok = llama_tokenizer
    tok.chat_template = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    try:
        assert render_prompt(tok, "Hi?") == "[INST] Hi? [/INST]"
        ex = build_example(tok, "Hi?", "Hello.")
        assert _decode(tok, ex.input_ids[1 : ex.prompt_len]) == "[INST] Hi? [/INST]"
    finally:
        tok.chat_template = None


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate(side):
    from trainer.data.examples import TokenizedExample, collate

    a = TokenizedExample([1, 5, 6, 7], [False, False, True, True], [False, False, True, False], 2)
    b = TokenizedExample([1, 5, 8], [False, False, True], [False, False, False], 2)
    batch = collate([a, b], pad_token_id=0, padding_side=side, pad_to_multiple_of=8)
    assert batch["input_ids"].shape == (2, 8) and batch["input_ids"].dtype.is_floating_point is False
    row_b = [1, 5, 8, 0, 0, 0, 0, 0] if side == "right" else [0, 0, 0, 0, 0, 1, 5, 8]
    assert batch["input_ids"][1].tolist() == row_b
    assert batch["attention_mask"].sum(1).tolist() == [4, 3]
    assert batch["response_lengths"].tolist() == [2, 1]
    assert batch["changed_mask"].sum().item() == 1
    assert not (batch["response_mask"] & ~batch["attention_mask"]).any()
    with pytest.raises(ValueError, match="padding_side"):
        collate([a], 0, padding_side="middle")


def test_prompt_templates_keep_instruction_and_input_apart():
    """alpaca renders the with-input form only when there is an input; plain/chat join them."""
    from trainer.data.examples import render_prompt
    from trainer.data.formats import Prompt
    from trainer.data.synthetic import SyntheticConfig, build_tokenizer

    tok = build_tokenizer(SyntheticConfig(n_pairs=2))  # no chat template
    with_input = render_prompt(tok, Prompt("Sum these.", "2 3"), "alpaca")
    assert with_input.startswith("Below is an instruction that describes a task, paired with an input")
    assert with_input.endswith("### Instruction:\nSum these.\n\n### Input:\n2 3\n\n### Response:")
    no_input = render_prompt(tok, Prompt("Name a colour.", "  "), "alpaca")
    assert "### Input" not in no_input and no_input.endswith(
        "### Instruction:\nName a colour.\n\n### Response:"
    )
    assert render_prompt(tok, Prompt("Sum these.", "2 3"), "plain") == "Sum these.\n\n2 3\n"
    assert render_prompt(tok, "Hi", "auto") == "Hi\n"  # no chat template: plain
    with pytest.raises(ValueError, match="no chat template"):
        render_prompt(tok, "Hi", "chat")
