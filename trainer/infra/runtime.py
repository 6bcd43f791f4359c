"""What every trainer does before its first step and around its loop, written once.

:func:`start_run` is step 0 of every entry point: validate the config, determinism, the process
group, CPU threads, the output directory and the resolved config (printed and saved). Also here:
the optimizer, the learning-rate schedule, device timing and peak memory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.infra.config import ConfigError, TrainConfig, to_yaml
from trainer.infra.dist import DistInfo, init_distributed

__all__ = ["Run", "build_optimizer", "device_sync", "lr_lambda", "peak_memory_mb", "start_run"]


@dataclass
class Run:
    """A started run: its config, where this process stands, and where outputs go.

    Attributes:
        cfg: the validated config.
        di: rank, world size, device and mesh of this process.
        out_dir: ``cfg.output_dir`` (created by rank 0).
        name: the trainer's name, prefixed to every message.
    """

    cfg: TrainConfig
    di: DistInfo
    out_dir: Path
    name: str

    def say(self, msg: str) -> None:
        """Print ``[name] msg`` on rank 0 (through tqdm, so a progress bar stays intact)."""
        if self.di.is_main:
            from tqdm import tqdm

            tqdm.write(f"[{self.name}] {msg}")


def start_run(cfg: TrainConfig, name: str) -> Run:
    """Step 0 of every trainer (called on every rank): ``cfg.check()``, deterministic algorithms,
    the process group and device mesh, CPU threads (cores / local processes), the output
    directory, and the resolved config printed and written to ``output_dir/config.yaml``."""
    cfg.check()
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    di = init_distributed(cfg.device)
    if di.device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // local_world))
    out_dir = Path(cfg.output_dir)
    if di.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(to_yaml(cfg))
        print(f"[{name}] resolved config:\n{to_yaml(cfg)}", flush=True)
    return Run(cfg=cfg, di=di, out_dir=out_dir, name=name)


def build_optimizer(model: nn.Module, lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over every parameter of ``model`` with ``cfg``'s betas and weight decay
    (``optimizer=adamw8bit``: bitsandbytes, imported only when chosen)."""
    kw: dict[str, Any] = {"lr": lr, "betas": tuple(cfg.betas), "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise ConfigError(
                "optimizer='adamw8bit' needs bitsandbytes (pip install 'bitsandbytes>=0.44'); "
                "or use optimizer=adamw"
            ) from e
        return bnb.optim.AdamW8bit(model.parameters(), **kw)
    return torch.optim.AdamW(model.parameters(), **kw)


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warmup to 1 over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``
    (a ``LambdaLR`` multiplier)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def device_sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so a wall-clock phase time is real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or this process's peak RSS on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
