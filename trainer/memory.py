"""The one memory model of every trainer: the per-device estimate of each phase, the check a real
run makes before it builds its models, and the dry run (fake tensors, measured peaks, the table
beside the estimate, the plan a real run reads).

Three parts, used by ``trainer/reward.py``, ``trainer/sft.py`` and ``trainer/ppo.py`` alike:

1. **Estimate** (pure arithmetic on a LLaMA-like ``transformers`` config, bytes per device): the
   terms (:func:`sharded_states`, :func:`gathered_bytes`, ``activation_bytes`` ...) and each
   trainer's phases from them: :func:`reward_phases`, :func:`lm_phases` (SFT / FIGA) and
   :func:`ppo_parts` + :func:`ppo_phases`. The terms were fitted to dry runs' measured parts
   (``bench/RESULTS.md``).
2. **Check** (:func:`check`): before any model is built, the dry run's measured peaks of exactly
   this run (``output_dir/memory_plan.json``) when there are some, else the largest estimated
   phase, against ``memory_limit_gb``.
3. **Dry run** (:func:`dry_run`, :func:`track`, :func:`report`): the trainer's own ``train`` for
   one step / iteration on fake tensors over a fake process group, each phase's peak measured and
   printed beside the estimate, and the plan written for the real run's check.

The machinery under it stays in :mod:`trainer.infra.dryrun` (fake_world, PhaseMemory, the plan
file, check_fits, the table); this module is the trainers' front door to it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trainer.infra.dist import DTYPES
from trainer.infra.dryrun import (
    PhaseMemory,
    check_fits,
    check_run_memory,
    fake_world,
    finish,
    in_dry_run,
    measured_peaks,
    save_plan,
    warm_optimizer_states,
)
from trainer.infra.summary import format_bytes
from trainer.models import activation_bytes, llama_param_count

__all__ = [
    "SUPERVISED_DRY_RUN",
    "Sizes",
    "activation_bytes",
    "check",
    "dry_run",
    "dtype_bytes",
    "gathered_bytes",
    "lm_phases",
    "optimizer_state_bytes",
    "ppo_check",
    "ppo_parts",
    "ppo_phases",
    "report",
    "reward_phases",
    "sharded_grads",
    "sharded_states",
    "track",
    "unsharded_grad_buffers",
]


# --------------------------------------------------------------------------------------------
# 1. The estimate: terms (bytes per device). Each formula keeps the order of float operations of
# the trainers' former estimate_memory functions, so every number is bit-identical to theirs.
# --------------------------------------------------------------------------------------------
def dtype_bytes(name: str) -> int:
    """Bytes of one element of ``param_dtype`` / ``reduce_dtype`` ``name``."""
    return torch.finfo(DTYPES[name]).bits // 8


def optimizer_state_bytes(optimizer: str) -> int:
    """AdamW's two moments per parameter: 8 bytes (fp32), 2 with ``adamw8bit``."""
    return 2 if optimizer == "adamw8bit" else 8


@dataclass(frozen=True)
class Sizes:
    """The numbers of a LLaMA-like ``transformers`` config that memory depends on.

    Attributes:
        h, L, V, inter: hidden size, layers, vocabulary, MLP width.
        heads, kv_heads, head_dim: attention heads, key/value heads, one head's width.
        n_lm: parameters of the causal LM (embedding, layers, final norm, untied LM head).
        n_backbone: the same without the LM head (scalar head: critic, reward model).
    """

    h: int
    L: int
    V: int
    inter: int
    heads: int
    kv_heads: int
    head_dim: int
    n_lm: int
    n_backbone: int

    @classmethod
    def of(cls, model_cfg: Any) -> Sizes:
        h, heads = model_cfg.hidden_size, model_cfg.num_attention_heads
        return cls(
            h=h, L=model_cfg.num_hidden_layers, V=model_cfg.vocab_size,
            inter=getattr(model_cfg, "intermediate_size", 4 * h), heads=heads,
            kv_heads=getattr(model_cfg, "num_key_value_heads", heads) or heads,
            head_dim=getattr(model_cfg, "head_dim", None) or h // heads,
            n_lm=llama_param_count(model_cfg), n_backbone=llama_param_count(model_cfg, lm_head=False),
        )  # fmt: skip

    @property
    def layer(self) -> float:
        """Parameters of one decoder layer (exact: ``n_lm − 2·V·h − h == n_backbone − V·h − h``)."""
        return (self.n_backbone - self.V * self.h - self.h) / self.L

    def root(self, lm_head: bool) -> int:
        """FSDP2's root unit: the embedding, the final norm and (``lm_head``) the LM head."""
        return (2 * self.V * self.h if lm_head else self.V * self.h) + self.h


