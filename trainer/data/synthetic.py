"""A small generated fine-grained preference set: the tiny default of ``trainer/reward.py``.

The world (shaped to avoid the usual ways such a study is rigged: noisy annotators at a
realistic agreement, edits that also add good content, not only remove bad words):

* A vocabulary of words with a hidden gold quality per word: ``g*`` words are good (+1),
  ``n*`` words neutral (0), ``b*`` words bad (``bad_quality``, −1.5 by default); ``p*`` words
  make up prompts. The gold score of a response is the sum of its words' qualities.
* A preference pair draws two responses (mostly neutral words, some good, some bad). A noisy
  annotator prefers the gold-better one with probability ``agreement`` (0.65 by default,
  around the human agreement reported on AlpacaFarm-style pairs), the other one otherwise.
* The less-preferred response is edited *minimally*: each bad word is replaced by a neutral or
  good word, and sometimes a good word is inserted ("add helpful content"), so an edit always
  improves the gold score. A few records are rejected edits (``status`` ``unchanged``).

Records are :class:`trainer.data.formats.EditRecord` lines (the schema ``fgrlhf edit`` writes)
with the ``gold`` field set to the three gold scores, so the same file serves both reward-model
levels. A word-level tokenizer (one token per word, plus ``<s>``, ``</s>``, ``<pad>``, ``<unk>``)
is saved next to it as a ``transformers`` tokenizer directory::

    python -m trainer.data.synthetic runs/data            # writes pairs.jsonl and tokenizer/
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from trainer.data.align import token_similarity
from trainer.data.formats import EditRecord

__all__ = ["SyntheticConfig", "bootstrap", "build_tokenizer", "generate", "word_quality", "write_synthetic"]

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>"]


@dataclass
class SyntheticConfig:
    """Knobs of the generated set."""

    n_pairs: int = 2400
    """Number of preference pairs (train and held-out together)."""
    seed: int = 1234
    """Seed of the generator (the set is a pure function of this config)."""
    agreement: float = 0.65
    """Probability that the annotator prefers the gold-better response of a pair."""
    n_good: int = 24
    """Number of good words (gold quality +1)."""
    n_neutral: int = 64
    """Number of neutral words (gold quality 0)."""
    n_bad: int = 24
    """Number of bad words (gold quality ``bad_quality``)."""
    n_prompt_words: int = 32
    """Number of prompt words."""
    bad_quality: float = -1.5
    """Gold quality of a bad word."""
    p_bad: float = 0.12
    """Probability that a response word is bad."""
    p_good: float = 0.12
    """Probability that a response word is good (the rest are neutral)."""
    min_words: int = 8
    """Shortest response, in words."""
    max_words: int = 20
    """Longest response, in words."""
    p_insert: float = 0.5
    """Probability that an edit also inserts one good word."""
    p_rejected_edit: float = 0.02
    """Fraction of records whose edit was rejected (``status`` ``unchanged``)."""


def _words(cfg: SyntheticConfig) -> tuple[list[str], list[str], list[str], list[str]]:
    return (
        [f"g{i}" for i in range(cfg.n_good)],
        [f"n{i}" for i in range(cfg.n_neutral)],
        [f"b{i}" for i in range(cfg.n_bad)],
        [f"p{i}" for i in range(cfg.n_prompt_words)],
    )


def word_quality(word: str, cfg: SyntheticConfig) -> float:
    """Gold quality of one word (0 for prompt words, specials and unknown words)."""
    return {"g": 1.0, "b": cfg.bad_quality}.get(word[:1], 0.0)


def _gold(text: str, cfg: SyntheticConfig) -> float:
    return float(sum(word_quality(w, cfg) for w in text.split()))


def _response(rng: random.Random, cfg: SyntheticConfig, good, neutral, bad) -> list[str]:
    out = []
    for _ in range(rng.randint(cfg.min_words, cfg.max_words)):
        u = rng.random()
        out.append(rng.choice(bad if u < cfg.p_bad else good if u < cfg.p_bad + cfg.p_good else neutral))
    return out


def _edit(rng: random.Random, words: list[str], good, neutral) -> list[str]:
    """Minimal edit: replace each bad word; maybe insert a good word; always change something."""
    out = [rng.choice(good if rng.random() < 0.5 else neutral) if w.startswith("b") else w for w in words]
    if out == words or rng.random() < 0.5:
        out.insert(rng.randint(0, len(out)), rng.choice(good))
    return out


def generate(cfg: SyntheticConfig) -> list[dict]:
    """The records of the set (a pure function of ``cfg``)."""
    rng = random.Random(cfg.seed)
    good, neutral, bad, prompt_words = _words(cfg)
    records = []
    for i in range(cfg.n_pairs):
        prompt = " ".join(rng.choice(prompt_words) for _ in range(rng.randint(3, 8)))
        a, b = (_response(rng, cfg, good, neutral, bad) for _ in range(2))
        ga, gb = _gold(" ".join(a), cfg), _gold(" ".join(b), cfg)
        better_first = ga > gb or (ga == gb and rng.random() < 0.5)
        agrees = rng.random() < cfg.agreement
        chosen, rejected = (a, b) if better_first == agrees else (b, a)
        rejected_edit = rng.random() < cfg.p_rejected_edit
        edited = list(rejected) if rejected_edit else _edit(rng, rejected, good, neutral)
        original_text, edited_text, chosen_text = " ".join(rejected), " ".join(edited), " ".join(chosen)
        records.append(
            EditRecord(
                id=f"syn-{i:05d}",
                prompt=prompt,
                original=original_text,
                edited=edited_text,
                chosen=chosen_text,
                status="unchanged" if rejected_edit else "ok",
                similarity=token_similarity(rejected, edited),
                model="synthetic",
                prompt_version="synthetic-v1",
                source=f"synthetic:{i + 1}",
                gold={
                    "chosen": _gold(chosen_text, cfg),
                    "original": _gold(original_text, cfg),
                    "edited": _gold(edited_text, cfg),
                },
            ).to_json()
        )
    return records


def build_tokenizer(cfg: SyntheticConfig):
    """A word-level ``PreTrainedTokenizerFast`` over the world's vocabulary (ids: the four
    specials first, then good, neutral, bad and prompt words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    good, neutral, bad, prompt_words = _words(cfg)
    vocab = {w: i for i, w in enumerate(SPECIAL_TOKENS + good + neutral + bad + prompt_words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def write_synthetic(out_dir: str | Path, cfg: SyntheticConfig | None = None) -> tuple[Path, Path]:
    """Write ``out_dir/pairs.jsonl`` and ``out_dir/tokenizer/``, atomically (temp + rename),
    unless they already exist with the same config (``out_dir/synthetic_config.json``).

    Returns:
        ``(pairs_path, tokenizer_dir)``.
    """
    import os

    cfg = cfg or SyntheticConfig()
    out = Path(out_dir)
    pairs, tok_dir, stamp = out / "pairs.jsonl", out / "tokenizer", out / "synthetic_config.json"
    want = json.dumps(cfg.__dict__, sort_keys=True)
    if pairs.exists() and tok_dir.exists() and stamp.exists() and stamp.read_text() == want:
        return pairs, tok_dir
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".pairs.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in generate(cfg):
            fh.write(json.dumps(rec) + "\n")
    os.replace(tmp, pairs)
    build_tokenizer(cfg).save_pretrained(str(tok_dir))
    stamp.write_text(want)
    return pairs, tok_dir


def bootstrap(out_dir: str | Path, cfg: SyntheticConfig) -> tuple[Path, Path]:
    """Every trainer's synthetic default: rank 0 writes the set under ``out_dir`` (unless it is
    already there), every rank waits for it. Returns ``(pairs_path, tokenizer_dir)``."""
    from trainer.infra.dist import on_rank0

    out = Path(out_dir)
    on_rank0(write_synthetic, out, cfg)  # a failure on rank 0 stops every rank
    return out / "pairs.jsonl", out / "tokenizer"


if __name__ == "__main__":
    p, t = write_synthetic(sys.argv[1] if len(sys.argv) > 1 else "runs/synthetic")
    print(f"wrote {p} and {t}")
