"""Pairwise judges for ``fgrlhf eval``: which of two answers to one instruction is better.

One small interface, :class:`Judge`; a judge is named by a spec string (:func:`make_judge`):

* ``claude:<model>`` — :class:`ClaudeJudge`: Claude through the shared
  :class:`~trainer.infra.claude.ClaudeClient` (the edit collector's client: SDK retries, extra
  attempts, the key from the environment only) with the versioned pairwise prompt
  ``trainer/eval/prompts/pairwise_v1.txt``; its verdict is the last ``<preference>1|2|0
  </preference>`` of the reply (0: the judge found them equal).
* ``rm:<dir>`` — :class:`RewardModelJudge`: a reward model trained by ``trainer/reward.py``
  scores each answer (its sequence reward R(τ), prompts rendered with the template it was
  trained on); the higher wins, equal rewards (within ``tie_tolerance``) are a draw. Offline and
  free, and position-blind by construction.
* ``gold:<dir>`` — :class:`GoldJudge`: the synthetic world's known gold reward (the mean token
  utility, :func:`trainer.data.synthetic.gold_reward`) of the world written under ``<dir>``
  (its ``synthetic_config.json``); the higher wins, equal gold rewards are a draw. The judge of
  ``fgrlhf demo``: exact, so a win rate measures the policy, not the judge. The gold is a mean
  token utility, blind to length, so it cannot judge an empty answer (0, above most base
  answers) or one cut at the length cap (``finished`` False in ``fgrlhf generate``'s output):
  such an answer loses to a complete one, and two of them draw.

Adding a judge means one class: subclass :class:`Judge`, set ``name`` and ``version`` and write
:meth:`Judge.compare_batch` (or :meth:`Judge.compare` for one pair at a time).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trainer.data.formats import Prompt
from trainer.data.synthetic import gold_reward, load_world
from trainer.errors import ConfigError, JobFailed
from trainer.infra.claude import ClaudeClient, ClaudeSettings, cost_usd

__all__ = [
    "ClaudeJudge",
    "Comparison",
    "GoldJudge",
    "Judge",
    "JudgeError",
    "RewardModelJudge",
    "Verdict",
    "make_judge",
    "parse_preference",
]

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
PAIRWISE_PROMPT_VERSION = "pairwise-v1"
JUDGE_SETTINGS = ClaudeSettings(max_tokens=1024)  # a verdict after a short reasoning


class JudgeError(JobFailed):
    """A judge that cannot give a verdict for a reason no retry fixes (a reward model or gold
    world scoring an answer NaN or ±inf): the run stops (exit 1), naming the instruction; what was
    judged before stays written."""


def checked_scores(judge: str, what: str, prompt: Prompt, scores: Sequence[float]) -> None:
    """Refuse non-finite scores: ``r1 > r2`` is False for NaN, so a NaN would silently be a
    verdict for the second answer (an RM with a NaN bias read as a 50% win rate).

    Raises:
        JudgeError: a score is NaN or ±inf (names the judge, the instruction and the scores).
    """
    if not all(math.isfinite(x) for x in scores):
        raise JudgeError(
            f"{judge} gave non-finite {what}s {[float(x) for x in scores]} to the answers of the "
            f"instruction {prompt.text[:80]!r}: no verdict is possible (check the weights or world); "
            "the verdicts before it are kept"
        )


@dataclass(frozen=True)
class Comparison:
    """Two answers to one prompt, in the order the judge sees them; ``finished_1`` /
    ``finished_2``: whether each ended with EOS (``fgrlhf generate``'s ``finished``; None when the
    outputs file does not say)."""

    prompt: Prompt
    output_1: str
    output_2: str
    finished_1: bool | None = None
    finished_2: bool | None = None


@dataclass
class Verdict:
    """A judge's answer.

    Attributes:
        preference: 1 = ``output_1`` is better, 2 = ``output_2``, 0 = a draw; None on error.
        raw: the judge's text (Claude's reply; for a reward model, the two rewards).
        model: the model that answered (Claude's reported id).
        input_tokens, output_tokens: API usage (0 for offline judges).
        error: why there is no verdict (the request failed, or the reply had no preference).
    """

    preference: int | None
    raw: str = ""
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None


class Judge:
    """The judge interface. ``name`` is recorded as each annotation's ``annotator``; ``version``
    (prompt version, or a reward model's weights hash) is part of every judgment's identity, so
    a rerun with another judge never reuses a verdict. ``concurrency`` comparisons are in flight
    at once; :meth:`compare_batch` receives up to ``batch_size`` of them."""

    name: str = "judge"
    version: str = "0"
    concurrency: int = 1
    batch_size: int = 1
    uses_finished: bool = False  # the verdict depends on Comparison.finished_* (part of its identity)

    async def compare(self, c: Comparison) -> Verdict:
        """One comparison."""
        raise NotImplementedError

    async def compare_batch(self, cs: Sequence[Comparison]) -> list[Verdict]:
        """Several comparisons (default: :meth:`compare` each, concurrently)."""
        return list(await asyncio.gather(*(self.compare(c) for c in cs)))

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float | None:
        """Estimated cost of the tokens used (0 for offline judges, None when unknown)."""
        return 0.0

    async def aclose(self) -> None:
        """Release clients."""


_PREF_RE = re.compile(r"<preference>\s*([012])\s*</preference>")


def parse_preference(text: str) -> int | None:
    """The last ``<preference>N</preference>`` (N in 0, 1, 2) of ``text``, or None."""
    found = _PREF_RE.findall(text)
    return int(found[-1]) if found else None


class ClaudeJudge(Judge):
    """Claude as the judge (see the module docstring).

    Args:
        model: Claude model id.
        settings: the :class:`~trainer.infra.claude.ClaudeClient` settings and prices (default:
            :data:`JUDGE_SETTINGS`; ``max_tokens`` leaves room for a short reasoning before the
            verdict).
        prompt_file: a pairwise prompt template overriding the built-in one (placeholders
            ``{instruction}``, ``{output_1}``, ``{output_2}``; versioned by its hash).
    """

    def __init__(self, model: str, settings: ClaudeSettings | None = None, prompt_file: str | None = None):
        settings = settings or JUDGE_SETTINGS
        if prompt_file is None:
            self.template = (PROMPTS_DIR / "pairwise_v1.txt").read_text(encoding="utf-8")
            self.version = PAIRWISE_PROMPT_VERSION
        else:
            p = Path(prompt_file)
            try:
                self.template = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"{p}: cannot read the judge prompt ({e})") from e
            missing = [k for k in ("{instruction}", "{output_1}", "{output_2}") if k not in self.template]
            if missing:
                raise ValueError(f"{p}: the judge prompt lacks {', '.join(missing)}")
            self.version = f"file:{p.name}:{hashlib.sha256(self.template.encode()).hexdigest()[:12]}"
        self.model = model
        self.name = f"claude:{model}"
        self.price_in, self.price_out = settings.price_in, settings.price_out
        self.concurrency = settings.concurrency
        self.client = ClaudeClient(model, settings)

    def render(self, c: Comparison) -> str:
        """The user message: the template with its placeholders filled in one pass."""
        values = {"instruction": c.prompt.text, "output_1": c.output_1, "output_2": c.output_2}
        return re.sub(r"\{(instruction|output_1|output_2)\}", lambda m: values[m.group(1)], self.template)

    async def compare(self, c: Comparison) -> Verdict:
        """One request; a reply without a preference is an error (not written: a rerun retries)."""
        reply = await self.client.complete(self.render(c))
        usage = {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens}
        if reply.error is not None:
            return Verdict(None, error=reply.error, **usage)
        pref = parse_preference(reply.text)
        if pref is None:
            what = "a refusal" if reply.stop_reason == "refusal" else f"stop_reason {reply.stop_reason}"
            return Verdict(
                None, reply.text, reply.model, error=f"no <preference> in the reply ({what})", **usage
            )
        return Verdict(pref, reply.text, reply.model, **usage)

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float | None:
        return cost_usd(self.model, input_tokens, output_tokens, self.price_in, self.price_out)

    async def aclose(self) -> None:
        await self.client.aclose()


class RewardModelJudge(Judge):
    """A trained reward model as the judge (see the module docstring).

    Args:
        rm_dir: a directory written by ``trainer/reward.py`` (``final/`` or ``best/``).
        max_length: longest prompt + answer in tokens (longer ones are cut as in training).
        batch_size: comparisons per forward (two rows each).
        tie_tolerance: rewards closer than this are a draw.
        device: ``auto`` (CUDA when available), ``cuda`` or ``cpu``.
    """

    def __init__(
        self,
        rm_dir: str,
        max_length: int = 1024,
        batch_size: int = 16,
        tie_tolerance: float = 0.0,
        device: str = "auto",
    ):
        import torch  # lazy: torch (fgrlhf --help is torch-free)

        from trainer.data.examples import checked_template  # lazy: torch (fgrlhf --help is torch-free)
        from trainer.models import (  # lazy: torch (fgrlhf --help is torch-free)
            open_reward_model,
            pad_token_id,
        )

        use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
        self.device = torch.device("cuda" if use_cuda else "cpu")
        self.rm, meta, self.tokenizer = open_reward_model(rm_dir, "judge", self.device)
        self.template = checked_template(self.tokenizer, meta.get("prompt_template", "auto"))
        self.pad_id = pad_token_id(self.tokenizer) or 0
        self.max_length, self.batch_size, self.tie_tolerance = max_length, batch_size, tie_tolerance
        self.name = f"rm:{Path(rm_dir)}"
        weights = sorted(Path(rm_dir).glob("*.safetensors"))
        h = hashlib.sha256()
        for w in weights:  # identity of the weights: their sizes and first MiB
            h.update(w.name.encode())
            h.update(str(w.stat().st_size).encode())
            with open(w, "rb") as fh:
                h.update(fh.read(1 << 20))
        self.version = f"{meta['level']}:{h.hexdigest()[:12]}"

    def rewards(self, prompts: Sequence[Prompt], outputs: Sequence[str]) -> list[float]:
        """``R(τ)`` of each (prompt, output), tokenised as the reward trainer does."""
        import torch  # lazy: torch (fgrlhf --help is torch-free)

        from trainer.data.examples import build_example, collate  # lazy: torch (fgrlhf --help is torch-free)

        ex = [
            build_example(self.tokenizer, p, o, max_length=self.max_length, prompt_template=self.template)
            for p, o in zip(prompts, outputs)
        ]
        batch = collate(ex, self.pad_id)
        with torch.no_grad():
            s = self.rm.score(
                batch["input_ids"].to(self.device),
                batch["attention_mask"].to(self.device),
                batch["response_mask"].to(self.device),
            )
        return s.sequence.float().cpu().tolist()

    async def compare_batch(self, cs: Sequence[Comparison]) -> list[Verdict]:
        prompts = [c.prompt for c in cs for _ in (0, 1)]
        outputs = [o for c in cs for o in (c.output_1, c.output_2)]
        r = self.rewards(prompts, outputs)
        out = []
        for i in range(len(cs)):
            r1, r2 = r[2 * i], r[2 * i + 1]
            checked_scores(self.name, "reward", cs[i].prompt, (r1, r2))
            pref = 0 if abs(r1 - r2) <= self.tie_tolerance else (1 if r1 > r2 else 2)
            out.append(Verdict(pref, f"reward_1={r1:.6g} reward_2={r2:.6g}", self.name))
        return out


class GoldJudge(Judge):
    """The synthetic world's gold reward as the judge (see the module docstring).

    Args:
        world: a directory holding ``synthetic_config.json`` (``trainer.data.synthetic.write_synthetic``
            writes it; every trainer's ``output_dir/synthetic``), or that file.
        tie_tolerance: gold rewards closer than this are a draw.
    """

    batch_size = 64
    uses_finished = True

    def __init__(self, world: str, tie_tolerance: float = 0.0):
        try:
            self.world = load_world(world)
        except ValueError as e:
            raise ConfigError(f"--judge gold:{world}: {e}") from None
        self.tie_tolerance = tie_tolerance
        self.name = f"gold:{Path(world)}"
        blob = json.dumps(self.world.__dict__, sort_keys=True).encode()
        # v2: empty and unfinished answers lose (v1 scored them by their mean utility)
        self.version = f"gold-v2:{hashlib.sha256(blob).hexdigest()[:12]}"

    def reward(self, prompt: Prompt, output: str) -> float:
        """The gold reward of one answer."""
        return gold_reward(prompt.text, output, self.world)

    @staticmethod
    def complete(output: str, finished: bool | None) -> bool:
        """An answer the gold may score: not empty, and not cut at the length cap (``finished``
        False). The gold reward is a mean token utility, blind to length and to a missing EOS:
        an empty answer scores 0, above most base answers, and a cut one is scored as if whole."""
        return bool(output.strip()) and finished is not False

    async def compare(self, c: Comparison) -> Verdict:
        """A complete answer beats an empty or unfinished one (AlpacaFarm's missing-EOS rule: an
        unfinished answer is the worst); two incomplete answers draw; otherwise the higher gold wins."""
        ok1, ok2 = self.complete(c.output_1, c.finished_1), self.complete(c.output_2, c.finished_2)
        g1, g2 = self.reward(c.prompt, c.output_1), self.reward(c.prompt, c.output_2)
        checked_scores(self.name, "gold reward", c.prompt, (g1, g2))
        raw = f"gold_1={g1:.6g} gold_2={g2:.6g} complete_1={ok1} complete_2={ok2}"
        if ok1 != ok2:
            return Verdict(1 if ok1 else 2, raw, self.name)
        if not ok1:
            return Verdict(0, raw, self.name)
        pref = 0 if abs(g1 - g2) <= self.tie_tolerance else (1 if g1 > g2 else 2)
        return Verdict(pref, raw, self.name)


def make_judge(spec: str, **options) -> Judge:
    """The judge a spec names: ``claude:<model>``, ``rm:<dir>`` or ``gold:<world dir>``.

    ``options`` go to the judge's constructor (those it does not take are ignored, so one set of
    command-line flags serves every judge).

    Raises:
        ValueError: an unknown kind or an empty name.
    """
    kind, _, arg = spec.partition(":")
    classes: dict[str, type[Judge]] = {"claude": ClaudeJudge, "rm": RewardModelJudge, "gold": GoldJudge}
    if kind not in classes or not arg:
        raise ValueError(
            f"--judge {spec!r}: expected one of claude:<model>, rm:<reward model dir>, "
            "gold:<synthetic world dir>"
        )
    cls = classes[kind]
    params = inspect.signature(cls.__init__).parameters
    kept = {k: v for k, v in options.items() if v is not None and k in params}
    return cls(arg, **kept)
