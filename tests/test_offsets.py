"""The offset tracker commits exactly the contiguous completed prefix of each partition, gaps included."""

from __future__ import annotations

import random

import pytest
from aiokafka import TopicPartition

from consumers.offsets import OffsetTracker

TP = TopicPartition("posts", 0)
TP2 = TopicPartition("posts", 1)


def test_nothing_committable_until_the_first_record_is_done() -> None:
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.add(TP, offset)
    tracker.complete(TP, 3)
    tracker.complete(TP, 1)
    assert tracker.committable() == {}
    assert tracker.in_flight(TP) == 3


def test_out_of_order_completion_commits_the_contiguous_prefix() -> None:
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.add(TP, offset)
    tracker.complete(TP, 0)
    tracker.complete(TP, 2)
    assert tracker.committable() == {TP: 1}
    tracker.complete(TP, 1)
    assert tracker.committable() == {TP: 3}
    tracker.complete(TP, 4)
    tracker.complete(TP, 3)
    assert tracker.committable() == {TP: 5}
    assert tracker.in_flight() == 0


def test_gaps_in_offsets_do_not_hold_back_or_skip_commits() -> None:
    """Compacted topics and transaction markers: offsets 1, 4 and 5 are never delivered."""
    tracker = OffsetTracker()
    for offset in (0, 2, 3, 6):
        tracker.add(TP, offset)
    tracker.complete(TP, 0)
    assert tracker.committable() == {TP: 1}
    tracker.complete(TP, 6)
    assert tracker.committable() == {TP: 1}, "6 is done but 2 and 3 are not: never commit past them"
    tracker.complete(TP, 2)
    tracker.complete(TP, 3)
    assert tracker.committable() == {TP: 7}


def test_first_offset_need_not_be_zero() -> None:
    tracker = OffsetTracker()
    tracker.add(TP, 1000)
    tracker.add(TP, 1001)
    tracker.complete(TP, 1001)
    assert tracker.committable() == {}
    tracker.complete(TP, 1000)
    assert tracker.committable() == {TP: 1002}


def test_committed_positions_are_not_returned_again() -> None:
    tracker = OffsetTracker()
    tracker.add(TP, 0)
    tracker.add(TP2, 7)
    tracker.complete(TP, 0)
    tracker.complete(TP2, 7)
    assert tracker.committable() == {TP: 1, TP2: 8}
    tracker.mark_committed({TP: 1})
    assert tracker.committable() == {TP2: 8}
    assert tracker.committed() == {TP: 1}
    tracker.add(TP, 1)
    tracker.complete(TP, 1)
    assert tracker.committable() == {TP: 2, TP2: 8}


def test_redelivered_offsets_are_refused() -> None:
    tracker = OffsetTracker()
    assert tracker.add(TP, 5)
    assert not tracker.add(TP, 5), "in flight already"
    tracker.complete(TP, 5)
    assert not tracker.add(TP, 3), "below what was received"
    assert tracker.add(TP, 6)


def test_unknown_completions_are_ignored() -> None:
    tracker = OffsetTracker()
    tracker.complete(TP, 0)  # unknown partition
    tracker.add(TP, 0)
    tracker.add(TP, 2)
    tracker.complete(TP, 1)  # a gap that was never received
    tracker.complete(TP, 0)
    tracker.complete(TP, 0)  # twice
    assert tracker.committable() == {TP: 1}
    assert tracker.in_flight(TP) == 1


def test_revoke_forgets_partitions() -> None:
    tracker = OffsetTracker()
    tracker.add(TP, 0)
    tracker.add(TP2, 0)
    tracker.complete(TP2, 0)
    tracker.revoke([TP2])
    assert tracker.committable() == {}
    assert tracker.partitions() == {TP}
    tracker.complete(TP2, 0)  # a late completion from the revoked partition
    assert tracker.committable() == {}
    assert tracker.add(TP2, 0), "after a re-assignment the partition starts afresh"


@pytest.mark.parametrize("seed", range(20))
def test_random_completion_orders_match_a_reference_model(seed: int) -> None:
    """Against a brute-force model: committable = one past the last offset of the completed prefix."""
    rng = random.Random(seed)
    tracker = OffsetTracker()
    offsets = sorted(rng.sample(range(400), 120))  # gaps everywhere
    done: set[int] = set()
    committed: int | None = None
    received: list[int] = []
    pending = list(offsets)
    while pending or len(done) < len(received):
        if pending and (rng.random() < 0.5 or len(done) == len(received)):
            offset = pending.pop(0)
            assert tracker.add(TP, offset)
            received.append(offset)
        else:
            offset = rng.choice([item for item in received if item not in done])
            tracker.complete(TP, offset)
            done.add(offset)
        expected = None
        for item in received:
            if item not in done:
                break
            expected = item + 1
        got = tracker.committable().get(TP, committed)
        assert got == expected
        if rng.random() < 0.3 and TP in tracker.committable():
            committed = tracker.committable()[TP]
            tracker.mark_committed({TP: committed})
        assert tracker.in_flight(TP) == len(received) - len(done)
    assert tracker.committable().get(TP, committed) == offsets[-1] + 1
