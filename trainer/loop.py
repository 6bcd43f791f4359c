"""The run skeleton of every trainer, written once; the recipes put their data, loss and metrics on top.

The step-scheduled trainers (``trainer/reward.py``, ``trainer/sft.py``) are a
:class:`SupervisedRecipe` run by :func:`run_supervised`, which owns the whole run::

    0. set-up         start_run (config check, SIGTERM, processes, output directory), metrics.jsonl
    1. data           recipe.load_data; the schedule (Schedule.of: too few items is a DataError)
    2. memory check   recipe.estimate against memory_limit_gb (trainer.memory.check)
    3. model          weights on rank 0 -> FSDP2; the optimizer; the LR schedule
    4. resume         the newest intact checkpoint (model, optimizer, schedule, RNG), or seed
    5. the loop       per step: micro-batches of step_batches (a pure function of seed and step),
                      one all-reduce of [count, stop flag], recipe.train_micro per micro-batch,
                      the optimizer step; then stop flag -> log -> eval -> checkpoint -> pre-empt
    6. the end        final evaluation (kept, not redone, when a finished run is run again); a dry
                      run's memory table; the final model; end of run

PPO (``trainer/ppo.py``) keeps its own iteration body (generate, score, rewards, GAE, PPO epochs)
and shares the rest: the cadence test (:func:`due`), the stopping point (:func:`stop_at`), the
progress bar, pre-emption (:class:`~trainer.infra.runtime.Preempted`), the end-of-run plots, page
and summary (:func:`end_of_run`) and the memory model and dry run (:mod:`trainer.memory`).

The global random stream is consumed in one order by every trainer: the model's initial weights
(``load_on_rank0`` seeds), then the optimizer, then ``resume_or_seed`` (the checkpoint's RNG, or
``seed + 1000·rank``), then the loop. The data order comes from a private generator
(:func:`trainer.data.pairs.step_batches`), so the data position is just the step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm import tqdm

from trainer import memory
from trainer.data.formats import DataError
from trainer.data.pairs import step_batches
from trainer.eval.plot import plot_runs, read_metrics
from trainer.infra.checkpoint import Checkpointer
from trainer.infra.config import describe
from trainer.infra.dist import all_reduce_sum, broadcast_object, on_rank0
from trainer.infra.dryrun import host_item, model_shape
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
from trainer.models import build_sharded, load_on_rank0

__all__ = [
    "Data",
    "Schedule",
    "SupervisedRecipe",
    "due",
    "end_of_run",
    "progress_bar",
    "run_supervised",
    "stop_at",
]


# --------------------------------------------------------------------------------------------
# The schedule and the cadence (every trainer)
# --------------------------------------------------------------------------------------------
def due(step: int, every: int) -> bool:
    """``every`` > 0 and ``step`` a multiple of it: the cadence test of log / eval / checkpoint."""
    return bool(every) and step % every == 0


def stop_at(total: int, stop_after: int) -> int:
    """Where this process stops: ``total`` steps (iterations), or ``stop_after`` when set (0: off)."""
    return min(total, stop_after) if stop_after else total


def progress_bar(run: Run, total: int, initial: int, desc: str) -> tqdm:
    """The run's progress bar (rank 0 with ``progress``; disabled elsewhere)."""
    return tqdm(total=total, initial=initial, disable=not (run.di.is_main and run.cfg.progress), desc=desc)


@dataclass(frozen=True)
class Schedule:
    """The step schedule of a training set: ``world_batch`` items per optimizer step (all ranks),
    ``steps_per_epoch`` (the last partial global batch of an epoch is dropped), ``total_steps``
    (``max_steps``, else ``epochs`` worth, at least 1) and ``end_step`` (where this process stops:
    :func:`stop_at` ``stop_after_steps``)."""

    world_batch: int
    steps_per_epoch: int
    total_steps: int
    end_step: int

    @classmethod
    def of(cls, cfg: Any, n_items: int, world: int, data_path: str, items: str) -> Schedule:
        """The schedule of ``n_items`` training items over ``world`` ranks.

        Raises:
            DataError: fewer than one global batch (``data_path``: "<n> <items>, fewer than one
                global batch (<world_batch>)").
        """
        world_batch = cfg.micro_batch_size * cfg.grad_accum * world
        if n_items < world_batch:
            raise DataError(data_path, f"{n_items} {items}, fewer than one global batch ({world_batch})")
        steps_per_epoch = n_items // world_batch
        total_steps = cfg.max_steps or max(1, int(cfg.epochs * steps_per_epoch))
        return cls(world_batch, steps_per_epoch, total_steps, stop_at(total_steps, cfg.stop_after_steps))


