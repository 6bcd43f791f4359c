"""PPO with token-level rewards (Xu et al. 2024, §2.2): a lean, hand-written loop over FSDP2.

Tiny default (a tiny random-init LLaMA actor, a tiny token-level reward model trained on the fly
on the synthetic fine-grained set, prompts from that set; a minute or two on 2 CPU cores; the
same code path as the real job)::

    torchrun --standalone --nproc_per_node=2 trainer/ppo.py
    python trainer/ppo.py reward_mode=sequence          # one process, no torchrun
    python trainer/ppo.py reward_source=gold            # the known per-token gold reward

The real job (LLaMA-7B, one node with 8×A100-80G; multi-node: replace ``--standalone`` with
``--nnodes=N --node_rank=I --rdzv_backend=c10d --rdzv_endpoint=HOST:29500``)::

    torchrun --standalone --nproc_per_node=8 trainer/ppo.py --config configs/llama7b_8xa100/ppo.yaml \\
        init_from=/ckpt/llama7b-sft reward_model=/ckpt/rm7b_token/final prompts=alpaca_unlabeled.jsonl

Every iteration runs, top to bottom: ``# 1. generate`` (the actor, all-gathered once, samples
responses with a KV cache), ``# 2. score`` (old and reference log-probs with
``fgkernels.token_logprobs``, values, rewards from the frozen reward model), ``# 3. rewards + KL``
(``reward_mode=sequence``: [−βKL_1, …, R − βKL_n]; ``token``: [R_1 − βKL_1, …, R_n − βKL_n]),
``# 4. GAE`` (``fgkernels.gae``, advantages whitened over all ranks), ``# 5. PPO epochs``
(shuffled minibatches, gradient accumulation, losses divided by the global valid-token count),
``# 6. log / checkpoint``.

Outputs under ``output_dir``: ``config.yaml``, ``metrics.jsonl`` (one record per iteration),
``checkpoints/{actor,critic}/step_*`` (DCP, exact resume: rerunning the same command continues),
``final/actor`` (a plain ``transformers`` causal LM). SIGTERM saves a checkpoint and exits 0.
``python trainer/ppo.py --help`` lists every config key.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python trainer/ppo.py` / `torchrun trainer/ppo.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist
from torch import nn

import fgkernels as fk
from trainer import rlhf
from trainer.data.examples import render_prompt
from trainer.data.formats import DataError, read_records
from trainer.data.synthetic import SyntheticConfig, word_quality, write_synthetic
from trainer.infra.checkpoint import Checkpointer
from trainer.infra.config import ConfigError, cli_main, to_yaml
from trainer.rollout import Rollout, generate, position_ids, unsharded

warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

__all__ = ["PPOConfig", "GoldTokenReward", "estimate_memory", "main", "train"]


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
@dataclass
class PPOConfig:
    """Everything ``trainer/ppo.py`` reads. YAML (``--config``) + ``key=value`` overrides."""

    reward_mode: str = "token"
    """``token``: r_t = R_t − β·KL_t from the RM's per-token scores (fine-grained token-level PPO);
    ``sequence``: [−β·KL_1, …, R − β·KL_n] with R the RM's sequence reward (PPO-RLHF)."""
    reward_source: str = "learned"
    """``learned``: the reward model at ``reward_model`` (trained on the fly on the synthetic set
    when empty); ``gold``: the synthetic world's known per-token word quality (tests, studies)."""
    reward_model: str = ""
    """Directory written by ``trainer/reward.py`` (``final/`` or ``best/``); empty with
    ``reward_source=learned``: train a tiny one first under ``output_dir/rm``."""
    rm_mode: str = "token"
    """The on-the-fly reward model's kind (``token`` or ``sequence``), when one is trained."""
    rm_epochs: float = 2.0
    """Epochs of the on-the-fly reward model."""
    reward_norm: bool = False
    """Normalise RM scores by running mean/std (global statistics) before adding the KL penalty."""

    prompts: str = ""
    """Prompt file (JSONL/JSON/parquet with ``prompt``, or ``instruction`` [+ ``input``]); empty:
    the synthetic set's prompts."""
    synthetic: SyntheticConfig = field(default_factory=lambda: SyntheticConfig(n_pairs=800))
    """The generated world used when ``prompts`` is empty (prompts, tokenizer, gold qualities)."""
    tokenizer: str = ""
    """Tokenizer directory or hub name; empty: ``init_from``'s (or the synthetic one)."""
    max_prompt_length: int = 32
    """Prompt tokens kept (cut from the left, BOS kept)."""
    max_new_tokens: int = 16
    """Most response tokens per rollout."""
    temperature: float = 1.0
    """Sampling temperature (log-probs are taken at the same temperature)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1: plain sampling). Below 1, sampling is from the truncated
    distribution while log-probs use the full one: slightly off-policy (a warning says so)."""

    init_from: str = ""
    """SFT checkpoint of the actor (and reference); empty: a random-init tiny LLaMA (below)."""
    critic_from: str = "auto"
    """Critic initialisation: a reward-model directory, ``actor`` (the actor's backbone + a fresh
    head) or ``auto`` (the reward model when it is a learned one of the actor's shape, else actor)."""
    hidden_size: int = 64
    """Tiny LLaMA (``init_from`` empty): hidden size (also the on-the-fly RM's)."""
    num_layers: int = 2
    """Tiny LLaMA: decoder layers."""
    num_heads: int = 4
    """Tiny LLaMA: attention heads."""
    intermediate_size: int = 256
    """Tiny LLaMA: MLP width."""

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
    actor_lr: float = 1e-3
    """Actor AdamW learning rate (constant)."""
    critic_lr: float = 2e-3
    """Critic AdamW learning rate (constant)."""
    weight_decay: float = 0.0
    """AdamW weight decay (both)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas (both)."""
    optimizer: str = "adamw"
    """``adamw`` (torch) or ``adamw8bit`` (bitsandbytes, CUDA only)."""
    max_grad_norm: float = 1.0
    """Gradient clipping of each model (global L2 norm); 0 disables."""

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

    param_dtype: str = "float32"
    """FSDP2 compute dtype: ``bfloat16`` on GPUs, ``float32`` on CPU."""
    reduce_dtype: str = "float32"
    """FSDP2 gradient reduce-scatter dtype."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer in backward (actor and critic)."""
    attn_implementation: str = "auto"
    """``auto`` (flash_attention_2 when installed on CUDA, else sdpa), ``sdpa``, ``eager``."""
    device: str = "auto"
    """``auto``, ``cuda`` or ``cpu``."""
    memory_limit_gb: float = 0.0
    """Per-device memory the estimate must fit in; 0: the CUDA device's total (no check on CPU)."""
    num_threads: int = 0
    """CPU threads per process; 0: cores / processes on this node."""
    deterministic: bool = True
    """``torch.use_deterministic_algorithms(True)`` (exact resume on CPU)."""
    seed: int = 0
    """Seed of the initial weights, the prompt order and sampling."""

    output_dir: str = "runs/ppo"
    """Where config, metrics, checkpoints and the final actor go."""
    checkpoint_every: int = 20
    """Checkpoint every this many iterations (and at the end); 0: only at the end."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept per model."""
    resume: bool = True
    """Continue from the newest checkpoint in ``output_dir/checkpoints`` when there is one."""
    save_final: bool = True
    """Write ``output_dir/final/actor`` (a ``transformers`` directory) at the end."""
    progress: bool = True
    """Show a tqdm progress bar (rank 0)."""
    tensorboard: bool = False
    """Also write TensorBoard scalars to ``output_dir/tb`` (needs ``tensorboard``)."""


