"""``fgrlhf demo``: the paper's three tables in the simulated-preference world, on a CPU.

AlpacaFarm's idea (simulate the annotators, so a method can be studied cheaply) at a size that
runs on 2 CPU cores. Every stage is the real code path: ``trainer/sft.py``, ``trainer/reward.py``,
``trainer/ppo.py``, ``fgrlhf generate`` and ``fgrlhf eval`` with the world's gold judge, with
the fused kernels. Per seed (each seed is its own world, ``trainer/data/synthetic.py``):

1. **world** — vocabulary, prompts (disjoint sets: SFT, preference pairs, held-out pairs, eval),
   the gold utility, the SFT data (the world's base responses).
2. **sft** — a tiny LLaMA learns the base responses (``trainer/sft.py``).
3. **samples** — two samples of the SFT model per prompt (``fgrlhf generate``, temperature 1):
   the preference pairs, and fresh held-out pairs for Table 2.
4. **labels** — for every annotator agreement of the sweep: Bradley–Terry annotators choose,
   the simulated editor edits the less-preferred response (same samples for every agreement).
5. **rm** — per agreement, the three reward models of the paper's arms: sequence-level on the
   original pairs (PPO-RLHF), sequence-level on the edited pairs (fine-grained PPO), token-level
   on the edited pairs; each early-stopped on held-out pairs of its own kind (its ``best/``),
   then scored on the fresh held-out pairs by the gold order (**Table 2**).
6. **ppo** — at the default agreement, the arms from the SFT model with the same PPO budget:
   ``ppo_rlhf`` (sequence reward, KL penalty), ``fg_ppo`` (sequence reward of the edited-pairs
   RM, KL penalty), ``fg_token_ppo`` (per-token rewards, the paper's [R_1 … R_n] without KL:
   β = 0) and ``fg_token_ppo_kl`` (per-token rewards with the same KL penalty as the others).
7. **figa** — FIGA on the edited pairs from the SFT model (``trainer/sft.py objective=figa``).
8. **eval** — every policy answers the eval prompts; the gold judge compares each with the SFT
   model's answers (**Table 1**: win rate; plus the gold reward, length and KL they reach).
   **Table 3**: the gold reward per PPO iteration of each arm, and the iterations and seconds
   each needs to reach a target: ``target_fraction`` (0.8) of the way from the SFT start to
   PPO-RLHF's final gold reward (the mean of its last 5 iterations, per seed), on a 3-iteration
   running mean of each curve — "how soon does each arm get (most of the way) to where the
   baseline ends up".

Outputs under ``out`` (``runs/demo``): ``demo.json`` (every number, per seed and aggregated),
``demo.md`` (the tables, mean ± standard error over seeds), ``plots/*.png``, each stage's log
under ``logs/``, and each run's own outputs (the token-level arm's ``report.html`` shows its
per-token rewards). A rerun resumes: finished stages are skipped (``stages/*.json``), an
interrupted trainer resumes from its checkpoint; ``--seeds`` may grow between runs, the other
settings may not (a changed setting is refused: use another ``--out``). The paths that
``stages/*.json`` and ``demo.json`` record are relative to ``--out``, so a finished or stopped
demo directory may move (``mv runs/demo runs/demo1; fgrlhf demo --out runs/demo1`` resumes it);
a trainer stopped in the middle of its run resumes only where it started (its checkpoint's
config names its old paths).

Exit status: 0 done; 1 a stage failed (its log is named); 2 a bad flag or ``--out`` holds a demo
with other settings; 75 SIGTERM during a trainer stage (it saved a checkpoint first); 143 SIGTERM
anywhere else (the demo stops at once); 130 Ctrl-C. After 75, 143 or 130 the finished stages are
kept and the same command resumes.

    fgrlhf demo                 # 3 seeds, agreement sweep 0.6 / 0.65 / 0.8 / 1.0 (12.5-14 min on 2 cores)
    fgrlhf demo --quick         # 1 seed, 2 agreements, shorter runs (1.3 min)
    fgrlhf demo --seeds 5 --context-harm --out runs/demo_context
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ARMS", "DemoConfig", "aggregate", "run_demo", "steps_to_target"]

# The PPO arms: (name, label, RM kind, reward_level, KL on?).
ARMS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("ppo_rlhf", "PPO-RLHF (sequence RM, original pairs)", "seq_original", "sequence", True),
    ("fg_ppo", "fine-grained PPO (sequence RM, edited pairs)", "seq_edited", "sequence", True),
    ("fg_token_ppo", "fine-grained token-level PPO (token RM, β = 0 as the paper)", "token", "token", False),
    (
        "fg_token_ppo_kl",
        "fine-grained token-level PPO (token RM, same KL as the others)",
        "token",
        "token",
        True,
    ),
)
# The reward models: kind -> (label, trainer/reward.py keys).
RMS: dict[str, tuple[str, list[str]]] = {
    "seq_original": ("sequence RM, original pairs", ["rm_level=sequence", "seq_pairs=original"]),
    "seq_edited": ("sequence RM, edited pairs", ["rm_level=sequence", "seq_pairs=edited"]),
    "token": ("token RM, edited pairs", ["rm_level=token"]),
}
# The non-PPO rows of Table 1.
OTHER_POLICIES = (("sft", "SFT model (reference; another sample)"), ("figa", "FIGA (edited pairs)"))


@dataclass
class DemoConfig:
    """The study's settings (every one a flag of ``fgrlhf demo``)."""

    out: str = "runs/demo"
    """Output directory (a rerun resumes it)."""
    seeds: int = 3
    """Seeds; seed ``s`` is its own world (``SyntheticConfig.seed`` 1000 + s) and training seed."""
    agreements: list[float] = field(default_factory=lambda: [0.6, 0.65, 0.8, 1.0])
    """Table 2's annotator agreements (a reward model of each kind is trained at each)."""
    agreement: float = 0.65
    """The annotator agreement of the PPO arms' and FIGA's data (one of ``agreements``)."""
    editor_recall: float = 1.0
    """Probability that the simulated editor fixes each harmful word."""
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
    """β of the arms with a KL penalty (trainer/ppo.py's default)."""
    target_fraction: float = 0.8
    """Table 3's target: this fraction of the way from the SFT start to PPO-RLHF's final gold
    reward (analysis only: it may change between runs)."""
    quick: bool = False
    """Started with ``--quick`` (its smaller sizes: :data:`QUICK`)."""

    def check(self) -> None:
        """Refuse impossible settings, naming the flag."""
        from trainer.data.synthetic import check_world

        if self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")
        if not self.agreements or any(not 0.5 <= a <= 1 for a in self.agreements):
            raise ValueError(f"--agreements must be values in [0.5, 1], got {self.agreements}")
        if self.agreement not in self.agreements:
            raise ValueError(f"--agreement {self.agreement} must be one of --agreements {self.agreements}")
        if not 0 < self.target_fraction <= 1:
            raise ValueError(f"--target-fraction must be in (0, 1], got {self.target_fraction}")
        for key in ("n_sft", "n_pairs", "n_heldout", "n_eval", "ppo_iterations", "max_new_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.editor_recall <= 1:
            raise ValueError(f"--editor-recall must be in [0, 1], got {self.editor_recall}")
        fixed = {"n_pairs", "seed", "agreement", "editor_recall", "context_harm"}
        for key in self.world:
            if key in fixed:
                raise ValueError(f"--world {key}=...: the demo sets {key} itself (use its own flag, if any)")
        check_world(self.world, "--world")  # unknown keys, wrong types, NaN / inf, named
        world_config(self, 0).check()  # impossible values, named
        if self.ppo_rollouts < 4 or self.ppo_rollouts % 4:
            raise ValueError(f"--ppo-rollouts must be a multiple of 4, got {self.ppo_rollouts}")

    def identity(self) -> dict:
        """What a rerun must share with the first run (``seeds`` may grow, ``out`` may move, the
        analysis-only ``target_fraction`` may change)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in FREE_KEYS}
        return {**out, "version": DEMO_VERSION}


DEMO_VERSION = 2  # 2: sampling streams spaced apart (1: overlapping batch seeds); a rerun never mixes them
RM_EVAL_FRACTION = 0.15  # of each RM's pairs held out for its early stopping
FREE_KEYS = ("seeds", "out", "target_fraction")  # may differ between runs on one --out
QUICK = {
    "seeds": 1, "agreements": [0.65, 1.0], "n_sft": 500, "n_pairs": 400, "n_heldout": 200,
    "n_eval": 100, "sft_epochs": 3.0, "rm_epochs": 4.0, "ppo_iterations": 12, "ppo_rollouts": 16,
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Stages: each runs once (its result is kept in stages/<name>.json), its output in logs/<name>.log
# --------------------------------------------------------------------------------------------
class Terminated(BaseException):
    """SIGTERM outside a trainer's loop — between stages, in a stage that trains nothing
    (sampling, labels, evaluation), or after a trainer's last step: the demo stops at once, the
    finished stages are kept and the same command resumes (exit 143). A ``BaseException`` like
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
    exit 143) and SIGINT keeps its handler (Ctrl-C: ``KeyboardInterrupt``). A stage may install
    its own — a trainer routes SIGTERM to its loop, which checkpoints and raises ``Preempted``
    (exit 75); ``fgrlhf eval`` cancels its judging — and every stage's are undone when it ends,
    so the next stage and the code between stages run under the demo's again. A SIGTERM that a
    trainer took but did not stop for (it came after its last step) stops the demo after that
    stage."""

    def __init__(self, root: Path, total: int, progress: bool = True):
        from tqdm import tqdm

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
        from trainer.infra.runtime import STOP

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
        from trainer.infra.runtime import Preempted

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
            except KeyboardInterrupt as e:
                if str(e) == "SIGTERM":  # fgrlhf eval's SIGTERM (it cancels its judging)
                    raise Terminated(name) from e
                raise
            except Exception as e:
                import traceback

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
    from trainer.infra.runtime import write_atomic

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
def world_config(cfg: DemoConfig, seed: int, agreement: float | None = None):
    """The seed's world (its own vocabulary draw, prompts and annotators)."""
    from trainer.data.synthetic import SyntheticConfig

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
        editor_recall=cfg.editor_recall,
        context_harm=cfg.context_harm,
    )


