"""The learned verifier inside the event loop: requests of concurrent posts scored in one batch, off the loop.

One encoder call for many posts costs much less than one per post (the sentence encoder's matrix products
batch well), and it must not block the event loop that also feeds Kafka and the LLM batcher. So each post's
request waits at most ``max_wait_ms`` for others, then one worker thread scores everything that gathered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from graph.verifier.artifact import LearnedVerifier
from graph.verifier.items import VerifierItem


@dataclass
class _Request:
    items: Sequence[VerifierItem]
    future: asyncio.Future[list[float]]


class BatchedVerifier:
    """Async front of a :class:`LearnedVerifier`, shared by every post in flight on one event loop."""

    def __init__(self, verifier: LearnedVerifier, *, max_items: int = 640, max_wait_ms: float = 5.0) -> None:
        self.verifier = verifier
        self.max_items = max_items
        self.max_wait_s = max_wait_ms / 1000
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def score(self, items: Sequence[VerifierItem]) -> list[float]:
        """Scores for ``items`` (one post's items, or several posts' with distinct ``post_id``)."""
        if not items:
            return []
        self._ensure_worker()
        assert self._queue is not None
        future: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(items, future))
        return await future

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run(self._queue), name="learned-verifier")

    async def _run(self, queue: asyncio.Queue[_Request]) -> None:
        while True:
            batch = [await queue.get()]
            deadline = asyncio.get_running_loop().time() + self.max_wait_s
            while sum(len(r.items) for r in batch) < self.max_items:
                remaining = deadline - asyncio.get_running_loop().time()
                try:
                    batch.append(await asyncio.wait_for(queue.get(), timeout=max(remaining, 0)))
                except TimeoutError:
                    break
            await self._score_batch(batch)

    async def _score_batch(self, batch: list[_Request]) -> None:
        items = [item for request in batch for item in request.items]
        try:
            scores = await asyncio.to_thread(self.verifier.score, items)
        except Exception as error:  # every waiting post gets the error; the worker keeps serving
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        start = 0
        for request in batch:
            end = start + len(request.items)
            if not request.future.done():
                request.future.set_result(scores[start:end])
            start = end
