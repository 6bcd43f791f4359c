"""The simulated-preference world (annotators, editor, gold, the context-dependent variant), the
gold judge, and ``fgrlhf demo --quick`` end to end (every table filled, a rerun resumes)."""

from __future__ import annotations

import asyncio
import dataclasses
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
    expected_gold_agreement,
    expected_inter_annotator_agreement,
    generate,
    gold_reward,
    inter_annotator_agreement,
    inter_annotator_scale,
    label_pairs,
    load_world,
    sample_prompt,
    simulated_edit,
    token_utilities,
    write_synthetic,
)
from trainer.infra.jobs import run_jobs


# --- the world -------------------------------------------------------------------------------
def test_bt_scale_by_hand_and_limits():
    assert bt_scale([1.0, 1.0], 1 / (1 + math.exp(-1))) == pytest.approx(1.0, rel=1e-9)
    assert bt_scale([1.0, -1.0, 0.0], 1 / (1 + math.exp(-2))) == pytest.approx(0.5, rel=1e-9)  # |Δ|, ties out
    assert (
        bt_scale([0.3], 1.0) == 0.0 and math.isinf(bt_scale([0.3], 0.5)) and math.isinf(bt_scale([0.0], 0.7))
    )
    rng = random.Random(0)
    assert all(annotate(rng, d, 0.0) == (d > 0) for d in (-1.0, 0.2, 3.0))  # scale 0: the gold order


def test_inter_annotator_scale_by_hand_ties_and_limits():
    """AlpacaFarm's inter-annotator agreement (a held-out annotator vs the mode of three others),
    worked by hand: at p = 0.75 the mode of three agrees with gold with m = 0.75³ + 3·0.75²·0.25
    = 0.84375, the held-out one with the mode with a = 0.75·0.84375 + 0.25·0.15625 = 0.671875;
    p = σ(1/s) = 0.75 at s = 1/ln 3. A gold tie counts as p = 0.5 (a = 0.5)."""
    assert inter_annotator_agreement(0.75) == pytest.approx(0.671875, abs=1e-12)
    assert inter_annotator_agreement(0.5) == 0.5 and inter_annotator_agreement(1.0) == 1.0
    s = 1 / math.log(3)
    assert inter_annotator_scale([1.0, -1.0], 0.671875) == pytest.approx(s, rel=1e-9)
    # one of two pairs tied: (0.671875 + 0.5) / 2 asks for the same annotators
    assert inter_annotator_scale([1.0, 0.0], (0.671875 + 0.5) / 2) == pytest.approx(s, rel=1e-9)
    assert expected_inter_annotator_agreement([1.0, 0.0], s) == pytest.approx(0.5859375, abs=1e-12)
    assert expected_gold_agreement([1.0, 0.0, -1.0], s) == pytest.approx(0.75)  # ties out of this one
    # noise-free (1.0) is s = 0, whose inter-annotator agreement with one tie in two is 1 − 1/4 = 0.75;
    # anything in [0.75, 1) cannot be reached and is refused, naming the ceiling and the ties
    assert inter_annotator_scale([1.0, 0.0], 1.0) == 0.0
    assert expected_inter_annotator_agreement([1.0, 0.0], 0.0) == 0.75
    with pytest.raises(ValueError, match="50.0% are gold ties.*at most 0.7500"):
        inter_annotator_scale([1.0, 0.0], 0.8)
    assert math.isinf(inter_annotator_scale([1.0], 0.5)) and math.isinf(inter_annotator_scale([], 0.7))
    # the same annotators agree more with gold (0.75) than with each other (0.671875)
    assert expected_gold_agreement([1.0], s) == pytest.approx(0.75)


def test_inter_annotator_agreement_by_simulation():
    """Four Bradley–Terry annotators per pair at the solved scale: a held-out one agrees with the
    mode of the other three (every one held out in turn) at the asked rate, ties included."""
    rng = random.Random(7)
    diffs = [0.0 if rng.random() < 0.05 else rng.gauss(0, 0.3) for _ in range(3000)]
    target = 0.657
    scale = inter_annotator_scale(diffs, target)
    agree = []
    for d in diffs:
        votes = [annotate(rng, d, scale) for _ in range(4)]
        for k in range(4):
            others = votes[:k] + votes[k + 1 :]
            agree.append(votes[k] == (sum(others) >= 2))
    # 12,000 correlated Bernoulli draws over 3,000 pairs: s.e. < 0.009
    assert statistics.fmean(agree) == pytest.approx(target, abs=0.03)
    gold = statistics.fmean(annotate(rng, d, scale) == (d > 0) for d in diffs if d != 0)
    assert gold == pytest.approx(expected_gold_agreement(diffs, scale), abs=0.03)


