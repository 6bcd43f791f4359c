"""Train a reward model: token-level (fine-grained, paper eqs. 3/4) or sequence-level (baseline).

Tiny default (a tiny random-init LLaMA on a generated fine-grained set, a few minutes on 2 CPU
cores; same code path as the real job)::

    torchrun --standalone --nproc_per_node=2 trainer/reward.py
    python trainer/reward.py mode=sequence            # one process, no torchrun

The real job (LLaMA-7B from an SFT checkpoint, one node with 8×A100-80G)::

    torchrun --standalone --nproc_per_node=8 trainer/reward.py \\
        --config configs/llama7b_8xa100/reward.yaml init_from=/ckpt/llama7b-sft data=edits.jsonl

Modes (``mode=``):

* ``token`` — the fine-grained RM on (edited ≻ original) pairs with ``fgkernels.token_bt_loss``
  (``variant=exact``: −log σ(R(τ^i) − R(τ^j)) with R the mean per-token reward; ``variant=changed``:
  the paper's eq. 4, changed tokens only, each side divided by its own length);
* ``sequence`` — the PPO-RLHF baseline: the head at the last response token, −log σ(r_w − r_l)
  on the original preference pairs (chosen ≻ original; ``seq_pairs=edited`` trains it on the
  edited pairs instead, the paper's "fine-grained PPO" arm).

Input: the edited-pairs JSONL of ``fgrlhf edit`` (``id``, ``prompt``, ``original``, ``edited``,
``chosen``, ``status``); with ``data=""`` a synthetic set is generated (``trainer/data/synthetic.py``).
Outputs under ``output_dir``: ``config.yaml``, ``metrics.jsonl`` (append-only), ``checkpoints/``
(DCP, exact resume: rerunning the same command continues from the newest one), ``best/`` (best
held-out accuracy of the mode's own pair kind) and ``final/`` (plain ``transformers`` directories).
``python trainer/reward.py --help`` lists every config key.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python trainer/reward.py` / `torchrun trainer/reward.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F

import fgkernels as fk
from trainer.data.examples import TokenizedExample, build_example, build_pair, collate
from trainer.data.formats import DataError, read_records
from trainer.data.synthetic import SyntheticConfig, write_synthetic
from trainer.infra.checkpoint import Checkpointer
from trainer.infra.config import ConfigError, cli_main, to_yaml
from trainer.models import (
    build_sharded_model,
    full_state_dict,
    per_token_scores,
    reward_model_config,
    save_reward_model,
    sequence_rewards,
)
from trainer.rm_metrics import auroc, changed_unchanged_sums, pair_stats

# Our forward returns ``logits`` (a view) and nothing ever modifies it in place, which is the
# case FSDP2's warning is about: silence that one message.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

__all__ = ["RewardConfig", "PairData", "load_pair_data", "pair_loss", "main", "train"]


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
@dataclass
class RewardConfig:
    """Everything ``trainer/reward.py`` reads. YAML (``--config``) + ``key=value`` overrides."""

    mode: str = "token"
    """``token`` (fine-grained RM, token_bt_loss on edited pairs) or ``sequence`` (baseline)."""
    variant: str = "exact"
    """Token mode loss: ``exact`` (R = mean reward over all response tokens) or ``changed`` (eq. 4)."""
    seq_pairs: str = "original"
    """Sequence mode training pairs: ``original`` (chosen ≻ original) or ``edited`` (edited ≻ original)."""

    data: str = ""
    """Edited-pairs JSONL (``fgrlhf edit`` output); empty: generate the synthetic set."""
    eval_data: str = ""
    """Held-out pairs file (same schema); empty: hold out ``eval_fraction`` of ``data`` by id hash."""
    eval_fraction: float = 0.1
    """Fraction of ``data`` held out for evaluation when ``eval_data`` is empty."""
    skip_invalid: bool = False
    """Skip (and count) records with missing/ill-typed fields instead of stopping with an error."""
    on_too_long: str = "skip"
    """A pair whose response does not fit ``max_length``: ``skip`` (counted) or ``error``."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """The generated set used when ``data`` is empty."""

    tokenizer: str = ""
    """Tokenizer directory or hub name; empty: ``init_from``'s (or the synthetic set's)."""
    init_from: str = ""
    """SFT/base checkpoint directory or hub name; empty: a random-init tiny LLaMA (below)."""
    hidden_size: int = 64
    """Tiny LLaMA (``init_from`` empty): hidden size."""
    num_layers: int = 2
    """Tiny LLaMA: decoder layers."""
    num_heads: int = 4
    """Tiny LLaMA: attention heads."""
    intermediate_size: int = 256
    """Tiny LLaMA: MLP width."""
    max_length: int = 128
    """Longest prompt + response in tokens (the prompt is cut from the left first)."""
    min_response_tokens: int = 16
    """Response tokens kept at least when a long prompt is cut."""

    micro_batch_size: int = 16
    """Pairs per rank per forward/backward (each pair is two sequences)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; global batch = micro_batch_size × grad_accum × world."""
    epochs: float = 3.0
    """Passes over the training pairs (ignored when ``max_steps`` > 0)."""
    max_steps: int = 0
    """Optimizer steps of the schedule; 0: ``epochs`` × steps per epoch."""
    stop_after_steps: int = 0
    """End the run (with a checkpoint) after this step, keeping the schedule and data order of
    the full run: time-limited jobs and preemption drills. 0: run to the end."""
    lr: float = 2e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Cosine decay floor, as a fraction of ``lr``."""
    warmup_steps: int = 10
    """Linear warmup steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas."""
    optimizer: str = "adamw"
    """``adamw`` (torch) or ``adamw8bit`` (bitsandbytes, CUDA only)."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (global L2 norm); 0 disables."""

    param_dtype: str = "float32"
    """FSDP2 compute dtype of parameters: ``bfloat16`` on GPUs; ``float32`` on CPU (bf16 matmuls
    are slow there)."""
    reduce_dtype: str = "float32"
    """FSDP2 gradient reduce-scatter dtype."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer in backward (saves memory; on for 7B)."""
    attn_implementation: str = "auto"
    """``auto`` (flash_attention_2 when installed on CUDA, else sdpa), ``sdpa``, ``eager``, ..."""
    device: str = "auto"
    """``auto``, ``cuda`` or ``cpu``."""
    num_threads: int = 0
    """CPU threads per process; 0: cores / processes on this node."""
    deterministic: bool = True
    """``torch.use_deterministic_algorithms(True)`` (exact resume on CPU)."""
    seed: int = 0
    """Seed of the initial weights and the data order."""

    output_dir: str = "runs/reward"
    """Where config, metrics, checkpoints and models go."""
    log_every: int = 10
    """Log training metrics every this many steps."""
    eval_every: int = 50
    """Evaluate on held-out pairs every this many steps (and at the end); 0: only at the end."""
    eval_batch_size: int = 32
    """Pairs per rank per evaluation forward."""
    checkpoint_every: int = 100
    """Write a resumable checkpoint every this many steps (and at the end); 0: only at the end."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept (oldest removed)."""
    resume: bool = True
    """Continue from the newest checkpoint in ``output_dir/checkpoints`` when there is one."""
    save_dtype: str = "float32"
    """dtype of the saved ``best/`` and ``final/`` weights (``float32`` or ``bfloat16``)."""
    save_best: bool = True
    """Keep ``best/``: the model with the best held-out accuracy on its own kind of pairs."""
    progress: bool = True
    """Show a tqdm progress bar (rank 0)."""


