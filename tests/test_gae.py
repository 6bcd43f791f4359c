"""fgkernels.gae: every backend against the eager reference and the textbook Python loop."""

from __future__ import annotations

import importlib
import os

import pytest
import torch
from _utils import DTYPES, assert_close, backends, device_for
from hypothesis import given
from hypothesis import strategies as st

from fgkernels import _dispatch
from fgkernels.gae import gae, gae_reference, masked_whiten

# The module itself (the package attribute fgkernels.<op> is the public function).
gae_mod = importlib.import_module("fgkernels.gae")

BACKENDS = backends("gae")
GL = [(0.99, 0.95), (1.0, 1.0)]


def _prefix_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def _inputs(B: int, T: int, device, *, lengths=None, r_dtype=torch.float32, v_dtype=torch.float32):
    """Rewards ~ N(0, 1), values ~ N(0, 1), random prefix masks incl. empty and full rows."""
    r = torch.randn(B, T).to(r_dtype)
    v = torch.randn(B, T).to(v_dtype)
    if lengths is None:
        lengths = torch.randint(0, T + 1, (B,))
        if B >= 3:
            lengths[0], lengths[1] = 0, T  # one empty response, one full row
    mask = _prefix_mask(lengths, T)
    return r.to(device), v.to(device), mask.to(device)


