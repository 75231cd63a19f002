"""Turning raw input bytes into a valid :class:`Post`, with size limits; every failure says which stage failed.

Used by the stream processor (Kafka record values) and the batch CLI (JSONL lines), so both dead-letter the
same inputs for the same reasons.
"""

from __future__ import annotations

import json
import re
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
    max_json_depth: int = 64  # nesting of arrays/objects; deeper input is refused, never recursed into


MAX_ID_CHARS = 256  # also the Post contract's limit: longer ids are never logged in full or used as keys
_SURROGATE = re.compile("[\ud800-\udfff]")


class IntakeError(ValueError):
    """An input that cannot become a Post; ``stage`` goes into the dead letter."""

    def __init__(self, stage: DeadLetterStage, message: str, post_id: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.post_id = post_id


def decode_post(raw: bytes, limits: InputLimits) -> Post:
    """Parse and validate one post, enforcing ``limits``; raises :class:`IntakeError` and nothing else."""
    if len(raw) > limits.max_record_bytes:
        raise IntakeError(
            DeadLetterStage.LIMITS, f"record is {len(raw)} bytes, over the {limits.max_record_bytes} limit"
        )
    data = _parse_json(raw)
    if not isinstance(data, dict):
        raise IntakeError(DeadLetterStage.VALIDATE, f"a post must be a JSON object, got {type(data).__name__}")
    post_id = _usable_id(data.get("id"))
    problem = _structure_problem(data, limits.max_json_depth)
    if problem:
        raise IntakeError(DeadLetterStage.VALIDATE, problem, None if "surrogate" in problem else post_id)
    try:
        post = Post.model_validate(data)
    except ValidationError as error:
        raise IntakeError(DeadLetterStage.VALIDATE, _short(error), post_id) from error
    except (RecursionError, ValueError, TypeError) as error:  # a validator hit something pathological
        raise IntakeError(DeadLetterStage.VALIDATE, f"invalid post: {type(error).__name__}", post_id) from error
    _check_sizes(post, limits)
    return post


def _parse_json(raw: bytes) -> object:
    """JSON, or an :class:`IntakeError` at stage decode: bad UTF-8, bad syntax, integers too long for Python
    to convert (ValueError), nesting too deep for the parser (RecursionError)."""
    try:
        return json.loads(raw)
    except RecursionError as error:
        raise IntakeError(DeadLetterStage.DECODE, "not valid JSON: nested too deeply to parse") from error
    except (UnicodeDecodeError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise IntakeError(DeadLetterStage.DECODE, f"not valid JSON: {str(error)[:200]}") from error


def _usable_id(value: object) -> str | None:
    """The id for dead letters and logs, only when it is short text (never a 10 kB string or a huge number)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    if isinstance(value, int) and abs(value).bit_length() > 256:  # str() of huge ints is slow or refused
        return None
    text = str(value)
    return text if 0 < len(text) <= MAX_ID_CHARS and not _SURROGATE.search(text) else None


def _structure_problem(data: object, max_depth: int) -> str | None:
    """Why a parsed value cannot be a post (too deep, or text with lone surrogates that no UTF-8 output can
    carry), walking it without recursion; None when it is fine."""
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return "text contains a lone UTF-16 surrogate (not valid Unicode)"
        elif isinstance(value, dict | list):
            if depth > max_depth:
                return f"JSON nested deeper than {max_depth} levels"
            items = value.items() if isinstance(value, dict) else ((None, item) for item in value)
            for key, item in items:
                if isinstance(key, str) and _SURROGATE.search(key):
                    return "a field name contains a lone UTF-16 surrogate (not valid Unicode)"
                stack.append((item, depth + 1))
    return None


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
    """The ``id`` of a JSON post if it has a usable one, for keying records; never raises."""
    try:
        data = json.loads(raw)
    except (RecursionError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return _usable_id(data.get("id")) if isinstance(data, dict) else None


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