def test_label_pairs_at_inter_annotator_levels_and_split_streams():
    """agreement_kind=inter_annotator solves for AlpacaFarm's measure; streams=split draws the
    labels from their own stream: the same labels at every editor recall (only the edits change),
    and the default single stream is the trainers' world as before."""
    cfg = SyntheticConfig(n_pairs=1500, agreement=0.657, agreement_kind="inter_annotator", seed=3)
    recs = generate(cfg)
    decided = [r for r in recs if r["gold"]["chosen"] != r["gold"]["original"]]
    observed = statistics.fmean(r["gold"]["chosen"] > r["gold"]["original"] for r in decided)
    assert 0.68 < observed < 0.80  # ~0.72 by gold: more than 0.657 (mode-of-3 noise counts twice)
    items = [(r["id"], r["prompt"], r["chosen"], r["original"]) for r in recs[:300]]
    one = label_pairs(items, cfg, seed=1)
    split = {rec: label_pairs(items, dataclasses.replace(cfg, editor_recall=rec), 1, streams="split")
             for rec in (1.0, 0.4)}  # fmt: skip
    assert [r["chosen"] for r in split[1.0]] == [r["chosen"] for r in split[0.4]]
    assert [r["status"] for r in split[1.0]] == [r["status"] for r in split[0.4]]
    assert [r["edited"] for r in split[1.0]] != [r["edited"] for r in split[0.4]]
    assert one == label_pairs(items, cfg, seed=1, streams="one")  # the default
    with pytest.raises(ValueError, match="agreement_kind"):
        SyntheticConfig(agreement_kind="pairwise").check()


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
    assert t["start"] == 0 and t["target"] == 0.5 and t["baseline_clears"]
    assert t["arms"]["ppo_rlhf"]["iterations_to_target"] == 2 and t["arms"]["x"]["iterations_to_target"] == 2
    assert t["arms"]["x"]["seconds_to_target"] == 4.0 and t["arms"]["x"]["final_gold_reward"] == 2.0
    # an arm that never gets there: censored at len + 1 iterations and its whole run's seconds
    t = table3_of({"ppo_rlhf": _recs([0, 1, 1, 1, 1, 1]), "slow": _recs([0, 0, 0, 0, 0, 0])}, 1.0)
    slow = t["arms"]["slow"]
    assert not slow["reached"] and slow["iterations_to_target"] == 7 and slow["seconds_to_target"] == 6.0
    # a baseline that ends below its start: no target, no iterations for anyone
    t = table3_of({"ppo_rlhf": _recs([0.5, 0, 0, 0, 0, 0]), "x": _recs([0.5, 2, 2, 2, 2, 2])}, 0.8)
    assert not t["baseline_clears"] and t["arms"]["x"]["iterations_to_target"] is None