def _textbook_gae(rewards, values, mask, gamma, lam):
    """The reversed Python loop of TRL / OpenRLHF / verl / AlpacaFarm, in float64, with the
    prefix-mask convention applied by zero-padding r and V past the last valid token."""
    r = torch.where(mask, rewards.double(), 0.0)
    v = torch.where(mask, values.double(), 0.0)
    T = r.shape[1]
    lastgaelam = torch.zeros(r.shape[0], dtype=torch.float64)
    adv_rev = []
    for t in reversed(range(T)):
        nextvalues = v[:, t + 1] if t < T - 1 else 0.0
        delta = r[:, t] + gamma * nextvalues - v[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        adv_rev.append(lastgaelam)
    adv = torch.stack(adv_rev[::-1], dim=1) if T else torch.zeros_like(r)
    return torch.where(mask, adv, 0.0), torch.where(mask, adv + v, 0.0)


# ---------------------------------------------------------------------------------------
# Parity with the eager reference
# ---------------------------------------------------------------------------------------
SHAPES = [(1, 1), (1, 7), (3, 37), (5, 129), (2, 600), (3, 1100)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,T", SHAPES)
@pytest.mark.parametrize("gamma,lam", GL)
def test_forward_matches_reference(backend, dtype, B, T, gamma, lam):
    dev = device_for(backend)
    r, v, m = _inputs(B, T, dev, r_dtype=dtype, v_dtype=dtype)
    adv, ret = gae(r, v, m, gamma, lam, backend=backend)
    # Reference in fp32 on the same dtype-rounded inputs.
    adv_ref, ret_ref = gae_reference(r.float(), v.float(), m, gamma, lam)
    assert adv.dtype == ret.dtype == torch.float32
    assert adv.shape == ret.shape == (B, T)
    assert_close(adv, adv_ref, dtype, "advantages")
    assert_close(ret, ret_ref, dtype, "returns")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("r_dtype,v_dtype", [(torch.float32, torch.bfloat16), (torch.float16, torch.float32)])
def test_mixed_input_dtypes(backend, r_dtype, v_dtype):
    dev = device_for(backend)
    r, v, m = _inputs(4, 300, dev, r_dtype=r_dtype, v_dtype=v_dtype)
    adv, ret = gae(r, v, m, 0.99, 0.95, backend=backend)
    adv_ref, ret_ref = gae_reference(r.float(), v.float(), m, 0.99, 0.95)
    assert_close(adv, adv_ref, torch.float32, "advantages")
    assert_close(ret, ret_ref, torch.float32, "returns")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("whiten", [False, True])
def test_reference_backend_and_whiten_agree(backend, whiten):
    dev = device_for(backend)
    r, v, m = _inputs(6, 50, dev)
    adv, ret = gae(r, v, m, 0.9, 0.8, whiten=whiten, backend=backend)
    adv_ref, ret_ref = gae(r, v, m, 0.9, 0.8, whiten=whiten, backend="reference")
    assert_close(adv, adv_ref, torch.float32, "advantages")
    assert_close(ret, ret_ref, torch.float32, "returns")
    if whiten:  # returns come from the unwhitened advantages
        _, ret_plain = gae_reference(r, v, m, 0.9, 0.8)
        assert_close(ret, ret_plain, torch.float32, "returns (unwhitened)")


# ---------------------------------------------------------------------------------------
# Gradients: there are none, by design
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])
def test_outputs_are_targets_without_grad(backend):
    """GAE outputs are targets: even with inputs that require grad, no graph is built."""
    dev = device_for(backend)
    r, v, m = _inputs(3, 37, dev)
    r.requires_grad_(True)
    v.requires_grad_(True)
    adv, ret = gae(r, v, m, 0.99, 0.95, backend=backend)
    assert not adv.requires_grad and not ret.requires_grad
    with pytest.raises(RuntimeError):
        torch.autograd.grad((adv, ret), (r, v), grad_outputs=(torch.randn_like(adv), torch.randn_like(ret)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_function_marks_outputs_non_differentiable(backend):
    dev = device_for(backend)
    r, v, m = _inputs(2, 9, dev)
    r.requires_grad_(True)
    adv, ret = gae_mod.GAEFunction.apply(r, v, m, 0.99, 0.95, backend)
    assert not adv.requires_grad and not ret.requires_grad


# ---------------------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_all_masked_and_empty(backend):
    dev = device_for(backend)
    r, v, _ = _inputs(4, 33, dev)
    m = torch.zeros(4, 33, dtype=torch.bool, device=dev)
    adv, ret = gae(r, v, m, 0.99, 0.95, backend=backend)
    assert torch.equal(adv, torch.zeros_like(adv)) and torch.equal(ret, torch.zeros_like(ret))
    adv_w, _ = gae(r, v, m, 0.99, 0.95, whiten=True, backend=backend)  # N = 0: no NaN
    assert torch.equal(adv_w, torch.zeros_like(adv_w))
    for B, T in [(0, 5), (3, 0), (0, 0)]:
        e = torch.empty(B, T, device=dev)
        adv, ret = gae(e, e, torch.zeros(B, T, dtype=torch.bool, device=dev), 0.9, 0.9, backend=backend)
        assert adv.shape == ret.shape == (B, T) and adv.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_garbage_does_not_leak(backend):
    """inf/NaN in padded positions must not reach valid ones (select, not multiply)."""
    dev = device_for(backend)
    r, v, m = _inputs(5, 40, dev, lengths=torch.tensor([0, 1, 17, 39, 40]))
    r_bad = torch.where(m, r, torch.nan)
    v_bad = torch.where(m, v, torch.inf)
    adv, ret = gae(r_bad, v_bad, m, 0.99, 0.95, backend=backend)
    adv_ref, ret_ref = gae_reference(r, v, m, 0.99, 0.95)
    assert_close(adv, adv_ref, torch.float32, "advantages")
    assert_close(ret, ret_ref, torch.float32, "returns")


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    dev = device_for(backend)
    r, v, m = _inputs(37, 3, dev)
    r_t, v_t, m_t = r.t(), v.t(), m.t()  # [3, 37] views, not contiguous
    assert not r_t.is_contiguous()
    adv, ret = gae(r_t, v_t, m_t, 0.95, 0.9, backend=backend)
    adv_ref, ret_ref = gae_reference(r_t.contiguous(), v_t.contiguous(), m_t.contiguous(), 0.95, 0.9)
    assert_close(adv, adv_ref, torch.float32, "advantages")
    assert_close(ret, ret_ref, torch.float32, "returns")


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_hole_acts_as_episode_end(backend):
    """Documented behaviour for non-prefix masks: the recurrence restarts left of a hole."""
    dev = device_for(backend)
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]], device=dev)
    v = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.5]], device=dev)
    m = torch.tensor([[True, True, False, True, True]], device=dev)
    adv, ret = gae(r, v, m, 1.0, 1.0, backend=backend)
    # Left segment [0, 2): A_1 = 2 - 0.5 = 1.5 (V_2 masked -> 0); A_0 = 1 + 0.5 - 0.5 + 1.5 = 2.5.
    # Right segment [3, 5): A_4 = 5 - 0.5 = 4.5; A_3 = 4 + 0.5 - 0.5 + 4.5 = 8.5.
    expected = torch.tensor([[2.5, 1.5, 0.0, 8.5, 4.5]])
    assert_close(adv, expected, torch.float32, "advantages")
    assert_close(ret, torch.where(m.cpu(), expected + 0.5, 0.0), torch.float32, "returns")


def test_hand_worked_example():
    """3 tokens, γ = 0.5, λ = 0.5 (γλ = 0.25), last token padded.
    r = [1, 2, 9], V = [1, 2, 9], m = [1, 1, 0]:
      δ_1 = 2 + 0.5·0 − 2 = 0           (V_2 is past the last valid token -> 0)
      δ_0 = 1 + 0.5·2 − 1 = 1
      A = [1 + 0.25·0, 0, 0] = [1, 0, 0];  returns = [2, 2, 0]."""
    r = torch.tensor([[1.0, 2.0, 9.0]])
    m = torch.tensor([[True, True, False]])
    for backend in ["reference", *(["cpu"] if _dispatch.native_available("gae") else [])]:
        adv, ret = gae(r, r.clone(), m, 0.5, 0.5, backend=backend)
        assert torch.equal(adv, torch.tensor([[1.0, 0.0, 0.0]])), backend
        assert torch.equal(ret, torch.tensor([[2.0, 2.0, 0.0]])), backend


