"""Which prompts share a prefix, and a cache of prefixes' keys/values: the planning half of shared prefill.

Why: on a small CPU the prompt (prefill) dominates the cost of a MIKO post. Its ten generate prompts and its
ten verify prompts repeat the same system text, post, caption and key information and differ only in their
last ~30 tokens, so a pass that holds them would run each post's ~200 shared tokens ten times. Rows are
grouped here by their longest common prefix, so that :mod:`graph.models.local.prefill` runs each group's prefix once
and only the rows' suffixes on top of it. Results equal the unshared computation up to float rounding.

Shared prefixes are also kept in a small LRU :class:`PrefixCache`, because a post's rows do not always land in
one pass (admission into the running batch splits them, and rejected relations come back for another round).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

LayerKV = tuple["torch.Tensor", "torch.Tensor"]


@dataclass(frozen=True)
class SharingPolicy:
    """When rows count as sharing a prefix, and how much prefix KV to keep between batches.

    Two rows share when their common prefix is at least ``min_tokens`` long and at least ``min_ratio`` of the
    shorter row: prompts of one post share most of their length, prompts of different posts only a system
    message, and merging those would shrink the prefix that the post's own rows could share.
    """

    min_tokens: int = 16
    min_ratio: float = 0.5
    cache_mb: float = 2048.0
    """Memory for prefixes kept between batches (0 disables the cache)."""


# -- the cache --------------------------------------------------------------------------------------------------


@dataclass
class CachedPrefix:
    """The keys and values of one prefix, per layer, shaped ``[1, heads, len(tokens), head_dim]``."""

    tokens: tuple[int, ...]
    layers: list[LayerKV]
    nbytes: int = 0

    def __post_init__(self) -> None:
        self.nbytes = sum(k.nbytes + v.nbytes for k, v in self.layers)


@dataclass
class PrefixCacheStats:
    lookups: int = 0
    hits: int = 0
    hit_tokens: int = 0
    stored: int = 0
    evicted: int = 0


class PrefixCache:
    """An LRU map from token prefixes to their KV, bounded in bytes; used from the engine's thread only."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.stats = PrefixCacheStats()
        self._entries: OrderedDict[tuple[int, ...], CachedPrefix] = OrderedDict()
        self._lengths: dict[int, int] = {}  # prefix length -> how many entries have it

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, row: Sequence[int]) -> CachedPrefix | None:
        """The longest stored prefix of ``row`` that leaves at least one token of ``row`` after it."""
        self.stats.lookups += 1
        for length in sorted(self._lengths, reverse=True):
            if length >= len(row):
                continue
            entry = self._entries.get(tuple(row[:length]))
            if entry is not None:
                self._entries.move_to_end(entry.tokens)
                self.stats.hits += 1
                self.stats.hit_tokens += length
                return entry
        return None

    def put(self, entry: CachedPrefix) -> None:
        if entry.tokens in self._entries or entry.nbytes > self.max_bytes:
            return
        self._entries[entry.tokens] = entry
        self._lengths[len(entry.tokens)] = self._lengths.get(len(entry.tokens), 0) + 1
        self.bytes += entry.nbytes
        self.stats.stored += 1
        while self.bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.nbytes
            self.stats.evicted += 1
            remaining = self._lengths[len(old.tokens)] - 1
            if remaining:
                self._lengths[len(old.tokens)] = remaining
            else:
                del self._lengths[len(old.tokens)]


# -- planning -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefixPlan:
    """How one batch splits: a prefix per group, and for every row its group and the tokens after the prefix.

    A group's prefix KV either comes from the cache (``cached[g]``) or is computed in stage 1.
    """

    prefixes: list[list[int]]
    group_of: list[int]
    suffixes: list[list[int]]
    cached: list[CachedPrefix | None] = field(default_factory=list)

    def group_sizes(self) -> list[int]:
        sizes = [0] * len(self.prefixes)
        for group in self.group_of:
            sizes[group] += 1
        return sizes


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def plan_prefixes(
    rows: Sequence[Sequence[int]], policy: SharingPolicy | None = None, cache: PrefixCache | None = None
) -> PrefixPlan:
    """Group rows by shared prefix and split each row into prefix and suffix.

    Rows whose start is in ``cache`` are grouped by that cached prefix. The others are sorted, and neighbours
    that share enough (see :class:`SharingPolicy`) form a group whose prefix is their common prefix. Every
    suffix keeps at least one token, because the model must run over a row's last token to predict the next
    one; a group of one row gets all but its last token as its "prefix".
    """
    policy = policy or SharingPolicy()
    if any(len(row) == 0 for row in rows):
        raise ValueError("every prompt needs at least one token")
    prefixes: list[list[int]] = []
    cached: list[CachedPrefix | None] = []
    group_of = [0] * len(rows)
    suffixes: list[list[int]] = [[] for _ in rows]
    hits: dict[tuple[int, ...], int] = {}
    fresh: list[int] = []
    for index, row in enumerate(rows):
        entry = cache.longest(row) if cache is not None else None
        if entry is None:
            fresh.append(index)
            continue
        if entry.tokens not in hits:
            hits[entry.tokens] = len(prefixes)
            prefixes.append(list(entry.tokens))
            cached.append(entry)
        group_of[index] = hits[entry.tokens]
        suffixes[index] = list(row[len(entry.tokens) :])
    for members, length in _neighbour_groups(rows, fresh, policy):
        cut = min(length, *(len(rows[i]) - 1 for i in members))
        for i in members:
            group_of[i] = len(prefixes)
            suffixes[i] = list(rows[i][cut:])
        prefixes.append(list(rows[members[0]][:cut]))
        cached.append(None)
    return PrefixPlan(prefixes=prefixes, group_of=group_of, suffixes=suffixes, cached=cached)


def _neighbour_groups(
    rows: Sequence[Sequence[int]], indices: Sequence[int], policy: SharingPolicy
) -> list[tuple[list[int], int]]:
    """(members, common prefix length) of runs of sorted rows whose neighbours share enough."""
    order = sorted(indices, key=lambda i: rows[i])
    groups: list[tuple[list[int], int]] = []
    for position, index in enumerate(order):
        row = rows[index]
        if position:
            previous = rows[order[position - 1]]
            common = common_prefix_length(previous, row)
            if common >= max(policy.min_tokens, policy.min_ratio * min(len(previous), len(row))):
                members, length = groups[-1]
                members.append(index)
                groups[-1] = (members, min(length, common))
                continue
        groups.append(([index], len(row)))
    return groups
