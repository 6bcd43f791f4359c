"""``fgrlhf generate`` and ``fgrlhf eval``: sampling a policy for evaluation, pairwise judges
(Claude through the real SDK against a local fake Messages API; a tiny trained reward model),
crash safety, position bias, the summary, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _utils import clean_env, launch  # noqa: E402
from fake_anthropic import FakeMessagesServer  # noqa: E402

from trainer.cli import main as cli  # noqa: E402
from trainer.eval.pairwise import EvalConfig, bootstrap_interval, combine, model_preference, run_eval  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-ant-api03-FAKE-SECRET-7a1b2c3d"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


# --- fixtures: a tiny policy over the synthetic world's vocabulary ---------------------------
@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    """A random tiny LLaMA saved like trainer/ppo.py saves its actor (with fgrlhf_policy.json)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from trainer.data.synthetic import SyntheticConfig, write_synthetic
    from trainer.models import save_pretrained, tiny_llama_config

    d = tmp_path_factory.mktemp("policy")
    _, tok_dir = write_synthetic(d / "syn", SyntheticConfig(n_pairs=40))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    sizes = SimpleNamespace(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    model = LlamaForCausalLM(tiny_llama_config(sizes, tok))
    return save_pretrained(
        model.state_dict(),
        model.config,
        "causal_lm",
        d / "actor",
        tok,
        policy_meta={"prompt_template": "plain"},
    )


@pytest.fixture(scope="module")
def instructions(tmp_path_factory) -> Path:
    rows = [
        {"instruction": " ".join(f"p{(i * 7 + j) % 32}" for j in range(2 + i % 5)), "dataset": f"set{i % 2}"}
        for i in range(11)
    ]
    rows[3]["input"] = "p1 p2"  # an instruction with an input (kept apart, as AlpacaFarm does)
    return write_json(tmp_path_factory.mktemp("instr") / "instructions.json", rows)


def gen(policy: Path, instructions: Path, out: Path, *extra: str) -> int:
    return cli(["generate", str(policy), str(instructions), "-o", str(out), "--no-progress",
                "--max-new-tokens", "12", "--batch-size", "4", *extra])  # fmt: skip


# --- 1. fgrlhf generate ----------------------------------------------------------------------
def test_generate_greedy_equals_the_rollout_sampler(policy, instructions, tmp_path):
    """The answers are the PPO rollout sampler's on the training code's prompt rendering."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.data.examples import build_prompt, collate
    from trainer.data.formats import Prompt
    from trainer.rollout import generate

    out = tmp_path / "greedy.json"
    assert gen(policy, instructions, out, "--greedy") == 0
    rows = json.loads(out.read_text())
    src = json.loads(instructions.read_text())
    assert [r["instruction"] for r in rows] == [s["instruction"] for s in src]
    assert rows[3]["input"] == "p1 p2" and "input" not in rows[0]
    # no --generator: the run directory names it (policy0/actor -> policy0), not the trainers' leaf
    assert {r["generator"] for r in rows} == {Path(policy).parent.name} and rows[1]["dataset"] == "set1"
    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    for i in (0, 3, 10):
        p = Prompt(src[i]["instruction"], src[i].get("input", ""))
        b = collate([build_prompt(tok, p, 1024, "plain")], tok.pad_token_id, "left")
        ids, mask = generate(model, b["input_ids"], b["attention_mask"], 12, tok.eos_token_id,
                             tok.pad_token_id, greedy=True)  # fmt: skip
        want = tok.decode(ids[0][mask[0]].tolist(), skip_special_tokens=True).strip()
        assert rows[i]["output"] == want, i
        assert rows[i]["num_tokens"] == int(mask[0].sum())
    assert any(r["output"] for r in rows)


def test_generate_resumes_to_the_same_answers(policy, instructions, tmp_path):
    """A run cut short (a torn last line too) resumes: only the missing answers are made, and
    the result equals an uninterrupted run's, sampled answers included."""
    full, cut = tmp_path / "full.json", tmp_path / "cut.json"
    assert gen(policy, instructions, full, "--seed", "5") == 0
    assert gen(policy, instructions, cut, "--seed", "5") == 0
    log = cut.with_name(cut.name + ".partial.jsonl")
    lines = log.read_text().splitlines(keepends=True)
    assert len(lines) == 11
    log.write_text("".join(lines[:4]) + lines[4][:30])  # 4 whole answers and a torn one
    cut.unlink()
    assert gen(policy, instructions, cut, "--seed", "5") == 0
    assert json.loads(cut.read_text()) == json.loads(full.read_text())
    ids = [r["id"] for r in read_jsonl(log)]
    assert len(ids) == len(set(ids)) == 11  # every answer once
    # other settings than the stored answers: refused, nothing changed
    before = log.read_bytes()
    assert gen(policy, instructions, cut, "--seed", "6") == 2
    assert log.read_bytes() == before
    # sampling really depends on the seed (the resume test above is not vacuous)
    other = tmp_path / "other.json"
    assert gen(policy, instructions, other, "--seed", "6") == 0
    assert json.loads(other.read_text()) != json.loads(full.read_text())


def test_generate_sigterm_finishes_the_batch_exits_75_and_resumes(
    policy, instructions, tmp_path, monkeypatch
):
    """SIGTERM (a scheduler's pre-emption) mid-run: the batch in hand is written, the command
    exits 75 (the trainers' pre-empted status), the caller's handler is back, and a rerun
    completes to the uninterrupted run's answers."""
    import signal

    import trainer.rollout as rollout_mod

    full, cut = tmp_path / "full.json", tmp_path / "cut.json"
    assert gen(policy, instructions, full, "--seed", "5") == 0
    real, calls = rollout_mod.generate, []

    def generate(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during the second batch
        return real(*a, **k)

    monkeypatch.setattr(rollout_mod, "generate", generate)
    before = signal.getsignal(signal.SIGTERM)
    assert gen(policy, instructions, cut, "--seed", "5") == 75
    assert signal.getsignal(signal.SIGTERM) == before
    assert len(calls) == 2 and not cut.exists()
    assert len(read_jsonl(cut.with_name(cut.name + ".partial.jsonl"))) == 8  # two whole batches of 4
    monkeypatch.setattr(rollout_mod, "generate", real)
    assert gen(policy, instructions, cut, "--seed", "5") == 0
    assert json.loads(cut.read_text()) == json.loads(full.read_text())
    # during the last batch: every answer written, still exit 75 (the job was asked to stop)
    last, calls[:] = tmp_path / "last.json", []
    monkeypatch.setattr(rollout_mod, "generate", generate)
    assert gen(policy, instructions, last, "--seed", "5", "--limit", "8") == 75  # 2 batches: kill in the 2nd
    assert len(read_jsonl(last.with_name(last.name + ".partial.jsonl"))) == 8 and not last.exists()
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.slow
def test_generate_data_parallel_equals_one_process(policy, instructions, tmp_path):
    """torchrun with 2 ranks: each rank samples its batches; the merged file equals 1 process's."""
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert gen(policy, instructions, one, "--seed", "3") == 0
    args = [str(policy), str(instructions), "-o", str(two), "--no-progress", "--max-new-tokens", "12",
            "--batch-size", "4", "--seed", "3"]  # fmt: skip
    env = {**clean_env(), "OMP_NUM_THREADS": "1"}
    launch(["-m", "trainer.cli", "generate"], args, nproc=2, env=env, timeout=300)
    assert json.loads(two.read_text()) == json.loads(one.read_text())
    assert len(list(tmp_path.glob("two.json.partial.rank*.jsonl"))) == 2


def test_generate_bad_input(policy, tmp_path, caplog):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "p1"}\n{"dataset": "x"}\n')
    assert gen(policy, bad, tmp_path / "o.json") == 2
    assert "bad.jsonl: line 2: no 'prompt' (or 'instruction') string" in caplog.text
    assert gen(policy, bad, tmp_path / "o.json", "--skip-invalid") == 0
    assert len(json.loads((tmp_path / "o.json").read_text())) == 1
    assert gen(policy, bad, tmp_path / "o2.json", "--batch-size", "0") == 2
    assert "--batch-size must be >= 1" in caplog.text
    assert gen(tmp_path, bad, tmp_path / "o3.json") == 2  # not a model directory


# --- 2. the arithmetic -----------------------------------------------------------------------
def test_orders_combine_and_bootstrap():
    # a verdict about the order shown, as the model's preference
    assert model_preference(1, model_position=1) == 2 and model_preference(2, model_position=1) == 1
    assert model_preference(2, model_position=2) == 2 and model_preference(0, model_position=2) == 0
    assert combine([2, 2]) == 2 and combine([2, 1]) == 0 and combine([1]) == 1
    # --swap averages the orders: a win and a draw is 1.75 (it used to be a draw), a loss and a draw 1.25
    assert combine([2, 0]) == 1.75 and combine([0, 1]) == 1.25 and combine([0, 0]) == 0
    assert bootstrap_interval([2] * 10, 500, 0) == (100.0, 100.0)
    prefs = [2] * 30 + [1] * 10 + [0] * 10  # win rate 70
    lo, hi = bootstrap_interval(prefs, 2000, 0)
    assert lo < 70 < hi and hi - lo < 30 and bootstrap_interval(prefs, 2000, 0) == (lo, hi)
    assert bootstrap_interval(prefs, 0, 0) is None


# --- 3. the Claude judge (real SDK, local fake API) --------------------------------------------
def outputs(path: Path, n: int, fmt: str = "{i}", generator: str = "m") -> Path:
    rows = [{"instruction": f"Question {i}?", "output": fmt.format(i=i), "generator": generator,
             "dataset": "a" if i % 3 else "b"} for i in range(n)]  # fmt: skip
    return write_json(path, rows)


@pytest.fixture
def server(monkeypatch):
    with FakeMessagesServer(slow_seconds=1.0, default="prefer_1") as srv:
        monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.url)
        yield srv


