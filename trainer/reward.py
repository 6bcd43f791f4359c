"""Train a reward model: token-level (fine-grained, paper eqs. 3/4) or sequence-level (baseline).

Tiny default (a tiny random-init LLaMA on a generated fine-grained set, a few minutes on 2 CPU
cores; same code path as the real job)::

    torchrun --standalone --nproc_per_node=2 trainer/reward.py
    python trainer/reward.py rm_level=sequence        # one process, no torchrun

The real job (LLaMA-7B from an SFT checkpoint, one node with 8×A100-80G)::

    torchrun --standalone --nproc_per_node=8 trainer/reward.py \\
        --config configs/llama7b_8xa100/reward.yaml init_from=/ckpt/llama7b-sft data=edits.jsonl

Levels (``rm_level=``). Every pair is (chosen ≻ rejected): an *edited* pair is (edited ≻
original), an *original* pair is (the input's chosen ≻ original).

* ``token`` — the fine-grained RM on edited pairs with ``fgkernels.token_bt_loss``
  (``variant=exact``: −log σ(R(chosen) − R(rejected)) with R the mean per-token reward, eq. 3;
  ``variant=changed``: eq. 4, changed tokens only, each side divided by its own length);
* ``sequence`` — the PPO-RLHF baseline: the head at the last response token, −log σ(r_c − r_r)
  on the original pairs (``seq_pairs=edited`` trains it on the edited pairs instead, the paper's
  "fine-grained PPO" arm).

Input: the edited-pairs JSONL of ``fgrlhf edit`` (:class:`trainer.data.formats.EditRecord`);
with ``data=""`` a synthetic set is generated (``trainer/data/synthetic.py``).
Outputs under ``output_dir``: ``config.yaml``, ``metrics.jsonl`` (append-only), ``checkpoints/``
(DCP, exact resume: rerunning the same command continues from the newest intact one), ``best/`` (best
held-out accuracy on the level's own kind of pairs) and ``final/`` (plain ``transformers`` directories).
SIGTERM finishes the step, checkpoints and exits 75 (rerun to resume). ``python trainer/reward.py
--help`` lists every config key and the exit codes.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

if __package__ in (None, ""):  # `python trainer/reward.py` / `torchrun trainer/reward.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

import fgkernels as fk
from trainer import rm_metrics
from trainer.data.examples import checked_template
from trainer.data.formats import DataError
from trainer.data.pairs import Pair, PairData, collate_pairs, load_pair_data, step_batches
from trainer.data.synthetic import bootstrap
from trainer.infra.checkpoint import Checkpointer
from trainer.infra.config import ConfigError, SupervisedConfig, cli_main, describe
from trainer.infra.dist import all_reduce_sum, gather_objects, on_rank0
from trainer.infra.dryrun import check_run_memory, host_item, host_list, in_dry_run, model_shape
from trainer.infra.metrics import MetricsLog
from trainer.infra.runtime import (
    STOP,
    Phases,
    Preempted,
    Run,
    build_optimizer,
    lr_lambda,
    open_metrics,
    optimizer_step,
    peak_memory_mb,
    resume_or_seed,
    start_run,
)
from trainer.models import (
    base_config,
    build_sharded,
    full_state_dict,
    load_on_rank0,
    load_tokenizer,
    pad_token_id,
    per_token_scores,
    save_pretrained,
    scalar_head_config,
    sequence_reward,
)

# Our forward returns ``logits`` (a view) and nothing ever modifies it in place, which is the
# case FSDP2's warning is about: silence that one message.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

__all__ = ["RewardConfig", "PairData", "evaluate", "load_pair_data", "pair_loss", "main", "train"]


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
@dataclass
class RewardConfig(SupervisedConfig):
    """Everything ``trainer/reward.py`` reads. YAML (``--config``) + ``key=value`` overrides."""

    CHOICES: ClassVar[dict] = {
        "rm_level": ("token", "sequence"),
        "variant": ("exact", "changed"),
        "seq_pairs": ("original", "edited"),
    }
    RESUME_SAFE: ClassVar[dict] = dict.fromkeys(("save_best", "plots", "report", "report_pairs"))
    AT_LEAST: ClassVar[dict] = {"report_pairs": 1}

    rm_level: str = "token"
    """``token`` (the fine-grained RM: token_bt_loss on edited pairs) or ``sequence`` (the
    PPO-RLHF baseline: the last token's score)."""
    variant: str = "exact"
    """Token-level loss: ``exact`` (eq. 3: R = mean reward over all response tokens) or
    ``changed`` (eq. 4: changed tokens only)."""
    seq_pairs: str = "original"
    """Sequence-level training pairs: ``original`` (chosen ≻ original) or ``edited`` (edited ≻
    original: the paper's "fine-grained PPO" arm)."""
    output_dir: str = "runs/reward"
    """Where config, metrics, checkpoints and models go."""
    save_best: bool = True
    """Keep ``best/``: the model with the best held-out accuracy on its own kind of pairs."""
    plots: bool = True
    """At the end, draw the training curves to ``output_dir/plots/*.png`` (``fgrlhf plot``)."""
    report: bool = True
    """At the end, write ``output_dir/report.html``: ``final/`` on the first ``report_pairs``
    held-out edited pairs, token by token (``fgrlhf report``; rank 0, one process)."""
    report_pairs: int = 100
    """Edited pairs on the end-of-run page."""

    @property
    def own_pairs(self) -> str:
        """The kind of pairs this RM trains on: ``edited`` or ``original``."""
        return "edited" if self.rm_level == "token" or self.seq_pairs == "edited" else "original"


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------
def pair_loss(
    scores: torch.Tensor, batch: dict, level: str, variant: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair loss and margin from the head's scores.

    Args:
        scores: ``[2B, T]`` fp32 per-position head outputs (chosen rows first).
        batch: from :func:`collate_pairs` (``response_mask``, ``changed_mask`` ``[2B, T]``).
        level: ``token`` (fgkernels.token_bt_loss, ``variant``) or ``sequence`` (last token).

    Returns:
        ``(loss [B], margin [B])``: −log σ(Δ) per pair (differentiable) and Δ (detached).
    """
    B = scores.shape[0] // 2
    m, c = batch["response_mask"], batch["changed_mask"]
    if level == "token":
        out = fk.token_bt_loss(scores[:B], scores[B:], m[:B], m[B:], c[:B], c[B:], variant, reduction="none")
        return out.loss, out.margin
    r = sequence_reward(scores, m, "sequence")
    delta = r[:B] - r[B:]
    return F.softplus(-delta), delta.detach()


# --------------------------------------------------------------------------------------------
# Evaluation: collective scoring, then pure metric formulas (trainer.rm_metrics)
# --------------------------------------------------------------------------------------------
@dataclass
class PairScores:
    """One kind of held-out pairs scored, gathered from every rank (rows in gather order).

    Attributes:
        chosen, rejected: ``[N]`` sequence rewards R of each side.
        index: ``[N]`` each row's position in the pair list.
        loss: ``[N]`` the training loss of each pair (own kind only, else empty).
        token_sums: ``[2, 4]`` :func:`rm_metrics.changed_unchanged_sums` of the chosen / rejected
            sides (edited pairs only).
        added, removed: per-token (score, changed-label) of the chosen sides and (−score, label)
            of the rejected sides, for AUROC (edited pairs only).
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    index: torch.Tensor
    loss: torch.Tensor
    token_sums: torch.Tensor
    added: tuple[torch.Tensor, torch.Tensor]
    removed: tuple[torch.Tensor, torch.Tensor]


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module,
    pairs: list[Pair],
    cfg: RewardConfig,
    pad_id: int,
    device,
    loss: bool,
    tokens: bool,
) -> PairScores:
    """Score ``pairs`` on every rank's share and gather (collective: every rank runs the same
    number of forwards, as FSDP needs; a rank with nothing left scores a dummy batch)."""
    from trainer.infra.dist import get_rank, get_world_size

    rank, world = get_rank(), get_world_size()
    mine = list(range(rank, len(pairs), world))
    n_batches = math.ceil(math.ceil(len(pairs) / world) / cfg.eval_batch_size)
    parts: dict[str, list] = {k: [] for k in ("c", "r", "loss", "sa", "la", "sr", "lr")}
    token_sums = torch.zeros(2, 4)
    for b in range(n_batches):
        idx = mine[b * cfg.eval_batch_size : (b + 1) * cfg.eval_batch_size]
        real = len(idx)
        idx = idx or [0]
        batch = {k: v.to(device) for k, v in collate_pairs([pairs[i] for i in idx], pad_id).items()}
        scores = per_token_scores(model, batch["input_ids"], batch["attention_mask"])
        if real == 0:
            continue
        B, m, c = len(idx), batch["response_mask"], batch["changed_mask"]
        R = sequence_reward(scores, m, cfg.rm_level)
        parts["c"].append(R[:B].cpu())
        parts["r"].append(R[B:].cpu())
        if loss:
            parts["loss"].append(pair_loss(scores, batch, cfg.rm_level, cfg.variant)[0].cpu())
        if tokens:
            token_sums[0] += rm_metrics.changed_unchanged_sums(scores[:B], m[:B], c[:B]).cpu()
            token_sums[1] += rm_metrics.changed_unchanged_sums(scores[B:], m[B:], c[B:]).cpu()
            parts["sa"].append(scores[:B][m[:B]].cpu())
            parts["la"].append(c[:B][m[:B]].cpu())
            parts["sr"].append(-scores[B:][m[B:]].cpu())
            parts["lr"].append(c[B:][m[B:]].cpu())
    local = {k: torch.cat(v) if v else torch.zeros(0) for k, v in parts.items()}
    local["idx"] = torch.tensor(mine, dtype=torch.long)
    local["tok"] = token_sums
    gathered = gather_objects(local)
    cat = {k: torch.cat([g[k] for g in gathered]) for k in local if k != "tok"}
    return PairScores(
        chosen=cat["c"],
        rejected=cat["r"],
        index=cat["idx"],
        loss=cat["loss"],
        token_sums=sum(g["tok"] for g in gathered),
        added=(cat["sa"], cat["la"].bool()),
        removed=(cat["sr"], cat["lr"].bool()),
    )


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: PairData, cfg: RewardConfig, pad_id: int, device) -> dict:
    """Held-out metrics (every rank returns the same dict).

    ``accuracy``/``margin``/``loss``: on the level's own kind of pairs (``cfg.own_pairs``).
    ``edited_*``: R(edited) vs R(original); ``original_*``: R(chosen) vs R(original) (the noisy
    human labels); ``gold_accuracy``: agreement with the gold order on original pairs (synthetic
    data only); the per-token means and AUROCs of :func:`rm_metrics.token_reward_metrics`.
    """
    was_training = model.training
    model.eval()
    own = cfg.own_pairs
    res: dict[str, Any] = {}
    for kind in ("edited", "original"):
        pairs = getattr(data, kind)
        s = score_pairs(model, pairs, cfg, pad_id, device, loss=kind == own, tokens=kind == "edited")
        stats = rm_metrics.pair_stats(s.chosen, s.rejected)
        res.update({f"{kind}_accuracy": stats["accuracy"], f"{kind}_margin": stats["margin"]})
        res[f"{kind}_pairs"] = len(pairs)
        if kind == own:
            res["loss"] = s.loss.double().mean().item() if s.loss.numel() else float("nan")
            res["accuracy"], res["margin"] = stats["accuracy"], stats["margin"]
        if kind == "edited":
            res.update(rm_metrics.token_reward_metrics(s.token_sums, s.added, s.removed))
        if kind == "original" and pairs and len(data.gold) == len(pairs):
            gold = torch.tensor(data.gold, dtype=torch.float64)[s.index]
            res["gold_accuracy"] = rm_metrics.gold_accuracy(s.chosen - s.rejected, gold)
    model.train(was_training)
    return res


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------
def load_data(run: Run) -> tuple[Any, list[Pair], PairData, str]:
    """The tokenizer, the training pairs of the level's own kind, the held-out pairs and the data
    path (the synthetic set when ``data`` is empty)."""
    cfg = run.cfg
    if in_dry_run() and (cfg.arch or cfg.init_from):
        return dry_run_data(run)
    data_path, tok_name = cfg.data, cfg.tokenizer or cfg.init_from
    if not data_path:
        pairs_path, tok_dir = bootstrap(run.out_dir / "synthetic", cfg.synthetic)
        data_path, tok_name = str(pairs_path), cfg.tokenizer or str(tok_dir)
    if not tok_name:
        raise ConfigError("config key 'tokenizer': needed when 'data' is given and 'init_from' is empty")
    tokenizer = load_tokenizer(tok_name, "tokenizer" if cfg.tokenizer else "init_from")
    if pad_token_id(tokenizer) is None:
        raise ConfigError(f"tokenizer {tok_name}: has neither a pad nor an eos token")
    cfg.prompt_template = checked_template(tokenizer, cfg.prompt_template)  # recorded resolved
    if cfg.eval_data:
        train_data = load_pair_data(data_path, tokenizer, cfg, split=None)
        eval_data = load_pair_data(cfg.eval_data, tokenizer, cfg, split=None)
    else:
        train_data = load_pair_data(data_path, tokenizer, cfg, split="train")
        eval_data = load_pair_data(data_path, tokenizer, cfg, split="eval")
    train_pairs = getattr(train_data, cfg.own_pairs)
    run.say(
        f"data {data_path}: train {len(train_pairs)} {cfg.own_pairs} pairs, held-out {len(eval_data.edited)} "
        f"edited / {len(eval_data.original)} original; skipped train {dict(train_data.skipped)}, "
        f"held-out {dict(eval_data.skipped)}"
    )
    return tokenizer, train_pairs, eval_data, data_path


