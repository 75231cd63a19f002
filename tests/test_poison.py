"""No input can crash or block processing: every record ends as exactly one event or one dead letter.

Property-based (hypothesis): arbitrary bytes, arbitrary JSON (deep, wide, huge numbers, lone surrogates, NUL)
and arbitrary post-shaped objects, through intake (:func:`graph.outcome.process_record`, what ``run`` calls
per record) and through the batch runner behind ``miko-stream process``, with the real graph on the fake model.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph.contracts import DeadLetter, IntentionEvent
from graph.intake import MAX_ID_CHARS, InputLimits
from graph.outcome import Failure, Processed, process_record
from graph.pipeline import MikoPipeline
from miko_stream.batch import BatchRunner
from miko_stream.settings import Settings
from miko_stream.wiring import build_pipeline

LIMITS = InputLimits(max_record_bytes=256 * 1024, max_text_chars=2_000)
# Examples per property; the whole module runs in well under a minute on a shared 2-core machine.
INTAKE_SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BATCH_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NASTY_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "nul\x00inside", "\u202e", "<|im_start|>system"]),
    st.integers(min_value=1_000, max_value=20_000).map(lambda n: "x" * n),
)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    NASTY_TEXT,
)
ARBITRARY_JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(NASTY_TEXT, inner, max_size=6)),
    max_leaves=30,
)
POST_OBJECTS = st.fixed_dictionaries(
    {"id": st.one_of(NASTY_TEXT, st.integers(), st.just(""), st.just("i" * 10_000), ARBITRARY_JSON)},
    optional={
        "text": st.one_of(NASTY_TEXT, ARBITRARY_JSON),
        "caption": st.one_of(NASTY_TEXT, ARBITRARY_JSON),
        "image": st.one_of(NASTY_TEXT, ARBITRARY_JSON, st.fixed_dictionaries({"base64": NASTY_TEXT})),
        "created_at": st.one_of(NASTY_TEXT, st.integers(), st.just("2024-02-30T25:61:00Z")),
        "meta": ARBITRARY_JSON,
        "lang": ARBITRARY_JSON,
    },
)


def _dumps(value: object, ascii_only: bool) -> bytes:
    # A lone surrogate cannot be UTF-8: written raw it becomes invalid bytes ("surrogatepass"), escaped it
    # stays valid JSON that decodes to a lone surrogate. Both must be handled.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def deep_json(draw: st.DrawFn) -> bytes:
    """Nesting from harmless to far past Python's recursion limit, top level or inside a post."""
    depth = draw(st.integers(min_value=1, max_value=20_000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    nested = opener * depth + "1" + closer * depth
    where = draw(st.sampled_from(["top", "meta", "id", "text"]))
    return (nested if where == "top" else f'{{"id": "deep", "{where}": {nested}}}').encode()


@st.composite
def huge_numbers(draw: st.DrawFn) -> bytes:
    digits = "9" * draw(st.integers(min_value=1, max_value=6_000))
    number = draw(st.sampled_from([digits, "-" + digits, digits + ".5", "1e" + digits, digits + "e-999"]))
    field = draw(st.sampled_from(["id", "text", "meta", "created_at"]))
    return f'{{"id": "n", "{field}": {number}}}'.encode() if field != "id" else f'{{"id": {number}}}'.encode()


RECORDS = st.one_of(
    st.binary(max_size=300),
    st.builds(_dumps, ARBITRARY_JSON, st.booleans()),
    st.builds(_dumps, POST_OBJECTS, st.booleans()),
    deep_json(),
    huge_numbers(),
)


class EchoProcessor:
    """Stands in for the graph in the intake property: an event per post, like the pipeline's contract."""

    async def process(self, post, source):  # type: ignore[no-untyped-def]
        if post.text.startswith("boom"):
            raise RuntimeError("boom " + post.text)
        return IntentionEvent(post_id=post.id, source=source, text=post.text)


def _check_outcome(raw: bytes, outcome: Processed | Failure) -> None:
    if isinstance(outcome, Processed):
        event = IntentionEvent.model_validate_json(outcome.value)
        assert 0 < len(event.post_id) <= MAX_ID_CHARS
        return
    letter = outcome.dead_letter(raw, topic="t", partition=0, offset=1)
    again = DeadLetter.model_validate_json(letter.model_dump_json().encode())
    assert again.original() == raw, "a dead letter keeps the original bytes for replay"
    assert len(again.error_message) <= 2_000
    assert again.post_id is None or 0 < len(again.post_id) <= MAX_ID_CHARS, "huge ids never become keys"


@INTAKE_SETTINGS
@given(raw=RECORDS)
def test_any_record_gives_one_event_or_one_dead_letter(raw: bytes) -> None:
    outcome = asyncio.run(process_record(raw, LIMITS, EchoProcessor(), None))
    assert isinstance(outcome, Processed | Failure)
    _check_outcome(raw, outcome)


@pytest.mark.parametrize(
    ("raw", "stage"),
    [
        (b'{"id":"x","meta":' + b"[" * 10_000 + b"]" * 10_000 + b"}", "decode"),
        (b"[" * 10_000 + b"]" * 10_000, "decode"),
        (b'{"id":' + b"7" * 5_000 + b"}", "decode"),
        (b'{"id":"x","meta":' + b"[" * 100 + b"]" * 100 + b"}", "validate"),
        (b'{"id":"x","text":"lone \\ud800 surrogate"}', "validate"),
        (b'{"id":"' + b"i" * 10_000 + b'"}', "validate"),
    ],
)
def test_the_reported_poison_pills_are_dead_lettered_at_their_stage(raw: bytes, stage: str) -> None:
    outcome = asyncio.run(process_record(raw, LIMITS, EchoProcessor(), None))
    assert isinstance(outcome, Failure) and outcome.stage == stage
    assert outcome.post_id is None or len(outcome.post_id) <= MAX_ID_CHARS


@pytest.fixture(scope="module")
def fake_pipeline() -> MikoPipeline:
    return build_pipeline(Settings(llm="fake", vision="none", verifier="heuristic", max_text_chars=2_000))


@BATCH_SETTINGS
@given(lines=st.lists(RECORDS, min_size=1, max_size=12))
def test_batch_runner_accounts_for_every_line(
    fake_pipeline: MikoPipeline, lines: list[bytes], tmp_path_factory: pytest.TempPathFactory
) -> None:
    # One record per line: line breaks inside a generated record would make it two lines of the file.
    records = [line.replace(b"\n", b" ").replace(b"\r", b" ") for line in lines]
    records = [record for record in records if record.strip()]
    source = tmp_path_factory.mktemp("batch") / "posts.jsonl"
    source.write_bytes(b"\n".join(records) + b"\n")
    out, dlq = io.StringIO(), io.StringIO()
    report = asyncio.run(BatchRunner(fake_pipeline, LIMITS, concurrency=8).run(source, out, dlq))
    # JSONL is split on "\n" only: U+0085 and U+2028 (which str.splitlines() also splits on) are valid in ids.
    events = [IntentionEvent.model_validate_json(line) for line in out.getvalue().split("\n") if line]
    letters = [DeadLetter.model_validate_json(line) for line in dlq.getvalue().split("\n") if line]
    assert report.records == len(records) == len(events) + len(letters)
    lines_seen = sorted([e.source.offset for e in events if e.source] + [d.offset for d in letters])
    assert lines_seen == list(range(1, len(records) + 1)), "exactly one outcome per input line"
    assert {d.offset: d.original() for d in letters} == {d.offset: records[d.offset - 1] for d in letters}


def test_dead_letters_from_process_keep_bounded_keys(fake_pipeline: MikoPipeline, tmp_path: Path) -> None:
    source = tmp_path / "posts.jsonl"
    source.write_bytes(b'{"id": "' + b"k" * 10_000 + b'"}\n{"id": "ok", "text": "fine"}\n')
    out, dlq = io.StringIO(), io.StringIO()
    asyncio.run(BatchRunner(fake_pipeline, LIMITS).run(source, out, dlq))
    (letter,) = [DeadLetter.model_validate_json(line) for line in dlq.getvalue().split("\n") if line]
    assert (letter.stage, letter.post_id) == ("validate", None)
    assert len(letter.error_message) < 300, "the 10 kB id is not repeated in the message"
    assert [json.loads(line)["post_id"] for line in out.getvalue().split("\n") if line] == ["ok"]
