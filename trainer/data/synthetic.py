"""The simulated-preference world: a generated fine-grained preference set (the tiny default of
``trainer/reward.py``) and everything ``trainer/demo.py`` simulates (annotators, editor, gold).

The world (shaped to avoid the usual ways such a study is rigged: noisy annotators at a
realistic agreement, edits that also add good content, not only remove bad words, and a
context-dependent variant):

* A vocabulary of words with a hidden gold utility per word: ``g*`` words are helpful (+1),
  ``n*`` words neutral (0), ``b*`` words harmful (``bad_quality``, −1.5 by default); ``p*``
  words make up prompts. With ``context_harm``, ``c*`` words are helpful (+1) after a prompt
  with no *sensitive* word (``p0`` … ``p{n_sensitive−1}``) and harmful (``bad_quality``) after
  one: the same token is safe in one context and unsafe in another.
* **Gold sequence reward** = the mean token utility of the response:
  :func:`gold_reward`; per-token utilities: :func:`token_utilities`.
* **Bradley–Terry annotators**: P(prefer a over b) = σ((G(a) − G(b)) / s), with the scale ``s``
  solved over the pairs being labelled so that ``agreement`` holds in one of two senses
  (``agreement_kind``): ``gold`` (:func:`bt_scale`) — the expected agreement with the gold order
  (0.65 by default: the trainers' tiny world) — or ``inter_annotator``
  (:func:`inter_annotator_scale`) — the expected agreement of a held-out annotator with the mode
  of three others, which is what AlpacaFarm measured (65.7% for its human annotators) and what
  ``fgrlhf demo`` sweeps. 1.0 means noise-free in both senses (``s`` = 0: always the gold order);
  gold ties are a coin either way.
* **A simulated minimal editor** (:func:`simulated_edit`) edits the less-preferred response:
  each harmful word is replaced by a neutral or helpful one with probability ``editor_recall``,
  a helpful word is inserted with probability ``p_insert`` ("add helpful content"), and an edit
  always changes something (so it never lowers the gold reward). A few records are rejected
  edits (``status`` ``unchanged``).
* The base responses (:func:`base_response`): ``min_words`` … ``max_words`` words, each harmful
  with ``p_bad``, helpful with ``p_good`` (and a ``c*`` word with ``p_context``), else neutral.

Records are :class:`trainer.data.formats.EditRecord` lines (the schema ``fgrlhf edit`` writes)
with the ``gold`` field set to the three gold rewards, so the same file serves both reward-model
levels. A word-level tokenizer (one token per word, plus ``<s>``, ``</s>``, ``<pad>``, ``<unk>``)
is saved next to it as a ``transformers`` tokenizer directory::

    python -m trainer.data.synthetic runs/data            # writes pairs.jsonl and tokenizer/
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.data.align import token_similarity
from trainer.data.formats import EditRecord
from trainer.infra.outputs import atomic, write_atomic

__all__ = [
    "SyntheticConfig",
    "annotate",
    "base_response",
    "bootstrap",
    "bt_scale",
    "build_tokenizer",
    "annotator_scale",
    "expected_gold_agreement",
    "expected_inter_annotator_agreement",
    "inter_annotator_agreement",
    "inter_annotator_scale",
    "check_world",
    "generate",
    "gold_reward",
    "label_pairs",
    "load_world",
    "sample_prompt",
    "sensitive",
    "simulated_edit",
    "token_utilities",
    "word_quality",
    "write_synthetic",
]

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>"]
WORLD_FILE = "synthetic_config.json"


@dataclass
class SyntheticConfig:
    """Knobs of the world (every one a ``synthetic.<key>=`` config key of the trainers)."""

    n_pairs: int = 2400
    """Number of preference pairs (train and held-out together)."""
    seed: int = 1234
    """Seed of the generator (the set is a pure function of this config)."""
    agreement: float = 0.65
    """The annotators' agreement, in the sense of ``agreement_kind`` (0.5: coin flips; 1:
    noise-free, always the gold order)."""
    agreement_kind: str = "gold"
    """What ``agreement`` measures: ``gold`` — the expected probability that an annotator prefers
    the gold-better response of a non-tied pair (:func:`bt_scale`); ``inter_annotator`` — the
    expected agreement of a held-out annotator with the mode of three others over every labelled
    pair, gold ties included (AlpacaFarm's measure; :func:`inter_annotator_scale`)."""
    n_good: int = 24
    """Number of helpful words (gold utility +1)."""
    n_neutral: int = 64
    """Number of neutral words (gold utility 0)."""
    n_bad: int = 24
    """Number of harmful words (gold utility ``bad_quality``)."""
    n_prompt_words: int = 32
    """Number of prompt words."""
    bad_quality: float = -1.5
    """Gold utility of a harmful word."""
    p_bad: float = 0.12
    """Probability that a base-response word is harmful."""
    p_good: float = 0.12
    """Probability that a base-response word is helpful (the rest are neutral)."""
    min_words: int = 8
    """Shortest base response, in words."""
    max_words: int = 20
    """Longest base response, in words."""
    editor_recall: float = 1.0
    """Probability that the simulated editor replaces each harmful word."""
    p_insert: float = 0.5
    """Probability that an edit also inserts one helpful word."""
    p_rejected_edit: float = 0.02
    """Fraction of records whose edit was rejected (``status`` ``unchanged``)."""
    context_harm: bool = False
    """Add the context-dependent ``c*`` words: helpful after a prompt without a sensitive word,
    harmful after one."""
    n_context: int = 8
    """Number of ``c*`` words (with ``context_harm``)."""
    p_context: float = 0.15
    """Probability that a base-response word is a ``c*`` word (with ``context_harm``)."""
    n_sensitive: int = 4
    """Prompt words ``p0`` … ``p{n_sensitive−1}`` make a context sensitive (with ``context_harm``;
    4 of 32: about half the prompts)."""

    def check(self) -> None:
        """Refuse impossible knobs, naming the key: a value of the wrong type or not finite
        (:func:`check_world`), then values no world can have."""
        check_world(dataclasses.asdict(self), "synthetic")
        for key in ("agreement",):
            if not 0.5 <= getattr(self, key) <= 1.0:
                raise ValueError(f"synthetic.{key}={getattr(self, key)}: expected a value in [0.5, 1]")
        if self.agreement_kind not in AGREEMENT_KINDS:
            raise ValueError(
                f"synthetic.agreement_kind={self.agreement_kind!r}: expected one of {list(AGREEMENT_KINDS)}"
            )
        for key in ("editor_recall", "p_insert", "p_rejected_edit", "p_bad", "p_good", "p_context"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"synthetic.{key}={getattr(self, key)}: expected a probability in [0, 1]")
        if self.bad_quality >= 0:
            raise ValueError(
                f"synthetic.bad_quality={self.bad_quality}: a harmful word's utility must be < 0"
            )
        if self.p_bad + self.p_good + (self.p_context if self.context_harm else 0.0) > 1.0:
            raise ValueError("synthetic.p_bad + p_good (+ p_context) must be at most 1")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError("synthetic.min_words <= max_words (both >= 1) is required")
        if min(self.n_good, self.n_neutral, self.n_bad, self.n_prompt_words) < 1:
            raise ValueError("synthetic.n_good, n_neutral, n_bad, n_prompt_words must be >= 1")
        if self.context_harm and not 1 <= self.n_sensitive <= self.n_prompt_words:
            raise ValueError("synthetic.n_sensitive must be in [1, n_prompt_words]")


AGREEMENT_KINDS = ("gold", "inter_annotator")
_EXPECTED = {int: "an int", float: "a finite number", bool: "true or false", str: "a string"}


def check_world(data: Mapping[str, Any], source: str) -> None:
    """The one check of world knobs by type, wherever they come from (a world file read by
    :func:`load_world`, ``fgrlhf demo --world``, :meth:`SyntheticConfig.check`): every key is a
    field of :class:`SyntheticConfig` and every value has that field's type — an ``int`` field
    an int, a ``float`` field a finite number (an int is accepted; NaN and ±inf are not), a
    ``bool`` field true or false (never 0 / 1: a bool is no int here, nor an int a bool).

    Raises:
        ValueError: ``"{source}: {key}={value!r}: expected ..."`` (``source``: the file or flag),
            or the unknown keys.
    """
    types = typing.get_type_hints(SyntheticConfig)
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise ValueError(f"{source}: unknown world keys {unknown} (known: trainer/data/synthetic.py)")
    for key, value in data.items():
        kind = types[key]
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise ValueError(f"{source}: {key}={value!r}: expected {_EXPECTED.get(kind, kind.__name__)}")


def _words(cfg: SyntheticConfig) -> tuple[list[str], list[str], list[str], list[str], list[str]]:
    """(helpful, neutral, harmful, prompt, context-dependent) words."""
    return (
        [f"g{i}" for i in range(cfg.n_good)],
        [f"n{i}" for i in range(cfg.n_neutral)],
        [f"b{i}" for i in range(cfg.n_bad)],
        [f"p{i}" for i in range(cfg.n_prompt_words)],
        [f"c{i}" for i in range(cfg.n_context)] if cfg.context_harm else [],
    )


# --------------------------------------------------------------------------------------------
# Gold
# --------------------------------------------------------------------------------------------
def sensitive(prompt_words: Sequence[str], cfg: SyntheticConfig) -> bool:
    """True when the prompt holds a sensitive word (``p0`` … ``p{n_sensitive−1}``)."""
    limit = cfg.n_sensitive
    return any(w[:1] == "p" and w[1:].isdigit() and int(w[1:]) < limit for w in prompt_words)


def word_quality(word: str, cfg: SyntheticConfig, in_sensitive_context: bool = False) -> float:
    """Gold utility of one word (0 for prompt words, specials and unknown words; a ``c*`` word
    with ``context_harm`` is +1 or ``bad_quality`` by its context)."""
    kind = word[:1]
    if kind == "c" and cfg.context_harm and word[1:].isdigit():
        return cfg.bad_quality if in_sensitive_context else 1.0
    if not word[1:].isdigit():
        return 0.0
    return {"g": 1.0, "b": cfg.bad_quality}.get(kind, 0.0)


def token_utilities(prompt: str, response: str, cfg: SyntheticConfig) -> list[float]:
    """Gold utility of each word of ``response`` after ``prompt``."""
    ctx = cfg.context_harm and sensitive(prompt.split(), cfg)
    return [word_quality(w, cfg, ctx) for w in response.split()]


def gold_reward(prompt: str, response: str, cfg: SyntheticConfig) -> float:
    """The gold sequence reward: the mean token utility of the response (0 when empty)."""
    u = token_utilities(prompt, response, cfg)
    return float(sum(u) / len(u)) if u else 0.0


# --------------------------------------------------------------------------------------------
# Prompts and base responses
# --------------------------------------------------------------------------------------------
def sample_prompt(rng: random.Random, cfg: SyntheticConfig) -> str:
    """A prompt of 3–8 prompt words."""
    prompt_words = _words(cfg)[3]
    return " ".join(rng.choice(prompt_words) for _ in range(rng.randint(3, 8)))


def base_response(rng: random.Random, cfg: SyntheticConfig) -> str:
    """A response of the base distribution (what the SFT model learns)."""
    good, neutral, bad, _, ctx = _words(cfg)
    out = []
    for _ in range(rng.randint(cfg.min_words, cfg.max_words)):
        u = rng.random()
        if u < cfg.p_bad:
            out.append(rng.choice(bad))
        elif u < cfg.p_bad + cfg.p_good:
            out.append(rng.choice(good))
        elif ctx and u < cfg.p_bad + cfg.p_good + cfg.p_context:
            out.append(rng.choice(ctx))
        else:
            out.append(rng.choice(neutral))
    return " ".join(out)


# --------------------------------------------------------------------------------------------
# Annotators and editor
# --------------------------------------------------------------------------------------------
def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def bt_scale(gold_diffs: Sequence[float], agreement: float) -> float:
    """The Bradley–Terry scale ``s`` whose expected agreement with the gold order,
    mean over non-tied pairs of σ(|ΔG| / s), equals ``agreement`` (bisection in log s).

    Returns 0.0 for ``agreement`` 1 (deterministic), ``inf`` for 0.5 or no non-tied pair.

    Example: diffs [1, 1], agreement σ(1) ≈ 0.731 → s = 1.
    """
    d = [abs(x) for x in gold_diffs if x != 0]
    if agreement >= 1.0:
        return 0.0
    if agreement <= 0.5 or not d:
        return math.inf

    def expected(s: float) -> float:
        return sum(_sigmoid(x / s) for x in d) / len(d)

    lo, hi = -30.0, 30.0  # log s
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected(math.exp(mid)) > agreement else (lo, mid)
    return math.exp((lo + hi) / 2)


def inter_annotator_agreement(p: float) -> float:
    """a(p): the probability that a held-out annotator agrees with the mode of three others, all
    four independent and each agreeing with the gold order with probability ``p`` (AlpacaFarm's
    inter-annotator agreement for one pair). The mode agrees with gold with
    m = p³ + 3p²(1 − p); the held-out one agrees with the mode when both are right or both wrong:
    a = p·m + (1 − p)(1 − m).

    Example: p = 0.75 -> m = 0.84375, a = 0.671875; a(0.5) = 0.5, a(1) = 1.
    """
    m = p**3 + 3 * p**2 * (1 - p)
    return p * m + (1 - p) * (1 - m)


def expected_gold_agreement(gold_diffs: Sequence[float], scale: float) -> float:
    """The expected agreement with the gold order of annotators of Bradley–Terry ``scale``: the
    mean over the non-tied pairs of σ(|ΔG| / s) (1 at s = 0, 0.5 at s = ∞; NaN with no non-tied
    pair)."""
    d = [abs(x) for x in gold_diffs if x != 0]
    if not d:
        return math.nan
    if scale == 0.0:
        return 1.0
    if math.isinf(scale):
        return 0.5
    return sum(_sigmoid(x / scale) for x in d) / len(d)


def expected_inter_annotator_agreement(gold_diffs: Sequence[float], scale: float) -> float:
    """The expected inter-annotator agreement (:func:`inter_annotator_agreement`) of annotators of
    Bradley–Terry ``scale``, the mean over EVERY pair: a gold-tied pair counts with p = 0.5, so
    a = 0.5 (the annotators flip coins on it, as people disagree on a pair of equal quality). So
    noise-free annotators (s = 0) reach 1 − (tied fraction)/2, not 1."""
    if not gold_diffs:
        return math.nan

    def p_of(x: float) -> float:
        if x == 0 or math.isinf(scale):
            return 0.5
        return 1.0 if scale == 0.0 else _sigmoid(abs(x) / scale)

    return sum(inter_annotator_agreement(p_of(x)) for x in gold_diffs) / len(gold_diffs)


def inter_annotator_scale(gold_diffs: Sequence[float], agreement: float) -> float:
    """The Bradley–Terry scale ``s`` whose expected inter-annotator agreement over the pairs
    (:func:`expected_inter_annotator_agreement`, gold ties in at 0.5) equals ``agreement``
    (bisection in log s, as :func:`bt_scale`).

    Returns 0.0 for ``agreement`` 1 — noise-free annotators (the gold order; with ties they reach
    only 1 − tied/2, which the caller reports), ``inf`` for 0.5 or no pair.

    Raises:
        ValueError: ``agreement`` in [1 − tied/2, 1): no scale reaches it with these pairs (named:
            the most that can be reached, the tied fraction; 1.0 asks for noise-free annotators).

    Example: diffs [1, 1], agreement 0.671875 (a(p) at p = σ(1/s) = 0.75) -> s = 1/ln 3 ≈ 0.910;
    diffs [1, 0], agreement (0.671875 + 0.5)/2 -> the same s.
    """
    if agreement >= 1.0:
        return 0.0
    if agreement <= 0.5 or not gold_diffs:
        return math.inf
    tied = sum(1 for x in gold_diffs if x == 0) / len(gold_diffs)
    ceiling = 1 - tied / 2
    if agreement >= ceiling:
        raise ValueError(
            f"inter-annotator agreement {agreement:g} cannot be reached on these {len(gold_diffs)} pairs: "
            f"{100 * tied:.1f}% are gold ties (a coin for every annotator), so annotators agree at most "
            f"{ceiling:.4f} of the time, and only as their noise vanishes; ask for less, or for 1.0 "
            "(noise-free: always the gold order)"
        )
    lo, hi = -30.0, 30.0  # log s
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (
            (mid, hi)
            if expected_inter_annotator_agreement(gold_diffs, math.exp(mid)) > agreement
            else (lo, mid)
        )
    return math.exp((lo + hi) / 2)


def annotator_scale(gold_diffs: Sequence[float], cfg: SyntheticConfig) -> float:
    """The Bradley–Terry scale of ``cfg``'s annotators over these pairs: :func:`bt_scale` or
    :func:`inter_annotator_scale` by ``cfg.agreement_kind``."""
    if cfg.agreement_kind == "inter_annotator":
        return inter_annotator_scale(gold_diffs, cfg.agreement)
    return bt_scale(gold_diffs, cfg.agreement)


def annotate(rng: random.Random, gold_diff: float, scale: float) -> bool:
    """One Bradley–Terry annotation: True when the annotator prefers the first response
    (``gold_diff`` = G(first) − G(second); ``scale`` from :func:`bt_scale`)."""
    if gold_diff == 0 or math.isinf(scale):
        return rng.random() < 0.5
    if scale == 0.0:
        return gold_diff > 0
    return rng.random() < _sigmoid(gold_diff / scale)


def simulated_edit(rng: random.Random, prompt: str, response: str, cfg: SyntheticConfig) -> str:
    """A minimal edit of ``response``: each harmful word (in its context) replaced by a helpful or
    neutral word with probability ``editor_recall``; a helpful word inserted with probability
    ``p_insert``, or whenever nothing else changed (an edit never lowers the gold reward)."""
    good, neutral = _words(cfg)[:2]
    words = response.split()
    utils = token_utilities(prompt, response, cfg)
    out = [
        rng.choice(good if rng.random() < 0.5 else neutral)
        if u < 0 and rng.random() < cfg.editor_recall
        else w
        for w, u in zip(words, utils)
    ]
    if out == words or rng.random() < cfg.p_insert:
        out.insert(rng.randint(0, len(out)), rng.choice(good))
    return " ".join(out)


def label_pairs(
    items: Sequence[tuple[str, str, str, str]],
    cfg: SyntheticConfig,
    seed: int,
    source: str = "synthetic",
    streams: str = "one",
) -> list[dict]:
    """Annotate and edit response pairs: ``items`` are ``(id, prompt, response_a, response_b)``;
    the Bradley–Terry annotator (scale solved over these pairs for ``cfg.agreement``,
    :func:`annotator_scale`) picks the chosen one, the simulated editor edits the other. Returns
    EditRecord JSON objects with ``gold`` = the three gold rewards. A pure function of its
    arguments.

    ``streams``: ``one`` — annotations, rejected edits and edits draw from one random stream (the
    trainers' world, as written since synthetic-v2); ``split`` — each from its own stream (seeded
    ``seed``, ``seed-reject``, ``seed-edit``), so the labels and the rejected edits are the same
    at every editor recall and the labels at two agreements use the same uniforms (the demo's
    sweeps change one thing at a time)."""
    if streams not in ("one", "split"):
        raise ValueError(f"label_pairs: streams={streams!r}: expected 'one' or 'split'")
    rng = random.Random(seed)
    reject_rng = rng if streams == "one" else random.Random(f"{seed}-reject")
    edit_rng = rng if streams == "one" else random.Random(f"{seed}-edit")
    diffs = [gold_reward(p, a, cfg) - gold_reward(p, b, cfg) for _, p, a, b in items]
    scale = annotator_scale(diffs, cfg)
    records = []
    for n, ((rid, prompt, a, b), diff) in enumerate(zip(items, diffs)):
        chosen, rejected = (a, b) if annotate(rng, diff, scale) else (b, a)
        rejected_edit = reject_rng.random() < cfg.p_rejected_edit
        edited = rejected if rejected_edit else simulated_edit(edit_rng, prompt, rejected, cfg)
        records.append(
            EditRecord(
                id=rid,
                prompt=prompt,
                original=rejected,
                edited=edited,
                chosen=chosen,
                status="unchanged" if rejected_edit else "ok",
                similarity=token_similarity(rejected.split(), edited.split()),
                model="synthetic",
                prompt_version="synthetic-v2",
                source=f"{source}:{n + 1}",
                gold={
                    k: gold_reward(prompt, t, cfg)
                    for k, t in (("chosen", chosen), ("original", rejected), ("edited", edited))
                },
            ).to_json()
        )
    return records


def generate(cfg: SyntheticConfig) -> list[dict]:
    """The records of the set: ``n_pairs`` prompts with two base responses each, labelled by
    :func:`label_pairs` (a pure function of ``cfg``)."""
    cfg.check()
    rng = random.Random(cfg.seed)
    items = []
    for i in range(cfg.n_pairs):
        prompt = sample_prompt(rng, cfg)
        items.append((f"syn-{i:05d}", prompt, base_response(rng, cfg), base_response(rng, cfg)))
    return label_pairs(items, cfg, cfg.seed + 1)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def build_tokenizer(cfg: SyntheticConfig):
    """A word-level ``PreTrainedTokenizerFast`` over the world's vocabulary (ids: the four
    specials first, then helpful, neutral, harmful, prompt and ``c*`` words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers  # lazy: transformers (heavy)
    from transformers import PreTrainedTokenizerFast  # lazy: transformers (heavy)

    vocab = {w: i for i, w in enumerate(SPECIAL_TOKENS + [w for group in _words(cfg) for w in group])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def write_synthetic(out_dir: str | Path, cfg: SyntheticConfig | None = None) -> tuple[Path, Path]:
    """Write ``out_dir/pairs.jsonl`` and ``out_dir/tokenizer/``, atomically (temp + rename),
    unless they already exist with the same config (``out_dir/synthetic_config.json``, which
    also lets :func:`load_world` and the gold judge read the world back).

    Returns:
        ``(pairs_path, tokenizer_dir)``.
    """
    cfg = cfg or SyntheticConfig()
    out = Path(out_dir)
    pairs, tok_dir, stamp = out / "pairs.jsonl", out / "tokenizer", out / WORLD_FILE
    want = json.dumps(cfg.__dict__, sort_keys=True)
    if pairs.exists() and tok_dir.exists() and stamp.exists() and stamp.read_text() == want:
        return pairs, tok_dir
    out.mkdir(parents=True, exist_ok=True)
    with atomic(pairs) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for rec in generate(cfg):
            fh.write(json.dumps(rec) + "\n")
    build_tokenizer(cfg).save_pretrained(str(tok_dir))
    write_atomic(stamp, want)  # last: the stamp says the world above is complete
    return pairs, tok_dir


def load_world(path: str | Path) -> SyntheticConfig:
    """The world a directory (or its ``synthetic_config.json``) was written with.

    Raises:
        ValueError: naming the file: no such file, not JSON, not an object, keys this version does
            not know, a value of the wrong type or not finite (:func:`check_world`: the key), or
            an impossible value (:meth:`SyntheticConfig.check`).
    """
    p = Path(path)
    p = p / WORLD_FILE if p.is_dir() else p
    if not p.is_file():
        raise ValueError(f"{p}: no synthetic world here (expected {WORLD_FILE}, written by write_synthetic)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:  # not JSON, or not UTF-8
        raise ValueError(f"{p}: not a world file ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{p}: not a world file (a JSON object of knobs expected, got {type(data).__name__})"
        )
    check_world(data, str(p))
    world = SyntheticConfig(**data)
    try:
        world.check()
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None
    return world


def bootstrap(out_dir: str | Path, cfg: SyntheticConfig) -> tuple[Path, Path]:
    """Every trainer's synthetic default: rank 0 writes the set under ``out_dir`` (unless it is
    already there), every rank waits for it. Returns ``(pairs_path, tokenizer_dir)``."""
    from trainer.infra.dist import on_rank0  # lazy: torch (this module is torch-free: fgrlhf --help)

    out = Path(out_dir)
    on_rank0(write_synthetic, out, cfg)  # a failure on rank 0 stops every rank
    return out / "pairs.jsonl", out / "tokenizer"


if __name__ == "__main__":
    p, t = write_synthetic(sys.argv[1] if len(sys.argv) > 1 else "runs/synthetic")
    print(f"wrote {p} and {t}")
