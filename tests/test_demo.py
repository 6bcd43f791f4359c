"""The simulated-preference world (annotators, editor, gold, the context-dependent variant), the
gold judge, and ``fgrlhf demo --quick`` end to end (every table filled, a rerun resumes)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import statistics
import time
from pathlib import Path

import pytest
import torch

from trainer.data.formats import Prompt
from trainer.data.synthetic import (
    SyntheticConfig,
    annotate,
    base_response,
    bt_scale,
    build_tokenizer,
    generate,
    gold_reward,
    label_pairs,
    load_world,
    sample_prompt,
    simulated_edit,
    token_utilities,
    write_synthetic,
)


# --- the world -------------------------------------------------------------------------------
def test_bt_scale_by_hand_and_limits():
    assert bt_scale([1.0, 1.0], 1 / (1 + math.exp(-1))) == pytest.approx(1.0, rel=1e-9)
    assert bt_scale([1.0, -1.0, 0.0], 1 / (1 + math.exp(-2))) == pytest.approx(0.5, rel=1e-9)  # |Δ|, ties out
    assert (
        bt_scale([0.3], 1.0) == 0.0 and math.isinf(bt_scale([0.3], 0.5)) and math.isinf(bt_scale([0.0], 0.7))
    )
    rng = random.Random(0)
    assert all(annotate(rng, d, 0.0) == (d > 0) for d in (-1.0, 0.2, 3.0))  # scale 0: the gold order


@pytest.mark.parametrize("agreement", [0.6, 0.65, 0.8, 1.0])
def test_annotators_agree_with_gold_at_the_knob(agreement):
    recs = generate(SyntheticConfig(n_pairs=4000, agreement=agreement, seed=5))
    decided = [r for r in recs if r["gold"]["chosen"] != r["gold"]["original"]]
    observed = statistics.fmean(r["gold"]["chosen"] > r["gold"]["original"] for r in decided)
    if agreement == 1.0:
        assert observed == 1.0
    else:  # 4000 Bernoulli draws: s.e. <= 0.008
        assert observed == pytest.approx(agreement, abs=0.03)


def test_gold_is_the_mean_token_utility():
    cfg = SyntheticConfig()
    assert gold_reward("p1", "g1 n2 b3 n4", cfg) == pytest.approx((1 + 0 - 1.5 + 0) / 4)
    assert gold_reward("p1", "", cfg) == 0.0
    assert gold_reward("p1", "g1 g2", cfg) == gold_reward("p1", "g1 g2 g3 g4", cfg) == 1.0  # no length term


def test_editor_recall_and_helpful_content():
    full, none = (
        SyntheticConfig(editor_recall=1.0, p_insert=0.5),
        SyntheticConfig(editor_recall=0.0, p_insert=0.0),
    )
    rng = random.Random(1)
    inserted = 0
    for _ in range(300):
        prompt, resp = sample_prompt(rng, full), base_response(rng, full)
        e = simulated_edit(rng, prompt, resp, full)
        assert e != resp and not any(u < 0 for u in token_utilities(prompt, e, full))  # every harm fixed
        assert (
            gold_reward(prompt, e, full) > gold_reward(prompt, resp, full)
            or gold_reward(prompt, resp, full) == 1
        )
        inserted += len(e.split()) > len(resp.split())
        kept = simulated_edit(rng, prompt, resp, none)  # recall 0: harm stays, one good word is added
        assert [w for w in kept.split() if w.startswith("b")] == [
            w for w in resp.split() if w.startswith("b")
        ]
        assert len(kept.split()) == len(resp.split()) + 1
    assert 100 < inserted < 300  # p_insert 0.5, plus every edit that found nothing to fix


def test_context_dependent_harm():
    cfg = SyntheticConfig(context_harm=True, n_sensitive=4)
    assert token_utilities("p9 p10", "c1 g0", cfg) == [1.0, 1.0]  # safe context: c* helps
    assert token_utilities("p9 p2", "c1 g0", cfg) == [-1.5, 1.0]  # p2 is sensitive: c* harms
    rng = random.Random(2)
    fixed_safe = 0
    for _ in range(200):
        e = simulated_edit(rng, "p9 p2", "c1 n3 c2", cfg)
        assert "c1" not in e.split() and "c2" not in e.split()
        fixed_safe += simulated_edit(rng, "p9 p10", "c1 n3 c2", cfg).split().count("c1")
    assert fixed_safe == 200  # never edited where it is safe
    assert len(build_tokenizer(cfg)) == len(build_tokenizer(SyntheticConfig())) + cfg.n_context
    recs = generate(SyntheticConfig(n_pairs=300, context_harm=True))
    assert any(r["edited"] != r["original"] and "c" in {w[0] for w in r["edited"].split()} for r in recs)


@pytest.mark.parametrize("context_harm", [False, True])
def test_gold_reward_model_matches_the_text_gold(context_harm):
    from trainer.models import GoldReward

    cfg = SyntheticConfig(n_pairs=200, context_harm=context_harm)
    tok = build_tokenizer(cfg)
    g = GoldReward(tok, cfg)
    for r in generate(cfg):
        p = tok("<s> " + r["prompt"], add_special_tokens=False)["input_ids"]
        q = tok(r["original"] + " </s>", add_special_tokens=False)["input_ids"]  # EOS is not a word
        ids = torch.tensor([p + q])
        mask = torch.tensor([[False] * len(p) + [True] * len(q)])
        s = g.score(ids, torch.ones_like(ids), mask)
        assert s.sequence.item() == pytest.approx(gold_reward(r["prompt"], r["original"], cfg), abs=1e-6)


def test_label_pairs_is_pure_and_keeps_gold():
    items = [(f"x{i}", "p1 p3", "g1 n2 b1", "n1 n2 n3") for i in range(50)]
    a = label_pairs(items, SyntheticConfig(), seed=3)
    assert a == label_pairs(items, SyntheticConfig(), seed=3)
    for r in a:
        assert r["gold"]["chosen"] == gold_reward("p1 p3", r["chosen"], SyntheticConfig())
        assert r["gold"]["edited"] >= r["gold"]["original"]


def test_world_knobs_are_checked():
    for bad, key in ((dict(agreement=0.3), "agreement"), (dict(editor_recall=1.5), "editor_recall")):
        with pytest.raises(ValueError, match=f"synthetic.{key}"):
            generate(SyntheticConfig(n_pairs=2, **bad))


def _world_file(tmp_path: Path, **edits) -> Path:
    d = tmp_path / "world"
    d.mkdir(exist_ok=True)
    (d / "synthetic_config.json").write_text(json.dumps({**SyntheticConfig().__dict__, **edits}))
    return d


@pytest.mark.parametrize(
    "key, value",
    [("bad_quality", float("nan")), ("bad_quality", float("-inf")), ("p_bad", float("inf")),
     ("bad_quality", "-1.5"), ("n_good", 2.5), ("n_good", True), ("context_harm", 1), ("seed", None)],
    ids=repr,
)  # fmt: skip
def test_a_world_file_with_a_bad_value_is_refused_naming_file_and_key(tmp_path, key, value):
    """Every knob of a world file must have its field's type and be finite: load_world (and the
    gold judge reading it) refuses the file naming it and the key, instead of a NaN gold reward
    or a traceback later."""
    from trainer.eval.judges import make_judge
    from trainer.infra.config import ConfigError

    d = _world_file(tmp_path, **{key: value})
    with pytest.raises(ValueError, match=f"synthetic_config.json: {key}="):
        load_world(d)
    with pytest.raises(ConfigError, match=f"gold:.*{key}="):
        make_judge(f"gold:{d}")


def test_a_world_file_that_is_not_json_is_refused_naming_the_file(tmp_path):
    d = _world_file(tmp_path)
    for text in ("{", "[1, 2]", "\xff"):
        (d / "synthetic_config.json").write_text(text, encoding="latin-1")
        with pytest.raises(ValueError, match="synthetic_config.json: not a world file"):
            load_world(d)
    _world_file(tmp_path, agreement=0.3)  # the right type, an impossible value
    with pytest.raises(ValueError, match="synthetic_config.json: synthetic.agreement=0.3"):
        load_world(d)


def test_world_flags_of_the_demo_must_be_finite(tmp_path, capsys):
    """``--world`` values go through the same check as a world file (one place: check_world),
    before anything is written."""
    from trainer.cli import main
    from trainer.demo import DemoConfig

    for text in ("nan", "-inf", "inf"):
        assert main(["demo", "--world", f"bad_quality={text}", "--out", str(tmp_path / "x")]) == 2
        assert "--world: bad_quality=" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="--world: bad_quality=nan: expected a finite number"):
        DemoConfig(world={"bad_quality": float("nan")}).check()
    with pytest.raises(ValueError, match="--world: n_good='3': expected an int"):
        DemoConfig(world={"n_good": "3"}).check()


# --- the gold judge --------------------------------------------------------------------------
def test_gold_judge(tmp_path):
    from trainer.eval.judges import Comparison, GoldJudge, make_judge
    from trainer.infra.config import ConfigError

    write_synthetic(tmp_path / "w", SyntheticConfig(n_pairs=4))
    judge = make_judge(f"gold:{tmp_path / 'w'}")
    assert isinstance(judge, GoldJudge) and load_world(tmp_path / "w") == SyntheticConfig(n_pairs=4)
    p = Prompt("p1 p2")
    verdicts = asyncio.run(
        judge.compare_batch(
            [Comparison(p, "g1 n1", "n1 b1"), Comparison(p, "n1 b1", "g1 g2"), Comparison(p, "g1", "g2 g3")]
        )
    )
    assert [v.preference for v in verdicts] == [1, 2, 0]  # equal gold (1.0 each): a draw
    write_synthetic(tmp_path / "w2", SyntheticConfig(n_pairs=4, bad_quality=-3))
    assert make_judge(f"gold:{tmp_path / 'w2'}").version != judge.version
    with pytest.raises(ConfigError, match="gold:.*no synthetic world"):
        make_judge(f"gold:{tmp_path / 'nope'}")


# --- the demo ----------------------------------------------------------------------------------
def test_steps_to_target_and_mean_se():
    from trainer.demo import mean_se, steps_to_target

    assert steps_to_target([0, 1, 2, 3], [1, 2, 3, 4], 1.5, window=1) == (3, 6.0)
    assert steps_to_target([0, 1, 2, 3], [1, 2, 3, 4], 1.5, window=3) == (4, 10.0)  # mean(1, 2, 3) = 2
    assert steps_to_target([0, 0], [1, 1], 1.0) == (None, None)
    m = mean_se([1.0, 3.0, None])
    assert m["mean"] == 2.0 and m["se"] == pytest.approx(1.0) and m["n"] == 2 and m["n_missing"] == 1


def _recs(golds, secs=1.0):
    return [{"gold_reward": g, "kl": 0.0, "response_length": 5.0, "iteration_s": secs} for g in golds]


def test_table3_by_hand_censoring_and_a_baseline_that_does_not_improve():
    from trainer.demo import table3_of

    t = table3_of({"ppo_rlhf": _recs([0, 1, 1, 1, 1, 1]), "x": _recs([0, 2, 2, 2, 2, 2], 2.0)}, 0.5)
    assert t["start"] == 0 and t["target"] == 0.5 and t["baseline_improved"]
    assert t["arms"]["ppo_rlhf"]["iterations_to_target"] == 2 and t["arms"]["x"]["iterations_to_target"] == 2
    assert t["arms"]["x"]["seconds_to_target"] == 4.0 and t["arms"]["x"]["final_gold_reward"] == 2.0
    # an arm that never gets there: censored at len + 1 iterations and its whole run's seconds
    t = table3_of({"ppo_rlhf": _recs([0, 1, 1, 1, 1, 1]), "slow": _recs([0, 0, 0, 0, 0, 0])}, 1.0)
    slow = t["arms"]["slow"]
    assert not slow["reached"] and slow["iterations_to_target"] == 7 and slow["seconds_to_target"] == 6.0
    # a baseline that ends below its start: no target, no iterations for anyone
    t = table3_of({"ppo_rlhf": _recs([0.5, 0, 0, 0, 0, 0]), "x": _recs([0.5, 2, 2, 2, 2, 2])}, 0.8)
    assert not t["baseline_improved"] and t["arms"]["x"]["iterations_to_target"] is None


def test_sampling_streams_never_share_a_batch_seed():
    from trainer.demo import SAMPLING_STREAMS, sampling_seed

    batches = 10**4  # far more than any split has (fgrlhf generate seeds batch b with seed + b)
    spans = [
        (sampling_seed(s, k), sampling_seed(s, k) + batches) for s in range(20) for k in SAMPLING_STREAMS
    ]
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_demo_flags_are_checked(capsys):
    from trainer.cli import main

    assert main(["demo", "--seeds", "0", "--out", "/nonexistent/x"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["demo", "--agreement", "0.7", "--out", "/nonexistent/x"]) == 2
    assert "--agreement 0.7 must be one of --agreements" in capsys.readouterr().err
    assert main(["demo", "--world", "nope=1", "--out", "/nonexistent/x"]) == 2
    assert "--world 'nope=1'" in capsys.readouterr().err
    assert main(["demo", "--world", "p_bad=often", "--out", "/nonexistent/x"]) == 2
    assert "--world p_bad='often': expected a float" in capsys.readouterr().err


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    from trainer.demo import QUICK, DemoConfig, run_demo

    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(**QUICK, quick=True, out=str(out))
    return cfg, run_demo(cfg, progress=False)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_quick_demo_fills_every_table(quick_demo):
    from trainer.demo import ARMS, RMS

    cfg, res = quick_demo
    agg, seed0 = res["aggregate"], res["per_seed"][0]
    assert set(agg["table1"]) == {"sft", "figa", *(a[0] for a in ARMS)}
    for name, row in seed0["table1"].items():
        for key in ("win_rate", "standard_error", "gold_reward", "response_words", "finished"):
            assert _finite(row[key]), (name, key)
        assert 0 <= row["win_rate"] <= 100 and row["wins"] + row["losses"] + row["draws"] == cfg.n_eval
        assert ("kl" in row) == (name not in ("sft", "figa"))
    assert set(agg["table2"]) == {f"{a:g}" for a in cfg.agreements}
    for by in seed0["table2"].values():
        assert set(by) == set(RMS) and all(0 <= v <= 1 for v in by.values())
    t3 = seed0["table3"]
    assert _finite(t3["target"]) and _finite(t3["start"])
    reached = 0
    for name, arm in t3["arms"].items():
        assert len(arm["curve"]) == cfg.ppo_iterations and all(map(_finite, arm["curve"]))
        for key in ("final_gold_reward", "final_kl", "final_response_length", "seconds_per_iteration"):
            assert _finite(arm[key]), (name, key)
        if arm["iterations_to_target"] is not None:
            reached += 1
            assert 1 <= arm["iterations_to_target"] <= cfg.ppo_iterations + 1 and arm["seconds_to_target"] > 0
    assert reached == len(ARMS) or not t3["baseline_improved"]
    # the β = 0 arm is trained without the KL penalty, the others with the same one
    for name, *_ in ARMS:
        betas = {
            r["kl_coef"]
            for r in map(json.loads, (Path(cfg.out) / "seed0" / "ppo" / name / "metrics.jsonl").open())
        }
        assert betas == ({0.0} if name == "fg_token_ppo" else {cfg.kl_coef}), name
    # an arm that reached the target did so at the first iteration whose running mean got there
    for arm in t3["arms"].values():
        if arm["reached"] and t3["baseline_improved"]:
            k, c = arm["iterations_to_target"], arm["curve"]
            assert statistics.fmean(c[max(0, k - 3) : k]) >= t3["target"]
            assert k == 1 or statistics.fmean(c[max(0, k - 4) : k - 1]) < t3["target"]
    out = res["config"]["out"]
    for f in ("demo.json", "demo.md", "plots/table3_gold_reward.png", "plots/table2_rm_accuracy.png"):
        assert (Path(out) / f).stat().st_size > 0, f
    assert (Path(out) / seed0["reports"]["token-level PPO rollouts"]).exists()  # relative to --out
    md = (Path(out) / "demo.md").read_text()
    assert "Table 1" in md and "Table 2" in md and "Table 3" in md and "nan" not in md
    assert json.loads((Path(out) / "demo.json").read_text())["aggregate"]["seeds"] == 1


def test_quick_demo_rerun_resumes_without_retraining(quick_demo):
    from trainer.demo import DemoConfig, run_demo

    cfg, first = quick_demo
    weights = sorted(Path(cfg.out).rglob("*.safetensors"))
    before = {p: p.stat().st_mtime_ns for p in weights}
    again = run_demo(DemoConfig(**{**cfg.__dict__}), progress=False)
    assert again["stages_run"] == [] and len(again["stages_skipped"]) == len(first["stages_run"])
    assert {p: p.stat().st_mtime_ns for p in weights} == before
    assert json.dumps(again["aggregate"], sort_keys=True) == json.dumps(first["aggregate"], sort_keys=True)
    # a stage that did not finish (no marker: killed) is the only one run again
    (Path(cfg.out) / "stages" / "seed0.eval.figa.json").unlink()
    third = run_demo(DemoConfig(**{**cfg.__dict__}), progress=False)
    assert third["stages_run"] == ["seed0.eval.figa"]
    assert third["per_seed"][0]["table1"]["figa"] == first["per_seed"][0]["table1"]["figa"]
    with pytest.raises(ValueError, match="other settings \\(ppo_iterations\\)"):
        run_demo(DemoConfig(**{**cfg.__dict__, "ppo_iterations": cfg.ppo_iterations + 1}), progress=False)


# --- the demo's stage bookkeeping: signals, a moved --out (stand-in stages: seconds) ------------
@pytest.fixture
def signals_kept():
    """The test process's SIGTERM / SIGINT handlers and the trainers' stop flag as they were."""
    from trainer.infra.runtime import STOP

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield saved
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    STOP.requested = False


def _staged_demo(monkeypatch, stages: dict):
    """``fgrlhf demo`` whose seed runs ``stages`` (name -> function) through the real runner."""
    import trainer.demo as demo

    def run_seed(cfg, seed, stage):
        for name, fn in stages.items():
            stage(name, fn)
        raise AssertionError("every stand-in demo is stopped before its end")

    monkeypatch.setattr(demo, "run_seed", run_seed)


def _trainer(sigterm_after_its_loop: bool = False):
    """A stand-in trainer stage: installs the trainers' SIGTERM handler (start_run does), and may
    receive SIGTERM after its last step (it then finishes as a real trainer does)."""
    from trainer.infra.runtime import STOP

    def train():
        STOP.install()
        if sigterm_after_its_loop:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"model": "seed0/sft/final"}

    return train


@pytest.mark.parametrize("where", ["sampling", "after a trainer's loop", "judging"])
def test_sigterm_stops_the_demo_at_once_after_a_trainer_stage(
    tmp_path, monkeypatch, capsys, signals_kept, where
):
    """A trainer's SIGTERM handler ends with its stage: SIGTERM in a later stage that trains
    nothing (sampling) stops the demo there, exit 143, the later stages not run; so does one
    the trainer took after its loop (the stage is kept) and ``fgrlhf eval``'s (a
    KeyboardInterrupt("SIGTERM")). The caller's handlers are back afterwards."""
    from trainer.cli import main

    ran = []

    def sampling():
        ran.append("samples")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2)  # (interrupted at once)
        ran.append("samples finished")

    def judging():
        ran.append("eval")
        raise KeyboardInterrupt("SIGTERM")

    stages = {"seed0.sft": _trainer(sigterm_after_its_loop=where == "after a trainer's loop")}
    stages["seed0.samples"] = sampling if where == "sampling" else lambda: ran.append("samples")
    stages["seed0.eval"] = judging
    stages["seed0.labels"] = lambda: ran.append("labels")
    _staged_demo(monkeypatch, stages)
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 143
    err = capsys.readouterr().err
    done = sorted(p.stem for p in (tmp_path / "stages").glob("*.json"))
    if where == "sampling":
        assert ran == ["samples"] and done == ["seed0.sft"]
        assert "stopped by SIGTERM during stage seed0.samples" in err
    elif where == "after a trainer's loop":
        assert ran == [] and done == ["seed0.sft"]
        assert "stopped by SIGTERM after stage seed0.sft" in err
    else:
        assert ran == ["samples", "eval"] and done == ["seed0.samples", "seed0.sft"]
        assert "stopped by SIGTERM during stage seed0.eval" in err
    assert "rerun the same command to resume" in err
    assert {sig: signal.getsignal(sig) for sig in signals_kept} == signals_kept


