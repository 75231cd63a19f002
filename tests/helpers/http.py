"""Loopback HTTP stubs: a chat-completions server (OpenAI-compatible, can misbehave) and an image server.

A stub that must be slow never sleeps for a guessed time: it hangs until the test is over (``release``), so
"the client gave up first" holds however loaded the machine is.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar

from helpers.models import png

# How long a hanging stub waits for its test to end (it is released sooner; this only bounds a stuck run).
HANG_LIMIT_S = 120.0


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up on purpose (an aborted download, a timeout) is not an error here


@contextlib.contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run ``handler`` on a free loopback port in a thread; yields ``http://127.0.0.1:<port>``."""
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _Stub(Protocol):
    url: str
    release: threading.Event


StubT = TypeVar("StubT", bound=_Stub)


@contextlib.contextmanager
def _serving(stub: StubT, handler: type[BaseHTTPRequestHandler]) -> Iterator[StubT]:
    """Serves ``handler``, tells ``stub`` its URL, and releases its hanging requests at the end."""
    with serve_http(handler) as url:
        stub.url = url
        try:
            yield stub
        finally:
            stub.release.set()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status: int, payload: bytes, content_type: str = "application/json", length: bool = True) -> None:
        with contextlib.suppress(OSError):  # the client may have given up already
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if length:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        return None


# ------------------------------------------------------------------------------------------ chat completions


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


def echo_last_message(body: dict[str, Any]) -> str:
    return f"echo {body['messages'][-1]['content']}"


# P("yes") from these top log-probabilities is (0.6 + 0.1) / (0.6 + 0.1 + 0.2) = 0.7 / 0.9.
YES_NO_TOP = [("Yes", 0.6), (" yes", 0.1), ("No", 0.2), ("Maybe", 0.1)]

# What the chat server does when a request's prompt contains the marker (a post's text reaches every prompt):
# HTTP 500, hang past the client's timeout, a body that is not JSON, a connection closed without a reply, or a
# 500 on the first request only (FAULT_FLAKY: the retry succeeds).
FAULTS = ("FAULT_500", "FAULT_TIMEOUT", "FAULT_GARBAGE", "FAULT_RESET", "FAULT_FLAKY")


@dataclass
class ChatServer:
    """An OpenAI-compatible chat-completions stub: what it answers, and what it saw.

    A one-token request (``max_tokens=1``, a yes/no question) is answered "yes", with :data:`YES_NO_TOP` as
    log-probabilities when asked for and ``offer_logprobs``; any other with ``reply(body)``. With
    ``hold_until_in_flight=N`` each request waits until N requests have been in flight at once: concurrency
    is shown by the requests meeting, not by timing them.
    """

    reply: Callable[[dict[str, Any]], str] = echo_last_message
    offer_logprobs: bool = True
    hold_until_in_flight: int = 1
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)  # requests per fault marker ("ok" for none)
    in_flight: int = 0
    max_in_flight: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("max_tokens") != 1:
            return chat_completion(body["model"], self.reply(body))
        logprobs = None
        if body.get("logprobs") and self.offer_logprobs:
            entries = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in YES_NO_TOP]
            logprobs = {"content": [{"token": "Yes", "logprob": math.log(0.6), "bytes": None, "top_logprobs": entries}]}
        return chat_completion(body["model"], "yes", logprobs)

    def enter(self, path: str, body: dict[str, Any]) -> tuple[str, bool]:
        """Records the request; returns its fault marker and whether it is the first with that marker."""
        fault = next((name for name in FAULTS if name in json.dumps(body.get("messages", []))), "ok")
        with self.changed:
            self.requests.append(body)
            self.paths.append(path)
            self.seen[fault] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.changed.notify_all()
            self.changed.wait_for(lambda: self.max_in_flight >= self.hold_until_in_flight, HANG_LIMIT_S)
            return fault, self.seen[fault] == 1

    def leave(self) -> None:
        with self.changed:
            self.in_flight -= 1


def chat_handler(server: ChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fault, first = server.enter(self.path, body)
            try:
                self._answer(body, fault, first)
            finally:
                server.leave()

        def _answer(self, body: dict[str, Any], fault: str, first: bool) -> None:
            if fault == "FAULT_TIMEOUT":
                server.release.wait(HANG_LIMIT_S)
            if fault == "FAULT_RESET":
                self.close_connection = True
                self.connection.close()
            elif fault == "FAULT_500" or (fault == "FAULT_FLAKY" and first):
                self.reply(500, b'{"error": {"message": "overloaded", "type": "server_error"}}')
            elif fault == "FAULT_GARBAGE":
                self.reply(200, b"<html>definitely not json")
            else:
                self.reply(200, json.dumps(server.completion(body)).encode())

    return Handler


def serve_chat(server: ChatServer | None = None) -> contextlib.AbstractContextManager[ChatServer]:
    """Runs a :class:`ChatServer` on loopback; its ``url`` is the base URL (append ``/v1`` for a client)."""
    server = server or ChatServer()
    return _serving(server, chat_handler(server))


# ------------------------------------------------------------------------------------------------- images

PNG = png()


@dataclass
class ImageServer:
    """Serves :data:`PNG` and every way an image fetch can go wrong; ``requests`` lists the paths asked for."""

    url: str = ""
    requests: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def at(self, path: str, host: str = "127.0.0.1") -> str:
        return self.url.replace("127.0.0.1", host, 1) + path


def image_handler(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        protocol_version = "HTTP/1.0"

        def hang_then_send(self) -> None:
            server.release.wait(HANG_LIMIT_S)  # the client gives up first, however slow the machine
            self.reply(200, PNG, "image/png")

        def redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            server.requests.append(self.path)
            routes: dict[str, Callable[[], None]] = {
                "/img.png": lambda: self.reply(200, PNG, "image/png"),
                "/text": lambda: self.reply(200, b"hello, not an image", "text/plain"),
                "/big-declared": lambda: self.reply(200, b"\0" * 4096, "image/png"),
                "/big-streamed": lambda: self.reply(200, b"\0" * 64 * 1024, "image/png", length=False),
                "/redirect": lambda: self.redirect("/img.png"),
                "/loop": lambda: self.redirect("/loop"),
                "/to-other-host": lambda: self.redirect(server.at("/img.png", "127.0.0.2")),
                "/to-file": lambda: self.redirect("file:///etc/passwd"),
                "/slow": self.hang_then_send,
            }
            routes.get(self.path, lambda: self.reply(404, b"missing", "text/plain"))()

    return Handler


def serve_images() -> contextlib.AbstractContextManager[ImageServer]:
    server = ImageServer()
    return _serving(server, image_handler(server))
