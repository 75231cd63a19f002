"""Wiring the nodes into a LangGraph StateGraph over micro-batches: caption? → extract → generate → verify ⟲.

One graph run carries a micro-batch of posts (:class:`graph.state.BatchState`), so LangGraph's per-superstep
cost is paid once per batch instead of once per post. Each node is a :class:`BatchNode`: it runs the per-post
node function (graph/nodes.py) for every post of the batch it concerns, concurrently, each post with its own
retries, deadline and timing; a post that still fails is marked (``failure``) and skipped from then on, so it
is dead-lettered alone while the rest of its batch goes on.

Posts of a batch do not wait long for each other: once one post's call in a step is done, the others get as
long again (at least :data:`STRAGGLER_GRACE_S`); a post still running then is *detached* (handed to the
``detach`` callback in the run's config, see graph/pipeline.py), and continues in a graph run of its own
that starts at its next node (``BatchState.resume``), while the batch moves on without it.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import RetryPolicy

from graph.errors import is_transient
from graph.nodes import GraphDeps, MikoNodes
from graph.state import BatchState, NodeFailure, PostState, merge_update, post_log_context

PostNode = Callable[[PostState], Awaitable[PostState]]
Detach = Callable[[PostState, "asyncio.Task[PostState]", str], None]
"""``detach(state, task, node)``: take over a post whose ``node`` call (``task``) outlasted its batch."""

STRAGGLER_GRACE_S = 0.05
NODES = ("caption", "extract", "generate", "verify", "classify")


@dataclass(frozen=True)
class BatchNode:
    """A per-post node applied to the posts of a micro-batch for which ``applies`` is true."""

    name: str
    node: PostNode
    applies: Callable[[PostState], bool]
    retry: RetryPolicy

    async def run_batch(self, batch: BatchState, config: RunnableConfig) -> BatchState:
        """The node's step for the whole batch (what LangGraph calls)."""
        posts = batch["posts"]
        chosen = [index for index, state in enumerate(posts) if _live(state) and self.applies(state)]
        if not chosen:  # nothing for this node in the batch: it passes through unchanged
            return {}
        merged = list(posts)
        if len(chosen) == 1:  # no task needed for one post
            merged[chosen[0]] = merge_update(posts[chosen[0]], await self.run_alone(posts[chosen[0]]))
            return {"posts": merged}
        # One timer for the step, not one per post: the earliest deadline bounds the wait, and posts whose
        # deadline has passed by then fail (the others still running are stragglers, see the module docstring).
        loop = asyncio.get_running_loop()
        tasks = {
            index: loop.create_task(self.run_one(posts[index]), context=post_log_context(posts[index]))
            for index in chosen
        }
        detach: Detach | None = config.get("configurable", {}).get("detach")
        deadlines = {task: posts[index].get("deadline", math.inf) for index, task in tasks.items()}
        await (_wait_for_most(deadlines) if detach is not None else _wait_for_all(deadlines))
        now = loop.time()
        for index, task in tasks.items():
            state = posts[index]
            if task.done():
                merged[index] = merge_update(state, task.result())
            elif now >= state.get("deadline", math.inf):
                task.cancel()
                merged[index] = merge_update(state, self._deadline_failure(TimeoutError()))
            else:
                assert detach is not None
                detach(state, task, self.name)
                merged[index] = {**state, "detached": True}
        return {"posts": merged}

    async def run_alone(self, state: PostState) -> PostState:
        """:meth:`run_one` for a post with no batch to share a step with, under its own deadline timer."""
        bound = structlog.contextvars.bind_contextvars(post_id=state["post"].id, trace_id=state.get("trace_id", ""))
        deadline = asyncio.timeout_at(state.get("deadline"))
        try:
            async with deadline:
                return await self.run_one(state)
        except TimeoutError as error:
            if not deadline.expired():
                raise
            return self._deadline_failure(error)
        finally:
            structlog.contextvars.reset_contextvars(**bound)

    async def run_one(self, state: PostState) -> PostState:
        """One post's update, with its retries; a failure becomes ``failure``.

        The caller enforces the deadline and runs it in the post's log context (:func:`post_log_context`).
        """
        started = time.perf_counter()
        update = await self._attempts(state)
        update["timings_ms"] = {self.name: round((time.perf_counter() - started) * 1000, 3)}
        return update

    def _deadline_failure(self, error: TimeoutError) -> PostState:
        return {"failure": NodeFailure(self.name, error, attempts=1, deadline=True)}

    async def _attempts(self, state: PostState) -> PostState:
        policy = self.retry
        attempt = 0
        interval = policy.initial_interval
        while True:
            attempt += 1
            try:
                return await self.node(state)
            except Exception as error:
                if attempt >= policy.max_attempts or not _should_retry(policy, error):
                    return {"failure": NodeFailure(self.name, error, attempts=attempt)}
            await asyncio.sleep(interval + (random.uniform(0, 1) if policy.jitter else 0))
            interval = min(policy.max_interval, interval * policy.backoff_factor)


