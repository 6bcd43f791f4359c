"""Supervised alignment: plain SFT, or FIGA's token-weighted loss on (original, edited) pairs.

Tiny default (a tiny random-init LLaMA on the generated fine-grained set; the same code path as
the real job)::

    torchrun --standalone --nproc_per_node=2 trainer/sft.py                  # objective=sft
    torchrun --standalone --nproc_per_node=2 trainer/sft.py objective=figa init_from=runs/sft/final \
        output_dir=runs/figa
    python trainer/sft.py objective=figa                                      # one process

The real job (LLaMA-7B, one node with 8×A100-80G)::

    torchrun --standalone --nproc_per_node=8 trainer/sft.py --config configs/llama7b_8xa100/sft.yaml \\
        objective=figa init_from=/ckpt/llama7b-sft data=edits.jsonl

Objectives (``objective=``):

* ``sft`` — next-token loss on (prompt, response): the edited responses of an ``fgrlhf edit``
  file (``sft_response=edited``) or its preferred ones (``chosen``), or any JSONL with ``prompt`` +
  ``response`` (AlpacaFarm ``instruction`` [+ ``input``] + ``output``).
* ``figa`` — FIGA (Guo et al. 2023, "Beyond Imitation"): on the edited (good) response, the tokens
  the edit added or changed, and EOS, are learned with weight ``figa_revised_weight`` (+1), the
  unchanged ones with ``figa_unchanged_weight`` (0); on the original (bad) response, the tokens
  the edit removed or replaced get ``figa_removed_weight`` (−0.5), i.e. their log-probability is
  pushed *down* — but only while their token loss −log p lies in ``[figa_penalty_min_loss,
  figa_penalty_max_loss]`` = [0.6, 1.0], so the push switches off once p < e^−1 ≈ 0.37 and cannot
  run away. The weights and the band are those of FIGA's public code (RUCAIBox/FIGA); the paper's
  text (α, β, γ = 1, 0.5, 0) agrees on the weights; the band and the EOS weight are the code's.

Every loss is Σ w_t·(−log p_t) over tokens, divided by the global count of tokens with a non-zero
weight (over every micro-batch and rank of the step; the FIGA code divides per micro-batch and
also counts only penalised tokens inside the band: a documented difference). Per-token log-probs
come from ``fgkernels.token_logprobs`` (no [B, T, V] fp32 log-softmax).

Outputs under ``output_dir``: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/`` (DCP, exact
resume), ``final/`` — a plain ``transformers`` causal LM that ``trainer/ppo.py init_from=`` takes.
SIGTERM finishes the step, checkpoints and exits 75. ``python trainer/sft.py --help`` lists every
config key and the exit codes.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

if __package__ in (None, ""):  # `python trainer/sft.py` / `torchrun trainer/sft.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import fgkernels as fk
from trainer import memory
from trainer.data.examples import TokenizedExample, build_example, checked_template, collate
from trainer.data.formats import DataError, Prompt, prompt_parts, read_records, valid_records
from trainer.data.pairs import PairData, SupervisedConfig, collate_pairs, is_held_out, load_pair_data
from trainer.data.synthetic import bootstrap
from trainer.infra.config import ConfigError, cli_main
from trainer.infra.dist import all_reduce_sum, exit_process, get_rank, get_world_size, on_rank0
from trainer.infra.dryrun import host_list, in_dry_run, model_shape
from trainer.infra.runtime import Run
from trainer.loop import Data, SupervisedRecipe, run_supervised
from trainer.models import (
    base_config,
    full_state_dict,
    load_tokenizer,
    no_dropout,
    pad_token_id,
    position_ids,
    save_pretrained,
    stand_in_example,
)

warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

__all__ = ["SFTConfig", "figa_weights", "token_logp", "weighted_token_loss", "main", "train"]


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
@dataclass
class SFTConfig(SupervisedConfig):
    """Everything ``trainer/sft.py`` reads. YAML (``--config``) + ``key=value`` overrides."""

    CHOICES: ClassVar[dict] = {"objective": ("sft", "figa"), "sft_response": ("edited", "chosen")}
    AT_LEAST: ClassVar[dict] = {"figa_penalty_min_loss": 0, "figa_penalty_max_loss": 0}

    objective: str = "sft"
    """``sft`` (next-token loss on the responses) or ``figa`` (FIGA's token-weighted loss on
    (original, edited) pairs)."""
    data: str = ""
    """An ``fgrlhf edit`` JSONL (both objectives), or for ``sft`` a JSONL with ``prompt`` +
    ``response`` / ``instruction`` [+ ``input``] + ``output``; empty: the synthetic set."""
    sft_response: str = "edited"
    """``sft`` on an edits file: learn the ``edited`` responses (``ok`` edits) or the input pairs'
    ``chosen`` ones."""
    figa_revised_weight: float = 1.0
    """FIGA: weight of the edited response's added/changed tokens (paper α = 1; code 1)."""
    figa_eos_weight: float = 1.0
    """FIGA: weight of the edited response's EOS (code 1; the paper does not say)."""
    figa_unchanged_weight: float = 0.0
    """FIGA: weight of the edited response's unchanged tokens (paper γ = 0; code 0)."""
    figa_removed_weight: float = -0.5
    """FIGA: weight of the original response's removed/replaced tokens (paper β = 0.5 as a
    penalty; code −0.5): negative pushes their log-probability down."""
    figa_penalty_min_loss: float = 0.6
    """FIGA: a penalised token counts only while its loss −log p ≥ this (code 0.6)."""
    figa_penalty_max_loss: float = 1.0
    """FIGA: ... and ≤ this (code 1.0): past it (p < e^−1) the push stops, so it cannot run away."""
    output_dir: str = "runs/sft"
    """Where config, metrics, checkpoints and the final model go."""

    def check(self) -> None:
        super().check()
        if self.figa_penalty_min_loss > self.figa_penalty_max_loss:
            raise ConfigError("config keys figa_penalty_min_loss <= figa_penalty_max_loss are required")


