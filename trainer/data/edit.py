"""The minimal-edit collector behind ``fgrlhf edit`` (Xu et al. 2024, §2.1: minimal editing).

For each preference pair, the less-preferred response is sent to an :class:`Editor` (Claude
through the official ``anthropic`` SDK) with a minimal-editing
prompt; the answer passes quality gates and is appended to a JSONL file, one record per pair::

    fgrlhf edit pairs.jsonl -o edits.jsonl --model claude-sonnet-4-6 --concurrency 8
    fgrlhf edit pairs.jsonl -o edits.jsonl --dry-run --limit 3   # prompts + token/cost estimate

Output record (one JSON object per line; ``datasets.load_dataset("json", data_files=...)``
reads it)::

    id              str    the input pair's id (trainer.data.formats: explicit or content hash)
    prompt          str    the prompt
    original        str    the less-preferred response (tau^j)
    edited          str    the editor's text between <edited> tags ("" if none) (tau^i)
    chosen          str    the preferred response of the input pair (for the baselines)
    status          str    "ok", or why the edit is rejected: unchanged | empty | refusal |
                           commentary | not_minimal | truncated
    similarity      float  token-level LCS similarity of original and edited, in [0, 1]
    model           str    the model that answered (as reported by the API)
    prompt_version  str    "minimal-edit-v1", or "file:<name>:<sha256[:12]>" for --prompt-file
    stop_reason     str    the API's stop reason
    usage           {input_tokens: int, output_tokens: int}
    source          str    "<input file>:<line N|record N>"
    created_at      str    UTC ISO-8601 time of writing

Only final outcomes are written: API failures (retries exhausted, malformed replies) are not,
so a rerun retries them; they go to ``<output>.errors.jsonl`` (id, error class, message) for
inspection. Crash safety: the output is append-only, written one whole line per record and
flushed (and fsync'ed) before the next; a rerun reads it, skips finished ids, and drops a
partial last line left by a kill. An exclusive lock on ``<output>.lock`` stops two runs
writing the same file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, ClassVar, Protocol

from trainer.data.align import token_similarity
from trainer.data.formats import (
    EDIT_STATUSES,
    FORMATS,
    DataError,
    EditRecord,
    LoadResult,
    PreferencePair,
    load_pairs,
)
from trainer.errors import Stopped
from trainer.infra.appendlog import AppendLog
from trainer.infra.claude import (  # noqa: F401 - re-exported: the edit job's model and prices
    DEFAULT_MODEL,
    PRICES_PER_MTOK,
    ClaudeClient,
    ClaudeSettings,
    cost_usd,
    price_for,
    require_api_key,
)
from trainer.infra.jobs import append_failure, run_jobs

log = logging.getLogger(__name__)

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
DEFAULT_PROMPT_VERSION = "minimal-edit-v1"
STATUSES = EDIT_STATUSES


# --------------------------------------------------------------------------------------------
# prompt
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptTemplate:
    """The editing prompt: a user message with ``{prompt}`` and ``{response}`` placeholders.

    Attributes:
        text: the template text.
        version: recorded in every output record.
    """

    text: str
    version: str

    @classmethod
    def load(cls, path: str | Path | None = None) -> PromptTemplate:
        """The built-in versioned prompt, or the one in ``path`` (versioned by its hash)."""
        if path is None:
            return cls(
                (PROMPTS_DIR / f"{DEFAULT_PROMPT_VERSION.replace('-', '_')}.txt").read_text(),
                DEFAULT_PROMPT_VERSION,
            )
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{p}: cannot read the prompt file ({e})") from e
        missing = [k for k in ("{prompt}", "{response}") if k not in text]
        if missing:
            raise ValueError(f"{p}: the prompt template lacks {', '.join(missing)}")
        return cls(text, f"file:{p.name}:{hashlib.sha256(text.encode()).hexdigest()[:12]}")

    def render(self, prompt: str, response: str) -> str:
        """Fill the placeholders in one pass (braces inside the values are left alone)."""
        values = {"prompt": prompt, "response": response}
        return re.sub(r"\{(prompt|response)\}", lambda m: values[m.group(1)], self.text)


# --------------------------------------------------------------------------------------------
# editors
# --------------------------------------------------------------------------------------------
@dataclass
class EditResult:
    """One editor answer.

    Attributes:
        text: the edited response (between ``<edited>`` tags), None when there was none.
        raw: the editor's whole output.
        model: the model that answered.
        stop_reason: the API's stop reason (``end_turn``, ``max_tokens``, ``refusal``...).
        input_tokens, output_tokens: usage reported by the API.
        error: set when the request failed for good (the other fields are then empty); it
            names the error class and message, never the credentials.
    """

    text: str | None
    raw: str = ""
    model: str = ""
    stop_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None


class Editor(Protocol):
    """Rewrites a response minimally. Implemented by :class:`ClaudeEditor`; any object with
    these two members (tests use scripted ones) plugs into :func:`run_edit`."""

    prompt_version: str

    async def edit(self, prompt: str, response: str) -> EditResult:
        """Return the edit of ``response`` (an answer to ``prompt``)."""
        ...


_EDITED_RE = re.compile(r"<edited>(.*)</edited>", re.DOTALL)


def extract_edit(raw: str) -> str | None:
    """The text between the first ``<edited>`` and the last ``</edited>``, one surrounding
    newline removed on each side; None when the tags are missing."""
    m = _EDITED_RE.search(raw)
    if m is None:
        return None
    text = m.group(1)
    text = text[1:] if text.startswith("\n") else text
    return text[:-1] if text.endswith("\n") else text


class ClaudeEditor:
    """Claude as the editor: the editing prompt through the shared
    :class:`~trainer.infra.claude.ClaudeClient` (its docstring: retries, temperature, the key).

    Args:
        model: model id.
        settings: the client's settings (``max_tokens``: an edit longer than that is rejected as
            ``truncated``).
        template: the editing prompt.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        settings: ClaudeSettings | None = None,
        template: PromptTemplate | None = None,
    ):
        self.template = template or PromptTemplate.load()
        self.prompt_version = self.template.version
        self.client = ClaudeClient(model, settings)

    async def edit(self, prompt: str, response: str) -> EditResult:
        """Send one editing request."""
        c = await self.client.complete(self.template.render(prompt, response))
        if c.error is not None:
            return EditResult(None, error=c.error)
        return EditResult(
            text=extract_edit(c.text),
            raw=c.text,
            model=c.model,
            stop_reason=c.stop_reason,
            input_tokens=c.input_tokens,
            output_tokens=c.output_tokens,
        )

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()


