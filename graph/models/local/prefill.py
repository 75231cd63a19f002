"""One pass over many prompts: next-token logits and each prompt's keys/values, with little wasted work.

Two kinds of waste are avoided on top of plain left-padded batching:

* repeated prefixes (see :mod:`graph.models.local.prefix`): rows that share a prefix run it once (stage 1), or not
  at all when it is in the prefix cache, and only their own suffixes run on top of it (stage 2);
* padding: every forward pass runs its rows at the width of the longest one, so rows are split into chunks of
  similar length (a chunk pads at most ``max_padding`` of its positions, or a few tokens per row). On a CPU a
  padded position costs as much as a real one, and an extra forward call far less than the padding it saves.

Layout of a stage-2 row: ``[pad][prefix of its group] [pad][suffix]``; both halves are left-padded, the
attention mask hides the pads and positions come from the mask, so the gap in the middle is invisible.
Works for models whose cache is a plain per-layer key/value tensor pair (Llama-like ``DynamicCache``, or the
native Llama's :class:`graph.models.local.llama.GrowingCache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from graph.models.local.prefix import CachedPrefix, LayerKV, PrefixCache, PrefixPlan, SharingPolicy, plan_prefixes

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from graph.models.local.llama import GrowingCache

MAX_PADDING = 0.1
PADDING_ALLOWANCE = 4  # tokens per row always tolerated (tiny chunks are not worth their own forward call)


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


def length_chunks(lengths: Sequence[int], max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Indices grouped into chunks of similar length: longest first, a row joins the current chunk while the
    chunk's padding stays within ``max_padding`` of its positions (plus ``PADDING_ALLOWANCE`` tokens a row)."""
    chunks: list[list[int]] = []
    width = total = 0
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if chunks:
            rows = len(chunks[-1]) + 1
            padding = width * rows - (total + lengths[index])
            if padding <= max_padding * width * rows + PADDING_ALLOWANCE * rows:
                chunks[-1].append(index)
                total += lengths[index]
                continue
        chunks.append([index])
        width = total = lengths[index]
    return chunks


@dataclass
class _RowKV:
    """Where one row's keys/values ended up: a forward pass's cache, the row's index in it, its mask row.

    With ``prefix`` (native stage 2) the cache holds the stacked prefixes in the attention's dtype; the row's
    exact keys/values are then its group's prefix followed by the pass's fresh ones at ``mask`` (its suffix).
    """

    cache: GrowingCache
    index: int
    mask: torch.Tensor
    prefix: list[LayerKV] | None = None


@dataclass
class PassResult:
    """Next-token logits per prompt (input order) and access to each prompt's keys/values."""

    logits: torch.Tensor
    prefill_tokens: int
    """Tokens the model ran over, padding excluded (shared prefixes once, cached ones not at all)."""
    padded_tokens: int
    """The same with padding: what the forward passes actually computed."""
    attention_pairs: int = 0
    """(query, key) pairs of real tokens attended, causally: the attention work a FLOP count needs."""
    _rows: list[_RowKV] = field(default_factory=list)

    def kv(self, row: int) -> list[LayerKV]:
        """Row ``row``'s keys/values per layer, ``[kv_heads, prompt_length, head_dim]``, padding removed."""
        import torch

        where = self._rows[row]
        columns = where.mask.nonzero().squeeze(-1)
        if where.prefix is None:
            return [
                (layer.keys[where.index][:, columns], layer.values[where.index][:, columns])
                for layer in where.cache.layers
            ]
        kv = []
        for (keys, values), layer in zip(where.prefix, where.cache.layers, strict=True):
            assert layer.fresh is not None
            fresh_keys, fresh_values = layer.fresh[0][where.index][:, columns], layer.fresh[1][where.index][:, columns]
            kv.append((torch.cat([keys, fresh_keys], dim=1), torch.cat([values, fresh_values], dim=1)))
        return kv


