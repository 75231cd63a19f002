"""Graph logic with the scripted fake model: routing, the regenerate loop, retries, parsing failures, events."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import structlog
from langchain_core.messages import BaseMessage
from langgraph.types import RetryPolicy
from pydantic import Field

import graph.pipeline
from graph.builder import BatchNode, build_graph
from graph.contracts import CaptionSource, ModelInfo, Post, Relation, SourceRef
from graph.errors import TransientModelError
from graph.models.fake import FakeChatModel, prompt_kind, scripted_output
from graph.nodes import GraphConfig, GraphDeps, MikoNodes
from graph.pipeline import MikoPipeline, PostFailed
from graph.state import BatchState, NodeFailure, PostState
from prompts import load_prompts

MODELS = ModelInfo(llm="fake", vision="none", verifier="llm:fake")
TWEET = "ur gonna love this!!! finally finished my first marathon # runningcommunity emoji_12 <user>"


def pipeline(llm: FakeChatModel, batch_size: int = 64, **config: object) -> MikoPipeline:
    deps = GraphDeps(llm=llm, prompts=load_prompts(), config=GraphConfig(**config))  # type: ignore[arg-type]
    return MikoPipeline(deps, models=MODELS, deadline_s=30, batch_size=batch_size)


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


def run_together(pipe: MikoPipeline, posts: Sequence[Post]) -> list[object]:
    """Posts handed over in one event-loop turn, as one Kafka fetch does: they share a graph run."""

    async def main() -> list[object]:
        return await asyncio.gather(*(pipe.process(post) for post in posts), return_exceptions=True)

    return asyncio.run(main())


class FailingFor(FakeChatModel):
    """Fails calls whose prompt mentions ``marker``: always, or with a transient error ``transient`` times."""

    marker: str = "poison"
    transient: int | None = None

    async def acomplete(self, conversations, stop=None, **kwargs):  # type: ignore[no-untyped-def]
        if any(self.marker in str(m.content) for c in conversations for m in c):
            if self.transient is None:
                raise ValueError("this post breaks the model")
            if self.transient > 0:
                self.transient -= 1
                raise TransientModelError("503 for this post")
        return await super().acomplete(conversations, stop, **kwargs)


def test_a_failing_post_fails_alone_and_its_batch_goes_on() -> None:
    pipe = pipeline(FailingFor())
    posts = [Post(id=f"ok{i}", text=f"{TWEET} number {i}") for i in range(5)]
    posts.insert(2, Post(id="bad", text="a poison post"))
    results = run_together(pipe, posts)
    failed = results[2]
    assert isinstance(failed, PostFailed) and "breaks the model" in str(failed)
    assert failed.attempts == 1, "a permanent error is not retried"
    events = [r for i, r in enumerate(results) if i != 2]
    assert [e.post_id for e in events] == [p.id for i, p in enumerate(posts) if i != 2]  # type: ignore[union-attr]
    assert all(len(e.intentions) == 10 for e in events)  # type: ignore[union-attr]


def test_transient_errors_are_retried_per_post_inside_a_batch() -> None:
    llm = FailingFor(transient=2)
    results = run_together(pipeline(llm), [Post(id="a", text=TWEET), Post(id="b", text="poison but fine")])
    assert [r.post_id for r in results] == ["a", "b"]  # type: ignore[union-attr]


def test_posts_of_one_turn_share_a_graph_run_and_keep_their_own_timings() -> None:
    pipe = pipeline(FakeChatModel(latency_ms=5), batch_size=4)
    runs: list[int] = []
    original = pipe._start_run

    def counting(waiters, states, resume=None):  # type: ignore[no-untyped-def]
        runs.append(len(waiters))
        original(waiters, states, resume)

    pipe._start_run = counting  # type: ignore[method-assign]
    posts = [Post(id=f"p{i}", text=f"{TWEET} {i}") for i in range(6)]
    events = run_together(pipe, posts)
    assert runs[:2] == [4, 2], "more runs only for detached stragglers"
    for event in events:
        assert {"extract", "generate", "verify", "total"} <= set(event.timings_ms)  # type: ignore[union-attr]
        assert event.timings_ms["extract"] >= 5  # type: ignore[union-attr]


def test_a_finished_post_leaves_its_batch_before_the_others_regenerate() -> None:
    """p-slow has a relation rejected every round; p-fast is all accepted at once and must not wait."""
    slow_marker = "slowpoke"

    def script(messages: Sequence[BaseMessage]) -> str:
        text = "\n".join(str(m.content) for m in messages)
        if prompt_kind(messages) == "verify":
            return "no" if slow_marker in text and "needs to" in text else "yes"
        return scripted_output(messages)

    fast_out = asyncio.Event()
    verified: set[str] = set()
    held: list[int] = []

    class SlowSecondRound(FakeChatModel):
        """Holds p-slow's work after the first verification until p-fast is out: if p-fast waited for
        p-slow's second round, the test would hang."""

        async def _hold(self, conversations: Sequence[Sequence[BaseMessage]]) -> None:
            if verified and any(slow_marker in str(m.content) for c in conversations for m in c):
                held.append(len(conversations))
                await fast_out.wait()

        async def acomplete(self, conversations, stop=None, **kwargs):  # type: ignore[no-untyped-def]
            await self._hold(conversations)
            return await super().acomplete(conversations, stop, **kwargs)

        async def ayes_probability(self, conversations):  # type: ignore[no-untyped-def]
            await self._hold(conversations)
            verified.add("first round")
            return await super().ayes_probability(conversations)

    pipe = pipeline(SlowSecondRound(script=script), max_rounds=2)
    finished: list[str] = []

    async def main() -> None:
        async def one(post: Post) -> None:
            await pipe.process(post)
            finished.append(post.id)
            fast_out.set()

        both = one(Post(id="fast", text=TWEET)), one(Post(id="slow", text=f"{TWEET} {slow_marker}"))
        await asyncio.wait_for(asyncio.gather(*both), 120)  # a hang here: p-fast waited for p-slow's rounds

    asyncio.run(main())
    assert finished == ["fast", "slow"] and held, "p-slow went on after p-fast was out"


