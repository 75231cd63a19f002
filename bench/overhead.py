"""Throughput of the system without model cost: posts/s end to end through the embedded broker.

Three workers consume the same posts on the same broker, one after the other, each in a process of its own:

* ``pass-through``: bare aiokafka, consume -> produce the same bytes, commit per batch (the ceiling);
* ``stream runtime``: consumers.stream.StreamProcessor with a processor that does nothing (what the Kafka
  layer costs: decoding, bookkeeping, acks, commits);
* ``miko-stream run``: the real CLI with ``--llm fake`` (the whole graph, with a model that answers at once);
* with ``--classifier sarcasm:DIR``, the same run with ``MIKO_CLASSIFIERS`` set: what scoring each event costs.

For each, a warm-up post goes through first (so start-up and the group join are not timed); then the clock
runs from the first of ``--posts`` posts produced to the last output consumed by an independent consumer.
Each line also gives the worker process's own CPU time per post over that window (from /proc), the figure
that stays comparable when other processes share the cores.

Run from the project root:
    python -m bench.overhead --data ../shared/data/mmsd_valid_captioned.jsonl --posts 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from consumers.kafka_config import KafkaConfig
from consumers.topics import ensure_topics
from miko_stream.broker import EmbeddedBroker

WARMUP_ID = "bench-warmup"
TARGET = 1000  # posts/s end to end (issue 13)


@dataclass(frozen=True)
class Result:
    name: str
    posts: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.posts / self.seconds


def load_posts(path: Path, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` posts as (key, value); the file is cycled with fresh ids when it is shorter."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"no posts in {path}")
    posts = []
    for index in range(count):
        row = dict(rows[index % len(rows)])
        row["id"] = f"{row.get('id', 'post')}-{index // len(rows)}" if index >= len(rows) else str(row["id"])
        posts.append((row["id"].encode(), json.dumps(row).encode()))
    return posts


def fresh_config(bootstrap: str, partitions: int) -> KafkaConfig:
    tag = uuid.uuid4().hex[:8]
    return KafkaConfig(
        bootstrap=bootstrap,
        posts_topic=f"bench-posts-{tag}",
        intentions_topic=f"bench-out-{tag}",
        dlq_topic=f"bench-dlq-{tag}",
        group_id=f"bench-{tag}",
        topic_partitions=partitions,
        idempotence="off",
    )


# ------------------------------------------------------------------------------------------------ workers


async def pass_through(config: KafkaConfig) -> None:
    """The ceiling: consume, produce the same bytes, wait for acks, commit; no decoding, no bookkeeping."""
    consumer = AIOKafkaConsumer(
        config.posts_topic, bootstrap_servers=config.bootstrap, group_id=config.group_id,
        enable_auto_commit=False, auto_offset_reset="earliest",
    )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=config.bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    while True:
        batch = await consumer.getmany(timeout_ms=100, max_records=1000)
        futures = [
            await producer.send(config.intentions_topic, record.value, key=record.key)
            for records in batch.values()
            for record in records
        ]
        if futures:
            await asyncio.gather(*futures)
            await consumer.commit()


class NullProcessor:
    """Turns a post into an event without any work: isolates the stream runtime's own cost."""

    async def process(self, post, source):  # type: ignore[no-untyped-def]
        from graph.contracts import IntentionEvent, ModelInfo

        models = ModelInfo(llm="none", vision="none", verifier="none")
        return IntentionEvent(post_id=post.id, source=source, text=post.text, models=models, prompt_version="-")


async def stream_runtime(config: KafkaConfig, max_in_flight: int) -> None:
    from consumers.stream import StreamOptions, StreamProcessor
    from graph.intake import InputLimits

    options = StreamOptions(max_in_flight=max_in_flight, create_topics=False, stats_interval_s=3600)
    await StreamProcessor(NullProcessor(), config, InputLimits(), options).run()


def _worker_main(kind: str, config: KafkaConfig, max_in_flight: int) -> None:
    from miko_stream.logging import configure_logging

    configure_logging("WARNING")  # as the CLI does: no per-post debug lines
    if kind == "pass-through":
        asyncio.run(pass_through(config))
    else:
        asyncio.run(stream_runtime(config, max_in_flight))


