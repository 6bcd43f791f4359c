"""Preference-pair datasets: reading files, recognising formats, validating records.

Formats (``fmt``), each record turned into a :class:`PreferencePair`:

* ``alpaca`` — AlpacaFarm: ``instruction`` (str), ``input`` (str, may be absent or empty),
  ``output_1``, ``output_2`` (str), ``preference`` (int 1 or 2, the preferred output). The
  prompt is ``instruction`` or ``instruction + "\\n\\n" + input``.
* ``hh`` — Anthropic HH-RLHF: ``chosen`` and ``rejected`` dialogues (``"\\n\\nHuman: ...
  \\n\\nAssistant: ..."``). The last ``"\\n\\nAssistant:"`` turn is split off as the response;
  the prompt is the dialogue before it, ending with ``"Assistant:"`` (leading newlines
  stripped). Both dialogues must share that prompt.
* ``jsonl`` — generic: ``prompt``, ``chosen``, ``rejected`` (str).

``auto`` picks the format from the first record's keys. Any record may carry an ``id`` (str or
int) that is kept; otherwise the id is a hash of the pair's text, so it is stable across runs,
file orders and formats. Exact duplicate pairs are dropped (counted).

Sources: a local ``.json`` (a list of records), ``.jsonl``, ``.jsonl.gz`` / ``.json.gz``,
``.parquet``, or — when no such file exists — a Hugging Face dataset name loaded with
``datasets.load_dataset(name, split=split)`` (needs the network or the HF cache).

Every problem raises :class:`DataError` naming the file, the record (``line N`` for JSON
lines, ``record N`` otherwise, 1-based) and the field; with ``skip_invalid=True`` bad records
are collected in :attr:`LoadResult.invalid` instead. :func:`valid_records` is that policy, for
every loader of a records file (prompts, instructions, outputs, annotations, SFT and edit records).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from trainer.errors import DataError  # noqa: F401 - re-exported (defined here before)

__all__ = [
    "EDIT_STATUSES",
    "FORMATS",
    "EditRecord",
    "DataError",
    "LoadResult",
    "PreferencePair",
    "Prompt",
    "detect_format",
    "finite_number",
    "json_problem",
    "load_pairs",
    "prompt_parts",
    "read_records",
    "valid_records",
]

FORMATS = ("alpaca", "hh", "jsonl")
T = TypeVar("T")
HH_ASSISTANT = "\n\nAssistant:"


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair.

    Attributes:
        id: stable identifier (the record's own ``id``, else a hash of the texts).
        prompt: the prompt text (format-specific rendering, see the module docstring).
        chosen: the preferred response.
        rejected: the less-preferred response (the one the editor rewrites).
        source: ``"<file>:<line N|record N>"``, for messages.
        format: the input format name.
        instruction, input: AlpacaFarm's two fields, kept apart (``prompt`` joins them); ``""``
            for the other formats.
    """

    id: str
    prompt: str
    chosen: str
    rejected: str
    source: str = ""
    format: str = ""
    instruction: str = ""
    input: str = ""


@dataclass(frozen=True)
class Prompt:
    """A prompt as the data carries it: an instruction and an optional input (AlpacaFarm's
    ``instruction`` / ``input``), kept apart until a template renders them
    (:func:`trainer.data.examples.render_prompt`).

    Attributes:
        instruction: the instruction (or the whole prompt of a format without inputs).
        input: the Alpaca input; ``""`` for none.
    """

    instruction: str
    input: str = ""

    @property
    def text(self) -> str:
        """Instruction and input as one text (the Alpaca rule, :func:`alpaca_prompt`): what the
        editor sees and the ``plain`` / ``chat`` templates render."""
        return alpaca_prompt(self.instruction, self.input)


EDIT_STATUSES = ("ok", "unchanged", "empty", "refusal", "commentary", "not_minimal", "truncated")


