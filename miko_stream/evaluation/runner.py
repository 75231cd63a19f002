"""Runs the pipeline over reference posts, many in flight, in file order of results."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog

from graph.contracts import IntentionEvent
from graph.knowledge import ReferencePost
from graph.pipeline import MikoPipeline, PostFailed
from miko_stream.evaluation.generation import Generated

log = structlog.get_logger(__name__)


async def generate_for(
    pipeline: MikoPipeline,
    references: Sequence[ReferencePost],
    *,
    concurrency: int,
    on_done: Callable[[IntentionEvent | None], None] = lambda _: None,
) -> list[Generated]:
    """One :class:`Generated` per reference post (a failed post counts as all-failed, never skipped)."""
    slots = asyncio.Semaphore(max(1, concurrency))

    async def one(reference: ReferencePost) -> Generated:
        async with slots:
            try:
                event = await pipeline.process(reference.post)
            except PostFailed as error:
                log.warning("eval_post_failed", post_id=reference.post.id, error=str(error))
                on_done(None)
                return Generated.failure(reference.post.id)
            on_done(event)
            return Generated.from_event(event)

    return list(await asyncio.gather(*(one(r) for r in references)))