def _live(state: PostState) -> bool:
    return "failure" not in state and "detached" not in state


Deadlines = dict["asyncio.Task[PostState]", float]
"""A step's tasks and their posts' deadlines (loop time; ``math.inf`` for none)."""


async def _wait_for_most(deadlines: Deadlines) -> None:
    """The tasks done within max(grace, time to the first done) after the first, never past the earliest deadline."""
    loop = asyncio.get_running_loop()
    until = min(deadlines.values())

    def left() -> float | None:
        return None if until == math.inf else max(0.0, until - loop.time())

    started = time.perf_counter()
    _, pending = await asyncio.wait(deadlines, return_when=asyncio.FIRST_COMPLETED, timeout=left())
    if pending and loop.time() < until:
        grace = max(STRAGGLER_GRACE_S, time.perf_counter() - started)
        remaining = left()
        await asyncio.wait(pending, timeout=grace if remaining is None else min(grace, remaining))


async def _wait_for_all(deadlines: Deadlines) -> None:
    """Every task, each no longer than its post's deadline (the graph run on its own, with no one to hand off to)."""
    loop = asyncio.get_running_loop()
    pending = set(deadlines)
    while pending:
        until = min(deadlines[task] for task in pending)
        timeout = None if until == math.inf else max(0.0, until - loop.time())
        _, pending = await asyncio.wait(pending, timeout=timeout)
        pending = {task for task in pending if deadlines[task] > loop.time()}


def next_node(nodes: MikoNodes, after: str, state: PostState) -> str | None:
    """Where a post goes after node ``after`` (None: it is finished); the graph's edges, for one post."""
    if "failure" in state:
        return None
    if after == "verify":
        if nodes.route_after_verify(state) == "generate":
            return "generate"
        return "classify" if nodes.needs_classification(state) else None
    if after == "classify":
        return None
    return {"caption": "extract", "extract": "generate", "generate": "verify"}[after]


def _should_retry(policy: RetryPolicy, error: Exception) -> bool:
    retry_on = policy.retry_on
    if callable(retry_on) and not isinstance(retry_on, type):
        return bool(retry_on(error))
    return isinstance(error, retry_on)  # type: ignore[arg-type]


def build_graph(deps: GraphDeps, nodes: MikoNodes | None = None) -> CompiledStateGraph:
    """The compiled MIKO graph over micro-batches; compile once and share it across concurrent batches."""
    nodes = nodes or MikoNodes(deps)
    retry = RetryPolicy(
        max_attempts=deps.config.retry_attempts, initial_interval=0.2, jitter=False, retry_on=is_transient
    )

    def needs_caption(state: PostState) -> bool:
        return nodes.route_start(state) == "caption"

    def has_pending(state: PostState) -> bool:
        return bool(state.get("pending"))

    def has_candidates(state: PostState) -> bool:
        return bool(state.get("candidates"))

    def always(state: PostState) -> bool:
        return True

    # Routes are coroutines: LangGraph runs a plain function in a worker thread, one hop per step.
    async def route_start(batch: BatchState) -> str:
        if batch.get("resume"):
            return batch["resume"]
        return "caption" if any(needs_caption(state) for state in batch["posts"]) else "extract"

    async def route_after_verify(batch: BatchState) -> str:
        live = (state for state in batch["posts"] if _live(state))
        return "generate" if any(nodes.route_after_verify(state) == "generate" for state in live) else END

    async def route_to_classify(batch: BatchState) -> str:
        live = [state for state in batch["posts"] if _live(state)]
        if any(nodes.needs_classification(state) for state in live):
            return "classify"
        return await route_after_verify(batch)

    builder = StateGraph(BatchState)
    builder.add_node("caption", BatchNode("caption", nodes.caption, needs_caption, retry).run_batch)
    builder.add_node("extract", BatchNode("extract", nodes.extract, always, retry).run_batch)
    builder.add_node("generate", BatchNode("generate", nodes.generate, has_pending, retry).run_batch)
    builder.add_node("verify", BatchNode("verify", nodes.verify, has_candidates, retry).run_batch)
    builder.add_conditional_edges(
        START, route_start, [name for name in NODES if name != "classify" or deps.classifiers]
    )
    builder.add_edge("caption", "extract")
    builder.add_edge("extract", "generate")
    builder.add_edge("generate", "verify")
    if deps.classifiers:  # posts whose intentions are final are scored right away; the others go on generating
        builder.add_node("classify", BatchNode("classify", nodes.classify, nodes.needs_classification, retry).run_batch)
        builder.add_conditional_edges("verify", route_to_classify, ["classify", "generate", END])
        builder.add_conditional_edges("classify", route_after_verify, ["generate", END])
    else:
        builder.add_conditional_edges("verify", route_after_verify, ["generate", END])
    return builder.compile()
