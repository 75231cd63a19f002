"""`serve` (indexer + search API), `search QUERY` and `index rebuild`.

Heavy libraries (faiss, torch via sentence-transformers, aiokafka, uvicorn) are imported inside the commands
so that `miko-stream --help` stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from graph.contracts import Relation
from miko_stream.commands.common import BootstrapOption, err_console, fail, load_settings
from miko_stream.settings import Settings

if TYPE_CHECKING:
    from consumers.indexer import IndexerConfig
    from consumers.kafka_config import KafkaConfig
    from index.embeddings import Embedder
    from index.service import IntentionIndex
    from miko_stream.api import ApiConfig


class IndexKindChoice(StrEnum):
    FLAT = "flat"
    HNSW = "hnsw"


IndexDirOption = Annotated[Path | None, typer.Option("--index-dir", help="Index folder (env MIKO_INDEX_DIR)")]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--embedding-model",
        help="all-MiniLM-L6-v2 (bundled) | folder | hash[:DIM] (env MIKO_EMBEDDING_MODEL)",
    ),
]
KindOption = Annotated[
    IndexKindChoice | None,
    typer.Option(
        "--index-kind",
        envvar="MIKO_INDEX_KIND",
        help="flat (exact) | hnsw (ANN); default: keep the existing one",
    ),
]
GroupOption = Annotated[
    str,
    typer.Option("--group-id", envvar="MIKO_INDEXER_GROUP_ID", help="Group the indexer commits offsets to."),
]
TopicOption = Annotated[str | None, typer.Option("--topic", help="Intentions topic (env MIKO_INTENTIONS_TOPIC)")]
BatchOption = Annotated[int, typer.Option("--batch-size", min=1, help="Intention records per indexing batch.")]


def _settings(bootstrap: str | None, index_dir: Path | None, model: str | None, topic: str | None) -> Settings:
    return load_settings(kafka_bootstrap=bootstrap, index_dir=index_dir, embedding_model=model, intentions_topic=topic)


def _kafka(settings: Settings, group_id: str) -> KafkaConfig:
    return settings.kafka().model_copy(update={"indexer_group_id": group_id})


def _embedder(settings: Settings) -> Embedder:
    from index.embeddings import EmbeddingModelError, load_embedder

    spec = settings.embedding_model
    with err_console.status(f"loading embedding model {spec}"):
        try:
            return load_embedder(spec, dtype=settings.embedding_dtype)
        except EmbeddingModelError as error:
            fail(str(error))


def _open_index(
    settings: Settings, kind: IndexKindChoice | None, *, writer: bool, fresh: bool = False
) -> IntentionIndex:
    from index.service import IndexSettings, IntentionIndex
    from index.snapshot import SnapshotError
    from index.store import IndexMismatchError
    from index.vectors import VectorIndexConfig

    embedder = _embedder(settings)
    config = IndexSettings(settings.index_dir, VectorIndexConfig(kind=kind.value if kind else None))
    try:
        if fresh:
            return IntentionIndex.fresh(config, embedder)
        return IntentionIndex.open(config, embedder, writer=writer)
    except (SnapshotError, IndexMismatchError) as error:
        fail(str(error))


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event, also: Any = None) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (and ``also.should_exit``): services finish their batch and snapshot."""
    loop = asyncio.get_running_loop()

    def request_stop() -> None:
        stop.set()
        if also is not None:
            also.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def run_serve(
    index: IntentionIndex,
    kafka: KafkaConfig,
    indexer_config: IndexerConfig,
    api_config: ApiConfig,
    *,
    host: str,
    port: int,
) -> int:
    """Run the indexer and the API until SIGINT/SIGTERM or an indexer failure; the exit code."""
    import uvicorn

    from consumers.indexer import Indexer
    from miko_stream.api import create_app
    from miko_stream.dashboard import Dashboard, mount_dashboard

    class Server(uvicorn.Server):
        """Signals are ours: uvicorn would re-raise SIGTERM after its shutdown, before the last snapshot."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    indexer = Indexer(index, kafka, indexer_config)
    app = create_app(index, indexer=indexer, config=api_config)
    dashboard = Dashboard(index, indexer, kafka)
    mount_dashboard(app, dashboard, api_config.api_key)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=5)
    server = Server(config)
    stop = asyncio.Event()
    indexing = asyncio.create_task(indexer.run(stop))
    indexing.add_done_callback(lambda _: (stop.set(), setattr(server, "should_exit", True)))
    watching = asyncio.create_task(dashboard.run(stop))  # ends the event streams on stop, so uvicorn can exit
    with _stop_on_signals(stop, also=server):
        await server.serve()
        stop.set()
        await watching
        try:
            await indexing
        except Exception as error:
            err_console.print(f"[bold red]indexer failed:[/] {error}", highlight=False)
            return 1
    return 0 if server.started else 1


def serve(
    bootstrap: BootstrapOption = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on (0.0.0.0 for all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="HTTP port.")] = 8000,
    index_dir: IndexDirOption = None,
    embedding_model: ModelOption = None,
    index_kind: KindOption = None,
    topic: TopicOption = None,
    group_id: GroupOption = "miko-indexer",
    batch_size: BatchOption = 256,
    snapshot_interval: Annotated[
        float,
        typer.Option("--snapshot-interval", envvar="MIKO_SNAPSHOT_INTERVAL_S", help="Seconds between snapshots."),
    ] = 30.0,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option("--cors-origin", help="Allow browser calls from this origin (repeatable)."),
    ] = None,
) -> None:
    """Index the intentions topic (exactly once, with snapshots) and serve the search API.

    Set MIKO_API_KEY to require an X-API-Key header; OpenAPI docs are at /docs.
    """
    from consumers.indexer import IndexerConfig, IndexerError
    from miko_stream.api import ApiConfig

    settings = _settings(bootstrap, index_dir, embedding_model, topic)
    index = _open_index(settings, index_kind, writer=True)
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    api = ApiConfig(api_key=api_key, cors_origins=tuple(cors_origin or ()))
    indexing = IndexerConfig(batch_size=batch_size, snapshot_interval_s=snapshot_interval)
    err_console.print(
        f"serving {settings.index_dir} ({index.stats()['vectors']} vectors) on http://{host}:{port} "
        f"(dashboard at /, docs at /docs{', API key required' if api_key else ''})",
        highlight=False,
        soft_wrap=True,
    )
    try:
        code = asyncio.run(run_serve(index, _kafka(settings, group_id), indexing, api, host=host, port=port))
    except IndexerError as error:
        fail(str(error))
    finally:
        index.close()
    raise typer.Exit(code)


def _hits_table(query: str, hits: list[dict[str, Any]]) -> Table:
    table = Table(title=f"intentions like {query!r}", title_justify="left")
    for column, options in [
        ("#", {"justify": "right", "no_wrap": True}),
        ("score", {"justify": "right", "no_wrap": True}),
        ("relation", {"no_wrap": True}),
        ("post", {"overflow": "fold", "min_width": 10}),
        ("intention", {"overflow": "fold", "ratio": 2, "min_width": 16}),
        ("post text", {"overflow": "fold", "ratio": 3, "min_width": 16}),
    ]:
        table.add_column(column, **options)
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), f"{hit['score']:.3f}", hit["relation"], hit["post_id"], hit["text"], hit["post_text"])
    return table


def _remote_search(url: str, api_key: str | None, params: dict[str, Any]) -> list[dict[str, Any]]:
    import httpx

    headers = {"X-API-Key": api_key} if api_key else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/search", params=params, headers=headers, timeout=30)
    except httpx.HTTPError as error:
        fail(f"cannot reach {url}: {error}")
    if response.status_code != 200:
        fail(f"{url} answered {response.status_code}: {response.text[:300]}")
    return response.json()["results"]


def search(
    query: Annotated[str, typer.Argument(help="What the intentions should be like.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=100, help="Number of results.")] = 10,
    relation: Annotated[Relation | None, typer.Option("--relation", help="Only this relation.")] = None,
    index_dir: IndexDirOption = None,
    embedding_model: ModelOption = None,
    url: Annotated[
        str | None, typer.Option("--url", help="Ask a running `serve` (e.g. http://127.0.0.1:8000) instead.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Search the intention index (its newest snapshot, or a running server with --url)."""
    import json

    from rich.console import Console

    settings = _settings(None, index_dir, embedding_model, None)
    params = {"q": query, "k": k, **({"relation": relation.value} if relation else {})}
    if url:
        hits = _remote_search(url, settings.api_key.get_secret_value() if settings.api_key else None, params)
    else:
        from index.snapshot import SnapshotDir

        if SnapshotDir(settings.index_dir).latest() is None:
            fail(f"no index in {settings.index_dir}: run `miko-stream serve` or `miko-stream index rebuild`")
        index = _open_index(settings, None, writer=False)
        try:
            found = index.search(query, k, relation.value if relation else None)
        finally:
            index.close()
        hits = [
            {
                "post_id": h.post_id,
                "relation": h.relation,
                "text": h.text,
                "score": h.score,
                "post_text": h.post_text,
            }
            for h in found
        ]
    if as_json:
        typer.echo(json.dumps(hits, ensure_ascii=False, indent=1))
    elif not hits:
        err_console.print("no results")
    else:
        Console().print(_hits_table(query, hits))