# --------------------------------------------------------------------------------------------
# The end of a run (rank 0): plots, the HTML page, the summary (reward, PPO)
# --------------------------------------------------------------------------------------------
def end_of_run(
    run: Run,
    log: MetricsLog,
    outputs: dict[str, str],
    page: Callable[[], Path | str] | None,
    summarise: Callable[[list[dict], dict[str, str]], tuple[str, dict[str, float], list[str]]],
) -> None:
    """Rank 0, after the final save: ``output_dir/plots/*.png`` (``plots``), the HTML page
    (``page()`` renders ``output_dir/report.html`` and returns its path; None: no page) and the
    summary, all handed to the trackers too (``log.finish``). ``outputs`` (the summary's "outputs"
    rows) gets ``plots`` and ``HTML page`` filled in. ``summarise(records, outputs)`` returns the
    summary's text, its figures for the trackers and notes said after it. A failure to draw or
    render is a warning: the run's models and metrics are already written. The plots go to the
    trackers as soon as they are drawn (their upload overlaps the page and the summary)."""
    out = run.out_dir
    files = [out / "plots", out / "report.html"]
    if run.cfg.plots:
        try:
            plot_runs([out / "metrics.jsonl"], out / "plots", labels=[out.name])
            outputs["plots"] = str(out / "plots")
            log.files([files.pop(0)])
        except Exception as e:  # noqa: BLE001 - reported, the run itself is complete
            run.say(f"warning: plots not written: {describe(e)}")
    if page is not None:
        try:
            outputs["HTML page"] = str(page())
        except Exception as e:  # noqa: BLE001
            run.say(f"warning: report.html not written: {describe(e)}")
    text, figures, notes = summarise(read_metrics(out / "metrics.jsonl"), outputs)
    run.say(text)
    for note in notes:
        if note:
            run.say(note)
    log.finish(figures, text, files)


# --------------------------------------------------------------------------------------------
# The step-scheduled trainers: a recipe's hooks, one loop
# --------------------------------------------------------------------------------------------
@dataclass
class Data:
    """What :meth:`SupervisedRecipe.load_data` returns."""

    tokenizer: Any
    train: list  # the training items (pairs / examples), indexed by step_batches
    eval: Any  # the held-out items (PairData / list)
    path: str  # the data file (or the synthetic set's): named in errors and the summary
    has_eval: bool  # any held-out item at all


class SupervisedRecipe:
    """The hooks of one step-scheduled trainer, built on its config (``cfg``).
    :func:`run_supervised` sets ``run``, ``log``, ``data``, ``schedule``, ``hf_config``, ``model``
    and ``optimizer`` before it calls the hooks that need them; a recipe keeps its own running
    sums (:meth:`start_sums` .. :meth:`train_record`) and adds the tokens it trains on to
    ``tokens_trained`` (every rank's: the summary's tokens/s)."""

    NAME: ClassVar[str] = ""  # Run.name, the memory plan's trainer
    KIND: ClassVar[str] = ""  # trainer.models.build_sharded kind: "scalar_head" / "causal_lm"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.run: Run | None = None
        self.log: MetricsLog | None = None
        self.data: Data | None = None
        self.schedule: Schedule | None = None
        self.hf_config: Any = None
        self.model: Any = None
        self.optimizer: Any = None
        self.tokens_trained = 0

    # --- set-up ---------------------------------------------------------------------------------
    def load_data(self) -> Data:
        """The tokenizer, the training and held-out items, the data path."""
        raise NotImplementedError

    def items_name(self) -> str:
        """The training items, as the too-few-items error names them."""
        return "usable items"

    def model_config(self) -> Any:
        """The model's ``transformers`` config (the tokenizer: ``self.data.tokenizer``)."""
        raise NotImplementedError

    def estimate(self) -> dict[str, float]:
        """Bytes per device of each phase (:mod:`trainer.memory`, fused kernels)."""
        raise NotImplementedError

    def load_kwargs(self) -> dict:
        """Extra keywords of :func:`trainer.models.load_on_rank0` (reward: ``new_head=True``)."""
        return {}

    def model_line(self, n_params: int) -> str:
        """The ``model: ...`` line said once the model is built."""
        raise NotImplementedError

    def resumed(self, extra: dict) -> None:
        """The checkpoint's extra state (reward: ``best``); {} for a fresh run."""

    def bar_desc(self) -> str:
        raise NotImplementedError

    def no_eval_note(self) -> str | None:
        """Said once when there is no held-out item (None: nothing)."""
        return None

    # --- a step ---------------------------------------------------------------------------------
    def start_sums(self, step: int) -> None:
        """Allocate the device-side sums of the train record; ``step``: where this run starts."""
        raise NotImplementedError

    def micro_batches(self, indices: list[list[int]]) -> list[dict]:
        """This rank's micro-batches of the step from their item indices."""
        raise NotImplementedError

    def local_count(self, micro: list[dict]) -> torch.Tensor:
        """0-d fp32 on the device: what the loss is divided by, this rank's share (pairs / weighted
        tokens); summed over ranks with the stop flag in one all-reduce."""
        raise NotImplementedError

    def train_micro(self, batch: dict, n_global: torch.Tensor) -> None:
        """Forward, backward of Σ loss / ``n_global`` (× world: FSDP averages over ranks), sums."""
        raise NotImplementedError

    def train_record(self, step: int, lr: float, grad_norm: Any, dt: float) -> tuple[dict, dict]:
        """All-reduce the sums (the log point's host sync) into the ``split: train`` record, zero
        them. Returns ``(record, the progress bar's postfix)``; ``dt``: seconds since the last."""
        raise NotImplementedError

    def evaluate(self, step: int, final: bool) -> dict:
        """Held-out metrics at ``step``, logged by the recipe as ``{"split": "eval", "step": step,
        **metrics}`` (``final``: the end-of-run one); returns ``metrics``, exactly what it logged
        (a finished run run again reads them back: :meth:`evaluated_before`)."""
        raise NotImplementedError

    def evaluated_before(self, step: int, metrics: dict) -> None:
        """A finished run run again: its final evaluation, ``metrics``, is read back from
        metrics.jsonl instead of repeated; what :meth:`evaluate` does besides logging happens here
        (collective). Nothing by default."""

    def checkpoint_extra(self, step: int) -> dict:
        """The recipe's keys of the checkpoint's extra state, between ``step`` and ``n_items``."""
        return {}

    # --- the end --------------------------------------------------------------------------------
    def dry_run_report(self, pm: Any, micro: list[dict]) -> dict:
        """A dry run's end (:func:`trainer.memory.report`); ``micro``: the last step's."""
        raise NotImplementedError

    def save_final(self, step: int, metrics: dict) -> None:
        """``output_dir/final`` (collective)."""
        raise NotImplementedError

    def end_of_run(
        self, times: dict[str, float], tokens_per_s: float | None, peak_mb: float, metrics: dict
    ) -> None:
        """Rank 0 after the final save; by default the trackers get the last evaluation."""
        self.log.finish(metrics)


