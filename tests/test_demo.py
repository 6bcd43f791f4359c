"""The simulated-preference world (annotators, editor, gold, the context-dependent variant), the
gold judge, and ``fgrlhf demo --quick`` end to end (every table filled, a rerun resumes)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
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
    assert Path(seed0["reports"]["token-level PPO rollouts"]).exists()
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
