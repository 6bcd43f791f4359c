"""PPO with token-level rewards (Xu et al. 2024, §2.2): a lean, hand-written loop over FSDP2.

Tiny default (a tiny random-init LLaMA actor, a tiny token-level reward model trained on the fly
on the synthetic fine-grained set, prompts from that set; a minute or two on 2 CPU cores; the
same code path as the real job)::

    torchrun --standalone --nproc_per_node=2 trainer/ppo.py
    python trainer/ppo.py reward_level=sequence         # one process, no torchrun
    python trainer/ppo.py reward_source=gold            # the known per-token gold reward

The real job (LLaMA-7B, one node with 8×A100-80G; multi-node: replace ``--standalone`` with
``--nnodes=N --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 --rdzv_id=JOB``)::

    torchrun --standalone --nproc_per_node=8 trainer/ppo.py --config configs/llama7b_8xa100/ppo.yaml \\
        init_from=/ckpt/llama7b-sft reward_model=/ckpt/rm7b_token/final prompts=alpaca_unlabeled.jsonl

:func:`train` reads top to bottom: ``# 0. set-up`` (:func:`setup`: run, prompts, the four
models, optimizers, resume), then every iteration ``# 1. generate`` and ``# 2. score``
(:func:`collect_rollout`: the actor, all-gathered once, samples with a KV cache and keeps its
sampling log-probs as the old ones; reference log-probs with ``fgkernels.token_logprobs``,
values, rewards from the frozen reward model), ``# 3. rewards + KL`` (``reward_level=sequence``:
[−βKL_1, …, R − βKL_n]; ``token``: [R_1 − βKL_1, …, R_n − βKL_n], R_t the RM's scores scaled by
``token_reward_scale``), ``# 4. GAE`` (``fgkernels.gae``, advantages whitened over all
ranks), ``# 5. PPO epochs`` (:func:`ppo_step` per shuffled minibatch: gradient accumulation,
losses divided by the global valid-token count), ``# 6. log / checkpoint``
(:class:`IterationStats`: one all-reduce), and at the end ``# 7. the final actor``.

Outputs under ``output_dir``: ``config.yaml``, ``metrics.jsonl`` (one record per iteration),
``checkpoints/step_*`` (DCP of actor + critic, exact resume: rerunning the same command continues
from the newest intact checkpoint), ``final/actor`` (a plain ``transformers`` causal LM). SIGTERM
finishes the current optimizer step (the iteration's remaining minibatches are skipped, and it
counts as done), saves a checkpoint and exits 75 (rerun to resume; exit codes: ``--help``).
``python trainer/ppo.py --help`` lists every config key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import random
import sys
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

if __package__ in (None, ""):  # `python trainer/ppo.py` / `torchrun trainer/ppo.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch import nn
from transformers import AutoConfig

import fgkernels as fk
import trainer.reward as reward_trainer
import trainer.sft as sft_trainer
from trainer import loop, memory, rlhf
from trainer.data.examples import TokenizedExample, build_prompt, checked_template, collate
from trainer.data.formats import DataError, Prompt, prompt_parts, read_records, valid_records
from trainer.data.synthetic import SyntheticConfig, bootstrap, sample_prompt
from trainer.data.synthetic import generate as synthetic_records
from trainer.eval.report import ppo_report
from trainer.infra.checkpoint import Checkpointer
from trainer.infra.config import ConfigError, TrainConfig, cli_main, declared, to_yaml
from trainer.infra.dist import (
    all_reduce_sum,
    barrier,
    broadcast_object,
    exit_process,
    get_rank,
    get_world_size,
    on_rank0,
)
from trainer.infra.dryrun import (
    ARCH_PRESETS,
    host_item,
    host_list,
    in_dry_run,
    model_shape,
    real_tensors,
    stand_in_tokenizer,
)
from trainer.infra.metrics import MetricsLog, summary_figures
from trainer.infra.runtime import (
    STOP,
    Phases,
    Preempted,
    Run,
    build_optimizer,
    open_metrics,
    peak_memory_mb,
    start_run,
)
from trainer.infra.summary import PPO_ROWS, heldout_note, ppo_summary
from trainer.models import (
    GoldReward,
    RewardModel,
    base_config,
    build_sharded,
    check_model_dir,
    full_state_dict,
    initial_state_dict,
    load_on_rank0,
    load_tokenizer,
    no_dropout,
    pad_token_id,
    per_token_scores,
    position_ids,
    read_reward_meta,
    save_pretrained,
    scalar_head_config,
)
from trainer.rollout import Rollout, generate, rollout_samples, unsharded

warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

__all__ = ["IterationStats", "PPOConfig", "collect_rollout", "estimate_memory", "main", "ppo_step", "train"]


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
@dataclass
class PPOConfig(TrainConfig):
    """Everything ``trainer/ppo.py`` reads. YAML (``--config``) + ``key=value`` overrides."""

    CHOICES: ClassVar[dict] = {
        "reward_level": ("token", "sequence"),
        "token_reward_scale": ("running_mean", "mean", "raw"),
        "reward_source": ("learned", "gold"),
        "rm_level": ("auto", "token", "sequence"),
        "kl_estimator": ("k1", "k3"),
        "kl_controller": ("fixed", "adaptive"),
        "old_logprobs": ("generate", "recompute"),
    }
    AT_LEAST: ClassVar[dict] = {
        "rollout_batch_size": 1, "forward_batch_size": 1, "num_minibatches": 1, "micro_batch_size": 1,
        "ppo_epochs": 1, "max_new_tokens": 1, "max_prompt_length": 2, "iterations": 1,
        "stop_after_iterations": 0, "rm_epochs": 0, "actor_lr": 0, "critic_lr": 0, "clip_eps": 0,
        "value_clip_eps": 0, "vf_coef": 0, "entropy_coef": 0, "kl_coef": 0, "kl_target": 0,
        "kl_horizon": 1, "memory_limit_gb": 0, "critic_warmup": 0, "lam": 0, "gamma": 0,
        "save_rollouts_every": 0,
        "rollout_samples": 1, "sft_epochs": 0, "eval_every": 0, "eval_size": 1,
    }  # fmt: skip
    PATHS: ClassVar[dict] = {
        "prompts": None,
        "reward_model": None,
        "eval_prompts": None,
        "eval_reward_model": None,
    }
    RESUME_SAFE: ClassVar[dict] = dict.fromkeys(
        (
            "iterations",
            "stop_after_iterations",
            "save_final",
            "tensorboard",  # a key of earlier versions (now report_to): their saved configs resume
            "memory_limit_gb",
            "forward_batch_size",
            "plots",
            "report",
            "save_rollouts_every",
            "rollout_samples",
            "eval_every",  # evaluation draws from its own saved-and-restored random stream
            "eval_size",
            "save_best",
        )
    )

    reward_level: str = "token"
    """``token``: r_t = R_t − β·KL_t from the RM's per-token scores (fine-grained token-level PPO);
    ``sequence``: [−β·KL_1, …, R − β·KL_n] with R the RM's sequence reward (PPO-RLHF, and the
    paper's "fine-grained PPO" arm with a sequence-level RM trained on edited pairs)."""
    token_reward_scale: str = "running_mean"
    """Token level, how the RM's per-token scores r_t become PPO rewards (all sum to R(τ) but
    ``raw``; :func:`trainer.rlhf.scale_token_rewards`): ``running_mean`` (the causal increments of
    the running mean of the content scores, EOS excluded: no response length is favoured, and
    stopping is credited with exactly its effect on R(τ)), ``mean`` (r_t / T: also sums to R(τ),
    but GAE's reward-to-go cannot see that stopping raises the earlier tokens' shares, so with
    positive scores responses drift to ``max_new_tokens``) or ``raw`` (the paper's [R_1 … R_n],
    whose sum T·R(τ) pays for length whenever the level is positive)."""
    missing_eos_penalty: float = -1.0
    """Added to R of every response that did not end with EOS (cut at ``max_new_tokens``), as
    TRL's ``missing_eos_penalty`` / AlpacaFarm's no-stop-token penalty (−1, AlpacaFarm's). From the
    tiny SFT start without it, the first iterations' noisy advantages (the critic still learning)
    drove 53-73% of the responses to the cap around iterations 7-20 before they settled; with it,
    at most 8% (README, the main job). 0: off."""
    truncation_warn: float = 0.5
    """Warn when more than this fraction of an iteration's responses is cut at ``max_new_tokens``."""
    sequence_reward_from_token_rm: bool = False
    """Allow ``reward_level=sequence`` with a token-level RM (R = its mean token reward): an
    explicit variant, not the paper's "fine-grained PPO" arm (a sequence-level RM on edited pairs)."""
    reward_source: str = "learned"
    """``learned``: the reward model at ``reward_model`` (trained on the fly on the synthetic set
    when empty); ``gold``: the synthetic world's known per-token word quality (tests, studies)."""
    reward_model: str = ""
    """Directory written by ``trainer/reward.py`` (``final/`` or ``best/``); empty with
    ``reward_source=learned``: train a tiny one first under ``output_dir/rm``."""
    rm_level: str = "auto"
    """The on-the-fly reward model's level (``token`` or ``sequence``; ``auto``: ``reward_level``'s),
    when one is trained."""
    rm_epochs: float = 2.0
    """Epochs of the on-the-fly reward model."""
    reward_norm: bool = False
    """Normalise the RM's scores by running mean/std (global statistics), before the token scaling
    and the KL penalty."""

    prompts: str = ""
    """Prompt file (JSONL/JSON/parquet with ``prompt``, or ``instruction`` [+ ``input``]); empty:
    the synthetic set's prompts."""
    synthetic: SyntheticConfig = field(default_factory=lambda: SyntheticConfig(n_pairs=800))
    """The generated world used when ``prompts`` is empty (prompts, tokenizer, gold qualities)."""
    max_prompt_length: int = 32
    """Prompt tokens kept (cut from the left, BOS kept)."""
    max_new_tokens: int = 32
    """Most response tokens per rollout."""
    temperature: float = 1.0
    """Sampling temperature (log-probs are taken at the same temperature)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1: plain sampling). Below 1, sampling is from the truncated
    distribution while log-probs use the full one: slightly off-policy (a warning says so)."""

    old_logprobs: str = "generate"
    """Where PPO's old log-probs (and the entropy) come from: ``generate`` — the sampling logits
    of the rollout itself (as TRL does; one policy forward fewer per iteration; in fp32 they equal
    a recomputation to ~1e-6, tested) — or ``recompute``: a scoring forward of the actor over the
    rollout (as verl/OpenRLHF do; in bf16 the KV-cache decoding and a full forward round
    differently, so the first ratio is exactly 1 only this way)."""

    init_from: str = ""
    """SFT checkpoint of the actor (and reference); empty: a tiny LLaMA of the sizes below, SFT'd
    first on the synthetic world (``sft_epochs``) or, with ``sft_epochs=0``, random."""
    sft_epochs: float = 3.0
    """Without ``init_from``, in the synthetic world: first fine-tune the tiny LLaMA for this many
    epochs on the world's preferred responses (``trainer/sft.py`` under ``output_dir/sft``; a few
    seconds), the actor's start — PPO from a random model never learns to end its responses.
    0: start from the random init."""
    critic_from: str = "auto"
    """Critic initialisation: a reward-model directory, ``actor`` (the actor's backbone + a fresh
    head) or ``auto``: at ``reward_level=sequence`` the reward model when it is a learned one of the
    actor's shape (its score ≈ R, the value's scale), else the actor; at ``reward_level=token``
    the actor — a token RM's head predicts one token's reward, not the return-to-go (the numbers:
    ``bench/RESULTS.md``, ``bench/token_reward_scale.py``)."""

    iterations: int = 60
    """PPO iterations (rollout + update)."""
    stop_after_iterations: int = 0
    """End the run (with a checkpoint) after this iteration; 0: run to ``iterations``."""
    rollout_batch_size: int = 32
    """Prompts per rank per iteration."""
    forward_batch_size: int = 32
    """Rows per forward in the no-grad scoring passes."""
    num_minibatches: int = 2
    """Optimizer steps per PPO epoch (each over rollout_batch_size / num_minibatches rows per rank)."""
    micro_batch_size: int = 8
    """Rows per forward/backward; a minibatch is accumulated over several micro-batches."""
    ppo_epochs: int = 2
    """Passes over each rollout."""
    critic_warmup: int = 0
    """Iterations at the start in which only the critic trains (the actor is frozen, so the KL
    stays ~0; a dry run measures the actor's step anyway):
    verl's ``critic_warmup``, OpenRLHF's ``freezing_actor_steps``. A critic initialised from a token
    RM predicts one token's reward, not the return-to-go, and its first errors bias the advantages."""
    actor_lr: float = 1e-3
    """Actor AdamW learning rate (constant)."""
    critic_lr: float = 2e-3
    """Critic AdamW learning rate (constant)."""

    gamma: float = 1.0
    """GAE discount γ."""
    lam: float = 0.95
    """GAE λ."""
    whiten_advantages: bool = True
    """Whiten advantages over the valid tokens of all ranks."""
    clip_eps: float = 0.2
    """Policy ratio clip ε."""
    value_clip_eps: float = 0.2
    """Value clip (absolute, around the old value)."""
    vf_coef: float = 0.5
    """Weight of the value loss (the critic has its own optimizer; this scales its gradient)."""
    entropy_coef: float = 0.0
    """Entropy bonus weight (0: off)."""
    kl_coef: float = 0.05
    """β of the per-token KL penalty (0 allowed); the initial value with the adaptive controller."""
    kl_estimator: str = "k1"
    """Per-token KL estimate in the reward: ``k1`` (log π − log π_ref) or ``k3``."""
    kl_controller: str = "fixed"
    """``fixed`` or ``adaptive`` (Ziegler et al.: β follows ``kl_target`` nats per sequence)."""
    kl_target: float = 6.0
    """Adaptive controller: target KL per sequence (nats)."""
    kl_horizon: int = 10000
    """Adaptive controller: horizon (in sequences)."""

    output_dir: str = "runs/ppo"
    """Where config, metrics, checkpoints and the final actor go."""
    checkpoint_every: int = 20
    """Checkpoint every this many iterations (and at the end); 0: only at the end."""
    save_final: bool = True
    """Write ``output_dir/final/actor`` (a ``transformers`` directory) at the end."""
    plots: bool = True
    """At the end, draw the training curves to ``output_dir/plots/*.png`` (``fgrlhf plot``)."""
    save_rollouts_every: int = 10
    """Append ``rollout_samples`` rollouts of rank 0 (text, per-token RM reward, KL, total reward,
    advantage, value) to ``output_dir/rollouts.jsonl`` at iteration 1, every this many iterations
    and the last; 0: never."""
    rollout_samples: int = 4
    """Rollouts saved per chosen iteration."""
    report: bool = True
    """At the end, write ``output_dir/report.html`` from the saved rollouts (``fgrlhf report``)."""
    eval_every: int = 10
    """Held-out evaluation every this many iterations (and at the last): the actor's sampled answers
    (a fixed seed, the training's random stream untouched) to ``eval_size`` held-out prompts,
    scored by the run's judge — the synthetic world's gold reward, else ``eval_reward_model`` —
    logged as ``heldout_score``. A training reward that keeps rising
    while this falls is over-optimisation of the reward model; the summary says when it peaked.
    0: off."""
    eval_prompts: str = ""
    """Held-out prompt file (the ``prompts`` format); empty: ``eval_size`` fresh prompts of the
    synthetic world (none of the training prompts)."""
    eval_size: int = 64
    """Held-out prompts per evaluation (rounded down to a multiple of the world size)."""
    eval_reward_model: str = ""
    """The held-out judge of a real run: a reward model other than the one PPO optimises (say, one
    trained on other pairs or a larger one; ``trainer/reward.py``'s ``final/``), its sequence
    reward R(τ) averaged. In the synthetic world the gold reward is the judge."""
    save_best: bool = True
    """Keep ``output_dir/best/actor``: the actor at the best held-out score so far (written when an
    evaluation improves on it), beside ``final/actor``."""

    def check(self) -> None:
        super().check()
        mb, rem = divmod(self.rollout_batch_size, self.num_minibatches)
        if rem or mb % self.micro_batch_size:
            raise ConfigError(
                f"config keys rollout_batch_size={self.rollout_batch_size}, num_minibatches="
                f"{self.num_minibatches}, micro_batch_size={self.micro_batch_size}: the rollout must split "
                "into equal minibatches of whole micro-batches"
            )
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError("config keys temperature > 0 and 0 < top_p <= 1 are required")
        if self.top_p < 1:
            warnings.warn(
                "top_p < 1: tokens are sampled from the truncated nucleus, but old/reference log-probs "
                "use the full softmax(z/τ), so PPO's ratio and the KL are slightly off-policy",
                stacklevel=2,
            )
        if self.reward_source == "gold" and self.prompts:
            raise ConfigError(
                "config key 'reward_source': gold rewards exist only for the synthetic world (prompts='')"
            )
        if self.critic_from not in ("auto", "actor") and not Path(self.critic_from).exists():
            raise DataError(self.critic_from, "no such directory (config key 'critic_from')")