# --------------------------------------------------------------------------------------------
# The losses (pure functions on [B, T] tensors)
# --------------------------------------------------------------------------------------------
def token_logp(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, weights: torch.Tensor
):
    """log p(x_t | x_<t) ``[B, T]`` fp32 at every position with a non-zero weight (0 elsewhere and
    at t = 0), through ``fgkernels.token_logprobs`` on the shifted logits."""
    attn = attention_mask.long()
    logits = model(
        input_ids=input_ids, attention_mask=attn, position_ids=position_ids(attn), use_cache=False
    ).logits
    labels = torch.where(weights != 0, input_ids, -100)[:, 1:]
    lp = fk.token_logprobs(logits[:, :-1], labels)
    return torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)


def sft_weights(batch: dict) -> torch.Tensor:
    """``[B, T]`` fp32: 1 on response tokens (EOS included), 0 elsewhere."""
    return batch["response_mask"].float()


def figa_weights(batch: dict, n_chosen: int, eos_id: int | None, cfg: Any) -> torch.Tensor:
    """FIGA's per-token weights ``[2B, T]`` fp32 of a :func:`~trainer.data.pairs.collate_pairs`
    batch (edited rows ``[:B]``, original rows ``[B:]``).

    Edited rows: ``figa_revised_weight`` on changed tokens, ``figa_unchanged_weight`` on kept ones,
    ``figa_eos_weight`` on EOS. Original rows: ``figa_removed_weight`` on changed (removed or
    replaced) tokens, 0 elsewhere (EOS included).

    Example (by hand): edited response [a, X, </s>] with X changed -> [0, 1, 1] (defaults);
    original [a, Y, </s>] with Y changed -> [0, −0.5, 0].
    """
    resp, chg, ids = batch["response_mask"], batch["changed_mask"], batch["input_ids"]
    w = torch.zeros(resp.shape, dtype=torch.float32, device=resp.device)
    top = slice(0, n_chosen)
    w[top] = torch.where(
        chg[top], cfg.figa_revised_weight, torch.where(resp[top], cfg.figa_unchanged_weight, 0.0)
    )
    if eos_id is not None:
        w[top] = torch.where(resp[top] & (ids[top] == eos_id), cfg.figa_eos_weight, w[top])
    bottom = slice(n_chosen, None)
    w[bottom] = torch.where(chg[bottom] & resp[bottom], cfg.figa_removed_weight, 0.0)
    return w


