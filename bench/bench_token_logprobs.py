"""Benchmark ``fgkernels.token_logprobs`` against eager PyTorch.

    python bench/bench_token_logprobs.py            # B=4, T=512, V=32000, fp32 and bf16 logits
    python bench/bench_token_logprobs.py --quick    # tiny shapes, smoke run (< 20 s)
    python bench/bench_token_logprobs.py --record   # ... and append the table to bench/RESULTS.md

Rows: each fused backend usable on this device (``cpu`` = the C++ kernel on CPU tensors,
``triton`` on CUDA tensors), the eager reference ``token_logprobs_reference`` (ignore-index
handling + clamp), and the plain eager baseline ``log_softmax(logits.float() / τ).gather``;
for the forward alone (``fwd``: log π of old/reference policies) and forward + backward with a
random upstream gradient (``fwd+bwd``, with and without the entropy output).

Bytes counted (the minimum the op must move): fwd reads the logits once and writes fp32 [B, T]
outputs; fwd+bwd reads the logits twice (the backward runs later, so it must read them again)
and writes grad_logits once. "peak extra" is the peak allocation above what was live before the
call; "excl. grad" subtracts the unavoidable grad_logits output (B·T·V in the logits dtype).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402

from bench.common import copy_bandwidth_gbs, fmt_bytes, pct_of_peak, peak_memory_bytes, record, time_fn  # noqa: E402
from fgkernels import _dispatch  # noqa: E402
from fgkernels.token_logprobs import token_logprobs, token_logprobs_reference  # noqa: E402

TEMPERATURE = 0.7


def _eager_baseline(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """The textbook eager formulation (no ignore_index handling, no clamp)."""
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, labels[..., None]).squeeze(-1)


def _impls(device: torch.device) -> dict:
    impls = {}
    if device.type == "cpu" and _dispatch.native_available("token_logprobs"):
        impls["cpu"] = lambda x, y, ent: token_logprobs(x, y, TEMPERATURE, ent, backend="cpu")
    if device.type == "cuda" and _dispatch.TRITON_AVAILABLE:
        impls["triton"] = lambda x, y, ent: token_logprobs(x, y, TEMPERATURE, ent, backend="triton")
    impls["reference"] = lambda x, y, ent: token_logprobs_reference(x, y, TEMPERATURE, ent)
    impls["eager log_softmax+gather"] = lambda x, y, ent: None if ent else _eager_baseline(x, y, TEMPERATURE)
    return impls


def _workload(impl, logits, labels, mode: str):
    """A zero-argument callable running ``mode`` once (None if ``impl`` lacks that mode)."""
    ent = mode.endswith("+entropy")
    if impl(logits[:1, :1], labels[:1, :1], ent) is None:
        return None
    if mode == "fwd":
        return lambda: impl(logits, labels, False)
    x = logits.detach().requires_grad_()
    ups = [torch.randn(labels.shape, device=logits.device) for _ in range(2 if ent else 1)]

    def run():
        out = impl(x, labels, ent)
        outs = out if ent else (out,)
        return torch.autograd.grad(outs, (x,), ups)[0]

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, smoke run")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    B, T, V = (2, 64, 1000) if args.quick else (4, 512, 32000)
    reps, max_s = (5, 2.0) if args.quick else (10, 15.0)
    bw = copy_bandwidth_gbs(device, nbytes=(16 if args.quick else 512) * 2**20)
    print(f"device {device}, copy bandwidth {bw:.1f} GB/s, B={B} T={T} V={V} tau={TEMPERATURE}")

    header = [
        "dtype",
        "mode",
        "impl",
        "median ms (p10-p90)",
        "vs reference",
        "GB/s",
        "% copy BW",
        "% peak BW",
        "peak extra",
        "peak extra excl. grad",
    ]
    rows = []
    medians: dict[tuple[str, str, str], float] = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        logits = (torch.randn(B, T, V, device=device) * 3).to(dtype)
        labels = torch.randint(0, V, (B, T), device=device)
        elt = logits.element_size()
        for mode in ("fwd", "fwd+bwd", "fwd+bwd+entropy"):
            n_out = 2 if mode.endswith("entropy") else 1
            nbytes = B * T * V * elt + B * T * (8 + 4 * n_out)
            grad_bytes = 0 if mode == "fwd" else B * T * V * elt
            nbytes += 2 * grad_bytes  # fwd+bwd: the second read of the logits + the grad write
            for name, impl in _impls(device).items():
                fn = _workload(impl, logits, labels, mode)
                if fn is None:
                    continue
                t = time_fn(fn, device, warmup=1 if not args.quick else 2, reps=reps, max_seconds=max_s)
                peak = peak_memory_bytes(fn, device)
                ms = t.median_s * 1e3
                key = (str(dtype).removeprefix("torch."), mode)
                medians[key + (name,)] = t.median_s
                gbs = nbytes / t.median_s / 1e9
                rows.append(
                    [
                        str(dtype).removeprefix("torch."),
                        mode,
                        name,
                        f"{ms:.4g} ({t.p10_s * 1e3:.4g}-{t.p90_s * 1e3:.4g})",
                        "",  # vs reference: filled in below (the reference may be timed later)
                        f"{gbs:.1f}",
                        f"{100 * gbs / bw:.0f}%",
                        pct_of_peak(gbs, device),
                        fmt_bytes(peak),
                        fmt_bytes(max(peak - grad_bytes, 0)),
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
        del logits, labels
    for row in rows:
        row[4] = f"{medians[(row[0], row[1], 'reference')] / medians[(row[0], row[1], row[2])]:.2f}x"
    title = f"token_logprobs, B={B} T={T} V={V}, tau={TEMPERATURE} ({device.type})"
    notes = (
        f"copy bandwidth {bw:.1f} GB/s; vs reference = reference median / this median (higher is "
        "faster); bytes: logits read once (fwd) or twice + grad written (fwd+bwd)"
    )
    if args.record:
        print(record(title, header, rows, notes))
    else:
        print(f"\n{title}\n" + "\n".join(" | ".join(r) for r in [header, *rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
