"""Triton for the op files: the import (with a stand-in where no Triton wheel exists, so the
kernels are still *defined* and the CPU / reference backends work) and launcher helpers."""

from __future__ import annotations

import contextlib

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # e.g. macOS: kernels below are defined, never launched
    from types import SimpleNamespace

    triton = SimpleNamespace(jit=lambda fn: fn, next_power_of_2=lambda n: 1 << max(n - 1, 0).bit_length())
    tl = SimpleNamespace(constexpr=object)
    HAS_TRITON = False

# torch dtype -> the element type's name in a Triton signature ("*fp32" is a pointer to it).
TRITON_DTYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def device_ctx(t: torch.Tensor):
    """Launch on ``t``'s GPU (Triton launches on the current device); a no-op on the CPU."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


__all__ = ["HAS_TRITON", "TRITON_DTYPE", "device_ctx", "tl", "triton"]
