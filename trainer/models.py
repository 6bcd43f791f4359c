"""Reward models: a Hugging Face decoder with a scalar head on every position (SPEC §3).

The model is ``AutoModelForTokenClassification`` with ``num_labels=1`` (for LLaMA,
``LlamaForTokenClassification``): a causal backbone whose ``score`` Linear maps every hidden
state to one number, so ``r_t`` is the head's output at response token ``t``. Both reward
models use it:

* ``token`` mode (the fine-grained RM): sequence reward R(τ) = mean of r_t over the response
  (eq. 1);
* ``sequence`` mode (the PPO-RLHF baseline): R(τ) = the head at the last response token.

A saved reward model is a plain ``transformers`` directory (``config.json`` + safetensors,
plus the tokenizer and ``fgrlhf_reward.json`` naming the mode), so it loads back with::

    from transformers import AutoModelForTokenClassification
    model = AutoModelForTokenClassification.from_pretrained(path)   # logits [B, T, 1]

or, with the mode-aware helpers PPO uses, ``RewardModel.from_pretrained(path)``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "RM_META_FILE",
    "RewardModel",
    "attn_implementation",
    "build_sharded_model",
    "full_state_dict",
    "init_state_dict",
    "last_token_index",
    "per_token_scores",
    "reward_model_config",
    "save_reward_model",
    "sequence_rewards",
    "token_rewards",
]

RM_META_FILE = "fgrlhf_reward.json"
MODES = ("token", "sequence")


# --- configs and building ------------------------------------------------------------------
def attn_implementation(choice: str = "auto", device: torch.device | None = None) -> str:
    """``"flash_attention_2"`` when ``flash_attn`` is installed and the device is CUDA, else
    ``"sdpa"`` (for ``choice="auto"``); any other choice is passed through."""
    if choice != "auto":
        return choice
    on_cuda = device is not None and device.type == "cuda"
    return "flash_attention_2" if on_cuda and importlib.util.find_spec("flash_attn") else "sdpa"


def reward_model_config(
    init_from: str,
    vocab_size: int,
    pad_token_id: int | None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    max_position_embeddings: int = 2048,
):
    """The ``transformers`` config of the reward model: the one at ``init_from`` (a directory
    or hub name), or a tiny random-init LLaMA when ``init_from`` is empty; either way with a
    one-output head (``num_labels=1``) and no head dropout.

    Raises:
        ValueError: the tokenizer has more tokens than the checkpoint's embedding.
    """
    from transformers import AutoConfig, LlamaConfig

    if init_from:
        config = AutoConfig.from_pretrained(init_from)
        if vocab_size > config.vocab_size:
            raise ValueError(
                f"init_from={init_from}: the tokenizer has {vocab_size} tokens but the model's "
                f"embedding only {config.vocab_size}"
            )
    else:
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
            tie_word_embeddings=False,
        )
    config.num_labels = 1
    config.classifier_dropout = 0.0
    config.id2label, config.label2id = {0: "reward"}, {"reward": 0}
    if pad_token_id is not None:
        config.pad_token_id = pad_token_id
    config.use_cache = False
    return config


def init_state_dict(config: Any, init_from: str, seed: int) -> dict[str, torch.Tensor]:
    """The full initial weights on the CPU in fp32 (call it on rank 0 only): loaded from
    ``init_from`` (a causal-LM checkpoint gets a freshly initialised head, seeded by ``seed``)
    or a random init of ``config``."""
    from transformers import AutoModelForTokenClassification

    torch.manual_seed(seed)
    if init_from:
        model = AutoModelForTokenClassification.from_pretrained(init_from, config=config, dtype=torch.float32)
    else:
        model = AutoModelForTokenClassification.from_config(config, dtype=torch.float32)
    return model.state_dict()


def _reset_nonpersistent_buffers(model: nn.Module) -> None:
    """After ``to_empty`` the buffers not in the state dict (RoPE ``inv_freq``) hold garbage:
    rebuild each such module from its config and copy its buffers over."""
    for module in model.modules():
        persistent = set(module.state_dict(keep_vars=True).keys())
        own = [n for n, _ in module.named_buffers(recurse=False) if n not in persistent]
        if not own:
            continue
        fresh = type(module)(module.config)
        with torch.no_grad():
            for name in own:
                getattr(module, name).copy_(getattr(fresh, name))


def build_sharded_model(
    config: Any,
    init_from: str,
    seed: int,
    dist_info: Any,
    param_dtype: str = "bfloat16",
    reduce_dtype: str = "float32",
    activation_checkpointing: bool = True,
    attn: str = "auto",
) -> nn.Module:
    """Build the reward model the torchtitan way: on ``meta``, shard (FSDP2), materialise,
    then load the full initial weights from rank 0 (broadcast, sharded on arrival).

    Returns:
        The FSDP2-sharded ``AutoModelForTokenClassification`` on ``dist_info.device``.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoModelForTokenClassification

    from trainer.infra.dist import parallelize

    impl = attn_implementation(attn, dist_info.device)
    # 1. the skeleton on meta: no memory, no init
    with torch.device("meta"):
        model = AutoModelForTokenClassification.from_config(config, attn_implementation=impl)
    # 2. activation checkpointing + fully_shard per layer, then the root
    parallelize(model, dist_info.mesh, param_dtype, reduce_dtype, activation_checkpointing)
    # 3. materialise the local shards, then the full weights from rank 0
    model.to_empty(device=dist_info.device)
    full = init_state_dict(config, init_from, seed) if dist_info.is_main else {}
    set_model_state_dict(
        model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    )
    _reset_nonpersistent_buffers(model)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (gathered) state dict on the CPU of rank 0 (empty elsewhere). Collective: every
    rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_reward_model(
    state_dict: dict[str, torch.Tensor],
    config: Any,
    out_dir: str | Path,
    tokenizer: Any = None,
    meta: dict | None = None,
    dtype: str = "float32",
) -> Path:
    """Write a reward model as a plain ``transformers`` directory (safetensors + config), plus
    the tokenizer and ``fgrlhf_reward.json`` (``meta``: mode, variant, ...). Atomic: written to
    a temp directory, then renamed over ``out_dir``. Call on one rank only.
    """
    from transformers import AutoModelForTokenClassification

    from trainer.infra.dist import DTYPES

    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.device("meta"):
        model = AutoModelForTokenClassification.from_config(config)
    sd = {k: v.to(DTYPES[dtype]) for k, v in state_dict.items()}
    model.load_state_dict(sd, assign=True, strict=True)
    model.config.dtype = dtype
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(str(tmp), state_dict=sd, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    (tmp / RM_META_FILE).write_text(json.dumps(meta or {}, indent=2, sort_keys=True) + "\n")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


# --- scoring -------------------------------------------------------------------------------
def per_token_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The head's output at every position.

    Args:
        model: an ``AutoModelForTokenClassification`` with ``num_labels=1`` (sharded or not).
        input_ids: ``[B, T]`` int64.
        attention_mask: ``[B, T]`` bool/int, 1 on real tokens (left or right padding).

    Returns:
        ``[B, T]`` fp32 scores (meaningless on padding).
    """
    mask = attention_mask.long()
    # positions count real tokens only, so left- and right-padded rows score the same
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
    return out.logits[..., 0].float()


def last_token_index(response_mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` index of the last True of each row of ``response_mask`` ``[B, T]`` (0 when empty)."""
    T = response_mask.shape[-1]
    pos = torch.arange(T, device=response_mask.device).expand_as(response_mask)
    return torch.where(response_mask, pos, -1).amax(-1).clamp_min(0)


def token_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` per-token rewards: ``scores`` on response tokens, 0 elsewhere."""
    return torch.where(response_mask, scores, torch.zeros((), dtype=scores.dtype, device=scores.device))


def sequence_rewards(scores: torch.Tensor, response_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """``[B]`` sequence reward R(τ): the mean response-token score (``token`` mode, eq. 1) or
    the score at the last response token (``sequence`` mode). An empty response gets 0."""
    if mode == "token":
        n = response_mask.sum(-1).clamp_min(1).to(scores.dtype)
        return token_rewards(scores, response_mask).sum(-1) / n
    if mode == "sequence":
        r = scores.gather(-1, last_token_index(response_mask)[:, None])[:, 0]
        return torch.where(response_mask.any(-1), r, torch.zeros_like(r))
    raise ValueError(f"mode={mode!r} is not one of {MODES}")


class RewardModel(nn.Module):
    """A trained reward model for inference (PPO scoring), wrapping the ``transformers`` model.

    Example::

        rm = RewardModel.from_pretrained("runs/reward/final").eval()
        r = rm.token_rewards(input_ids, attention_mask, response_mask)   # [B, T]
        R = rm.sequence_rewards(input_ids, attention_mask, response_mask)  # [B]
    """

    def __init__(self, model: nn.Module, mode: str = "token"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not one of {MODES}")
        self.model, self.mode = model, mode

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> RewardModel:
        """Load a directory written by ``trainer/reward.py`` (``kwargs`` go to
        ``AutoModelForTokenClassification.from_pretrained``, e.g. ``dtype``, ``device_map``)."""
        from transformers import AutoModelForTokenClassification

        meta_path = Path(path) / RM_META_FILE
        mode = json.loads(meta_path.read_text()).get("mode", "token") if meta_path.exists() else "token"
        return cls(AutoModelForTokenClassification.from_pretrained(str(path), **kwargs), mode)

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` fp32 head outputs at every position."""
        return per_token_scores(self.model, input_ids, attention_mask)

    def token_rewards(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
    ) -> torch.Tensor:
        """Per-token rewards ``[B, T]`` fp32 for (prompt + response) ids ``[B, T]`` (left or
        right padded); zero outside ``response_mask`` ``[B, T]`` bool."""
        return token_rewards(self.scores(input_ids, attention_mask), response_mask.bool())

    def sequence_rewards(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
    ) -> torch.Tensor:
        """Sequence rewards ``[B]`` fp32 (the mode's R(τ), see :func:`sequence_rewards`)."""
        return sequence_rewards(self.scores(input_ids, attention_mask), response_mask.bool(), self.mode)
