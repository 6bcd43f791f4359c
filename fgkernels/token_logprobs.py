"""Per-token log-probabilities (and entropies) straight from the logits, never materialising
a [B, T, V] fp32 log-softmax (PPO: log π, log π_ref, log π_old for ρ and the KL
penalty; the entropy bonus).

For logits ``z`` [B, T, V], labels ``y`` [B, T] and a temperature τ > 0, with s = z / τ:

    lse[b,t]  = log Σ_v exp(s[b,t,v])
    logp[b,t] = min(s[b,t,y] − lse[b,t], 0)                  = log softmax(s)[y]
    H[b,t]    = −Σ_v p_v (s_v − lse)  with p = softmax(s)     (entropy, optional)

Positions with ``y == ignore_index`` get logp = H = 0 and zero gradient. Everything is
accumulated in fp32 whatever the logits dtype; the outputs are fp32 [B, T].

Forward: one online-logsumexp pass over vocabulary blocks per row (running max m, running
Σ e^{s−m} and Σ e^{s−m}(s−m), rescaled when m grows); only lse (and H) are kept, fp32 [B, T].
Backward: one pass that recomputes p_j = exp(s_j − lse) block by block and writes
grad_logits in the logits dtype:

    ∂logp/∂z_j = (1[j=y] − p_j) / τ
    ∂H/∂z_j    = −p_j (s_j − lse + H) / τ

Clamp: logp ≤ 0 always (s_y − lse can round to a tiny positive value when one logit
dominates). The clamp's gradient is passed straight through (the unclamped derivative
(1 − p_y)/τ is used); the clamp only ever moves logp by rounding error, so this is the
derivative of the exact function.

−inf logits (e.g. masked vocabulary entries) are supported anywhere except at the label
position (logp would be −inf) and except a row that is entirely −inf; +inf/NaN logits are
not supported.
"""

from __future__ import annotations

import math

import torch
from torch._subclasses.fake_tensor import is_fake as _is_fake

from fgkernels import _dispatch
from fgkernels._triton import TRITON_DTYPE, device_ctx, tl, triton

_OP = "token_logprobs"


# --- Triton kernels --------------------------------------------------------------------
@triton.jit
def _token_logprobs_fwd_kernel(
    logits_ptr,
    labels_ptr,
    logp_ptr,
    lse_ptr,
    ent_ptr,
    V,
    inv_tau,
    ignore_index,
    BLOCK: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
):
    """One program per row (b, t): online logsumexp (+ entropy) over V in BLOCK chunks."""
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * V
    label = tl.load(labels_ptr + row)
    ignored = label == ignore_index
    offs = tl.arange(0, BLOCK)
    # Running max m (finite start so that m - m_new never is -inf - finite = -inf · 0),
    # S = Σ e^{s - m}, A = Σ e^{s - m} (s - m), all fp32 scalars.
    m = -3.0e38
    S = 0.0
    A = 0.0
    for start in range(0, V, BLOCK):
        # 1. one block of s = z / τ (masked lanes are -inf: e = 0)
        idx = start + offs
        inb = idx < V
        s = tl.load(base + idx, mask=inb, other=float("-inf")).to(tl.float32) * inv_tau
        # 2. rescale the running sums to the new max: e^{s-m} = c e^{s-m_old}, c = e^{m_old-m}
        m_new = tl.maximum(m, tl.max(s, axis=0))
        c = tl.exp(m - m_new)
        d = s - m_new
        e = tl.exp(d)
        if WITH_ENTROPY:
            # Σ e^{s-m_new}(s - m_new) = c (A + (m_old - m_new) S) + this block's terms
            # (d clamped to a finite value: a -inf logit has e = 0 and adds 0, not 0 * -inf)
            # (m_old - m_new can overflow to -inf for near-fp32-max logits; c = 0 then)
            A = c * (A + tl.maximum(m - m_new, -1.0e30) * S) + tl.sum(e * tl.maximum(d, -1.0e30), axis=0)
        S = S * c + tl.sum(e, axis=0)
        m = m_new
    # 3. lse = m + log S; logp = s_y - lse, clamped to <= 0; H = log S - A / S
    log_s = tl.log(S)
    lse = m + log_s
    safe_label = tl.where(ignored, 0, label)
    s_y = tl.load(base + safe_label).to(tl.float32) * inv_tau
    logp = tl.minimum((s_y - m) - log_s, 0.0)
    tl.store(logp_ptr + row, tl.where(ignored, 0.0, logp))
    tl.store(lse_ptr + row, lse)
    if WITH_ENTROPY:
        tl.store(ent_ptr + row, tl.where(ignored, 0.0, log_s - A / S))