def sharded_states(n: int, world: int, optimizer: str) -> float:
    """fp32 masters + AdamW states of ``n`` parameters, sharded over ``world``."""
    return (4 + optimizer_state_bytes(optimizer)) * n / world


def sharded_grads(n: int, world: int) -> float:
    """fp32 gradients of ``n`` parameters after the reduce-scatter, sharded over ``world``."""
    return 4 * n / world


def unsharded_grad_buffers(n: int) -> int:
    """The backward's gradient-sized fp32 buffers (4 bytes per parameter, as measured)."""
    return 4 * n


def gathered_bytes(s: Sizes, pbytes: int, lm_head: bool, layers: int) -> float:
    """What FSDP2 keeps all-gathered in ``param_dtype``: the root unit plus ``layers`` decoder
    layers (the last layer, not resharded after forward, and/or one in flight)."""
    return pbytes * (s.root(lm_head) + layers * s.layer)


# --------------------------------------------------------------------------------------------
# 1. The estimate: each trainer's phases
# --------------------------------------------------------------------------------------------
def reward_phases(cfg: Any, model_cfg: Any, world: int, rows: int) -> dict[str, float]:
    """A reward model's phases (scalar head; ``rows`` pairs per micro-batch, i.e. 2·rows sequences
    of ``max_length``).

    Returns:
        ``train`` = states + sharded gradients + gathered (root, the last layer and one in
        flight) + the backward's buffers + one micro-batch's activations; ``checkpoint`` = the
        states; ``eval`` = states + gathered + one eval batch's forward.
    """
    s = Sizes.of(model_cfg)
    n, pbytes, T = s.n_backbone, dtype_bytes(cfg.param_dtype), cfg.max_length
    states = sharded_states(n, world, cfg.optimizer)
    grads = sharded_grads(n, world)
    gathered = gathered_bytes(s, pbytes, lm_head=False, layers=2)
    act = activation_bytes(model_cfg, 2 * rows, T, cfg.param_dtype, cfg.activation_checkpointing)
    fwd = activation_bytes(model_cfg, 2 * cfg.eval_batch_size, T, cfg.param_dtype, True) / s.L
    return {
        "train": states + grads + gathered + unsharded_grad_buffers(n) + act,
        "checkpoint": states,
        "eval": states + gathered + fwd,
    }


