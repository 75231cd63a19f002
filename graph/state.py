"""The state one post carries through the graph."""

from __future__ import annotations

import operator
from typing import Annotated, TypedDict

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


class PostState(TypedDict, total=False):
    post: Post
    text: str
    caption: str | None
    caption_source: CaptionSource
    key_info: KeyInfo
    pending: list[Relation]
    rejected: dict[Relation, list[str]]
    candidates: list[Candidate]
    intentions: dict[Relation, Intention]
    round: int
    degraded: Annotated[list[str], operator.add]
    parse_failures: Annotated[int, operator.add]
    timings_ms: Annotated[dict[str, float], add_timings]
