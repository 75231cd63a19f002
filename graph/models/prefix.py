"""Shared-prefix prefill for batched prompts: compute a prefix's keys and values once, reuse them for every row.

Why: on a small CPU the prompt (prefill) dominates the cost of a MIKO post. Its ten generate prompts and its
ten verify prompts repeat the same system text, post, caption and key information and differ only in their
last ~30 tokens, so a batch that holds them would prefill each post's ~200 shared tokens ten times. Here rows
are grouped by their longest common prefix; each group's prefix is run once (stage 1), its KV cache is copied
to the group's rows, and only the per-row suffixes are run on top of it (stage 2: a scoring forward pass, or
the first step of ``generate``). Results equal the unshared computation up to float rounding.

Shared prefixes are also kept in a small LRU :class:`PrefixCache`, because a post's rows do not always land in
one batch (a batch boundary splits them, and rejected relations come back for another round later).

Layout of a stage-2 row: ``[pad][prefix of its group] [pad][suffix]``; both halves are left-padded, the
attention mask hides the pads and positions come from the mask, so the gap in the middle is invisible.
Works for models whose cache is a plain per-layer key/value tensor pair (Llama-like ``DynamicCache``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import Cache, PreTrainedModel

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
    cache_mb: float = 256.0
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

    @property
    def worthwhile(self) -> bool:
        """True when a group has two or more rows or comes from the cache (else sharing saves nothing)."""
        return len(self.prefixes) < len(self.group_of) or any(c is not None for c in self.cached)

    @property
    def prefill_tokens(self) -> int:
        """Tokens the model runs over (without padding): each computed prefix once plus every suffix."""
        computed = sum(len(p) for p, c in zip(self.prefixes, self._sources(), strict=True) if c is None)
        return computed + sum(map(len, self.suffixes))

    def _sources(self) -> list[CachedPrefix | None]:
        return self.cached or [None] * len(self.prefixes)

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


# -- running --------------------------------------------------------------------------------------------------


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``rows`` right-aligned in one tensor (decoder-only models need that)."""
    import torch

    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding: the n-th real token of a row is at position n - 1."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@dataclass
class SharedPrefill:
    """Stage 1 done: every row's prefix KV (per layer, ``[rows, heads, prefix_width, dim]``, left-padded), and
    the full ids and mask (prefix region + suffix region) to continue from."""

    layers: list[LayerKV]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prefix_width: int

    def cache(self, model: PreTrainedModel, room: int = 0) -> Cache:
        """A cache holding the prefixes: dynamic for one more forward pass (``room == 0``), else static with
        ``room`` free positions after the whole input, so decoding writes in place instead of re-allocating
        every layer's tensors at every step."""
        from transformers import DynamicCache, StaticCache

        if room == 0:
            return DynamicCache(ddp_cache_data=self.layers, config=model.config)
        cache = StaticCache(config=model.config, max_cache_len=self.input_ids.shape[1] + room)
        for number, (keys, values) in enumerate(self.layers):
            cache.update(keys, values, number)
        return cache

    @property
    def suffix_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prefix_width :]

    @property
    def suffix_positions(self) -> torch.Tensor:
        return positions(self.attention_mask)[:, self.prefix_width :]


def prefill_prefixes(
    model: PreTrainedModel, plan: PrefixPlan, pad_id: int, cache: PrefixCache | None = None
) -> SharedPrefill:
    """Stage 1: every group's prefix KV (computed once, or taken from ``cache``), copied to the group's rows.

    Computed prefixes of groups with two or more rows are stored in ``cache``. Call under inference_mode.
    """
    import torch
    from transformers import DynamicCache

    sources = plan.cached or [None] * len(plan.prefixes)
    prefix_ids, prefix_mask = left_pad(plan.prefixes, pad_id)
    width = prefix_ids.shape[1]
    computed = [g for g, source in enumerate(sources) if source is None]
    fresh: list[LayerKV] = []
    if computed:
        ids, mask = prefix_ids[computed], prefix_mask[computed]
        start = int((mask.sum(0) == 0).sum())  # columns that are padding in every computed row
        ids, mask = ids[:, start:], mask[:, start:]
        run = DynamicCache(config=model.config)
        model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions(mask),
            cache=run,
            use_cache=True,
            logits_to_keep=1,
        )
        fresh = [(layer.keys, layer.values) for layer in run.layers]
        sizes = plan.group_sizes()
        for slot, group in enumerate(computed):
            if cache is not None and sizes[group] > 1:
                length = len(plan.prefixes[group])
                layers = [(k[slot : slot + 1, :, -length:].clone(), v[slot : slot + 1, :, -length:].clone())
                          for k, v in fresh]  # fmt: skip
                cache.put(CachedPrefix(tuple(plan.prefixes[group]), layers))
    rows = torch.tensor(plan.group_of, dtype=torch.long)
    slot_of = {group: slot for slot, group in enumerate(computed)}
    layers: list[LayerKV] = []
    for number in range(len(fresh) if fresh else len(_first_cached(sources).layers)):
        per_group = []
        for group, source in enumerate(sources):
            if source is None:
                k, v = fresh[number]
                per_group.append((k[slot_of[group]], v[slot_of[group]]))
            else:
                k, v = source.layers[number]
                per_group.append((k[0], v[0]))
        layers.append((_stack_left_padded([k for k, _ in per_group], width)[rows],
                       _stack_left_padded([v for _, v in per_group], width)[rows]))  # fmt: skip
    suffix_ids, suffix_mask = left_pad(plan.suffixes, pad_id)
    return SharedPrefill(
        layers=layers,
        input_ids=torch.cat([prefix_ids[rows], suffix_ids], dim=1),
        attention_mask=torch.cat([prefix_mask[rows], suffix_mask], dim=1),
        prefix_width=width,
    )


def _first_cached(sources: Sequence[CachedPrefix | None]) -> CachedPrefix:
    return next(source for source in sources if source is not None)


def _stack_left_padded(tensors: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """``[heads, len, dim]`` tensors right-aligned into one zero-padded ``[groups, heads, width, dim]``."""
    import torch

    heads, _, dim = tensors[0].shape
    out = torch.zeros((len(tensors), heads, width, dim), dtype=tensors[0].dtype)
    for i, tensor in enumerate(tensors):
        length = min(tensor.shape[1], width)
        out[i, :, width - length :] = tensor[:, tensor.shape[1] - length :]
    return out
