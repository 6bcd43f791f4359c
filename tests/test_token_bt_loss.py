"""fgkernels.token_bt_loss: every backend × dtype × variant × reduction against the eager
reference, edge rows, stability, properties (hypothesis) and argument checks."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from _utils import DTYPES, assert_close, backends, device_for
from hypothesis import given
from hypothesis import strategies as st

from fgkernels import _dispatch
from fgkernels.token_bt_loss import TokenBTLoss, token_bt_loss, token_bt_loss_reference

# The module itself (the package attribute fgkernels.<op> is the public function).
bt_mod = importlib.import_module("fgkernels.token_bt_loss")

OP = "token_bt_loss"
VARIANTS = ["exact", "changed"]
REDUCTIONS = ["mean", "none"]
# (B, Tc, Tr); small because Triton runs in the interpreter on CPU. (2, 2100, 40) walks more
# than one forward block (BLOCK=2048) on the chosen side and three backward tiles.
SHAPES = [(1, 1, 1), (3, 37, 20), (4, 300, 257), (2, 2100, 40)]


def make_pair(B, Tc, Tr, dtype, device, p_changed=0.3, generator=None):
    """Random pair batch. When B > 1, row 0's chosen response is empty (fully masked); when
    B > 2, row 1's rejected side has no changed tokens. Padding rewards are NaN (must never
    be read into a sum)."""
    g = generator

    def side(T):
        r = torch.randn(B, T, generator=g) * 1.5
        mask = torch.rand(B, T, generator=g) < 0.85
        changed = torch.rand(B, T, generator=g) < p_changed
        return r, mask, changed

    r_c, m_c, ch_c = side(Tc)
    r_r, m_r, ch_r = side(Tr)
    if B > 1:
        m_c[0] = False
    if B > 2:
        ch_r[1] = False
    r_c = torch.where(m_c, r_c, float("nan"))
    r_r = torch.where(m_r, r_r, float("nan"))
    to = lambda t: t.to(device)
    return to(r_c.to(dtype)), to(r_r.to(dtype)), to(m_c), to(m_r), to(ch_c), to(ch_r)


def run_both(backend, inputs, variant, reduction, g_out):
    """Outputs and (d r_c, d r_r) of ``backend`` and of the fp32 reference on the same
    dtype-rounded inputs, for the upstream gradient ``g_out``."""
    r_c, r_r, *masks = inputs
    a = r_c.detach().clone().requires_grad_(True)
    b = r_r.detach().clone().requires_grad_(True)
    out = token_bt_loss(a, b, *masks, variant=variant, reduction=reduction, backend=backend)
    grads = torch.autograd.grad(out.loss, [a, b], grad_outputs=g_out)
    a32 = r_c.detach().float().cpu().requires_grad_(True)
    b32 = r_r.detach().float().cpu().requires_grad_(True)
    ref = token_bt_loss_reference(a32, b32, *(m.cpu() for m in masks), variant=variant, reduction=reduction)
    ref_grads = torch.autograd.grad(ref.loss, [a32, b32], grad_outputs=g_out.cpu())
    return out, grads, ref, ref_grads


@pytest.mark.parametrize("backend", backends(OP))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_forward_backward(backend, dtype, shape, variant, reduction):
    device = device_for(backend)
    B = shape[0]
    inputs = make_pair(*shape, dtype, device)
    g_out = torch.randn(() if reduction == "mean" else (B,), device=device)
    out, (g_c, g_r), ref, (ref_c, ref_r) = run_both(backend, inputs, variant, reduction, g_out)
    assert isinstance(out, TokenBTLoss)
    assert out.loss.dtype == torch.float32 and out.loss.shape == ref.loss.shape
    assert_close(out.loss, ref.loss, dtype, "loss")
    assert_close(out.margin, ref.margin, dtype, "margin")
    assert not out.margin.requires_grad and not out.accuracy.requires_grad
    decided = ref.margin.abs() > 1e-4  # (Δ > 0) is only well defined away from 0
    assert torch.equal(out.accuracy.cpu()[decided], ref.accuracy[decided])
    assert g_c.dtype == dtype and g_r.dtype == dtype
    assert_close(g_c, ref_c, dtype, "d r_chosen")
    assert_close(g_r, ref_r, dtype, "d r_rejected")
    m_c, m_r, ch_c, ch_r = inputs[2:]
    assert (g_c[~m_c] == 0).all() and (g_r[~m_r] == 0).all()
    if variant == "changed":
        assert (g_c[~ch_c] == 0).all() and (g_r[~ch_r] == 0).all()
    if B > 1:  # the empty chosen response: zero gradient, and Δ is minus the rejected term
        assert (g_c[0] == 0).all()
    if B > 2 and variant == "changed":  # no changed rejected tokens: no rejected term, no gradient
        assert (g_r[1] == 0).all()


@pytest.mark.parametrize("backend", backends(OP))
@pytest.mark.parametrize("variant", VARIANTS)
def test_edge_rows_by_hand(backend, variant):
    device = device_for(backend)
    # Row 0: chosen rewards [1, 3, (pad)] changed [1, 0]; rejected [2, 2, 2] none changed.
    #   exact:   Δ = (1+3)/2 − 6/3 = 0.          changed: Δ = 1/2 − 0 = 0.5
    # Row 1: chosen fully masked (empty) -> 0; rejected [-1, (pad), 3] changed [1, -, 1].
    #   exact:   Δ = 0 − (−1+3)/2 = −1.          changed: Δ = 0 − (−1+3)/2 = −1
    r_c = torch.tensor([[1.0, 3.0, float("nan")], [7.0, 7.0, 7.0]])
    m_c = torch.tensor([[True, True, False], [False, False, False]])
    ch_c = torch.tensor([[True, False, True], [True, True, True]])
    r_r = torch.tensor([[2.0, 2.0, 2.0], [-1.0, float("inf"), 3.0]])
    m_r = torch.tensor([[True, True, True], [True, False, True]])
    ch_r = torch.tensor([[False, False, False], [True, True, True]])
    tensors = [t.to(device) for t in (r_c, r_r, m_c, m_r, ch_c, ch_r)]
    out = token_bt_loss(*tensors, variant=variant, reduction="none", backend=backend)
    expected = [0.0, -1.0] if variant == "exact" else [0.5, -1.0]
    assert out.margin.cpu().tolist() == expected
    assert out.accuracy.cpu().tolist() == [float(d > 0) for d in expected]
    assert_close(out.loss, F.softplus(-torch.tensor(expected)), torch.float32, "loss")


@pytest.mark.parametrize("backend", backends(OP))
def test_large_margins_are_stable(backend):
    device = device_for(backend)
    B, T = 4, 16
    r_c = torch.tensor([200.0, -200.0, 40.0, -40.0])[:, None].expand(B, T).contiguous()
    r_r = torch.zeros(B, T)
    ones = torch.ones(B, T, dtype=torch.bool)
    a, b = r_c.to(device).requires_grad_(True), r_r.to(device).requires_grad_(True)
    out = token_bt_loss(
        a,
        b,
        ones.to(device),
        ones.to(device),
        ones.to(device),
        ones.to(device),
        reduction="none",
        backend=backend,
    )
    ref = token_bt_loss_reference(r_c.double(), r_r.double(), ones, ones, ones, ones, reduction="none")
    assert_close(out.loss, ref.loss, torch.float32, "loss")  # 0 / 200 / ~4e-18 / 40
    out.loss.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    # σ(−Δ) is 1 for Δ = −200 and exactly representable tiny for Δ = +200; weight 1/T.
    assert a.grad[1, 0].item() == pytest.approx(-1.0 / T) and b.grad[1, 0].item() == pytest.approx(1.0 / T)
    assert abs(a.grad[0, 0].item()) < 1e-30


@pytest.mark.parametrize("backend", backends(OP))
def test_non_contiguous_and_no_grad_inputs(backend):
    device = device_for(backend)
    r_c, r_r, m_c, m_r, ch_c, ch_r = make_pair(5, 11, 7, torch.float32, device)
    # transposed copies viewed back: same values, non-contiguous strides
    nc = lambda t: t.t().contiguous().t()
    args = [nc(t) for t in (r_c, r_r, m_c, m_r, ch_c, ch_r)]
    assert not args[0].is_contiguous()
    out = token_bt_loss(*args, variant="changed", reduction="none", backend=backend)
    ref = token_bt_loss_reference(r_c, r_r, m_c, m_r, ch_c, ch_r, variant="changed", reduction="none")
    assert_close(out.loss, ref.loss, torch.float32, "loss")
    assert not out.loss.requires_grad  # no input requires grad


# --- properties --------------------------------------------------------------------------
def _property_backend() -> str:
    return "cpu" if _dispatch.native_available(OP) else "reference"


@given(
    B=st.integers(1, 6),
    Tc=st.integers(1, 40),
    Tr=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
    variant=st.sampled_from(VARIANTS),
    scale=st.sampled_from([0.1, 1.0, 10.0]),
)
def test_properties(B, Tc, Tr, seed, variant, scale):
    gen = torch.Generator().manual_seed(seed)
    r_c, r_r, m_c, m_r, ch_c, ch_r = make_pair(B, Tc, Tr, torch.float32, torch.device("cpu"), generator=gen)
    r_c, r_r = r_c * scale, r_r * scale
    backend = _property_backend()
    out = token_bt_loss(r_c, r_r, m_c, m_r, ch_c, ch_r, variant=variant, reduction="none", backend=backend)
    assert (out.loss >= 0).all()
    assert_close(out.loss, F.softplus(-out.margin), torch.float32, "loss vs softplus(-margin)")
    assert torch.equal(out.accuracy, (out.margin > 0).float())
    swapped = token_bt_loss(
        r_r, r_c, m_r, m_c, ch_r, ch_c, variant=variant, reduction="none", backend=backend
    )
    assert_close(swapped.margin, -out.margin, torch.float32, "swapped margin")
    mean = token_bt_loss(r_c, r_r, m_c, m_r, ch_c, ch_r, variant=variant, backend=backend)
    assert_close(mean.loss, out.loss.mean(), torch.float32, "mean reduction")
    if variant == "exact":
        # −log σ(mean_c − mean_r) in float64, one pair at a time, by plain Python
        for b in range(B):

            def mean_of(r, m, b=b):
                vals = [float(x) for x, keep in zip(r[b].tolist(), m[b].tolist()) if keep]
                return sum(vals) / len(vals) if vals else 0.0

            d = mean_of(r_c, m_c) - mean_of(r_r, m_r)
            direct = max(-d, 0.0) + math.log1p(math.exp(-abs(d)))
            assert out.loss[b].item() == pytest.approx(direct, rel=1e-5, abs=1e-5)


# --- arguments and backend selection ------------------------------------------------------
def _valid_args():
    return {
        "r_chosen": torch.zeros(2, 3),
        "r_rejected": torch.zeros(2, 4),
        "mask_chosen": torch.ones(2, 3, dtype=torch.bool),
        "mask_rejected": torch.ones(2, 4, dtype=torch.bool),
        "changed_chosen": torch.zeros(2, 3, dtype=torch.bool),
        "changed_rejected": torch.zeros(2, 4, dtype=torch.bool),
    }


@pytest.mark.parametrize(
    "kwargs, argname",
    [
        ({"variant": "eq4"}, "variant"),
        ({"reduction": "sum"}, "reduction"),
        ({"backend": "gpu"}, "backend"),
        ({"r_chosen": torch.zeros(2, 3, dtype=torch.int32)}, "r_chosen"),
        ({"r_chosen": torch.zeros(2, 3, 1)}, "r_chosen"),
        ({"r_rejected": torch.zeros(3, 4)}, "r_rejected"),
        ({"r_rejected": torch.zeros(2, 4, dtype=torch.float64)}, "r_rejected"),
        ({"r_rejected": torch.zeros(2, 4, dtype=torch.bfloat16)}, "r_rejected"),
        ({"r_rejected": torch.zeros(2, 4, device="meta")}, "r_rejected"),
        ({"mask_chosen": torch.ones(2, 4, dtype=torch.bool)}, "mask_chosen"),
        ({"mask_rejected": torch.ones(2, 4)}, "mask_rejected"),
        ({"changed_chosen": torch.zeros(2, 3, dtype=torch.bool, device="meta")}, "changed_chosen"),
        ({"changed_rejected": torch.zeros(2, 3, dtype=torch.bool)}, "changed_rejected"),
    ],
)
def test_invalid_arguments(kwargs, argname):
    args = _valid_args()
    args.update(kwargs)
    with pytest.raises(ValueError, match=argname):
        token_bt_loss(**args)


def test_backend_selection(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        return token_bt_loss_reference(*args, **kwargs)

    monkeypatch.setattr(bt_mod, "token_bt_loss_reference", spy)
    monkeypatch.delenv("FGKERNELS_BACKEND", raising=False)
    args = make_pair(3, 10, 12, torch.float32, torch.device("cpu"))
    token_bt_loss(*args, backend="reference")
    assert len(calls) == 1
    token_bt_loss(*args)  # None -> the native kernel when it is built, else the reference
    native = _dispatch.native_available(OP)
    assert len(calls) == (1 if native else 2)
    if native:
        monkeypatch.setenv("FGKERNELS_BACKEND", "reference")  # the override beats the argument
        token_bt_loss(*args, backend="cpu")
        assert len(calls) == 2
        monkeypatch.setenv("FGKERNELS_BACKEND", "cpu")
        token_bt_loss(*args, backend="reference")
        assert len(calls) == 2