# --------------------------------------------------------------------------------------------
# quality gates
# --------------------------------------------------------------------------------------------
_WORD_RE = re.compile(r"\w+|[^\w\s]")
_REFUSAL_RE = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry,|i apologi[sz]e|i can(?:no|')t|i cannot|i won'?t|i will not|"
    r"i'?m (?:not able|unable)|i am (?:not able|unable)|as an ai\b)",
    re.IGNORECASE,
)
_COMMENTARY_RE = re.compile(
    r"^\W*(here(?:'s| is| are) (?:the|my|an?|your) |(?:the )?edited (?:response|version)\b|sure[,!.]|"
    r"certainly[,!.]|i(?:'ve| have) (?:edited|made|revised|corrected)|"
    r"no (?:changes|edits) (?:are )?(?:needed|required))",
    re.IGNORECASE,
)


def word_tokens(text: str) -> list[str]:
    """Default tokens for the similarity gate: words and single punctuation marks."""
    return _WORD_RE.findall(text)


def judge_edit(
    original: str,
    result: EditResult,
    min_similarity: float = 0.5,
    tokenize: Callable[[str], Sequence] = word_tokens,
) -> tuple[str, float]:
    """Apply the quality gates to an editor answer.

    Gates, in order: the API's ``refusal`` stop reason; ``truncated`` (``max_tokens``); no
    ``<edited>`` tags (``refusal`` if it reads like one, else ``commentary``); ``empty``;
    an edit that starts like a refusal or like commentary when the original did not;
    ``unchanged`` (equal up to surrounding whitespace); ``not_minimal`` (token-level LCS
    similarity below ``min_similarity``).

    Args:
        original: the response that was edited.
        result: the editor's answer (``result.error`` must be None).
        min_similarity: threshold of the not-minimal gate.
        tokenize: text to tokens for the similarity (words by default; the policy tokenizer's
            ``encode`` works too).

    Returns:
        ``(status, similarity)``, status one of :data:`STATUSES`.
    """
    raw = result.raw or ""
    text = result.text
    if result.stop_reason == "refusal":
        return "refusal", 0.0
    if result.stop_reason == "max_tokens":
        return "truncated", 0.0
    if text is None:
        return ("refusal" if _REFUSAL_RE.search(raw.strip()) else "commentary"), 0.0
    if not text.strip():
        return "empty", 0.0
    similarity = token_similarity(tokenize(original), tokenize(text))
    for status, pattern in (("refusal", _REFUSAL_RE), ("commentary", _COMMENTARY_RE)):
        if pattern.search(text.strip()) and not pattern.search(original.strip()):
            return status, similarity
    if text.strip() == original.strip():
        return "unchanged", 1.0
    if similarity < min_similarity:
        return "not_minimal", similarity
    return "ok", similarity


