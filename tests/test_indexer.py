"""The indexer against a real broker: decoding, tombstones, resume from snapshot offsets, and SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from helpers.index import event_bytes, expected_pairs, generation, new_topic, produce_events
from helpers.wait import wait_until, wait_until_sync

from consumers.indexer import Indexer, IndexerConfig, decode_batch
from consumers.kafka_config import KafkaConfig
from index.embeddings import HashingEmbedder
from index.service import IndexSettings, IntentionIndex
from miko_stream.broker import EmbeddedBroker, free_port


def record(offset: int, key: str | None, value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    raw_key = key.encode() if key is not None else None
    return ConsumerRecord("t", 0, offset, 0, 0, raw_key, value, None, 0, 0, [])


def test_decode_batch_keeps_the_last_state_of_each_post() -> None:
    records = [
        record(0, "a", event_bytes("a", "first", {"xIntent": "one"})),
        record(1, "b", event_bytes("b", "b text", {"xIntent": "kept", "xWant": ("rejected", False)})),
        record(2, "a", event_bytes("a", "second", {"xWant": "two"})),
        record(3, "c", event_bytes("c", "c", {"xIntent": "gone"})),
        record(4, "c", None),
        record(5, "d", b"{not json"),
        record(6, None, None),
        record(7, "e", event_bytes("e", "e", {"xIntent": ""})),
    ]
    decoded = decode_batch(records)
    assert (decoded.upserts, decoded.deletes, decoded.invalid) == (5, 1, 2)
    assert decoded.changes["c"] is None
    a, b, e = decoded.changes["a"], decoded.changes["b"], decoded.changes["e"]
    assert a is not None and a.text == "second" and [i.relation for i in a.intentions] == ["xWant"]
    assert json.loads(a.document)["text"] == "second"
    assert b is not None and [(i.relation, i.text, i.score) for i in b.intentions] == [("xIntent", "kept", 0.9)]
    assert e is not None and e.intentions == ()  # blank texts are not indexed, the post is still stored


async def committed_total(kafka: KafkaConfig) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=kafka.indexer_group_id)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(kafka.intentions_topic) or set()
        committed = [await consumer.committed(TopicPartition(kafka.intentions_topic, p)) for p in partitions]
    finally:
        await consumer.stop()
    return sum(offset or 0 for offset in committed)


def open_writer(root: Path) -> IntentionIndex:
    return IntentionIndex.open(IndexSettings(root), HashingEmbedder(), writer=True)


async def test_indexer_resumes_from_snapshot_offsets(kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    kafka = await new_topic(kafka_broker.bootstrap)
    first = generation("a", range(12), deletes=[3])
    await produce_events(kafka.bootstrap, kafka.intentions_topic, first)
    config = IndexerConfig(batch_size=5, stop_at_end=True)

    index = open_writer(tmp_path)
    indexer = Indexer(index, kafka, config)
    await asyncio.wait_for(indexer.run(), 120)
    assert indexer.reached_end and indexer.records == len(first)
    assert len(index.store) == expected_pairs(first)
    assert index.document("post-3") is None and index.document("post-4") is not None
    assert index.search("a wants thing 7", k=1)[0].post_id == "post-7"
    stats = indexer.stats()
    assert sum(p["position"] for p in stats["partitions"]) == len(first)
    assert all(p["snapshot_offset"] == p["position"] for p in stats["partitions"])
    index.close()

    second = generation("bb", range(8, 16), deletes=[9])
    await produce_events(kafka.bootstrap, kafka.intentions_topic, second)
    index = open_writer(tmp_path)
    indexer = Indexer(index, kafka, config)
    await asyncio.wait_for(indexer.run(), 120)
    assert indexer.records == len(first) + len(second)  # the first generation was not consumed again
    assert len(index.store) == expected_pairs(first + second)
    assert [hit.text for hit in index.search("bb wants thing 8", k=1)] == ["bb wants thing 8"]
    index.close()


async def test_indexer_stops_on_request_and_snapshots(kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    kafka = await new_topic(kafka_broker.bootstrap)
    records = generation("s", range(6))
    await produce_events(kafka.bootstrap, kafka.intentions_topic, records)
    index = open_writer(tmp_path)
    indexer = Indexer(index, kafka, IndexerConfig(snapshot_interval_s=3600))
    stop = asyncio.Event()
    running = asyncio.create_task(indexer.run(stop))
    await wait_until(lambda: indexer.records >= len(records), what="the indexer to read every record")
    assert indexer.records == len(records) and index.store.last_snapshot is None
    stop.set()
    await asyncio.wait_for(running, 120)
    assert index.store.last_snapshot is not None and not index.store.dirty
    assert indexer.stats()["running"] is False
    index.close()

    # The snapshot's offsets are mirrored to the group (for lag monitoring) ...
    assert await committed_total(kafka) == len(records)
    # ... but a new index in the same group starts from the beginning, not from the group's commits.
    other = open_writer(tmp_path / "other")
    again = Indexer(other, kafka, IndexerConfig(stop_at_end=True))
    await asyncio.wait_for(again.run(), 120)
    assert again.records == len(records) and len(other.store) == expected_pairs(records)
    other.close()


# ------------------------------------------------------------------------------------ crash (subprocess)


class Server:
    """`miko-stream serve` in a subprocess, polled over HTTP."""

    def __init__(self, kafka: KafkaConfig, root: Path, log: Path) -> None:
        self.port = free_port()
        command = [
            sys.executable, "-m", "miko_stream", "serve",
            "--bootstrap", kafka.bootstrap, "--topic", kafka.intentions_topic,
            "--group-id", kafka.indexer_group_id,
            "--port", str(self.port), "--index-dir", str(root), "--embedding-model", "hash",
            "--batch-size", "4", "--snapshot-interval", "3600",
        ]  # fmt: skip
        env = {**os.environ, "MIKO_API_KEY": "k"}
        self.process = subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)

    def stats(self) -> dict | None:
        try:
            response = httpx.get(f"http://127.0.0.1:{self.port}/stats", headers={"X-API-Key": "k"}, timeout=2)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def wait_for_records(self, records: int, caught_up: bool = False) -> dict:
        """Polls /stats until ``records`` are indexed (and, with ``caught_up``, no lag is left)."""
        seen: dict = {}

        def indexed() -> bool:
            assert self.process.poll() is None, "serve exited early"
            seen["stats"] = stats = self.stats()
            if not stats or stats["indexer"]["records"] < records:
                return False
            return not caught_up or all(p["lag"] == 0 for p in stats["indexer"]["partitions"])

        wait_until_sync(indexed, timeout_s=300, what=f"serve to index {records} records", every_s=0.1)
        return seen["stats"]

    def stop(self, sig: signal.Signals) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=120)

    def kill(self) -> None:
        """Leaves no process behind when the test fails half-way."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_sigkill_between_batches_then_restart_indexes_exactly_once(
    kafka_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    kafka = asyncio.run(new_topic(kafka_broker.bootstrap))
    root, log = tmp_path / "index", tmp_path / "serve.log"
    phase_a = generation("a", range(20), deletes=[2, 5])
    phase_b = generation("b", range(10, 30), deletes=[11, 25])
    phase_c = generation("c", range(25, 35), deletes=[30])

    servers: list[Server] = []

    def start() -> Server:
        servers.append(Server(kafka, root, log))
        return servers[-1]

    try:
        # 1. Index phase A and stop gracefully: snapshot 1 holds A.
        asyncio.run(produce_events(kafka.bootstrap, kafka.intentions_topic, phase_a))
        server = start()
        server.wait_for_records(len(phase_a))
        assert server.stop(signal.SIGTERM) == 0

        # 2. Restart, index phase B in memory only (no snapshot is due), then SIGKILL between batches.
        server = start()
        stats = server.wait_for_records(len(phase_a))
        asyncio.run(produce_events(kafka.bootstrap, kafka.intentions_topic, phase_b))
        stats = server.wait_for_records(len(phase_a) + len(phase_b))
        assert stats["indexer"]["unsnapshotted_records"] == len(phase_b)
        assert stats["index"]["snapshot_seq"] == 1
        server.stop(signal.SIGKILL)

        # 3. Restart: it resumes from snapshot 1's offsets, re-applies B once, then C; SIGTERM snapshots.
        asyncio.run(produce_events(kafka.bootstrap, kafka.intentions_topic, phase_c))
        server = start()
        total = len(phase_a) + len(phase_b) + len(phase_c)
        stats = server.wait_for_records(total, caught_up=True)
        assert server.stop(signal.SIGTERM) == 0
    finally:
        for started in servers:
            started.kill()
    assert stats["indexer"]["records"] == total  # B was applied once after the crash, not twice

    index = IntentionIndex.open(IndexSettings(root), HashingEmbedder(), writer=False)
    everything = phase_a + phase_b + phase_c
    assert len(index.store) == expected_pairs(everything)
    assert index.checkpoint["records"] == total
    assert sum(index.checkpoint["offsets"].values()) == total
    assert index.document("post-30") is None and index.document("post-25") is not None
    assert index.search("c wants thing 27", k=1)[0].text == "c wants thing 27"
    index.close()