def _unique_prompts(rng: random.Random, world, n: int) -> list[str]:
    from trainer.data.synthetic import sample_prompt

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
    from trainer.data.synthetic import base_response, write_synthetic

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
    return {"world": _rel(cfg, d / "world"), **sizes}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    from trainer.infra.runtime import write_atomic

    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _common(seed: int) -> list[str]:
    return ["progress=false", f"seed={seed}"]


def train_sft(cfg: DemoConfig, seed: int, d: Path) -> dict:
    """Stage 2: SFT on the base responses."""
    from trainer.infra.config import load_config
    from trainer.sft import SFTConfig, train

    args = [
        f"data={d / 'sft_data.jsonl'}", f"tokenizer={d / 'world' / 'tokenizer'}", f"output_dir={d / 'sft'}",
        f"epochs={cfg.sft_epochs}", "eval_every=0", "eval_fraction=0", "checkpoint_every=50", *_common(seed),
    ]  # fmt: skip
    train(load_config(SFTConfig, args))
    return {"model": _rel(cfg, d / "sft" / "final")}


def sample(cfg: DemoConfig, model: str, prompts: Path, out: Path, seed: int, name: str) -> str:
    """``fgrlhf generate`` of ``model`` on ``prompts`` (temperature 1: the policy's own
    distribution), resumable."""
    from trainer.eval.generate import GenerateConfig, run_generate

    run_generate(
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


def label(cfg: DemoConfig, seed: int, d: Path) -> dict:
    """Stage 4: annotations and edits of the sampled pairs for every agreement of the sweep, and
    the gold-labelled held-out pairs."""
    from trainer.data.synthetic import label_pairs

    out = {}
    items = _items(d, "pairs")
    for a in cfg.agreements:
        recs = label_pairs(items, world_config(cfg, seed, a), seed=10 * seed + 1, source="demo-pairs")
        path = d / f"pairs_agreement{a:g}.jsonl"
        _write_jsonl(path, recs)
        agree = [
            r["gold"]["chosen"] > r["gold"]["original"]
            for r in recs
            if r["gold"]["chosen"] != r["gold"]["original"]
        ]
        out[f"{a:g}"] = {
            "path": _rel(cfg, path),
            "pairs": len(recs),
            "observed_agreement": statistics.fmean(agree),
        }
    held = label_pairs(
        _items(d, "heldout"), world_config(cfg, seed, 1.0), seed=10 * seed + 2, source="demo-heldout"
    )
    _write_jsonl(d / "heldout_pairs.jsonl", held)
    out["heldout"] = {"path": _rel(cfg, d / "heldout_pairs.jsonl"), "pairs": len(held)}
    return out


def train_rm(cfg: DemoConfig, seed: int, d: Path, agreement: float, kind: str) -> dict:
    """Stage 5: one reward model, early-stopped on held-out pairs of its own kind (``best/``),
    scored on the fresh held-out pairs by the gold order."""
    from trainer.eval.rm_accuracy import evaluate_reward_model
    from trainer.infra.config import load_config
    from trainer.models import read_reward_meta
    from trainer.reward import RewardConfig, train

    out_dir = d / "rm" / f"{kind}_agreement{agreement:g}"
    n_train = (1 - RM_EVAL_FRACTION) * cfg.n_pairs
    steps_per_epoch = max(1, int(n_train // 32))
    args = [
        f"data={d / f'pairs_agreement{agreement:g}.jsonl'}", f"tokenizer={d / 'world' / 'tokenizer'}",
        f"output_dir={out_dir}", *RMS[kind][1], f"epochs={cfg.rm_epochs}", "micro_batch_size=32",
        f"eval_every={max(1, steps_per_epoch // 2)}", "plots=false", "report=false", "checkpoint_every=100",
        f"eval_fraction={RM_EVAL_FRACTION}", *_common(seed),
    ]  # fmt: skip
    metrics = train(load_config(RewardConfig, args))
    best = out_dir / "best" if (out_dir / "best").exists() else out_dir / "final"
    held = evaluate_reward_model(str(best), str(d / "heldout_pairs.jsonl"), max_length=128, batch_size=64)
    kept = read_reward_meta(best)  # the early-stopped model's own held-out metrics
    return {
        "model": _rel(cfg, best),
        "best_step": kept.get("step"),
        "own_heldout_accuracy": (kept.get("eval") or metrics).get("accuracy"),
        "gold_accuracy": held["gold_accuracy"],
    }


def train_arm(cfg: DemoConfig, seed: int, d: Path, arm: tuple, rm_model: str) -> dict:
    """Stage 6: one PPO arm from the SFT model."""
    from trainer.infra.config import load_config
    from trainer.ppo import PPOConfig, train

    name, _, _, level, with_kl = arm
    world = world_config(cfg, seed)
    syn = [f"synthetic.{k}={v}" for k, v in dataclasses.asdict(world).items()]
    args = [
        f"init_from={d / 'sft' / 'final'}", f"reward_model={rm_model}", f"reward_level={level}",
        f"kl_coef={cfg.kl_coef if with_kl else 0.0}", f"output_dir={d / 'ppo' / name}",
        f"iterations={cfg.ppo_iterations}", f"rollout_batch_size={cfg.ppo_rollouts}",
        f"micro_batch_size={cfg.ppo_rollouts // 4}", f"forward_batch_size={cfg.ppo_rollouts}",
        f"max_new_tokens={cfg.max_new_tokens}", "checkpoint_every=10", "plots=false",
        "eval_every=0", "missing_eos_penalty=0",  # (the study evaluates every arm itself, stage 8)
        *syn, *_common(seed),
    ]  # fmt: skip
    train(load_config(PPOConfig, args))
    return {
        "model": _rel(cfg, d / "ppo" / name / "final" / "actor"),
        "metrics": _rel(cfg, d / "ppo" / name / "metrics.jsonl"),
    }


def train_figa(cfg: DemoConfig, seed: int, d: Path) -> dict:
    """Stage 7: FIGA on the edited pairs, from the SFT model."""
    from trainer.infra.config import load_config
    from trainer.sft import SFTConfig, train

    args = [
        "objective=figa", f"init_from={d / 'sft' / 'final'}",
        f"data={d / f'pairs_agreement{cfg.agreement:g}.jsonl'}", f"tokenizer={d / 'world' / 'tokenizer'}",
        f"output_dir={d / 'figa'}", "epochs=2", "lr=5e-4", "eval_every=0", "checkpoint_every=50",
        *_common(seed),
    ]  # fmt: skip
    train(load_config(SFTConfig, args))
    return {"model": _rel(cfg, d / "figa" / "final")}


def evaluate_policy(cfg: DemoConfig, seed: int, d: Path, name: str, model: str) -> dict:
    """Stage 8: the policy answers the eval prompts; the gold judge compares every answer with
    the SFT model's (Table 1)."""
    from trainer.data.synthetic import gold_reward, load_world
    from trainer.eval.pairwise import EvalConfig, run_eval

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
    s = run_eval(
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
    from trainer.infra.metrics import read_log

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


def table3_of(curves: dict[str, list[dict]], target_fraction: float) -> dict:
    """Table 3 of one seed from each arm's PPO records (``gold_reward``, ``kl``,
    ``response_length``, ``iteration_s`` per iteration; ``ppo_rlhf`` is the baseline): the
    start (the arms' mean first-iteration gold), the target (``target_fraction`` of the way to the
    baseline's final gold: the mean of its last 5 iterations) and per arm its curve, iterations and
    seconds to the target (:func:`steps_to_target`; censored at ``len + 1`` and the whole run's
    seconds when never reached; None for every arm when the baseline ends no better than the
    start) and its final gold, KL and length.

    Example: baseline [0, 1, 1, 1, 1, 1] (final 1), other arm [0, 2, 2, 2, 2, 2], fraction 0.5 ->
    target 0.5, iterations 2 (baseline: running mean (0+1)/2 = 0.5) and 2 (mean(0, 2) = 1).
    """
    start = statistics.fmean(c[0]["gold_reward"] for c in curves.values())
    finals = {n: statistics.fmean(r["gold_reward"] for r in c[-5:]) for n, c in curves.items()}
    target = start + target_fraction * (finals["ppo_rlhf"] - start)
    # a baseline that ends no better than the start gives no target (every arm would "reach" it at
    # iteration 1): the seed is left out of the iterations/seconds columns, and says so
    improved = finals["ppo_rlhf"] > start
    table3 = {"start": start, "target": target, "baseline_improved": improved, "arms": {}}
    for name, c in curves.items():
        seconds = [r.get("iteration_s", math.nan) for r in c]
        it, secs = steps_to_target([r["gold_reward"] for r in c], seconds, target)
        reached = it is not None
        if improved and not reached:  # censored: counted as one iteration past the budget
            it, secs = len(c) + 1, float(sum(seconds))
        table3["arms"][name] = {
            "curve": [r["gold_reward"] for r in c],
            "reached": reached,
            "iterations_to_target": it if improved else None,
            "seconds_to_target": secs if improved else None,
            "final_gold_reward": finals[name],
            "final_kl": statistics.fmean(r["kl"] for r in c[-5:]),
            "final_response_length": statistics.fmean(r["response_length"] for r in c[-5:]),
            "seconds_per_iteration": statistics.fmean(r.get("iteration_s", math.nan) for r in c),
        }
    return table3


def run_seed(cfg: DemoConfig, seed: int, stage: Stages) -> dict:
    """Every stage of one seed; returns its tables' numbers (paths in them relative to ``--out``:
    the stages record them so, :func:`_at` resolves them here)."""
    d = Path(cfg.out) / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    tag = f"seed{seed}"
    stage(f"{tag}.world", lambda: make_world(cfg, seed, d))
    sft = stage(f"{tag}.sft", lambda: train_sft(cfg, seed, d))
    stage(f"{tag}.samples", lambda: sample_pairs(cfg, seed, d))
    labels = stage(f"{tag}.labels", lambda: label(cfg, seed, d))
    rms: dict[str, dict[str, dict]] = {}
    for a in cfg.agreements:
        for kind in RMS:
            rms.setdefault(f"{a:g}", {})[kind] = stage(
                f"{tag}.rm.{kind}.agreement{a:g}", lambda a=a, kind=kind: train_rm(cfg, seed, d, a, kind)
            )
    arms = {}
    for arm in ARMS:
        rm_model = _at(cfg, rms[f"{cfg.agreement:g}"][arm[2]]["model"])
        arms[arm[0]] = stage(
            f"{tag}.ppo.{arm[0]}", lambda arm=arm, m=rm_model: train_arm(cfg, seed, d, arm, m)
        )
    figa = stage(f"{tag}.figa", lambda: train_figa(cfg, seed, d))
    policies = {"sft": sft["model"], "figa": figa["model"], **{k: v["model"] for k, v in arms.items()}}
    policies = {name: _at(cfg, model) for name, model in policies.items()}
    table1 = {
        name: stage(f"{tag}.eval.{name}", lambda name=name, m=model: evaluate_policy(cfg, seed, d, name, m))
        for name, model in policies.items()
    }
    # Table 3: gold reward per iteration, iterations/seconds to the target
    table3 = table3_of(
        {name: read_curve(_at(cfg, a["metrics"])) for name, a in arms.items()}, cfg.target_fraction
    )
    for name in arms:
        table1[name]["kl"] = table3["arms"][name]["final_kl"]
    table2 = {a: {kind: r["gold_accuracy"] for kind, r in by.items()} for a, by in rms.items()}
    return {
        "seed": seed,
        "labels": {k: v for k, v in labels.items() if k != "heldout"},
        "table1": table1,
        "table2": table2,
        "table3": table3,
        "reports": {"token-level PPO rollouts": _rel(cfg, d / "ppo" / "fg_token_ppo_kl" / "report.html")},
    }


# --------------------------------------------------------------------------------------------
# Over seeds
# --------------------------------------------------------------------------------------------
def mean_se(xs: list[float | None]) -> dict:
    """Mean and standard error (sample s.d. / √n; NaN with one value) of the values given
    (None = "not reached": counted in ``n_missing``)."""
    vals = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    n = len(vals)
    return {
        "mean": statistics.fmean(vals) if vals else math.nan,
        "se": statistics.stdev(vals) / math.sqrt(n) if n > 1 else math.nan,
        "n": n,
        "n_missing": len(xs) - n,
    }


def aggregate(per_seed: list[dict]) -> dict:
    """Mean ± standard error over seeds of every table entry."""
    t1_keys = ("win_rate", "gold_reward", "response_words", "finished", "kl")
    names = list(per_seed[0]["table1"])
    table1 = {
        n: {
            k: mean_se([s["table1"][n].get(k) for s in per_seed])
            for k in t1_keys
            if k in per_seed[0]["table1"][n]
        }
        for n in names
    }
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
    for n in arms:  # seeds whose baseline improved but where this arm never reached the target
        table3[n]["misses"] = sum(
            1 for s in per_seed if s["table3"]["baseline_improved"] and not s["table3"]["arms"][n]["reached"]
        )
    curves = {}
    for n in arms:
        cs = [s["table3"]["arms"][n]["curve"] for s in per_seed]
        curves[n] = [statistics.fmean(c[i] for c in cs) for i in range(min(map(len, cs)))]
    return {
        "seeds": len(per_seed),
        "table1": table1,
        "table2": table2,
        "table3": table3,
        "table3_curves": curves,
        "target": mean_se([s["table3"]["target"] for s in per_seed]),
        "start": mean_se([s["table3"]["start"] for s in per_seed]),
    }


def _fmt(m: dict, digits: int = 2, scale: float = 1.0) -> str:
    if m["n"] == 0:
        return "not reached"
    s = f"{m['mean'] * scale:.{digits}f}"
    if not math.isnan(m["se"]):
        s += f" ± {m['se'] * scale:.{digits}f}"
    if m["n_missing"]:
        s += f" ({m['n']}/{m['n'] + m['n_missing']} seeds)"
    return s


def markdown(cfg: DemoConfig, agg: dict, seconds: float) -> str:
    """The three tables as Markdown (``seconds``: the stages' total time)."""
    labels = {a[0]: a[1] for a in ARMS} | dict(OTHER_POLICIES)
    lines = [
        "# fgrlhf demo: the paper's tables in the simulated-preference world",
        "",
        f"{agg['seeds']} seed(s), mean ± standard error over seeds; annotator agreement {cfg.agreement} "
        f"for the PPO arms and FIGA; editor recall {cfg.editor_recall}; context-dependent harm "
        f"{'on' if cfg.context_harm else 'off'}; {cfg.ppo_iterations} PPO iterations × {cfg.ppo_rollouts} "
        f"rollouts per arm; the stages took {seconds / 60:.1f} min (over every run that resumed them).",
        "",
        "## Table 1: gold-judge win rate against the SFT model",
        "",
        "| policy | win rate % | gold reward | words / answer | finished | KL (nats/seq) |",
        "|---|---|---|---|---|---|",
    ]
    for n, m in agg["table1"].items():
        kl = _fmt(m["kl"]) if "kl" in m else "–"
        lines.append(
            f"| {labels.get(n, n)} | {_fmt(m['win_rate'], 1)} | {_fmt(m['gold_reward'], 3)} | "
            f"{_fmt(m['response_words'], 1)} | {_fmt(m['finished'], 2)} | {kl} |"
        )
    kinds = list(RMS)
    lines += [
        "",
        "## Table 2: reward-model accuracy on fresh held-out pairs, by the gold order",
        "",
        "| annotator agreement | " + " | ".join(RMS[k][0] for k in kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for a, by in agg["table2"].items():
        lines.append(f"| {a} | " + " | ".join(_fmt(by[k], 3) for k in kinds) + " |")
    lines += [
        "",
        "## Table 3: PPO iterations and seconds to the target gold reward",
        "",
        f"Target: {cfg.target_fraction:g} of the way from the SFT start ({_fmt(agg['start'], 3)}) to "
        f"PPO-RLHF's final gold reward (mean of its last 5 iterations), per seed: mean "
        f"{_fmt(agg['target'], 3)}; on a 3-iteration running mean of each curve. A seed whose PPO-RLHF "
        "ends no better than the start has no target (left out: the n/N seeds); an arm that never "
        f"reaches it counts as {cfg.ppo_iterations + 1} iterations and its whole run's seconds. The "
        "baseline's own row is biased late (its target comes from its own end).",
        "",
        "| arm | iterations to target | seconds to target | final gold reward | final KL | s / iteration |",
        "|---|---|---|---|---|---|",
    ]
    for n, m in agg["table3"].items():
        miss = f" ({m['misses']} not reached: counted as {cfg.ppo_iterations + 1})" if m["misses"] else ""
        lines.append(
            f"| {labels[n]} | {_fmt(m['iterations_to_target'], 1)}{miss} | "
            f"{_fmt(m['seconds_to_target'], 1)} | "
            f"{_fmt(m['final_gold_reward'], 3)} | {_fmt(m['final_kl'], 2)} | "
            f"{_fmt(m['seconds_per_iteration'], 2)} |"
        )
    return "\n".join(lines) + "\n"


def plots(agg: dict, out: Path) -> list[str]:
    """Table 3's curves and Table 2's sweep as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {a[0]: a[1] for a in ARMS}
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for n, c in agg["table3_curves"].items():
        ax.plot(range(1, len(c) + 1), c, label=labels[n])
    ax.axhline(agg["target"]["mean"], color="grey", ls="--", lw=0.8, label="target (mean)")
    ax.set(
        xlabel="PPO iteration",
        ylabel="gold reward (mean token utility)",
        title=f"gold reward per iteration ({agg['seeds']} seeds, mean)",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(str(out / "table3_gold_reward.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [float(a) for a in agg["table2"]]
    for kind, (label_, _) in RMS.items():
        ys = [agg["table2"][a][kind]["mean"] for a in agg["table2"]]
        es = [
            0 if math.isnan(agg["table2"][a][kind]["se"]) else agg["table2"][a][kind]["se"]
            for a in agg["table2"]
        ]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label_)
    ax.set(
        xlabel="annotator agreement with the gold order",
        ylabel="held-out accuracy (gold order)",
        title="reward-model accuracy",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(str(out / "table2_rm_accuracy.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    """Every seed's stages (resumed), then the tables. Returns what ``demo.json`` holds (its paths
    relative to ``--out``).

    Raises:
        ValueError: a bad setting, or ``--out`` holds a demo with other settings.
        StageFailed: a stage raised.
        Preempted / Terminated / KeyboardInterrupt: SIGTERM in a trainer / SIGTERM elsewhere /
            Ctrl-C (finished stages are kept: the same call resumes).
    """
    cfg.check()
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
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
                f"{root} holds a demo made by an earlier version of fgrlhf demo (its samples are drawn "
                "differently): move it away or choose another --out"
            )
        if diff:
            raise ValueError(
                f"{root} holds a demo with other settings ({', '.join(diff)}): rerun with those settings to "
                "resume it, or choose another --out"
            )
    else:
        _write_json(stamp, cfg.identity())
    per_stage = 5 + 3 * len(cfg.agreements) + len(ARMS) + len(ARMS) + len(OTHER_POLICIES)
    with Stages(root, per_stage * cfg.seeds, progress) as stage:  # SIGTERM stops it from here on
        t0 = time.perf_counter()
        per_seed = [run_seed(cfg, s, stage) for s in range(cfg.seeds)]
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
        }
        result["plots"] = [_rel(cfg, path) for path in plots(agg, root / "plots")]
        _write_json(root / "demo.json", result)
        md = markdown(cfg, agg, stage.seconds)
        (root / "demo.md").write_text(md)
    return result


def add_arguments(p) -> None:
    """The flags of ``fgrlhf demo``."""
    d = DemoConfig()
    p.add_argument("--out", default=d.out, help="output directory (a rerun resumes it)")
    p.add_argument(
        "--quick", action="store_true", help="1 seed, 2 agreements, short runs (1.3 min on 2 cores)"
    )
    p.add_argument("--seeds", type=int, default=None, help=f"worlds / seeds (default {d.seeds}; quick 1)")
    p.add_argument("--agreements", type=float, nargs="+", default=None, help="Table 2's annotator agreements")
    p.add_argument("--agreement", type=float, default=d.agreement, help="agreement of the PPO arms' data")
    p.add_argument(
        "--editor-recall", type=float, default=d.editor_recall, help="P(editor fixes a harmful word)"
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
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def config_from_args(args) -> DemoConfig:
    """The :class:`DemoConfig` of parsed flags (``--quick`` sets its smaller defaults first)."""
    cfg = DemoConfig(**(QUICK if args.quick else {}), quick=args.quick)
    cfg.out, cfg.agreement = args.out, args.agreement
    cfg.editor_recall, cfg.context_harm, cfg.target_fraction = (
        args.editor_recall,
        args.context_harm,
        args.target_fraction,
    )
    for key in ("seeds", "agreements", "ppo_iterations"):
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
    from trainer.data.synthetic import SyntheticConfig, check_world

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
    import argparse

    p = argparse.ArgumentParser(prog="fgrlhf demo", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    add_arguments(p)
    args = p.parse_args(argv)
    return cmd(args)


def cmd(args) -> int:
    """Run the demo from parsed flags; prints the tables and the report's path."""
    from trainer.infra.runtime import EXIT_PREEMPTED, Preempted

    try:
        cfg = config_from_args(args)
        res = run_demo(cfg, progress=args.progress)
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
        return 143
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
