"""``fgrlhf demo``: the paper's three tables in the simulated-preference world, on a CPU.

AlpacaFarm's idea (simulate the annotators, so a method can be studied cheaply) at a size that
runs on 2 CPU cores. Every stage is the real code path: ``trainer/sft.py``, ``trainer/reward.py``,
``trainer/ppo.py``, ``fgrlhf generate`` and ``fgrlhf eval`` with the world's gold judge, with
the fused kernels. Per seed (each seed is its own world, ``trainer/data/synthetic.py``; seeds
``--first-seed`` … ``--first-seed + --seeds − 1``, world seed 1000 + seed):

1. **world** — vocabulary, prompts (disjoint sets: SFT, preference pairs, held-out pairs, eval),
   the gold utility, the SFT data (the world's base responses).
2. **sft** — a tiny LLaMA learns the base responses (``trainer/sft.py``).
3. **samples** — two samples of the SFT model per prompt (``fgrlhf generate``, temperature 1):
   the preference pairs, and fresh held-out pairs for Table 2.
4. **labels** — for every annotator-noise level of the sweep: Bradley–Terry annotators choose,
   the simulated editor edits the less-preferred response (the same samples, and the same
   uniforms, at every level). The level is AlpacaFarm's measure by default: the expected
   **inter-annotator agreement** (a held-out annotator against the mode of three others; 65.7%
   for AlpacaFarm's humans), the Bradley–Terry scale solved for it over the labelled pairs
   (gold ties count, at 0.5); ``--agreement-kind gold`` gives agreement with the gold order
   instead. Level 1.0 is "noise-free" (the gold order; with gold ties its inter-annotator
   agreement is 1 − ties/2, reported).
5. **rm** — per level, the three reward models of the paper's arms: sequence-level on the
   original pairs (PPO-RLHF), sequence-level on the edited pairs (fine-grained PPO), token-level
   on the edited pairs; each early-stopped on held-out pairs of its own kind (its ``best/``),
   then scored on the fresh held-out pairs by the gold order (**Table 2**, with each level's
   agreement with gold computed from the solved scale).
6. **ppo** — at the default level, the arms (:data:`ARMS`) from the SFT model with the same PPO
   budget and the same critic initialisation (:data:`CRITIC_FROM`): ``ppo_rlhf`` (sequence reward,
   KL penalty), ``fg_ppo`` (sequence reward of the edited-pairs RM, KL penalty),
   ``fg_token_ppo_raw`` (the paper's token rewards as written, [R_1 … R_n] =
   ``token_reward_scale=raw``, no KL term), ``fg_token_ppo_rmean`` (trainer/ppo.py's default
   running-mean increments, β = 0) and ``fg_token_ppo_rmean_kl`` (running-mean increments with the
   same β as the sequence arms).
7. **figa** — FIGA on the edited pairs from the SFT model (``trainer/sft.py objective=figa``).
8. **eval** — every policy answers the eval prompts; the gold judge compares each with the SFT
   model's answers (**Table 1**: win rate; plus the gold reward, length, finished fraction and KL
   they reach; the gold judge makes an empty answer or one cut at the cap lose to a complete one).
   **Table 3**: the gold reward per PPO iteration of each arm, and the iterations and seconds
   each needs to reach a target: ``target_fraction`` (0.8) of the way from the SFT start to
   PPO-RLHF's final gold reward (the mean of its last 5 iterations, per seed), on a 3-iteration
   running mean of each curve — set only in a seed where PPO-RLHF's improvement clears that
   seed's noise (:func:`table3_of`); every cell says how many seeds it uses.

9. **matched KL** (``--matched-kl``, 4 nats by default; ``0`` turns it off, ``--quick`` has it
   off) — every reward variant again with trainer/ppo.py's adaptive KL controller at one common
   target (**Table 4**: "the same β" of Table 1 is not "the same KL").

Opt-in (it would take the default run past 20 minutes): ``--editor-recalls 1 0.7 0.4`` — the
edited-pair RMs, arms and FIGA again at each editor recall (**Tables 5 and 6**: where do edited
pairs stop paying? About 3 more minutes per seed and extra recall on 2 cores). The sweeps' stages
are named by their values, so they may be added to (or dropped from) a finished ``--out``: only
the new stages run.

Outputs under ``out`` (``runs/demo``): ``demo.json`` (every number, per seed and aggregated),
``demo.md`` (the tables, mean ± standard error over seeds), ``plots/*.png``, each stage's log
under ``logs/``, and each run's own outputs (the token-level arm's ``report.html`` shows its
per-token rewards). A rerun resumes: finished stages are skipped (``stages/*.json``), an
interrupted trainer resumes from its checkpoint; ``--seeds`` may grow between runs and the sweeps
(``--matched-kl``, ``--editor-recalls``) may change, the other settings may not (a changed setting
is refused: use another ``--out``). The paths that ``stages/*.json`` and ``demo.json`` record are
relative to ``--out``, so a finished or stopped demo directory may move (``mv runs/demo
runs/demo1; fgrlhf demo --out runs/demo1`` resumes it); a trainer stopped in the middle of its run
resumes only where it started (its checkpoint's config names its old paths). A run estimated to
take more than a day (from the stage timings already in ``--out``, else from this machine's
measured defaults) is refused with its estimate unless ``--yes``.

Exit status: 0 done; 1 a stage failed (its log is named); 2 a bad flag, a run longer than a day
without ``--yes``, or ``--out`` holds a demo with other settings; 75 SIGTERM during a trainer
stage (it saved a checkpoint first) or anywhere else (the demo stops at once); 130 Ctrl-C. After
75 or 130 the finished stages are kept and the same command resumes.

    fgrlhf demo                 # 3 seeds, inter-annotator levels 0.55 / 0.657 / 0.75 / noise-free
    fgrlhf demo --quick         # 1 seed, 2 levels, shorter runs, no Table 4 (what CI runs)
    fgrlhf demo --first-seed 3  # the whole study again on 3 fresh worlds (seeds 3, 4, 5)
    fgrlhf demo --editor-recalls 1 0.7 0.4    # + Tables 5 and 6 (opt-in)
    fgrlhf demo --seeds 5 --context-harm --out runs/demo_context
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import trainer.eval.generate as generate_mod
import trainer.eval.pairwise as pairwise_mod
import trainer.eval.rm_accuracy as rm_accuracy_mod
from trainer.data.synthetic import (
    AGREEMENT_KINDS,
    SyntheticConfig,
    annotator_scale,
    base_response,
    check_world,
    expected_gold_agreement,
    expected_inter_annotator_agreement,
    gold_reward,
    label_pairs,
    load_world,
    sample_prompt,
    write_synthetic,
)
from trainer.errors import EXIT_PREEMPTED, Preempted, Stopped
from trainer.eval.generate import GenerateConfig
from trainer.eval.pairwise import EvalConfig
from trainer.infra.config import load_config
from trainer.infra.metrics import read_log
from trainer.infra.outputs import write_atomic
from trainer.infra.trackers import RunInfo, add_report_to, flat_numbers, report_once

__all__ = ["ARMS", "DemoConfig", "aggregate", "estimate", "plan", "run_demo", "steps_to_target", "table3_of"]


class Arm(NamedTuple):
    """One PPO arm of the study."""

    name: str
    """Its stage and directory name."""
    label: str
    """What it is, in the tables (its β is added: :func:`arm_label`)."""
    rm: str
    """The reward model it optimises (a key of :data:`RMS`)."""
    level: str
    """trainer/ppo.py ``reward_level``."""
    kl: bool
    """The KL penalty on (β = ``kl_coef``, or the adaptive controller) or off (β = 0)."""
    token_reward_scale: str | None = None
    """trainer/ppo.py ``token_reward_scale`` at the token level (always passed, never defaulted)."""


ARMS: tuple[Arm, ...] = (
    Arm("ppo_rlhf", "PPO-RLHF (sequence RM, original pairs)", "seq_original", "sequence", True),
    Arm("fg_ppo", "fine-grained PPO (sequence RM, edited pairs)", "seq_edited", "sequence", True),
    Arm(
        "fg_token_ppo_raw",
        "fine-grained token-level PPO as the paper writes it (token RM, [R_1 … R_n] raw)",
        "token",
        "token",
        False,
        "raw",
    ),
    Arm(
        "fg_token_ppo_rmean",
        "token-level PPO, running-mean increments",
        "token",
        "token",
        False,
        "running_mean",
    ),
    Arm(
        "fg_token_ppo_rmean_kl",
        "token-level PPO, running-mean increments",
        "token",
        "token",
        True,
        "running_mean",
    ),
)
# Table 4 (--matched-kl): every reward variant once, each with the adaptive KL controller
MATCHED_KL_ARMS = ("ppo_rlhf", "fg_ppo", "fg_token_ppo_raw", "fg_token_ppo_rmean")
# Tables 5 and 6 (--editor-recalls): what depends on the edits
EDITED_ARMS = tuple(a.name for a in ARMS if a.rm != "seq_original")
EDITED_RMS = ("seq_edited", "token")
CRITIC_FROM = "actor"
"""Every PPO arm's critic: the SFT actor's backbone with a fresh value head (trainer/ppo.py
``critic_from=actor``). One initialisation for every arm, so that no arm's result comes from its
critic: ``critic_from=auto`` would give the sequence arms their reward model and the token arms
the actor, and a token RM's head predicts one token's reward, not a return (explained variance
−2.5 at the start, ``bench/token_reward_scale.py``), so "every arm from its own RM" (AlpacaFarm's
choice) would hand the token arms a worse critic; the SFT model is the one start every arm shares."""
# The reward models: kind -> (label, trainer/reward.py keys).
RMS: dict[str, tuple[str, list[str]]] = {
    "seq_original": ("sequence RM, original pairs", ["rm_level=sequence", "seq_pairs=original"]),
    "seq_edited": ("sequence RM, edited pairs", ["rm_level=sequence", "seq_pairs=edited"]),
    "token": ("token RM, edited pairs", ["rm_level=token"]),
}
# The non-PPO rows of Table 1.
OTHER_POLICIES = (("sft", "SFT model (reference; another sample)"), ("figa", "FIGA (edited pairs)"))


def arm_label(arm: Arm, beta: float, matched_kl: float = 0.0) -> str:
    """The arm's label with its KL setting: ``β = 0.05`` / ``β = 0`` / ``adaptive β, KL target 4``."""
    if matched_kl:
        return f"{arm.label}, adaptive β → KL {matched_kl:g} nats"
    return f"{arm.label}, β = {beta:g}" if arm.kl else f"{arm.label}, β = 0"