def eval_cfg(tmp_path: Path, model: Path, ref: Path, **kw) -> EvalConfig:
    args = dict(judge="claude:claude-sonnet-4-6", output_dir=str(tmp_path / "eval"), progress=False,
                concurrency=3, timeout=5.0, max_retries=2, extra_attempts=1, backoff=0.0)  # fmt: skip
    args.update(kw)
    return EvalConfig(str(model), str(ref), **args)


def test_position_biased_judge_with_swap_is_50_percent(server, tmp_path):
    """A judge that always prefers the first position, on two identical output sets: with
    --swap every instruction is a draw (50%); with random orders the result is exactly the share
    of instructions whose random order put the model first."""
    a = outputs(tmp_path / "a.json", 20, "Same answer {i}.", "model")
    b = outputs(tmp_path / "b.json", 20, "Same answer {i}.", "ref")
    s = run_eval(eval_cfg(tmp_path, a, b, swap=True))
    assert s["complete"] and s["n_total"] == 20 and s["n_draws"] == 20 and s["win_rate"] == 50.0
    assert s["order_agreement"] == 0.0 and s["first_position_rate"] == 1.0
    # each order's raw counts, as its own leaderboard row
    assert s["by_order"]["model_first"]["n_wins"] == 20 and s["by_order"]["model_first"]["win_rate"] == 100.0
    assert s["by_order"]["reference_first"]["n_wins_base"] == 20
    assert len(server.requests) == 40  # both orders, each once
    ann = json.loads((tmp_path / "eval" / "annotations.json").read_text())
    assert {a["preference"] for a in ann} == {0}
    assert set(ann[0]) >= {"instruction", "output_1", "output_2", "generator_1", "generator_2", "preference"}
    assert ann[0]["generator_1"] == "ref" and ann[0]["generator_2"] == "model"
    # random order: the model wins exactly where it was shown first
    r = run_eval(eval_cfg(tmp_path, a, b, output_dir=str(tmp_path / "rand"), seed=7))
    from trainer.data.formats import Prompt
    from trainer.eval.pairwise import _key, model_first

    first = sum(model_first(7, _key(Prompt(f"Question {i}?"))) for i in range(20))
    assert 0 < first < 20 and r["n_wins"] == first and r["n_wins_base"] == 20 - first
    # what is judged is reused: a swap rerun pays for nothing
    n = len(server.requests)
    run_eval(eval_cfg(tmp_path, a, b, swap=True))
    assert len(server.requests) == n


