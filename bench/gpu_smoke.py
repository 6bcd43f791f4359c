"""The first command to run on a CUDA machine:

    python bench/gpu_smoke.py            # parity tests on CUDA, then the benchmarks
    python bench/gpu_smoke.py --record   # ... appending the numbers to bench/RESULTS.md

1. Every op's Triton kernels on CUDA against the eager reference, forward and backward, on
   the same odd shapes as CPU CI (the `triton`-marked tests; with CUDA present they run on
   the GPU instead of the interpreter).
2. The kernel benchmarks at full size: achieved GB/s as a fraction of the measured
   `copy_` bandwidth and of the device's published peak (A100 2,039 GB/s, H100 3,350 GB/s).

Skips (exit 0) without CUDA; needs nothing beyond the CPU install except a CUDA torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device; skipping (nothing to check on this machine)")
        return 0
    print(f"gpu_smoke: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-m", "triton", "tests"], cwd=ROOT, env=env)
    if rc:
        print("gpu_smoke: parity tests FAILED on CUDA", file=sys.stderr)
        return rc
    return subprocess.call(
        [sys.executable, str(ROOT / "bench" / "run_all.py"), *sys.argv[1:]], cwd=ROOT, env=env
    )


if __name__ == "__main__":
    sys.exit(main())