# ---------------------------------------------------------------------------------------
# Parity with the textbook reversed Python loop (float64)
# ---------------------------------------------------------------------------------------
def _textbook_cases(backend):
    long_t = 8192 if backend == "triton" else 2048
    long_b = 1 if backend == "triton" else 4
    return [(1, 1), (1, 50), (3, 37), (long_b, long_t)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gamma,lam", GL)
def test_matches_textbook_loop(backend, gamma, lam):
    dev = device_for(backend)
    for B, T in _textbook_cases(backend):
        r, v, m = _inputs(B, T, dev)
        if B >= 3:
            m[2] = False  # an all-masked row
        if B == 1 and T > 1000:
            m[0, : T - 7] = True  # nearly full long row: the whole chain is exercised
            m[0, T - 7 :] = False
        # Per-token RLHF-scale rewards (KL-penalty-sized); values ~ N(0, 1).
        r = r * 0.1
        adv, ret = gae(r, v, m, gamma, lam, backend=backend)
        adv64, ret64 = _textbook_gae(r.cpu(), v.cpu(), m.cpu(), gamma, lam)
        assert_close(adv, adv64, torch.float32, f"advantages {B}x{T}")
        assert_close(ret, ret64, torch.float32, f"returns {B}x{T}")


# ---------------------------------------------------------------------------------------
# Properties (hypothesis), on the native kernel (or the reference where it is missing)
# ---------------------------------------------------------------------------------------
_PROP_BACKEND = "cpu" if _dispatch.native_available("gae") else "reference"


@st.composite
def _batches(draw, prefix=True):
    B = draw(st.integers(1, 5))
    T = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, T, generator=g)
    v = torch.randn(B, T, generator=g)
    if prefix:
        lengths = torch.randint(0, T + 1, (B,), generator=g)
        m = _prefix_mask(lengths, T)
    else:
        m = torch.rand(B, T, generator=g) < 0.7
    gamma = draw(st.floats(0.0, 1.0))
    lam = draw(st.floats(0.0, 1.0))
    return r, v, m, gamma, lam


@given(_batches(), st.floats(-3.0, 3.0))
def test_property_linear_in_rewards(batch, alpha):
    r1, v, m, gamma, lam = batch
    r2 = torch.flip(r1, dims=[1]) * 0.5
    a_mix, _ = gae(alpha * r1 + r2, v, m, gamma, lam, backend=_PROP_BACKEND)
    a1, _ = gae(r1, torch.zeros_like(v), m, gamma, lam, backend=_PROP_BACKEND)
    a2, _ = gae(r2, v, m, gamma, lam, backend=_PROP_BACKEND)
    torch.testing.assert_close(a_mix, alpha * a1 + a2, atol=1e-4, rtol=1e-4)


