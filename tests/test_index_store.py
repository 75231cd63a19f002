"""Store semantics: a post's vectors are exactly its latest verified intentions; deletes; filters; reload."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers.index import apply, make_doc, open_index, sample_docs

from index.embeddings import HashingEmbedder
from index.records import IntentionDoc, PostDoc
from index.service import IndexSettings, IntentionIndex
from index.store import IndexMismatchError
from index.vectors import VectorIndexConfig

KINDS = ["flat", "hnsw"]


@pytest.mark.parametrize("kind", KINDS)
def test_upsert_replaces_all_of_a_posts_vectors(kind: str, tmp_path: Path) -> None:
    index = open_index(tmp_path, kind)
    apply(index, {"p1": make_doc("p1", "t", {"xIntent": "sell followers", "xReact": "feels greedy"})})
    apply(index, {"p2": make_doc("p2", "u", {"xIntent": "walk the dog"})})
    assert len(index.store) == 3

    # A new event for p1: xIntent changes, xReact disappears, xWant appears.
    apply(index, {"p1": make_doc("p1", "t2", {"xIntent": "buy a bike", "xWant": "ride to work"})})
    assert len(index.store) == 3
    assert index.stats()["relations"] == {"xIntent": 2, "xWant": 1}
    texts = {hit.text for hit in index.search("sell followers feels greedy", k=10)}
    assert texts == {"buy a bike", "ride to work", "walk the dog"}
    top = index.search("buy a bike", k=1)[0]
    assert (top.post_id, top.relation, top.post_text) == ("p1", "xIntent", "t2")
    assert '"t2"' in (index.document("p1") or "")


@pytest.mark.parametrize("kind", KINDS)
def test_delete_removes_the_post_and_its_vectors(kind: str, tmp_path: Path) -> None:
    index = open_index(tmp_path, kind)
    apply(index, sample_docs())
    before = len(index.store)
    apply(index, {"p-dog": None, "unknown-post": None})
    assert len(index.store) == before - 2
    assert index.document("p-dog") is None
    assert all(hit.post_id != "p-dog" for hit in index.search("sad about losing their dog", k=20))
    assert index.similar("p-dog") is None


def test_redelivered_identical_event_embeds_nothing(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    docs = sample_docs()
    apply(index, docs)
    assert index.store.plan(docs) == {}
    changed = {"p-goal": make_doc("p-goal", "x", {"xReact": "proud of the team winning the final", "oReact": "envy"})}
    assert list(index.store.plan(changed).values()) == ["envy"]


def test_relation_filter_widens_until_k_hits(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    docs = {f"p{i}": make_doc(f"p{i}", "t", {"xIntent": f"sell item {i}"}) for i in range(60)}
    docs["rare"] = make_doc("rare", "t", {"oReact": "totally unrelated words"})
    apply(index, docs)
    hits = index.search("sell item 3", k=1, relation="oReact")
    assert [(hit.post_id, hit.relation) for hit in hits] == [("rare", "oReact")]
    assert all(hit.relation == "xIntent" for hit in index.search("sell item", k=5, relation="xIntent"))


def test_similar_returns_other_posts_best_pair_first(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    apply(
        index,
        {
            "a": make_doc("a", "t", {"xIntent": "sell cheap followers", "xReact": "excited"}),
            "b": make_doc("b", "t", {"xIntent": "sell cheap followers now"}),
            "c": make_doc("c", "t", {"xWant": "go swimming"}),
        },
    )
    hits = index.similar("a", k=5)
    assert hits is not None and hits[0].post_id == "b"
    assert "a" not in {hit.post_id for hit in hits}
    assert index.similar("c", k=5, relation="xIntent") == []


def test_one_vector_per_relation_even_if_an_event_repeats_one(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    doc = PostDoc("p", "t", "{}", (IntentionDoc("xIntent", "first", 0.9), IntentionDoc("xIntent", "second", 0.8)))
    apply(index, {"p": doc})
    assert len(index.store) == 1
    assert index.search("first", k=1)[0].text == "first"


def test_apply_requires_embeddings_for_changed_intentions(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    with pytest.raises(ValueError, match="no embedding"):
        index.store.apply(sample_docs(), {}, {"offsets": {}})
    assert len(index.store) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_snapshot_round_trip_and_mismatch_errors(kind: str, tmp_path: Path) -> None:
    index = open_index(tmp_path, kind)
    docs = sample_docs()
    apply(index, docs, offset=5)

    asyncio.run(index.snapshot())
    expected = [(hit.post_id, hit.relation) for hit in index.search("book a flight", k=3)]
    index.close()

    reopened = IntentionIndex.open(IndexSettings(tmp_path), HashingEmbedder(), writer=False)
    assert reopened.store.kind == kind
    assert reopened.checkpoint == {"topic": "t", "offsets": {"0": 5}}
    assert [(hit.post_id, hit.relation) for hit in reopened.search("book a flight", k=3)] == expected
    assert reopened.document("p-phone") == docs["p-phone"].document

    with pytest.raises(IndexMismatchError, match="embedding model"):
        IntentionIndex.open(IndexSettings(tmp_path), HashingEmbedder(dim=64), writer=False)
    other = "flat" if kind == "hnsw" else "hnsw"
    with pytest.raises(IndexMismatchError, match="index rebuild"):
        IntentionIndex.open(
            IndexSettings(tmp_path, VectorIndexConfig(kind=other)),  # type: ignore[arg-type]
            HashingEmbedder(),
            writer=False,
        )


def test_hnsw_store_compacts_after_many_replacements(tmp_path: Path) -> None:
    index = open_index(tmp_path, "hnsw", compact_ratio=0.2, compact_min=5)
    apply(index, {f"p{i}": make_doc(f"p{i}", "t", {"xIntent": f"first version {i}"}) for i in range(20)})
    apply(index, {f"p{i}": make_doc(f"p{i}", "t", {"xIntent": f"second version {i}"}) for i in range(10)})
    assert index.store._vectors.tombstones == 0  # type: ignore[attr-defined]
    assert len(index.store) == 20
    assert index.search("second version 3", k=1)[0].text == "second version 3"


def test_searches_run_concurrently_with_the_writer(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    apply(index, sample_docs())
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                hits = index.search("sell followers", k=5)
                assert hits and all(np.isfinite(hit.score) for hit in hits)
            except BaseException as error:  # collected, asserted in the test thread
                errors.append(error)
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for round_ in range(30):
        apply(index, {f"w{round_ % 7}": make_doc(f"w{round_ % 7}", "t", {"xWant": f"thing {round_}"})}, round_)
    done.set()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(index.store) == sum(len(doc.intentions) for doc in sample_docs().values()) + 7
