"""Key/value storage for continuous batching: one slot per running sequence, written in place at every step.

Why not ``DynamicCache``: it concatenates every layer's whole cache at every decoding step (a third of the
step time at 32 rows x 250 tokens on a 2-core CPU) and cannot drop a finished row or add a new one. Here each
running sequence owns a slot (a row of preallocated per-layer tensors); its tokens sit at columns
``0 .. length - 1`` and each step writes one new column per row, in place. Rows of different lengths share a
step through an explicit attention mask and explicit positions (no padding side, no shifting). A finished
row's slot is refilled by moving the last live row into it, so live rows are always slots ``0 .. live - 1``
and a step runs over exactly the live rows.

Its ``update`` writes the step's keys/values and returns views of the live rows; the caller passes a prepared
4D mask, which the models use as is. The native Llama (:mod:`graph.models.local.llama`) takes it as it is; Hugging
Face models need a ``transformers.Cache``, which :func:`slot_cache_for` makes by mixing that class in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

GROW_COLUMNS = 64
GROW_SLOTS = 8


class SlotCache:
    """Per-layer ``[slots, kv_heads, width, head_dim]`` tensors, grown on demand; used from one thread only."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths: list[int] = []  # tokens stored per live slot
        self._step_width = 0
        self._step_index: torch.Tensor | None = None  # where each live row's new key/value goes, per head

    @property
    def live(self) -> int:
        return len(self.lengths)

    @property
    def capacity(self) -> tuple[int, int]:
        """(slots, columns) currently allocated."""
        return (self.keys[0].shape[0], self.keys[0].shape[2]) if self.keys else (0, 0)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.keys) + sum(t.nbytes for t in self.values)

    # -- rows joining and leaving ------------------------------------------------------------------------

    def add(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Store one sequence's ``[kv_heads, length, head_dim]`` keys/values per layer; returns its slot."""
        length = layers[0][0].shape[1]
        slot = self.live
        self._reserve(slot + 1, length + 1, layers[0][0])
        for number, (keys, values) in enumerate(layers):
            self.keys[number][slot, :, :length] = keys
            self.values[number][slot, :, :length] = values
        self.lengths.append(length)
        return slot

    def remove(self, slot: int) -> int | None:
        """Free ``slot``; the last live row moves into it. Returns the slot that moved (None if none did)."""
        last = self.live - 1
        if slot != last:
            length = self.lengths[last]
            for tensors in (self.keys, self.values):
                for tensor in tensors:
                    tensor[slot, :, :length] = tensor[last, :, :length]
            self.lengths[slot] = length
        self.lengths.pop()
        return last if slot != last else None

    def clear(self) -> None:
        self.lengths.clear()

    # -- one decoding step -------------------------------------------------------------------------------

    def begin_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions ``[live, 1]`` and the additive mask ``[live, 1, 1, width]`` for one new token per row."""
        import torch

        lengths = torch.tensor(self.lengths, dtype=torch.long)
        width = int(lengths.max()) + 1
        self._reserve(self.live, width, self.keys[0])
        self._step_width = width
        _, heads, columns, _ = self.keys[0].shape
        rows_and_heads = torch.arange(self.live * heads).view(self.live, heads)
        self._step_index = (rows_and_heads * columns + lengths[:, None]).view(-1)
        visible = torch.arange(width)[None, :] <= lengths[:, None]
        mask = torch.zeros(visible.shape, dtype=self.keys[0].dtype)
        mask.masked_fill_(~visible, torch.finfo(mask.dtype).min)
        return lengths[:, None], mask[:, None, None, :]

    def end_step(self) -> None:
        self.lengths = [length + 1 for length in self.lengths]
        self._step_index = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the step's one new token per live row, return the live rows' keys/values (views).

        One ``index_copy_`` into the flattened tensor per call (advanced-index assignment cost ~50x more).
        """
        if self._step_index is None or key_states.shape[2] != 1:
            raise RuntimeError("SlotCache takes one token per live row, between begin_step and end_step")
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        dim = keys.shape[-1]
        keys.view(-1, dim).index_copy_(0, self._step_index, key_states.reshape(-1, dim).to(keys.dtype))
        values.view(-1, dim).index_copy_(0, self._step_index, value_states.reshape(-1, dim).to(values.dtype))
        live, width = self.live, self._step_width
        return keys[:live, :, :width], values[:live, :, :width]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.lengths, default=0)

    # -- storage -----------------------------------------------------------------------------------------

    def _reserve(self, slots: int, columns: int, like: torch.Tensor) -> None:
        """Grow the tensors (copying the live rows) so they hold ``slots`` x ``columns``."""
        import torch

        have_slots, have_columns = self.capacity
        if slots <= have_slots and columns <= have_columns:
            return
        new_slots = max(have_slots, -(-slots // GROW_SLOTS) * GROW_SLOTS)
        new_columns = max(have_columns, -(-columns // GROW_COLUMNS) * GROW_COLUMNS)
        heads, dim = like.shape[-3], like.shape[-1]
        for tensors in (self.keys, self.values):
            for number in range(self.num_layers):
                grown = torch.zeros((new_slots, heads, new_columns, dim), dtype=like.dtype)
                if number < len(tensors):
                    grown[: self.live, :, :have_columns] = tensors[number][: self.live]
                    tensors[number] = grown
                else:
                    tensors.append(grown)


def slot_cache_for(model: Any, num_layers: int) -> SlotCache:
    """A slot cache ``model`` accepts: plain for the native Llama, a ``transformers.Cache`` for the others."""
    from graph.models.local.llama import NativeLlama

    if isinstance(model, NativeLlama):
        return SlotCache(num_layers)
    from transformers import Cache

    class TransformersSlotCache(SlotCache, Cache):
        def __init__(self, layers: int) -> None:
            Cache.__init__(self, layers=[])
            SlotCache.__init__(self, layers)

    return TransformersSlotCache(num_layers)