# --------------------------------------------------------------------------------------------
# Prompts and models
# --------------------------------------------------------------------------------------------
def load_prompts(path: str, tokenizer: Any, max_len: int, template: str = "auto") -> list[TokenizedExample]:
    """Every prompt of ``path`` (``prompt``, or ``instruction`` [+ ``input``], kept apart:
    :func:`trainer.data.formats.prompt_parts`), tokenised by the same code as training examples
    (:func:`trainer.data.examples.build_prompt`: ``template``, BOS, cut from the left to ``max_len``)."""
    prompts = valid_records(read_records(path), lambda where, rec: prompt_parts(rec, path, where))
    out = [build_prompt(tokenizer, prompt, max_len, template) for _, prompt in prompts]
    if not out:
        raise DataError(path, "no prompts")
    return out


def train_reward_model_on_the_fly(cfg: PPOConfig, out_dir: Path, pairs: Path, tok_dir: Path) -> Path:
    """Train a tiny reward model with ``trainer/reward.py`` (every rank calls it) unless
    ``out_dir/rm/final`` already exists; returns that directory."""
    final = out_dir / "rm" / "final"
    rcfg = reward_trainer.RewardConfig(
            rm_level=cfg.reward_level if cfg.rm_level == "auto" else cfg.rm_level, data=str(pairs),
            tokenizer=str(tok_dir), output_dir=str(out_dir / "rm"),
            hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size, epochs=cfg.rm_epochs, eval_every=0,
            save_best=False, log_every=20, progress=False, seed=cfg.seed, device=cfg.device,
            num_threads=cfg.num_threads, checkpoint_every=0, deterministic=cfg.deterministic,
            prompt_template=cfg.prompt_template,
    )  # fmt: skip
    return trained_on_the_fly(rcfg, final, reward_trainer.train)


