"""Sliding-window figures for the dashboard: per-second counts and latency percentiles over recent samples.

Time is passed in (``now``) rather than read, so the figures are easy to test and every series in one tick
shares the same second.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable


class RateCounter:
    """Counts events per whole second and reports the rate over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._seconds: deque[tuple[int, float]] = deque()  # (second, count), oldest first
        self.total = 0.0

    def add(self, now: float, count: float = 1.0) -> None:
        second = int(now)
        if self._seconds and self._seconds[-1][0] == second:
            self._seconds[-1] = (second, self._seconds[-1][1] + count)
        else:
            self._seconds.append((second, count))
        self.total += count
        self._trim(now)

    def rate(self, now: float) -> float:
        """Events per second over the window ending at ``now``."""
        self._trim(now)
        return sum(count for _, count in self._seconds) / self.window_s

    def _trim(self, now: float) -> None:
        oldest = int(now - self.window_s)
        while self._seconds and self._seconds[0][0] <= oldest:
            self._seconds.popleft()


class LatencyWindow:
    """Latency samples (ms) of the last ``window_s`` seconds, at most ``max_samples``; percentiles on demand."""

    def __init__(self, window_s: float = 60.0, max_samples: int = 5000) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, now: float, value_ms: float) -> None:
        self._samples.append((now, value_ms))

    def percentiles(self, now: float, quantiles: Iterable[float] = (0.5, 0.95, 0.99)) -> dict[str, float | None]:
        """``{"p50": …, "p95": …, "p99": …}`` (nearest rank); None when the window is empty."""
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()
        values = sorted(value for _, value in self._samples)
        return {f"p{round(q * 100)}": nearest_rank(values, q) for q in quantiles}

    def __len__(self) -> int:
        return len(self._samples)


def nearest_rank(sorted_values: list[float], quantile: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(1, math.ceil(quantile * len(sorted_values)))
    return round(sorted_values[rank - 1], 1)


class RatioCounter:
    """Hits out of trials per label (acceptance per relation), totals since start."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.trials: dict[str, int] = {}

    def add(self, label: str, hit: bool) -> None:
        self.trials[label] = self.trials.get(label, 0) + 1
        self.hits[label] = self.hits.get(label, 0) + int(hit)

    def ratios(self, order: Iterable[str] = ()) -> dict[str, dict[str, float | int]]:
        labels = [*order, *sorted(set(self.trials) - set(order))]
        return {
            label: {"hits": self.hits.get(label, 0), "trials": trials, "rate": self.hits.get(label, 0) / trials}
            for label in labels
            if (trials := self.trials.get(label, 0))
        }
