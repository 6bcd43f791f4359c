"""The end-of-run summary every trainer prints: a short table a person reads in five seconds.

Pure functions over the run's ``metrics.jsonl`` records (no torch, no I/O), so the table of a
finished run can be rebuilt from its files and is tested without training::

    [ppo] summary                          start → end
      RM reward                            0.012 → 0.310
      ...
      time   generate 12.1 s · score 3.2 s · train 20.4 s
      ...
      outputs
        metrics          runs/ppo/metrics.jsonl

:func:`ppo_summary` and :func:`reward_summary` pick each trainer's key metrics;
:func:`format_summary` lays them out; :func:`format_bytes` is the memory unit rule (MiB below
1 GiB, else GiB) the PPO memory estimate uses too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "PPO_ROWS",
    "REWARD_ROWS",
    "format_bytes",
    "format_summary",
    "heldout_note",
    "ppo_summary",
    "reward_summary",
    "start_end",
]

# (label, record key) of the rows each trainer's summary shows, in order.
PPO_ROWS: tuple[tuple[str, str], ...] = (
    ("RM reward", "reward"),
    ("gold reward R(τ) (mean utility)", "gold_reward"),
    ("gold reward / token", "gold_reward_per_token"),
    ("KL (nats / sequence)", "kl"),
    ("response length", "response_length"),
    ("responses cut at max_new_tokens", "truncated_fraction"),
    ("held-out score (eval_every)", "heldout_score"),
    ("explained variance", "explained_variance"),
)
REWARD_ROWS: tuple[tuple[str, str], ...] = (
    ("held-out accuracy: edited pairs", "edited_accuracy"),
    ("held-out accuracy: original pairs", "original_accuracy"),
    ("held-out accuracy: gold order", "gold_accuracy"),
    ("changed − kept reward (edited side)", "gap_edited"),
    ("kept − changed reward (original side)", "gap_original"),
    ("AUROC added tokens", "auroc_added"),
    ("AUROC removed tokens", "auroc_removed"),
)


def format_bytes(n_bytes: float) -> str:
    """``"12.3 MiB"`` below 1 GiB, else ``"1.23 GiB"`` (so a tiny run does not read "0.00 GiB");
    a value that is not a size says so (never "nan GiB")."""
    if not math.isfinite(n_bytes):
        return f"{n_bytes} bytes (not a size)"
    if abs(n_bytes) < 1024**3:
        return f"{n_bytes / 1024**2:.1f} MiB"
    return f"{n_bytes / 1024**3:.2f} GiB"


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def start_end(records: Iterable[dict], key: str) -> tuple[float, float] | None:
    """The first and last value of ``key`` over ``records`` that carry it as a number (NaN
    included: it is reported, not hidden); None when none does."""
    vals = [x for r in records if (x := _number(r.get(key))) is not None]
    return (vals[0], vals[-1]) if vals else None


def _secs(v: float) -> str:
    return f"{v / 60:.1f} min" if v >= 120 else f"{v:.1f} s" if v >= 10 else f"{v:.2f} s"


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "nan"
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def format_summary(
    title: str,
    rows: Sequence[tuple[str, tuple[float, float] | None]],
    times: dict[str, float],
    throughput: dict[str, float],
    peak_memory_mb: float | None,
    outputs: dict[str, str],
) -> str:
    """The table as text.

    Args:
        title: e.g. ``"[ppo] summary"``.
        rows: ``(label, (start, end))``; a None pair prints ``n/a`` (e.g. no gold reward).
        times: seconds per phase (``{"generate": 12.1, ...}``).
        throughput: tokens/s per phase.
        peak_memory_mb: peak memory of rank 0 in MiB (None: unknown).
        outputs: ``{what: path}``; an empty path prints ``(not written)``.
    """
    width = max([len(label) for label, _ in rows] + [20])
    lines = [f"{title:<{width + 2}}  start → end"]
    for label, se in rows:
        value = "n/a" if se is None else f"{_fmt(se[0])} → {_fmt(se[1])}"
        lines.append(f"  {label:<{width}}  {value}")
    if times:
        lines.append(f"  {'time':<{width}}  " + " · ".join(f"{k} {_secs(v)}" for k, v in times.items()))
    if throughput:
        lines.append(
            f"  {'tokens/s':<{width}}  " + " · ".join(f"{k} {v:,.0f}" for k, v in throughput.items())
        )
    if peak_memory_mb is not None:
        lines.append(f"  {'peak memory (rank 0)':<{width}}  {format_bytes(peak_memory_mb * 1024**2)}")
    lines.append("  outputs")
    w = max([len(k) for k in outputs] + [8])
    for k, path in outputs.items():
        lines.append(f"    {k:<{w}}  {path or '(not written)'}")
    return "\n".join(lines)


def ppo_summary(records: Sequence[dict], outputs: dict[str, str]) -> str:
    """The PPO table from ``metrics.jsonl`` records (one per iteration, the fields
    ``trainer/ppo.py`` logs): first → last iteration of :data:`PPO_ROWS`, total seconds per phase
    (``time_<phase>_s``), tokens/s per phase (tokens over the phase's total time), the largest
    ``peak_memory_mb``."""
    rows = [(label, start_end(records, key)) for label, key in PPO_ROWS]
    times: dict[str, float] = {}
    tokens: dict[str, float] = {}
    for r in records:
        for k, v in r.items():
            if k.startswith("time_") and k.endswith("_s") and _number(v) is not None:
                phase = k[5:-2]
                times[phase] = times.get(phase, 0.0) + v
                tokens[phase] = tokens.get(phase, 0.0) + v * float(r.get(f"tokens_per_s_{phase}", 0.0))
    throughput = {p: tokens[p] / times[p] for p in times if times[p] > 0}
    peaks = [x for r in records if (x := _number(r.get("peak_memory_mb"))) is not None]
    n = len(records)
    first = records[0].get("iteration", "?") if records else "?"
    last = records[-1].get("iteration", "?") if records else "?"
    title = f"summary: iterations {first}–{last} ({n} logged)"
    return format_summary(title, rows, times, throughput, max(peaks) if peaks else None, outputs)


def heldout_note(records: Sequence[dict], judge: str = "", z: float = 2.0) -> str:
    """What the held-out evaluations (``heldout_score``) say about over-optimisation: where the
    score peaked, and whether it then fell — by more than ``z`` standard errors of the
    difference (``heldout_score_se``; any fall without them) — the policy optimising the reward
    model's errors, not the task. '' without evaluations."""
    evals = [(r["iteration"], x, _number(r.get("reward")), _number(r.get("heldout_score_se")) or 0.0)
             for r in records if (x := _number(r.get("heldout_score"))) is not None]  # fmt: skip
    if not evals:
        return ""
    best_it, best, _, best_se = max(evals, key=lambda e: e[1])
    last_it, last, last_reward, last_se = evals[-1]
    noise = z * (best_se**2 + last_se**2) ** 0.5
    what = f"held-out {judge or 'score'}"
    line = f"{what}: {evals[0][1]:.3f} at iteration {evals[0][0]} → best {best:.3f} at {best_it}"
    line += f" → {last:.3f} at {last_it}"
    if last_it != best_it and best - last > noise:
        at_best = next((e[2] for e in evals if e[0] == best_it), None)
        rm = ""
        if at_best is not None and last_reward is not None:
            rm = f" while the training reward went {at_best:.3f} → {last_reward:.3f}"
        line += (f"\nwarning: the held-out score peaked at iteration {best_it} and fell by "
                 f"{best - last:.3f}{rm}: over-optimisation of the reward model (output_dir/best/actor "
                 f"holds iteration {best_it} unless save_best=false); fewer iterations, a larger "
                 "kl_coef or a better reward model help.")  # fmt: skip
    return line


def _with_gaps(rec: dict) -> dict:
    """An eval record plus the changed-vs-kept reward gaps: on the edited side the added tokens
    should score above the kept ones (``gap_edited`` > 0), on the original side the removed ones
    below (``gap_original`` > 0)."""
    out = dict(rec)
    keys = (
        "reward_changed_edited",
        "reward_unchanged_edited",
        "reward_changed_original",
        "reward_unchanged_original",
    )
    v = [_number(rec.get(k)) for k in keys]
    if v[0] is not None and v[1] is not None:
        out["gap_edited"] = v[0] - v[1]
    if v[2] is not None and v[3] is not None:
        out["gap_original"] = v[3] - v[2]
    return out


def reward_summary(
    records: Sequence[dict],
    outputs: dict[str, str],
    times: dict[str, float],
    tokens_per_s: float | None,
    peak_memory_mb: float | None,
) -> str:
    """The reward-model table from ``metrics.jsonl`` records (``split`` ``train`` / ``eval``, the
    fields ``trainer/reward.py`` logs): first → last evaluation of :data:`REWARD_ROWS` (rows a run
    has no data for print ``n/a``: no gold order, no edited pairs), the seconds per phase and the
    training tokens/s the trainer measured, and its peak memory."""
    evals = [_with_gaps(r) for r in records if r.get("split") == "eval"]
    rows = [(label, start_end(evals, key)) for label, key in REWARD_ROWS]
    steps = [r.get("step") for r in records if r.get("split") == "train"]
    title = f"summary: {steps[-1] if steps else 0} steps"
    title += f", {len(evals)} evaluation{'s' if len(evals) != 1 else ''}"
    throughput = {"train": tokens_per_s} if tokens_per_s else {}
    return format_summary(title, rows, times, throughput, peak_memory_mb, outputs)
