"""Event contracts shared by every stage (README, "Contracts"; JSON Schemas in docs/schemas).

They live at the bottom of the dependency graph (``graph`` is imported by ``consumers`` and ``miko_stream``),
so that the Kafka layer can build events without importing the application package. ``miko_stream.contracts``
re-exports them under the name the design card uses.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = "1.1"  # 1.1: IntentionEvent.classifications (additive; 1.0 readers ignore it)


class Relation(StrEnum):
    """MIKO's ten relations, in the paper's order."""

    X_WANT = "xWant"
    O_EFFECT = "oEffect"
    X_ATTR = "xAttr"
    X_INTENT = "xIntent"
    X_REACT = "xReact"
    O_REACT = "oReact"
    O_WANT = "oWant"
    X_EFFECT = "xEffect"
    X_NEED = "xNeed"
    OPEN = "Open"


class CaptionSource(StrEnum):
    MODEL = "model"
    OCR = "ocr"
    PROVIDED = "provided"
    NONE = "none"


class ImageRef(BaseModel):
    """Where a post's image is: exactly one of ``url``, ``base64`` or ``path``."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, max_length=4096)
    base64: str | None = None
    path: str | None = Field(default=None, max_length=4096)

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageRef:
        given = [name for name in ("url", "base64", "path") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(f"image needs exactly one of url, base64 or path (got {given or 'none'})")
        return self


class Post(BaseModel):
    """An input post (JSON value on the posts topic, key = ``id``). Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=256)
    text: str = ""
    image: ImageRef | None = None
    caption: str | None = Field(default=None, description="Caption or alt text already known for the image.")
    author: str | None = None
    created_at: datetime | None = None
    lang: str | None = None
    platform: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @field_validator("image", mode="before")
    @classmethod
    def _image_shorthand(cls, value: Any) -> Any:
        """Accept a bare string as a URL or path, the shape many datasets use."""
        if isinstance(value, str):
            return {"url": value} if value.startswith(("http://", "https://")) else {"path": value}
        return value


class KeyInfo(BaseModel):
    concept: str = ""
    action: str = ""
    object: str = ""
    emotion: str = ""
    keywords: list[str] = Field(default_factory=list)


class Intention(BaseModel):
    relation: Relation
    text: str
    score: float | None = Field(default=None, description="Verifier score in [0, 1]; None when not verified.")
    verified: bool = False
    attempts: int = Field(default=1, description="Generation rounds this relation took.")
    parse_failed: bool = Field(default=False, description="The completion had to be repaired or was unusable.")


class SourceRef(BaseModel):
    """Where the input came from: a Kafka record, or a file line (topic = file name, offset = line number)."""

    topic: str
    partition: int = 0
    offset: int


class ModelInfo(BaseModel):
    llm: str
    vision: str
    verifier: str


class IntentionEvent(BaseModel):
    """Output event on the intentions topic (key = ``post_id``)."""

    schema_version: str = SCHEMA_VERSION
    post_id: str
    source: SourceRef | None = None
    text: str = Field(description="Normalised post text.")
    caption: str | None = None
    caption_source: CaptionSource = CaptionSource.NONE
    key_info: KeyInfo = Field(default_factory=KeyInfo)
    intentions: list[Intention] = Field(default_factory=list)
    models: ModelInfo
    prompt_version: str
    timings_ms: dict[str, float] = Field(default_factory=dict)
    status: Literal["ok", "partial"] = "ok"
    parse_failures: int = 0
    warnings: list[str] = Field(default_factory=list, description="Stages that degraded (e.g. an unusable image).")
    classifications: dict[str, float] = Field(
        default_factory=dict,
        description="Scores in [0, 1] of the students configured with MIKO_CLASSIFIERS, e.g. {'sarcasm': 0.93}.",
    )
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def verified_intentions(self) -> list[Intention]:
        return [item for item in self.intentions if item.verified]


class DeadLetterStage(StrEnum):
    DECODE = "decode"
    VALIDATE = "validate"
    LIMITS = "limits"
    GRAPH = "graph"


class DeadLetter(BaseModel):
    """A record that could not be processed, with everything needed to replay it."""

    schema_version: str = SCHEMA_VERSION
    original_b64: str = Field(description="The original record value, base64.")
    post_id: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    error_class: str
    error_message: str
    stage: DeadLetterStage
    attempts: int = 1
    failed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def for_bytes(cls, raw: bytes, error: BaseException, stage: DeadLetterStage, **fields: Any) -> DeadLetter:
        """A dead letter for ``raw``; the message is bounded and valid UTF-8 whatever the error says."""
        cause = getattr(error, "cause", None)  # graph.pipeline.PostFailed: name the error behind it
        error_class = type(cause if isinstance(cause, BaseException) else error).__name__
        return cls(
            original_b64=base64.b64encode(raw).decode("ascii"),
            error_class=error_class,
            error_message=_bounded_text(error, 2000),
            stage=stage,
            **fields,
        )

    def original(self) -> bytes:
        return base64.b64decode(self.original_b64)


def _bounded_text(error: BaseException, limit: int) -> str:
    try:
        text = str(error)
    except Exception:  # an exception whose __str__ fails still deserves a dead letter
        text = type(error).__name__
    return text[:limit].encode("utf-8", "replace").decode("utf-8")
