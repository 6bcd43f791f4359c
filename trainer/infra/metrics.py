"""The one metrics logger every trainer uses: append-only JSONL (and optionally TensorBoard).

Rank 0 writes; one JSON object per line, flushed per record, so a kill loses at most the line
being written. On resume, :meth:`MetricsLog.resume_at` drops records logged after the step the
checkpoint holds (they are logged again), so every step appears once in the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog"]


class MetricsLog:
    """Append-only ``metrics.jsonl`` of one run.

    Args:
        path: the JSONL file.
        enabled: False on every rank but 0 (writes nothing).
        step_key: the record field holding the step (``step`` / ``iteration``).
        tensorboard_dir: also write every numeric field as a TensorBoard scalar there
            (needs ``tensorboard``); None: off.
    """

    def __init__(self, path: str | Path, enabled: bool, step_key: str = "step", tensorboard_dir=None):
        self.path, self.enabled, self.step_key = Path(path), enabled, step_key
        self._tb = None
        if enabled and tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(tensorboard_dir))

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line (and its numbers to TensorBoard)."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = record.get(self.step_key, 0)
            prefix = f"{record['split']}/" if "split" in record else ""
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != self.step_key:
                    self._tb.add_scalar(prefix + k, v, step)

    def resume_at(self, step: int) -> int:
        """Drop records whose step is past ``step`` (logged after the checkpoint being resumed)
        and a torn last line; atomic (temp file + rename). Returns the records dropped."""
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
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
            os.replace(tmp, self.path)
        return dropped

    def close(self) -> None:
        """Flush TensorBoard."""
        if self._tb is not None:
            self._tb.close()


def read_log(path: str | Path, empty: str, missing: str = "no such file") -> list[tuple[int, dict]]:
    """``(line number, record)`` of each JSON object in a log this module (or another append-only
    writer) wrote; a torn last line, as a kill leaves it, is skipped.

    Raises:
        DataError: no such file (``missing``), no record (``empty``), or a bad line that is not the
            last (names it).
    """
    from trainer.data.formats import DataError

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
