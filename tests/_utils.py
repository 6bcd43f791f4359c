"""Shared test helpers: backends to test, the per-dtype tolerance table, a loud allclose, and
:func:`launch` (a trainer or command in a child process, torchrun for several)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fgkernels import _dispatch

# (atol, rtol) per input dtype, for a kernel vs the fp32 eager reference. bf16/fp16 rows are
# what eager bf16/fp16 itself achieves against fp32 on these ops (inputs rounded once,
# fp32 accumulation) plus headroom.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def backends(op: str) -> list:
    """Every non-reference backend of ``op`` usable here, as pytest params (unavailable
    ones skip, saying why)."""
    params = []
    for name in ("cpu", "triton"):
        marks = []
        if name == "cpu" and not _dispatch.native_available(op):
            marks.append(pytest.mark.skip(reason=_dispatch.native_error(op)))
        if name == "triton":
            marks.append(pytest.mark.triton)
            if not _dispatch.TRITON_AVAILABLE:
                marks.append(pytest.mark.skip(reason="triton not installed"))
            elif not torch.cuda.is_available() and not _dispatch.triton_interpret():
                marks.append(pytest.mark.skip(reason="no CUDA and TRITON_INTERPRET unset"))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def device_for(backend: str) -> torch.device:
    """CUDA for Triton when a GPU exists, else the CPU (interpreter)."""
    if backend == "triton" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str = "") -> None:
    """allclose with the table's tolerance for ``dtype``; on failure reports the number of
    mismatches, the worst element and any NaN/inf on either side."""
    atol, rtol = TOLERANCES[dtype]
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    bad_a = (~torch.isfinite(a)).sum().item()
    bad_e = (~torch.isfinite(e)).sum().item()
    assert bad_a == 0 and bad_e == 0, f"{name}: non-finite values: actual {bad_a}, expected {bad_e}"
    err = (a - e).abs()
    tol = atol + rtol * e.abs()
    mismatched = err > tol
    n = int(mismatched.sum().item())
    if n:
        i = int(torch.argmax(err - tol).item())
        flat_a, flat_e = a.reshape(-1), e.reshape(-1)
        raise AssertionError(
            f"{name}: {n}/{a.numel()} elements mismatch (dtype {dtype}, atol={atol}, rtol={rtol}); "
            f"worst at flat index {i}: actual {flat_a[i].item():.6g} vs expected {flat_e[i].item():.6g}, "
            f"max abs err {err.max().item():.3g}"
        )


_DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env() -> dict:
    """os.environ without distributed variables, so a child torchrun sets up its own world."""
    return {k: v for k, v in os.environ.items() if k not in _DIST_VARS and not k.startswith("TORCHELASTIC")}


ROOT = Path(__file__).resolve().parent.parent


def launch(
    target: str | list[str],
    args: list[str] | tuple[str, ...] = (),
    nproc: int = 1,
    env: dict | None = None,
    timeout: int = 600,
    ok: bool = True,
    threads: int = 1,
) -> subprocess.CompletedProcess:
    """Run ``python target args`` from the repository root — under ``torchrun --standalone
    --nproc_per_node=nproc`` (gloo on the CPU) when ``nproc`` > 1 — the one way tests start a
    trainer or a command in a child process. ``target``: a script (``"trainer/ppo.py"``) or an
    argument list (``["-m", "trainer.cli", "generate"]``). ``env`` defaults to
    :func:`clean_env` with ``OMP_NUM_THREADS=threads`` and ``TRITON_INTERPRET=1``. With ``ok``,
    asserts exit 0, showing the tails of stdout and stderr."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*launcher, *([target] if isinstance(target, str) else target), *args]
    if env is None:
        env = {**clean_env(), "OMP_NUM_THREADS": str(threads), "TRITON_INTERPRET": "1"}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert p.returncode == 0, (
            f"{' '.join(cmd[1:7])} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
        )
    return p
