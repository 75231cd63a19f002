"""The fake backend: deterministic scripted output per prompt kind, latency, test hooks, yes/no scoring."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from graph.models.base import ModelSpecError, YesNoScorer
from graph.models.fake import FakeChatModel, prompt_kind
from graph.models.registry import LLMConfig, build_chat_model, describe_llm
from graph.models.spec import LLMSpec, call_options, parse_llm_spec
from prompts import load_prompts

POST = "Just finished my first marathon!!! legs are dead but so happy #running"
KEY_INFO = dict(concept="marathon", action="finishing", object="race", emotion="joy", keywords="running, marathon")
ROLE = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}


def conversation(template: str, **values: str) -> list[BaseMessage]:
    rendered = load_prompts().templates[template].render(text=POST, caption="none", **values)
    return [ROLE[role](text) for role, text in rendered]


def generate_prompt(relation_index: int, post: str = POST) -> list[BaseMessage]:
    relation = load_prompts().relations[relation_index]
    rendered = (
        load_prompts()
        .templates["generate"]
        .render(text=post, caption="none", stem=relation.stem, hint=relation.hint, **KEY_INFO)
    )
    return [ROLE[role](text) for role, text in rendered]


def verify_prompt(statement: str) -> list[BaseMessage]:
    return conversation("verify", statement=statement)


@pytest.fixture
def model(tmp_path: Path) -> FakeChatModel:
    built = build_chat_model("fake", LLMConfig(cache_dir=tmp_path))
    assert isinstance(built, FakeChatModel)
    return built


def test_spec_parsing() -> None:
    assert parse_llm_spec("fake") == LLMSpec("fake")
    assert parse_llm_spec("fake:250") == LLMSpec("fake", latency_ms=250.0)
    assert parse_llm_spec("smollm2") == LLMSpec("smollm2")
    assert parse_llm_spec("hf:/models/tiny") == LLMSpec("hf", target="/models/tiny")
    assert parse_llm_spec("openai:Qwen/Qwen2.5-7B@http://127.0.0.1:8000/v1") == LLMSpec(
        "openai", target="Qwen/Qwen2.5-7B", base_url="http://127.0.0.1:8000/v1"
    )
    openai = LLMSpec("openai", target="gpt-4o-mini", base_url="https://api.openai.com/v1")
    assert parse_llm_spec("openai:gpt-4o-mini@https://api.openai.com/v1") == openai
    assert str(parse_llm_spec("openai:m@https://h/v1")) == "openai:m@https://h/v1"
    bad_specs = ("llama", "fake:abc", "fake:-1", "hf:", "openai:", "openai:gpt-4o", "openai:m@ftp://x", "smollm2:big")
    for bad in bad_specs:
        with pytest.raises(ModelSpecError, match="Accepted forms"):
            parse_llm_spec(bad)


def test_call_options_read_bind_and_kwargs() -> None:
    options = call_options(["\n"], {"max_tokens": 5}, max_new_tokens=24, temperature=0.0)
    assert (options.max_new_tokens, options.stop, options.temperature) == (5, ("\n",), 0.0)
    options = call_options(
        None, {"max_new_tokens": 7, "stop": [".", ""], "temperature": 0.7}, max_new_tokens=24, temperature=0.0
    )
    assert (options.max_new_tokens, options.stop, options.temperature) == (7, (".",), 0.7)
    assert call_options(None, {}, max_new_tokens=24, temperature=0.2).max_new_tokens == 24


def test_prompt_kinds_are_detected_from_the_project_templates() -> None:
    assert prompt_kind(conversation("extract")) == "extract"
    assert prompt_kind(generate_prompt(0)) == "generate"
    assert prompt_kind(verify_prompt("After posting this, the user feels proud.")) == "verify"
    assert prompt_kind([HumanMessage("hello")]) == "other"


async def test_extract_answers_five_lines_from_post_words(model: FakeChatModel) -> None:
    answer = (await model.ainvoke(conversation("extract"), max_tokens=80)).content
    lines = answer.splitlines()
    assert [line.split(":")[0] for line in lines] == ["concept", "action", "object", "emotion", "keywords"]
    assert "marathon" in answer
    assert answer == (await model.ainvoke(conversation("extract"), max_tokens=80)).content


async def test_generate_continues_the_stem_and_varies_by_relation_and_post(model: FakeChatModel) -> None:
    answers = [m.content for m in await model.abatch([generate_prompt(i) for i in range(10)])]
    assert all(a.startswith(" ") and a.strip() for a in answers)  # a continuation of the prefill
    assert len(set(answers)) >= 8
    other = [m.content for m in await model.abatch([generate_prompt(i, "my cat stole my sandwich") for i in range(10)])]
    assert other != answers
    assert answers == [m.content for m in await model.abatch([generate_prompt(i) for i in range(10)])]


async def test_stop_and_max_tokens_apply(model: FakeChatModel) -> None:
    full = (await model.ainvoke(conversation("extract"), max_tokens=80)).content
    cut = await model.bind(stop=["\n"], max_tokens=80).ainvoke(conversation("extract"))
    assert cut.content == full.splitlines()[0]
    short = await model.ainvoke(conversation("extract"), max_tokens=2)
    assert len(short.content.split()) == 2
    assert short.response_metadata["finish_reason"] == "length"


async def test_verify_text_and_yes_probability_agree(model: FakeChatModel) -> None:
    assert isinstance(model, YesNoScorer)
    statements = [f"After posting this, the user wants to do thing {i}." for i in range(40)]
    probabilities = await model.ayes_probability([verify_prompt(s) for s in statements])
    assert all(p is not None and 0.0 <= p <= 1.0 for p in probabilities)
    assert sum(p > 0.5 for p in probabilities) >= 28  # mostly high
    texts = [m.content for m in await model.abatch([verify_prompt(s) for s in statements])]
    assert texts == ["yes" if p >= 0.5 else "no" for p in probabilities]
    assert probabilities == await model.ayes_probability([verify_prompt(s) for s in statements])


async def test_latency_is_async_so_calls_overlap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call's latency is an asyncio sleep, all twenty sleep at once: the sleeps wait for each other (a
    barrier), which only completes if the calls overlap (no clock involved)."""
    model = build_chat_model("fake:200", LLMConfig(cache_dir=tmp_path))
    sleeping, everyone = [], asyncio.Event()

    async def barrier_sleep(seconds: float) -> None:
        sleeping.append(seconds)
        if len(sleeping) == 20:
            everyone.set()
        await asyncio.wait_for(everyone.wait(), 30)

    monkeypatch.setattr("graph.models.fake.asyncio.sleep", barrier_sleep)
    await asyncio.gather(*(model.ainvoke([HumanMessage(f"hi {i}")]) for i in range(20)))
    assert sleeping == [0.2] * 20, "each call slept its latency, and they slept together"
    assert describe_llm(model) == "fake:200"


