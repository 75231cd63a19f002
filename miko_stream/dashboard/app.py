"""The dashboard in ``serve``: the page at ``/``, its static files, the SSE stream at ``/events``.

Authentication: the page and its static files are public (they hold no data). With ``MIKO_API_KEY`` set the
page sends the key as the ``X-API-Key`` header on every fetch. ``EventSource`` cannot send headers, so
``/events`` takes a ``token`` query parameter instead: an HMAC of the API key that the page gets from
``/dashboard/token`` (with the header). The token opens only the read-only event stream; the key itself never
appears in a URL or an access log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter, Gauge
from sse_starlette.sse import EventSourceResponse

from consumers.indexer import Indexer
from consumers.kafka_config import KafkaConfig
from index.service import IntentionIndex
from miko_stream.api import api_key_dependency
from miko_stream.dashboard.broadcast import Broadcaster
from miko_stream.dashboard.feed import DashboardFeed, FeedConfig
from miko_stream.dashboard.trending import TrendingConfig, trending_clusters
from miko_stream.dashboard.watch import ClusterWatcher

log = structlog.get_logger(__name__)

CLIENTS = Gauge("miko_dashboard_clients", "Dashboard pages connected to /events")
DROPPED = Counter("miko_dashboard_clients_dropped_total", "Dashboard clients dropped for being too slow")


def static_dir() -> Path:
    return Path(str(resources.files("miko_stream").joinpath("static")))


@dataclass(frozen=True)
class DashboardConfig:
    """Tick: one chart point per second. Queue: messages a client may fall behind before it is dropped."""

    tick_s: float = 1.0
    flush_s: float = 0.25  # new posts reach the page at most this often, in one message
    trending_interval_s: float = 10.0
    client_queue: int = 64  # ~5 messages a second (posts, tick, trending): 10+ s of falling behind
    replay: int = 2048
    retry_ms: int = 2000
    feed: FeedConfig = field(default_factory=FeedConfig)
    trending: TrendingConfig = field(default_factory=TrendingConfig)


class Dashboard:
    """Owns the feed, the broadcaster and the cluster watcher; ``run`` keeps them going until ``stop``."""

    def __init__(
        self,
        index: IntentionIndex,
        indexer: Indexer | None,
        kafka: KafkaConfig | None,
        config: DashboardConfig | None = None,
    ) -> None:
        self.config = config or DashboardConfig()
        self.index = index
        self.broadcaster = Broadcaster(queue_size=self.config.client_queue, replay=self.config.replay)
        self.feed = DashboardFeed(self.broadcaster, indexer.stats if indexer else lambda: None, self.config.feed)
        if indexer is not None:
            indexer.listeners.append(self.feed.on_indexed)
        self.watcher = ClusterWatcher(kafka, self.feed) if kafka is not None else None

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(self._ticks(stop)),
            asyncio.create_task(self._flushes(stop)),
            asyncio.create_task(self._trending(stop)),
        ]
        if self.watcher is not None:
            tasks.append(asyncio.create_task(self.watcher.run(stop)))
        try:
            await stop.wait()
        finally:
            self.broadcaster.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _ticks(self, stop: asyncio.Event) -> None:
        dropped = 0
        while not stop.is_set():
            self.feed.tick()
            CLIENTS.set(self.broadcaster.stats.clients)
            DROPPED.inc(self.broadcaster.stats.dropped - dropped)
            dropped = self.broadcaster.stats.dropped
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.tick_s)

    async def _flushes(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.feed.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.flush_s)

    async def _trending(self, stop: asyncio.Event) -> None:
        shown: list[dict[str, Any]] | None = None
        while not stop.is_set():
            post_ids = self.feed.recent_post_ids(time.time())
            try:
                clusters = await asyncio.to_thread(self._clusters, post_ids)
            except Exception:
                log.exception("dashboard_trending_failed")
                clusters = shown or []
            if clusters != shown:
                self.feed.set_trending(clusters)
                shown = clusters
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.trending_interval_s)

    def _clusters(self, post_ids: list[str]) -> list[dict[str, Any]]:
        refs, vectors = self.index.intention_vectors(post_ids)
        return trending_clusters(refs, vectors, self.config.trending)


EventsToken = Annotated[str | None, Query(max_length=100, description="From /dashboard/token.")]


def events_token(api_key: str) -> str:
    """The /events credential derived from the API key (opens only the event stream)."""
    return hmac.new(api_key.encode(), b"miko-stream dashboard events", hashlib.sha256).hexdigest()[:40]


def mount_dashboard(app: FastAPI, dashboard: Dashboard, api_key: str | None) -> None:
    """Add ``/``, ``/static``, ``/events``, ``/dashboard/token`` and ``/dashboard/state`` to ``app``."""
    protected = APIRouter(dependencies=[Depends(api_key_dependency(api_key))], tags=["dashboard"])
    expected = events_token(api_key) if api_key else None
    page = static_dir() / "dashboard.html"

    @app.get("/", include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(page, media_type="text/html", headers={"Cache-Control": "no-cache"})

    @protected.get("/dashboard/token")
    def token() -> dict[str, str | None]:
        """The ``token`` for ``/events`` (EventSource cannot send the X-API-Key header); null without a key."""
        return {"token": expected}

    @protected.get("/dashboard/state")
    def state() -> dict[str, Any]:
        """What a new page starts from: latest posts, chart history, knowledge, lag, health, trending."""
        return dashboard.feed.snapshot()

    @app.get("/events", tags=["dashboard"], response_class=EventSourceResponse)
    async def events(request: Request, token: EventsToken = None) -> EventSourceResponse:
        """Server-Sent Events: a ``snapshot``, then ``posts``, ``tick``, ``trending`` and ``dead_letters`` messages.
        Reconnecting with ``Last-Event-ID`` resumes after that message, without repeats."""
        if expected is not None and (token is None or not secrets.compare_digest(token, expected)):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="missing or wrong token (see /dashboard/token)")
        last_id = request.headers.get("last-event-id")
        stream = dashboard.broadcaster.stream(last_id, dashboard.feed.snapshot, retry_ms=dashboard.config.retry_ms)
        return EventSourceResponse(stream, ping=15, send_timeout=10, headers={"Cache-Control": "no-store"})

    app.include_router(protected)
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
