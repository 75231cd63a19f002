"""The batcher's front end on a pure-Python stepper: threads, cancellation, closing, settings."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
from helpers.models import CountingStepper
from helpers.wait import wait_until

from graph.models.local.batcher import BatcherClosedError, ContinuousBatcher


async def test_cancelled_requests_are_skipped() -> None:
    stepper = CountingStepper()
    stepper.gate.clear()  # the worker admits "1" and then blocks in its first step
    batcher = ContinuousBatcher(stepper, max_batch_size=16, max_wait_ms=0)
    first = asyncio.ensure_future(batcher.arun("1"))
    await wait_until(lambda: bool(stepper.starts), what='"1" to start')
    doomed = asyncio.ensure_future(batcher.arun("3"))
    kept = asyncio.ensure_future(batcher.arun("2"))
    await asyncio.sleep(0)  # both submit (loop order, not a clock); the worker waits at the gate
    doomed.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await doomed  # cancelling the wrapper cancelled the batcher's future first (a done callback)
    stepper.gate.set()
    assert await first == "1 done" and await kept == "2 done"
    assert all("3" not in started for started in stepper.starts)
    assert batcher.stats.cancelled == 1
    batcher.close()


def test_sync_callers_from_threads_share_passes() -> None:
    stepper = CountingStepper()
    batcher = ContinuousBatcher(stepper, max_batch_size=16, max_wait_ms=100)
    results: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.run(str(i + 1)))) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: f"{i + 1} done" for i in range(12)}
    assert len(stepper.starts) < 12
    batcher.close()


async def test_closed_batcher_refuses_new_work() -> None:
    batcher = ContinuousBatcher(CountingStepper(), max_batch_size=4, max_wait_ms=1)
    assert await batcher.arun("1") == "1 done"
    batcher.close()
    assert batcher.closed
    with pytest.raises(BatcherClosedError):
        batcher.submit("1")


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        ContinuousBatcher(CountingStepper(), max_batch_size=0)
    with pytest.raises(ValueError):
        ContinuousBatcher(CountingStepper(), max_wait_ms=-1)
