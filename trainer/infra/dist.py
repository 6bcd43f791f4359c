"""Distributed set-up and FSDP2 sharding (torchtitan style).

``init_distributed()`` works under ``torchrun`` (reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``)
and as a plain ``python`` process (a world of one on a free local port), so every entry point
has exactly one code path. The backend is NCCL with CUDA, gloo on CPU.

``parallelize(model, mesh, ...)`` applies activation checkpointing, then ``fully_shard`` to
every decoder layer, then to the root, with a ``MixedPrecisionPolicy``: parameters are
all-gathered in ``param_dtype`` (bf16 on GPUs) and gradients reduce-scattered in
``reduce_dtype`` (fp32). On CPU use ``param_dtype=float32``: bf16 matmuls on CPU are slow.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from trainer.errors import PeerFailure
from trainer.fake import in_dry_run

__all__ = [
    "DTYPES",
    "DistInfo",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "collective_device",
    "default_cuda_alloc_conf",
    "exit_process",
    "gather_objects",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "on_rank0",
    "PeerFailure",
    "parallelize",
    "shutdown",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node,
    its ``device``, and the 1-D data-parallel ``mesh`` (FSDP shards over it)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: object

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the rank that logs and writes shared files)."""
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CUDA_ALLOC_CONF = "expandable_segments:True"


def default_cuda_alloc_conf() -> str:
    """``PYTORCH_CUDA_ALLOC_CONF``: the user's when set, else :data:`CUDA_ALLOC_CONF` (set in this
    process's environment, before the CUDA allocator starts). Expandable segments let the caching
    allocator grow a segment instead of leaving fragments of fixed-size blocks: generation's KV
    cache, the score phase's logits and training's activations come and go in different sizes
    every iteration (torchtitan sets the same)."""
    return os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", CUDA_ALLOC_CONF)


def init_distributed(device: str = "auto", timeout_min: float = 60.0) -> DistInfo:
    """Initialise the default process group (once) and a 1-D device mesh.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cuda"`` or ``"cpu"``.
        timeout_min: how long a collective waits for the slowest rank (every backend).
    """
    # Under torchrun the launcher's env (RANK, WORLD_SIZE, MASTER_*) says everything. Without it
    # (`python script.py`, or a test calling this in-process) this is a world of one on a private
    # TCP port; os.environ is left untouched, so child processes (e.g. a torchrun started later
    # by the same process) never inherit a fake rank or port.
    single = "RANK" not in os.environ
    rank = 0 if single else int(os.environ["RANK"])
    world = 1 if single else int(os.environ["WORLD_SIZE"])
    local_rank = 0 if single else int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        default_cuda_alloc_conf()
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        timeout = timedelta(minutes=timeout_min)
        if single:
            init = f"tcp://127.0.0.1:{_free_port()}"
            dist.init_process_group(backend=backend, init_method=init, rank=0, world_size=1, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timeout)
    rank, world = dist.get_rank(), dist.get_world_size()
    from torch._subclasses.fake_tensor import unset_fake_temporarily  # lazy: private torch module

    with unset_fake_temporarily():  # a dry run's FakeTensorMode: the mesh's rank table is real
        mesh = init_device_mesh(dev.type, (world,), mesh_dim_names=("dp",))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev, mesh=mesh)


def shutdown() -> None:
    """Destroy the process group if one is up."""
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End an entry-point process with ``code`` right away: flush stdout/stderr, then
    ``os._exit``. Interpreter finalization is skipped on purpose: gloo worker threads can still
    hold tensors then, and releasing them without a live interpreter aborts the process
    (SIGABRT, "terminate called without an active exception"; seen here once in a few dozen
    2-process runs, after every output was written; pytorch/pytorch#179291). Every output is
    already closed and renamed into place when ``main`` returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    if dist.is_initialized():
        dist.barrier()


def gather_objects(obj: object) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank (a dry run's fake world:
    rank 0's object stands for every rank's; fake tensors cannot be pickled)."""
    if get_world_size() == 1 or in_dry_run():
        return [obj] * get_world_size()
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (what the others pass is ignored)."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def collective_device() -> torch.device:
    """Where a small tensor for a collective must live: the current CUDA device under NCCL,
    else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def on_rank0(fn, *args, **kwargs):
    """Run ``fn`` on rank 0 only while the others wait (collective). If it raises, rank 0 re-raises
    its own exception and every other rank raises :class:`PeerFailure` with its text, instead of
    hanging in the next collective. Returns ``fn``'s result on rank 0, None elsewhere."""
    result, error, failure = None, None, None
    if get_rank() == 0:
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            failure, error = e, f"{type(e).__name__}: {e}"
    error = broadcast_object(error)
    if error is not None:
        if failure is not None:
            raise failure
        raise PeerFailure(f"rank 0 failed: {error}")
    return result


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place SUM all-reduce over the default group (a no-op without one); returns ``t``."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a Hugging Face decoder (``model.<base_model_prefix>.layers``)."""
    base = getattr(model, model.base_model_prefix, model)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: no decoder layers at .{model.base_model_prefix}.layers")
    return layers


def parallelize(
    model: nn.Module,
    mesh: object,
    param_dtype: str = "bfloat16",
    reduce_dtype: str = "float32",
    activation_checkpointing: bool = True,
) -> nn.Module:
    """Activation checkpointing, then FSDP2 per decoder layer, then the root (in place).

    Call it on a model built on the ``meta`` device, then ``model.to_empty(device=...)`` and
    load weights. Activation checkpointing is the Hugging Face one (non-reentrant
    ``torch.utils.checkpoint`` around each decoder layer): it keeps parameter names unchanged,
    so state dicts and ``save_pretrained`` need no renaming.

    Args:
        model: a Hugging Face decoder model (anything with ``.<base_model_prefix>.layers``).
        mesh: the 1-D data-parallel device mesh.
        param_dtype: dtype of the all-gathered parameters used in forward/backward
            (``"bfloat16"`` on GPUs; ``"float32"`` on CPU). Sharded masters stay fp32.
        reduce_dtype: dtype of the gradient reduce-scatter.
        activation_checkpointing: recompute each layer's activations in backward.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # lazy: heavy (~0.6 s)

    if activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mp = MixedPrecisionPolicy(param_dtype=DTYPES[param_dtype], reduce_dtype=DTYPES[reduce_dtype])
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        # The last layer stays gathered after forward: backward needs it first.
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(layers) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model