@dataclass
class DemoConfig:
    """The study's settings (every one a flag of ``fgrlhf demo``)."""

    out: str = "runs/demo"
    """Output directory (a rerun resumes it)."""
    seeds: int = 3
    """Seeds; seed ``s`` is its own world (``SyntheticConfig.seed`` 1000 + s) and training seed."""
    first_seed: int = 0
    """The first seed: the study runs seeds ``first_seed`` … ``first_seed + seeds − 1`` (another
    value reruns the whole study on fresh worlds)."""
    agreement_kind: str = "inter_annotator"
    """What the annotator levels measure (``SyntheticConfig.agreement_kind``): ``inter_annotator``
    (a held-out annotator against the mode of three others, AlpacaFarm's measure) or ``gold``
    (agreement with the gold order)."""
    agreements: list[float] = field(default_factory=lambda: [0.55, 0.657, 0.75, 1.0])
    """Table 2's annotator levels (a reward model of each kind is trained at each; 1.0: noise-free)."""
    agreement: float = 0.657
    """The level of the PPO arms' and FIGA's data (one of ``agreements``; AlpacaFarm's 65.7%)."""
    editor_recall: float = 1.0
    """Probability that the simulated editor fixes each harmful word (the main tables)."""
    editor_recalls: list[float] = field(default_factory=list)
    """Opt-in (Tables 5 and 6; about 3 min per seed and extra recall): the edited-pair RMs, arms
    and FIGA again at each of these recalls (at ``agreement``; ``editor_recall`` itself reuses
    the main runs)."""
    matched_kl: float = 4.0
    """Table 4: every reward variant again with the adaptive KL controller at this target (nats
    per sequence; below where the fixed-β arms end, 5.3–5.9, so that every arm is held to it);
    0: off (``--quick``'s default)."""
    context_harm: bool = False
    """The context-dependent variant of the world (``c*`` words)."""
    world: dict[str, Any] = field(default_factory=dict)
    """Any other knob of :class:`trainer.data.synthetic.SyntheticConfig` (``--world p_bad=0.2``)."""
    n_sft: int = 1000
    """SFT examples (prompt + base response)."""
    n_pairs: int = 800
    """Prompts whose two SFT samples become the preference pairs."""
    n_heldout: int = 300
    """Fresh held-out pairs of Table 2."""
    n_eval: int = 200
    """Eval prompts of Table 1."""
    max_new_tokens: int = 32
    """Longest sampled answer (pairs, PPO rollouts, evaluation): 1.6× the world's longest."""
    sft_epochs: float = 4.0
    """SFT epochs over the base responses."""
    rm_epochs: float = 5.0
    """Reward-model epochs (the best held-out checkpoint is kept: early stopping by selection)."""
    ppo_iterations: int = 40
    """PPO iterations per arm (the same budget for every arm)."""
    ppo_rollouts: int = 32
    """Rollouts per PPO iteration."""
    kl_coef: float = 0.05
    """β of the arms with a KL penalty (trainer/ppo.py's default; the adaptive controller's start)."""
    target_fraction: float = 0.8
    """Table 3's target: this fraction of the way from the SFT start to PPO-RLHF's final gold
    reward (analysis only: it may change between runs)."""
    quick: bool = False
    """Started with ``--quick`` (its smaller sizes: :data:`QUICK`)."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers (``tensorboard``, ``wandb``, ``mlflow``) that also get every trainer
    stage's run (named ``<out>/<stage's directory>``) and, at the end, the tables (the run
    ``<out>/tables``); see :func:`tracker_env` for where. Stages finished before are not re-sent."""

    @property
    def seed_list(self) -> list[int]:
        """The seeds of the study: ``first_seed`` … ``first_seed + seeds − 1``."""
        return list(range(self.first_seed, self.first_seed + self.seeds))

    @property
    def extra_recalls(self) -> list[float]:
        """The editor recalls of Tables 5 and 6 that need runs of their own (not ``editor_recall``)."""
        return [r for r in dict.fromkeys(self.editor_recalls) if r != self.editor_recall]

    def check(self) -> None:
        """Refuse impossible settings, naming the flag."""
        if self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")
        if self.first_seed < 0:
            raise ValueError(f"--first-seed must be >= 0, got {self.first_seed}")
        if self.agreement_kind not in AGREEMENT_KINDS:
            raise ValueError(
                f"--agreement-kind must be one of {list(AGREEMENT_KINDS)}, got {self.agreement_kind!r}"
            )
        if not self.agreements or any(not 0.5 <= a <= 1 for a in self.agreements):
            raise ValueError(f"--agreements must be values in [0.5, 1], got {self.agreements}")
        if self.agreement not in self.agreements:
            raise ValueError(f"--agreement {self.agreement} must be one of --agreements {self.agreements}")
        if not 0 < self.target_fraction <= 1:
            raise ValueError(f"--target-fraction must be in (0, 1], got {self.target_fraction}")
        for key in ("n_sft", "n_pairs", "n_heldout", "n_eval", "ppo_iterations", "max_new_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        for r in (self.editor_recall, *self.editor_recalls):
            if not 0 <= r <= 1:
                raise ValueError(f"--editor-recall(s) must be in [0, 1], got {r}")
        if not (self.matched_kl == 0 or 0 < self.matched_kl < math.inf):
            raise ValueError(f"--matched-kl must be a KL target > 0 in nats (0: off), got {self.matched_kl}")
        fixed = {"n_pairs", "seed", "agreement", "agreement_kind", "editor_recall", "context_harm"}
        for key in self.world:
            if key in fixed:
                raise ValueError(f"--world {key}=...: the demo sets {key} itself (use its own flag, if any)")
        check_world(self.world, "--world")  # unknown keys, wrong types, NaN / inf, named
        world_config(self, self.first_seed).check()  # impossible values, named
        if self.ppo_rollouts < 4 or self.ppo_rollouts % 4:
            raise ValueError(f"--ppo-rollouts must be a multiple of 4, got {self.ppo_rollouts}")

    def identity(self) -> dict:
        """What a rerun must share with the first run (``seeds`` may grow, ``out`` may move, the
        analysis-only ``target_fraction`` may change, the opt-in sweeps may be added: their stages
        are named by their values)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in FREE_KEYS}
        return {**out, "version": DEMO_VERSION}


# 3: labels from split streams, inter-annotator levels, one critic for every arm (2: sampling streams
# spaced apart; 1: overlapping batch seeds); a rerun never mixes them
DEMO_VERSION = 3
RM_EVAL_FRACTION = 0.15  # of each RM's pairs held out for its early stopping
# may differ between runs on one --out (the opt-in sweeps' stages are named by their values)
FREE_KEYS = ("seeds", "out", "target_fraction", "editor_recalls", "matched_kl", "report_to")
QUICK = {
    "seeds": 1, "agreements": [0.657, 1.0], "n_sft": 500, "n_pairs": 400, "n_heldout": 200,
    "n_eval": 100, "sft_epochs": 3.0, "rm_epochs": 4.0, "ppo_iterations": 12, "ppo_rollouts": 16,
    "matched_kl": 0.0,
}  # fmt: skip
DAY_S = 24 * 3600  # a run estimated longer than this is refused without --yes


# --------------------------------------------------------------------------------------------
# Stages: each runs once (its result is kept in stages/<name>.json), its output in logs/<name>.log
# --------------------------------------------------------------------------------------------
class Terminated(BaseException):
    """SIGTERM outside a trainer's loop — between stages, in a stage that trains nothing
    (sampling, labels, evaluation), or after a trainer's last step: the demo stops at once, the
    finished stages are kept and the same command resumes (exit 75). A ``BaseException`` like
    ``KeyboardInterrupt``, so that no stage's ``except Exception`` takes it for a failure."""

    def __init__(self, stage: str | None = None, after: bool = False):
        super().__init__()
        self.stage, self.after = stage, after  # the runner names the stage once it sees this

    def __str__(self) -> str:
        """``during stage X`` / ``after stage X`` / ``between stages``."""
        if self.stage is None:
            return "between stages"
        return f"{'after' if self.after else 'during'} stage {self.stage}"


def _terminate(signum: int, frame: Any) -> None:
    """The demo's SIGTERM handler: stop now (:class:`Terminated`)."""
    raise Terminated()


HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _handlers() -> dict[int, Any]:
    """The current handlers of :data:`HANDLED_SIGNALS` (``signal.getsignal``)."""
    return {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}


def _set_handlers(handlers: dict[int, Any]) -> None:
    """Install ``handlers`` (the main thread only, as Python requires; a handler that Python did
    not install, None, is left alone)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


class Stages:
    """The stage runner: skip what is done, log what runs, show where it is.

    Signals: inside ``with Stages(...)`` SIGTERM stops the demo at once (:class:`Terminated`,
    exit 75) and SIGINT keeps its handler (Ctrl-C: ``KeyboardInterrupt``). A stage may install
    its own — a trainer routes SIGTERM to its loop, which checkpoints and raises ``Preempted``
    (exit 75); ``fgrlhf eval`` cancels its judging — and every stage's are undone when it ends,
    so the next stage and the code between stages run under the demo's again. A SIGTERM that a
    trainer took but did not stop for (it came after its last step) stops the demo after that
    stage."""

    def __init__(self, root: Path, total: int, progress: bool = True):
        from tqdm import tqdm  # lazy: tqdm (heavy for the torch-free fgrlhf), only to draw a bar

        self.root = root
        (root / "stages").mkdir(parents=True, exist_ok=True)
        (root / "logs").mkdir(parents=True, exist_ok=True)
        self.bar = tqdm(total=total, desc="demo", unit="stage", disable=not progress, file=sys.stderr)
        self.ran, self.skipped = [], []
        self.seconds = 0.0  # of every stage, run here or in an earlier run
        self._outer: dict[int, Any] = {}

    def __enter__(self) -> Stages:
        """The demo's signal handlers (SIGTERM: :class:`Terminated`) until ``__exit__``."""
        self._outer = _handlers()
        _set_handlers({signal.SIGTERM: _terminate})
        return self

    def __exit__(self, *exc: Any) -> None:
        """The caller's handlers again; the progress bar closed."""
        _set_handlers(self._outer)
        self.close()

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run stage ``name`` (``fn``, its output in ``logs/<name>.log``) unless
        ``stages/<name>.json`` holds its result; returns the result.

        Raises:
            StageFailed: ``fn`` raised (its traceback is in the log).
            Preempted: a trainer stopped for SIGTERM after a checkpoint.
            Terminated: SIGTERM anywhere else (also after the stage, when a trainer took it).
        """
        from trainer.infra.runtime import STOP  # lazy: torch (fgrlhf --help is torch-free)

        done = self.root / "stages" / f"{name}.json"
        if done.exists():
            kept = json.loads(done.read_text())
            self.skipped.append(name)
            self.seconds += kept["seconds"]
            self.bar.update(1)
            return kept["result"]
        self.bar.set_description(name)
        saved = _handlers()  # the demo's, restored when the stage ends (however it ends)
        STOP.requested = False  # an earlier trainer's request, already acted on
        try:
            t0 = time.perf_counter()
            result = self._run(name, fn)
            seconds = time.perf_counter() - t0
            # recorded before the stage's handlers are undone: a trainer's only sets a flag
            _write_json(done, {"stage": name, "seconds": seconds, "result": result})
        except Terminated as e:
            e.stage = e.stage or name
            raise
        finally:
            _set_handlers(saved)
        self.seconds += seconds
        self.ran.append(name)
        self.bar.update(1)
        if STOP.requested:  # a SIGTERM the trainer took after its last step: stop here
            STOP.requested = False
            raise Terminated(name, after=True)
        return result

    def _run(self, name: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` with its output in the stage's log; a failure becomes :class:`StageFailed`."""
        log_path = self.root / "logs" / f"{name}.log"
        with (
            open(log_path, "a", encoding="utf-8") as fh,
            contextlib.redirect_stdout(fh),
            contextlib.redirect_stderr(fh),
        ):
            try:
                return fn()
            except (Preempted, Terminated):  # SIGTERM: a trainer checkpointed first / stop now
                raise
            except Stopped as e:  # fgrlhf generate's / eval's SIGTERM (after the batch in hand)
                raise Terminated(name) from e
            except Exception as e:
                traceback.print_exc(file=fh)
                raise StageFailed(name, log_path, e) from e

    def close(self) -> None:
        self.bar.close()


class StageFailed(RuntimeError):
    """A stage raised; names the stage and its log."""

    def __init__(self, name: str, log_path: Path, cause: BaseException):
        self.name, self.log_path = name, log_path
        super().__init__(f"stage {name} failed ({type(cause).__name__}: {cause}); its log: {log_path}")


def _write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1, default=float) + "\n")


