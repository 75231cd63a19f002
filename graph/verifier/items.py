"""What the verifier scores, and the human-judged JSONL it learns from (the format of verifier_dev.jsonl).

An intention may arrive as a full sentence ("After posting this Tweet, the user wants to rest") or as the
completion of its relation's stem ("rest"): the graph produces completions, MIKO's files hold sentences. The
verifier always works on the completion, so that what it learned from the files is what it sees in the stream.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from graph.contracts import Relation


class VerifierDataError(ValueError):
    """A training/evaluation file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class VerifierItem:
    """One intention to judge, with what a human annotator saw next to it.

    Items with the same ``post_id`` (or, when it is None, the same ``post_text`` and ``caption``) are one post:
    the verifier judges each intention in the light of the post's other intentions, so score them together.
    """

    post_text: str
    caption: str | None
    relation: Relation
    intention: str
    post_id: str | None = None

    def group_key(self) -> tuple[str, ...]:
        return (self.post_id,) if self.post_id is not None else ("", self.post_text, self.caption or "")


@dataclass(frozen=True)
class LabelledItem:
    """A human-judged item: ``label`` 1 = accepted by the annotators."""

    item: VerifierItem
    label: int


# The stems MIKO's annotators saw ("After posting this Tweet, the user wants to ...") and the project's own
# ("After posting this, the user wants to ..."): everything up to the relation's verb is the stem.
_STEMS: dict[Relation, re.Pattern[str]] = {
    relation: re.compile(r"^\s*(?:after|before|the user|the users)\b.{0,60}?\b" + verb + r"\b\s*", re.IGNORECASE)
    for relation, verb in {
        Relation.X_WANT: r"(?:wants?|wanted) to",
        Relation.O_EFFECT: r"others will",
        Relation.X_ATTR: r"because (?:the user|they) (?:is|are|was|were)",
        Relation.X_INTENT: r"because (?:the user|they) (?:intends?|intended) to",
        Relation.X_REACT: r"(?:the user|they) (?:feels?|felt)",
        Relation.O_REACT: r"others (?:feel|felt)",
        Relation.O_WANT: r"others (?:want|wanted) to",
        Relation.X_EFFECT: r"(?:the user|they) will",
        Relation.X_NEED: r"(?:needs?|needed) to",
        Relation.OPEN: r"because",
    }.items()
}


def completion(relation: Relation, text: str) -> str:
    """The part of ``text`` after its relation's stem (``text`` itself when it has no stem)."""
    body = _STEMS[relation].sub("", text.strip(), count=1)
    return body.strip().rstrip(".").strip() or text.strip()


def read_labelled(path: Path) -> list[LabelledItem]:
    """Every judged intention of a JSONL file shaped like verifier_dev.jsonl.

    Each line: ``{"id", "text", "caption"?, "intentions": [{"relation", "text", "human_label"}]}``.
    """
    if not path.is_file():
        raise VerifierDataError(f"{path}: no such file")
    items = [item for post in _posts(path) for item in post]
    if not items:
        raise VerifierDataError(f"{path}: no judged intentions (expected lines with intentions[].human_label)")
    return items


def _posts(path: Path) -> Iterator[list[LabelledItem]]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield _post_items(json.loads(line), number)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise VerifierDataError(f"{path}:{number}: {type(error).__name__}: {error}") from error


def _post_items(record: dict, number: int) -> list[LabelledItem]:
    post_id = str(record.get("id", f"line-{number}"))
    caption = record.get("caption") or None
    items = []
    for intention in record["intentions"]:
        label = int(intention["human_label"])
        if label not in (0, 1):
            raise ValueError(f"human_label must be 0 or 1, got {label}")
        relation = Relation(intention["relation"])
        item = VerifierItem(str(record["text"]), caption, relation, str(intention["text"]), post_id=post_id)
        items.append(LabelledItem(item, label))
    return items


def groups_of(items: Sequence[VerifierItem]) -> list[int]:
    """A post number for every item (items of one post share it), in order of first appearance."""
    numbers: dict[tuple[str, ...], int] = {}
    return [numbers.setdefault(item.group_key(), len(numbers)) for item in items]
