"""``fgrlhf eval``: a model's win rate against reference outputs, judged pairwise.

    fgrlhf eval outputs/ppo.json outputs/sft.json --judge claude:claude-sonnet-4-6 -o runs/eval/ppo_vs_sft
    fgrlhf eval outputs/ppo.json outputs/sft.json --judge rm:runs/reward/final -o runs/eval/rm --swap

Inputs are AlpacaEval-format outputs (``instruction``, optional ``input``, ``output``, optional
``generator`` and ``dataset``; a JSON list or JSONL — what ``fgrlhf generate`` writes), matched
by instruction (+ input). Duplicates, instructions only one side has, and records without a
string ``instruction``/``output`` stop the run with an error naming the file and record;
``--skip-invalid`` drops (and counts) them instead.

Position bias: each instruction is shown to the judge in one order, chosen at random from
``--seed`` and the instruction (so a subset or a rerun sees the same order), or with ``--swap``
in both orders, the instruction's preference being the mean of the two orders' (:func:`combine`:
a win in one order and a draw in the other is 1.75, not a draw), so a ``--swap`` win rate is the
mean of the two single-order win rates; each order's own counts are in the summary
(``by_order``).

Crash safety (the edit collector's: :class:`~trainer.infra.appendlog.AppendLog`): every verdict
is appended at once to ``OUT/judgments.jsonl``, keyed by a hash of the judge (name and
version), the instruction and the two texts in the order shown. A rerun judges only what is
missing, so nothing is paid twice and every comparison is judged once per order; a failed
request is not written (it is listed in ``OUT/judgments.errors.jsonl``; rerun to retry; exit 3).
Ctrl-C / SIGTERM keep what was written.

``OUT`` is checked before anything is paid for: it may not be an input, and ``fgrlhf eval``
writes, overwrites or deletes only its own four files there (:data:`OUTPUT_FILES`, recorded in
``OUT/.fgrlhf-owned.json``): a foreign file of one of those names (alpaca_eval writes an
``annotations.json`` too) is refused, never overwritten. A hand-edited ``judgments.jsonl`` whose
verdict is not 0/1/2 (or position not 1/2) is refused naming the line.

Outputs in ``OUT``: ``annotations.json`` — AlpacaEval's format, one per instruction:
``instruction``, ``output_1`` (the reference), ``output_2`` (the model), ``generator_1``,
``generator_2``, ``dataset``, ``preference`` (1 = the reference wins, 2 = the model wins,
0 = draw), ``annotator`` — which ``fgrlhf winrate`` reads; ``summary.json`` and a printed table:
win rate ± standard error, n_wins / n_wins_base / n_draws / n_total, average lengths, a
bootstrap 95% interval, the breakdown by ``dataset``, position statistics, judge tokens and cost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from trainer.data.formats import DataError, Prompt, prompt_parts, read_records, valid_records
from trainer.errors import Stopped
from trainer.eval.judges import Comparison, Judge, Verdict, make_judge
from trainer.eval.winrate import format_summary, summarize, winrate
from trainer.infra.appendlog import AppendLog
from trainer.infra.claude import ClaudeSettings, require_api_key
from trainer.infra.jobs import append_failure, now, run_jobs
from trainer.infra.outputs import OwnedFiles, check_output, write_json
from trainer.infra.trackers import TRACKERS, RunInfo, flat_numbers, report_once

log = logging.getLogger(__name__)

__all__ = ["EvalConfig", "Item", "bootstrap_interval", "load_outputs", "match_outputs", "run_eval"]

# What `fgrlhf eval` writes in OUT (and so may overwrite or delete there; nothing else).
OUTPUT_FILES = ("judgments.jsonl", "judgments.errors.jsonl", "annotations.json", "summary.json")
TRACKER_DIR = "trackers"  # with --report-to: the trackers' files and run state (trackers.json)
TABLE_ROWS = 100  # annotations sent to the trackers as a table (the first ones)


@dataclass
class EvalConfig(ClaudeSettings):
    """Settings of ``fgrlhf eval`` (its flags are derived from these fields), beside the Claude
    judge's client settings (:class:`~trainer.infra.claude.ClaudeSettings`)."""

    CHOICES: ClassVar[dict] = {"device": ("auto", "cuda", "cpu"), "report_to": TRACKERS}
    AT_LEAST: ClassVar[dict] = {
        "limit": 1, "bootstrap": 0, "rm_max_length": 2, "rm_batch_size": 1, "tie_tolerance": 0,
    }  # fmt: skip

    model_outputs: str
    """The model's outputs (AlpacaEval format: instruction, output, ...)."""
    reference_outputs: str
    """The reference's outputs, same instructions."""
    judge: str
    """``claude:<model>``, ``rm:<reward model dir>`` or ``gold:<synthetic world dir>``."""
    output_dir: str
    """Where judgments, annotations and the summary go (resumed when it exists)."""
    swap: bool = False
    """Judge both orders; disagreement is a draw (default: one random order)."""
    seed: int = 0
    """The random orders and the bootstrap."""
    skip_invalid: bool = False
    """Skip (and count) bad, duplicate and unmatched records instead of stopping."""
    limit: int | None = None
    """Only the first ``limit`` matched instructions (in the model file's order)."""
    bootstrap: int = 2000
    """Resamples of the 95% interval (0: none)."""
    max_tokens: int = field(default=1024, kw_only=True)
    """Claude's output budget per verdict."""
    prompt_file: str | None = None
    """A pairwise prompt ({instruction}, {output_1}, {output_2}) overriding the built-in ``pairwise-v1``."""
    rm_max_length: int = 1024
    """The reward-model judge: longest prompt + answer (tokens)."""
    rm_batch_size: int = 16
    """The reward-model judge: comparisons per forward."""
    tie_tolerance: float = 0.0
    """The reward-model and gold judges: closer rewards are a draw."""
    device: str = "auto"
    """The reward-model judge's device: ``auto`` (CUDA when available), ``cuda`` or ``cpu``."""
    progress: bool = True
    """A progress bar (on a terminal)."""
    fsync: bool = True
    """Fsync after every judgment."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers (``tensorboard``, ``wandb``, ``mlflow``) that also get the result (its
    numbers, an annotations table, the summary files; their own files in ``OUT/trackers``)."""


