"""The processor's Prometheus metrics: stream counters at scrape time, event figures, model pass traces."""

from __future__ import annotations

from types import SimpleNamespace

from helpers.index import make_event
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from consumers.stream import StreamStats
from graph.contracts import Post
from graph.models.local.engine import CallTrace, Completion, FinishedRow
from graph.models.spec import CallOptions
from miko_stream.metrics import ObservedPipeline, ProcessorMetrics, observe_engine


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_stream_counters_are_read_at_scrape_time() -> None:
    stats = StreamStats(received=7, processed=5, in_flight=2, commit_failures=1)
    stats.dead_letter_stages.update({"decode": 1, "limits": 1})
    stats.lag.update({"miko.posts:0": 3})
    registry = CollectorRegistry()
    metrics = ProcessorMetrics(SimpleNamespace(stats=stats), registry=registry)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert "miko_stream_posts_received_total 7.0" in text
    assert 'miko_stream_posts_dead_lettered_total{stage="limits"} 1.0' in text
    assert 'miko_stream_posts_dead_lettered_total{stage="graph"} 0.0' in text
    assert "miko_stream_in_flight 2.0" in text and "miko_stream_commit_failures_total 1.0" in text
    assert 'miko_stream_consumer_lag{partition="miko.posts:0"} 3.0' in text
    stats.processed = 6
    assert "miko_stream_posts_processed_total 6.0" in generate_latest(registry).decode()
    metrics.close()


async def test_every_event_is_observed() -> None:
    event = make_event("m1", "hi", {"xWant": "say hi", "xNeed": ("sleep", False)})
    event.timings_ms.update({"generate": 250.0, "total": 400.0})
    event.parse_failures = 2

    class Inner:
        async def process(self, post: Post, source: object = None) -> object:
            return event

    before = {
        "accepted": sample("miko_intentions_total", relation="xWant", verified="true"),
        "rejected": sample("miko_intentions_total", relation="xNeed", verified="false"),
        "parse": sample("miko_parse_failures_total"),
        "generate": sample("miko_node_seconds_count", node="generate"),
        "scores": sample("miko_verifier_score_sum", relation="xWant"),
    }
    assert await ObservedPipeline(Inner()).process(Post(id="m1", text="hi")) is event  # type: ignore[arg-type]
    assert sample("miko_intentions_total", relation="xWant", verified="true") == before["accepted"] + 1
    assert sample("miko_intentions_total", relation="xNeed", verified="false") == before["rejected"] + 1
    assert sample("miko_parse_failures_total") == before["parse"] + 2
    assert sample("miko_node_seconds_count", node="generate") == before["generate"] + 1
    assert sample("miko_verifier_score_sum", relation="xWant") == before["scores"] + 0.9


def test_model_passes_are_traced_through_the_engine_observer() -> None:
    seen: list[CallTrace] = []
    engine = SimpleNamespace(observer=seen.append)  # an observer already there (a benchmark's) keeps working
    assert observe_engine(SimpleNamespace(handle=SimpleNamespace(engine=engine)))
    assert not observe_engine(object())  # fake and OpenAI-compatible models have no engine
    row = FinishedRow((1, 2, 3), CallOptions(max_new_tokens=8), Completion("ok", 3, 5, "stop"))
    before = (sample("miko_model_prompt_tokens_total"), sample("miko_model_generated_tokens_total"))
    engine.observer(CallTrace("prefill", 4, 0, 120, 80, (), 0.05))
    engine.observer(CallTrace("decode", 4, 0, 0, 0, (row,), 0.01))
    assert sample("miko_model_prompt_tokens_total") == before[0] + 120
    assert sample("miko_model_generated_tokens_total") == before[1] + 5
    assert sample("miko_model_batch_rows_count", kind="decode") >= 1 and len(seen) == 2


def test_grafana_dashboard_uses_only_metrics_the_services_export() -> None:
    import json
    import re
    from pathlib import Path

    import consumers.indexer  # noqa: F401  (registers the indexer's metrics)
    import miko_stream.api
    import miko_stream.dashboard.app  # noqa: F401

    registry_names: set[str] = set()
    collector = ProcessorMetrics(SimpleNamespace(stats=StreamStats()))  # type: ignore[arg-type]
    try:
        for family in REGISTRY.collect():
            registry_names |= {family.name + suffix for suffix in ("", "_total", "_bucket", "_sum", "_count")}
    finally:
        collector.close()
    path = Path(__file__).parents[1] / "deploy" / "grafana" / "dashboards" / "miko-stream.json"
    dashboard = json.loads(path.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = {name for expr in expressions for name in re.findall(r"\bmiko_[a-z_]+", expr)}
    assert len(expressions) > 20 and used
    assert used <= registry_names, sorted(used - registry_names)
