"""The service's garbage-collector tuning (miko_stream/gc_tuning.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from miko_stream.gc_tuning import OLDER_THRESHOLDS, YOUNG_THRESHOLD, tune_gc_after_startup


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_startup_objects_are_frozen_and_collections_spaced_out(restored_gc: None) -> None:
    survivor = [object() for _ in range(100)]
    tune_gc_after_startup()
    assert gc.get_freeze_count() >= len(survivor)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)


def test_cycles_made_after_tuning_are_still_collected(restored_gc: None) -> None:
    tune_gc_after_startup()

    class Node:
        partner: object = None

    first, second = Node(), Node()
    first.partner, second.partner = second, first
    del first, second
    assert gc.collect() >= 2
