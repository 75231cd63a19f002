"""A native forward pass for Llama-architecture models (SmolLM2 is one): torch only, no transformers.

Why: on a 2-core CPU importing ``transformers``' model code costs ~4 s (it pulls in ``torch.distributed``,
``torch._dynamo`` and scipy) before a single weight is read, which alone breaks a 5 s cold start. The Llama
block is small and stable (RMSNorm, rotary attention with grouped key/value heads, SwiGLU MLP), so the
default model runs here on plain tensors read from the same ``model.safetensors``. Any other architecture,
or any Llama option not listed in :func:`check_supported`, goes through ``transformers`` as before.

The call matches what the engine asks of a Hugging Face causal LM: ``model(input_ids=..., attention_mask=...,
position_ids=..., cache=..., logits_to_keep=1).logits``, where ``attention_mask`` is a 2D 0/1 mask over
cached plus new columns or a prepared additive 4D mask, and ``cache`` anything with
``update(keys, values, layer_idx) -> (all_keys, all_values)``. Query/key/value and gate/up projections are
fused into one matrix each at load time: fewer, larger matrix products are faster on a CPU.

Precision: the weight matrices may be bf16 (:mod:`graph.models.local.precision`); then their matrix
products run in bf16, and so do the two matrix products of attention in prompt passes (query x keys, weights x
values; scores, mask and softmax in fp32): torch's fused CPU attention runs at ~5% of the bf16 matrix peak there,
plain bf16 batched products ~4x faster (see :func:`grouped_attention`). The residual stream, the norms, rotary
embeddings, decode-step attention, the key/value cache and the logits stay in fp32, because that is where bf16's
8-bit mantissa would hurt (sums over 30 layers, P(yes) from two logits) and where the cost is small.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from graph.models.local.llama_config import LlamaConfig, read_config, read_eos_ids


class KVCache(Protocol):
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class CacheLayer:
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    filled: int = 0
    """Columns that hold keys/values; columns past them are room that ``update`` fills in place."""
    fresh: tuple[torch.Tensor, torch.Tensor] | None = None
    """The last update's keys/values as computed (fp32), whatever the dtype of the tensors they went into."""


@dataclass
class GrowingCache:
    """Per-layer ``[rows, kv_heads, length, head_dim]`` keys/values that grow by concatenation.

    The native counterpart of ``transformers.DynamicCache`` for one forward pass (the prefill passes use it).
    Initial tensors may come with room for the pass's new columns (``filled`` < their width): then the new
    keys/values are written into it, saving a copy of everything cached per layer.
    """

    layers: list[CacheLayer] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        num_layers: int,
        initial: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        filled: int | None = None,
    ) -> GrowingCache:
        if initial is None:
            return cls([CacheLayer() for _ in range(num_layers)])
        return cls([CacheLayer(k, v, k.shape[2] if filled is None else filled) for k, v in initial])

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layers[layer_idx]
        start, end = layer.filled, layer.filled + key_states.shape[2]
        if layer.keys is None or layer.values is None:
            layer.keys, layer.values = key_states, value_states
        elif end <= layer.keys.shape[2]:
            layer.keys[:, :, start:end] = key_states
            layer.values[:, :, start:end] = value_states
        else:
            layer.keys = torch.cat([layer.keys[:, :, :start], key_states], dim=2)
            layer.values = torch.cat([layer.values[:, :, :start], value_states], dim=2)
        layer.filled, layer.fresh = end, (key_states, value_states)
        return layer.keys[:, :, :end], layer.values[:, :, :end]


@dataclass
class _Block:
    input_norm: torch.Tensor
    qkv: torch.Tensor
    out: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