def check_config(cfg: PPOConfig, world: int) -> None:
    """Reject values no run can use (names the key)."""
    choices = {
        "reward_mode": ("token", "sequence"),
        "reward_source": ("learned", "gold"),
        "rm_mode": ("token", "sequence"),
        "kl_estimator": ("k1", "k3"),
        "kl_controller": ("fixed", "adaptive"),
        "optimizer": ("adamw", "adamw8bit"),
        "param_dtype": ("float32", "bfloat16", "float16"),
        "reduce_dtype": ("float32", "bfloat16"),
        "device": ("auto", "cuda", "cpu"),
    }
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"config key {key!r}: {getattr(cfg, key)!r} is not one of {allowed}")
    for key in ("rollout_batch_size", "forward_batch_size", "num_minibatches", "micro_batch_size",
                "ppo_epochs", "max_new_tokens", "max_prompt_length", "iterations"):  # fmt: skip
        if getattr(cfg, key) < 1:
            raise ConfigError(f"config key {key!r}: must be >= 1, got {getattr(cfg, key)}")
    mb, rem = divmod(cfg.rollout_batch_size, cfg.num_minibatches)
    if rem or mb % cfg.micro_batch_size:
        raise ConfigError(
            f"config keys rollout_batch_size={cfg.rollout_batch_size}, num_minibatches="
            f"{cfg.num_minibatches}, micro_batch_size={cfg.micro_batch_size}: the rollout must split "
            "into equal minibatches of whole micro-batches"
        )
    if cfg.kl_coef < 0 or cfg.temperature <= 0 or not 0 < cfg.top_p <= 1:
        raise ConfigError("config keys kl_coef >= 0, temperature > 0 and 0 < top_p <= 1 are required")
    if cfg.top_p < 1:
        warnings.warn(
            "top_p < 1: tokens are sampled from the truncated nucleus, but old/reference log-probs "
            "use the full softmax(z/τ), so PPO's ratio and the KL are slightly off-policy",
            stacklevel=2,
        )
    if cfg.reward_source == "gold" and cfg.prompts:
        raise ConfigError(
            "config key 'reward_source': gold rewards exist only for the synthetic world (prompts='')"
        )
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device': 'cuda' but this torch build sees no CUDA device")
    for key in ("prompts", "init_from", "reward_model", "tokenizer"):
        value = getattr(cfg, key)
        if value and value.startswith((".", "/")) and not Path(value).exists():
            raise DataError(value, f"no such file or directory (config key {key!r})")
    if cfg.critic_from not in ("auto", "actor") and not Path(cfg.critic_from).exists():
        raise DataError(cfg.critic_from, "no such directory (config key 'critic_from')")