def test_table3_target_only_where_the_baseline_clears_its_noise():
    """By hand: the baseline's last 5 iterations [1.0, 1.2, 0.8, 1.0, 1.0] have s.d. √0.02 ≈ 0.1414,
    so the s.e. of final − start is 0.1414·√(1 + 1/5) ≈ 0.1549 and the rule needs an improvement
    above 0.3098: from a start of 0 (improvement 1.0) it clears, from 0.8 (0.2) it does not, and
    that seed then gives no iterations for any arm (its cells count one seed fewer)."""
    from trainer.demo import aggregate, baseline_noise, table3_of

    last = [1.0, 1.2, 0.8, 1.0, 1.0]
    n = baseline_noise([0.0, 0.5, *last], start=0.0)
    assert n["noise_se"] == pytest.approx(math.sqrt(0.02) * math.sqrt(1.2)) and n["clears"]
    assert n["improvement"] == pytest.approx(1.0)
    assert not baseline_noise([0.8, *last], start=0.8)["clears"]  # 0.2 < 2 × 0.1549
    clear = table3_of({"ppo_rlhf": _recs([0.0, *last]), "x": _recs([0.0, 2, 2, 2, 2, 2])}, 0.5)
    noisy = table3_of({"ppo_rlhf": _recs([0.8, *last]), "x": _recs([0.8, 2, 2, 2, 2, 2])}, 0.5)
    assert clear["baseline_clears"] and clear["arms"]["x"]["iterations_to_target"] == 2
    assert not noisy["baseline_clears"] and noisy["arms"]["x"]["iterations_to_target"] is None
    seeds = [
        {"seed": k, "table1": {}, "table2": {}, "labels": {}, "table3": t}
        for k, t in enumerate((clear, noisy))
    ]
    agg = aggregate(seeds)
    assert agg["seeds_with_target"] == 1 and agg["target"]["n"] == 1 and agg["target"]["n_missing"] == 1
    cell = agg["table3"]["x"]["iterations_to_target"]
    assert cell["n"] == 1 and cell["n_missing"] == 1 and cell["mean"] == 2
    assert agg["table3"]["x"]["final_gold_reward"]["n"] == 2  # every seed


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
    assert main(["demo", "--first-seed", "-1", "--out", "/nonexistent/x"]) == 2
    assert "--first-seed must be >= 0" in capsys.readouterr().err
    assert main(["demo", "--editor-recalls", "1", "1.5", "--out", "/nonexistent/x"]) == 2
    assert "--editor-recall(s) must be in [0, 1]" in capsys.readouterr().err
    assert main(["demo", "--matched-kl", "-3", "--out", "/nonexistent/x"]) == 2
    assert "--matched-kl must be a KL target" in capsys.readouterr().err


def test_every_arm_gets_the_same_critic_and_names_its_token_rewards(tmp_path):
    """The trainer keys each PPO stage builds (parsed by trainer/ppo.py's own config loader): the
    paper's literal arm is token_reward_scale=raw with β = 0; the running-mean arms say so; every
    arm has critic_from=actor (never trainer/ppo.py's auto, which gave the sequence arms their RM);
    the matched-KL runs use the adaptive controller at the one target."""
    from trainer.demo import ARMS, CRITIC_FROM, DemoConfig, arm_args
    from trainer.infra.config import load_config
    from trainer.ppo import PPOConfig

    cfg = DemoConfig(out=str(tmp_path))
    built = {
        a.name: load_config(PPOConfig, arm_args(cfg, 0, tmp_path, a, str(tmp_path / "rm"), a.name))
        for a in ARMS
    }
    assert CRITIC_FROM == "actor" and {c.critic_from for c in built.values()} == {"actor"}
    raw = built["fg_token_ppo_raw"]
    assert raw.token_reward_scale == "raw" and raw.kl_coef == 0.0 and raw.reward_level == "token"
    assert (
        built["fg_token_ppo_rmean"].token_reward_scale == "running_mean"
        and built["fg_token_ppo_rmean"].kl_coef == 0
    )
    assert built["fg_token_ppo_rmean_kl"].token_reward_scale == "running_mean"
    for name in ("ppo_rlhf", "fg_ppo", "fg_token_ppo_rmean_kl"):
        assert built[name].kl_coef == cfg.kl_coef and built[name].kl_controller == "fixed", name
    assert {c.iterations for c in built.values()} == {cfg.ppo_iterations}
    assert built["ppo_rlhf"].synthetic.agreement_kind == "inter_annotator"
    for a in ARMS:  # the literal arm is named as such; the running-mean ones by what they are
        assert ("raw" in a.label) == (a.token_reward_scale == "raw")
        assert ("running-mean" in a.label) == (a.token_reward_scale == "running_mean")
    m = load_config(PPOConfig, arm_args(cfg, 0, tmp_path, ARMS[2], str(tmp_path / "rm"), "x", matched_kl=4.0))
    assert (m.kl_controller, m.kl_target, m.kl_horizon, m.critic_from) == (
        "adaptive",
        4.0,
        cfg.ppo_rollouts,
        "actor",
    )
    assert m.token_reward_scale == "raw"


