"""End-to-end PPO iteration benchmark: per-phase time and tokens/s of ``trainer/ppo.py``.

    python bench/bench_ppo.py [--quick] [--record] [--nproc 2] [--iterations 12]

Runs the tiny CPU config under ``torchrun`` (gloo; one thread per process) with a learned
token-level reward model (trained once, then shared by every run), in four settings:
reward mode ``token`` vs ``sequence``, and the fused kernels (auto dispatch: the C++ CPU kernels
here, Triton on CUDA) vs ``FGKERNELS_BACKEND=reference`` (eager PyTorch for token_logprobs and
gae). The first ``--warmup`` iterations are dropped; each cell is the median (p10-p90) over
the rest, from the run's own ``metrics.jsonl`` (``time_{generate,score,train}_s``,
``tokens_per_s_*``, ``peak_memory_mb``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import record  # noqa: E402

PHASES = ("generate", "score", "train")


def run(out: Path, args: list[str], nproc: int, env_extra: dict) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    p = subprocess.run(
        cmd + ["trainer/ppo.py", *args, f"output_dir={out}", "progress=false", "save_final=false",
               # (the random-init default, as recorded)
               "sft_epochs=0", "eval_every=0", "missing_eos_penalty=0", "max_new_tokens=16"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if p.returncode != 0:
        raise SystemExit(f"trainer/ppo.py failed:\n{p.stderr[-4000:]}")
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def q(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * (len(xs) - 1) + 0.5))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 iterations per setting")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    n = 4 if a.quick else a.iterations
    tmp = Path(tempfile.mkdtemp(prefix="bench_ppo_"))
    base = [f"iterations={n}", "checkpoint_every=0"]
    # the shared reward model: trained once by a 1-iteration run
    run(tmp / "rm_run", ["iterations=1", "checkpoint_every=0"], a.nproc, {})
    rm = tmp / "rm_run" / "rm" / "final"
    rows, header = [], ["mode", "kernels"]
    for ph in PHASES:
        header += [f"{ph} s (p10-p90)", f"{ph} tok/s"]
    header += ["iteration s", "peak RSS MiB/rank", "reward (last)"]
    for mode in ("token", "sequence"):
        for kernels, env in (("fused", {}), ("reference", {"FGKERNELS_BACKEND": "reference"})):
            recs = run(
                tmp / f"{mode}_{kernels}",
                # the same token RM for both levels (a timing comparison): its mean as R at the
                # sequence level, an explicit variant
                [*base, f"reward_level={mode}", f"reward_model={rm}", "sequence_reward_from_token_rm=true"],
                a.nproc,
                env,
            )
            body = recs[a.warmup :] or recs
            row = [mode, kernels]
            for ph in PHASES:
                t = [r[f"time_{ph}_s"] for r in body]
                tps = [r[f"tokens_per_s_{ph}"] for r in body]
                row += [
                    f"{statistics.median(t):.3f} ({q(t, 0.1):.3f}-{q(t, 0.9):.3f})",
                    f"{statistics.median(tps):.0f}",
                ]
            it = [sum(r[f"time_{ph}_s"] for ph in PHASES) for r in body]
            row += [
                f"{statistics.median(it):.3f}",
                f"{max(r['peak_memory_mb'] for r in body):.0f}",
                f"{recs[-1]['reward']:.3f}",
            ]
            rows.append(row)
            print(" | ".join(row), flush=True)
    notes = (
        f"tiny CPU config (LLaMA h=64, 2 layers, vocab ~150; 32 prompts/rank, <=16 new tokens, 2 epochs x "
        f"2 minibatches), {a.nproc} processes (gloo, 1 thread each), {len(body)} iterations after {a.warmup} "
        "warm-up; tokens/s: generate = response tokens, score/train = prompt+response tokens (x epochs), "
        "all ranks; reference = FGKERNELS_BACKEND=reference (eager token_logprobs and gae)"
    )
    text = "\n".join([" | ".join(header)] + [" | ".join(r) for r in rows])
    if a.record:
        text = record("PPO iteration (trainer/ppo.py), per phase", header, rows, notes)
    print(text)


if __name__ == "__main__":
    main()
