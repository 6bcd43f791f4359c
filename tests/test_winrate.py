"""trainer.eval.winrate / `fgrlhf winrate`: the AlpacaEval arithmetic by hand, and the published
leaderboard reproduced from the real annotations in ../shared/data/alpaca_eval (skipped without it)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.eval.winrate import load_annotations, summarize, winrate

ROOT = Path(__file__).resolve().parent.parent
AE = ROOT.parent / "shared" / "data" / "alpaca_eval"
MODELS = ["alpaca-7b", "llama-2-7b-chat-hf", "alpaca-farm-ppo-human"]


def test_winrate_by_hand_and_missing_preferences():
    # s = [1, 0, 0.5, 1]: mean 0.625; sample std 0.4787 / sqrt(4) -> 23.94
    m = winrate([2, 1, 0, 2])
    assert m["win_rate"] == pytest.approx(62.5) and m["standard_error"] == pytest.approx(23.936, abs=1e-3)
    assert (m["n_wins"], m["n_wins_base"], m["n_draws"], m["n_total"]) == (2, 1, 1, 4)
    # missing or invalid preferences are left out of every count; 1.5 is a draw; AE2 floats count as scores
    m2 = winrate([2, 1, None, float("nan"), "x", 1.5, 2])
    assert m2["n_total"] == 4 and m2["n_missing"] == 3 and m2["win_rate"] == pytest.approx(62.5)
    assert winrate([1.25, 1.75])["win_rate"] == pytest.approx(50.0)
    assert math.isnan(winrate([None])["win_rate"])


@pytest.mark.skipif(not AE.is_dir(), reason="../shared/data/alpaca_eval is not beside this checkout")
@pytest.mark.parametrize("model", MODELS)
def test_reproduces_the_published_alpaca_eval_leaderboard(model):
    with open(AE / "src_leaderboards__data_AlpacaEval__alpaca_eval_gpt4_leaderboard.csv", newline="") as fh:
        board = {row[""]: row for row in csv.DictReader(fh)}
    want = board[model]
    got = summarize(load_annotations(str(AE / f"{model}__alpaca_eval_gpt4__annotations.json")))
    for key in ("n_wins", "n_wins_base", "n_draws", "n_total", "avg_length"):
        assert got[key] == int(want[key]), key
    # equal to float rounding (the leaderboard's pandas sums may differ in the last bit)
    assert got["win_rate"] == pytest.approx(float(want["win_rate"]), rel=1e-12, abs=0)
    assert got["standard_error"] == pytest.approx(float(want["standard_error"]), rel=1e-12, abs=0)
    assert got["generator_1"] == "text_davinci_003" and got["generator_2"] == model


def test_cli_prints_and_writes_the_summary(tmp_path):
    ann = [
        {"instruction": "a", "output_1": "r", "output_2": "mm", "generator_1": "ref", "generator_2": "m",
         "dataset": "x", "preference": 2},
        {"instruction": "b", "output_1": "r", "output_2": "mmmm", "generator_1": "ref", "generator_2": "m",
         "dataset": "y", "preference": 1},
    ]  # fmt: skip
    path = tmp_path / "a.json"
    path.write_text(json.dumps(ann))
    cmd = [sys.executable, "-m", "trainer.cli", "winrate", str(path), "--json", str(tmp_path / "s.json")]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "win rate 50.00" in p.stdout and "model m vs reference ref" in p.stdout
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["avg_length"] == 3 and set(s["by_dataset"]) == {"x", "y"}
    (tmp_path / "bad.json").write_text(json.dumps([{"instruction": "a"}]))
    p = subprocess.run(
        [*cmd[:4], str(tmp_path / "bad.json")], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2 and "record 1: field 'preference': missing" in p.stderr


def test_no_valid_preference_is_an_error_and_the_json_is_strict(tmp_path, caplog):
    """No valid preference used to print "win rate nan" and exit 0, ``--json DIR`` to raise a
    traceback, and the JSON of one annotation to hold a bare NaN (its standard error)."""
    from trainer.cli import main as cli

    none = tmp_path / "none.json"
    none.write_text(json.dumps([{"preference": None}, {"preference": 7}]))
    assert cli(["winrate", str(none)]) == 2
    assert "no valid preference in 2 annotations" in caplog.text
    one = tmp_path / "one.json"
    one.write_text(json.dumps([{"output_2": "x", "preference": 2}]))
    assert cli(["winrate", str(one), "--json", str(tmp_path)]) == 2
    assert "is a directory; expected a file name" in caplog.text
    assert cli(["winrate", str(one), "--json", str(one)]) == 2 and "would destroy the input" in caplog.text
    assert cli(["winrate", str(one), "--json", str(tmp_path / "s.json")]) == 0

    def refuse(c):
        raise ValueError(c)

    s = json.loads((tmp_path / "s.json").read_text(), parse_constant=refuse)
    assert s["win_rate"] == 100.0 and s["standard_error"] is None