def test_seeds_beyond_a_day_are_refused_with_their_estimate(tmp_path, capsys):
    """The time is estimated from the stage timings the --out holds (same settings), else from the
    defaults measured here; more than a day is refused (exit 2, nothing written) unless --yes."""
    from trainer.cli import main
    from trainer.demo import DemoConfig, estimate, plan

    out = tmp_path / "d"
    assert main(["demo", "--seeds", "1000", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--seeds 1000:" in err and " h (" in err and "min per seed" in err and "--yes" in err
    assert not out.exists()
    cfg = DemoConfig(out=str(out))
    per_seed = estimate(cfg, out)["per_seed_s"]
    assert estimate(cfg, out)["remaining_s"] == pytest.approx(3 * per_seed)
    (out / "stages").mkdir(parents=True)  # a finished seed 0 whose PPO stages took 100 s each
    for name in plan(cfg, 0):
        secs = 100.0 if ".ppo." in name else 1.0
        (out / "stages" / f"{name}.json").write_text(
            json.dumps({"stage": name, "seconds": secs, "result": {}})
        )
    est = estimate(cfg, out)
    n_ppo = sum(".ppo." in n for n in plan(cfg, 0))
    assert est["per_seed_s"] == pytest.approx(100 * n_ppo + (len(plan(cfg, 0)) - n_ppo))
    assert est["remaining_s"] == pytest.approx(2 * est["per_seed_s"]) and "stage timings in" in est["source"]
    assert est["stages_left"] == 2 * len(plan(cfg, 0))


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    from trainer.demo import QUICK, DemoConfig, run_demo

    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(**QUICK, quick=True, out=str(out))
    return cfg, run_demo(cfg, progress=False)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.mark.slow
def test_quick_demo_fills_every_table(quick_demo):
    from trainer.demo import ARMS, RMS, plan

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
    assert reached == len(ARMS) or not t3["baseline_clears"]
    # the β = 0 arms are trained without the KL penalty, the others with the same one; every arm's
    # critic from the SFT actor; the token arms with the token-reward scale they are named by
    for arm in ARMS:
        run = Path(cfg.out) / "seed0" / "ppo" / arm.name
        betas = {r["kl_coef"] for r in map(json.loads, (run / "metrics.jsonl").open())}
        assert betas == ({cfg.kl_coef} if arm.kl else {0.0}), arm.name
        written = (run / "config.yaml").read_text()
        assert "critic_from: actor\n" in written, arm.name
        if arm.level == "token":
            assert f"token_reward_scale: {arm.token_reward_scale}\n" in written, arm.name
    assert res["stages_run"] == plan(cfg, 0)  # the plan the estimate counts is what runs
    labels = seed0["labels"]["0.657"]  # the level asked for is the level solved for
    assert labels["expected_inter_annotator"] == pytest.approx(0.657, abs=1e-6)
    assert 0.657 < labels["expected_gold_agreement"] < 1 and 0 <= labels["tied_fraction"] < 0.1
    assert seed0["labels"]["1"]["expected_gold_agreement"] == 1.0 and seed0["labels"]["1"]["scale"] == 0.0
    # an arm that reached the target did so at the first iteration whose running mean got there
    for arm in t3["arms"].values():
        if arm["reached"] and t3["baseline_clears"]:
            k, c = arm["iterations_to_target"], arm["curve"]
            assert statistics.fmean(c[max(0, k - 3) : k]) >= t3["target"]
            assert k == 1 or statistics.fmean(c[max(0, k - 4) : k - 1]) < t3["target"]
    out = res["config"]["out"]
    for f in ("demo.json", "demo.md", "plots/table3_gold_reward.png", "plots/table2_rm_accuracy.png"):
        assert (Path(out) / f).stat().st_size > 0, f
    assert (Path(out) / seed0["reports"]["token-level PPO rollouts"]).exists()  # relative to --out
    md = (Path(out) / "demo.md").read_text()
    assert "Table 1" in md and "Table 2" in md and "Table 3" in md and "nan" not in md
    assert (
        "as the paper writes it (token RM, [R_1 … R_n] raw), β = 0 |" in md
        and "running-mean increments, β = 0.05 |" in md
    )
    assert "1 (noise-free: s = 0)" in md and "critic_from=actor" in md
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
    nothing (sampling) stops the demo there, exit 75, the later stages not run; so does one
    the trainer took after its loop (the stage is kept) and ``fgrlhf eval``'s (its job runner
    raises ``errors.Stopped``). The caller's handlers are back afterwards."""
    from trainer.cli import main

    ran = []

    def sampling():
        ran.append("samples")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2)  # (interrupted at once)
        ran.append("samples finished")

    def judging():
        ran.append("eval")

        async def judge(batch):  # a verdict in flight when SIGTERM comes (fgrlhf eval's job runner)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(5)
            return batch

        run_jobs([1, 2], judge, lambda job, verdict: ran.append("verdict"), concurrency=1, progress=False)

    stages = {"seed0.sft": _trainer(sigterm_after_its_loop=where == "after a trainer's loop")}
    stages["seed0.samples"] = sampling if where == "sampling" else lambda: ran.append("samples")
    stages["seed0.eval"] = judging
    stages["seed0.labels"] = lambda: ran.append("labels")
    _staged_demo(monkeypatch, stages)
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 75
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
    assert str(b / "seed0" / "ppo" / "fg_token_ppo_rmean_kl" / "report.html") in capsys.readouterr().out
    recorded = [json.dumps({k: v for k, v in again.items() if k != "config"})]
    recorded += [p.read_text() for p in (b / "stages").glob("*.json")]
    assert not any(str(tmp_path) in text for text in recorded)  # relative to --out, wherever it is
    assert all((b / p).exists() for p in again["plots"])
    assert main(["demo", "--quick", "--ppo-iterations", "3", "--out", str(b), "--no-progress"]) == 2
    assert "other settings (ppo_iterations)" in capsys.readouterr().err


def test_first_seed_gives_fresh_worlds_and_is_part_of_the_identity(tmp_path, stand_in_stages, capsys):
    """--first-seed 7 runs seeds 7.. on worlds 1007..; a rerun on that --out with another first seed
    is refused (a changed setting); the stamp records it."""
    from trainer.cli import main
    from trainer.data.synthetic import load_world

    out = tmp_path / "d"
    assert main(["demo", "--quick", "--first-seed", "7", "--out", str(out), "--no-progress"]) == 0, (
        capsys.readouterr().err
    )
    res = json.loads((out / "demo.json").read_text())
    assert res["aggregate"]["seed_list"] == [7] and all(n.startswith("seed7.") for n in res["stages_run"])
    assert load_world(out / "seed7" / "world").seed == 1007 and res["per_seed"][0]["world_seed"] == 1007
    assert json.loads((out / "demo_config.json").read_text())["first_seed"] == 7
    assert "1 seed(s) (7–7: worlds 1007–1007)" in (out / "demo.md").read_text()
    capsys.readouterr()
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 2
    assert "other settings (first_seed)" in capsys.readouterr().err
    assert main(["demo", "--quick", "--agreement-kind", "gold", "--first-seed", "7", "--out", str(out)]) == 2
    assert "other settings (agreement, agreement_kind, agreements)" in capsys.readouterr().err


def test_opt_in_sweeps_add_their_stages_to_a_finished_demo(tmp_path, stand_in_stages, capsys):
    """--matched-kl and --editor-recalls may be added to a finished --out: only their stages run
    (named by their values), Tables 4-6 appear; the main runs are reused for the main recall."""
    from trainer.cli import main
    from trainer.demo import EDITED_ARMS, EDITED_RMS, MATCHED_KL_ARMS

    out = tmp_path / "d"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    first = json.loads((out / "demo.json").read_text())["stages_run"]
    flags = ["--matched-kl", "4", "--editor-recalls", "1", "0.5"]
    assert main(["demo", "--quick", *flags, "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    res = json.loads((out / "demo.json").read_text())
    assert res["stages_skipped"] == first
    n_new = 2 * len(MATCHED_KL_ARMS) + 1 + len(EDITED_RMS) + 2 * len(EDITED_ARMS) + 2
    assert len(res["stages_run"]) == n_new and "seed0.ppo.fg_token_ppo_raw_kl4" in res["stages_run"]
    assert "seed0.ppo.fg_ppo_recall0.5" in res["stages_run"] and "seed0.labels_recall0.5" in res["stages_run"]
    agg = res["aggregate"]
    assert set(agg["matched_kl"]) == set(MATCHED_KL_ARMS) and set(agg["editor_recall"]) == {"1", "0.5"}
    assert set(agg["editor_recall"]["0.5"]["table1"]) == {"figa", *EDITED_ARMS}
    assert agg["editor_recall"]["1"]["table1"]["fg_ppo"] == agg["table1"]["fg_ppo"]  # the main run
    md = (out / "demo.md").read_text()
    assert "Table 4: matched KL" in md and "Table 5: editor recall" in md and "Table 6" in md
    assert "adaptive β → KL 4 nats" in md and "edits better than their original" in md
    assert agg["editor_recall"]["0.5"]["edits"]["edits_better"]["mean"] > 0.95  # weaker, never wrong
    recs = (out / "seed0" / "pairs_agreement0.657_recall0.5.jsonl").read_text().splitlines()
    main_recs = (out / "seed0" / "pairs_agreement0.657.jsonl").read_text().splitlines()
    assert [json.loads(r)["chosen"] for r in recs] == [json.loads(r)["chosen"] for r in main_recs]


@pytest.mark.slow
def test_report_to_reaches_every_trainer_stage_and_the_tables(tmp_path, stand_in_stages, monkeypatch, capsys):
    """``fgrlhf demo --report-to``: every trainer stage gets the trackers and its own run name
    (``<out>/<stage dir>``), with one MLflow store and W&B group for the study set only while
    the stages run; the tables are one tracker run (``<out>/tables``: every aggregate number,
    the plots and demo.md), which a rerun continues without sending a step twice."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    import trainer.ppo as ppo_mod
    import trainer.reward as reward_mod
    import trainer.sft as sft_mod
    from trainer.cli import main

    seen = []
    for mod in (sft_mod, reward_mod, ppo_mod):
        monkeypatch.setattr(mod, "train", lambda cfg, inner=mod.train: seen.append((
            cfg.output_dir, cfg.report_to, cfg.run_name,
            os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("WANDB_RUN_GROUP"),
        )) or inner(cfg))  # fmt: skip
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    out = tmp_path / "d"
    argv = ["demo", "--quick", "--out", str(out), "--no-progress", "--report-to", "tensorboard", "mlflow"]
    assert main(argv) == 0, capsys.readouterr().err
    assert len(seen) >= 8  # SFT, the RMs, the arms, FIGA
    store = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    for output_dir, report_to, run_name, uri, group in seen:
        assert report_to == ["tensorboard", "mlflow"] and (uri, group) == (store, "d")
        assert run_name == "d/" + Path(output_dir).relative_to(out).as_posix()
    assert "MLFLOW_TRACKING_URI" not in os.environ and "WANDB_RUN_GROUP" not in os.environ

    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    agg = json.loads((out / "demo.json").read_text())["aggregate"]
    c = MlflowClient(store)
    (r,) = c.search_runs([c.get_experiment_by_name("fgrlhf").experiment_id])
    assert r.info.run_name == "d/tables" and r.info.status == "FINISHED"
    win = r.data.metrics["table1.fg_token_ppo_rmean_kl.win_rate.mean"]
    assert win == agg["table1"]["fg_token_ppo_rmean_kl"]["win_rate"]["mean"]
    arts = {a.path for a in c.list_artifacts(r.info.run_id)} | {
        a.path for a in c.list_artifacts(r.info.run_id, "plots")
    }
    assert {"demo.md", "demo.json", "summary.txt"} <= arts and any(a.startswith("plots/") for a in arts)
    assert main(argv) == 0  # a rerun: every stage resumed, the same tracker run, nothing sent twice
    (again,) = c.search_runs([c.get_experiment_by_name("fgrlhf").experiment_id])
    assert again.info.run_id == r.info.run_id
    key = "table1.fg_token_ppo_rmean_kl.win_rate.mean"
    assert [m.step for m in c.get_metric_history(r.info.run_id, key)] == [1]
    ea = EventAccumulator(str(out / "tables" / "tb"), size_guidance={"scalars": 0})
    ea.Reload()
    assert [e.step for e in ea.Scalars(key)] == [1]
