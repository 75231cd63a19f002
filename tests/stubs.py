"""Stubs shared by the tests: HTTP servers on 127.0.0.1 (a chat-completions server that can misbehave)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextlib.contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run ``handler`` on a free loopback port in a thread; yields ``http://127.0.0.1:<port>``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def chat_completion(model: str, text: str, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A minimal OpenAI chat.completion body."""
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": logprobs,
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


# What the faulty server does when a request's prompt contains the marker (a post's text reaches every prompt).
FAULTS = ("FAULT_500", "FAULT_TIMEOUT", "FAULT_GARBAGE", "FAULT_RESET", "FAULT_FLAKY")


@dataclass
class FaultyChatState:
    """Requests seen per fault, and how long a timeout fault hangs (longer than the client's timeout)."""

    hang_s: float = 3.0
    seen: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def faulty_chat_handler(state: FaultyChatState) -> type[BaseHTTPRequestHandler]:
    """Answers like an OpenAI-compatible server, except for prompts carrying a marker from :data:`FAULTS`:
    HTTP 500, a reply slower than the client waits, a body that is not JSON, a connection closed without a
    reply, or a 500 on the first request only (FAULT_FLAKY: the retry succeeds)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = json.dumps(body.get("messages", []))
            fault = next((name for name in FAULTS if name in prompt), "ok")
            with state.lock:
                state.seen[fault] += 1
                first = state.seen[fault] == 1
            if fault == "FAULT_TIMEOUT":
                time.sleep(state.hang_s)
            if fault == "FAULT_RESET":
                self.close_connection = True
                self.connection.close()
                return
            if fault == "FAULT_500" or (fault == "FAULT_FLAKY" and first):
                self._reply(500, b'{"error": {"message": "overloaded", "type": "server_error"}}')
                return
            if fault == "FAULT_GARBAGE":
                self._reply(200, b"<html>definitely not json")
                return
            text = "yes" if body.get("max_tokens") == 1 else "to share a moment with friends."
            self._reply(200, json.dumps(chat_completion(body["model"], text)).encode())

        def _reply(self, status: int, payload: bytes) -> None:
            with contextlib.suppress(OSError):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            return None

    return Handler