def _answer(instruction: str, seed: int) -> str:
    rng = random.Random(f"{seed}-{instruction}")
    return " ".join(rng.choice(["g1", "g2", "n1", "n2", "n3", "b1", "b2"]) for _ in range(rng.randint(3, 8)))


@pytest.fixture
def stand_in_stages(monkeypatch):
    """The demo's trainers, sampler and judge replaced by stand-ins that write what the demo reads
    next (seconds instead of minutes); the world, the labels, the bookkeeping and the tables are
    the real ones."""
    import trainer.eval.generate as generate_mod
    import trainer.eval.pairwise as pairwise_mod
    import trainer.eval.rm_accuracy as rm_accuracy_mod
    import trainer.models as models_mod
    import trainer.ppo as ppo_mod
    import trainer.reward as reward_mod
    import trainer.sft as sft_mod

    def sft(cfg):
        (Path(cfg.output_dir) / "final").mkdir(parents=True, exist_ok=True)

    def reward(cfg):
        (Path(cfg.output_dir) / "best").mkdir(parents=True, exist_ok=True)
        return {"accuracy": 0.6}

    def ppo(cfg):
        out = Path(cfg.output_dir)
        (out / "final" / "actor").mkdir(parents=True, exist_ok=True)
        recs = [{"gold_reward": 0.1 * i, "kl": 0.01, "response_length": 5.0, "iteration_s": 1.0}
                for i in range(cfg.iterations)]  # fmt: skip
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        (out / "report.html").write_text("<html></html>")

    def run_generate(cfg):
        rows = [{"instruction": r["instruction"], "output": _answer(r["instruction"], cfg.seed)}
                for r in json.loads(Path(cfg.instructions).read_text())]  # fmt: skip
        Path(cfg.output).write_text(json.dumps(rows))

    def run_eval(cfg):
        n = len(json.loads(Path(cfg.model_outputs).read_text()))
        return {
            "win_rate": 50.0,
            "standard_error": 5.0,
            "n_wins": n // 2,
            "n_wins_base": n - n // 2,
            "n_draws": 0,
        }

    monkeypatch.setattr(sft_mod, "train", sft)
    monkeypatch.setattr(reward_mod, "train", reward)
    monkeypatch.setattr(ppo_mod, "train", ppo)
    monkeypatch.setattr(generate_mod, "run_generate", run_generate)
    monkeypatch.setattr(pairwise_mod, "run_eval", run_eval)
    monkeypatch.setattr(rm_accuracy_mod, "evaluate_reward_model", lambda *a, **k: {"gold_accuracy": 0.7})
    monkeypatch.setattr(models_mod, "read_reward_meta", lambda path: {})