@triton.jit
def _token_logprobs_bwd_kernel(
    logits_ptr,
    labels_ptr,
    lse_ptr,
    ent_ptr,
    g_logp_ptr,
    g_ent_ptr,
    grad_ptr,
    V,
    inv_tau,
    ignore_index,
    BLOCK: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
):
    """One program per row: grad_z = (g_lp (1[j=y] - p) - g_H p (s - lse + H)) / τ, p = e^{s - lse}."""
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * V
    gbase = grad_ptr + row * V
    label = tl.load(labels_ptr + row)
    ignored = label == ignore_index
    lse = tl.load(lse_ptr + row)
    g_lp = tl.where(ignored, 0.0, tl.load(g_logp_ptr + row))
    if WITH_ENTROPY:
        H = tl.load(ent_ptr + row)
        g_h = tl.where(ignored, 0.0, tl.load(g_ent_ptr + row))
    offs = tl.arange(0, BLOCK)
    for start in range(0, V, BLOCK):
        idx = start + offs
        inb = idx < V
        s = tl.load(base + idx, mask=inb, other=0.0).to(tl.float32) * inv_tau
        d = tl.maximum(s - lse, -1.0e30)  # -inf logit -> p = 0 and a finite (d + H)
        p = tl.exp(d)
        # logp part: d logp / d s_j = 1[j=y] - p_j
        coef = g_lp
        if WITH_ENTROPY:
            # entropy part: d H / d s_j = -p_j (s_j - lse + H)   (derivation in the Function)
            coef = coef + g_h * (d + H)
        g = -p * coef
        g = tl.where(idx == label, g + g_lp, g) * inv_tau
        tl.store(gbase + idx, g.to(grad_ptr.dtype.element_ty), mask=inb)


# --- host launchers --------------------------------------------------------------------
_CONFIGS = ((1024, 4), (2048, 8), (4096, 8))  # (BLOCK, num_warps), smallest first


def _triton_config(V: int) -> dict:
    """BLOCK (vocabulary chunk per loop iteration) and num_warps for a row of length V.

    The single source of truth for both kernels and ``triton_aot_specs``: the smallest of
    ``_CONFIGS`` that holds the whole row, else the largest (the kernels loop over blocks).
    """
    for block, warps in _CONFIGS:
        if V <= block:
            return {"BLOCK": block, "num_warps": warps}
    block, warps = _CONFIGS[-1]
    return {"BLOCK": block, "num_warps": warps}


