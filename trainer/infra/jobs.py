"""The one runner of ``fgrlhf edit``'s and ``fgrlhf eval``'s requests: many slow, independent
calls (Claude, or a reward model's batches), a bounded number in flight, each result handed to
the caller's ``finish`` as it arrives — on the one event-loop thread, so the caller's append-only
log is written one whole record at a time, in no particular order.

    run_jobs(todo, work, finish, concurrency=8, desc="editing", unit="pair")

Signals: Ctrl-C raises ``KeyboardInterrupt`` (asyncio's own: the requests in flight are cancelled);
SIGTERM cancels the requests in flight and raises :class:`~trainer.errors.Stopped`. Either way
every result already handed to ``finish`` is kept, and the caller's SIGTERM handler is the same
afterwards (the event loop resets it when it closes). A failed request is the caller's to record
(:func:`append_failure`: one JSON line, so that a rerun retries it and the user can read why).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import json
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from trainer.errors import Stopped
from trainer.infra.signals import kept_sigterm_handler

__all__ = ["append_failure", "now", "run_jobs"]

T = TypeVar("T")
R = TypeVar("R")


def now() -> str:
    """The UTC time, ISO-8601 to the second (the ``created_at`` of every record)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def append_failure(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` (what failed and why, no credentials) and the time to the JSONL ``path``."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({**record, "time": now()}, ensure_ascii=False) + "\n")


def run_jobs(
    todo: Sequence[T],
    work: Callable[[list[T]], Awaitable[Sequence[R]]],
    finish: Callable[[T, R], None],
    *,
    concurrency: int,
    batch_size: int = 1,
    desc: str = "",
    unit: str = "it",
    progress: bool = True,
    postfix: Callable[[], dict[str, Any]] | None = None,
    close: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run ``work`` over ``todo`` and hand each result to ``finish``.

    Args:
        todo: the jobs, taken in order.
        work: one request for a batch of up to ``batch_size`` jobs; returns one result per job.
        finish: records one job's result (the caller's log, counts); called on the event loop's
            thread, never two at once.
        concurrency: batches in flight at most (one worker each).
        batch_size: jobs per ``work`` call (a reward model scores a batch per forward; Claude 1).
        desc, unit, progress: the progress bar (``tqdm``, shown on a terminal only).
        postfix: counts shown beside the bar after each batch.
        close: awaited at the end however the run ends (the HTTP client).

    Raises:
        trainer.errors.Stopped: SIGTERM (after the results already finished).
        KeyboardInterrupt: Ctrl-C (likewise).
    """
    try:
        with kept_sigterm_handler():  # (the event loop resets SIGTERM to the default when it closes)
            asyncio.run(
                _run(todo, work, finish, concurrency, batch_size, desc, unit, progress, postfix, close)
            )
    except asyncio.CancelledError:  # SIGTERM cancelled the main task
        raise Stopped() from None


async def _run(todo, work, finish, concurrency, batch_size, desc, unit, progress, postfix, close) -> None:
    """The workers: each takes the next batch while any is left."""
    main = asyncio.current_task()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not POSIX / main thread
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    queue = list(reversed(todo))
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm  # lazy: tqdm (heavy for the torch-free fgrlhf), only to draw a bar

        bar = tqdm(total=len(todo), desc=desc, unit=unit, disable=None)

    async def worker() -> None:
        while queue:
            batch = [queue.pop() for _ in range(min(batch_size, len(queue)))]
            results = await work(batch)
            if len(results) != len(batch):  # (a judge's bug: not the input's fault)
                raise RuntimeError(f"{desc or 'a job'}: {len(results)} results for a batch of {len(batch)}")
            for job, result in zip(batch, results):
                finish(job, result)
            if bar is not None:
                bar.update(len(batch))
                if postfix is not None:
                    bar.set_postfix(**postfix(), refresh=False)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(todo))))))
    finally:
        if bar is not None:
            bar.close()
        if close is not None:
            await close()