async def test_script_and_errors_hooks() -> None:
    model = FakeChatModel(
        script=lambda messages: "scripted: " + messages[-1].content,
        errors=[TimeoutError("slow"), ValueError("bad")],
    )
    with pytest.raises(TimeoutError):
        await model.ainvoke([HumanMessage("a")])
    with pytest.raises(ValueError):
        model.invoke([HumanMessage("b")])
    assert (await model.ainvoke([HumanMessage("c")])).content == "scripted: c"
    assert model.calls == 3


def test_sync_invoke_matches_async(model: FakeChatModel) -> None:
    sync = model.invoke(generate_prompt(3)).content
    assert sync == asyncio.run(model.ainvoke(generate_prompt(3))).content


def test_word_budget_counts_words_as_the_cut_does() -> None:
    """The fake's token budget: a text within it is untouched, a longer one is cut after that many words."""
    from graph.models.fake import apply_call_options
    from graph.models.spec import CallOptions

    options = CallOptions(max_new_tokens=3, stop=(), temperature=0.0)
    assert apply_call_options(" one\u2003two\u00a0three ", options) == (" one\u2003two\u00a0three ", "stop")
    assert apply_call_options("one two\u2028three four", options) == ("one two\u2028three", "length")


def test_post_line_is_found_as_splitlines_cuts_lines() -> None:
    import random

    from graph.models.fake import _post_text

    def reference(messages: list[BaseMessage]) -> str:
        for message in messages:
            for line in str(message.content).splitlines():
                if line.startswith("Post:"):
                    return line[len("Post:") :].strip()
        return str(messages[-1].content)

    rng = random.Random(3)
    pieces = ["Post:", " hi", "\n", "\r", "\r\n", "\u2028", "\x0b", "x", "Post: a", "\x85", " "]
    for _ in range(2000):
        system = "".join(rng.choices(pieces, k=rng.randint(0, 6)))
        user = "".join(rng.choices(pieces, k=rng.randint(0, 8)))
        messages: list[BaseMessage] = [SystemMessage(content=system), HumanMessage(content=user)]
        assert _post_text(messages) == reference(messages), (system, user)
