"""Helpers for tests that talk to the real embedded broker: unique topics, producing, collecting outputs."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.kafka_config import KafkaConfig
from consumers.topics import ensure_topics
from graph.contracts import DeadLetter, IntentionEvent

Record = ConsumerRecord[bytes, bytes]


def unique_config(bootstrap: str, **overrides: object) -> KafkaConfig:
    """Topics and group of this test's own, on the shared broker."""
    tag = uuid.uuid4().hex[:8]
    fields: dict[str, object] = {
        "bootstrap": bootstrap,
        "posts_topic": f"posts-{tag}",
        "intentions_topic": f"intentions-{tag}",
        "dlq_topic": f"dlq-{tag}",
        "group_id": f"group-{tag}",
        **overrides,
    }
    return KafkaConfig.model_validate(fields)


KeyValue = tuple[bytes | None, bytes | None]


def outputs_of(config: KafkaConfig) -> list[str]:
    return [config.intentions_topic, config.dlq_topic]


async def produce(bootstrap: str, topic: str, records: Iterable[KeyValue]) -> list[int]:
    """Send ``(key, value)`` records in order and wait for every ack; returns their partitions."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [item.partition for item in metadata]


async def collect(
    bootstrap: str,
    topics: Iterable[str],
    until: Callable[[list[Record]], bool],
    timeout_s: float = 60.0,
) -> list[Record]:
    """Read ``topics`` from the beginning until ``until(records)`` holds; fails the test on timeout."""
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not until(records):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s with {len(records)} records")
            batch = await consumer.getmany(timeout_ms=200)
            records.extend(record for part in batch.values() for record in part)
    finally:
        await consumer.stop()
    return records


async def create_topics(config: KafkaConfig) -> None:
    """Call before producing: a topic that a producer auto-creates gets the broker's partition count."""
    await ensure_topics(config, [config.posts_topic, config.intentions_topic, config.dlq_topic])


async def committed_offsets(bootstrap: str, config: KafkaConfig) -> dict[int, int | None]:
    """The processor group's committed position on each posts partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=config.group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(config.posts_topic, p) for p in range(config.topic_partitions)]
        return {tp.partition: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


@dataclass
class Outputs:
    """What the processor wrote, by post."""

    events: Counter[str] = field(default_factory=Counter)
    event_records: list[IntentionEvent] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    tombstones: list[bytes] = field(default_factory=list)

    @classmethod
    def read(cls, records: Iterable[Record], config: KafkaConfig) -> Outputs:
        outputs = cls()
        for record in records:
            if record.topic == config.dlq_topic:
                assert record.value is not None
                outputs.dead_letters.append(DeadLetter.model_validate_json(record.value))
            elif record.value is None:
                assert record.key is not None
                outputs.tombstones.append(record.key)
            else:
                event = IntentionEvent.model_validate_json(record.value)
                assert record.key == event.post_id.encode(), "events are keyed by post id"
                outputs.events[event.post_id] += 1
                outputs.event_records.append(event)
        return outputs

    def dead_originals(self) -> Counter[bytes]:
        return Counter(letter.original() for letter in self.dead_letters)


def post_line(post_id: str, text: str = "so happy to be stuck at the airport # blessed emoji_123") -> bytes:
    return json.dumps({"id": post_id, "text": text}).encode()
