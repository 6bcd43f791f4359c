"""Masked per-row token sums, split into unchanged (U0) and changed (U1) tokens (Xu et al. 2024, eqs. 3/4).

For rewards ``r`` [B, T], the valid-token mask ``m`` [B, T] and the "changed" mask ``c``
[B, T] (token in U1), one pass over each row gives six fp32 [B] vectors:

    sum[b]             = Σ_t m[b,t] · r[b,t]              count[b]           = Σ_t m[b,t]
    sum_changed[b]     = Σ_t (m ∧ c)[b,t] · r[b,t]        count_changed[b]   = Σ_t (m ∧ c)[b,t]
    sum_unchanged[b]   = Σ_t (m ∧ ¬c)[b,t] · r[b,t]       count_unchanged[b] = Σ_t (m ∧ ¬c)[b,t]

"·" is a select, not a product: padding positions (m = 0) are never read into a sum, so
garbage (even NaN/inf) there cannot leak. Accumulation is fp32 for every input dtype.
Counts are fp32 and carry no gradient. The backward is one elementwise pass:

    ∂/∂r[b,t] = g_sum[b]·m + g_changed[b]·(m ∧ c) + g_unchanged[b]·(m ∧ ¬c)

These are the building blocks of the sequence reward R(τ) = (1/T) Σ r_t and of the
token-level Bradley–Terry loss (``fgkernels.token_bt_loss``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fgkernels import _dispatch
from fgkernels._triton import TRITON_DTYPE, device_ctx, distinct_configs, row_reduce_config, tl, triton

_OP = "masked_token_sums"


# --- Triton kernels --------------------------------------------------------------------
@triton.jit
def _masked_row_sums(r_ptr, m_ptr, c_ptr, T, BLOCK: tl.constexpr):
    """Reduce one row: (sum_changed, count_changed, sum_unchanged, count_unchanged), fp32.

    ``r_ptr``/``m_ptr``/``c_ptr`` point at the start of the row; T may be any length
    (the row is walked in BLOCK-wide masked chunks). Lane-wise fp32 accumulators, one
    tree reduction at the end.
    """
    offs = tl.arange(0, BLOCK)
    s_c = tl.zeros([BLOCK], dtype=tl.float32)
    n_c = tl.zeros([BLOCK], dtype=tl.float32)
    s_u = tl.zeros([BLOCK], dtype=tl.float32)
    n_u = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, T, BLOCK):
        idx = start + offs
        inb = idx < T
        x = tl.load(r_ptr + idx, mask=inb, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + idx, mask=inb, other=0) != 0
        c = tl.load(c_ptr + idx, mask=inb, other=0) != 0
        sel_c = m & c
        sel_u = m & (c == 0)
        s_c += tl.where(sel_c, x, 0.0)
        n_c += sel_c.to(tl.float32)
        s_u += tl.where(sel_u, x, 0.0)
        n_u += sel_u.to(tl.float32)
    return tl.sum(s_c, axis=0), tl.sum(n_c, axis=0), tl.sum(s_u, axis=0), tl.sum(n_u, axis=0)


@triton.jit
def _mts_fwd_kernel(
    r_ptr,
    m_ptr,
    c_ptr,
    sum_ptr,
    cnt_ptr,
    sum_c_ptr,
    cnt_c_ptr,
    sum_u_ptr,
    cnt_u_ptr,
    T,
    BLOCK: tl.constexpr,
):
    """One program per row b: the six [B] outputs at index b."""
    row = tl.program_id(0).to(tl.int64)
    base = row * T
    s_c, n_c, s_u, n_u = _masked_row_sums(r_ptr + base, m_ptr + base, c_ptr + base, T, BLOCK)
    tl.store(sum_ptr + row, s_c + s_u)
    tl.store(cnt_ptr + row, n_c + n_u)
    tl.store(sum_c_ptr + row, s_c)
    tl.store(cnt_c_ptr + row, n_c)
    tl.store(sum_u_ptr + row, s_u)
    tl.store(cnt_u_ptr + row, n_u)


@triton.jit
def _mts_bwd_kernel(
    g_sum_ptr,
    g_c_ptr,
    g_u_ptr,
    m_ptr,
    c_ptr,
    grad_ptr,
    T,
    BLOCK: tl.constexpr,
):
    """Grid (B, cdiv(T, BLOCK)): grad[b, t] = m ? (c ? g_sum+g_changed : g_sum+g_unchanged) : 0."""
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1).to(tl.int64)
    g_sum = tl.load(g_sum_ptr + row)
    a_c = g_sum + tl.load(g_c_ptr + row)  # weight of a changed valid token
    a_u = g_sum + tl.load(g_u_ptr + row)  # weight of an unchanged valid token
    idx = blk * BLOCK + tl.arange(0, BLOCK)
    inb = idx < T
    off = row * T + idx
    m = tl.load(m_ptr + off, mask=inb, other=0) != 0
    c = tl.load(c_ptr + off, mask=inb, other=0) != 0
    g = tl.where(m, tl.where(c, a_c, a_u), 0.0)
    tl.store(grad_ptr + off, g.to(grad_ptr.dtype.element_ty), mask=inb)


# --- host launchers --------------------------------------------------------------------
def _mts_forward_triton(rewards: torch.Tensor, mask: torch.Tensor, changed: torch.Tensor):
    B, T = rewards.shape
    outs = [torch.empty(B, dtype=torch.float32, device=rewards.device) for _ in range(6)]
    if B == 0:
        return tuple(outs)
    cfg = row_reduce_config("fwd", T)
    with device_ctx(rewards):
        _mts_fwd_kernel[(B,)](
            rewards,
            mask.view(torch.uint8),
            changed.view(torch.uint8),
            *outs,
            T,
            BLOCK=cfg["BLOCK"],
            num_warps=cfg["num_warps"],
        )
    return tuple(outs)


def _mts_backward_triton(g_sum, g_changed, g_unchanged, mask, changed, dtype):
    B, T = mask.shape
    grad = torch.empty((B, T), dtype=dtype, device=mask.device)
    if grad.numel() == 0:
        return grad
    cfg = row_reduce_config("bwd", T)
    grid = (B, triton.cdiv(T, cfg["BLOCK"]))
    with device_ctx(mask):
        _mts_bwd_kernel[grid](
            g_sum,
            g_changed,
            g_unchanged,
            mask.view(torch.uint8),
            changed.view(torch.uint8),
            grad,
            T,
            BLOCK=cfg["BLOCK"],
            num_warps=cfg["num_warps"],
        )
    return grad


def triton_aot_specs() -> list[dict]:
    """Every kernel × accepted dtype × launch config, for ``triton.compile`` (``fgkernels.aot``)."""
    specs = []
    for dtype, ty in TRITON_DTYPE.items():
        for cfg in distinct_configs(row_reduce_config, "fwd"):
            sig = {"r_ptr": f"*{ty}", "m_ptr": "*u8", "c_ptr": "*u8"}
            sig |= {name: "*fp32" for name in ("sum_ptr", "cnt_ptr", "sum_c_ptr", "cnt_c_ptr")}
            sig |= {"sum_u_ptr": "*fp32", "cnt_u_ptr": "*fp32", "T": "i32", "BLOCK": "constexpr"}
            specs.append(
                {
                    "name": f"_mts_fwd_kernel[{dtype}]",
                    "fn": _mts_fwd_kernel,
                    "signature": sig,
                    "constexprs": {"BLOCK": cfg["BLOCK"]},
                    "num_warps": cfg["num_warps"],
                }
            )
        for cfg in distinct_configs(row_reduce_config, "bwd"):
            sig = {
                "g_sum_ptr": "*fp32",
                "g_c_ptr": "*fp32",
                "g_u_ptr": "*fp32",
                "m_ptr": "*u8",
                "c_ptr": "*u8",
            }
            sig |= {"grad_ptr": f"*{ty}", "T": "i32", "BLOCK": "constexpr"}
            specs.append(
                {
                    "name": f"_mts_bwd_kernel[{dtype}]",
                    "fn": _mts_bwd_kernel,
                    "signature": sig,
                    "constexprs": {"BLOCK": cfg["BLOCK"]},
                    "num_warps": cfg["num_warps"],
                }
            )
    return specs


# --- autograd --------------------------------------------------------------------------
class MaskedTokenSums(NamedTuple):
    """Per-row masked sums; every field fp32 [B]. Counts carry no gradient."""

    sum: torch.Tensor
    count: torch.Tensor
    sum_changed: torch.Tensor
    count_changed: torch.Tensor
    sum_unchanged: torch.Tensor
    count_unchanged: torch.Tensor


class MaskedTokenSumsFunction(torch.autograd.Function):
    """Fused masked row sums (see the module docstring for the math).

    forward(rewards [B,T] float, mask [B,T] bool, changed [B,T] bool, backend "cpu"|"triton")
    -> six fp32 [B] tensors in ``MaskedTokenSums`` order. Saves only the two masks.
    """

    @staticmethod
    def forward(ctx, rewards, mask, changed, backend):
        rewards, mask, changed = rewards.contiguous(), mask.contiguous(), changed.contiguous()
        if backend == "cpu":
            outs = torch.ops.fgkernels.masked_token_sums_fwd(rewards, mask, changed)
        else:
            outs = _mts_forward_triton(rewards, mask, changed)
        ctx.mark_non_differentiable(outs[1], outs[3], outs[5])
        ctx.save_for_backward(mask, changed)
        ctx.backend = backend
        ctx.dtype = rewards.dtype
        return tuple(outs)

    @staticmethod
    def backward(ctx, g_sum, _g_count, g_changed, _g_count_changed, g_unchanged, _g_count_unchanged):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        mask, changed = ctx.saved_tensors
        B = mask.shape[0]
        # The sums are linear in r, so with the select s(b,t) ∈ {0,1}:
        #   ∂sum[b]/∂r[b,t] = m,  ∂sum_changed[b]/∂r[b,t] = m∧c,  ∂sum_unchanged[b]/∂r[b,t] = m∧¬c
        # and the chain rule sums the three upstream terms:
        #   grad[b,t] = g_sum[b]·m + g_changed[b]·(m∧c) + g_unchanged[b]·(m∧¬c)
        #             = m ? (c ? g_sum+g_changed : g_sum+g_unchanged) : 0
        # (an upstream grad that autograd left as None counts as zero).
        gs = [
            torch.zeros(B, dtype=torch.float32, device=mask.device)
            if g is None
            else g.to(torch.float32).contiguous()
            for g in (g_sum, g_changed, g_unchanged)
        ]
        if ctx.backend == "cpu":
            grad = torch.ops.fgkernels.masked_token_sums_bwd(*gs, mask, changed, ctx.dtype)
        else:
            grad = _mts_backward_triton(*gs, mask, changed, ctx.dtype)
        return grad, None, None, None


# --- public API ------------------------------------------------------------------------
def masked_token_sums(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    changed: torch.Tensor,
    backend: str | None = None,
) -> MaskedTokenSums:
    """Per-row sums and counts of valid / changed / unchanged tokens, in one pass.

    Args:
        rewards: [B, T] fp32/bf16/fp16 per-token values (e.g. token-level rewards).
        mask: [B, T] bool, True on valid response tokens (padding and prompt are False;
            their ``rewards`` are never read into a sum, so they may hold anything).
        changed: [B, T] bool, True on tokens in U1 (changed by the edit); only
            its valid positions matter.
        backend: ``None`` (auto), ``"triton"``, ``"cpu"`` or ``"reference"``; see
            ``fgkernels._dispatch``.

    Returns:
        ``MaskedTokenSums(sum, count, sum_changed, count_changed, sum_unchanged,
        count_unchanged)``, each fp32 [B]; the sums are differentiable w.r.t. ``rewards``
        (gradient in ``rewards.dtype``), the counts are not.

    Raises:
        ValueError: an argument of the wrong type, rank, dtype, shape or device (the
            message names it), or an unusable backend.
    """
    _dispatch.check_tensor("rewards", rewards, ndim=2, dtypes=_dispatch.FLOAT_DTYPES)
    device, shape = rewards.device, tuple(rewards.shape)
    _dispatch.check_tensor("mask", mask, dtypes=(torch.bool,), device=device, shape=shape)
    _dispatch.check_tensor("changed", changed, dtypes=(torch.bool,), device=device, shape=shape)
    backend = _dispatch.resolve_backend(_OP, backend, device)
    if backend == "reference":
        return masked_token_sums_reference(rewards, mask, changed)
    return MaskedTokenSums(*MaskedTokenSumsFunction.apply(rewards, mask, changed, backend))


def masked_token_sums_reference(
    rewards: torch.Tensor, mask: torch.Tensor, changed: torch.Tensor
) -> MaskedTokenSums:
    """Eager PyTorch reference of ``masked_token_sums`` (the readable spec; ordinary autograd)."""
    r = rewards.to(torch.float32)
    sel_c = mask & changed
    sel_u = mask & ~changed
    zero = r.new_zeros(())
    return MaskedTokenSums(
        sum=torch.where(mask, r, zero).sum(-1),
        count=mask.sum(-1, dtype=torch.float32),
        sum_changed=torch.where(sel_c, r, zero).sum(-1),
        count_changed=sel_c.sum(-1, dtype=torch.float32),
        sum_unchanged=torch.where(sel_u, r, zero).sum(-1),
        count_unchanged=sel_u.sum(-1, dtype=torch.float32),
    )
