"""Does token-level PPO get a free length incentive? Raw per-token rewards vs mean-scaled ones.

Runs the tiny default PPO (2 processes, the synthetic world, a token-level RM trained once and
shared) with ``token_reward_scale=raw`` (the paper's [R_1 … R_n]) and ``mean`` (r_t / T, summing to
the RM's R(τ)), with and without a missing-EOS penalty, over a few seeds; reports the start → end
of response length, the fraction cut at ``max_new_tokens``, the gold reward per token (the
synthetic world's known utility, which has no length preference) and the critic's explained
variance::

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
    "raw + eos penalty -1": ["token_reward_scale=raw", "missing_eos_penalty=-1"],
    "mean + eos penalty -1": ["token_reward_scale=mean", "missing_eos_penalty=-1"],
    # a per-token baseline: running mean/std normalisation of the RM's token rewards (global), so
    # an ordinary token earns ~0 and only better-than-usual tokens pay
    "raw + reward_norm": ["token_reward_scale=raw", "reward_norm=true"],
    "raw + reward_norm + eos penalty -1": [
        "token_reward_scale=raw",
        "reward_norm=true",
        "missing_eos_penalty=-1",
    ],
}
# Two starting policies: the tiny default's random-init LLaMA (it almost never emits EOS: ~90% of
# its 16-token responses are cut, so the length axis is saturated from the start), and the same
# LLaMA after a short supervised warm start on the world's responses (it ends them, so a length
# incentive, if any, can show). The warm start is a plain next-token loss written here for the
# measurement only; the project's SFT trainer is separate work.
REGIMES = {
    "random init, max_new_tokens=16": [],
    "warm-started, max_new_tokens=40": ["max_new_tokens=40"],
}


def warm_start(out: Path, steps: int = 400) -> Path:
    """A tiny LLaMA (the PPO default's shape) trained with next-token loss on (prompt, response)
    pairs of the synthetic world (chosen and original responses, EOS included); saved as a
    ``transformers`` directory with the world's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.data.examples import build_example, collate
    from trainer.data.synthetic import SyntheticConfig, build_tokenizer, generate
    from trainer.models import save_pretrained, tiny_llama_config
    from trainer.ppo import PPOConfig

    if (out / "config.json").exists():
        return out
    cfg, syn = PPOConfig(), SyntheticConfig(n_pairs=800)
    tok = build_tokenizer(syn)
    torch.manual_seed(0)
    config = tiny_llama_config(cfg, tok)
    model = AutoModelForCausalLM.from_config(config)
    recs = generate(syn)
    examples = [
        build_example(tok, r["prompt"], r[k], max_length=64) for r in recs for k in ("chosen", "original")
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(examples), (32,), generator=g).tolist()
        b = collate([examples[i] for i in idx], tok.pad_token_id)
        labels = torch.where(b["response_mask"], b["input_ids"], -100)
        loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"].long(), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    save_pretrained(model.state_dict(), config, "causal_lm", out, tok)
    return out


def row(name: str, per_seed: list[dict], n: int) -> list[str]:
    """One table row: the seed means of each metric's first → last iterations."""
    cells = [name, str(n)]
    for key in KEYS:
        a = statistics.fmean(s[key][0] for s in per_seed)
        b = statistics.fmean(s[key][1] for s in per_seed)
        cells.append(f"{a:.2f} → {b:.2f}")
    return cells


KEYS = ("response_length", "truncated_fraction", "gold_reward_per_token", "reward", "explained_variance")


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


def summary(out: Path, k: int = 5) -> dict[str, tuple[float, float]]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        key: (statistics.fmean(r[key] for r in recs[:k]), statistics.fmean(r[key] for r in recs[-k:]))
        for key in KEYS
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--out", default="runs/bench_token_reward_scale")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    root = ROOT / args.out
    base = ["progress=false", f"iterations={args.iterations}", "checkpoint_every=0", "save_final=false"]
    rm_run = root / "rm_source"
    if not (rm_run / "rm" / "final").exists():  # the token RM, trained once on the synthetic set
        torchrun([*base, "iterations=1", f"output_dir={rm_run}"])
    rm = rm_run / "rm" / "final"
    sft = warm_start(root / "warm_start")
    rows = []
    for regime, regime_args in REGIMES.items():
        for name, extra in SETTINGS.items():
            if regime.startswith("random") and "norm" in name:
                continue  # the length axis is saturated there: measured in the warm-started regime
            per_seed = []
            for seed in args.seeds:
                out = root / f"{'warm' if regime_args else 'rand'}_{name.replace(' ', '_')}_s{seed}"
                init = [f"init_from={sft}"] if regime_args else []
                path = out / "metrics.jsonl"
                if not path.exists() or len(path.read_text().splitlines()) != args.iterations:
                    run = [*base, *regime_args, *init, *extra, f"seed={seed}", f"reward_model={rm}"]
                    torchrun([*run, f"output_dir={out}", "resume=false"])
                per_seed.append(summary(out))
            rows.append(row(f"{regime}: {name}", per_seed, len(args.seeds)))
            print(" | ".join(rows[-1]), flush=True)
    header = ["setting", "seeds", *(f"{k} (first 5 → last 5 it.)" for k in KEYS)]
    if args.record:
        record(
            "Token-level PPO: raw vs mean-scaled per-token rewards (length incentive)",
            header,
            rows,
            notes=f"tiny default PPO, 2 processes, {args.iterations} iterations, one token RM trained on "
            "the synthetic set and shared; gold = the world's per-token utility (no length preference); "
            "means over seeds of the first-5 and last-5 iteration means; warm start: 400 steps of "
            "next-token loss on the world's responses (bench-only)",
        )


if __name__ == "__main__":
    main()
