"""Reward-model accuracy on labelled pairs after training (the paper's Table 2 metric):
``fgrlhf eval-rm RM_DIR PAIRS``.

Loads a directory written by ``trainer/reward.py`` (its level, loss variant and prompt template
come from ``fgrlhf_reward.json``), tokenises the pairs file exactly as the trainer does
(:func:`trainer.data.pairs.load_pair_data`: an ``fgrlhf edit`` JSONL gives edited pairs and
original pairs) and reports the trainer's own held-out metrics (:func:`trainer.reward.evaluate`):
pairwise accuracy and margin on each kind of pair, the loss on the level's own kind, per-token
reward means and AUROCs, and agreement with a gold order when the records carry one.

    fgrlhf eval-rm runs/reward/final heldout_edits.jsonl [--max-length 1024] [--json out.json]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from trainer.data.formats import DataError

__all__ = ["EvalRMConfig", "evaluate_reward_model"]


@dataclass
class EvalRMConfig:
    """Settings of ``fgrlhf eval-rm`` (its flags are derived from these fields)."""

    AT_LEAST: ClassVar[dict] = {"max_length": 2, "batch_size": 1}

    rm_dir: str
    """A directory written by trainer/reward.py (``final/`` or ``best/``)."""
    pairs: str
    """An ``fgrlhf edit`` JSONL (edited + original pairs)."""
    max_length: int = 1024
    """Longest prompt + response (tokens)."""
    batch_size: int = 16
    """Pairs per forward."""
    skip_invalid: bool = False
    """Skip (and count) bad records."""
    json: str | None = None
    """Also write the metrics as JSON to this file."""


def evaluate_reward_model(
    rm_dir: str, pairs: str, max_length: int = 1024, batch_size: int = 16, skip_invalid: bool = False
) -> dict[str, Any]:
    """The reward trainer's evaluation of the model in ``rm_dir`` on every pair of ``pairs``
    (one process; CUDA when available).

    Raises:
        trainer.infra.config.ConfigError: ``rm_dir`` is not a reward-model directory.
        trainer.data.formats.DataError: a bad pairs file or record (a NaN gold score among them),
            or no pair to evaluate.
    """
    import torch  # lazy: torch (fgrlhf --help is torch-free)

    from trainer.data.pairs import load_pair_data  # lazy: torch (fgrlhf --help is torch-free)
    from trainer.models import open_reward_model, pad_token_id  # lazy: torch (fgrlhf --help is torch-free)
    from trainer.reward import RewardConfig, evaluate  # lazy: torch (fgrlhf --help is torch-free)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rm, meta, tokenizer = open_reward_model(rm_dir, "rm_dir", device)
    cfg = RewardConfig(
        rm_level=meta["level"],
        variant=meta.get("variant", "exact"),
        seq_pairs=meta.get("seq_pairs", "original"),
        prompt_template=meta.get("prompt_template", "auto"),
        max_length=max_length,
        eval_batch_size=batch_size,
        skip_invalid=skip_invalid,
        eval_fraction=0.0,
    )
    data = load_pair_data(pairs, tokenizer, cfg, split=None)
    if not data.edited and not data.original:  # nothing measured is an error, not an accuracy of nan
        skipped = f" (skipped: {dict(data.skipped)})" if data.skipped else ""
        raise DataError(pairs, f"no pair to evaluate{skipped}")
    metrics = evaluate(rm.model, data, cfg, pad_token_id(tokenizer), device)
    return {
        "rm_dir": str(Path(rm_dir)),
        "pairs": pairs,
        "level": cfg.rm_level,
        **metrics,
        "skipped": dict(data.skipped),
    }