def _triton_fwd(
    logits: torch.Tensor, labels: torch.Tensor, inv_tau: float, ignore_index: int, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [N, V] contiguous, labels [N] int64 -> (logp, lse, entropy or [0]) fp32."""
    N, V = logits.shape
    f32 = dict(device=logits.device, dtype=torch.float32)
    logp, lse = torch.empty(N, **f32), torch.empty(N, **f32)
    ent = torch.empty(N if with_entropy else 0, **f32)
    if N:
        cfg = _triton_config(V)
        with device_ctx(logits):
            _token_logprobs_fwd_kernel[(N,)](
                logits,
                labels,
                logp,
                lse,
                ent if with_entropy else logp,  # dummy pointer, never written
                V,
                inv_tau,
                ignore_index,
                BLOCK=cfg["BLOCK"],
                WITH_ENTROPY=with_entropy,
                num_warps=cfg["num_warps"],
            )
    return logp, lse, ent


def _triton_bwd(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor,
    g_logp: torch.Tensor,
    g_ent: torch.Tensor,
    inv_tau: float,
    ignore_index: int,
    with_entropy: bool,
) -> torch.Tensor:
    """grad_logits [N, V] in logits.dtype."""
    N, V = logits.shape
    grad = torch.empty_like(logits)
    if N:
        cfg = _triton_config(V)
        with device_ctx(logits):
            _token_logprobs_bwd_kernel[(N,)](
                logits,
                labels,
                lse,
                ent if with_entropy else lse,
                g_logp,
                g_ent if with_entropy else g_logp,
                grad,
                V,
                inv_tau,
                ignore_index,
                BLOCK=cfg["BLOCK"],
                WITH_ENTROPY=with_entropy,
                num_warps=cfg["num_warps"],
            )
    return grad


def triton_aot_specs() -> list[dict]:
    """Every kernel × accepted dtype × launch config × entropy mode, for ``triton.compile``."""
    specs = []
    for dtype, ty in TRITON_DTYPE.items():
        for block, warps in _CONFIGS:
            for with_entropy in (False, True):
                constexprs = {"BLOCK": block, "WITH_ENTROPY": with_entropy}
                scalars = {"V": "i32", "inv_tau": "fp32", "ignore_index": "i32"}
                scalars |= {"BLOCK": "constexpr", "WITH_ENTROPY": "constexpr"}
                fwd_sig = {"logits_ptr": f"*{ty}", "labels_ptr": "*i64"}
                fwd_sig |= {"logp_ptr": "*fp32", "lse_ptr": "*fp32", "ent_ptr": "*fp32"} | scalars
                bwd_sig = {"logits_ptr": f"*{ty}", "labels_ptr": "*i64", "lse_ptr": "*fp32"}
                bwd_sig |= {"ent_ptr": "*fp32", "g_logp_ptr": "*fp32", "g_ent_ptr": "*fp32"}
                bwd_sig |= {"grad_ptr": f"*{ty}"} | scalars
                for name, fn, sig in (
                    ("_token_logprobs_fwd_kernel", _token_logprobs_fwd_kernel, fwd_sig),
                    ("_token_logprobs_bwd_kernel", _token_logprobs_bwd_kernel, bwd_sig),
                ):
                    specs.append(
                        {
                            "name": f"{name}[{dtype}]",
                            "fn": fn,
                            "signature": sig,
                            "constexprs": dict(constexprs),
                            "num_warps": warps,
                        }
                    )
    return specs


# --- autograd --------------------------------------------------------------------------
class TokenLogprobsFunction(torch.autograd.Function):
    """logits [N, V] (contiguous), labels [N] int64 -> (logp [N] fp32, entropy [N] fp32 or [0]).

    Forward saves only lse (and H), fp32 [N], besides the logits. Backward, with
    s = z / τ, p = softmax(s), lse = log Σ_v e^{s_v}, ∂p_v/∂s_j = p_v (1[v=j] − p_j):

        logp = s_y − lse                     ⇒ ∂logp/∂s_j = 1[j=y] − p_j          (∂lse/∂s_j = p_j)
        H = −Σ_v p_v (s_v − lse) = lse − Σ_v p_v s_v
        ∂(Σ_v p_v s_v)/∂s_j = p_j + Σ_v s_v p_v (1[v=j] − p_j) = p_j + p_j s_j − p_j Σ_v p_v s_v
        ⇒ ∂H/∂s_j = p_j − p_j − p_j s_j + p_j Σ_v p_v s_v = −p_j (s_j − Σ_v p_v s_v)
                  = −p_j (s_j − lse + H)                                       (Σ_v p_v s_v = lse − H)
        ∂/∂z_j = (1/τ) ∂/∂s_j, so
        grad_z_j = (g_lp (1[j=y] − p_j) − g_H p_j (s_j − lse + H)) / τ,  0 on ignored rows.

    The clamp logp = min(·, 0) is treated as the identity in the backward (straight-through).
    """

    @staticmethod
    def forward(ctx, logits, labels, inv_tau, ignore_index, with_entropy, backend):
        if backend == "cpu":
            logp, lse, ent = torch.ops.fgkernels.token_logprobs_fwd(
                logits, labels, inv_tau, ignore_index, with_entropy
            )
        else:
            logp, lse, ent = _triton_fwd(logits, labels, inv_tau, ignore_index, with_entropy)
        ctx.save_for_backward(logits, labels, lse, ent)
        ctx.inv_tau, ctx.ignore_index = inv_tau, ignore_index
        ctx.with_entropy, ctx.backend = with_entropy, backend
        if not with_entropy:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        logits, labels, lse, ent = ctx.saved_tensors
        if g_logp is None and g_ent is None:
            return None, None, None, None, None, None
        use_ent = ctx.with_entropy and g_ent is not None
        empty = lse.new_empty(0)
        g_logp = torch.zeros_like(lse) if g_logp is None else g_logp.float().contiguous()
        g_ent = g_ent.float().contiguous() if use_ent else empty
        ent_in = ent if use_ent else empty
        args = (logits, labels, lse, ent_in, g_logp, g_ent, ctx.inv_tau, ctx.ignore_index, use_ent)
        if ctx.backend == "cpu":
            grad = torch.ops.fgkernels.token_logprobs_bwd(*args)
        else:
            grad = _triton_bwd(*args)
        return grad, None, None, None, None, None


# --- public API ------------------------------------------------------------------------
def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log softmax(logits / temperature)[labels] per token, optionally with the entropy.

    Args:
        logits: [B, T, V] fp32 / bf16 / fp16, any V (up to 256k and beyond), any strides.
        labels: [B, T] int64, each in [0, V) or equal to ``ignore_index``.
        temperature: τ > 0; the distribution is softmax(logits / τ).
        return_entropy: also return the entropy of softmax(logits / τ).
        ignore_index: label value marking positions to skip (logp = entropy = 0, no gradient).
        backend: None (auto), "triton", "cpu" or "reference"; see ``fgkernels._dispatch``.

    Returns:
        logp: fp32 [B, T], ≤ 0; or ``(logp, entropy)`` with entropy fp32 [B, T] if
        ``return_entropy``. Differentiable with respect to ``logits`` (gradient in
        ``logits.dtype``).

    Raises:
        ValueError: naming the argument, for a wrong type / shape / dtype / device, a label
            outside [0, V) other than ``ignore_index``, or a non-positive temperature.

    Note:
        The label range check costs one host sync per call (``bool(bad.any())``): one fused
        comparison over [B, T] int64, tiny next to the [B, T, V] work.
    """
    logits = _dispatch.check_tensor("logits", logits, ndim=3, dtypes=_dispatch.FLOAT_DTYPES)
    B, T, V = logits.shape
    if V == 0:
        raise ValueError("logits must have a non-empty vocabulary dimension (V > 0)")
    device = logits.device
    labels = _dispatch.check_tensor("labels", labels, dtypes=(torch.int64,), device=device, shape=(B, T))
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a float, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    if not isinstance(return_entropy, bool):
        raise ValueError(f"return_entropy must be a bool, got {type(return_entropy).__name__}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if labels.numel():
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= V))
        # host sync (see Note); a FakeTensor (shape-only dry runs) has no values to check
        if not _is_fake(bad) and bool(bad.any()):
            raise ValueError(f"labels must be in [0, {V}) or equal ignore_index={ignore_index}")
    backend = _dispatch.resolve_backend(_OP, backend, device)
    if backend == "reference":
        return token_logprobs_reference(logits, labels, temperature, return_entropy, ignore_index)
    if backend == "triton" and not -(2**31) <= ignore_index < 2**31:
        raise ValueError(f"ignore_index must fit in int32 for the triton backend, got {ignore_index}")

    logp, ent = TokenLogprobsFunction.apply(
        logits.reshape(B * T, V).contiguous(),
        labels.reshape(B * T).contiguous(),
        1.0 / float(temperature),
        ignore_index,
        return_entropy,
        backend,
    )
    logp = logp.view(B, T)
    return (logp, ent.view(B, T)) if return_entropy else logp


def token_logprobs_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Eager PyTorch reference (the readable spec); same arguments and outputs as
    ``token_logprobs``. Materialises fp32 [B, T, V] log-softmax; differentiable by autograd."""
    logsm = torch.log_softmax(logits.float() / temperature, dim=-1)  # [B, T, V] fp32
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    logp = logsm.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    logp = logp - (logp - logp.clamp(max=0.0)).detach()  # value clamped to <= 0, gradient passed through
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    logp = torch.where(valid, logp, zero)
    if not return_entropy:
        return logp
    p = logsm.exp()
    # p log p with 0 log 0 = 0 (a -inf logit has p = 0 and logsm = -inf)
    ent = -(p * torch.where(p > 0, logsm, zero)).sum(-1)
    return logp, torch.where(valid, ent, zero)