def run_supervised(recipe: SupervisedRecipe) -> dict:
    """Run ``recipe`` (called on every rank; ``recipe.cfg`` the config). Returns the last
    evaluation's metrics (a dry run: its measured peaks per phase, ``recipe.dry_run_report``).

    Per step, after the optimizer step, in this order: the stop flag (one host sync: every rank
    agrees), the train record (every ``log_every``, at ``end_step`` and when pre-empted), the
    evaluation (every ``eval_every`` before ``end_step``, not when pre-empted), the checkpoint
    (every ``checkpoint_every``, at ``end_step`` and when pre-empted), then ``Preempted`` (exit
    75). Chosen behaviour on SIGTERM at a step that is not a log point: the partial window's train
    record is written before the checkpoint (SFT's order; the reward trainer used to write none
    and drop those sums), so a resumed run's records cover every step.
    """
    cfg = recipe.cfg

    # 0. set-up: config check, SIGTERM, processes, threads, output directory; metrics + trackers
    run = recipe.run = start_run(cfg, recipe.NAME)
    di = run.di
    log = recipe.log = open_metrics(run)

    # 1. data and the schedule's length
    data = recipe.data = recipe.load_data()
    sch = recipe.schedule = Schedule.of(cfg, len(data.train), di.world_size, data.path, recipe.items_name())

    # 2. the memory check (the dry run's measured plan, or the estimate), before any model exists
    hf_config = recipe.hf_config = recipe.model_config()
    memory.check(run, recipe.NAME, recipe.estimate(), model_shape(hf_config))

    # 3. model (meta -> FSDP2 -> weights from rank 0), optimizer, LR schedule
    full = load_on_rank0(di, recipe.KIND, hf_config, cfg.init_from, cfg.seed, **recipe.load_kwargs())
    model = recipe.model = build_sharded(recipe.KIND, hf_config, full, di, cfg, train=True)
    run.say(recipe.model_line(sum(p.numel() for p in model.parameters())))
    optimizer = recipe.optimizer = build_optimizer(model, cfg.lr, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.warmup_steps, sch.total_steps, cfg.min_lr_ratio)
    )

    # 4. resume: model, optimizer, scheduler, RNG, data position (= the step); or seed the RNG
    ckpt = Checkpointer(run.out_dir / "checkpoints", cfg.keep_checkpoints, say=run.say)
    step, extra = resume_or_seed(run, ckpt, model, optimizer, scheduler, log, len(data.train))
    recipe.resumed(extra)
    ran_to_the_end = bool(extra) and step == sch.end_step  # a finished run run again (no training)
    pm = memory.track(cfg, run.say, [model], [optimizer])  # a dry run's tracker (None: a real run)
    phase = Phases(di.device, pm)

    # 5. the loop; its state, the evaluation at step 0
    model.train()
    bar = progress_bar(run, sch.end_step, step, recipe.bar_desc())
    recipe.start_sums(step)
    t_last, metrics = time.perf_counter(), {}
    times = {"train": 0.0, "eval": 0.0, "checkpoint": 0.0, "save": 0.0}  # seconds per phase
    t_loop = time.perf_counter()
    if not data.has_eval:
        note = recipe.no_eval_note()
        if note:
            run.say(note)
    elif step == 0 and cfg.eval_every:
        t0 = time.perf_counter()
        metrics = recipe.evaluate(step, final=False)
        times["eval"] += time.perf_counter() - t0
    while step < sch.end_step:
        micro = recipe.micro_batches(
            step_batches(step, len(data.train), sch.world_batch, cfg, di.rank, di.world_size)
        )
        # 5a. the step's global count and any rank's SIGTERM: one all-reduce, before the
        # micro-batches (on the device: NCCL needs it)
        stop = torch.tensor(float(STOP.requested), device=di.device)
        step_sums = all_reduce_sum(torch.stack([recipe.local_count(micro), stop]))
        with phase("train"):
            for k, batch in enumerate(micro):
                # reduce-scatter once per step (or after every micro-batch: grad_sync)
                model.set_requires_gradient_sync(k == len(micro) - 1 or cfg.grad_sync == "micro_batch")
                # 5b. forward, loss / global count, backward
                recipe.train_micro(batch, step_sums[0])
            # 5c. clip, step, schedule
            grad_norm, lr = optimizer_step(model, optimizer, scheduler, cfg.max_grad_norm)
        step += 1
        bar.update(1)
        # 5d. the stop flag (host sync, one per step: every rank agrees to stop), then log
        preempted = host_item(step_sums[1]) > 0
        if due(step, cfg.log_every) or step == sch.end_step or preempted:
            rec, postfix = recipe.train_record(step, lr, grad_norm, time.perf_counter() - t_last)
            log.write(rec)
            bar.set_postfix(**postfix)
            t_last = time.perf_counter()
        # 5e. evaluate (the last step's is the final one, below), checkpoint, pre-empt
        if data.has_eval and due(step, cfg.eval_every) and step < sch.end_step and not preempted:
            t0 = time.perf_counter()
            metrics = recipe.evaluate(step, final=False)
            times["eval"] += time.perf_counter() - t0
        if due(step, cfg.checkpoint_every) or step == sch.end_step or preempted:
            t0 = time.perf_counter()
            ckpt_extra = {
                "scheduler": scheduler.state_dict(),
                "step": step,
                **recipe.checkpoint_extra(step),
                "n_items": len(data.train),
                "world_size": di.world_size,
            }
            with phase("checkpoint"):
                ckpt.save(step, {"model": (model, optimizer)}, ckpt_extra)
            times["checkpoint"] += time.perf_counter() - t0
        if preempted:  # SIGTERM on some rank: the checkpoint above is written; exit 75
            bar.close()
            raise Preempted(run.out_dir, step)
    bar.close()
    log.hurry()  # the trackers' drain now overlaps the final evaluation, save and plots
    times["train"] = time.perf_counter() - t_loop - times["eval"] - times["checkpoint"]

    # 6a. the final evaluation; a finished run run again (resumed at its end, e.g. to catch the
    # trackers up) keeps the one it logged rather than logging a second (rank 0's file decides)
    t0 = time.perf_counter()
    logged = None
    if data.has_eval and ran_to_the_end:
        logged = broadcast_object(on_rank0(log.find, step, split="eval"))
    if logged is not None:
        metrics = {k: v for k, v in logged.items() if k not in ("split", "step")}
        run.say(f"the final evaluation (step {step}) is in metrics.jsonl already: not repeated")
        recipe.evaluated_before(step, metrics)
    elif data.has_eval:
        with phase("eval"):
            metrics = recipe.evaluate(step, final=True)
    times["eval"] += time.perf_counter() - t0
    # 6b. a dry run ends here: the per-phase memory table beside the estimate
    if pm is not None:
        pm.__exit__(None, None, None)
        log.close()
        return recipe.dry_run_report(pm, micro)
    # 6c. the final model as a plain transformers directory (not at a stop_after_steps point)
    t0 = time.perf_counter()
    if step >= sch.total_steps:
        recipe.save_final(step, metrics)
    times["save"] = time.perf_counter() - t0
    # 6d. the end of the run (rank 0; the trackers get the summary, then close)
    if di.is_main:
        tokens_per_s = recipe.tokens_trained / times["train"] if times["train"] > 0 else None
        recipe.end_of_run(times, tokens_per_s, peak_memory_mb(di.device), metrics)
    log.close()
    return metrics