class Worker:
    """Worker processes (multiprocessing for the in-library ones, the CLI for the real thing)."""

    def __init__(
        self, start: Callable[[], object], stop: Callable[[], None], pids: Callable[[], list[int]], members: int = 1
    ) -> None:
        self.stop = stop
        self.pids = pids
        self.members = members  # consumer-group members to wait for before timing
        start()

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the worker processes so far (Linux /proc), None where unknown."""
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                return None
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        return total if self.pids() else None


def start_library_worker(kind: str, config: KafkaConfig, max_in_flight: int) -> Worker:
    process = multiprocessing.get_context("spawn").Process(
        target=_worker_main, args=(kind, config, max_in_flight), daemon=True
    )

    def stop() -> None:
        process.terminate()
        process.join(10)

    return Worker(process.start, stop, lambda: [process.pid] if process.pid else [])


def start_cli_worker(
    config: KafkaConfig,
    llm: str,
    max_in_flight: int,
    log: Path,
    extra_env: dict[str, str] | None = None,
    verifier: str = "llm",
    processes: int = 1,
) -> Worker:
    """``processes`` CLI processes in one consumer group: how a deployment scales the graph across cores."""
    command = [
        sys.executable, "-m", "miko_stream", "--log-level", "WARNING", "run",
        "--bootstrap", config.bootstrap, "--llm", llm, "--vision", "none",
        "--posts-topic", config.posts_topic, "--intentions-topic", config.intentions_topic,
        "--dlq-topic", config.dlq_topic, "--group-id", config.group_id,
        "--max-in-flight", str(max_in_flight), "--no-create-topics",
    ]  # fmt: skip
    env = {**os.environ, "MIKO_KAFKA_IDEMPOTENCE": "off", "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    env.setdefault("MIKO_VERIFIER", verifier)
    output = log.open("ab")
    running: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        running.extend(subprocess.Popen(command, stdout=output, stderr=output, env=env) for _ in range(processes))

    def stop() -> None:
        for process in running:
            process.terminate()
        for process in running:
            process.wait(60)
        output.close()

    return Worker(start, stop, lambda: [process.pid for process in running], members=processes)


# ------------------------------------------------------------------------------------------------ timing


async def produce(config: KafkaConfig, posts: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=config.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(config.posts_topic, value, key=key) for key, value in posts]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def wait_for_outputs(consumer: AIOKafkaConsumer, count: int, timeout_s: float) -> None:
    seen = 0
    deadline = time.monotonic() + timeout_s
    while seen < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s}s with {seen} of {count} outputs")
        batch = await consumer.getmany(timeout_ms=200)
        seen += sum(len(records) for records in batch.values())


Posts = list[tuple[bytes, bytes]]


async def wait_for_group(config: KafkaConfig, members: int, timeout_s: float) -> None:
    """With several worker processes, time nothing before all of them hold partitions (no rebalance mid-run)."""
    if members <= 1:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=config.bootstrap)
    await admin.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            described = await admin.describe_consumer_groups([config.group_id])
            groups = [group for response in described for group in getattr(response, "groups", [])]
            if any(group[2] == "Stable" and len(group[-1]) == members for group in groups):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out after {timeout_s}s waiting for {members} members in {config.group_id}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def warm_up(config: KafkaConfig, consumer: AIOKafkaConsumer, members: int, timeout_s: float) -> None:
    """One post per partition when several workers run (each starts its graph), one post otherwise."""
    partitions = config.topic_partitions if members > 1 else 1
    producer = AIOKafkaProducer(bootstrap_servers=config.bootstrap, acks="all")
    await producer.start()
    try:
        for partition in range(partitions):
            post_id = f"{WARMUP_ID}-{partition}"
            value = json.dumps({"id": post_id, "text": "warming up # hello"}).encode()
            await producer.send_and_wait(config.posts_topic, value, key=post_id.encode(), partition=partition)
    finally:
        await producer.stop()
    await wait_for_outputs(consumer, partitions, timeout_s)


async def measure(
    name: str, config: KafkaConfig, worker: Callable[[], Worker], posts: Posts, timeout_s: float
) -> Result:
    await ensure_topics(config, [config.posts_topic, config.intentions_topic, config.dlq_topic])
    consumer = AIOKafkaConsumer(
        config.intentions_topic, config.dlq_topic, bootstrap_servers=config.bootstrap, group_id=None,
        auto_offset_reset="earliest",
    )  # fmt: skip
    await consumer.start()
    running = worker()
    try:
        await wait_for_group(config, running.members, timeout_s)
        await warm_up(config, consumer, running.members, timeout_s)
        started, cpu_before = time.perf_counter(), running.cpu_seconds()
        await produce(config, posts)
        await wait_for_outputs(consumer, len(posts), timeout_s)
        elapsed, cpu_after = time.perf_counter() - started, running.cpu_seconds()
    finally:
        running.stop()
        await consumer.stop()
    cpu = _cpu_note(cpu_before, cpu_after, len(posts))
    print(f"  {name:<34} {len(posts) / elapsed:9.0f} posts/s  ({elapsed:.2f}s{cpu})", flush=True)
    return Result(name, len(posts), elapsed)


def _cpu_note(before: float | None, after: float | None, posts: int) -> str:
    """The worker's own CPU per post: it stays meaningful when other processes share the cores; posts/s does not."""
    if before is None or after is None:
        return ""
    return f"; worker CPU {1000 * (after - before) / posts:.3f} ms/post"


