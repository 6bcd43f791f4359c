"""Training curves to PNG: ``fgrlhf plot METRICS.jsonl [MORE.jsonl ...] [-o DIR]``.

Reads the ``metrics.jsonl`` of one or more runs (``trainer/ppo.py``: one record per
``iteration``; ``trainer/reward.py``: ``split`` ``train`` / ``eval`` records per ``step``) and draws
each panel of :data:`PPO_PANELS` / :data:`REWARD_PANELS` that the runs have data for, one line per
run and metric, several runs on one axis with a legend (e.g. token- vs sequence-level reward)::

    fgrlhf plot runs/ppo_token/metrics.jsonl runs/ppo_seq/metrics.jsonl --labels token sequence -o plots/

Writes ``DIR/<panel>.png`` for every panel plus ``DIR/overview.png`` (all panels on one figure).
Matplotlib's ``Agg`` backend: no display needed. The trainers call :func:`plot_runs` at the end
(config key ``plots``) and write ``output_dir/plots/``.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.data.formats import DataError
from trainer.infra.command import add_flags, config_from_args, run
from trainer.infra.metrics import read_log
from trainer.infra.outputs import atomic

__all__ = [
    "PPO_PANELS",
    "REWARD_PANELS",
    "Panel",
    "add_arguments",
    "make_figures",
    "panel_lines",
    "plot_runs",
    "read_metrics",
    "run_cli",
]

# A panel: (file name, title, [(record filter split or None, key, line label)]).
Panel = tuple[str, str, list[tuple[str | None, str, str]]]

PPO_PANELS: list[Panel] = [
    ("reward", "RM reward R(τ)", [(None, "reward", "RM reward")]),
    (
        "gold_reward",
        "gold reward (synthetic world)",
        [(None, "gold_reward", "R(τ): mean utility"), (None, "gold_reward_per_token", "per token")],
    ),
    # the actor's answers to held-out prompts (eval_every): rising training reward with a falling
    # held-out score is over-optimisation of the reward model
    ("heldout", "held-out score (eval_every)", [(None, "heldout_score", "held-out judge")]),
    ("kl", "KL to the reference (nats / sequence)", [(None, "kl", "KL")]),
    ("kl_coef", "β (KL coefficient)", [(None, "kl_coef", "β")]),
    ("losses", "losses", [(None, "policy_loss", "policy"), (None, "value_loss", "value")]),
    ("clipfrac", "clip fractions", [(None, "clipfrac", "policy"), (None, "value_clipfrac", "value")]),
    ("explained_variance", "explained variance", [(None, "explained_variance", "EV")]),
    ("response_length", "response length (tokens)", [(None, "response_length", "length")]),
    (
        "time",
        "seconds per phase",
        [
            (None, "time_generate_s", "generate"),
            (None, "time_score_s", "score"),
            (None, "time_train_s", "train"),
        ],
    ),
]
REWARD_PANELS: list[Panel] = [
    ("loss", "loss", [("train", "loss", "train"), ("eval", "loss", "held-out")]),
    (
        "accuracy",
        "pair accuracy",
        [
            ("train", "accuracy", "train"),
            ("eval", "edited_accuracy", "held-out edited"),
            ("eval", "original_accuracy", "held-out original"),
            ("eval", "gold_accuracy", "held-out gold order"),
        ],
    ),
    (
        "token_rewards",
        "mean token reward: changed vs kept",
        [
            ("eval", "reward_changed_edited", "added (edited)"),
            ("eval", "reward_unchanged_edited", "kept (edited)"),
            ("eval", "reward_changed_original", "removed (original)"),
            ("eval", "reward_unchanged_original", "kept (original)"),
        ],
    ),
    (
        "auroc",
        "AUROC of changed tokens",
        [("eval", "auroc_added", "added"), ("eval", "auroc_removed", "removed")],
    ),
    ("lr", "learning rate", [("train", "lr", "lr")]),
    ("throughput", "training tokens/s", [("train", "tokens_per_s", "tokens/s")]),
]


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a torn last line, as a kill leaves it, is skipped).

    Raises:
        DataError: no such file, an empty file, or a bad line that is not the last (names it).
    """
    return [rec for _, rec in read_log(path, "no metrics records")]


def _kind(records: list[dict]) -> str:
    return "ppo" if any("iteration" in r for r in records) else "reward"


