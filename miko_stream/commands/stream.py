"""`broker` (embedded Kafka-protocol broker), `run` (the stream processor), `produce FILE` and `tail`.

aiokafka, the graph and the models are imported inside the commands so that `miko-stream --help` stays fast.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from miko_stream.commands.common import (
    BootstrapOption,
    LlmOption,
    VisionOption,
    err_console,
    fail,
    load_settings,
)

if TYPE_CHECKING:
    from consumers.stream import StreamProcessor
    from graph.pipeline import MikoPipeline

PostsTopicOption = Annotated[str | None, typer.Option("--posts-topic", help="Input topic (env MIKO_POSTS_TOPIC)")]
IntentionsTopicOption = Annotated[
    str | None, typer.Option("--intentions-topic", help="Output topic (env MIKO_INTENTIONS_TOPIC)")
]
DlqTopicOption = Annotated[str | None, typer.Option("--dlq-topic", help="Dead-letter topic (env MIKO_DLQ_TOPIC)")]


def broker(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 9092,
) -> None:
    """Run the embedded Kafka-protocol broker (Tansu, in memory) in the foreground until Ctrl-C/SIGTERM."""
    from miko_stream.broker import BrokerError, EmbeddedBroker

    embedded = EmbeddedBroker(host=host, port=port)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        embedded.start()
    except BrokerError as error:
        fail(str(error))
    exit_codes: list[int] = []

    def watch() -> None:
        exit_codes.append(embedded.wait())
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    err_console.print(
        f"Kafka-protocol broker (Tansu, in memory) on [bold]{embedded.bootstrap}[/]; Ctrl-C stops it. "
        "Topics are lost when it stops.",
        highlight=False,
    )
    while not stop.wait(0.5):
        pass
    if exit_codes:
        fail(f"the broker exited by itself with code {exit_codes[0]}", code=1)
    embedded.stop()
    err_console.print("broker stopped")


def run(
    bootstrap: BootstrapOption = None,
    llm: LlmOption = None,
    vision: VisionOption = None,
    posts_topic: PostsTopicOption = None,
    intentions_topic: IntentionsTopicOption = None,
    dlq_topic: DlqTopicOption = None,
    group_id: Annotated[str | None, typer.Option("--group-id", help="Consumer group (env MIKO_GROUP_ID)")] = None,
    max_in_flight: Annotated[
        int | None, typer.Option("--max-in-flight", min=1, help="Posts in flight (env MIKO_MAX_IN_FLIGHT)")
    ] = None,
    max_text_chars: Annotated[
        int | None,
        typer.Option("--max-text-chars", min=1, help="Longer posts are dead-lettered (env MIKO_MAX_TEXT_CHARS)"),
    ] = None,
    create_topics: Annotated[
        bool, typer.Option("--create-topics/--no-create-topics", help="Create missing topics at start.")
    ] = True,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", envvar="MIKO_METRICS_PORT", min=1, max=65535, help="Serve Prometheus /metrics."),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", envvar="MIKO_METRICS_HOST", help="Interface for --metrics-port.")
    ] = "127.0.0.1",
) -> None:
    """The stream processor: posts -> MIKO graph -> intentions topic (dead letters to the DLQ topic).

    At least once: an input offset is committed only once the outputs of it and every earlier post are acked.

    SIGTERM or Ctrl-C drains in-flight posts, commits and exits 0; a second Ctrl-C stops without waiting.
    """
    from aiokafka.errors import KafkaError

    from consumers.io import KafkaClientError
    from consumers.stream import StreamFailed, StreamOptions, StreamProcessor
    from graph.models.base import ModelSpecError
    from miko_stream.gc_tuning import tune_gc_after_startup
    from miko_stream.metrics import ObservedPipeline, ProcessorMetrics
    from miko_stream.wiring import build_pipeline

    # Until the processor runs (imports, model loading), a SIGTERM has nothing to drain: exit 0 at once.
    signal.signal(signal.SIGTERM, _exit_before_start)
    settings = load_settings(
        kafka_bootstrap=bootstrap,
        llm=llm,
        vision=vision,
        posts_topic=posts_topic,
        intentions_topic=intentions_topic,
        dlq_topic=dlq_topic,
        group_id=group_id,
        max_in_flight=max_in_flight,
        max_text_chars=max_text_chars,
    )
    try:
        pipeline = build_pipeline(settings)
    except ModelSpecError as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot load the model: {error}")
    options = StreamOptions(
        max_in_flight=settings.max_in_flight,
        commit_interval_s=settings.commit_interval_s,
        drain_timeout_s=settings.drain_timeout_s,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        post_timeout_s=settings.post_deadline_s + 30,
        create_topics=create_topics,
    )
    processor = ObservedPipeline(pipeline) if metrics_port else pipeline
    tune_gc_after_startup()  # the model and tables stay for the process's life: keep them out of the collector's way
    stream = StreamProcessor(processor, settings.kafka(), settings.limits(), options)
    if metrics_port:
        try:
            ProcessorMetrics(stream, pipeline.deps.llm).serve_http(metrics_port, metrics_host)
        except OSError as error:
            fail(f"cannot serve metrics on {metrics_host}:{metrics_port}: {error}")
        err_console.print(f"metrics on http://{metrics_host}:{metrics_port}/metrics", highlight=False)
    try:
        asyncio.run(_run_until_signal(stream, pipeline))
    except (KafkaClientError, KafkaError) as error:
        fail(f"{error}; offsets are committed up to the last completed post, a restart resumes there", code=1)
    except StreamFailed as error:
        fail(f"{error}; restart to resume from the last commit", code=1)


def _exit_before_start(signum: int, frame: object) -> None:
    raise SystemExit(0)


async def _run_until_signal(stream: StreamProcessor, pipeline: MikoPipeline) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stream.request_stop)
    try:
        await stream.run()
    finally:
        close = getattr(pipeline, "aclose", None)  # releases model batchers and HTTP clients where it exists
        if close is not None:
            await close()


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/s)?\s*$")


def parse_rate(text: str) -> float:
    """``"50"``, ``"50/s"`` or ``"2.5/s"`` -> records per second."""
    match = _RATE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise typer.BadParameter(f"{text!r}: give records per second, e.g. 50/s")
    return float(match.group(1))


def produce(
    file: Annotated[Path, typer.Argument(metavar="FILE.jsonl", help="One record per line, sent as is.")],
    rate: Annotated[str | None, typer.Option("--rate", help="At most this many records/s, e.g. 50/s.")] = None,
    bootstrap: BootstrapOption = None,
    topic: Annotated[str | None, typer.Option("--topic", help="Target topic (env MIKO_POSTS_TOPIC)")] = None,
) -> None:
    """Publish each line of FILE unchanged to the posts topic, keyed by its post id when the line parses.

    Bad lines are sent too: the processor, not this command, dead-letters them.
    """
    from consumers.io import KafkaClientError, ProduceError, ProduceReport, produce_file
    from consumers.topics import ensure_topics
    from graph.intake import count_jsonl_records

    if not file.is_file():
        fail(f"file not found: {file}")
    per_second = parse_rate(rate) if rate is not None else None
    settings = load_settings(kafka_bootstrap=bootstrap)
    target = topic or settings.posts_topic
    total = count_jsonl_records(file)
    columns = (
        TextColumn("[bold]records"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    config = settings.kafka()

    async def main(on_acked: Callable[[], None]) -> ProduceReport:
        await ensure_topics(config, [target])  # with the configured partitions, not the broker's default
        return await produce_file(config, file, topic=target, rate=per_second, on_acked=on_acked)

    with Progress(*columns, console=err_console) as progress:
        task = progress.add_task("records", total=total)
        try:
            report = asyncio.run(main(lambda: progress.advance(task)))
        except (KafkaClientError, ProduceError) as error:
            fail(str(error), code=1)
    err_console.print(
        f"{report.records} records ({report.keyed} keyed by post id) -> {target} in {report.elapsed_s:.1f}s "
        f"({report.records_per_s:.0f}/s)",
        highlight=False,
    )


def tail(
    topic: Annotated[str | None, typer.Option("--topic", help="Topic to print (env MIKO_INTENTIONS_TOPIC)")] = None,
    bootstrap: BootstrapOption = None,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Start at the oldest record.")] = False,
    max_records: Annotated[int | None, typer.Option("--max", min=1, help="Exit after this many records.")] = None,
    idle_timeout: Annotated[
        float | None,
        typer.Option("--idle-timeout", min=0.1, help="Exit after this many seconds without records."),
    ] = None,
) -> None:
    """Print records as they arrive, one line each: the value as sent (JSON), or {"tombstone": true, ...}."""
    from consumers.io import KafkaClientError, format_record, tail_topic

    settings = load_settings(kafka_bootstrap=bootstrap)

    def emit(record: object) -> None:
        sys.stdout.write(format_record(record) + "\n")  # type: ignore[arg-type]
        sys.stdout.flush()

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        return await tail_topic(
            settings.kafka(),
            topic or settings.intentions_topic,
            emit,
            from_beginning=from_beginning,
            max_records=max_records,
            idle_timeout_s=idle_timeout,
            stop=stop,
        )

    try:
        asyncio.run(main())
    except KafkaClientError as error:
        fail(str(error), code=1)
    except BrokenPipeError:  # `miko-stream tail | head`: exit quietly (recipe from the Python signal docs)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def register(app: typer.Typer) -> None:
    app.command()(broker)
    app.command()(run)
    app.command()(produce)
    app.command()(tail)
