"""Benchmark of the intention index's FAISS layer: add rate, search latency, ANN recall (README, "Flat or HNSW").

For each size (default 100k and 1M synthetic 384-d unit vectors) and each index kind (flat = exact, hnsw =
approximate, swept over efSearch), it measures the add rate, the latency of single-query top-10 searches
(p50/p99 over ``--queries`` queries, one at a time, as the API issues them) and HNSW's recall@10 against the
exact results. The vectors are drawn around 1,000 random centres, a crude stand-in for sentence embeddings,
which cluster by topic (uniform random vectors are the worst case for any ANN index). Optionally it also
measures the embedder's throughput (``--embed-texts``, float32 against the default bf16-where-supported),
which bounds the indexer in practice.

Run from the project root:  python -m bench.index [--sizes 100000,1000000] [--queries 1000]
                            python -m bench.index --embed-only --embed-texts 4096
"""

from __future__ import annotations

import os

# As the CLI does: OpenMP threads sleep between parallel regions instead of spinning (read when torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: replace bench/ on sys.path by the project root, or this file would shadow `index`.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np

from index.embeddings import load_embedder, normalize_rows
from index.vectors import HnswVectors, VectorIndex, VectorIndexConfig, create_vector_index


@dataclass
class Row:
    size: int
    kind: str
    add_per_s: float | None
    build_s: float | None
    p50_ms: float
    p99_ms: float
    recall: float | None


def synthetic(n: int, dim: int, seed: int, centres: np.ndarray, chunk: int = 100_000) -> Iterator[np.ndarray]:
    """Unit vectors near random centres, in chunks (1M x 384 float32 is 1.5 GB)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        picks = centres[rng.integers(0, len(centres), size)]
        yield normalize_rows(picks + 0.6 * rng.standard_normal((size, dim), dtype=np.float32) / np.sqrt(dim))


def build(kind: str, data: np.ndarray, config: VectorIndexConfig, batch: int) -> tuple[VectorIndex, float]:
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)  # searches in this thread lowered it to search_threads
    index = create_vector_index(data.shape[1], VectorIndexConfig(**{**config.__dict__, "kind": kind}))
    started = time.perf_counter()
    for start in range(0, len(data), batch):
        ids = np.arange(start, min(start + batch, len(data)), dtype=np.int64)
        index.add(ids, data[start : start + batch])
    return index, time.perf_counter() - started


def latencies(index: VectorIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query latency in ms, and the returned ids."""
    times = np.empty(len(queries))
    found = np.empty((len(queries), k), dtype=np.int64)
    for row, query in enumerate(queries):
        started = time.perf_counter()
        _, ids = index.search(query[None, :], k)
        times[row] = (time.perf_counter() - started) * 1000
        found[row] = ids[0]
    return times, found


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(found, exact, strict=True)]))


def run_size(size: int, args: argparse.Namespace, centres: np.ndarray) -> list[Row]:
    data = np.vstack(list(synthetic(size, args.dim, seed=1, centres=centres)))
    queries = np.vstack(list(synthetic(args.queries, args.dim, seed=2, centres=centres)))
    config = VectorIndexConfig(
        hnsw_m=args.hnsw_m, hnsw_ef_construction=args.ef_construction, search_threads=args.search_threads
    )
    rows: list[Row] = []

    flat, flat_s = build("flat", data, config, args.batch)
    times, exact = latencies(flat, queries, args.k)
    rows.append(Row(size, "flat", size / flat_s, flat_s, *np.percentile(times, [50, 99]), None))
    print(f"  flat: built in {flat_s:.1f}s, p50 {rows[-1].p50_ms:.2f} ms", file=sys.stderr, flush=True)
    del flat

    if "hnsw" in args.kinds:
        hnsw, hnsw_s = build("hnsw", data, config, args.batch)
        print(f"  hnsw: built in {hnsw_s:.1f}s", file=sys.stderr, flush=True)
        assert isinstance(hnsw, HnswVectors)
        for ef in args.ef_search:
            hnsw.config = VectorIndexConfig(**{**config.__dict__, "kind": "hnsw", "hnsw_ef_search": ef})
            times, found = latencies(hnsw, queries, args.k)
            first = ef == args.ef_search[0]
            rows.append(
                Row(
                    size,
                    f"hnsw M={args.hnsw_m} ef={ef}",
                    size / hnsw_s if first else None,
                    hnsw_s if first else None,
                    *np.percentile(times, [50, 99]),
                    recall_at_k(found, exact),
                )
            )
    return rows