@dataclass
class EditRecord:
    """One line of an edited-pairs JSONL: what ``fgrlhf edit`` (and the synthetic world) writes
    and what the reward trainer reads. The one definition of that schema.

    Attributes:
        id: the input pair's id (explicit or content hash, :func:`pair_id`).
        prompt: the prompt.
        original: the less-preferred response (τʲ), the one that was edited.
        edited: the editor's text (τⁱ); ``""`` when there was none.
        chosen: the input pair's preferred response (for the sequence-level baseline).
        status: ``ok``, or why the edit was rejected (:data:`EDIT_STATUSES`).
        similarity: token-level LCS similarity of original and edited, in [0, 1].
        model: the editor that answered (Claude model id, ``synthetic``).
        prompt_version: ``minimal-edit-v1``, ``file:<name>:<sha12>``, ``synthetic-v1``.
        stop_reason: the API's stop reason (``""`` when none).
        usage: ``{"input_tokens": int, "output_tokens": int}``.
        source: ``"<input file>:<line N|record N>"``.
        created_at: UTC ISO-8601 time of writing (``""`` when unknown).
        gold: the synthetic world's gold scores ``{"chosen", "original", "edited"}``, else None.
    """

    id: str
    prompt: str
    original: str
    edited: str = ""
    chosen: str = ""
    status: str = "ok"
    similarity: float = 0.0
    model: str = ""
    prompt_version: str = ""
    stop_reason: str = ""
    usage: dict = field(default_factory=lambda: {"input_tokens": 0, "output_tokens": 0})
    source: str = ""
    created_at: str = ""
    instruction: str = ""
    input: str = ""
    gold: dict | None = None

    @property
    def prompt_parts(self) -> Prompt:
        """The prompt with its input kept apart (a record without ``input`` is all instruction)."""
        if self.input.strip() and self.instruction.strip():
            return Prompt(self.instruction, self.input)
        return Prompt(self.prompt)

    def to_json(self) -> dict:
        """The JSON object of one output line (``instruction``/``input`` only when the pair had an
        input, ``gold`` only when set)."""
        skip = {"gold", "instruction", "input"}
        out = {k: v for k, v in self.__dict__.items() if k not in skip}
        if self.input.strip():
            out["instruction"], out["input"] = self.instruction, self.input
        if self.gold is not None:
            out["gold"] = self.gold
        return out

    @classmethod
    def from_json(cls, rec: Any, src: str, where: str) -> EditRecord:
        """Validate one parsed line. ``prompt`` and ``original`` are required strings;
        ``edited``, ``chosen``, ``status`` optional strings; ``id`` defaults to ``where``.

        Raises:
            DataError: naming ``src``, ``where`` and the field.
        """
        if not isinstance(rec, dict):
            raise DataError(src, f"expected a JSON object, got {type(rec).__name__}", where)
        kw: dict[str, Any] = {
            "id": str(rec["id"]) if rec.get("id") is not None else where,
            "prompt": _text(rec, "prompt", src, where),
            "original": _text(rec, "original", src, where),
        }
        for key in (
            "edited",
            "chosen",
            "status",
            "model",
            "prompt_version",
            "stop_reason",
            "source",
            "created_at",
            "instruction",
            "input",
        ):
            if rec.get(key) is not None:
                kw[key] = _text(rec, key, src, where)
        if rec.get("similarity") is not None:
            kw["similarity"] = float(finite_number(rec["similarity"], src, where, "similarity"))
        if rec.get("usage") is not None:
            if not isinstance(rec["usage"], dict):
                raise DataError(src, "expected {input_tokens, output_tokens}", where, "usage")
            kw["usage"] = rec["usage"]
        if "status" in kw and kw["status"] not in EDIT_STATUSES:
            raise DataError(src, f"unknown status {kw['status']!r}, expected one of {EDIT_STATUSES}", where)
        gold = rec.get("gold")
        if gold is not None:
            if not isinstance(gold, dict) or not all(k in gold for k in ("chosen", "original")):
                raise DataError(src, "expected {chosen: number, original: number, ...}", where, "gold")
            for k, v in gold.items():  # a NaN gold would count as a wrongly ranked pair
                if v is not None or k in ("chosen", "original"):
                    finite_number(v, src, where, f"gold.{k}")
            kw["gold"] = gold
        return cls(**kw)


@dataclass
class LoadResult:
    """What :func:`load_pairs` found.

    Attributes:
        pairs: the valid, de-duplicated pairs in file order.
        format: the format used (resolved when ``auto``).
        invalid: the errors of skipped records (only with ``skip_invalid``).
        duplicates: exact duplicate pairs dropped.
        total: records read.
    """

    pairs: list[PreferencePair]
    format: str
    invalid: list[DataError] = field(default_factory=list)
    duplicates: int = 0
    total: int = 0


