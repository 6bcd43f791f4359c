"""Backend selection, the native CPU extension, and argument checks shared by every op.

Each public op takes ``backend=None | "triton" | "cpu" | "reference"``:

* ``None``: Triton for CUDA tensors, the native C++ kernel (``fgkernels._C_<op>``) for CPU
  tensors, and the eager reference as the last resort (with a one-time warning that
  says why).
* ``"triton"``: the Triton kernels. On CPU tensors this needs ``TRITON_INTERPRET=1`` set
  *before* ``fgkernels`` is imported (the interpreter; slow, for tests).
* ``"cpu"``: the C++/OpenMP kernels in ``csrc/<op>.cpp`` (CPU tensors only).
* ``"reference"``: the plain eager PyTorch reference that sits next to each kernel.

The environment variable ``FGKERNELS_BACKEND`` overrides the argument for every call.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Iterable

import torch

BACKENDS = ("triton", "cpu", "reference")
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# --- the native extension (one module per op: fgkernels._C_<op>) -------------------------
_native: dict[str, str] = {}  # op -> "" if loaded, else the import error


def native_error(op: str) -> str:
    """Load ``fgkernels._C_<op>`` (registering ``torch.ops.fgkernels.<op>_*``) once;
    return "" on success or the reason it is unavailable."""
    if op not in _native:
        try:
            importlib.import_module(f"fgkernels._C_{op}")
            _native[op] = ""
        except ImportError as exc:  # no compiler at install time, or an ABI mismatch
            _native[op] = f"fgkernels._C_{op} is unavailable ({type(exc).__name__}: {exc})"
    return _native[op]


def native_available(op: str) -> bool:
    return native_error(op) == ""


# --- Triton ----------------------------------------------------------------------------
from fgkernels._triton import HAS_TRITON as TRITON_AVAILABLE  # noqa: E402


def triton_interpret() -> bool:
    """True when Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_warned: set[tuple[str, str]] = set()


def _warn_once(op: str, reason: str) -> None:
    if (op, reason) not in _warned:
        _warned.add((op, reason))
        warnings.warn(f"fgkernels.{op}: {reason}; using the eager reference (slower)", stacklevel=4)


def resolve_backend(op: str, backend: str | None, device: torch.device) -> str:
    """Pick the backend for one call of ``op`` on tensors living on ``device``.

    Raises:
        ValueError: unknown backend name, or a backend that cannot run on ``device``.
    """
    env = os.environ.get("FGKERNELS_BACKEND", "").strip().lower()
    if env:
        if env not in BACKENDS:
            raise ValueError(f"FGKERNELS_BACKEND={env!r} is not one of {BACKENDS}")
        backend = env
    if backend is None:
        if device.type == "cuda":
            if TRITON_AVAILABLE:
                return "triton"
            _warn_once(op, "triton is not installed")
            return "reference"
        if device.type == "cpu":
            if native_available(op):
                return "cpu"
            _warn_once(op, native_error(op))
            return "reference"
        _warn_once(op, f"no fused kernel for device type {device.type!r}")
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS} or None")
    if backend == "triton":
        if not TRITON_AVAILABLE:
            raise ValueError("backend='triton' but triton is not installed")
        if device.type == "cpu" and not triton_interpret():
            raise ValueError(
                "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before importing fgkernels"
            )
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors, got device {device}")
        if not native_available(op):
            raise ValueError(f"backend='cpu' but {native_error(op)}")
    return backend


# --- argument checks -------------------------------------------------------------------
def check_tensor(
    name: str,
    t: object,
    *,
    ndim: int | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
    device: torch.device | None = None,
    shape: tuple[int | None, ...] | None = None,
) -> torch.Tensor:
    """Validate one argument; every failure is a ``ValueError`` naming ``name``.

    ``shape`` entries that are ``None`` are not checked.
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")
    if shape is not None:
        if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
            want = tuple("*" if s is None else s for s in shape)
            raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    return t