@given(_batches())
def test_property_lambda_one_gives_reward_to_go(batch):
    r, v, m, _, _ = batch
    adv, ret = gae(r, v, m, 1.0, 1.0, backend=_PROP_BACKEND)
    # With γ = λ = 1 the value terms telescope: A_t + V_t = Σ_{s ≥ t, valid} r_s.
    rm = torch.where(m, r, 0.0)
    to_go = torch.flip(torch.cumsum(torch.flip(rm, dims=[1]), dim=1), dims=[1])
    torch.testing.assert_close(torch.where(m, adv + v, 0.0), torch.where(m, to_go, 0.0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ret, torch.where(m, to_go, 0.0), atol=1e-4, rtol=1e-4)


@given(_batches(prefix=False), st.booleans())
def test_property_masked_positions_exactly_zero(batch, whiten):
    r, v, m, gamma, lam = batch
    adv, ret = gae(r, v, m, gamma, lam, whiten=whiten, backend=_PROP_BACKEND)
    assert torch.all(adv[~m] == 0) and torch.all(ret[~m] == 0)
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()


@given(_batches())
def test_property_whitened_mean_zero_std_one(batch):
    r, v, m, gamma, lam = batch
    adv_raw, _ = gae(r, v, m, gamma, lam, backend=_PROP_BACKEND)
    adv, _ = gae(r, v, m, gamma, lam, whiten=True, backend=_PROP_BACKEND)
    x = adv[m].double()
    raw_std = adv_raw[m].double().std() if x.numel() >= 2 else torch.tensor(0.0)
    if x.numel() < 2 or raw_std < 1e-2:  # degenerate: nothing to normalise (eps dominates)
        return
    assert abs(x.mean().item()) < 1e-5
    assert abs(x.std(correction=1).item() - 1.0) < 1e-3


# ---------------------------------------------------------------------------------------
# Whitening across ranks
# ---------------------------------------------------------------------------------------
def _whiten_worker(rank: int, world: int, store_path: str, out_dir: str) -> None:
    import torch.distributed as dist

    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        torch.manual_seed(123)
        r, v, m = _inputs(6, 31, "cpu")
        rows = slice(rank * 3, (rank + 1) * 3)
        adv, ret = gae(r[rows], v[rows], m[rows], 0.99, 0.95, whiten=True, group=dist.group.WORLD)
        torch.save({"adv": adv, "ret": ret}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_whiten_with_group_matches_single_process(tmp_path):
    import torch.multiprocessing as mp

    if not torch.distributed.is_available():
        pytest.skip("torch.distributed unavailable")
    mp.spawn(_whiten_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(123)
    r, v, m = _inputs(6, 31, "cpu")
    adv_full, ret_full = gae(r, v, m, 0.99, 0.95, whiten=True)
    parts = [torch.load(tmp_path / f"rank{k}.pt") for k in range(2)]
    assert_close(torch.cat([p["adv"] for p in parts]), adv_full, torch.float32, "whitened advantages")
    assert_close(torch.cat([p["ret"] for p in parts]), ret_full, torch.float32, "returns")
    # and the local statistics alone would differ (the test can fail)
    adv_local, _ = gae(r[:3], v[:3], m[:3], 0.99, 0.95, whiten=True)
    assert not torch.allclose(adv_local, adv_full[:3], atol=1e-3)


def test_masked_whiten_unbiased_variance_by_hand():
    # x = [1, 2, 3] valid, 100 padded: mean 2, unbiased var (1 + 0 + 1) / 2 = 1 -> [-1, 0, 1, 0].
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[True, True, True, False]])
    torch.testing.assert_close(masked_whiten(x, m), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))


# ---------------------------------------------------------------------------------------
# Errors and backend selection
# ---------------------------------------------------------------------------------------
def test_argument_errors():
    r = torch.randn(2, 5)
    m = torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="rewards"):
        gae(r[0], r[0], m[0], 0.9, 0.9)
    with pytest.raises(ValueError, match="rewards"):
        gae(r.double(), r, m, 0.9, 0.9)
    with pytest.raises(ValueError, match="rewards"):
        gae(r.tolist(), r, m, 0.9, 0.9)
    with pytest.raises(ValueError, match="values"):
        gae(r, torch.randn(2, 6), m, 0.9, 0.9)
    with pytest.raises(ValueError, match="values"):
        gae(r, r.to(torch.int32), m, 0.9, 0.9)
    with pytest.raises(ValueError, match="values"):
        gae(r, r.to("meta"), m, 0.9, 0.9)
    with pytest.raises(ValueError, match="mask"):
        gae(r, r, m.float(), 0.9, 0.9)
    with pytest.raises(ValueError, match="mask"):
        gae(r, r, m[:, :4], 0.9, 0.9)
    for bad in (1.5, -0.1, float("nan"), "0.9", True):
        with pytest.raises(ValueError, match="gamma"):
            gae(r, r, m, bad, 0.9)
        with pytest.raises(ValueError, match="lam"):
            gae(r, r, m, 0.9, bad)
    with pytest.raises(ValueError, match="whiten"):
        gae(r, r, m, 0.9, 0.9, whiten="yes")
    with pytest.raises(ValueError, match="group"):
        gae(r, r, m, 0.9, 0.9, group="world")
    with pytest.raises(ValueError, match="backend"):
        gae(r, r, m, 0.9, 0.9, backend="cuda")


def test_backend_none_and_env_override(monkeypatch):
    r, v, m = _inputs(3, 11, "cpu")
    calls = []
    real_ref = gae_mod.gae_reference
    monkeypatch.setattr(
        gae_mod, "gae_reference", lambda *a, **k: calls.append("reference") or real_ref(*a, **k)
    )
    real_apply = gae_mod.GAEFunction.apply
    monkeypatch.setattr(
        gae_mod.GAEFunction, "apply", lambda *a: calls.append(a[-1]) or real_apply(*a), raising=True
    )
    monkeypatch.delenv("FGKERNELS_BACKEND", raising=False)
    gae(r, v, m, 0.9, 0.9)
    assert calls == ["cpu" if _dispatch.native_available("gae") else "reference"]
    calls.clear()
    monkeypatch.setenv("FGKERNELS_BACKEND", "reference")
    gae(r, v, m, 0.9, 0.9, backend="cpu")  # the environment wins over the argument
    assert calls == ["reference"]
    if _dispatch.native_available("gae"):
        calls.clear()
        monkeypatch.setenv("FGKERNELS_BACKEND", "cpu")
        gae(r, v, m, 0.9, 0.9, backend="reference")
        assert calls == ["cpu"]