# --------------------------------------------------------------------------------------------
# Reward models
# --------------------------------------------------------------------------------------------
class GoldTokenReward(nn.Module):
    """The synthetic world's known reward: r_t = gold quality of response token t (good word +1,
    bad word ``bad_quality``, anything else 0); R(τ) = mean r_t (eq. 1). Same interface as
    :class:`trainer.models.RewardModel`."""

    def __init__(self, tokenizer: Any, syn: SyntheticConfig):
        super().__init__()
        table = torch.zeros(len(tokenizer))
        for word, i in tokenizer.get_vocab().items():
            table[i] = word_quality(word, syn) if not word.startswith("<") else 0.0
        self.register_buffer("table", table)
        self.mode = "token"

    def token_rewards(self, input_ids, attention_mask, response_mask) -> torch.Tensor:  # noqa: ARG002
        """``[B, T]`` fp32: the table at response tokens, 0 elsewhere."""
        return torch.where(response_mask.bool(), self.table[input_ids], 0.0)

    def sequence_rewards(self, input_ids, attention_mask, response_mask) -> torch.Tensor:
        """``[B]`` mean gold quality over the response (0 when empty)."""
        r = self.token_rewards(input_ids, attention_mask, response_mask)
        return r.sum(-1) / response_mask.sum(-1).clamp_min(1)


def train_reward_model_on_the_fly(cfg: PPOConfig, out_dir: Path, pairs: Path, tok_dir: Path) -> Path:
    """Train a tiny reward model with ``trainer/reward.py`` (every rank calls it) unless
    ``out_dir/rm/final`` already exists; returns that directory."""
    from trainer.reward import RewardConfig
    from trainer.reward import train as train_rm

    final = out_dir / "rm" / "final"
    if not final.exists():
        rcfg = RewardConfig(
            mode=cfg.rm_mode, data=str(pairs), tokenizer=str(tok_dir), output_dir=str(out_dir / "rm"),
            hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size, epochs=cfg.rm_epochs, eval_every=0,
            save_best=False, log_every=20, progress=False, seed=cfg.seed, device=cfg.device,
            num_threads=cfg.num_threads, checkpoint_every=0, deterministic=cfg.deterministic,
        )  # fmt: skip
        train_rm(rcfg)
    return final


# --------------------------------------------------------------------------------------------
# Models: build on meta, FSDP2, materialise, load from rank 0
# --------------------------------------------------------------------------------------------
def build_sharded(
    auto_cls: Any, config: Any, full_sd: dict | None, di: Any, cfg: PPOConfig, train: bool
) -> nn.Module:
    """``auto_cls.from_config(config)`` on meta → ``parallelize`` → ``to_empty`` → the full
    weights ``full_sd`` broadcast from rank 0 (None elsewhere). Frozen when not ``train``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from trainer.infra.dist import parallelize
    from trainer.models import _reset_nonpersistent_buffers, attn_implementation

    with torch.device("meta"):
        model = auto_cls.from_config(
            config, attn_implementation=attn_implementation(cfg.attn_implementation, di.device)
        )
    parallelize(model, di.mesh, cfg.param_dtype, cfg.reduce_dtype, train and cfg.activation_checkpointing)
    model.to_empty(device=di.device)
    set_model_state_dict(
        model, full_sd or {}, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    )
    _reset_nonpersistent_buffers(model)
    model.train(train)
    if not train:
        model.requires_grad_(False)
    return model


def no_dropout(config: Any) -> Any:
    """Set every dropout probability of a ``transformers`` config to 0 (as TRL does): with
    dropout on, old log-probs and values scored in train mode would carry noise that the
    reference model's do not, biasing the KL and making ρ ≠ 1 at the first PPO step."""
    for name, value in vars(config).items():
        if ("dropout" in name or name.endswith("pdrop")) and isinstance(value, float):
            setattr(config, name, 0.0)
    return config


def actor_config(cfg: PPOConfig, tokenizer: Any):
    """The actor's ``transformers`` config (dropout off): ``init_from``'s, or a tiny LLaMA."""
    from transformers import AutoConfig, LlamaConfig

    if cfg.init_from:
        return no_dropout(AutoConfig.from_pretrained(cfg.init_from))
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=256, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip


def build_models(cfg: PPOConfig, di: Any, tokenizer: Any, rm_dir: Path | None, syn: SyntheticConfig | None):
    """Actor, reference (frozen copy of the actor's initial weights), critic (backbone + scalar
    head) and reward model (frozen), all FSDP2-sharded (the gold reward is a lookup table)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification

    from trainer.models import RM_META_FILE, RewardModel, init_state_dict, reward_model_config

    a_cfg = actor_config(cfg, tokenizer)
    actor_sd = None
    if di.is_main:
        torch.manual_seed(cfg.seed)
        if cfg.init_from:
            m = AutoModelForCausalLM.from_pretrained(cfg.init_from, dtype=torch.float32)
        else:
            m = AutoModelForCausalLM.from_config(a_cfg, dtype=torch.float32)
        actor_sd = m.state_dict()
        del m
    # (set_model_state_dict replaces the dict's values: each model gets its own shallow copy)
    actor = build_sharded(AutoModelForCausalLM, a_cfg, actor_sd and dict(actor_sd), di, cfg, train=True)
    ref = build_sharded(AutoModelForCausalLM, a_cfg, actor_sd and dict(actor_sd), di, cfg, train=False)

    # critic: the RM's weights (value head = reward head) or the actor's backbone + fresh head
    critic_src = cfg.critic_from
    if critic_src == "auto":
        critic_src = "actor"
        if rm_dir is not None:
            rc = AutoConfig.from_pretrained(rm_dir)
            same = all(
                getattr(rc, k, None) == getattr(a_cfg, k, None)
                for k in ("hidden_size", "num_hidden_layers", "vocab_size")
            )
            critic_src = str(rm_dir) if same else "actor"
    if critic_src == "actor":
        c_cfg = reward_model_config("", a_cfg.vocab_size, tokenizer.pad_token_id)
        c_cfg = reward_model_config_from(a_cfg, c_cfg)
        critic_sd = None
        if di.is_main:
            head = init_state_dict(c_cfg, "", cfg.seed + 1)
            critic_sd = {k: (actor_sd[k] if k in actor_sd else v) for k, v in head.items()}
    else:
        c_cfg = reward_model_config(critic_src, len(tokenizer), tokenizer.pad_token_id)
        critic_sd = init_state_dict(c_cfg, critic_src, cfg.seed + 1) if di.is_main else None
    critic = build_sharded(AutoModelForTokenClassification, no_dropout(c_cfg), critic_sd, di, cfg, train=True)

    if cfg.reward_source == "gold":
        rm = GoldTokenReward(tokenizer, syn).to(di.device)
    else:
        r_cfg = reward_model_config(str(rm_dir), len(tokenizer), tokenizer.pad_token_id)
        rm_sd = init_state_dict(r_cfg, str(rm_dir), 0) if di.is_main else None
        meta = json.loads((rm_dir / RM_META_FILE).read_text()) if (rm_dir / RM_META_FILE).exists() else {}
        rm_mode = meta.get("mode", "token")
        if rm_mode == "sequence" and cfg.reward_mode == "token":
            raise ConfigError(
                f"config key 'reward_mode': 'token' needs a token-level reward model, but {rm_dir} was "
                "trained in sequence mode (only its last-token score is meaningful): use reward_mode=sequence"
            )
        rm = RewardModel(
            build_sharded(AutoModelForTokenClassification, r_cfg, rm_sd, di, cfg, False), rm_mode
        )
        rm.eval()
    return actor, ref, critic, rm, a_cfg, critic_src


def reward_model_config_from(causal_cfg: Any, head_cfg: Any):
    """A token-classification config with ``causal_cfg``'s architecture and ``head_cfg``'s
    one-output head settings."""
    out = type(causal_cfg).from_dict(causal_cfg.to_dict())
    for k in ("num_labels", "classifier_dropout", "id2label", "label2id", "use_cache"):
        setattr(out, k, getattr(head_cfg, k))
    return out


# --------------------------------------------------------------------------------------------
# Memory estimate
# --------------------------------------------------------------------------------------------
def estimate_memory(cfg: PPOConfig, model_cfg: Any, world: int, prompt_len: int) -> dict[str, float]:
    """Rough per-device bytes of each part, for a LLaMA-like ``model_cfg`` used by all four
    models (actor, critic trainable; reference, RM frozen; fp32 sharded masters).

    Returns:
        ``params``, ``grads``, ``optimizer`` (sharded over ``world``), ``generation`` (the
        actor all-gathered in ``param_dtype`` for a rollout), ``kv_cache``, ``activations``
        (one micro-batch with or without activation checkpointing, plus its logits),
        and ``total`` = params + grads + optimizer + max(generation + kv_cache, activations).
    """
    from trainer.infra.dist import DTYPES

    h, L, V = model_cfg.hidden_size, model_cfg.num_hidden_layers, model_cfg.vocab_size
    inter = getattr(model_cfg, "intermediate_size", 4 * h)
    heads = model_cfg.num_attention_heads
    kv_heads = getattr(model_cfg, "num_key_value_heads", heads) or heads
    head_dim = getattr(model_cfg, "head_dim", None) or h // heads
    layer = 2 * h * h + 2 * h * kv_heads * head_dim + 3 * h * inter + 2 * h
    n = L * layer + 2 * V * h + h  # embeddings + LM head (untied) + final norm
    pbytes = torch.finfo(DTYPES[cfg.param_dtype]).bits // 8
    T = prompt_len + cfg.max_new_tokens
    trainable = 2 * n  # actor + critic (the critic's 1-output head instead of V is close enough)
    est = {
        "params": 4 * 4 * n / world,
        "grads": 4 * trainable / world,
        "optimizer": (2 if cfg.optimizer == "adamw8bit" else 8) * trainable / world,
        "generation": pbytes * n,
        "kv_cache": 2 * L * cfg.rollout_batch_size * T * kv_heads * head_dim * pbytes,
    }
    per_layer = 34 * cfg.micro_batch_size * T * h * pbytes / 2  # Korthikanti et al., no attention scores
    stored = (
        L * 2 * cfg.micro_batch_size * T * h * pbytes + per_layer
        if cfg.activation_checkpointing
        else L * per_layer
    )
    est["activations"] = stored + cfg.micro_batch_size * (cfg.max_new_tokens + 1) * V * (pbytes + 8)
    est["total"] = (
        est["params"]
        + est["grads"]
        + est["optimizer"]
        + max(est["generation"] + est["kv_cache"], est["activations"])
    )
    return est


def check_memory(cfg: PPOConfig, est: dict[str, float], device: torch.device) -> tuple[str, float | None]:
    """The estimate as one line, and the limit it was checked against (None: not checked).

    Raises:
        ConfigError: the estimate exceeds the limit (names the biggest parts and the knobs).
    """
    gib = 1024**3
    limit = cfg.memory_limit_gb * gib if cfg.memory_limit_gb > 0 else None
    if limit is None and device.type == "cuda":
        limit = torch.cuda.get_device_properties(device).total_memory
    line = ", ".join(f"{k} {v / gib:.2f}" for k, v in est.items()) + " GiB per device"
    if limit is not None and est["total"] > limit:
        top = sorted(((v, k) for k, v in est.items() if k != "total"), reverse=True)[:2]
        raise ConfigError(
            f"this config needs about {est['total'] / gib:.1f} GiB per device but {limit / gib:.1f} GiB "
            f"are available ({line}); biggest: {', '.join(k for _, k in top)}. Use more devices, "
            "smaller rollout_batch_size / micro_batch_size / max_new_tokens, "
            "activation_checkpointing=true, optimizer=adamw8bit, or raise memory_limit_gb."
        )
    return line, limit


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------
def load_prompts(path: str, tokenizer: Any, max_len: int) -> list[list[int]]:
    """Token ids of every prompt in ``path`` (``prompt``, or ``instruction`` + ``input``),
    rendered like the SFT/RM data, BOS first, cut from the left to ``max_len`` (BOS kept)."""
    out = []
    bos = tokenizer.bos_token_id
    for where, rec in read_records(path):
        if isinstance(rec, DataError):
            raise rec
        text = rec.get("prompt") if isinstance(rec, dict) else None
        if text is None and isinstance(rec, dict) and isinstance(rec.get("instruction"), str):
            text = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
        if not isinstance(text, str):
            raise DataError(path, "no 'prompt' (or 'instruction') string", where)
        ids = tokenizer(render_prompt(tokenizer, text), add_special_tokens=False)["input_ids"]
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        if len(ids) > max_len:
            ids = ids[:1] + ids[len(ids) - max_len + 1 :]
        out.append(ids)
    if not out:
        raise DataError(path, "no prompts")
    return out


def prompt_batch(
    prompts: list[list[int]], idx: list[int], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(ids [B, P], mask [B, P])`` of the prompts ``idx``."""
    P = max(len(prompts[i]) for i in idx)
    ids = torch.full((len(idx), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), P), dtype=torch.bool)
    for b, i in enumerate(idx):
        ids[b, P - len(prompts[i]) :] = torch.tensor(prompts[i])
        mask[b, P - len(prompts[i]) :] = True
    return ids.to(device), mask.to(device)