def save_reward_model(run: Run, model, hf_config, tokenizer, name: str, step: int, metrics: dict) -> None:
    """``output_dir/<name>`` as a plain ``transformers`` directory with the reward metadata
    (collective: gathers the full weights; rank 0 writes)."""
    cfg = run.cfg
    sd = full_state_dict(model)
    meta = {
        "level": cfg.rm_level, "variant": cfg.variant, "seq_pairs": cfg.seq_pairs, "step": step,
        "prompt_template": cfg.prompt_template, "eval": metrics,
    }  # fmt: skip
    # rank 0 writes while the others wait; a failure (a full disk) stops every rank
    on_rank0(
        save_pretrained, sd, hf_config, "scalar_head", run.out_dir / name, tokenizer, meta, cfg.save_dtype
    )


def train(cfg: RewardConfig) -> dict:
    """Run the recipe (called on every rank). Returns the last evaluation's metrics (a dry run:
    its measured peaks per phase, :func:`dry_run`)."""
    from tqdm import tqdm

    if cfg.dry_run and not in_dry_run():
        return dry_run(cfg)

    # 0. set-up: config check, processes, threads, determinism, output directory
    run = start_run(cfg, "reward")
    di = run.di
    log = open_metrics(run)  # metrics.jsonl, and the trackers of report_to (started now)

    # 1. data: tokenizer, train/held-out pairs, the schedule's length
    tokenizer, train_pairs, eval_data, data_path = load_data(run)
    pad_id = pad_token_id(tokenizer)
    has_eval = bool(eval_data.edited or eval_data.original)
    world_batch = cfg.micro_batch_size * cfg.grad_accum * di.world_size
    if len(train_pairs) < world_batch:
        raise DataError(
            data_path,
            f"{len(train_pairs)} usable {cfg.own_pairs} pairs, fewer than one global batch ({world_batch})",
        )
    steps_per_epoch = len(train_pairs) // world_batch
    total_steps = cfg.max_steps or max(1, int(cfg.epochs * steps_per_epoch))
    end_step = min(total_steps, cfg.stop_after_steps) if cfg.stop_after_steps else total_steps

    # 2. model (meta -> FSDP2 -> materialise -> weights from rank 0), optimizer, schedule
    hf_config = scalar_head_config(base_config(cfg, tokenizer, max(cfg.max_length, 128)), pad_id)
    est = estimate_memory(cfg, hf_config, di.world_size, cfg.micro_batch_size)
    check_run_memory(run, "reward", est, model_shape(hf_config))  # the dry run's measured plan, or est
    full = load_on_rank0(di, "scalar_head", hf_config, cfg.init_from, cfg.seed, new_head=True)
    model = build_sharded("scalar_head", hf_config, full, di, cfg, train=True)
    n_params = sum(p.numel() for p in model.parameters())
    run.say(
        f"model: {type(model).__name__.removeprefix('FSDP')} {n_params / 1e6:.2f}M params, attn "
        f"{model.config._attn_implementation}, world {di.world_size} on {di.device}, params "
        f"{cfg.param_dtype}/reduce {cfg.reduce_dtype}\nkernels: {fk.backend_report()}"
    )
    optimizer = build_optimizer(model, cfg.lr, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )

    # 3. resume: model, optimizer, scheduler, data position (= the step), RNG, best-so-far
    ckpt = Checkpointer(run.out_dir / "checkpoints", cfg.keep_checkpoints, say=run.say)
    step, extra = resume_or_seed(run, ckpt, model, optimizer, scheduler, log, len(train_pairs))
    best = extra.get("best", -math.inf)
    memory = None  # a dry run's per-phase memory tracker
    if in_dry_run():
        from trainer.infra.dryrun import PhaseMemory, warm_optimizer_states

        warm_optimizer_states(optimizer)  # the states a real run holds from its first step on
        memory = PhaseMemory([model], [optimizer], say=run.say, limit_gb=cfg.memory_limit_gb).__enter__()
    phase = Phases(di.device, memory)

    # 4. the loop
    model.train()
    bar = tqdm(
        total=end_step, initial=step, disable=not (di.is_main and cfg.progress), desc=f"rm[{cfg.rm_level}]"
    )
    # loss sum, correct, margin sum, pairs (since the last log); kept on the device: no host
    # sync in the loop, one at the log point
    sums = torch.zeros(4, dtype=torch.float64, device=di.device)
    t_last, tokens = time.perf_counter(), 0
    metrics: dict = {}
    times = {"train": 0.0, "eval": 0.0, "checkpoint": 0.0, "save": 0.0}  # seconds per phase
    train_tokens, t_loop = 0, time.perf_counter()
    if not has_eval:
        run.say("no held-out pairs: evaluation is skipped")
    elif step == 0 and cfg.eval_every:
        t0 = time.perf_counter()
        metrics, best = evaluate_and_keep_best(
            run, model, eval_data, pad_id, step, best, log, hf_config, tokenizer
        )
        times["eval"] += time.perf_counter() - t0
    while step < end_step:
        micro = [
            collate_pairs([train_pairs[i] for i in idx], pad_id)
            for idx in step_batches(step, len(train_pairs), world_batch, cfg, di.rank, di.world_size)
        ]
        # 4a. the global number of pairs of this step and any rank's SIGTERM (one all-reduce,
        # before the micro-batches; on the device: NCCL needs it)
        n_local = float(sum(b["input_ids"].shape[0] // 2 for b in micro))
        step_sums = all_reduce_sum(torch.tensor([n_local, float(STOP.requested)], device=di.device))
        n_global = step_sums[:1]
        with phase("train"):
            for k, batch in enumerate(micro):
                batch = {key: v.to(di.device) for key, v in batch.items()}
                # reduce-scatter once per step (or after every micro-batch: grad_sync)
                model.set_requires_gradient_sync(k == len(micro) - 1 or cfg.grad_sync == "micro_batch")
                # 4b. forward: per-token head -> per-pair loss
                scores = per_token_scores(model, batch["input_ids"], batch["attention_mask"])
                loss_b, margin = pair_loss(scores, batch, cfg.rm_level, cfg.variant)
                # 4c. backward of Σ loss / N_global; FSDP averages gradients over ranks, so × world
                (loss_b.sum() * (di.world_size / n_global)).backward()
                sums += torch.stack(
                    [
                        loss_b.detach().sum().double(),
                        (margin > 0).sum().double(),
                        margin.sum().double(),
                        torch.full((), float(len(margin)), dtype=torch.float64, device=di.device),
                    ]
                )
                tokens += int(batch["attention_mask"].numel())
                train_tokens += int(batch["attention_mask"].numel()) * di.world_size
            # 4d. clip, step, schedule
            grad_norm, lr = optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm)
        step += 1
        bar.update(1)
        # 4e. log (host syncs happen here only)
        if step % cfg.log_every == 0 or step == end_step:
            totals = host_list(all_reduce_sum(sums.clone()), 1.0)  # host sync (log point)
            dt = time.perf_counter() - t_last
            gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            rec = {
                "split": "train",
                "step": step,
                "loss": totals[0] / totals[3],
                "accuracy": totals[1] / totals[3],
                "margin": totals[2] / totals[3],
                "lr": lr,
                "grad_norm": host_item(gn) if gn is not None else None,
                "pairs_per_s": totals[3] / dt,
                "tokens_per_s": tokens * di.world_size / dt,
                "epoch": step / steps_per_epoch,
            }
            log.write(rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", acc=f"{rec['accuracy']:.3f}")
            sums.zero_()
            t_last, tokens = time.perf_counter(), 0
        # 4f. evaluate / checkpoint
        preempted = host_item(step_sums[1]) > 0  # host sync (one per step): every rank agrees to stop
        if has_eval and cfg.eval_every and step % cfg.eval_every == 0 and step < end_step and not preempted:
            t0 = time.perf_counter()
            metrics, best = evaluate_and_keep_best(
                run, model, eval_data, pad_id, step, best, log, hf_config, tokenizer
            )
            times["eval"] += time.perf_counter() - t0
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == end_step or preempted:
            t0 = time.perf_counter()
            extra = {
                "scheduler": scheduler.state_dict(),
                "step": step,
                "epoch": step // steps_per_epoch,
                "best": best,
                "n_items": len(train_pairs),
                "world_size": di.world_size,
            }
            with phase("checkpoint"):
                ckpt.save(step, {"model": (model, optimizer)}, extra)
            times["checkpoint"] += time.perf_counter() - t0
        if preempted:  # SIGTERM on some rank: the checkpoint above is written; exit 75
            bar.close()
            raise Preempted(run.out_dir, step)
    bar.close()
    times["train"] = time.perf_counter() - t_loop - times["eval"] - times["checkpoint"]

    # 5. final evaluation and model
    t0 = time.perf_counter()
    if has_eval:
        with phase("eval"):
            metrics, best = evaluate_and_keep_best(
                run, model, eval_data, pad_id, step, best, log, hf_config, tokenizer
            )
    times["eval"] += time.perf_counter() - t0
    if memory is not None:  # a dry run ends here: the per-phase memory table
        memory.__exit__(None, None, None)
        log.close()
        return dry_run_report(run, memory, hf_config, len(micro[0]["input_ids"]) // 2)
    t0 = time.perf_counter()
    if step >= total_steps:
        save_reward_model(run, model, hf_config, tokenizer, "final", step, metrics)
        run.say(f"saved {run.out_dir / 'final'} (load: AutoModelForTokenClassification.from_pretrained)")
    times["save"] = time.perf_counter() - t0

    # 6. plots, the held-out pairs page and the summary (rank 0; also to the trackers, which then close)
    if di.is_main:
        tps = train_tokens / times["train"] if times["train"] > 0 else None
        end_of_run(run, data_path, times, tps, peak_memory_mb(di.device), log)
    log.close()
    return metrics


def end_of_run(
    run: Run, data_path: str, times: dict, tokens_per_s: float | None, peak_mb: float, log: MetricsLog
) -> None:
    """Rank 0, after the final save: ``output_dir/plots/*.png`` (``plots``), ``output_dir/report.html``
    (``report``: ``final/`` on the held-out edited pairs, through :func:`trainer.eval.report.rm_report`)
    and the summary table, all handed to the trackers too (``log.finish``). A failure to draw or
    render is a warning: the model is already saved."""
    from trainer.eval.plot import plot_runs, read_metrics
    from trainer.eval.report import rm_report
    from trainer.infra.metrics import summary_figures
    from trainer.infra.summary import REWARD_ROWS, reward_summary

    cfg, out = run.cfg, run.out_dir
    final = out / "final"
    outputs = {
        "checkpoints": str(out / "checkpoints"),
        "final model": str(final) if final.exists() else "",
        "best model": str(out / "best") if (out / "best").exists() else "",
        "metrics": str(out / "metrics.jsonl"),
        "plots": "",
        "HTML page": "",
    }
    if cfg.plots:
        try:
            plot_runs([out / "metrics.jsonl"], out / "plots", labels=[out.name])
            outputs["plots"] = str(out / "plots")
        except Exception as e:  # noqa: BLE001 - reported, the run itself is complete
            run.say(f"warning: plots not written: {describe(e)}")
    if cfg.report and final.exists():
        held_out = {"pairs_file": cfg.eval_data, "split": None} if cfg.eval_data else {
            "pairs_file": data_path, "split": "eval"}  # fmt: skip
        try:
            path, _ = rm_report(
                final, held_out["pairs_file"], out / "report.html", cfg.report_pairs,
                batch_size=cfg.eval_batch_size, split=held_out["split"], max_length=cfg.max_length,
                min_response_tokens=cfg.min_response_tokens, on_too_long=cfg.on_too_long,
                skip_invalid=cfg.skip_invalid, eval_fraction=cfg.eval_fraction,
            )  # fmt: skip
            outputs["HTML page"] = str(path)
        except Exception as e:  # noqa: BLE001
            run.say(f"warning: report.html not written: {describe(e)}")
    records = read_metrics(out / "metrics.jsonl")
    text = reward_summary(records, outputs, times, tokens_per_s, peak_mb)
    run.say(text)
    evals = [r for r in records if r.get("split") == "eval"]
    log.finish(summary_figures(evals, REWARD_ROWS), text, [out / "plots", out / "report.html"])


def evaluate_and_keep_best(
    run: Run,
    model,
    eval_data: PairData,
    pad_id: int,
    step: int,
    best: float,
    log: MetricsLog,
    hf_config,
    tokenizer,
) -> tuple[dict, float]:
    """Evaluate, log, and save ``best/`` when the own-kind accuracy beats ``best``; returns the
    metrics and the new best."""
    cfg = run.cfg
    if in_dry_run():  # fake scores have no values: the forwards run, the metrics cannot
        for kind in ("edited", "original"):
            pairs = getattr(eval_data, kind)
            score_pairs(model, pairs, cfg, pad_id, run.di.device, loss=kind == cfg.own_pairs, tokens=False)
        return {}, best
    metrics = evaluate(model, eval_data, cfg, pad_id, run.di.device)
    log.write({"split": "eval", "step": step, **metrics})
    run.say(
        f"eval step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
    )
    if cfg.save_best and metrics.get("accuracy", -math.inf) > best:
        best = metrics["accuracy"]
        save_reward_model(run, model, hf_config, tokenizer, "best", step, metrics)
    return metrics, best


# --------------------------------------------------------------------------------------------
# Dry run: the recipe above on fake tensors over a fake process group (trainer.infra.dryrun)
# --------------------------------------------------------------------------------------------
DRY_RUN_STEPS = 1  # with the optimizer states created first (warm_optimizer_states)


def dry_run(cfg: RewardConfig) -> dict:
    """``dry_run=true``: :func:`train` itself for one optimizer step over every micro-batch of
    the accumulation (optimizer states created first, as a real run has them), a checkpoint and
    the held-out evaluation's forwards, inside
    :func:`trainer.infra.dryrun.fake_world` (fake ranks, fake tensors, a temporary directory).
    Prints the per-phase peak memory beside :func:`estimate_memory` and returns
    ``{"peaks", "parts", "estimates"}``.

    Raises:
        trainer.infra.dryrun.DryRunError: a phase failed or its peak exceeds ``memory_limit_gb``.
    """
    import dataclasses
    import tempfile

    from trainer.infra.dryrun import fake_world, save_plan

    with tempfile.TemporaryDirectory(prefix="fgrlhf-dry-run-") as tmp:
        dcfg = dataclasses.replace(
            cfg, output_dir=tmp, max_steps=DRY_RUN_STEPS, stop_after_steps=0, resume=False, eval_every=0,
            checkpoint_every=DRY_RUN_STEPS, save_best=False, plots=False, report=False, progress=False,
            device="cpu", attn_implementation="sdpa", deterministic=False, log_every=DRY_RUN_STEPS,
            report_to=[],
        )  # fmt: skip
        with fake_world(cfg.dry_run_world_size):
            result = train(dcfg)
    path = save_plan(cfg, "reward", result)  # the real run's memory_limit_gb check reads it
    if path is not None:
        print(f"[reward] measured memory plan written to {path}")
    return result


def dry_run_data(run: Run) -> tuple[Any, list[Pair], PairData, str]:
    """A dry run's tokenizer and stand-in pairs of exactly ``max_length`` tokens on both sides
    (the worst case, :func:`trainer.infra.dryrun.stand_in_example`): the steps' worth for
    training, one eval batch of each kind held out."""
    from trainer.infra.dryrun import stand_in_example

    cfg = run.cfg
    tokenizer, ex = stand_in_example(cfg)
    T = cfg.max_length
    pair = (ex, ex)
    world_batch = cfg.micro_batch_size * cfg.grad_accum * run.di.world_size
    n_eval = cfg.eval_batch_size * run.di.world_size
    held_out = PairData(edited=[pair] * n_eval, original=[pair] * n_eval)
    return tokenizer, [pair] * (world_batch * DRY_RUN_STEPS), held_out, f"stand-ins ({T} tokens each)"


def estimate_memory(cfg: RewardConfig, model_cfg: Any, world: int, rows: int) -> dict[str, float]:
    """Per-device bytes of each phase for a LLaMA-like ``model_cfg`` (fp32 masters, gradients and
    AdamW states sharded over ``world``; ``rows`` pairs per micro-batch, i.e. 2·rows sequences of
    ``max_length``), the terms checked against a dry run's measured parts (``bench/RESULTS.md``):
    ``train`` = states + sharded gradients + what FSDP2 keeps gathered (the root — embedding,
    norm, head — the last layer and one layer in flight, in ``param_dtype``) + gradient-sized fp32
    buffers of the backward (4 bytes per parameter, as measured under the fake process group) +
    one micro-batch's activations; ``checkpoint`` = the states; ``eval`` = states + gathered + one
    eval batch's forward."""
    from trainer.infra.dist import DTYPES
    from trainer.models import activation_bytes, llama_param_count

    h, L, V = model_cfg.hidden_size, model_cfg.num_hidden_layers, model_cfg.vocab_size
    n = llama_param_count(model_cfg, lm_head=False)
    layer = (n - V * h - h) / L
    pbytes = torch.finfo(DTYPES[cfg.param_dtype]).bits // 8
    states = (4 + (2 if cfg.optimizer == "adamw8bit" else 8)) * n / world
    grads = 4 * n / world
    gathered = pbytes * (V * h + h + 2 * layer)
    T = cfg.max_length
    act = activation_bytes(model_cfg, 2 * rows, T, cfg.param_dtype, cfg.activation_checkpointing)
    fwd = activation_bytes(model_cfg, 2 * cfg.eval_batch_size, T, cfg.param_dtype, True) / L
    return {
        "train": states + grads + gathered + 4 * n + act,
        "checkpoint": states,
        "eval": states + gathered + fwd,
    }


def dry_run_report(run: Run, memory: Any, hf_config: Any, rows: int) -> dict:
    """The dry run's end: the per-phase table beside :func:`estimate_memory`, and the limit check.

    Raises:
        trainer.infra.dryrun.DryRunError: a phase's peak exceeds ``memory_limit_gb``.
    """
    from trainer.infra.dryrun import finish

    cfg = run.cfg
    headline = (
        f"dry run: {DRY_RUN_STEPS} steps on fake tensors, world {run.di.world_size} (fake), micro-batch "
        f"{rows} pairs x 2 x {cfg.max_length} tokens, accumulation {cfg.grad_accum}"
    )
    est = estimate_memory(cfg, hf_config, run.di.world_size, rows)
    return finish(run, memory, est, headline, model_shape(hf_config))


def main(argv: list[str] | None = None) -> int:
    """``--help``, or parse ``argv`` (``--config FILE`` then ``key=value``) and train."""
    return cli_main(RewardConfig, train, __doc__, argv)


if __name__ == "__main__":
    from trainer.infra.dist import exit_process

    exit_process(main())