# --------------------------------------------------------------------------------------------
# crash-safe output
# --------------------------------------------------------------------------------------------
class EditLog(AppendLog):
    """The edits file: an :class:`~trainer.infra.appendlog.AppendLog` of edit records (``id``
    and ``status`` required; ``done`` maps id -> status)."""

    REQUIRED = ("id", "status")
    KIND = "edit record"
    TOOL = "fgrlhf edit"


# --------------------------------------------------------------------------------------------
# the collector
# --------------------------------------------------------------------------------------------
@dataclass
class EditConfig(ClaudeSettings):
    """Settings of ``fgrlhf edit`` (its flags are derived from these fields: ``--max-tokens``...),
    beside the Claude client's (:class:`~trainer.infra.claude.ClaudeSettings`)."""

    CHOICES: ClassVar[dict] = {"format": ("auto", *FORMATS)}
    AT_LEAST: ClassVar[dict] = {"limit": 1, "min_similarity": 0}
    AT_MOST: ClassVar[dict] = {"min_similarity": 1}

    input: str
    """Preference data: a local file or a Hugging Face dataset name."""
    output: str
    """The JSONL to append to (resumed when it exists)."""
    format: str = "auto"
    """``auto``, ``alpaca``, ``hh`` or ``jsonl``."""
    split: str = "train"
    """Hugging Face split."""
    model: str = DEFAULT_MODEL
    """Claude model id."""
    prompt_file: str | None = None
    """A prompt template overriding the built-in one (``{prompt}`` and ``{response}``)."""
    min_similarity: float = 0.5
    """The not-minimal gate's threshold on token-level LCS similarity."""
    limit: int | None = None
    """Use only the first ``limit`` input pairs."""
    dry_run: bool = False
    """Print prompts and the token/cost estimate; send nothing."""
    skip_invalid: bool = False
    """Skip bad input records (counted) instead of stopping."""
    progress: bool = True
    """Show a progress bar (on a terminal)."""
    fsync: bool = True
    """Fsync the output after every record."""
    redo_stale: bool = False
    """Request again the stored edits made with another prompt version or model (without it, a
    rerun with another ``--prompt-file`` / ``--model`` is refused)."""


