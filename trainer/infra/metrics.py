"""The one metrics logger every trainer uses: append-only JSONL, fanned out to the trackers.

Rank 0 writes; one JSON object per line, flushed per record, so a kill loses at most the line
being written. ``metrics.jsonl`` is the source of truth and always written; with ``report_to``
set, every record also goes to TensorBoard / W&B / MLflow through :mod:`trainer.infra.trackers`
(off the training path: this only enqueues; the trackers run in a child process), and so do
sample tables (:meth:`MetricsLog.table`) and the end of the run (:meth:`MetricsLog.finish`). On
resume, :meth:`MetricsLog.resume_at` drops records logged after the step the checkpoint holds
(they are logged again), so every step appears once in the file; the trackers keep track of what
they were sent themselves (``output_dir/trackers.json``), are sent no step twice, and catch up on
the records up to the checkpoint that they missed (a server down, a tracker added on resume)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.errors import DataError
from trainer.infra.outputs import write_atomic
from trainer.infra.summary import start_end

if TYPE_CHECKING:
    from trainer.infra.trackers import TrackerProcess, Trackers

__all__ = ["MetricsLog", "read_log", "summary_figures"]


class MetricsLog:
    """Append-only ``metrics.jsonl`` of one run, and the one way records reach the trackers.

    Args:
        path: the JSONL file.
        enabled: False on every rank but 0 (writes nothing).
        step_key: the record field holding the step (``step`` / ``iteration``).
        trackers: the ``report_to`` fan-out (rank 0; :func:`trainer.infra.runtime.open_metrics`
            starts it in a child process); None: JSONL only.
    """

    def __init__(
        self,
        path: str | Path,
        enabled: bool,
        step_key: str = "step",
        trackers: TrackerProcess | Trackers | None = None,
    ):
        self.path, self.enabled, self.step_key = Path(path), enabled, step_key
        self.trackers = trackers if enabled else None

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line (and hand its numbers to the trackers)."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers.log(record)

    def table(self, name: str, step: int, rows: list[dict[str, Any]]) -> None:
        """Hand the trackers a table at ``step`` (one dict per row; e.g. PPO's sample rollouts,
        whose full records go to ``rollouts.jsonl``). Nothing is written here."""
        if self.trackers is not None:
            self.trackers.table(name, step, rows)

    def hurry(self) -> None:
        """The training loop is over: the trackers send what they hold back for batching now and
        stop batching, so their drain overlaps the end-of-run work (final save, plots, page)
        instead of following it."""
        if self.trackers is not None:
            self.trackers.hurry()

    def files(self, files: Iterable[str | Path]) -> None:
        """Files for the trackers to store, handed over as soon as they are written (the plots,
        before the page and summary): their upload overlaps what the run still does. They are
        part of the end of the run, as if passed to :meth:`finish`."""
        if self.trackers is not None:
            self.trackers.finish({}, "", [Path(p) for p in files])

    def finish(self, summary: dict[str, float], text: str = "", files: Iterable[str | Path] = ()) -> None:
        """The end of the run, for the trackers: the summary's figures (``{name: number}``), its
        text, and the files to store (``output_dir/plots``, ``report.html``; missing ones are
        skipped)."""
        if self.trackers is not None:
            self.trackers.finish(summary, text, [Path(p) for p in files])

    def resume_at(self, step: int) -> int:
        """Drop records whose step is past ``step`` (logged after the checkpoint being resumed)
        and a torn last line; atomic (temp file + rename). Then the trackers catch up on the
        records up to ``step`` they missed (:meth:`~trainer.infra.trackers.Trackers.catch_up`).
        Returns the records dropped."""
        dropped = self._cut_after(step)
        if self.trackers is not None:
            self.trackers.catch_up(self.path, step)
        return dropped

    def _cut_after(self, step: int) -> int:
        if not self.enabled or not self.path.exists():
            return 0
        keep, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if isinstance(rec, dict) and rec.get(self.step_key, 0) > step:
                dropped += 1
                continue
            keep.append(line)
        if dropped:
            write_atomic(self.path, "".join(line + "\n" for line in keep))
        return dropped

    def find(self, step: int, **fields: Any) -> dict | None:
        """The last record at ``step`` whose ``fields`` have these values (``find(6,
        split="eval")``), or None (also for a file :func:`read_log` refuses); always None on a
        rank that writes nothing."""
        if not self.enabled:
            return None
        try:
            records = read_log(self.path, empty="no record")
        except DataError:  # (missing, empty or damaged: nothing to find)
            return None
        want = {self.step_key: step, **fields}
        found = [rec for _, rec in records if all(rec.get(k) == v for k, v in want.items())]
        return found[-1] if found else None

    def close(self, exit_code: int = 0) -> None:
        """Let the trackers send what is queued and close their runs (bounded wait:
        :meth:`trainer.infra.trackers.Trackers.close`). Idempotent."""
        if self.trackers is not None:
            self.trackers.close(exit_code)


def summary_figures(records: Sequence[dict], rows: Sequence[tuple[str, str]]) -> dict[str, float]:
    """The figures of an end-of-run summary table as numbers, for the trackers: ``{key: last,
    key_start: first}`` of each ``(label, key)`` row (:data:`trainer.infra.summary.PPO_ROWS`, ...)
    the records carry."""
    out: dict[str, float] = {}
    for _, key in rows:
        se = start_end(records, key)
        if se is not None:
            out[f"{key}_start"], out[key] = se
    return out


def read_log(path: str | Path, empty: str, missing: str = "no such file") -> list[tuple[int, dict]]:
    """``(line number, record)`` of each JSON object in a log this module (or another append-only
    writer) wrote; a torn last line, as a kill leaves it, is skipped.

    Raises:
        DataError: no such file (``missing``), no record (``empty``), or a bad line that is not the
            last (names it).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(str(p), missing)
    lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError) as e:  # bad JSON, an int over the digit limit, deep nesting
            if i == len(lines) and isinstance(e, json.JSONDecodeError):  # torn by a kill mid-write
                continue
            why = e.msg if isinstance(e, json.JSONDecodeError) else str(e).split(";")[0]
            why = why or "nested too deeply"
            raise DataError(str(p), f"not JSON ({why})", f"line {i}") from None
        if not isinstance(rec, dict):
            raise DataError(str(p), "not a JSON object", f"line {i}")
        out.append((i, rec))
    if not out:
        raise DataError(str(p), empty)
    return out
