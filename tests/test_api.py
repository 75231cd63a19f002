"""The search API: endpoints, limits, OpenAPI, metrics and the optional API key."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers.index import apply, make_doc, open_index, sample_docs

from consumers.indexer import Indexer
from consumers.kafka_config import KafkaConfig
from graph.contracts import IntentionEvent
from index.service import IntentionIndex
from miko_stream.api import ApiConfig, create_app

KEY = "s3cret-key"


@pytest.fixture
def client(sample_index: IntentionIndex) -> TestClient:
    return TestClient(create_app(sample_index))


def test_search_returns_ranked_hits_with_post_text(client: TestClient) -> None:
    response = client.get("/search", params={"q": "sell followers to other accounts", "k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["query"] == "sell followers to other accounts" and body["k"] == 3 and body["relation"] is None
    top = body["results"][0]
    assert top == {
        "post_id": "p-followers",
        "relation": "xIntent",
        "text": "sell followers to other accounts",
        "score": pytest.approx(1.0, abs=1e-4),
        "verifier_score": pytest.approx(0.9),
        "post_text": "buy 1k followers cheap dm me",
    }
    scores = [hit["score"] for hit in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_search_relation_filter_and_limits(client: TestClient) -> None:
    body = client.get("/search", params={"q": "dog", "relation": "xNeed", "k": 5}).json()
    assert body["results"] and {hit["relation"] for hit in body["results"]} == {"xNeed"}
    assert client.get("/search", params={"q": "dog", "relation": "xWhatever"}).status_code == 422
    assert client.get("/search", params={"q": "dog", "k": 101}).status_code == 422
    assert client.get("/search", params={"q": "dog", "k": 0}).status_code == 422
    assert client.get("/search", params={"q": ""}).status_code == 422
    assert client.get("/search", params={"q": "x" * 513}).status_code == 422
    assert client.get("/search").status_code == 422


def test_posts_returns_the_stored_event(client: TestClient) -> None:
    response = client.get("/posts/p-trip")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    event = IntentionEvent.model_validate_json(response.content)
    assert event.post_id == "p-trip" and {item.relation for item in event.intentions} == {"xNeed", "xIntent"}
    missing = client.get("/posts/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


def test_similar(client: TestClient) -> None:
    body = client.get("/similar/p-dog", params={"k": 2}).json()
    assert body["post_id"] == "p-dog" and len(body["results"]) == 2
    assert "p-dog" not in {hit["post_id"] for hit in body["results"]}
    assert client.get("/similar/nope").status_code == 404


def test_stats_health_metrics_and_openapi(client: TestClient) -> None:
    stats = client.get("/stats").json()
    assert stats["index"]["vectors"] == 8 and stats["index"]["posts"] == 5 and stats["indexer"] is None
    assert client.get("/healthz").json() == {"status": "ok", "indexer": "absent", "detail": None}
    client.get("/search", params={"q": "dog"})
    metrics = client.get("/metrics").text
    assert "miko_index_vectors 8.0" in metrics and 'miko_api_requests_total{endpoint="search",status="ok"}' in metrics
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/posts/{post_id}", "/similar/{post_id}", "/stats", "/healthz"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_healthz_reports_a_failed_indexer(sample_index: IntentionIndex) -> None:
    indexer = Indexer(sample_index, KafkaConfig(intentions_topic="t"))
    client = TestClient(create_app(sample_index, indexer=indexer))
    assert client.get("/healthz").json()["indexer"] == "stopped"
    indexer.error = "KafkaError: gone"
    response = client.get("/healthz")
    assert response.status_code == 503 and response.json()["status"] == "failing"
    stats = client.get("/stats").json()["indexer"]
    assert stats["topic"] == "t" and stats["error"] == "KafkaError: gone"


def test_api_key_is_required_when_configured(sample_index: IntentionIndex) -> None:
    client = TestClient(create_app(sample_index, config=ApiConfig(api_key=KEY)))
    for path in ("/search?q=dog", "/posts/p-dog", "/similar/p-dog", "/stats"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"X-API-Key": "wrong"}).status_code == 401, path
        assert client.get(path, headers={"X-API-Key": KEY[:-1]}).status_code == 401, path
        assert client.get(path, headers={"X-API-Key": KEY}).status_code == 200, path
    unauthorized = client.get("/stats")
    assert unauthorized.headers["www-authenticate"] == "X-API-Key"
    assert KEY not in unauthorized.text
    # Liveness and docs stay open; the OpenAPI document declares the key.
    assert client.get("/healthz").status_code == 200
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["APIKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "Required when MIKO_API_KEY is set.",
    }


def test_cors_is_off_by_default_and_configurable(sample_index: IntentionIndex) -> None:
    origin = {"Origin": "https://dash.example"}
    closed = TestClient(create_app(sample_index)).get("/healthz", headers=origin)
    assert "access-control-allow-origin" not in closed.headers
    config = ApiConfig(cors_origins=("https://dash.example",))
    opened = TestClient(create_app(sample_index, config=config)).get("/healthz", headers=origin)
    assert opened.headers["access-control-allow-origin"] == "https://dash.example"


def test_ids_with_slashes_head_on_healthz_and_refusals_counted(tmp_path: Path) -> None:
    index = open_index(tmp_path / "slash")
    apply(index, {**sample_docs(), "site/2024/p-dog": make_doc("site/2024/p-dog", "a dog", {"xIntent": "to walk"})})
    client = TestClient(create_app(index, config=ApiConfig(api_key=KEY)))
    assert client.get("/posts/site/2024/p-dog", headers={"X-API-Key": KEY}).status_code == 200
    assert client.get("/similar/site/2024/p-dog", headers={"X-API-Key": KEY}).status_code == 200
    assert client.head("/healthz").status_code == 200
    client.get("/posts/p-dog")  # 401: no key
    client.get("/search", params={"q": ""}, headers={"X-API-Key": KEY})  # 422: empty query
    metrics = client.get("/metrics").text
    assert 'miko_api_requests_total{endpoint="posts",status="401"}' in metrics
    assert 'miko_api_requests_total{endpoint="search",status="422"}' in metrics
    index.close()