@dataclass
class EditSummary:
    """What a run did. ``statuses`` counts written records by status (``ok`` and rejection
    reasons); ``failed`` counts API failures (not written: a rerun retries them)."""

    input_records: int = 0
    pairs: int = 0
    invalid: int = 0
    duplicates: int = 0
    already_done: int = 0
    attempted: int = 0
    statuses: Counter = field(default_factory=Counter)
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    estimated_cost_usd: float | None = None
    dry_run: bool = False
    interrupted: bool = False
    regated: int = 0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["statuses"] = dict(self.statuses)
        return d

    def format(self) -> str:
        """A human-readable multi-line summary."""
        rejected = {k: v for k, v in sorted(self.statuses.items()) if k != "ok"}
        cost = (
            "unknown (no price for this model)"
            if self.estimated_cost_usd is None
            else (f"${self.estimated_cost_usd:.4f}")
        )
        lines = [
            f"input records   {self.input_records} "
            f"({self.invalid} invalid skipped, {self.duplicates} duplicates)",
            f"pairs           {self.pairs} ({self.already_done} already done"
            + (f", {self.regated} stored edits re-gated to a new status)" if self.regated else ")"),
            f"{'would send' if self.dry_run else 'attempted'}      {self.attempted}",
        ]
        if not self.dry_run:
            lines += [
                f"done            {self.statuses.get('ok', 0)}",
                f"rejected        {sum(rejected.values())} {rejected if rejected else ''}".rstrip(),
                f"failed          {self.failed}" + (" (rerun to retry)" if self.failed else ""),
            ]
        if self.interrupted:
            lines.append("interrupted     what is written is kept: rerun the same command to continue")
        est = "estimated " if self.dry_run else ""
        lines += [
            f"{est}tokens  in {self.input_tokens}, out {self.output_tokens}",
            f"{est}cost    {cost}" if self.dry_run else f"estimated cost  {cost}",
        ]
        return "\n".join(lines)


def _cost(model: str, tokens_in: int, tokens_out: int, cfg: EditConfig) -> float | None:
    return cost_usd(model, tokens_in, tokens_out, cfg.price_in, cfg.price_out)


def estimate_tokens(text: str) -> int:
    """A rough Claude token count (about 3.5 characters a token), for dry runs."""
    return max(1, round(len(text) / 3.5))


def make_record(
    pair: PreferencePair, result: EditResult, status: str, similarity: float, version: str
) -> dict:
    """The output line of one finished edit (the :class:`~trainer.data.formats.EditRecord` schema)."""
    return EditRecord(
        id=pair.id,
        prompt=pair.prompt,
        original=pair.rejected,
        edited=result.text if result.text is not None else "",
        chosen=pair.chosen,
        status=status,
        similarity=round(float(similarity), 6),
        model=result.model,
        prompt_version=version,
        stop_reason=result.stop_reason or "",
        usage={"input_tokens": int(result.input_tokens), "output_tokens": int(result.output_tokens)},
        source=pair.source,
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        instruction=pair.instruction,
        input=pair.input,
    ).to_json()


def _select(loaded: LoadResult, cfg: EditConfig) -> list[PreferencePair]:
    return loaded.pairs[: cfg.limit] if cfg.limit is not None else loaded.pairs


