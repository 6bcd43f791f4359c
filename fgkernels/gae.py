"""Generalised advantage estimation (GAE) as a fused reversed linear recurrence.

For each row b (one response) with rewards r, values V and a valid-token mask m (GAE, Schulman et al. 2016):

    v_next_t = m_{t+1} V_{t+1}                 (0 at t = T-1 and past the last valid token)
    δ_t      = r_t + γ v_next_t − V_t
    A_t      = m_t (δ_t + γλ A_{t+1}),         A_T = 0
    returns_t = m_t (A_t + V_t)

"m_t x" means ``where(m_t, x, 0)`` (a select, so inf/NaN in padded positions never leak).
Masked positions get 0 advantage and 0 return, and V past the last valid token counts as 0.
The intended mask is a right-padded *prefix* mask (valid tokens first); a hole in the mask
acts like an episode end (the recurrence restarts from 0 left of it).

The recurrence ``A_t = b_t + c_t A_{t+1}`` with ``b_t = m_t δ_t``, ``c_t = m_t γλ`` is a
first-order linear recurrence, i.e. a scan with the associative combine
``(c1, b1) ∘ (c2, b2) = (c1 c2, c2 b1 + b2)`` (first pair applied first). The CPU kernel
(``csrc/gae.cpp``) walks each row backwards once; the Triton kernel walks each row in chunks
from its end to its start, scanning each chunk with ``tl.associative_scan`` and carrying A
across chunk boundaries. Neither uses the closed form (γλ)^−t·cumsum, which overflows fp32
for T ≳ 1500.

Optional whitening (``whiten=True``) normalises the advantages over all valid tokens of the
batch (and of every rank of ``group``); returns always come from the *unwhitened* advantages.

GAE outputs are regression / policy-gradient *targets*: :func:`gae` runs under
``torch.no_grad()`` and its outputs never require grad.
"""

from __future__ import annotations

import math
import numbers

import torch

from fgkernels import _dispatch
from fgkernels._triton import TRITON_DTYPE, device_ctx, tl, triton

__all__ = ["gae", "gae_reference", "masked_whiten", "triton_aot_specs", "GAEFunction"]


# --------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------
@triton.jit
def _linrec_combine(c1, b1, c2, b2):
    # x -> c1 x + b1 followed by x -> c2 x + b2 (scan order = right-to-left in t).
    return c1 * c2, c2 * b1 + b2


