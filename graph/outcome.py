"""One input record -> exactly one outcome (an event or a failure with its stage), whatever the record holds.

The stream processor and the batch runner both go through :func:`process_record`, so a record that would
crash one cannot crash the other, and both dead-letter the same inputs at the same stage. The only exception
that leaves is cancellation (shutdown, rebalance): every other one becomes a :class:`Failure`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from graph.contracts import DeadLetter, DeadLetterStage, IntentionEvent, Post, SourceRef
from graph.intake import InputLimits, IntakeError, decode_post


class PostProcessor(Protocol):
    """What turns a post into an event (``graph.pipeline.MikoPipeline`` is one)."""

    async def process(self, post: Post, source: SourceRef | None) -> IntentionEvent:
        """One event per post. For a post that cannot produce one, raise; an exception with ``stage``
        (DeadLetterStage) and ``attempts`` attributes, like ``graph.pipeline.PostFailed``, tells the dead
        letter which stage failed after how many attempts (anything else is recorded as stage graph)."""
        ...


@dataclass(frozen=True)
class Processed:
    event: IntentionEvent
    value: bytes  # the event as JSON, serialised inside the guard (serialising can fail too)


@dataclass(frozen=True)
class Failure:
    error: BaseException
    stage: DeadLetterStage
    post_id: str | None = None
    attempts: int = 1

    def dead_letter(self, raw: bytes, **where: Any) -> DeadLetter:
        return DeadLetter.for_bytes(raw, self.error, self.stage, post_id=self.post_id, attempts=self.attempts, **where)


Outcome = Processed | Failure


async def process_record(
    raw: bytes,
    limits: InputLimits,
    processor: PostProcessor,
    source: SourceRef | None,
    timeout_s: float | None = None,
) -> Outcome:
    """Decode, validate and process one record; never raises except :class:`asyncio.CancelledError`."""
    try:
        post = decode_post(raw, limits)
    except IntakeError as error:
        return Failure(error, error.stage, error.post_id)
    except Exception as error:  # decode_post raises only IntakeError; this is the guard against its bugs
        return Failure(error, DeadLetterStage.DECODE)
    try:
        async with asyncio.timeout(timeout_s):
            event = await processor.process(post, source)
        return Processed(event, event.model_dump_json().encode())
    except Exception as error:
        stage, attempts = failure_details(error)
        return Failure(error, stage, post.id, attempts)


def failure_details(error: BaseException) -> tuple[DeadLetterStage, int]:
    """Stage and attempts from a ``PostFailed``-like error; a plain exception is one failed graph attempt."""
    stage = getattr(error, "stage", None)
    attempts = getattr(error, "attempts", None)
    return (
        stage if isinstance(stage, DeadLetterStage) else DeadLetterStage.GRAPH,
        attempts if isinstance(attempts, int) and attempts > 0 else 1,
    )
