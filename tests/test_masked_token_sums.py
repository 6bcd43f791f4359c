"""fgkernels.masked_token_sums: every backend × dtype against the eager reference."""

from __future__ import annotations

import importlib

import pytest
import torch
from _utils import DTYPES, assert_close, backends, device_for

from fgkernels.masked_token_sums import MaskedTokenSums, masked_token_sums, masked_token_sums_reference

# The module itself (the package attribute fgkernels.<op> is the public function).
mts_mod = importlib.import_module("fgkernels.masked_token_sums")

OP = "masked_token_sums"
SUM_FIELDS = ("sum", "sum_changed", "sum_unchanged")

# Kept small: the Triton backend runs in the interpreter on CPU. (2, 2100) walks more than
# one forward block (BLOCK=2048) and three backward tiles; (3, 0) has no tokens at all.
SHAPES = [(1, 1), (3, 37), (4, 300), (2, 2100), (3, 0)]


def make_inputs(B: int, T: int, dtype: torch.dtype, device: torch.device, p_valid=0.8, p_changed=0.3):
    """Random rewards (rounded to ``dtype``), a mask whose first row is fully masked (an empty
    response) when B > 1, and a changed mask; padding slots of ``rewards`` hold NaN."""
    r = torch.randn(B, T) * 2 + 0.5
    mask = torch.rand(B, T) < p_valid
    if B > 1:
        mask[0] = False
    changed = torch.rand(B, T) < p_changed
    r = torch.where(mask, r, torch.full_like(r, float("nan")))  # must never reach a sum
    return r.to(dtype).to(device), mask.to(device), changed.to(device)


def run_both(backend, rewards, mask, changed, grads):
    """(outputs, d rewards) of the backend in rewards.dtype, and of the fp32 reference on the
    same dtype-rounded inputs, for upstream grads ``grads`` on the three sums."""
    r = rewards.detach().clone().requires_grad_(True)
    out = masked_token_sums(r, mask, changed, backend=backend)
    (g,) = torch.autograd.grad([getattr(out, f) for f in SUM_FIELDS], [r], grad_outputs=grads)
    r32 = rewards.detach().float().cpu().requires_grad_(True)
    ref = masked_token_sums_reference(r32, mask.cpu(), changed.cpu())
    (g_ref,) = torch.autograd.grad(
        [getattr(ref, f) for f in SUM_FIELDS], [r32], grad_outputs=[x.cpu() for x in grads]
    )
    return out, g, ref, g_ref


@pytest.mark.parametrize("backend", backends(OP))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward(backend, dtype, shape):
    device = device_for(backend)
    rewards, mask, changed = make_inputs(*shape, dtype, device)
    grads = [torch.randn(shape[0], device=device) for _ in SUM_FIELDS]
    out, g, ref, g_ref = run_both(backend, rewards, mask, changed, grads)
    assert isinstance(out, MaskedTokenSums)
    for name in MaskedTokenSums._fields:
        got = getattr(out, name)
        assert got.dtype == torch.float32 and got.shape == (shape[0],), name
        assert_close(got, getattr(ref, name), dtype, name)
    assert g.dtype == dtype
    assert_close(g, g_ref, dtype, "d rewards")
    # padding slots get exactly zero gradient; the first row (fully masked) sums to zero
    assert (g[~mask] == 0).all()
    if shape[0] > 1:
        assert out.count[0].item() == 0 and out.sum[0].item() == 0


@pytest.mark.parametrize("backend", backends(OP))
def test_counts_have_no_grad_and_none_upstream(backend):
    device = device_for(backend)
    rewards, mask, changed = make_inputs(3, 37, torch.float32, device)
    r = rewards.clone().requires_grad_(True)
    out = masked_token_sums(r, mask, changed, backend=backend)
    assert out.sum.requires_grad and not out.count.requires_grad
    assert not out.count_changed.requires_grad and not out.count_unchanged.requires_grad
    # Only sum_changed feeds the loss: the other upstream grads are absent (zero).
    w = torch.randn(3, device=device)
    (out.sum_changed * w).sum().backward()
    expected = torch.where(mask & changed, w[:, None], torch.zeros((), device=device))
    assert torch.equal(r.grad, expected)