def check_config(cfg: RewardConfig) -> None:
    """Reject values no run can use (names the key)."""
    choices = {
        "mode": ("token", "sequence"),
        "variant": ("exact", "changed"),
        "seq_pairs": ("original", "edited"),
        "on_too_long": ("skip", "error"),
        "optimizer": ("adamw", "adamw8bit"),
        "param_dtype": ("float32", "bfloat16", "float16"),
        "reduce_dtype": ("float32", "bfloat16"),
        "save_dtype": ("float32", "bfloat16"),
        "device": ("auto", "cuda", "cpu"),
    }
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"config key {key!r}: {getattr(cfg, key)!r} is not one of {allowed}")
    for key in ("micro_batch_size", "grad_accum", "max_length", "eval_batch_size", "log_every"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"config key {key!r}: must be >= 1, got {getattr(cfg, key)}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device': 'cuda' but this torch build sees no CUDA device")
    for key in ("data", "eval_data", "init_from", "tokenizer"):
        value = getattr(cfg, key)
        if value and (value.startswith((".", "/")) or Path(value).suffix) and not Path(value).exists():
            raise DataError(value, f"no such file or directory (config key {key!r})")
    if not 0 <= cfg.eval_fraction < 1:
        raise ConfigError(f"config key 'eval_fraction': must be in [0, 1), got {cfg.eval_fraction}")
    if len(cfg.betas) != 2:
        raise ConfigError(f"config key 'betas': expected two numbers, got {cfg.betas}")