def sft_on_the_fly(cfg: PPOConfig, out_dir: Path, pairs: Path, tok_dir: Path) -> Path:
    """Fine-tune the tiny LLaMA on the synthetic world's preferred responses with
    ``trainer/sft.py`` (every rank calls it) unless ``out_dir/sft/final`` already exists; returns
    that directory, the actor's start."""
    final = out_dir / "sft" / "final"
    scfg = sft_trainer.SFTConfig(
            objective="sft", sft_response="chosen", data=str(pairs), tokenizer=str(tok_dir),
            output_dir=str(out_dir / "sft"), hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
            num_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size, epochs=cfg.sft_epochs,
            eval_every=0, log_every=20, progress=False, seed=cfg.seed, device=cfg.device,
            num_threads=cfg.num_threads, checkpoint_every=0, deterministic=cfg.deterministic,
            prompt_template=cfg.prompt_template, max_length=cfg.max_prompt_length + cfg.max_new_tokens,
    )  # fmt: skip
    return trained_on_the_fly(scfg, final, sft_trainer.train)


def trained_on_the_fly(sub_cfg: Any, final: Path, train_fn: Any) -> Path:
    """``final`` (``<run>/final``), trained with ``train_fn(sub_cfg)`` on every rank unless it
    exists (rank 0's view decides for all). An existing one must come from a run of the same
    settings (its ``config.yaml``): a PPO rerun with another size, seed or world would otherwise
    start from a stale model, silently.

    Raises:
        ConfigError: the saved run's settings differ (named), on every rank.
    """
    if not broadcast_object(final.exists()):
        train_fn(sub_cfg)
        return final
    diff = broadcast_object(
        _settings_diff(sub_cfg, final.parent / "config.yaml") if get_rank() == 0 else None
    )
    if diff:
        raise ConfigError(
            f"{final} was trained on the fly with other settings ({diff}): delete {final.parent} to "
            "train it again with this run's, or set the keys back"
        )
    return final