def new_cache(model: PreTrainedModel, initial: list[LayerKV] | None = None, filled: int | None = None) -> GrowingCache:
    """An empty (or pre-filled) per-pass cache of the kind ``model`` takes.

    ``filled``: the initial tensors' columns that hold keys/values; the rest is room for the pass's new ones
    (native Llama only, see :func:`_room_for`).
    """
    make = getattr(model, "new_cache", None)
    if make is not None:  # the native Llama
        return make(initial, filled)  # type: ignore[no-any-return]
    from transformers import DynamicCache

    if initial is None:
        return DynamicCache(config=model.config)  # type: ignore[return-value]
    return DynamicCache(ddp_cache_data=initial, config=model.config)  # type: ignore[return-value]


def _is_native(model: PreTrainedModel) -> bool:
    return hasattr(model, "new_cache")


def _cache_only(model: PreTrainedModel) -> dict[str, Any]:
    """Call options for a pass that only fills the cache: the native Llama then skips its output head."""
    return {"head": False} if _is_native(model) else {"logits_to_keep": 1}


def _room_for(model: PreTrainedModel, new: int) -> int:
    """Columns to reserve after a stage-2 prefix for the suffixes' keys/values: written in place by the native
    Llama's cache (no per-layer concatenation of the whole prefix); ``DynamicCache`` appends instead."""
    return new if _is_native(model) else 0


def _stacking_dtype(model: PreTrainedModel, like: torch.Tensor) -> torch.dtype:
    """Stage-2 prefixes are stacked in the dtype the native model's attention multiplies them in (bf16 halves
    the copy and saves converting them at every layer); rows' exact keys/values come from elsewhere
    (:class:`_RowKV`). ``DynamicCache`` keeps its own dtype."""
    return model.dtype if _is_native(model) else like.dtype  # type: ignore[no-any-return]


def run_prompts(
    model: PreTrainedModel,
    rows: Sequence[Sequence[int]],
    pad_id: int,
    sharing: SharingPolicy | None = None,
    cache: PrefixCache | None = None,
) -> PassResult:
    """Run ``rows`` (token ids) through ``model``; call under ``torch.inference_mode``."""
    import torch

    if sharing is not None and len(rows) > 1:
        plan = plan_prefixes(rows, sharing, cache)
    else:
        plan = PrefixPlan(prefixes=[list(r[:-1]) for r in rows], group_of=list(range(len(rows))),
                          suffixes=[list(r[-1:]) for r in rows], cached=[None] * len(rows))  # fmt: skip
    sizes = plan.group_sizes()
    plain = [i for i, g in enumerate(plan.group_of) if sizes[g] == 1 and plan.cached[g] is None]
    shared = [i for i, g in enumerate(plan.group_of) if sizes[g] > 1 or plan.cached[g] is not None]
    logits: list[torch.Tensor | None] = [None] * len(rows)
    located: list[_RowKV | None] = [None] * len(rows)
    padded = 0
    for chunk in length_chunks([len(rows[i]) for i in plain]):
        members = [plain[i] for i in chunk]
        padded += _run_full(model, [rows[i] for i in members], members, pad_id, logits, located)
    prefix_kv, stage1 = _prefix_kv(model, plan, sorted({plan.group_of[i] for i in shared}), pad_id, cache)
    padded += stage1
    for chunk in length_chunks([len(plan.suffixes[i]) for i in shared]):
        members = [shared[i] for i in chunk]
        padded += _run_suffixes(model, plan, members, prefix_kv, pad_id, logits, located)
    computed = [len(plan.prefixes[g]) for g in prefix_kv if plan.cached[g] is None and sizes[g] > 1]
    prefill_tokens = sum(computed) + sum(len(rows[i]) for i in plain) + sum(len(plan.suffixes[i]) for i in shared)
    pairs = sum(_causal_pairs(0, n) for n in computed) + sum(_causal_pairs(0, len(rows[i])) for i in plain)
    pairs += sum(_causal_pairs(len(plan.prefixes[plan.group_of[i]]), len(plan.suffixes[i])) for i in shared)
    return PassResult(torch.stack(logits), prefill_tokens, padded, pairs, located)  # type: ignore[arg-type]


def _causal_pairs(before: int, new: int) -> int:
    """Pairs attended by ``new`` tokens that follow ``before`` cached ones, each seeing itself and all before it."""
    return new * before + new * (new + 1) // 2


