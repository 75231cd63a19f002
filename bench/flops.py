"""Model FLOPs of the engine's passes and the machine's measured matrix-product peaks, for utilisation figures.

A pass's model FLOPs are the arithmetic a dense implementation needs for its real tokens (padding and
recomputation excluded): 2 x (parameters of the weight matrices) per token, 2 x vocab x hidden per row whose
logits are computed, and for attention 4 x heads x head_dim per (query, key) pair that is attended, counted
causally (see ``CallTrace.attention_pairs``). The peak is a large square matrix product timed on the spot
with the engine's thread count, so that utilisation is a ratio of two measurements of the same run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        """From a native ``LlamaConfig`` or a transformers Llama-like config."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate=config.intermediate_size,
            vocab=config.vocab_size,
        )

    @property
    def block_params(self) -> int:
        """Weight-matrix parameters of the transformer blocks (embedding and output head excluded)."""
        attention = (
            self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim + self.heads * self.head_dim * self.hidden
        )
        return self.layers * (attention + 3 * self.hidden * self.intermediate)

    def flops(self, tokens: int, logit_rows: int, attention_pairs: int) -> float:
        """Model FLOPs of ``tokens`` new tokens, ``logit_rows`` rows of logits and ``attention_pairs`` pairs."""
        matrices = 2 * self.block_params * tokens + 2 * self.vocab * self.hidden * logit_rows
        attention = 4 * self.layers * self.heads * self.head_dim * attention_pairs
        return float(matrices + attention)


def matmul_peak(dtype_name: str, threads: int, size: int = 2048, repeats: int = 6) -> float:
    """Best FLOP/s of a ``size`` x ``size`` x ``size`` matrix product in ``dtype_name`` (bf16 or fp32)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        with torch.inference_mode():
            a @ b  # warm-up: packing, thread pool
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                a @ b
                best = min(best, time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / best