def _settings_diff(sub_cfg: Any, saved: Path) -> str:
    """The keys (but paths, logging and the trainer's resume-safe ones) in which ``sub_cfg``
    differs from the run config saved at ``saved``; '' when equal, or when none was saved."""
    if not saved.exists():
        return ""
    old = OmegaConf.to_container(OmegaConf.load(saved))
    new = OmegaConf.to_container(OmegaConf.create(to_yaml(sub_cfg)))
    skip = {"output_dir", "data", "tokenizer", "log_every", *declared(type(sub_cfg), "RESUME_SAFE")}
    keys = sorted(k for k in set(old) | set(new) if k not in skip and old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def reward_level_of(rm_dir: Path, template: str | None = None) -> str:
    """The level of the reward model in ``rm_dir`` (``token`` / ``sequence``), after checking it is
    a reward-model directory written by ``trainer/reward.py`` and, given ``template`` (this run's
    resolved prompt template), that the RM saw its prompts rendered the same way.

    Raises:
        ConfigError: not a model directory (a run's root gets a hint), no reward metadata, or
            another prompt template.
    """
    check_model_dir(str(rm_dir), "reward_model")
    try:
        meta = read_reward_meta(rm_dir)
    except ValueError as e:
        raise ConfigError(f"config key 'reward_model': {e}") from None
    rm_template = meta.get("prompt_template")
    if template is not None and rm_template is not None and rm_template != template:
        raise ConfigError(
            f"config key 'prompt_template': this run renders prompts as {template!r}, but the reward "
            f"model {rm_dir} was trained on {rm_template!r} prompts: set prompt_template={rm_template}"
        )
    return meta["level"]


class Models(NamedTuple):
    """The four PPO models (FSDP2-sharded) and what they were built from."""

    actor: nn.Module  # trainable causal LM
    ref: nn.Module  # frozen copy of the actor's initial weights
    critic: nn.Module  # trainable scalar head: V(s_t)
    reward: Any  # frozen RewardModel, or the GoldReward table
    actor_config: Any  # the actor's transformers config (for the final save)
    critic_source: str  # ``actor`` or the reward-model directory


def build_models(
    run: Run, tokenizer: Any, rm_dir: Path | None, syn: SyntheticConfig | None, init_from: str
) -> Models:
    """Actor and reference (from ``init_from``: ``cfg.init_from`` or the SFT model trained on the
    fly), critic (the RM's weights, value head = reward head; or the actor's backbone + a fresh
    head) and reward model, all through :func:`trainer.models.build_sharded`."""
    cfg, di = run.cfg, run.di
    pad_id = pad_token_id(tokenizer)
    a_cfg = no_dropout(base_config(dataclasses.replace(cfg, init_from=init_from), tokenizer))
    actor_sd = load_on_rank0(di, "causal_lm", a_cfg, init_from, cfg.seed)
    # (each model gets its own shallow copy: set_model_state_dict replaces the dict's values)
    actor = build_sharded("causal_lm", a_cfg, actor_sd and dict(actor_sd), di, cfg, train=True)
    ref = build_sharded("causal_lm", a_cfg, actor_sd and dict(actor_sd), di, cfg, train=False)

    critic_src = cfg.critic_from
    if critic_src == "auto":
        critic_src = "actor"
        if rm_dir is not None and cfg.reward_level == "sequence":
            rc = AutoConfig.from_pretrained(rm_dir)
            keys = ("hidden_size", "num_hidden_layers", "vocab_size")
            critic_src = (
                str(rm_dir) if all(getattr(rc, k, None) == getattr(a_cfg, k, None) for k in keys) else "actor"
            )
    if critic_src == "actor":
        c_cfg = scalar_head_config(a_cfg, pad_id)
        critic_sd = None
        if di.is_main and actor_sd is not None:  # (None in a dry run: no weights are loaded)
            head = initial_state_dict("scalar_head", c_cfg, "", cfg.seed + 1)
            critic_sd = {k: (actor_sd[k] if k in actor_sd else v) for k, v in head.items()}
    else:
        c_cfg = scalar_head_config(AutoConfig.from_pretrained(critic_src), pad_id)
        critic_sd = load_on_rank0(
            di, "scalar_head", c_cfg, critic_src, cfg.seed + 1, new_head=True, key="critic_from"
        )
    critic = build_sharded("scalar_head", no_dropout(c_cfg), critic_sd, di, cfg, train=True)

    if cfg.reward_source == "gold":
        reward = GoldReward(tokenizer, syn).to(di.device)
    elif rm_dir is None:  # a dry run without a reward model: a random one of the actor's shape
        r_cfg = scalar_head_config(a_cfg, pad_id)
        rm_sd = load_on_rank0(di, "scalar_head", r_cfg, "", cfg.seed + 2)
        rm = build_sharded("scalar_head", r_cfg, rm_sd, di, cfg, train=False)
        reward = RewardModel(rm, cfg.reward_level).eval()
    else:
        level = reward_level_of(rm_dir)
        if level == "sequence" and cfg.reward_level == "token":
            raise ConfigError(
                f"config key 'reward_level': 'token' needs a token-level reward model, but {rm_dir} is "
                "sequence-level (only its last-token score is meaningful): use reward_level=sequence"
            )
        if level == "token" and cfg.reward_level == "sequence" and not cfg.sequence_reward_from_token_rm:
            raise ConfigError(
                f"config key 'reward_level': 'sequence' with the token-level reward model {rm_dir}: the "
                "paper's sequence-reward arms use a sequence-level RM (rm_level=sequence, seq_pairs=edited "
                "for 'fine-grained PPO'); set sequence_reward_from_token_rm=true to use its mean instead"
            )
        r_cfg = scalar_head_config(AutoConfig.from_pretrained(rm_dir), pad_id)
        rm_sd = load_on_rank0(di, "scalar_head", r_cfg, str(rm_dir), 0, key="reward_model")
        reward = RewardModel(build_sharded("scalar_head", r_cfg, rm_sd, di, cfg, train=False), level).eval()
    return Models(actor, ref, critic, reward, a_cfg, critic_src)


# --------------------------------------------------------------------------------------------
# Memory: the one model of trainer.memory (its PPO parts and phases, under their old names)
# --------------------------------------------------------------------------------------------
estimate_memory = memory.ppo_parts
estimate_phases = memory.ppo_phases
check_memory = memory.ppo_check


def model_shapes(cfg: PPOConfig, actor_config: Any) -> dict[str, Any]:
    """The shapes of the models a run builds (what its measured memory plan is keyed by): the
    actor (= the reference), the critic and the reward model (None: the gold reward). Without a
    ``reward_model`` directory the reward model has the actor's shape (trained on the fly, or a
    dry run's random one); ``critic_from=auto`` is the actor or a reward model of its shape."""

    def of(path: str) -> dict[str, Any] | str:  # (a bad path is refused later, by name)
        try:
            return model_shape(AutoConfig.from_pretrained(path))
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"unreadable {path}: {type(e).__name__}"

    actor = model_shape(actor_config)
    reward = None
    if cfg.reward_source == "learned":
        reward = of(cfg.reward_model) if cfg.reward_model else actor
    critic = of(cfg.critic_from) if cfg.critic_from not in ("auto", "actor") else actor
    return {"actor": actor, "critic": critic, "reward": reward}


# --------------------------------------------------------------------------------------------
# Forward helpers (over a Rollout's response tokens)
# --------------------------------------------------------------------------------------------
def policy_logprobs(model: nn.Module, batch: Rollout, temperature: float, entropy: bool = False):
    """log π(a_t | s_t) ``[B, R]`` fp32 (and the entropy) via ``fgkernels.token_logprobs``; only
    the last R+1 positions' logits are computed (``logits_to_keep``)."""
    attn = batch.attention_mask.long()
    R = batch.response_ids.shape[1]
    logits = model(
        input_ids=batch.input_ids, attention_mask=attn, position_ids=position_ids(attn),
        use_cache=False, logits_to_keep=R + 1,
    ).logits[:, :-1]  # fmt: skip
    labels = torch.where(batch.response_mask, batch.response_ids, -100)
    return fk.token_logprobs(logits, labels, temperature, return_entropy=entropy)


def critic_values(critic: nn.Module, batch: Rollout) -> torch.Tensor:
    """V(s_t) ``[B, R]`` fp32: the head at the position *before* response token t."""
    P, R = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    return per_token_scores(critic, batch.input_ids, batch.attention_mask)[:, P - 1 : P + R - 1]


# --------------------------------------------------------------------------------------------
# Iteration statistics: named sums, one all-reduce
# --------------------------------------------------------------------------------------------
@dataclass
class IterationStats:
    """What one iteration logs, as fp64 sums over this rank's rows and tokens (summed over ranks
    once, at the log point: :meth:`all_reduce`). Means are ratios of these sums, so they weight
    every token (or sequence) of every rank equally."""

    n_seq: Any = 0.0  # rollouts
    n_tok: Any = 0.0  # valid response tokens
    seq_reward: Any = 0.0  # Σ R(τ) of the reward model
    tok_reward: Any = 0.0  # Σ r_t of the reward model over response tokens
    gold_tok: Any = 0.0  # Σ gold r_t (synthetic world)
    gold_seq: Any = 0.0  # Σ gold R(τ) (synthetic world: each response's mean token utility)
    kl: Any = 0.0  # Σ k1 KL over response tokens
    entropy: Any = 0.0  # Σ H_t
    ev: Any = 0.0  # rlhf.explained_variance_sums [5]
    policy_loss: Any = 0.0  # Σ over optimizer steps of the step's loss
    value_loss: Any = 0.0
    approx_kl: Any = 0.0  # Σ over trained tokens
    clipfrac: Any = 0.0
    value_clipfrac: Any = 0.0
    n_train_tok: Any = 0.0  # tokens seen by the PPO epochs
    n_steps: Any = 0.0  # optimizer steps (the same on every rank: counted once)
    gen_tokens: Any = 0.0  # generated tokens
    n_cut: Any = 0.0  # responses without EOS (cut at max_new_tokens)
    seq_tokens: Any = 0.0  # prompt + response tokens
    stop: Any = 0.0  # 1 on a rank that got SIGTERM

    def add(self, **sums: Any) -> None:
        """Accumulate (tensors stay on the device: no host sync)."""
        for k, v in sums.items():
            setattr(self, k, getattr(self, k) + v)

    def all_reduce(self, device: torch.device) -> dict[str, float]:
        """Sum every field over ranks in one all-reduce and one host copy (the log point)."""
        parts = [
            torch.as_tensor(getattr(self, f.name), dtype=torch.float64, device=device).reshape(-1)
            for f in fields(self)
        ]
        flat = host_list(all_reduce_sum(torch.cat(parts)))  # host sync (log point)
        out, i = {}, 0
        for f, p in zip(fields(self), parts):
            out[f.name] = flat[i] if p.numel() == 1 else flat[i : i + p.numel()]
            i += p.numel()
        out["n_steps"] /= get_world_size()  # every rank counted each step
        return out


def iteration_metrics(t: dict[str, Any], kl_coef: float, gold: bool) -> dict[str, float]:
    """The logged metrics from the all-reduced sums of :class:`IterationStats`."""
    n_tok, n_seq = max(t["n_tok"], 1.0), max(t["n_seq"], 1.0)
    ntt, steps = max(t["n_train_tok"], 1.0), max(t["n_steps"], 1.0)
    m = {
        "reward": t["seq_reward"] / n_seq,
        "reward_per_token": t["tok_reward"] / n_tok,
        "kl": t["kl"] / n_seq,
        "kl_coef": kl_coef,
        "entropy": t["entropy"] / n_tok,
        "policy_loss": t["policy_loss"] / steps,  # mean over optimizer steps of Σ_tokens / N_global
        "value_loss": t["value_loss"] / steps,
        "approx_kl": t["approx_kl"] / ntt,
        "clipfrac": t["clipfrac"] / ntt,
        "value_clipfrac": t["value_clipfrac"] / ntt,
        "explained_variance": rlhf.explained_variance_from_sums(t["ev"]),
        "response_length": t["gen_tokens"] / n_seq,
        "truncated_fraction": t["n_cut"] / n_seq,
    }
    if gold:
        m["gold_reward_per_token"] = t["gold_tok"] / n_tok
        m["gold_reward"] = t["gold_seq"] / n_seq
    return m


# --------------------------------------------------------------------------------------------
# Steps 1-2 (rollout) and 5 (one PPO optimizer step)
# --------------------------------------------------------------------------------------------
def collect_rollout(
    models: Models,
    prompts: list[TokenizedExample],
    order: list[int],
    cfg: PPOConfig,
    tokenizer: Any,
    device: torch.device,
    phase: Phases,
) -> Rollout:
    """``# 1. generate`` then ``# 2. score`` (no grad): the filled :class:`Rollout` of this rank's
    prompts ``order`` — responses, old and reference log-probs, entropy, values, and the reward's
    per-token and sequence scores (one reward forward gives both). Each step runs in its ``phase``
    (seconds; a dry run's memory)."""
    pad_id = pad_token_id(tokenizer)
    # 1. generate: the actor all-gathered once for the whole rollout, resharded after
    with phase("generate"):
        batch = collate([prompts[i] for i in order], pad_id, padding_side="left")
        p_ids, p_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        models.actor.eval()
        from_generation = cfg.old_logprobs == "generate"
        with unsharded(models.actor):
            out = generate(
                models.actor, p_ids, p_mask, cfg.max_new_tokens, tokenizer.eos_token_id, pad_id,
                cfg.temperature, cfg.top_p, return_logprobs=from_generation,
            )  # fmt: skip
        models.actor.train()
        ro = Rollout(p_ids, p_mask, out[0], out[1])
        if from_generation:
            ro.old_logp, ro.entropy = out[2], out[3]
    # 2. score, in chunks of forward_batch_size rows
    scored = [k for k in Rollout.SCORED if getattr(ro, k) is None]
    parts: dict[str, list] = {k: [] for k in scored}
    with phase("score"), torch.no_grad():
        for mb in ro.chunks(cfg.forward_batch_size):
            P = mb.prompt_ids.shape[1]
            if "old_logp" in parts:  # old_logprobs=recompute
                old, ent = policy_logprobs(models.actor, mb, cfg.temperature, entropy=True)
                parts["old_logp"].append(old)
                parts["entropy"].append(ent)
            reward = models.reward.score(mb.input_ids, mb.attention_mask, mb.full_response_mask)
            parts["ref_logp"].append(policy_logprobs(models.ref, mb, cfg.temperature))
            parts["values"].append(critic_values(models.critic, mb))
            parts["token_scores"].append(reward.token[:, P:])
            parts["sequence_scores"].append(reward.sequence)
        for k, v in parts.items():
            setattr(ro, k, torch.cat(v))
    return ro


def ppo_step(
    models: Models,
    opts: tuple,
    mini: Rollout,
    cfg: PPOConfig,
    stats: IterationStats,
    world: int,
    train_actor: bool = True,
) -> bool:
    """One optimizer step of actor and critic over the minibatch ``mini``: micro-batches with
    gradient accumulation, clipped surrogate + entropy bonus and clipped value loss, each divided
    by the minibatch's global valid-token count; FSDP averages gradients over ranks, so the losses
    are scaled by ``world`` to undo it. The count's all-reduce also carries every rank's SIGTERM:
    returns True when some rank asked to stop (the caller ends the iteration after this step).
    ``train_actor=False`` (the critic warm-up): only the critic's loss, backward and step."""
    actor, critic = models.actor, models.critic
    micro = list(mini.chunks(cfg.micro_batch_size))
    stop = torch.tensor(float(STOP.requested), device=mini.response_mask.device)
    sums = all_reduce_sum(torch.stack([mini.response_mask.sum().float(), stop]))
    n_tok = sums[0]
    for k, mb in enumerate(micro):
        last = k == len(micro) - 1
        sync = last or cfg.grad_sync == "micro_batch"  # reduce-scatter once per step, or every time
        actor.set_requires_gradient_sync(sync)
        critic.set_requires_gradient_sync(sync)
        if train_actor:
            out = policy_logprobs(actor, mb, cfg.temperature, entropy=cfg.entropy_coef > 0)
            logp, ent = out if cfg.entropy_coef > 0 else (out, None)
            pl, pst = rlhf.ppo_policy_loss(
                logp, mb.old_logp, mb.advantages, mb.response_mask, cfg.clip_eps, n_tok
            )
            if ent is not None:
                pl = pl + rlhf.entropy_bonus(ent, mb.response_mask, cfg.entropy_coef, n_tok)
            (pl * world).backward()
            stats.add(
                policy_loss=pl.detach().double(), approx_kl=pst.approx_kl_sum.double(),
                clipfrac=pst.clipfrac_sum.double(),
            )  # fmt: skip
        v = critic_values(critic, mb)
        vl, vclip = rlhf.value_loss(v, mb.values, mb.returns, mb.response_mask, cfg.value_clip_eps, n_tok)
        (cfg.vf_coef * vl * world).backward()
        stats.add(
            value_loss=vl.detach().double(), value_clipfrac=vclip.double(),
            n_train_tok=mb.response_mask.sum().double(),
        )  # fmt: skip
    for model, opt in zip((actor, critic) if train_actor else (critic,), opts if train_actor else opts[1:]):
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
    stats.add(n_steps=1.0)
    return host_item(sums[1]) > 0  # host sync (one per optimizer step): every rank agrees to stop


def normalise_scores(score: torch.Tensor, valid: torch.Tensor, moments: rlhf.RunningMoments) -> torch.Tensor:
    """(score − mean) / std with running moments of the RM scores over every rank's valid
    entries (one all-reduce and one host sync per iteration)."""
    st = host_list(
        all_reduce_sum(
            torch.stack(
                [
                    torch.where(valid, score, 0).sum(),
                    torch.where(valid, score**2, 0).sum(),
                    valid.sum().float(),
                ]
            ).double()
        ),
        1.0,
    )
    n = st[2]
    mean = st[0] / max(n, 1)
    moments.update(mean, max(st[1] / max(n, 1) - mean**2, 0.0), n)
    return (score - moments.mean) / moments.std


# --------------------------------------------------------------------------------------------
# Held-out evaluation: is the policy getting better, or only the reward model's score?
# --------------------------------------------------------------------------------------------
class HeldOut(NamedTuple):
    """The held-out prompts of this rank and the judge that scores the actor's answers to them."""

    prompts: list[TokenizedExample]  # this rank's share (every rank holds as many)
    judge: Any  # GoldReward | RewardModel: .score(input_ids, attention_mask, response_mask)
    name: str  # what the score is: "gold reward" or "RM <dir>"
    total: int  # prompts over all ranks


def heldout_prompts(cfg: PPOConfig, syn: SyntheticConfig | None, tokenizer: Any, template: str, world: int):
    """``eval_prompts``' prompts, else ``eval_size`` fresh prompts of the synthetic world (its own
    random stream: none of the training prompts), cut to a multiple of ``world``; None when there
    is neither."""
    if cfg.eval_prompts:
        prompts = load_prompts(cfg.eval_prompts, tokenizer, cfg.max_prompt_length, template)[: cfg.eval_size]
    elif syn is not None:
        train_prompts = {rec["prompt"] for rec in synthetic_records(syn)}
        rng, texts = random.Random(syn.seed + 9_999_991), []
        while len(texts) < cfg.eval_size:
            text = sample_prompt(rng, syn)
            if text not in train_prompts:
                texts.append(text)
        prompts = [build_prompt(tokenizer, Prompt(t), cfg.max_prompt_length, template) for t in texts]
    else:
        return None
    n = len(prompts) // world * world
    if n == 0:
        raise ConfigError(f"config key 'eval_size': {len(prompts)} held-out prompts for {world} ranks")
    return prompts[:n]


def heldout_judge(run: Run, tokenizer: Any, template: str, gold: GoldReward | None) -> tuple[Any, str]:
    """``(judge, name)``: a frozen ``eval_reward_model`` (FSDP2, like the reward model) when one
    is given, else the synthetic world's gold reward (None outside it)."""
    cfg, di = run.cfg, run.di
    if not cfg.eval_reward_model:
        return gold, "gold reward R(τ)"
    path = cfg.eval_reward_model
    level = reward_level_of(Path(path), template)
    r_cfg = scalar_head_config(AutoConfig.from_pretrained(path), pad_token_id(tokenizer))
    sd = load_on_rank0(di, "scalar_head", r_cfg, path, 0, key="eval_reward_model")
    return RewardModel(
        build_sharded("scalar_head", r_cfg, sd, di, cfg, train=False), level
    ).eval(), f"R(τ) of {path}"


def evaluate_heldout(
    models: Models, heldout: HeldOut, cfg: PPOConfig, tokenizer: Any, device: torch.device, rank: int
) -> dict[str, float]:
    """The actor's answers to this rank's held-out prompts, sampled as in training (``temperature``,
    ``top_p``) from the same seed at every evaluation (so two evaluations differ by the policy,
    not by the draw), scored by the judge and averaged over all ranks: ``{"heldout_score": mean
    R(τ), "heldout_score_se": its standard error, "heldout_length": mean tokens,
    "heldout_finished": fraction ended with EOS}``. Greedy
    answers would not do: a tiny SFT model's argmax is its most frequent word class, whatever it
    learned about the rest. The training's random stream is saved and restored around it
    (exact resume holds). Collective."""
    pad_id = pad_token_id(tokenizer)
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    models.actor.eval()
    rng_devices = [device] if device.type == "cuda" else []
    with unsharded(models.actor), torch.no_grad(), torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(cfg.seed + 7_777_777 + rank)
        for i in range(0, len(heldout.prompts), cfg.forward_batch_size):
            batch = collate(heldout.prompts[i : i + cfg.forward_batch_size], pad_id, padding_side="left")
            p_ids, p_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            out = generate(
                models.actor, p_ids, p_mask, cfg.max_new_tokens, tokenizer.eos_token_id, pad_id,
                cfg.temperature, cfg.top_p,
            )  # fmt: skip
            ro = Rollout(p_ids, p_mask, out[0], out[1])
            score = heldout.judge.score(ro.input_ids, ro.attention_mask, ro.full_response_mask).sequence
            cut = rlhf.missing_eos(ro.response_ids, ro.response_mask, tokenizer.eos_token_id)
            sums += torch.stack([
                score.double().sum(), score.double().square().sum(), ro.response_mask.double().sum(),
                (~cut).double().sum(), torch.tensor(float(len(ro)), dtype=torch.float64, device=device),
            ])  # fmt: skip
    models.actor.train()
    total, squares, length, ended, n = all_reduce_sum(sums).tolist()
    mean = total / n
    se = math.sqrt(max(squares / n - mean * mean, 0.0) / max(n - 1, 1))
    return {
        "heldout_score": mean, "heldout_score_se": se, "heldout_length": length / n,
        "heldout_finished": ended / n,
    }  # fmt: skip


def save_actor(models: Models, cfg: PPOConfig, tokenizer: Any, path: Path, **meta: Any) -> None:
    """The actor as a plain ``transformers`` directory at ``path`` (collective: every rank
    gathers; rank 0 writes, atomically)."""
    sd = full_state_dict(models.actor)
    policy_meta = {"trainer": "ppo", "prompt_template": cfg.prompt_template, **meta}
    on_rank0(save_pretrained, sd, models.actor_config, "causal_lm", path, tokenizer, policy_meta=policy_meta)


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------
@dataclass
class Setup:
    """What :func:`setup` hands the loop."""

    run: Run
    tokenizer: Any
    prompts: list[TokenizedExample]
    gold: GoldReward | None
    models: Models
    opts: tuple
    kl_ctl: Any
    moments: rlhf.RunningMoments
    ckpt: Checkpointer
    log: MetricsLog
    rollouts: MetricsLog  # output_dir/rollouts.jsonl: the saved rollout samples
    iteration: int
    end: int
    memory: Any = None  # a dry run's PhaseMemory (None in a real run)
    heldout: HeldOut | None = None  # held-out prompts + judge (eval_every)
    best: dict = field(default_factory=dict)  # {"heldout_score", "iteration"} of best/actor


def setup(cfg: PPOConfig) -> Setup:
    """``# 0. set-up`` (every rank): (a) run, (b) prompts and tokenizer, (c) the memory check and
    the reward model (checked, or trained on the fly when none is given), (d) the four models and
    their optimizers, (e) resume from the newest intact checkpoint."""
    # (a) config check, processes, threads, determinism, outputs; metrics.jsonl and the trackers
    # of report_to (started now, in a process of their own)
    run = start_run(cfg, "ppo")
    di, out_dir = run.di, run.out_dir
    log = open_metrics(run, "iteration")
    # (b) prompts, tokenizer (the synthetic world when no prompt file is given; stand-ins of the
    # configured lengths in a dry run of a real architecture)
    dry = in_dry_run()
    syn = None if (cfg.prompts or (dry and (cfg.arch or cfg.init_from))) else cfg.synthetic
    if dry and syn is None:
        tokenizer, prompts = dry_run_prompts(cfg, di.world_size)
        prompt_file = f"stand-ins ({cfg.max_prompt_length} tokens each)"
    elif syn is None:
        prompt_file, tok_name = cfg.prompts, cfg.tokenizer or cfg.init_from or cfg.reward_model
        tok_key = next(k for k in ("tokenizer", "init_from", "reward_model") if getattr(cfg, k) == tok_name)
    else:
        pairs_path, tok_dir = bootstrap(out_dir / "synthetic", syn)
        prompt_file, tok_name = str(pairs_path), cfg.tokenizer or str(tok_dir)
    if not (dry and syn is None):
        if not tok_name:
            raise ConfigError(
                "config key 'tokenizer': needed when 'prompts' is given and 'init_from' is empty"
            )
        tokenizer = load_tokenizer(tok_name, tok_key if syn is None else "tokenizer")
    template = checked_template(tokenizer, cfg.prompt_template)
    if not (dry and syn is None):
        prompts = load_prompts(prompt_file, tokenizer, cfg.max_prompt_length, template)
        if dry:  # the longest prompt for every row: the worst case
            prompts = [max(prompts, key=len)] * len(prompts)
    gold = GoldReward(tokenizer, syn).to(di.device) if syn is not None else None
    run.say(f"prompts {prompt_file}: {len(prompts)}")
    # (c) the memory plan (before anything is trained), then the reward model
    model_cfg = base_config(cfg, tokenizer)
    parts = memory.ppo_parts(cfg, model_cfg, di.world_size, max(len(p) for p in prompts))
    shapes = functools.partial(model_shapes, cfg, model_cfg)  # (read only outside a dry run)
    memory.check(run, "ppo", memory.ppo_phases(cfg, parts), shapes, parts=parts)
    if cfg.critic_from not in ("auto", "actor"):
        check_model_dir(cfg.critic_from, "critic_from")
    rm_dir = None
    if cfg.reward_source == "learned":
        if cfg.reward_model:
            rm_dir = Path(cfg.reward_model)
        elif dry:
            run.say("dry run without reward_model: a random reward model of the actor's architecture")
        elif syn is not None:
            run.say("no reward_model given: training a tiny one with trainer/reward.py")
            rm_dir = train_reward_model_on_the_fly(cfg, out_dir, pairs_path, tok_dir)
            barrier()
        else:
            raise ConfigError("config key 'reward_model': required with a prompts file")
        if rm_dir is not None:
            reward_level_of(rm_dir, template)
    # (c') the actor's start: the SFT checkpoint, or a tiny SFT model trained first
    init_from = cfg.init_from
    if not init_from and syn is not None and cfg.sft_epochs > 0 and not dry:
        run.say(
            f"no init_from given: fine-tuning the tiny LLaMA first ({cfg.sft_epochs:g} epochs, "
            "trainer/sft.py)"
        )
        init_from = str(sft_on_the_fly(cfg, out_dir, pairs_path, tok_dir))
        barrier()
    # (d) models and optimizers, and the held-out judge
    models = build_models(run, tokenizer, rm_dir, syn, init_from)
    heldout = None
    if cfg.eval_every and not dry:
        held = heldout_prompts(cfg, syn, tokenizer, template, di.world_size)
        judge, judge_name = heldout_judge(run, tokenizer, template, gold) if held is not None else (None, "")
        if held is None or judge is None:
            run.say(
                "held-out evaluation off: it needs eval_prompts and eval_reward_model (or the "
                "synthetic world)"
            )
        else:
            heldout = HeldOut(held[di.rank :: di.world_size], judge, judge_name, len(held))
            run.say(
                f"held-out evaluation every {cfg.eval_every} iterations: {len(held)} prompts, "
                f"judge {judge_name}"
            )
    n_actor = sum(p.numel() for p in models.actor.parameters())
    name = type(models.actor).__name__.removeprefix("FSDP")
    run.say(
        f"models: actor/ref {name} ({n_actor / 1e6:.2f}M params), "
        f"critic from {models.critic_source}, reward {cfg.reward_source} {rm_dir or ''} "
        f"(level {models.reward.level}); world {di.world_size} on {di.device}\nkernels: {fk.backend_report()}"
    )
    opts = (
        build_optimizer(models.actor, cfg.actor_lr, cfg),
        build_optimizer(models.critic, cfg.critic_lr, cfg),
    )
    kl_ctl = (
        rlhf.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        if cfg.kl_controller == "adaptive"
        else rlhf.FixedKLController(cfg.kl_coef)
    )
    moments = rlhf.RunningMoments()
    # (e) resume: the newest intact checkpoint of actor + critic
    ckpt = Checkpointer(out_dir / "checkpoints", cfg.keep_checkpoints, say=run.say)
    rollouts = MetricsLog(out_dir / "rollouts.jsonl", di.is_main, "iteration")
    iteration = 0
    resumed = ckpt.load_latest(checkpoint_parts(models, opts)) if cfg.resume else None
    best: dict = {}
    if resumed is not None:
        iteration, extra = resumed
        best = dict(extra.get("best", {}))
        kl_ctl.value = extra["kl_coef"]
        moments = rlhf.RunningMoments(**extra["moments"])
        log.resume_at(iteration)
        rollouts.resume_at(iteration)
        run.say(f"resumed from iteration {iteration}")
    else:
        torch.manual_seed(cfg.seed + 1000 * di.rank)  # sampling RNG (restored on resume)
    end = loop.stop_at(cfg.iterations, cfg.stop_after_iterations)
    # a dry run's tracker (entered around the loop; None in a real run)
    reward_model = models.reward if isinstance(models.reward, nn.Module) else None
    pm = memory.track(
        cfg, run.say, [models.actor, models.ref, models.critic, reward_model], opts, enter=False
    )
    return Setup(
        run, tokenizer, prompts, gold, models, opts, kl_ctl, moments, ckpt, log, rollouts, iteration, end,
        pm, heldout, best,
    )  # fmt: skip


def checkpoint_parts(models: Models, opts: tuple) -> dict:
    """What a PPO checkpoint holds: actor and critic with their optimizers."""
    return {"actor": (models.actor, opts[0]), "critic": (models.critic, opts[1])}


def train(cfg: PPOConfig) -> dict:
    """Run PPO (called on every rank). Returns the last iteration's metrics (a dry run: its
    measured peaks per phase, :func:`dry_run`)."""
    if cfg.dry_run and not in_dry_run():
        return dry_run(cfg)

    # 0. set-up: run, prompts, models, optimizers, resume
    S = setup(cfg)
    run, di, models, ro_rows = S.run, S.run.di, S.models, cfg.rollout_batch_size
    group = dist.group.WORLD if dist.is_initialized() and di.world_size > 1 else None
    bar = loop.progress_bar(run, S.end, S.iteration, f"ppo[{cfg.reward_level}]")
    iteration, metrics = S.iteration, {}
    with S.memory if S.memory is not None else contextlib.nullcontext():  # a dry run's tracker
        while iteration < S.end:
            stats, phase = IterationStats(), Phases(di.device, S.memory)
            t_start = time.perf_counter()

            # 1. generate + 2. score: this rank's share of the iteration's prompts (per-epoch
            # permutations: every prompt once per pass, a pure function of seed and iteration)
            with real_tensors():  # (the host's data order: real even in a dry run)
                order = rlhf.prompt_order(iteration, ro_rows * di.world_size, len(S.prompts), cfg.seed)
                order = order[di.rank :: di.world_size].tolist()
            ro = collect_rollout(models, S.prompts, order, cfg, S.tokenizer, di.device, phase)
            mask = ro.response_mask

            # 3. rewards + KL (token level: scaled per token, see token_reward_scale)
            with phase("rewards"):
                token = cfg.reward_level == "token"
                score = ro.token_scores if token else ro.sequence_scores
                if cfg.reward_norm:  # the RM's own scores, before any scaling (a per-token
                    # shift after scaling would add a constant per token: a length incentive)
                    score = normalise_scores(
                        score, mask if token else torch.ones_like(score, dtype=torch.bool), S.moments
                    )
                if token:
                    eos = rlhf.eos_positions(ro.response_ids, mask, S.tokenizer.eos_token_id)
                    score = rlhf.scale_token_rewards(score, mask, cfg.token_reward_scale, eos)
                kl = rlhf.kl_penalty(ro.old_logp, ro.ref_logp, cfg.kl_estimator)
                ro.rewards = rlhf.compute_rewards(
                    kl, mask, S.kl_ctl.value, cfg.reward_level,
                    token_reward=score if token else None, sequence_reward=None if token else score,
                )  # fmt: skip
                cut = rlhf.missing_eos(ro.response_ids, mask, S.tokenizer.eos_token_id)
                if cfg.missing_eos_penalty:  # added to R, i.e. at the last token, at either level
                    penalty = cut.float() * cfg.missing_eos_penalty
                    ro.rewards = rlhf.add_on_last_token(ro.rewards, mask, penalty)

                # 4. GAE (advantages whitened with statistics over all ranks)
                ro.advantages, ro.returns = fk.gae(
                    ro.rewards, ro.values, mask, cfg.gamma, cfg.lam, whiten=cfg.whiten_advantages, group=group
                )

            # 5. PPO epochs over shuffled minibatches (one optimizer step each)
            mb_rows = ro_rows // cfg.num_minibatches
            stopping = False  # SIGTERM: the rest of this iteration's minibatches are skipped
            with phase("train"):
                for epoch in range(cfg.ppo_epochs):
                    seed = ((cfg.seed * 7919 + iteration) * 31 + epoch) * 131 + di.rank
                    perm = torch.randperm(len(ro), generator=torch.Generator().manual_seed(seed))
                    for m in range(cfg.num_minibatches):
                        if stopping:
                            break
                        mini = ro.index(perm[m * mb_rows : (m + 1) * mb_rows].to(di.device))
                        stopping = ppo_step(
                            models, S.opts, mini, cfg, stats, di.world_size, iteration >= cfg.critic_warmup
                        )
            iteration += 1

            # 6. log / checkpoint (host syncs happen here only: one all-reduce, one copy)
            with torch.no_grad():
                maskf = mask.double()
                stats.add(
                    n_seq=float(len(ro)), n_tok=maskf.sum(), seq_reward=ro.sequence_scores.double().sum(),
                    tok_reward=(ro.token_scores.double() * maskf).sum(),
                    kl=(rlhf.kl_penalty(ro.old_logp, ro.ref_logp, "k1").double() * maskf).sum(),
                    entropy=(ro.entropy.double() * maskf).sum(),
                    ev=rlhf.explained_variance_sums(ro.values, ro.returns, mask),
                    gen_tokens=maskf.sum(), seq_tokens=ro.attention_mask.sum().double(),
                    n_cut=cut.sum().double(), stop=float(STOP.requested),
                )  # fmt: skip
                gold_r = None  # each row's gold R(τ), for the saved samples
                if S.gold is not None:
                    g = S.gold.score(ro.input_ids, ro.attention_mask, ro.full_response_mask)
                    stats.add(gold_tok=g.token.double().sum(), gold_seq=g.sequence.double().sum())
                    gold_r = g.sequence
            t = stats.all_reduce(di.device)
            metrics = {"iteration": iteration, **iteration_metrics(t, S.kl_ctl.value, S.gold is not None)}
            phase_tokens = {
                "generate": t["gen_tokens"],
                "score": t["seq_tokens"],
                "train": t["seq_tokens"] * cfg.ppo_epochs,
            }
            for name, dt in phase.seconds.items():
                metrics[f"time_{name}_s"] = dt
                if name in phase_tokens:
                    metrics[f"tokens_per_s_{name}"] = phase_tokens[name] / dt
            # (at every eval_every and at the run's last iteration; not at a stop_after_iterations
            # point: a stopped-and-resumed run evaluates exactly what an uninterrupted one does)
            new_best = False
            if S.heldout is not None and (loop.due(iteration, cfg.eval_every) or iteration == cfg.iterations):
                with phase("eval"):  # held-out answers, judged: the policy's progress, not the RM's
                    metrics.update(evaluate_heldout(models, S.heldout, cfg, S.tokenizer, di.device, di.rank))
                if metrics["heldout_score"] > S.best.get("heldout_score", -float("inf")):
                    S.best = {"heldout_score": metrics["heldout_score"], "iteration": iteration}
                    new_best = True
                    if cfg.save_best:
                        save_actor(models, cfg, S.tokenizer, run.out_dir / "best" / "actor", **S.best)
            metrics["peak_memory_mb"] = peak_memory_mb(di.device)
            # wall seconds of steps 1-6 up to here (the log point's host copy has waited for the
            # device); a checkpoint saved after the log point is not in it
            metrics["iteration_s"] = time.perf_counter() - t_start
            S.kl_ctl.update(metrics["kl"], int(t["n_seq"]))
            cut_frac = metrics["truncated_fraction"]
            if cut_frac > cfg.truncation_warn and (iteration == S.iteration + 1 or iteration % 10 == 0):
                run.say(
                    f"warning: iteration {iteration}: {cut_frac:.0%} of the responses hit "
                    f"max_new_tokens={cfg.max_new_tokens} without EOS (they are scored as if complete; "
                    "see missing_eos_penalty, and token_reward_scale for a length incentive)"
                )
            S.log.write(metrics)
            every = cfg.save_rollouts_every
            if di.is_main and every and (iteration == 1 or loop.due(iteration, every) or iteration == S.end):
                samples = rollout_samples(ro, S.tokenizer, cfg.rollout_samples, iteration, kl)  # host copy
                for i, rec in enumerate(samples):
                    if gold_r is not None:
                        rec["gold_reward"] = float(gold_r[i])
                    S.rollouts.write(rec)
                S.log.table("rollouts", iteration, rollout_table(samples))
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics['kl']:.3f}")
            terminated = t["stop"] > 0
            if (
                loop.due(iteration, cfg.checkpoint_every)
                or iteration == S.end
                or terminated
                or (new_best and cfg.save_best)  # best/actor and the resumable record of it agree
            ):
                extra = {
                    "iteration": iteration, "kl_coef": S.kl_ctl.value, "moments": vars(S.moments).copy(),
                    "best": dict(S.best),
                }  # fmt: skip
                with phase("checkpoint"):
                    S.ckpt.save(iteration, checkpoint_parts(models, S.opts), extra)
            if terminated:  # SIGTERM on some rank: the checkpoint above is written; exit 75
                raise Preempted(run.out_dir, iteration)
    bar.close()
    S.log.hurry()  # the trackers' drain now overlaps the final save and the plots

    # 7. the final actor as a plain transformers directory (best/actor: the best held-out score's)
    if cfg.save_final and iteration >= cfg.iterations:
        save_actor(models, cfg, S.tokenizer, run.out_dir / "final" / "actor")  # collective
        run.say(f"saved {run.out_dir / 'final' / 'actor'}")

    # 8. plots, the rollouts page and the summary (rank 0; also to the trackers, which then close);
    # a dry run's memory table instead
    if S.memory is not None:
        S.log.close()
        return dry_run_report(run, S)
    if di.is_main:
        end_of_run(run, S)
    S.log.close()
    return metrics