def lm_phases(
    cfg: Any, model_cfg: Any, world: int, rows: int, eval_rows: int, kernels: str = "fused"
) -> dict[str, float]:
    """A causal LM's phases (SFT / FIGA; ``rows`` / ``eval_rows`` sequences of ``max_length`` per
    micro-batch / eval batch: a FIGA pair is two).

    Args:
        kernels: ``fused`` (``fgkernels.token_logprobs``: no fp32 copy of the logits) or
            ``reference`` (the eager reference a dry run uses: an fp32 upcast and log-softmax,
            ≈ 16 bytes per logit in training and 8 in evaluation, as measured).

    Returns:
        ``train`` = states + gathered (root with the LM head, one layer in flight) + the larger
        of the loss's peak (activations, logits, the log-prob's temporaries) and the backward's
        (sharded gradients, the backward's buffers, activations, the logits' fp32 gradient);
        ``checkpoint`` = the states; ``eval`` = states + gathered + one eval batch's forward and
        logits.
    """
    s = Sizes.of(model_cfg)
    n, pbytes, T = s.n_lm, dtype_bytes(cfg.param_dtype), cfg.max_length
    ref = kernels == "reference"
    states = sharded_states(n, world, cfg.optimizer)
    gathered = gathered_bytes(s, pbytes, lm_head=True, layers=1)
    act = activation_bytes(model_cfg, rows, T, cfg.param_dtype, cfg.activation_checkpointing)
    logits = rows * T * s.V
    loss_peak = act + logits * (pbytes + (16 if ref else 4))
    backward_peak = sharded_grads(n, world) + unsharded_grad_buffers(n) + act + logits * 4
    fwd = activation_bytes(model_cfg, eval_rows, T, cfg.param_dtype, True) / s.L
    return {
        "train": states + gathered + max(loss_peak, backward_peak),
        "checkpoint": states,
        "eval": states + gathered + fwd + eval_rows * T * s.V * (pbytes + (8 if ref else 0)),
    }


def ppo_parts(
    cfg: Any, model_cfg: Any, world: int, prompt_len: int, kernels: str = "fused"
) -> dict[str, float]:
    """PPO's parts, for a LLaMA-like ``model_cfg`` used by all four models (actor, critic
    trainable; reference, RM frozen; fp32 masters sharded over ``world``).

    Args:
        kernels: ``fused`` (the fgkernels: a forward's logits are the only [B, R, V] tensor) or
            ``reference`` (the eager references, as in a dry run: fp32 upcast, log-softmax,
            softmax and entropy terms, ≈ 20 more bytes per logit).

    Returns:
        ``params`` (the four models' fp32 shards), ``grads`` (actor + critic fp32 shards),
        ``optimizer`` (AdamW's two moments of them), ``gathered`` (what FSDP2 keeps all-gathered
        in ``param_dtype`` besides the layer at work: each model's root — embedding, final norm,
        LM head — and last layer, which are not resharded after forward, and one more layer in
        flight), ``gathered_trainable`` (the same of actor and critic), ``generation`` (the whole
        actor all-gathered for a rollout), ``kv_cache``, ``prefill`` (one layer's MLP
        intermediates over the prompts), ``score`` (a forward batch's logits and what the
        log-prob kernel makes of them), ``reduce_scatter`` (with ``grad_sync=step``: the
        unsharded fp32 gradients FSDP2 accumulates between micro-batches, 4 bytes per trainable
        parameter; with ``micro_batch``: the backward's gradient-sized fp32 buffers of the larger
        model, 4 bytes per actor parameter; both measured, see ``bench/RESULTS.md``),
        ``activations`` (one micro-batch's stored activations and logits), ``rollout``; and
        ``total`` = the largest phase of :func:`ppo_phases`.
    """
    s = Sizes.of(model_cfg)
    L, V = s.L, s.V
    n, n_head, layer = s.n_lm, s.n_backbone, s.layer
    pbytes = dtype_bytes(cfg.param_dtype)
    per_logit = pbytes + (20 if kernels == "reference" else 0)
    R = cfg.max_new_tokens
    T = prompt_len + R
    B, Bf, Bm = cfg.rollout_batch_size, cfg.forward_batch_size, cfg.micro_batch_size
    trainable = n + n_head  # actor + critic
    # FSDP2 roots (embedding, norm, LM head) and last layers stay gathered after a forward
    roots_trainable = pbytes * ((s.root(True) + layer) + (s.root(False) + layer))  # actor, critic
    roots = roots_trainable + pbytes * ((s.root(True) + layer) + (s.root(False) + layer))  # + ref, RM
    est = {
        "params": 4 * (2 * n + 2 * n_head) / world,
        "grads": sharded_grads(trainable, world),
        "optimizer": optimizer_state_bytes(cfg.optimizer) * trainable / world,
        "gathered": roots + pbytes * layer,
        "gathered_trainable": roots_trainable,
        "generation": pbytes * n,
        "kv_cache": 2 * L * B * T * s.kv_heads * s.head_dim * pbytes,
        "prefill": B * prompt_len * 2 * s.inter * pbytes,
        "score": Bf * (R + 1) * V * per_logit,
        "reduce_scatter": unsharded_grad_buffers(trainable) if cfg.grad_sync == "step" else 4.0 * n,
        "activations": activation_bytes(model_cfg, Bm, T, cfg.param_dtype, cfg.activation_checkpointing)
        + Bm * (R + 1) * V * (per_logit + 4),
        "rollout": B * (T * 10 + R * 4 * 10),  # ids, masks and ~10 fp32 [B, R] fields
    }
    est["total"] = max(ppo_phases(cfg, est).values())
    return est