def _run_full(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    members: Sequence[int],
    pad_id: int,
    logits: list[torch.Tensor | None],
    located: list[_RowKV | None],
) -> int:
    ids, mask = left_pad(prompts, pad_id)
    run = new_cache(model)
    output = model(
        input_ids=ids, attention_mask=mask, position_ids=positions(mask), cache=run, use_cache=True, logits_to_keep=1
    )
    for n, row in enumerate(members):
        logits[row] = output.logits[n, -1]
        located[row] = _RowKV(run, n, mask[n])
    return ids.numel()


def _prefix_kv(
    model: PreTrainedModel, plan: PrefixPlan, groups: Sequence[int], pad_id: int, cache: PrefixCache | None
) -> tuple[dict[int, list[LayerKV]], int]:
    """Stage 1: each group's prefix keys/values ``[kv_heads, length, head_dim]``, from the cache or computed
    (in length chunks); computed ones are stored in the cache. Returns them and the positions run."""
    found: dict[int, list[LayerKV]] = {}
    for group in groups:
        entry = plan.cached[group]
        if entry is not None:
            found[group] = [(k[0], v[0]) for k, v in entry.layers]
    todo = [g for g in groups if g not in found]
    padded = 0
    for chunk in length_chunks([len(plan.prefixes[g]) for g in todo]):
        members = [todo[i] for i in chunk]
        ids, mask = left_pad([plan.prefixes[g] for g in members], pad_id)
        run = new_cache(model)
        model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), cache=run, use_cache=True,
              **_cache_only(model))  # fmt: skip
        padded += ids.numel()
        for n, group in enumerate(members):
            length = len(plan.prefixes[group])
            layers = [(layer.keys[n, :, -length:], layer.values[n, :, -length:]) for layer in run.layers]
            found[group] = layers
            if cache is not None:
                cache.put(
                    CachedPrefix(tuple(plan.prefixes[group]), [(k[None].clone(), v[None].clone()) for k, v in layers])
                )
    return found, padded


def _run_suffixes(
    model: PreTrainedModel,
    plan: PrefixPlan,
    members: Sequence[int],
    prefix_kv: dict[int, list[LayerKV]],
    pad_id: int,
    logits: list[torch.Tensor | None],
    located: list[_RowKV | None],
) -> int:
    """Stage 2 for one chunk: the rows' prefix keys/values side by side (left-padded), their suffixes on top."""
    import torch

    groups = [plan.group_of[i] for i in members]
    prefix_ids, prefix_mask = left_pad([plan.prefixes[g] for g in groups], pad_id)
    suffix_ids, suffix_mask = left_pad([plan.suffixes[i] for i in members], pad_id)
    width, room = prefix_ids.shape[1], _room_for(model, suffix_ids.shape[1])
    dtype = _stacking_dtype(model, prefix_kv[groups[0]][0][0])
    layers = []
    for number in range(len(prefix_kv[groups[0]])):
        keys = _stack_left_padded([prefix_kv[g][number][0] for g in groups], width, room, dtype)
        values = _stack_left_padded([prefix_kv[g][number][1] for g in groups], width, room, dtype)
        layers.append((keys, values))
    mask = torch.cat([prefix_mask, suffix_mask], dim=1)
    run = new_cache(model, layers, width)
    output = model(
        input_ids=suffix_ids, attention_mask=mask, position_ids=positions(mask)[:, width:], cache=run,
        use_cache=True, logits_to_keep=1,
    )  # fmt: skip
    native = _is_native(model)
    for n, (row, group) in enumerate(zip(members, groups, strict=True)):
        logits[row] = output.logits[n, -1]
        located[row] = _RowKV(run, n, suffix_mask[n], prefix_kv[group]) if native else _RowKV(run, n, mask[n])
    return suffix_ids.numel()


def _stack_left_padded(
    tensors: Sequence[torch.Tensor], width: int, room: int = 0, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``[heads, len, dim]`` tensors right-aligned into one zero-padded ``[rows, heads, width + room, dim]``
    (in ``dtype``, default theirs); the ``room`` columns after them are left unset (the pass writes them)."""
    import torch

    heads, _, dim = tensors[0].shape
    out = torch.empty((len(tensors), heads, width + room, dim), dtype=dtype or tensors[0].dtype)
    for i, tensor in enumerate(tensors):
        start = width - tensor.shape[1]
        out[i, :, :start] = 0
        out[i, :, start:width] = tensor
    return out