def test_a_moved_demo_directory_resumes_and_renders(tmp_path, stand_in_stages, capsys):
    """``mv demo1 demo1m; fgrlhf demo --quick --out demo1m``: every stage resumes (none runs
    again), the tables are rendered again, every path recorded is relative to --out; a changed
    setting is still refused."""
    from trainer.cli import main

    a, b = tmp_path / "demo1", tmp_path / "demo1m"
    assert main(["demo", "--quick", "--out", str(a), "--no-progress"]) == 0, capsys.readouterr().err
    first = json.loads((a / "demo.json").read_text())
    assert first["stages_run"] and not first["stages_skipped"]
    a.rename(b)
    capsys.readouterr()
    assert main(["demo", "--quick", "--out", str(b), "--no-progress"]) == 0, capsys.readouterr().err
    again = json.loads((b / "demo.json").read_text())
    assert again["stages_run"] == [] and again["stages_skipped"] == first["stages_run"]
    assert again["aggregate"] == first["aggregate"]
    assert str(b / "seed0" / "ppo" / "fg_token_ppo_kl" / "report.html") in capsys.readouterr().out
    recorded = [json.dumps({k: v for k, v in again.items() if k != "config"})]
    recorded += [p.read_text() for p in (b / "stages").glob("*.json")]
    assert not any(str(tmp_path) in text for text in recorded)  # relative to --out, wherever it is
    assert all((b / p).exists() for p in again["plots"])
    assert main(["demo", "--quick", "--ppo-iterations", "3", "--out", str(b), "--no-progress"]) == 2
    assert "other settings (ppo_iterations)" in capsys.readouterr().err
