"""trainer/eval/plot.py: the figures' axes and lines for one and several runs (matplotlib's
objects), the PNG files of a real tiny run (and the ones the trainers wrote), bad input."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from _tiny_runs import tiny_ppo_run

from trainer.eval.plot import PPO_PANELS, REWARD_PANELS, add_arguments, make_figures, plot_runs, run_cli

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, str]:
    return tiny_ppo_run(tmp_path_factory.getbasetemp())


def _ppo_records(n: int, gold: bool = True, shift: float = 0.0) -> list[dict]:
    keys = {k for _, _, lines in PPO_PANELS for _, k, _ in lines}
    if not gold:
        keys -= {"gold_reward", "gold_reward_per_token"}
    return [{"iteration": i + 1, **{k: shift + 0.1 * i for k in sorted(keys)}} for i in range(n)]


def _lines(fig) -> list[list[str]]:
    return [[ln.get_label() for ln in ax.get_lines()] for ax in fig.axes]


def test_one_run_every_panel_one_axis_each():
    figs = make_figures({"run": _ppo_records(4)})
    names = [p[0] for p in PPO_PANELS]
    assert list(figs) == [*names, "overview"]
    for (name, _, keys), _ in zip(PPO_PANELS, names):
        assert len(figs[name].axes) == 1
        assert _lines(figs[name]) == [[label for _, _, label in keys]]  # one line per metric
    assert len(figs["overview"].axes) == len(PPO_PANELS)
    losses = figs["losses"].axes[0]
    xs, ys = losses.get_lines()[0].get_data()
    assert list(xs) == [1, 2, 3, 4] and list(ys) == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_several_runs_share_an_axis_with_a_legend():
    figs = make_figures({"token": _ppo_records(3), "sequence": _ppo_records(5, gold=False, shift=1.0)})
    assert _lines(figs["losses"]) == [
        ["token: policy", "token: value", "sequence: policy", "sequence: value"]
    ]
    legend = [t.get_text() for t in figs["losses"].axes[0].get_legend().get_texts()]
    assert legend == ["token: policy", "token: value", "sequence: policy", "sequence: value"]
    # only one run has a gold reward
    assert _lines(figs["gold_reward"]) == [["token: R(τ): mean utility", "token: per token"]]
    assert [len(ln.get_xdata()) for ln in figs["reward"].axes[0].get_lines()] == [3, 5]


def test_reward_model_records_by_split():
    recs = [
        {"split": "train", "step": 10, "loss": 0.7, "accuracy": 0.5, "lr": 1e-3, "tokens_per_s": 9.0},
        {"split": "eval", "step": 10, "loss": 0.69, "edited_accuracy": 0.6, "auroc_added": float("nan")},
        {"split": "train", "step": 20, "loss": 0.5, "accuracy": 0.7, "lr": 5e-4, "tokens_per_s": 9.5},
        {"split": "eval", "step": 20, "loss": 0.6, "edited_accuracy": 0.8, "auroc_added": 0.7},
    ]
    figs = make_figures({"rm": recs})
    assert set(figs) == {"loss", "accuracy", "auroc", "lr", "throughput", "overview"}  # no token means
    loss = figs["loss"].axes[0].get_lines()
    assert [ln.get_label() for ln in loss] == ["train", "held-out"]
    assert list(loss[1].get_ydata()) == [0.69, 0.6]
    assert list(figs["auroc"].axes[0].get_lines()[0].get_xdata()) == [20]  # the NaN point is left out
    assert len(figs["overview"].axes) == 5
    assert len(REWARD_PANELS) == 6


def test_tiny_run_pngs_written_and_trainers_wrote_theirs(tiny_run, tmp_path):
    out, _ = tiny_run
    names = [p[0] for p in PPO_PANELS]
    written = plot_runs([out / "metrics.jsonl", out / "metrics.jsonl"], tmp_path, labels=["a", "b"])
    assert sorted(p.name for p in written) == sorted(f"{n}.png" for n in [*names, "overview"])
    for p in written:
        data = p.read_bytes()
        assert data[:8] == PNG and len(data) > 5000, p
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically: no temporary left
    ppo_pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert ppo_pngs == sorted(f"{n}.png" for n in [*names, "overview"])
    rm_pngs = {p.name for p in (out / "rm" / "plots").glob("*.png")}
    assert {"loss.png", "accuracy.png", "auroc.png", "overview.png"} <= rm_pngs
    assert all((out / "rm" / "plots" / n).stat().st_size > 5000 for n in rm_pngs)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))


def test_cli_bad_input_exit_2_naming_the_file_and_line(tmp_path, capsys):
    assert _cli([str(tmp_path / "none.jsonl"), "-o", str(tmp_path)]) == 2
    assert "none.jsonl: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"iteration": 1, "reward": 0.1}\nnot json\n{"iteration": 2, "reward": 0.2}\n')
    assert _cli([str(bad), "-o", str(tmp_path / "p")]) == 2
    assert "bad.jsonl: line 2: not JSON" in capsys.readouterr().err
    torn = tmp_path / "torn.jsonl"  # a kill mid-write leaves a torn last line: skipped
    torn.write_text('{"iteration": 1, "reward": 0.1}\n{"iteration": 2, "rew')
    assert _cli([str(torn), "-o", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "reward.png").exists()
    rm = tmp_path / "rm.jsonl"
    rm.write_text(json.dumps({"split": "train", "step": 1, "loss": 0.5}) + "\n")
    assert _cli([str(torn), str(rm), "-o", str(tmp_path / "m")]) == 2
    assert "cannot plot PPO and reward-model runs together" in capsys.readouterr().err
    assert _cli([str(torn), "--labels", "a", "b", "-o", str(tmp_path / "l")]) == 2
    assert "2 labels for 1 metrics files" in capsys.readouterr().err