async def test_indexer_creates_a_missing_topic(kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    name = f"intentions-{uuid.uuid4().hex[:8]}"
    kafka = KafkaConfig(bootstrap=kafka_broker.bootstrap, intentions_topic=name, topic_partitions=2)
    index = open_writer(tmp_path)
    indexer = Indexer(index, kafka, IndexerConfig(stop_at_end=True))
    await asyncio.wait_for(indexer.run(), 120)
    assert indexer.reached_end and indexer.records == 0 and len(index.store) == 0
    index.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=name)
    await consumer.start()
    try:
        assert consumer.partitions_for_topic(name) == {0, 1}
    finally:
        await consumer.stop()


class FakeAssignments:
    """The slice of AIOKafkaConsumer that partition (re)assignment uses (Tansu cannot add partitions)."""

    def __init__(self, partitions: set[int]) -> None:
        self.partitions = partitions
        self.assigned: set[TopicPartition] = set()
        self.seeks: dict[int, int] = {}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = set(partitions)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks[partition.partition] = offset


def test_partitions_added_to_the_topic_are_assigned_from_their_start(tmp_path: Path) -> None:
    index = open_writer(tmp_path)
    asyncio.run(index.apply({}, {"topic": "t", "offsets": {"0": 5}, "records": 5}))
    indexer = Indexer(index, KafkaConfig(intentions_topic="t"))
    consumer = FakeAssignments({0})
    indexer._consumer = consumer  # type: ignore[assignment]
    indexer._assign(consumer, {0})  # type: ignore[arg-type]
    assert consumer.seeks == {0: 5}
    consumer.partitions = {0, 1, 2}
    indexer._check_partitions(consumer)  # type: ignore[arg-type]
    assert {tp.partition for tp in consumer.assigned} == {0, 1, 2}
    assert consumer.seeks == {0: 5, 1: 0, 2: 0}
    index.close()
