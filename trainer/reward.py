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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

if __package__ in (None, ""):  # `python trainer/reward.py` / `torchrun trainer/reward.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

import fgkernels as fk
from trainer import memory, rm_metrics
from trainer.data.examples import checked_template
from trainer.data.pairs import Pair, PairData, SupervisedConfig, collate_pairs, load_pair_data
from trainer.data.synthetic import bootstrap
from trainer.eval.report import rm_report
from trainer.infra.config import ConfigError, cli_main
from trainer.infra.dist import (
    all_reduce_sum,
    broadcast_object,
    exit_process,
    gather_objects,
    get_rank,
    get_world_size,
    on_rank0,
)
from trainer.infra.dryrun import host_item, host_list, in_dry_run, model_shape
from trainer.infra.metrics import summary_figures
from trainer.infra.runtime import Run
from trainer.infra.summary import REWARD_ROWS, reward_summary
from trainer.loop import Data, SupervisedRecipe, end_of_run, run_supervised
from trainer.models import (
    base_config,
    full_state_dict,
    load_tokenizer,
    pad_token_id,
    per_token_scores,
    read_reward_meta,
    save_pretrained,
    scalar_head_config,
    sequence_reward,
    stand_in_example,
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
# The recipe: data, the model, a step's loss and sums, evaluation and best/ (the run itself:
# trainer.loop.run_supervised)
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


def _saved_step(path: Path) -> int | None:
    """The training step of the reward model saved at ``path`` (its metadata's), or None."""
    try:
        return read_reward_meta(path).get("step")
    except (OSError, ValueError):  # (none there, or not readable: save it)
        return None


class RewardRecipe(SupervisedRecipe):
    """The reward model on :func:`~trainer.loop.run_supervised`: pairs of the level's own
    kind, :func:`pair_loss` over the step's global pair count, the held-out metrics of
    :func:`evaluate` with ``best/`` kept, the end-of-run plots, page and summary."""

    NAME = "reward"
    KIND = "scalar_head"

    def __init__(self, cfg: RewardConfig) -> None:
        super().__init__(cfg)
        self.best = -math.inf  # the best held-out own-kind accuracy (best/), checkpointed

    # --- set-up ---------------------------------------------------------------------------------
    def load_data(self) -> Data:
        tokenizer, train_pairs, eval_data, data_path = load_data(self.run)
        self.pad_id = pad_token_id(tokenizer)
        has_eval = bool(eval_data.edited or eval_data.original)
        return Data(tokenizer, train_pairs, eval_data, data_path, has_eval)

    def items_name(self) -> str:
        return f"usable {self.cfg.own_pairs} pairs"

    def model_config(self) -> Any:
        base = base_config(self.cfg, self.data.tokenizer, max(self.cfg.max_length, 128))
        return scalar_head_config(base, self.pad_id)

    def estimate(self) -> dict[str, float]:
        cfg = self.cfg
        return memory.reward_phases(cfg, self.hf_config, self.run.di.world_size, cfg.micro_batch_size)

    def load_kwargs(self) -> dict:
        return {"new_head": True}

    def model_line(self, n_params: int) -> str:
        cfg, di, model = self.cfg, self.run.di, self.model
        return (
            f"model: {type(model).__name__.removeprefix('FSDP')} {n_params / 1e6:.2f}M params, attn "
            f"{model.config._attn_implementation}, world {di.world_size} on {di.device}, params "
            f"{cfg.param_dtype}/reduce {cfg.reduce_dtype}\nkernels: {fk.backend_report()}"
        )

    def resumed(self, extra: dict) -> None:
        self.best = extra.get("best", -math.inf)

    def bar_desc(self) -> str:
        return f"rm[{self.cfg.rm_level}]"

    def no_eval_note(self) -> str:
        return "no held-out pairs: evaluation is skipped"

    # --- a step ---------------------------------------------------------------------------------
    def start_sums(self, step: int) -> None:
        # loss sum, correct, margin sum, pairs (since the last log); kept on the device: no host
        # sync in the loop, one at the log point; and the tokens since the last log (this rank's)
        self.sums = torch.zeros(4, dtype=torch.float64, device=self.run.di.device)
        self.tokens = 0

    def micro_batches(self, indices: list[list[int]]) -> list[dict]:
        return [collate_pairs([self.data.train[i] for i in idx], self.pad_id) for idx in indices]

    def local_count(self, micro: list[dict]) -> torch.Tensor:
        """This rank's pairs of the step (host-known: a tensor built on the host, no sync)."""
        n_local = float(sum(b["input_ids"].shape[0] // 2 for b in micro))
        return torch.tensor(n_local, device=self.run.di.device)

    def train_micro(self, batch: dict, n_global: torch.Tensor) -> None:
        di, cfg = self.run.di, self.cfg
        batch = {key: v.to(di.device) for key, v in batch.items()}
        # per-token head [2B, T] -> per-pair loss and margin [B]
        scores = per_token_scores(self.model, batch["input_ids"], batch["attention_mask"])
        loss_b, margin = pair_loss(scores, batch, cfg.rm_level, cfg.variant)
        # backward of Σ loss / N_global; FSDP averages gradients over ranks, so × world
        (loss_b.sum() * (di.world_size / n_global)).backward()
        self.sums += torch.stack(
            [
                loss_b.detach().sum().double(),
                (margin > 0).sum().double(),
                margin.sum().double(),
                torch.full((), float(len(margin)), dtype=torch.float64, device=di.device),
            ]
        )
        self.tokens += int(batch["attention_mask"].numel())
        self.tokens_trained += int(batch["attention_mask"].numel()) * di.world_size

    def train_record(self, step: int, lr: float, grad_norm: Any, dt: float) -> tuple[dict, dict]:
        world = self.run.di.world_size
        totals = host_list(all_reduce_sum(self.sums.clone()), 1.0)  # host sync (log point)
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
            "tokens_per_s": self.tokens * world / dt,
            "epoch": step / self.schedule.steps_per_epoch,
        }
        self.sums.zero_()
        self.tokens = 0
        return rec, {"loss": f"{rec['loss']:.4f}", "acc": f"{rec['accuracy']:.3f}"}

    def evaluate(self, step: int, final: bool) -> dict:
        """Evaluate, log, and save ``best/`` when the own-kind accuracy beats the best so far (a
        dry run: the forwards only, its fake scores have no values)."""
        run, cfg, held_out, device = self.run, self.cfg, self.data.eval, self.run.di.device
        if in_dry_run():
            for kind in ("edited", "original"):
                pairs = getattr(held_out, kind)
                score_pairs(
                    self.model, pairs, cfg, self.pad_id, device, loss=kind == cfg.own_pairs, tokens=False
                )
            return {}
        metrics = evaluate(self.model, held_out, cfg, self.pad_id, device)
        self.log.write({"split": "eval", "step": step, **metrics})
        run.say(
            f"eval step {step}: "
            + " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        )
        self.keep_best(step, metrics)
        return metrics

    def evaluated_before(self, step: int, metrics: dict) -> None:
        """The final evaluation read back: ``best/`` kept as :meth:`evaluate` keeps it, unless it
        holds this step's model already (the first run saved it; a kill during that save or
        ``save_best`` turned on since: saved now)."""
        if broadcast_object(on_rank0(_saved_step, self.run.out_dir / "best")) != step:
            self.keep_best(step, metrics)

    def keep_best(self, step: int, metrics: dict) -> None:
        """``best/`` := the model now, when its held-out own-kind accuracy beats the best so far
        (``save_best``; collective)."""
        if self.cfg.save_best and metrics.get("accuracy", -math.inf) > self.best:
            self.best = metrics["accuracy"]
            tokenizer = self.data.tokenizer
            save_reward_model(self.run, self.model, self.hf_config, tokenizer, "best", step, metrics)

    def checkpoint_extra(self, step: int) -> dict:
        return {"epoch": step // self.schedule.steps_per_epoch, "best": self.best}

    # --- the end --------------------------------------------------------------------------------
    def dry_run_report(self, pm: Any, micro: list[dict]) -> dict:
        run, cfg, rows = self.run, self.cfg, len(micro[0]["input_ids"]) // 2
        headline = (
            f"dry run: {DRY_RUN_STEPS} steps on fake tensors, world {run.di.world_size} (fake), micro-batch "
            f"{rows} pairs x 2 x {cfg.max_length} tokens, accumulation {cfg.grad_accum}"
        )
        est = memory.reward_phases(cfg, self.hf_config, run.di.world_size, rows)
        return memory.report(run, pm, est, headline, model_shape(self.hf_config))

    def save_final(self, step: int, metrics: dict) -> None:
        run = self.run
        save_reward_model(run, self.model, self.hf_config, self.data.tokenizer, "final", step, metrics)
        run.say(f"saved {run.out_dir / 'final'} (load: AutoModelForTokenClassification.from_pretrained)")

    def end_of_run(
        self, times: dict[str, float], tokens_per_s: float | None, peak_mb: float, metrics: dict
    ) -> None:
        """``output_dir/plots/*.png`` (``plots``), ``output_dir/report.html`` (``report``:
        ``final/`` on the held-out edited pairs, :func:`trainer.eval.report.rm_report`) and the
        summary table (:func:`trainer.infra.summary.reward_summary`)."""
        run, cfg, out = self.run, self.cfg, self.run.out_dir
        final = out / "final"
        outputs = {
            "checkpoints": str(out / "checkpoints"),
            "final model": str(final) if final.exists() else "",
            "best model": str(out / "best") if (out / "best").exists() else "",
            "metrics": str(out / "metrics.jsonl"),
            "plots": "",
            "HTML page": "",
        }
        held_out = {"pairs_file": cfg.eval_data, "split": None} if cfg.eval_data else {
            "pairs_file": self.data.path, "split": "eval"}  # fmt: skip

        def page() -> Path:
            path, _ = rm_report(
                final, held_out["pairs_file"], out / "report.html", cfg.report_pairs,
                batch_size=cfg.eval_batch_size, split=held_out["split"], max_length=cfg.max_length,
                min_response_tokens=cfg.min_response_tokens, on_too_long=cfg.on_too_long,
                skip_invalid=cfg.skip_invalid, eval_fraction=cfg.eval_fraction,
            )  # fmt: skip
            return path

        def summarise(records: list[dict], outputs: dict[str, str]) -> tuple[str, dict, list[str]]:
            text = reward_summary(records, outputs, times, tokens_per_s, peak_mb)
            evals = [r for r in records if r.get("split") == "eval"]
            return text, summary_figures(evals, REWARD_ROWS), []

        end_of_run(run, self.log, outputs, page if cfg.report and final.exists() else None, summarise)


def train(cfg: RewardConfig) -> dict:
    """Run the recipe (called on every rank): :func:`trainer.loop.run_supervised` of a
    :class:`RewardRecipe`. Returns the last evaluation's metrics (a dry run: its measured peaks
    per phase, :func:`dry_run`)."""
    if cfg.dry_run and not in_dry_run():
        return dry_run(cfg)
    return run_supervised(RewardRecipe(cfg))


# --------------------------------------------------------------------------------------------
# Dry run: the recipe above on fake tensors over a fake process group (trainer.memory)
# --------------------------------------------------------------------------------------------
DRY_RUN_STEPS = memory.SUPERVISED_DRY_RUN["max_steps"]  # with the optimizer states created first


def dry_run(cfg: RewardConfig) -> dict:
    """``dry_run=true``: :func:`train` itself for one optimizer step over every micro-batch of
    the accumulation (optimizer states created first, as a real run has them), a checkpoint and
    the held-out evaluation's forwards, on fake tensors (:func:`trainer.memory.dry_run`).
    Prints the per-phase peak memory beside :func:`estimate_memory` and returns
    ``{"peaks", "parts", "estimates"}``.

    Raises:
        trainer.infra.dryrun.DryRunError: a phase failed or its peak exceeds ``memory_limit_gb``.
    """
    overrides = {**memory.SUPERVISED_DRY_RUN, "save_best": False, "plots": False, "report": False}
    return memory.dry_run(cfg, "reward", train, overrides)


def dry_run_data(run: Run) -> tuple[Any, list[Pair], PairData, str]:
    """A dry run's tokenizer and stand-in pairs of exactly ``max_length`` tokens on both sides
    (the worst case, :func:`trainer.models.stand_in_example`): the steps' worth for
    training, one eval batch of each kind held out."""
    cfg = run.cfg
    tokenizer, ex = stand_in_example(cfg)
    T = cfg.max_length
    pair = (ex, ex)
    world_batch = cfg.micro_batch_size * cfg.grad_accum * run.di.world_size
    n_eval = cfg.eval_batch_size * run.di.world_size
    held_out = PairData(edited=[pair] * n_eval, original=[pair] * n_eval)
    return tokenizer, [pair] * (world_batch * DRY_RUN_STEPS), held_out, f"stand-ins ({T} tokens each)"


def estimate_memory(cfg: RewardConfig, model_cfg: Any, world: int, rows: int) -> dict[str, float]:
    """Per-device bytes of each phase: :func:`trainer.memory.reward_phases`."""
    return memory.reward_phases(cfg, model_cfg, world, rows)


def main(argv: list[str] | None = None) -> int:
    """``--help``, or parse ``argv`` (``--config FILE`` then ``key=value``) and train."""
    return cli_main(RewardConfig, train, __doc__, argv)


if __name__ == "__main__":
    exit_process(main())
