"""Which input offsets are safe to commit while posts finish out of order (at-least-once commits).

A partition's committable position is the offset *after* the longest prefix of received records whose outputs
the broker has acknowledged. Offsets are tracked as the ordered sequence actually received, never as
``offset + 1`` arithmetic: compacted topics and transaction markers leave gaps, and a gap must not hold the
commit back (nor may it be skipped over before the record after it is done).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import TopicPartition


@dataclass
class PartitionOffsets:
    """Received-but-not-yet-committable offsets of one partition, oldest first."""

    pending: deque[int] = field(default_factory=deque)  # received, in order, not yet below the position
    outstanding: set[int] = field(default_factory=set)  # received and not completed
    last_received: int = -1
    position: int | None = None  # next offset to consume: everything received before it is done
    committed: int | None = None  # last position the broker accepted for this partition

    def add(self, offset: int) -> bool:
        """Track a newly received offset; False for a redelivery of one already seen (ignore that record)."""
        if offset <= self.last_received:
            return False
        self.pending.append(offset)
        self.outstanding.add(offset)
        self.last_received = offset
        return True

    def complete(self, offset: int) -> None:
        if offset not in self.outstanding:
            return
        self.outstanding.discard(offset)
        pending = self.pending
        while pending and pending[0] not in self.outstanding:
            self.position = pending.popleft() + 1

    @property
    def in_flight(self) -> int:
        return len(self.outstanding)


class OffsetTracker:
    """Per-partition bookkeeping of in-flight records: the stream processor's only source of commits."""

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, PartitionOffsets] = {}

    def add(self, tp: TopicPartition, offset: int) -> bool:
        """Record that ``offset`` was received; False if it is a redelivery that is already being handled."""
        state = self._partitions.get(tp)
        if state is None:
            state = self._partitions[tp] = PartitionOffsets()
        return state.add(offset)

    def complete(self, tp: TopicPartition, offset: int) -> None:
        """Mark ``offset`` done (its output is acknowledged). Unknown partitions/offsets are ignored: after a
        revoke the record will be redelivered to whoever owns the partition now."""
        state = self._partitions.get(tp)
        if state is not None:
            state.complete(offset)

    def committable(self) -> dict[TopicPartition, int]:
        """Positions to commit: the offset after each partition's contiguous completed prefix, where it moved
        past what was last committed."""
        return {
            tp: state.position
            for tp, state in self._partitions.items()
            if state.position is not None and state.position != state.committed
        }

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Remember what the broker accepted, so the next :meth:`committable` only returns progress."""
        for tp, position in offsets.items():
            state = self._partitions.get(tp)
            if state is not None:
                state.committed = position

    def revoke(self, tps: Iterable[TopicPartition]) -> None:
        """Forget partitions this consumer no longer owns (their unfinished records will be redelivered)."""
        for tp in tps:
            self._partitions.pop(tp, None)

    def in_flight(self, tp: TopicPartition | None = None) -> int:
        """Received records whose outputs are not acknowledged yet, for one partition or all of them."""
        if tp is not None:
            state = self._partitions.get(tp)
            return state.in_flight if state else 0
        return sum(state.in_flight for state in self._partitions.values())

    def received_up_to(self) -> dict[TopicPartition, int]:
        """The offset after the last record received on each partition (how far this consumer has read)."""
        return {tp: state.last_received + 1 for tp, state in self._partitions.items() if state.last_received >= 0}

    def committed(self) -> dict[TopicPartition, int]:
        return {tp: state.committed for tp, state in self._partitions.items() if state.committed is not None}

    def partitions(self) -> set[TopicPartition]:
        return set(self._partitions)
