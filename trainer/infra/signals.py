"""SIGTERM for the resumable commands that are not trainers (``fgrlhf generate``, ``edit``,
``eval``): a scheduler's pre-emption stops them between two units of work, with everything
finished kept, and the caller's handler is back afterwards (the demo runs them as stages).

* :func:`sigterm_flag` — SIGTERM sets an event instead of killing the process; the job checks it
  between batches and stops (``trainer.errors.Stopped``, exit 75).
* :func:`kept_sigterm_handler` — around ``asyncio.run``: an event loop that installed its own
  SIGTERM handler resets it to the default when it closes; this puts the caller's back.

Both act in the main thread only (Python delivers signals there); elsewhere they do nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["kept_sigterm_handler", "sigterm_flag"]


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def kept_sigterm_handler() -> Iterator[None]:
    """The SIGTERM handler in place before the block is in place after it, whatever the block
    installed (a handler installed from C reads as None: the default is restored then)."""
    prev = signal.getsignal(signal.SIGTERM) if _main_thread() else None
    try:
        yield
    finally:
        if _main_thread():
            signal.signal(signal.SIGTERM, prev if prev is not None else signal.SIG_DFL)


@contextlib.contextmanager
def sigterm_flag() -> Iterator[threading.Event]:
    """An event that SIGTERM sets (instead of ending the process) while the block runs; the
    previous handler is back afterwards (:func:`kept_sigterm_handler`)."""
    flag = threading.Event()
    with kept_sigterm_handler():
        if _main_thread():
            signal.signal(signal.SIGTERM, lambda *_: flag.set())
        yield flag
