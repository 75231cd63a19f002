"""`eval generation`: how good the graph's intentions are, measured against reference intentions.

Definitions (every rate is a fraction of *intentions*, ten per post, unless it says posts):

* **similarity**: MiniLM cosine between the generated completion and the best-matching reference completion
  (the stem both share is left out); **bertscore**: the BERTScore-F1 approximation of
  :mod:`miko_stream.evaluation.similarity`. Averaged over intentions that have a reference; a missing, empty or
  unparsable intention scores 0.
* **parse_failures**: intentions whose final text is unusable (``parse_failed``, empty, or the relation missing;
  all ten count for a post that failed outright).
* **key_info**: posts whose key information parsed (the extract node did not fall back to text keywords).
* **accepted**: intentions the acceptance judge accepts (the learned verifier when present); unusable ones never.
* **words**: mean words per usable intention.
* **distinct**: distinct usable texts / intentions, within a relation across posts (per relation) and over all
  (overall); empty, failed intentions and *copies of the post* (a run of >= 3 words covering >= 60% of the
  intention, found verbatim in the post) count as failures.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Protocol

from graph.contracts import Intention, IntentionEvent, Relation
from graph.knowledge import ReferencePost
from miko_stream.evaluation.similarity import TextEncoder, best_match_scores

KEY_INFO_WARNING = "key_info:"
"""Prefix of the warning the extract node adds when the model's key information did not parse."""
_WORD = re.compile(r"[\w']+")
COPY_MIN_WORDS = 3
COPY_MIN_SHARE = 0.6


@dataclass(frozen=True)
class Generated:
    """What the graph produced for one post (nothing, when it failed)."""

    post_id: str
    key_info_ok: bool
    intentions: dict[Relation, Intention] = field(default_factory=dict)
    failed: bool = False

    @classmethod
    def from_event(cls, event: IntentionEvent) -> Generated:
        key_info_ok = not any(w.startswith(KEY_INFO_WARNING) for w in event.warnings)
        return cls(event.post_id, key_info_ok, {item.relation: item for item in event.intentions})

    @classmethod
    def failure(cls, post_id: str) -> Generated:
        return cls(post_id, key_info_ok=False, failed=True)


@dataclass(frozen=True)
class JudgeItem:
    """What an acceptance judge sees: the post, its caption, the relation and the completion."""

    post_text: str
    caption: str | None
    relation: Relation
    text: str
    verified_by_graph: bool
    post_id: str | None = None


class AcceptanceJudge(Protocol):
    """Says which intentions are acceptable (the learned verifier, or the verdicts the graph already gave)."""

    name: str

    def accepts(self, items: Sequence[JudgeItem]) -> list[bool]: ...


class GraphVerdicts:
    """The graph's own ``verified`` flags: the judge when no learned verifier is available."""

    def __init__(self, name: str = "graph") -> None:
        self.name = name

    def accepts(self, items: Sequence[JudgeItem]) -> list[bool]:
        return [item.verified_by_graph for item in items]


@dataclass
class Figures:
    """The measurements of one group of intentions (a relation, or all)."""

    intentions: int = 0
    with_reference: int = 0
    similarity: float = 0.0
    bertscore: float = 0.0
    parse_failures: float = 0.0
    accepted: float = 0.0
    words: float = 0.0
    distinct: float = 0.0
    copies: int = 0


@dataclass
class GenerationReport:
    posts: int
    failed_posts: int
    key_info_rate: float
    overall: Figures
    relations: dict[Relation, Figures]
    judge: str
    elapsed_s: float = 0.0

    @property
    def posts_per_s(self) -> float:
        return self.posts / self.elapsed_s if self.elapsed_s else 0.0

    def last_line(self) -> str:
        o = self.overall
        return f"similarity={o.similarity:.4f} parse_failures={o.parse_failures:.4f} accepted={o.accepted:.4f}"


def words_of(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def is_copy(text: str, post_text: str) -> bool:
    """True when the intention mostly repeats the post: a verbatim run of >= 3 words, >= 60% of its words."""
    mine, theirs = words_of(text), words_of(post_text)
    if len(mine) < COPY_MIN_WORDS or not theirs:
        return False
    match = SequenceMatcher(None, mine, theirs, autojunk=False).find_longest_match(0, len(mine), 0, len(theirs))
    return match.size >= COPY_MIN_WORDS and match.size >= COPY_MIN_SHARE * len(mine)


@dataclass(frozen=True)
class _Row:
    relation: Relation
    text: str
    usable: bool
    copy: bool
    references: list[str]
    judge_item: JudgeItem


def _rows(reference: ReferencePost, generated: Generated) -> list[_Row]:
    post = reference.post
    rows = []
    for relation in Relation:
        item = generated.intentions.get(relation)
        text = item.text.strip() if item is not None else ""
        usable = bool(text) and item is not None and not item.parse_failed
        judged = JudgeItem(post.text, post.caption, relation, text, bool(item and item.verified), post.id)
        rows.append(
            _Row(
                relation,
                text,
                usable,
                usable and is_copy(text, post.text),
                reference.references.get(relation, []),
                judged,
            )
        )
    return rows


def _figures(rows: Sequence[_Row], cosines: Sequence[float], f1s: Sequence[float], accepted: Sequence[bool]) -> Figures:
    n = len(rows)
    if n == 0:
        return Figures()
    referenced = [i for i, row in enumerate(rows) if row.references]
    usable = [row for row in rows if row.usable]
    distinct = {(row.relation, " ".join(words_of(row.text))) for row in usable if not row.copy}
    return Figures(
        intentions=n,
        with_reference=len(referenced),
        similarity=sum(cosines[i] for i in referenced) / len(referenced) if referenced else 0.0,
        bertscore=sum(f1s[i] for i in referenced) / len(referenced) if referenced else 0.0,
        parse_failures=sum(not row.usable for row in rows) / n,
        accepted=sum(a and row.usable for a, row in zip(accepted, rows, strict=True)) / n,
        words=sum(len(words_of(row.text)) for row in usable) / len(usable) if usable else 0.0,
        distinct=len({text for _, text in distinct}) / n,
        copies=sum(row.copy for row in rows),
    )


def score_generation(
    pairs: Sequence[tuple[ReferencePost, Generated]],
    encoder: TextEncoder,
    judge: AcceptanceJudge,
    elapsed_s: float = 0.0,
) -> GenerationReport:
    """The report for what the graph generated (``pairs``: each reference post with its outcome)."""
    rows = [row for reference, generated in pairs for row in _rows(reference, generated)]
    cosines, f1s = best_match_scores(encoder, [r.text if r.usable else "" for r in rows], [r.references for r in rows])
    accepted = judge.accepts([r.judge_item for r in rows]) if rows else []
    per_relation: dict[Relation, Figures] = {}
    for relation in Relation:
        index = [i for i, row in enumerate(rows) if row.relation == relation]
        per_relation[relation] = _figures(
            [rows[i] for i in index], [cosines[i] for i in index], [f1s[i] for i in index], [accepted[i] for i in index]
        )
    overall = _figures(rows, cosines, f1s, accepted)
    posts = len(pairs)
    return GenerationReport(
        posts=posts,
        failed_posts=sum(g.failed for _, g in pairs),
        key_info_rate=sum(g.key_info_ok for _, g in pairs) / posts if posts else 0.0,
        overall=overall,
        relations=per_relation,
        judge=judge.name,
        elapsed_s=elapsed_s,
    )