def weighted_token_loss(
    logp: torch.Tensor, weights: torch.Tensor, min_loss: float, max_loss: float, num_tokens
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_t w_t·ℓ_t / ``num_tokens`` with ℓ_t = −log p_t: positive weights learn a token, negative
    ones push it down while min_loss ≤ ℓ_t ≤ max_loss (outside the band, or once pushed past
    ``max_loss``, the term is off). Inputs [B, T]; returns (loss, detached Σ ℓ over the
    positively weighted tokens, for the NLL metric).

    Example (by hand): p = [0.5, 0.8, 0.5], w = [1, 0, −0.5], band [0.6, 1.0], N = 2:
    ℓ = [0.693, 0.223, 0.693] -> (0.693 − 0.5·0.693) / 2 = 0.1733; with p_3 = 0.3 (ℓ 1.204, out of
    the band) -> 0.693 / 2 = 0.3466.
    """
    nll = -logp
    with torch.no_grad():
        in_band = (nll >= min_loss) & (nll <= max_loss)
        active = (weights > 0) | ((weights < 0) & in_band)
    loss = torch.where(active, weights * nll, 0.0).sum() / num_tokens
    return loss, torch.where(weights > 0, nll, 0.0).detach().sum()


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def load_sft_examples(
    path: str, tokenizer: Any, cfg: SFTConfig, split: str | None = None
) -> list[TokenizedExample]:
    """(prompt, response) examples of a plain SFT JSONL: ``prompt`` + ``response``, or AlpacaFarm
    ``instruction`` [+ ``input``] + ``output``; ``split`` ``"train"`` / ``"eval"`` holds out
    ``cfg.eval_fraction`` of the records by a hash of their ``id`` (else of prompt and response,
    as the pairs files do), None keeps every record.

    Raises:
        DataError: a record without a response (names it), unless ``skip_invalid``.
    """

    def example(where: str, rec: Any) -> tuple[Prompt, str] | None:
        prompt = prompt_parts(rec, path, where)
        response = rec.get("response", rec.get("output"))
        if not isinstance(response, str) or not response.strip():
            raise DataError(path, "no 'response' (or 'output') string", where)
        if split is not None:
            rec_id = str(rec["id"]) if rec.get("id") is not None else f"{prompt.text}\n{response}"
            if is_held_out(rec_id, cfg.eval_fraction) != (split == "eval"):
                return None  # the other split's
        return prompt, response

    out = []
    for _, (prompt, response) in valid_records(read_records(path), example, cfg.skip_invalid):
        out.append(
            build_example(
                tokenizer, prompt, response, max_length=cfg.max_length,
                min_response_tokens=cfg.min_response_tokens, prompt_template=cfg.prompt_template,
            )
        )  # fmt: skip
    return out


def is_edits_file(path: str) -> bool:
    """True when the first record of ``path`` looks like an ``fgrlhf edit`` record."""
    for _, rec in read_records(path):
        return isinstance(rec, dict) and "original" in rec
    return False


def load_data(run: Run) -> tuple[Any, list, list, str]:
    """The tokenizer and the training and held-out items: pairs (``figa``) or examples
    (``sft``), and the data path (the synthetic set when ``data`` is empty)."""
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
    cfg.prompt_template = checked_template(tokenizer, cfg.prompt_template)
    edits = is_edits_file(data_path)
    if cfg.objective == "figa" and not edits:
        raise DataError(data_path, "objective=figa needs an `fgrlhf edit` file (original + edited)")

    def items(path: str, split: str | None) -> list:
        if not edits:
            return load_sft_examples(path, tokenizer, cfg, split)
        data: PairData = load_pair_data(path, tokenizer, cfg, split)
        if cfg.objective == "figa":
            return data.edited
        return [c for c, _ in (data.edited if cfg.sft_response == "edited" else data.original)]

    if cfg.eval_data:
        train_items, eval_items = items(data_path, None), items(cfg.eval_data, None)
    else:  # eval_fraction held out by id hash, from an edits file or a plain SFT file alike
        train_items, eval_items = items(data_path, "train"), items(data_path, "eval")
    run.say(f"data {data_path}: {len(train_items)} train / {len(eval_items)} held-out ({cfg.objective})")
    return tokenizer, train_items, eval_items, data_path


def make_batch(items: list, idx: list[int], cfg: SFTConfig, pad_id: int, eos_id: int | None, device) -> dict:
    """The collated rows of ``idx`` with their loss weights ``[R, T]`` (``figa``: 2 rows a pair)."""
    if cfg.objective == "figa":
        batch = collate_pairs([items[i] for i in idx], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        batch["weights"] = figa_weights(batch, len(idx), eos_id, cfg)
    else:
        batch = {k: v.to(device) for k, v in collate([items[i] for i in idx], pad_id).items()}
        batch["weights"] = sft_weights(batch)
    return batch


@torch.no_grad()
def evaluate(model, items: list, cfg: SFTConfig, pad_id: int, eos_id, device) -> dict:
    """Held-out ``nll`` (mean −log p over the positively weighted tokens: the learned responses)
    and ``loss`` (the objective), every rank scoring its share (same forward count on each); the
    sums stay on the device until one all-reduce and one host copy at the end."""
    was = model.training
    model.eval()
    rank, world = get_rank(), get_world_size()
    mine = list(range(rank, len(items), world))
    n_batches = math.ceil(math.ceil(len(items) / world) / cfg.eval_batch_size)
    # Σ w·ℓ (active), Σ ℓ (positive), n positive, n weighted
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for b in range(n_batches):
        idx = mine[b * cfg.eval_batch_size : (b + 1) * cfg.eval_batch_size]
        real = bool(idx)
        batch = make_batch(items, idx or [0], cfg, pad_id, eos_id, device)
        lp = token_logp(model, batch["input_ids"], batch["attention_mask"], batch["weights"])
        if not real:
            continue
        w = batch["weights"]
        loss, nll = weighted_token_loss(lp, w, cfg.figa_penalty_min_loss, cfg.figa_penalty_max_loss, 1.0)
        sums += torch.stack([loss.double(), nll.double(), (w > 0).sum().double(), (w != 0).sum().double()])
    s = host_list(all_reduce_sum(sums), 1.0)  # host sync (the evaluation's one)
    model.train(was)
    return {"loss": s[0] / max(s[3], 1.0), "nll": s[1] / max(s[2], 1.0), "tokens": int(s[2])}


# --------------------------------------------------------------------------------------------
# The recipe: the model, a step's loss and sums, evaluation (the run itself:
# trainer.loop.run_supervised)
# --------------------------------------------------------------------------------------------
def rows_of(cfg: SFTConfig, items: int) -> int:
    """Sequences of ``items`` items: a FIGA pair is two."""
    return items * (2 if cfg.objective == "figa" else 1)


class SFTRecipe(SupervisedRecipe):
    """SFT / FIGA on :func:`~trainer.loop.run_supervised`: examples (``sft``) or pairs
    (``figa``) with their token weights, :func:`weighted_token_loss` over the step's global count
    of weighted tokens, the held-out ``loss``/``nll`` of :func:`evaluate`."""

    NAME = "sft"
    KIND = "causal_lm"

    # --- set-up ---------------------------------------------------------------------------------
    def load_data(self) -> Data:
        tokenizer, train_items, eval_items, data_path = load_data(self.run)
        self.pad_id, self.eos_id = pad_token_id(tokenizer), tokenizer.eos_token_id
        return Data(tokenizer, train_items, eval_items, data_path, bool(eval_items))

    def model_config(self) -> Any:
        return no_dropout(base_config(self.cfg, self.data.tokenizer, max(self.cfg.max_length, 128)))

    def estimate(self) -> dict[str, float]:
        cfg = self.cfg
        rows, eval_rows = rows_of(cfg, cfg.micro_batch_size), rows_of(cfg, cfg.eval_batch_size)
        return memory.lm_phases(cfg, self.hf_config, self.run.di.world_size, rows, eval_rows)

    def model_line(self, n_params: int) -> str:
        di = self.run.di
        return f"model: {n_params / 1e6:.2f}M params, world {di.world_size} on {di.device}"

    def bar_desc(self) -> str:
        return f"sft[{self.cfg.objective}]"

    # --- a step ---------------------------------------------------------------------------------
    def start_sums(self, step: int) -> None:
        # loss, Σ nll (positive), n positive (since the last log); the loss is a mean over steps
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.run.di.device)
        self.logged_at = step

    def micro_batches(self, indices: list[list[int]]) -> list[dict]:
        items, device = self.data.train, self.run.di.device
        return [make_batch(items, idx, self.cfg, self.pad_id, self.eos_id, device) for idx in indices]

    def local_count(self, micro: list[dict]) -> torch.Tensor:
        """This rank's tokens with a non-zero weight (on the device: no sync)."""
        return sum((b["weights"] != 0).sum() for b in micro).float()

    def train_micro(self, batch: dict, n_global: torch.Tensor) -> None:
        cfg = self.cfg
        # per-token log-probs [R, T] -> the weighted loss over the global count
        lp = token_logp(self.model, batch["input_ids"], batch["attention_mask"], batch["weights"])
        loss, nll = weighted_token_loss(
            lp, batch["weights"], cfg.figa_penalty_min_loss, cfg.figa_penalty_max_loss, n_global
        )
        # backward; FSDP averages gradients over ranks, so × world
        (loss * self.run.di.world_size).backward()
        self.sums += torch.stack(
            [loss.detach().double(), nll.double(), (batch["weights"] > 0).sum().double()]
        )

    def train_record(self, step: int, lr: float, grad_norm: Any, dt: float) -> tuple[dict, dict]:
        t = host_list(all_reduce_sum(self.sums.clone()), 1.0)  # host sync (log point)
        rec = {"split": "train", "step": step, "loss": t[0] / (step - self.logged_at),
               "nll": t[1] / max(t[2], 1.0), "lr": lr, "tokens_per_s": t[2] / dt,
               "epoch": step / self.schedule.steps_per_epoch}  # fmt: skip
        self.logged_at = step
        self.sums.zero_()
        return rec, {"nll": f"{rec['nll']:.3f}"}

    def evaluate(self, step: int, final: bool) -> dict:
        """Held-out metrics, logged (the final ones said too)."""
        metrics = evaluate(self.model, self.data.eval, self.cfg, self.pad_id, self.eos_id, self.run.di.device)
        self.log.write({"split": "eval", "step": step, **metrics})
        if final:
            self.run.say(f"eval step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        return metrics

    # --- the end --------------------------------------------------------------------------------
    def dry_run_report(self, pm: Any, micro: list[dict]) -> dict:
        """The per-phase table beside :func:`estimate_memory` of the eager references a dry run
        uses, and the limit check."""
        run, cfg, rows = self.run, self.cfg, len(micro[0]["input_ids"])
        headline = (
            f"dry run: {DRY_RUN_STEPS} steps on fake tensors, world {run.di.world_size} (fake), micro-batch "
            f"{rows} x {cfg.max_length} tokens ({cfg.objective}), accumulation {cfg.grad_accum}"
        )
        est = estimate_memory(cfg, self.hf_config, run.di.world_size, rows, "reference")
        return memory.report(run, pm, est, headline, model_shape(self.hf_config))

    def save_final(self, step: int, metrics: dict) -> None:
        """``output_dir/final``: a plain ``transformers`` causal LM (``trainer/ppo.py init_from=``)."""
        cfg, run = self.cfg, self.run
        sd = full_state_dict(self.model)  # collective
        on_rank0(
            save_pretrained,
            sd,
            self.hf_config,
            "causal_lm",
            run.out_dir / "final",
            self.data.tokenizer,
            dtype=cfg.save_dtype,
            policy_meta={"trainer": f"sft:{cfg.objective}", "prompt_template": cfg.prompt_template},
        )
        run.say(f"saved {run.out_dir / 'final'} (trainer/ppo.py init_from= takes it)")

    # end_of_run: the default, the trackers' summary is the last evaluation (log.finish(metrics))


def train(cfg: SFTConfig) -> dict:
    """Run the recipe (called on every rank): :func:`trainer.loop.run_supervised` of an
    :class:`SFTRecipe`. Returns the last evaluation's metrics (a dry run: its measured peaks per
    phase, :func:`dry_run`)."""
    if cfg.dry_run and not in_dry_run():
        return dry_run(cfg)
    return run_supervised(SFTRecipe(cfg))


# --------------------------------------------------------------------------------------------
# Dry run: the recipe above on fake tensors over a fake process group (trainer.memory)
# --------------------------------------------------------------------------------------------
DRY_RUN_STEPS = memory.SUPERVISED_DRY_RUN["max_steps"]  # with the optimizer states created first


def dry_run(cfg: SFTConfig) -> dict:
    """``dry_run=true``: :func:`train` itself for one optimizer step over every micro-batch of
    the accumulation (optimizer states created first), a checkpoint and the held-out evaluation's
    forwards, on fake tensors (:func:`trainer.memory.dry_run`). Prints the per-phase peak
    memory beside :func:`estimate_memory` and returns ``{"peaks", "parts", "estimates"}``.

    Raises:
        trainer.infra.dryrun.DryRunError: a phase failed or its peak exceeds ``memory_limit_gb``.
    """
    return memory.dry_run(cfg, "sft", train, memory.SUPERVISED_DRY_RUN)


def dry_run_data(run: Run) -> tuple[Any, list, list, str]:
    """A dry run's tokenizer and stand-in items of exactly ``max_length`` tokens (the worst case,
    :func:`trainer.models.stand_in_example`; ``figa``: pairs of them): one step's worth for
    training, one eval batch per rank held out."""
    cfg = run.cfg
    tokenizer, ex = stand_in_example(cfg)
    T = cfg.max_length
    item = (ex, ex) if cfg.objective == "figa" else ex
    world_batch = cfg.micro_batch_size * cfg.grad_accum * run.di.world_size
    n_eval = cfg.eval_batch_size * run.di.world_size
    return tokenizer, [item] * (world_batch * DRY_RUN_STEPS), [item] * n_eval, f"stand-ins ({T} tokens each)"


def estimate_memory(cfg: SFTConfig, model_cfg: Any, world: int, rows: int, kernels: str = "fused") -> dict:
    """Per-device bytes of each phase (``rows`` sequences per micro-batch):
    :func:`trainer.memory.lm_phases`."""
    return memory.lm_phases(cfg, model_cfg, world, rows, rows_of(cfg, cfg.eval_batch_size), kernels)


def main(argv: list[str] | None = None) -> int:
    """``--help``, or parse ``argv`` (``--config FILE`` then ``key=value``) and train."""
    return cli_main(SFTConfig, train, __doc__, argv)


if __name__ == "__main__":
    exit_process(main())