async def main(args: argparse.Namespace) -> None:
    posts = load_posts(args.data, args.posts)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker:
        print(f"{len(posts)} posts from {args.data.name}; embedded broker {broker.bootstrap}; "
              f"{args.partitions} partitions; max in flight {args.max_in_flight}; "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip

        def config() -> KafkaConfig:
            return fresh_config(broker.bootstrap, args.partitions)

        base_config, runtime_config, cli_config = config(), config(), config()
        inflight = args.max_in_flight
        base = await measure(
            "pass-through (bare aiokafka)", base_config,
            lambda: start_library_worker("pass-through", base_config, inflight), posts, args.timeout,
        )  # fmt: skip
        runtime = await measure(
            "stream runtime (no-op processor)", runtime_config,
            lambda: start_library_worker("runtime", runtime_config, inflight), posts, args.timeout,
        )  # fmt: skip
        log = Path(tmp) / "run.log"
        full = await measure(
            f"miko-stream run --llm {args.llm}", cli_config,
            lambda: start_cli_worker(cli_config, args.llm, inflight, log, verifier=args.verifier), posts, args.timeout,
        )  # fmt: skip
        single = full
        if args.processes > 1:
            scaled_config = config()
            full = await measure(
                f"... {args.processes} processes, one group", scaled_config,
                lambda: start_cli_worker(
                    scaled_config, args.llm, inflight, log, verifier=args.verifier, processes=args.processes
                ), posts, args.timeout,
            )  # fmt: skip
        if args.classifier:
            classified_config = config()
            student = {"MIKO_CLASSIFIERS": args.classifier}
            classified = await measure(
                f"... + MIKO_CLASSIFIERS={args.classifier.split(':')[0]}", classified_config,
                lambda: start_cli_worker(
                    classified_config, args.llm, inflight, log, student, verifier=args.verifier
                ), posts, args.timeout,
            )  # fmt: skip
            cost_ms = 1000 * (classified.seconds / classified.posts - single.seconds / single.posts)
            print(f"classify: {cost_ms:.2f} ms per post ({classified.per_s / single.per_s:.3f} of the rate without)")
    print(f"stream runtime / pass-through: {runtime.per_s / base.per_s:.3f}")
    print(f"end to end / pass-through:     {full.per_s / base.per_s:.3f}")
    if full is not single:
        print(f"one process: {single.per_s:.0f} posts/s; {args.processes} processes: x{full.per_s / single.per_s:.2f}")
    target = "meets" if full.per_s >= TARGET else "misses"
    where = f"{args.processes} processes" if full is not single else "one process"
    print(f"end to end: {full.per_s:.0f} posts/s with {where} ({target} the {TARGET:,} posts/s target)")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="JSONL posts (e.g. mmsd_valid_captioned.jsonl)")
    parser.add_argument("--posts", type=int, default=2000, help="How many posts to time (default 2000).")
    parser.add_argument("--llm", default="fake", help="Model spec for the CLI run (default: fake, no delay).")
    parser.add_argument(
        "--verifier",
        default="llm",
        help="MIKO_VERIFIER of the CLI run (default llm: the fake model's instant judge, so the figure is the graph's "
        "own cost; `learned` adds the MiniLM verifier's CPU per post). MIKO_VERIFIER in the environment wins.",
    )
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="Also time N `miko-stream run` processes in one consumer group (a deployment's way to use every core); "
        "the end-to-end line then reports that run.",
    )
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument(
        "--classifier", help="name:DIR of a saved student: also time the run with MIKO_CLASSIFIERS (its cost per post)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="Seconds per measurement before giving up.")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
