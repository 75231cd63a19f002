"""The stream processor: posts -> graph -> intentions topic / dead-letter topic, at least once (README, "Guarantees").

How it keeps its promises:

* **No loss.** A record counts as done only when the broker acknowledged its output (event, dead letter or
  tombstone, acks=all). Commits carry each partition's position after the contiguous done prefix
  (:class:`consumers.offsets.OffsetTracker`), so a crash restarts from a point before anything unfinished.
* **Bounded concurrency, no poll timeouts.** At most ``max_in_flight`` posts run at once. When full, every
  partition is paused and the consumer keeps polling (returns nothing, but keeps the group membership and
  ``max.poll.interval.ms`` happy however slow the model is); partitions resume below a low-water mark.
* **Per-key order.** Posts run concurrently, but outputs with the same key (post id) leave in input order
  within a partition, so a tombstone never overtakes the event of the post it deletes.
* **Rebalances** wait (bounded) for the revoked partitions' posts, commit what is done and drop the rest:
  the new owner gets those records again.
* **Shutdown** (:meth:`StreamProcessor.request_stop`, wired to SIGTERM/SIGINT) stops taking records, drains
  in-flight posts within ``drain_timeout_s``, commits and returns; a second request abandons the drain.
* **Broker trouble** is waited out: sends are retried with backoff and never skipped; commits that fail are
  retried on the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from enum import StrEnum

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord

from consumers.io import Backoff, start_client, start_producer
from consumers.kafka_config import KafkaConfig
from consumers.offsets import OffsetTracker
from consumers.positions import OffsetReset, beyond_end, known_ends
from consumers.topics import ensure_topics
from graph.contracts import DeadLetterStage, SourceRef
from graph.intake import MAX_ID_CHARS, InputLimits
from graph.outcome import Failure, PostProcessor, Processed, process_record

log = structlog.get_logger(__name__)

Record = ConsumerRecord[bytes, bytes]


@dataclass(frozen=True)
class StreamOptions:
    """Knobs of the processing loop; the defaults suit a slow local model and a small cluster."""

    max_in_flight: int = 64
    low_water: int | None = None  # resume fetching at or below this many in flight (default: half)
    commit_interval_s: float = 1.0
    commit_timeout_s: float = 10.0
    poll_timeout_ms: int = 100
    drain_timeout_s: float = 30.0
    revoke_timeout_s: float = 10.0
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 10_000
    post_timeout_s: float | None = None  # safety net over the pipeline's own deadline
    stats_interval_s: float = 10.0
    create_topics: bool = True
    max_request_bytes: int = 1024 * 1024  # the producer's limit; dead letters are cut to fit under it
    linger_ms: int = 5
    batch_bytes: int = 256 * 1024  # per-partition producer batch: events are ~1-2 kB, so room for ~150
    position_check_interval_s: float = 5.0  # how often positions are compared with the partitions' ends

    def resume_below(self) -> int:
        return self.low_water if self.low_water is not None else self.max_in_flight // 2


@dataclass
class StreamStats:
    """Counters for logs and metrics (a plain object: the API may expose it as Prometheus gauges)."""

    received: int = 0
    processed: int = 0
    dead_lettered: int = 0
    tombstones: int = 0
    redeliveries_skipped: int = 0
    send_retries: int = 0
    commits: int = 0
    commit_failures: int = 0
    rebalances: int = 0
    in_flight: int = 0
    paused: bool = False
    offset_resets: int = 0  # positions found beyond a partition's end (records lost upstream), re-read from 0
    committed: dict[str, int] = field(default_factory=dict)
    lag: dict[str, int] = field(default_factory=dict)
    dead_letter_stages: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, object]:
        return asdict(self)


class OutputKind(StrEnum):
    EVENT = "event"
    DEAD_LETTER = "dead_letter"
    TOMBSTONE = "tombstone"


@dataclass(frozen=True)
class Output:
    """The one record a post turns into."""

    kind: OutputKind
    topic: str
    key: bytes | None
    value: bytes | None


class StreamFailed(RuntimeError):
    """A record's handling crashed (a bug): the processor stops without committing past it."""