@dataclass(frozen=True)
class Output:
    """One answer of an outputs file."""

    prompt: Prompt
    output: str
    generator: str | None
    dataset: str | None
    where: str
    finished: bool | None = None  # ended with EOS (fgrlhf generate's field); None: not recorded


@dataclass(frozen=True)
class Item:
    """One instruction with both answers."""

    key: str
    model: Output
    reference: Output


def _key(p: Prompt) -> str:
    return hashlib.sha256(json.dumps([p.instruction, p.input]).encode("utf-8")).hexdigest()[:20]


def load_outputs(path: str, skip_invalid: bool = False) -> tuple[dict[str, Output], list[DataError]]:
    """The answers of ``path`` by instruction key (insertion order = the file's order).

    Raises:
        DataError: an unreadable file, or (without ``skip_invalid``) a record without a string
            ``instruction``/``prompt`` or ``output``, a non-string ``generator``/``dataset``, or an
            instruction that appears twice (both records named).
    """
    out: dict[str, Output] = {}
    bad: list[DataError] = []

    def output(where: str, rec: Any) -> tuple[str, Output]:
        prompt = prompt_parts(rec, path, where)
        if not isinstance(rec.get("output"), str):
            got = "missing" if rec.get("output") is None else f"not a string ({type(rec['output']).__name__})"
            raise DataError(path, got, where, "output")
        for k in ("generator", "dataset"):
            if rec.get(k) is not None and not isinstance(rec[k], str):
                raise DataError(path, f"expected a string, got {type(rec[k]).__name__}", where, k)
        if rec.get("finished") is not None and not isinstance(rec["finished"], bool):
            raise DataError(path, f"expected true or false, got {rec['finished']!r}", where, "finished")
        key = _key(prompt)
        if key in out:  # out holds every record before this one (valid_records is lazy)
            raise DataError(
                path, f"duplicate instruction (first at {out[key].where}): {prompt.text[:60]!r}", where
            )
        return key, Output(
            prompt, rec["output"], rec.get("generator"), rec.get("dataset"), where, rec.get("finished")
        )

    for _, (key, answer) in valid_records(read_records(path), output, skip_invalid, bad.append):
        out[key] = answer
    if not out:
        raise DataError(path, "no outputs" + (f" ({len(bad)} invalid skipped)" if bad else ""))
    return out, bad