def panel_lines(records: list[dict], panel: Panel) -> list[tuple[str, list[float], list[float]]]:
    """``(label, xs, ys)`` of each line of ``panel`` that ``records`` have finite values for
    (x: ``iteration`` for PPO records, else ``step``)."""
    x_key = "iteration" if _kind(records) == "ppo" else "step"
    out = []
    for split, key, label in panel[2]:
        xs, ys = [], []
        for r in records:
            if split is not None and r.get("split") != split:
                continue
            v, x = r.get(key), r.get(x_key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and x is not None:
                xs.append(float(x))
                ys.append(float(v))
        if xs:
            out.append((label, xs, ys))
    return out


def make_figures(runs: dict[str, list[dict]]) -> dict[str, Any]:
    """One matplotlib figure per panel with data, plus ``overview`` (every such panel as a
    subplot), for ``runs`` ``{label: records}`` (all PPO or all reward-model runs).

    Returns:
        ``{panel name: Figure}``; every panel's axis holds one line per (run, metric) with data,
        labelled ``run: metric`` when there are several runs (else the metric).

    Raises:
        ValueError: PPO and reward-model runs mixed (their x axes differ).
    """
    import matplotlib  # lazy: heavy; the Agg backend is chosen before pyplot

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # lazy: heavy; the Agg backend is chosen before pyplot
    from matplotlib.ticker import MaxNLocator  # lazy: heavy; the Agg backend is chosen before pyplot

    kinds = {_kind(r) for r in runs.values()}
    if len(kinds) > 1:
        raise ValueError("cannot plot PPO and reward-model runs together (iterations vs steps)")
    kind = kinds.pop()
    panels = PPO_PANELS if kind == "ppo" else REWARD_PANELS
    xlabel = "iteration" if kind == "ppo" else "step"
    data = []
    for panel in panels:
        lines = [
            (f"{run}: {label}" if len(runs) > 1 else label, xs, ys)
            for run, recs in runs.items()
            for label, xs, ys in panel_lines(recs, panel)
        ]
        if lines:
            data.append((panel, lines))

    def draw(ax, panel: Panel, lines) -> None:
        for label, xs, ys in lines:
            ax.plot(xs, ys, label=label, marker="." if len(xs) < 30 else None)
        ax.set_title(panel[1], fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    figs: dict[str, Any] = {}
    for panel, lines in data:
        fig = Figure(figsize=(5, 3.2), dpi=100, layout="constrained")
        draw(fig.add_subplot(), panel, lines)
        figs[panel[0]] = fig
    if data:
        cols = min(3, len(data))
        rows = math.ceil(len(data) / cols)
        fig = Figure(figsize=(4.2 * cols, 2.9 * rows), dpi=80, layout="constrained")
        for i, (panel, lines) in enumerate(data):
            draw(fig.add_subplot(rows, cols, i + 1), panel, lines)
        figs["overview"] = fig
    return figs


def plot_runs(paths: list[str | Path], out_dir: str | Path, labels: list[str] | None = None) -> list[Path]:
    """Read each ``metrics.jsonl`` of ``paths`` and write ``out_dir/<panel>.png`` and
    ``out_dir/overview.png`` (each written to a temporary name, then renamed: a reader never sees
    a half-written PNG). Labels default to each file's parent directory name.

    Returns:
        The PNG files written.

    Raises:
        DataError: an unreadable metrics file, or no plottable metric in any.
        ValueError: as :func:`make_figures`, or a wrong number of labels.
    """
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} metrics files")
    runs: dict[str, list[dict]] = {}
    for i, p in enumerate(paths):
        label = labels[i] if labels else (Path(p).resolve().parent.name or str(p))
        while label in runs:  # two runs with the same directory name
            label += "'"
        runs[label] = read_metrics(p)
    figs = make_figures(runs)
    if not figs:
        raise DataError(", ".join(map(str, paths)), "no plottable metric in these records")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figs.items():
        path = out / f"{name}.png"
        with atomic(path) as tmp:
            fig.savefig(tmp, format="png")
        written.append(path)
    return written


@dataclass
class PlotConfig:
    """Settings of ``fgrlhf plot`` (its flags are derived from these fields)."""

    metrics: list[str]
    """``metrics.jsonl`` of one or more runs (one kind)."""
    output_dir: str = "plots"
    """Where the PNG files go."""
    labels: list[str] | None = None
    """One legend label per metrics file."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``fgrlhf plot`` (:class:`PlotConfig`)."""
    add_flags(parser, PlotConfig, positional=("metrics",), short={"output_dir": "-o"})


def run_cli(args: argparse.Namespace) -> int:
    """``fgrlhf plot``: 0 written; 2 bad input (an unreadable or empty metrics file, mixed kinds,
    a wrong number of labels); 1 a plot that cannot be written; one line on stderr
    (:func:`trainer.infra.command.run`)."""

    def job() -> None:
        cfg = config_from_args(PlotConfig, args)
        written = plot_runs(cfg.metrics, cfg.output_dir, cfg.labels)
        print(f"wrote {len(written)} plots to {cfg.output_dir}: " + ", ".join(p.name for p in written))

    return run(job, lambda message: print(f"fgrlhf plot: {message}", file=sys.stderr))


if __name__ == "__main__":  # `python -m trainer.eval.plot ...` (the same as `fgrlhf plot ...`)
    import sys

    _parser = argparse.ArgumentParser(
        prog="fgrlhf plot", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    add_arguments(_parser)
    sys.exit(run_cli(_parser.parse_args()))