def test_claude_judge_win_rate_summary_and_winrate_cli(server, tmp_path, capsys):
    """A judge that picks the better answer (it contains GOOD): the model wins where it is
    better, whatever the order; the summary has every field; `fgrlhf winrate` agrees."""
    server.default = "prefer_marked"
    model = outputs(tmp_path / "m.json", 12, "GOOD answer {i}")
    rows = json.loads(model.read_text())
    for r in rows[:3]:
        r["output"] = r["output"].replace("GOOD", "meh")  # 3 worse answers
    write_json(model, rows)
    ref = outputs(tmp_path / "r.json", 12, "plain answer {i}", "ref")
    code = cli(["eval", str(model), str(ref), "--judge", "claude:claude-sonnet-4-6",
                "-o", str(tmp_path / "e"), "--swap", "--no-progress", "--max-retries", "1",
                "--extra-attempts", "0"])  # fmt: skip
    assert code == 0
    s = json.loads((tmp_path / "e" / "summary.json").read_text())
    # model wins 9 (both orders agree); the 3 "meh" ones: neither has GOOD -> response 2 wins in
    # both orders -> the orders disagree -> draws
    assert (s["n_wins"], s["n_wins_base"], s["n_draws"], s["n_total"]) == (9, 0, 3, 12)
    assert s["win_rate"] == pytest.approx(100 * (9 + 1.5) / 12)
    for key in ("standard_error", "avg_length", "avg_length_reference", "ci95_bootstrap", "by_dataset",
                "judge_tokens", "judge_cost_usd", "first_position_rate", "order_agreement"):  # fmt: skip
        assert s.get(key) is not None, key
    assert set(s["by_dataset"]) == {"a", "b"} and s["judge_cost_usd"] > 0
    out = capsys.readouterr().out
    assert "win rate 87.50" in out and "bootstrap 95% interval" in out and "estimated cost $" in out
    assert cli(["winrate", str(tmp_path / "e" / "annotations.json")]) == 0
    assert "win rate 87.50" in capsys.readouterr().out
    # the key is never written anywhere
    for f in (tmp_path / "e").iterdir():
        assert SECRET not in f.read_text(), f


