"""Shared-prefix prefill: the plan, the LRU prefix cache, and equality with the unshared computation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.models import gather_together
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from graph.models.local import LocalChatModel
from graph.models.local.engine import CallTrace, LocalEngine
from graph.models.local.prefill import length_chunks
from graph.models.local.prefix import CachedPrefix, PrefixCache, SharingPolicy, plan_prefixes
from graph.models.registry import LLMConfig, build_chat_model

STEMS = ["After posting this, the user wants to", "The user posted this because the user is", "Yes no"]


pytestmark = pytest.mark.usefixtures("fresh_local_engines")


def build(folder: Path, tmp_path: Path, local_dtype: str = "auto") -> LocalChatModel:
    config = LLMConfig(cache_dir=tmp_path, max_batch_size=32, max_wait_ms=200, local_dtype=local_dtype)  # type: ignore[arg-type]
    model = build_chat_model(f"hf:{folder}", config)
    assert isinstance(model, LocalChatModel)
    return model


def post_prompts(post: str) -> list[list[BaseMessage]]:
    """Like the generate node: one long shared start per post, a different stem at the end."""
    return [
        [SystemMessage("Complete the sentence."), HumanMessage(f"Post: {post}\nComplete: {stem}"), AIMessage(stem)]
        for stem in STEMS
    ]


def kv(length: int, width: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.zeros(1, 1, length, width), torch.zeros(1, 1, length, width))]


def test_rows_of_one_post_form_a_group_and_keep_a_suffix() -> None:
    post_a = list(range(100, 140))
    post_b = list(range(100, 105)) + list(range(200, 235))  # shares only a 5-token "system prompt" with a
    rows = [[*post_a, 1], [*post_b, 1, 2], [*post_a, 2, 3], [*post_b, 3], [*post_a]]
    plan = plan_prefixes(rows, SharingPolicy(min_tokens=4, min_ratio=0.5))
    assert plan.group_of[0] == plan.group_of[2] == plan.group_of[4] != plan.group_of[1] == plan.group_of[3]
    assert plan.prefixes[plan.group_of[0]] == post_a[:-1]  # the row equal to the prefix keeps one token
    assert plan.prefixes[plan.group_of[1]] == post_b
    for row, group, suffix in zip(rows, plan.group_of, plan.suffixes, strict=True):
        assert plan.prefixes[group] + suffix == row and suffix
    assert plan.group_sizes() == [3, 2] or plan.group_sizes() == [2, 3]


def test_unrelated_rows_are_not_grouped() -> None:
    plan = plan_prefixes([[1, 2, 3, 4], [1, 2, 9, 9]], SharingPolicy(min_tokens=3))
    assert plan.group_sizes() == [1, 1]


def test_length_chunks_bound_padding() -> None:
    lengths = [200, 198, 30, 190, 33, 1, 35, 120]
    chunks = length_chunks(lengths, max_padding=0.1)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    for chunk in chunks:
        width = max(lengths[i] for i in chunk)
        padding = sum(width - lengths[i] for i in chunk)
        assert padding <= 0.1 * width * len(chunk) + 4 * len(chunk)
    assert chunks[0][:3] == [0, 1, 3] and [5] in chunks  # the long ones together, the one-token row alone


def test_prefix_cache_finds_the_longest_prefix_and_evicts_least_recent() -> None:
    entry_bytes = CachedPrefix((1,), kv(1)).nbytes
    cache = PrefixCache(max_bytes=entry_bytes * 6)
    cache.put(CachedPrefix((1, 2), kv(2)))
    cache.put(CachedPrefix((1, 2, 3), kv(3)))
    found = cache.longest([1, 2, 3, 4])
    assert found is not None and found.tokens == (1, 2, 3)
    found = cache.longest([1, 2, 3])  # must leave a token to run
    assert found is not None and found.tokens == (1, 2)
    assert cache.longest([2, 2, 3, 4]) is None
    cache.put(CachedPrefix((7, 7), kv(2)))  # over budget: (1, 2, 3) was used least recently
    assert cache.longest([1, 2, 3, 4]).tokens == (1, 2)  # type: ignore[union-attr]
    assert cache.stats.evicted == 1 and cache.bytes <= cache.max_bytes
    plan = plan_prefixes([[1, 2, 5], [1, 2, 6, 6], [9, 9]], cache=cache)
    assert plan.cached[plan.group_of[0]] is not None and plan.group_of[0] == plan.group_of[1]
    assert plan.suffixes[:2] == [[5], [6, 6]]


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
async def test_shared_prefill_equals_full_prefill(dtype: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    model = build(tiny_model_dir, tmp_path, local_dtype=dtype)
    engine: LocalEngine = model.handle.engine
    traces: list[CallTrace] = []
    engine.observer = traces.append
    prompts = post_prompts("marathon race friends happy " * 3) + post_prompts("happy race")
    questions = [[*p[:2], HumanMessage("Answer yes or no.")] for p in prompts]

    async def run() -> tuple[list[str], list[float | None]]:  # every run: all rows in one pass
        calls = model.abatch(prompts, max_tokens=6), model.ayes_probability(questions)
        answers, scores = await gather_together(model, *calls, requests=len(prompts) + len(questions))
        return [a.content for a in answers], scores

    engine.sharing, cache = None, engine.prefix_cache
    engine.prefix_cache = None
    plain_answers, plain_scores = await run()
    prefills = [t for t in traces if t.kind == "prefill"]
    assert prefills and all(t.prefill_tokens == t.prompt_tokens for t in prefills)
    engine.sharing, engine.prefix_cache = SharingPolicy(min_tokens=4), cache
    traces.clear()
    shared_answers, shared_scores = await run()
    assert shared_answers == plain_answers and len(set(plain_answers)) > 1
    assert shared_scores == pytest.approx(plain_scores, abs=1e-4)
    shared = [t for t in traces if t.kind == "prefill"]
    assert sum(t.prefill_tokens for t in shared) < sum(t.prompt_tokens for t in shared)
    assert cache is not None and cache.stats.stored >= 2  # each post's prefix (questions start the same way)
    hits = cache.stats.hits
    traces.clear()
    again_answers, again_scores = await run()  # now every prefix comes from the cache
    assert again_answers == plain_answers
    assert again_scores == pytest.approx(plain_scores, abs=1e-4)
    assert cache.stats.hits - hits == len(prompts) + len(questions)
    again = [t for t in traces if t.kind == "prefill"]
    assert sum(t.prefill_tokens for t in again) <= sum(t.prefill_tokens for t in shared)


async def test_generated_tokens_stop_at_the_stop_string(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = build(tiny_model_dir, tmp_path)
    engine: LocalEngine = model.handle.engine
    traces: list[CallTrace] = []
    engine.observer = traces.append
    full = await model.ainvoke(post_prompts("happy race")[0], max_tokens=10)
    stop = full.content.strip()[:2]
    stopped = await model.bind(stop=[stop]).ainvoke(post_prompts("happy race")[0], max_tokens=10)
    assert stopped.usage_metadata["output_tokens"] < full.usage_metadata["output_tokens"]
    finished = [row.completion for t in traces for row in t.finished]
    assert finished[-1].completion_tokens == stopped.usage_metadata["output_tokens"]
