"""Preference pairs as training data: an edited-pairs file (:class:`~trainer.data.formats.EditRecord`
lines) tokenised into (chosen, rejected) example pairs, collated into batches, and the data order
of a step. Shared by the reward trainer and the SFT/FIGA trainer.

Every pair is (chosen ≻ rejected): an *edited* pair is (edited, original) with changed-token masks
from the token diff; an *original* pair is (the input's chosen response, original).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from trainer.data.examples import TokenizedExample, build_example, build_pair, collate
from trainer.data.formats import DataError, EditRecord, read_records, valid_records
from trainer.data.synthetic import SyntheticConfig
from trainer.errors import ConfigError
from trainer.fake import real_tensors
from trainer.infra.config import TrainConfig

__all__ = ["Pair", "PairData", "SupervisedConfig", "collate_pairs", "load_pair_data", "step_batches"]

Pair = tuple[TokenizedExample, TokenizedExample]  # (chosen, rejected)


@dataclass
class PairData:
    """Tokenised pairs of one split, each ``(chosen, rejected)``.

    Attributes:
        edited: (edited, original) examples with changed-token masks, from ``ok`` records.
        original: (chosen, original) examples (changed masks all False).
        gold: per original pair, gold(chosen) − gold(original) when the records carry ``gold``.
        skipped: why records were left out, counted.
    """

    edited: list[Pair] = field(default_factory=list)
    original: list[Pair] = field(default_factory=list)
    gold: list[float] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def is_held_out(rec_id: str, fraction: float) -> bool:
    h = int(hashlib.sha256(rec_id.encode()).hexdigest()[:8], 16)
    return h % 100_000 < fraction * 100_000


def _response_cut(ex: TokenizedExample, eos_id: int | None) -> bool:
    """True when truncation cut the response (a whole response ends with EOS)."""
    return ex.truncated and (eos_id is None or ex.input_ids[-1] != eos_id)


def load_pair_data(path: str, tokenizer: Any, cfg: Any, split: str | None) -> PairData:
    """Read an edited-pairs file and tokenise it.

    Args:
        path: JSONL/JSON/parquet file (trainer.data.formats.read_records).
        tokenizer: the model's tokenizer.
        cfg: the run config (its ``max_length``, ``min_response_tokens``, ``prompt_template``,
            ``on_too_long``, ``skip_invalid``, ``eval_fraction``).
        split: ``"train"`` / ``"eval"`` (held-out by id hash) or None (every record).

    Raises:
        DataError: an unreadable file, a bad record (without ``skip_invalid``: names the line
            and field), a too-long response with ``on_too_long=error``.
    """
    out = PairData()
    eos = tokenizer.eos_token_id
    kw = {
        "max_length": cfg.max_length,
        "min_response_tokens": cfg.min_response_tokens,
        "prompt_template": cfg.prompt_template,
    }

    def fits(kind: str, pair: Pair, where: str) -> bool:
        if not (_response_cut(pair[0], eos) or _response_cut(pair[1], eos)):
            return True
        if cfg.on_too_long == "error":
            raise DataError(path, f"response longer than max_length={cfg.max_length}", where)
        out.skipped[f"{kind}_too_long"] += 1
        return False

    # the last record of an id is the one that counts (a rerun of `fgrlhf edit` may re-gate or
    # re-request a pair by appending it again); the first one's position is kept
    latest: dict[str, tuple[str, Any]] = {}
    for where, rec in read_records(path):
        key = f"id:{rec['id']}" if isinstance(rec, dict) and rec.get("id") is not None else f"at:{where}"
        latest[key] = (where, rec)

    def edit_record(where: str, rec: Any) -> EditRecord | None:
        if split is not None and isinstance(rec, dict):
            rec_id = str(rec["id"]) if rec.get("id") is not None else where  # EditRecord's rule
            if is_held_out(rec_id, cfg.eval_fraction) != (split == "eval"):
                return None  # the other split's
        return EditRecord.from_json(rec, path, where)

    def count_invalid(_: DataError) -> None:
        out.skipped["invalid_record"] += 1

    records = list(latest.values())
    if split == "eval" and cfg.skip_invalid:
        # a bad record with no id to split by (not an object, or unparsable) is counted once: in train
        records = [(where, rec) for where, rec in records if isinstance(rec, dict)]
    for where, r in valid_records(records, edit_record, cfg.skip_invalid, count_invalid):
        if not r.original.strip():
            out.skipped["empty_original"] += 1
            continue
        # (a) edited pairs: edited ≻ original
        if r.status != "ok":
            out.skipped[f"edit_status_{r.status}"] += 1
        elif not r.edited.strip():
            out.skipped["empty_edited"] += 1
        else:
            pair = build_pair(tokenizer, r.prompt_parts, r.original, r.edited, **kw)
            if fits("edited", pair, where):
                out.edited.append(pair)
        # (b) original pairs: chosen ≻ original
        if not r.chosen.strip():
            out.skipped["empty_chosen"] += 1
            continue
        pair = (
            build_example(tokenizer, r.prompt_parts, r.chosen, **kw),
            build_example(tokenizer, r.prompt_parts, r.original, **kw),
        )
        if fits("original", pair, where):
            out.original.append(pair)
            if r.gold is not None:
                out.gold.append(float(r.gold["chosen"]) - float(r.gold["original"]))
    return out


def collate_pairs(pairs: list[Pair], pad_id: int) -> dict:
    """B pairs -> one right-padded batch of 2B rows: chosen ``[0:B]``, rejected ``[B:2B]``
    (``input_ids``, ``attention_mask``, ``response_mask``, ``changed_mask``: ``[2B, T]``)."""
    return collate([c for c, _ in pairs] + [r for _, r in pairs], pad_id)


def step_batches(
    step: int, n_pairs: int, world_batch: int, cfg: Any, rank: int, world: int
) -> list[list[int]]:
    """This rank's micro-batches (indices) of optimizer step ``step`` (``cfg``: ``seed``,
    ``micro_batch_size``): a pure function of (seed, step), so the data position is just the
    step. An epoch is a fresh permutation; its last partial global batch is dropped."""
    steps_per_epoch = n_pairs // world_batch
    epoch, i = divmod(step, steps_per_epoch)
    with real_tensors():  # host indices: real even in a dry run's FakeTensorMode
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        perm = torch.randperm(n_pairs, generator=g)[i * world_batch : (i + 1) * world_batch]
        mine = perm[rank::world].tolist()
    return [mine[k : k + cfg.micro_batch_size] for k in range(0, len(mine), cfg.micro_batch_size)]


@dataclasses.dataclass
class SupervisedConfig(TrainConfig):
    """The keys of the trainers that learn from a data file with a step schedule (reward models,
    SFT / FIGA): data, held-out split, lengths, batch, schedule, logging and evaluation."""

    CHOICES: ClassVar[dict] = {"on_too_long": ("skip", "error"), "save_dtype": ("float32", "bfloat16")}
    AT_LEAST: ClassVar[dict] = {
        "max_length": 2, "min_response_tokens": 0, "micro_batch_size": 1, "grad_accum": 1, "epochs": 0,
        "max_steps": 0, "stop_after_steps": 0, "lr": 0, "min_lr_ratio": 0, "warmup_steps": 0,
        "log_every": 1, "eval_every": 0, "eval_batch_size": 1,
    }  # fmt: skip
    PATHS: ClassVar[dict] = {"data": None, "eval_data": None}
    RESUME_SAFE: ClassVar[dict] = dict.fromkeys(
        ("log_every", "eval_every", "eval_batch_size", "stop_after_steps", "save_dtype")
    )

    data: str = ""
    """The training file (an ``fgrlhf edit`` JSONL of edited pairs); empty: the synthetic set."""
    eval_data: str = ""
    """Held-out file (same kind); empty: hold out ``eval_fraction`` of ``data`` by id hash."""
    eval_fraction: float = 0.1
    """Fraction of ``data`` held out for evaluation when ``eval_data`` is empty."""
    skip_invalid: bool = False
    """Skip (and count) records with missing/ill-typed fields instead of stopping with an error."""
    on_too_long: str = "skip"
    """A response that does not fit ``max_length``: ``skip`` (counted) or ``error``."""
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
    """The generated set used when ``data`` is empty."""
    max_length: int = 128
    """Longest prompt + response in tokens (the prompt is cut from the left first)."""
    min_response_tokens: int = 16
    """Response tokens kept at least when a long prompt is cut."""

    micro_batch_size: int = 16
    """Items per rank per forward/backward (a pair is two sequences)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; global batch = micro_batch_size × grad_accum × world."""
    epochs: float = 3.0
    """Passes over the training data (ignored when ``max_steps`` > 0)."""
    max_steps: int = 0
    """Optimizer steps of the schedule; 0: ``epochs`` × steps per epoch."""
    stop_after_steps: int = 0
    """End the run (with a checkpoint) after this step, keeping the schedule and data order of
    the full run: time-limited jobs and preemption drills. 0: run to the end."""
    lr: float = 2e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Cosine decay floor, as a fraction of ``lr``."""
    warmup_steps: int = 10
    """Linear warmup steps."""

    log_every: int = 10
    """Log training metrics every this many steps."""
    eval_every: int = 50
    """Evaluate on held-out data every this many steps (and at the end); 0: only at the end."""
    eval_batch_size: int = 32
    """Items per rank per evaluation forward."""
    save_dtype: str = "float32"
    """dtype of the saved model weights (``float32`` or ``bfloat16``)."""

    def check(self) -> None:
        super().check()
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"config key 'eval_fraction': must be in [0, 1), got {self.eval_fraction}")
