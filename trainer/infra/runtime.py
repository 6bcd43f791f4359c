"""What every trainer does before its first step and around its loop, written once.

:func:`start_run` is step 0 of every entry point: the SIGTERM handler (first), the config check,
determinism, the process group, CPU threads, an exclusive lock on the output directory, the
resolved config (printed, saved, compared with the saved one on resume). Also here: pre-emption
(:data:`STOP`, :class:`Preempted`, exit code :data:`EXIT_PREEMPTED`), the optimizer, the
learning-rate schedule, device timing and peak memory.

Exit codes of every trainer: 0 finished; 1 a crash (traceback) or an OS error (one line); 2 a bad
config, bad input or no intact checkpoint (one line); 75 pre-empted by SIGTERM — a checkpoint was
written and rerunning the same command resumes (``output_dir/PREEMPTED`` says so too, until the
next start). Under ``torchrun`` the launcher itself exits 1 after forwarding SIGTERM (torch's
``SignalException``); give the workers time to checkpoint with ``--shutdown-timeout`` (default
30 s) and read ``PREEMPTED``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import math
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn
from tqdm import tqdm

from trainer.errors import EXIT_PREEMPTED, PREEMPTED_MARKER, ConfigError, DataError, Preempted, describe
from trainer.infra.checkpoint import Checkpointer
from trainer.infra.config import TrainConfig, declared, to_yaml
from trainer.infra.dist import DistInfo, broadcast_object, gather_objects, init_distributed
from trainer.infra.metrics import MetricsLog
from trainer.infra.outputs import write_atomic
from trainer.infra.trackers import RunInfo, start_trackers

__all__ = [
    "write_atomic",
    "EXIT_PREEMPTED",
    "STOP",
    "Preempted",
    "Run",
    "build_optimizer",
    "device_sync",
    "lr_lambda",
    "note_data_change",
    "open_metrics",
    "optimizer_step",
    "resume_or_seed",
    "peak_memory_mb",
    "start_run",
]


class _StopRequest:
    """Set by SIGTERM; the loops read it at their next step (every rank agrees through the
    step's all-reduce), checkpoint, and raise :class:`Preempted`."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        """Route SIGTERM here (idempotent; the main thread only, as Python requires)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, *_: Any) -> None:
        self.requested = True


STOP = _StopRequest()


_LOCKS: dict[str, IO] = {}


def _lock_output_dir(out_dir: Path) -> str | None:
    """An exclusive OS-level lock on ``out_dir/.lock`` (``flock``: released by the kernel when the
    process dies, so a kill never leaves it stale). A second run on the same directory is refused.
    A filesystem that cannot ``flock`` at all (Lustre mounted ``noflock``: ENOSYS) is not another
    run: the run goes on unguarded, and the returned warning says so (None when locked).

    Raises:
        ConfigError: another process holds the lock.
    """
    import fcntl  # optional: POSIX only

    key = str(out_dir.resolve())
    if key in _LOCKS:  # this process ran here before (sequential runs in one process)
        _LOCKS.pop(key).close()
    fh = open(out_dir / ".lock", "a+")  # noqa: SIM115 - held for the life of the run
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        fh.close()
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return (
                f"warning: cannot lock {out_dir / '.lock'} ({e.strerror or e}; a filesystem without "
                "flock support?): nothing stops a second run on this output_dir"
            )
        raise ConfigError(
            f"config key 'output_dir': another run is using {out_dir} (it holds {out_dir / '.lock'}); "
            "wait for it to finish or choose another output_dir"
        ) from None
    _LOCKS[key] = fh
    return None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _moved(old: dict, new: dict) -> tuple[dict, str | None]:
    """``old`` (a saved config, flattened) as it reads after the run was moved (``mv``): when
    ``output_dir`` differs, the leading part of the old one that the new one replaces (``/a/demo``
    of ``/a/demo/seed0/sft`` → ``/a/demo2`` for ``/a/demo2/seed0/sft``: the longest common
    trailing part is kept) is replaced in every path value under it — only where the old path
    no longer exists and the new one does (a move, not a copy: a model left where it was, or a
    copied run whose original is still there, reads as it was). Returns ``(old, the old root)``,
    or ``(old, None)`` unchanged when nothing was moved."""
    a, b = old.get("output_dir"), new.get("output_dir")
    if not (isinstance(a, str) and isinstance(b, str)) or a == b:
        return old, None
    pa, pb = Path(a).parts, Path(b).parts
    k = 0
    while k < min(len(pa), len(pb)) and pa[-1 - k] == pb[-1 - k]:
        k += 1
    if k == len(pa):  # the old path is a tail of the new one (relative then, absolute now): no root
        return old, None
    root_a, root_b = Path(*pa[: len(pa) - k]), Path(*pb[: len(pb) - k])

    def moved(v: str) -> str:
        try:
            rest = Path(v).relative_to(root_a)
        except ValueError:
            return v
        there = root_b / rest
        return str(there) if not Path(v).exists() and there.exists() else v

    out = {key: moved(v) if isinstance(v, str) and v else v for key, v in old.items()}
    return out, (str(root_a) if out["output_dir"] != a else None)


def _check_resume_config(cfg: TrainConfig, out_dir: Path, say) -> None:
    """Compare ``cfg`` with the ``config.yaml`` of the run it will resume (when checkpoints
    exist and ``resume`` is on; a run moved to another directory is compared as moved:
    :func:`_moved`): keys outside the class's ``RESUME_SAFE`` refuse with the diff;
    safe ones are logged and the new config is kept beside the old as
    ``config.<UTC time>.yaml`` (``config.yaml`` stays the first run's).

    Raises:
        ConfigError: a change that alters the model, the data order or the schedule.
    """
    from omegaconf import OmegaConf  # lazy: omegaconf (heavy), only at start and on resume

    saved_path = out_dir / "config.yaml"
    has_checkpoints = bool(Checkpointer(out_dir / "checkpoints").complete())
    if has_checkpoints and not cfg.resume:  # a fresh start: the old run's outputs move aside
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        for name in ("checkpoints", "metrics.jsonl", "rollouts.jsonl", "config.yaml", "trackers.json", "tb"):
            if (out_dir / name).exists():
                os.replace(out_dir / name, out_dir / f"{name}.before-{stamp}")
        say(
            f"resume=false: the previous run's checkpoints, metrics, config and tracker state moved to "
            f"*.before-{stamp}"
        )
    if not (cfg.resume and saved_path.exists() and has_checkpoints):
        write_atomic(saved_path, to_yaml(cfg))
        return
    old = _flatten(OmegaConf.to_container(OmegaConf.load(saved_path)))
    new = _flatten(OmegaConf.to_container(OmegaConf.create(to_yaml(cfg))))
    old, moved_from = _moved(old, new)  # a run moved with its inputs (`mv`) resumes where it is now
    if moved_from is not None:
        say(f"resuming a run moved from {moved_from} (its paths under there are read as under the new place)")
    changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    if not changed:
        return
    safe = declared(type(cfg), "RESUME_SAFE")
    unsafe = {k: v for k, v in changed.items() if k not in safe}
    diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
    if unsafe:
        raise ConfigError(
            f"{out_dir} holds checkpoints of a run with another config ({diff}); these keys change the "
            f"model, data order or schedule: {sorted(unsafe)}. Use the saved config "
            f"({saved_path}), another output_dir, or resume=false to start over"
        )
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    write_atomic(out_dir / f"config.{stamp}.yaml", to_yaml(cfg))
    say(f"resuming with changed keys (allowed): {diff}; saved as config.{stamp}.yaml")


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
            tqdm.write(f"[{self.name}] {msg}")


def start_run(cfg: TrainConfig, name: str) -> Run:
    """Step 0 of every trainer (called on every rank): the SIGTERM handler, ``cfg.check()``,
    deterministic algorithms, the process group and device mesh, CPU threads (cores / local
    processes), the output directory with its lock (rank 0), and the resolved config printed and
    written to ``output_dir/config.yaml`` (compared with the saved one when resuming)."""

    STOP.install()
    try:
        cfg.check()
        refused = None
    except (ConfigError, DataError) as e:
        if "RANK" not in os.environ:  # one process: no other rank to tell
            raise
        refused = e  # a path missing on this node only: the other ranks must not wait for this one
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        di = init_distributed(cfg.device, cfg.dist_timeout_min)
    except Exception:
        if refused is not None:
            raise refused from None
        raise
    _agree_on_check(refused)
    if di.device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // local_world))
    out_dir = Path(cfg.output_dir)
    run = Run(cfg=cfg, di=di, out_dir=out_dir, name=name)
    error, token = None, None
    if di.is_main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            note = _lock_output_dir(out_dir)
            print(f"[{name}] resolved config:\n{to_yaml(cfg)}", flush=True)
            if note:
                run.say(note)
            _check_resume_config(cfg, out_dir, run.say)
            (out_dir / PREEMPTED_MARKER).unlink(missing_ok=True)
            if di.world_size > 1:
                token = f"{uuid.uuid4().hex}\n"
                write_atomic(out_dir / SHARED_TOKEN, token)
        except ConfigError as e:
            error = str(e)
        except OSError as e:
            error = f"config key 'output_dir': cannot write {out_dir} ({e.strerror or e})"
        except Exception as e:  # noqa: BLE001 - e.g. an unreadable saved config.yaml
            error = f"config key 'output_dir': {out_dir}: {describe(e)}"
    # every rank stops on rank 0's refusal (none is left waiting in a collective)
    error, token = broadcast_object((error, token))
    if error is not None:
        raise ConfigError(error)
    if token is not None:  # every rank must see the directory rank 0 writes (checkpoints, RM, ...)
        _check_shared_output_dir(out_dir, token)
    return run


SHARED_TOKEN = ".rank0_token"


def _where() -> str:
    return f"host {socket.gethostname()}, cwd {os.getcwd()}"


def _agree_on_check(refused: Exception | None) -> None:
    """Every rank raises when the config check refused on any rank (collective): a path missing on
    one node only stops every node, naming the ranks and hosts that cannot see it."""
    seen = gather_objects(None if refused is None else (str(refused), _where()))
    bad = [(r, s) for r, s in enumerate(seen) if s is not None]
    if not bad:
        return
    if refused is not None and len(bad) == len(seen):
        raise refused
    ranks = ", ".join(f"rank {r} ({where})" for r, (_, where) in bad)
    raise ConfigError(
        f"{bad[0][1][0]} on {ranks} but not on the other ranks: every node must see the same paths "
        "(a shared filesystem, or the same copy at the same absolute path on every node)"
    )


def _check_shared_output_dir(out_dir: Path, token: str) -> None:
    """Every rank reads back the token rank 0 just wrote into ``out_dir`` (collective): checkpoint
    shards, the reward model trained on the fly, the synthetic set and the memory plan are written
    by one rank and read by all, so ``output_dir`` must be one directory for every node.

    Raises:
        ConfigError: on every rank, when some rank sees another directory (a relative path taken
            from each node's working directory, or a node-local disk), naming those ranks.
    """
    ok = False
    for _ in range(20):  # an NFS client may serve a cached directory entry for a few seconds
        try:
            ok = (out_dir / SHARED_TOKEN).read_text() == token
        except OSError:
            ok = False
        if ok:
            break
        time.sleep(0.5)
    seen = gather_objects(None if ok else _where())
    bad = ", ".join(f"rank {r} ({where})" for r, where in enumerate(seen) if where is not None)
    if bad:
        raise ConfigError(
            f"config key 'output_dir': {out_dir} on {bad} is not the directory rank 0 writes: every node "
            "must see output_dir on a filesystem they share, at the same absolute path (a relative path "
            "is taken from each node's working directory)"
        )


def open_metrics(run: Run, step_key: str = "step") -> MetricsLog:
    """The run's ``output_dir/metrics.jsonl`` (rank 0 writes), fanned out to the trackers of
    ``report_to`` (rank 0 only): they start now, in a child process
    (:class:`trainer.infra.trackers.TrackerProcess`: their imports and start-up overlap the models'
    set-up without taking this process's time), told the resolved config, the command line and
    the git commit, and continue their kept runs (``output_dir/trackers.json``) when the run will
    resume from a checkpoint. A tracker whose package is missing is a warning, here, before
    training. Call it right after :func:`start_run`."""
    from omegaconf import OmegaConf  # lazy: omegaconf (heavy), only at start and on resume

    cfg, di = run.cfg, run.di
    trackers = None
    if di.is_main and cfg.report_to:
        resuming = cfg.resume and bool(Checkpointer(run.out_dir / "checkpoints").complete())
        info = RunInfo(
            trainer=run.name,
            out_dir=run.out_dir,
            config=OmegaConf.to_container(OmegaConf.create(to_yaml(cfg))),
            step_key=step_key,
            world_size=di.world_size,
            resuming=resuming,
            name=cfg.run_name,
            resumable=True,
        )
        trackers = start_trackers(cfg.report_to, info, say=run.say)
    return MetricsLog(run.out_dir / "metrics.jsonl", di.is_main, step_key, trackers)


def resume_or_seed(run: Run, ckpt: Any, model: nn.Module, optimizer, scheduler, log: Any, n_items: int):
    """Step 3 of the step-scheduled trainers: restore the newest intact checkpoint (model,
    optimizer, scheduler, RNG), drop metrics logged after it and say what changed; or, for a fresh
    run, seed the RNG. Returns ``(step, extra)``: ``(0, {})`` for a fresh run."""
    resumed = ckpt.load_latest({"model": (model, optimizer)}) if run.cfg.resume else None
    if resumed is None:
        torch.manual_seed(run.cfg.seed + 1000 * run.di.rank)  # restored from the checkpoint on resume
        return 0, {}
    step, extra = resumed
    scheduler.load_state_dict(extra["scheduler"])
    dropped = log.resume_at(step)
    run.say(f"resumed from step {step}; {dropped} later metrics records dropped")
    note_data_change(run, extra, n_items)
    return step, extra


def optimizer_step(model: nn.Module, optimizer, scheduler, max_grad_norm: float):
    """Clip the global gradient norm (0: off), step, clear the gradients, advance the schedule.
    Returns ``(grad_norm or None, the learning rate this step used)``."""
    grad_norm = (
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm) if max_grad_norm > 0 else None
    )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    lr = scheduler.get_last_lr()[0]
    scheduler.step()
    return grad_norm, lr


