"""Where the ``fgrlhf`` commands write: one rule for every output path, one strict JSON writer,
and one record of the files a command owns in an output directory.

* :func:`check_output` — before anything is read or written: an output path that is a
  directory where a file is meant (or a file where a directory is meant), or that *is* one of
  the command's inputs (the same file by inode, or by resolved path when it does not exist
  yet), is refused with :class:`OutputError` naming the flag. ``-o`` equal to the input used to
  replace the input with the output.
* :func:`atomic` — the one way a file is replaced: written under a temporary name beside it and
  renamed onto it, so a kill leaves the old file or the new one, never half of one (and the
  temporary file is removed when the writing fails); :func:`write_atomic` for text.
* :func:`write_json` — atomic and strict: NaN and ±inf become ``null`` (:func:`strict`), so
  every JSON file the project writes parses with any JSON reader.
* :class:`OwnedFiles` — a command writing into a directory (``fgrlhf eval -o DIR``) overwrites
  or deletes only files it wrote itself: their names are kept in ``DIR/.fgrlhf-owned.json``; a
  file of that name that is not listed (alpaca_eval's own ``annotations.json``, say) is
  refused, never overwritten.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from trainer.errors import EXIT_BAD_INPUT

__all__ = ["OutputError", "OwnedFiles", "atomic", "check_output", "strict", "write_atomic", "write_json"]


class OutputError(ValueError):
    """An output path that cannot be used (a usage error: exit 2). The message names the flag."""

    exit_status = EXIT_BAD_INPUT


def _same(a: Path, b: Path) -> bool:
    """``a`` and ``b`` are the same file: by inode when both exist, else by resolved path."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output(
    path: str | Path,
    flag: str,
    inputs: Iterable[str | Path | None] = (),
    directory: bool = False,
) -> Path:
    """Refuse an output path that cannot be written as asked, before any work is done.

    Args:
        path: the output (a file, or a directory with ``directory=True``).
        flag: the option that named it, for the message (``-o``, ``--json``).
        inputs: the command's input paths (files or directories; None entries are skipped). The
            output may not be one of them.
        directory: the output is a directory (it may exist).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputError: a directory where a file is meant (or the reverse), or the output is an input.
    """
    p = Path(path)
    if not str(path).strip():
        raise OutputError(f"{flag}: an empty path")
    if directory:
        if p.exists() and not p.is_dir():
            raise OutputError(f"{flag} {p}: is a file; expected a directory")
    elif p.is_dir() or str(path).endswith(("/", os.sep)):
        raise OutputError(f"{flag} {p}: is a directory; expected a file name")
    for src in inputs:
        if src is None:
            continue
        s = Path(src)
        if _same(p, s):
            raise OutputError(
                f"{flag} {p} is the input {s}: writing there would destroy the input; give another path"
            )
    return p


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) replaced by None, recursively through
    dicts, lists and tuples: what ``json.dumps(..., allow_nan=False)`` accepts."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


@contextlib.contextmanager
def atomic(path: str | Path, parents: bool = True) -> Iterator[Path]:
    """``with atomic(path) as tmp:`` write ``tmp`` (``.NAME.tmp-PID`` beside ``path``; the parent
    directories are created unless ``parents`` is False); when the block ends it is renamed onto
    ``path``, so a kill leaves the old file or the new one, never half of one. If the block or the
    rename fails (``path`` is a directory, the disk is full, no permission) the temporary file is
    removed and the error raised."""
    p = Path(path)
    if parents:
        p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, text: str, parents: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic`); returns the path."""
    with atomic(path, parents) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any, flag: str | None = None) -> Path:
    """Write ``obj`` as strict JSON (:func:`strict`; indent 2, UTF-8) atomically: a kill leaves
    the old file or the new one. ``flag`` names the option in the error when ``path`` is a
    directory.

    Raises:
        OutputError: ``path`` is a directory.
        OSError: the file cannot be written (the temporary file is removed).
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{flag or 'output'} {p}: is a directory; expected a file name")
    text = json.dumps(strict(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    write_atomic(p, text, parents=False)
    return p


class OwnedFiles:
    """The files one command owns in a directory, kept in ``DIR/.fgrlhf-owned.json``.

    :meth:`claim` is called before a file is written or deleted: a file that exists and is not
    listed belongs to someone else and is refused; otherwise its name is recorded (atomically)
    first, so a kill between the record and the write leaves nothing foreign behind.

    Args:
        directory: the output directory (created by the first :meth:`claim`).
        tool: the command, in the record and in messages (``fgrlhf eval``).
        flag: the option that named the directory, for messages.
        adopt: names of files that prove an older run of this tool wrote the directory before
            the record existed (a directory holding one of them, validated by the caller, is
            adopted whole).
    """

    RECORD = ".fgrlhf-owned.json"

    def __init__(self, directory: str | Path, tool: str, flag: str = "-o", adopt: bool = False):
        self.dir = Path(directory)
        self.tool, self.flag = tool, flag
        self.path = self.dir / self.RECORD
        self.files: set[str] = set()
        self.legacy = False
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                owner, files = data.get("tool"), {str(f) for f in data["files"]}
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                msg = f"{self.path}: not a record of owned files ({e}); give another directory"
                raise OutputError(msg) from None
            if owner != tool:
                msg = f"{flag} {self.dir}: written by `{owner}`, not `{tool}`; give another directory"
                raise OutputError(msg)
            self.files = files
        elif adopt:
            self.legacy = True  # written by this tool before the record existed: its files are its own

    def owns(self, name: str) -> bool:
        """Whether ``name`` may be overwritten or deleted (it is ours, or it does not exist)."""
        return name in self.files or self.legacy or not (self.dir / name).exists()

    def claim(self, *names: str) -> list[Path]:
        """The paths of ``names`` in the directory, recorded as this tool's before any is written
        (all checked first: a refusal leaves the directory as it was).

        Raises:
            OutputError: one of them exists and was not written by this tool.
        """
        for name in names:
            if not self.owns(name):
                raise OutputError(
                    f"{self.flag} {self.dir}: {name} exists and was not written by `{self.tool}`; "
                    "nothing was changed: give a new directory (or move that file)"
                )
        if not set(names) <= self.files:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.files |= set(names)
            write_json(self.path, {"tool": self.tool, "files": sorted(self.files)})
        return [self.dir / name for name in names]
