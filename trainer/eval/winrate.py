"""Win rates from pairwise annotations, the way the AlpacaEval leaderboard computes them.

An annotation compares ``output_1`` (the reference, e.g. text-davinci-003 in AlpacaEval 1) with
``output_2`` (the model): ``preference`` 1 = output_1 wins, 2 = output_2 wins, 0 or 1.5 = a draw;
AlpacaEval 2 writes continuous preferences in [1, 2]. With s = preference − 1 (a draw is 0.5):

    win_rate       = 100 · mean(s)                       (AE1: 100 · (n_wins + ½ n_draws) / n_total)
    standard_error = 100 · std(s, ddof=1) / √n_total     (pandas' ``sem``)

Annotations whose preference is missing (null, NaN) or not a preference are left out of every
count, as the leaderboard does (``n_missing`` says how many).

    fgrlhf winrate annotations.json [--json summary.json]
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainer.data.formats import DataError, read_records, valid_records

__all__ = ["WinrateConfig", "load_annotations", "summarize", "winrate"]


@dataclass
class WinrateConfig:
    """Settings of ``fgrlhf winrate`` (its flags are derived from these fields)."""

    annotations: str
    """A JSON list or JSONL of AlpacaEval annotations (``preference``: 1 the reference, 2 the model
    wins, 0 or 1.5 a draw)."""
    json: str | None = None
    """Also write the summary as JSON to this file."""


def _preference(value: Any) -> float | None:
    """The preference as a float in [1, 2] (a draw 0 becomes 1.5), or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    p = 1.5 if value == 0 else float(value)
    return p if 1.0 <= p <= 2.0 else None


def winrate(preferences: Sequence[Any]) -> dict[str, float]:
    """Leaderboard metrics of raw ``preferences`` (anything not a preference is left out).

    Returns:
        ``win_rate``, ``standard_error`` (percent), ``n_wins``, ``n_wins_base``, ``n_draws``,
        ``n_total`` (the valid ones), ``n_missing``.

    Example (by hand): [2, 1, 0, 2] -> s = [1, 0, 0.5, 1]: win rate 62.5, sem = 100 · 0.4787 / 2
    = 23.94; wins 2, base wins 1, draws 1.
    """
    prefs = [_preference(p) for p in preferences]
    valid = [p for p in prefs if p is not None]
    n = len(valid)
    out: dict[str, float] = {
        "n_wins": sum(p > 1.5 for p in valid),
        "n_wins_base": sum(p < 1.5 for p in valid),
        "n_draws": sum(p == 1.5 for p in valid),
        "n_total": n,
        "n_missing": len(prefs) - n,
    }
    if n == 0:
        return {**out, "win_rate": float("nan"), "standard_error": float("nan")}
    s = [p - 1.0 for p in valid]
    mean = math.fsum(s) / n
    var = math.fsum((x - mean) ** 2 for x in s) / (n - 1) if n > 1 else float("nan")
    return {**out, "win_rate": 100 * mean, "standard_error": 100 * math.sqrt(var / n)}


def load_annotations(path: str) -> list[dict]:
    """The annotation records of an AlpacaEval-format file (a JSON list, or JSONL).

    Raises:
        DataError: a record that is not an object or has no ``preference`` key (named).
    """

    def annotation(where: str, rec: Any) -> dict:
        if not isinstance(rec, dict):
            raise DataError(path, f"expected a JSON object, got {type(rec).__name__}", where)
        if "preference" not in rec:
            raise DataError(
                path, "missing (1 = output_1 wins, 2 = output_2 wins, 0 = draw)", where, "preference"
            )
        return rec

    out = [rec for _, rec in valid_records(read_records(path), annotation)]
    if not out:
        raise DataError(path, "no annotations")
    return out


def summarize(annotations: list[dict]) -> dict[str, Any]:
    """:func:`winrate` of all annotations, the average length (characters) of ``output_2`` as the
    leaderboard's ``avg_length`` (over the valid annotations), the generators, and a breakdown by
    ``dataset`` when the records carry one."""
    valid = [a for a in annotations if _preference(a.get("preference")) is not None]
    summary: dict[str, Any] = winrate([a.get("preference") for a in annotations])
    lengths = [len(a["output_2"]) for a in valid if isinstance(a.get("output_2"), str)]
    summary["avg_length"] = int(sum(lengths) / len(lengths)) if lengths else None
    for side in ("generator_1", "generator_2"):
        names = sorted({str(a[side]) for a in annotations if a.get(side) is not None})
        summary[side] = names[0] if len(names) == 1 else names
    by: dict[str, list] = defaultdict(list)
    for a in annotations:
        if a.get("dataset") is not None:
            by[str(a["dataset"])].append(a.get("preference"))
    if by:
        summary["by_dataset"] = {k: winrate(v) for k, v in sorted(by.items())}
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a short table a person reads."""
    lines = [
        f"model {summary.get('generator_2')} vs reference {summary.get('generator_1')}",
        f"win rate {summary['win_rate']:.2f} ± {summary['standard_error']:.2f} (s.e.)   "
        f"wins {summary['n_wins']}, reference wins {summary['n_wins_base']}, draws {summary['n_draws']}, "
        f"total {summary['n_total']}" + (f", missing {summary['n_missing']}" if summary["n_missing"] else ""),
        f"average length of the model's outputs {summary['avg_length']} characters",
    ]
    for name, m in summary.get("by_dataset", {}).items():
        lines.append(f"  {name:<16} {m['win_rate']:6.2f} ± {m['standard_error']:5.2f}  (n {m['n_total']})")
    return "\n".join(lines)
