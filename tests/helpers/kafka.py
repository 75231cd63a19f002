"""The real embedded broker in tests: unique topics, producing, collecting and auditing outputs, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.kafka_config import KafkaConfig
from consumers.topics import ensure_topics
from graph.contracts import DeadLetter, IntentionEvent

Record = ConsumerRecord[bytes, bytes]

BROKER_START_S = 120.0  # for EmbeddedBroker(start_timeout=): bounds a broker that never listens (idle: < 1 s)


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


async def produce(bootstrap: str, topic: str, records: Iterable[KeyValue], one_by_one: bool = False) -> list[int]:
    """Send ``(key, value)`` records in order and wait for every ack; returns their partitions.

    ``one_by_one`` waits for each ack before the next send, so each record is a batch of its own: Tansu
    reports a partition's end as its last batch's first offset + 1, and a reader that stops at the end
    (``--stop-at-end``, ``index rebuild``) would stop short of a batch of several records.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        if one_by_one:
            metadata = [await producer.send_and_wait(topic, value, key=key) for key, value in records]
        else:
            futures = [await producer.send(topic, value, key=key) for key, value in records]
            metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [item.partition for item in metadata]


async def collect(
    bootstrap: str,
    topics: Iterable[str],
    until: Callable[[list[Record]], bool],
    timeout_s: float = 180.0,
) -> list[Record]:
    """Read ``topics`` from the beginning until ``until(records)`` holds; fails the test on timeout."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
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
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=config.group_id, enable_auto_commit=False)
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


class OutputWatcher:
    """Follows a processor's output topics from the beginning while it runs; maps outputs back to inputs.

    An input is identified by its post id when it has an event, and by its original bytes when it was
    dead-lettered (bad input may have no id)."""

    def __init__(self, bootstrap: str, config: KafkaConfig) -> None:
        self.config = config
        self.records: list[Record] = []
        self._consumer = AIOKafkaConsumer(
            *outputs_of(config), bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
        )

    async def __aenter__(self) -> OutputWatcher:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self) -> None:
        batch = await self._consumer.getmany(timeout_ms=100)
        self.records.extend(record for part in batch.values() for record in part)

    def outputs(self) -> Outputs:
        return Outputs.read(self.records, self.config)

    def covered(self, valid_ids: set[str], invalid: set[bytes]) -> int:
        outputs = self.outputs()
        return len(valid_ids & set(outputs.events)) + len(invalid & set(outputs.dead_originals()))

    async def wait_for(
        self, count: Callable[[], int], target: int, timeout_s: float, alive: Callable[[], bool]
    ) -> None:
        """Poll until ``count() >= target``; fails fast if the processor died (``alive``) or on timeout."""
        deadline = time.monotonic() + timeout_s
        while count() < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s at {count()} of {target}")
            if not alive():
                raise AssertionError(f"the processor exited at {count()} of {target}")
            await self.poll()


# ---------------------------------------------------------------------------------- the CLI as a subprocess

MAX_TEXT_CHARS = 2_000


def start_processor(config: KafkaConfig, log: Path, max_in_flight: int = 16) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MIKO_KAFKA_SESSION_TIMEOUT_MS": "3000",  # a killed member leaves the group quickly
        "MIKO_COMMIT_INTERVAL_S": "0.2",
        "MIKO_KAFKA_IDEMPOTENCE": "off",  # Tansu has no idempotent producers
    }
    command = [
        sys.executable, "-m", "miko_stream", "run",
        "--bootstrap", config.bootstrap,
        "--llm", "fake:20", "--vision", "none",
        "--posts-topic", config.posts_topic,
        "--intentions-topic", config.intentions_topic,
        "--dlq-topic", config.dlq_topic,
        "--group-id", config.group_id,
        "--max-in-flight", str(max_in_flight),
        "--max-text-chars", str(MAX_TEXT_CHARS),
    ]  # fmt: skip
    with log.open("ab") as output:
        return subprocess.Popen(command, stdout=output, stderr=output, env=env)


def running(process: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: process.poll() is None


def stop(process: subprocess.Popen[bytes], signum: int) -> int:
    process.send_signal(signum)
    return process.wait(timeout=120)
