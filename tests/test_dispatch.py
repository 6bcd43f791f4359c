"""Backend selection rules shared by every op."""

import pytest
import torch

from fgkernels import _dispatch

CPU = torch.device("cpu")


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="backend='fast'"):
        _dispatch.resolve_backend("gae", "fast", CPU)


def test_env_override_wins_and_is_validated(monkeypatch):
    monkeypatch.setenv("FGKERNELS_BACKEND", "reference")
    assert _dispatch.resolve_backend("gae", "cpu", CPU) == "reference"
    monkeypatch.setenv("FGKERNELS_BACKEND", "gpu")
    with pytest.raises(ValueError, match="FGKERNELS_BACKEND"):
        _dispatch.resolve_backend("gae", None, CPU)


def test_cpu_backend_refuses_cuda_tensors():
    with pytest.raises(ValueError, match="backend='cpu' needs CPU tensors"):
        _dispatch.resolve_backend("gae", "cpu", torch.device("cuda"))


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    if not _dispatch.TRITON_AVAILABLE:
        pytest.skip("triton not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        _dispatch.resolve_backend("gae", "triton", CPU)


def test_missing_native_module_falls_back_with_one_warning():
    op = "no_such_op"
    with pytest.warns(UserWarning, match="_C_no_such_op is unavailable"):
        assert _dispatch.resolve_backend(op, None, CPU) == "reference"
    with pytest.raises(ValueError, match="_C_no_such_op is unavailable"):
        _dispatch.resolve_backend(op, "cpu", CPU)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ndim": 3}, "x must have 3 dimensions"),
        ({"dtypes": [torch.float16]}, "x must have dtype"),
        ({"shape": (3, None, 4)}, r"x must have shape \(3, '\*', 4\)"),
    ],
)
def test_check_tensor_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _dispatch.check_tensor("x", torch.zeros(2, 3), **kwargs)


def test_check_tensor_rejects_non_tensors():
    with pytest.raises(ValueError, match="x must be a torch.Tensor"):
        _dispatch.check_tensor("x", [1, 2])
