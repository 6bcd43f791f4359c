"""The first command to run on a CUDA machine: what CPU CI cannot check, in under 10 minutes.

    python bench/gpu_smoke.py                    # the five checks on the GPU, one table at the end
    python bench/gpu_smoke.py --record           # ... appending the table to bench/RESULTS.md
    python bench/gpu_smoke.py --rehearse-on-cpu  # the same code on the CPU, tiny sizes (CI, 1.5-2.5 min)

1. **Kernel parity on CUDA**: the ``triton``-marked tests (every op's Triton kernels, forward
   and backward against the eager reference, odd shapes, fp32/bf16/fp16) compiled for the GPU
   instead of run by the interpreter; the test files in up to 4 pytest processes in parallel.
   Every collected test must pass (a skip fails: it would hide a kernel that did not run).
2. **bf16 checkpoint → fp32 masters**: a tiny LLaMA saved in bf16 is built through the trainers'
   one build path (``base_config``, ``load_on_rank0``, ``build_sharded`` with
   ``param_dtype=bfloat16``), as rank 0 and as the other ranks build it: every sharded parameter
   of actor, reference and critic must be an fp32 DTensor holding the checkpoint's weights, the
   forward must compute in bf16, and one AdamW step must leave fp32 state and keep an update too
   small for bf16 weights (1e-5 on 1.0).
3. **Written-out decode step vs a full forward** (``trainer.rollout.generate``, a 0.5B LLaMA with
   GQA): the sampled tokens' log-probs against a full forward over the same tokens, fp32 (the bug
   check, tight) and bf16 (rounding, loose; attention as the trainers pick it); no NaN; which
   attention kernel ran in the prefill, the decode step and the full forward (profiler);
   tokens/s of the written-out step and of transformers' own decoding.
4. **1-GPU PPO with resume**: ``trainer/ppo.py`` (the 7B config's engine settings — bf16
   compute, activation checkpointing, ``grad_sync=micro_batch`` — at 57M parameters per model;
   what the synthetic world trains on the fly first, the token RM and the SFT start, trains on
   the GPU too) stopped after 2 of 3 iterations, then rerun: it must resume from iteration 2,
   and ``metrics.jsonl`` must hold iterations 1..3 once each, every value finite.
5. **Memory per phase vs the CPU dry run**: the same config's ``dry_run=true
   dry_run_world_size=1`` (run on the CPU beside checks 1-3) measures each phase's peak; the
   real run's CUDA peak of each PPO phase (``max_memory_allocated``, reset at each phase start)
   must not exceed it by more than 10% in the resumed run (PPO alone in its process), and the
   real run must have used the dry run's measured plan.

Time: every check runs in a process of its own with a hard budget (killed at it, reported as a
failure, the other checks go on): parity 210 s, masters 45 s, decode 75 s, PPO 210 s in turn, the
dry run (150 s) beside the first three — at most 9 minutes in all, about 4 expected on an H100.
The exit status is 1 when any row FAILs (WARN and INFO rows do not). ``--keep`` keeps the work
directory (every check's log, the PPO run) when all pass; after a failure it is always kept.

Without CUDA (and without ``--rehearse-on-cpu``) it says so and exits 0. The rehearsal runs every
check on the CPU at tiny sizes through the same functions (parity: one odd shape per op under
``TRITON_INTERPRET=1``; memory: no per-phase peaks on the CPU, so those rows are INFO);
``tests/test_gpu_smoke.py`` runs it in CI, and the verdicts only a GPU reaches on made-up inputs.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python bench/gpu_smoke.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

ROOT = Path(__file__).resolve().parents[1]
HEADER = ["check", "result", "value", "limit"]
PASS, FAIL, WARN, INFO = "PASS", "FAIL", "WARN", "INFO"
Row = list  # [check, result, value, limit]: four strings

# Hard wall-clock budgets, seconds. parity + masters + decode + ppo = 540 s run one after another;
# the dry run (CPU only) runs beside the first three and is waited for before PPO starts.
BUDGET_S = {"parity": 210, "masters": 45, "decode": 75, "dry_run": 150, "ppo": 210}
TOTAL_LIMIT_S = 600

# check 1: what pytest runs (the rehearsal: one small odd shape per op, fp32, in the interpreter)
PARITY_FILES = ["tests"]
REHEARSAL_PARITY = (
    [
        "tests/test_gae.py",
        "tests/test_masked_token_sums.py",
        "tests/test_token_bt_loss.py",
        "tests/test_token_logprobs.py",
    ],
    "float32 and (3x37 or 3-37)",
)
PARITY_WORKERS = 4  # pytest processes at most (and one per 4 cores)

# check 3: the decode comparison's model and rollout (GPU: LLaMA-1B-like GQA, 8 layers)
DECODE_SIZES = {
    "gpu": dict(vocab=32000, hidden=2048, layers=8, heads=16, kv_heads=4, inter=5632, B=32, P=64, R=128),
    "cpu": dict(vocab=512, hidden=64, layers=2, heads=4, kv_heads=2, inter=128, B=4, P=12, R=16),
}
# max, mean abs Δ log p (nats). At the GPU sizes on the CPU: fp32 1.2e-5 / 3.0e-6 (the bug check:
# a wrong position, mask or cache slot is off by far more), bf16 0.13 / 0.035 (rounding).
DECODE_LIMITS = {"float32": (1e-3, 1e-4), "bfloat16": (1.0, 0.15)}

# checks 4-5: one PPO config for the dry run and the real run. The engine settings are those of
# configs/llama7b_8xa100/ppo.yaml; the sizes are small (GPU: 57M parameters per model, phase
# peaks of 1.7-2.4 GiB, so fixed CUDA overheads do not decide the memory ratio).
PPO_ENGINE = (
    "param_dtype=bfloat16 reduce_dtype=float32 activation_checkpointing=true grad_sync=micro_batch "
    "deterministic=false attn_implementation=auto missing_eos_penalty=-1.0 old_logprobs=generate "
    "reward_source=learned reward_level=token"
).split()
PPO_QUIET = "progress=false plots=false report=false save_rollouts_every=0".split()
PPO_SIZES = {
    "gpu": "hidden_size=768 intermediate_size=2048 num_layers=8 num_heads=12 rollout_batch_size=16 "
    "forward_batch_size=16 micro_batch_size=4 num_minibatches=2 max_new_tokens=48 synthetic.n_pairs=300 "
    "rm_epochs=1".split(),
    "cpu": "hidden_size=32 intermediate_size=64 num_layers=2 num_heads=4 rollout_batch_size=8 "
    "forward_batch_size=8 micro_batch_size=4 num_minibatches=2 max_new_tokens=16 synthetic.n_pairs=120 "
    "rm_epochs=1".split(),
}
PPO_ITERATIONS, PPO_STOP_AFTER = 3, 2
MASTERS_LR = 1e-5  # check 2's AdamW step: below bf16's resolution at 1.0 (2**-8), within fp32's
MEMORY_RATIO_LIMIT = 1.10  # real CUDA peak / dry-run peak, per phase
PHASES = ("generate", "score", "rewards", "train", "checkpoint")  # at least these, measured


# --------------------------------------------------------------------------------------------
# Entry point and orchestration
# --------------------------------------------------------------------------------------------
@dataclass
class Mode:
    """How this invocation runs: on the GPU or as the CPU rehearsal, and where files go."""

    rehearse: bool
    work: Path

    @property
    def size(self) -> str:
        return "cpu" if self.rehearse else "gpu"

    @property
    def device(self) -> str:
        return "cpu" if self.rehearse else "cuda"

    def env(self) -> dict[str, str]:
        """The environment of every child: no distributed variables (each child is a world of
        one), no Triton interpreter on the GPU, no GPU at all in the rehearsal."""
        drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("TORCHELASTIC")}
        env.pop("TRITON_INTERPRET", None)
        env["PYTHONUNBUFFERED"] = "1"
        if self.rehearse:
            env["CUDA_VISIBLE_DEVICES"] = ""
            env["TRITON_INTERPRET"] = "1"
        return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    p.add_argument("--rehearse-on-cpu", action="store_true", help="every check on the CPU at tiny sizes")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, runs) when all pass")
    p.add_argument("--child", choices=sorted(CHECKS), help=argparse.SUPPRESS)  # one check, in-process
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        return run_child(args.child, Mode(args.rehearse_on_cpu, args.work), args.deadline)
    if args.record and args.rehearse_on_cpu:
        p.error("--record appends GPU results; the rehearsal only proves the script (nothing to record)")
    if not args.rehearse_on_cpu and not torch.cuda.is_available():
        print(
            "gpu_smoke: no CUDA device (torch.cuda.is_available() is False): nothing checked, exit 0. "
            "On a GPU machine install a CUDA build of torch; `--rehearse-on-cpu` runs the checks on "
            "the CPU at tiny sizes."
        )
        return 0

    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gpu_smoke-"))
    mode = Mode(args.rehearse_on_cpu, work)
    # (no CUDA context in this process: the checks' children own the GPU)
    where = "CPU rehearsal" if mode.rehearse else f"{torch.cuda.device_count()} CUDA device(s)"
    print(f"gpu_smoke: {where}, torch {torch.__version__}; work dir {work}", flush=True)
    rows, seconds = run_checks(mode)
    wall = time.monotonic() - start
    spent = ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
    rows.append(
        [
            "6. wall time",
            PASS if wall <= TOTAL_LIMIT_S else FAIL,
            f"{wall:.0f} s ({spent}; dry run beside 1-3)",
            f"≤ {TOTAL_LIMIT_S} s",
        ]
    )
    where = "CPU rehearsal" if mode.rehearse else torch.cuda.get_device_name(0)
    print(f"\ngpu_smoke on {where}, torch {torch.__version__}:\n{format_table(rows)}", flush=True)
    failed = [r for r in rows if r[1] == FAIL]
    if args.record:
        record_table(rows, mode, wall)
    if failed:
        print(
            f"gpu_smoke: {len(failed)} FAILED ({', '.join(r[0] for r in failed)}); logs kept in {work}",
            file=sys.stderr,
        )
        return 1
    if not args.keep:
        _remove(work)
    print("gpu_smoke: every check passed" + (f"; logs and runs in {work}" if args.keep else ""))
    return 0


def run_checks(mode: Mode) -> tuple[list[Row], dict[str, float]]:
    """Every check in a child process with its budget; the dry run beside checks 1-3. Returns the
    rows in check order and each check's seconds."""
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    dry = Child("dry_run", mode)  # CPU only: beside the GPU checks, done before PPO starts
    for name in ("parity", "masters", "decode", "dry_run", "ppo"):  # one at a time, in this order
        child = dry if name == "dry_run" else Child(name, mode)
        rows += child.wait()
        seconds[name] = child.seconds
    rows += memory_rows(
        read_dry_run_peaks(mode.work / "ppo"),
        [read_phase_peaks(mode.work / f"ppo_phases_run{i}.jsonl") for i in (1, 2)],
        read_plan_note(mode.work / "ppo_run1.log"),
        on_cuda=not mode.rehearse,
    )
    rows.sort(key=lambda r: int(r[0].split(".")[0]))  # stable: each check's rows keep their order
    return rows, seconds


