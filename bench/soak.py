"""Soak test: steady load through the embedded broker for N minutes, watching for leaks, slowdowns and loss.

Starts Tansu, `miko-stream run --llm fake:5 --vision none` and `miko-stream serve` (hash embedder: the soak is
about the pipes, not MiniLM) as separate processes, produces posts at a steady rate (1% of them invalid
JSON, which must become dead letters), and every ``--sample-s`` seconds prints posts/s out, end-to-end latency
p50/p99 (post produced -> its event appended to the intentions topic) and each process's RSS. At the end it
prints the RSS slope of each process (least squares over the samples after the first 20%, MB per minute) and
an audit: every input has an event or a dead letter, nothing lost, duplicates counted.

    python -m bench.soak --minutes 10 --rate 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from consumers.kafka_config import KafkaConfig
from consumers.topics import ensure_topics
from miko_stream.broker import EmbeddedBroker, free_port

WORDS = [
    "coffee",
    "monday",
    "rain",
    "traffic",
    "airport",
    "stuck",
    "delayed",
    "again",
    "wonderful",
    "sunny",
    "beach",
    "friends",
    "game",
    "won",
]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    return 60 * sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Tally:
    sent: dict[str, bytes] = field(default_factory=dict)  # post id -> raw (invalid ones by their id too)
    sent_at: dict[str, float] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)
    dead: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, of the current window
    keyed: list[tuple[str, float]] = field(default_factory=list)  # (post id, seconds), the whole run
    window_outputs: int = 0


async def produce(bootstrap: str, topic: str, rate: float, seconds: float, tally: Tally) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        started, index = time.monotonic(), 0
        while (now := time.monotonic()) - started < seconds:
            due = int((now - started) * rate)
            while index < due:
                post_id = f"soak-{index}"
                text = " ".join(WORDS[(index * 7 + k) % len(WORDS)] for k in range(10)) + " # blessed"
                raw = (
                    b'{"id": "' + post_id.encode() + b'", "text": broken'
                    if index % 100 == 99
                    else json.dumps({"id": post_id, "text": text}).encode()
                )
                tally.sent[post_id], tally.sent_at[post_id] = raw, time.time()
                await producer.send(topic, raw, key=post_id.encode())
                index += 1
            await asyncio.sleep(0.01)
        await producer.flush()
    finally:
        await producer.stop()


async def consume(config: KafkaConfig, tally: Tally, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(
        config.intentions_topic, config.dlq_topic, bootstrap_servers=config.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    key = record.key.decode() if record.key else ""
                    if record.topic == config.dlq_topic:
                        tally.dead[key] += 1
                    else:
                        tally.events[key] += 1
                        if key in tally.sent_at:
                            latency = record.timestamp / 1000 - tally.sent_at[key]
                            tally.latencies.append(latency)
                            tally.keyed.append((key, latency))
                    tally.window_outputs += 1
    finally:
        await consumer.stop()


def start_services(bootstrap: str, workdir: Path, llm: str) -> dict[str, subprocess.Popen[bytes]]:
    root = str(Path(__file__).resolve().parents[1])  # the services run this checkout's code
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "MIKO_KAFKA_IDEMPOTENCE": "off", "MIKO_LOG_LEVEL": "WARNING"}
    base = [sys.executable, "-m", "miko_stream"]
    commands = {
        "run": [*base, "run", "--bootstrap", bootstrap, "--llm", llm, "--vision", "none"],
        "serve": [*base, "serve", "--bootstrap", bootstrap, "--index-dir", str(workdir / "index"),
                  "--embedding-model", "hash", "--port", str(free_port())],
    }  # fmt: skip
    return {
        name: subprocess.Popen(command, stdout=(workdir / f"{name}.log").open("wb"), stderr=subprocess.STDOUT, env=env)
        for name, command in commands.items()
    }


async def main(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="miko-soak-"))
    seconds = args.minutes * 60
    with EmbeddedBroker(log_path=workdir / "tansu.log") as broker:
        config = KafkaConfig(bootstrap=broker.bootstrap)
        await ensure_topics(config, [config.posts_topic, config.intentions_topic, config.dlq_topic])
        services = start_services(broker.bootstrap, workdir, args.llm)
        pids = {name: process.pid for name, process in services.items()}
        assert broker._process is not None
        pids["broker"] = broker._process.pid
        tally, stop = Tally(), asyncio.Event()
        consumer = asyncio.create_task(consume(config, tally, stop))
        producer = asyncio.create_task(produce(broker.bootstrap, config.posts_topic, args.rate, seconds, tally))
        rss: dict[str, list[tuple[float, float]]] = {name: [] for name in pids}
        started = time.monotonic()
        print(f"soak: {args.minutes} min at {args.rate} posts/s, --llm {args.llm}; logs in {workdir}")
        print(f"{'t (s)':>6} {'sent':>7} {'out/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
              + " ".join(f"{name + ' MB':>10}" for name in pids) + "  load")  # fmt: skip
        while not producer.done() or len(tally.sent) > len(set(tally.events) | set(tally.dead)):
            await asyncio.sleep(args.sample_s)
            elapsed = time.monotonic() - started
            window, tally.window_outputs = tally.window_outputs, 0
            latencies, tally.latencies = tally.latencies, []
            sizes = {name: rss_mb(pid) for name, pid in pids.items()}
            for name, size in sizes.items():
                if size is not None:
                    rss[name].append((elapsed, size))
            print(
                f"{elapsed:6.0f} {len(tally.sent):7d} {window / args.sample_s:7.1f} "
                f"{1000 * percentile(latencies, 0.5):8.0f} {1000 * percentile(latencies, 0.99):8.0f} "
                + " ".join(f"{(size or 0):10.1f}" for size in sizes.values())
                + f"  {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            if any(process.poll() is not None for process in services.values()):
                print("a service exited: " + ", ".join(f"{n}={p.poll()}" for n, p in services.items()))
                break
            if producer.done() and elapsed > seconds + args.drain_s:
                break
        stop.set()
        await consumer
        for process in services.values():
            process.terminate()
        for process in services.values():
            process.wait(60)
    outputs = sum(tally.events.values()) + sum(tally.dead.values())
    for name, points in rss.items():
        steady = points[len(points) // 5 :]
        growth = points[-1][1] - points[0][1] if points else 0.0
        print(
            f"RSS {name}: start {points[0][1] if points else 0:.1f} MB, end {points[-1][1] if points else 0:.1f} MB, "
            f"slope {slope_per_min(steady):+.3f} MB/min over the last {len(steady)} samples, "
            f"{1024 * growth / max(outputs, 1):.1f} kB per output record"
        )
    measured = [latency for _, latency in tally.keyed]
    print(
        f"latency over the run: p50 {1000 * percentile(measured, 0.5):.0f} ms, "
        f"p99 {1000 * percentile(measured, 0.99):.0f} ms ({len(measured)} events); after the first minute: p50 "
        f"{1000 * percentile(measured_after(tally, 60), 0.5):.0f} ms, "
        f"p99 {1000 * percentile(measured_after(tally, 60), 0.99):.0f} ms; load average now {os.getloadavg()[0]:.1f}"
    )
    sent = set(tally.sent)
    covered = set(tally.events) | set(tally.dead)
    duplicates = sum(n - 1 for n in tally.events.values()) + sum(n - 1 for n in tally.dead.values())
    invalid = sum(1 for raw in tally.sent.values() if raw.endswith(b"broken"))
    print(
        f"AUDIT soak: inputs={len(sent)} (invalid {invalid}) events={sum(tally.events.values())} "
        f"dead_letters={sum(tally.dead.values())} lost={len(sent - covered)} duplicates={duplicates}"
    )
    return 0 if sent <= covered else 1


def measured_after(tally: Tally, skip_s: float) -> list[float]:
    """Latencies of the events of posts sent more than ``skip_s`` after the first (start-up excluded)."""
    if not tally.sent_at:
        return []
    first = min(tally.sent_at.values())
    late = {post_id for post_id, at in tally.sent_at.items() if at - first > skip_s}
    return [latency for post_id, latency in tally.keyed if post_id in late]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="posts/s produced")
    parser.add_argument("--llm", default="fake:5")
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument("--drain-s", type=float, default=120.0, help="how long to wait for the last outputs")
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args())))
