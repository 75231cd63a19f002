"""The stream processor in-process, with :class:`ScriptedProcessor` standing in for the graph.

The real graph through the real CLI is exercised by test_stream_crash.py and test_produce_tail.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

from consumers.kafka_config import KafkaConfig
from consumers.stream import StreamOptions, StreamProcessor, StreamStats
from graph.contracts import DeadLetterStage, IntentionEvent, ModelInfo, Post, SourceRef
from graph.intake import InputLimits

MODELS = ModelInfo(llm="scripted", vision="none", verifier="none")
FAST = {"commit_interval_s": 0.2, "stats_interval_s": 1.0, "session_timeout_ms": 3000}


class GraphGaveUp(Exception):
    """Shaped like graph.pipeline.PostFailed: a stage and the attempts it took."""

    def __init__(self, message: str, stage: DeadLetterStage, attempts: int) -> None:
        super().__init__(message)
        self.stage = stage
        self.attempts = attempts


class ScriptedProcessor:
    """Echoes posts into events; can be slow (the fault, never a timing to assert), held at a gate, fail or hang
    for chosen ids."""

    def __init__(self, delay_s: float = 0.0, fail: set[str] | None = None, hang: set[str] | None = None) -> None:
        self.delay_s = delay_s
        self.fail = fail or set()
        self.hang = hang or set()
        self.gate: asyncio.Event | None = None
        self.calls: Counter[str] = Counter()
        self.active = 0
        self.peak = 0

    async def process(self, post: Post, source: SourceRef | None) -> IntentionEvent:
        self.calls[post.id] += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if post.id in self.hang:
                await asyncio.Event().wait()
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay_s)
            if post.id in self.fail:
                raise GraphGaveUp("the model kept timing out", DeadLetterStage.GRAPH, attempts=3)
            return IntentionEvent(post_id=post.id, source=source, text=post.text, models=MODELS, prompt_version="t")
        finally:
            self.active -= 1


@contextlib.asynccontextmanager
async def running(stream: StreamProcessor) -> AsyncIterator[asyncio.Task[StreamStats]]:
    task = asyncio.create_task(stream.run())
    try:
        yield task
    finally:
        stream.request_stop()
        await asyncio.wait_for(asyncio.shield(task), 120)  # bounds a stuck stop only


def stream_for(config: KafkaConfig, processor: ScriptedProcessor, limits: InputLimits | None = None,
               **options: object) -> StreamProcessor:  # fmt: skip
    return StreamProcessor(processor, config, limits or InputLimits(), StreamOptions(**{**FAST, **options}))
