"""Dry runs (``dry_run=true``): a trainer's real code path on fake tensors and a fake process
group, so a 7B config is proven — shapes, dtypes, collectives, memory — before a GPU is rented.

:func:`fake_world` starts a fake process group of ``world`` ranks (torch's ``FakeStore`` and
``fake`` backend: collectives return at once, this process is rank 0) and enters
``FakeTensorMode``: every tensor made inside has a shape, dtype and device but no storage, so
LLaMA-7B's 8-rank FSDP2 shards, a rollout of 64 × 492 tokens and AdamW states cost nothing. The
trainer then runs as usual: build on meta, ``parallelize``, materialise, one iteration.

What differs from a real run, on purpose:

* the device is the CPU (fake CPU tensors; a real run's bf16 parameters and fp32 masters have
  the same sizes on any device), attention is ``sdpa`` and ``fgkernels`` use their eager
  references (a fake tensor has no data for a Triton or C++ kernel; the fused kernels need less
  memory than the references, so those ops are counted high);
* data-dependent host syncs cannot run on fake tensors: :func:`host_item` / :func:`host_list`
  return a stand-in there (generation then runs every row to ``max_new_tokens``: the worst case);
* data are stand-ins of the configured lengths (prompts of ``max_prompt_length`` tokens, pairs of
  ``max_length``), models without a checkpoint are built from the config's ``arch`` preset, and
  a tokenizer of the preset's vocabulary size stands in when none is given;
* nothing that needs bytes is written (final model, safetensors, plots).

:class:`PhaseMemory` measures each phase with torch's ``MemTracker`` (the base of
``FSDPMemTracker``; one tracker over every model and optimizer of the trainer, since PPO has four
models): the peak per phase and its parts (parameters, gradients, optimizer state, activations,
temporaries — FSDP2's all-gather and reduce-scatter buffers are among the temporaries).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trainer.errors import ConfigError
from trainer.fake import _ACTIVE, host_item, host_list, in_dry_run, is_fake, real_tensors
from trainer.infra.dist import broadcast_object, get_rank
from trainer.infra.outputs import write_atomic
from trainer.infra.summary import format_bytes

__all__ = [
    "ARCH_PRESETS",
    "DryRunError",
    "PhaseMemory",
    "fake_world",
    "host_item",
    "host_list",
    "in_dry_run",
    "is_fake",
    "preset_config",
    "real_tensors",
    "stand_in_tokenizer",
    "warm_optimizer_states",
]

# LLaMA architectures by name (the shapes a dry run needs when no checkpoint is given).
ARCH_PRESETS: dict[str, dict[str, Any]] = {
    # LLaMA-7B (Touvron et al. 2023): what AlpacaFarm and the fine-grained paper train
    "llama-7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6,
    ),
    # a 1B-class LLaMA (TinyLlama-1.1B's shapes: grouped-query attention with 4 KV heads)
    "llama-1b": dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
        num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
    ),
}  # fmt: skip


class DryRunError(ConfigError):
    """A phase of the dry run failed (shape, dtype, collective) or its peak is over the limit:
    this config cannot run. The message names the phase (a one-line error, exit status 2)."""


def warm_optimizer_states(*optimizers: torch.optim.Optimizer) -> None:
    """Create every optimizer's state (AdamW's two moments) as a real run has it from its first
    step on, so one dry-run iteration sees the steady-state memory: zero gradients, one step with
    the learning rate at 0, gradients dropped."""
    for opt in optimizers:
        saved = [g["lr"] for g in opt.param_groups]
        for g in opt.param_groups:
            g["lr"] = 0.0
            for p in g["params"]:
                p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for g, lr in zip(opt.param_groups, saved):
            g["lr"] = lr


def preset_config(name: str, tokenizer: Any = None):
    """The ``LlamaConfig`` of an :data:`ARCH_PRESETS` entry (special-token ids from ``tokenizer``).

    Raises:
        ConfigError: an unknown preset name (config key ``arch``).
    """
    from transformers import LlamaConfig  # lazy: transformers (heavy)

    if name not in ARCH_PRESETS:
        raise ConfigError(f"config key 'arch': {name!r} is not one of {sorted(ARCH_PRESETS)}")
    ids = {}
    if tokenizer is not None:
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        ids["pad_token_id"] = pad if pad is not None else tokenizer.eos_token_id
    return LlamaConfig(**ARCH_PRESETS[name], tie_word_embeddings=False, **ids)


def stand_in_tokenizer(vocab_size: int):
    """A word-level tokenizer of exactly ``vocab_size`` tokens (``<unk> <s> </s> <pad>`` then
    ``w4 … w{V-1}``), for a dry run with no tokenizer on disk: the dry run's data are stand-ins, so
    only the vocabulary size matters."""
    from tokenizers import Tokenizer, models, pre_tokenizers  # lazy: transformers (heavy)
    from transformers import PreTrainedTokenizerFast  # lazy: transformers (heavy)

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


@contextlib.contextmanager
def fake_world(world_size: int) -> Iterator[None]:
    """A fake process group of ``world_size`` ranks (this process is rank 0) and
    ``FakeTensorMode`` for the block; ``fgkernels`` use their eager references inside.

    Raises:
        RuntimeError: a process group is already initialised (a dry run is a process of its own).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode  # lazy: private torch module, dry runs only
    from torch.testing._internal.distributed.fake_pg import FakeStore  # lazy: private torch test module

    if dist.is_initialized():
        raise RuntimeError("dry_run=true needs a process of its own: run it with python, not torchrun")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    saved = os.environ.get("FGKERNELS_BACKEND")
    os.environ["FGKERNELS_BACKEND"] = "reference"
    _ACTIVE.append(True)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            yield
    finally:
        _ACTIVE.pop()
        if saved is None:
            os.environ.pop("FGKERNELS_BACKEND", None)
        else:
            os.environ["FGKERNELS_BACKEND"] = saved
        dist.destroy_process_group()


