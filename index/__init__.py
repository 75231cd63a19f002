"""The intention index (see the README): embeddings, FAISS vectors, SQLite metadata, atomic snapshots, search.

Modules: ``embeddings`` (text -> unit vectors), ``vectors`` (Flat / HNSW FAISS indexes keyed by stable ids),
``metadata`` (SQLite), ``snapshot`` (atomic snapshot directories), ``store`` (all three changed and saved
together, one writer / many readers), ``service`` (``IntentionIndex``: store + embedder, what callers use).
Nothing here knows about Kafka: the indexer in ``consumers`` feeds it.
"""