def pair_id(prompt: str, chosen: str, rejected: str) -> str:
    """Content id: the first 16 hex digits of SHA-256 over the three texts."""
    h = hashlib.sha256()
    for part in (prompt, chosen, rejected):
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# reading files
# --------------------------------------------------------------------------------------------
def _jsonl_lines(path: Path, raw_lines: Iterator[bytes]) -> Iterator[tuple[str, dict | DataError]]:
    """Parse JSON lines one by one, each decoded on its own: a line with a bad byte or bad JSON is
    a bad record (named by its line number), never the whole file."""
    for n, raw in enumerate(raw_lines, start=1):
        where = f"line {n}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield where, DataError(path, f"not valid UTF-8 (byte {e.start + 1} of the line)", where)
            continue
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError) as e:  # bad JSON, an int over Python's digit limit, deep nesting
            yield where, DataError(path, f"not valid JSON ({json_problem(e)})", where)
            continue
        yield where, rec


def json_problem(e: BaseException) -> str:
    """What ``json.loads`` objected to, in words: the decoder's message and column, or the
    number or nesting it could not take (an integer of more than 4,300 digits raises a plain
    ``ValueError``, deep nesting a ``RecursionError``)."""
    if isinstance(e, json.JSONDecodeError):
        at = f"line {e.lineno} column {e.colno}" if e.lineno > 1 else f"column {e.colno}"
        return f"{e.msg} at {at}"
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(e).split(";")[0]