@triton.jit
def _gae_fwd_kernel(
    rewards_ptr,
    values_ptr,
    mask_ptr,  # uint8 view of the bool mask
    adv_ptr,  # fp32 out
    ret_ptr,  # fp32 out
    B,
    T,
    gamma,
    gamma_lam,
    BLOCK_B: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """One program = BLOCK_B rows; chunks of BLOCK_T columns from the end of the rows."""
    # 1. rows of this program (int64 offsets: B*T can exceed 2^31)
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    row_ok = rows < B
    row_off = rows * T
    # Scan position i in a chunk is column t = chunk_end - 1 - i: the chunk is loaded in
    # REVERSED order and scanned forwards (sidesteps triton#4362, reverse=True with a
    # non-commutative combine).
    rev = tl.arange(0, BLOCK_T).to(tl.int64)
    carry = tl.zeros([BLOCK_B], dtype=tl.float32)  # A_{t+1} at the chunk's right edge
    n_chunks = tl.cdiv(T, BLOCK_T)
    for k in range(0, n_chunks):
        # 2. load the chunk (columns t, and t+1 for v_next; masked tail at t < 0)
        t = T - 1 - k * BLOCK_T - rev
        col_ok = t >= 0
        ok = row_ok[:, None] & col_ok[None, :]
        offs = row_off[:, None] + t[None, :]
        m = tl.load(mask_ptr + offs, mask=ok, other=0) != 0
        v = tl.load(values_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        r = tl.load(rewards_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        nxt_ok = row_ok[:, None] & (col_ok & (t + 1 < T))[None, :]
        m_n = tl.load(mask_ptr + offs + 1, mask=nxt_ok, other=0) != 0
        v_n = tl.load(values_ptr + offs + 1, mask=nxt_ok, other=0.0).to(tl.float32)
        # 3. the recurrence's coefficients: A_t = b_t + c_t A_{t+1}
        v_next = tl.where(m_n, v_n, 0.0)
        b = tl.where(m, r + gamma * v_next - v, 0.0)
        c = tl.where(m, gamma_lam, 0.0)
        # 4. in-chunk scan, then fold in the carry: A_i = Bcum_i + Ccum_i * carry
        c_cum, b_cum = tl.associative_scan((c, b), axis=1, combine_fn=_linrec_combine)
        adv = b_cum + c_cum * carry[:, None]
        ret = tl.where(m, adv + v, 0.0)
        tl.store(adv_ptr + offs, adv, mask=ok)
        tl.store(ret_ptr + offs, ret, mask=ok)
        # 5. the carry for the next chunk (to the left) is A at scan position BLOCK_T - 1
        carry = tl.sum(tl.where(rev[None, :] == BLOCK_T - 1, adv, 0.0), axis=1)


# --------------------------------------------------------------------------------------
# Host launchers
# --------------------------------------------------------------------------------------
# (BLOCK_B, BLOCK_T, num_warps) by row length: a tile of at most 1024 elements (8 fp32 per
# thread at 4 warps keeps the 2-operand scan in registers); short rows pack several rows
# per program so small T still fills a block. The short-row tile is 4 x 128, not 8 x 128:
# `python -m fgkernels.aot` showed 8 x 128 spilling on sm_90 (fp32, aligned specialisation).
_CONFIGS = {128: (4, 128, 4), 512: (2, 512, 4), 1024: (1, 1024, 4)}


def _triton_config(B: int, T: int) -> dict:
    """Block sizes and warps for the GAE kernel (the launcher's single source of truth)."""
    block_t = min(max(triton.next_power_of_2(max(T, 1)), 128), 1024)
    key = 128 if block_t <= 128 else (512 if block_t <= 512 else 1024)
    block_b, block_t, num_warps = _CONFIGS[key]
    return {"BLOCK_B": block_b, "BLOCK_T": block_t, "num_warps": num_warps}


def _gae_triton_fwd(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    B, T = rewards.shape
    out = torch.empty((2, B, T), dtype=torch.float32, device=rewards.device)
    adv, ret = out[0], out[1]
    if B == 0 or T == 0:
        return adv, ret
    cfg = _triton_config(B, T)
    grid = (triton.cdiv(B, cfg["BLOCK_B"]),)
    with device_ctx(rewards):
        _gae_fwd_kernel[grid](
            rewards,
            values,
            mask.view(torch.uint8),
            adv,
            ret,
            B,
            T,
            float(gamma),
            float(gamma) * float(lam),
            BLOCK_B=cfg["BLOCK_B"],
            BLOCK_T=cfg["BLOCK_T"],
            num_warps=cfg["num_warps"],
        )
    return adv, ret


def triton_aot_specs() -> list[dict]:
    """Every (kernel, rewards dtype, values dtype, config) the launcher can produce, for
    ahead-of-time compilation (see ``fgkernels.aot``)."""
    specs = []
    for block_b, block_t, num_warps in _CONFIGS.values():
        for r_dtype, r_ty in TRITON_DTYPE.items():
            for v_dtype, v_ty in TRITON_DTYPE.items():
                specs.append(
                    {
                        "name": f"_gae_fwd_kernel[r={r_dtype},v={v_dtype}]",
                        "fn": _gae_fwd_kernel,
                        "signature": {
                            "rewards_ptr": f"*{r_ty}",
                            "values_ptr": f"*{v_ty}",
                            "mask_ptr": "*u8",
                            "adv_ptr": "*fp32",
                            "ret_ptr": "*fp32",
                            "B": "i64",
                            "T": "i64",
                            "gamma": "fp32",
                            "gamma_lam": "fp32",
                            "BLOCK_B": "constexpr",
                            "BLOCK_T": "constexpr",
                        },
                        "constexprs": {"BLOCK_B": block_b, "BLOCK_T": block_t},
                        "num_warps": num_warps,
                    }
                )
    return specs


# --------------------------------------------------------------------------------------
# Autograd Function
# --------------------------------------------------------------------------------------
class GAEFunction(torch.autograd.Function):
    """(advantages, returns) = GAE(rewards, values, mask; γ, λ), both fp32 [B, T].

    Math (per row): δ_t = r_t + γ m_{t+1} V_{t+1} − V_t, A_t = m_t (δ_t + γλ A_{t+1}),
    returns_t = m_t (A_t + V_t). Inputs must be contiguous.

    There is no backward: GAE outputs are targets, so both outputs are marked
    non-differentiable (``d advantages / d values`` exists mathematically, but every PPO
    implementation treats advantages and returns as constants; differentiating through
    them would change the algorithm).
    """

    @staticmethod
    def forward(ctx, rewards, values, mask, gamma, lam, backend):
        if backend == "cpu":
            adv, ret = torch.ops.fgkernels.gae_fwd(rewards, values, mask, float(gamma), float(lam))
        elif backend == "triton":
            adv, ret = _gae_triton_fwd(rewards, values, mask, gamma, lam)
        else:
            raise ValueError(f"GAEFunction: backend={backend!r} must be 'cpu' or 'triton'")
        ctx.mark_non_differentiable(adv, ret)
        return adv, ret

    @staticmethod
    def backward(ctx, grad_adv, grad_ret):
        # Outputs are non-differentiable targets (see the class docstring): no gradient
        # flows to rewards or values.
        return None, None, None, None, None, None


# --------------------------------------------------------------------------------------
# Whitening
# --------------------------------------------------------------------------------------
def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    group: torch.distributed.ProcessGroup | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Whiten ``x`` over its valid tokens: ``(x − mean) · rsqrt(var + eps)``, 0 where masked.

    mean = Σx / N and var = Σ(x − mean)² / (N − 1) over all valid tokens (unbiased, Bessel's
    correction, as TRL's ``masked_var``). With ``group``, Σx, Σx² and N are summed over the
    ranks of ``group`` with one ``all_reduce`` of a 3-vector, so the statistics are global
    (every rank must call this). The moments are accumulated in float64, which keeps the
    one-pass ``Σx² − (Σx)²/N`` free of fp32 cancellation. No host sync: N = 0 returns zeros,
    and N = 1 uses N − 1 := 1 (var = 0, so the single valid token whitens to 0) instead of
    raising as TRL does.

    Args:
        x: [B, T] float.
        mask: [B, T] bool, True = valid token.
        group: optional ``torch.distributed`` process group for global statistics.
        eps: added to the variance.

    Returns:
        [B, T] tensor of ``x``'s dtype.
    """
    xm = torch.where(mask, x, 0).to(torch.float64)
    stats = torch.stack([xm.sum(), (xm * xm).sum(), mask.sum().to(torch.float64)])
    if group is not None:
        torch.distributed.all_reduce(stats, group=group)
    s, ss, n = stats.unbind()
    mean = s / n.clamp_min(1.0)
    var = (ss - s * mean).clamp_min(0.0) / (n - 1.0).clamp_min(1.0)
    out = (x.to(torch.float64) - mean) * torch.rsqrt(var + eps)
    return torch.where(mask, out, 0).to(x.dtype)


# --------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------
def _check_unit_interval(name: str, x: object) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise ValueError(f"{name} must be a float in [0, 1], got {type(x).__name__}")
    x = float(x)
    if not (0.0 <= x <= 1.0) or math.isnan(x):
        raise ValueError(f"{name} must be in [0, 1], got {x}")
    return x


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    whiten: bool = False,
    group: torch.distributed.ProcessGroup | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses (no gradient).

    Runs under ``torch.no_grad()``: the outputs are targets and never require grad.

    Args:
        rewards: [B, T] fp32/bf16/fp16 per-token rewards.
        values: [B, T] fp32/bf16/fp16 value estimates (dtype may differ from ``rewards``).
        mask: [B, T] bool, True on valid response tokens; a right-padded prefix per row.
        gamma: discount γ in [0, 1].
        lam: GAE λ in [0, 1].
        whiten: whiten the advantages over all valid tokens (see :func:`masked_whiten`);
            returns are always computed from the unwhitened advantages.
        group: optional process group; with ``whiten``, statistics are global over it.
        backend: ``None`` (auto), ``"triton"``, ``"cpu"`` or ``"reference"``.

    Returns:
        ``(advantages, returns)``, both fp32 [B, T], 0 at masked positions.

    Raises:
        ValueError: a bad argument (the message names it) or an unusable backend.
    """
    _dispatch.check_tensor("rewards", rewards, ndim=2, dtypes=_dispatch.FLOAT_DTYPES)
    device = rewards.device
    shape = tuple(rewards.shape)
    _dispatch.check_tensor("values", values, dtypes=_dispatch.FLOAT_DTYPES, device=device, shape=shape)
    _dispatch.check_tensor("mask", mask, dtypes=(torch.bool,), device=device, shape=shape)
    gamma = _check_unit_interval("gamma", gamma)
    lam = _check_unit_interval("lam", lam)
    if not isinstance(whiten, bool):
        raise ValueError(f"whiten must be a bool, got {type(whiten).__name__}")
    if group is not None and not isinstance(group, torch.distributed.ProcessGroup):
        raise ValueError(
            f"group must be a torch.distributed.ProcessGroup or None, got {type(group).__name__}"
        )
    backend = _dispatch.resolve_backend("gae", backend, device)

    if backend == "reference":
        return gae_reference(rewards, values, mask, gamma, lam, whiten=whiten, group=group)
    adv, ret = GAEFunction.apply(
        rewards.contiguous(), values.contiguous(), mask.contiguous(), gamma, lam, backend
    )
    if whiten:
        adv = masked_whiten(adv, mask, group=group)
    return adv, ret


# --------------------------------------------------------------------------------------
# Eager reference (the readable spec)
# --------------------------------------------------------------------------------------
def gae_reference(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    whiten: bool = False,
    group: torch.distributed.ProcessGroup | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE in plain eager PyTorch: a reversed loop over T of [B]-vector ops, in fp32.

    Same arguments and outputs as :func:`gae` (without ``backend``); differentiable through
    ordinary autograd when called directly (``gae`` itself runs under no_grad).
    """
    r = rewards.to(torch.float32)
    v = values.to(torch.float32)
    T = r.shape[1]
    zero = r.new_zeros(r.shape[0])
    # V past the last valid token counts as 0: v_next_t = m_{t+1} V_{t+1}, and 0 at t = T-1.
    v_masked = torch.where(mask, v, 0.0)
    v_next = torch.cat([v_masked[:, 1:], zero[:, None]], dim=1)
    delta = r + gamma * v_next - v
    advs = []
    last = zero
    for t in reversed(range(T)):
        last = torch.where(mask[:, t], delta[:, t] + gamma * lam * last, 0.0)
        advs.append(last)
    adv = torch.stack(advs[::-1], dim=1) if T else r.new_zeros(r.shape)
    ret = torch.where(mask, adv + v, 0.0)
    if whiten:
        adv = masked_whiten(adv, mask, group=group)
    return adv, ret
