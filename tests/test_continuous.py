"""Continuous batching: the batcher's admission loop on a pure-Python stepper, then the real engine on a tiny model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Hashable, Sequence
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from graph.models.local import LocalChatModel
from graph.models.local.batcher import ContinuousBatcher, Running
from graph.models.local.engine import CallTrace
from graph.models.registry import LLMConfig, build_chat_model


class Counter:
    """A stepper whose request "n" runs n steps and returns "n done"; "score" needs no slot; "bad" fails."""

    def __init__(self) -> None:
        self.rows: dict[int, list[int]] = {}  # handle -> [steps left, n]
        self.next = 0
        self.starts: list[list[str]] = []
        self.widths: list[int] = []
        self.crash_step = False
        self.gate = threading.Event()
        self.gate.set()

    @property
    def live(self) -> int:
        return len(self.rows)

    def needs_slot(self, request: str) -> bool:
        return request != "score"

    def start(self, requests: Sequence[str]) -> list[str | BaseException | Running]:
        self.starts.append(list(requests))
        if "bad" in requests and len(requests) > 1:
            raise RuntimeError("the pass blew up")
        outcomes: list[str | BaseException | Running] = []
        for request in requests:
            if request == "bad":
                outcomes.append(ValueError("bad request"))
            elif request == "score":
                outcomes.append("scored")
            else:
                self.next += 1
                self.rows[self.next] = [int(request), int(request)]
                outcomes.append(Running(self.next))
        return outcomes

    def step(self) -> list[tuple[Hashable, str]]:
        self.gate.wait(5)
        if self.crash_step:
            raise RuntimeError("step blew up")
        self.widths.append(len(self.rows))
        done = []
        for handle, row in list(self.rows.items()):
            row[0] -= 1
            if row[0] == 0:
                done.append((handle, f"{row[1]} done"))
                del self.rows[handle]
        return done

    def abandon(self) -> None:
        self.rows.clear()


async def test_short_requests_leave_early_and_new_ones_join() -> None:
    stepper = Counter()
    batcher = ContinuousBatcher(stepper, max_batch_size=4, max_wait_ms=50)
    long_job = asyncio.ensure_future(batcher.arun("30"))
    short = await batcher.arun("2")  # admitted while "30" runs, finishes long before it
    assert short == "2 done" and not long_job.done()
    assert await long_job == "30 done"
    assert max(stepper.widths) == 2 and stepper.widths[-1] == 1  # the batch shrank when "2" left
    batcher.close()


async def test_admission_fills_free_slots_and_scores_take_none() -> None:
    stepper = Counter()
    batcher = ContinuousBatcher(stepper, max_batch_size=4, max_wait_ms=50)
    results = await asyncio.gather(*(batcher.arun(r) for r in ["3", "3", "3", "3", "3", "3", "score", "score"]))
    assert results == ["3 done"] * 6 + ["scored"] * 2
    first = stepper.starts[0]
    assert first.count("3") == 4 and first.count("score") == 2  # four slots; scoring needs none
    assert max(stepper.widths) <= 4
    assert batcher.stats.requests == 8 and batcher.stats.batches == len(stepper.starts)
    batcher.close()


async def test_a_failing_pass_is_retried_singly_and_a_failing_step_fails_the_running() -> None:
    stepper = Counter()
    batcher = ContinuousBatcher(stepper, max_batch_size=4, max_wait_ms=50)
    outcomes = await asyncio.gather(*(batcher.arun(r) for r in ["2", "bad", "score"]), return_exceptions=True)
    assert outcomes[0] == "2 done" and outcomes[2] == "scored"
    assert isinstance(outcomes[1], ValueError) and ["bad"] in stepper.starts
    stepper.crash_step = True
    with pytest.raises(RuntimeError, match="step blew up"):
        await batcher.arun("5")
    stepper.crash_step = False
    assert await batcher.arun("1") == "1 done" and stepper.live == 0
    assert batcher.stats.failed == 2
    batcher.close()


def test_close_finishes_running_and_queued_work() -> None:
    stepper = Counter()
    stepper.gate.clear()
    batcher = ContinuousBatcher(stepper, max_batch_size=2, max_wait_ms=0)
    futures = [batcher.submit(str(n)) for n in (3, 4, 5)]
    stepper.gate.set()
    batcher.close()
    assert [f.result(1) for f in futures] == ["3 done", "4 done", "5 done"]


# -- the engine on a tiny random-weight Llama ---------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("fresh_local_engines")


def chat(post: str) -> list:
    return [SystemMessage("Complete the sentence."), HumanMessage(f"Post: {post}"), AIMessage("The user")]


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
async def test_rows_join_and_leave_and_match_running_alone(dtype: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    config = LLMConfig(cache_dir=tmp_path, max_batch_size=4, max_wait_ms=200, local_dtype=dtype)  # type: ignore[arg-type]
    model = build_chat_model(f"hf:{tiny_model_dir}", config)
    assert isinstance(model, LocalChatModel)
    engine = model.handle.engine
    engine.sharing = engine.prefix_cache = None  # this test is about slots, not prefixes
    posts = ["race", "happy friends race race", "marathon", "friends happy", "race happy marathon friends"]
    budgets = [20, 2, 9, 4, 14]
    alone = [(await model.ainvoke(chat(p), max_tokens=b)).content for p, b in zip(posts, budgets, strict=True)]
    traces: list[CallTrace] = []
    engine.observer = traces.append
    calls = [model.ainvoke(chat(p), max_tokens=b) for p, b in zip(posts, budgets, strict=True)]
    together = await asyncio.gather(*calls)
    assert [m.content for m in together] == alone
    decodes = [t for t in traces if t.kind == "decode"]
    assert max(t.rows for t in decodes) == 4  # four slots; the fifth request joined when one left
    assert decodes[-1].rows == 1  # the longest ran alone at the end
    assert len([t for t in traces if t.kind == "prefill"]) >= 2
    assert len(decodes) < sum(budgets)
