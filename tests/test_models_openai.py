"""The OpenAI-compatible backend against a stub chat-completions server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.http import ChatServer, serve_chat
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from graph.models.base import YesNoScorer
from graph.models.openai_backend import OpenAICompatibleChatModel, yes_probability_from_logprobs
from graph.models.registry import LLMConfig, build_chat_model, describe_llm


@pytest.fixture
def stub() -> Iterator[tuple[str, ChatServer]]:
    with serve_chat() as server:
        yield f"{server.url}/v1", server


def build(url: str, tmp_path: Path, **config: Any) -> OpenAICompatibleChatModel:
    model = build_chat_model(f"openai:tiny-model@{url}", LLMConfig(cache_dir=tmp_path, **config))
    assert isinstance(model, OpenAICompatibleChatModel)
    return model


async def test_completion_text_and_call_options(stub: tuple[str, ChatServer], tmp_path: Path) -> None:
    url, state = stub
    model = build(url, tmp_path, max_new_tokens=24)
    answer = await model.bind(stop=["\n"], max_tokens=7).ainvoke([SystemMessage("s"), HumanMessage("hello")])
    assert answer.content == "echo hello"
    sent = state.requests[-1]
    assert sent["model"] == "tiny-model" and sent["stop"] == ["\n"] and sent["max_tokens"] == 7
    assert "max_completion_tokens" not in sent
    await model.ainvoke([HumanMessage("x")], max_new_tokens=3)
    assert state.requests[-1]["max_tokens"] == 3
    assert model.invoke([HumanMessage("sync")]).content == "echo sync"
    assert describe_llm(model) == f"openai:tiny-model@{url}"


async def test_many_requests_in_flight_but_bounded(stub: tuple[str, ChatServer], tmp_path: Path) -> None:
    url, state = stub
    state.hold_until_in_flight = 2  # requests wait until two meet: concurrency without a clock
    model = build(url, tmp_path, max_concurrency=4)
    answers = await model.abatch([[HumanMessage(f"m{i}")] for i in range(16)], config={"max_concurrency": 16})
    assert [a.content for a in answers] == [f"echo m{i}" for i in range(16)]
    assert 1 < state.max_in_flight <= 4


async def test_prefill_is_sent_as_the_last_assistant_message(stub: tuple[str, ChatServer], tmp_path: Path) -> None:
    url, state = stub
    stem = "After posting this, the user wants to"
    plain = build(url, tmp_path)
    await plain.ainvoke([HumanMessage("post"), AIMessage(stem)])
    assert state.requests[-1]["messages"][-1] == {"role": "assistant", "content": stem}
    assert "continue_final_message" not in state.requests[-1]
    vllm = build(url, tmp_path, openai_continue_final_message=True)
    await vllm.ainvoke([HumanMessage("post"), AIMessage(stem)])
    assert state.requests[-1]["continue_final_message"] is True
    assert state.requests[-1]["add_generation_prompt"] is False
    await vllm.ainvoke([HumanMessage("post"), AIMessage("")])  # an empty prefill is no prefill
    assert state.requests[-1]["messages"][-1]["role"] == "user"
    assert "continue_final_message" not in state.requests[-1]


async def test_yes_probability_from_logprobs(stub: tuple[str, ChatServer], tmp_path: Path) -> None:
    url, state = stub
    model = build(url, tmp_path)
    assert isinstance(model, YesNoScorer)
    question = [SystemMessage("Answer yes or no."), HumanMessage("Is it plausible?")]
    probabilities = await model.ayes_probability([question, question])
    assert probabilities == pytest.approx([0.7 / 0.9, 0.7 / 0.9])
    sent = state.requests[-1]
    assert sent["logprobs"] is True and sent["top_logprobs"] == 10 and sent["max_tokens"] == 1
    assert model.logprobs_offered is True


async def test_no_logprobs_means_none_and_no_more_asking(stub: tuple[str, ChatServer], tmp_path: Path) -> None:
    url, state = stub
    state.offer_logprobs = False
    model = build(url, tmp_path)
    question = [HumanMessage("Is it plausible? Answer yes or no.")]
    assert await model.ayes_probability([question]) == [None]
    asked = len(state.requests)
    assert await model.ayes_probability([question, question]) == [None, None]
    assert len(state.requests) == asked
    assert model.logprobs_offered is False


def test_yes_probability_parsing_edge_cases() -> None:
    assert yes_probability_from_logprobs(None) is None
    assert yes_probability_from_logprobs({"content": []}) is None
    only_other = {
        "content": [{"token": "Maybe", "logprob": -0.1, "top_logprobs": [{"token": "Maybe", "logprob": -0.1}]}]
    }
    assert yes_probability_from_logprobs(only_other) is None
    no_top = {"content": [{"token": "No", "logprob": -0.5, "top_logprobs": []}]}
    assert yes_probability_from_logprobs(no_top) == 0.0


async def test_models_on_different_event_loops(stub: tuple[str, ChatServer], tmp_path: Path) -> None:
    url, _ = stub
    model = build(url, tmp_path)
    assert (await model.ainvoke([HumanMessage("a")])).content == "echo a"
    other = await asyncio.to_thread(lambda: asyncio.run(build(url, tmp_path).ainvoke([HumanMessage("b")])))
    assert other.content == "echo b"