def match_outputs(
    model: dict[str, Output], reference: dict[str, Output], cfg: EvalConfig
) -> tuple[list[Item], int]:
    """The instructions both files answer, in the model file's order, and how many were unmatched.

    Raises:
        DataError: (without ``skip_invalid``) an instruction only one side has (names the first
            one and counts them all).
    """
    only_model = [k for k in model if k not in reference]
    only_ref = [k for k in reference if k not in model]
    if (only_model or only_ref) and not cfg.skip_invalid:
        src, k, other = (
            (cfg.model_outputs, only_model[0], cfg.reference_outputs)
            if only_model
            else (cfg.reference_outputs, only_ref[0], cfg.model_outputs)
        )
        rec = (model if only_model else reference)[k]
        raise DataError(
            src,
            f"instruction {rec.prompt.text[:60]!r} has no answer in {other} ({len(only_model)} model and "
            f"{len(only_ref)} reference instructions are unmatched; --skip-invalid compares the common ones)",
            rec.where,
        )
    items = [Item(k, model[k], reference[k]) for k in model if k in reference]
    return items, len(only_model) + len(only_ref)


def model_first(seed: int, key: str) -> bool:
    """The random order of one instruction: a function of ``seed`` and the instruction only."""
    return random.Random(f"{seed}:{key}").random() < 0.5


@dataclass(frozen=True)
class Task:
    """One comparison to judge: ``item`` shown with the model's answer at ``model_position``."""

    item: Item
    model_position: int  # 1 or 2

    @property
    def comparison(self) -> Comparison:
        m, r = self.item.model, self.item.reference
        a, b = (m, r) if self.model_position == 1 else (r, m)
        return Comparison(self.item.model.prompt, a.output, b.output, a.finished, b.finished)

    def id(self, judge: Judge) -> str:
        """The judgment's identity: judge, its version, the instruction, the texts as shown and
        which side is the model's (two equal answers are still two orders)."""
        c = self.comparison
        p = c.prompt
        parts = [judge.name, judge.version, p.instruction, p.input, c.output_1, c.output_2]
        parts.append(self.model_position)
        if judge.uses_finished:  # the same texts, one of them cut at the cap, are another comparison
            parts += [c.finished_1, c.finished_2]
        blob = json.dumps(parts)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def model_preference(shown: int, model_position: int) -> int:
    """A verdict about the order shown (1 / 2 / 0) as AlpacaEval's preference of the model:
    2 = the model wins, 1 = the reference wins, 0 = draw."""
    if shown == 0:
        return 0
    return 2 if shown == model_position else 1


def combine(prefs: Sequence[int]) -> float:
    """Model preferences of the orders judged into one: the mean of their scores s (win 1,
    draw ½, loss 0) as a preference 1 + mean(s) — so the win rate of ``--swap`` is the mean of the
    two orders' win rates, comparable with single-order numbers (AlpacaEval 2 writes such
    continuous preferences). A draw (1.5) is written 0, AlpacaEval 1's draw; agreeing orders
    keep their value.

    By hand: [2, 2] -> 2; [2, 1] -> 1.5 = draw -> 0; [2, 0] -> 1 + (1 + ½)/2 = 1.75 (it used to be
    a draw, pulling win rates toward 50%); [1, 0] -> 1.25.
    """
    if all(p == prefs[0] for p in prefs):
        return prefs[0]
    mean = sum(0.5 if p == 0 else p - 1.0 for p in prefs) / len(prefs)
    return 0 if mean == 0.5 else 1.0 + mean