class Child:
    """One check in a process (and session) of its own: ``bench/gpu_smoke.py --child NAME``,
    output to ``<work>/<name>.log``, rows to ``<work>/<name>.rows`` (JSON lines, written as they
    are found, so a check killed at its budget keeps the rows it had)."""

    def __init__(self, name: str, mode: Mode):
        self.name, self.mode = name, mode
        self.log = mode.work / f"{name}.log"
        self.rows_file = mode.work / f"{name}.rows"
        self.budget = BUDGET_S[name]
        self.t0 = time.monotonic()
        self.deadline = time.time() + self.budget
        flags = ["--child", name, "--work", str(mode.work), "--deadline", str(self.deadline)]
        flags += ["--rehearse-on-cpu"] if mode.rehearse else []
        cmd = [sys.executable, str(Path(__file__).resolve()), *flags]
        print(f"gpu_smoke: {name} started (budget {self.budget} s)", flush=True)
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=mode.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait(self) -> list[Row]:
        timed_out = False
        try:
            rc = self.proc.wait(timeout=max(1.0, self.budget - (time.monotonic() - self.t0)))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(self.proc.pid, signal.SIGKILL)  # the child and whatever it started
            rc = self.proc.wait()
        self.seconds = time.monotonic() - self.t0
        rows, label = read_rows(self.rows_file), CHECK_LABEL[self.name]
        log = self.log.read_text(errors="replace")
        if timed_out:
            rows.append([label, FAIL, f"killed at its budget ({self.budget} s)", f"≤ {self.budget} s"])
        elif (rc != 0 and not any(r[1] == FAIL for r in rows)) or not rows:
            rows.append([label, FAIL, f"exit {rc}: {last_line_of(log)}", "exit 0"])
        failed = any(r[1] == FAIL for r in rows)
        print(f"gpu_smoke: {self.name} {'FAILED' if failed else 'done'} in {self.seconds:.0f} s", flush=True)
        if failed:
            tail = "\n".join(log.splitlines()[-40:])
            print(f"--- last lines of {self.log} ---\n{tail}\n---", file=sys.stderr, flush=True)
        return rows


