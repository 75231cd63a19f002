"""Turning raw input bytes into a valid :class:`Post`, with size limits; every failure says which stage failed.

Used by the stream processor (Kafka record values) and the batch CLI (JSONL lines), so both dead-letter the
same inputs for the same reasons.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from graph.contracts import DeadLetterStage, Post


@dataclass(frozen=True)
class InputLimits:
    """Sizes beyond which a post is refused (dead-lettered) rather than processed."""

    max_record_bytes: int = 8 * 1024 * 1024
    max_text_chars: int = 100_000
    max_caption_chars: int = 20_000
    max_image_base64_chars: int = 7 * 1024 * 1024


class IntakeError(ValueError):
    """An input that cannot become a Post; ``stage`` goes into the dead letter."""

    def __init__(self, stage: DeadLetterStage, message: str, post_id: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.post_id = post_id


def decode_post(raw: bytes, limits: InputLimits) -> Post:
    """Parse and validate one post, enforcing ``limits``; raises :class:`IntakeError`."""
    if len(raw) > limits.max_record_bytes:
        raise IntakeError(
            DeadLetterStage.LIMITS, f"record is {len(raw)} bytes, over the {limits.max_record_bytes} limit"
        )
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IntakeError(DeadLetterStage.DECODE, f"not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise IntakeError(DeadLetterStage.VALIDATE, f"a post must be a JSON object, got {type(data).__name__}")
    post_id = str(data["id"]) if isinstance(data.get("id"), str | int) else None
    try:
        post = Post.model_validate(data)
    except ValidationError as error:
        raise IntakeError(DeadLetterStage.VALIDATE, _short(error), post_id) from error
    _check_sizes(post, limits)
    return post


def _check_sizes(post: Post, limits: InputLimits) -> None:
    checks = [
        ("text", len(post.text), limits.max_text_chars),
        ("caption", len(post.caption or ""), limits.max_caption_chars),
        ("image.base64", len((post.image and post.image.base64) or ""), limits.max_image_base64_chars),
    ]
    for name, size, limit in checks:
        if size > limit:
            raise IntakeError(DeadLetterStage.LIMITS, f"{name} is {size} characters, over the {limit} limit", post.id)


def _short(error: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in item['loc']) or 'post'}: {item['msg']}" for item in error.errors()[:5]]
    return "invalid post: " + "; ".join(parts)


def peek_post_id(raw: bytes) -> str | None:
    """The ``id`` of a JSON post if it has one, for keying records; never raises."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return str(value) if isinstance(value, str | int) and str(value) else None


def read_jsonl_records(path: Path, limit: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) for each non-blank line of a JSONL file, line terminators removed and nothing
    else touched: deciding what is a bad record is the processor's job (it dead-letters them)."""
    count = 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            record = line.rstrip(b"\r\n")
            if not record.strip():
                continue
            if limit is not None and count >= limit:
                return
            count += 1
            yield number, record


def count_jsonl_records(path: Path, limit: int | None = None) -> int:
    return sum(1 for _ in read_jsonl_records(path, limit))
