"""Models: the one build / load / save path of every trainer, the reward-model heads and scoring,
and the synthetic world's gold reward.

Two kinds of ``transformers`` model are built here (``KINDS``):

* ``causal_lm`` — ``AutoModelForCausalLM``: the policy (actor) and its frozen reference;
* ``scalar_head`` — ``AutoModelForTokenClassification`` with ``num_labels=1`` (for LLaMA,
  ``LlamaForTokenClassification``): a causal backbone whose ``score`` Linear maps every hidden
  state to one number. The reward model and the critic are this kind; ``r_t`` is the head's
  output at response token ``t``.

A reward model is *token-level* or *sequence-level* (its ``level``, recorded in
``fgrlhf_reward.json`` next to the weights):

* ``token`` (the fine-grained RM): sequence reward R(τ) = mean of r_t over the response
  (the paper's eq. 1);
* ``sequence`` (the PPO-RLHF baseline): R(τ) = the head at the last response token.

Every model is built the torchtitan way (:func:`build_sharded`): on ``meta``, ``parallelize``
(FSDP2), materialise, then the full weights broadcast from rank 0. A saved model
(:func:`save_pretrained`) is a plain ``transformers`` directory (``config.json`` + safetensors +
the tokenizer), so a reward model loads back with::

    from transformers import AutoModelForTokenClassification
    model = AutoModelForTokenClassification.from_pretrained(path)   # logits [B, T, 1]

or, level-aware, ``RewardModel.from_pretrained(path)``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from trainer.data.examples import TokenizedExample, checked_template
from trainer.data.synthetic import sensitive, word_quality
from trainer.errors import ConfigError, describe
from trainer.fake import in_dry_run
from trainer.infra.dist import DTYPES, broadcast_object, gather_objects, parallelize
from trainer.infra.dryrun import ARCH_PRESETS, preset_config, stand_in_tokenizer
from trainer.rlhf import last_token_index

__all__ = [
    "KINDS",
    "LEVELS",
    "RM_META_FILE",
    "GoldReward",
    "RewardModel",
    "RewardScores",
    "attn_implementation",
    "flash_attn_works",
    "build_sharded",
    "check_model_dir",
    "full_state_dict",
    "initial_state_dict",
    "load_on_rank0",
    "load_tokenizer",
    "master_config",
    "no_dropout",
    "per_token_scores",
    "position_ids",
    "open_reward_model",
    "read_reward_meta",
    "save_pretrained",
    "scalar_head_config",
    "sequence_reward",
    "stand_in_example",
    "tiny_llama_config",
]

RM_META_FILE = "fgrlhf_reward.json"
POLICY_META_FILE = "fgrlhf_policy.json"  # a policy's prompt template, for `fgrlhf generate`
LEVELS = ("token", "sequence")
KINDS = ("causal_lm", "scalar_head")


def _auto_class(kind: str):
    from transformers import (  # lazy: transformers (heavy)
        AutoModelForCausalLM,
        AutoModelForTokenClassification,
    )

    if kind == "causal_lm":
        return AutoModelForCausalLM
    if kind == "scalar_head":
        return AutoModelForTokenClassification
    raise ValueError(f"kind={kind!r} is not one of {KINDS}")


# --- configs -------------------------------------------------------------------------------
MASTER_DTYPE = torch.float32  # every trained (and frozen) model's stored weights; compute is param_dtype


def master_config(config: Any) -> Any:
    """A deep copy of ``config`` whose ``dtype`` is fp32, for building a model from it.

    Two reasons, both found on a real checkpoint's path: a saved checkpoint's ``config.json``
    says ``float16`` (stock LLaMA-7B) or ``bfloat16`` (our own ``save_dtype``), and
    ``transformers`` builds in ``config.dtype`` unless told otherwise — the only weights (and
    AdamW's updates to them) would then be half precision, where a 3e-6 step rounds away. And
    ``from_config`` / ``from_pretrained`` write the dtype they built in back into the config
    object they were given: one rank building from a shared config would change it for that
    rank only (ranks then disagree on dtypes in collectives and checkpoint metadata). Building
    from a copy leaves the caller's config as it was on every rank.
    """
    out = copy.deepcopy(config)
    out.dtype = MASTER_DTYPE
    return out


def attn_implementation(choice: str = "auto", device: torch.device | None = None) -> str:
    """``"flash_attention_2"`` when the device is CUDA and ``flash_attn`` imports *and runs* there
    (:func:`flash_attn_works`), else ``"sdpa"`` (for ``choice="auto"``); any other choice is
    passed through."""
    if choice != "auto":
        return choice
    on_cuda = device is not None and device.type == "cuda"
    return "flash_attention_2" if on_cuda and flash_attn_works(device) else "sdpa"


_FLASH_ATTN_OK: dict[str, bool] = {}


def flash_attn_works(device: torch.device) -> bool:
    """Whether FlashAttention 2 can be used on ``device``: the package imports (a wheel built for
    another torch or CUDA fails here with an undefined symbol, which merely *finding* it does not
    show) and one tiny causal call runs and gives finite output. Cached per device; the reason it
    cannot is printed once."""
    key = str(device)
    if key not in _FLASH_ATTN_OK:
        ok, why = False, ""
        if importlib.util.find_spec("flash_attn") is None:
            why = "not installed"
        else:
            try:
                from flash_attn import flash_attn_func  # optional: [gpu] extra

                q = torch.randn(1, 8, 2, 64, device=device, dtype=torch.bfloat16)
                ok = bool(torch.isfinite(flash_attn_func(q, q, q, causal=True)).all())
                why = "" if ok else "its test call returned non-finite values"
            except Exception as e:  # noqa: BLE001 - ImportError, OSError (undefined symbol), CUDA errors
                why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if not ok and why != "not installed":
            print(
                f"attn_implementation=auto: flash_attn cannot run on {device} ({why}); using sdpa", flush=True
            )
        _FLASH_ATTN_OK[key] = ok
    return _FLASH_ATTN_OK[key]


def tiny_llama_config(cfg: Any, tokenizer: Any, max_position_embeddings: int = 256):
    """A random-init LLaMA of ``cfg``'s tiny sizes (``hidden_size``, ``num_layers``,
    ``num_heads``, ``intermediate_size``) over ``tokenizer``'s vocabulary."""
    from transformers import LlamaConfig  # lazy: transformers (heavy)

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False, pad_token_id=pad_token_id(tokenizer),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip


def pad_token_id(tokenizer: Any) -> int | None:
    """The tokenizer's pad id, else its EOS id (written into padding, never attended)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def base_config(cfg: Any, tokenizer: Any, max_position_embeddings: int = 256):
    """The backbone config of a trainer: ``cfg.init_from``'s, else the ``cfg.arch`` preset
    (:data:`trainer.infra.dryrun.ARCH_PRESETS`), else :func:`tiny_llama_config`.

    Raises:
        ConfigError: ``init_from`` is not a model directory, or the tokenizer has more tokens than
            the checkpoint's embedding.
    """
    from transformers import AutoConfig  # lazy: transformers (heavy)

    if not cfg.init_from and getattr(cfg, "arch", ""):
        config = preset_config(cfg.arch, tokenizer)
        if len(tokenizer) > config.vocab_size:
            raise ConfigError(
                f"arch={cfg.arch}: the tokenizer has {len(tokenizer)} tokens but the preset's embedding only "
                f"{config.vocab_size}"
            )
        return _dry_run_layers(config, cfg)
    if not cfg.init_from:
        return tiny_llama_config(cfg, tokenizer, max_position_embeddings)
    check_model_dir(cfg.init_from, "init_from")
    config = AutoConfig.from_pretrained(cfg.init_from)
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"init_from={cfg.init_from}: the tokenizer has {len(tokenizer)} tokens but the model's "
            f"embedding only {config.vocab_size}"
        )
    return _dry_run_layers(config, cfg)


def _dry_run_layers(config: Any, cfg: Any) -> Any:
    """``config`` with ``cfg.dry_run_layers`` decoder layers in a dry run that asks for fewer."""
    n = getattr(cfg, "dry_run_layers", 0)
    if getattr(cfg, "dry_run", False) and n:
        config.num_hidden_layers = n
    return config


def scalar_head_config(config: Any, pad_id: int | None = None):
    """A copy of ``config`` (any decoder's) for a one-output head on every position
    (``num_labels=1``, no head dropout, no KV cache)."""
    out = type(config).from_dict(config.to_dict())
    out.num_labels = 1
    out.classifier_dropout = 0.0
    out.id2label, out.label2id = {0: "reward"}, {"reward": 0}
    if pad_id is not None:
        out.pad_token_id = pad_id
    out.use_cache = False
    return out


def no_dropout(config: Any) -> Any:
    """Set every dropout probability of a ``transformers`` config to 0 (as TRL does for PPO):
    with dropout on, old log-probs and values scored in train mode would carry noise that the
    reference model's do not, biasing the KL and making ρ ≠ 1 at the first PPO step."""
    for name, value in vars(config).items():
        if ("dropout" in name or name.endswith("pdrop")) and isinstance(value, float):
            setattr(config, name, 0.0)
    return config


# --- build, load, save ---------------------------------------------------------------------
def initial_state_dict(
    kind: str, config: Any, init_from: str, seed: int, new_head: bool = False, key: str = "init_from"
) -> dict[str, torch.Tensor]:
    """The full initial weights on the CPU in fp32 (call it on rank 0 only, or through
    :func:`load_on_rank0`): loaded from ``init_from``, or a random init of ``config``.

    Every weight of the model must come from the checkpoint and every checkpoint weight must be
    used — except, with ``new_head``, a fresh ``scalar_head`` on a causal LM (its ``score`` head
    initialised, seeded by ``seed``, and the LM head dropped).

    Raises:
        ConfigError: the checkpoint's weights do not fit this model (names the keys and ``key``).
    """

    auto = _auto_class(kind)
    torch.manual_seed(seed)
    if not init_from:
        return auto.from_config(master_config(config), dtype=MASTER_DTYPE).state_dict()
    import transformers  # lazy: transformers (heavy)

    # With new_head the LM head is dropped and a score head initialised on purpose; transformers'
    # load report would flag exactly that (UNEXPECTED lm_head, MISSING score, "not ok if you expect
    # identical arch") in every reward-model and critic log. The keys are checked below either way.
    verbosity = transformers.logging.get_verbosity()
    if new_head:
        transformers.logging.set_verbosity_error()
    try:
        model, info = auto.from_pretrained(
            init_from, config=master_config(config), dtype=MASTER_DTYPE, output_loading_info=True
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
    missing, unexpected = list(info.get("missing_keys", [])), list(info.get("unexpected_keys", []))
    mismatched = [k for k, *_ in info.get("mismatched_keys", [])]
    if new_head:
        missing = [k for k in missing if not k.startswith("score.")]
        unexpected = [k for k in unexpected if not k.startswith("lm_head.")]
    if missing or unexpected or mismatched:
        raise ConfigError(
            f"config key {key!r}: the weights in {init_from} do not fit a {kind} model "
            f"(missing {missing[:4]}, unexpected {unexpected[:4]}, wrong shape {mismatched[:4]}); "
            "is it the right kind of model directory?"
        )
    return model.state_dict()


def load_on_rank0(
    di: Any, kind: str, config: Any, init_from: str, seed: int, new_head: bool = False, key: str = "init_from"
) -> dict[str, torch.Tensor] | None:
    """:func:`initial_state_dict` on rank 0 (None elsewhere), with its refusal raised on every
    rank (no rank is left waiting for weights that will never be broadcast)."""

    sd, error = None, None
    if in_dry_run():  # no weights are loaded in a dry run (build_sharded only materialises)
        return None
    if di.is_main:
        try:
            sd = initial_state_dict(kind, config, init_from, seed, new_head, key)
        except ConfigError as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - unreadable weights, hub offline: every rank stops
            error = f"config key {key!r}: cannot load {init_from} ({describe(e)})"
    error = broadcast_object(error)
    if error is not None:
        raise ConfigError(error)
    return sd


def check_model_dir(path: str, key: str) -> None:
    """A local ``path`` given for ``key`` must be a ``transformers`` model directory; a run's root
    (which holds ``final/``) gets a hint. Hub names (no such local path) are left to ``transformers``.

    Raises:
        ConfigError: naming ``key`` and what the directory is instead.
    """

    p = Path(path)
    if not path or not p.exists():
        return
    if not p.is_dir():
        raise ConfigError(f"config key {key!r}: {path} is a file, expected a model directory")
    if (p / "config.json").exists():
        return
    for sub in ("final", "final/actor", "best"):
        if (p / sub / "config.json").exists():
            raise ConfigError(f"config key {key!r}: {path} is a run directory; did you mean {p / sub}?")
    raise ConfigError(f"config key {key!r}: {path} has no config.json: not a transformers model directory")


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


def build_sharded(
    kind: str,
    config: Any,
    full_sd: dict[str, torch.Tensor] | None,
    di: Any,
    cfg: Any,
    train: bool = True,
) -> nn.Module:
    """Build a model the torchtitan way: ``from_config`` on ``meta`` → ``parallelize`` (activation
    checkpointing when ``train`` and ``cfg.activation_checkpointing``, FSDP2 per layer + root with
    ``cfg.param_dtype`` / ``cfg.reduce_dtype``) → ``to_empty`` → the full weights ``full_sd``
    (rank 0; None elsewhere) broadcast and sharded on arrival. Frozen (eval, no grad) unless
    ``train``.

    The sharded parameters — the only copy of the weights, and what the optimizer updates — are
    fp32 whatever dtype the checkpoint was saved in (:func:`master_config`); FSDP2 casts them to
    ``cfg.param_dtype`` for each forward / backward.

    Args:
        kind: ``causal_lm`` or ``scalar_head``.
        config: the ``transformers`` config.
        full_sd: the full state dict on rank 0 (consumed: its values are replaced), None elsewhere.
        di: the process's ``DistInfo`` (device, mesh).
        cfg: the trainer config (``param_dtype``, ``reduce_dtype``, ``activation_checkpointing``,
            ``attn_implementation``).
    """
    from torch.distributed.checkpoint.state_dict import (  # lazy: heavy (~0.7 s), only for sharded models
        StateDictOptions,
        set_model_state_dict,
    )

    impl = attn_implementation(cfg.attn_implementation, di.device)
    # 1. the skeleton on meta: no memory, no init
    with torch.device("meta"):
        model = _auto_class(kind).from_config(
            master_config(config), attn_implementation=impl, dtype=MASTER_DTYPE
        )
    # 2. activation checkpointing + fully_shard per layer, then the root
    ac = train and cfg.activation_checkpointing
    parallelize(model, di.mesh, cfg.param_dtype, cfg.reduce_dtype, ac)
    # 3. materialise the local shards, then the full weights from rank 0
    model.to_empty(device=di.device)

    if not in_dry_run():  # a dry run's fake tensors hold no weights to broadcast
        set_model_state_dict(
            model, full_sd or {}, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        )
    _reset_nonpersistent_buffers(model)
    _check_masters(model, kind)
    model.train(train)
    if not train:
        model.requires_grad_(False)
    return model


def _check_masters(model: nn.Module, kind: str) -> None:
    """Every rank's parameters must be fp32 masters (collective: each rank's dtypes are gathered,
    so all raise together instead of one rank failing while the others wait in a collective).

    Raises:
        RuntimeError: naming the rank and the dtypes it built (a config whose ``dtype`` reached
            the build, the defect :func:`master_config` exists for).
    """

    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    bad = [(r, d) for r, d in enumerate(gather_objects(dtypes)) if d != ["float32"]]
    if bad:
        rank, got = bad[0]
        raise RuntimeError(f"{kind} built with {got} parameters on rank {rank}: the masters must be float32")


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (gathered) state dict on the CPU of rank 0 (empty elsewhere). Collective: every
    rank must call it."""
    from torch.distributed.checkpoint.state_dict import (  # lazy: heavy (~0.7 s), only for sharded models
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_pretrained(
    state_dict: dict[str, torch.Tensor],
    config: Any,
    kind: str,
    out_dir: str | Path,
    tokenizer: Any = None,
    reward_meta: dict | None = None,
    dtype: str = "float32",
    policy_meta: dict | None = None,
) -> Path:
    """Write a model as a plain ``transformers`` directory (safetensors + config), plus the
    tokenizer and, for a reward model, ``fgrlhf_reward.json`` (``reward_meta``: level, variant,
    ...) or, for a policy, ``fgrlhf_policy.json`` (``policy_meta``: the prompt template it was
    trained on, which ``fgrlhf generate`` renders prompts with). Atomic: written to a temp
    directory, then renamed over ``out_dir``. Call on one rank.
    """
    from transformers.utils import logging as hf_logging  # lazy: transformers (heavy)

    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.device("meta"):
        model = _auto_class(kind).from_config(copy.deepcopy(config))  # (never the caller's config)
    sd = {k: v.to(DTYPES[dtype]) for k, v in state_dict.items()}
    model.load_state_dict(sd, assign=True, strict=True)
    model.config.dtype = dtype
    hf_logging.disable_progress_bar()
    model.save_pretrained(str(tmp), state_dict=sd, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    if reward_meta is not None:
        (tmp / RM_META_FILE).write_text(json.dumps(reward_meta, indent=2, sort_keys=True) + "\n")
    if policy_meta is not None:
        (tmp / POLICY_META_FILE).write_text(json.dumps(policy_meta, indent=2, sort_keys=True) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def load_tokenizer(name: str, key: str):
    """``AutoTokenizer.from_pretrained(name)``, a failure being a one-line error naming ``key``."""
    from transformers import AutoTokenizer  # lazy: transformers (heavy)

    p = Path(name)
    if p.is_dir() and not any((p / f).exists() for f in ("tokenizer_config.json", "tokenizer.json")):
        check_model_dir(name, key)  # a run's root gets its hint
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"config key {key!r}: cannot load a tokenizer from {name} ({describe(e)})"
        ) from None


def stand_in_example(cfg: Any) -> tuple[Any, Any]:
    """The supervised trainers' dry-run data (reward, SFT/FIGA): the tokenizer (``tokenizer`` /
    ``init_from``'s, else a stand-in of the ``arch`` preset's vocabulary; ``cfg.prompt_template``
    resolved against it) and one stand-in :class:`~trainer.data.examples.TokenizedExample` of
    exactly ``max_length`` tokens, the last ``min_response_tokens`` the response, every fourth of
    them "changed" (the worst case for every mask-dependent op).

    Raises:
        ConfigError: no tokenizer, no checkpoint and an unknown ``arch``.
    """
    name = cfg.tokenizer or cfg.init_from
    if name:
        tokenizer = load_tokenizer(name, "tokenizer" if cfg.tokenizer else "init_from")
    elif cfg.arch in ARCH_PRESETS:
        tokenizer = stand_in_tokenizer(ARCH_PRESETS[cfg.arch]["vocab_size"])
    else:
        raise ConfigError(f"config key 'arch': {cfg.arch!r} is not one of {sorted(ARCH_PRESETS)}")
    cfg.prompt_template = checked_template(tokenizer, cfg.prompt_template)
    T, P = cfg.max_length, cfg.max_length - cfg.min_response_tokens
    ids = [tokenizer.bos_token_id] + [len(tokenizer) - 1] * (T - 1)
    resp = [False] * P + [True] * (T - P)
    changed = [False] * P + [i % 4 == 0 for i in range(T - P)]
    return tokenizer, TokenizedExample(ids, resp, changed, P)


def read_policy_meta(path: str | Path) -> dict:
    """The metadata a policy directory written by ``trainer/ppo.py`` / ``trainer/sft.py`` carries
    (``prompt_template``, ``trainer``); ``{}`` for any other causal LM."""
    meta_path = Path(path) / POLICY_META_FILE
    return json.loads(meta_path.read_text()) if meta_path.exists() else {}


def read_reward_meta(path: str | Path) -> dict:
    """The reward metadata a reward-model directory carries (``level``: token | sequence, the
    loss variant, the step, the last evaluation), written by ``trainer/reward.py``.

    Raises:
        ValueError: no metadata file (not a reward model written by ``trainer/reward.py``), or an
            unknown level.
    """
    meta_path = Path(path) / RM_META_FILE
    if not meta_path.exists():
        raise ValueError(
            f"{path}: no {RM_META_FILE}, so not a reward model written by trainer/reward.py (a causal LM "
            f"or another model's directory?); a reward model's directory is its run's final/ or best/"
        )
    meta = json.loads(meta_path.read_text())
    meta.setdefault("level", meta.get("mode", "token"))  # "mode": the name before 0.1
    if meta["level"] not in LEVELS:
        raise ValueError(f"{meta_path}: level {meta['level']!r} is not one of {LEVELS}")
    return meta


# --- memory arithmetic (the estimates a run prints and a dry run measures) ------------------
def llama_param_count(config: Any, lm_head: bool = True) -> int:
    """Parameters of a LLaMA-like ``config``: per layer the attention (q, o: h×h; k, v:
    h×kv·d), the gated MLP (3·h×inter) and two norms; the embedding, the final norm and, with
    ``lm_head``, an untied LM head (V×h; a scalar head's 1×h is negligible)."""
    h, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
    inter = getattr(config, "intermediate_size", 4 * h)
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", heads) or heads
    d = getattr(config, "head_dim", None) or h // heads
    layer = 2 * h * h + 2 * h * kv * d + 3 * h * inter + 2 * h
    return L * layer + V * h * (2 if lm_head else 1) + h


def activation_bytes(config: Any, rows: int, T: int, dtype: str, checkpointing: bool) -> float:
    """Bytes a forward + backward of ``rows`` × ``T`` tokens keeps for backward: with activation
    checkpointing each layer's input (h values per token) plus one layer's full set during its
    recomputation; without, every layer's full set. A layer's full set is about
    (34·h + 5·a·T)·rows·T·bytes / 2 with sdpa not storing the a×T×T scores, so ≈ 17·h·rows·T·bytes
    (Korthikanti et al. 2022, Table 2, without the score matrices)."""

    b = torch.finfo(DTYPES[dtype]).bits // 8
    h, L = config.hidden_size, config.num_hidden_layers
    inter = getattr(config, "intermediate_size", 4 * h)
    per_layer = rows * T * b * (10 * h + 4 * inter)  # q k v o + 2 norms + MLP's 3 inter-wide tensors
    if checkpointing:
        return L * rows * T * h * b + per_layer
    return L * per_layer


# --- scoring -------------------------------------------------------------------------------
def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` positions counting real tokens only (left, middle or right padding), so a row
    scores the same however it is padded, in generation and in scoring."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def per_token_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head's output at every position.

    Args:
        model: a ``scalar_head`` model (sharded or not).
        input_ids: ``[B, T]`` int64.
        attention_mask: ``[B, T]`` bool/int, 1 on real tokens (left or right padding).

    Returns:
        ``[B, T]`` fp32 scores (meaningless on padding).
    """
    mask = attention_mask.long()
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
    return out.logits[..., 0].float()


def sequence_reward(scores: torch.Tensor, response_mask: torch.Tensor, level: str) -> torch.Tensor:
    """``[B]`` sequence reward R(τ) from per-position ``scores`` ``[B, T]``: the mean over
    ``response_mask`` (``token`` level, eq. 1) or the score at its last True (``sequence``
    level). An empty response gets 0."""
    mask = response_mask.bool()
    if level == "token":
        n = mask.sum(-1).clamp_min(1).to(scores.dtype)
        return torch.where(mask, scores, 0.0).sum(-1) / n
    if level == "sequence":
        last = last_token_index(mask)
        r = scores.gather(-1, last.clamp_min(0)[:, None])[:, 0]
        return torch.where(last >= 0, r, torch.zeros_like(r))
    raise ValueError(f"level={level!r} is not one of {LEVELS}")


class RewardScores(NamedTuple):
    """What a reward scores for a batch (one forward gives both).

    Attributes:
        token: ``[B, T]`` fp32 per-token rewards r_t, 0 outside the response.
        sequence: ``[B]`` fp32 sequence rewards R(τ) (the level's rule, :func:`sequence_reward`).
    """

    token: torch.Tensor
    sequence: torch.Tensor


class RewardModel(nn.Module):
    """A trained reward model for inference (PPO scoring, judging), wrapping the ``scalar_head``
    model. The interface every reward shares (also :class:`GoldReward`)::

        rm = RewardModel.from_pretrained("runs/reward/final").eval()
        s = rm.score(input_ids, attention_mask, response_mask)   # s.token [B, T], s.sequence [B]
    """

    def __init__(self, model: nn.Module, level: str = "token"):
        super().__init__()
        if level not in LEVELS:
            raise ValueError(f"level={level!r} is not one of {LEVELS}")
        self.model, self.level = model, level

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> RewardModel:
        """Load a directory written by ``trainer/reward.py`` (``kwargs`` go to
        ``AutoModelForTokenClassification.from_pretrained``, e.g. ``dtype``, ``device_map``)."""
        from transformers import AutoModelForTokenClassification  # lazy: transformers (heavy)

        level = read_reward_meta(path)["level"]
        return cls(AutoModelForTokenClassification.from_pretrained(str(path), **kwargs), level)

    def score(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
    ) -> RewardScores:
        """Rewards of (prompt + response) rows ``[B, T]`` (left or right padded) whose response
        tokens are ``response_mask`` ``[B, T]`` bool: one forward, both views."""
        scores = per_token_scores(self.model, input_ids, attention_mask)
        mask = response_mask.bool()
        return RewardScores(torch.where(mask, scores, 0.0), sequence_reward(scores, mask, self.level))


def open_reward_model(rm_dir: str | Path, flag: str, device: Any = "cpu") -> tuple[RewardModel, dict, Any]:
    """A saved reward model as every reader outside training opens it (the judge, the report
    page, ``fgrlhf eval-rm``): the directory checked, its metadata and tokenizer, the model on
    ``device`` in eval mode. Returns ``(model, meta, tokenizer)``.

    Raises:
        ConfigError: ``rm_dir`` is not a reward-model directory (named by ``flag``).
    """
    check_model_dir(str(rm_dir), flag)
    try:
        meta = read_reward_meta(rm_dir)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    tokenizer = load_tokenizer(str(rm_dir), flag)
    return RewardModel.from_pretrained(rm_dir).to(device).eval(), meta, tokenizer


class GoldReward(nn.Module):
    """The synthetic world's known reward, same interface as :class:`RewardModel`: r_t = the gold
    utility of token t (:func:`trainer.data.synthetic.token_utilities`: helpful +1, harmful
    ``bad_quality``, a ``c*`` word by whether the row's prompt holds a sensitive word, anything
    else 0), R(τ) = mean r_t over the answer's words (eq. 1; EOS and other specials are not
    words: the same number :func:`trainer.data.synthetic.gold_reward` gives for the decoded text)."""

    def __init__(self, tokenizer: Any, syn: Any):
        super().__init__()

        # plain lists first (no data-dependent tensor op: a dry run builds this on fake tensors)
        n = len(tokenizer)
        table, unsafe = [0.0] * n, [0.0] * n  # utility in a safe / a sensitive context
        is_ctx, is_sensitive, is_special = [False] * n, [False] * n, [False] * n
        for word, i in tokenizer.get_vocab().items():
            if word.startswith("<"):
                is_special[i] = True
                continue
            table[i], unsafe[i] = word_quality(word, syn, False), word_quality(word, syn, True)
            is_ctx[i] = table[i] != unsafe[i]
            is_sensitive[i] = bool(syn.context_harm) and sensitive([word], syn)
        for name, values in (("table", table), ("unsafe", unsafe)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32))
        for name, flags in (("is_ctx", is_ctx), ("is_sensitive", is_sensitive), ("is_special", is_special)):
            self.register_buffer(name, torch.tensor(flags, dtype=torch.bool))
        self.context = any(is_ctx)
        self.level = "token"

    def score(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
    ) -> RewardScores:
        """``[B, T]`` table lookups at response tokens (0 elsewhere) and their ``[B]`` mean; a
        context-dependent token looks at the row's prompt (the attended non-response tokens)."""
        mask = response_mask.bool()
        util = self.table[input_ids]
        if self.context:
            prompt = ~mask if attention_mask is None else attention_mask.bool() & ~mask
            unsafe_row = (self.is_sensitive[input_ids] & prompt).any(-1, keepdim=True)  # [B, 1]
            util = torch.where(unsafe_row, self.unsafe[input_ids], util)
        token = torch.where(mask, util, 0.0)
        words = (mask & ~self.is_special[input_ids]).sum(-1)  # EOS is not a word of the answer
        return RewardScores(token, token.sum(-1) / words.clamp_min(1))