def run_child(name: str, mode: Mode, deadline: float) -> int:
    """``--child NAME``: run one check in this process, appending its rows to ``<name>.rows``."""
    ctx = Ctx(mode, deadline, mode.work / f"{name}.rows")
    try:
        CHECKS[name](ctx)
    except Exception as e:  # noqa: BLE001 - the row says what broke; the traceback is in the log
        traceback.print_exc()
        ctx.row(
            CHECK_LABEL[name], FAIL, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        )
        return 1
    return 0


@dataclass
class Ctx:
    """What a check gets: the mode, its deadline (``time.time()``) and where its rows go."""

    mode: Mode
    deadline: float
    rows_file: Path

    def row(self, check: str, result: str, value: str, limit: str = "") -> None:
        print(f"gpu_smoke: {check} | {result} | {value} | {limit}", flush=True)
        with self.rows_file.open("a") as f:
            f.write(json.dumps([check, result, value, limit]) + "\n")

    def left(self, reserve: float = 3.0) -> float:
        """Seconds left for a sub-step, keeping ``reserve`` to report it."""
        return max(1.0, self.deadline - time.time() - reserve)


def read_rows(path: Path) -> list[Row]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_line_of(text: str) -> str:
    lines = [x for x in text.splitlines() if x.strip()]
    return lines[-1][:200] if lines else "(no output)"


def format_table(rows: list[Row]) -> str:
    """The markdown table printed at the end (and recorded)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def record_table(rows: list[Row], mode: Mode, wall: float) -> str:
    """Append the table to bench/RESULTS.md (command, machine with the GPU's name, date)."""
    from importlib.metadata import PackageNotFoundError, version

    from bench.common import record

    try:
        triton_version = version("triton")
    except PackageNotFoundError:
        triton_version = "not installed"
    notes = (
        f"{wall:.0f} s wall; triton {triton_version}; budgets {BUDGET_S} s; "
        f"PPO {' '.join(PPO_SIZES[mode.size])}; decode {DECODE_SIZES[mode.size]}"
    )
    return record("gpu_smoke: the first checks on a CUDA device", HEADER, rows, notes)


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# 1. Kernel parity on CUDA: the triton-marked tests, one pytest per test file, in parallel
# --------------------------------------------------------------------------------------------
PYTEST_LINE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def check_parity(ctx: Ctx) -> None:
    paths, select = REHEARSAL_PARITY if ctx.mode.rehearse else (PARITY_FILES, "")
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "triton"]
    base += ["-k", select] if select else []
    env = ctx.mode.env()
    collected = subprocess.run(
        [*base, "--collect-only", "-q", *paths],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=ctx.left(),
    )
    print(collected.stdout[-3000:], collected.stderr[-3000:], sep="\n")
    ids = [x.strip() for x in collected.stdout.splitlines() if "::" in x]
    by_file: dict[str, list[str]] = {}
    for node in ids:
        by_file.setdefault(node.split("::")[0], []).append(node)
    if collected.returncode != 0 or not ids:
        why = last_line_of(collected.stdout + collected.stderr)
        ctx.row(
            "1. kernel parity", FAIL, f"collection failed (exit {collected.returncode}): {why}", "all pass"
        )
        return
    # the files in `workers` shards balanced by test count, one pytest each, in parallel (Triton
    # compiles every kernel specialisation on first use, single-threaded in each process)
    workers = min(PARITY_WORKERS, len(by_file), max(1, (os.cpu_count() or 1) // 4))
    shards: list[list[str]] = [[] for _ in range(workers)]
    sizes = [0] * workers
    for f in sorted(by_file, key=lambda f: -len(by_file[f])):
        i = sizes.index(min(sizes))
        shards[i].append(f)
        sizes[i] += len(by_file[f])
    procs = []
    for i, files in enumerate(shards):
        with (ctx.mode.work / f"parity_{i}.log").open("w") as log:
            cmd = [*base, "-v", *files]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, ctx.deadline - time.time() - 5))
        except subprocess.TimeoutExpired:  # out of time: what it finished still counts
            proc.kill()
            proc.wait()
    outputs = [(ctx.mode.work / f"parity_{i}.log").read_text(errors="replace") for i in range(workers)]
    print("\n".join(outputs)[-20000:])
    outcome = parse_pytest("\n".join(outputs))
    result, value = parity_verdict(ids, outcome)
    where = "CUDA" if not ctx.mode.rehearse else "interpreter (rehearsal subset)"
    detail = f"{value} [{where}; {len(by_file)} files, {workers} pytest process(es)]"
    ctx.row("1. kernel parity", result, detail, "every collected test passes")