class HangingFor(FakeChatModel):
    """Never answers a prompt that mentions ``marker``."""

    marker: str = "stuck"

    async def acomplete(self, conversations, stop=None, **kwargs):  # type: ignore[no-untyped-def]
        if any(self.marker in str(m.content) for c in conversations for m in c):
            await asyncio.Event().wait()
        return await super().acomplete(conversations, stop, **kwargs)


def test_a_hanging_post_hits_its_deadline_alone() -> None:
    deps = GraphDeps(llm=HangingFor(), prompts=load_prompts())
    # The deadline is what the hanging post meets; 5 s leaves a loaded machine room to finish the other two.
    pipe = MikoPipeline(deps, models=MODELS, deadline_s=5)
    results = run_together(pipe, [Post(id="a", text=TWEET), Post(id="b", text="stuck here"), Post(id="c", text="hi")])
    assert isinstance(results[1], PostFailed) and "deadline" in str(results[1])
    assert [r.post_id for r in (results[0], results[2])] == ["a", "c"]  # type: ignore[union-attr]


def test_a_step_with_no_post_to_work_on_passes_the_batch_through() -> None:
    """Every post of the run already failed (or left): each node passes the batch on unchanged."""
    deps = GraphDeps(llm=FakeChatModel(), prompts=load_prompts())
    failed: PostState = {"post": Post(id="x", text=TWEET), "failure": NodeFailure("extract", ValueError("x"), 1)}
    detached: PostState = {"post": Post(id="y", text=TWEET), "detached": True}
    batch: BatchState = {"posts": [failed, detached]}
    node = BatchNode("generate", MikoNodes(deps).generate, lambda state: True, RetryPolicy())

    assert asyncio.run(node.run_batch(batch, {})) == {}
    final = asyncio.run(build_graph(deps).ainvoke(batch))
    assert final["posts"] == [failed, detached]


def test_posts_that_all_hang_fail_at_their_deadline_together() -> None:
    deps = GraphDeps(llm=HangingFor(), prompts=load_prompts())
    pipe = MikoPipeline(deps, models=MODELS, deadline_s=0.3)
    results = run_together(pipe, [Post(id="a", text="stuck one"), Post(id="b", text="stuck two")])
    assert all(isinstance(r, PostFailed) and "deadline" in str(r) for r in results)


def test_without_a_pipeline_a_hanging_post_fails_at_its_deadline_and_the_others_finish() -> None:
    """The graph on its own (no straggler hand-off): the step waits for each post up to that post's deadline."""
    deps = GraphDeps(llm=HangingFor(), prompts=load_prompts())

    async def main() -> BatchState:
        now = asyncio.get_running_loop().time()
        posts: list[PostState] = [
            {"post": Post(id="ok", text=TWEET), "deadline": now + 120},
            {"post": Post(id="stuck", text="stuck here"), "deadline": now + 0.3},
        ]
        return await build_graph(deps).ainvoke({"posts": posts})

    ok, stuck = asyncio.run(main())["posts"]
    assert stuck["failure"].deadline and stuck["failure"].node == "extract"
    assert "failure" not in ok and len(ok["intentions"]) == len(Relation)


class RecordingContext(FakeChatModel):
    """Notes the structlog context (post_id) each model call runs in."""

    seen: list[str] = Field(default_factory=list)

    async def acomplete(self, conversations, stop=None, **kwargs):  # type: ignore[no-untyped-def]
        self.seen.append(structlog.contextvars.get_contextvars().get("post_id", "?"))
        return await super().acomplete(conversations, stop, **kwargs)


def test_node_calls_log_with_their_own_post_id() -> None:
    llm = RecordingContext()
    run_together(pipeline(llm), [Post(id=f"p{i}", text=f"{TWEET} {i}") for i in range(3)])
    assert set(llm.seen) == {"p0", "p1", "p2"}
    assert llm.seen.count("p0") >= 2, "extract and generate at least"


class RecordingLog:
    """Stands in for graph.pipeline's logger (structlog may cache its loggers, so capture_logs can miss them)."""

    def __init__(self) -> None:
        self.lines: list[dict[str, object]] = []

    def info(self, event: str, **fields: object) -> None:
        self.lines.append({"event": event, **fields})

    warning = info


def test_post_done_and_post_failed_lines_name_their_post(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = RecordingLog()
    monkeypatch.setattr(graph.pipeline, "log", recorder)
    run_together(pipeline(FailingFor()), [Post(id="ok", text=TWEET), Post(id="bad", text="a poison post")])
    lines = {(line["event"], line.get("post_id")) for line in recorder.lines}
    assert {("post_done", "ok"), ("post_failed", "bad")} <= lines
    assert all(line.get("trace_id") for line in recorder.lines)