def rollout_table(samples: list[dict]) -> list[dict]:
    """The trackers' table of saved rollouts (:func:`trainer.eval.report.rollout_samples`
    records): per sample its prompt, response, the RM's reward R(τ), the gold reward where known
    (the synthetic world) and the RM's per-token rewards as a compact list."""
    return [
        {
            "sample": s["sample"],
            "prompt": s["prompt"],
            "response": "".join(s["pieces"]),
            "rm_reward": s["sequence_reward"],
            "gold_reward": s.get("gold_reward"),
            "token_rewards": "[" + ", ".join(f"{v:.3g}" for v in s["reward"]) + "]",
        }
        for s in samples
    ]


def end_of_run(run: Run, S: Setup) -> None:
    """Rank 0, after the loop (:func:`trainer.loop.end_of_run`): ``output_dir/plots/*.png``
    (``plots``), ``output_dir/report.html`` from the saved rollouts (``report``), the summary
    table and the held-out note. A failure to draw or render is a warning: the run's models and
    metrics are already written."""
    cfg, out = run.cfg, run.out_dir
    outputs = {
        "checkpoints": str(out / "checkpoints"),
        "final actor": str(out / "final" / "actor") if (out / "final" / "actor").exists() else "",
        "metrics": str(out / "metrics.jsonl"),
        "rollouts": str(out / "rollouts.jsonl") if (out / "rollouts.jsonl").exists() else "",
        "plots": "",
        "HTML page": "",
    }
    if (out / "rm" / "final").exists():
        outputs["reward model"] = str(out / "rm" / "final")
    if (out / "sft" / "final").exists() and not cfg.init_from:
        outputs["SFT start"] = str(out / "sft" / "final")
    if (out / "best" / "actor").exists():
        outputs["best actor (held-out)"] = str(out / "best" / "actor")

    def summarise(records: list[dict], outputs: dict[str, str]) -> tuple[str, dict, list[str]]:
        note = heldout_note(records, S.heldout.name if S.heldout else "")
        return ppo_summary(records, outputs), summary_figures(records, PPO_ROWS), [note]

    page = (lambda: ppo_report(out, out / "report.html")) if cfg.report and outputs["rollouts"] else None
    loop.end_of_run(run, S.log, outputs, page, summarise)