def parse_pytest(output: str) -> dict[str, str]:
    """``{node id: outcome}`` from ``pytest -v`` output (PASSED, FAILED, ERROR, SKIPPED, ...)."""
    out = {}
    for line in output.splitlines():
        m = PYTEST_LINE.match(line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out


def parity_verdict(ids: list[str], outcome: dict[str, str]) -> tuple[str, str]:
    """PASS only when every collected test ran and passed; else FAIL naming what did not."""
    bad = {k: v for k, v in outcome.items() if v not in ("PASSED", "XFAIL")}
    missing = [i for i in ids if i not in outcome]
    passed = sum(v == "PASSED" for v in outcome.values())
    if not bad and not missing:
        return PASS, f"{passed}/{len(ids)} passed"
    parts = [f"{passed}/{len(ids)} passed"]
    for kind in ("FAILED", "ERROR", "SKIPPED", "XPASS"):
        names = [k for k, v in bad.items() if v == kind]
        if names:
            parts.append(f"{len(names)} {kind.lower()} (first {names[0]})")
    if missing:
        parts.append(f"{len(missing)} not run (first {missing[0]})")
    return FAIL, "; ".join(parts)


# --------------------------------------------------------------------------------------------
# 2. A bf16-saved checkpoint builds fp32 masters
# --------------------------------------------------------------------------------------------
def check_masters(ctx: Ctx) -> None:
    from safetensors import safe_open
    from torch.distributed.tensor import DTensor
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.infra.dist import init_distributed, shutdown
    from trainer.infra.dryrun import stand_in_tokenizer
    from trainer.infra.runtime import build_optimizer
    from trainer.models import (
        base_config,
        build_sharded,
        load_on_rank0,
        no_dropout,
        pad_token_id,
        per_token_scores,
        scalar_head_config,
    )
    from trainer.ppo import PPOConfig

    # a tiny LLaMA saved in bf16, with its tokenizer (a plain transformers directory)
    ckpt = ctx.mode.work / "bf16_llama"
    tok = stand_in_tokenizer(96)
    torch.manual_seed(0)
    lm_cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(lm_cfg).to(torch.bfloat16).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}, "the checkpoint was not saved in bf16"

    # the trainers' build path, as trainer/ppo.py build_models calls it (critic: the LM + a new head)
    cfg = PPOConfig(
        init_from=str(ckpt),
        device=ctx.mode.device,
        param_dtype="bfloat16",
        reduce_dtype="float32",
        activation_checkpointing=True,
        deterministic=False,
        attn_implementation="auto",
    )
    di = init_distributed(cfg.device)
    try:
        # twice: as rank 0 builds (its load is handed the same config object, which transformers
        # may write the dtype it loaded in back into) and as every other rank builds (no load
        # there: the config as read from the checkpoint, dtype bfloat16)
        models = {}
        for view in ("rank 0", "other ranks"):
            a_cfg = no_dropout(base_config(cfg, tok))
            c_cfg = no_dropout(scalar_head_config(a_cfg, pad_token_id(tok)))  # (critic_from=<a dir>)
            load_a, load_c = (
                (a_cfg, c_cfg) if view == "rank 0" else (copy.deepcopy(a_cfg), copy.deepcopy(c_cfg))
            )
            actor_sd = load_on_rank0(di, "causal_lm", load_a, cfg.init_from, cfg.seed)
            critic_sd = load_on_rank0(di, "scalar_head", load_c, cfg.init_from, cfg.seed + 1, new_head=True)
            models[f"actor ({view})"] = build_sharded("causal_lm", a_cfg, dict(actor_sd), di, cfg, train=True)
            models[f"ref ({view})"] = build_sharded("causal_lm", a_cfg, dict(actor_sd), di, cfg, train=False)
            models[f"critic ({view})"] = build_sharded("scalar_head", c_cfg, critic_sd, di, cfg, train=True)

        # (a) every parameter an fp32 DTensor shard, holding the checkpoint's (bf16-exact) weights
        problems, n = [], 0
        for name, model in models.items():
            for pname, p in model.named_parameters():
                n += 1
                local = p.to_local() if isinstance(p, DTensor) else None
                if local is None or local.dtype != torch.float32:
                    got = "not a DTensor" if local is None else _dt(local.dtype)
                    problems.append(f"{name}.{pname}: {got}")
        embed = _full(models["actor (other ranks)"].model.embed_tokens.weight).cpu()
        loaded = torch.equal(embed.to(torch.bfloat16), saved["model.embed_tokens.weight"])
        if not loaded:
            problems.append("actor embedding != the checkpoint's")
        ctx.row(
            "2. bf16 ckpt → sharded params",
            PASS if not problems else FAIL,
            f"{n - len(problems)}/{n} fp32 DTensor (actor, ref, critic as rank 0 and as other ranks "
            f"build them); weights = checkpoint: {loaded}"
            + (f"; e.g. {', '.join(problems[:3])}" if problems else ""),
            "all fp32, loaded",
        )

        actor, critic = models["actor (other ranks)"], models["critic (other ranks)"]
        # (b) one step: bf16 compute, fp32 gradients (reduce_dtype) and AdamW moments, and an
        # update of 1e-5 to norm weights of 1.0 — kept by fp32 masters, rounded away in bf16
        opts = [build_optimizer(actor, MASTERS_LR, cfg), build_optimizer(critic, MASTERS_LR, cfg)]
        ids = torch.randint(4, len(tok), (2, 11), device=di.device)
        mask = torch.ones_like(ids)
        logits = actor(input_ids=ids, attention_mask=mask, use_cache=False).logits
        logits.float().logsumexp(-1).mean().backward()
        per_token_scores(critic, ids, mask).pow(2).mean().backward()
        grads = {_local(p.grad).dtype for m in (actor, critic) for p in m.parameters() if p.grad is not None}
        before = _local(actor.model.norm.weight).clone()
        for opt in opts:
            opt.step()
        states = [(k, v) for opt in opts for s in opt.state.values() for k, v in s.items() if k != "step"]
        bad_states = [k for k, v in states if _local(v).dtype != torch.float32]
        moved = not torch.equal(before, _local(actor.model.norm.weight))
        ok = logits.dtype == torch.bfloat16 and grads == {torch.float32} and bool(states) and not bad_states
        ok = ok and moved
        ctx.row(
            "2. one AdamW step",
            PASS if ok else FAIL,
            f"logits {_dt(logits.dtype)}, grads {'/'.join(sorted(_dt(g) for g in grads))}, "
            f"AdamW state {len(states) - len(bad_states)}/{len(states)} fp32; a {MASTERS_LR:g} step "
            f"kept: {moved}",
            "bf16 compute, fp32 grads + state, step kept",
        )
    finally:
        shutdown()


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (a plain tensor as it is)."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------------------------
# 3. The written-out decode step vs a full forward; SDPA backends; tokens/s
# --------------------------------------------------------------------------------------------
SDPA_OPS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (cpu)",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


