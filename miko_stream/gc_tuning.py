"""Garbage-collector settings for a long-running service process, applied once its start-up is done.

Why: CPython's cyclic collector walks every tracked object of the oldest generation on each full
collection. After start-up that is hundreds of thousands of objects (LangChain, pydantic, aiokafka,
torch, the word-segmentation tables) that live as long as the process; with ``--llm fake`` the
graph allocates enough per post that full collections cost ~0.3 ms per post, about a fifth of the
graph's CPU (measured with ``gc.callbacks`` in ``bench/graph_cpu.py``). Freezing what start-up
built moves it out of the collector's reach (``gc.freeze``), and a larger first-generation threshold
makes the young collections, which only find the rare reference cycle of a finished post, less frequent.
Memory is unaffected: reference counting frees almost everything a post allocates at once.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # CPython's default is 700 allocations between young collections
OLDER_THRESHOLDS = (20, 20)  # young -> middle and middle -> old collections (CPython's default: 10, 10)


def tune_gc_after_startup() -> None:
    """Collect once, freeze what start-up allocated and space out later collections (call once, when ready)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
