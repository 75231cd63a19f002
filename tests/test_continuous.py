"""Continuous batching: the batcher's admission loop on a pure-Python stepper, then the real engine on a tiny model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from helpers.models import CountingStepper, gather_together
from helpers.wait import wait_until
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from graph.models.local import LocalChatModel
from graph.models.local.batcher import ContinuousBatcher
from graph.models.local.engine import CallTrace
from graph.models.registry import LLMConfig, build_chat_model


async def test_short_requests_leave_early_and_new_ones_join() -> None:
    stepper = CountingStepper()
    stepper.gate.clear()  # "30" starts, then waits in its first step until "2" is queued
    batcher = ContinuousBatcher(stepper, max_batch_size=4, max_wait_ms=0)
    long_job = asyncio.ensure_future(batcher.arun("30"))
    await wait_until(lambda: stepper.starts == [["30"]], what='"30" to start')
    short = asyncio.ensure_future(batcher.arun("2"))  # joins the running batch after the first step
    await asyncio.sleep(0)  # lets it submit (loop order, not a clock)
    stepper.gate.set()
    assert (await short, await long_job) == ("2 done", "30 done")
    assert stepper.widths == [1, 2, 2] + [1] * 27  # "2" joined after one step and left two steps later
    batcher.close()


async def test_admission_fills_free_slots_and_scores_take_none() -> None:
    stepper = CountingStepper()
    # The first pass waits for 2 x max_batch_size requests: all eight (the long wait only bounds a failure).
    batcher = ContinuousBatcher(stepper, max_batch_size=4, max_wait_ms=120_000)
    results = await asyncio.gather(*(batcher.arun(r) for r in ["3", "3", "3", "3", "3", "3", "score", "score"]))
    assert results == ["3 done"] * 6 + ["scored"] * 2
    first = stepper.starts[0]
    assert first.count("3") == 4 and first.count("score") == 2  # four slots; scoring needs none
    assert max(stepper.widths) <= 4
    assert batcher.stats.requests == 8 and batcher.stats.batches == len(stepper.starts)
    batcher.close()


async def test_a_failing_pass_is_retried_singly_and_a_failing_step_fails_the_running() -> None:
    stepper = CountingStepper()
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
    stepper = CountingStepper()
    stepper.gate.clear()
    batcher = ContinuousBatcher(stepper, max_batch_size=2, max_wait_ms=0)
    futures = [batcher.submit(str(n)) for n in (3, 4, 5)]
    stepper.gate.set()
    batcher.close()
    assert [f.result(60) for f in futures] == ["3 done", "4 done", "5 done"]


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
    together = await gather_together(model, *calls)  # four take the slots, the fifth waits for one
    assert [m.content for m in together] == alone
    decodes = [t for t in traces if t.kind == "decode"]
    assert max(t.rows for t in decodes) == 4  # four slots; the fifth request joined when one left
    assert decodes[-1].rows == 1  # the longest ran alone at the end
    assert len([t for t in traces if t.kind == "prefill"]) >= 2
    assert len(decodes) < sum(budgets)