def run_edit(cfg: EditConfig, editor: Editor | None = None, out: IO[str] | None = None) -> EditSummary:
    """Run the collector: load, skip finished ids, edit, gate, append; print a summary.

    Args:
        cfg: the settings.
        editor: the editor to use (default: a :class:`ClaudeEditor` built from ``cfg``).
        out: where prompts (dry run) and the summary go (default: stdout).

    Returns:
        The :class:`EditSummary`.

    Raises:
        trainer.data.formats.DataError: unreadable input or (without ``skip_invalid``) a bad record.
        trainer.errors.JobFailed: no ``ANTHROPIC_API_KEY`` for a real run with pairs left to edit,
            or the output is locked.
        trainer.errors.Stopped / KeyboardInterrupt: SIGTERM / Ctrl-C, after the summary of what was
            written (the requests in flight are cancelled: a rerun asks again).
    """
    out = out or sys.stdout
    if Path(cfg.input).exists() and Path(cfg.output).exists() and Path(cfg.input).samefile(cfg.output):
        raise UsageError(
            f"{cfg.output}: output is the input file; give -o a new file (or an earlier edits file)"
        )
    template = PromptTemplate.load(cfg.prompt_file)
    # 1. load and validate the input
    loaded = load_pairs(cfg.input, fmt=cfg.format, split=cfg.split, skip_invalid=cfg.skip_invalid)
    for err in loaded.invalid[:20]:
        log.warning("skipped: %s", err)
    if not loaded.pairs and loaded.invalid:
        raise DataError(
            cfg.input, f"every record is invalid ({len(loaded.invalid)} skipped): nothing to edit"
        )
    pairs = _select(loaded, cfg)
    summary = EditSummary(
        input_records=loaded.total,
        pairs=len(pairs),
        invalid=len(loaded.invalid),
        duplicates=loaded.duplicates,
        dry_run=cfg.dry_run,
    )

    # 2. dry run: show prompts, estimate tokens and cost, send nothing
    if cfg.dry_run:
        done = _peek_done(Path(cfg.output))
        todo = [p for p in pairs if p.id not in done]
        summary.already_done, summary.attempted = len(pairs) - len(todo), len(todo)
        for p in todo[:3]:
            print(f"----- prompt for id {p.id} ({p.source}) -----", file=out)
            print(template.render(p.prompt, p.rejected), file=out)
        for p in todo:
            summary.input_tokens += estimate_tokens(template.render(p.prompt, p.rejected))
            summary.output_tokens += estimate_tokens(p.rejected) + 8
        summary.estimated_cost_usd = _cost(cfg.model, summary.input_tokens, summary.output_tokens, cfg)
        print(summary.format(), file=out)
        return summary

    # 3. the real run: resume from the output, edit what is left
    own_editor = editor is None
    if editor is None:
        # The key is needed only when something is left to send: a finished output reruns (and
        # re-applies the gates) without it, e.g. a recipe resumed on a training node that holds
        # no key. Checked before the output is opened, as before.
        done = _peek_done(Path(cfg.output))
        if cfg.redo_stale or any(p.id not in done for p in pairs):
            require_api_key()
        editor = ClaudeEditor(cfg.model, cfg, template)
    outlog = EditLog(cfg.output, fsync=cfg.fsync)
    errlog_path = Path(cfg.output).with_name(Path(cfg.output).name + ".errors.jsonl")
    try:
        redo = _stale_ids(outlog, pairs, editor.prompt_version, cfg)
        summary.regated = _regate(outlog, pairs, redo, cfg)
        todo = [p for p in pairs if p.id not in outlog.done or p.id in redo]
        summary.already_done, summary.attempted = len(pairs) - len(todo), len(todo)
        try:
            _edit_all(todo, editor, outlog, errlog_path, cfg, summary, own_editor)
        except (KeyboardInterrupt, Stopped):  # Ctrl-C / SIGTERM: what was written is kept
            summary.interrupted = True
            summary.estimated_cost_usd = _cost(cfg.model, summary.input_tokens, summary.output_tokens, cfg)
            print(summary.format(), file=out)
            raise
    finally:
        outlog.close()
    if summary.failed == 0 and len(outlog.done) >= len({p.id for p in pairs}):
        errlog_path.unlink(missing_ok=True)  # every pair is done: earlier failures are stale
    summary.estimated_cost_usd = _cost(cfg.model, summary.input_tokens, summary.output_tokens, cfg)
    print(summary.format(), file=out)
    return summary


class UsageError(ValueError):
    """A rerun whose flags conflict with what the output already holds (exit 2)."""


def _same_model(stored: str, requested: str) -> bool:
    """The same model: equal ids, or one is the other plus a date suffix (the API reports
    ``claude-x-20260101`` for the alias ``claude-x``); ``claude-x-4`` is not ``claude-x-4-5``."""
    dated = re.compile(r"(-\d{8})?")
    return (
        not stored
        or stored == requested
        or (stored.startswith(requested) and dated.fullmatch(stored[len(requested) :]) is not None)
        or (requested.startswith(stored) and dated.fullmatch(requested[len(stored) :]) is not None)
    )