def ppo_phases(cfg: Any, est: dict[str, float]) -> dict[str, float]:
    """PPO's per-device peak of each phase from :func:`ppo_parts`: the sharded states of the four
    models and the optimizer's under every phase, plus ``generate``: the all-gathered actor, the
    KV cache and the prefill's transients; ``score``: what FSDP2 keeps gathered and a forward
    batch's logits; ``rewards``: the rollout; ``train``: gradients, the reduce-scatter buffers and
    a micro-batch's activations; ``checkpoint``: the states."""
    static = est["params"] + est["optimizer"] + est["rollout"]
    return {
        "generate": static + est["generation"] + est["kv_cache"] + est["prefill"],
        "score": static + est["gathered"] + est["score"],
        "rewards": static + est["gathered"],
        "train": static + est["gathered"] + est["grads"] + est["reduce_scatter"] + est["activations"],
        "checkpoint": static + est["gathered_trainable"],
    }


# --------------------------------------------------------------------------------------------
# 2. The real run's check, before any model is built
# --------------------------------------------------------------------------------------------
def check(
    run: Any,
    trainer: str,
    phases: dict[str, float],
    shape: dict[str, Any] | Callable[[], dict[str, Any]],
    parts: dict[str, float] | None = None,
) -> None:
    """The memory check of every trainer (every rank): the dry run's measured peaks of exactly
    this run (``output_dir/memory_plan.json``) when there are some, else the largest estimated
    phase, against ``memory_limit_gb``; says which figure it used.

    Args:
        phases: the estimated bytes per phase (:func:`reward_phases`, :func:`lm_phases`,
            :func:`ppo_phases`).
        shape: the model's shape (:func:`trainer.infra.dryrun.model_shape`; PPO: its models'),
            or a callable giving it, called only outside a dry run (PPO's reads the reward model's
            ``config.json``).
        parts: PPO's parts (:func:`ppo_parts`), said as one ``memory estimate: ...`` line (also in
            a dry run); without them (reward, SFT) a dry run says nothing here (it measures
            instead) and a real run says ``memory measured|estimated per device: ...``.

    Raises:
        ConfigError: it does not fit, or the plan is not a measurement of this run.
    """
    if parts is None:  # reward, SFT (trainer.infra.dryrun.check_run_memory: nothing in a dry run)
        check_run_memory(run, trainer, phases, shape() if callable(shape) else shape)
        return
    cfg, di = run.cfg, run.di
    if in_dry_run():  # a dry run measures every phase and checks its own peaks (report)
        line, limit = ", ".join(f"{k} {format_bytes(v)}" for k, v in parts.items()), None
    else:  # the dry run's measurement of exactly this run when there is one, else the estimate
        shape = shape() if callable(shape) else shape
        measured, note = measured_peaks(cfg, trainer, di.world_size, shape, phases)
        run.say(f"memory plan: {note}")
        line, limit = ppo_check(cfg, parts, di.device, measured)
    run.say(f"memory estimate: {line}" + (f" (limit {format_bytes(limit)})" if limit else " (not checked)"))


