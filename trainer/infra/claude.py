"""The one Claude client every job uses (``fgrlhf edit``'s editor, ``fgrlhf eval``'s judge).

:class:`ClaudeClient` sends one user message through the official ``anthropic`` SDK's async
client and returns a :class:`Completion`. Retries, in two layers:

* the SDK's own: 408/409/429/5xx/529 and timeouts, ``max_retries`` times with exponential
  backoff, honouring ``retry-after`` / ``retry-after-ms``;
* then ``extra_attempts`` whole-request rounds, ``backoff`` seconds apart (doubling), which also
  cover long overloads and malformed (non-JSON) replies.

A request that still fails returns a :class:`Completion` with ``error`` set (class and message,
credentials masked); 400/401/403/404 are not retried. The key (``ANTHROPIC_API_KEY``) and an
optional ``ANTHROPIC_BASE_URL`` are read by the SDK from the environment; nothing here sees,
stores or logs them.

Temperature: SDK releases before 2.0 (API version 2023-06-01) take ``temperature`` and get it
(0 by default). From SDK 2.0 the default API version (2026-10-21) removed the sampling
parameters and answers 400 to any of them, so none is sent there.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import ClassVar

from trainer.errors import JobFailed

log = logging.getLogger(__name__)

__all__ = [
    "PRICES_PER_MTOK",
    "ClaudeClient",
    "ClaudeSettings",
    "Completion",
    "cost_usd",
    "describe_error",
    "price_for",
]

DEFAULT_MODEL = "claude-sonnet-4-6"

# USD per million (input, output) tokens, for estimates only: check current pricing.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-opus-4": (15.0, 75.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-opus-4-6": (5.0, 25.0),
    "claude-opus-4-7": (5.0, 25.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4-6": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
}


def price_for(
    model: str, price_in: float | None = None, price_out: float | None = None
) -> tuple[float, float] | None:
    """(input, output) USD per million tokens: the overrides, else the longest matching
    table prefix (``claude-sonnet-4-5-20250929`` -> ``claude-sonnet-4-5``), else None."""
    if price_in is not None and price_out is not None:
        return price_in, price_out
    best = max((k for k in PRICES_PER_MTOK if model.startswith(k)), key=len, default=None)
    return PRICES_PER_MTOK[best] if best else None


def cost_usd(
    model: str, tokens_in: int, tokens_out: int, price_in: float | None = None, price_out: float | None = None
) -> float | None:
    """Estimated USD of ``tokens_in`` / ``tokens_out`` on ``model`` (None: no known price)."""
    price = price_for(model, price_in, price_out)
    return None if price is None else (tokens_in * price[0] + tokens_out * price[1]) / 1e6


def describe_error(e: BaseException) -> str:
    """``"ErrorClass: message"`` with any credential-looking token masked."""
    text = f"{type(e).__name__}: {e}"
    key = os.environ.get("ANTHROPIC_API_KEY")
    if key:
        text = text.replace(key, "***")
    return re.sub(r"sk-ant-[A-Za-z0-9_\-]+", "***", text)[:500]


@dataclass
class Completion:
    """One answer.

    Attributes:
        text: the concatenated text blocks of the reply ("" when there were none).
        model: the model that answered (as the API reports it).
        stop_reason: the API's stop reason (``end_turn``, ``max_tokens``, ``refusal``...).
        input_tokens, output_tokens: usage reported by the API.
        error: set when the request failed for good (the other fields are then empty).
    """

    text: str = ""
    model: str = ""
    stop_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None


@dataclass(kw_only=True)
class ClaudeSettings:
    """How a job talks to Claude: the settings ``fgrlhf edit`` and ``fgrlhf eval`` share (their
    configs extend this class, so each is declared, documented and checked once; the flags are
    derived from these fields). The model is the job's own (``--model``, ``--judge claude:M``)."""

    AT_LEAST: ClassVar[dict] = {
        "max_tokens": 1, "concurrency": 1, "max_retries": 0, "extra_attempts": 0, "backoff": 0,
    }  # fmt: skip
    ABOVE: ClassVar[dict] = {"timeout": 0}

    max_tokens: int = 4096
    """Claude's output budget per request."""
    temperature: float | None = 0.0
    """Sampling temperature where the SDK/API accepts one (``none``: never sent)."""
    concurrency: int = 8
    """Claude requests in flight."""
    timeout: float = 120.0
    """Seconds per request attempt."""
    max_retries: int = 6
    """The SDK's retries per request (408/409/429/5xx/529 and timeouts, exponential backoff)."""
    extra_attempts: int = 2
    """Whole-request retries after the SDK gives up (also malformed replies)."""
    backoff: float = 10.0
    """First wait between those, seconds (doubling)."""
    price_in: float | None = None
    """USD per million input tokens, for the cost estimate (default: the price table)."""
    price_out: float | None = None
    """USD per million output tokens, for the cost estimate (default: the price table)."""