def _stale_ids(outlog: EditLog, pairs: list[PreferencePair], version: str, cfg: EditConfig) -> set[str]:
    """Ids of this input whose stored edit came from another prompt version or model: refused
    unless ``redo_stale`` (then they are requested again; the new record supersedes the old).

    Raises:
        UsageError: stale records without ``redo_stale`` (names one and how many).
    """
    stale = []
    for p in pairs:
        rec = outlog.records.get(p.id)
        if rec is not None and (
            rec.get("prompt_version", version) != version
            or not _same_model(str(rec.get("model", "")), cfg.model)
        ):
            stale.append(rec)
    if stale and not cfg.redo_stale:
        r = stale[0]
        raise UsageError(
            f"{cfg.output}: {len(stale)} stored edits were made with another prompt or model (e.g. id "
            f"{r['id']}: prompt {r.get('prompt_version')!r}, model {r.get('model')!r}; this run: "
            f"{version!r}, {cfg.model!r}); rerun with --redo-stale to request them again, or with the same "
            "--prompt-file / --model"
        )
    return {str(r["id"]) for r in stale}


def _regate(outlog: EditLog, pairs: list[PreferencePair], skip: set[str], cfg: EditConfig) -> int:
    """Apply this run's quality gates to the stored edits (no API call: the edit is in the file).
    A record whose status changes (``--min-similarity`` changed, say) is appended again with
    the new status; the last record of an id is the one every reader uses. Returns how many."""
    changed = 0
    for p in pairs:
        rec = outlog.records.get(p.id)
        if rec is None or p.id in skip or rec.get("status") not in ("ok", "not_minimal"):
            continue  # refusals, truncations, empty/unchanged edits do not depend on thresholds
        result = EditResult(
            text=rec.get("edited", ""), raw=rec.get("edited", ""), stop_reason=rec.get("stop_reason")
        )
        status, sim = judge_edit(rec["original"], result, cfg.min_similarity)
        if status != rec["status"]:
            outlog.append({**rec, "status": status, "similarity": round(float(sim), 6)})
            changed += 1
    if changed:
        log.info("re-applied the quality gates to stored edits: %d changed status", changed)
    return changed


def _peek_done(path: Path) -> set[str]:
    """Finished ids of an existing output, read-only (for dry runs)."""
    done: set[str] = set()
    if path.exists():
        with open(path, "rb") as fh:
            for line in fh:  # each line decoded on its own: a bad byte spoils only its line
                with contextlib.suppress(UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                    done.add(str(json.loads(line.decode("utf-8"))["id"]))
    return done


def _edit_all(
    todo: list[PreferencePair],
    editor: Editor,
    outlog: EditLog,
    errlog_path: Path,
    cfg: EditConfig,
    summary: EditSummary,
    close_editor: bool = False,
) -> None:
    """Edit ``todo``, ``cfg.concurrency`` requests in flight (:func:`~trainer.infra.jobs.run_jobs`);
    each result is gated and appended as it arrives, a failure listed in ``errlog_path``."""

    async def edit(batch: list[PreferencePair]) -> list[EditResult]:
        return [await editor.edit(batch[0].prompt, batch[0].rejected)]

    def finish(pair: PreferencePair, result: EditResult) -> None:
        summary.input_tokens += result.input_tokens
        summary.output_tokens += result.output_tokens
        if result.error is not None:
            summary.failed += 1
            log.warning("id %s failed: %s", pair.id, result.error)
            append_failure(errlog_path, {"id": pair.id, "source": pair.source, "error": result.error})
            return
        status, sim = judge_edit(pair.rejected, result, cfg.min_similarity)
        outlog.append(make_record(pair, result, status, sim, editor.prompt_version))
        summary.statuses[status] += 1

    close = getattr(editor, "aclose", None) if close_editor else None
    run_jobs(
        todo, edit, finish, concurrency=cfg.concurrency, desc="editing", unit="pair", progress=cfg.progress,
        postfix=lambda: {"ok": summary.statuses.get("ok", 0), "failed": summary.failed}, close=close,
    )  # fmt: skip
