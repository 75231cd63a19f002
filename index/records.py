"""Plain records the index stores and returns; the Kafka consumer builds them from IntentionEvents."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IntentionDoc:
    """One verified intention: gets one vector, keyed by (post id, relation)."""

    relation: str
    text: str
    score: float | None = None


@dataclass(frozen=True)
class PostDoc:
    """The latest state of a post: its normalised text, the full event JSON and its verified intentions."""

    post_id: str
    text: str
    document: str
    intentions: tuple[IntentionDoc, ...] = ()


@dataclass(frozen=True)
class Hit:
    """A search result: an intention, its similarity to the query and its post."""

    post_id: str
    relation: str
    text: str
    score: float
    verifier_score: float | None
    post_text: str


@dataclass(frozen=True)
class IntentionRef:
    """An indexed intention and its vector id (``vector_id(post_id, relation)``)."""

    post_id: str
    relation: str
    text: str
    vid: int