# --------------------------------------------------------------------------------------------
# Dry run: the recipe above on fake tensors over a fake process group (trainer.infra.dryrun)
# --------------------------------------------------------------------------------------------
DRY_RUN_ITERATIONS = 1  # with the optimizer states created first (warm_optimizer_states)


def dry_run(cfg: PPOConfig) -> dict:
    """``dry_run=true``: :func:`train` itself, for one iteration (optimizer states created first,
    as a real run has them from its first step on), inside
    :func:`trainer.infra.dryrun.fake_world` (``dry_run_world_size`` fake ranks, fake tensors),
    writing into a temporary directory: every phase — generate with the KV cache at the
    configured lengths, score, rewards + GAE, the PPO epochs over every minibatch with
    accumulation and both optimizer steps, a checkpoint save — runs with this config's shapes and
    dtypes, and its peak memory on one rank is measured. Prints the per-phase table beside
    :func:`estimate_phases` and returns ``{"peaks": {phase: bytes}, "parts": ..., "estimates": ...}``.

    Raises:
        trainer.infra.dryrun.DryRunError: a phase failed or its peak exceeds ``memory_limit_gb``
            (the phase is named).
    """
    overrides = dict(
        iterations=DRY_RUN_ITERATIONS, stop_after_iterations=0, resume=False, save_final=False, plots=False,
        report=False, save_rollouts_every=0, progress=False, report_to=[], device="cpu",
        attn_implementation="sdpa", deterministic=False, checkpoint_every=DRY_RUN_ITERATIONS,
        critic_warmup=0,  # (the actor's step is measured)
        ppo_epochs=1,  # a second epoch repeats the first one's shapes: same peaks, twice the time
    )  # fmt: skip
    return memory.dry_run(cfg, "ppo", train, overrides)


