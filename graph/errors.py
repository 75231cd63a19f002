"""Which model errors are worth retrying: network hiccups, timeouts, overloaded servers."""

from __future__ import annotations

import httpx
import openai


class TransientModelError(RuntimeError):
    """A backend failure that may succeed on retry (raise it from custom backends)."""


_TRANSIENT = (
    TransientModelError,
    TimeoutError,
    ConnectionError,
    httpx.TransportError,
    openai.APIConnectionError,
    openai.RateLimitError,
    openai.InternalServerError,
)


def is_transient(error: BaseException) -> bool:
    """True for errors a retry can fix; parse errors and bad requests are not retried."""
    return isinstance(error, _TRANSIENT)
