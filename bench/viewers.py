"""Many dashboard viewers at once: does the indexer slow down, and does every viewer see every message once?

One run, alternating phases (0 viewers, then ``--viewers``, repeated ``--rounds`` times), each on a fresh
intentions topic and a fresh index, against a real ``miko-stream serve`` subprocess and the embedded broker:

1. start ``serve``; connect the viewers to ``/events`` (real HTTP SSE clients, in this process);
2. produce ``--events`` intention events (ten intentions each) to the topic;
3. the indexer's throughput is events / time from its first applied batch to the last, read from ``/stats``.

Some viewers are slow on purpose (``--slow``: they read one message every ``--slow-delay`` seconds): their
queue overflows, ``serve`` drops them, and they reconnect with ``Last-Event-ID`` like a browser does. Every
viewer checks that the ids it saw, across reconnects, run without a gap or a repeat after its first snapshot.

The default embedder is the model-free ``hash:384``: the indexer is then as fast as it gets, so whatever the
viewers cost it shows most. The viewers share the machine's cores with ``serve`` (as they would not in real life).

    python -m bench.viewers --events 4000 --viewers 50 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx
from aiokafka import AIOKafkaProducer

from consumers.kafka_config import KafkaConfig
from consumers.topics import ensure_topics
from miko_stream.broker import EmbeddedBroker, free_port

RELATIONS = ["xWant", "oEffect", "xAttr", "xIntent", "xReact", "oReact", "oWant", "xEffect", "xNeed", "Open"]
WORDS = [
    "sell",
    "followers",
    "marathon",
    "coffee",
    "concert",
    "tickets",
    "cat",
    "tree",
    "election",
    "sunset",
    "dog",
    "phone",
    "flight",
    "paris",
]


def event(n: int) -> tuple[bytes, bytes]:
    post_id = f"bench-{n}"
    words = [WORDS[(n * 7 + i) % len(WORDS)] for i in range(4)]
    value = {
        "post_id": post_id,
        "text": f"post {n} about {' '.join(words)}",
        "intentions": [
            {"relation": r, "text": f"{r} about {words[i % 4]} {n % 50}", "score": 0.5 + (i % 5) / 10,
             "verified": i % 4 != 3}
            for i, r in enumerate(RELATIONS)
        ],
        "models": {"llm": "bench", "vision": "none", "verifier": "bench"},
        "prompt_version": "bench",
        "timings_ms": {"generate": 100.0 + n % 50, "verify": 20.0, "total": 150.0},
        "source": {"topic": "miko.posts", "partition": 0, "offset": n},
    }  # fmt: skip
    return post_id.encode(), json.dumps(value).encode()


@dataclass
class Viewer:
    """An SSE client that checks its ids: consecutive after the snapshot, across reconnects."""

    url: str
    delay_s: float = 0.0
    last_id: int | None = None
    messages: int = 0
    connects: int = 0
    gaps: int = 0
    repeats: int = 0
    snapshots: int = 0
    dropped_seen: bool = False
    errors: list[str] = field(default_factory=list)
    _transport: asyncio.BaseTransport | None = None

    def abort(self) -> None:
        """End a stalled connection at once (the end of a phase)."""
        if self._transport is not None:
            self._transport.abort()

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event, stall_s: float = 0.0) -> None:
        if stall_s:
            await self._stall(stall_s, stop)
        while not stop.is_set():
            headers = {"Last-Event-ID": str(self.last_id)} if self.last_id is not None else {}
            self.connects += 1
            try:
                async with client.stream("GET", self.url, headers=headers, timeout=None) as response:
                    await self._read(response, stop)
            except (httpx.HTTPError, OSError) as error:
                self.errors.append(type(error).__name__)
            if not stop.is_set():
                await asyncio.sleep(0.1)  # the browser waits `retry` ms; short here to stress resumption

    async def _stall(self, stall_s: float, stop: asyncio.Event) -> None:
        """Connect, read nothing for ``stall_s`` (a frozen tab, a phone in a tunnel), then read what arrived.
        A small receive buffer makes the server feel it soon; if it dropped us, ``run`` reconnects as a browser
        does, with the last id seen."""
        host, port = self.url.split("//")[1].split("/")[0].split(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock)
        self._transport = writer.transport
        self.connects += 1
        writer.write(f"GET /events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), stall_s)
        kind = None
        try:
            while True:
                async with asyncio.timeout(2.0):
                    raw = await reader.readline()
                line = raw.decode(errors="replace").rstrip("\r\n")
                if not line and reader.at_eof():
                    self.dropped_seen = True
                    return
                kind, _ = self._line(line, kind)
        except (TimeoutError, ConnectionError):
            return  # still connected (not dropped): carry on with a normal client
        finally:
            writer.close()

    def _line(self, line: str, kind: str | None) -> tuple[str | None, bool]:
        """One SSE line (chunk-size lines of the raw HTTP reader are ignored); True when it carried an id."""
        if line.startswith("event:"):
            return line[6:].strip(), False
        if line.startswith("id:"):
            self._saw(int(line[3:].strip()), kind == "snapshot")
            return kind, True
        return (None if not line else kind), False

    async def _read(self, response: httpx.Response, stop: asyncio.Event) -> None:
        kind = None
        async for line in response.aiter_lines():
            if stop.is_set():
                return
            kind, had_id = self._line(line, kind)
            if had_id and self.delay_s:
                await asyncio.sleep(self.delay_s)

    def _saw(self, message_id: int, snapshot: bool) -> None:
        self.messages += 1
        if snapshot:
            self.snapshots += 1
        elif self.last_id is not None and message_id <= self.last_id:
            self.repeats += 1
        elif self.last_id is not None and message_id != self.last_id + 1:
            self.gaps += 1
        self.last_id = message_id


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    viewers: int
    events: int
    seconds: float
    serve_cpu_s: float
    dropped: int
    loadavg: float
    clients: list[Viewer]

    @property
    def per_s(self) -> float:
        return self.events / self.seconds


async def produce(bootstrap: str, topic: str, events: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def wait_for(url: str, check, timeout_s: float = 120.0) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                response = await client.get(url, timeout=5)
                if response.status_code == 200 and check(body := response.json()):
                    return body
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"{url}: condition not met within {timeout_s}s")


async def run_phase(broker: EmbeddedBroker, args: argparse.Namespace, viewers: int, round_no: int) -> Phase:
    topic = f"bench.viewers.{round_no}.{viewers}.{os.getpid()}"
    kafka = KafkaConfig(bootstrap=broker.bootstrap, intentions_topic=topic)
    await ensure_topics(kafka, [topic, kafka.posts_topic, kafka.dlq_topic])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MIKO_KAFKA_BOOTSTRAP": broker.bootstrap, "MIKO_KAFKA_IDEMPOTENCE": "off"}
    env.pop("MIKO_API_KEY", None)
    with tempfile.TemporaryDirectory(prefix="bench-viewers-") as scratch:
        log = Path(scratch) / "serve.log"
        command = [
            sys.executable, "-m", "miko_stream", "--log-level", "WARNING", "serve", "--port", str(port),
            "--topic", topic, "--index-dir", str(Path(scratch) / "index"), "--embedding-model", args.embedding_model,
            "--snapshot-interval", "3600",
        ]  # fmt: skip
        with log.open("wb") as output:
            serve = subprocess.Popen(command, stdout=output, stderr=output, env=env)
        stop = asyncio.Event()
        limits = httpx.Limits(max_connections=viewers + 10)
        try:
            await wait_for(f"{base}/healthz", lambda body: body["indexer"] == "running")
            clients = [
                Viewer(f"{base}/events", delay_s=args.slow_delay if n < args.slow else 0.0) for n in range(viewers)
            ]
            async with httpx.AsyncClient(limits=limits) as http:
                tasks = [
                    asyncio.create_task(viewer.run(http, stop, args.stall_s if n < args.slow else 0.0))
                    for n, viewer in enumerate(clients)
                ]
                await wait_for(f"{base}/dashboard/state", lambda body: body["viewers"] >= viewers)
                events = [event(n) for n in range(args.events)]
                producing = asyncio.create_task(produce(broker.bootstrap, topic, events))
                first = await wait_for(f"{base}/stats", lambda body: body["indexer"]["records"] > 0)
                started, base_records = time.monotonic(), first["indexer"]["records"]
                cpu_before = cpu_seconds(serve.pid)
                await wait_for(f"{base}/stats", lambda body: body["indexer"]["records"] >= args.events, 600)
                seconds = time.monotonic() - started
                serve_cpu = cpu_seconds(serve.pid) - cpu_before
                await producing
                dropped = await dropped_clients(base)
                stop.set()
                for viewer in clients:
                    viewer.abort()
                for task in tasks:
                    task.cancel()
                if tasks:
                    await asyncio.wait(tasks, timeout=10)
        finally:
            serve.terminate()
            serve.wait(timeout=60)
    load = os.getloadavg()[0]
    return Phase(viewers, args.events - base_records, seconds, serve_cpu, dropped, load, clients)


async def dropped_clients(base: str) -> int:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{base}/metrics", timeout=10)).text
    for line in text.splitlines():
        if line.startswith("miko_dashboard_clients_dropped_total "):
            return int(float(line.split()[1]))
    return 0


def report(phases: list[Phase], args: argparse.Namespace) -> None:
    print(f"bench.viewers: {args.events} events x10 intentions, embedder {args.embedding_model}, "
          f"{args.viewers} viewers ({args.slow} slow: {args.slow_delay}s per message)")  # fmt: skip
    print(f"{'round':>5} {'viewers':>7} {'events':>7} {'seconds':>8} {'events/s':>9} {'serve cpu s':>11} "
          f"{'dropped':>7} {'reconnects':>10} {'msgs/viewer':>11} {'gaps':>4} {'repeats':>7} {'load1':>5}")  # fmt: skip
    for n, phase in enumerate(phases):
        viewers = phase.clients
        reconnects = sum(v.connects - 1 for v in viewers)
        per_viewer = statistics.median([v.messages for v in viewers]) if viewers else 0
        print(
            f"{n // 2 + 1:>5} {phase.viewers:>7} {phase.events:>7} {phase.seconds:>8.2f} {phase.per_s:>9.1f} "
            f"{phase.serve_cpu_s:>11.2f} "
            f"{phase.dropped:>7} {reconnects:>10} {per_viewer:>11.0f} {sum(v.gaps for v in viewers):>4} "
            f"{sum(v.repeats for v in viewers):>7} {phase.loadavg:>5.2f}"
        )
    alone = statistics.median(p.per_s for p in phases if p.viewers == 0)
    watched = statistics.median(p.per_s for p in phases if p.viewers > 0)
    print(f"median indexer throughput: {alone:.1f} events/s with 0 viewers, {watched:.1f} with {args.viewers} "
          f"(ratio {watched / alone:.3f})")  # fmt: skip


def print_tasks() -> None:
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


async def main(args: argparse.Namespace) -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, print_tasks)  # where each task waits
    phases: list[Phase] = []
    with EmbeddedBroker(host="127.0.0.1") as broker:
        for round_no in range(args.rounds):
            for viewers in (0, args.viewers):
                phases.append(await run_phase(broker, args, viewers, round_no))
                print(f"  round {round_no + 1}, {viewers} viewers: {phases[-1].per_s:.1f} events/s", flush=True)
    report(phases, args)


if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints where a run is waiting
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--slow", type=int, default=5, help="How many of the viewers are too slow.")
    parser.add_argument("--slow-delay", type=float, default=0.05, help="Seconds a slow viewer takes per message.")
    parser.add_argument("--stall-s", type=float, default=20.0, help="Slow viewers first read nothing this long.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--embedding-model", default="hash:384")
    asyncio.run(main(parser.parse_args()))
