"""The dashboard's parts without a browser: fan-out and resume, the feed's figures, trending groups, routes.

The page itself is driven in a real browser by tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka.structs import ConsumerRecord
from fastapi.testclient import TestClient
from helpers.index import apply, event_bytes, open_index, sample_docs

from index.records import IntentionRef
from index.service import IntentionIndex
from miko_stream.api import ApiConfig, create_app
from miko_stream.dashboard import Dashboard, mount_dashboard
from miko_stream.dashboard.app import events_token
from miko_stream.dashboard.broadcast import Broadcaster
from miko_stream.dashboard.feed import DashboardFeed, FeedConfig
from miko_stream.dashboard.trending import TrendingConfig, trending_clusters
from miko_stream.dashboard.window import LatencyWindow, RateCounter

KEY = "dash-key"


def record(key: str, value: bytes | None, offset: int = 0, partition: int = 0) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="miko.intentions", partition=partition, offset=offset, timestamp=0, timestamp_type=0,
        key=key.encode(), value=value, checksum=None, serialized_key_size=len(key),
        serialized_value_size=len(value or b""), headers=(),
    )  # fmt: skip


async def take(stream: AsyncIterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return [await asyncio.wait_for(anext(stream), 2.0) for _ in range(n)]


# ---- broadcaster ------------------------------------------------------------------------------------------


async def test_new_client_gets_a_snapshot_then_live_messages() -> None:
    hub = Broadcaster()
    hub.publish("post", {"n": 1})
    stream = hub.stream(None, lambda: {"state": "now"})
    first = await take(stream, 1)
    assert first[0]["event"] == "snapshot" and json.loads(first[0]["data"]) == {"state": "now"}
    assert first[0]["id"] == "1"  # the snapshot covers message 1
    hub.publish("post", {"n": 2})
    (live,) = await take(stream, 1)
    assert (live["id"], live["event"], json.loads(live["data"])) == ("2", "post", {"n": 2})
    await stream.aclose()
    assert hub.stats.clients == 0


async def test_reconnect_with_last_event_id_resumes_without_repeats() -> None:
    hub = Broadcaster(replay=100)
    for n in range(1, 6):
        hub.publish("post", {"n": n})
    stream = hub.stream("3", lambda: pytest.fail("a resume needs no snapshot"))
    comment, *backlog = await take(stream, 3)
    assert "comment" in comment
    assert [m["id"] for m in backlog] == ["4", "5"]
    hub.publish("post", {"n": 6})
    assert [m["id"] for m in await take(stream, 1)] == ["6"]
    await stream.aclose()


async def test_an_id_older_than_the_buffer_starts_from_a_snapshot() -> None:
    hub = Broadcaster(replay=3)
    for n in range(10):
        hub.publish("post", {"n": n})
    assert hub.since(2) is None and [m.id for m in hub.since(8) or []] == [9, 10]
    stream = hub.stream("2", lambda: {"fresh": True})
    (first,) = await take(stream, 1)
    assert first["event"] == "snapshot" and first["id"] == "10"
    await stream.aclose()


async def test_a_slow_client_is_dropped_without_slowing_publishing_and_resumes_exactly() -> None:
    hub = Broadcaster(queue_size=4, replay=1000)
    slow = hub.stream(None, dict)
    fast = hub.stream(None, dict)
    await take(slow, 1)
    await take(fast, 1)
    received: list[str] = []
    for n in range(1, 21):  # the fast client keeps up, the slow one reads nothing
        hub.publish("post", {"n": n})
        received += [m["id"] for m in await take(fast, 1)]
    assert received == [str(n) for n in range(1, 21)]
    assert hub.stats.dropped == 1
    with pytest.raises(StopAsyncIteration):  # the slow client's stream ends: the browser reconnects
        await asyncio.wait_for(anext(slow), 2.0)
    # It reconnects with the last id it saw (0: only the snapshot) and gets every message once, in order.
    again = hub.stream("0", dict)
    messages = await take(again, 21)
    assert [m["id"] for m in messages[1:]] == [str(n) for n in range(1, 21)]
    for stream in (fast, again):
        await stream.aclose()


# ---- figures ------------------------------------------------------------------------------------------------


def test_rates_and_percentiles_over_sliding_windows() -> None:
    rate = RateCounter(window_s=10)
    for second in range(20):
        rate.add(1000 + second, 2)
    assert rate.rate(1019.5) == pytest.approx(2.0) and rate.total == 40
    assert rate.rate(1100) == 0
    latency = LatencyWindow(window_s=60)
    for n in range(1, 101):
        latency.add(1000, float(n))
    assert latency.percentiles(1010) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert latency.percentiles(1100) == {"p50": None, "p95": None, "p99": None}


def test_feed_turns_indexed_records_into_posts_figures_and_deletes() -> None:
    now = [1000.0]
    hub = Broadcaster()
    feed = DashboardFeed(hub, lambda: None, clock=lambda: now[0])
    feed.on_post_record(partition=0, offset=7, timestamp_ms=998_500)
    ok = json.loads(event_bytes("p1", "hello", {"xWant": "say hi", "xNeed": ("be awake", False)}))
    ok["source"] = {"topic": "miko.posts", "partition": 0, "offset": 7}
    ok["timings_ms"] = {"generate": 120.0, "verify": 30.0, "total": 160.0}
    partial = json.loads(event_bytes("p2", "meh", {"xWant": ("", False)}))
    partial.update(status="partial", parse_failures=1)
    feed.on_indexed([record("p1", json.dumps(ok).encode(), 0), record("p2", json.dumps(partial).encode(), 1)])
    feed.flush()
    snapshot = feed.snapshot()
    assert [post["post_id"] for post in snapshot["posts"]] == ["p2", "p1"]
    p1 = snapshot["posts"][1]
    assert p1["e2e_ms"] == 1500.0 and p1["status"] == "ok"
    assert [(i["relation"], i["verified"], i["score"]) for i in p1["intentions"]] == [
        ("xWant", True, 0.9),
        ("xNeed", False, 0.1),
    ]
    knowledge = snapshot["knowledge"]
    assert knowledge["acceptance"]["xWant"] == {"hits": 1, "trials": 2, "rate": 0.5}
    assert knowledge["acceptance"]["xNeed"]["rate"] == 0.0
    assert knowledge["partial_rate"] == 0.5 and knowledge["parse_failures"] == 1
    tick = feed.tick()["point"]
    assert tick["e2e"]["p50"] == 1500.0 and tick["nodes"]["generate"]["p50"] == 120.0
    assert tick["events_out"] == pytest.approx(0.2) and tick["posts_in"] == pytest.approx(0.1)
    feed.on_indexed([record("p1", None, 2)])
    feed.flush()
    assert [post["post_id"] for post in feed.snapshot()["posts"]] == ["p2"]
    messages = [(m.event, json.loads(m.data)) for m in hub._replay]
    assert [event for event, _ in messages] == ["posts", "tick", "posts"]  # one message per indexer batch
    assert [p["post_id"] for p in messages[0][1]["posts"]] == ["p1", "p2"] and messages[2][1]["deletes"] == ["p1"]
    letter = json.dumps({"stage": "decode", "post_id": None, "error_class": "JSONDecodeError"}).encode()
    feed.on_dead_letters([letter, b"not json"])
    assert feed.status()["knowledge"]["dead_letter_stages"] == {"decode": 1, "unknown": 1}
    assert len(json.loads(hub._replay[-1].data)["latest"]) == 2


def test_a_flush_sends_the_final_state_of_each_post_and_at_most_the_newest_posts() -> None:
    hub = Broadcaster()
    feed = DashboardFeed(hub, lambda: None, FeedConfig(recent_posts=3, posts_per_message=3))
    records = [record(f"p{n}", event_bytes(f"p{n}", "x", {"xWant": "y"}), n) for n in range(6)]
    records += [record("p5", None, 6), record("p4", event_bytes("p4", "again", {"xWant": "z"}), 7)]
    feed.on_indexed(records[:4])
    feed.on_indexed(records[4:])
    feed.flush()
    feed.flush()  # nothing new: no message
    (message,) = [json.loads(m.data) for m in hub._replay]
    assert [p["post_id"] for p in message["posts"]] == ["p2", "p3", "p4"] and message["deletes"] == ["p5"]
    assert message["posts"][-1]["text"] == "again"
    assert feed.status()["totals"]["events_out"] == 7
    assert [p["post_id"] for p in feed.snapshot()["posts"]] == ["p4", "p3"]  # p2 made room for p5, then p5 went


def test_trending_groups_similar_intentions_across_posts() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    refs, rows = [], []
    for group, size in enumerate([5, 3, 1]):
        for n in range(size):
            refs.append(IntentionRef(f"post-{group}-{n}", "xWant", f"idea {group} #{n}", len(refs)))
            rows.append(centres[group] + rng.normal(scale=0.05, size=16))
    vectors = np.asarray(rows, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    clusters = trending_clusters(refs, vectors, TrendingConfig(threshold=0.8))
    assert [(c["posts"], c["size"]) for c in clusters] == [(5, 5), (3, 3)]  # a lone intention is no trend
    assert clusters[0]["label"].startswith("idea 0") and clusters[0]["relations"] == {"xWant": 5}


def test_index_gives_vectors_of_posts_for_trending(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    try:
        apply(index, sample_docs())
        refs, vectors = index.intention_vectors(["p-dog", "p-trip", "unknown"])
        assert sorted((r.post_id, r.relation) for r in refs) == [
            ("p-dog", "xNeed"), ("p-dog", "xReact"), ("p-trip", "xIntent"), ("p-trip", "xNeed"),
        ]  # fmt: skip
        assert vectors.shape == (4, index.store.dim)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    finally:
        index.close()


# ---- routes -----------------------------------------------------------------------------------------------


def dashboard_client(index: IntentionIndex, api_key: str | None) -> TestClient:
    app = create_app(index, config=ApiConfig(api_key=api_key))
    mount_dashboard(app, Dashboard(index, None, None), api_key)
    return TestClient(app)


def test_page_and_vendored_charting_library_are_served_from_the_package(sample_index: IntentionIndex) -> None:
    client = dashboard_client(sample_index, KEY)
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/vendor/uplot/uPlot.iife.min.js" in page.text and "http" not in page.text.split("<body>")[1]
    for path in ("/static/dashboard.js", "/static/dashboard.css", "/static/vendor/uplot/uPlot.iife.min.js"):
        assert client.get(path).status_code == 200, path
    licence = client.get("/static/vendor/uplot/LICENSE")
    assert licence.status_code == 200 and "MIT" in licence.text


def test_api_key_guards_state_and_event_stream(sample_index: IntentionIndex) -> None:
    client = dashboard_client(sample_index, KEY)
    assert client.get("/dashboard/token").status_code == 401
    assert client.get("/dashboard/state").status_code == 401
    token = client.get("/dashboard/token", headers={"X-API-Key": KEY}).json()["token"]
    assert token == events_token(KEY) and KEY not in token
    assert client.get("/events").status_code == 401
    assert client.get("/events", params={"token": "wrong"}).status_code == 401
    state = client.get("/dashboard/state", headers={"X-API-Key": KEY}).json()
    assert state["relations"][0] == "xWant" and state["health"]["indexer"] == {"status": "absent"}


def test_without_a_key_the_token_is_null(sample_index: IntentionIndex) -> None:
    client = dashboard_client(sample_index, None)
    assert client.get("/dashboard/token").json() == {"token": None}
