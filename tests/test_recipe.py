"""examples/alpacafarm_recipe.sh end to end, at tiny size: the path a user takes from their own
checkpoint to a win rate, run exactly as a user runs it (the script, the shipped 7B configs,
``torchrun`` with 2 processes), only made small through the script's ``*_EXTRA`` overrides.

What is real: the AlpacaFarm records (``../shared/data/alpaca_farm``: 252 instructions with the
SFT model's and the RLHF model's outputs), the LLaMA tokenizer (32k SentencePiece vocabulary), a
checkpoint directory as real ones arrive (bf16 safetensors, ``dtype: bfloat16`` in its config,
the tokenizer beside it), the ``anthropic`` SDK of ``fgrlhf edit``. What is not: the checkpoint
is a random 2-layer LLaMA (hidden 64), Claude is the local fake Messages API of
``tests/fake_anthropic.py`` (its minimal edit replaces the last word), the judge is a reward
model of the run (``rm:``), and every size is tiny — so the numbers mean nothing; the test is
that every stage reads the previous stage's output exactly as written and the chain ends in a
win-rate file. Then the same command again, without ``ANTHROPIC_API_KEY`` (as on a training node
that holds none): every finished stage is skipped and nothing is sent to Claude.

The preference labels are made up, by a documented rule: the AlpacaFarm files carry outputs but
no human preference, so ``output_1`` is the SFT model's output, ``output_2`` the RLHF model's,
and ``preference`` is a stable coin flip, ``1 + (first byte of sha256(instruction + "\\n" +
input)) % 2`` (both labels occur: 127 × 1, 125 × 2). Skipped, saying why, when ``../shared/data``
(beside the clone) is absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _utils import clean_env
from fake_anthropic import FakeMessagesServer

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "examples" / "alpacafarm_recipe.sh"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ALPACA_FARM = SHARED_DATA / "alpaca_farm"
TOKENIZER_DIR = SHARED_DATA / "llama_tokenizer"
BIN = Path(sys.executable).parent
N_EVAL = 16  # instructions of the evaluation set (the rest are PPO prompts)
POLICIES = ("ppo_token", "ppo_fg", "ppo_rlhf", "figa")  # judged against the SFT model's answers

# The tiny sizes, as a user would shrink the recipe for a CPU smoke run: the model's shape comes
# from the checkpoint; lengths, steps and batches from these overrides.
TINY_ENV = {
    "NPROC": "2",
    "GEN_NPROC": "1",
    "COMMON_EXTRA": "device=cpu param_dtype=float32 activation_checkpointing=false "
    "attn_implementation=sdpa memory_limit_gb=0 progress=false checkpoint_every=0",
    "SFT_EXTRA": "max_length=128 micro_batch_size=4 grad_accum=1 max_steps=4 lr=1e-3 warmup_steps=1 "
    "eval_every=0",
    "RM_EXTRA": "max_length=192 min_response_tokens=16 micro_batch_size=2 grad_accum=1 max_steps=4 lr=1e-3 "
    "warmup_steps=1 eval_every=0 eval_fraction=0.1 plots=false report=false",
    "PPO_EXTRA": "iterations=2 rollout_batch_size=8 forward_batch_size=8 micro_batch_size=4 "
    "max_prompt_length=64 max_new_tokens=16 plots=false report=false",
    "FIGA_EXTRA": "max_length=192 min_response_tokens=16 micro_batch_size=2 grad_accum=1 max_steps=4 "
    "lr=1e-3 warmup_steps=1 eval_every=0",
    "EDIT_EXTRA": "--no-progress --no-fsync --concurrency 16",
    "GEN_EXTRA": "--max-new-tokens 16 --max-prompt-length 64 --dtype float32 --device cpu "
    "--batch-size 16 --no-progress --no-fsync",
    "EVAL_EXTRA": "--device cpu --bootstrap 100 --no-progress --no-fsync",
}


def preference(rec: dict) -> int:
    """The made-up label of a pair (see the module docstring): a stable coin flip."""
    return 1 + hashlib.sha256(f"{rec['instruction']}\n{rec['input']}".encode()).digest()[0] % 2


def write_inputs(d: Path) -> dict[str, str]:
    """The recipe's input files from the real AlpacaFarm records: pairs (all 252), the PPO
    prompts and the evaluation set (disjoint), and the SFT data (the SFT model's outputs file as
    it is)."""
    sft = json.loads((ALPACA_FARM / "outputs_sft.json").read_text())
    rlhf = json.loads((ALPACA_FARM / "outputs_rlhf.json").read_text())
    assert [(a["instruction"], a["input"]) for a in sft] == [(b["instruction"], b["input"]) for b in rlhf]
    pairs = [
        {**{k: a[k] for k in ("instruction", "input")}, "output_1": a["output"], "output_2": b["output"]}
        for a, b in zip(sft, rlhf)
    ]
    for p in pairs:
        p["preference"] = preference(p)
    instructions = [{"instruction": r["instruction"], "input": r["input"]} for r in sft]
    files = {
        "PAIRS": ("pairs.json", pairs),
        "PROMPTS": ("ppo_prompts.json", instructions[N_EVAL:]),
        "EVAL_SET": ("eval_set.json", instructions[:N_EVAL]),
    }
    out = {"SFT_DATA": str(ALPACA_FARM / "outputs_sft.json")}
    for key, (name, rows) in files.items():
        (d / name).write_text(json.dumps(rows, indent=1))
        out[key] = str(d / name)
    return out


def tiny_bf16_checkpoint(d: Path) -> Path:
    """A random tiny LLaMA over the real tokenizer, saved as real checkpoints arrive: bf16
    safetensors, ``dtype: bfloat16`` in config.json, the tokenizer in the same directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    tok = LlamaTokenizer.from_pretrained(str(TOKENIZER_DIR))
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(d)
    tok.save_pretrained(d)
    saved = json.loads((d / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) == "bfloat16", saved
    return d


def run_recipe(env: dict[str, str], log: Path) -> tuple[subprocess.CompletedProcess, float]:
    """``bash examples/alpacafarm_recipe.sh`` with ``env``; its output kept in ``log``."""
    t0 = time.perf_counter()
    p = subprocess.run(["bash", str(RECIPE)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    log.write_text(p.stdout + p.stderr)
    return p, time.perf_counter() - t0


@pytest.mark.slow
@pytest.mark.slow
def test_recipe_from_a_bf16_checkpoint_to_a_win_rate(tmp_path):
    for need in (ALPACA_FARM / "outputs_sft.json", ALPACA_FARM / "outputs_rlhf.json", TOKENIZER_DIR):
        if not need.exists():
            pytest.skip(f"shared data absent: {need}")
    pytest.importorskip("sentencepiece")
    if not (BIN / "fgrlhf").exists() or not (BIN / "torchrun").exists():
        pytest.skip(f"fgrlhf / torchrun not installed beside {sys.executable}")
    inputs = write_inputs(tmp_path)
    ckpt = tiny_bf16_checkpoint(tmp_path / "llama_bf16")
    out = tmp_path / "runs"
    with FakeMessagesServer() as server:
        env = {
            **clean_env(), **TINY_ENV, **inputs,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1",
            "TORCHRUN": str(BIN / "torchrun"), "FGRLHF": str(BIN / "fgrlhf"),
            "CKPT": str(ckpt), "OUT": str(out), "JUDGE": f"rm:{out / 'rm_seq' / 'final'}",
            "ANTHROPIC_API_KEY": "sk-test-recipe", "ANTHROPIC_BASE_URL": server.url,
        }  # fmt: skip
        p, seconds = run_recipe(env, tmp_path / "recipe.log")
        assert p.returncode == 0, (
            f"recipe failed ({p.returncode}) after {seconds:.0f} s:\n{p.stdout[-6000:]}\n{p.stderr[-6000:]}"
        )
        print(f"recipe: {seconds:.0f} s")
        n_requests = len(server.requests)

        # 1. every pair went to Claude once, and the edits are real minimal edits
        edits = [json.loads(line) for line in (out / "edits.jsonl").read_text().splitlines()]
        assert n_requests == len(edits) == 252
        assert sum(e["status"] == "ok" for e in edits) > 200
        # 2-5. each stage read the previous one's output: the models each PPO arm started from
        for arm, rm in (("ppo_token", "rm_token"), ("ppo_fg", "rm_seq_edited"), ("ppo_rlhf", "rm_seq")):
            config = (out / arm / "config.yaml").read_text()
            assert f"init_from: {out / 'sft' / 'final'}" in config
            assert f"reward_model: {out / rm / 'final'}" in config
        # a rerun resumes: every trainer and generation stage is skipped, no edit is requested
        # again, and the key is not needed (a training node often holds none)
        keyless = {k: v for k, v in env.items() if k != "ANTHROPIC_API_KEY"}
        p, seconds = run_recipe(keyless, tmp_path / "recipe_rerun.log")
        assert p.returncode == 0, f"rerun failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
        print(f"rerun: {seconds:.0f} s")
        assert p.stdout.count("exists: skipped") == 1 + 3 + 3 + 1 + 5, p.stdout  # trainers, answers
        assert p.stdout.count("is complete (judge rm:") == len(POLICIES), p.stdout
        assert len(server.requests) == n_requests

    # 6-8. every policy answered every instruction, was judged, and has a win rate (`fgrlhf winrate --json`)
    for name in ("sft", *POLICIES):
        answers = json.loads((out / "outputs" / f"{name}.json").read_text())
        assert len(answers) == N_EVAL and {a["generator"] for a in answers} == {name}
    for name in POLICIES:
        s = json.loads((out / "eval" / name / "winrate.json").read_text())
        assert s["n_total"] == N_EVAL and s["n_missing"] == 0, s
        assert s["n_wins"] + s["n_wins_base"] + s["n_draws"] == N_EVAL
        assert 0 <= s["win_rate"] <= 100 and s["generator_2"] == name and s["generator_1"] == "sft"


def test_a_finished_edits_file_reruns_without_the_key(tmp_path, monkeypatch):
    """Stage 1 of a resumed recipe: ``fgrlhf edit`` on a finished output sends nothing, so it
    must not need ``ANTHROPIC_API_KEY`` (it used to refuse to start without one); with a pair left
    to edit the key is still required, before the output is touched."""
    import io

    from trainer.data.edit import EditConfig, run_edit

    pairs = [
        {"instruction": f"Question {i}?", "input": "", "output_1": f"Good answer {i}.",
         "output_2": f"The answer to {i} is wrong here.", "preference": 1}
        for i in range(4)
    ]  # fmt: skip
    inp, out = tmp_path / "pairs.json", tmp_path / "edits.jsonl"
    inp.write_text(json.dumps(pairs[:3]))
    cfg = EditConfig(str(inp), str(out), format="alpaca", progress=False, fsync=False)
    with FakeMessagesServer() as server:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-recipe")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        assert run_edit(cfg, out=io.StringIO()).statuses["ok"] == 3
        monkeypatch.delenv("ANTHROPIC_API_KEY")
        again = run_edit(cfg, out=io.StringIO())  # finished: no key needed, nothing sent
        assert again.already_done == 3 and again.attempted == 0 and len(server.requests) == 3
        inp.write_text(json.dumps(pairs))  # one pair left: the key is required, nothing written
        before = out.read_bytes()
        with pytest.raises(RuntimeError, match="ANTHROPIC_API_KEY is not set"):
            run_edit(cfg, out=io.StringIO())
        assert out.read_bytes() == before and len(server.requests) == 3
