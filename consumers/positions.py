"""Noticing that a partition lost its data under a running consumer, so it never stalls silently.

When a topic is deleted and created again (or a broker comes back without its log, like the in-memory
embedded broker), a consumer still holds positions past the new end of each partition: fetches return
nothing, lag reads 0 and the service looks caught up while it ignores every new record. The services compare
their positions with the partitions' high watermarks every few seconds; a position beyond the end means records
were lost upstream. They then log one ``kafka_data_loss_detected`` warning per partition, count it in
``miko_kafka_offset_resets_total``, report it in their stats, and read the partition again from its start.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Counter

log = structlog.get_logger(__name__)

OFFSET_RESETS = Counter(
    "miko_kafka_offset_resets_total",
    "Positions found beyond the end of their partition (topic recreated or truncated: records were lost "
    "upstream) and reset to the partition's start",
    ["service", "topic"],
)


@dataclass(frozen=True)
class OffsetReset:
    """One detected loss: where the consumer was, where the partition now ends, when it was noticed."""

    topic: str
    partition: int
    position: int
    end: int
    detected_at: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def known_ends(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    """Each partition's end as the last fetch response reported it (its high watermark), where known.

    The high watermark rides on every fetch response, so this costs no request. (A ListOffsets request is
    not used: Tansu answers it with the last batch's base offset + 1, short of the real end.) A high
    watermark can be stale but never below a position reached through records it came with, so a position
    beyond it means the partition lost records."""
    ends = {}
    for tp in partitions:
        highwater = consumer.highwater(tp)
        if highwater is not None:
            ends[tp] = highwater
    return ends


def beyond_end(
    service: str, positions: dict[TopicPartition, int], ends: dict[TopicPartition, int]
) -> list[OffsetReset]:
    """The partitions whose position is past their end offset; logs and counts each one."""
    resets = []
    for tp, position in sorted(positions.items()):
        end = ends.get(tp)
        if end is None or position <= end:
            continue
        reset = OffsetReset(tp.topic, tp.partition, position, end, time.time())
        resets.append(reset)
        OFFSET_RESETS.labels(service, tp.topic).inc()
        log.warning(
            "kafka_data_loss_detected",
            service=service,
            topic=tp.topic,
            partition=tp.partition,
            position=position,
            end_offset=end,
            detail="the partition ends before what this consumer read from it: the topic was recreated or "
            "truncated and records were lost upstream; reading it from its start where still waiting past its end",
        )
    return resets