async def _rebuild(index: IntentionIndex, kafka: KafkaConfig, config: IndexerConfig) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from consumers.indexer import Indexer

    indexer = Indexer(index, kafka, config)
    stop = asyncio.Event()
    columns = (TextColumn("[bold]intention records"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with _stop_on_signals(stop), Progress(*columns, console=err_console) as progress:
        task = progress.add_task("records", total=None)
        running = asyncio.create_task(indexer.run(stop))
        while not running.done():
            info = indexer.stats()
            total = info["records"] + info["lag"] if info["lag"] is not None else None
            progress.update(task, completed=info["records"], total=total)
            await asyncio.wait([running], timeout=0.5)
        await running
        progress.update(task, completed=indexer.records, total=indexer.records)
    return indexer.stats()


def rebuild(
    bootstrap: BootstrapOption = None,
    index_dir: IndexDirOption = None,
    embedding_model: ModelOption = None,
    index_kind: KindOption = None,
    topic: TopicOption = None,
    group_id: GroupOption = "miko-indexer",
    batch_size: BatchOption = 256,
) -> None:
    """Replay the intentions topic from the beginning into a fresh index.

    The result is published as the newest snapshot; stop `serve` on this index first.
    """
    from consumers.indexer import IndexerConfig, IndexerError
    from consumers.io import KafkaClientError
    from index.snapshot import SnapshotDir

    settings = _settings(bootstrap, index_dir, embedding_model, topic)
    if index_kind is None and (latest := SnapshotDir(settings.index_dir).latest()):
        index_kind = IndexKindChoice(latest.manifest.get("kind", "flat"))
    index = _open_index(settings, index_kind, writer=True, fresh=True)
    config = IndexerConfig(batch_size=batch_size, stop_at_end=True, create_topic=False, wait_for_kafka=False)
    try:
        info = asyncio.run(_rebuild(index, _kafka(settings, group_id), config))
        stats = index.stats()
    except (IndexerError, KafkaClientError) as error:
        fail(str(error))
    finally:
        index.close()
    outcome = "rebuilt" if info["reached_end"] else "interrupted; saved a consistent partial rebuild of"
    err_console.print(
        f"{outcome} {settings.index_dir}: {info['records']} records -> {stats['vectors']} vectors of "
        f"{stats['posts']} posts (snapshot {stats['snapshot_seq']})",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(search)
    index_app = typer.Typer(help="Maintain the intention index.", no_args_is_help=True)
    index_app.command()(rebuild)
    app.add_typer(index_app, name="index")
