"""The errors every layer raises and the entry points turn into exit statuses (bottom layer: no
``trainer`` imports, no torch, so any module may raise them and ``fgrlhf`` stays torch-free).

Re-exported where they were first defined (``trainer.infra.config.ConfigError``,
``trainer.data.formats.DataError``, ``trainer.infra.checkpoint.CheckpointError``,
``trainer.infra.runtime.Preempted`` / ``EXIT_PREEMPTED``, ``trainer.infra.dist.PeerFailure``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_PARTIAL",
    "EXIT_PREEMPTED",
    "PREEMPTED_MARKER",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "JobFailed",
    "PeerFailure",
    "Preempted",
    "Stopped",
    "describe",
    "error_line",
    "exit_status",
]

# The exit statuses of every command and trainer (the README's table):
EXIT_FAILED = 1  # a runtime error: an output that cannot be written or is locked, no API key
EXIT_BAD_INPUT = 2  # a usage error: flags, config keys, paths, or bad input records
EXIT_PARTIAL = 3  # done, but some requests failed (not written): rerun to retry them
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM, what was done is kept; rerun to resume
EXIT_INTERRUPTED = 130  # Ctrl-C, what was done is kept; rerun to resume
PREEMPTED_MARKER = "PREEMPTED"


class ConfigError(ValueError):
    """A config file, override or flag that cannot be used; the message names the key or flag."""

    exit_status = EXIT_BAD_INPUT


def describe(e: BaseException, limit: int = 200) -> str:
    """``"Type: first line of the message"`` (for one-line errors)."""
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {lines[0][:limit] if lines else ''}".rstrip(": ")


class DataError(ValueError):
    """A file, record or field that cannot be used. ``str()`` names all three where known.

    Attributes:
        source: the file (or dataset name).
        where: ``"line N"`` / ``"record N"`` (1-based), or None for whole-file errors.
        field: the offending field, or None.
        problem: what is wrong, in words.
    """

    exit_status = EXIT_BAD_INPUT

    def __init__(self, source: str, problem: str, where: str | None = None, field: str | None = None):
        self.source, self.where, self.field, self.problem = str(source), where, field, problem
        parts = [self.source] + ([where] if where else []) + ([f"field {field!r}"] if field else [])
        super().__init__(": ".join(parts + [problem]))


class CheckpointError(RuntimeError):
    """No intact checkpoint to resume from (the message names the directory and why)."""

    exit_status = EXIT_BAD_INPUT


class JobFailed(RuntimeError):
    """A job cannot go on for a reason outside its input: no API key, its output locked by another
    run, a model file that changed while it was read. The message says what; exit 1."""

    exit_status = EXIT_FAILED


class PeerFailure(RuntimeError):
    """Another rank (rank 0) failed in a step every rank waits on; its error is in the message."""

    exit_status = EXIT_FAILED


class Stopped(Exception):
    """SIGTERM stopped a resumable job that has no checkpoint: ``fgrlhf generate`` after the batch
    in hand, ``edit`` / ``eval`` at once (the requests in flight are cancelled, not written: a rerun
    asks again); everything finished before it is written. The entry point exits 75. The message,
    if any, says what was kept."""

    exit_status = EXIT_PREEMPTED


class Preempted(Exception):
    """Raised after the checkpoint a SIGTERM asked for; the entry point exits 75."""

    exit_status = EXIT_PREEMPTED

    def __init__(self, out_dir: Path, step: int):
        self.out_dir, self.step = out_dir, step
        super().__init__(
            f"SIGTERM: checkpoint saved at step {step} in {out_dir / 'checkpoints'}; "
            f"rerun the same command to resume (exit {EXIT_PREEMPTED})"
        )

    def mark(self, top: Path | None = None) -> None:
        """Write ``PREEMPTED`` (for schedulers that read files, not exit codes) into the run's
        ``output_dir`` and the top-level one (PPO's on-the-fly RM runs in ``output_dir/rm``)."""
        if int(os.environ.get("RANK", "0")) == 0:
            for d in {self.out_dir, top or self.out_dir}:
                (d / PREEMPTED_MARKER).write_text(f"step {self.step}\n" if d == self.out_dir else "rm\n")


def error_line(e: BaseException) -> str:
    """The one line an entry point prints for ``e``: an OS error names its path."""
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)


def exit_status(e: BaseException) -> int | None:
    """The exit status of a job that raised ``e`` (the README's table), or None for an error
    none of these rules covers (a crash: the entry point shows the traceback and exits 1).

    Rules, first match: the exception's own ``exit_status`` attribute (every error above declares
    one; so may an entry point's, e.g. the demo's SIGTERM); ``KeyboardInterrupt`` 130; another
    ``ValueError`` (a usage error: flags, ``-o``, a prompt file) 2; ``OSError`` (an unwritable or
    missing path, a full disk) 1. Anything else — a ``RuntimeError`` from torch, a bug — is a crash.
    """
    status = getattr(e, "exit_status", None)
    if isinstance(status, int):
        return status
    if isinstance(e, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(e, ValueError):
        return EXIT_BAD_INPUT
    if isinstance(e, OSError):
        return EXIT_FAILED
    return None
