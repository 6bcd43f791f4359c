"""Training checkpoints for exact resume, with ``torch.distributed.checkpoint`` (DCP), that
survive damage.

A checkpoint is a directory ``<root>/step_00000120/`` holding

* the sharded state of every model and optimizer the trainer passes (DCP files;
  ``get_state_dict``/``set_state_dict`` turn FSDP2 DTensors into a resharding-safe layout, so a
  run may resume on another world size), one checkpoint for all of them (PPO: actor + critic);
* ``extra_rank<R>.pt`` per rank: the trainer's counters (plain Python types and tensors) plus
  this rank's RNG states, stored as tensors and plain types and loaded with
  ``torch.load(..., weights_only=True)`` — loading someone else's checkpoint cannot run code;
* ``manifest.json``: the step, the world size and the size of every file, written last.

Atomic: everything is written into ``<root>/.tmp-step_00000120/`` and renamed to its final name
only when every rank has finished, so a run killed mid-save leaves at most a temp directory,
which is ignored and cleaned up. Only ``keep`` complete checkpoints are kept (2 by default).

Damage: before loading, a checkpoint is checked against its manifest (every file present, with
its recorded size; ``.metadata`` present). :meth:`Checkpointer.load_latest` takes the newest
intact checkpoint; when the newest is damaged it says so in one line and falls back to the next,
and only when none is intact does it fail, with :class:`CheckpointError` naming the directory.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from trainer.errors import CheckpointError, describe
from trainer.fake import in_dry_run
from trainer.infra.dist import (
    all_reduce_sum,
    barrier,
    broadcast_object,
    collective_device,
    get_rank,
    get_world_size,
    on_rank0,
)

__all__ = ["CheckpointError", "Checkpointer", "get_rng_state", "set_rng_state"]

_STEP_RE = re.compile(r"^step_(\d+)$")
MANIFEST = "manifest.json"

# name -> (model, optimizer): what one checkpoint holds.
Parts = dict[str, tuple[nn.Module, torch.optim.Optimizer]]


def get_rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain types (``weights_only``-loadable):
    torch CPU (and CUDA), python ``random``, numpy."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global state)
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (the global state is what we restore)
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    """Saves and restores (models, optimizers, extra state, RNG) under ``root``.

    Args:
        root: the checkpoint directory (``<output_dir>/checkpoints``); shared by all ranks.
        keep: how many complete checkpoints to keep (oldest removed first; 0 keeps all).
        say: where the one-line damage notices go (default: print on rank 0).
    """

    def __init__(self, root: str | Path, keep: int = 2, say=None):
        self.root = Path(root)
        self.keep = keep
        self.say = say or (lambda msg: print(msg, flush=True) if get_rank() == 0 else None)

    def complete(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of every renamed (finished) checkpoint, oldest first; not yet
        checked for damage (see :meth:`damage`)."""
        if not self.root.is_dir():
            return []
        out = []
        for p in self.root.iterdir():
            m = _STEP_RE.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p))
        return sorted(out)

    @staticmethod
    def damage(path: Path) -> str | None:
        """Why the checkpoint at ``path`` cannot be loaded, or None when it is intact: a missing
        or unreadable manifest, a missing ``.metadata``, a missing file or one whose size differs
        from the manifest's (a truncated shard)."""
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            files = dict(manifest["files"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"no readable {MANIFEST} ({type(e).__name__})"
        if ".metadata" not in files:
            return "the manifest lists no .metadata"
        for name, size in sorted(files.items()):
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            if f.stat().st_size != size:
                return f"{name} has {f.stat().st_size} bytes, the manifest says {size} (truncated?)"
        return None

    def save(self, step: int, parts: Parts, extra: dict) -> Path:
        """Write checkpoint ``step`` (collective: every rank calls it). ``extra``: plain Python
        types and tensors only; RNG states are added per rank."""
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f".tmp-step_{step:08d}"
        rank = get_rank()

        def fresh_tmp() -> None:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

        on_rank0(fresh_tmp)  # rank 0 prepares, the others wait (a failure stops every rank)
        state = {}
        for name, (model, optimizer) in parts.items():
            model_sd, optim_sd = get_state_dict(model, optimizer)
            state[name] = {"model": model_sd, "optim": optim_sd}
        if in_dry_run():  # fake tensors have no bytes: the state dicts a save holds are built, not written
            return tmp
        dcp.save(state, checkpoint_id=str(tmp))
        torch.save({**extra, "rng": get_rng_state()}, tmp / f"extra_rank{rank}.pt")
        barrier()
        world = get_world_size()

        def publish() -> None:
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            manifest = {"step": step, "world_size": world, "files": files}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)  # atomic: the checkpoint appears complete or not at all
            self._prune(step)

        on_rank0(publish)
        return final

    def load_latest(self, parts: Parts) -> tuple[int, dict] | None:
        """Restore the newest intact checkpoint into ``parts`` (collective). Returns
        ``(step, extra)``, or None when there is no checkpoint at all.

        A damaged checkpoint (see :meth:`damage`, or one whose files fail to load) is named in one
        line and skipped for the next older one.

        Raises:
            CheckpointError: checkpoints exist but none is intact.
        """
        tried: list[str] = []
        candidates = broadcast_object(self.complete() if get_rank() == 0 else None)  # rank 0's view
        for step, path in reversed(candidates):
            # rank 0 decides (every rank then loads the same one)
            why = broadcast_object(self.damage(path) if get_rank() == 0 else None)
            if why is None:
                extra, why = self._try_load(path, parts)
                if why is None:
                    return step, extra
            self.say(f"checkpoint {path} is damaged ({why}); trying an older one")
            tried.append(f"{path.name}: {why}")
        if candidates:
            raise CheckpointError(
                f"{self.root}: no intact checkpoint to resume from ({'; '.join(tried)}); "
                "remove the directory to start over, or set resume=false"
            )
        return None

    def _try_load(self, path: Path, parts: Parts) -> tuple[dict | None, str | None]:
        state, error = {}, None
        try:
            for name, (model, optimizer) in parts.items():
                model_sd, optim_sd = get_state_dict(model, optimizer)
                state[name] = {"model": model_sd, "optim": optim_sd}
            dcp.load(state, checkpoint_id=str(path))
        except Exception as e:  # noqa: BLE001 - DCP raises CheckpointException on every rank
            error = f"unreadable state ({describe(e)})"
        extra = None
        if error is None:
            own = path / f"extra_rank{get_rank()}.pt"
            try:
                # a rank with no file of its own (new world size) takes rank 0's counters and RNG
                extra = torch.load(own if own.exists() else path / "extra_rank0.pt", weights_only=True)
            except Exception as e:  # noqa: BLE001
                error = f"unreadable {own.name} ({type(e).__name__})"
        # every rank must agree before anything is applied
        failed = all_reduce_sum(torch.tensor([float(error is not None)], device=collective_device()))
        if failed.item() > 0:
            return None, error or "unreadable on another rank"
        for name, (model, optimizer) in parts.items():
            set_state_dict(
                model, optimizer, model_state_dict=state[name]["model"], optim_state_dict=state[name]["optim"]
            )
        set_rng_state(extra.pop("rng"))
        return extra, None

    def _prune(self, newest: int) -> None:
        for p in self.root.glob(".tmp-step_*"):  # left by a run killed mid-save
            shutil.rmtree(p, ignore_errors=True)
        for s, p in self.complete():  # later steps than the one just written: an abandoned future
            if s > newest:  # (e.g. the damaged checkpoint this run fell back from)
                shutil.rmtree(p, ignore_errors=True)
        done = self.complete()
        if self.keep > 0:
            for _, p in done[: -self.keep]:
                shutil.rmtree(p, ignore_errors=True)
