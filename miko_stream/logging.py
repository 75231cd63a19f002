"""structlog JSON logs on stderr; post id and trace id are bound as context variables where a post is in scope.

Libraries that log through the standard ``logging`` module (aiokafka, asyncio, httpx ...) go through the same
structlog pipeline, so every line on stderr is JSON; a repeated message is printed at most once per
``interval_s`` per logger and message template, with the count of the ones left out (an outage makes aiokafka
log the same connection error thousands of times).
"""

from __future__ import annotations

import logging
import sys
import time

import structlog


class _StderrLogger:
    """Writes each line to whatever ``sys.stderr`` is *now* (tests and CLI runners swap it)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _stderr_logger(*_args: object) -> _StderrLogger:
    return _StderrLogger()


class RateLimitedBridge(logging.Handler):
    """Forwards standard-library log records to structlog, each (logger, template) at most once per interval."""

    def __init__(self, interval_s: float = 10.0, max_keys: int = 1024) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # key -> (last printed, left out since)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
            key = (record.name, template[:200])
            now = time.monotonic()
            printed, left_out = self._last.get(key, (-self.interval_s, 0))
            if now - printed < self.interval_s:
                self._last[key] = (printed, left_out + 1)
                return
            if len(self._last) >= self.max_keys:
                self._last.clear()
            self._last[key] = (now, 0)
            fields: dict[str, object] = {"logger": record.name}
            if left_out:
                fields["repeats_left_out"] = left_out
            if record.exc_info and record.exc_info[1] is not None:
                fields["error"] = repr(record.exc_info[1])[:500]
            logger = structlog.get_logger(record.name)
            logger.log(record.levelno, record.getMessage()[:2000], **fields)
        except Exception:  # a log line must never break the program
            self.handleError(record)


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    """JSON lines for services; a console renderer is available for humans (``MIKO_LOG_FORMAT=console``)."""
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, RateLimitedBridge):
            root.removeHandler(handler)
    root.addHandler(RateLimitedBridge())
    root.setLevel(logging.WARNING)
