"""The search API (README, "HTTP API"): FastAPI over an :class:`IntentionIndex`, with an optional API key.

``create_app`` takes the objects it serves, so ``serve`` and ``demo`` wire the same app around their own
index and indexer, and tests build one around a temporary index. Endpoints are plain functions: FastAPI runs
them in its thread pool, where embedding a query and searching FAISS never block the event loop.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations at runtime, and some
# refer to values local to create_app (limits from the config).
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field

from consumers.indexer import Indexer
from graph.contracts import IntentionEvent, Relation
from index.records import Hit
from index.service import IntentionIndex

API_KEY_HEADER = "X-API-Key"

REQUESTS = Counter("miko_api_requests_total", "API requests", ["endpoint", "status"])
LATENCY = Histogram("miko_api_request_seconds", "API request latency", ["endpoint"])
INDEX_VECTORS = Gauge("miko_index_vectors", "Vectors in the intention index")
INDEX_POSTS = Gauge("miko_index_posts", "Posts in the intention index")
INDEXER_LAG = Gauge("miko_indexer_lag_records", "Intention records not yet indexed (all partitions)")


@dataclass(frozen=True)
class ApiConfig:
    """``api_key`` None disables auth; CORS is off unless origins are listed."""

    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_k: int = 100
    max_query_chars: int = 512
    title: str = "miko-stream"


class SearchHit(BaseModel):
    post_id: str
    relation: Relation
    text: str = Field(description="The verified intention.")
    score: float = Field(description="Cosine similarity to the query, in [-1, 1].")
    verifier_score: float | None = Field(description="The verifier's plausibility score of the intention.")
    post_text: str = Field(description="The post's normalised text.")

    @classmethod
    def of(cls, hit: Hit) -> "SearchHit":
        return cls(
            post_id=hit.post_id,
            relation=Relation(hit.relation),
            text=hit.text,
            score=round(hit.score, 6),
            verifier_score=hit.verifier_score,
            post_text=hit.post_text,
        )


class SearchResponse(BaseModel):
    query: str
    k: int
    relation: Relation | None
    results: list[SearchHit]


class SimilarResponse(BaseModel):
    post_id: str
    k: int
    relation: Relation | None
    results: list[SearchHit] = Field(description="Other posts, best matching intention pair first.")


class StatsResponse(BaseModel):
    index: dict[str, Any]
    indexer: dict[str, Any] | None = Field(description="Offsets, lag and progress; null without an indexer.")


class Health(BaseModel):
    status: Literal["ok", "failing"]
    indexer: Literal["running", "stopped", "failed", "absent"]
    detail: str | None = None


ENDPOINT_NAMES = {"get_post": "posts"}  # route function name -> the endpoint label observed() uses


def api_key_dependency(expected: str | None) -> Callable[[str | None], None]:
    """A dependency that accepts the request only with the right ``X-API-Key`` (constant-time compare)."""
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="Required when MIKO_API_KEY is set.")
    expected_bytes = expected.encode() if expected else None

    def check(given: Annotated[str | None, Depends(header)] = None) -> None:
        if expected_bytes is None:
            return
        if given is None or not secrets.compare_digest(given.encode(), expected_bytes):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail=f"missing or wrong {API_KEY_HEADER} header",
                headers={"WWW-Authenticate": API_KEY_HEADER},
            )

    return check


@contextmanager
def observed(endpoint: str) -> Iterator[None]:
    started = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    except HTTPException as error:
        outcome = str(error.status_code)
        raise
    finally:
        REQUESTS.labels(endpoint, outcome).inc()
        LATENCY.labels(endpoint).observe(time.perf_counter() - started)


def data_loss(indexer: Indexer) -> str | None:
    """What /healthz says after the intentions topic lost records under the indexer (it re-read them)."""
    if not indexer.offset_resets:
        return None
    last = indexer.offset_resets[-1]
    return (
        f"data loss detected {len(indexer.offset_resets)} time(s): last on {last.topic}:{last.partition}, "
        f"position {last.position} beyond end {last.end}; the partition was re-read from its start"
    )


def create_app(index: IntentionIndex, *, indexer: Indexer | None = None, config: ApiConfig | None = None) -> FastAPI:
    """The API over ``index``; ``indexer`` (optional) adds offsets and lag to /stats and /healthz."""
    config = config or ApiConfig()
    app = FastAPI(
        title=config.title,
        summary="Search verified intentions of social-media posts (MIKO, streaming).",
        version="1",
    )
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET"],
            allow_headers=["*"],
        )
    protected = APIRouter(dependencies=[Depends(api_key_dependency(config.api_key))])

    @app.middleware("http")
    async def count_refused(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """401 (API key) and 422 (validation) are answered before a handler runs: count them here."""
        response = await call_next(request)
        if response.status_code in (401, 422):
            route = request.scope.get("route")
            endpoint = getattr(route, "name", None) or "unknown"
            REQUESTS.labels(ENDPOINT_NAMES.get(endpoint, endpoint), str(response.status_code)).inc()
        return response

    QueryText = Annotated[str, Query(min_length=1, max_length=config.max_query_chars, description="Free text.")]
    TopK = Annotated[int, Query(ge=1, le=config.max_k, description="Number of results.")]
    RelationFilter = Annotated[Relation | None, Query(description="Only intentions of this relation.")]

    @protected.get("/search", response_model=SearchResponse, tags=["search"])
    def search(q: QueryText, k: TopK = 10, relation: RelationFilter = None) -> SearchResponse:
        """Verified intentions most similar to ``q`` (cosine similarity of MiniLM embeddings)."""
        with observed("search"):
            hits = index.search(q, k, relation.value if relation else None)
            return SearchResponse(query=q, k=k, relation=relation, results=[SearchHit.of(hit) for hit in hits])

    @protected.get(
        "/posts/{post_id:path}",
        tags=["posts"],
        response_class=Response,
        responses={200: {"model": IntentionEvent, "description": "The latest IntentionEvent of the post."}},
    )
    def get_post(post_id: Annotated[str, Path(max_length=256)]) -> Response:
        """The latest event indexed for the post, exactly as it was on the intentions topic."""
        with observed("posts"):
            document = index.document(post_id)
            if document is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"post {post_id!r} is not in the index")
            return Response(document, media_type="application/json")

    @protected.get("/similar/{post_id:path}", response_model=SimilarResponse, tags=["search"])
    def similar(
        post_id: Annotated[str, Path(max_length=256)], k: TopK = 10, relation: RelationFilter = None
    ) -> SimilarResponse:
        """Other posts whose verified intentions are closest to this post's."""
        with observed("similar"):
            hits = index.similar(post_id, k, relation.value if relation else None)
            if hits is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"post {post_id!r} is not in the index")
            results = [SearchHit.of(hit) for hit in hits]
            return SimilarResponse(post_id=post_id, k=k, relation=relation, results=results)

    @protected.get("/stats", response_model=StatsResponse, tags=["ops"])
    def stats() -> StatsResponse:
        """Index size and kind, last snapshot, consumed offsets and lag per partition."""
        return StatsResponse(index=index.stats(), indexer=indexer.stats() if indexer else None)

    @app.head("/healthz", include_in_schema=False)
    def healthz_head(response: Response) -> None:
        """For probes that send HEAD: the same status code as GET, no body."""
        healthz(response)

    @app.get("/healthz", response_model=Health, tags=["ops"])
    def healthz(response: Response) -> Health:
        """Liveness: 503 when the indexer has failed (the API still answers from the last state)."""
        if indexer is None:
            return Health(status="ok", indexer="absent")
        if indexer.error:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
            return Health(status="failing", indexer="failed", detail=indexer.error)
        return Health(status="ok", indexer="running" if indexer.running else "stopped", detail=data_loss(indexer))

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics (unauthenticated, like /healthz: counts only, no content)."""
        info = index.stats()
        INDEX_VECTORS.set(info["vectors"])
        INDEX_POSTS.set(info["posts"])
        lag = indexer.stats()["lag"] if indexer else None
        if lag is not None:
            INDEXER_LAG.set(lag)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(protected)
    return app
