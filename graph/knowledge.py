"""Posts that carry reference intentions: what `eval generation` scores against and `distill generator` learns from.

Three JSONL shapes are read, one record a line, detected per line:

* **teacher** (``../shared/data/teacher_intentions.jsonl``): ``id``, ``text``, ``caption``, ``key_info`` and
  ``intentions`` as full sentences ("After posting this Tweet, the user wants to ...");
* **IntentionEvent** (``miko-stream tail`` of a stream served by a teacher model): ``post_id``, ``text``,
  ``caption``, ``key_info`` and ``intentions`` as completions; only verified, parsed ones are references;
* **judged** (``verifier_dev.jsonl``): ``id``, ``text`` and ``intentions`` with ``human_label``; only the
  accepted ones (label 1) are references. These records have no key information.

References are stored as *completions* of the graph's own stems (``find someone to chat with.``), the form the
generate node produces, so similarity compares what the model wrote and not the stem both sentences share.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from graph.contracts import KeyInfo, Post, Relation
from prompts import PromptSet

RecordFormat = Literal["teacher", "event", "judged"]
HELDOUT_MODULUS = 6
"""Posts whose id hashes to 0 modulo this are held out of training (~1/6 of any file, stable across files)."""


class ReferenceDataError(ValueError):
    """A reference file that cannot be used; the message names the line and what is wrong."""


@dataclass(frozen=True)
class ReferencePost:
    """A post, the key information a teacher extracted (when known) and its reference completions per relation."""

    post: Post
    key_info: KeyInfo | None
    references: dict[Relation, list[str]] = field(default_factory=dict)
    source_format: RecordFormat = "teacher"


def is_heldout(post_id: str) -> bool:
    """The fixed evaluation split: True for ~1/6 of ids (blake2b of the id); never trained on."""
    digest = hashlib.blake2b(post_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % HELDOUT_MODULUS == 0


def _word_pattern(word: str) -> str:
    lower = word.lower()
    if lower == "this":  # "this Tweet", "this tweet", "this Facebook post", "this Instagram pic"
        return r"this(?:\s+[\w-]+){0,2}?"
    if lower == "posted":
        return r"post(?:s|ed)?"
    return re.escape(word)


def _stem_pattern(stem: str) -> re.Pattern[str]:
    words = stem.replace(",", " ").split()
    return re.compile(r"^\s*" + r"[\s,]+".join(_word_pattern(w) for w in words) + r"\b[\s,:]*", re.IGNORECASE)


_STEM_CACHE: dict[str, re.Pattern[str]] = {}


def completion_of(stem: str, sentence: str) -> str:
    """The part of a teacher's full sentence after the relation's stem (the whole sentence if it has none).

    ``completion_of("After posting this, the user wants to", "After posting this Tweet, the user wants to
    share it.")`` is ``"share it."``.
    """
    pattern = _STEM_CACHE.setdefault(stem, _stem_pattern(stem))
    match = pattern.match(sentence)
    return (sentence[match.end() :] if match else sentence).strip()


def _relation(name: Any, where: str) -> Relation:
    try:
        return Relation(name)
    except ValueError:
        known = ", ".join(r.value for r in Relation)
        raise ReferenceDataError(f"{where}: unknown relation {name!r} (known: {known})") from None


def detect_format(record: dict[str, Any]) -> RecordFormat:
    if "post_id" in record and "id" not in record:
        return "event"
    intentions = record.get("intentions") or []
    if any(isinstance(i, dict) and "human_label" in i for i in intentions):
        return "judged"
    return "teacher"


def parse_reference_record(record: Any, prompts: PromptSet, where: str) -> ReferencePost:
    """One JSON record (any of the three shapes) as a :class:`ReferencePost`; raises ReferenceDataError."""
    if not isinstance(record, dict):
        raise ReferenceDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    kind = detect_format(record)
    post_id = record.get("post_id") if kind == "event" else record.get("id")
    if not isinstance(post_id, str | int) or not str(post_id):
        raise ReferenceDataError(f"{where}: record has no {'post_id' if kind == 'event' else 'id'}")
    intentions = record.get("intentions")
    if not isinstance(intentions, list) or not intentions:
        raise ReferenceDataError(f"{where}: post {post_id} has no intentions (a list of {{relation, text}})")
    references: dict[Relation, list[str]] = {}
    for item in intentions:
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise ReferenceDataError(f"{where}: post {post_id}: each intention needs a relation and a text")
        relation = _relation(item.get("relation"), f"{where}: post {post_id}")
        if kind == "event" and (not item.get("verified", True) or item.get("parse_failed")):
            continue
        if kind == "judged" and item.get("human_label") != 1:
            continue
        text = item["text"] if kind == "event" else completion_of(prompts.relation(relation).stem, item["text"])
        if text.strip():
            references.setdefault(relation, []).append(text.strip())
    raw_info = record.get("key_info")
    key_info = KeyInfo.model_validate(raw_info) if isinstance(raw_info, dict) else None
    caption = record.get("caption") if isinstance(record.get("caption"), str) else None
    post = Post(id=str(post_id), text=str(record.get("text") or ""), caption=caption or None)
    return ReferencePost(post=post, key_info=key_info, references=references, source_format=kind)


Split = Literal["all", "heldout", "train"]


def read_reference_posts(
    path: Path, prompts: PromptSet, *, split: Split = "all", limit: int | None = None
) -> Iterator[ReferencePost]:
    """Reference posts from a JSONL file, in file order, filtered by the held-out rule; ``limit`` after the split.

    Raises :class:`ReferenceDataError` for a missing or empty file, bad JSON, an unknown relation, or a post
    without intentions.
    """
    if not path.is_file():
        raise ReferenceDataError(f"reference file not found: {path}")
    yielded = 0
    seen_any = False
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            seen_any = True
            where = f"{path.name}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ReferenceDataError(f"{where}: not valid JSON ({error.msg})") from None
            item = parse_reference_record(record, prompts, where)
            if split != "all" and is_heldout(item.post.id) != (split == "heldout"):
                continue
            yield item
            yielded += 1
            if limit is not None and yielded >= limit:
                return
    if not seen_any:
        raise ReferenceDataError(f"reference file {path} is empty: give JSONL with one post and its intentions a line")
