"""What a student reads: a post's text, and optionally its caption and its intentions, as one encoder input."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache

from graph.normalize import normalize_text


class InputSet(StrEnum):
    """MIKO's input variants: text, text + image description, text + intentions, all three."""

    TEXT = "text"
    TEXT_CAPTION = "text+caption"
    TEXT_INTENTIONS = "text+intentions"
    ALL = "all"

    @property
    def uses_caption(self) -> bool:
        return self in (InputSet.TEXT_CAPTION, InputSet.ALL)

    @property
    def uses_intentions(self) -> bool:
        return self in (InputSet.TEXT_INTENTIONS, InputSet.ALL)


@dataclass(frozen=True)
class LabelledPost:
    """One example: the fields a student may read, and the label when known (1 = sarcastic)."""

    id: str
    text: str
    caption: str | None = None
    intentions: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    label: int | None = None
    image_path: str | None = None


# Teacher intentions and the graph's events repeat their relation's stem ("After posting this Tweet, the user
# wants to ..."): ten stems cost ~120 tokens of every input and say nothing the short tag below does not.
_STEM = re.compile(
    r"^\s*(?:after (?:posting|viewing) this(?: tweet| post)?,?\s*(?:the user|others)\s+(?:wants? to|will|feels?)"
    r"|the user post(?:s|ed)? this(?: tweet| post)? because(?: the user (?:is|intended to))?"
    r"|before posting this(?: tweet| post)?,?\s*the user needs to)\s*",
    re.IGNORECASE,
)
RELATION_TAGS = {
    "xWant": "user wants",
    "oEffect": "others will",
    "xAttr": "user is",
    "xIntent": "user intends",
    "xReact": "user feels",
    "oReact": "others feel",
    "oWant": "others want",
    "xEffect": "user will",
    "xNeed": "user needs",
    "Open": "because",
}


def intentions_text(intentions: Sequence[tuple[str, str]]) -> str:
    """``[("xWant", "After posting this, the user wants to share it.")]`` -> ``"user wants: share it."``."""
    parts = []
    for relation, sentence in intentions:
        completion = _STEM.sub("", sentence).strip()
        if completion:
            parts.append(f"{RELATION_TAGS.get(relation, relation)}: {completion}")
    return " ".join(parts)


def encoder_inputs(post: LabelledPost, inputs: InputSet, sep: str) -> tuple[str, str | None]:
    """The (first, second) segments: the normalised text, then caption and/or intentions (truncated first)."""
    extra: list[str] = []
    if inputs.uses_caption and post.caption:
        extra.append(post.caption.strip())
    if inputs.uses_intentions and post.intentions:
        extra.append(intentions_text(post.intentions))
    return _normalized(post.text), (f" {sep} ".join(extra) if extra else None)


@lru_cache(maxsize=65536)
def _normalized(text: str) -> str:
    """Normalising a tweet costs ~25 ms (hashtag segmentation); a training run reads each one every epoch."""
    return normalize_text(text) or text
