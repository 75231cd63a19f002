"""One post in, one IntentionEvent out: the graph run with a deadline, turned into the event contract."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass

import structlog
from langgraph.errors import GraphRecursionError

from graph.builder import build_graph, next_node
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
from graph.nodes import GraphDeps, MikoNodes
from graph.normalize import normalize_text
from graph.state import BatchState, NodeFailure, PostState, merge_update, post_log_context

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


@dataclass
class _Waiter:
    """A post waiting for its micro-batch's graph run."""

    post: Post
    trace_id: str
    deadline: float  # loop.time()
    future: asyncio.Future[PostState]


class MikoPipeline:
    """Runs the compiled graph for many posts concurrently (share one instance per process).

    :meth:`process` takes one post, as before; under the hood the posts that arrive together (in the same
    event-loop turn, e.g. one Kafka fetch) share one graph run of up to ``batch_size`` posts, and each post
    leaves its batch as soon as the graph is done with it (see graph/builder.py).
    """

    def __init__(self, deps: GraphDeps, models: ModelInfo, deadline_s: float = 600.0, batch_size: int = 64) -> None:
        self.deps = deps
        self.nodes = MikoNodes(deps)
        self.graph = build_graph(deps, self.nodes)
        self.info = PipelineInfo(models=models, prompt_version=deps.prompts.version)
        self.deadline_s = deadline_s
        self.batch_size = max(1, batch_size)
        self._waiting: list[_Waiter] = []
        self._flush_scheduled = False
        self._runs: set[asyncio.Task[None]] = set()
        normalize_text("#WarmUp")  # loads the word-segmentation tables now, not inside the first post's deadline

    async def process(self, post: Post, source: SourceRef | None = None) -> IntentionEvent:
        """Run the graph for one post; raises :class:`PostFailed` when it cannot produce an event."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        waiter = _Waiter(post, uuid.uuid4().hex[:16], loop.time() + self.deadline_s, loop.create_future())
        self._enqueue(waiter)
        ids = {"post_id": post.id, "trace_id": waiter.trace_id}  # on this task's log lines (no per-post binding)
        try:
            async with asyncio.timeout_at(waiter.deadline):
                state = await waiter.future
        except Exception as error:
            raise _logged(_as_failure(error, self.deadline_s), ids) from error
        if "failure" in state:
            failure = state["failure"]
            raise _logged(_node_failure(failure, self.deadline_s), ids) from failure.error
        event = self.to_event(post, state, source)
        event.timings_ms["total"] = round((time.perf_counter() - started) * 1000, 3)
        log.info(
            "post_done", status=event.status, ms=event.timings_ms["total"], parse_failures=event.parse_failures, **ids
        )
        return event

    def _enqueue(self, waiter: _Waiter) -> None:
        self._waiting.append(waiter)
        if len(self._waiting) >= self.batch_size:
            self._flush()
        elif not self._flush_scheduled:
            # Posts handed over in this event-loop turn (one Kafka fetch, one batch of lines) join the batch.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        waiting, self._waiting = self._waiting, []
        for start in range(0, len(waiting), self.batch_size):
            chunk = waiting[start : start + self.batch_size]
            self._start_run(chunk, [_first_state(waiter) for waiter in chunk])

    def _start_run(self, waiters: list[_Waiter], states: list[PostState], resume: str | None = None) -> None:
        run = asyncio.create_task(self._run_batch(waiters, states, resume))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)

    async def _run_batch(self, waiters: list[_Waiter], states: list[PostState], resume: str | None) -> None:
        """One graph run for a micro-batch; each post's future is resolved as soon as it is finished."""
        batch: BatchState = {"posts": states, "resume": resume} if resume else {"posts": states}
        by_trace = {waiter.trace_id: waiter for waiter in waiters}

        def detach(state: PostState, task: asyncio.Task[PostState], node: str) -> None:
            timer = asyncio.get_running_loop().call_at(state["deadline"], task.cancel)  # it stops at its deadline

            def rejoin(done: asyncio.Task[PostState]) -> None:
                timer.cancel()
                self._rejoin(by_trace[state["trace_id"]], state, done, node)

            task.add_done_callback(rejoin)

        config = {"recursion_limit": 50, "configurable": {"detach": detach}}
        try:
            stream = self.graph.astream(batch, config, stream_mode="values")  # type: ignore[arg-type]
            async with contextlib.aclosing(stream):
                async for batch in stream:
                    self._resolve_finished(waiters, batch["posts"])
                    if all(waiter.future.done() or "detached" in state
                           for waiter, state in zip(waiters, batch["posts"], strict=True)):  # fmt: skip
                        break
            for waiter, state in zip(waiters, batch["posts"], strict=True):
                if not waiter.future.done() and "detached" not in state:
                    waiter.future.set_result(state)
        except Exception as error:  # a bug or a runaway loop: every post still in the batch fails with it
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(error)

    def _resolve_finished(self, waiters: list[_Waiter], states: list[PostState]) -> None:
        for waiter, state in zip(waiters, states, strict=True):
            if not waiter.future.done() and "detached" not in state and self.nodes.finished(state):
                waiter.future.set_result(state)

    def _rejoin(self, waiter: _Waiter, state: PostState, task: asyncio.Task[PostState], node: str) -> None:
        """A detached post's call is over: finish it, or go on in a graph run of its own from its next node."""
        if waiter.future.done():
            return
        if task.cancelled():
            if asyncio.get_running_loop().time() >= waiter.deadline:
                waiter.future.set_exception(TimeoutError(f"deadline hit in {node}"))
            else:
                waiter.future.cancel()
            return
        if (error := task.exception()) is not None:
            waiter.future.set_exception(error)
            return
        state = merge_update(state, task.result())
        resume = next_node(self.nodes, node, state)
        if resume is None:
            waiter.future.set_result(state)
        else:
            self._start_run([waiter], [state], resume)

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
            classifications=dict(state.get("classifications", {})),
        )


def _first_state(waiter: _Waiter) -> PostState:
    state: PostState = {"post": waiter.post, "trace_id": waiter.trace_id, "deadline": waiter.deadline}
    state["log_context"] = post_log_context(state)
    return state


def _logged(failure: PostFailed, ids: dict[str, str]) -> PostFailed:
    log.warning("post_failed", error=str(failure), attempts=failure.attempts, **ids)
    return failure


def _node_failure(failure: NodeFailure, deadline_s: float) -> PostFailed:
    """The dead-letter reason of a post its batch gave up on: its deadline, or the error left after retries."""
    if failure.deadline:
        return _as_failure(TimeoutError(f"deadline hit in {failure.node}"), deadline_s)
    cause = failure.error
    message = f"{type(cause).__name__} in {failure.node}: {cause}"
    return PostFailed(message, cause=cause, attempts=failure.attempts, stage=DeadLetterStage.GRAPH)


def _as_failure(error: Exception, deadline_s: float) -> PostFailed:
    """What goes into the dead letter: the deadline, a runaway loop, or the error left after retries."""
    if isinstance(error, TimeoutError):
        return PostFailed(f"post ran past its {deadline_s}s deadline", cause=error, attempts=1,
                          stage=DeadLetterStage.GRAPH)  # fmt: skip
    if isinstance(error, GraphRecursionError):
        return PostFailed("graph did not converge", cause=error, attempts=1, stage=DeadLetterStage.GRAPH)
    return PostFailed(f"{type(error).__name__}: {error}", cause=error, attempts=1, stage=DeadLetterStage.GRAPH)
