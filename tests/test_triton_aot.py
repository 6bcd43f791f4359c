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


@pytest.mark.slow
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


_SWEEP = sorted(
    {1, 2, 3, 7, 100, 255, 256, 257, 1000, 1023, 1024, 1025, 1500, 2048, 4097, 8192, 32000}
    | {2**k for k in range(0, 21)}
    | {152064, 256000, 262144}
)


def _launcher_choices(op: str, module) -> list[dict]:
    """Every config the op's launcher picks over a sweep of realistic and odd sizes."""
    if op in ("masked_token_sums", "token_bt_loss"):
        return [module.row_reduce_config(k, t) for k in ("fwd", "bwd") for t in _SWEEP]
    if op == "gae":
        return [module._triton_config(b, t) for b in (1, 3, 64, 513) for t in _SWEEP]
    if op == "token_logprobs":
        return [module._triton_config(v) for v in _SWEEP]
    raise AssertionError(f"no sweep for {op}")


@pytest.mark.parametrize("op", ["masked_token_sums", "token_bt_loss", "gae", "token_logprobs"])
def test_aot_specs_cover_every_launch_config(op):
    """The AOT specs are derived from the launcher's own config function: every config it
    picks at run time is among the compiled ones (so the two cannot drift apart)."""
    import importlib

    module = importlib.import_module(f"fgkernels.{op}")
    specs = module.triton_aot_specs()
    compiled = {(s["num_warps"], tuple(sorted(s["constexprs"].items()))) for s in specs}
    for cfg in _launcher_choices(op, module):
        want = {k: v for k, v in cfg.items() if k != "num_warps"}
        hit = any(
            nw == cfg["num_warps"] and all(dict(consts).get(k) == v for k, v in want.items())
            for nw, consts in compiled
        )
        assert hit, f"{op}: launcher config {cfg} has no AOT spec"
