"""Graph logic with the scripted fake model: routing, the regenerate loop, retries, parsing failures, events."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from langchain_core.messages import BaseMessage

from graph.contracts import CaptionSource, ModelInfo, Post, Relation, SourceRef
from graph.errors import TransientModelError
from graph.models.fake import FakeChatModel, prompt_kind, scripted_output
from graph.nodes import GraphConfig, GraphDeps
from graph.pipeline import MikoPipeline, PostFailed
from prompts import load_prompts

MODELS = ModelInfo(llm="fake", vision="none", verifier="llm:fake")
TWEET = "ur gonna love this!!! finally finished my first marathon # runningcommunity emoji_12 <user>"


def pipeline(llm: FakeChatModel, **config: object) -> MikoPipeline:
    deps = GraphDeps(llm=llm, prompts=load_prompts(), config=GraphConfig(**config))  # type: ignore[arg-type]
    return MikoPipeline(deps, models=MODELS, deadline_s=30)


def run(pipe: MikoPipeline, post: Post):
    return asyncio.run(pipe.process(post, SourceRef(topic="t", partition=0, offset=3)))


def test_event_has_ten_relations_in_order_with_versions_and_timings() -> None:
    event = run(pipeline(FakeChatModel()), Post(id="p1", text=TWEET))
    assert [i.relation for i in event.intentions] == list(Relation)
    assert all(i.text for i in event.intentions)
    assert event.prompt_version == load_prompts().version
    assert event.source == SourceRef(topic="t", partition=0, offset=3)
    assert {"extract", "generate", "verify", "total"} <= set(event.timings_ms)
    assert "caption" not in event.timings_ms, "caption is skipped without image or caption"
    assert event.caption_source == CaptionSource.NONE
    assert "#" not in event.text and "<user>" not in event.text
    assert event.key_info.keywords


def test_provided_caption_is_passed_through() -> None:
    event = run(pipeline(FakeChatModel()), Post(id="p2", text="look", caption="A dog on a beach."))
    assert event.caption == "A dog on a beach."
    assert event.caption_source == CaptionSource.PROVIDED
    assert "caption" in event.timings_ms


def judge_rejecting(relation_stem: str, *, always: bool) -> FakeChatModel:
    """A fake whose judge says no to one relation (always, or only on the first round)."""
    seen: dict[str, int] = {}

    def script(messages: Sequence[BaseMessage]) -> str:
        text = "\n".join(str(m.content) for m in messages)
        if prompt_kind(messages) != "verify":
            return scripted_output(messages)
        if relation_stem in text:
            seen[relation_stem] = seen.get(relation_stem, 0) + 1
            return "no" if always or seen[relation_stem] == 1 else "yes"
        return "yes"

    return FakeChatModel(script=script)


def test_rejected_relation_is_regenerated_then_accepted() -> None:
    event = run(pipeline(judge_rejecting("the user needs to", always=False)), Post(id="p3", text=TWEET))
    need = next(i for i in event.intentions if i.relation == Relation.X_NEED)
    assert need.verified and need.attempts == 2
    assert all(i.verified for i in event.intentions)
    assert event.status == "ok"


def test_regenerate_loop_is_bounded() -> None:
    event = run(pipeline(judge_rejecting("the user needs to", always=True), max_rounds=2), Post(id="p4", text=TWEET))
    need = next(i for i in event.intentions if i.relation == Relation.X_NEED)
    assert not need.verified and need.attempts == 3
    assert need.text, "the best rejected attempt is still reported"


def test_transient_errors_are_retried() -> None:
    llm = FakeChatModel(errors=[TransientModelError("503"), TransientModelError("503")])
    event = run(pipeline(llm), Post(id="p5", text=TWEET))
    assert len(event.intentions) == 10


def test_permanent_error_fails_the_post() -> None:
    llm = FakeChatModel(errors=[ValueError("model exploded")])
    with pytest.raises(PostFailed) as caught:
        run(pipeline(llm), Post(id="p6", text=TWEET))
    assert "model exploded" in str(caught.value)


def test_unparsable_output_is_marked_not_fatal() -> None:
    def script(messages: Sequence[BaseMessage]) -> str:
        return "!!!" if prompt_kind(messages) in ("extract", "generate") else scripted_output(messages)

    event = run(pipeline(FakeChatModel(script=script), max_rounds=0), Post(id="p7", text=TWEET))
    assert event.parse_failures >= 10
    assert event.status == "partial"
    assert all(i.parse_failed and not i.verified for i in event.intentions)
    assert event.key_info.keywords, "keywords fall back to the text"


def test_heuristic_and_no_verifier_modes() -> None:
    heuristic = run(pipeline(FakeChatModel(), verifier="heuristic"), Post(id="p8", text=TWEET))
    assert all(i.score is not None for i in heuristic.intentions)
    unverified = run(pipeline(FakeChatModel(), verifier="none"), Post(id="p9", text=TWEET))
    assert all(i.verified and i.score is None for i in unverified.intentions)
