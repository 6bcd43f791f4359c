"""Token-level Bradley–Terry loss of the fine-grained reward model (Xu et al. 2024, eqs. 1-4).

One preference pair per row b: the chosen (edited) response τ^i with per-token rewards
r_c [B, Tc] and the rejected (original) response τ^j with r_r [B, Tr]. With m the
valid-token mask and c the "changed" (U1) mask of each side, T = Σ_t m (that side's own
response length) and w = sel / max(T, 1):

    variant "exact"   (eq. 1-3):  sel = m       Δ = (1/T_c) Σ_m r_c − (1/T_r) Σ_m r_r = R(τ^i) − R(τ^j)
    variant "changed" (eq. 4):    sel = m ∧ c   Δ = (1/T_c) Σ_{m∧c} r_c − (1/T_r) Σ_{m∧c} r_r

    loss_b = −log σ(Δ_b) = softplus(−Δ_b)          (computed stably)
    ∂loss_b/∂r_c[b,t] = −σ(−Δ_b) · w_c[b,t]         ∂loss_b/∂r_r[b,t] = +σ(−Δ_b) · w_r[b,t]

An empty response (T = 0) contributes 0 to Δ (the division is by max(T, 1)) and gets a
zero gradient; so does the "changed" side of a row with no changed tokens. Padding
positions are selected away, never multiplied, so they may hold anything.

Fused: the forward reads each row once and saves only two fp32 [B] coefficients
σ(−Δ)/max(T_c,1) and σ(−Δ)/max(T_r,1); the backward is one elementwise pass per side.
The row reduction is the one of ``fgkernels.masked_token_sums``, restricted to what the
loss needs (the selected sum and the valid count).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from fgkernels import _dispatch
from fgkernels._triton import TRITON_DTYPE, device_ctx, distinct_configs, row_reduce_config, tl, triton

_OP = "token_bt_loss"
VARIANTS = ("exact", "changed")
REDUCTIONS = ("mean", "none")


# --- Triton kernels --------------------------------------------------------------------
@triton.jit
def _selected_row_sum(r_ptr, m_ptr, c_ptr, T, CHANGED_ONLY: tl.constexpr, BLOCK: tl.constexpr):
    """(Σ_sel r, Σ m) over one row of length T, fp32; sel = m (∧ c when CHANGED_ONLY)."""
    offs = tl.arange(0, BLOCK)
    s = tl.zeros([BLOCK], dtype=tl.float32)
    n = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, T, BLOCK):
        idx = start + offs
        inb = idx < T
        x = tl.load(r_ptr + idx, mask=inb, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + idx, mask=inb, other=0) != 0
        if CHANGED_ONLY:
            sel = m & (tl.load(c_ptr + idx, mask=inb, other=0) != 0)
        else:
            sel = m
        s += tl.where(sel, x, 0.0)
        n += m.to(tl.float32)
    return tl.sum(s, axis=0), tl.sum(n, axis=0)


@triton.jit
def _log1p(z):
    """log(1 + z) accurate for tiny z (Goldberg's trick; u − 1 is exact), z ≥ 0."""
    u = 1.0 + z
    den = tl.where(u == 1.0, 1.0, u - 1.0)
    return tl.where(u == 1.0, z, tl.log(u) * (z / den))


@triton.jit
def _bt_fwd_kernel(
    rc_ptr,
    rr_ptr,
    mc_ptr,
    mr_ptr,
    cc_ptr,
    cr_ptr,
    loss_ptr,
    margin_ptr,
    acc_ptr,
    coef_c_ptr,
    coef_r_ptr,
    Tc,
    Tr,
    CHANGED_ONLY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program per pair b: both rows reduced, then the per-pair scalars."""
    row = tl.program_id(0).to(tl.int64)
    # 1. selected sums and lengths of both sides
    s_c, n_c = _selected_row_sum(
        rc_ptr + row * Tc, mc_ptr + row * Tc, cc_ptr + row * Tc, Tc, CHANGED_ONLY, BLOCK
    )
    s_r, n_r = _selected_row_sum(
        rr_ptr + row * Tr, mr_ptr + row * Tr, cr_ptr + row * Tr, Tr, CHANGED_ONLY, BLOCK
    )
    # 2. margin; an empty side divides by 1 (its sum is 0)
    inv_c = 1.0 / tl.maximum(n_c, 1.0)
    inv_r = 1.0 / tl.maximum(n_r, 1.0)
    delta = s_c * inv_c - s_r * inv_r
    # 3. softplus(−Δ) = max(−Δ, 0) + log1p(e^{−|Δ|}); σ(−Δ) from the same z = e^{−|Δ|}
    z = tl.exp(-tl.abs(delta))
    loss = tl.maximum(-delta, 0.0) + _log1p(z)
    sig_neg = tl.where(delta >= 0, z / (1.0 + z), 1.0 / (1.0 + z))
    tl.store(loss_ptr + row, loss)
    tl.store(margin_ptr + row, delta)
    tl.store(acc_ptr + row, (delta > 0).to(tl.float32))
    tl.store(coef_c_ptr + row, sig_neg * inv_c)
    tl.store(coef_r_ptr + row, sig_neg * inv_r)


@triton.jit
def _bt_bwd_kernel(
    g_ptr,
    coef_ptr,
    m_ptr,
    c_ptr,
    grad_ptr,
    T,
    g_stride,
    scale,
    CHANGED_ONLY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Grid (B, cdiv(T, BLOCK)), one side: grad[b, t] = sel ? scale·g[b·g_stride]·coef[b] : 0
    (g_stride = 0 broadcasts the scalar upstream gradient of a mean)."""
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1).to(tl.int64)
    w = scale * tl.load(g_ptr + row * g_stride) * tl.load(coef_ptr + row)
    idx = blk * BLOCK + tl.arange(0, BLOCK)
    inb = idx < T
    off = row * T + idx
    sel = tl.load(m_ptr + off, mask=inb, other=0) != 0
    if CHANGED_ONLY:
        sel = sel & (tl.load(c_ptr + off, mask=inb, other=0) != 0)
    g = tl.where(sel, w, 0.0)
    tl.store(grad_ptr + off, g.to(grad_ptr.dtype.element_ty), mask=inb)


# --- host launchers --------------------------------------------------------------------
def _u8(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8)


def _bt_forward_triton(r_c, r_r, m_c, m_r, ch_c, ch_r, changed_only: bool):
    B, Tc = r_c.shape
    Tr = r_r.shape[1]
    outs = [torch.empty(B, dtype=torch.float32, device=r_c.device) for _ in range(5)]
    if B == 0:
        return tuple(outs)
    cfg = row_reduce_config("fwd", max(Tc, Tr))
    with device_ctx(r_c):
        _bt_fwd_kernel[(B,)](
            r_c,
            r_r,
            _u8(m_c),
            _u8(m_r),
            _u8(ch_c),
            _u8(ch_r),
            *outs,
            Tc,
            Tr,
            CHANGED_ONLY=changed_only,
            BLOCK=cfg["BLOCK"],
            num_warps=cfg["num_warps"],
        )
    return tuple(outs)


def _bt_backward_side_triton(g, coef, mask, changed, scale: float, changed_only: bool, dtype):
    B, T = mask.shape
    grad = torch.empty((B, T), dtype=dtype, device=mask.device)
    if grad.numel() == 0:
        return grad
    cfg = row_reduce_config("bwd", T)
    with device_ctx(mask):
        _bt_bwd_kernel[(B, triton.cdiv(T, cfg["BLOCK"]))](
            g,
            coef,
            _u8(mask),
            _u8(changed),
            grad,
            T,
            0 if g.dim() == 0 else 1,
            scale,
            CHANGED_ONLY=changed_only,
            BLOCK=cfg["BLOCK"],
            num_warps=cfg["num_warps"],
        )
    return grad


def triton_aot_specs() -> list[dict]:
    """Every kernel × accepted dtype × CHANGED_ONLY × launch config, for ``triton.compile``."""
    specs = []
    for dtype, ty in TRITON_DTYPE.items():
        for changed_only in (False, True):
            for cfg in distinct_configs(row_reduce_config, "fwd"):
                sig = {"rc_ptr": f"*{ty}", "rr_ptr": f"*{ty}"}
                sig |= {name: "*u8" for name in ("mc_ptr", "mr_ptr", "cc_ptr", "cr_ptr")}
                sig |= {
                    name: "*fp32"
                    for name in ("loss_ptr", "margin_ptr", "acc_ptr", "coef_c_ptr", "coef_r_ptr")
                }
                sig |= {"Tc": "i32", "Tr": "i32", "CHANGED_ONLY": "constexpr", "BLOCK": "constexpr"}
                specs.append(
                    {
                        "name": f"_bt_fwd_kernel[{dtype}]",
                        "fn": _bt_fwd_kernel,
                        "signature": sig,
                        "constexprs": {"CHANGED_ONLY": changed_only, "BLOCK": cfg["BLOCK"]},
                        "num_warps": cfg["num_warps"],
                    }
                )
            for cfg in distinct_configs(row_reduce_config, "bwd"):
                sig = {
                    "g_ptr": "*fp32",
                    "coef_ptr": "*fp32",
                    "m_ptr": "*u8",
                    "c_ptr": "*u8",
                    "grad_ptr": f"*{ty}",
                }
                sig |= {
                    "T": "i32",
                    "g_stride": "i32",
                    "scale": "fp32",
                    "CHANGED_ONLY": "constexpr",
                    "BLOCK": "constexpr",
                }
                specs.append(
                    {
                        "name": f"_bt_bwd_kernel[{dtype}]",
                        "fn": _bt_bwd_kernel,
                        "signature": sig,
                        "constexprs": {"CHANGED_ONLY": changed_only, "BLOCK": cfg["BLOCK"]},
                        "num_warps": cfg["num_warps"],
                    }
                )
    return specs


# --- autograd --------------------------------------------------------------------------
class TokenBTLoss(NamedTuple):
    """``loss``: fp32 scalar ("mean") or [B] ("none"); ``margin`` Δ and ``accuracy``
    (Δ > 0 as 0/1): fp32 [B], detached, left on the device (no host sync)."""

    loss: torch.Tensor
    margin: torch.Tensor
    accuracy: torch.Tensor


class TokenBTLossFunction(torch.autograd.Function):
    """Token-level BT loss (math in the module docstring), with the reduction folded in.

    forward(r_c [B,Tc], r_r [B,Tr], m_c, m_r, ch_c, ch_r (bool, same shapes), changed_only,
    mean, backend) -> (loss: fp32 [] if mean else [B], margin fp32 [B], accuracy fp32 [B]).
    Saves the masks and the two per-row coefficients σ(−Δ)/max(T_c,1), σ(−Δ)/max(T_r,1).
    """

    @staticmethod
    def forward(ctx, r_c, r_r, m_c, m_r, ch_c, ch_r, changed_only, mean, backend):
        r_c, r_r = r_c.contiguous(), r_r.contiguous()
        m_c, m_r, ch_c, ch_r = (t.contiguous() for t in (m_c, m_r, ch_c, ch_r))
        if backend == "cpu":
            loss, margin, acc, coef_c, coef_r = torch.ops.fgkernels.token_bt_loss_fwd(
                r_c, r_r, m_c, m_r, ch_c, ch_r, changed_only
            )
        else:
            loss, margin, acc, coef_c, coef_r = _bt_forward_triton(
                r_c, r_r, m_c, m_r, ch_c, ch_r, changed_only
            )
        ctx.mark_non_differentiable(margin, acc)
        ctx.save_for_backward(m_c, m_r, ch_c, ch_r, coef_c, coef_r)
        ctx.changed_only, ctx.mean, ctx.backend = changed_only, mean, backend
        ctx.dtypes = (r_c.dtype, r_r.dtype)
        return (loss.mean() if mean else loss), margin, acc

    @staticmethod
    def backward(ctx, g_loss, _g_margin, _g_acc):
        m_c, m_r, ch_c, ch_r, coef_c, coef_r = ctx.saved_tensors
        # loss_b = softplus(−Δ_b), d softplus(x)/dx = σ(x), so ∂loss_b/∂Δ_b = −σ(−Δ_b).
        # Δ_b = Σ_t w_c[b,t] r_c[b,t] − Σ_t w_r[b,t] r_r[b,t] with w = sel/max(T,1), so
        #   ∂loss_b/∂r_c[b,t] = −σ(−Δ_b) w_c[b,t] = −coef_c[b]·sel_c[b,t]
        #   ∂loss_b/∂r_r[b,t] = +σ(−Δ_b) w_r[b,t] = +coef_r[b]·sel_r[b,t]
        # times the upstream g_b: g[b] for "none"; for "mean" g is a scalar and g_b = g/B
        # (the kernels broadcast a 0-d g and take the 1/B as a scale; no [B] tensor is built).
        B = coef_c.shape[0]
        if g_loss is None:
            g_loss = coef_c.new_zeros(())
        g = g_loss.to(torch.float32).contiguous()
        scale = 1.0 / max(B, 1) if ctx.mean else 1.0
        if ctx.backend == "cpu":
            grad_c, grad_r = torch.ops.fgkernels.token_bt_loss_bwd(
                g, scale, coef_c, coef_r, m_c, m_r, ch_c, ch_r, ctx.changed_only, ctx.dtypes[0]
            )
        else:
            grad_c = _bt_backward_side_triton(g, coef_c, m_c, ch_c, -scale, ctx.changed_only, ctx.dtypes[0])
            grad_r = _bt_backward_side_triton(g, coef_r, m_r, ch_r, scale, ctx.changed_only, ctx.dtypes[1])
        return grad_c, grad_r, None, None, None, None, None, None, None


# --- public API ------------------------------------------------------------------------
def _check_args(
    r_chosen, r_rejected, mask_chosen, mask_rejected, changed_chosen, changed_rejected, variant, reduction
) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not one of {VARIANTS}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not one of {REDUCTIONS}")
    check = _dispatch.check_tensor
    check("r_chosen", r_chosen, ndim=2, dtypes=_dispatch.FLOAT_DTYPES)
    device, B = r_chosen.device, r_chosen.shape[0]
    check("r_rejected", r_rejected, ndim=2, dtypes=(r_chosen.dtype,), device=device, shape=(B, None))
    for name, t, like in (
        ("mask_chosen", mask_chosen, r_chosen),
        ("mask_rejected", mask_rejected, r_rejected),
        ("changed_chosen", changed_chosen, r_chosen),
        ("changed_rejected", changed_rejected, r_rejected),
    ):
        check(name, t, dtypes=(torch.bool,), device=device, shape=tuple(like.shape))


def token_bt_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    mask_chosen: torch.Tensor,
    mask_rejected: torch.Tensor,
    changed_chosen: torch.Tensor,
    changed_rejected: torch.Tensor,
    variant: str = "exact",
    reduction: str = "mean",
    backend: str | None = None,
) -> TokenBTLoss:
    """Token-level Bradley–Terry loss −log σ(Δ) of a token-reward model on edited pairs.

    Args:
        r_chosen: [B, Tc] fp32/bf16/fp16 per-token rewards of the chosen (edited) response τ^i.
        r_rejected: [B, Tr] per-token rewards of the rejected (original) response τ^j, same
            dtype and B (Tr may differ from Tc).
        mask_chosen, mask_rejected: bool, shaped like their rewards: valid response tokens.
            T of a side is its mask sum (its own length); T = 0 makes that side's term 0.
        changed_chosen, changed_rejected: bool, shaped like their rewards: tokens in U1
            (U1 of the token alignment). Used only by ``variant="changed"``.
        variant: ``"exact"`` (Δ = R(τ^i) − R(τ^j), the mean reward over all valid tokens
            of each side) or ``"changed"`` (paper eq. 4: each side's changed-token sum
            divided by its full length).
        reduction: ``"mean"`` (fp32 scalar, mean over B) or ``"none"`` (fp32 [B]).
        backend: ``None`` (auto), ``"triton"``, ``"cpu"`` or ``"reference"``.

    Returns:
        ``TokenBTLoss(loss, margin, accuracy)``; ``margin`` = Δ and ``accuracy`` = (Δ > 0)
        are fp32 [B], detached, on the input device. Gradients flow to ``r_chosen`` and
        ``r_rejected`` in their dtype.

    Raises:
        ValueError: a bad ``variant`` / ``reduction`` / ``backend``, or a tensor of the wrong
            type, rank, dtype, shape or device (the message names the argument).
    """
    _check_args(
        r_chosen, r_rejected, mask_chosen, mask_rejected, changed_chosen, changed_rejected, variant, reduction
    )
    backend = _dispatch.resolve_backend(_OP, backend, r_chosen.device)
    if backend == "reference":
        return token_bt_loss_reference(
            r_chosen,
            r_rejected,
            mask_chosen,
            mask_rejected,
            changed_chosen,
            changed_rejected,
            variant,
            reduction,
        )
    return TokenBTLoss(
        *TokenBTLossFunction.apply(
            r_chosen,
            r_rejected,
            mask_chosen,
            mask_rejected,
            changed_chosen,
            changed_rejected,
            variant == "changed",
            reduction == "mean",
            backend,
        )
    )


def token_bt_loss_reference(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    mask_chosen: torch.Tensor,
    mask_rejected: torch.Tensor,
    changed_chosen: torch.Tensor,
    changed_rejected: torch.Tensor,
    variant: str = "exact",
    reduction: str = "mean",
) -> TokenBTLoss:
    """Eager PyTorch reference of ``token_bt_loss`` (the readable spec; ordinary autograd)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not one of {VARIANTS}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not one of {REDUCTIONS}")

    def side_reward(r, mask, changed):
        sel = mask & changed if variant == "changed" else mask
        length = mask.sum(-1, dtype=torch.float32).clamp_min(1.0)  # T = 0 -> the term is 0
        return torch.where(sel, r.to(torch.float32), 0.0).sum(-1) / length

    delta = side_reward(r_chosen, mask_chosen, changed_chosen) - side_reward(
        r_rejected, mask_rejected, changed_rejected
    )
    loss = F.softplus(-delta)  # −log σ(Δ)
    margin = delta.detach()
    return TokenBTLoss(loss.mean() if reduction == "mean" else loss, margin, (margin > 0).to(torch.float32))