def _name(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


class StreamProcessor:
    """Consumes ``config.posts_topic`` in group ``config.group_id``; runs each post through ``processor``."""

    def __init__(
        self,
        processor: PostProcessor,
        config: KafkaConfig,
        limits: InputLimits,
        options: StreamOptions | None = None,
    ) -> None:
        self.processor = processor
        self.config = config
        self.limits = limits
        self.options = options or StreamOptions()
        self.stats = StreamStats()
        self.failure: BaseException | None = None
        self._tracker = OffsetTracker()
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._latest_by_key: dict[tuple[TopicPartition, bytes], asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._abandon = asyncio.Event()
        self._slots_freed = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._paused = False
        self._last_commit = time.monotonic()
        self._last_stats = time.monotonic()
        self._last_position_check = time.monotonic()
        self.offset_resets: list[OffsetReset] = []
        self._read_up_to: dict[TopicPartition, int] = {}  # per partition, kept across rebalances

    # ------------------------------------------------------------------------------------------ lifecycle

    def request_stop(self) -> None:
        """First call: stop fetching and drain. Second call: abandon the drain (done work is committed)."""
        if self._stop.is_set():
            self._abandon.set()
        self._stop.set()

    def assignment(self) -> set[TopicPartition]:
        """The posts partitions this processor owns right now."""
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    async def run(self) -> StreamStats:
        """Process until :meth:`request_stop`; returns the final counters. Raises :class:`StreamFailed` after
        a bug in record handling (offsets up to the failed record stay uncommitted)."""
        self._producer = await start_producer(
            self.config,
            wait=True,
            stop=self._stop,
            linger_ms=self.options.linger_ms,
            max_request_size=self.options.max_request_bytes,
            max_batch_size=self.options.batch_bytes,
        )
        if self._producer is None:
            return self.stats
        try:
            if self.options.create_topics:
                config = self.config
                await ensure_topics(config, [config.posts_topic, config.intentions_topic, config.dlq_topic])
            self._consumer = await start_client(self._make_consumer, what="consumer", wait=True, stop=self._stop)
            if self._consumer is None:
                return self.stats
            log.info("stream_started", topic=self.config.posts_topic, group=self.config.group_id,
                     max_in_flight=self.options.max_in_flight)  # fmt: skip
            try:
                await self._consume()
                await self._drain()
            finally:
                await self._cancel(self._all_tasks())
                await self._commit()
                await self._consumer.stop()
        finally:
            await self._producer.stop()
        self._log_stats(final=True)
        if self.failure is not None:
            raise StreamFailed(f"record handling crashed: {self.failure!r}") from self.failure
        return self.stats

    def _make_consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            **self.config.client_kwargs(),
            group_id=self.config.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_interval_ms=self.options.max_poll_interval_ms,
            session_timeout_ms=self.options.session_timeout_ms,
            heartbeat_interval_ms=max(self.options.session_timeout_ms // 4, 100),
        )
        consumer.subscribe([self.config.posts_topic], listener=_Rebalance(self))
        return consumer

    # ------------------------------------------------------------------------------------------ main loop

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stop.is_set():
            free = self._backpressure()
            if free > 0:
                batch = await consumer.getmany(timeout_ms=self.options.poll_timeout_ms, max_records=free)
            else:
                await self._wait_for_slots(self.options.poll_timeout_ms / 1000)
                # Everything is paused, so this returns nothing; it keeps the group membership alive.
                batch = await consumer.getmany(timeout_ms=0, max_records=1)
            for tp, records in batch.items():
                for record in records:
                    self._dispatch(tp, record)
            await self._periodic()

    def _dispatch(self, tp: TopicPartition, record: Record) -> None:
        if not self._tracker.add(tp, record.offset):
            self.stats.redeliveries_skipped += 1
            return
        self.stats.received += 1
        self._read_up_to[tp] = max(self._read_up_to.get(tp, 0), record.offset + 1)
        key = (tp, record.key) if record.key is not None else None
        earlier = self._latest_by_key.get(key) if key is not None else None
        task = asyncio.create_task(self._handle(tp, record, earlier))
        self._tasks.setdefault(tp, set()).add(task)
        if key is not None:
            self._latest_by_key[key] = task
        task.add_done_callback(lambda done: self._task_done(tp, key, done))

    def _task_done(
        self, tp: TopicPartition, key: tuple[TopicPartition, bytes] | None, task: asyncio.Task[None]
    ) -> None:
        tasks = self._tasks.get(tp)
        if tasks is not None:
            tasks.discard(task)
        if key is not None and self._latest_by_key.get(key) is task:
            del self._latest_by_key[key]
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()
            log.error("record_handling_crashed", error=repr(self.failure), exc_info=self.failure)
            self.request_stop()
        if self._in_flight() <= self.options.resume_below():
            self._slots_freed.set()

    def _in_flight(self) -> int:
        return sum(len(tasks) for tasks in self._tasks.values())

    def _all_tasks(self) -> list[asyncio.Task[None]]:
        return [task for tasks in self._tasks.values() for task in tasks]

    def _backpressure(self) -> int:
        """Pause every partition when full, resume at the low-water mark; returns how many records to take."""
        consumer = self._consumer
        assert consumer is not None
        in_flight = self._in_flight()
        assignment = consumer.assignment()
        if not self._paused and in_flight >= self.options.max_in_flight:
            self._paused = True
            log.debug("stream_paused", in_flight=in_flight)
        elif self._paused and in_flight <= self.options.resume_below():
            self._paused = False
            consumer.resume(*assignment)
            log.debug("stream_resumed", in_flight=in_flight)
        if self._paused:
            consumer.pause(*assignment)  # again each time: a rebalance hands out unpaused partitions
        self.stats.paused = self._paused
        self.stats.in_flight = in_flight
        return 0 if self._paused else self.options.max_in_flight - in_flight

    async def _wait_for_slots(self, timeout: float) -> None:
        self._slots_freed.clear()
        if self._in_flight() <= self.options.resume_below():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._slots_freed.wait(), timeout)

    async def _periodic(self) -> None:
        now = time.monotonic()
        if now - self._last_commit >= self.options.commit_interval_s:
            self._last_commit = now
            await self._commit()
        if now - self._last_stats >= self.options.stats_interval_s:
            self._last_stats = now
            self._log_stats()
        if now - self._last_position_check >= self.options.position_check_interval_s:
            self._last_position_check = now
            await self._check_positions()

    async def _check_positions(self) -> None:
        """A partition that ends before what this processor has read from it lost its records (topic
        recreated, or a broker back without its log). Say so once; if this processor is still waiting past
        the new end (or would skip the new records as "redeliveries"), forget the partition's in-flight posts
        and read it again from the start. When a rebalance already restarted the partition (the group's
        offsets were lost too), only the report is left to do."""
        consumer = self._consumer
        assert consumer is not None
        assigned = consumer.assignment()
        received = self._tracker.received_up_to()
        # Where the consumer fetches next counts too: a group offset committed before the loss was noticed
        # (e.g. a failed commit retried against the restarted broker) puts it past the end as well.
        fetching = await self._fetch_positions(assigned)
        waiting = {tp: max(received.get(tp, 0), fetching.get(tp, 0)) for tp in assigned}
        positions = {tp: max(self._read_up_to.get(tp, 0), waiting[tp]) for tp in assigned}
        resets = beyond_end("processor", positions, known_ends(consumer, list(positions)))
        for reset in resets:
            tp = TopicPartition(reset.topic, reset.partition)
            self._read_up_to[tp] = received.get(tp, 0)
            if waiting[tp] > reset.end:
                await self._cancel(list(self._tasks.pop(tp, ())))
                self._tracker.revoke([tp])
                self._read_up_to[tp] = 0
                self.stats.committed.pop(_name(tp), None)
                consumer.seek(tp, 0)
        self.offset_resets.extend(resets)
        self.stats.offset_resets += len(resets)

    async def _fetch_positions(self, partitions: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        """The consumer's next fetch offset per partition, where known within a short time."""
        consumer = self._consumer
        assert consumer is not None
        positions = {}
        for tp in partitions:
            with contextlib.suppress(KafkaError, TimeoutError, AssertionError):
                async with asyncio.timeout(1.0):
                    positions[tp] = await consumer.position(tp)
        return positions

    async def _drain(self) -> None:
        """Finish in-flight posts (bounded), polling with everything paused and committing as they end."""
        consumer = self._consumer
        assert consumer is not None
        deadline = time.monotonic() + self.options.drain_timeout_s
        log.info("stream_draining", in_flight=self._in_flight(), timeout_s=self.options.drain_timeout_s)
        while (tasks := self._all_tasks()) and not self._abandon.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("stream_drain_timeout", abandoned=len(tasks), detail="they will be redelivered")
                break
            await asyncio.wait(tasks, timeout=min(remaining, 0.5), return_when=asyncio.FIRST_COMPLETED)
            consumer.pause(*consumer.assignment())
            dropped = await consumer.getmany(timeout_ms=0, max_records=1)  # not taken: redelivered later
            if dropped:
                log.debug("stream_drain_dropped_records", partitions=len(dropped))
            await self._periodic()

    @staticmethod
    async def _cancel(tasks: Collection[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------------------------------ one record

    async def _handle(self, tp: TopicPartition, record: Record, earlier: asyncio.Task[None] | None) -> None:
        output = await self._output_for(record)
        if earlier is not None:
            # Same key, earlier offset, still running: keep the input's per-key order in the outputs (a
            # tombstone must not overtake the event of the post it deletes).
            await asyncio.wait([earlier])
        await self._deliver(output, record)
        self._tracker.complete(tp, record.offset)
        if output.kind is OutputKind.EVENT:
            self.stats.processed += 1
        elif output.kind is OutputKind.DEAD_LETTER:
            self.stats.dead_lettered += 1
        else:
            self.stats.tombstones += 1

    async def _output_for(self, record: Record) -> Output:
        """The event, tombstone or dead letter for ``record``; never raises (except on cancellation)."""
        raw = record.value
        if raw is None:
            if record.key is None:
                error = ValueError("tombstone without a key: nothing to delete")
                return self._dead_letter(record, Failure(error, DeadLetterStage.VALIDATE))
            return Output(OutputKind.TOMBSTONE, self.config.intentions_topic, record.key, None)
        source = SourceRef(topic=record.topic, partition=record.partition, offset=record.offset)
        outcome = await process_record(raw, self.limits, self.processor, source, self.options.post_timeout_s)
        if isinstance(outcome, Processed):
            return Output(OutputKind.EVENT, self.config.intentions_topic, outcome.event.post_id.encode(), outcome.value)
        return self._dead_letter(record, outcome)

    def _dead_letter(self, record: Record, failure: Failure) -> Output:
        raw = record.value or b""
        room = (self.options.max_request_bytes - 16 * 1024) * 3 // 4  # base64 grows 4/3; keep the envelope
        where = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        letter = failure.dead_letter(raw[:room], **where)
        if len(raw) > room:
            letter.error_message += f" [original cut to {room} of {len(raw)} bytes to fit the topic]"
        log.info("dead_letter", post_id=failure.post_id, stage=str(failure.stage), error=letter.error_message[:200],
                 partition=record.partition, offset=record.offset)  # fmt: skip
        stage = str(failure.stage)
        self.stats.dead_letter_stages[stage] = self.stats.dead_letter_stages.get(stage, 0) + 1
        key = failure.post_id.encode() if failure.post_id else bounded_key(record.key)
        return Output(OutputKind.DEAD_LETTER, self.config.dlq_topic, key, letter.model_dump_json().encode())

    async def _deliver(self, output: Output, record: Record) -> None:
        """Send ``output`` and wait for the broker's acknowledgement, retrying for as long as it takes: a
        record whose output is not acknowledged is never completed, so never committed past."""
        producer = self._producer
        assert producer is not None
        backoff = Backoff()
        while True:
            try:
                future = await producer.send(output.topic, output.value, key=output.key)
                await future
                return
            except MessageSizeTooLargeError as error:
                if output.kind is OutputKind.DEAD_LETTER:
                    raise  # cut to fit above; the producer's limit changed under us: a bug, stop loudly
                log.warning("event_too_large", error=str(error), offset=record.offset)
                output = self._dead_letter(record, Failure(error, DeadLetterStage.GRAPH, _key_text(output.key)))
            except KafkaError as error:
                self.stats.send_retries += 1
                delay = backoff.next_delay()
                log.warning("send_failed", topic=output.topic, error=repr(error), retry_in_s=delay)
                await asyncio.sleep(delay)

    # ------------------------------------------------------------------------------------------ commits

    async def _commit(self, only: Collection[TopicPartition] | None = None) -> bool:
        """Commit each owned partition's done prefix; False if the broker refused (retried next time)."""
        consumer = self._consumer
        if consumer is None:
            return False
        async with self._commit_lock:
            assigned = consumer.assignment()
            offsets = {
                tp: position
                for tp, position in self._tracker.committable().items()
                if tp in assigned and (only is None or tp in only)
            }
            if not offsets:
                return True
            try:
                async with asyncio.timeout(self.options.commit_timeout_s):
                    await consumer.commit(offsets)
            except (KafkaError, TimeoutError) as error:
                self.stats.commit_failures += 1
                log.warning("commit_failed", error=repr(error), partitions=len(offsets))
                return False
            self._tracker.mark_committed(offsets)
            self.stats.commits += 1
            self.stats.committed.update({_name(tp): position for tp, position in offsets.items()})
            return True

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Rebalance: give the revoked partitions' posts a bounded time to finish, commit, drop the rest."""
        self.stats.rebalances += 1
        tasks = [task for tp in revoked for task in self._tasks.get(tp, ())]
        if tasks:
            await asyncio.wait(tasks, timeout=self.options.revoke_timeout_s)
        await self._commit(only=revoked)
        unfinished = [task for task in tasks if not task.done()]
        if unfinished:
            log.info("revoked_posts_dropped", count=len(unfinished), detail="the new owner processes them")
        await self._cancel(unfinished)
        self._tracker.revoke(revoked)
        for tp in revoked:
            self._tasks.pop(tp, None)
            self.stats.committed.pop(_name(tp), None)
            self.stats.lag.pop(_name(tp), None)
        log.info("partitions_revoked", partitions=sorted(_name(tp) for tp in revoked))

    # ------------------------------------------------------------------------------------------ stats

    def _log_stats(self, final: bool = False) -> None:
        consumer = self._consumer
        if consumer is not None:
            for tp in consumer.assignment():
                highwater = consumer.highwater(tp)
                committed = self.stats.committed.get(_name(tp))
                if highwater is not None and committed is not None:
                    self.stats.lag[_name(tp)] = max(highwater - committed, 0)
        self.stats.in_flight = self._in_flight()
        log.info("stream_stopped" if final else "stream_stats", **self.stats.snapshot())


def bounded_key(key: bytes | None) -> bytes | None:
    """A record key fit to reuse as a dead letter's key: a huge key is replaced by its hash (it is kept,
    in full, in the dead letter's original bytes only when it was the value; keys are not)."""
    if key is None or len(key) <= MAX_ID_CHARS:
        return key
    return b"blake2b:" + hashlib.blake2b(key, digest_size=16).hexdigest().encode()


def _key_text(key: bytes | None) -> str | None:
    return key.decode("utf-8", "replace") if key else None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, stream: StreamProcessor) -> None:
        self.stream = stream

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            await self.stream.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions_assigned", partitions=sorted(_name(tp) for tp in assigned))
