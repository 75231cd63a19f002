"""Builders shared by the index, indexer and API tests (no tests here)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from graph.contracts import Intention, IntentionEvent, ModelInfo, Relation
from index.embeddings import HashingEmbedder
from index.records import IntentionDoc, PostDoc
from index.service import IndexSettings, IntentionIndex
from index.vectors import VectorIndexConfig

Intentions = Mapping[str, str | tuple[str, bool]]  # relation -> text, or (text, verified)


def make_event(post_id: str, text: str, intentions: Intentions) -> IntentionEvent:
    items = []
    for relation, value in intentions.items():
        body, verified = (value, True) if isinstance(value, str) else value
        items.append(
            Intention(relation=Relation(relation), text=body, score=0.9 if verified else 0.1, verified=verified)
        )
    return IntentionEvent(
        post_id=post_id,
        text=text,
        intentions=items,
        models=ModelInfo(llm="fake", vision="none", verifier="heuristic"),
        prompt_version="test",
    )


def event_bytes(post_id: str, text: str, intentions: Intentions) -> bytes:
    return make_event(post_id, text, intentions).model_dump_json().encode()


def make_doc(post_id: str, text: str, intentions: Mapping[str, str]) -> PostDoc:
    """A PostDoc whose document is a real IntentionEvent (all intentions verified)."""
    document = make_event(post_id, text, intentions).model_dump_json()
    return PostDoc(post_id, text, document, tuple(IntentionDoc(r, t, 0.9) for r, t in intentions.items()))


def open_index(root: Path, kind: str = "flat", **config: object) -> IntentionIndex:
    settings = IndexSettings(root, VectorIndexConfig(kind=kind, **config))  # type: ignore[arg-type]
    return IntentionIndex.open(settings, HashingEmbedder(), writer=True)


def apply(index: IntentionIndex, changes: Mapping[str, PostDoc | None], offset: int = 0) -> None:
    asyncio.run(index.apply(dict(changes), {"topic": "t", "offsets": {"0": offset}}))


SAMPLE_POSTS = {
    "p-followers": ("buy 1k followers cheap dm me", {"xIntent": "sell followers to other accounts"}),
    "p-goal": ("what a goal!!! champions", {"xReact": "proud of the team winning the final"}),
    "p-dog": ("rip buddy, best boy ever", {"xReact": "sad about losing their dog", "xNeed": "adopt a dog"}),
    "p-phone": ("new phone day", {"xWant": "show off the new phone", "oWant": "buy the same phone"}),
    "p-trip": ("paris next week", {"xNeed": "book a flight to paris", "xIntent": "plan a holiday in france"}),
}


def sample_docs() -> dict[str, PostDoc]:
    return {post_id: make_doc(post_id, text, items) for post_id, (text, items) in SAMPLE_POSTS.items()}
