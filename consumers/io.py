"""Kafka clients made the project's way (acks=all, idempotence where supported, patient startup) and the
``produce`` / ``tail`` helpers behind the CLI commands of the same names."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    UnknownError,
    UnsupportedVersionError,
)
from aiokafka.structs import ConsumerRecord

from consumers.kafka_config import KafkaConfig
from graph.intake import peek_post_id, read_jsonl_records

log = structlog.get_logger(__name__)

Client = TypeVar("Client", AIOKafkaProducer, AIOKafkaConsumer)

# What a broker answers to InitProducerId when it cannot do idempotent producers (Tansu: UnknownError).
_NO_IDEMPOTENCE = (UnknownError, UnsupportedVersionError, ClusterAuthorizationFailedError)


class KafkaClientError(RuntimeError):
    """A Kafka client could not be started or used; the message says why and what to change."""


@dataclass
class Backoff:
    """Exponential backoff between retries of one failing operation."""

    initial_s: float = 0.1
    maximum_s: float = 5.0
    _next_s: float = 0.0

    def next_delay(self) -> float:
        self._next_s = self.initial_s if self._next_s == 0 else min(self._next_s * 2, self.maximum_s)
        return self._next_s

    def reset(self) -> None:
        self._next_s = 0.0


async def start_client(
    make: Callable[[], Client], *, what: str, wait: bool, stop: asyncio.Event | None = None
) -> Client | None:
    """Start a client made by ``make``; when the cluster is unreachable either wait for it (``wait``: a
    long-running service must not die because Kafka restarts) or raise :class:`KafkaClientError`.
    Returns None only if ``stop`` is set while waiting."""
    backoff = Backoff(maximum_s=10.0)
    while True:
        client = make()
        try:
            await client.start()
            return client
        except KafkaConnectionError as error:
            await client.stop()
            if not wait:
                raise KafkaClientError(f"cannot reach Kafka for the {what}: {error}") from error
            delay = backoff.next_delay()
            log.warning("kafka_unreachable", client=what, error=str(error), retry_in_s=delay)
            if stop is None:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return None
                except TimeoutError:
                    pass
        except BaseException:
            await client.stop()
            raise


def producer_factory(config: KafkaConfig, *, idempotent: bool, **options: Any) -> Callable[[], AIOKafkaProducer]:
    def make() -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **config.client_kwargs(), acks="all", enable_idempotence=idempotent, **{"linger_ms": 5, **options}
        )

    return make


async def start_producer(
    config: KafkaConfig, *, wait: bool = False, stop: asyncio.Event | None = None, **options: Any
) -> AIOKafkaProducer | None:
    """An acks=all producer, idempotent unless ``config.idempotence`` is off, or is ``auto`` and the broker
    refuses (then a retried send may duplicate a record, which at-least-once already allows)."""
    idempotent = config.idempotence != "off"
    try:
        return await start_client(
            producer_factory(config, idempotent=idempotent, **options), what="producer", wait=wait, stop=stop
        )
    except _NO_IDEMPOTENCE as error:
        if config.idempotence != "auto":
            raise KafkaClientError(
                f"the broker refused an idempotent producer ({type(error).__name__}); "
                "set MIKO_KAFKA_IDEMPOTENCE=auto or off"
            ) from error
    log.warning("idempotent_producer_unsupported", detail="continuing with acks=all and plain retries")
    return await start_client(
        producer_factory(config, idempotent=False, **options), what="producer", wait=wait, stop=stop
    )


# ---------------------------------------------------------------------------------------------- produce


@dataclass
class ProduceReport:
    records: int = 0
    keyed: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0

    @property
    def records_per_s(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0


class ProduceError(RuntimeError):
    """Some records were not acknowledged by the broker."""


async def produce_file(
    config: KafkaConfig,
    path: Path,
    *,
    topic: str,
    rate: float | None = None,
    on_acked: Callable[[], None] | None = None,
    window: int = 10_000,
) -> ProduceReport:
    """Publish every record of ``path`` to ``topic`` (key = the post id when the line parses), at most
    ``rate`` records/s, waiting for every acknowledgement; raises :class:`ProduceError` on any failure."""
    producer = await start_producer(config)
    assert producer is not None
    report = ProduceReport()
    pending: deque[asyncio.Future[Any]] = deque()
    failures: list[BaseException] = []

    def acked(future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            failures.append(future.exception() or asyncio.CancelledError())
        elif on_acked is not None:
            on_acked()

    started = time.monotonic()
    try:
        for index, (_, record) in enumerate(read_jsonl_records(path)):
            if rate:
                delay = started + index / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            post_id = peek_post_id(record)
            future = await producer.send(topic, record, key=post_id.encode() if post_id else None)
            future.add_done_callback(acked)
            pending.append(future)
            report.records += 1
            report.keyed += post_id is not None
            report.bytes += len(record)
            while len(pending) > window:
                await asyncio.wait([pending.popleft()])
        await producer.flush()
        if pending:
            await asyncio.wait(pending)
    finally:
        await producer.stop()
    report.elapsed_s = time.monotonic() - started
    if failures:
        raise ProduceError(
            f"{len(failures)} of {report.records} records were not acknowledged (first: {failures[0]!r})"
        )
    return report


# ---------------------------------------------------------------------------------------------- tail


def format_record(record: ConsumerRecord[bytes, bytes]) -> str:
    """One output line per record: the value as sent (JSON events stay pipeable into jq); a tombstone as a
    small JSON object naming its key."""
    if record.value is None:
        key = record.key.decode("utf-8", "replace") if record.key is not None else None
        where = {"partition": record.partition, "offset": record.offset}
        return json.dumps({"tombstone": True, "key": key, **where})
    return record.value.decode("utf-8", "replace")


async def tail_topic(
    config: KafkaConfig,
    topic: str,
    emit: Callable[[ConsumerRecord[bytes, bytes]], None],
    *,
    from_beginning: bool = False,
    max_records: int | None = None,
    idle_timeout_s: float | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Call ``emit`` for each record arriving on ``topic`` (no consumer group: every partition, nothing
    committed) until ``max_records``, ``idle_timeout_s`` without records, or ``stop``. Returns the count."""

    def make() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            **config.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
        )

    consumer = await start_client(make, what="tail consumer", wait=False)
    assert consumer is not None
    seen = 0
    last_record = time.monotonic()
    try:
        while not (stop is not None and stop.is_set()):
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    emit(record)
                    seen += 1
                    if max_records is not None and seen >= max_records:
                        return seen
            if batch:
                last_record = time.monotonic()
            elif idle_timeout_s is not None and time.monotonic() - last_record > idle_timeout_s:
                return seen
    except KafkaError as error:
        raise KafkaClientError(f"tail of {topic} failed: {error}") from error
    finally:
        await consumer.stop()
    return seen