class NativeLlama:
    """Llama inference on CPU tensors; load with :func:`load_native_llama`."""

    def __init__(self, config: LlamaConfig, weights: dict[str, torch.Tensor], eos_ids: list[int]) -> None:
        self.config = config
        self.generation_config = SimpleNamespace(eos_token_id=eos_ids)
        self.dtype = weights["model.embed_tokens.weight"].dtype
        """Dtype of the weight matrices and their products; everything else runs in fp32."""
        self.embed = weights["model.embed_tokens.weight"]
        self.norm = weights["model.norm.weight"]
        self.lm_head = self.embed if config.tie_word_embeddings else weights["lm_head.weight"]
        self.lm_head_fp32 = self.lm_head.float()
        """The head in fp32 for prompt passes, whose logits give P(yes); decode steps may use the bf16 one."""
        self.blocks = [self._block(weights, f"model.layers.{n}.") for n in range(config.num_hidden_layers)]
        dim = config.head_dim
        self.inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))

    @staticmethod
    def _block(weights: dict[str, torch.Tensor], prefix: str) -> _Block:
        attention, mlp = prefix + "self_attn.", prefix + "mlp."
        return _Block(
            input_norm=weights[prefix + "input_layernorm.weight"],
            qkv=torch.cat([weights[attention + f"{p}_proj.weight"] for p in "qkv"]),
            out=weights[attention + "o_proj.weight"],
            post_norm=weights[prefix + "post_attention_layernorm.weight"],
            gate_up=torch.cat([weights[mlp + "gate_proj.weight"], weights[mlp + "up_proj.weight"]]),
            down=weights[mlp + "down_proj.weight"],
        )

    def eval(self) -> NativeLlama:
        """Inference only already; kept so callers can treat it like a torch module."""
        return self

    def new_cache(
        self, initial: list[tuple[torch.Tensor, torch.Tensor]] | None = None, filled: int | None = None
    ) -> GrowingCache:
        return GrowingCache.of(self.config.num_hidden_layers, initial, filled)

    def __call__(self, **kwargs: Any) -> SimpleNamespace:
        return self.forward(**kwargs)

    def forward(
        self,
        *,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: KVCache,
        logits_to_keep: int = 0,
        exact_logits: bool = True,
        head: bool = True,
        **_: Any,
    ) -> SimpleNamespace:
        """Logits ``[rows, kept, vocab]`` (fp32) for the new tokens; their keys/values go into ``cache``.

        ``exact_logits=False`` runs the output head in the weights' dtype and returns its logits in that dtype:
        ~4x cheaper in bf16, for decode steps whose logits only pick the next token (argmax is exact on them).
        ``head=False`` skips the head (``logits`` is None): passes that only fill the cache (shared prefixes)
        need no logits, and the fp32 head reads 113 MB of weights.
        """
        hidden = F.embedding(input_ids, self.embed).float()
        cos, sin = self._rotary(position_ids)
        mask = self._additive_mask(attention_mask, input_ids.shape[1])
        for number, block in enumerate(self.blocks):
            hidden = hidden + self._attention(block, self._rms(hidden, block.input_norm), cos, sin, mask, cache, number)
            normed = self._rms(hidden, block.post_norm)
            gate, up = F.linear(normed, block.gate_up).chunk(2, dim=-1)
            hidden = hidden + F.linear(F.silu(gate) * up, block.down)
        if not head:
            return SimpleNamespace(logits=None)
        kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        if exact_logits:
            normed = F.rms_norm(kept, (kept.shape[-1],), self.norm, self.config.rms_norm_eps)
            return SimpleNamespace(logits=F.linear(normed, self.lm_head_fp32))
        return SimpleNamespace(logits=F.linear(self._rms(kept, self.norm), self.lm_head))

    # -- pieces ----------------------------------------------------------------------------------------------

    def _rms(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm of the fp32 residual stream, in fp32, handed to the next matrix product in its dtype."""
        normed = F.rms_norm(hidden, (hidden.shape[-1],), weight, self.config.rms_norm_eps)
        return normed.to(self.dtype)

    def _rotary(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq
        angles = torch.cat([freqs, freqs], dim=-1)
        return angles.cos()[:, None], angles.sin()[:, None]

    @staticmethod
    def _additive_mask(attention_mask: torch.Tensor, new: int) -> torch.Tensor:
        """``[rows, 1, new, columns]``: 0 where a new token may look, the dtype's minimum elsewhere.

        A 2D mask covers cached plus new columns; new token ``i`` sees unmasked columns up to its own. The
        minimum (not -inf) keeps fully masked rows (left padding) finite, as Hugging Face does.
        """
        if attention_mask.dim() == 4:
            return attention_mask.float()
        columns = attention_mask.shape[1]
        causal = torch.arange(columns)[None, :] <= torch.arange(columns - new, columns)[:, None]
        visible = causal[None] & attention_mask[:, None, :].bool()
        mask = torch.zeros(visible.shape, dtype=torch.float32)
        mask.masked_fill_(~visible, torch.finfo(torch.float32).min)
        return mask[:, None]

    def _attention(
        self,
        block: _Block,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache,
        layer: int,
    ) -> torch.Tensor:
        config = self.config
        rows, new, _ = hidden.shape
        heads, kv_heads, dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        qkv = F.linear(hidden, block.qkv).view(rows, new, heads + 2 * kv_heads, dim).transpose(1, 2)
        rotated = _rotate(qkv[:, : heads + kv_heads].float(), cos, sin)  # queries and keys in one go
        query, keys = rotated.split([heads, kv_heads], dim=1)
        values = qkv[:, heads + kv_heads :].float()
        keys, values = cache.update(keys.contiguous(), values.contiguous(), layer)
        if self.dtype == torch.bfloat16 and (new > 1 or keys.dtype == self.dtype):
            attended = grouped_attention(query, keys, values, mask, self.dtype)
        else:
            attended = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, enable_gqa=kv_heads != heads)
        return F.linear(attended.transpose(1, 2).reshape(rows, new, heads * dim).to(self.dtype), block.out)


def grouped_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Attention of ``query [rows, heads, new, dim]`` over ``keys``/``values [rows, kv_heads, columns, dim]``
    under an additive ``mask [rows, 1, new, columns]``, with both matrix products in ``dtype``.

    The query heads that share a key/value head are stacked along the query axis, so each product is one
    ``[heads/kv_heads x new, dim] x [dim, columns]`` matrix per (row, kv head): batched matrix products large
    enough to run at bf16 speed, keys and values read once per group. Scores, mask and softmax stay in fp32
    (masked scores stay finite: the mask holds fp32's minimum, so fully masked padding rows stay finite too).
    Same as ``F.scaled_dot_product_attention(..., enable_gqa=True)`` up to ``dtype``'s rounding of the inputs.
    """
    rows, heads, new, dim = query.shape
    kv_heads, columns = keys.shape[1], keys.shape[2]
    group = heads // kv_heads
    stacked = (query * dim**-0.5).to(dtype).reshape(rows, kv_heads, group * new, dim)
    scores = torch.matmul(stacked, keys.to(dtype).transpose(-1, -2)).float()
    scores = scores.view(rows, kv_heads, group, new, columns) + mask[:, :, None]
    weights = torch.softmax(scores, dim=-1).to(dtype).view(rows, kv_heads, group * new, columns)
    return torch.matmul(weights, values.to(dtype)).view(rows, heads, new, dim)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def load_native_llama(folder: Path, dtype: torch.dtype = torch.float32) -> NativeLlama:
    """Read ``config.json`` and ``model.safetensors`` from ``folder``: weight matrices in ``dtype``, norms in fp32."""
    from safetensors.torch import load_file

    config = read_config(folder)
    weights = {
        name: tensor.to(dtype) if tensor.dim() == 2 else tensor.float()
        for name, tensor in load_file(folder / "model.safetensors").items()
    }
    return NativeLlama(config, weights, read_eos_ids(folder))