def test_api_faults_and_missing_verdicts_judged_exactly_once(server, tmp_path):
    """429 / 500 / malformed replies are retried; a reply without a verdict is a failure (not
    written, exit 3); the rerun judges only that one; every comparison ends judged once."""
    server.script.extend(["429", "500", "malformed", "no_verdict"])
    a = outputs(tmp_path / "a.json", 8, "A {i}")
    b = outputs(tmp_path / "b.json", 8, "B {i}", "ref")
    cfg = eval_cfg(tmp_path, a, b, swap=True, concurrency=1, extra_attempts=1, max_retries=3)
    s = run_eval(cfg)
    assert not s["complete"] and s["pending"] == 1 and s["this_run"]["failed"] == 1
    assert (tmp_path / "eval" / "judgments.errors.jsonl").exists()
    assert cli(["eval", str(a), str(b), "--judge", "claude:claude-sonnet-4-6", "-o", str(tmp_path / "eval"),
                "--swap", "--no-progress"]) == 0  # fmt: skip
    recs = read_jsonl(tmp_path / "eval" / "judgments.jsonl")
    assert len(recs) == 16 and len({r["id"] for r in recs}) == 16
    assert not (tmp_path / "eval" / "judgments.errors.jsonl").exists()
    # requests: 16 verdicts + 3 retried faults + 1 no-verdict reply
    assert len(server.requests) == 20


@pytest.mark.slow
def test_kill_and_resume_pays_for_nothing_twice(tmp_path):
    """SIGKILL mid-run, then the same command: judgments.jsonl ends with each comparison exactly
    once, and the resumed run only asks for what was not written."""
    a = outputs(tmp_path / "a.json", 30, "A {i}")
    b = outputs(tmp_path / "b.json", 30, "B {i}", "ref")
    out = tmp_path / "e"
    with FakeMessagesServer(delay=0.05, default="prefer_2") as srv:
        env = {**clean_env(), "ANTHROPIC_API_KEY": SECRET, "ANTHROPIC_BASE_URL": srv.url}
        cmd = [sys.executable, "-m", "trainer.cli", "eval", str(a), str(b), "--judge", "claude:claude-test",
               "-o", str(out), "--swap", "--no-progress", "--concurrency", "2"]  # fmt: skip
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        log = out / "judgments.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 10):
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        done = len(read_jsonl(log))
        assert 10 <= done < 60
        before = len(srv.requests)
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        recs = read_jsonl(log)
        assert len(recs) == 60 and len({x["id"] for x in recs}) == 60
        assert len(srv.requests) - before == 60 - done  # nothing judged twice
        s = json.loads((out / "summary.json").read_text())
        assert s["this_run"]["already_judged"] == done and s["n_total"] == 30
        assert s["win_rate"] == 50.0  # "prefer_2" always: a draw on every instruction


