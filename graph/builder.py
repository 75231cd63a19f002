"""Wiring the nodes into a LangGraph StateGraph: caption? → extract → generate → verify ⟲ generate."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import RetryPolicy

from graph.errors import is_transient
from graph.nodes import GraphDeps, MikoNodes
from graph.state import PostState

NodeFn = Callable[[PostState], Awaitable[PostState]]


def timed(name: str, node: NodeFn) -> NodeFn:
    """Records the node's wall time (ms) into ``timings_ms``; repeated runs add up."""

    async def run(state: PostState) -> PostState:
        started = time.perf_counter()
        update = await node(state)
        update["timings_ms"] = {name: round((time.perf_counter() - started) * 1000, 3)}
        return update

    run.__name__ = name
    return run


def build_graph(deps: GraphDeps) -> CompiledStateGraph:
    """The compiled MIKO graph; compile once and share it across concurrent posts."""
    nodes = MikoNodes(deps)
    retry = RetryPolicy(max_attempts=deps.config.retry_attempts, initial_interval=0.2, retry_on=is_transient)
    builder = StateGraph(PostState)
    builder.add_node("caption", timed("caption", nodes.caption), retry_policy=retry)
    builder.add_node("extract", timed("extract", nodes.extract), retry_policy=retry)
    builder.add_node("generate", timed("generate", nodes.generate), retry_policy=retry)
    builder.add_node("verify", timed("verify", nodes.verify), retry_policy=retry)
    builder.add_conditional_edges(START, nodes.route_start, ["caption", "extract"])
    builder.add_edge("caption", "extract")
    builder.add_edge("extract", "generate")
    builder.add_edge("generate", "verify")
    builder.add_conditional_edges("verify", nodes.route_after_verify, ["generate", END])
    return builder.compile()