def check_decode(ctx: Ctx) -> None:
    from trainer.models import attn_implementation

    s = DECODE_SIZES[ctx.mode.size]
    dev = torch.device(ctx.mode.device)
    ids, pmask = decode_prompts(s, dev)
    # fp32 with sdpa (flash-attn has no fp32 kernels); bf16 with what the trainers pick (``auto``)
    for dtype, impl in ((torch.float32, "sdpa"), (torch.bfloat16, attn_implementation("auto", dev))):
        model = decode_model(s, dev, dtype, impl)
        n_params = sum(p.numel() for p in model.parameters())
        got = logprob_gap(model, ids, pmask, s["R"])
        lim_max, lim_mean = DECODE_LIMITS[_dt(dtype)]
        ok = got["finite"] and got["max"] <= lim_max and got["mean"] <= lim_mean
        ctx.row(
            f"3. decode vs forward, {_dt(dtype)}",
            PASS if ok else FAIL,
            f"max abs Δ log p {got['max']:.3g}, mean {got['mean']:.3g} over {got['n']} tokens; finite: "
            f"{got['finite']} ({n_params / 1e6:.3g}M params, attn {impl})",
            f"max ≤ {lim_max:g}, mean ≤ {lim_mean:g}, no NaN",
        )
    backends = sdpa_backends(model, ids, pmask)  # the bf16 model
    ctx.row(
        "3. SDPA backend (bf16)",
        sdpa_verdict(backends, dev),
        f"attn {impl}: " + "; ".join(f"{k}: {v}" for k, v in backends.items()),
        "not math on CUDA",
    )
    speed = {d: decode_tokens_per_s(model, ids, pmask, s["R"], d) for d in ("auto", "transformers")}
    ratio = speed["auto"] / speed["transformers"]
    ctx.row(
        "3. decode tokens/s (bf16)",
        INFO if ratio >= 1 else WARN,
        f"written-out {speed['auto']:,.0f}, transformers {speed['transformers']:,.0f} ({ratio:.2f}x), "
        f"B={s['B']} R={s['R']}",
        "written-out ≥ transformers",
    )


