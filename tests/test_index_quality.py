"""Search quality with the real bundled all-MiniLM-L6-v2 (offline) on a hand-made fixture; embedders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers.index import apply, make_doc

from index.embeddings import (
    DEFAULT_MODEL,
    EmbeddingModelError,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    load_embedder,
    resolve_model,
)
from index.service import IndexSettings, IntentionIndex

# Each post has a distinct intention; queries paraphrase one of them with few shared words.
POSTS = {
    "followers": ("dm me for cheap followers", {"xIntent": "sell instagram followers to other accounts"}),
    "goal": ("CHAMPIONS!!! what a goal", {"xReact": "proud that their football team won the final"}),
    "dog": ("rip buddy, best boy ever", {"xReact": "heartbroken after their dog died"}),
    "phone": ("unboxing day", {"xWant": "show everyone the smartphone they just bought"}),
    "trip": ("paris next week!", {"xNeed": "book plane tickets to paris"}),
    "exam": ("finally done with finals", {"xReact": "relieved that the university exams are over"}),
    "scam": ("you won a prize, click here", {"xIntent": "trick people into giving their bank details"}),
    "cook": ("homemade lasagna tonight", {"xWant": "share a recipe for an italian pasta dish"}),
}
QUERIES = [
    ("wants to sell followers", None, "followers"),
    ("celebrating a sports victory", None, "goal"),
    ("grieving the loss of a pet", None, "dog"),
    ("showing off a new mobile phone", None, "phone"),
    ("arranging flights for a trip to France", None, "trip"),
    ("glad that school tests are finished", None, "exam"),
    ("phishing for people's banking information", "xIntent", "scam"),
    ("cooking italian food", "xWant", "cook"),
]


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def index(minilm: SentenceTransformerEmbedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IntentionIndex]:
    root = Path(tmp_path_factory.mktemp("quality"))
    opened = IntentionIndex.open(IndexSettings(root), minilm, writer=True)
    apply(opened, {post_id: make_doc(post_id, text, items) for post_id, (text, items) in POSTS.items()})
    yield opened
    opened.close()


@pytest.mark.parametrize(("query", "relation", "expected"), QUERIES)
def test_the_right_neighbour_ranks_first(
    index: IntentionIndex, query: str, relation: str | None, expected: str
) -> None:
    hits = index.search(query, k=3, relation=relation)
    assert hits[0].post_id == expected, [(hit.post_id, round(hit.score, 3)) for hit in hits]
    assert hits[0].score > hits[1].score


def test_bundled_model_is_found_offline_and_normalises(minilm: SentenceTransformerEmbedder) -> None:
    assert Path(resolve_model("sentence-transformers/all-MiniLM-L6-v2"), "model.safetensors").is_file()
    assert resolve_model("/some/other/model") == "/some/other/model"
    assert minilm.name == DEFAULT_MODEL and minilm.dim == 384
    vectors = minilm.encode(["a dog", "a cat", ""] * 50)  # more than one chunk
    assert vectors.shape == (150, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert minilm.encode([]).shape == (0, 384)


def test_hashing_embedder_is_deterministic_and_lexical() -> None:
    embedder = load_embedder("hash:64")
    assert isinstance(embedder, HashingEmbedder) and embedder.name == "hash:64" and embedder.dim == 64
    a, b, c, empty = embedder.encode(["Sell followers", "sell followers!", "walk the dog", ""])
    assert np.allclose(a, b) and float(a @ c) < 0.5
    assert not empty.any()
    with pytest.raises(EmbeddingModelError, match="hash:DIM"):
        load_embedder("hash:big")


def test_bf16_embeddings_match_fp32(minilm: SentenceTransformerEmbedder) -> None:
    """The bf16 model (default where the CPU supports it) against float32: same vectors within rounding."""
    texts = [text for _, items in POSTS.values() for text in items.values()] + [query for query, _, _ in QUERIES]
    fp32 = SentenceTransformerEmbedder(DEFAULT_MODEL, dtype="fp32")
    bf16 = SentenceTransformerEmbedder(DEFAULT_MODEL, dtype="bf16")
    assert (fp32.dtype, bf16.dtype) == ("fp32", "bf16")
    exact, rounded = fp32.encode(texts), bf16.encode(texts)
    assert rounded.dtype == np.float32
    assert float(np.min(np.sum(exact * rounded, axis=1))) > 0.995
    assert (np.argsort(-(exact @ exact.T), axis=1)[:, :3] == np.argsort(-(rounded @ rounded.T), axis=1)[:, :3]).all()
