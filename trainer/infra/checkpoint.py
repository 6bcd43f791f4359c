"""Training checkpoints for exact resume, with ``torch.distributed.checkpoint`` (DCP).

A checkpoint is a directory ``<root>/step_00000120/`` holding

* the sharded model and optimizer state (DCP files; ``get_state_dict``/``set_state_dict``
  turn FSDP2 DTensors into a resharding-safe layout, so a run may resume on another world size);
* ``extra_rank<R>.pt`` per rank: whatever the trainer passes (scheduler state, data position)
  plus this rank's RNG states (torch CPU/CUDA, python, numpy).

Atomic: everything is written into ``<root>/.tmp-step_00000120/`` and renamed to its final name
only when every rank has finished, so a run killed mid-save leaves at most a temp directory,
which is ignored and cleaned up. Only ``keep`` complete checkpoints are kept.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

__all__ = ["Checkpointer", "get_rng_state", "set_rng_state"]

_STEP_RE = re.compile(r"^step_(\d+)$")


def get_rng_state() -> dict[str, Any]:
    """This process's RNG states: torch CPU (and CUDA), python ``random``, numpy."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}  # noqa: NPY002
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002 (the global state is what we restore)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


class Checkpointer:
    """Saves and restores (model, optimizer, extra state, RNG) under ``root``.

    Args:
        root: the checkpoint directory (``<output_dir>/checkpoints``); shared by all ranks.
        keep: how many complete checkpoints to keep (oldest removed first; 0 keeps all).
    """

    def __init__(self, root: str | Path, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def complete(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of every complete checkpoint, oldest first."""
        if not self.root.is_dir():
            return []
        out = []
        for p in self.root.iterdir():
            m = _STEP_RE.match(p.name)
            if m and p.is_dir() and (p / ".metadata").exists():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        done = self.complete()
        return done[-1][1] if done else None

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, extra: dict) -> Path:
        """Write checkpoint ``step`` (collective: every rank calls it). ``extra`` must be
        picklable; RNG states are added per rank."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        final = self.root / f"step_{step:08d}"
        tmp = self.root / f".tmp-step_{step:08d}"
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
        torch.save({**extra, "rng": get_rng_state()}, tmp / f"extra_rank{_rank()}.pt")
        _barrier()
        if _rank() == 0:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)  # atomic: the checkpoint appears complete or not at all
            self._prune()
        _barrier()
        return final

    def load(self, path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """Restore model and optimizer in place and this rank's RNG states; return ``extra``
        (collective). A rank with no file of its own (new world size) takes rank 0's RNG."""
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        path = Path(path)
        if not (path / ".metadata").exists():
            raise FileNotFoundError(f"{path}: not a complete checkpoint (no .metadata)")
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        own = path / f"extra_rank{_rank()}.pt"
        extra = torch.load(own if own.exists() else path / "extra_rank0.pt", weights_only=False)
        set_rng_state(extra.pop("rng"))
        return extra

    def _prune(self) -> None:
        for p in self.root.glob(".tmp-step_*"):  # left by a run killed mid-save
            shutil.rmtree(p, ignore_errors=True)
        done = self.complete()
        if self.keep > 0:
            for _, p in done[: -self.keep]:
                shutil.rmtree(p, ignore_errors=True)
