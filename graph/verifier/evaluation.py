"""Scores of every verifier mode on human-judged items, so that `eval verifier` compares them on equal terms.

The LLM judge and the heuristic are called through the verify node's own code (the project's verify prompt,
P(yes) from the model), so the figures describe what the stream does, not a re-implementation of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from graph.contracts import KeyInfo, Post, Relation
from graph.nodes import MikoNodes, heuristic_score
from graph.normalize import normalize_text
from graph.state import Candidate, PostState
from graph.verifier.items import LabelledItem, VerifierItem, completion

Advance = Callable[[int], None]


def _posts(items: Sequence[LabelledItem]) -> list[list[int]]:
    """Item indices per post, in file order."""
    posts: dict[tuple[str, ...], list[int]] = {}
    for index, labelled in enumerate(items):
        posts.setdefault(labelled.item.group_key(), []).append(index)
    return list(posts.values())


def post_state(item: VerifierItem) -> PostState:
    """The state the verify node would see for the post of ``item`` (no key info: extraction did not run)."""
    post = Post(id=item.post_id or "post", text=item.post_text or " ")
    return {"post": post, "text": normalize_text(item.post_text), "caption": item.caption, "key_info": KeyInfo()}


def candidate(item: VerifierItem) -> Candidate:
    return Candidate(
        relation=Relation(item.relation), text=completion(item.relation, item.intention), parse_failed=False, attempts=1
    )


def heuristic_scores(items: Sequence[LabelledItem]) -> np.ndarray:
    return np.array([heuristic_score(post_state(x.item), candidate(x.item)) for x in items])


async def judge_scores(
    nodes: MikoNodes, items: Sequence[LabelledItem], advance: Advance, concurrency: int = 16
) -> np.ndarray:
    """P(yes) of the LLM judge for every item; posts run concurrently so the model's batcher fills up."""
    import asyncio

    scores = np.full(len(items), np.nan)
    gate = asyncio.Semaphore(concurrency)

    async def one(indices: list[int]) -> None:
        async with gate:
            state = post_state(items[indices[0]].item)
            answers = await nodes.llm_scores(state, [candidate(items[i].item) for i in indices])
        for i, answer in zip(indices, answers, strict=True):
            scores[i] = np.nan if answer is None else answer
        advance(len(indices))

    await asyncio.gather(*(one(indices) for indices in _posts(items)))
    return scores
