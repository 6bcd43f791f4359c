"""An append-only JSONL file that survives a kill at any moment: the output of every job that
pays per record (``fgrlhf edit``'s edits, ``fgrlhf eval``'s judgments, ``fgrlhf generate``'s
outputs), so a rerun resumes where the last one stopped and pays for nothing twice.

Every record is a JSON object with an ``id`` (first key, as :meth:`AppendLog.append` writes
it) and the keys a subclass names in ``REQUIRED``. The last record of an id is the one that
counts (a job may supersede a record by appending a new one).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import IO, ClassVar

from trainer.errors import JobFailed

log = logging.getLogger(__name__)

__all__ = ["AppendLog"]


class AppendLog:
    """Append-only JSONL output, checked before it is touched, locked while open.

    Opening it takes an exclusive lock on ``<path>.lock``, checks every complete line (each
    must be a record of this kind, else nothing is modified and the error names the line),
    drops a torn last line (a kill mid-write), and reads the records. :meth:`append` writes one
    whole line and flushes (and fsyncs) it.

    Args:
        path: the output file (created with its parent folders).
        fsync: also ``os.fsync`` after every record (survives a power cut, not only a kill).

    Attributes:
        records: id -> the last record of that id.
        done: id -> its ``status`` (or True when records have no status).
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("id",)
    KIND: ClassVar[str] = "record"  # in messages: "line 3 is not an edit record"
    TOOL: ClassVar[str] = "fgrlhf"  # in messages: "another `fgrlhf edit` is writing this file"

    def __init__(self, path: str | Path, fsync: bool = True):
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.path.with_name(self.path.name + ".lock"), "w")  # noqa: SIM115
        try:
            import fcntl  # optional: POSIX only

            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - non-POSIX: no lock
            pass
        except OSError as e:
            self._lock_fh.close()
            raise JobFailed(f"{self.path}: another `{self.TOOL}` is writing this file") from e
        self.records: dict[str, dict] = {}
        self.done: dict[str, object] = {}
        try:
            self._check_and_repair()
        except BaseException:
            self._lock_fh.close()
            raise
        self._fh: IO[str] = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def __enter__(self) -> AppendLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check(self, record: dict) -> str | None:
        """What is wrong with a stored ``record`` of this kind, in words (None: nothing). A
        subclass validates the values it counts (a judgment's preference, say); the file is
        refused on the first bad line."""
        return None

    def _remember(self, rec: dict) -> None:
        rid = str(rec["id"])
        self.records[rid] = rec
        self.done[rid] = rec.get("status", True)

    def _check_and_repair(self) -> None:
        """Read the records, touching the file only when it is safe.

        The tail after the last newline is dropped only when it is the start of a record as
        this class writes them (``{"id"``) and not valid JSON; a whole record that merely lacks
        its newline is kept and the newline added; any other tail is refused.

        Raises:
            ValueError: a line that is not a record of this kind (the file is left untouched).
        """
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        *lines, tail = data.split(b"\n")

        def record_of(raw: bytes, n: int) -> None:
            try:
                rec = json.loads(raw.decode("utf-8"))
                for key in self.REQUIRED:
                    rec[key]  # noqa: B018 - KeyError / TypeError when it is not one of ours
            except (ValueError, RecursionError, KeyError, TypeError) as e:  # ValueError: bad UTF-8 or JSON
                raise ValueError(
                    f"{self.path}: line {n} is not {_article(self.KIND)} {self.KIND} ({type(e).__name__}), "
                    f"so this is not an `{self.TOOL}` output; nothing was changed: give it a new file"
                ) from None
            problem = self.check(rec)
            if problem:  # one of ours, hand-edited or damaged: counting it would be a lie
                raise ValueError(
                    f"{self.path}: line {n}: {problem}; nothing was changed: fix or delete that line "
                    "(a rerun redoes what is missing), or give a new file"
                )
            self._remember(rec)

        for n, raw in enumerate(lines, start=1):
            if raw.strip():
                record_of(raw, n)
        if not tail.strip():
            return
        try:
            json.loads(tail.decode("utf-8"))
            whole = True
        except (ValueError, RecursionError):
            whole = False
        if whole:  # a complete record without its newline: keep it, add the newline
            record_of(tail, len(lines) + 1)
            with open(self.path, "ab") as fh:
                fh.write(b"\n")
        elif tail.lstrip().startswith(b'{"id"') or b'{"id"'.startswith(tail.lstrip()):
            # torn by a kill mid-write (the start of a record as this class writes them): drop it
            with open(self.path, "rb+") as fh:
                fh.truncate(len(data) - len(tail))
            log.warning(
                "%s: dropped a partial last record (%d bytes) left by an interrupted run",
                self.path,
                len(tail),
            )
        else:
            record_of(tail, len(lines) + 1)  # not the start of a record we write: refuse

    def append(self, record: dict) -> None:
        """Write ``record`` (``id`` first) as one line, flushed to the OS (and disk with ``fsync``)."""
        record = {"id": record["id"], **record}
        try:
            self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())
        except OSError as e:  # a full disk: the error names the file
            e.filename = e.filename or str(self.path)
            raise
        self._remember(record)

    def close(self) -> None:
        """Close the file and release the lock."""
        if not self._fh.closed:
            self._fh.close()
        self._lock_fh.close()


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"
