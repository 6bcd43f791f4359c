"""Benchmark harness shared by ``bench/bench_*.py``: timing, copy bandwidth, peak memory,
machine description and appending results to ``bench/RESULTS.md``.

Every result line carries the median (with p10/p90 spread), the ratio to the baseline,
achieved GB/s against the measured bandwidth of a large ``copy_`` on the same device, and
peak memory. Performance claims live here, never in timed tests.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    median_s: float
    p10_s: float
    p90_s: float
    reps: int


def time_fn(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 3,
    reps: int = 20,
    max_seconds: float = 20.0,
) -> Timing:
    """Median wall time of ``fn()`` over ``reps`` runs (fewer if ``max_seconds`` runs out)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    budget_end = time.perf_counter() + max_seconds
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() > budget_end and len(times) >= 3:
            break
    times.sort()
    q = lambda p: times[min(len(times) - 1, int(p * (len(times) - 1) + 0.5))]
    return Timing(statistics.median(times), q(0.1), q(0.9), len(times))


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 512 * 2**20) -> float:
    """Measured bandwidth of ``dst.copy_(src)`` on ``nbytes`` (read + write counted), GB/s."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, warmup=2, reps=10)
    return 2 * nbytes / t.median_s / 1e9


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by torch *above what was live before* while ``fn()`` runs.

    CUDA: the caching allocator's counters. CPU: the profiler's memory events (every CPU
    allocation/free made through torch's allocator), accumulated to find the peak.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    # Replay the raw allocator stream (every alloc/free with its size, in time order): the
    # top-level "[memory]" events of prof.events() miss allocations made inside an op.
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return peak


def machine() -> str:
    """One line naming the machine, for RESULTS.md."""
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
    else:
        dev = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    dev = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return (
        f"{dev}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}"
    )


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def command_line(argv: list[str] | None = None) -> str:
    """``python <script> <args>`` with the script relative to the repository root (so a
    recorded command reproduces on any checkout, not only this machine's path)."""
    argv = list(sys.argv if argv is None else argv)
    root = Path(__file__).resolve().parent.parent
    script = Path(argv[0]).resolve() if argv else None
    if script is not None and script.is_relative_to(root):
        argv[0] = str(script.relative_to(root))
    return "python " + " ".join(argv)


def record(title: str, header: list[str], rows: list[list[str]], notes: str = "") -> str:
    """Append a markdown table (with command, machine and date) to bench/RESULTS.md and
    return it. Append-only: earlier results are never rewritten."""
    cmd = command_line()
    lines = [
        f"\n## {title}",
        "",
        f"- command: `{cmd}`",
        f"- machine: {machine()}",
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
    ]
    if notes:
        lines.append(f"- notes: {notes}")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    with RESULTS.open("a") as f:
        f.write(text)
    return text


# Published peak HBM bandwidth, GB/s, matched against torch.cuda.get_device_name().
DEVICE_PEAK_GBS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0}


def peak_bandwidth_gbs(device: torch.device) -> float | None:
    """The device's published peak memory bandwidth (CUDA only; None when unknown)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, gbs in DEVICE_PEAK_GBS.items():
        if key in name:
            return gbs
    return None


def pct_of_peak(gbs: float, device: torch.device) -> str:
    """Table cell: achieved GB/s as a percentage of the device's published peak bandwidth
    (CUDA devices in DEVICE_PEAK_GBS; '-' otherwise)."""
    peak = peak_bandwidth_gbs(device)
    return f"{100 * gbs / peak:.0f}%" if peak else "-"