def bootstrap_interval(preferences: Sequence[float], reps: int, seed: int) -> tuple[float, float] | None:
    """The percentile bootstrap 95% interval of the win rate (percent) over instructions:
    ``reps`` resamples with replacement of s = preference − 1 (a draw, 0, is s = ½)."""
    import numpy as np  # lazy: numpy (heavy for the torch-free fgrlhf)

    s = np.array([0.5 if p == 0 else p - 1.0 for p in preferences], dtype=np.float64)
    if reps <= 0 or len(s) == 0:
        return None
    rng = np.random.default_rng(seed)
    means = s[rng.integers(0, len(s), size=(reps, len(s)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return 100 * float(lo), 100 * float(hi)


class JudgmentLog(AppendLog):
    """``OUT/judgments.jsonl``: one verdict per (comparison, order)."""

    REQUIRED = ("id", "preference", "model_position")
    KIND = "judgment"
    TOOL = "fgrlhf eval"

    def check(self, record: dict) -> str | None:
        """A verdict is 0, 1 or 2 about the order shown, and the model was shown at 1 or 2
        (a hand-edited 7 used to count as a reference win)."""
        for key, allowed in (("preference", (0, 1, 2)), ("model_position", (1, 2))):
            v = record[key]
            if isinstance(v, bool) or not isinstance(v, int) or v not in allowed:
                return f"{key} {v!r} is not one of {', '.join(map(str, allowed))}"
        return None


@dataclass
class EvalSummary:
    """What a run did (the counts), beside the win-rate summary."""

    instructions: int = 0
    invalid: int = 0
    unmatched: int = 0
    comparisons: int = 0
    already_judged: int = 0
    judged: int = 0
    failed: int = 0
    interrupted: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    errors: list[str] = field(default_factory=list)


def run_eval(cfg: EvalConfig, judge: Judge | None = None) -> dict[str, Any]:
    """Judge every missing comparison, then write the annotations and the summary.

    Args:
        cfg: the settings.
        judge: the judge to use (default: :func:`make_judge` of ``cfg.judge``).

    Returns:
        The summary (also ``OUT/summary.json``); ``complete`` is False when some comparisons
        failed (rerun to retry them) or the run was interrupted.

    Raises:
        DataError: bad, duplicate or unmatched records (see the module docstring).
        ValueError: an unknown judge.
        trainer.errors.JobFailed: the Claude judge without ``ANTHROPIC_API_KEY``, or the output
            locked.
        trainer.errors.Stopped / KeyboardInterrupt: SIGTERM / Ctrl-C (after what was judged is
            written; the comparisons in flight are asked again by a rerun).
    """
    inputs = (cfg.model_outputs, cfg.reference_outputs, cfg.prompt_file)
    out_dir = check_output(cfg.output_dir, "-o", inputs, directory=True)
    # 1. the inputs, matched by instruction
    model, bad_m = load_outputs(cfg.model_outputs, cfg.skip_invalid)
    ref, bad_r = load_outputs(cfg.reference_outputs, cfg.skip_invalid)
    for e in (bad_m + bad_r)[:20]:
        log.warning("skipped: %s", e)
    items, unmatched = match_outputs(model, ref, cfg)
    if not items:
        raise DataError(cfg.model_outputs, f"no instruction in common with {cfg.reference_outputs}")
    items = items[: cfg.limit] if cfg.limit is not None else items
    run = EvalSummary(instructions=len(items), invalid=len(bad_m) + len(bad_r), unmatched=unmatched)
    # the files this command writes in OUT, claimed before anything is paid for: a file of the
    # same name that an earlier `fgrlhf eval` did not write (alpaca_eval's annotations.json) is
    # refused, never overwritten or deleted (a directory with our judgments.jsonl from before the
    # record existed is ours: JudgmentLog refuses a judgments.jsonl that is not)
    owned = OwnedFiles(out_dir, "fgrlhf eval", "-o", adopt=(out_dir / "judgments.jsonl").is_file())
    owned.claim(*OUTPUT_FILES, *((TRACKER_DIR,) if cfg.report_to else ()))
    # 2. the judge and the comparisons (one or both orders per instruction)
    if judge is None:
        if cfg.judge.startswith("claude:"):
            require_api_key()
        judge = make_judge(
            cfg.judge,
            settings=cfg,
            prompt_file=cfg.prompt_file,
            max_length=cfg.rm_max_length,
            batch_size=cfg.rm_batch_size,
            tie_tolerance=cfg.tie_tolerance,
            device=cfg.device,
        )
    tasks = [
        Task(it, pos)
        for it in items
        for pos in ((1, 2) if cfg.swap else ((1,) if model_first(cfg.seed, it.key) else (2,)))
    ]
    run.comparisons = len(tasks)
    # 3. judge what is missing, appending each verdict at once
    judgments = JudgmentLog(out_dir / "judgments.jsonl", fsync=cfg.fsync)
    errors_path = out_dir / "judgments.errors.jsonl"
    try:
        todo = [t for t in tasks if t.id(judge) not in judgments.records]
        run.already_judged = len(tasks) - len(todo)
        try:
            _judge_all(todo, judge, judgments, errors_path, cfg, run)
        except (KeyboardInterrupt, Stopped):  # Ctrl-C / SIGTERM: what was judged is written
            run.interrupted = True
            print(
                f"interrupted: {run.judged} judged in this run and written; rerun the same command to go on"
            )
            raise
        records = dict(judgments.records)
    finally:
        judgments.close()
    if run.failed == 0:
        errors_path.unlink(missing_ok=True)
    # 4. annotations (one per instruction whose every order is judged) and the summary
    annotations, used = _annotations(items, tasks, records, judge)
    summary = _summary(annotations, used, items, judge, run, cfg)
    write_json(out_dir / "annotations.json", annotations)
    write_json(out_dir / "summary.json", summary)
    if cfg.report_to:
        report_result(cfg, summary, annotations, out_dir)
    return summary


def report_result(cfg: EvalConfig, summary: dict[str, Any], annotations: list[dict], out_dir: Path) -> None:
    """``--report-to``: the result as one tracker run (named after ``OUT``; files and state in
    ``OUT/trackers``, so a rerun continues it): every number of the summary at step = the
    instructions with a verdict, the config, the first :data:`TABLE_ROWS` annotations as a table
    (texts cut at 2,000 characters), the printed summary as text, ``summary.json`` and
    ``annotations.json`` as files. A tracker that fails is a warning."""
    tracker_dir = out_dir / TRACKER_DIR
    tracker_dir.mkdir(exist_ok=True)
    info = RunInfo(
        trainer="eval",
        out_dir=tracker_dir,
        config=asdict(cfg),
        resuming=(tracker_dir / "trackers.json").exists(),
        name=out_dir.resolve().name,
    )
    record = {"step": len(annotations), **flat_numbers({k: v for k, v in summary.items() if k != "config"})}
    rows = [
        {
            "instruction": a["instruction"][:2000],
            "reference (output_1)": a["output_1"][:2000],
            "model (output_2)": a["output_2"][:2000],
            "preference": a["preference"],
        }
        for a in annotations[:TABLE_ROWS]
    ]
    files = [out_dir / "summary.json", out_dir / "annotations.json"]
    say = lambda msg: log.warning("%s", msg) if msg.startswith("warning") else print(msg)  # noqa: E731
    report_once(cfg.report_to, info, record, say, {"annotations": rows}, format_eval_summary(summary), files)


def _judge_all(
    todo: list[Task],
    judge: Judge,
    judgments: JudgmentLog,
    errors_path: Path,
    cfg: EvalConfig,
    run: EvalSummary,
) -> None:
    """Judge ``todo``, ``judge.batch_size`` comparisons per request and ``judge.concurrency``
    requests in flight (:func:`~trainer.infra.jobs.run_jobs`); each verdict is appended as it
    arrives, a failure listed in ``errors_path``."""

    async def compare(batch: list[Task]) -> Sequence[Verdict]:
        return await judge.compare_batch([t.comparison for t in batch])

    def finish(task: Task, v: Verdict) -> None:
        run.input_tokens += v.input_tokens
        run.output_tokens += v.output_tokens
        if v.error is not None or v.preference is None:
            run.failed += 1
            run.errors.append(v.error or "no verdict")
            log.warning("instruction %r failed: %s", task.item.model.prompt.text[:40], v.error)
            rec = {"instruction": task.item.model.prompt.text, "model_position": task.model_position}
            append_failure(errors_path, {**rec, "error": v.error})
            return
        c = task.comparison
        judgments.append(
            {
                "id": task.id(judge),
                "instruction": c.prompt.instruction,
                **({"input": c.prompt.input} if c.prompt.input.strip() else {}),
                "output_1": c.output_1,
                "output_2": c.output_2,
                "model_position": task.model_position,
                "preference": v.preference,  # about the order shown
                "judge": judge.name,
                "judge_version": judge.version,
                "judge_model": v.model,
                "raw": v.raw,
                "usage": {"input_tokens": v.input_tokens, "output_tokens": v.output_tokens},
                "created_at": now(),
            }
        )
        run.judged += 1

    run_jobs(
        todo, compare, finish, concurrency=judge.concurrency, batch_size=judge.batch_size,
        desc="judging", unit="comparison", progress=cfg.progress, close=judge.aclose,
    )  # fmt: skip


def _annotations(
    items: list[Item], tasks: list[Task], records: dict[str, dict], judge: Judge
) -> tuple[list[dict], list[dict]]:
    """One AlpacaEval annotation per instruction whose every order has a verdict, and the
    judgment records they use."""
    by_item: dict[str, list[Task]] = {}
    for t in tasks:
        by_item.setdefault(t.item.key, []).append(t)
    out, used = [], []
    for it in items:
        recs = [records.get(t.id(judge)) for t in by_item[it.key]]
        if any(r is None for r in recs):
            continue
        used += recs
        prefs = [model_preference(int(r["preference"]), int(r["model_position"])) for r in recs]
        p = it.model.prompt
        out.append(
            {
                "instruction": p.instruction,
                **({"input": p.input} if p.input.strip() else {}),
                "output_1": it.reference.output,
                "output_2": it.model.output,
                "generator_1": it.reference.generator or "reference",
                "generator_2": it.model.generator or "model",
                "dataset": it.model.dataset if it.model.dataset is not None else it.reference.dataset,
                "preference": combine(prefs),
                "preference_by_order": {
                    ("model_first" if r["model_position"] == 1 else "reference_first"): q
                    for r, q in zip(recs, prefs)
                },
                "annotator": judge.name,
                "annotator_version": judge.version,
            }
        )
    return out, used


def _summary(
    annotations: list[dict],
    used: list[dict],
    items: list[Item],
    judge: Judge,
    run: EvalSummary,
    cfg: EvalConfig,
) -> dict[str, Any]:
    s: dict[str, Any] = (
        summarize(annotations)
        if annotations
        else {"win_rate": float("nan"), "n_total": 0, "standard_error": float("nan")}
    )
    if annotations:
        ref_len = [len(a["output_1"]) for a in annotations]
        s["avg_length_reference"] = int(sum(ref_len) / len(ref_len))
    s["ci95_bootstrap"] = bootstrap_interval([a["preference"] for a in annotations], cfg.bootstrap, cfg.seed)
    # position: how often the judge picked the answer shown first, and (swap) order agreement
    decided = [int(r["preference"]) for r in used if int(r["preference"]) != 0]
    s["first_position_rate"] = sum(p == 1 for p in decided) / len(decided) if decided else None
    if cfg.swap and annotations:
        agree = [len(set(a["preference_by_order"].values())) == 1 for a in annotations]
        s["order_agreement"] = sum(agree) / len(agree)
        s["by_order"] = {  # each order's raw verdicts, as its own leaderboard row
            order: {k: v for k, v in winrate([a["preference_by_order"][order] for a in annotations]).items()}
            for order in ("model_first", "reference_first")
        }
    tok_in = sum(int(r.get("usage", {}).get("input_tokens", 0)) for r in used)
    tok_out = sum(int(r.get("usage", {}).get("output_tokens", 0)) for r in used)
    s.update(
        judge=judge.name,
        judge_version=judge.version,
        order="swap" if cfg.swap else f"random (seed {cfg.seed})",
        judge_tokens={"input": tok_in, "output": tok_out},
        judge_cost_usd=judge.cost_usd(tok_in, tok_out),
        this_run={
            "judged": run.judged,
            "already_judged": run.already_judged,
            "failed": run.failed,
            "input_tokens": run.input_tokens,
            "output_tokens": run.output_tokens,
            "cost_usd": judge.cost_usd(run.input_tokens, run.output_tokens),
        },
        instructions=len(items),
        comparisons=run.comparisons,
        pending=len(items) - len(annotations),
        invalid=run.invalid,
        unmatched=run.unmatched,
        complete=len(annotations) == len(items) and not run.interrupted,
        config={k: v for k, v in asdict(cfg).items()},
    )
    return s


def format_eval_summary(s: dict[str, Any]) -> str:
    """The printed table."""
    lines = []
    if s.get("n_total"):
        lines.append(format_summary(s))
        ci = s.get("ci95_bootstrap")
        if ci:
            lines.append(f"bootstrap 95% interval [{ci[0]:.2f}, {ci[1]:.2f}]")
        lines.append(f"average length of the reference's outputs {s.get('avg_length_reference')} characters")
    lines.append(f"judge {s['judge']} ({s['judge_version']}), order {s['order']}")
    pos = s.get("first_position_rate")
    if pos is not None:
        agree = (
            f", the two orders agree on {100 * s['order_agreement']:.1f}%" if "order_agreement" in s else ""
        )
        lines.append(f"position: the answer shown first won {100 * pos:.1f}% of decided verdicts{agree}")
    cost = s["judge_cost_usd"]
    run = s["this_run"]
    lines.append(
        f"judge tokens in {s['judge_tokens']['input']}, out {s['judge_tokens']['output']}; "
        f"estimated cost {'unknown (no price for this model)' if cost is None else f'${cost:.4f}'} "
        f"(this run: {run['judged']} judged, {run['already_judged']} reused, {run['failed']} failed)"
    )
    skipped = s["invalid"] + s["unmatched"]
    if skipped:
        lines.append(f"skipped {s['invalid']} invalid records and {s['unmatched']} unmatched instructions")
    if not s["complete"]:
        lines.append(
            f"INCOMPLETE: {s['pending']} of {s['instructions']} instructions lack a verdict "
            "(rerun the same command to retry them)"
        )
    return "\n".join(lines)
