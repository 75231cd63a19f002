"""Prometheus metrics of the stream processor (``miko-stream run --metrics-port P``).

Three sources, none of which changes how a post is processed:

* :class:`StreamCollector` reads the processor's :class:`consumers.stream.StreamStats` at scrape time (posts
  received / processed / dead-lettered by stage, tombstones, in flight, commits and commit failures, send
  retries, rebalances, lag per partition as of the last ``stream_stats`` line);
* :class:`ObservedPipeline` wraps the graph and observes every event it returns (per-node and whole-post
  latency, intentions and verifier scores by relation, acceptance, parse failures, event status);
* :func:`observe_engine` hooks the local model engine's per-pass trace (rows per pass, prompt / prefill /
  generated tokens, pass time). OpenAI-compatible and fake models have no engine: those series stay empty.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from consumers.stream import StreamProcessor
from graph.contracts import IntentionEvent, Post, SourceRef
from graph.models.local.engine import CallTrace
from graph.outcome import PostProcessor

disable_created_metrics()  # no *_created series: half the lines, and dashboards never read them

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
SCORE_BUCKETS = tuple(round(0.1 * n, 1) for n in range(1, 11))
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

NODE_SECONDS = Histogram("miko_node_seconds", "Time a graph node took for one post", ["node"], buckets=LATENCY_BUCKETS)
POST_SECONDS = Histogram("miko_post_seconds", "Time the graph took for one post", buckets=LATENCY_BUCKETS)
EVENTS = Counter("miko_events_total", "Intention events produced", ["status"])
INTENTIONS = Counter("miko_intentions_total", "Intentions generated, by relation and verdict", ["relation", "verified"])
VERIFIER_SCORE = Histogram("miko_verifier_score", "Verifier scores by relation", ["relation"], buckets=SCORE_BUCKETS)
PARSE_FAILURES = Counter("miko_parse_failures_total", "Completions that had to be repaired or were unusable")
MODEL_ROWS = Histogram("miko_model_batch_rows", "Rows run together in one model pass", ["kind"], buckets=ROW_BUCKETS)
MODEL_SECONDS = Histogram("miko_model_pass_seconds", "Time of one model pass", ["kind"], buckets=LATENCY_BUCKETS)
PROMPT_TOKENS = Counter("miko_model_prompt_tokens_total", "Prompt tokens of new requests")
PREFILL_TOKENS = Counter("miko_model_prefill_tokens_total", "Prompt tokens actually run (shared, cached skipped)")
GENERATED_TOKENS = Counter("miko_model_generated_tokens_total", "Tokens generated")


def observe_event(event: IntentionEvent) -> None:
    """Record one event's figures."""
    EVENTS.labels(event.status).inc()
    for node, ms in event.timings_ms.items():
        if node == "total":
            POST_SECONDS.observe(ms / 1000)
        else:
            NODE_SECONDS.labels(node).observe(ms / 1000)
    for item in event.intentions:
        INTENTIONS.labels(item.relation.value, str(item.verified).lower()).inc()
        if item.score is not None:
            VERIFIER_SCORE.labels(item.relation.value).observe(item.score)
    if event.parse_failures:
        PARSE_FAILURES.inc(event.parse_failures)


class ObservedPipeline:
    """A :class:`PostProcessor` that records the figures of every event the wrapped one returns."""

    def __init__(self, inner: PostProcessor) -> None:
        self.inner = inner

    async def process(self, post: Post, source: SourceRef | None = None) -> IntentionEvent:
        event = await self.inner.process(post, source)
        observe_event(event)
        return event


def observe_trace(trace: CallTrace) -> None:
    MODEL_ROWS.labels(trace.kind).observe(trace.rows)
    MODEL_SECONDS.labels(trace.kind).observe(trace.seconds)
    if trace.kind == "prefill":
        PROMPT_TOKENS.inc(trace.prompt_tokens)
        PREFILL_TOKENS.inc(trace.prefill_tokens)
    GENERATED_TOKENS.inc(sum(row.completion.completion_tokens for row in trace.finished))


def observe_engine(llm: object) -> bool:
    """Hook the local engine behind ``llm`` (if any) into the metrics; True when there was one."""
    engine = getattr(getattr(llm, "handle", None), "engine", None)
    if engine is None or not hasattr(engine, "observer"):
        return False
    previous = engine.observer

    def both(trace: CallTrace) -> None:
        observe_trace(trace)
        if previous is not None:
            previous(trace)

    engine.observer = both
    return True


class StreamCollector(Collector):
    """The processor's own counters (``StreamStats``), read at scrape time."""

    def __init__(self, stream: StreamProcessor) -> None:
        self.stream = stream

    def collect(self) -> Iterator[Metric]:
        stats = self.stream.stats
        counters: list[tuple[str, str, int]] = [
            ("miko_stream_posts_received", "Records taken from the posts topic", stats.received),
            ("miko_stream_posts_processed", "Posts whose event was acknowledged", stats.processed),
            ("miko_stream_tombstones", "Deletions forwarded", stats.tombstones),
            ("miko_stream_commits", "Offset commits", stats.commits),
            ("miko_stream_commit_failures", "Offset commits that failed (retried later)", stats.commit_failures),
            ("miko_stream_send_retries", "Output sends retried", stats.send_retries),
            ("miko_stream_rebalances", "Consumer group rebalances", stats.rebalances),
        ]
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)
        dead = CounterMetricFamily(
            "miko_stream_posts_dead_lettered", "Records dead-lettered, by stage", labels=["stage"]
        )
        for stage in ("decode", "validate", "limits", "graph"):
            dead.add_metric([stage], stats.dead_letter_stages.get(stage, 0))
        yield dead
        yield GaugeMetricFamily("miko_stream_in_flight", "Posts being processed", value=stats.in_flight)
        yield GaugeMetricFamily("miko_stream_paused", "1 while fetching is paused (full)", value=int(stats.paused))
        lag = GaugeMetricFamily(
            "miko_stream_consumer_lag", "Records behind the end, per partition (as of the last stats line)",
            labels=["partition"],
        )  # fmt: skip
        for partition, value in sorted(stats.lag.items()):
            lag.add_metric([partition], value)
        yield lag


class ProcessorMetrics:
    """Registers the stream's collector and the engine hook; ``serve_http`` exposes them for Prometheus."""

    def __init__(self, stream: StreamProcessor, llm: Any = None, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.collector = StreamCollector(stream)
        registry.register(self.collector)
        self.engine_observed = observe_engine(llm) if llm is not None else False

    def serve_http(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve /metrics on ``host:port`` from a daemon thread (prometheus-client's own server)."""
        start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        self.registry.unregister(self.collector)