def _rel(cfg: DemoConfig, path: str | Path) -> str:
    """A path under ``--out`` as stage results and ``demo.json`` record it: relative to ``--out``
    (``seed0/sft/final``), so that the directory may move; :func:`_at` resolves it."""
    return Path(path).relative_to(cfg.out).as_posix()


def _at(cfg: DemoConfig, recorded: str) -> str:
    """A recorded path (:func:`_rel`) under the current ``--out`` (one recorded absolute by an
    earlier version stays as it is)."""
    return str(Path(cfg.out) / recorded)


# --------------------------------------------------------------------------------------------
# One seed
# --------------------------------------------------------------------------------------------
def world_config(cfg: DemoConfig, seed: int, agreement: float | None = None, recall: float | None = None):
    """The seed's world (its own vocabulary draw, prompts and annotators) at annotator level
    ``agreement`` (default: the PPO arms' level) and editor recall ``recall`` (default: the main
    tables')."""
    unknown = sorted(set(cfg.world) - set(SyntheticConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(
            f"--world: {', '.join(unknown)} is not a knob of the world (trainer/data/synthetic.py)"
        )
    return SyntheticConfig(
        **cfg.world,
        n_pairs=max(200, 4 * cfg.ppo_rollouts),  # PPO's prompts (trainer/ppo.py's synthetic set)
        seed=1000 + seed,
        agreement=cfg.agreement if agreement is None else agreement,
        agreement_kind=cfg.agreement_kind,
        editor_recall=cfg.editor_recall if recall is None else recall,
        context_harm=cfg.context_harm,
    )


def _unique_prompts(rng: random.Random, world, n: int) -> list[str]:
    seen: dict[str, None] = {}
    for _ in range(100 * n):
        if len(seen) == n:
            break
        seen.setdefault(sample_prompt(rng, world), None)
    if len(seen) < n:
        raise ValueError(f"the world has fewer than {n} distinct prompts; lower --n-* flags")
    return list(seen)


def make_world(cfg: DemoConfig, seed: int, d: Path) -> dict:
    """Stage 1: the world directory (tokenizer, ``synthetic_config.json`` for the gold judge) and
    the prompt sets and SFT data."""
    world = world_config(cfg, seed)
    write_synthetic(d / "world", world)
    rng = random.Random(f"demo-prompts-{world.seed}")  # not another seed's world stream
    sizes = {"sft": cfg.n_sft, "pairs": cfg.n_pairs, "heldout": cfg.n_heldout, "eval": cfg.n_eval}
    prompts = _unique_prompts(rng, world, sum(sizes.values()))
    start = 0
    for name, n in sizes.items():
        part = prompts[start : start + n]
        start += n
        if name == "sft":
            rows = [{"prompt": p, "response": base_response(rng, world)} for p in part]
            _write_jsonl(d / "sft_data.jsonl", rows)
        else:
            _write_json(d / f"prompts_{name}.json", [{"instruction": p} for p in part])
    return {"world": _rel(cfg, d / "world"), "world_seed": world.seed, **sizes}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _common(cfg: DemoConfig, seed: int, out_dir: Path) -> list[str]:
    """The keys every trainer stage gets: its seed, no progress bar, and the trackers of
    ``--report-to`` with the stage's run name (``<out>/<stage's directory>``)."""
    keys = ["progress=false", f"seed={seed}"]
    if cfg.report_to:
        name = f"{Path(cfg.out).resolve().name}/{_rel(cfg, out_dir)}"
        keys += [f"report_to=[{','.join(cfg.report_to)}]", f"run_name={name}"]
    return keys


@contextlib.contextmanager
def tracker_env(cfg: DemoConfig):
    """While the stages run with ``--report-to``: one place for the whole study where the
    environment names none, restored afterwards — MLflow's store ``sqlite:///<out>/mlflow.db``
    (artefacts in ``<out>/mlartifacts``) instead of one per stage, and the W&B group
    ``<out>``'s name. TensorBoard writes each stage's ``tb/``: ``tensorboard --logdir <out>``
    shows them all."""
    if not cfg.report_to:
        yield
        return
    defaults = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{(Path(cfg.out) / 'mlflow.db').resolve()}",
        "WANDB_RUN_GROUP": Path(cfg.out).resolve().name,
    }
    before = {k: os.environ.get(k) for k in defaults if not os.environ.get(k)}  # unset or empty
    os.environ.update({k: defaults[k] for k in before})
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def train_sft(cfg: DemoConfig, seed: int, d: Path) -> dict:
    """Stage 2: SFT on the base responses."""
    from trainer.sft import SFTConfig, train  # lazy: torch (fgrlhf --help is torch-free)

    args = [
        f"data={d / 'sft_data.jsonl'}", f"tokenizer={d / 'world' / 'tokenizer'}", f"output_dir={d / 'sft'}",
        f"epochs={cfg.sft_epochs}", "eval_every=0", "eval_fraction=0", "checkpoint_every=50",
        *_common(cfg, seed, d / "sft"),
    ]  # fmt: skip
    train(load_config(SFTConfig, args))
    return {"model": _rel(cfg, d / "sft" / "final")}


def sample(cfg: DemoConfig, model: str, prompts: Path, out: Path, seed: int, name: str) -> str:
    """``fgrlhf generate`` of ``model`` on ``prompts`` (temperature 1: the policy's own
    distribution), resumable."""
    generate_mod.run_generate(
        GenerateConfig(
            model=model, instructions=str(prompts), output=str(out), generator=name,
            max_new_tokens=cfg.max_new_tokens, max_prompt_length=32, temperature=1.0, seed=seed,
            batch_size=64, device="cpu", progress=False, fsync=False,
        )
    )  # fmt: skip
    return str(out)


SAMPLING_STREAMS = ("pairs_a", "pairs_b", "heldout_a", "heldout_b", "eval_reference", "eval_policy")


def sampling_seed(seed: int, stream: str) -> int:
    """The ``fgrlhf generate`` seed of one sampling stream of a demo seed. ``generate`` seeds its
    batch ``b`` with ``seed + b``, so streams are spaced 10⁶ apart: no two batches of two streams
    share a seed (the held-out pairs are fresh samples, not the training pairs' batches again)."""
    return 10**8 * (seed + 1) + 10**6 * SAMPLING_STREAMS.index(stream)


def sample_pairs(cfg: DemoConfig, seed: int, d: Path) -> dict:
    """Stage 3: two samples of the SFT model per prompt (pairs and held-out pairs)."""
    out = {}
    model = str(d / "sft" / "final")
    for split in ("pairs", "heldout"):
        for side in "ab":
            stream = f"{split}_{side}"
            path = d / "samples" / f"{stream}.json"
            path.parent.mkdir(exist_ok=True)
            prompts = d / f"prompts_{split}.json"
            out[stream] = _rel(cfg, sample(cfg, model, prompts, path, sampling_seed(seed, stream), "sft"))
    return out


def _items(d: Path, split: str) -> list[tuple[str, str, str, str]]:
    a = json.loads((d / "samples" / f"{split}_a.json").read_text())
    b = json.loads((d / "samples" / f"{split}_b.json").read_text())
    by_instr = {r["instruction"]: r["output"] for r in b}
    return [
        (f"{split}-{i:05d}", r["instruction"], r["output"], by_instr[r["instruction"]])
        for i, r in enumerate(a)
        if r["output"].strip() and by_instr.get(r["instruction"], "").strip()  # two non-empty answers
    ]


def _suffix(recall: float | None) -> str:
    """The name suffix of a run at another editor recall (``_recall0.7``; empty for the main one)."""
    return "" if recall is None else f"_recall{recall:g}"


def _pairs_path(d: Path, agreement: float, recall: float | None = None) -> Path:
    return d / f"pairs_agreement{agreement:g}{_suffix(recall)}.jsonl"


def label_level(cfg: DemoConfig, seed: int, d: Path, agreement: float, recall: float | None = None) -> dict:
    """The labelled and edited pairs of one annotator level (and editor recall), with what the
    level means: the Bradley–Terry scale solved over these pairs, the expected inter-annotator
    agreement and agreement with gold it gives, the agreement with gold observed, the gold ties."""
    world = world_config(cfg, seed, agreement, recall)
    items = _items(d, "pairs")
    # annotations, rejected edits and edits from streams of their own: the same labels at every
    # editor recall, the same uniforms at every level
    recs = label_pairs(items, world, seed=10 * seed + 1, source="demo-pairs", streams="split")
    path = _pairs_path(d, agreement, recall)
    _write_jsonl(path, recs)
    diffs = [gold_reward(p, a, world) - gold_reward(p, b, world) for _, p, a, b in items]
    scale = annotator_scale(diffs, world)
    agree = [
        r["gold"]["chosen"] > r["gold"]["original"]
        for r in recs
        if r["gold"]["chosen"] != r["gold"]["original"]
    ]
    return {
        "path": _rel(cfg, path),
        "pairs": len(recs),
        "scale": scale,
        "tied_fraction": sum(x == 0 for x in diffs) / len(diffs),
        "expected_inter_annotator": expected_inter_annotator_agreement(diffs, scale),
        "expected_gold_agreement": expected_gold_agreement(diffs, scale),
        "observed_gold_agreement": statistics.fmean(agree),
    }


def label(cfg: DemoConfig, seed: int, d: Path) -> dict:
    """Stage 4: annotations and edits of the sampled pairs at every level of the sweep, and the
    gold-labelled held-out pairs."""
    out = {f"{a:g}": label_level(cfg, seed, d, a) for a in cfg.agreements}
    held = label_pairs(
        _items(d, "heldout"), world_config(cfg, seed, 1.0), seed=10 * seed + 2, source="demo-heldout"
    )
    _write_jsonl(d / "heldout_pairs.jsonl", held)
    out["heldout"] = {"path": _rel(cfg, d / "heldout_pairs.jsonl"), "pairs": len(held)}
    return out


def train_rm(
    cfg: DemoConfig, seed: int, d: Path, agreement: float, kind: str, recall: float | None = None
) -> dict:
    """Stage 5: one reward model, early-stopped on held-out pairs of its own kind (``best/``),
    scored on the fresh held-out pairs by the gold order."""
    from trainer.models import read_reward_meta  # lazy: torch (fgrlhf --help is torch-free)
    from trainer.reward import RewardConfig, train  # lazy: torch (fgrlhf --help is torch-free)

    out_dir = d / "rm" / f"{kind}_agreement{agreement:g}{_suffix(recall)}"
    n_train = (1 - RM_EVAL_FRACTION) * cfg.n_pairs
    steps_per_epoch = max(1, int(n_train // 32))
    args = [
        f"data={_pairs_path(d, agreement, recall)}", f"tokenizer={d / 'world' / 'tokenizer'}",
        f"output_dir={out_dir}", *RMS[kind][1], f"epochs={cfg.rm_epochs}", "micro_batch_size=32",
        f"eval_every={max(1, steps_per_epoch // 2)}", "plots=false", "report=false", "checkpoint_every=100",
        f"eval_fraction={RM_EVAL_FRACTION}", *_common(cfg, seed, out_dir),
    ]  # fmt: skip
    metrics = train(load_config(RewardConfig, args))
    best = out_dir / "best" if (out_dir / "best").exists() else out_dir / "final"
    held = rm_accuracy_mod.evaluate_reward_model(
        str(best), str(d / "heldout_pairs.jsonl"), max_length=128, batch_size=64
    )
    kept = read_reward_meta(best)  # the early-stopped model's own held-out metrics
    return {
        "model": _rel(cfg, best),
        "best_step": kept.get("step"),
        "own_heldout_accuracy": (kept.get("eval") or metrics).get("accuracy"),
        "gold_accuracy": held["gold_accuracy"],
    }


def arm_args(
    cfg: DemoConfig, seed: int, d: Path, arm: Arm, rm_model: str, out_name: str, matched_kl: float = 0.0
) -> list[str]:
    """trainer/ppo.py's keys for one arm: the same critic (:data:`CRITIC_FROM`), budget and
    sampling for every arm; the arm's RM, reward level and token-reward scale (always named, never
    trainer/ppo.py's default); KL: β = ``kl_coef`` or 0 (fixed), or with ``matched_kl`` the
    adaptive controller from β = ``kl_coef`` towards ``matched_kl`` nats per sequence, horizon one
    iteration's rollouts (β may move ±20% an iteration: it must settle within the run's budget)."""
    world = world_config(cfg, seed)
    syn = [f"synthetic.{k}={v}" for k, v in dataclasses.asdict(world).items()]
    if matched_kl:
        kl = [f"kl_coef={cfg.kl_coef}", "kl_controller=adaptive", f"kl_target={matched_kl}",
              f"kl_horizon={cfg.ppo_rollouts}"]  # fmt: skip
    else:
        kl = [f"kl_coef={cfg.kl_coef if arm.kl else 0.0}", "kl_controller=fixed"]
    scale = [f"token_reward_scale={arm.token_reward_scale}"] if arm.level == "token" else []
    return [
        f"init_from={d / 'sft' / 'final'}", f"reward_model={rm_model}", f"reward_level={arm.level}",
        *scale, *kl, f"critic_from={CRITIC_FROM}", f"output_dir={d / 'ppo' / out_name}",
        f"iterations={cfg.ppo_iterations}", f"rollout_batch_size={cfg.ppo_rollouts}",
        f"micro_batch_size={cfg.ppo_rollouts // 4}", f"forward_batch_size={cfg.ppo_rollouts}",
        f"max_new_tokens={cfg.max_new_tokens}", "checkpoint_every=10", "plots=false",
        "eval_every=0", "missing_eos_penalty=0",  # (the study evaluates every arm itself, stage 8)
        *syn, *_common(cfg, seed, d / "ppo" / out_name),
    ]  # fmt: skip


def train_arm(
    cfg: DemoConfig, seed: int, d: Path, arm: Arm, rm_model: str, out_name: str, matched_kl: float = 0.0
) -> dict:
    """Stage 6: one PPO arm from the SFT model (:func:`arm_args`)."""
    from trainer.ppo import PPOConfig, train  # lazy: torch (fgrlhf --help is torch-free)

    train(load_config(PPOConfig, arm_args(cfg, seed, d, arm, rm_model, out_name, matched_kl)))
    return {
        "model": _rel(cfg, d / "ppo" / out_name / "final" / "actor"),
        "metrics": _rel(cfg, d / "ppo" / out_name / "metrics.jsonl"),
    }


def train_figa(cfg: DemoConfig, seed: int, d: Path, recall: float | None = None) -> dict:
    """Stage 7: FIGA on the edited pairs, from the SFT model."""
    from trainer.sft import SFTConfig, train  # lazy: torch (fgrlhf --help is torch-free)

    out = d / f"figa{_suffix(recall)}"
    args = [
        "objective=figa", f"init_from={d / 'sft' / 'final'}",
        f"data={_pairs_path(d, cfg.agreement, recall)}", f"tokenizer={d / 'world' / 'tokenizer'}",
        f"output_dir={out}", "epochs=2", "lr=5e-4", "eval_every=0", "checkpoint_every=50",
        *_common(cfg, seed, out),
    ]  # fmt: skip
    train(load_config(SFTConfig, args))
    return {"model": _rel(cfg, out / "final")}


def evaluate_policy(cfg: DemoConfig, seed: int, d: Path, name: str, model: str) -> dict:
    """Stage 8: the policy answers the eval prompts; the gold judge compares every answer with
    the SFT model's (Table 1)."""
    ev = d / "eval"
    ev.mkdir(exist_ok=True)
    ref = ev / "reference_sft.json"
    prompts = d / "prompts_eval.json"
    if not ref.exists():  # the reference answers: the SFT model's, from a stream of their own
        sample(
            cfg,
            str(d / "sft" / "final"),
            prompts,
            ref,
            sampling_seed(seed, "eval_reference"),
            "sft_reference",
        )
    # every policy answers from the same stream (the same uniforms for the same prompts)
    outs = sample(cfg, model, prompts, ev / f"{name}.json", sampling_seed(seed, "eval_policy"), name)
    s = pairwise_mod.run_eval(
        EvalConfig(
            model_outputs=outs, reference_outputs=str(ref), judge=f"gold:{d / 'world'}",
            output_dir=str(ev / f"{name}_vs_sft"), bootstrap=0, progress=False, fsync=False,
        )
    )  # fmt: skip
    world = load_world(d / "world")
    rows = json.loads(Path(outs).read_text())
    gold = [gold_reward(r["instruction"], r["output"], world) for r in rows]
    return {
        "win_rate": s["win_rate"],
        "standard_error": s["standard_error"],
        "wins": s["n_wins"],
        "losses": s["n_wins_base"],
        "draws": s["n_draws"],
        "gold_reward": statistics.fmean(gold),
        "response_words": statistics.fmean(len(r["output"].split()) for r in rows),
        "finished": statistics.fmean(bool(r.get("finished", True)) for r in rows),
    }


def read_curve(path: str) -> list[dict]:
    """The PPO metrics (one record per iteration)."""
    return [r for _, r in read_log(path, "no PPO iteration logged")]


def steps_to_target(
    curve: list[float], seconds: list[float], target: float, window: int = 3
) -> tuple[int | None, float | None]:
    """The first iteration (1-based) whose ``window``-iteration running mean of ``curve`` reaches
    ``target``, and the wall-clock seconds of the iterations up to it; ``(None, None)`` when it
    never does.

    Example: curve [0, 1, 2, 3], window 1, target 1.5 -> (3, seconds[0] + seconds[1] + seconds[2]).
    """
    for i in range(len(curve)):
        lo = max(0, i - window + 1)
        if statistics.fmean(curve[lo : i + 1]) >= target:
            return i + 1, float(sum(seconds[: i + 1]))
    return None, None


FINAL_ITERATIONS = 5  # "final" = the mean of the last this many iterations
NOISE_Z = 2.0  # Table 3's target needs the baseline's improvement > NOISE_Z standard errors


def baseline_noise(baseline: list[float], start: float) -> dict:
    """Whether the baseline's improvement clears its seed's noise (Table 3's rule, per seed).

    improvement = final − start, with final the mean of the baseline's last
    :data:`FINAL_ITERATIONS` iteration means and start one iteration's mean (the SFT model's first
    rollouts). The noise of one iteration's mean is estimated by s, the sample s.d. of those last
    iterations (their drift counts as noise too: conservative), so the standard error of the
    difference is s·√(1 + 1/k) (k = 5); the target is set when improvement > 2 such standard
    errors.

    Example: last 5 = [1.0, 1.2, 0.8, 1.0, 1.0], start 0 -> s = √0.02 ≈ 0.141, se ≈ 0.155:
    1.0 > 0.310 clears; start 0.8 -> 0.2 does not.
    """
    last = baseline[-FINAL_ITERATIONS:]
    final = statistics.fmean(last)
    sd = statistics.stdev(last) if len(last) > 1 else 0.0
    se = sd * math.sqrt(1 + 1 / len(last))
    improvement = final - start
    return {
        "improvement": improvement,
        "noise_se": se,
        "clears": improvement > 0 and improvement > NOISE_Z * se,
    }


def table3_of(curves: dict[str, list[dict]], target_fraction: float) -> dict:
    """Table 3 of one seed from each arm's PPO records (``gold_reward``, ``kl``,
    ``response_length``, ``iteration_s`` per iteration; ``ppo_rlhf`` is the baseline): the
    start (the arms' mean first-iteration gold), the target (``target_fraction`` of the way to the
    baseline's final gold: the mean of its last 5 iterations), whether the baseline's improvement
    clears the seed's noise (:func:`baseline_noise`; if not, the seed sets no target: None for
    every arm's iterations and seconds) and per arm its curve, iterations and seconds to the target
    (:func:`steps_to_target`; censored at ``len + 1`` and the whole run's seconds when never
    reached) and its final gold, KL, β and length.

    Example: baseline [0, 1, 1, 1, 1, 1] (final 1, noise 0), other arm [0, 2, 2, 2, 2, 2],
    fraction 0.5 -> target 0.5, iterations 2 (baseline: running mean (0+1)/2 = 0.5) and 2
    (mean(0, 2) = 1).
    """
    start = statistics.fmean(c[0]["gold_reward"] for c in curves.values())
    finals = {n: statistics.fmean(r["gold_reward"] for r in c[-FINAL_ITERATIONS:]) for n, c in curves.items()}
    target = start + target_fraction * (finals["ppo_rlhf"] - start)
    # a baseline whose gain is within its noise gives no target (an arm would "reach" it by
    # chance): the seed is left out of the iterations/seconds columns, and the table says so
    noise = baseline_noise([r["gold_reward"] for r in curves["ppo_rlhf"]], start)
    clears = noise["clears"]
    table3 = {"start": start, "target": target, "baseline_clears": clears, "arms": {}}
    table3 |= {"improvement": noise["improvement"], "noise_se": noise["noise_se"]}
    for name, c in curves.items():
        seconds = [r.get("iteration_s", math.nan) for r in c]
        it, secs = steps_to_target([r["gold_reward"] for r in c], seconds, target)
        reached = it is not None
        if clears and not reached:  # censored: counted as one iteration past the budget
            it, secs = len(c) + 1, float(sum(seconds))
        table3["arms"][name] = {
            "curve": [r["gold_reward"] for r in c],
            "reached": reached,
            "iterations_to_target": it if clears else None,
            "seconds_to_target": secs if clears else None,
            **final_of(c),
            "seconds_per_iteration": statistics.fmean(r.get("iteration_s", math.nan) for r in c),
        }
    return table3


def final_of(curve: list[dict]) -> dict:
    """A PPO run's end: the mean gold, KL and length of its last 5 iterations, its last β."""
    last = curve[-FINAL_ITERATIONS:]
    return {
        "final_gold_reward": statistics.fmean(r["gold_reward"] for r in last),
        "final_kl": statistics.fmean(r["kl"] for r in last),
        "final_response_length": statistics.fmean(r["response_length"] for r in last),
        "final_kl_coef": float(curve[-1].get("kl_coef", math.nan)),
    }


def edit_stats(path: Path) -> dict:
    """How good the simulated edits of a pairs file are by gold (the edits that were made, not the
    rejected ones): the fraction that beat their original, and the mean gold gain."""
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    gains = [r["gold"]["edited"] - r["gold"]["original"] for r in recs if r["status"] == "ok"]
    return {"edits_better": statistics.fmean(g > 0 for g in gains), "edit_gain": statistics.fmean(gains)}


def _matched_name(arm: str, target: float) -> str:
    return f"{arm}_kl{target:g}"


def plan(cfg: DemoConfig, seed: int) -> list[str]:
    """The stages of one seed, in the order :func:`run_seed` runs them (their names say what they
    are: ``seed0.rm.token.agreement0.657``; the second part is the kind :func:`estimate` times)."""
    tag = f"seed{seed}"
    names = [f"{tag}.{s}" for s in ("world", "sft", "samples", "labels")]
    names += [f"{tag}.rm.{kind}.agreement{a:g}" for a in cfg.agreements for kind in RMS]
    names += [f"{tag}.ppo.{arm.name}" for arm in ARMS] + [f"{tag}.figa"]
    names += [f"{tag}.eval.{n}" for n in ("sft", "figa", *(arm.name for arm in ARMS))]
    if cfg.matched_kl:
        keys = [_matched_name(n, cfg.matched_kl) for n in MATCHED_KL_ARMS]
        names += [f"{tag}.ppo.{k}" for k in keys] + [f"{tag}.eval.{k}" for k in keys]
    for r in cfg.extra_recalls:
        s = _suffix(r)
        names += [f"{tag}.labels{s}"] + [
            f"{tag}.rm.{kind}.agreement{cfg.agreement:g}{s}" for kind in EDITED_RMS
        ]
        names += [f"{tag}.ppo.{n}{s}" for n in EDITED_ARMS] + [f"{tag}.figa{s}"]
        names += [f"{tag}.eval.{n}{s}" for n in ("figa", *EDITED_ARMS)]
    return names


def run_seed(cfg: DemoConfig, seed: int, stage: Stages) -> dict:
    """Every stage of one seed (:func:`plan`); returns its tables' numbers (paths in them relative
    to ``--out``: the stages record them so, :func:`_at` resolves them here)."""
    d = Path(cfg.out) / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    tag = f"seed{seed}"
    arms_by = {arm.name: arm for arm in ARMS}
    world = stage(f"{tag}.world", lambda: make_world(cfg, seed, d))
    sft = stage(f"{tag}.sft", lambda: train_sft(cfg, seed, d))
    stage(f"{tag}.samples", lambda: sample_pairs(cfg, seed, d))
    labels = stage(f"{tag}.labels", lambda: label(cfg, seed, d))
    rms: dict[str, dict[str, dict]] = {}
    for a in cfg.agreements:
        for kind in RMS:
            rms.setdefault(f"{a:g}", {})[kind] = stage(
                f"{tag}.rm.{kind}.agreement{a:g}", lambda a=a, kind=kind: train_rm(cfg, seed, d, a, kind)
            )
    main_rms = rms[f"{cfg.agreement:g}"]

    def ppo(arm: Arm, rm: dict, key: str, matched_kl: float = 0.0) -> dict:
        m = _at(cfg, rm["model"])
        return stage(f"{tag}.ppo.{key}", lambda: train_arm(cfg, seed, d, arm, m, key, matched_kl))

    def evaluate(key: str, model: str) -> dict:
        return stage(f"{tag}.eval.{key}", lambda: evaluate_policy(cfg, seed, d, key, _at(cfg, model)))

    arms = {arm.name: ppo(arm, main_rms[arm.rm], arm.name) for arm in ARMS}
    figa = stage(f"{tag}.figa", lambda: train_figa(cfg, seed, d))
    policies = {"sft": sft["model"], "figa": figa["model"], **{k: v["model"] for k, v in arms.items()}}
    table1 = {name: evaluate(name, model) for name, model in policies.items()}
    # Table 3: gold reward per iteration, iterations/seconds to the target
    table3 = table3_of(
        {name: read_curve(_at(cfg, a["metrics"])) for name, a in arms.items()}, cfg.target_fraction
    )
    for name in arms:
        table1[name]["kl"] = table3["arms"][name]["final_kl"]
    table2 = {a: {kind: r["gold_accuracy"] for kind, r in by.items()} for a, by in rms.items()}
    out = {
        "seed": seed,
        "world_seed": world.get("world_seed", 1000 + seed),
        "labels": {k: v for k, v in labels.items() if k != "heldout"},
        "table1": table1,
        "table2": table2,
        "table3": table3,
        "reports": {
            "token-level PPO rollouts": _rel(cfg, d / "ppo" / "fg_token_ppo_rmean_kl" / "report.html")
        },
    }
    # Table 4 (on by default, off with --matched-kl 0): every reward variant with the adaptive KL
    # controller at one target
    if cfg.matched_kl:
        matched = {}
        for n in MATCHED_KL_ARMS:
            key = _matched_name(n, cfg.matched_kl)
            run = ppo(arms_by[n], main_rms[arms_by[n].rm], key, cfg.matched_kl)
            matched[n] = {**evaluate(key, run["model"]), **final_of(read_curve(_at(cfg, run["metrics"])))}
            matched[n]["kl"] = matched[n]["final_kl"]
        out["matched_kl"] = matched
    # Tables 5 and 6 (opt-in): the edited-pair RMs, arms and FIGA at other editor recalls
    if cfg.editor_recalls:
        by_recall = {}
        for r in dict.fromkeys(cfg.editor_recalls):
            if r == cfg.editor_recall:  # the main tables' runs
                t1 = {n: table1[n] for n in ("figa", *EDITED_ARMS)}
                t2 = dict(table2[f"{cfg.agreement:g}"])
                lab = labels[f"{cfg.agreement:g}"]
            else:
                s = _suffix(r)
                lab = stage(f"{tag}.labels{s}", lambda r=r: label_level(cfg, seed, d, cfg.agreement, r))
                r_rms = {
                    kind: stage(
                        f"{tag}.rm.{kind}.agreement{cfg.agreement:g}{s}",
                        lambda r=r, kind=kind: train_rm(cfg, seed, d, cfg.agreement, kind, r),
                    )
                    for kind in EDITED_RMS
                }
                runs = {n: ppo(arms_by[n], r_rms[arms_by[n].rm], f"{n}{s}") for n in EDITED_ARMS}
                f = stage(f"{tag}.figa{s}", lambda r=r: train_figa(cfg, seed, d, r))
                t1 = {"figa": evaluate(f"figa{s}", f["model"])}
                for n, run in runs.items():
                    t1[n] = {
                        **evaluate(f"{n}{s}", run["model"]),
                        **final_of(read_curve(_at(cfg, run["metrics"]))),
                    }
                    t1[n]["kl"] = t1[n]["final_kl"]
                t2 = {"seq_original": table2[f"{cfg.agreement:g}"]["seq_original"]}  # no edits in it
                t2 |= {kind: v["gold_accuracy"] for kind, v in r_rms.items()}
            edits = edit_stats(_pairs_path(d, cfg.agreement, None if r == cfg.editor_recall else r))
            by_recall[f"{r:g}"] = {"table1": t1, "table2": t2, "labels": lab, "edits": edits}
        out["editor_recall"] = by_recall
    return out


# --------------------------------------------------------------------------------------------
# Over seeds
# --------------------------------------------------------------------------------------------
def mean_se(xs: list[float | None]) -> dict:
    """Mean and standard error (sample s.d. / √n; NaN with one value) of the values given
    (None = "not reached" / "no target": counted in ``n_missing``)."""
    vals = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    n = len(vals)
    return {
        "mean": statistics.fmean(vals) if vals else math.nan,
        "se": statistics.stdev(vals) / math.sqrt(n) if n > 1 else math.nan,
        "n": n,
        "n_missing": len(xs) - n,
    }


T1_KEYS = ("win_rate", "gold_reward", "response_words", "finished", "kl", "final_kl_coef")
LABEL_KEYS = (
    "expected_inter_annotator",
    "expected_gold_agreement",
    "observed_gold_agreement",
    "tied_fraction",
)


def _rows(rows: list[dict[str, dict]], keys: tuple[str, ...]) -> dict:
    """Mean ± s.e. over seeds of every ``keys`` entry of every row (rows as the first seed has them)."""
    return {n: {k: mean_se([r[n].get(k) for r in rows]) for k in keys if k in rows[0][n]} for n in rows[0]}


def aggregate(per_seed: list[dict]) -> dict:
    """Mean ± standard error over seeds of every table entry."""
    table2 = {
        a: {kind: mean_se([s["table2"][a][kind] for s in per_seed]) for kind in per_seed[0]["table2"][a]}
        for a in per_seed[0]["table2"]
    }
    t3_keys = (
        "iterations_to_target",
        "seconds_to_target",
        "final_gold_reward",
        "final_kl",
        "seconds_per_iteration",
    )
    arms = list(per_seed[0]["table3"]["arms"])
    table3 = {n: {k: mean_se([s["table3"]["arms"][n][k] for s in per_seed]) for k in t3_keys} for n in arms}
    for n in arms:  # seeds with a target where this arm never reached it
        table3[n]["misses"] = sum(
            1 for s in per_seed if s["table3"]["baseline_clears"] and not s["table3"]["arms"][n]["reached"]
        )
    curves = {}
    for n in arms:
        cs = [s["table3"]["arms"][n]["curve"] for s in per_seed]
        curves[n] = [statistics.fmean(c[i] for c in cs) for i in range(min(map(len, cs)))]
    clears = [s["table3"]["baseline_clears"] for s in per_seed]
    out = {
        "seeds": len(per_seed),
        "seed_list": [s["seed"] for s in per_seed],
        "table1": _rows([s["table1"] for s in per_seed], T1_KEYS),
        "table2": table2,
        "labels": _rows([s["labels"] for s in per_seed], LABEL_KEYS),
        "table3": table3,
        "table3_curves": curves,
        "target": mean_se([s["table3"]["target"] if c else None for s, c in zip(per_seed, clears)]),
        "start": mean_se([s["table3"]["start"] for s in per_seed]),
        "baseline_improvement": mean_se([s["table3"]["improvement"] for s in per_seed]),
        "baseline_noise_se": mean_se([s["table3"]["noise_se"] for s in per_seed]),
        "seeds_with_target": sum(clears),
    }
    if "matched_kl" in per_seed[0]:
        out["matched_kl"] = _rows([s["matched_kl"] for s in per_seed], T1_KEYS)
    if "editor_recall" in per_seed[0]:
        out["editor_recall"] = {
            r: {
                "table1": _rows([s["editor_recall"][r]["table1"] for s in per_seed], T1_KEYS),
                "table2": {
                    k: mean_se([s["editor_recall"][r]["table2"][k] for s in per_seed])
                    for k in per_seed[0]["editor_recall"][r]["table2"]
                },
                "edits": {
                    k: mean_se([s["editor_recall"][r]["edits"][k] for s in per_seed])
                    for k in ("edits_better", "edit_gain")
                },
            }
            for r in per_seed[0]["editor_recall"]
        }
    return out


def _fmt(m: dict, digits: int = 2, scale: float = 1.0, show_n: bool = False) -> str:
    """``mean ± se``; ``(n/N seeds)`` when some seeds gave no value, or always with ``show_n``."""
    total = m["n"] + m["n_missing"]
    if m["n"] == 0:
        return f"no value (0/{total} seeds)" if show_n else "not reached"
    s = f"{m['mean'] * scale:.{digits}f}"
    if not math.isnan(m["se"]):
        s += f" ± {m['se'] * scale:.{digits}f}"
    if m["n_missing"] or show_n:
        s += f" ({m['n']}/{total} seeds)"
    return s


def level_label(cfg: DemoConfig, level: str) -> str:
    """A Table 2 row's level: ``0.657``, or ``1 (noise-free: s = 0)``."""
    return f"{level} (noise-free: s = 0)" if float(level) == 1.0 else level


def _t1_row(label: str, m: dict) -> str:
    kl = _fmt(m["kl"]) if "kl" in m else "–"
    return (
        f"| {label} | {_fmt(m['win_rate'], 1)} | {_fmt(m['gold_reward'], 3)} | "
        f"{_fmt(m['response_words'], 1)} | {_fmt(m['finished'], 2)} | {kl} |"
    )


T1_HEAD = [
    "| policy | win rate % | gold reward | words / answer | finished | KL (nats/seq) |",
    "|---|---|---|---|---|---|",
]


def markdown(cfg: DemoConfig, agg: dict, seconds: float) -> str:
    """The tables as Markdown (``seconds``: the stages' total time)."""
    arms_by = {a.name: a for a in ARMS}
    labels = {a.name: arm_label(a, cfg.kl_coef) for a in ARMS} | dict(OTHER_POLICIES)
    seeds = agg["seed_list"]
    kind = "inter-annotator agreement" if cfg.agreement_kind == "inter_annotator" else "agreement with gold"
    lines = [
        "# fgrlhf demo: the paper's tables in the simulated-preference world",
        "",
        f"{agg['seeds']} seed(s) ({seeds[0]}–{seeds[-1]}: worlds {1000 + seeds[0]}–{1000 + seeds[-1]}), "
        f"mean ± standard error over seeds; annotators at {kind} {cfg.agreement:g} for the PPO arms and "
        f"FIGA; editor recall {cfg.editor_recall:g}; context-dependent harm "
        f"{'on' if cfg.context_harm else 'off'}; "
        f"{cfg.ppo_iterations} PPO iterations × {cfg.ppo_rollouts} rollouts per arm, every arm's critic from "
        f"the SFT model (`critic_from={CRITIC_FROM}`: one initialisation for all); the stages took "
        f"{seconds / 60:.1f} min (over every run that resumed them).",
        "",
        "## Table 1: gold-judge win rate against the SFT model",
        "",
        "The gold judge prefers the higher gold reward, and makes an answer cut at the length cap (or empty) "
        "lose to a complete one; `finished` is the fraction of answers that ended (EOS) before the cap. "
        "The token-level arms name their reward: the paper's [R_1 … R_n] (`token_reward_scale=raw`) or "
        "trainer/ppo.py's running-mean increments (which sum to the RM's R(τ)).",
        "",
        *T1_HEAD,
    ]
    lines += [_t1_row(labels.get(n, n), m) for n, m in agg["table1"].items()]
    kinds = list(RMS)
    lines += [
        "",
        "## Table 2: reward-model accuracy on fresh held-out pairs, by the gold order",
        "",
        f"Rows: the annotators' {kind} asked for; the Bradley–Terry scale s is solved for it over each "
        "seed's labelled pairs. Inter-annotator agreement is AlpacaFarm's measure (a held-out annotator "
        "against the mode of three others: a(p) = p·m + (1 − p)(1 − m), m = p³ + 3p²(1 − p), "
        "p = σ(|ΔG|/s)), its mean over every labelled pair, a gold tie counting as p = 0.5 (annotators "
        "flip coins on it); so noise-free "
        "annotators (s = 0, the gold order) reach only 1 − ties/2, shown as it is. Agreement with gold is "
        "over the non-tied pairs: expected from s, and observed in the labels drawn.",
        "",
        f"| {kind} | expected inter-annotator | agreement with gold (expected) | agreement with gold "
        "(observed) | gold ties | " + " | ".join(RMS[k][0] for k in kinds) + " |",
        "|---|---|---|---|---|" + "---|" * len(kinds),
    ]
    for a, by in agg["table2"].items():
        lab = agg["labels"][a]
        lines.append(
            f"| {level_label(cfg, a)} | {_fmt(lab['expected_inter_annotator'], 3)} | "
            f"{_fmt(lab['expected_gold_agreement'], 3)} | {_fmt(lab['observed_gold_agreement'], 3)} | "
            f"{_fmt(lab['tied_fraction'], 3)} | " + " | ".join(_fmt(by[k], 3) for k in kinds) + " |"
        )
    n = agg["seeds"]
    lines += [
        "",
        "## Table 3: PPO iterations and seconds to the target gold reward",
        "",
        f"Target: {cfg.target_fraction:g} of the way from the SFT start ({_fmt(agg['start'], 3)}) to "
        f"PPO-RLHF's final gold reward (mean of its last {FINAL_ITERATIONS} iterations), per seed, on a "
        "3-iteration running mean of each curve. A seed sets a target only when PPO-RLHF's improvement "
        "(final − start: "
        f"{_fmt(agg['baseline_improvement'], 3)}) exceeds {NOISE_Z:g} standard errors of that difference, "
        f"s·√(1 + 1/{FINAL_ITERATIONS}) with s the s.d. of PPO-RLHF's last {FINAL_ITERATIONS} iteration "
        f"means (one iteration's noise; {NOISE_Z:g} s.e. = {_fmt(agg['baseline_noise_se'], 3, NOISE_Z)}); "
        f"{agg['seeds_with_target']} of {n} seeds did (target: {_fmt(agg['target'], 3)}), and the "
        "iterations and seconds columns use only those (n/N in each cell); the other columns use every seed. "
        f"An arm that never reaches a target counts as {cfg.ppo_iterations + 1} iterations and its whole "
        "run's seconds. The baseline's own row is biased late (its target comes from its own end).",
        "",
        "| arm | iterations to target | seconds to target | final gold reward | final KL | s / iteration |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in agg["table3"].items():
        miss = f" ({m['misses']} not reached: counted as {cfg.ppo_iterations + 1})" if m["misses"] else ""
        lines.append(
            f"| {labels[name]} | {_fmt(m['iterations_to_target'], 1, show_n=True)}{miss} | "
            f"{_fmt(m['seconds_to_target'], 1, show_n=True)} | "
            f"{_fmt(m['final_gold_reward'], 3)} | {_fmt(m['final_kl'], 2)} | "
            f"{_fmt(m['seconds_per_iteration'], 2)} |"
        )
    if "matched_kl" in agg:
        lines += [
            "",
            f"## Table 4: matched KL — every reward variant with the adaptive KL controller, target "
            f"{cfg.matched_kl:g} nats",
            "",
            f"trainer/ppo.py's `kl_controller=adaptive kl_target={cfg.matched_kl:g} "
            f"kl_horizon={cfg.ppo_rollouts}` (from β = {cfg.kl_coef:g}; β moves up to ±20% an iteration), "
            "the same budget and critic as Table 1: "
            '"the same β" (Table 1) is not "the same KL". The final KL column says how close each arm got '
            "(mean of its last 5 iterations); final β is the controller's last value.",
            "",
            "| policy | win rate % | gold reward | words / answer | finished | final KL (nats/seq) "
            "| final β |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, m in agg["matched_kl"].items():
            row = _t1_row(arm_label(arms_by[name], cfg.kl_coef, cfg.matched_kl), m)
            lines.append(f"{row} {_fmt(m['final_kl_coef'], 3)} |")
    if "editor_recall" in agg:
        recalls = sorted(agg["editor_recall"], key=float, reverse=True)
        lines += [
            "",
            "## Table 5: editor recall — the edited-pair policies' win rate against the SFT model",
            "",
            "The editor fixes each harmful word with probability recall (and still adds helpful content); "
            f"the labels are the same at every recall (annotators at {kind} {cfg.agreement:g}). PPO-RLHF "
            "(no edits) for comparison; where an edited-pair row falls to it, edits stopped paying.",
            "",
            "| editor recall | " + T1_HEAD[0][2:],
            "|---" + T1_HEAD[1],
            f"| – | {_t1_row(labels['ppo_rlhf'], agg['table1']['ppo_rlhf'])[2:]}",
        ]
        for r in recalls:
            for name, m in agg["editor_recall"][r]["table1"].items():
                lines.append(f"| {r} | {_t1_row(labels.get(name, name), m)[2:]}")
        lines += [
            "",
            f"## Table 6: editor recall — reward-model accuracy (gold order), at {kind} {cfg.agreement:g}",
            "",
            "| editor recall | edits better than their original (gold) | mean gold gain of an edit | "
            + " | ".join(RMS[k][0] for k in kinds)
            + " |",
            "|---|---|---|" + "---|" * len(kinds),
        ]
        for r in recalls:
            by, ed = agg["editor_recall"][r]["table2"], agg["editor_recall"][r]["edits"]
            lines.append(
                f"| {r} | {_fmt(ed['edits_better'], 3)} | {_fmt(ed['edit_gain'], 3)} | "
                + " | ".join(_fmt(by[k], 3) for k in kinds)
                + " |"
            )
        lines += [
            "",
            "The original-pair RM sees no edits: the same model in every row. A lower recall leaves "
            "harmful words in, but the editor never adds one and adds a helpful word whenever it fixed "
            "nothing, so no edit lowers the gold reward (first column: the fraction that raise it): the "
            "sweep weakens the editor, it does not make it wrong.",
        ]
    return "\n".join(lines) + "\n"


def plots(cfg: DemoConfig, agg: dict, out: Path) -> list[str]:
    """Table 3's curves and Table 2's sweep as PNG."""
    import matplotlib  # lazy: heavy; the Agg backend is chosen before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: heavy; the Agg backend is chosen before pyplot

    labels = {a.name: arm_label(a, cfg.kl_coef) for a in ARMS}
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for n, c in agg["table3_curves"].items():
        ax.plot(range(1, len(c) + 1), c, label=labels[n])
    if agg["target"]["n"]:
        ax.axhline(agg["target"]["mean"], color="grey", ls="--", lw=0.8, label="target (mean)")
    ax.set(
        xlabel="PPO iteration",
        ylabel="gold reward (mean token utility)",
        title=f"gold reward per iteration ({agg['seeds']} seeds, mean)",
    )
    ax.legend(fontsize=6)
    fig.tight_layout()
    paths.append(str(out / "table3_gold_reward.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    x_key = (
        "expected_inter_annotator" if cfg.agreement_kind == "inter_annotator" else "expected_gold_agreement"
    )
    xs = [agg["labels"][a][x_key]["mean"] for a in agg["table2"]]  # the noise-free level where it really is
    for kind, (label_, _) in RMS.items():
        ys = [agg["table2"][a][kind]["mean"] for a in agg["table2"]]
        es = [
            0 if math.isnan(agg["table2"][a][kind]["se"]) else agg["table2"][a][kind]["se"]
            for a in agg["table2"]
        ]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label_)
    ax.set(
        xlabel="annotators' expected "
        + (
            "inter-annotator agreement"
            if x_key != "expected_gold_agreement"
            else "agreement with the gold order"
        ),
        ylabel="held-out accuracy (gold order)",
        title="reward-model accuracy",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(str(out / "table2_rm_accuracy.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


# Seconds per stage at the default sizes, measured on the 2-core VM (seeds 1 and 2 of a full
# default run, with the machine otherwise idle: ~220 s per seed before Table 4); :func:`estimate`
# scales them by size and prefers the timings of stages already in --out.
NOMINAL_S = {
    "world": 0.2,
    "sft": 7.2,
    "samples": 3.3,
    "labels": 0.7,
    "rm": 10.4,
    "ppo": 16.2,
    "figa": 4.3,
    "eval": 0.4,
}


def _size_factor(cfg: DemoConfig, kind: str) -> float:
    """How much longer than at the default sizes a stage of ``kind`` takes (linear in its work)."""
    d = DemoConfig()
    return {
        "sft": cfg.n_sft * cfg.sft_epochs / (d.n_sft * d.sft_epochs),
        "samples": (cfg.n_pairs + cfg.n_heldout) / (d.n_pairs + d.n_heldout),
        "labels": cfg.n_pairs / d.n_pairs,
        "rm": cfg.n_pairs * cfg.rm_epochs / (d.n_pairs * d.rm_epochs),
        "ppo": cfg.ppo_iterations * cfg.ppo_rollouts / (d.ppo_iterations * d.ppo_rollouts),
        "figa": cfg.n_pairs / d.n_pairs,
        "eval": cfg.n_eval / d.n_eval,
    }.get(kind, 1.0)


def stage_kind(name: str) -> str:
    """``seed0.rm.token.agreement0.657`` -> ``rm``; ``seed0.figa_recall0.7`` -> ``figa``."""
    return name.split(".")[1].split("_")[0]


def estimate(cfg: DemoConfig, root: Path) -> dict:
    """The study's time: seconds per seed and for the stages not yet done under ``root``, per
    stage kind the mean of the timings ``root/stages`` holds (same settings: the stamp is checked
    first), else :data:`NOMINAL_S` scaled by size."""
    measured: dict[str, list[float]] = {}
    done = set()
    if (root / "stages").is_dir():
        for p in (root / "stages").glob("*.json"):
            with contextlib.suppress(ValueError, KeyError, OSError):
                measured.setdefault(stage_kind(p.stem), []).append(
                    float(json.loads(p.read_text())["seconds"])
                )
                done.add(p.stem)

    def seconds(name: str) -> float:
        k = stage_kind(name)
        return (
            statistics.fmean(measured[k]) if k in measured else NOMINAL_S.get(k, 10.0) * _size_factor(cfg, k)
        )

    names = [n for s in cfg.seed_list for n in plan(cfg, s)]
    n_measured = sum(map(len, measured.values()))
    return {
        "per_seed_s": sum(seconds(n) for n in plan(cfg, cfg.first_seed)),
        "remaining_s": sum(seconds(n) for n in names if n not in done),
        "stages_left": sum(n not in done for n in names),
        "source": f"the {n_measured} stage timings in --out"
        if n_measured
        else "the defaults measured on a 2-core VM",
    }


def run_demo(cfg: DemoConfig, progress: bool = True, force: bool = False) -> dict:
    """Every seed's stages (resumed), then the tables. Returns what ``demo.json`` holds (its paths
    relative to ``--out``).

    Raises:
        ValueError: a bad setting, ``--out`` holds a demo with other settings, or the stages left
            are estimated at more than a day (:func:`estimate`) and not ``force``.
        StageFailed: a stage raised.
        Preempted / Terminated / KeyboardInterrupt: SIGTERM in a trainer / SIGTERM elsewhere /
            Ctrl-C (finished stages are kept: the same call resumes).
    """
    cfg.check()
    root = Path(cfg.out)
    stamp = root / "demo_config.json"
    if stamp.exists():
        old = json.loads(stamp.read_text())
        new, default = cfg.identity(), DemoConfig().identity()  # a key added since: its default
        default["version"] = 1  # ... except the version: a stamp without one is version 1
        diff = sorted(
            k for k in (set(old) | set(new)) - set(FREE_KEYS) if old.get(k, default.get(k)) != new.get(k)
        )
        if "version" in diff:
            raise ValueError(
                f"{root} holds a demo made by an earlier version of fgrlhf demo (its samples, labels or "
                "arms are made differently): move it away or choose another --out"
            )
        if diff:
            raise ValueError(
                f"{root} holds a demo with other settings ({', '.join(diff)}): rerun with those settings to "
                "resume it, or choose another --out"
            )
    est = estimate(cfg, root)
    if est["remaining_s"] > DAY_S and not force:
        raise ValueError(
            f"--seeds {cfg.seeds}: the {est['stages_left']} stages left would take about "
            f"{est['remaining_s'] / 3600:.1f} h ({est['per_seed_s'] / 60:.1f} min per seed, from "
            f"{est['source']}): more than a day; add --yes to run it anyway, or ask for fewer seeds"
        )
    root.mkdir(parents=True, exist_ok=True)
    if not stamp.exists():
        _write_json(stamp, cfg.identity())
    total = sum(len(plan(cfg, s)) for s in cfg.seed_list)
    with Stages(root, total, progress) as stage, tracker_env(cfg):  # SIGTERM stops it from here on
        t0 = time.perf_counter()
        per_seed = [run_seed(cfg, s, stage) for s in cfg.seed_list]
        seconds = time.perf_counter() - t0
        agg = aggregate(per_seed)
        result = {
            "config": dataclasses.asdict(cfg),
            "aggregate": agg,
            "per_seed": per_seed,
            "stages_run": stage.ran,
            "stages_skipped": stage.skipped,
            "seconds": seconds,
            "stage_seconds": stage.seconds,
            "estimate": est,
        }
        result["plots"] = [_rel(cfg, path) for path in plots(cfg, agg, root / "plots")]
        _write_json(root / "demo.json", result)
        md = markdown(cfg, agg, stage.seconds)
        (root / "demo.md").write_text(md)
        if cfg.report_to:
            report_tables(cfg, agg, md, root)
    return result


def report_tables(cfg: DemoConfig, agg: dict, md: str, root: Path) -> None:
    """``--report-to``: the tables as one tracker run (``<out>/tables``, state in
    ``<out>/tables/trackers.json``): every number of ``demo.json``'s aggregate (dotted names,
    at step = seeds), ``demo.md`` as text, the plots and ``demo.md`` / ``demo.json`` as files."""
    out_dir = root / "tables"
    out_dir.mkdir(exist_ok=True)
    info = RunInfo(
        trainer="demo",
        out_dir=out_dir,
        config=dataclasses.asdict(cfg),
        resuming=(out_dir / "trackers.json").exists(),
        name=f"{root.resolve().name}/tables",
    )
    files = [root / "plots", root / "demo.md", root / "demo.json"]
    record = {"step": cfg.seeds, **flat_numbers(agg)}
    report_once(cfg.report_to, info, record, say=print, text=md, files=files)


GOLD_LEVELS = [0.6, 0.65, 0.8, 1.0]  # --agreement-kind gold's default sweep (agreement 0.65)


def add_arguments(p) -> None:
    """The flags of ``fgrlhf demo``."""
    d = DemoConfig()
    p.add_argument("--out", default=d.out, help="output directory (a rerun resumes it)")
    p.add_argument("--quick", action="store_true", help="1 seed, 2 levels, short runs (what CI runs)")
    p.add_argument("--seeds", type=int, default=None, help=f"worlds / seeds (default {d.seeds}; quick 1)")
    p.add_argument(
        "--first-seed", type=int, default=d.first_seed, help="first seed: seeds N .. N+seeds-1 (fresh worlds)"
    )
    p.add_argument(
        "--agreement-kind",
        choices=["inter_annotator", "gold"],
        default=d.agreement_kind,
        help="what the annotator levels measure: inter-annotator agreement (AlpacaFarm's) or agreement "
        f"with the gold order (default levels then {GOLD_LEVELS}, PPO at 0.65)",
    )
    p.add_argument(
        "--agreements", type=float, nargs="+", default=None, help=f"Table 2's levels (default {d.agreements})"
    )
    p.add_argument(
        "--agreement", type=float, default=None, help=f"level of the PPO arms' data (default {d.agreement})"
    )
    p.add_argument(
        "--editor-recall", type=float, default=d.editor_recall, help="P(editor fixes a harmful word)"
    )
    p.add_argument(
        "--editor-recalls",
        type=float,
        nargs="+",
        default=[],
        help="opt-in Tables 5-6: edited-pair RMs, arms and FIGA again at each recall (e.g. 1 0.7 0.4)",
    )
    p.add_argument(
        "--matched-kl",
        type=float,
        default=None,
        metavar="NATS",
        help=f"Table 4: every reward variant with the adaptive KL controller at this target (default "
        f"{d.matched_kl:g}; quick 0: off)",
    )
    p.add_argument("--context-harm", action="store_true", help="add the context-dependent harmful words")
    p.add_argument(
        "--world",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other knob of the world (trainer/data/synthetic.py SyntheticConfig), e.g. p_bad=0.2",
    )
    p.add_argument("--ppo-iterations", type=int, default=None, help="PPO iterations per arm")
    p.add_argument("--target-fraction", type=float, default=d.target_fraction, help="Table 3's target")
    add_report_to(p, "every stage's run and the tables")
    p.add_argument("--yes", action="store_true", help="run even when the estimate is more than a day")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def config_from_args(args) -> DemoConfig:
    """The :class:`DemoConfig` of parsed flags (``--quick`` sets its smaller defaults first)."""
    cfg = DemoConfig(**(QUICK if args.quick else {}), quick=args.quick)
    cfg.out, cfg.first_seed, cfg.agreement_kind = args.out, args.first_seed, args.agreement_kind
    if cfg.agreement_kind == "gold":  # levels of agreement with gold: the old default sweep
        cfg.agreements, cfg.agreement = ([0.65, 1.0] if args.quick else list(GOLD_LEVELS)), 0.65
    cfg.editor_recall, cfg.editor_recalls = args.editor_recall, args.editor_recalls
    cfg.context_harm, cfg.target_fraction = args.context_harm, args.target_fraction
    cfg.report_to = list(dict.fromkeys(args.report_to))
    for key in ("seeds", "agreements", "agreement", "ppo_iterations", "matched_kl"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if args.quick and cfg.agreement not in cfg.agreements:
        cfg.agreements = sorted({*cfg.agreements, cfg.agreement})
    cfg.world = parse_world(args.world)
    return cfg


def parse_world(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> world knobs, each value converted to its field's type.

    Raises:
        ValueError: a malformed item, an unknown knob or a value of the wrong type, NaN or ±inf
            (named; :func:`trainer.data.synthetic.check_world`, as for a world file).
    """
    fields_ = SyntheticConfig.__dataclass_fields__
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in fields_:
            raise ValueError(f"--world {item!r}: expected KEY=VALUE with KEY a knob of SyntheticConfig")
        kind = {"int": int, "float": float, "bool": bool}.get(str(fields_[key].type), str)
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                out[key] = text.lower() in ("true", "1")
            else:
                out[key] = kind(text)
        except ValueError:
            raise ValueError(f"--world {key}={text!r}: expected a {kind.__name__}") from None
    check_world(out, "--world")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer.demo [flags]``."""
    p = argparse.ArgumentParser(prog="fgrlhf demo", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    add_arguments(p)
    args = p.parse_args(argv)
    return cmd(args)


def cmd(args) -> int:
    """Run the demo from parsed flags; prints the tables and the report's path."""
    try:
        cfg = config_from_args(args)
        res = run_demo(cfg, progress=args.progress, force=args.yes)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StageFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Preempted as e:
        print(f"stopped by SIGTERM ({e}); rerun the same command to resume", file=sys.stderr)
        return EXIT_PREEMPTED
    except Terminated as e:
        print(
            f"stopped by SIGTERM {e}: finished stages are kept; rerun the same command to resume",
            file=sys.stderr,
        )
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    root = Path(cfg.out)
    print((root / "demo.md").read_text())
    token_report = _at(cfg, res["per_seed"][0]["reports"]["token-level PPO rollouts"])
    print(
        f"{len(res['stages_run'])} stages run, {len(res['stages_skipped'])} resumed, {res['seconds']:.0f} s; "
        f"report: {root / 'demo.md'} (numbers: {root / 'demo.json'}, plots: {root / 'plots'}; per-token "
        f"rewards of the token-level arm: {token_report})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
