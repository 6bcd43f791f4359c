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


def row_reduce_config(kernel: str, T: int) -> dict:
    """BLOCK and num_warps of the row-reduction kernels of ``masked_token_sums`` and
    ``token_bt_loss`` (one table, so a spill fix is made once).

    ``kernel="fwd"``: one program walks a whole row (T = the row length, or the longer side of a
    pair) with fp32 accumulator vectors; ``"bwd"``: one program per BLOCK-wide tile of a row.
    The single source of truth for these launch parameters: each op's ``triton_aot_specs``
    enumerates every value it can return.
    """
    if kernel == "fwd":
        if T <= 256:
            return {"BLOCK": 256, "num_warps": 2}
        if T <= 1024:
            return {"BLOCK": 1024, "num_warps": 4}
        return {"BLOCK": 2048, "num_warps": 8}
    if kernel == "bwd":
        if T <= 256:
            return {"BLOCK": 256, "num_warps": 2}
        return {"BLOCK": 1024, "num_warps": 4}
    raise ValueError(f"kernel={kernel!r} is not 'fwd' or 'bwd'")


def distinct_configs(config_fn, kernel: str) -> list[dict]:
    """Every distinct launch config ``config_fn(kernel, T)`` returns for T = 2^0 .. 2^31 (the
    configs are step functions of T, so powers of two reach every step): the AOT specs of a
    launcher whose only size input is the row length T."""
    seen: list[dict] = []
    for k in range(32):
        cfg = config_fn(kernel, 1 << k)
        if cfg not in seen:
            seen.append(cfg)
    return seen


__all__ = [
    "HAS_TRITON",
    "TRITON_DTYPE",
    "device_ctx",
    "distinct_configs",
    "row_reduce_config",
    "tl",
    "triton",
]
