"""The local runtime and its continuous batcher, on a tiny random-weight Llama built offline in the test
(``tiny_model_dir``: :func:`helpers.models.save_tiny_model`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from helpers.models import gather_together
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from graph.models.base import YesNoScorer
from graph.models.local import LocalChatModel, ModelLoadError, PromptTooLongError, chat_turns
from graph.models.registry import LLMConfig, build_chat_model, describe_llm

STEM = "After posting this, the user wants to"


pytestmark = pytest.mark.usefixtures("fresh_local_engines")


def build(folder: Path, tmp_path: Path, **config: object) -> LocalChatModel:
    model = build_chat_model(f"hf:{folder}", LLMConfig(cache_dir=tmp_path, **config))  # type: ignore[arg-type]
    assert isinstance(model, LocalChatModel)
    return model


def prompt(i: int, words: int = 3) -> list[BaseMessage]:
    post = " ".join(["marathon", "race", "friends", "happy"][j % 4] for j in range(words + i))
    return [SystemMessage("Complete the sentence."), HumanMessage(f"Post: {post}"), AIMessage(STEM)]


async def test_concurrent_calls_coalesce_into_few_generate_calls(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = build(tiny_model_dir, tmp_path, max_batch_size=16, max_wait_ms=150)
    answers = await gather_together(model, *(model.ainvoke(prompt(i), max_tokens=6) for i in range(12)))
    engine = model.handle.engine
    assert engine.generate_calls == 1
    assert model.handle.batcher.stats.largest_batch == 12
    assert all(isinstance(a.content, str) for a in answers)
    assert describe_llm(model) == f"hf:{tiny_model_dir}"


async def test_batched_greedy_equals_unbatched_with_left_padding(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = build(tiny_model_dir, tmp_path, max_batch_size=16, max_wait_ms=150)
    prompts = [prompt(i, words=1 + 3 * i) for i in range(5)]  # different lengths -> padding
    alone = [(await model.ainvoke(p, max_tokens=8)).content for p in prompts]
    assert model.handle.engine.generate_calls == 5
    [replies] = await gather_together(model, model.acomplete(prompts, max_tokens=8), requests=len(prompts))
    together = [reply.text for reply in replies]
    assert model.handle.engine.generate_calls == 6  # all five in one admission: rows of different lengths
    assert together == alone
    assert len(set(alone)) > 1


async def test_per_request_budget_and_stop_strings(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = build(tiny_model_dir, tmp_path, max_batch_size=16, max_wait_ms=150)
    full = (await model.ainvoke(prompt(0), max_tokens=12)).content
    stop = full.strip()[2:5]
    expected = full[: full.find(stop)]
    budgets = [1, 3, 7, 12]
    results = await gather_together(
        model,
        *(model.ainvoke(prompt(0), max_tokens=b) for b in budgets),
        model.bind(stop=[stop], max_tokens=12).ainvoke(prompt(0)),
    )
    assert model.handle.engine.generate_calls == 2  # the reference call, then one batch
    for budget, result in zip(budgets, results, strict=False):
        used = result.usage_metadata["output_tokens"]
        assert used <= budget
        assert result.response_metadata["finish_reason"] == ("length" if used == budget else "stop")
        assert full.startswith(result.content)
    assert results[-1].content == expected
    assert results[-1].response_metadata["finish_reason"] == "stop"


async def test_prefill_is_continued_not_repeated(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = build(tiny_model_dir, tmp_path)
    engine = model.handle.engine
    rendered = engine.tokenizer.decode(engine.render(chat_turns(prompt(0))))
    assert rendered.endswith(STEM)  # no end-of-turn after the prefill: the model continues it
    plain = engine.tokenizer.decode(engine.render(chat_turns(prompt(0)[:2])))
    assert plain.strip().endswith("assistant")  # the generation prompt opens a new turn
    empty_prefill = engine.tokenizer.decode(engine.render(chat_turns([*prompt(0)[:2], AIMessage("")])))
    assert empty_prefill == plain
    answer = await model.ainvoke(prompt(0), max_tokens=5)
    assert not answer.content.strip().startswith(STEM)
    assert answer.usage_metadata["input_tokens"] == len(engine.render(chat_turns(prompt(0))))


async def test_a_bad_request_fails_only_itself(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    model = build(tiny_model_dir, tmp_path, max_batch_size=16, max_wait_ms=150)
    engine = model.handle.engine
    too_long = [HumanMessage(" ".join(["marathon"] * 400))]
    poison_id = engine.tokenizer.unk_token_id
    real_forward = engine.model.forward

    def forward_refusing_unknown_tokens(*args: object, **kwargs: torch.Tensor) -> object:
        if bool((kwargs["input_ids"] == poison_id).any()):
            raise RuntimeError("kernel failure on this row")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", forward_refusing_unknown_tokens)
    outcomes = await asyncio.gather(
        model.ainvoke(prompt(0), max_tokens=4),
        model.ainvoke(too_long, max_tokens=4),
        model.ainvoke([HumanMessage("§§§ unknown symbols")], max_tokens=4),
        model.ainvoke(prompt(1), max_tokens=4),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], AIMessage) and isinstance(outcomes[3], AIMessage)
    assert isinstance(outcomes[1], PromptTooLongError)
    assert isinstance(outcomes[2], RuntimeError)
    assert model.handle.batcher.stats.failed == 2


async def test_yes_probability_from_logits_in_the_same_batches(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = build(tiny_model_dir, tmp_path, max_batch_size=16, max_wait_ms=150)
    assert isinstance(model, YesNoScorer)
    questions = [[SystemMessage("Answer yes or no."), HumanMessage(f"Post: happy race {i}?")] for i in range(4)]
    alone = [(await model.ayes_probability([q]))[0] for q in questions]
    batches_before = model.handle.batcher.stats.batches
    together, answers = await gather_together(
        model, model.ayes_probability(questions), model.abatch([prompt(0), prompt(1)], max_tokens=3), requests=6
    )
    # scoring and generation shared a batch (the other one is gather_together's holding pass)
    assert model.handle.batcher.stats.batches == batches_before + 2
    assert all(p is not None and 0.0 <= p <= 1.0 for p in together)
    assert together == pytest.approx(alone, abs=1e-5)
    assert len(answers) == 2


async def test_temperature_groups_and_sync_invoke(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = build(tiny_model_dir, tmp_path, max_batch_size=16, max_wait_ms=150)
    greedy, sampled = await gather_together(
        model, model.ainvoke(prompt(0), max_tokens=4), model.ainvoke(prompt(0), max_tokens=4, temperature=0.8)
    )
    # greedy and sampled rows share one prompt pass and the decoding steps (sampling is per row)
    assert model.handle.engine.generate_calls == 1
    assert sampled.usage_metadata["output_tokens"] <= 4
    assert model.invoke(prompt(0), max_tokens=4).content == greedy.content


def test_models_of_one_spec_share_one_engine(tiny_model_dir: Path, tmp_path: Path) -> None:
    first = build(tiny_model_dir, tmp_path)
    second = build(tiny_model_dir, tmp_path, max_new_tokens=5)
    assert first.handle is second.handle
    assert second.max_new_tokens == 5


def test_a_missing_model_is_a_clear_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load local model") as caught:
        build_chat_model(f"hf:{tmp_path / 'no-such-model'}", LLMConfig(cache_dir=tmp_path))
    assert isinstance(caught.value, OSError)  # the CLI reports OSErrors as "cannot load the model"