def dry_run_prompts(cfg: PPOConfig, world: int) -> tuple[Any, list[TokenizedExample]]:
    """A dry run's tokenizer (``tokenizer`` / ``init_from``'s when given, else a stand-in of the
    ``arch`` preset's vocabulary) and ``rollout_batch_size × world`` stand-in prompts of exactly
    ``max_prompt_length`` tokens (BOS first), the worst case of the real prompts."""
    name = cfg.tokenizer or cfg.init_from
    if name:
        tokenizer = load_tokenizer(name, "tokenizer" if cfg.tokenizer else "init_from")
    else:
        if cfg.arch not in ARCH_PRESETS:
            raise ConfigError(f"config key 'arch': {cfg.arch!r} is not one of {sorted(ARCH_PRESETS)}")
        tokenizer = stand_in_tokenizer(ARCH_PRESETS[cfg.arch]["vocab_size"])
    n = cfg.max_prompt_length
    ids = [tokenizer.bos_token_id] + [len(tokenizer) - 1] * (n - 1)
    prompt = TokenizedExample(ids, [False] * n, [False] * n, n)
    return tokenizer, [prompt] * (cfg.rollout_batch_size * world)


def dry_run_report(run: Run, S: Setup) -> dict:
    """The dry run's end: the per-phase table (measured peak and parts, the estimate beside it)
    and the limit check.

    Raises:
        trainer.infra.dryrun.DryRunError: a phase's peak exceeds ``memory_limit_gb``.
    """
    cfg = run.cfg
    P = max(len(p) for p in S.prompts)
    # the dry run's fgkernels are the eager references (fake tensors): estimate those
    parts = memory.ppo_parts(cfg, S.models.actor_config, run.di.world_size, P, "reference")
    est = memory.ppo_phases(cfg, parts)
    headline = (
        f"dry run: {DRY_RUN_ITERATIONS} iterations on fake tensors, world {run.di.world_size} (fake), "
        f"rollout {cfg.rollout_batch_size} x ({P} + {cfg.max_new_tokens}) tokens per rank"
    )
    return memory.report(run, S.memory, est, headline, model_shapes(cfg, S.models.actor_config))


def main(argv: list[str] | None = None) -> int:
    """``--help``, or parse ``argv`` (``--config FILE`` then ``key=value``) and train."""
    return cli_main(PPOConfig, train, __doc__, argv)


if __name__ == "__main__":
    exit_process(main())