def test_no_api_key_and_bad_inputs(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    a = outputs(tmp_path / "a.json", 4)
    b = outputs(tmp_path / "b.json", 4)
    o = str(tmp_path / "e")
    base = ["--judge", "claude:claude-test", "-o", o, "--no-progress"]
    assert cli(["eval", str(a), str(b), *base]) == 1 and "ANTHROPIC_API_KEY is not set" in caplog.text
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    # unmatched instructions
    c = outputs(tmp_path / "c.json", 5)
    assert cli(["eval", str(c), str(b), *base]) == 2
    assert "c.json: record 5: instruction 'Question 4?' has no answer in" in caplog.text
    # a duplicate and a record without output
    rows = json.loads(a.read_text())
    write_json(tmp_path / "d.json", [*rows, rows[1]])
    assert cli(["eval", str(tmp_path / "d.json"), str(b), *base]) == 2
    assert "d.json: record 5: duplicate instruction (first at record 2)" in caplog.text
    rows[2].pop("output")
    write_json(tmp_path / "m.json", rows)
    assert cli(["eval", str(tmp_path / "m.json"), str(b), *base]) == 2
    assert "m.json: record 3: field 'output': missing" in caplog.text
    assert (
        cli(["eval", str(a), str(b), "--judge", "gpt:x", "-o", o]) == 2 and "--judge 'gpt:x'" in caplog.text
    )
    assert cli(["eval", str(a), str(b), *base, "--concurrency", "0"]) == 2
    assert not (tmp_path / "e" / "judgments.jsonl").exists()


def test_skip_invalid_counts_what_it_skips(server, tmp_path):
    a = outputs(tmp_path / "a.json", 5)
    rows = json.loads(a.read_text())
    rows[2].pop("output")
    write_json(a, rows)
    b = outputs(tmp_path / "b.json", 4, generator="ref")
    s = run_eval(eval_cfg(tmp_path, a, b, skip_invalid=True))
    assert s["invalid"] == 1 and s["unmatched"] == 2 and s["n_total"] == 3 and s["complete"]


# --- 4. the reward-model judge, end to end on a tiny RM trained here ---------------------------
@pytest.mark.slow
def test_reward_model_judge_end_to_end(tmp_path):
    """A token-level RM trained on the synthetic world judges answers made of good words against
    answers made of bad words: it prefers the good ones whatever the order."""
    rm = tmp_path / "rm"
    env = {**clean_env(), "OMP_NUM_THREADS": "2"}
    p = subprocess.run([sys.executable, "trainer/reward.py", f"output_dir={rm}", "max_steps=60",
                        "eval_every=0", "synthetic.n_pairs=600", "micro_batch_size=16", "hidden_size=32",
                        "intermediate_size=64", "progress=false", "save_best=false"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    n = 16
    prompts = [" ".join(f"p{(i + j) % 32}" for j in range(4)) for i in range(n)]
    good = [
        " ".join(f"g{(i + j) % 24}" if j % 2 else f"n{(i + j) % 64}" for j in range(10)) for i in range(n)
    ]
    bad = [" ".join(f"b{(i + j) % 24}" if j % 2 else f"n{(i + j) % 64}" for j in range(10)) for i in range(n)]
    m = write_json(tmp_path / "m.json", [{"instruction": q, "output": o} for q, o in zip(prompts, good)])
    r = write_json(tmp_path / "r.json", [{"instruction": q, "output": o} for q, o in zip(prompts, bad)])
    code = cli(["eval", str(m), str(r), "--judge", f"rm:{rm / 'final'}", "-o", str(tmp_path / "e"), "--swap",
                "--no-progress", "--device", "cpu"])  # fmt: skip
    assert code == 0
    s = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert s["n_total"] == n and s["win_rate"] >= 90.0, s
    assert s["order_agreement"] == 1.0  # a reward model is position-blind
    assert s["judge_cost_usd"] == 0.0 and s["judge_version"].startswith("token:")
    # the same outputs on both sides: every comparison is a tie
    code = cli(["eval", str(m), str(m), "--judge", f"rm:{rm / 'final'}", "-o", str(tmp_path / "same"),
                "--no-progress", "--device", "cpu"])  # fmt: skip
    assert code == 0
    assert json.loads((tmp_path / "same" / "summary.json").read_text())["n_draws"] == n
    assert cli(["eval", str(m), str(r), "--judge", f"rm:{tmp_path}", "-o", str(tmp_path / "x")]) == 2


# --- 5. real data: AlpacaEval 1's published GPT-4 verdicts, replayed by a fake judge ------------
AE = ROOT.parent / "shared" / "data" / "alpaca_eval"


@pytest.mark.slow
@pytest.mark.skipif(
    not (AE / "alpaca-7b__model_outputs.json").exists(), reason="../shared/data/alpaca_eval absent"
)
@pytest.mark.parametrize("swap", [False, True])
def test_replayed_published_verdicts_reproduce_the_leaderboard(server, tmp_path, swap):
    """alpaca-7b's 805 real outputs against the AE1 reference, judged by a fake Claude that
    answers what alpaca_eval_gpt4 answered for that instruction (in whichever order it is shown):
    the whole eval path — matching, orders, verdict mapping, annotations, summary — gives the
    published leaderboard row (win rate 26.4596, 205 wins, 16 draws of 805)."""
    import re

    published = {
        a["instruction"]: a
        for a in json.loads((AE / "alpaca-7b__alpaca_eval_gpt4__annotations.json").read_text())
    }

    def replay(user: str) -> str:
        ins = re.search(r"<instruction>\n(.*)\n</instruction>", user, re.DOTALL).group(1)
        first = re.search(r"<response_1>\n(.*)\n</response_1>", user, re.DOTALL).group(1)
        a = published[ins]
        if a["preference"] == 0:
            return "<preference>0</preference>"
        winner = a["output_1"] if a["preference"] == 1 else a["output_2"]
        return f"<preference>{1 if first == winner else 2}</preference>"

    server.default, server.responder = "respond", replay
    ref = AE / "DERIVED_ae1_reference_text_davinci_003_from_annotations.json"
    cfg = eval_cfg(
        tmp_path, AE / "alpaca-7b__model_outputs.json", ref, swap=swap, concurrency=8, bootstrap=200
    )
    s = run_eval(cfg)
    assert (s["n_wins"], s["n_wins_base"], s["n_draws"], s["n_total"]) == (205, 584, 16, 805)
    assert s["win_rate"] == pytest.approx(26.4596, abs=5e-5) and s["avg_length"] == 396
    assert s["generator_2"] == "alpaca-7b" and len(server.requests) == 805 * (2 if swap else 1)
    ann = json.loads((tmp_path / "eval" / "annotations.json").read_text())
    assert all(a["preference"] == published[a["instruction"]]["preference"] for a in ann)
    if swap:
        assert s["order_agreement"] == 1.0
    lo, hi = s["ci95_bootstrap"]
    assert lo < 26.46 < hi


# --- 6. evaluation that cannot lie or lose a file ---------------------------------------------
def strict_loads(text: str):
    """json.loads that refuses NaN / Infinity (what a strict JSON reader does)."""

    def refuse(c):
        raise ValueError(f"non-strict JSON constant {c}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def world(tmp_path) -> Path:
    from trainer.data.synthetic import SyntheticConfig, write_synthetic

    write_synthetic(tmp_path / "world", SyntheticConfig(n_pairs=20))
    return tmp_path / "world"


def gold_outputs(path: Path, n: int, word: str) -> Path:
    rows = [
        {"instruction": f"p{i} p{i + 1}", "output": f"{word}{i} n{i}", "generator": word} for i in range(n)
    ]
    return write_json(path, rows)


@pytest.mark.slow
def test_a_nan_score_is_an_error_naming_the_instruction_not_a_verdict(tmp_path, tmp_path_factory, caplog):
    """A reward model with a NaN bias used to give every comparison to the second answer (``r1 >
    r2`` is False for NaN): a normal-looking 50% and exit 0. Now the run stops, naming the
    instruction, and writes no annotations."""
    import shutil

    from _tiny_runs import tiny_ppo_run
    from safetensors.torch import load_file, save_file

    run, _ = tiny_ppo_run(tmp_path_factory.getbasetemp())
    rm = tmp_path / "rm_nan"
    shutil.copytree(run / "rm" / "final", rm)
    (w,) = sorted(rm.glob("*.safetensors"))
    state = load_file(w)
    key = next(k for k in state if k.startswith("score.") and k.endswith("bias"))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, w, metadata={"format": "pt"})
    a = outputs(tmp_path / "a.json", 4, "p{i} g1 n2")
    b = outputs(tmp_path / "b.json", 4, "p{i} b1 n2")
    code = cli(["eval", str(a), str(b), "--judge", f"rm:{rm}", "-o", str(tmp_path / "e"), "--no-progress",
                "--device", "cpu"])  # fmt: skip
    assert code == 1
    assert "non-finite reward" in caplog.text and "Question" in caplog.text
    assert not (tmp_path / "e" / "annotations.json").exists()
    assert not (tmp_path / "e" / "summary.json").exists()


def test_gold_judge_refuses_a_non_finite_gold_reward(world, tmp_path, monkeypatch):
    from trainer.eval.judges import GoldJudge, JudgeError

    a, b = gold_outputs(tmp_path / "a.json", 3, "g"), gold_outputs(tmp_path / "b.json", 3, "b")
    judge = GoldJudge(str(world))
    monkeypatch.setattr(
        judge, "reward", lambda prompt, output: float("inf") if output.startswith("g1") else 0.0
    )
    with pytest.raises(JudgeError, match=r"non-finite gold rewards \[.*inf.*'p1 p2'"):
        run_eval(eval_cfg(tmp_path, a, b, judge=f"gold:{world}"), judge=judge)


def test_eval_writes_only_files_it_owns(world, tmp_path, caplog):
    """``eval -o DIR`` used to overwrite a foreign annotations.json (alpaca_eval's name) and delete a
    foreign judgments.errors.jsonl. Now a directory holding one of its file names that it did not
    write is refused before anything is judged, and nothing there changes."""
    a, b = gold_outputs(tmp_path / "a.json", 5, "g"), gold_outputs(tmp_path / "b.json", 5, "b")
    base = ["--judge", f"gold:{world}", "--no-progress"]
    for name, text in (("annotations.json", '[{"alpaca_eval": 1}]\n'), ("judgments.errors.jsonl", "mine\n")):
        d = tmp_path / f"foreign_{name}"
        d.mkdir()
        (d / name).write_text(text)
        assert cli(["eval", str(a), str(b), "-o", str(d), *base]) == 2
        assert f"{name} exists and was not written by `fgrlhf eval`" in caplog.text
        assert (d / name).read_text() == text
        assert sorted(p.name for p in d.iterdir()) == [name]  # nothing written, nothing judged
    # its own directory: written, then rewritten by a rerun (the record lists its files)
    own = tmp_path / "own"
    assert cli(["eval", str(a), str(b), "-o", str(own), *base]) == 0
    assert cli(["eval", str(a), str(b), "-o", str(own), *base]) == 0
    record = json.loads((own / ".fgrlhf-owned.json").read_text())
    assert record["tool"] == "fgrlhf eval" and "annotations.json" in record["files"]
    # a directory an older version wrote (judgments.jsonl, no record) is still its own
    (own / ".fgrlhf-owned.json").unlink()
    assert cli(["eval", str(a), str(b), "-o", str(own), *base]) == 0
    # -o an input file: refused, the input intact
    before = a.read_text()
    assert cli(["eval", str(a), str(b), "-o", str(a), *base]) == 2 and a.read_text() == before
    assert "is a file; expected a directory" in caplog.text


@pytest.mark.parametrize(
    "edit, problem",
    [
        ('"preference": 7', "preference 7 is not one of 0, 1, 2"),
        ('"preference": "x"', "preference 'x' is not one of 0, 1, 2"),
        ('"preference": 1e400', "preference inf is not one of 0, 1, 2"),
        ('"preference": true', "preference True is not one of 0, 1, 2"),
        ('"model_position": 5', "model_position 5 is not one of 1, 2"),
    ],
)
def test_a_hand_edited_judgment_is_refused_naming_the_line(world, tmp_path, caplog, edit, problem):
    """A preference of 7 used to count as a reference win, ``"x"`` to raise ``invalid literal for
    int()``: now the judgments file is refused naming the line, and left as it was."""
    import re

    a, b = gold_outputs(tmp_path / "a.json", 4, "g"), gold_outputs(tmp_path / "b.json", 4, "b")
    out = tmp_path / "e"
    base = ["eval", str(a), str(b), "-o", str(out), "--judge", f"gold:{world}", "--no-progress"]
    assert cli(base) == 0
    log = out / "judgments.jsonl"
    lines = log.read_text().splitlines()
    key = edit.split(":")[0]
    lines[2] = re.sub(rf"{key}: [^,]+", edit, lines[2], count=1)
    log.write_text("\n".join(lines) + "\n")
    before = log.read_text()
    assert cli(base) == 2
    assert f"judgments.jsonl: line 3: {problem}" in caplog.text
    assert log.read_text() == before


def test_no_result_is_an_error_and_json_outputs_are_strict(world, tmp_path, caplog):
    """``eval --limit 0`` used to exit 0 with nothing; summary.json held a bare NaN (the standard
    error of one instruction). Now --limit 0 is a usage error and every JSON output parses
    strictly (NaN written as null)."""
    a, b = gold_outputs(tmp_path / "a.json", 3, "g"), gold_outputs(tmp_path / "b.json", 3, "b")
    base = ["eval", str(a), str(b), "--judge", f"gold:{world}", "--no-progress"]
    assert cli([*base, "-o", str(tmp_path / "z"), "--limit", "0"]) == 2
    assert "--limit must be >= 1, got 0" in caplog.text
    assert cli([*base, "-o", str(tmp_path / "one"), "--limit", "1"]) == 0
    s = strict_loads((tmp_path / "one" / "summary.json").read_text())
    assert s["n_total"] == 1 and s["standard_error"] is None
    strict_loads((tmp_path / "one" / "annotations.json").read_text())
    assert cli(["generate", "m", "i.json", "-o", str(tmp_path / "g.json"), "--limit", "0"]) == 2


def test_eval_rm_refuses_nothing_nan_gold_and_a_directory_json(tmp_path, tmp_path_factory, caplog):
    """``eval-rm`` on an empty file used to print nan and exit 0; a NaN gold value counted its pair
    as ranked wrong (accuracy 0.846 -> 0.825, no warning); ``--json DIR`` raised a traceback."""
    from _tiny_runs import tiny_ppo_run

    run, _ = tiny_ppo_run(tmp_path_factory.getbasetemp())
    rm, pairs = str(run / "rm" / "final"), run / "synthetic" / "pairs.jsonl"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert cli(["eval-rm", rm, str(empty)]) == 2 and "empty.jsonl: no pair to evaluate" in caplog.text
    lines = pairs.read_text().splitlines()[:12]
    rec = json.loads(lines[4])
    rec["gold"]["original"] = float("nan")
    lines[4] = json.dumps(rec)  # Python writes the bare NaN a hand edit or a NaN-unaware tool leaves
    nan_file = tmp_path / "nan.jsonl"
    nan_file.write_text("\n".join(lines) + "\n")
    assert cli(["eval-rm", rm, str(nan_file)]) == 2
    assert "nan.jsonl: line 5: field 'gold.original': expected a finite number, got nan" in caplog.text
    assert cli(["eval-rm", rm, str(nan_file), "--skip-invalid", "--json", str(tmp_path / "m.json")]) == 0
    m = strict_loads((tmp_path / "m.json").read_text())
    assert m["skipped"]["invalid_record"] == 1 and m["original_pairs"] == 11
    assert cli(["eval-rm", rm, str(nan_file), "--json", str(tmp_path)]) == 2
    assert "--json" in caplog.text and "is a directory" in caplog.text


@pytest.mark.parametrize(
    "argv, hint",
    [
        (["demo", "--seed", "42"], "--seed (did you mean --seeds"),
        (["eval", "a", "b", "--judge", "x", "-o", "y", "--sw"], "--sw (did you mean --swap"),
        (["winrate", "a", "--js", "s.json"], "--js (did you mean --json?)"),
    ],
)
def test_abbreviated_flags_are_errors_naming_the_real_ones(argv, hint, capsys):
    """argparse's prefix matching read `fgrlhf demo --seed 42` as `--seeds 42` (42 seeds, hours of
    work): every fgrlhf command now refuses an abbreviated or unknown flag and names the real ones."""
    with pytest.raises(SystemExit) as e:
        cli(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments" in err and hint in err and "its flags:" in err


def test_gold_judge_does_not_reward_empty_or_unfinished_answers(world, tmp_path):
    """The gold is a mean token utility: an empty answer scored 0 and beat every answer below 0,
    and an answer cut at the length cap was scored as complete. Now either loses to a complete
    answer whatever its gold, two incomplete answers draw, and an output file's ``finished`` is
    part of the comparison (and of its identity: the same texts with another flag are re-judged)."""
    import asyncio

    from trainer.data.formats import Prompt
    from trainer.eval.judges import Comparison, GoldJudge

    judge = GoldJudge(str(world))
    p = Prompt("p1 p2")
    bad, good = "b1 b2 b3", "g1 g2"
    assert judge.reward(p, bad) < 0 < judge.reward(p, good) and judge.reward(p, "") == 0.0
    cases = [
        (Comparison(p, bad, ""), 1),  # empty loses even to a negative answer
        (Comparison(p, "", bad), 2),
        (Comparison(p, good, bad, finished_1=False, finished_2=True), 2),  # cut at the cap loses
        (Comparison(p, good, "", finished_1=False), 0),  # two incomplete answers: a draw
        (Comparison(p, good, bad, finished_1=None, finished_2=None), 1),  # not recorded: by gold
    ]
    verdicts = asyncio.run(judge.compare_batch([c for c, _ in cases]))
    assert [v.preference for v in verdicts] == [want for _, want in cases]
    # end to end: the model's better-gold answers were all cut at the cap -> it loses every one
    rows = [
        {"instruction": f"p{i} p{i + 1}", "output": f"g{i} g{i + 1}", "finished": False} for i in range(4)
    ]
    refs = [{"instruction": f"p{i} p{i + 1}", "output": f"b{i} n{i}", "finished": True} for i in range(4)]
    a, b = write_json(tmp_path / "a.json", rows), write_json(tmp_path / "b.json", refs)
    base = ["eval", str(a), str(b), "--judge", f"gold:{world}", "--no-progress", "-o"]
    assert cli([*base, str(tmp_path / "cut")]) == 0
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["win_rate"] == 0.0
    for r in rows:
        r["finished"] = True
    write_json(a, rows)
    assert cli([*base, str(tmp_path / "cut")]) == 0  # the same texts, now finished: judged again
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["win_rate"] == 100.0
    rows[0]["finished"] = "yes"
    write_json(a, rows)
    assert cli([*base, str(tmp_path / "bad")]) == 2