EMBED_TARGET = 1000  # intentions/s (issue 13)


def intention_like(count: int) -> list[str]:
    """Texts shaped like the completions the index embeds (~10-15 tokens), all different."""
    verbs = ["share", "show", "celebrate", "complain about", "ask friends about", "remember", "joke about"]
    things = ["a photo of their cats", "the weather", "a new phone", "their exam results", "a football match"]
    return [f"{verbs[n % 7]} {things[n % 5]} with friends number {n}" for n in range(count)]


def embed_rate(spec: str, texts: int, dtype: str) -> tuple[float, float, str]:
    """Texts/s of one ``encode`` call over ``texts`` texts (after a warm-up call), texts per CPU-second of
    this process (all threads), and the dtype used."""
    embedder = load_embedder(spec, dtype=dtype)
    sentences = intention_like(texts)
    embedder.encode(sentences[:256])  # warm-up
    started, cpu = time.perf_counter(), time.process_time()
    embedder.encode(sentences)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return texts / wall, texts / cpu, getattr(embedder, "dtype", "-")


def print_table(rows: list[Row], k: int) -> None:
    def number(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    header = f"| vectors | index | add (vectors/s) | build (s) | search p50 (ms) | search p99 (ms) | recall@{k} |"
    print(header)
    print("|" + "|".join("---" for _ in range(7)) + "|")
    for row in rows:
        print(
            f"| {row.size:,} | {row.kind} | {number(row.add_per_s, ',.0f')} | {number(row.build_s, '.1f')} | "
            f"{row.p50_ms:.3f} | {row.p99_ms:.3f} | {number(row.recall, '.3f')} |"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="Comma-separated index sizes.")
    parser.add_argument("--kinds", default="flat,hnsw", help="flat is always built (the recall reference).")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=10_000, help="Vectors per add call.")
    parser.add_argument("--hnsw-m", type=int, default=VectorIndexConfig.hnsw_m)
    parser.add_argument("--ef-construction", type=int, default=VectorIndexConfig.hnsw_ef_construction)
    parser.add_argument("--ef-search", default="16,64,256", help="Comma-separated efSearch values to sweep.")
    parser.add_argument("--search-threads", type=int, default=1, help="FAISS threads per search (0 = all).")
    parser.add_argument("--embed-texts", type=int, default=0, help="Also time the embedder on N texts.")
    parser.add_argument("--embedding-model", default="all-MiniLM-L6-v2")
    parser.add_argument("--embed-dtypes", default="fp32,auto", help="Embedder precisions to time (auto, bf16, fp32).")
    parser.add_argument("--embed-only", action="store_true", help="Only time the embedder (no FAISS sizes).")
    args = parser.parse_args(argv)
    args.sizes = [int(size) for size in args.sizes.split(",")]
    args.kinds = args.kinds.split(",")
    args.ef_search = [int(ef) for ef in args.ef_search.split(",")]
    args.embed_dtypes = args.embed_dtypes.split(",")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import faiss

    print(
        f"faiss {faiss.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        f"{args.queries} single-query searches ({args.search_threads or 'all'} threads each), k={args.k}, "
        f"dim={args.dim}",
        file=sys.stderr,
    )
    if not args.embed_only:
        centres = normalize_rows(np.random.default_rng(0).standard_normal((1000, args.dim), dtype=np.float32))
        rows: list[Row] = []
        for size in args.sizes:
            print(f"{size:,} vectors:", file=sys.stderr, flush=True)
            rows.extend(run_size(size, args, centres))
        print_table(rows, args.k)
    if args.embed_texts:
        print(f"\nembedding ({args.embedding_model}), {args.embed_texts} intention-like texts in one call:")
        rates = {}
        for dtype in args.embed_dtypes:
            rate, per_cpu, used = embed_rate(args.embedding_model, args.embed_texts, dtype)
            rates[used] = rate
            print(
                f"  dtype {dtype} ({used}): {rate:,.0f} texts/s, {per_cpu:,.0f} texts per CPU-second "
                f"(load average {os.getloadavg()[0]:.1f}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')})"
            )
        if "fp32" in rates and "bf16" in rates:
            print(f"  bf16 / fp32: {rates['bf16'] / rates['fp32']:.2f}")
        best = max(rates.values())
        verdict = "meets" if best >= EMBED_TARGET else "misses"
        print(f"embedding: {best:,.0f} intentions/s ({verdict} the {EMBED_TARGET:,} intentions/s target)")


if __name__ == "__main__":
    main()