def note_data_change(run: Run, extra: dict, n_items: int) -> None:
    """On resume, say when the data order of the checkpointed run cannot be reproduced: another
    number of training items (the data file changed) or another world size."""
    was = (extra.get("n_items"), extra.get("world_size"))
    now = (n_items, run.di.world_size)
    if was[0] is not None and was != now:
        run.say(
            f"warning: the checkpoint was written with {was[0]} training items on {was[1]} ranks, this run "
            f"has {now[0]} on {now[1]}: the data order and schedule after the resume point differ"
        )


def build_optimizer(model: nn.Module, lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over every parameter of ``model`` with ``cfg``'s betas and weight decay
    (``optimizer=adamw8bit``: bitsandbytes, imported only when chosen)."""
    kw: dict[str, Any] = {"lr": lr, "betas": tuple(cfg.betas), "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb  # optional: [gpu] extra (optimizer=adamw8bit)
        except ImportError as e:
            raise ConfigError(
                "optimizer='adamw8bit' needs bitsandbytes (pip install 'bitsandbytes>=0.44'); "
                "or use optimizer=adamw"
            ) from e
        return bnb.optim.AdamW8bit(model.parameters(), **kw)
    # fused: one kernel call for every parameter, on the CPU and CUDA alike. Under FSDP2 the
    # parameters are DTensors, and the per-parameter Python loop of the default (single-tensor on
    # the CPU) dispatches each of AdamW's ~10 element-wise ops through DTensor: 7.0 ms per step
    # for a 2-layer toy model, against 1.7 ms with foreach and 0.9 ms fused (torch 2.13,
    # bench/bench_rollout.py). Fused over DTensors leaked a DTensorSpec per parameter per step in
    # torch 2.10-2.11 (reported upstream), so older torch gets foreach.
    # Same update either way (tests/test_ppo.py).
    fast = {"fused": True} if _torch_version() >= (2, 12) else {"foreach": True}
    return torch.optim.AdamW(model.parameters(), **fast, **kw)


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int(minor)


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
    import resource  # optional: POSIX only

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Phases:
    """The phases of an iteration: ``with phases("generate"): ...`` adds the block's wall-clock
    seconds (device-synced) to ``seconds["generate"]`` and, in a dry run (``memory``: a
    :class:`~trainer.infra.dryrun.PhaseMemory`), measures its peak memory and names the phase in
    any error raised inside."""

    def __init__(self, device: torch.device, memory: Any = None):
        self.device, self.memory = device, memory
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        with self.memory.phase(name) if self.memory is not None else contextlib.nullcontext():
            yield
            device_sync(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
