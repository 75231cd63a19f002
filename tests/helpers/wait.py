"""Waiting for a condition, with a deadline that only bounds a failure (never a timed assertion)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

from miko_stream.broker import wait_for_port

# Deadlines are generous: they only decide how long a broken test takes to fail, and CI machines are shared.
DEFAULT_TIMEOUT_S = 120.0


def _polls(condition: Callable[[], bool], timeout_s: float, what: str) -> Iterator[None]:
    """Yields while ``condition`` does not hold; the caller sleeps its own way between polls."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        yield


async def wait_until(
    condition: Callable[[], bool], timeout_s: float = DEFAULT_TIMEOUT_S, what: str = "condition", every_s: float = 0.05
) -> None:
    """Poll ``condition`` on the event loop until it holds; fails the test after ``timeout_s``."""
    for _ in _polls(condition, timeout_s, what):
        await asyncio.sleep(every_s)


def wait_until_sync(
    condition: Callable[[], bool], timeout_s: float = DEFAULT_TIMEOUT_S, what: str = "condition", every_s: float = 0.05
) -> None:
    """Like :func:`wait_until`, for tests and fixtures without an event loop."""
    for _ in _polls(condition, timeout_s, what):
        time.sleep(every_s)


def wait_for_port_free(port: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Until nothing accepts connections on 127.0.0.1:``port``."""
    wait_until_sync(lambda: not wait_for_port("127.0.0.1", port, 0.2), timeout_s, f"port {port} to be free")
