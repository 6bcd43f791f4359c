"""A local HTTP server on 127.0.0.1 that speaks enough of the Anthropic Messages API
(``POST /v1/messages``) for the real ``anthropic`` SDK, with scripted failures.

Usage::

    with FakeMessagesServer() as server:
        server.script.extend(["429", "ok"])       # the next two requests
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="test")

Actions (consumed first-in first-out, then ``server.default``):

* ``ok`` — a minimal edit: the response found between ``<response>`` tags in the request, with
  its last word replaced by ``EDITED``, returned between ``<edited>`` tags.
* ``429`` — rate limited (``rate_limit_error``) with ``retry-after-ms`` set short.
* ``529`` — ``overloaded_error``; ``500`` — ``api_error``; both with a short ``retry-after-ms``.
* ``malformed`` — status 200 with a body that is not JSON.
* ``slow`` — sleeps ``slow_seconds`` before answering ``ok`` (past the client's timeout).
* ``refusal`` — a text refusal without tags; ``refusal_stop`` — ``stop_reason: "refusal"``.
* ``unchanged`` — the response verbatim; ``rewrite`` — an unrelated text; ``empty`` — empty tags;
  ``commentary`` — "Here is the edited response:" inside the tags; ``truncated`` — stop_reason
  ``max_tokens``.
* judge verdicts: ``prefer_1`` / ``prefer_2`` / ``tie`` — ``<preference>1|2|0</preference>``;
  ``prefer_marked`` — the response that contains ``GOOD`` wins; ``no_verdict`` — no tag.
* ``respond`` — the text ``server.responder(user_message)`` returns.

Every request is recorded in ``server.requests`` as ``(headers, json_body)``; ``server.delay``
adds a sleep before every answer.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RESPONSE_RE = re.compile(r"<response>\n?(.*)\n?</response>", re.DOTALL)


def _error(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


class FakeMessagesServer:
    """See the module docstring."""

    def __init__(self, delay: float = 0.0, slow_seconds: float = 3.0, default: str = "ok"):
        self.script: deque[str] = deque()
        self.default = default
        self.delay = delay
        self.slow_seconds = slow_seconds
        self.requests: list[tuple[dict, dict]] = []
        self.responder = lambda user: ""  # the action "respond" answers responder(user message)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeMessagesServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next_action(self) -> str:
        with self._lock:
            return self.script.popleft() if self.script else self.default

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: bytes | dict, headers: dict | None = None) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", "req_fake")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.requests.append((dict(self.headers), body))
                if not self.path.startswith("/v1/messages"):
                    self._send(404, _error("not_found_error", f"no route {self.path}"))
                    return
                action = server._next_action()
                if server.delay:
                    time.sleep(server.delay)
                fast_retry = {"retry-after-ms": "20"}
                if action == "429":
                    self._send(429, _error("rate_limit_error", "slow down"), fast_retry)
                elif action == "529":
                    self._send(529, _error("overloaded_error", "Overloaded"), fast_retry)
                elif action == "500":
                    self._send(500, _error("api_error", "Internal server error"), fast_retry)
                elif action == "malformed":
                    self._send(200, b'{"id": "msg_1", "type": "message", "content": [')
                else:
                    if action == "slow":
                        time.sleep(server.slow_seconds)
                    self._send(200, self._message(body, action))

            def _message(self, body: dict, action: str) -> dict:
                user = body["messages"][-1]["content"]
                user = user if isinstance(user, str) else "".join(b.get("text", "") for b in user)
                m = RESPONSE_RE.search(user)
                response = m.group(1).strip() if m else ""
                stop = "end_turn"
                if action in ("ok", "slow"):
                    words = response.split(" ")
                    text = f"<edited>\n{' '.join(words[:-1] + ['EDITED'])}\n</edited>"
                elif action == "refusal":
                    text = "I'm sorry, but I can't help with editing this response."
                elif action == "refusal_stop":
                    text, stop = "", "refusal"
                elif action == "unchanged":
                    text = f"<edited>\n{response}\n</edited>"
                elif action == "rewrite":
                    text = "<edited>\nA different answer, written from scratch.\n</edited>"
                elif action == "empty":
                    text = "<edited>\n</edited>"
                elif action == "commentary":
                    text = f"<edited>\nHere is the edited response: {response}!\n</edited>"
                elif action == "truncated":
                    text, stop = f"<edited>\n{response[: len(response) // 2]}", "max_tokens"
                elif action in ("prefer_1", "prefer_2", "tie"):  # a pairwise judge's verdict
                    n = {"prefer_1": 1, "prefer_2": 2, "tie": 0}[action]
                    text = f"Both are fine; weighing them.\n<preference>{n}</preference>"
                elif action == "prefer_marked":  # the response containing GOOD wins
                    m1 = re.search(r"<response_1>(.*)</response_1>", user, re.DOTALL)
                    n = 1 if m1 and "GOOD" in m1.group(1) else 2
                    text = f"<preference>{n}</preference>"
                elif action == "respond":  # a test's own function of the user message
                    text = server.responder(user)
                elif action == "no_verdict":
                    text = "I cannot decide between these."
                else:
                    raise ValueError(f"unknown action {action!r}")
                content = [{"type": "text", "text": text}] if text else []
                return {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model", "claude-test"),
                    "content": content,
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": max(1, len(user) // 4),
                        "output_tokens": max(1, len(text) // 4),
                    },
                }

        return Handler
