"""Does token-level PPO get a free length incentive? The three ``token_reward_scale`` values.

Runs the tiny default PPO (2 processes, the synthetic world, a token-level RM trained once and
shared) from ``trainer/sft.py``'s SFT model with ``token_reward_scale=raw`` (the paper's
[R_1 … R_n]), ``mean`` (r_t / T, summing to the RM's R(τ)) and ``running_mean`` (the causal
increments of the running mean of the content scores, also summing to R(τ)), with a missing-EOS
penalty and a per-token baseline, and the same scales on the world's gold per-token utility as a
control; over a few seeds it reports the start → end of response length, the fraction cut at
``max_new_tokens``, the gold reward per token (the synthetic world's known utility, which has no
length preference), the KL to the reference and the critic's explained variance::

    python bench/token_reward_scale.py [--seeds 0 1] [--iterations 60] [--record]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import record  # noqa: E402

SETTINGS = {
    "raw": ["token_reward_scale=raw"],
    "mean": ["token_reward_scale=mean"],
    "running_mean": ["token_reward_scale=running_mean"],
    "running_mean + eos penalty -1": ["token_reward_scale=running_mean", "missing_eos_penalty=-1"],
    # the critic: initialised from the token RM (the old `auto`), from it after a
    # 5-iteration critic-only warm-up, or from the actor's backbone with a fresh head (the default)
    "running_mean, critic from the RM": ["token_reward_scale=running_mean", "critic_from=RM"],
    "running_mean, critic from the RM + critic_warmup=5": [
        "token_reward_scale=running_mean",
        "critic_from=RM",
        "critic_warmup=5",
    ],
    # a per-token baseline: running mean/std normalisation of the RM's token rewards (global), so
    # an ordinary token earns ~0 and only better-than-usual tokens pay
    "raw + reward_norm": ["token_reward_scale=raw", "reward_norm=true"],
    # the control: the world's own per-token utility instead of the learned RM. Its sequence
    # reward is a mean, with no length preference: a drift here comes from the decomposition
    "gold reward: raw": ["reward_source=gold", "token_reward_scale=raw"],
    "gold reward: mean": ["reward_source=gold", "token_reward_scale=mean"],
    "gold reward: running_mean": ["reward_source=gold", "token_reward_scale=running_mean"],
}
# The starting policy: the tiny LLaMA after trainer/sft.py on the world's preferred responses
# (sft_response=chosen: it ends its responses, ~14 tokens, so a length incentive can show), with
# room to grow (max_new_tokens=40, twice the world's longest response).
REGIME = [
    "max_new_tokens=40",
    "missing_eos_penalty=0",
    "eval_every=0",
]  # (as recorded; the penalty is a setting)


def sft_start(out: Path) -> Path:
    """The SFT policy every setting starts from: ``trainer/sft.py`` (2 processes) on the synthetic
    world's chosen responses; ``out/final``."""
    if not (out / "final" / "config.json").exists():
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        args = ["trainer/sft.py", "sft_response=chosen", "progress=false", f"output_dir={out}"]
        p = subprocess.run(cmd + args, cwd=ROOT, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"SFT failed:\n{p.stderr[-3000:]}")
    return out / "final"


def row(name: str, per_seed: list[dict], n: int) -> list[str]:
    """One table row: the seed means of each metric's first → last iterations."""
    cells = [name, str(n)]
    for key in KEYS:
        a = statistics.fmean(s[key][0] for s in per_seed)
        b = statistics.fmean(s[key][1] for s in per_seed)
        cells.append(f"{a:.2f} → {b:.2f}")
    cells += [f"{statistics.fmean(s[key] for s in per_seed):.2f}" for key in EXTRA]
    return cells


KEYS = ("response_length", "truncated_fraction", "gold_reward_per_token", "kl", "explained_variance")
# single numbers: the longest mean response of any iteration (a transient drift that the last 5
# would hide) and the critic's explained variance over the first 10 iterations
EXTRA = ("peak response_length", "explained_variance (it. 1-10)")


def torchrun(args: list[str]) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "trainer/ppo.py",
    ]
    p = subprocess.run(cmd + args, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{p.stderr[-3000:]}")


def summary(out: Path, k: int = 5) -> dict:
    """First-``k`` and last-``k`` iteration means of every key, and the :data:`EXTRA` numbers."""
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    out = {
        key: (statistics.fmean(r[key] for r in recs[:k]), statistics.fmean(r[key] for r in recs[-k:]))
        for key in KEYS
    }
    out[EXTRA[0]] = max(r["response_length"] for r in recs)
    out[EXTRA[1]] = statistics.fmean(r["explained_variance"] for r in recs[:10])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--out", default="runs/bench_token_reward_scale")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    root = ROOT / args.out
    base = [
        *("progress=false", "plots=false", "report=false", "checkpoint_every=0", "save_final=false"),
        f"iterations={args.iterations}",
    ]
    rm_run = root / "rm_source"
    if not (rm_run / "rm" / "final").exists():  # the token RM, trained once on the synthetic set
        torchrun([*base, "iterations=1", f"output_dir={rm_run}"])
    rm = rm_run / "rm" / "final"
    sft = sft_start(root / "sft")
    rows = []
    for name, extra in SETTINGS.items():
        per_seed = []
        for seed in args.seeds:
            out = root / f"{name.replace(' ', '_').replace(':', '')}_s{seed}"
            path = out / "metrics.jsonl"
            if not path.exists() or len(path.read_text().splitlines()) != args.iterations:
                rm_arg = [] if "reward_source=gold" in extra else [f"reward_model={rm}"]
                extra = [f"critic_from={rm}" if e == "critic_from=RM" else e for e in extra]
                run = [*base, *REGIME, f"init_from={sft}", *extra, f"seed={seed}", *rm_arg]
                torchrun([*run, f"output_dir={out}", "resume=false"])
            per_seed.append(summary(out))
        rows.append(row(name, per_seed, len(args.seeds)))
        print(" | ".join(rows[-1]), flush=True)
    header = ["setting", "seeds", *(f"{k} (first 5 → last 5 it.)" for k in KEYS), *EXTRA]
    if args.record:
        record(
            "Token-level PPO from the SFT model: raw, mean and running_mean token rewards (length incentive)",
            header,
            rows,
            notes=f"tiny default PPO, 2 processes, {args.iterations} iterations, one token RM trained on "
            "the synthetic set and shared; gold = the world's per-token utility (no length preference); "
            "means over seeds of the first-5 and last-5 iteration means; every setting starts from "
            "trainer/sft.py's tiny SFT model (sft_response=chosen), max_new_tokens=40",
        )


if __name__ == "__main__":
    main()
