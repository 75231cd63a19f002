"""The indexer: keeps the intention index an exactly-once materialized view of the intentions topic.

Exactly-once (README, "Exactly once across crashes") comes from keeping the consumed offsets *inside* the
index: every batch is applied to the in-memory index together with the offsets after it, and a snapshot writes
vectors + metadata + offsets atomically. On start the indexer loads the newest snapshot and seeks to its
offsets, so the records applied after that snapshot (lost with the process) are applied again, and nothing
else is. Kafka's committed offsets
for the indexer group are written after each snapshot for lag monitoring only; they are never read back.

Every serve replica holds a full view, so the indexer assigns itself *all* partitions of the topic instead of
joining a consumer-group subscription (which would split the partitions, and the view, between replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from consumers.io import Backoff, start_client
from consumers.kafka_config import KafkaConfig
from consumers.positions import OffsetReset, beyond_end, known_ends
from consumers.topics import ensure_topics
from graph.contracts import IntentionEvent
from index.records import IntentionDoc, PostDoc
from index.service import IntentionIndex

log = structlog.get_logger(__name__)

RECORDS = Counter("miko_indexer_records_total", "Intention records applied to the index", ["outcome"])
BATCH_SECONDS = Histogram("miko_indexer_batch_seconds", "Time to embed and apply one batch")
SNAPSHOTS = Counter("miko_indexer_snapshots_total", "Index snapshots written")


class IndexerError(RuntimeError):
    """The index cannot follow the configured topic; the message says what to do."""


@dataclass(frozen=True)
class IndexerConfig:
    """Batching and snapshot policy: a snapshot is due when either threshold is reached (and data changed)."""

    batch_size: int = 256
    poll_timeout_ms: int = 500
    snapshot_interval_s: float = 30.0
    snapshot_every_records: int = 50_000
    stop_at_end: bool = False  # index rebuild: stop once the end offsets seen at start are reached
    create_topic: bool = True
    wait_for_kafka: bool = True  # a service waits for the cluster and the topic; a CLI run fails fast
    position_check_interval_s: float = 5.0  # how often positions are compared with the partitions' ends


def to_post_doc(event: IntentionEvent, raw: str) -> PostDoc:
    """What the index keeps of an event: its verified intentions, normalised text and the event itself."""
    intentions = tuple(
        IntentionDoc(item.relation.value, item.text, item.score)
        for item in event.verified_intentions()
        if item.text.strip()
    )
    return PostDoc(event.post_id, event.text, raw, intentions)


@dataclass
class BatchChanges:
    changes: dict[str, PostDoc | None]
    upserts: int = 0
    deletes: int = 0
    invalid: int = 0


def decode_batch(records: list[ConsumerRecord[bytes, bytes]]) -> BatchChanges:
    """The final state of each post in a batch (records in partition order: the last one wins)."""
    out = BatchChanges(changes={})
    for record in records:
        key = record.key.decode("utf-8", "replace") if record.key is not None else None
        where = {"partition": record.partition, "offset": record.offset}
        if record.value is None:
            if key is None:
                log.warning("tombstone_without_key", **where)
                out.invalid += 1
                continue
            out.changes.pop(key, None)
            out.changes[key] = None
            out.deletes += 1
            continue
        try:
            raw = record.value.decode("utf-8")
            event = IntentionEvent.model_validate_json(raw)
        except (UnicodeDecodeError, ValidationError) as error:
            log.error("intention_event_invalid", post_id=key, error=str(error)[:300], **where)
            out.invalid += 1
            continue
        if key is not None and key != event.post_id:
            log.warning("intention_key_mismatch", post_id=event.post_id, key=key, **where)
        out.changes.pop(event.post_id, None)
        out.changes[event.post_id] = to_post_doc(event, raw)
        out.upserts += 1
    return out


class Indexer:
    """Consumes the intentions topic into an :class:`IntentionIndex` (its single writer)."""

    def __init__(self, index: IntentionIndex, kafka: KafkaConfig, config: IndexerConfig | None = None) -> None:
        self.index = index
        self.kafka = kafka
        self.config = config or IndexerConfig()
        self.topic = kafka.intentions_topic
        checkpoint = index.checkpoint
        if checkpoint and checkpoint.get("topic") != self.topic:
            raise IndexerError(
                f"the index follows topic {checkpoint.get('topic')!r}, not {self.topic!r}: use another "
                "--index-dir, or `miko-stream index rebuild` to rebuild it from this topic"
            )
        self.offsets: dict[int, int] = {int(p): int(o) for p, o in checkpoint.get("offsets", {}).items()}
        self.records: int = int(checkpoint.get("records", 0))
        self.running = False
        self.caught_up = False
        self.reached_end = False
        self.error: str | None = None
        self.last_batch_at: float | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._dirty = 0
        self._last_snapshot = time.monotonic()
        # Called with each batch once it is applied (the dashboard's feed); must be quick and never raise.
        self.listeners: list[Callable[[list[ConsumerRecord[bytes, bytes]]], None]] = []
        self._last_position_check = time.monotonic()
        self.offset_resets: list[OffsetReset] = []

    # stats ------------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Positions, lag and snapshot offsets per partition, for ``GET /stats``."""
        saved = {int(p): o for p, o in self.index.store.saved_checkpoint.get("offsets", {}).items()}
        partitions = []
        for partition in sorted(set(self.offsets) | set(self._assigned())):
            position = self.offsets.get(partition, 0)
            highwater = self._highwater(partition)
            partitions.append(
                {
                    "partition": partition,
                    "position": position,
                    "snapshot_offset": saved.get(partition),
                    "highwater": highwater,
                    "lag": max(0, highwater - position) if highwater is not None else None,
                }
            )
        lags = [p["lag"] for p in partitions if p["lag"] is not None]
        return {
            "topic": self.topic,
            "group_id": self.kafka.indexer_group_id,
            "running": self.running,
            "caught_up": self.caught_up,
            "reached_end": self.reached_end,
            "error": self.error,
            "records": self.records,
            "unsnapshotted_records": self._dirty,
            "lag": sum(lags) if lags else None,
            "last_batch_at": self.last_batch_at,
            "partitions": partitions,
            "offset_resets": [reset.as_dict() for reset in self.offset_resets[-20:]],
            "offset_resets_total": len(self.offset_resets),
        }

    def _assigned(self) -> list[int]:
        return [tp.partition for tp in self._consumer.assignment()] if self._consumer is not None else []

    def _highwater(self, partition: int) -> int | None:
        if self._consumer is None or partition not in self._assigned():
            return None
        return self._consumer.highwater(TopicPartition(self.topic, partition))

    # running ----------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Index until ``stop`` is set (or the end, with ``stop_at_end``); snapshot before returning."""
        stop = stop or asyncio.Event()
        self.running, self.error = True, None
        failed = False
        try:
            consumer = await self._start(stop)
            if consumer is None:
                return
            try:
                await self._consume(consumer, stop)
                if self.index.store.dirty:
                    await self._snapshot()
                    await self._commit(consumer)
            finally:
                self._consumer = None
                await consumer.stop()
        except Exception as error:
            failed = True
            self.error = f"{type(error).__name__}: {error}"
            log.exception("indexer_failed", topic=self.topic)
            raise
        finally:
            self.running = False
            # After a failure the in-memory index may be half-changed: the last snapshot stays the truth.
            if not failed and self.index.store.dirty:
                await self._snapshot()

    async def _start(self, stop: asyncio.Event) -> AIOKafkaConsumer | None:
        """A started consumer with all partitions of the topic assigned and seeked (waits for the topic)."""

        def make() -> AIOKafkaConsumer:
            return AIOKafkaConsumer(
                **self.kafka.client_kwargs(),
                group_id=self.kafka.indexer_group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=self.config.batch_size,
            )

        backoff = Backoff(initial_s=0.5, maximum_s=10.0)
        create = self.config.create_topic
        while not stop.is_set():
            consumer = await start_client(make, what="indexer consumer", wait=self.config.wait_for_kafka, stop=stop)
            if consumer is None:
                return None
            partitions = consumer.partitions_for_topic(self.topic)
            if partitions:
                self._consumer = consumer
                self._assign(consumer, partitions)
                return consumer
            await consumer.stop()
            if create:  # then start a new consumer: a fresh client fetches the new topic's metadata
                await ensure_topics(self.kafka, [self.topic])
                create = False
                continue
            if not self.config.wait_for_kafka:
                raise IndexerError(f"topic {self.topic!r} does not exist on {self.kafka.bootstrap}")
            delay = backoff.next_delay()
            log.info("indexer_waiting_for_topic", topic=self.topic, retry_in_s=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        return None

    def _assign(self, consumer: AIOKafkaConsumer, partitions: set[int]) -> None:
        """Assign all partitions; seek each to the index's offset (the beginning if it has none): never to
        the group's committed offsets, which only mirror the snapshots for monitoring."""
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        for tp in tps:
            # Offset 0 on a partition whose start was deleted by retention resets to the earliest record.
            consumer.seek(tp, self.offsets.get(tp.partition, 0))
        log.info(
            "indexer_assigned",
            topic=self.topic,
            offsets={tp.partition: self.offsets.get(tp.partition, 0) for tp in tps},
        )

    async def _consume(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        end: dict[int, int] | None = None
        if self.config.stop_at_end:
            ends = await consumer.end_offsets(list(consumer.assignment()))
            end = {tp.partition: offset for tp, offset in ends.items()}
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=self.config.poll_timeout_ms, max_records=self.config.batch_size)
            records = [record for tp in sorted(batch, key=lambda tp: tp.partition) for record in batch[tp]]
            if records:
                await self._apply(records)
            self.caught_up = all((self._highwater(p) or 0) <= self.offsets.get(p, 0) for p in self._assigned())
            if self._snapshot_due():
                await self._snapshot()
                await self._commit(consumer)
            self._check_partitions(consumer)
            self._check_positions(consumer)
            if end is not None and all(self.offsets.get(p, 0) >= offset for p, offset in end.items()):
                log.info("indexer_reached_end", records=self.records)
                self.reached_end = True
                return

    async def _apply(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        started = time.perf_counter()
        decoded = decode_batch(records)
        offsets = dict(self.offsets)
        for record in records:
            offsets[record.partition] = max(offsets.get(record.partition, 0), record.offset + 1)
        checkpoint = {
            "topic": self.topic,
            "offsets": {str(p): o for p, o in sorted(offsets.items())},
            "records": self.records + len(records),
        }
        embedded = await self.index.apply(decoded.changes, checkpoint)
        self.offsets, self.records = offsets, checkpoint["records"]
        self._dirty += len(records)
        self.last_batch_at = time.time()
        RECORDS.labels("upsert").inc(decoded.upserts)
        RECORDS.labels("delete").inc(decoded.deletes)
        RECORDS.labels("invalid").inc(decoded.invalid)
        BATCH_SECONDS.observe(time.perf_counter() - started)
        log.debug("indexer_batch", records=len(records), posts=len(decoded.changes), embedded=embedded)
        for listener in self.listeners:
            try:
                listener(records)
            except Exception:
                log.exception("indexer_listener_failed")

    def _snapshot_due(self) -> bool:
        if not self._dirty:
            return False
        elapsed = time.monotonic() - self._last_snapshot
        return elapsed >= self.config.snapshot_interval_s or self._dirty >= self.config.snapshot_every_records

    async def _snapshot(self) -> None:
        await self.index.snapshot()
        self._dirty, self._last_snapshot = 0, time.monotonic()
        SNAPSHOTS.inc()

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        """Mirror the snapshot's offsets into the group, so standard Kafka tools show the indexer's lag."""
        offsets = {TopicPartition(self.topic, p): o for p, o in self.offsets.items() if o > 0}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as error:
            log.warning(
                "indexer_commit_failed",
                error=str(error),
                detail="monitoring only; the snapshot has the offsets",
            )

    def _check_positions(self, consumer: AIOKafkaConsumer) -> None:
        """Every ``position_check_interval_s``: a position past its partition's end means the topic lost its
        records (recreated, or a broker restarted without its log); read that partition again from 0."""
        if time.monotonic() - self._last_position_check < self.config.position_check_interval_s:
            return
        self._last_position_check = time.monotonic()
        positions = {TopicPartition(self.topic, p): self.offsets.get(p, 0) for p in self._assigned()}
        for reset in beyond_end("indexer", positions, known_ends(consumer, list(positions))):
            self.offset_resets.append(reset)
            self.offsets[reset.partition] = 0
            consumer.seek(TopicPartition(self.topic, reset.partition), 0)
            self.caught_up = False

    def _check_partitions(self, consumer: AIOKafkaConsumer) -> None:
        """Pick up partitions added to the topic since start (aiokafka refreshes the metadata of assigned
        topics every ``metadata_max_age_ms``); cheap: compares cached metadata."""
        partitions = consumer.partitions_for_topic(self.topic) or set()
        if partitions - set(self._assigned()):
            log.info("indexer_partitions_added", topic=self.topic, partitions=sorted(partitions))
            self._assign(consumer, partitions)


async def run_indexer(
    index: IntentionIndex,
    kafka: KafkaConfig,
    config: IndexerConfig | None = None,
    stop: asyncio.Event | None = None,
) -> Indexer:
    """Run an indexer until ``stop`` (or the end, for rebuilds) and return it (its stats stay readable)."""
    indexer = Indexer(index, kafka, config)
    await indexer.run(stop)
    return indexer
