"""Benchmark fgkernels.token_bt_loss (forward + backward) against its eager reference.

    python bench/bench_token_bt_loss.py            # target: B=32, Tc=Tr=1024 fp32 (+ larger shapes)
    python bench/bench_token_bt_loss.py --quick    # tiny shapes, a smoke run
    python bench/bench_token_bt_loss.py --record   # ... and append the table to bench/RESULTS.md

Each timed call is one forward (reduction="mean") plus one backward to both reward tensors.
Target: ≤ 0.5× the eager reference's time at B=32, T=1024, fp32, ~30% changed.
Bytes counted (the minimum for a separate forward and backward pass): forward reads both
reward tensors and their masks (and the changed masks for variant "changed"); backward reads
the masks again and writes both gradients; the [B] vectors are negligible.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from bench.common import copy_bandwidth_gbs, fmt_bytes, pct_of_peak, peak_memory_bytes, record, time_fn  # noqa: E402
from fgkernels import _dispatch  # noqa: E402
from fgkernels.token_bt_loss import token_bt_loss  # noqa: E402

OP = "token_bt_loss"


def backends_here(device: torch.device) -> list[str]:
    out = []
    if device.type == "cuda" and _dispatch.TRITON_AVAILABLE:
        out.append("triton")
    if device.type == "cpu" and _dispatch.native_available(OP):
        out.append("cpu")
    return out + ["reference"]


def min_bytes(B: int, Tc: int, Tr: int, dtype: torch.dtype, variant: str) -> int:
    es = torch.empty((), dtype=dtype).element_size()
    mask_bytes = 2 if variant == "changed" else 1  # bool mask (+ changed) per token
    n = B * (Tc + Tr)
    return n * (es + mask_bytes) + n * (mask_bytes + es)


def make_step(B, Tc, Tr, dtype, device, backend, variant):
    gen = torch.Generator().manual_seed(0)

    def side(T):
        r = torch.randn(B, T, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
        lengths = torch.randint(T // 2, T + 1, (B,), generator=gen)
        mask = (torch.arange(T)[None, :] < lengths[:, None]).to(device)
        changed = (torch.rand(B, T, generator=gen) < 0.3).to(device)
        return r, mask, changed

    r_c, m_c, ch_c = side(Tc)
    r_r, m_r, ch_r = side(Tr)
    g = torch.randn((), generator=gen).to(device)

    def step():
        out = token_bt_loss(r_c, r_r, m_c, m_r, ch_c, ch_r, variant=variant, backend=backend)
        return torch.autograd.grad(out.loss, [r_c, r_r], g)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (smoke run)")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        cases = [(4, 128, 96, torch.float32)]
    else:
        cases = [
            (32, 1024, 1024, torch.float32),
            (32, 1024, 1024, torch.bfloat16),
            (256, 2048, 1536, torch.float32),
        ]
    reps = 5 if args.quick else 100
    copy_bw = copy_bandwidth_gbs(device, nbytes=(16 if args.quick else 512) * 2**20)

    header = [
        "B×Tc×Tr",
        "dtype",
        "variant",
        "backend",
        "median ms (p10–p90)",
        "vs reference",
        "GB/s",
        "% copy BW",
        "% peak BW",
        "peak extra",
    ]
    rows = []
    for B, Tc, Tr, dtype in cases:
        for variant in ("exact", "changed"):
            results = {}
            for backend in backends_here(device):
                step = make_step(B, Tc, Tr, dtype, device, backend, variant)
                t = time_fn(step, device, warmup=5, reps=reps, max_seconds=2 if args.quick else 15)
                results[backend] = (t, peak_memory_bytes(step, device))
            ref_s = results["reference"][0].median_s
            for backend, (t, peak) in results.items():
                gbs = min_bytes(B, Tc, Tr, dtype, variant) / t.median_s / 1e9
                rows.append(
                    [
                        f"{B}×{Tc}×{Tr}",
                        str(dtype).removeprefix("torch."),
                        variant,
                        backend,
                        f"{t.median_s * 1e3:.3f} ({t.p10_s * 1e3:.3f}–{t.p90_s * 1e3:.3f})",
                        f"{t.median_s / ref_s:.2f}×",
                        f"{gbs:.1f}",
                        f"{100 * gbs / copy_bw:.0f}%",
                        pct_of_peak(gbs, device),
                        fmt_bytes(peak),
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
    notes = (
        f"forward (reduction='mean') + backward to both sides, ~30% changed, ragged lengths; "
        f"target ≤ 0.5× reference at 32×1024×1024 fp32; copy bandwidth {copy_bw:.1f} GB/s; "
        f"bytes = rewards + masks read (fwd), masks read + grads written (bwd)"
    )
    if args.record:
        record(f"token_bt_loss fwd+bwd ({device.type})", header, rows, notes)
        print("appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