def decode_model(s: dict, dev: torch.device, dtype: torch.dtype, impl: str):
    """A random LLaMA of the sizes ``s`` (GQA), initialised on ``dev`` in ``dtype``, with weights
    of std 2/sqrt(hidden) (sharper than the 0.02 default: log-probs that can differ)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=s["vocab"],
        hidden_size=s["hidden"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"],
        intermediate_size=s["inter"],
        max_position_embeddings=2 * (s["P"] + s["R"]),
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=2.0 / math.sqrt(s["hidden"]),
    )
    torch.manual_seed(0)
    with dev:  # initialised on the device (a 0.5B model's init on the host takes seconds)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=impl, dtype=dtype)
    return model.to(dev).eval()  # (a no-op unless the device context was not honoured)


def decode_prompts(s: dict, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``B`` left-padded prompts of P/4..P tokens (BOS first), ``[B, P]`` ids and bool mask."""
    g = torch.Generator().manual_seed(1)
    B, P, V = s["B"], s["P"], s["vocab"]
    ids = torch.zeros(B, P, dtype=torch.long)
    mask = torch.zeros(B, P, dtype=torch.bool)
    for b, n in enumerate(torch.randint(max(1, P // 4), P + 1, (B,), generator=g).tolist()):
        ids[b, P - n :] = torch.cat([torch.tensor([1]), torch.randint(3, V, (n - 1,), generator=g)])
        mask[b, P - n :] = True
    return ids.to(dev), mask.to(dev)


@torch.no_grad()
def logprob_gap(model, ids: torch.Tensor, pmask: torch.Tensor, R: int) -> dict:
    """Sample ``R`` tokens with the written-out step (its log-probs), then score the same tokens
    with one full forward (as PPO's ``policy_logprobs``): max and mean |Δ log p| over them."""
    from trainer.models import position_ids
    from trainer.rollout import generate

    torch.manual_seed(2)
    resp, rmask, logp, ent = generate(model, ids, pmask, R, None, 0, return_logprobs=True, decoder="auto")
    full = torch.cat([ids, resp], 1)
    attn = torch.cat([pmask, rmask], 1).long()
    logits = model(
        input_ids=full,
        attention_mask=attn,
        position_ids=position_ids(attn),
        use_cache=False,
        logits_to_keep=R + 1,
    ).logits[:, :-1]
    ref = torch.log_softmax(logits.float(), -1).gather(-1, resp[..., None])[..., 0]
    gap = (logp - ref).abs()[rmask]
    finite = bool(torch.isfinite(logp).all() and torch.isfinite(ent).all() and torch.isfinite(logits).all())
    return {"max": gap.max().item(), "mean": gap.mean().item(), "n": gap.numel(), "finite": finite}


@torch.no_grad()
def sdpa_backends(model, ids: torch.Tensor, pmask: torch.Tensor) -> dict[str, str]:
    """Which attention kernels ran (profiler op names) in the prefill (generate with 1 new
    token), in the decode steps (generate with 4 new tokens, minus the prefill) and in a full
    forward: ``{"prefill": "efficient x8", ...}``."""
    from trainer.rollout import generate

    def ops(fn: Callable[[], object]) -> dict[str, int]:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        return classify_attention_ops({e.key: e.count for e in prof.key_averages()})

    prefill = ops(lambda: generate(model, ids, pmask, 1, None, 0, greedy=True))
    with_decode = ops(lambda: generate(model, ids, pmask, 4, None, 0, greedy=True))
    decode = {
        k: with_decode[k] - prefill.get(k, 0) for k in with_decode if with_decode[k] > prefill.get(k, 0)
    }
    forward = ops(lambda: model(input_ids=ids, attention_mask=pmask.long(), use_cache=False))
    show = lambda c: ", ".join(f"{k} x{v}" for k, v in sorted(c.items())) or "none seen"  # noqa: E731
    return {"prefill": show(prefill), "decode step": show(decode), "full forward": show(forward)}


def classify_attention_ops(counts: dict[str, int]) -> dict[str, int]:
    """``{backend: calls}`` from profiler ``{op name: count}``: the SDPA backends by their aten op,
    the flash-attn package's ops (``flash_attention_2``) by name."""
    out: dict[str, int] = {}
    for name, n in counts.items():
        kind = SDPA_OPS.get(name)
        if kind is None and "flash_attn" in name.lower() and not name.startswith("aten::"):
            kind = "flash_attn package"
        if kind is not None:
            out[kind] = out.get(kind, 0) + n
    return out


def sdpa_verdict(backends: dict[str, str], dev: torch.device) -> str:
    """WARN when the math backend (materialised scores) ran on CUDA; INFO otherwise."""
    return WARN if dev.type == "cuda" and any("math" in v for v in backends.values()) else INFO


@torch.no_grad()
def decode_tokens_per_s(model, ids: torch.Tensor, pmask: torch.Tensor, R: int, decoder: str) -> float:
    """Sampled tokens per second of ``generate`` (prefill included; one warm-up call)."""
    from trainer.rollout import generate

    generate(model, ids, pmask, min(R, 8), None, 0, decoder=decoder)
    _sync(ids.device)
    t0 = time.perf_counter()
    resp = generate(model, ids, pmask, R, None, 0, decoder=decoder)[0]
    _sync(ids.device)
    return resp.numel() / (time.perf_counter() - t0)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# --------------------------------------------------------------------------------------------
# 4. PPO on one GPU: 2 of 3 iterations, then resume; 5. its memory per phase vs the dry run
# --------------------------------------------------------------------------------------------
# trainer/ppo.py's main in a process that also logs each phase's CUDA peak: Phases.__call__ is
# wrapped to reset the peak at the phase's start and append the peak at its end to a JSONL file,
# with the module that ran the phase (the reward model and SFT trained on the fly use Phases too).
# (So the run's own peak_memory_mb column is its train phase's peak, not the process's.)
PPO_RUNNER = """
import contextlib, json, sys, time
import torch
from trainer.infra import runtime
log_path = sys.argv[1]
plain = runtime.Phases.__call__

@contextlib.contextmanager
def measured(self, name, trainer):
    cuda = self.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
    t0 = time.perf_counter()
    with plain(self, name):
        yield
    peak = torch.cuda.max_memory_allocated(self.device) if cuda else None
    rec = {"trainer": trainer, "phase": name, "peak_bytes": peak, "seconds": time.perf_counter() - t0}
    with open(log_path, "a") as f:
        f.write(json.dumps(rec) + "\\n")

def phase(self, name):
    return measured(self, name, sys._getframe(1).f_globals.get("__name__", "?"))

runtime.Phases.__call__ = phase
from trainer.ppo import main
from trainer.infra.dist import exit_process
exit_process(main(sys.argv[2:]))
"""


def ppo_args(mode: Mode) -> list[str]:
    """The config of both the dry run and the real run (``output_dir`` included)."""
    return [
        *PPO_ENGINE,
        *PPO_QUIET,
        *PPO_SIZES[mode.size],
        f"device={mode.device}",
        f"output_dir={mode.work / 'ppo'}",
    ]


def check_dry_run(ctx: Ctx) -> None:
    """The CPU dry run of the PPO config (fake tensors, world 1): writes ``memory_plan.json`` into
    the run's ``output_dir``, which the real run then checks its memory against."""
    cmd = [sys.executable, "trainer/ppo.py", *ppo_args(ctx.mode), "dry_run=true", "dry_run_world_size=1"]
    env = {**ctx.mode.env(), "CUDA_VISIBLE_DEVICES": ""}  # the CPU only, beside the GPU checks
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=ctx.left())
    print(p.stdout[-6000:], p.stderr[-6000:], sep="\n")
    peaks = read_dry_run_peaks(ctx.mode.work / "ppo")
    ok = p.returncode == 0 and peaks is not None and set(PHASES) <= set(peaks)
    value = (
        ", ".join(f"{k} {_gib(v)}" for k, v in peaks.items())
        if peaks
        else f"exit {p.returncode}: {last_line_of(p.stderr or p.stdout)}"
    )
    ctx.row(
        "5. CPU dry run (fake tensors)",
        PASS if ok else FAIL,
        f"{value} ({time.perf_counter() - t0:.0f} s)",
        "every phase measured",
    )


def check_ppo(ctx: Ctx) -> None:
    from trainer.infra.checkpoint import Checkpointer

    out = ctx.mode.work / "ppo"

    def cmd(run: int, *extra: str) -> list[str]:  # (each run logs its phases' peaks to a file)
        phases = str(ctx.mode.work / f"ppo_phases_run{run}.jsonl")
        return [sys.executable, "-c", PPO_RUNNER, phases, *ppo_args(ctx.mode), *extra]

    iterations = f"iterations={PPO_ITERATIONS}"
    label = f"4. PPO: {PPO_STOP_AFTER} of {PPO_ITERATIONS} iterations"
    stop = f"stop_after_iterations={PPO_STOP_AFTER}"
    first = run_logged(cmd(1, iterations, stop), ctx, "ppo_run1", ctx.left() * 0.65)
    records = read_metrics(out)
    steps = [s for s, _ in Checkpointer(out / "checkpoints").complete()]
    problems = ppo_problems(records, PPO_STOP_AFTER) + ([] if PPO_STOP_AFTER in steps else ["no checkpoint"])
    ok = first.returncode == 0 and not problems
    ctx.row(
        label,
        PASS if ok else FAIL,
        f"exit {first.returncode}; iterations {[r.get('iteration') for r in records]}; checkpoints {steps}"
        + (f"; {'; '.join(problems)}" if problems else ""),
        "exit 0, iterations 1..2, checkpoint 2",
    )
    if first.returncode != 0:
        return
    second = run_logged(cmd(2, iterations), ctx, "ppo_run2", ctx.left())
    records = read_metrics(out)
    text = second.stdout + second.stderr
    resumed = f"resumed from iteration {PPO_STOP_AFTER}" in text
    problems = ppo_problems(records, PPO_ITERATIONS) + (
        [] if resumed else ["no 'resumed from iteration' line"]
    )
    final = (out / "final" / "actor" / "config.json").exists()
    ok = second.returncode == 0 and not problems and final
    ctx.row(
        "4. PPO: rerun resumes to 3",
        PASS if ok else FAIL,
        f"exit {second.returncode}; resumed: {resumed}; iterations {[r.get('iteration') for r in records]}; "
        f"final actor: {final}" + (f"; {'; '.join(problems)}" if problems else ""),
        "resumed at 2, iterations 1..3 once, all finite",
    )
    if records:
        last, first_kl = records[-1], records[0].get("kl", float("nan"))
        speed = ", ".join(
            f"{k} {last.get(f'tokens_per_s_{k}', 0):,.0f}" for k in ("generate", "score", "train")
        )
        times = ", ".join(
            f"{k} {last.get(f'time_{k}_s', 0):.2f}" for k in ("generate", "score", "rewards", "train")
        )
        ctx.row(
            "4. PPO: last iteration",
            INFO,
            f"tokens/s {speed}; seconds {times}; iteration {last.get('iteration_s', 0):.2f} s; "
            f"KL at iteration 1 {first_kl:.2g} (decode vs forward rounding)",
            "",
        )


def run_logged(cmd: list[str], ctx: Ctx, name: str, timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` (its output also to ``<work>/<name>.log``); a timeout is exit 124."""
    log = ctx.mode.work / f"{name}.log"
    print(f"$ python -c <PPO_RUNNER> {' '.join(cmd[3:])}", flush=True)
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=ctx.mode.env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        p = subprocess.CompletedProcess(cmd, 124, out, f"timed out after {timeout:.0f} s")
    log.write_text(p.stdout + "\n" + p.stderr)
    print(p.stdout[-4000:], p.stderr[-4000:], sep="\n", flush=True)
    return p


def read_metrics(out_dir: Path) -> list[dict]:
    path = out_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ppo_problems(records: list[dict], n: int) -> list[str]:
    """What is wrong with ``metrics.jsonl`` records that should be iterations 1..n once each, every
    value finite (empty: nothing)."""
    problems = []
    its = [r.get("iteration") for r in records]
    if its != list(range(1, n + 1)):
        problems.append(f"iterations {its} != 1..{n}")
    bad = sorted({k for r in records for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)})
    if bad:
        problems.append(f"non-finite {', '.join(bad)}")
    return problems


def read_dry_run_peaks(out_dir: Path) -> dict[str, float] | None:
    """The dry run's per-phase peaks (bytes) from ``<output_dir>/memory_plan.json``."""
    path = out_dir / "memory_plan.json"
    if not path.exists():
        return None
    return {str(k): float(v) for k, v in json.loads(path.read_text())["peaks"].items()}


def read_phase_peaks(path: Path, trainer: str = "trainer.ppo") -> dict[str, float | None] | None:
    """A real run's highest peak per phase of ``trainer``'s loop (bytes; None on the CPU) from the
    runner's JSONL."""
    if not path.exists():
        return None
    seen: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("trainer") != trainer:
            continue
        seen.setdefault(rec["phase"], [])
        if rec["peak_bytes"] is not None:
            seen[rec["phase"]].append(float(rec["peak_bytes"]))
    return {phase: max(values) if values else None for phase, values in seen.items()}


def read_plan_note(log: Path) -> str | None:
    """The real run's ``memory plan: ...`` line (which figure its memory check used)."""
    if not log.exists():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if "[ppo] memory plan:" in line:
            return line.split("memory plan:", 1)[1].strip()
    return None


def memory_rows(
    dry: dict[str, float] | None, runs: list[dict | None], plan_note: str | None, on_cuda: bool
) -> list[Row]:
    """Check 5's rows: per phase the real runs' peaks (``runs``: each run's :func:`read_phase_peaks`)
    beside the dry run's, and the ratio of the last run's to it. The last run is the resumed
    process, PPO alone, like a job given its SFT model and reward model; the first also trained
    those on the fly, in the same process. CUDA: FAIL when the last run's ratio is above
    :data:`MEMORY_RATIO_LIMIT`, WARN when only the first run's is; CPU: INFO (no per-phase peak
    there). And whether the real run checked its memory against the dry run's measured plan."""
    limit = f"real ≤ {MEMORY_RATIO_LIMIT:.2f} x dry run"
    runs = [r for r in runs if r is not None]
    if not dry or not runs:
        missing = "dry-run plan" if not dry else "real run's phase peaks"
        return [["5. memory per phase", FAIL, f"no {missing} (see checks 4-5 above)", limit]]
    rows = []
    for phase in dry:
        label, d = f"5. memory: {phase}", dry[phase]
        seen = [r[phase] for r in runs if phase in r]
        peaks = [v for v in seen if v is not None]
        if not seen:
            rows.append([label, FAIL, f"dry run {_gib(d)}, real runs {len(seen)}: phase missing", limit])
        elif not on_cuda or not peaks:
            rows.append([label, INFO, f"dry run {_gib(d)}; real: no per-phase peak on the CPU", limit])
        else:  # judged on the last run, PPO alone in its process, like a job given its models
            last, ratio = peaks[-1], peaks[-1] / d
            by_run = " / ".join(_gib(v) for v in seen)
            value = f"real {_gib(last)} (runs {by_run}), dry run {_gib(d)}, ratio {ratio:.2f}"
            verdict = PASS if max(peaks) / d <= MEMORY_RATIO_LIMIT else WARN  # WARN: only the first run
            rows.append([label, verdict if ratio <= MEMORY_RATIO_LIMIT else FAIL, value, limit])
    for phase in sorted({ph for r in runs for ph in r} - set(dry)):  # a phase the dry run never ran
        peaks = [r[phase] for r in runs if r.get(phase) is not None]
        real = _gib(max(peaks)) if peaks else "- (no per-phase peak on the CPU)"
        rows.append([f"5. memory: {phase}", INFO, f"real {real}; not a phase of the dry run", limit])
    used = plan_note is not None and plan_note.startswith("measured by the dry run")
    note = plan_note or "no 'memory plan' line"
    rows.append(["5. real run used the plan", PASS if used else FAIL, note, "measured by the dry run"])
    return rows


def _gib(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


# --------------------------------------------------------------------------------------------
CHECKS: dict[str, Callable[[Ctx], None]] = {
    "parity": check_parity,
    "masters": check_masters,
    "decode": check_decode,
    "dry_run": check_dry_run,
    "ppo": check_ppo,
}
CHECK_LABEL = {
    "parity": "1. kernel parity",
    "masters": "2. bf16 ckpt → fp32 masters",
    "decode": "3. decode vs forward",
    "dry_run": "5. CPU dry run (fake tensors)",
    "ppo": "4. PPO 1 GPU + resume",
}

if __name__ == "__main__":
    sys.exit(main())
