"""Contracts: validation rules, and the committed JSON Schemas match the models."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from miko_stream.contracts import SCHEMA_VERSION, DeadLetter, DeadLetterStage, IntentionEvent, ModelInfo, Post
from miko_stream.schemas import render_schemas

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"


def test_schema_files_match_the_models() -> None:
    for name, text in render_schemas().items():
        path = SCHEMA_DIR / name
        assert path.exists(), f"{path} missing: run `make schemas`"
        assert path.read_text(encoding="utf-8") == text, f"{name} drifted from the model: run `make schemas`"


def test_post_accepts_dataset_shapes() -> None:
    post = Post.model_validate({"id": 123, "text": "hi", "label": 1, "image": "pic.jpg"})
    assert post.id == "123"
    assert post.image is not None and post.image.path == "pic.jpg"
    assert Post.model_validate({"id": "x", "image": "https://example.org/a.png"}).image.url  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "data",
    [
        {"text": "no id"},
        {"id": ""},
        {"id": "x", "image": {"url": "a", "path": "b"}},
        {"id": "x", "image": {}},
    ],
)
def test_post_rejects_invalid(data: dict) -> None:
    with pytest.raises(ValidationError):
        Post.model_validate(data)


def test_dead_letter_keeps_original_bytes() -> None:
    raw = b"\xff not json"
    letter = DeadLetter.for_bytes(raw, ValueError("bad"), DeadLetterStage.DECODE, topic="t", partition=0, offset=7)
    again = DeadLetter.model_validate_json(letter.model_dump_json())
    assert again.original() == raw
    assert again.error_class == "ValueError" and again.stage == "decode"


def test_event_round_trips() -> None:
    event = IntentionEvent(
        post_id="p1",
        text="t",
        models=ModelInfo(llm="fake", vision="none", verifier="none"),
        prompt_version="abc",
    )
    assert IntentionEvent.model_validate_json(event.model_dump_json()) == event
    assert event.schema_version == SCHEMA_VERSION == "1.1"


def test_events_never_carry_credentials_from_model_specs() -> None:
    from miko_stream.settings import Settings
    from miko_stream.wiring import build_pipeline

    spec = "openai:gpt-x@https://bob:s3cret@models.example/v1"
    pipeline = build_pipeline(Settings(llm=spec, vision="none", verifier="heuristic"))
    assert "s3cret" not in pipeline.info.models.model_dump_json()
    assert pipeline.info.models.llm == "openai:gpt-x@https://models.example/v1"