def _loop_tracker_class():
    from torch.distributed._tools.mem_tracker import MemTracker  # lazy: private torch module, dry runs only

    class LoopTracker(MemTracker):
        """``MemTracker`` that allows a root module to be called again (a decode step, the next
        micro-batch): it refuses that ("multiple iterative calls"), because its per-module
        statistics would mix calls; only the global peak and its parts are used here, so the
        root's module statistics restart at each top-level call, and per-module peaks are not
        kept at all. Frozen modules get no gradient hooks (``MemTracker`` assumes every
        parameter requires grad)."""

        def _pre_fw_hook(self, module, inputs):  # noqa: ANN001 - torch's hook signature
            if module in self.memory_tracking and not self._mod_tracker.is_bw:
                parents = set(self._mod_tracker.parents) - {self._mod_tracker.get_known_fqn(module)}
                if len(parents) == 1 and "Global" in parents:
                    del self.memory_tracking[module]
            super()._pre_fw_hook(module, inputs)

        def _update_peak_stats(self, peak_state) -> None:  # noqa: ANN001
            # the tracker-wide peak only (what PhaseMemory reads), as MemTracker computes it; its
            # per-module peaks walk every tracked module on every op: 83% of a 7B dry run's time
            for dev, dev_snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < dev_snap["Total"]:
                    self._peak_mem[dev] = dev_snap["Total"]
                    self._peak_mem_snap[dev] = deepcopy(dev_snap)

        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):  # noqa: ANN001
            # frozen models (reference, reward model) have no gradients to hook
            trainable = all(p.requires_grad for p in module.parameters())
            return super()._track_module_params_and_buffers(module, install_grad_hooks and trainable)

    return LoopTracker


def _LoopTracker():  # noqa: N802 - a class factory (torch imported lazily)
    return _loop_tracker_class()()


