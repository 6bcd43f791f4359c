"""Fake-tensor helpers of the dry run (bottom layer: no ``trainer`` imports). Code on the real
path asks :func:`in_dry_run` / :func:`is_fake` and reads tensor values through
:func:`host_item` / :func:`host_list`; ``trainer.infra.dryrun.fake_world`` sets :data:`_ACTIVE`.
Re-exported by ``trainer.infra.dryrun``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["host_item", "host_list", "in_dry_run", "is_fake", "real_tensors"]

_ACTIVE: list[bool] = []  # one entry per open fake_world (trainer.infra.dryrun mutates this list)


def in_dry_run() -> bool:
    """True inside :func:`~trainer.infra.dryrun.fake_world`."""
    return bool(_ACTIVE)


def is_fake(t: Any) -> bool:
    """True for a ``FakeTensor`` (a dry run's tensors)."""
    from torch._subclasses.fake_tensor import is_fake as _is_fake  # lazy: private torch module, dry runs

    return isinstance(t, torch.Tensor) and _is_fake(t)


def host_item(t: torch.Tensor, fake_value: float = 0.0) -> float:
    """``t.item()``, or ``fake_value`` for a fake tensor (no data to copy)."""
    return fake_value if is_fake(t) else t.item()


def host_list(t: torch.Tensor, fake_value: float = 0.0) -> list:
    """``t.tolist()`` of a 1-D tensor, or ``[fake_value] * numel`` for a fake tensor."""
    return [fake_value] * t.numel() if is_fake(t) else t.tolist()


def real_tensors():
    """A context in which new tensors are real even inside a dry run's ``FakeTensorMode`` (for
    the data order: a permutation of indices is computed on the host and must have values)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily  # lazy: private torch module

    return unset_fake_temporarily()
