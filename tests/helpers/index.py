"""Intention events, index documents, sample posts and event generations for the index, indexer and API tests."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from consumers.kafka_config import KafkaConfig
from consumers.topics import ensure_topics
from graph.contracts import Intention, IntentionEvent, ModelInfo, Relation
from helpers.kafka import produce
from index.embeddings import HashingEmbedder
from index.records import IntentionDoc, PostDoc
from index.service import IndexSettings, IntentionIndex
from index.vectors import VectorIndexConfig

Intentions = Mapping[str, str | tuple[str, bool]]  # relation -> text, or (text, verified)
Record = tuple[str, bytes | None]  # (key, value) on the intentions topic; value None is a tombstone


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


def expected_pairs(records: Iterable[Record]) -> int:
    """Distinct verified (post, relation) pairs in the final state the records describe."""
    state: dict[str, int] = {}
    for key, value in records:
        if value is None:
            state.pop(key, None)
        else:
            event = json.loads(value)
            state[key] = len({item["relation"] for item in event["intentions"] if item["verified"]})
    return sum(state.values())


def generation(tag: str, posts: range, deletes: Iterable[int] = ()) -> list[Record]:
    """One event per post (relations vary with the tag and post), then tombstones for ``deletes``."""
    records: list[Record] = []
    for n in posts:
        items: Intentions = {
            "xIntent": f"{tag} wants thing {n}",
            "xReact": (f"{tag} feels {n}", n % 3 != 0),
        }
        if (n + len(tag)) % 2:
            items["oWant"] = f"{tag} others want {n}"
        records.append((f"post-{n}", event_bytes(f"post-{n}", f"{tag} text {n}", items)))
    records.extend((f"post-{n}", None) for n in deletes)
    return records


async def produce_events(bootstrap: str, topic: str, records: Iterable[Record]) -> None:
    """One batch per record (see :func:`helpers.kafka.produce`): the index tests read to the topic's end."""
    await produce(bootstrap, topic, [(key.encode(), value) for key, value in records], one_by_one=True)


async def new_topic(bootstrap: str) -> KafkaConfig:
    """An intentions topic (2 partitions) and indexer group of the test's own."""
    name = f"intentions-{uuid.uuid4().hex[:8]}"
    kafka = KafkaConfig(bootstrap=bootstrap, intentions_topic=name, topic_partitions=2, indexer_group_id=name)
    await ensure_topics(kafka, [name])
    return kafka
