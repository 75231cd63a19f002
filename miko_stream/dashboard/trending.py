"""Trending intentions: the largest groups of similar verified intentions indexed in a recent window.

The vectors come from the index itself (no re-embedding). Grouping is a greedy "densest first" pass over the
cosine-similarity graph: take the intention with the most neighbours above ``threshold`` among those not yet
grouped, make it and those neighbours a group, repeat. For the few thousand intentions of a window this is a
matrix product and a few vector operations: milliseconds, run in a worker thread every few seconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from index.records import IntentionRef


@dataclass(frozen=True)
class TrendingConfig:
    threshold: float = 0.6  # cosine similarity for two intentions to count as "the same idea"
    max_clusters: int = 8
    min_posts: int = 2  # a trend spans at least this many posts
    max_intentions: int = 3000  # the newest ones, to bound the O(n²) similarity matrix
    examples: int = 3


def trending_clusters(refs: list[IntentionRef], vectors: np.ndarray, config: TrendingConfig) -> list[dict[str, Any]]:
    """Groups of similar intentions, largest first: label (the densest member), size, posts, relations."""
    if len(refs) > config.max_intentions:
        refs, vectors = refs[-config.max_intentions :], vectors[-config.max_intentions :]
    if not refs:
        return []
    similar = (vectors @ vectors.T) >= config.threshold
    free = np.ones(len(refs), dtype=bool)
    clusters: list[dict[str, Any]] = []
    for _ in range(4 * config.max_clusters):  # groups within one post are skipped: bound the attempts
        degree = (similar & free[None, :]).sum(axis=1) * free
        centre = int(degree.argmax())
        if len(clusters) >= config.max_clusters or degree[centre] < config.min_posts:
            break
        members = np.flatnonzero(similar[centre] & free)
        free[members] = False
        free[centre] = False
        group = [refs[i] for i in members]
        posts = {ref.post_id for ref in group}
        if len(posts) < config.min_posts:
            continue
        others = [ref.text for ref in group if ref.vid != refs[centre].vid]
        clusters.append(
            {
                "label": refs[centre].text,
                "relation": refs[centre].relation,
                "size": len(group),
                "posts": len(posts),
                "relations": dict(Counter(ref.relation for ref in group).most_common()),
                "examples": list(dict.fromkeys(others))[: config.examples],
                "post_ids": sorted(posts)[:10],
            }
        )
    clusters.sort(key=lambda cluster: (-cluster["posts"], -cluster["size"]))
    return clusters
