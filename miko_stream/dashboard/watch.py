"""Tails the posts and dead-letter topics and polls the processor group's offsets, for the dashboard feed.

Why topics and offsets rather than scraping the processors' /metrics: ``serve`` already talks to Kafka, while
processors come and go (scale-out, restarts) at addresses it does not know. Everything the page needs about
the processors is on the topics (posts in, dead letters, the events themselves) or in the group's committed
offsets (lag, progress). The watcher reads without a consumer group (nothing committed, no rebalances), from
the end of each partition at start: it sees live traffic only, and costs the cluster one more reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from consumers.io import Backoff
from consumers.kafka_config import KafkaConfig
from miko_stream.dashboard.feed import DashboardFeed

log = structlog.get_logger(__name__)

STALL_AFTER_S = 60.0  # lag without any commit progress for this long: the processor looks stalled


class ClusterWatcher:
    """Feeds ``feed`` with posts, dead letters and processor lag until ``stop`` is set."""

    def __init__(self, kafka: KafkaConfig, feed: DashboardFeed, *, lag_interval_s: float = 2.0) -> None:
        self.kafka = kafka
        self.feed = feed
        self.lag_interval_s = lag_interval_s
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(initial_s=0.5, maximum_s=10.0)
        while not stop.is_set():
            try:
                await self._watch(stop)
            except (KafkaError, OSError) as error:
                self.feed.services.broker, self.feed.services.error = "unreachable", str(error)[:200]
                log.info("dashboard_watch_retry", error=str(error)[:200])
            finally:
                await self._close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff.next_delay())

    async def _watch(self, stop: asyncio.Event) -> None:
        kafka = self.kafka
        self._consumer = consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=None, enable_auto_commit=False)
        await consumer.start()
        self._admin = AIOKafkaAdminClient(**kafka.client_kwargs())
        await self._admin.start()
        await self._assign(consumer)
        self.feed.services.broker, self.feed.services.error = "ok", None
        next_lag = 0.0
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=1000)
            for tp, records in batch.items():
                if tp.topic == kafka.posts_topic:
                    for record in records:
                        self.feed.on_post_record(tp.partition, record.offset, record.timestamp)
                else:
                    self.feed.on_dead_letters(record.value for record in records)
            if time.monotonic() >= next_lag:
                await self._poll_lag(consumer)
                next_lag = time.monotonic() + self.lag_interval_s

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        """All partitions of the posts and dead-letter topics, from their current end (waits for the topics)."""
        topics = (self.kafka.posts_topic, self.kafka.dlq_topic)
        tps = []
        for topic in topics:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer.topics()  # refresh metadata: the topics may have been created since start
                partitions = consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            raise KafkaError(f"topics {topics} do not exist yet")
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)

    async def _poll_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Processor lag per partition: end offset of the posts topic minus the group's committed offset."""
        assert self._admin is not None
        posts = [tp for tp in consumer.assignment() if tp.topic == self.kafka.posts_topic]
        ends = await consumer.end_offsets(posts)
        committed = await self._admin.list_consumer_group_offsets(self.kafka.group_id, partitions=posts)
        lag: dict[str, int] = {}
        positions: dict[str, int] = {}
        for tp in sorted(posts, key=lambda tp: tp.partition):
            meta = committed.get(tp)
            position = meta.offset if meta is not None and meta.offset >= 0 else 0
            positions[str(tp.partition)] = position
            # The high watermark of the last fetch as well: some brokers (Tansu) answer ListOffsets(latest)
            # with less than the records they hold once producers send multi-record batches.
            end = max(ends.get(tp, 0), consumer.highwater(tp) or 0)
            lag[str(tp.partition)] = max(0, end - position)
        self._update_processor(lag, positions, await self._members())

    def _update_processor(self, lag: dict[str, int], positions: dict[str, int], members: int | None) -> None:
        services, now = self.feed.services, time.monotonic()
        if positions != services.processor_committed or services.processor_progress_at is None:
            services.processor_progress_at = now
        services.processor_lag, services.processor_committed, services.processor_members = lag, positions, members
        behind, quiet_s = sum(lag.values()), now - services.processor_progress_at
        services.processor_note = f"lag {behind}, no commit for {quiet_s:.0f} s" if behind and quiet_s > 5 else None
        if members == 0:
            services.processor = "down" if behind else "idle"
        elif behind and quiet_s > STALL_AFTER_S:
            services.processor = "stalled"  # or a slow model still on its first posts: shown as a warning
        else:
            services.processor = "ok"

    async def _members(self) -> int | None:
        """Members of the processor group, when the broker answers DescribeGroups (None otherwise)."""
        assert self._admin is not None
        try:
            described = await self._admin.describe_consumer_groups([self.kafka.group_id])
        except (KafkaError, NotImplementedError, ValueError, TypeError) as error:
            log.debug("dashboard_describe_group_failed", error=str(error))
            return None
        for response in described:
            for group in getattr(response, "groups", []):
                return len(group[-1]) if group else None  # (error, id, state, protocol type, protocol, members)
        return None

    async def _close(self) -> None:
        for client in (self._consumer, self._admin):
            if client is not None:
                with contextlib.suppress(Exception):
                    await (client.stop() if isinstance(client, AIOKafkaConsumer) else client.close())
        self._consumer = self._admin = None
