"""The state one post carries through the graph, and the micro-batch of posts one graph run carries.

The graph runs once per micro-batch (:class:`BatchState`): each node applies its per-post logic to every post
of the batch it concerns and merges that post's update into the post's own :class:`PostState` with
:func:`merge_update` (node timings and counters add up, everything else is replaced).
"""

from __future__ import annotations

import contextvars
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

import structlog

from graph.contracts import CaptionSource, Intention, KeyInfo, Post, Relation


def add_timings(left: dict[str, float], right: dict[str, float]) -> dict[str, float]:
    """Reducer: node timings add up, since generate and verify may run more than once."""
    merged = dict(left)
    for name, ms in right.items():
        merged[name] = merged.get(name, 0.0) + ms
    return merged


class Candidate(TypedDict):
    """A generated completion waiting for verification."""

    relation: Relation
    text: str
    parse_failed: bool
    attempts: int


@dataclass(frozen=True)
class NodeFailure:
    """Why a post left its micro-batch: the node, the error left after retries (or the deadline), attempts."""

    node: str
    error: BaseException
    attempts: int
    deadline: bool = False


class PostState(TypedDict, total=False):
    post: Post
    trace_id: str
    log_context: contextvars.Context  # post_id and trace_id bound for logs: the context its node tasks run in
    deadline: float  # event-loop time (``loop.time()``) after which the post fails
    text: str
    caption: str | None
    caption_source: CaptionSource
    key_info: KeyInfo
    pending: list[Relation]
    rejected: dict[Relation, list[str]]
    candidates: list[Candidate]  # generated, not yet verified (verify empties it)
    intentions: dict[Relation, Intention]
    round: int
    degraded: list[str]
    parse_failures: int
    timings_ms: dict[str, float]
    classifications: dict[str, float]  # student name -> score (the classify node, when students are configured)
    failure: NodeFailure  # set when the post failed; later nodes skip it
    detached: bool  # left this batch to go on alone (a straggler); later nodes of the batch skip it


class BatchState(TypedDict, total=False):
    """One graph run: the posts of a micro-batch, each with its own state, in arrival order."""

    posts: list[PostState]
    resume: str  # the node to start at (a detached post going on alone); default: caption or extract


def post_log_context(state: PostState) -> contextvars.Context:
    """The post's own context (its ``log_context``, else a new one) with its post_id and trace_id bound for logs.

    Made once per post: the tasks that run its nodes start in it, instead of binding and unbinding per node call.
    """
    context = state.get("log_context")
    if context is None:
        context = contextvars.copy_context()
        post_id, trace_id = state["post"].id, state.get("trace_id", "")
        context.run(structlog.contextvars.bind_contextvars, post_id=post_id, trace_id=trace_id)
    return context


# How a node's update to one post combines with what the post already has (the rest is replaced).
REDUCERS: dict[str, Callable[[Any, Any], Any]] = {
    "degraded": operator.add,
    "parse_failures": operator.add,
    "timings_ms": add_timings,
}


def merge_update(state: PostState, update: PostState) -> PostState:
    """``state`` with a node's ``update`` applied (a new dict; ``state`` is not modified)."""
    merged: dict[str, Any] = dict(state)
    for key, value in update.items():
        reducer = REDUCERS.get(key)
        merged[key] = reducer(merged[key], value) if reducer is not None and key in merged else value
    return merged  # type: ignore[return-value]
