"""Benchmark fgkernels.masked_token_sums (forward + backward) against its eager reference.

    python bench/bench_masked_token_sums.py            # target shapes: B×T = 32×1024, 256×4096
    python bench/bench_masked_token_sums.py --quick    # tiny shapes, a smoke run
    python bench/bench_masked_token_sums.py --record   # ... and append the table to bench/RESULTS.md

Each timed call is one forward (six per-row sums/counts) plus one backward with random
upstream gradients on the three sums. Bytes counted (the minimum any implementation moves):
forward reads rewards + mask + changed and writes 6 fp32 [B]; backward reads mask + changed
+ 3 fp32 [B] and writes the [B, T] gradient.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from bench.common import copy_bandwidth_gbs, fmt_bytes, pct_of_peak, peak_memory_bytes, record, time_fn  # noqa: E402
from fgkernels import _dispatch  # noqa: E402
from fgkernels.masked_token_sums import masked_token_sums  # noqa: E402

OP = "masked_token_sums"


def backends_here(device: torch.device) -> list[str]:
    out = []
    if device.type == "cuda" and _dispatch.TRITON_AVAILABLE:
        out.append("triton")
    if device.type == "cpu" and _dispatch.native_available(OP):
        out.append("cpu")
    return out + ["reference"]


def min_bytes(B: int, T: int, dtype: torch.dtype) -> int:
    es = torch.empty((), dtype=dtype).element_size()
    fwd = B * T * (es + 2) + 6 * B * 4
    bwd = B * T * (2 + es) + 3 * B * 4
    return fwd + bwd


def make_step(B: int, T: int, dtype: torch.dtype, device: torch.device, backend: str):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(B, T, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(device)
    changed = (torch.rand(B, T, generator=gen) < 0.3).to(device)
    grads = [torch.randn(B, generator=gen).to(device) for _ in range(3)]

    def step():
        out = masked_token_sums(rewards, mask, changed, backend=backend)
        return torch.autograd.grad([out.sum, out.sum_changed, out.sum_unchanged], [rewards], grads)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (smoke run)")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = [(4, 128), (8, 512)] if args.quick else [(32, 1024), (256, 4096)]
    dtypes = [torch.float32] if args.quick else [torch.float32, torch.bfloat16]
    reps = 5 if args.quick else 50
    copy_bw = copy_bandwidth_gbs(device, nbytes=(16 if args.quick else 512) * 2**20)

    header = [
        "B×T",
        "dtype",
        "backend",
        "median ms (p10–p90)",
        "vs reference",
        "GB/s",
        "% copy BW",
        "% peak BW",
        "peak extra",
    ]
    rows = []
    for B, T in shapes:
        for dtype in dtypes:
            results = {}
            for backend in backends_here(device):
                step = make_step(B, T, dtype, device, backend)
                t = time_fn(step, device, warmup=3, reps=reps, max_seconds=2 if args.quick else 15)
                results[backend] = (t, peak_memory_bytes(step, device))
            ref_s = results["reference"][0].median_s
            for backend, (t, peak) in results.items():
                gbs = min_bytes(B, T, dtype) / t.median_s / 1e9
                rows.append(
                    [
                        f"{B}×{T}",
                        str(dtype).removeprefix("torch."),
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
        f"forward + backward (grads on sum, sum_changed, sum_unchanged), ~30% changed, ragged lengths; "
        f"'vs reference' = time / eager reference time; copy bandwidth {copy_bw:.1f} GB/s; "
        f"bytes = rewards + 2 masks read (fwd), 2 masks read + grad written (bwd)"
    )
    if args.record:
        record(f"masked_token_sums fwd+bwd ({device.type})", header, rows, notes)
        print("appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
