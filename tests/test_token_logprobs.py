"""fgkernels.token_logprobs: every backend x dtype against the eager reference, forward and
backward (random upstream gradients on both outputs), edge cases, errors, dispatch, memory."""

from __future__ import annotations

import importlib

import pytest
import torch
from _utils import DTYPES, assert_close, backends, device_for

from fgkernels import _dispatch
from fgkernels.token_logprobs import token_logprobs, token_logprobs_reference

# The module itself (the package attribute fgkernels.<op> is the public function).
tlp = importlib.import_module("fgkernels.token_logprobs")


def _bench_common():
    """bench/common.py (the shared memory probe; pytest puts the repo root on sys.path)."""
    return importlib.import_module("bench.common")


IGNORE = -100


def _triton_usable() -> bool:
    return _dispatch.TRITON_AVAILABLE and (torch.cuda.is_available() or _dispatch.triton_interpret())


def _labels(B: int, T: int, V: int, ignore_frac: float = 0.2) -> torch.Tensor:
    labels = torch.randint(0, V, (B, T))
    labels[torch.rand(B, T) < ignore_frac] = IGNORE
    return labels


def _check(
    backend: str,
    dtype: torch.dtype,
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = True,
    ignore_index: int = IGNORE,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Run kernel and fp32 reference on the same (dtype-rounded) logits; compare outputs and
    grads at TOLERANCES[dtype]. Returns (kernel outputs, kernel grad_logits)."""
    dev = device_for(backend)
    logits = logits.to(dtype)
    x = logits.detach().to(dev).requires_grad_()
    xr = logits.detach().float().requires_grad_()  # fp32 reference on the same rounded values
    out = token_logprobs(x, labels.to(dev), temperature, return_entropy, ignore_index, backend=backend)
    ref = token_logprobs_reference(xr, labels, temperature, return_entropy, ignore_index)
    outs = out if return_entropy else (out,)
    refs = ref if return_entropy else (ref,)
    B, T = labels.shape
    for o, r, name in zip(outs, refs, ("logp", "entropy")):
        assert o.dtype == torch.float32 and o.shape == (B, T), f"{name}: {o.dtype} {tuple(o.shape)}"
        assert_close(o, r, dtype, name)
    assert (outs[0] <= 0).all(), "logp must never be positive"
    ups = [torch.randn(B, T) for _ in outs]
    (g,) = torch.autograd.grad(outs, (x,), [u.to(dev) for u in ups])
    (gr,) = torch.autograd.grad(refs, (xr,), ups)
    assert g.dtype == dtype and g.shape == logits.shape
    assert_close(g, gr, dtype, "grad_logits")
    ignored = labels == ignore_index
    assert (outs[0].cpu()[ignored] == 0).all()
    if return_entropy:
        assert (outs[1].cpu()[ignored] == 0).all()
    assert (g.cpu()[ignored] == 0).all(), "ignored positions must get exactly zero gradient"
    return outs, g


@pytest.mark.parametrize("backend", backends("token_logprobs"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape", [(1, 1, 50), (3, 37, 1271), (2, 3, 5000)], ids=lambda s: "x".join(map(str, s))
)
def test_matches_reference(backend, dtype, shape):
    B, T, V = shape
    _check(backend, dtype, torch.randn(B, T, V) * 3, _labels(B, T, V), temperature=0.7)


@pytest.mark.parametrize("backend", backends("token_logprobs"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("return_entropy", [False, True])
def test_temperature_and_entropy_modes(backend, dtype, return_entropy):
    _check(backend, dtype, torch.randn(2, 9, 333) * 2, _labels(2, 9, 333), 1.3, return_entropy)


@pytest.mark.parametrize("backend", backends("token_logprobs"))
def test_one_output_used(backend):
    """Gradient of only one of (logp, entropy): the other's upstream gradient is absent."""
    dev = device_for(backend)
    logits, labels = torch.randn(3, 7, 301), _labels(3, 7, 301)
    for k in (0, 1):
        x = logits.clone().to(dev).requires_grad_()
        xr = logits.clone().requires_grad_()
        out = token_logprobs(x, labels.to(dev), 0.9, True, backend=backend)[k]
        ref = token_logprobs_reference(xr, labels, 0.9, True)[k]
        up = torch.randn(3, 7)
        (g,) = torch.autograd.grad(out, x, up.to(dev))
        (gr,) = torch.autograd.grad(ref, xr, up)
        assert_close(g, gr, torch.float32, f"grad via output {k}")


@pytest.mark.triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_block_loop(dtype, monkeypatch):
    """A small BLOCK forces many online-logsumexp rescalings per row (V = 1271 -> 10 blocks)."""
    if not _triton_usable():
        pytest.skip("triton backend unavailable here")
    calls = []

    def small(V):
        calls.append(V)
        return {"BLOCK": 128, "num_warps": 4}

    monkeypatch.setattr(tlp, "_triton_config", small)
    # increasing logits along V make the running max grow in every block
    logits = torch.randn(3, 5, 1271) + torch.linspace(0, 8, 1271)
    _check("triton", dtype, logits, _labels(3, 5, 1271), temperature=0.7)
    assert calls and all(v == 1271 for v in calls)


@pytest.mark.parametrize("backend", backends("token_logprobs"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_all_ignored_and_empty(backend, dtype):
    dev = device_for(backend)
    labels = torch.full((2, 6), IGNORE)
    outs, g = _check(backend, dtype, torch.randn(2, 6, 97), labels, 0.7, True)
    assert (outs[0] == 0).all() and (outs[1] == 0).all() and (g == 0).all()
    # an empty response dimension (T = 0)
    x = torch.randn(2, 0, 97, dtype=dtype, device=dev, requires_grad=True)
    lp, ent = token_logprobs(
        x, torch.zeros(2, 0, dtype=torch.long, device=dev), return_entropy=True, backend=backend
    )
    assert lp.shape == (2, 0) and ent.shape == (2, 0)
    (lp.sum() + ent.sum()).backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("backend", backends("token_logprobs"))
def test_custom_ignore_index_and_noncontiguous(backend):
    base = torch.randn(37, 3, 211)
    logits = base.transpose(0, 1)  # [3, 37, 211], not contiguous
    labels = torch.randint(0, 211, (37, 3)).t()
    labels[:, ::4] = 0  # label 0 doubles as the ignore index here
    _check(backend, torch.float32, logits, labels, 1.0, True, ignore_index=0)


@pytest.mark.parametrize("backend", backends("token_logprobs"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_logp_never_positive_with_dominant_logits(backend, dtype):
    """Rows where the label's logit dominates: p_label == 1 up to rounding, logp must be <= 0."""
    B, T, V = 2, 4, 1000
    logits = torch.randn(B, T, V)
    labels = torch.randint(0, V, (B, T))
    big = 1e4 if dtype == torch.float32 else torch.finfo(torch.bfloat16).max
    rows = torch.arange(B)[:, None], torch.arange(T)[None, :]
    logits[rows[0], rows[1], labels] = torch.tensor([[big, 40.0, 25.0, 17.0]] * B)
    outs, g = _check(backend, dtype, logits, labels, 1.0, True)
    assert (outs[0] <= 0).all() and torch.isfinite(g.float()).all()
    assert (outs[0][:, 0] == 0).all()  # exp(-1e4) underflows: log p is exactly 0, not +eps


@pytest.mark.parametrize("backend", backends("token_logprobs"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_neg_inf_logits(backend, dtype):
    """-inf logits (masked vocabulary) anywhere but the label: p = 0 there, finite results."""
    B, T, V = 2, 5, 300
    logits = torch.randn(B, T, V) * 2
    logits[torch.rand(B, T, V) < 0.3] = float("-inf")
    logits[1, 2, 17:] = float("-inf")  # a row with a fully masked tail (whole blocks of -inf)
    labels = torch.randint(0, 17, (B, T))
    logits.scatter_(-1, labels[..., None], 1.0)  # the label itself is finite
    outs, g = _check(backend, dtype, logits, labels, 0.8, True)
    assert torch.isfinite(outs[1]).all()


# --- errors ----------------------------------------------------------------------------
def test_errors_name_the_argument():
    logits, labels = torch.randn(2, 3, 11), torch.randint(0, 11, (2, 3))
    cases = [
        (dict(logits=logits[0]), "logits"),
        (dict(logits=logits.long()), "logits"),
        (dict(logits=logits.double()), "logits"),
        (dict(logits=torch.randn(2, 3, 0)), "logits"),
        (dict(labels=labels.int()), "labels"),
        (dict(labels=labels[:, :2]), "labels"),
        (dict(labels=labels.to("meta")), "labels"),
        (dict(labels=torch.full((2, 3), 11)), "labels"),
        (dict(labels=torch.full((2, 3), -1)), "labels"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=torch.tensor(1.0)), "temperature"),
        (dict(return_entropy="yes"), "return_entropy"),
        (dict(ignore_index=1.5), "ignore_index"),
        (dict(backend="cuda"), "backend"),
    ]
    for kwargs, name in cases:
        args = dict(logits=logits, labels=labels) | kwargs
        with pytest.raises(ValueError, match=name):
            token_logprobs(**args)
    # ignore_index itself is allowed outside [0, V)
    assert token_logprobs(logits, torch.full((2, 3), IGNORE), backend="reference").abs().sum() == 0


# --- dispatch --------------------------------------------------------------------------
def _spy_reference(monkeypatch) -> list:
    calls = []
    real = tlp.token_logprobs_reference

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(tlp, "token_logprobs_reference", spy)
    return calls


def test_backend_none_picks_native_cpu(monkeypatch):
    monkeypatch.delenv("FGKERNELS_BACKEND", raising=False)
    calls = _spy_reference(monkeypatch)
    triton_calls = []
    monkeypatch.setattr(tlp, "_triton_fwd", lambda *a: triton_calls.append(1))
    out = token_logprobs(torch.randn(2, 3, 50), torch.randint(0, 50, (2, 3)))
    expected = "reference" if not _dispatch.native_available("token_logprobs") else "cpu"
    assert (len(calls) == 1) == (expected == "reference") and not triton_calls
    assert out.shape == (2, 3)


def test_env_override(monkeypatch):
    calls = _spy_reference(monkeypatch)
    monkeypatch.setenv("FGKERNELS_BACKEND", "reference")
    token_logprobs(torch.randn(2, 3, 50), torch.randint(0, 50, (2, 3)), backend="cpu")
    assert calls == [1], "FGKERNELS_BACKEND=reference must override backend='cpu'"
    monkeypatch.setenv("FGKERNELS_BACKEND", "bogus")
    with pytest.raises(ValueError, match="FGKERNELS_BACKEND"):
        token_logprobs(torch.randn(2, 3, 50), torch.randint(0, 50, (2, 3)))


@pytest.mark.triton
def test_env_override_triton(monkeypatch):
    if not _triton_usable():
        pytest.skip("triton backend unavailable here")
    launched = []
    real = tlp._triton_fwd
    monkeypatch.setattr(tlp, "_triton_fwd", lambda *a: launched.append(1) or real(*a))
    monkeypatch.setenv("FGKERNELS_BACKEND", "triton")
    dev = device_for("triton")
    token_logprobs(torch.randn(2, 3, 50, device=dev), torch.randint(0, 50, (2, 3), device=dev), backend="cpu")
    assert launched == [1]


# --- memory ----------------------------------------------------------------------------
@pytest.mark.skipif(not _dispatch.native_available("token_logprobs"), reason="native module unavailable")
def test_cpu_forward_does_not_materialise_btv():
    """Forward peak extra < 25% of B*T*V*4 bytes; the reference (which does materialise)
    exceeds it, so the probe can fail."""
    B, T, V = 2, 64, 8000
    logits, labels = torch.randn(B, T, V), torch.randint(0, V, (B, T))
    budget = 0.25 * B * T * V * 4
    peak_memory_bytes = _bench_common().peak_memory_bytes
    fused = peak_memory_bytes(lambda: token_logprobs(logits, labels, 0.7, True, backend="cpu"), logits.device)
    ref = peak_memory_bytes(lambda: token_logprobs_reference(logits, labels, 0.7, True), logits.device)
    assert ref > budget, f"probe broken: reference peak {ref} B"
    assert fused < budget, f"forward peak {fused} B >= {budget} B"
