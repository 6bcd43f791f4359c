"""trainer/infra/summary.py: the end-of-run table, by hand and in the tiny runs' output; the PPO
memory estimate in MiB below 1 GiB."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from _tiny_runs import tiny_ppo_run

from trainer.infra.summary import PPO_ROWS, REWARD_ROWS, format_bytes, ppo_summary, reward_summary, start_end


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, str]:
    return tiny_ppo_run(tmp_path_factory.getbasetemp())


def test_format_bytes_mib_below_one_gib():
    assert format_bytes(0.5 * 1024**3) == "512.0 MiB"
    assert format_bytes(3 * 1024**2) == "3.0 MiB"
    assert format_bytes(1024**3) == "1.00 GiB"
    assert format_bytes(80.5 * 1024**3) == "80.50 GiB"


def test_ppo_summary_by_hand():
    recs = [
        {"iteration": 1, "reward": 0.5, "kl": 0.0, "time_generate_s": 2.0, "tokens_per_s_generate": 100.0,
         "time_train_s": 1.0, "tokens_per_s_train": 50.0, "peak_memory_mb": 300.0},
        {"iteration": 2, "reward": 1.25, "kl": 0.2, "time_generate_s": 3.0, "tokens_per_s_generate": 200.0,
         "time_train_s": 1.0, "tokens_per_s_train": 150.0, "peak_memory_mb": 2048.0},
    ]  # fmt: skip
    assert start_end(recs, "reward") == (0.5, 1.25)
    assert start_end(recs, "gold_reward_per_token") is None
    text = ppo_summary(recs, {"metrics": "m.jsonl", "plots": ""})
    assert "RM reward" in text and "0.5 → 1.25" in text
    assert re.search(r"gold reward / token\s+n/a", text)  # no gold reward in these records
    # generate: 5 s in all; tokens 2·100 + 3·200 = 800 -> 160 tokens/s. train: 2 s, 50 + 150 = 200 -> 100
    assert "generate 5.00 s · train 2.00 s" in text
    assert "generate 160 · train 100" in text
    assert "2.0 MiB" not in text and "2.00 GiB" in text  # peak: the largest, 2048 MiB
    assert "(not written)" in text and "m.jsonl" in text


def test_reward_summary_gaps_by_hand():
    recs = [
        {"split": "train", "step": 10, "loss": 0.6},
        {"split": "eval", "step": 10, "edited_accuracy": 0.5, "reward_changed_edited": 0.1,
         "reward_unchanged_edited": 0.3, "reward_changed_original": 0.2, "reward_unchanged_original": 0.2},
        {"split": "eval", "step": 20, "edited_accuracy": 0.75, "reward_changed_edited": 1.0,
         "reward_unchanged_edited": 0.25, "reward_changed_original": -1.0, "reward_unchanged_original": 0.5},
    ]  # fmt: skip
    text = reward_summary(recs, {}, {"train": 1.0}, 1000.0, 10.0)
    assert re.search(r"edited pairs\s+0.5 → 0.75", text)
    # edited side: added − kept = 0.1 − 0.3 = −0.2 → 1.0 − 0.25 = 0.75;
    # original side: kept − removed = 0.2 − 0.2 = 0 → 0.5 − (−1.0) = 1.5
    assert re.search(r"changed − kept reward \(edited side\)\s+-0.2 → 0.75", text)
    assert re.search(r"kept − changed reward \(original side\)\s+0 → 1.5", text)
    assert re.search(r"AUROC added tokens\s+n/a", text)
    assert "train 1,000" in text and "10.0 MiB" in text


def _table(log: str, title: str) -> str:
    """The summary block that starts at ``title`` (its lines indented under it)."""
    lines = log[log.index(title) :].splitlines()
    return "\n".join([lines[0], *itertools.takewhile(lambda ln: ln.startswith("  "), lines[1:])])


def test_tiny_runs_end_with_every_field(tiny_run):
    out, log = tiny_run
    rm = _table(log, "[reward] summary")
    ppo = _table(log, "[ppo] summary")
    for label, _ in REWARD_ROWS:
        assert re.search(re.escape(label) + r"\s+-?[\d.]+(e-?\d+)? → -?[\d.]+", rm), (label, rm)
    for label, _ in PPO_ROWS:  # the synthetic world has a gold reward: every row has numbers
        assert re.search(re.escape(label) + r"\s+-?[\d.]+(e-?\d+)? → -?[\d.]+", ppo), (label, ppo)
    for block, phases in ((rm, ("train", "eval")), (ppo, ("generate", "score", "train"))):
        assert all(re.search(rf"time .*{p} [\d.]+ s", block) for p in phases), block
        assert re.search(r"tokens/s\s+\S+ [\d,]+", block) and re.search(r"peak memory.*\d (MiB|GiB)", block)
    ppo_outputs = dict(re.findall(r"^    (\S.*?)\s{2,}(\S+)$", ppo, re.M))
    expect = {
        "checkpoints": out / "checkpoints", "final actor": out / "final" / "actor",
        "metrics": out / "metrics.jsonl", "rollouts": out / "rollouts.jsonl", "plots": out / "plots",
        "HTML page": out / "report.html", "reward model": out / "rm" / "final",
        "best actor (held-out)": out / "best" / "actor",
    }  # fmt: skip
    assert {k: Path(v) for k, v in ppo_outputs.items()} == expect
    assert all(p.exists() for p in expect.values())
    rm_outputs = dict(re.findall(r"^    (\S.*?)\s{2,}(\S.*)$", rm, re.M))
    assert Path(rm_outputs["HTML page"]) == out / "rm" / "report.html"
    assert Path(rm_outputs["plots"]) == out / "rm" / "plots"
    assert Path(rm_outputs["final model"]).exists()


def test_tiny_memory_estimate_prints_mib(tiny_run):
    _, log = tiny_run
    line = next(ln for ln in log.splitlines() if "memory estimate:" in ln)
    assert "0.00 GiB" not in line and "GiB" not in line, line
    parts = re.findall(r"(params|grads|optimizer|generation|kv_cache|activations|total) ([\d.]+) MiB", line)
    assert len(parts) == 7 and all(float(v) > 0 for _, v in parts), line


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
