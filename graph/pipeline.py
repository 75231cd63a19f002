"""One post in, one IntentionEvent out: the graph run with a deadline, turned into the event contract."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import structlog
from langgraph.errors import GraphRecursionError

from graph.builder import build_graph
from graph.contracts import (
    CaptionSource,
    DeadLetterStage,
    IntentionEvent,
    KeyInfo,
    ModelInfo,
    Post,
    Relation,
    SourceRef,
)
from graph.nodes import GraphDeps
from graph.normalize import normalize_text
from graph.state import PostState

log = structlog.get_logger(__name__)


class PostFailed(Exception):
    """A post that still failed after retries or ran past its deadline; it belongs in the dead-letter topic."""

    def __init__(self, message: str, *, cause: BaseException, attempts: int, stage: DeadLetterStage) -> None:
        super().__init__(message)
        self.cause = cause
        self.attempts = attempts
        self.stage = stage


@dataclass(frozen=True)
class PipelineInfo:
    """Names that go into every event."""

    models: ModelInfo
    prompt_version: str


class MikoPipeline:
    """Runs the compiled graph for many posts concurrently (share one instance per process)."""

    def __init__(self, deps: GraphDeps, models: ModelInfo, deadline_s: float = 600.0) -> None:
        self.deps = deps
        self.graph = build_graph(deps)
        self.info = PipelineInfo(models=models, prompt_version=deps.prompts.version)
        self.deadline_s = deadline_s
        normalize_text("#WarmUp")  # loads the word-segmentation tables now, not inside the first post's deadline

    async def process(self, post: Post, source: SourceRef | None = None) -> IntentionEvent:
        """Run the graph for one post; raises :class:`PostFailed` when it cannot produce an event."""
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(post_id=post.id, trace_id=uuid.uuid4().hex[:16]):
            try:
                async with asyncio.timeout(self.deadline_s):
                    state: PostState = await self.graph.ainvoke({"post": post}, {"recursion_limit": 50})
            except Exception as error:
                failure = _as_failure(error, self.deadline_s, self.deps.config.retry_attempts)
                log.warning("post_failed", error=str(failure), attempts=failure.attempts)
                raise failure from error
            event = self.to_event(post, state, source)
            event.timings_ms["total"] = round((time.perf_counter() - started) * 1000, 3)
            log.info(
                "post_done", status=event.status, ms=event.timings_ms["total"], parse_failures=event.parse_failures
            )
        return event

    async def aclose(self) -> None:
        """Stop the shared local-model workers (their threads would otherwise outlive the event loop)."""
        from graph.models.registry import shutdown_local_models

        await asyncio.to_thread(shutdown_local_models)

    def to_event(self, post: Post, state: PostState, source: SourceRef | None) -> IntentionEvent:
        intentions = state.get("intentions", {})
        ordered = [intentions[relation] for relation in Relation if relation in intentions]
        unusable = [item.relation for item in ordered if item.parse_failed or not item.text]
        partial = bool(state.get("degraded")) or bool(unusable) or len(ordered) < len(Relation)
        return IntentionEvent(
            post_id=post.id,
            source=source,
            text=state.get("text", post.text),
            caption=state.get("caption"),
            caption_source=state.get("caption_source", CaptionSource.NONE),
            key_info=state.get("key_info", KeyInfo()),
            intentions=ordered,
            models=self.info.models,
            prompt_version=self.info.prompt_version,
            timings_ms=dict(state.get("timings_ms", {})),
            status="partial" if partial else "ok",
            parse_failures=state.get("parse_failures", 0),
            warnings=list(state.get("degraded", [])),
        )


def _as_failure(error: Exception, deadline_s: float, retry_attempts: int) -> PostFailed:
    """What goes into the dead letter: the deadline, a runaway loop, or the error left after retries."""
    if isinstance(error, TimeoutError):
        message, attempts = f"post ran past its {deadline_s}s deadline", 1
    elif isinstance(error, GraphRecursionError):
        message, attempts = "graph did not converge", 1
    else:
        message, attempts = f"{type(error).__name__}: {error}", retry_attempts
    return PostFailed(message, cause=error, attempts=attempts, stage=DeadLetterStage.GRAPH)
