"""Every Triton kernel compiles for A100 (sm_80) and H100 (sm_90), for every dtype and every
launch configuration its launcher can pick, within the device's shared-memory and register
limits and without spills. The interpreter used by the other tests accepts code that real
compilation rejects; this closes that gap. Runs `python -m fgkernels.aot` in a subprocess
because the kernels must be defined with TRITON_INTERPRET unset."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fgkernels import _dispatch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not _dispatch.TRITON_AVAILABLE, reason="triton not installed")
def test_every_triton_kernel_compiles_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "fgkernels.aot"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"AOT compilation found problems:\n{report[-6000:]}"
    # Every op contributed kernels for both capabilities.
    for op in ("masked_token_sums", "token_bt_loss", "gae", "token_logprobs"):
        rows = [line for line in proc.stdout.splitlines() if line.startswith(op + " ")]
        assert any("  80  " in r for r in rows) and any("  90  " in r for r in rows), f"{op}: {rows}"


def test_aot_flags_resource_problems():
    """The limits check itself can fail: an over-budget result is reported."""
    from fgkernels.aot import CompileResult

    ok = CompileResult("op", "k", "fp32", "B=1", 80, 4, shared_bytes=1024, registers=32, spill_bytes=0)
    assert ok.problems == []
    big = CompileResult(
        "op", "k", "fp32", "B=1", 80, 16, shared_bytes=200 * 1024, registers=255, spill_bytes=16
    )
    assert len(big.problems) == 3
    assert CompileResult("op", "k", "fp32", "B", 90, 4, 0, 0, 0, error="boom").problems == [
        "compile error: boom"
    ]