@dataclass
class PhaseMemory:
    """Per-phase peak memory of rank 0 under a dry run (torch's ``MemTracker``).

    Use: ``pm = PhaseMemory(models, optimizers)``; ``with pm:`` around the iteration; each phase
    in ``with pm.phase("generate"):``. Afterwards ``pm.peaks[name]`` is that phase's peak total
    (bytes) and ``pm.parts[name]`` its parts by category at the peak.

    Args:
        modules: every model of the trainer (parameters, buffers, gradients are tracked).
        optimizers: their optimizers (states tracked).
        say: prints each phase's peak as soon as it is measured (a long dry run killed midway
            still leaves the phases it finished).
        limit_gb: ``memory_limit_gb``: the first phase whose peak exceeds it stops the dry run
            then and there, named (:class:`DryRunError`), instead of measuring the phases after
            it first (0: no limit).
    """

    modules: Sequence[torch.nn.Module]
    optimizers: Sequence[torch.optim.Optimizer] = ()
    say: Callable[[str], None] | None = None
    limit_gb: float = 0.0
    peaks: dict[str, float] = field(default_factory=dict)
    parts: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase (fake ops)

    def __post_init__(self) -> None:
        self.tracker = _LoopTracker()
        self.tracker.track_external(*self.modules, *self.optimizers)

    def __enter__(self) -> PhaseMemory:
        self.tracker.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.tracker.__exit__(*exc)

    def _device_snapshot(self, kind: str) -> dict[str, float]:
        snap = self.tracker.get_tracker_snapshot(kind)
        total: dict[str, float] = {}
        for dev_snap in snap.values():
            for k, v in dev_snap.items():
                name = k if isinstance(k, str) else k.value
                total[name] = total.get(name, 0.0) + float(v)
        return total

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Measure the block's peak on its own: the tracker's peak restarts at the current use."""
        t = self.tracker
        # MemTracker keeps one running peak; restart it at the phase's start (private fields of
        # torch 2.13's MemTracker: the snapshot at the peak and the peak total per device)
        t._peak_mem_snap = t.get_tracker_snapshot("current")
        t._peak_mem = {dev: snap["Total"] for dev, snap in t._peak_mem_snap.items()}
        t0 = time.perf_counter()
        try:
            yield
        except DryRunError:
            raise
        except Exception as e:
            raise DryRunError(f"dry run, phase '{name}': {type(e).__name__}: {e}") from e
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        peak = self._device_snapshot("peak")
        if name in self.peaks and self.peaks[name] >= peak.get("Total", 0.0):
            return  # a phase run several times (minibatches) keeps its highest peak
        self.peaks[name] = peak.get("Total", 0.0)
        self.parts[name] = {k: v for k, v in peak.items() if k != "Total"}
        if self.say is not None:
            self.say(f"dry run: phase '{name}' peak {format_bytes(self.peaks[name])} so far "
                     f"({self.seconds[name]:.0f} s)")  # fmt: skip
        check_limit(self, self.limit_gb * 1024**3 if self.limit_gb > 0 else None, self.limit_gb, name)


def check_limit(pm: PhaseMemory, limit: float | None, limit_gb: float, only: str | None = None) -> None:
    """Every phase's peak (``only``: that phase's) must fit in ``limit`` bytes (None: not checked).

    Raises:
        DryRunError: the first phase over the limit, with its parts and the knobs that help.
    """
    if limit is None:
        return
    for name, peak in pm.peaks.items():
        if (only is None or name == only) and peak > limit:
            parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in pm.parts[name].items() if v)
            raise DryRunError(
                f"dry run, phase '{name}': peak {format_bytes(peak)} per device exceeds memory_limit_gb="
                f"{limit_gb:g} ({parts}); use more devices, smaller batch sizes or lengths, or "
                "activation_checkpointing=true"
            )


def memory_table(
    pm: PhaseMemory, estimates: dict[str, float] | None = None, limit: float | None = None
) -> str:
    """The per-phase table: peak, its parts, the estimate beside it and their ratio."""
    cats = ("Parameter", "Gradient", "Optstate", "Activation", "Temp", "Buffer", "Other")
    head = ["phase", "peak", *[c.lower() for c in cats]] + (["estimate", "est/peak"] if estimates else [])
    head.append("seconds")
    rows = [head]
    for name, peak in pm.peaks.items():
        p = pm.parts[name]
        row = [name, format_bytes(peak), *[format_bytes(p.get(c, 0.0)) for c in cats]]
        if estimates:
            est = estimates.get(name)
            row += [format_bytes(est), f"{est / peak:.2f}"] if est and peak else ["-", "-"]
        row.append(f"{pm.seconds.get(name, 0.0):.0f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows
    ]
    if limit:
        lines.append(f"limit {format_bytes(limit)} per device")
    return "\n".join(lines)


def finish(run: Any, pm: PhaseMemory, estimates: dict[str, float], headline: str, shape: dict) -> dict:
    """A trainer's dry run ends here: ``headline`` and the per-phase table (measured peaks beside
    ``estimates``) printed, every phase checked against ``memory_limit_gb``.

    Returns:
        ``{"peaks", "parts", "estimates", "model"}`` (``model``: ``shape``, the measured models'
        :func:`model_shape`), what :func:`save_plan` records.

    Raises:
        DryRunError: a phase's peak exceeds ``memory_limit_gb``.
    """
    gb = run.cfg.memory_limit_gb
    limit = gb * 1024**3 if gb > 0 else None
    run.say(f"{headline}; peak memory of one rank per phase:\n{memory_table(pm, estimates, limit)}")
    check_limit(pm, limit, gb)
    return {
        "peaks": dict(pm.peaks),
        "parts": dict(pm.parts),
        "estimates": estimates,
        "model": shape,
    }


# --------------------------------------------------------------------------------------------
# The measured memory plan: what a dry run measured, for the real run's memory_limit_gb check
# --------------------------------------------------------------------------------------------
PLAN_NAME = "memory_plan.json"
# keys that change no step's memory: run control, outputs, logging, and the data paths (a dry run
# measures stand-ins of the configured lengths, the worst case of the real data)
RUN_ONLY_KEYS = frozenset({
    "output_dir", "iterations", "stop_after_iterations", "max_steps", "epochs", "resume", "seed",
    "progress", "tensorboard", "report_to", "run_name", "plots", "report", "save_rollouts_every",
    "rollout_samples",
    "checkpoint_every", "keep_checkpoints", "save_final", "num_threads", "deterministic",
    "memory_limit_gb", "dry_run", "dry_run_world_size", "truncation_warn", "eval_every", "log_every",
    "prompts", "init_from", "tokenizer", "reward_model", "critic_from", "pairs", "data", "eval_data",
    "device", "attn_implementation", "synthetic", "prompt_template", "stop_after_steps", "report_pairs",
    "save_best", "dry_run_layers", "dist_timeout_min", "ppo_epochs",
    # the model's size: keyed by its measured shape instead (model_shape), so that a dry run of
    # `arch=llama-7b` and the real run of `init_from=<a LLaMA-7B>` (or the other way) match
    "arch", "hidden_size", "num_layers", "num_heads", "intermediate_size",
})  # fmt: skip
PLAN_VERSION = 1
# How far (either way) a plan's measured peak may be from this run's estimate of the same phase
# before the plan is refused as edited or foreign. The dry runs of bench/RESULTS.md put the
# estimate at 0.61-4.6x the measured peak (the extremes: the 7B PPO train phase before its
# backward term, 0.61; the tiny SFT default, whose batches are padded shorter than the estimate
# assumes, 4.6), that is a peak of 0.22-1.64x the estimate; a real run's estimate is computed for
# the fused kernels and its own prompt lengths, lower than the dry run's. 20 leaves four times
# the widest of those and still refuses what a hand edit or a unit slip gives (1 byte, NaN,
# 1000x).
PLAN_FACTOR = 20.0


def fgrlhf_version() -> str:
    """This package's version (installed metadata; ``"unknown"`` when it is run uninstalled)."""
    try:
        return importlib.metadata.version("fgrlhf")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def model_shape(config: Any) -> dict[str, Any]:
    """The architecture numbers memory depends on, from a ``transformers`` config."""
    heads = config.num_attention_heads
    return {
        "model_type": getattr(config, "model_type", ""),
        "hidden_size": config.hidden_size,
        "intermediate_size": getattr(config, "intermediate_size", None),
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "attention_bias": bool(getattr(config, "attention_bias", False)),
        "mlp_bias": bool(getattr(config, "mlp_bias", False)),
    }


