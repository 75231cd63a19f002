"""Everything embedded in one process: broker, stream processor, indexer, search API, and sample posts replayed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from consumers.indexer import Indexer, IndexerConfig
from consumers.io import produce_file
from consumers.stream import StreamOptions, StreamProcessor
from consumers.topics import ensure_topics
from index.embeddings import load_embedder
from index.service import IndexSettings, IntentionIndex
from index.vectors import VectorIndexConfig
from miko_stream.api import ApiConfig, create_app
from miko_stream.broker import EmbeddedBroker
from miko_stream.dashboard import Dashboard, mount_dashboard
from miko_stream.metrics import ObservedPipeline, ProcessorMetrics
from miko_stream.settings import Settings
from miko_stream.wiring import build_pipeline

if TYPE_CHECKING:
    from graph.pipeline import MikoPipeline


def sample_posts() -> Path:
    """The demo's own posts (written for this project), shipped inside the package."""
    return Path(str(resources.files("miko_stream").joinpath("samples", "posts.jsonl")))


@dataclass(frozen=True)
class DemoOptions:
    posts: Path
    host: str = "127.0.0.1"
    port: int = 8000
    exit_when_indexed: bool = False
    timeout_s: float = 3600.0
    samples: int = 4  # events printed as they arrive, to show what the knowledge looks like


class _QuietServer(uvicorn.Server):
    """Signals are the demo's: it stops every part in order."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


async def run_demo(settings: Settings, options: DemoOptions, say: Callable[[str], None]) -> int:
    """Start all parts (dashboard first, then the model), replay the posts, report progress; serve until
    Ctrl-C (or until indexed, for tests)."""
    url = f"http://{options.host}:{options.port}"
    say(f"dashboard: {url}/   (search API docs: {url}/docs, Ctrl-C stops everything)")
    with EmbeddedBroker(host="127.0.0.1") as broker:
        # Tansu has no idempotent producers: say so up front instead of probing (which logs an error).
        settings = settings.with_kafka(bootstrap=broker.bootstrap, idempotence="off")
        kafka = settings.kafka()
        say(f"broker: Tansu on {broker.bootstrap} (in memory)")
        await ensure_topics(kafka, [kafka.posts_topic, kafka.intentions_topic, kafka.dlq_topic])
        index = IntentionIndex.open(
            IndexSettings(settings.index_dir, VectorIndexConfig()),
            load_embedder(settings.embedding_model, dtype=settings.embedding_dtype),
            writer=True,
        )
        indexer = Indexer(index, kafka, IndexerConfig(batch_size=16, snapshot_interval_s=5.0))
        api_key = settings.api_key.get_secret_value() if settings.api_key else None
        app = create_app(index, indexer=indexer, config=ApiConfig(api_key=api_key))
        dashboard = Dashboard(index, indexer, kafka)
        mount_dashboard(app, dashboard, api_key)
        config = uvicorn.Config(app, host=options.host, port=options.port, log_config=None, timeout_graceful_shutdown=3)
        server = _QuietServer(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        samples = _SamplePrinter(options.samples, say)
        indexer.listeners.append(samples.on_indexed)
        tasks = [
            asyncio.create_task(indexer.run(stop), name="indexer"),
            asyncio.create_task(server.serve(), name="api"),
            asyncio.create_task(dashboard.run(stop), name="dashboard"),
        ]
        stream: StreamProcessor | None = None
        pipeline: MikoPipeline | None = None
        metrics: ProcessorMetrics | None = None
        try:
            say(f"loading models: llm={settings.llm} vision={settings.vision} embeddings={settings.embedding_model}")
            pipeline = await asyncio.to_thread(build_pipeline, settings, options.posts.parent)
            stream_options = StreamOptions(max_in_flight=settings.max_in_flight)
            stream = StreamProcessor(ObservedPipeline(pipeline), kafka, settings.limits(), stream_options)
            metrics = ProcessorMetrics(stream, pipeline.deps.llm)  # on the API's /metrics: one process here
            tasks.append(asyncio.create_task(stream.run(), name="processor"))
            return await _replay_and_watch(settings, options, stream, indexer, stop, say)
        finally:
            if stream is not None:
                stream.request_stop()
                stream.request_stop()  # the demo's broker is in memory: abandon the drain, do not wait for the model
            stop.set()
            server.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)
            if pipeline is not None:
                await pipeline.aclose()
            if metrics is not None:
                metrics.close()
            index.close()
            say("stopped: broker, processor, indexer and API are down")


class _SamplePrinter:
    """Prints the first few events as they are indexed: the post, then its best verified intentions."""

    def __init__(self, count: int, say: Callable[[str], None]) -> None:
        self.left = count
        self.say = say

    def on_indexed(self, records: list[Any]) -> None:
        for record in records:
            if self.left <= 0 or record.value is None:
                return
            event = json.loads(record.value)
            self.left -= 1
            text = " ".join(str(event.get("text", "")).split())
            self.say(f"  {event['post_id']} [{event.get('status')}] {text[:90]}{'…' if len(text) > 90 else ''}")
            verified = [item for item in event.get("intentions", []) if item.get("verified")]
            for item in sorted(verified, key=lambda item: -(item.get("score") or 0))[:3]:
                self.say(f"      {item['relation']:<8} {item['text']}  ({item.get('score') or 0:.2f})")
            rejected, more = len(event.get("intentions", [])) - len(verified), max(0, len(verified) - 3)
            if rejected or more:
                self.say(f"      … and {more} more verified, {rejected} rejected")


def _show_example(indexer: Indexer, say: Callable[[str], None], query: str = "wants to sell something") -> None:
    say(f"example search {query!r}:")
    for hit in indexer.index.search(query, k=3):
        say(f"  {hit.score:.3f}  {hit.post_id}  {hit.relation}: {hit.text}")


async def _replay_and_watch(
    settings: Settings,
    options: DemoOptions,
    stream: StreamProcessor,
    indexer: Indexer,
    stop: asyncio.Event,
    say: Callable[[str], None],
) -> int:
    kafka = settings.kafka()
    report = await produce_file(kafka, options.posts, topic=kafka.posts_topic)
    total = report.records
    url = f"http://{options.host}:{options.port}"
    say(f"replayed {total} sample posts into {kafka.posts_topic}; the model is working through them")
    started, last = time.monotonic(), (-1, -1)
    while not stop.is_set() and time.monotonic() - started < options.timeout_s:
        done = stream.stats.processed + stream.stats.dead_lettered
        progress = (done, indexer.records)
        if progress != last:
            elapsed = time.monotonic() - started
            rate = done / elapsed if elapsed > 0 else 0.0
            say(
                f"  {done}/{total} posts processed, {progress[1]} events indexed, "
                f"{stream.stats.dead_lettered} dead letters ({elapsed:.0f}s, {rate:.2f} posts/s)"
            )
            last = progress
        if progress[0] >= total and progress[1] >= stream.stats.processed:
            _show_example(indexer, say)
            say(f"all {total} posts processed and indexed. Dashboard: {url}/ (Ctrl-C to stop).")
            if options.exit_when_indexed:
                return 0
            await stop.wait()
            return 0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=2.0)
    return 0 if stop.is_set() else 1