class ClaudeClient:
    """Claude through ``anthropic.AsyncAnthropic``; see the module docstring for retries.

    Args:
        model: model id.
        settings: output budget, temperature, timeouts, retries and concurrency (the requests in
            flight at most, shared by every caller of this client).
    """

    def __init__(self, model: str = DEFAULT_MODEL, settings: ClaudeSettings | None = None):
        import anthropic  # lazy: anthropic (heavy: ~1.4 s), only when Claude is called

        s = settings or ClaudeSettings()
        self._anthropic = anthropic
        self.model, self.max_tokens = model, s.max_tokens
        self.extra_attempts, self.backoff = s.extra_attempts, s.backoff
        self._sem = asyncio.Semaphore(s.concurrency)
        self.client = anthropic.AsyncAnthropic(timeout=s.timeout, max_retries=s.max_retries)
        accepts = "temperature" in inspect.signature(self.client.messages.create).parameters
        self._sampling = {"temperature": s.temperature} if (s.temperature is not None and accepts) else {}
        if s.temperature is not None and not accepts:
            log.info(
                "anthropic %s: its API version has no sampling parameters, temperature not sent",
                anthropic.__version__,
            )

    def _transient(self) -> tuple[type[BaseException], ...]:
        a = self._anthropic
        return (
            a.RateLimitError,
            a.InternalServerError,
            a.APIConnectionError,
            a.APIResponseValidationError,
            json.JSONDecodeError,
        )

    async def complete(self, message: str) -> Completion:
        """Send ``message`` as the one user turn; retried as the module docstring says."""
        delay = self.backoff
        for attempt in range(self.extra_attempts + 1):
            try:
                async with self._sem:
                    msg = await self.client.messages.create(
                        model=self.model,
                        max_tokens=self.max_tokens,
                        messages=[{"role": "user", "content": message}],
                        **self._sampling,
                    )
            except self._transient() as e:
                if attempt == self.extra_attempts:
                    return Completion(error=describe_error(e))
                await asyncio.sleep(delay)
                delay *= 2
                continue
            except self._anthropic.APIError as e:  # 400/401/403/404...: retrying will not help
                return Completion(error=describe_error(e))
            text = "".join(getattr(b, "text", "") for b in msg.content if getattr(b, "type", "") == "text")
            return Completion(
                text=text,
                model=msg.model,
                stop_reason=msg.stop_reason,
                input_tokens=msg.usage.input_tokens,
                output_tokens=msg.usage.output_tokens,
            )
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.close()


def require_api_key() -> None:
    """Raise :class:`~trainer.errors.JobFailed` (a RuntimeError) when ``ANTHROPIC_API_KEY`` is not
    set (the key is never read here)."""
    if not os.environ.get("ANTHROPIC_API_KEY"):
        raise JobFailed("ANTHROPIC_API_KEY is not set (the key is read from the environment only)")