# --------------------------------------------------------------------------------------------
# Data: records -> tokenised pairs
# --------------------------------------------------------------------------------------------
@dataclass
class PairData:
    """Tokenised pairs of one split, ``preferred[i]`` ≻ ``other[i]``.

    Attributes:
        edited: (edited, original) examples with changed-token masks, from ``ok`` records.
        original: (chosen, original) examples (changed masks all False).
        gold: per original pair, gold(chosen) − gold(original) when the records carry ``gold``.
        skipped: why records were left out, counted.
    """

    edited: list[tuple[TokenizedExample, TokenizedExample]] = field(default_factory=list)
    original: list[tuple[TokenizedExample, TokenizedExample]] = field(default_factory=list)
    gold: list[float] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def _is_eval(rec_id: str, fraction: float) -> bool:
    h = int(hashlib.sha256(rec_id.encode()).hexdigest()[:8], 16)
    return h % 100_000 < fraction * 100_000


def _response_cut(ex: TokenizedExample, eos_id: int | None) -> bool:
    """True when truncation cut the response (a whole response ends with EOS)."""
    return ex.truncated and (eos_id is None or ex.input_ids[-1] != eos_id)


def load_pair_data(path: str, tokenizer: Any, cfg: RewardConfig, split: str | None) -> PairData:
    """Read an edited-pairs file and tokenise it.

    Args:
        path: JSONL/JSON/parquet file (trainer.data.formats.read_records).
        tokenizer: the model's tokenizer.
        cfg: the run config (max_length, on_too_long, skip_invalid, eval_fraction).
        split: ``"train"`` / ``"eval"`` (held-out by id hash) or None (every record).

    Raises:
        DataError: an unreadable file, a bad record (without ``skip_invalid``: names the line
            and field), a too-long response with ``on_too_long=error``.
    """
    out = PairData()
    eos = tokenizer.eos_token_id
    kw = {"max_length": cfg.max_length, "min_response_tokens": cfg.min_response_tokens}
    for where, rec in read_records(path):
        try:
            if isinstance(rec, DataError):
                raise rec
            if not isinstance(rec, dict):
                raise DataError(path, f"expected a JSON object, got {type(rec).__name__}", where)
            rec_id = str(rec.get("id", f"{where}"))
            if split is not None and _is_eval(rec_id, cfg.eval_fraction) != (split == "eval"):
                continue
            for key in ("prompt", "original"):
                if not isinstance(rec.get(key), str):
                    raise DataError(path, "missing or not a string", where, key)
            prompt, original = rec["prompt"], rec["original"]
            chosen, edited = rec.get("chosen", rec.get("rejected")), rec.get("edited")
            status = rec.get("status", "ok")
        except DataError:
            if not cfg.skip_invalid:
                raise
            out.skipped["invalid_record"] += 1
            continue
        if not original.strip():
            out.skipped["empty_original"] += 1
            continue
        # (a) edited pairs: edited ≻ original
        if status != "ok":
            out.skipped[f"edit_status_{status}"] += 1
        elif not isinstance(edited, str) or not edited.strip():
            out.skipped["empty_edited"] += 1
        else:
            e, o = build_pair(tokenizer, prompt, original, edited, **kw)
            if _response_cut(e, eos) or _response_cut(o, eos):
                if cfg.on_too_long == "error":
                    raise DataError(path, f"response longer than max_length={cfg.max_length}", where)
                out.skipped["edited_too_long"] += 1
            else:
                out.edited.append((e, o))
        # (b) original pairs: chosen ≻ original
        if not isinstance(chosen, str) or not chosen.strip():
            out.skipped["empty_chosen"] += 1
            continue
        c, o = (
            build_example(tokenizer, prompt, chosen, **kw),
            build_example(tokenizer, prompt, original, **kw),
        )
        if _response_cut(c, eos) or _response_cut(o, eos):
            if cfg.on_too_long == "error":
                raise DataError(path, f"response longer than max_length={cfg.max_length}", where)
            out.skipped["original_too_long"] += 1
            continue
        out.original.append((c, o))
        g = rec.get("gold")
        if isinstance(g, dict) and "chosen" in g and "original" in g:
            out.gold.append(float(g["chosen"]) - float(g["original"]))
    return out