def finite_number(value: Any, src: str, where: str | None, key: str, integer: bool = False) -> float | int:
    """``value`` as a finite number (an int with ``integer``: 2.0 is 2, 2.5 is refused).

    Raises:
        DataError: a bool, a non-number, NaN, ±inf (JSON's ``1e400`` reads as inf) or a fraction
            where an integer is meant; names ``src``, ``where`` and ``key``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(src, f"expected a number, got {type(value).__name__} {_short(value)}", where, key)
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(src, f"expected a finite number, got {value}", where, key)
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise DataError(src, f"expected an integer, got {value}", where, key)
        return int(value)
    return value


def read_records(source: str | Path, split: str = "train") -> Iterator[tuple[str, dict | DataError]]:
    """Yield ``(where, record)`` for each record of ``source``; a record that cannot be parsed
    is yielded as a :class:`DataError` (:func:`valid_records` raises or skips it), while a file
    that cannot be opened or read at all raises one.

    Args:
        source: a local file path or a Hugging Face dataset name.
        split: the split to load for a Hugging Face dataset.
    """
    path = Path(source)
    name = path.name.lower()
    if not path.exists():
        if path.suffix or "/" not in str(source) or str(source).startswith((".", "/")):
            raise DataError(source, "no such file")
        yield from _read_hf(str(source), split)
        return
    if path.is_dir():
        raise DataError(source, "is a directory, expected a .json, .jsonl, .jsonl.gz or .parquet file")
    try:
        if name.endswith((".jsonl.gz", ".json.gz")):
            with gzip.open(path, "rb") as fh:
                yield from _jsonl_lines(path, fh)
        elif name.endswith(".jsonl"):
            with open(path, "rb") as fh:
                yield from _jsonl_lines(path, fh)
        elif name.endswith(".json"):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, RecursionError) as e:  # UnicodeDecodeError is caught below
                if isinstance(e, UnicodeDecodeError):
                    raise
                raise DataError(path, f"not valid JSON ({json_problem(e)})") from None
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise DataError(path, f"expected a JSON list of records, got {type(data).__name__}")
            for n, rec in enumerate(data, start=1):
                yield f"record {n}", rec
        elif name.endswith(".parquet"):
            try:
                import pyarrow.parquet as pq  # optional: heavy; missing, it is a DataError
            except ImportError as e:  # pragma: no cover - pyarrow is a dependency
                raise DataError(path, "reading .parquet needs pyarrow (pip install pyarrow)") from e
            try:
                table = pq.read_table(path)
            except Exception as e:
                raise DataError(path, f"unreadable parquet file ({e})") from e
            for n, rec in enumerate(table.to_pylist(), start=1):
                yield f"record {n}", rec
        else:
            raise DataError(
                path, "unknown file type: expected .json, .jsonl, .jsonl.gz, .json.gz or .parquet"
            )
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(path, f"unreadable file ({type(e).__name__}: {e})") from e


def valid_records(
    records: Iterable[tuple[str, Any]],
    parse: Callable[[str, Any], T | None],
    skip_invalid: bool = False,
    on_invalid: Callable[[DataError], object] | None = None,
) -> Iterator[tuple[str, T]]:
    """The one policy for bad records: yield ``(where, parse(where, rec))`` for each record, in
    order. A bad record, one :func:`read_records` could not parse or one ``parse`` raises a
    :class:`DataError` for (naming the file, the record and the field), raises that error unless
    ``skip_invalid``; then it is handed to ``on_invalid`` (``bad.append``, a counter: for the
    caller's warning or summary) and left out. ``parse`` returning None leaves a record out
    without it being invalid (another split, an exact duplicate).

    Lazy: ``parse`` sees a record only after the caller has handled the ones before it, so it may
    check a record against what the caller kept so far (a duplicate).

    Args:
        records: ``(where, record or DataError)``, as :func:`read_records` yields them.
        parse: ``parse(where, rec) -> T | None``, raising :class:`DataError` for a bad record.
        skip_invalid: skip bad records instead of raising.
        on_invalid: called with each skipped record's error (only with ``skip_invalid``).

    Yields:
        ``(where, value)`` for each record kept.

    Raises:
        DataError: the first bad record's (without ``skip_invalid``); whatever ``records`` raises
            (an unreadable file), always.
    """
    for where, rec in records:
        try:
            if isinstance(rec, DataError):
                raise rec
            value = parse(where, rec)
        except DataError as e:
            if not skip_invalid:
                raise
            if on_invalid is not None:
                on_invalid(e)
            continue
        if value is not None:
            yield where, value


def _read_hf(name: str, split: str) -> Iterator[tuple[str, dict | DataError]]:
    try:
        import datasets  # optional: heavy; missing, it is a DataError
    except ImportError as e:
        raise DataError(name, "not a local file, and loading a Hugging Face dataset needs `datasets`") from e
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:
        raise DataError(name, f"not a local file, and not loadable from the Hugging Face Hub ({e})") from e
    for n, rec in enumerate(ds, start=1):
        yield f"record {n}", rec


# --------------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------------
def detect_format(record: dict) -> str:
    """The format whose keys ``record`` has: ``alpaca``, ``jsonl`` or ``hh``.

    Raises:
        ValueError: when no format matches.
    """
    keys = set(record)
    if {"output_1", "output_2"} <= keys or "instruction" in keys:
        return "alpaca"
    if {"chosen", "rejected"} <= keys:
        return "jsonl" if "prompt" in keys else "hh"
    raise ValueError(
        f"cannot tell the format from the keys {sorted(keys)}: expected AlpacaFarm (instruction, input, "
        "output_1, output_2, preference), HH (chosen, rejected) or JSONL (prompt, chosen, rejected)"
    )


def _text(rec: dict, key: str, src: str, where: str, optional: bool = False) -> str:
    if key not in rec or (optional and rec[key] is None):
        if optional:
            return ""
        raise DataError(src, "missing", where, key)
    val = rec[key]
    if not isinstance(val, str):
        raise DataError(src, f"expected a string, got {type(val).__name__} {_short(val)}", where, key)
    return val


def _short(val: Any) -> str:
    s = repr(val)
    return s if len(s) <= 40 else s[:37] + "..."


def alpaca_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 - the field's name
    """The prompt of an Alpaca-style record: ``instruction``, plus ``"\n\n" + input`` when the
    input is not blank. The one rule for training data and PPO/evaluation prompts alike."""
    return f"{instruction}\n\n{input}" if input.strip() else instruction


def prompt_parts(rec: Any, src: str, where: str) -> Prompt:
    """The prompt of a prompt-file record: its ``prompt`` string, or ``instruction`` (+ optional
    ``input``) kept apart for the template.

    Raises:
        DataError: neither field is a string (names the record).
    """
    if not isinstance(rec, dict):
        raise DataError(src, f"expected a JSON object, got {type(rec).__name__}", where)
    has_input = isinstance(rec.get("input"), str) and rec["input"].strip()
    if rec.get("instruction") is not None and (has_input or rec.get("prompt") is None):
        # instruction + input kept apart (an edits file carries both beside the joined prompt)
        return Prompt(_text(rec, "instruction", src, where), _text(rec, "input", src, where, optional=True))
    if rec.get("prompt") is not None:
        return Prompt(_text(rec, "prompt", src, where))
    if rec.get("instruction") is not None:
        return Prompt(_text(rec, "instruction", src, where), _text(rec, "input", src, where, optional=True))
    raise DataError(src, "no 'prompt' (or 'instruction') string", where)


def _split_hh(dialogue: str, src: str, where: str, key: str) -> tuple[str, str]:
    cut = dialogue.rfind(HH_ASSISTANT)
    if cut < 0:
        raise DataError(src, f"no {HH_ASSISTANT.strip()!r} turn to split off", where, key)
    prompt = dialogue[: cut + len(HH_ASSISTANT)].lstrip("\n")
    return prompt, dialogue[cut + len(HH_ASSISTANT) :].strip()


def parse_record(rec: Any, fmt: str, src: str, where: str) -> PreferencePair:
    """Validate one raw record of format ``fmt`` and turn it into a :class:`PreferencePair`.

    Raises:
        DataError: naming ``src``, ``where`` and the field at fault.
    """
    if not isinstance(rec, dict):
        raise DataError(src, f"expected a JSON object, got {type(rec).__name__}", where)
    if fmt == "alpaca":
        instruction = _text(rec, "instruction", src, where)
        inp = _text(rec, "input", src, where, optional=True)
        outs = {1: _text(rec, "output_1", src, where), 2: _text(rec, "output_2", src, where)}
        if "preference" not in rec:
            raise DataError(src, "missing (which output is preferred: 1 or 2)", where, "preference")
        pref = rec["preference"]
        if isinstance(pref, float) and pref in (1.0, 2.0):
            pref = int(pref)
        if isinstance(pref, bool) or not isinstance(pref, int) or pref not in (1, 2):
            raise DataError(
                src, f"expected 1 or 2, got {type(pref).__name__} {_short(pref)}", where, "preference"
            )
        prompt = alpaca_prompt(instruction, inp)
        chosen, rejected = outs[pref], outs[3 - pref]
    elif fmt == "hh":
        prompt, chosen = _split_hh(_text(rec, "chosen", src, where), src, where, "chosen")
        prompt_r, rejected = _split_hh(_text(rec, "rejected", src, where), src, where, "rejected")
        if prompt_r != prompt:
            raise DataError(
                src, "the dialogue before the last Assistant turn differs from 'chosen'", where, "rejected"
            )
    elif fmt == "jsonl":
        prompt = _text(rec, "prompt", src, where)
        chosen = _text(rec, "chosen", src, where)
        rejected = _text(rec, "rejected", src, where)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if not rejected.strip():
        raise DataError(
            src, "empty response: nothing to edit", where, "rejected" if fmt != "alpaca" else None
        )
    rid = rec.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        raise DataError(src, f"expected a string or an int, got {type(rid).__name__}", where, "id")
    rid = str(rid) if rid is not None else pair_id(prompt, chosen, rejected)
    parts = {"instruction": instruction, "input": inp} if fmt == "alpaca" else {}
    return PreferencePair(rid, prompt, chosen, rejected, source=f"{src}:{where}", format=fmt, **parts)


def load_pairs(
    source: str | Path,
    fmt: str = "auto",
    split: str = "train",
    skip_invalid: bool = False,
) -> LoadResult:
    """Read, validate and de-duplicate the preference pairs of ``source``.

    Args:
        source: local file or Hugging Face dataset name (see the module docstring).
        fmt: ``auto`` or one of :data:`FORMATS`.
        split: Hugging Face split.
        skip_invalid: collect bad records in ``LoadResult.invalid`` instead of raising.

    Returns:
        A :class:`LoadResult`.

    Raises:
        DataError: an unreadable source, or (without ``skip_invalid``) the first bad record,
            or two different pairs with the same explicit ``id``.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected 'auto' or one of {FORMATS}")
    src = str(source)
    result = LoadResult(pairs=[], format=fmt)
    seen: dict[str, PreferencePair] = {}

    def pair_of(where: str, rec: Any) -> PreferencePair | None:
        if result.format == "auto":
            if not isinstance(rec, dict):
                raise DataError(src, f"expected a JSON object, got {type(rec).__name__}", where)
            try:
                result.format = detect_format(rec)
            except ValueError as e:
                raise DataError(src, str(e), where) from None
        pair = parse_record(rec, result.format, src, where)
        old = seen.get(pair.id)
        if old is not None:
            if (old.prompt, old.chosen, old.rejected) == (pair.prompt, pair.chosen, pair.rejected):
                result.duplicates += 1
                return None
            raise DataError(
                src, f"duplicate id {pair.id!r} (first at {old.source}) with other text", where, "id"
            )
        return pair

    for _, pair in valid_records(read_records(source, split), pair_of, skip_invalid, result.invalid.append):
        seen[pair.id] = pair
        result.pairs.append(pair)
    result.total = len(result.pairs) + len(result.invalid) + result.duplicates  # every record read
    if result.total == 0:
        raise DataError(src, "no records")
    return result