def plan_key(cfg: Any, trainer: str, world: int, shape: dict[str, Any]) -> dict[str, Any]:
    """What a measured plan is valid for: the plan format, fgrlhf's version (its trainers and
    estimates change between versions), torch's version (major.minor), the trainer, the world
    size, the shapes of the models (``shape``: :func:`model_shape`, per model for a trainer of
    several) and every config key but :data:`RUN_ONLY_KEYS`."""

    keys = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_ONLY_KEYS}
    torch_version = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    key = {"plan": PLAN_VERSION, "fgrlhf": fgrlhf_version(), "torch": torch_version, "trainer": trainer,
           "world_size": world}  # fmt: skip
    return json.loads(json.dumps({**key, "model": shape, "config": keys}))


def plan_path(cfg: Any) -> Path:
    return Path(cfg.output_dir) / PLAN_NAME


def save_plan(cfg: Any, trainer: str, result: dict) -> Path | None:
    """After a full dry run (``dry_run_layers=0``): write ``output_dir/memory_plan.json`` — the
    per-phase peaks measured for this config, world size and model — atomically, so that the
    real run with this ``output_dir`` checks ``memory_limit_gb`` against the measurement instead
    of the estimate. A reduced-layer dry run measures a smaller model and writes nothing."""

    if cfg.dry_run_layers:
        return None
    path = plan_path(cfg)
    record = {
        "key": plan_key(cfg, trainer, cfg.dry_run_world_size, result["model"]),
        "peaks": result["peaks"],
        "estimates": result["estimates"],
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_atomic(path, json.dumps(record, indent=1) + "\n")
    return path


def measured_peaks(
    cfg: Any, trainer: str, world: int, shape: dict[str, Any], estimates: dict[str, float] | None = None
) -> tuple[dict | None, str]:
    """The dry run's per-phase peaks for exactly this run, if ``output_dir/memory_plan.json``
    holds them: ``(peaks, note)``; ``(None, why not)`` when there is none, it was measured for
    another config (the differing keys are named), world size, model, torch or fgrlhf version, or
    this run's attention is ``eager`` (score matrices the dry run's ``sdpa`` does not build). The
    peaks of a plan for this run are checked (:func:`check_peaks`; ``estimates``: this run's
    estimate per phase, when the caller has one). Rank 0 reads the file and every rank gets its
    answer (no rank may decide otherwise).

    Raises:
        ConfigError: the plan is for this run but a peak is not a positive finite number, or is
            out of :data:`PLAN_FACTOR` of its estimate (names the file, the phase and the value).
    """
    answer = None
    if get_rank() == 0:
        try:
            answer = (*_read_plan(cfg, trainer, world, shape, estimates), None)
        except ConfigError as e:
            answer = (None, "", str(e))
    peaks, note, refused = broadcast_object(answer)
    if refused is not None:
        raise ConfigError(refused)
    return peaks, note


def _read_plan(
    cfg: Any, trainer: str, world: int, shape: dict[str, Any], estimates: dict[str, float] | None
) -> tuple[dict | None, str]:
    path = plan_path(cfg)
    if not path.is_file():
        return None, f"no dry-run measurement ({path}: run this config with dry_run=true first)"
    if cfg.attn_implementation == "eager":
        return None, f"{path} not used: attn_implementation=eager keeps score matrices a dry run does not"
    want = plan_key(cfg, trainer, world, shape)
    try:
        record = json.loads(path.read_text())
        saved, peaks = dict(record["key"]), dict(record["peaks"])
        saved_cfg = dict(saved.get("config", {}))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return None, f"{path} is not a memory plan ({type(e).__name__}: {e}); not used"
    if saved.get("fgrlhf") != want["fgrlhf"]:
        return None, (
            f"{path} was measured by fgrlhf {saved.get('fgrlhf', '(an earlier version)')}, this is "
            f"{want['fgrlhf']}; not used (rerun the dry run to measure this version)"
        )
    if saved != want:
        diff = [k for k in want if k != "config" and saved.get(k) != want[k]]
        ours = want["config"]
        diff += sorted(k for k in set(saved_cfg) | set(ours) if saved_cfg.get(k) != ours.get(k))
        return None, f"{path} was measured for another run (differs in: {', '.join(diff)}); not used"
    check_peaks(path, peaks, estimates)
    peaks = {str(k): float(v) for k, v in peaks.items()}
    return peaks, f"measured by the dry run of {record.get('measured_at', '?')} ({path})"


def check_peaks(path: Path, peaks: dict[str, Any], estimate: dict[str, float] | float | None) -> None:
    """A plan's measured peaks must be measurements: each a finite number of bytes above zero and,
    where this run has an estimate of the phase (``estimate``: per phase, or one figure for the
    largest phase), within :data:`PLAN_FACTOR` of it either way. A plan that is not is refused,
    not mended: the check it feeds decides whether the run starts.

    Raises:
        ConfigError: names ``path``, the phase, its value and what to do (measure again, or delete
            the file to use the estimate).
    """
    fix = f"rerun the dry run (dry_run=true) to measure again, or delete {path} to use the estimate"
    if not isinstance(peaks, dict) or not peaks:
        raise ConfigError(f"{path}: no measured phase in 'peaks'; {fix}")
    for phase, peak in peaks.items():
        if not _a_size(peak):
            raise ConfigError(
                f"{path}: phase '{phase}' has peak {peak!r}, not a positive finite number of bytes; {fix}"
            )
    if isinstance(estimate, dict):
        pairs = [(phase, peak, estimate.get(phase)) for phase, peak in peaks.items()]
    elif estimate is not None:  # one figure: the estimate's largest phase against the largest peak
        phase = max(peaks, key=peaks.get)
        pairs = [(phase, peaks[phase], estimate)]
    else:
        pairs = []
    for phase, peak, est in pairs:
        if est is None or not math.isfinite(est) or est <= 0:
            continue  # no estimate of this phase to compare with
        if not 1 / PLAN_FACTOR <= peak / est <= PLAN_FACTOR:
            raise ConfigError(
                f"{path}: phase '{phase}' has peak {format_bytes(peak)} ({peak:g} bytes), {peak / est:.3g}x "
                f"this run's estimate of {format_bytes(est)}; a dry run measures within "
                f"{PLAN_FACTOR:g}x of its estimate, so the file was edited or measured something else: {fix}"
            )


def _a_size(value: Any) -> bool:
    """A number of bytes a measurement can give: finite and above zero (a bool is no number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        value = float(value)
    except OverflowError:  # an int of hundreds of digits
        return False
    return math.isfinite(value) and value > 0


# What a CUDA process holds outside torch's caching allocator (the memory a dry run measures): the
# CUDA context (~0.5 GiB), NCCL's communicator buffers (~1-2 GiB at 8 ranks), cuBLAS / cuDNN
# workspaces. memory_limit_gb=0 checks against the device's total minus this.
CUDA_RESERVED_GB = 3.0


def check_fits(
    cfg: Any, device: torch.device, estimate: float, detail: str, measured: dict[str, float] | None
) -> float | None:
    """Before a real run builds its models: does it fit ``memory_limit_gb`` (0: the CUDA device's
    total less :data:`CUDA_RESERVED_GB`; no check on the CPU)? The figure checked is the dry
    run's measured peak when ``measured`` (:func:`measured_peaks`) is given, else ``estimate``
    (``detail`` says what it is made of). Returns the limit in bytes (None: not checked).

    Raises:
        ConfigError: the figure exceeds the limit (names the measured phase or the estimate's parts),
            or ``measured`` is no measurement of this run (:func:`check_peaks` against ``estimate``).
    """
    limit = cfg.memory_limit_gb * 1024**3 if cfg.memory_limit_gb > 0 else None
    if limit is None and device.type == "cuda":
        limit = torch.cuda.get_device_properties(device).total_memory - CUDA_RESERVED_GB * 1024**3
    if measured:
        check_peaks(plan_path(cfg), measured, estimate)
        phase = max(measured, key=measured.get)
        needs, what = measured[phase], f"measured by its dry run, phase '{phase}'"
    else:
        needs, what = estimate, f"estimated: {detail}"
    if limit is not None and needs > limit:
        raise ConfigError(
            f"this config needs about {format_bytes(needs)} per device but {format_bytes(limit)} are "
            f"available ({what}). Use more devices, smaller batch sizes or lengths, "
            "activation_checkpointing=true, optimizer=adamw8bit, or raise memory_limit_gb."
        )
    return limit


def check_run_memory(run: Any, trainer: str, phases: dict[str, float], shape: dict[str, Any]) -> None:
    """A real run's memory check before its models are built: the dry run's measured peaks for
    exactly this run (``output_dir/memory_plan.json``) when there are some, else the largest of
    the estimated ``phases``, against ``memory_limit_gb`` (:func:`check_fits`); says which figure
    it used. Nothing to do inside a dry run (it measures instead).

    Raises:
        ConfigError: the run does not fit.
    """
    if in_dry_run():
        return
    cfg, di = run.cfg, run.di
    measured, note = measured_peaks(cfg, trainer, di.world_size, shape, phases)
    run.say(f"memory plan: {note}")
    detail = ", ".join(f"{k} {format_bytes(v)}" for k, v in phases.items())
    limit = check_fits(cfg, di.device, max(phases.values()), detail, measured)
    figure = "measured" if measured else "estimated"
    peaks = measured or phases
    run.say(
        f"memory {figure} per device: {', '.join(f'{k} {format_bytes(v)}' for k, v in peaks.items())}"
        + (f" (limit {format_bytes(limit)})" if limit else " (not checked on CPU)")
    )
