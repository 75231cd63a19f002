"""Raw bytes to Post: every way an input can be bad maps to a dead-letter stage with a clear reason."""

from __future__ import annotations

import json

import pytest

from graph.contracts import DeadLetterStage
from graph.intake import InputLimits, IntakeError, decode_post, peek_post_id

LIMITS = InputLimits(max_record_bytes=10_000, max_text_chars=100)


def test_valid_post() -> None:
    post = decode_post(json.dumps({"id": "a", "text": "hello"}).encode(), LIMITS)
    assert post.id == "a" and post.text == "hello"


@pytest.mark.parametrize(
    ("raw", "stage", "words"),
    [
        (b"{not json", DeadLetterStage.DECODE, "not valid JSON"),
        (b"\xff\xfe", DeadLetterStage.DECODE, "not valid JSON"),
        (b"[1, 2]", DeadLetterStage.VALIDATE, "JSON object"),
        (b'{"text": "no id"}', DeadLetterStage.VALIDATE, "id"),
        (json.dumps({"id": "big", "text": "x" * 101}).encode(), DeadLetterStage.LIMITS, "over the 100 limit"),
        (b"{" + b" " * 10_001 + b"}", DeadLetterStage.LIMITS, "bytes"),
    ],
)
def test_bad_input_names_its_stage(raw: bytes, stage: DeadLetterStage, words: str) -> None:
    with pytest.raises(IntakeError) as caught:
        decode_post(raw, LIMITS)
    assert caught.value.stage == stage
    assert words in str(caught.value)


def test_oversize_keeps_post_id() -> None:
    with pytest.raises(IntakeError) as caught:
        decode_post(json.dumps({"id": "big", "text": "x" * 500}).encode(), LIMITS)
    assert caught.value.post_id == "big"


def test_peek_post_id() -> None:
    assert peek_post_id(b'{"id": 5}') == "5"
    assert peek_post_id(b"garbage") is None
    assert peek_post_id(b'{"id": ""}') is None
