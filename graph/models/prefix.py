"""Shared-prefix prefill for batched prompts: compute a prefix's keys and values once, reuse them for every row.

Why: on a small CPU the prompt (prefill) dominates the cost of a MIKO post. Its ten generate prompts and its
ten verify prompts repeat the same system text, post, caption and key information and differ only in their
last ~30 tokens, so a batch that holds them prefills each post's ~200 shared tokens ten times. Here rows are
grouped by their longest common prefix; each group's prefix is run once (stage 1), its KV cache is copied to
the group's rows, and only the per-row suffixes are run on top of it (stage 2: a scoring forward pass, or the
first step of ``generate``). Results equal the unshared computation up to float rounding.

Layout of a stage-2 row: ``[pad][prefix of its group] [pad][suffix]``; both halves are left-padded, the
attention mask hides the pads and positions come from the mask, so the gap in the middle is invisible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PreTrainedModel


@dataclass(frozen=True)
class SharingPolicy:
    """When rows count as sharing a prefix.

    Two rows share when their common prefix is at least ``min_tokens`` long and at least ``min_ratio`` of the
    shorter row: prompts of one post share most of their length, prompts of different posts only a system
    message, and merging those would shrink the prefix that the post's own rows could share.
    """

    min_tokens: int = 16
    min_ratio: float = 0.5


@dataclass(frozen=True)
class PrefixPlan:
    """How one batch splits: a prefix per group, and for every row its group and the tokens after the prefix."""

    prefixes: list[list[int]]
    group_of: list[int]
    suffixes: list[list[int]]

    @property
    def shares(self) -> bool:
        """True when some group has two or more rows (else sharing saves nothing)."""
        return len(self.prefixes) < len(self.group_of)

    @property
    def prefill_tokens(self) -> int:
        """Tokens the model runs over (without padding): each prefix once plus every suffix."""
        return sum(map(len, self.prefixes)) + sum(map(len, self.suffixes))


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def plan_prefixes(rows: Sequence[Sequence[int]], policy: SharingPolicy | None = None) -> PrefixPlan:
    """Group rows by shared prefix (neighbours in sorted order) and split each row into prefix and suffix.

    Every suffix keeps at least one token, because the model must run over a row's last token to predict the
    next one. A group of one row gets all but its last token as its "prefix".
    """
    policy = policy or SharingPolicy()
    if any(len(row) == 0 for row in rows):
        raise ValueError("every prompt needs at least one token")
    order = sorted(range(len(rows)), key=lambda i: rows[i])
    groups: list[list[int]] = []
    shared: list[int] = []  # common prefix length of each group
    for position, index in enumerate(order):
        row = rows[index]
        if position:
            previous = rows[order[position - 1]]
            common = common_prefix_length(previous, row)
            if common >= max(policy.min_tokens, policy.min_ratio * min(len(previous), len(row))):
                groups[-1].append(index)
                shared[-1] = min(shared[-1], common)
                continue
        groups.append([index])
        shared.append(len(row))
    prefixes: list[list[int]] = []
    group_of = [0] * len(rows)
    suffixes: list[list[int]] = [[] for _ in rows]
    for number, (members, length) in enumerate(zip(groups, shared, strict=True)):
        cut = min(length, *(len(rows[i]) - 1 for i in members))
        prefixes.append(list(rows[members[0]][:cut]))
        for i in members:
            group_of[i] = number
            suffixes[i] = list(rows[i][cut:])
    return PrefixPlan(prefixes=prefixes, group_of=group_of, suffixes=suffixes)


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
    """Stage 1 done: a KV cache holding every row's prefix, and the full ids and mask to continue from."""

    cache: DynamicCache
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prefix_width: int

    @property
    def suffix_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prefix_width :]

    @property
    def suffix_positions(self) -> torch.Tensor:
        return positions(self.attention_mask)[:, self.prefix_width :]


def prefill_prefixes(model: PreTrainedModel, plan: PrefixPlan, pad_id: int) -> SharedPrefill:
    """Run each group's prefix once and copy its cache to the group's rows (call under inference_mode)."""
    import torch
    from transformers import DynamicCache

    prefix_ids, prefix_mask = left_pad(plan.prefixes, pad_id)
    cache = DynamicCache(config=model.config)
    model(
        input_ids=prefix_ids,
        attention_mask=prefix_mask,
        position_ids=positions(prefix_mask),
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    rows = torch.tensor(plan.group_of, dtype=torch.long)
    cache.batch_select_indices(rows)
    suffix_ids, suffix_mask = left_pad(plan.suffixes, pad_id)
    return SharedPrefill(
        cache=cache,
        input_ids=torch.cat([prefix_ids[rows], suffix_ids], dim=1),
        attention_mask=torch.cat([prefix_mask[rows], suffix_mask], dim=1),
        prefix_width=prefix_ids.shape[1],
    )
