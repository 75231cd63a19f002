"""What the dashboard knows: the latest posts, throughput, latency, the knowledge figures, lag and health.

Everything here is derived from what ``serve`` can see without asking the processors anything:

* the events the indexer applies (``on_indexed``, hooked into :class:`consumers.indexer.Indexer`): latest
  posts, events/s, per-node latency (the event's ``timings_ms``), acceptance per relation, parse failures,
  partial events, and end-to-end latency (post record timestamp on the posts topic -> indexed here);
* the posts and dead-letter topics, tailed by :mod:`miko_stream.dashboard.watch`: posts/s in, dead letters/s
  by stage, and the post timestamps used for end-to-end latency;
* the processor group's committed offsets against the posts topic's end offsets: lag per partition.

The feed publishes each change through a :class:`Broadcaster`; ``snapshot`` is what a new client starts from.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.structs import ConsumerRecord

from graph.contracts import Relation
from miko_stream.dashboard.broadcast import Broadcaster
from miko_stream.dashboard.window import LatencyWindow, RateCounter, RatioCounter

RELATIONS = [relation.value for relation in Relation]
NODES = ("caption", "extract", "generate", "verify", "total")


@dataclass(frozen=True)
class FeedConfig:
    """How much the page shows: posts kept, chart history (one point a second), windows for rates/latency."""

    recent_posts: int = 40
    posts_per_message: int = 10  # newest changed posts per flush (4 a second): more than anyone can read
    history_points: int = 300
    rate_window_s: float = 10.0
    latency_window_s: float = 60.0
    trending_window_s: float = 600.0
    max_post_timestamps: int = 200_000
    text_chars: int = 400


@dataclass
class ServiceState:
    """Health of the parts the dashboard watches, as shown on the page."""

    broker: str = "connecting"
    processor: str = "unknown"
    processor_members: int | None = None
    processor_lag: dict[str, int] = field(default_factory=dict)
    processor_committed: dict[str, int] = field(default_factory=dict)
    processor_progress_at: float | None = None
    processor_note: str | None = None
    error: str | None = None


class DashboardFeed:
    """Aggregates the stream for the page; single-threaded (called from the serve event loop only)."""

    def __init__(
        self,
        broadcaster: Broadcaster,
        indexer_stats: Callable[[], dict[str, Any] | None],
        config: FeedConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or FeedConfig()
        self.broadcaster = broadcaster
        self.indexer_stats = indexer_stats
        self.clock = clock
        cfg = self.config
        self.posts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.history: deque[dict[str, Any]] = deque(maxlen=cfg.history_points)
        self.posts_in = RateCounter(cfg.rate_window_s)
        self.events_out = RateCounter(cfg.rate_window_s)
        self.dead_letters = RateCounter(cfg.rate_window_s)
        self.e2e = LatencyWindow(cfg.latency_window_s)
        self.nodes = {node: LatencyWindow(cfg.latency_window_s) for node in NODES}
        self.acceptance = RatioCounter()
        self.dead_letter_stages: dict[str, int] = {}
        self.partial_events = 0
        self.parse_failures = 0
        self.deletes = 0
        self.services = ServiceState()
        self.trending: list[dict[str, Any]] = []
        self.recent_verified: deque[tuple[float, str]] = deque()  # (indexed at, post id), for trending
        self._post_times: OrderedDict[tuple[int, int], float] = OrderedDict()  # (partition, offset) -> produced at
        self._pending: OrderedDict[str, dict[str, Any] | None] = OrderedDict()  # post id -> summary, None: deleted

    # inputs ---------------------------------------------------------------------------------------------

    def on_post_record(self, partition: int, offset: int, timestamp_ms: int) -> None:
        """A post arrived on the posts topic (tailed from the moment serve started)."""
        now = self.clock()
        self.posts_in.add(now)
        self._post_times[(partition, offset)] = timestamp_ms / 1000
        while len(self._post_times) > self.config.max_post_timestamps:
            self._post_times.popitem(last=False)

    def on_dead_letters(self, values: Iterable[bytes | None]) -> None:
        """A batch of dead letters: counted by stage; the latest few are published in one message."""
        now = self.clock()
        latest: deque[dict[str, Any]] = deque(maxlen=5)
        for value in values:
            self.dead_letters.add(now)
            try:
                letter = json.loads(value or b"{}")
            except ValueError:
                letter = {}
            stage = str(letter.get("stage", "unknown"))
            self.dead_letter_stages[stage] = self.dead_letter_stages.get(stage, 0) + 1
            latest.append(
                {
                    "post_id": letter.get("post_id"),
                    "stage": stage,
                    "error_class": letter.get("error_class"),
                    "error_message": str(letter.get("error_message", ""))[:200],
                    "at": now,
                }
            )
        if latest:
            self.broadcaster.publish("dead_letters", {"latest": list(latest)})

    def on_indexed(self, records: Iterable[ConsumerRecord[bytes, bytes]]) -> None:
        """Indexer hook: a batch of intention records was applied to the index.

        Every event counts in the figures at once. The page learns of the posts from :meth:`flush`, which the
        dashboard calls a few times a second: one ``posts`` message with the final state of the posts changed
        since the last flush (the newest ``posts_per_message`` of them: nobody reads more) and the deletions.
        Bounding the messages per second, rather than sending one per post, is what keeps many viewers cheap for
        the indexer, whatever its rate (bench/viewers.py)."""
        now = self.clock()
        pending = self._pending
        for record in records:
            key = record.key.decode("utf-8", "replace") if record.key is not None else None
            if record.value is None:
                if key is not None:
                    self.deletes += 1
                    self.posts.pop(key, None)
                    pending.pop(key, None)
                    pending[key] = None
                continue
            try:
                event = json.loads(record.value)
            except ValueError:
                continue  # the indexer counted it as invalid
            if isinstance(event, dict) and "post_id" in event:
                summary = self._add_event(event, now)
                pending.pop(summary["post_id"], None)
                pending[summary["post_id"]] = summary

    def flush(self) -> None:
        """Publish the posts changed since the last flush (see :meth:`on_indexed`)."""
        if not self._pending:
            return
        changed, self._pending = self._pending, OrderedDict()
        posts = [summary for summary in changed.values() if summary is not None]
        deletes = [post_id for post_id, summary in changed.items() if summary is None]
        self.broadcaster.publish("posts", {"posts": posts[-self.config.posts_per_message :], "deletes": deletes})

    # state changes --------------------------------------------------------------------------------------

    def _add_event(self, event: dict[str, Any], now: float) -> dict[str, Any]:
        self.events_out.add(now)
        intentions = [item for item in event.get("intentions", []) if isinstance(item, dict)]
        for item in intentions:
            self.acceptance.add(str(item.get("relation")), bool(item.get("verified")))
        self.partial_events += event.get("status") == "partial"
        self.parse_failures += int(event.get("parse_failures") or 0)
        for node, ms in (event.get("timings_ms") or {}).items():
            if node in self.nodes and isinstance(ms, int | float):
                self.nodes[node].add(now, float(ms))
        e2e_ms = self._e2e_ms(event.get("source"), now)
        if e2e_ms is not None:
            self.e2e.add(now, e2e_ms)
        post_id = str(event["post_id"])
        if any(item.get("verified") for item in intentions):
            self.recent_verified.append((now, post_id))
        summary = self._summary(event, intentions, e2e_ms, now)
        self.posts.pop(post_id, None)
        self.posts[post_id] = summary
        while len(self.posts) > self.config.recent_posts:
            self.posts.popitem(last=False)
        return summary

    def _e2e_ms(self, source: object, now: float) -> float | None:
        if not isinstance(source, dict):
            return None
        produced = self._post_times.get((int(source.get("partition", 0)), int(source.get("offset", -1))))
        return round((now - produced) * 1000, 1) if produced is not None else None

    def _summary(
        self, event: dict[str, Any], intentions: list[dict[str, Any]], e2e_ms: float | None, now: float
    ) -> dict[str, Any]:
        text = str(event.get("text") or "")
        limit = self.config.text_chars
        return {
            "post_id": str(event["post_id"]),
            "status": event.get("status", "ok"),
            "text": text if len(text) <= limit else text[: limit - 1] + "…",
            "caption": (event.get("caption") or None),
            "intentions": [
                {
                    "relation": item.get("relation"),
                    "text": str(item.get("text") or ""),
                    "score": item.get("score"),
                    "verified": bool(item.get("verified")),
                }
                for item in intentions
            ],
            "parse_failures": int(event.get("parse_failures") or 0),
            "total_ms": (event.get("timings_ms") or {}).get("total"),
            "e2e_ms": e2e_ms,
            "indexed_at": now,
        }

    def recent_post_ids(self, now: float) -> list[str]:
        """Posts with verified intentions indexed within the trending window (newest occurrence kept)."""
        while self.recent_verified and self.recent_verified[0][0] < now - self.config.trending_window_s:
            self.recent_verified.popleft()
        return list(dict.fromkeys(post_id for _, post_id in self.recent_verified))

    def set_trending(self, clusters: list[dict[str, Any]]) -> None:
        self.trending = clusters
        self.broadcaster.publish("trending", {"clusters": clusters, "window_s": self.config.trending_window_s})

    # figures --------------------------------------------------------------------------------------------

    def tick(self) -> dict[str, Any]:
        """One chart point (published as a ``tick`` message), plus the current knowledge, lag and health."""
        self.flush()  # posts first: the counters in the tick then never run ahead of the page
        now = self.clock()
        point: dict[str, Any] = {
            "t": round(now, 3),
            "posts_in": round(self.posts_in.rate(now), 3),
            "events_out": round(self.events_out.rate(now), 3),
            "dead_letters": round(self.dead_letters.rate(now), 3),
            "e2e": self.e2e.percentiles(now),
            "nodes": {node: window.percentiles(now, (0.5, 0.95)) for node, window in self.nodes.items()},
        }
        self.history.append(point)
        message = {"point": point, **self.status()}
        self.broadcaster.publish("tick", message)
        return message

    def status(self) -> dict[str, Any]:
        """Totals, knowledge, lag and health (everything but the posts and the chart history)."""
        events = self.events_out.total
        return {
            "totals": {
                "posts_in": int(self.posts_in.total),
                "events_out": int(events),
                "dead_letters": int(self.dead_letters.total),
                "deletes": self.deletes,
            },
            "knowledge": {
                "acceptance": self.acceptance.ratios(RELATIONS),
                "parse_failures": self.parse_failures,
                "parse_failures_per_post": self.parse_failures / events if events else None,
                "partial_events": self.partial_events,
                "partial_rate": self.partial_events / events if events else None,
                "dead_letter_stages": dict(self.dead_letter_stages),
            },
            "lag": {"processor": dict(self.services.processor_lag), "indexer": self._indexer_lag()},
            "health": self.health(),
            "viewers": self.broadcaster.stats.clients,
        }

    def _indexer_lag(self) -> dict[str, int | None]:
        stats = self.indexer_stats() or {}
        return {str(p["partition"]): p.get("lag") for p in stats.get("partitions", [])}

    def health(self) -> dict[str, dict[str, Any]]:
        stats = self.indexer_stats()
        if stats is None:
            indexer = {"status": "absent"}
        elif stats.get("error"):
            indexer = {"status": "failing", "detail": stats["error"]}
        else:
            indexer = {
                "status": "ok" if stats.get("running") else "stopped",
                "detail": "caught up" if stats.get("caught_up") else f"lag {stats.get('lag')}",
            }
        services = self.services
        members = services.processor_members
        notes = [f"{members} member(s)" if members is not None else None, services.processor_note]
        processor_detail = ", ".join(note for note in notes if note) or None
        return {
            "api": {"status": "ok"},
            "indexer": indexer,
            "broker": {"status": services.broker, "detail": services.error},
            "processor": {"status": services.processor, "detail": processor_detail},
        }

    def snapshot(self) -> dict[str, Any]:
        """What a newly connected page starts from."""
        return {
            "relations": RELATIONS,
            "posts": list(reversed(self.posts.values())),
            "history": list(self.history),
            "trending": {"clusters": self.trending, "window_s": self.config.trending_window_s},
            **self.status(),
        }
