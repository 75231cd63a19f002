"""The event contracts (README, "Contracts"), re-exported from ``graph.contracts`` where every layer can import them."""

from graph.contracts import (
    SCHEMA_VERSION,
    CaptionSource,
    DeadLetter,
    DeadLetterStage,
    ImageRef,
    Intention,
    IntentionEvent,
    KeyInfo,
    ModelInfo,
    Post,
    Relation,
    SourceRef,
)

__all__ = [
    "SCHEMA_VERSION",
    "CaptionSource",
    "DeadLetter",
    "DeadLetterStage",
    "ImageRef",
    "Intention",
    "IntentionEvent",
    "KeyInfo",
    "ModelInfo",
    "Post",
    "Relation",
    "SourceRef",
]