@pytest.mark.parametrize("backend", backends(OP))
def test_non_contiguous_inputs(backend):
    device = device_for(backend)
    rewards, mask, changed = make_inputs(37, 5, torch.float32, device)
    rt, mt, ct = rewards.t(), mask.t(), changed.t()  # [5, 37] views, not contiguous
    assert not rt.is_contiguous()
    grads = [torch.randn(5, device=device) for _ in SUM_FIELDS]
    out, g, ref, g_ref = run_both(backend, rt, mt, ct, grads)
    for name in MaskedTokenSums._fields:
        assert_close(getattr(out, name), getattr(ref, name), torch.float32, name)
    assert_close(g, g_ref, torch.float32, "d rewards")


@pytest.mark.parametrize("backend", backends(OP))
def test_no_changed_tokens_and_all_changed(backend):
    device = device_for(backend)
    r = torch.randn(2, 50, device=device)
    mask = torch.ones(2, 50, dtype=torch.bool, device=device)
    changed = torch.zeros(2, 50, dtype=torch.bool, device=device)
    changed[1] = True
    out = masked_token_sums(r, mask, changed, backend=backend)
    assert out.count_changed.tolist() == [0.0, 50.0]
    assert out.count_unchanged.tolist() == [50.0, 0.0]
    assert out.sum_changed[0].item() == 0 and out.sum_unchanged[1].item() == 0
    assert_close(out.sum, r.sum(-1), torch.float32, "sum")


def test_reference_by_hand():
    # rewards [1, 2, 4, 8], mask [1, 1, 1, 0], changed [0, 1, 1, 1]:
    # sum = 1+2+4 = 7 over 3 tokens; changed valid = {2, 4} -> 6 over 2; unchanged = {1} -> 1 over 1.
    r = torch.tensor([[1.0, 2.0, 4.0, 8.0]])
    mask = torch.tensor([[True, True, True, False]])
    changed = torch.tensor([[False, True, True, True]])
    out = masked_token_sums_reference(r, mask, changed)
    assert [x.item() for x in out] == [7.0, 3.0, 6.0, 2.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "kwargs, argname",
    [
        ({"rewards": torch.zeros(2, 3, dtype=torch.int64)}, "rewards"),
        ({"rewards": torch.zeros(6)}, "rewards"),
        ({"rewards": [[0.0]]}, "rewards"),
        ({"mask": torch.ones(2, 4, dtype=torch.bool)}, "mask"),
        ({"mask": torch.ones(2, 3)}, "mask"),
        ({"changed": torch.ones(3, 2, dtype=torch.bool)}, "changed"),
        ({"changed": torch.ones(2, 3, dtype=torch.bool, device="meta")}, "changed"),
        ({"mask": torch.ones(2, 3, dtype=torch.bool, device="meta")}, "mask"),
        ({"backend": "cuda"}, "backend"),
    ],
)
def test_invalid_arguments(kwargs, argname):
    args = {
        "rewards": torch.zeros(2, 3),
        "mask": torch.ones(2, 3, dtype=torch.bool),
        "changed": torch.zeros(2, 3, dtype=torch.bool),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=argname):
        masked_token_sums(**args)


def test_backend_selection(monkeypatch):
    calls = []

    def spy(*args):
        calls.append(args)
        return masked_token_sums_reference(*args)

    monkeypatch.setattr(mts_mod, "masked_token_sums_reference", spy)
    monkeypatch.delenv("FGKERNELS_BACKEND", raising=False)
    r, mask, changed = make_inputs(2, 9, torch.float32, torch.device("cpu"))
    masked_token_sums(r, mask, changed, backend="reference")
    assert len(calls) == 1
    masked_token_sums(r, mask, changed)  # None -> the native kernel when it is built
    assert len(calls) == (0 if mts_mod._dispatch.native_available(OP) else 1) + 1
    if mts_mod._dispatch.native_available(OP):
        monkeypatch.setenv("FGKERNELS_BACKEND", "reference")  # the override beats the argument
        masked_token_sums(r, mask, changed, backend="cpu")
        assert len(calls) == 2
    monkeypatch.setenv("FGKERNELS_BACKEND", "bogus")
    with pytest.raises(ValueError, match="FGKERNELS_BACKEND"):
        masked_token_sums(r, mask, changed)
