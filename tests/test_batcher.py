"""The micro-batcher on its own, with a pure-Python engine: coalescing, routing, isolation of failures."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence

import pytest

from graph.models.batcher import BatcherClosedError, MicroBatcher


class Recorder:
    """An engine that upper-cases strings, records its batches, and can be told to misbehave."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, requests: Sequence[str]) -> list[str | BaseException]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(requests))
        if "crash" in requests:
            raise RuntimeError("the whole batch blew up")
        return [ValueError(f"bad {r}") if r.startswith("bad") else r.upper() for r in requests]


async def test_concurrent_requests_coalesce_and_route_back() -> None:
    engine = Recorder()
    batcher = MicroBatcher(engine, max_batch_size=8, max_wait_ms=50)
    results = await asyncio.gather(*(batcher.arun(f"r{i}") for i in range(20)))
    assert results == [f"R{i}" for i in range(20)]
    assert len(engine.batches) <= 4  # 20 requests in batches of at most 8
    assert max(len(b) for b in engine.batches) == 8
    assert batcher.stats.requests == 20 and batcher.stats.batches == len(engine.batches)
    assert engine.threads == {"batcher-model"}  # one worker thread, not the event loop's
    batcher.close()


async def test_requests_queued_while_busy_form_the_next_batch() -> None:
    gate = threading.Event()
    engine = Recorder(gate)
    batcher = MicroBatcher(engine, max_batch_size=16, max_wait_ms=0)
    first = asyncio.ensure_future(batcher.arun("first"))
    assert await asyncio.to_thread(engine.entered.wait, 5)  # the worker holds "first" and waits on the gate
    rest = [asyncio.ensure_future(batcher.arun(f"r{i}")) for i in range(10)]
    await asyncio.sleep(0.01)  # let the tasks submit
    gate.set()
    assert await first == "FIRST"
    assert await asyncio.gather(*rest) == [f"R{i}" for i in range(10)]
    assert [len(b) for b in engine.batches] == [1, 10]
    batcher.close()


async def test_a_failing_request_fails_only_itself() -> None:
    engine = Recorder()
    batcher = MicroBatcher(engine, max_batch_size=8, max_wait_ms=50)
    outcomes = await asyncio.gather(*(batcher.arun(r) for r in ["a", "bad1", "b"]), return_exceptions=True)
    assert outcomes[0] == "A" and outcomes[2] == "B"
    assert isinstance(outcomes[1], ValueError)
    assert batcher.stats.failed == 1
    batcher.close()


async def test_a_batch_that_raises_is_retried_one_by_one() -> None:
    engine = Recorder()
    batcher = MicroBatcher(engine, max_batch_size=8, max_wait_ms=50)
    outcomes = await asyncio.gather(*(batcher.arun(r) for r in ["a", "crash", "b"]), return_exceptions=True)
    assert outcomes[0] == "A" and outcomes[2] == "B"
    assert isinstance(outcomes[1], RuntimeError)
    assert engine.batches[0] == ["a", "crash", "b"] and ["crash"] in engine.batches
    batcher.close()


async def test_cancelled_requests_are_skipped() -> None:
    gate = threading.Event()
    engine = Recorder(gate)
    batcher = MicroBatcher(engine, max_batch_size=16, max_wait_ms=0)
    first = asyncio.ensure_future(batcher.arun("first"))
    assert await asyncio.to_thread(engine.entered.wait, 5)
    doomed = asyncio.ensure_future(batcher.arun("doomed"))
    kept = asyncio.ensure_future(batcher.arun("kept"))
    await asyncio.sleep(0.01)
    doomed.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await doomed
    await asyncio.sleep(0.01)  # the cancellation reaches the worker's future through a loop callback
    gate.set()
    assert await first == "FIRST" and await kept == "KEPT"
    assert all("doomed" not in b for b in engine.batches)
    assert batcher.stats.cancelled == 1
    batcher.close()


def test_sync_callers_from_threads_share_batches() -> None:
    engine = Recorder()
    batcher = MicroBatcher(engine, max_batch_size=16, max_wait_ms=100)
    results: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.run(f"t{i}"))) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: f"T{i}" for i in range(12)}
    assert len(engine.batches) < 12
    batcher.close()


async def test_close_finishes_queued_work_then_refuses() -> None:
    batcher = MicroBatcher(Recorder(), max_batch_size=4, max_wait_ms=1)
    pending = [batcher.submit(f"x{i}") for i in range(6)]
    batcher.close()
    assert [f.result(1) for f in pending] == [f"X{i}" for i in range(6)]
    with pytest.raises(BatcherClosedError):
        batcher.submit("late")


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_batch_size=0)
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_wait_ms=-1)