def collate_pairs(pairs: list[tuple[TokenizedExample, TokenizedExample]], pad_id: int) -> dict:
    """B pairs -> one right-padded batch of 2B rows: preferred ``[0:B]``, other ``[B:2B]``
    (``input_ids``, ``attention_mask``, ``response_mask``, ``changed_mask``: ``[2B, T]``)."""
    return collate([p for p, _ in pairs] + [o for _, o in pairs], pad_id)


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------
def pair_loss(
    scores: torch.Tensor, batch: dict, mode: str, variant: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair loss and margin from the head's scores.

    Args:
        scores: ``[2B, T]`` fp32 per-position head outputs (preferred rows first).
        batch: from :func:`collate_pairs` (``response_mask``, ``changed_mask`` ``[2B, T]``).
        mode: ``token`` (fgkernels.token_bt_loss, ``variant``) or ``sequence`` (last token).

    Returns:
        ``(loss [B], margin [B])``: −log σ(Δ) per pair (differentiable) and Δ (detached).
    """
    B = scores.shape[0] // 2
    m, c = batch["response_mask"], batch["changed_mask"]
    if mode == "token":
        out = fk.token_bt_loss(scores[:B], scores[B:], m[:B], m[B:], c[:B], c[B:], variant, reduction="none")
        return out.loss, out.margin
    r = sequence_rewards(scores, m, "sequence")
    delta = r[:B] - r[B:]
    return F.softplus(-delta), delta.detach()


# --------------------------------------------------------------------------------------------
# Schedule, optimizer
# --------------------------------------------------------------------------------------------
def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warmup to 1 over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def build_optimizer(model: torch.nn.Module, cfg: RewardConfig) -> torch.optim.Optimizer:
    """AdamW over all parameters (``adamw8bit``: bitsandbytes, imported only when chosen)."""
    kw = {"lr": cfg.lr, "betas": tuple(cfg.betas), "weight_decay": cfg.weight_decay}
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


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def _gather(obj: Any) -> list:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: PairData, cfg: RewardConfig, pad_id: int, device) -> dict:
    """Held-out metrics (every rank returns the same dict).

    ``accuracy``/``margin``/``loss``: on the mode's own kind of pairs (token: edited;
    sequence: ``seq_pairs``). ``edited_*``: R(edited) vs R(original); ``original_*``:
    R(chosen) vs R(original) (the noisy human labels); ``gold_accuracy``: agreement with the
    gold order on original pairs (synthetic data only). ``reward_{changed,unchanged}_{edited,
    original}``: mean per-token reward; ``auroc_added``: AUROC of r for changed vs kept tokens of
    edited responses; ``auroc_removed``: AUROC of −r for removed vs kept tokens of originals.
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    was_training = model.training
    model.eval()
    own = "edited" if cfg.mode == "token" or cfg.seq_pairs == "edited" else "original"
    res: dict[str, Any] = {}
    for kind in ("edited", "original"):
        pairs = getattr(data, kind)
        mine = list(range(rank, len(pairs), world))
        # every rank runs the same number of forwards (FSDP collectives); extras are dropped
        n_batches = math.ceil(math.ceil(len(pairs) / world) / cfg.eval_batch_size)
        r_pref, r_other, losses, tok_sums = [], [], [], torch.zeros(2, 4)
        scores_added, labels_added, scores_removed, labels_removed = [], [], [], []
        for b in range(n_batches):
            idx = mine[b * cfg.eval_batch_size : (b + 1) * cfg.eval_batch_size]
            real = len(idx)
            idx = idx or [0]
            batch = {k: v.to(device) for k, v in collate_pairs([pairs[i] for i in idx], pad_id).items()}
            scores = per_token_scores(model, batch["input_ids"], batch["attention_mask"])[: 2 * len(idx)]
            if real == 0:
                continue
            B, m, c = len(idx), batch["response_mask"], batch["changed_mask"]
            R = sequence_rewards(scores, m, cfg.mode)
            r_pref.append(R[:B].cpu())
            r_other.append(R[B:].cpu())
            if kind == own:
                losses.append(pair_loss(scores, batch, cfg.mode, cfg.variant)[0].cpu())
            if kind == "edited":
                tok_sums[0] += changed_unchanged_sums(scores[:B], m[:B], c[:B]).cpu()
                tok_sums[1] += changed_unchanged_sums(scores[B:], m[B:], c[B:]).cpu()
                scores_added.append(scores[:B][m[:B]].cpu())
                labels_added.append(c[:B][m[:B]].cpu())
                scores_removed.append(-scores[B:][m[B:]].cpu())
                labels_removed.append(c[B:][m[B:]].cpu())
        local = {
            "pref": torch.cat(r_pref) if r_pref else torch.zeros(0),
            "other": torch.cat(r_other) if r_other else torch.zeros(0),
            "idx": torch.tensor(mine, dtype=torch.long),
            "loss": torch.cat(losses) if losses else torch.zeros(0),
            "tok": tok_sums,
            "sa": torch.cat(scores_added) if scores_added else torch.zeros(0),
            "la": torch.cat(labels_added) if labels_added else torch.zeros(0, dtype=torch.bool),
            "sr": torch.cat(scores_removed) if scores_removed else torch.zeros(0),
            "lr": torch.cat(labels_removed) if labels_removed else torch.zeros(0, dtype=torch.bool),
        }
        parts = _gather(local)
        cat = {k: torch.cat([p[k] for p in parts]) for k in local if k != "tok"}
        stats = pair_stats(cat["pref"], cat["other"])
        res[f"{kind}_accuracy"], res[f"{kind}_margin"] = stats["accuracy"], stats["margin"]
        res[f"{kind}_pairs"] = len(pairs)
        if kind == own:
            res["loss"] = cat["loss"].double().mean().item() if cat["loss"].numel() else float("nan")
            res["accuracy"], res["margin"] = stats["accuracy"], stats["margin"]
        if kind == "edited":
            tok = sum(p["tok"] for p in parts)
            for side, name in ((0, "edited"), (1, "original")):
                res[f"reward_changed_{name}"] = (tok[side, 0] / tok[side, 1].clamp_min(1)).item()
                res[f"reward_unchanged_{name}"] = (tok[side, 2] / tok[side, 3].clamp_min(1)).item()
            res["auroc_added"] = auroc(cat["sa"], cat["la"])
            res["auroc_removed"] = auroc(cat["sr"], cat["lr"])
        if kind == "original" and len(data.gold) == len(pairs) and pairs:
            gold = torch.tensor(data.gold, dtype=torch.float64)[cat["idx"]]
            diff = (cat["pref"] - cat["other"]).double()
            keep = gold != 0
            agree = (torch.sign(diff[keep]) == torch.sign(gold[keep])).double()
            res["gold_accuracy"] = agree.mean().item() if keep.any() else float("nan")
    model.train(was_training)
    return res


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------
class MetricsLog:
    """Append-only JSONL of metric records (rank 0 writes; flushed per line)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")


def train(cfg: RewardConfig) -> dict:
    """Run the recipe (called on every rank). Returns the last evaluation's metrics."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from trainer.infra.dist import all_reduce_sum, init_distributed

    check_config(cfg)
    # 0. processes, threads, determinism
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
        print(f"[reward] resolved config:\n{to_yaml(cfg)}", flush=True)
    log = MetricsLog(out_dir / "metrics.jsonl", di.is_main)

    def say(msg: str) -> None:
        if di.is_main:
            tqdm.write(f"[reward] {msg}")

    # 1. data: tokenizer, train/held-out pairs
    data_path, tok_name = cfg.data, cfg.tokenizer or cfg.init_from
    if not data_path:
        syn_dir = out_dir / "synthetic"
        if di.is_main:
            write_synthetic(syn_dir, cfg.synthetic)
        if dist.is_initialized():
            dist.barrier()
        data_path, tok_name = str(syn_dir / "pairs.jsonl"), cfg.tokenizer or str(syn_dir / "tokenizer")
    if not tok_name:
        raise ConfigError("config key 'tokenizer': needed when 'data' is given and 'init_from' is empty")
    tokenizer = AutoTokenizer.from_pretrained(tok_name)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ConfigError(f"tokenizer {tok_name}: has neither a pad nor an eos token")
    if cfg.eval_data:
        train_data = load_pair_data(data_path, tokenizer, cfg, split=None)
        eval_data = load_pair_data(cfg.eval_data, tokenizer, cfg, split=None)
    else:
        train_data = load_pair_data(data_path, tokenizer, cfg, split="train")
        eval_data = load_pair_data(data_path, tokenizer, cfg, split="eval")
    own = "edited" if cfg.mode == "token" or cfg.seq_pairs == "edited" else "original"
    train_pairs = getattr(train_data, own)
    say(
        f"data {data_path}: train {len(train_pairs)} {own} pairs, held-out {len(eval_data.edited)} edited / "
        f"{len(eval_data.original)} original; skipped train {dict(train_data.skipped)}, "
        f"held-out {dict(eval_data.skipped)}"
    )
    world_batch = cfg.micro_batch_size * cfg.grad_accum * di.world_size
    if len(train_pairs) < world_batch:
        raise DataError(
            data_path, f"{len(train_pairs)} usable {own} pairs, fewer than one global batch ({world_batch})"
        )
    steps_per_epoch = len(train_pairs) // world_batch  # the last partial batch of an epoch is dropped
    total_steps = cfg.max_steps or max(1, int(cfg.epochs * steps_per_epoch))
    end_step = min(total_steps, cfg.stop_after_steps) if cfg.stop_after_steps else total_steps

    # 2. model: meta -> FSDP2 -> materialise -> weights from rank 0
    hf_config = reward_model_config(
        cfg.init_from, len(tokenizer), pad_id, cfg.hidden_size, cfg.num_layers, cfg.num_heads,
        cfg.intermediate_size, max(cfg.max_length, 128),
    )  # fmt: skip
    model = build_sharded_model(
        hf_config, cfg.init_from, cfg.seed, di, cfg.param_dtype, cfg.reduce_dtype,
        cfg.activation_checkpointing, cfg.attn_implementation,
    )  # fmt: skip
    n_params = sum(p.numel() for p in model.parameters())
    say(
        f"model: {type(model).__name__.removeprefix('FSDP')} {n_params / 1e6:.2f}M params, attn "
        f"{model.config._attn_implementation}, world {di.world_size} on {di.device}, params "
        f"{cfg.param_dtype}/reduce {cfg.reduce_dtype}\nkernels: {fk.backend_report()}"
    )
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )

    # 3. resume: model, optimizer, scheduler, data position, RNG, best-so-far
    ckpt = Checkpointer(out_dir / "checkpoints", cfg.keep_checkpoints)
    step, best = 0, -math.inf
    latest = ckpt.latest() if cfg.resume else None
    if latest is not None:
        extra = ckpt.load(latest, model, optimizer)
        scheduler.load_state_dict(extra["scheduler"])
        step, best = extra["step"], extra["best"]
        say(f"resumed from {latest} at step {step} (epoch {extra['epoch']})")
    torch.manual_seed(cfg.seed + 1000 * di.rank + step)

    def batch_indices(s: int) -> list[list[int]]:
        """This rank's micro-batches of step ``s``: a pure function of (seed, s), so the data
        position is just the step."""
        epoch, i = divmod(s, steps_per_epoch)
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        perm = torch.randperm(len(train_pairs), generator=g)[i * world_batch : (i + 1) * world_batch]
        mine = perm[di.rank :: di.world_size].tolist()
        return [mine[k : k + cfg.micro_batch_size] for k in range(0, len(mine), cfg.micro_batch_size)]

    def save_model(name: str, metrics: dict) -> None:
        sd = full_state_dict(model)  # collective
        if di.is_main:
            meta = {"mode": cfg.mode, "variant": cfg.variant, "seq_pairs": cfg.seq_pairs, "step": step}
            save_reward_model(
                sd, hf_config, out_dir / name, tokenizer, {**meta, "eval": metrics}, cfg.save_dtype
            )

    def run_eval() -> dict:
        nonlocal best
        metrics = evaluate(model, eval_data, cfg, pad_id, di.device)
        log.write({"split": "eval", "step": step, **metrics})
        say(
            f"eval step {step}: "
            + " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        )
        if cfg.save_best and metrics.get("accuracy", -math.inf) > best:
            best = metrics["accuracy"]
            save_model("best", metrics)
        return metrics

    # 4. the loop
    model.train()
    bar = tqdm(
        total=end_step, initial=step, disable=not (di.is_main and cfg.progress), desc=f"rm[{cfg.mode}]"
    )
    # loss sum, correct, margin sum, pairs (since the last log); kept on the device: no host
    # sync in the loop, one at the log point
    acc = torch.zeros(4, dtype=torch.float64, device=di.device)
    t_last, tokens = time.perf_counter(), 0
    metrics: dict = {}
    if eval_data.edited or eval_data.original:
        if step == 0 and cfg.eval_every:
            metrics = run_eval()
    else:
        say("no held-out pairs: evaluation is skipped")
    while step < end_step:
        micro = [collate_pairs([train_pairs[i] for i in idx], pad_id) for idx in batch_indices(step)]
        # 4a. the global number of pairs of this step (one all-reduce, before the micro-batches)
        n_local = float(sum(b["input_ids"].shape[0] // 2 for b in micro))
        n_global = all_reduce_sum(torch.tensor([n_local], device=di.device))  # on device: NCCL needs it
        for k, batch in enumerate(micro):
            batch = {key: v.to(di.device) for key, v in batch.items()}
            model.set_requires_gradient_sync(k == len(micro) - 1)  # reduce-scatter once per step
            # 4b. forward: per-token head -> per-pair loss
            scores = per_token_scores(model, batch["input_ids"], batch["attention_mask"])
            loss_b, margin = pair_loss(scores, batch, cfg.mode, cfg.variant)
            # 4c. backward of Σ loss / N_global; FSDP averages gradients over ranks, so × world
            (loss_b.sum() * (di.world_size / n_global)).backward()
            acc += torch.stack(
                [
                    loss_b.detach().sum().double(),
                    (margin > 0).sum().double(),
                    margin.sum().double(),
                    torch.full((), float(len(margin)), dtype=torch.float64, device=di.device),
                ]
            )
            tokens += int(batch["attention_mask"].shape[0] * batch["attention_mask"].shape[1])
        # 4d. clip, step, schedule
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            if cfg.max_grad_norm > 0
            else None
        )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        step += 1
        bar.update(1)
        # 4e. log (host syncs happen here only)
        if step % cfg.log_every == 0 or step == end_step:
            totals = all_reduce_sum(acc.clone())
            dt = time.perf_counter() - t_last
            gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            rec = {
                "split": "train",
                "step": step,
                "loss": (totals[0] / totals[3]).item(),  # host sync (log point)
                "accuracy": (totals[1] / totals[3]).item(),
                "margin": (totals[2] / totals[3]).item(),
                "lr": lr,
                "grad_norm": float(gn) if gn is not None else None,
                "pairs_per_s": totals[3].item() / dt,
                "tokens_per_s": tokens * di.world_size / dt,
                "epoch": step / steps_per_epoch,
            }
            log.write(rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", acc=f"{rec['accuracy']:.3f}")
            acc.zero_()
            t_last, tokens = time.perf_counter(), 0
        # 4f. evaluate / checkpoint
        if (
            cfg.eval_every
            and step % cfg.eval_every == 0
            and step < end_step
            and (eval_data.edited or eval_data.original)
        ):
            metrics = run_eval()
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == end_step:
            extra = {
                "scheduler": scheduler.state_dict(),
                "step": step,
                "epoch": step // steps_per_epoch,
                "best": best,
            }
            ckpt.save(step, model, optimizer, extra)
    bar.close()

    # 5. final evaluation and model
    if eval_data.edited or eval_data.original:
        metrics = run_eval()
    if step >= total_steps:
        save_model("final", metrics)
        say(f"saved {out_dir / 'final'} (load: AutoModelForTokenClassification.from_pretrained)")
    return metrics


def main(argv: list[str] | None = None) -> int:
    """``--help``, or parse ``argv`` (``--config FILE`` then ``key=value``) and train."""
    return cli_main(RewardConfig, train, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