# --------------------------------------------------------------------------------------------
# Forward helpers (all over a Rollout's response tokens)
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
    from trainer.models import per_token_scores

    P, R = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    return per_token_scores(critic, batch.input_ids, batch.attention_mask)[:, P - 1 : P + R - 1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or this process's peak RSS on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_optimizer(model: nn.Module, lr: float, cfg: PPOConfig) -> torch.optim.Optimizer:
    """AdamW over the model's parameters (``adamw8bit``: bitsandbytes, imported only when chosen)."""
    kw = {"lr": lr, "betas": tuple(cfg.betas), "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise ConfigError("optimizer='adamw8bit' needs bitsandbytes; or use optimizer=adamw") from e
        return bnb.optim.AdamW8bit(model.parameters(), **kw)
    return torch.optim.AdamW(model.parameters(), **kw)


# Metric names of the per-iteration stats vector (summed over ranks once per iteration).
_SUMS = [
    "seq_reward", "n_seq", "tok_reward", "n_tok", "kl_seq", "entropy", "gold_tok",
    "ev_g", "ev_g2", "ev_r", "ev_r2", "pl", "vl", "approx_kl", "clipfrac", "v_clipfrac", "n_train_tok",
    "n_steps", "gen_tokens", "seq_tokens", "score_raw_mean", "score_raw_sq",
]  # fmt: skip


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------
def train(cfg: PPOConfig) -> dict:
    """Run PPO (called on every rank). Returns the last iteration's metrics."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from trainer.infra.dist import all_reduce_sum, init_distributed

    # 0. processes, threads, determinism, outputs
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    di = init_distributed(cfg.device)
    check_config(cfg, di.world_size)
    if di.device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // local_world))
    out_dir = Path(cfg.output_dir)
    if di.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(to_yaml(cfg))
        print(f"[ppo] resolved config:\n{to_yaml(cfg)}", flush=True)

    def say(msg: str) -> None:
        if di.is_main:
            tqdm.write(f"[ppo] {msg}")

    def barrier() -> None:
        if dist.is_initialized():
            dist.barrier()

    # 1. data: prompts, tokenizer (the synthetic world when no prompt file is given)
    syn = None
    if cfg.prompts:
        prompt_file, tok_name = cfg.prompts, cfg.tokenizer or cfg.init_from or cfg.reward_model
    else:
        syn = cfg.synthetic
        if di.is_main:
            write_synthetic(out_dir / "synthetic", syn)
        barrier()
        prompt_file = str(out_dir / "synthetic" / "pairs.jsonl")
        tok_name = cfg.tokenizer or str(out_dir / "synthetic" / "tokenizer")
    if not tok_name:
        raise ConfigError("config key 'tokenizer': needed when 'prompts' is given and 'init_from' is empty")
    tokenizer = AutoTokenizer.from_pretrained(tok_name)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = load_prompts(prompt_file, tokenizer, cfg.max_prompt_length)
    gold = GoldTokenReward(tokenizer, syn).to(di.device) if syn is not None else None
    say(f"prompts {prompt_file}: {len(prompts)}")

    # 2. reward model (trained on the fly when none is given), then the four models
    rm_dir = None
    if cfg.reward_source == "learned":
        if cfg.reward_model:
            rm_dir = Path(cfg.reward_model)
        elif syn is not None:
            say("no reward_model given: training a tiny one with trainer/reward.py")
            rm_dir = train_reward_model_on_the_fly(
                cfg, out_dir, out_dir / "synthetic" / "pairs.jsonl", Path(tok_name)
            )
            barrier()
        else:
            raise ConfigError("config key 'reward_model': required with a prompts file")
    a_cfg = actor_config(cfg, tokenizer)
    est = estimate_memory(cfg, a_cfg, di.world_size, max(len(p) for p in prompts))
    line, limit = check_memory(cfg, est, di.device)
    say(
        f"memory estimate: {line}"
        + (f" (limit {limit / 1024**3:.1f} GiB)" if limit else " (not checked on CPU)")
    )
    actor, ref, critic, rm, a_cfg, critic_src = build_models(cfg, di, tokenizer, rm_dir, syn)
    n_actor = sum(p.numel() for p in actor.parameters())
    say(
        f"models: actor/ref {type(actor).__name__.removeprefix('FSDP')} ({n_actor / 1e6:.2f}M params), "
        f"critic from {critic_src}, reward {cfg.reward_source} {rm_dir or ''} "
        f"(mode {getattr(rm, 'mode', '')}); world {di.world_size} on {di.device}\n"
        f"kernels: {fk.backend_report()}"
    )
    actor_opt = build_optimizer(actor, cfg.actor_lr, cfg)
    critic_opt = build_optimizer(critic, cfg.critic_lr, cfg)
    kl_ctl = (
        rlhf.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        if cfg.kl_controller == "adaptive"
        else rlhf.FixedKLController(cfg.kl_coef)
    )
    moments = rlhf.RunningMoments()
    group = dist.group.WORLD if dist.is_initialized() and di.world_size > 1 else None

    # 3. resume: the newest iteration both models were checkpointed at
    ck_actor = Checkpointer(out_dir / "checkpoints" / "actor", cfg.keep_checkpoints)
    ck_critic = Checkpointer(out_dir / "checkpoints" / "critic", cfg.keep_checkpoints)
    iteration = 0
    common = sorted({s for s, _ in ck_actor.complete()} & {s for s, _ in ck_critic.complete()})
    if cfg.resume and common:
        s = common[-1]
        ck_actor.load(ck_actor.root / f"step_{s:08d}", actor, actor_opt)
        extra = ck_critic.load(ck_critic.root / f"step_{s:08d}", critic, critic_opt)
        iteration, kl_ctl.value = extra["iteration"], extra["kl_coef"]
        moments = rlhf.RunningMoments(**extra["moments"])
        say(f"resumed from iteration {iteration}")
    else:
        torch.manual_seed(cfg.seed + 1000 * di.rank)  # sampling RNG (restored on resume)
    end = min(cfg.iterations, cfg.stop_after_iterations) if cfg.stop_after_iterations else cfg.iterations

    def save(it: int) -> None:
        extra = {"iteration": it, "kl_coef": kl_ctl.value, "moments": vars(moments).copy()}
        ck_actor.save(it, actor, actor_opt, extra)
        ck_critic.save(it, critic, critic_opt, extra)

    stop = {"flag": False}  # SIGTERM: finish this iteration, checkpoint, exit cleanly
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("flag", True))

    tb = None
    if cfg.tensorboard and di.is_main:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(out_dir / "tb"))
    bar = tqdm(
        total=end,
        initial=iteration,
        disable=not (di.is_main and cfg.progress),
        desc=f"ppo[{cfg.reward_mode}]",
    )
    world_rows = cfg.rollout_batch_size * di.world_size
    mb_rows = cfg.rollout_batch_size // cfg.num_minibatches
    metrics: dict = {}
    while iteration < end:
        acc = torch.zeros(len(_SUMS), dtype=torch.float64, device=di.device)
        S = dict(zip(_SUMS, range(len(_SUMS))))
        times = {}

        # 1. generate ------------------------------------------------------------------------
        _sync(di.device)
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + iteration)
        order = torch.randint(len(prompts), (world_rows,), generator=g)[di.rank :: di.world_size].tolist()
        p_ids, p_mask = prompt_batch(prompts, order, pad_id, di.device)
        actor.eval()
        with unsharded(actor):  # one all-gather for the whole rollout, resharded after
            r_ids, r_mask = generate(
                actor,
                p_ids,
                p_mask,
                cfg.max_new_tokens,
                tokenizer.eos_token_id,
                pad_id,
                cfg.temperature,
                cfg.top_p,
            )
        actor.train()
        ro = Rollout(p_ids, p_mask, r_ids, r_mask)
        _sync(di.device)
        times["generate"] = time.perf_counter() - t0

        # 2. score (no grad): old and reference log-probs, values, reward-model scores ---------
        t0 = time.perf_counter()
        parts: dict[str, list] = {k: [] for k in ("old", "ent", "ref", "val", "tok", "seq")}
        with torch.no_grad():
            for mb in ro.chunks(cfg.forward_batch_size):
                old, ent = policy_logprobs(actor, mb, cfg.temperature, entropy=True)
                parts["old"].append(old)
                parts["ent"].append(ent)
                parts["ref"].append(policy_logprobs(ref, mb, cfg.temperature))
                parts["val"].append(critic_values(critic, mb))
                P = mb.prompt_ids.shape[1]
                args = (mb.input_ids, mb.attention_mask, mb.full_response_mask)
                parts["tok"].append(rm.token_rewards(*args)[:, P:])
                parts["seq"].append(rm.sequence_rewards(*args))
        old_logp, entropy, ref_logp, values, tok_r, seq_r = (torch.cat(parts[k]) for k in parts)
        mask = ro.response_mask
        _sync(di.device)
        times["score"] = time.perf_counter() - t0

        # 3. rewards + KL ----------------------------------------------------------------------
        score = tok_r if cfg.reward_mode == "token" else seq_r
        if cfg.reward_norm:  # running moments of the RM scores, global (host sync, once per iteration)
            valid = mask if cfg.reward_mode == "token" else torch.ones_like(seq_r, dtype=torch.bool)
            st = all_reduce_sum(
                torch.stack(
                    [
                        torch.where(valid, score, 0).sum(),
                        torch.where(valid, score**2, 0).sum(),
                        valid.sum().float(),
                    ]
                ).double()
            )
            n = st[2].item()
            mean = st[0].item() / max(n, 1)
            moments.update(mean, max(st[1].item() / max(n, 1) - mean**2, 0.0), n)
            score = (score - moments.mean) / moments.std
        kl = rlhf.kl_penalty(old_logp, ref_logp, cfg.kl_estimator)
        if cfg.reward_mode == "token":
            rewards = rlhf.compute_rewards(kl, mask, kl_ctl.value, "token", token_reward=score)
        else:
            rewards = rlhf.compute_rewards(kl, mask, kl_ctl.value, "sequence", sequence_reward=score)

        # 4. GAE (advantages whitened with statistics over all ranks) --------------------------
        adv, ret = fk.gae(
            rewards, values, mask, cfg.gamma, cfg.lam, whiten=cfg.whiten_advantages, group=group
        )
        ro.old_logp, ro.ref_logp, ro.values, ro.rewards, ro.advantages, ro.returns = (
            old_logp, ref_logp, values, rewards, adv, ret
        )  # fmt: skip

        # 5. PPO epochs over shuffled minibatches, gradient accumulation -----------------------
        t0 = time.perf_counter()
        for epoch in range(cfg.ppo_epochs):
            gp = torch.Generator().manual_seed(((cfg.seed * 7919 + iteration) * 31 + epoch) * 131 + di.rank)
            perm = torch.randperm(len(ro), generator=gp)
            for m in range(cfg.num_minibatches):
                mini = ro.index(perm[m * mb_rows : (m + 1) * mb_rows].to(di.device))
                micro = list(mini.chunks(cfg.micro_batch_size))
                # the global number of valid tokens of this optimizer step: one all-reduce
                n_tok = all_reduce_sum(mini.response_mask.sum().float())
                world = di.world_size  # FSDP averages gradients over ranks: × world undoes it
                for k, mbatch in enumerate(micro):
                    last = k == len(micro) - 1
                    actor.set_requires_gradient_sync(last)  # reduce-scatter once per step
                    critic.set_requires_gradient_sync(last)
                    out = policy_logprobs(actor, mbatch, cfg.temperature, entropy=cfg.entropy_coef > 0)
                    logp, ent = out if cfg.entropy_coef > 0 else (out, None)
                    pl, pst = rlhf.ppo_policy_loss(
                        logp, mbatch.old_logp, mbatch.advantages, mbatch.response_mask, cfg.clip_eps, n_tok
                    )
                    if ent is not None:
                        pl = pl + rlhf.entropy_bonus(ent, mbatch.response_mask, cfg.entropy_coef, n_tok)
                    (pl * world).backward()
                    v = critic_values(critic, mbatch)
                    vl, vclip = rlhf.value_loss(
                        v, mbatch.values, mbatch.returns, mbatch.response_mask, cfg.value_clip_eps, n_tok
                    )
                    (cfg.vf_coef * vl * world).backward()
                    acc[S["pl"]] += pl.detach().double()
                    acc[S["vl"]] += vl.detach().double()
                    acc[S["approx_kl"]] += pst.approx_kl_sum.double()
                    acc[S["clipfrac"]] += pst.clipfrac_sum.double()
                    acc[S["v_clipfrac"]] += vclip.double()
                    acc[S["n_train_tok"]] += mbatch.response_mask.sum()
                for model, opt in ((actor, actor_opt), (critic, critic_opt)):
                    if cfg.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                acc[S["n_steps"]] += 1.0 / di.world_size  # summed over ranks below
        _sync(di.device)
        times["train"] = time.perf_counter() - t0
        iteration += 1

        # 6. log / checkpoint (host syncs happen here only: one all-reduce, one copy) -----------
        with torch.no_grad():
            maskf = mask.double()
            n_resp = mask.sum(-1)
            acc[S["seq_reward"]] += seq_r.double().sum()
            acc[S["n_seq"]] += len(ro)
            acc[S["tok_reward"]] += (tok_r.double() * maskf).sum()
            acc[S["n_tok"]] += maskf.sum()
            acc[S["kl_seq"]] += (rlhf.kl_penalty(old_logp, ref_logp, "k1").double() * maskf).sum()
            acc[S["entropy"]] += (entropy.double() * maskf).sum()
            if gold is not None:
                acc[S["gold_tok"]] += (gold.token_rewards(ro.response_ids, None, mask).double()).sum()
            gv, rv = ret.double() * maskf, (ret - values).double() * maskf
            acc[S["ev_g"]] += gv.sum()
            acc[S["ev_g2"]] += (gv**2).sum()
            acc[S["ev_r"]] += rv.sum()
            acc[S["ev_r2"]] += (rv**2).sum()
            acc[S["gen_tokens"]] += n_resp.sum()
            acc[S["seq_tokens"]] += ro.attention_mask.sum()
        stop_flag = torch.tensor([float(stop["flag"])], dtype=torch.float64, device=di.device)
        tot = all_reduce_sum(torch.cat([acc, stop_flag])).tolist()  # host sync (log point)
        a = dict(zip(_SUMS, tot))
        ntt = max(a["n_train_tok"], 1.0)
        var_g = a["ev_g2"] / a["n_tok"] - (a["ev_g"] / a["n_tok"]) ** 2
        var_r = a["ev_r2"] / a["n_tok"] - (a["ev_r"] / a["n_tok"]) ** 2
        kl_per_seq = a["kl_seq"] / a["n_seq"]
        steps = max(a["n_steps"], 1.0)
        metrics = {
            "iteration": iteration,
            "reward": a["seq_reward"] / a["n_seq"],
            "reward_per_token": a["tok_reward"] / max(a["n_tok"], 1),
            "kl": kl_per_seq,
            "kl_coef": kl_ctl.value,
            "entropy": a["entropy"] / max(a["n_tok"], 1),
            "policy_loss": a["pl"] / steps,  # mean over optimizer steps of Σ_tokens / N_global
            "value_loss": a["vl"] / steps,
            "approx_kl": a["approx_kl"] / ntt,
            "clipfrac": a["clipfrac"] / ntt,
            "value_clipfrac": a["v_clipfrac"] / ntt,
            "explained_variance": 1.0 - var_r / var_g if var_g > 0 else float("nan"),
            "response_length": a["gen_tokens"] / a["n_seq"],
        }
        if gold is not None:
            metrics["gold_reward_per_token"] = a["gold_tok"] / max(a["n_tok"], 1)
        for phase, dt in times.items():
            ntok = {
                "generate": a["gen_tokens"],
                "score": a["seq_tokens"],
                "train": a["seq_tokens"] * cfg.ppo_epochs,
            }[phase]
            metrics[f"time_{phase}_s"] = dt
            metrics[f"tokens_per_s_{phase}"] = ntok / dt
        metrics["peak_memory_mb"] = peak_memory_mb(di.device)
        kl_ctl.update(kl_per_seq, int(a["n_seq"]))
        if di.is_main:
            with open(out_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(metrics) + "\n")
            if tb is not None:
                for k, v in metrics.items():
                    tb.add_scalar(k, v, iteration)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics['kl']:.3f}")
        terminated = tot[-1] > 0
        if (cfg.checkpoint_every and iteration % cfg.checkpoint_every == 0) or iteration == end or terminated:
            save(iteration)
        if terminated:
            say(f"SIGTERM: checkpoint saved at iteration {iteration}; exiting")
            break
    bar.close()

    # 7. the final actor as a plain transformers directory
    if cfg.save_final and iteration >= cfg.iterations:
        from trainer.models import full_state_dict

        sd = full_state_dict(actor)  # collective
        if di.is_main:
            save_causal_lm(sd, a_cfg, out_dir / "final" / "actor", tokenizer)
            say(f"saved {out_dir / 'final' / 'actor'}")
    return metrics


def save_causal_lm(sd: dict, config: Any, out: Path, tokenizer: Any) -> None:
    """Write ``sd`` as a ``transformers`` causal-LM directory (temp dir + rename)."""
    import shutil

    from transformers import AutoModelForCausalLM

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(sd, assign=True, strict=True)
    model.save_pretrained(str(tmp), state_dict=sd, safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    """``--help``, or parse ``argv`` (``--config FILE`` then ``key=value``) and train."""
    return cli_main(PPOConfig, train, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