def ppo_check(
    cfg: Any, est: dict[str, float], device: torch.device, measured: dict[str, float] | None = None
) -> tuple[str, float | None]:
    """PPO's parts as one line, and the limit they were checked against (None: not checked): the
    dry run's measured peak when ``measured`` (its per-phase peaks for exactly this config, world
    size and model: :func:`trainer.infra.dryrun.measured_peaks`) is given, else the estimate's
    largest phase (:func:`trainer.infra.dryrun.check_fits`).

    Raises:
        ConfigError: the figure exceeds the limit (names the phase or the biggest parts, and the knobs).
    """
    line = ", ".join(f"{k} {format_bytes(v)}" for k, v in est.items()) + " per device"
    top = ", ".join(k for _, k in sorted(((v, k) for k, v in est.items() if k != "total"), reverse=True)[:2])
    limit = check_fits(cfg, device, est["total"], f"{line}; biggest: {top}", measured)
    if measured:
        phase = max(measured, key=measured.get)
        line += f"; measured peak {format_bytes(measured[phase])} (phase '{phase}')"
    return line, limit


# --------------------------------------------------------------------------------------------
# 3. The dry run
# --------------------------------------------------------------------------------------------
# the overrides of every step-scheduled trainer's dry run: one optimizer step over every
# micro-batch of the accumulation, a checkpoint, on the CPU (the reward model adds
# save_best/plots/report off)
SUPERVISED_DRY_RUN: dict[str, Any] = dict(
    max_steps=1, stop_after_steps=0, resume=False, eval_every=0, checkpoint_every=1, progress=False,
    device="cpu", attn_implementation="sdpa", deterministic=False, log_every=1, report_to=[],
)  # fmt: skip


def dry_run(cfg: Any, trainer: str, train: Callable[[Any], dict], overrides: dict[str, Any]) -> dict:
    """``dry_run=true``: ``train`` itself on ``cfg`` with ``overrides`` (one step / iteration ...)
    writing into a temporary directory, inside :func:`trainer.infra.dryrun.fake_world`
    (``dry_run_world_size`` fake ranks, fake tensors); then the measured plan is written where
    ``cfg`` points (the real run's ``memory_limit_gb`` check reads it) and said. Returns
    ``train``'s result: ``{"peaks", "parts", "estimates", ...}`` (:func:`report`).

    Raises:
        trainer.infra.dryrun.DryRunError: a phase failed or its peak exceeds ``memory_limit_gb``.
    """
    with tempfile.TemporaryDirectory(prefix="fgrlhf-dry-run-") as tmp:
        dcfg = dataclasses.replace(cfg, output_dir=tmp, **overrides)
        with fake_world(cfg.dry_run_world_size):
            result = train(dcfg)
    path = save_plan(cfg, trainer, result)
    if path is not None:
        print(f"[{trainer}] measured memory plan written to {path}")
    return result


def track(
    cfg: Any,
    say: Callable[[str], None],
    models: Sequence[Any],
    optimizers: Sequence[torch.optim.Optimizer],
    enter: bool = True,
) -> PhaseMemory | None:
    """In a dry run: the optimizers' states created (a real run holds them from its first step
    on) and a :class:`~trainer.infra.dryrun.PhaseMemory` over ``models`` (entered when ``enter``:
    reward and SFT; PPO enters it around its loop). None in a real run."""
    if not in_dry_run():
        return None
    warm_optimizer_states(*optimizers)
    pm = PhaseMemory(list(models), optimizers, say=say, limit_gb=cfg.memory_limit_gb)
    return pm.__enter__() if enter else pm


def report(run: Any, pm: PhaseMemory, estimates: dict[str, float], headline: str, shape: dict) -> dict:
    """A dry run's end: ``headline`` and the per-phase table of measured peaks beside
    ``estimates``, every phase checked against ``memory_limit_gb``
    (:func:`trainer.infra.dryrun.finish`; the tracker already left).

    Raises:
        trainer.infra.dryrun.DryRunError: a phase's peak exceeds ``memory_limit_gb``.
    """
    return finish(run, pm, estimates, headline, shape)
