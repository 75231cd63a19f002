"""Fault injection against the real embedded broker: outages with and without the broker's data, orphans.

Each test ends with an audit line (inputs = events + dead letters, nothing lost, duplicates counted), printed
for the record (``pytest -s``). The outage length is ``MIKO_TEST_OUTAGE_S`` (default 8 s; the issue's 20 s is
``MIKO_TEST_OUTAGE_S=20``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi.testclient import TestClient
from helpers.http import FAULTS, ChatServer, serve_chat
from helpers.kafka import Outputs, collect, create_topics, outputs_of, post_line, produce, unique_config
from helpers.stream import ScriptedProcessor, running, stream_for
from helpers.wait import wait_for_port_free, wait_until
from prometheus_client import REGISTRY

from consumers.indexer import Indexer, IndexerConfig
from consumers.kafka_config import KafkaConfig
from consumers.stream import StreamOptions, StreamProcessor
from consumers.topics import ensure_topics
from index.embeddings import HashingEmbedder
from index.service import IndexSettings, IntentionIndex
from miko_stream.api import create_app
from miko_stream.broker import EmbeddedBroker, free_port, wait_for_port
from miko_stream.settings import Settings
from miko_stream.wiring import build_pipeline

OUTAGE_S = float(os.environ.get("MIKO_TEST_OUTAGE_S", "8"))


def audit(name: str, inputs: set[str], outputs: Outputs) -> str:
    """The one line each fault test ends with; asserts nothing was lost."""
    dead_ids = {letter.post_id for letter in outputs.dead_letters if letter.post_id}
    covered = set(outputs.events) | dead_ids
    duplicates = sum(n - 1 for n in outputs.events.values()) + len(outputs.dead_letters) - len(dead_ids)
    line = (
        f"AUDIT {name}: inputs={len(inputs)} events={sum(outputs.events.values())} "
        f"(distinct {len(outputs.events)}) dead_letters={len(outputs.dead_letters)} "
        f"lost={len(inputs - covered)} duplicates={duplicates}"
    )
    print(line)
    assert inputs <= covered, f"{line}: lost {sorted(inputs - covered)[:10]}"
    return line


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie is dead, just not reaped by its (init) parent yet


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
async def test_broker_cli_killed_with_sigkill_leaves_no_orphan(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "miko_stream", "broker", "--port", str(port)]
    with (tmp_path / "broker.log").open("ab") as log:
        cli = subprocess.Popen(command, stdout=log, stderr=log)
    tansu = None
    try:
        assert await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 120.0), "the broker did not start"
        (tansu,) = _children(cli.pid)
        cli.send_signal(signal.SIGKILL)
        cli.wait(timeout=60)
        await wait_until(lambda: not _alive(tansu), timeout_s=180, what="Tansu to die with its parent")
        await asyncio.to_thread(wait_for_port_free, port)
    finally:
        if cli.poll() is None:
            cli.kill()
        if tansu is not None and _alive(tansu):  # the test failed: do not leave the orphan behind
            os.kill(tansu, signal.SIGKILL)
    print(f"AUDIT broker-cli-sigkill: cli pid {cli.pid} killed, Tansu pid {tansu} gone, port {port} free")


# ------------------------------------------------------------------------------------------- outages


def _posts(prefix: str, count: int) -> list[tuple[bytes, bytes]]:
    return [(f"{prefix}{i}".encode(), post_line(f"{prefix}{i}")) for i in range(count)]


async def _outputs_for(config: KafkaConfig, ids: set[str], timeout_s: float) -> Outputs:
    def complete(records: list) -> bool:  # type: ignore[type-arg]
        outputs = Outputs.read(records, config)
        return ids <= set(outputs.events) | {d.post_id for d in outputs.dead_letters}

    records = await collect(config.bootstrap, outputs_of(config), complete, timeout_s=timeout_s)
    return Outputs.read(records, config)


async def commit_offsets(config: KafkaConfig, positions: dict[int, int]) -> None:
    """Commit ``positions`` of the posts topic for the processor's group, from outside the group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=config.bootstrap, group_id=config.group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        offsets = {TopicPartition(config.posts_topic, p): o for p, o in positions.items()}
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def indexing(config: KafkaConfig, root: Path, **options: Any) -> AsyncIterator[tuple[IntentionIndex, Indexer]]:
    """The indexer of `serve` (without its HTTP API) running on ``config``'s topic until the block ends."""
    index = IntentionIndex.open(IndexSettings(root / "index"), HashingEmbedder(64), writer=True)
    indexer = Indexer(index, config, IndexerConfig(snapshot_interval_s=1.0, **options))
    stop = asyncio.Event()
    task = asyncio.create_task(indexer.run(stop))
    try:
        yield index, indexer
    finally:
        stop.set()
        await asyncio.wait_for(task, 120)
        index.close()


def _indexed(index: IntentionIndex, ids: set[str]) -> bool:
    return all(index.document(post_id) is not None for post_id in ids)


async def test_broker_frozen_mid_stream_with_data_kept(fresh_broker: EmbeddedBroker, tmp_path: Path) -> None:
    """SIGSTOP the broker (connections hang, nothing is lost on its side) for the outage, then SIGCONT."""
    config = unique_config(fresh_broker.bootstrap)
    await create_topics(config)
    first, second = _posts("a", 40), _posts("b", 40)
    await produce(config.bootstrap, config.posts_topic, first)
    processor = ScriptedProcessor(delay_s=0.02)
    stream = stream_for(config, processor, max_in_flight=8)
    async with indexing(config, tmp_path, poll_timeout_ms=100) as (index, indexer), running(stream):
        await wait_until(lambda: processor.calls.total() >= 10, timeout_s=180, what="processing to start")
        process = fresh_broker._process
        assert process is not None
        process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(OUTAGE_S)  # the fault itself lasts this long; nothing is asserted after it
        finally:
            process.send_signal(signal.SIGCONT)
        await produce(config.bootstrap, config.posts_topic, second)
        inputs = {key.decode() for key, _ in first + second}
        outputs = await _outputs_for(config, inputs, timeout_s=120)
        await wait_until(lambda: _indexed(index, inputs), timeout_s=120, what="the index to catch up")
    audit(f"broker-frozen-{OUTAGE_S:g}s-data-kept", inputs, outputs)
    assert stream.offset_resets == [] and indexer.offset_resets == [], "no data was lost: nothing to reset"


async def test_broker_restarted_without_its_data(fresh_broker: EmbeddedBroker, tmp_path: Path) -> None:
    """The in-memory broker restarts empty; topics come back (the posts topic with one partition more). `run`
    and `serve` must notice their positions are past the new ends, say so, re-position, and go on."""
    config = unique_config(fresh_broker.bootstrap, metadata_max_age_ms=2_000)
    await create_topics(config)
    before, after = _posts("old", 60), _posts("new", 24)
    await produce(config.bootstrap, config.posts_topic, before)
    processor = ScriptedProcessor()
    stream = stream_for(config, processor, position_check_interval_s=1.0)
    async with indexing(config, tmp_path, position_check_interval_s=1.0) as (index, indexer), running(stream):
        old_ids = {key.decode() for key, _ in before}
        await _outputs_for(config, old_ids, timeout_s=180)
        await wait_until(lambda: _indexed(index, old_ids), timeout_s=180, what="the first posts indexed")
        old_positions = {int(name.rsplit(":", 1)[1]): offset for name, offset in stream.stats.committed.items()}
        fresh_broker.stop()
        await asyncio.sleep(OUTAGE_S)  # the outage itself; nothing is asserted after it
        fresh_broker.start()  # same port, empty
        await ensure_topics(config.model_copy(update={"topic_partitions": 4}), [config.posts_topic])
        # What a commit that failed in the outage and was retried after it does: the old positions land in
        # the restarted broker's group, past the new ends (refused if the processor rejoined first).
        with contextlib.suppress(Exception):  # best effort: it races the processor's rejoin
            await commit_offsets(config, old_positions)
        await ensure_topics(config, [config.intentions_topic, config.dlq_topic])
        partitions = await produce(config.bootstrap, config.posts_topic, after)
        assert 3 in partitions, "some new posts are on the added partition"
        inputs = {key.decode() for key, _ in after}
        outputs = await _outputs_for(config, inputs, timeout_s=180)
        await wait_until(lambda: _indexed(index, inputs), timeout_s=120, what="the new posts indexed")
        # Reported within a check interval of the first fetch from the new log (which may come after the
        # posts went through, when a rebalance already restarted the partitions).
        reported = lambda: stream.stats.offset_resets >= 1 and bool(indexer.offset_resets)  # noqa: E731
        await wait_until(reported, timeout_s=180, what="the loss reported by run and serve")
        assigned = {tp.partition for tp in stream.assignment()}
        client = TestClient(create_app(index, indexer=indexer))
        stats = client.get("/stats").json()["indexer"]
        health = client.get("/healthz").json()
        metrics = client.get("/metrics").text
    audit("broker-restarted-data-lost (posts after the loss)", inputs, outputs)
    assert stream.stats.offset_resets >= 1 and stream.offset_resets[0].position > stream.offset_resets[0].end
    assert stats["offset_resets_total"] >= 1 and stats["offset_resets"][0]["topic"] == config.intentions_topic
    assert health["status"] == "ok" and "data loss" in (health.get("detail") or ""), health
    resets = REGISTRY.get_sample_value(
        "miko_kafka_offset_resets_total", {"service": "indexer", "topic": config.intentions_topic}
    )
    assert resets is not None and resets >= 1 and "miko_kafka_offset_resets_total" in metrics
    assert assigned == set(range(4)), "the new partition is read"


# ------------------------------------------------------------------------------------------- model faults


async def test_model_backend_failures_are_retried_then_dead_lettered(kafka_broker: EmbeddedBroker) -> None:
    """An OpenAI-compatible stub that answers 500, hangs past the client's timeout, sends garbage or drops the
    connection for some posts: those end as dead letters (stage graph, naming the node) after retries, a
    flaky one succeeds on retry, and the posts after them in the same partition all flow."""
    config = unique_config(kafka_broker.bootstrap, topic_partitions=1)
    await create_topics(config)
    stub = ChatServer(reply=lambda body: "to share a moment with friends.", offer_logprobs=False)
    normal = [(f"ok{i}".encode(), post_line(f"ok{i}", "a sunny day at the beach with friends")) for i in range(12)]
    faulty = [(f"f-{fault}".encode(), post_line(f"f-{fault}", f"{fault} happens here")) for fault in FAULTS]
    records = [*normal[:4], *faulty, *normal[4:]]  # the faults sit in the middle of one partition
    with serve_chat(stub):
        llm = f"openai:stub@{stub.url}/v1"
        # The timeout is what FAULT_TIMEOUT (a hang) meets; 2 s leaves loaded-machine room for the normal replies.
        settings = Settings(llm=llm, vision="none", verifier="heuristic", llm_request_timeout_s=2.0)
        pipeline = build_pipeline(settings)
        stream = StreamProcessor(pipeline, config, settings.limits(), StreamOptions(commit_interval_s=0.2))
        await produce(config.bootstrap, config.posts_topic, records)
        inputs = {key.decode() for key, _ in records}
        async with running(stream):
            outputs = await _outputs_for(config, inputs, timeout_s=240)
    audit("model-backend-faults", inputs, outputs)
    letters = {letter.post_id: letter for letter in outputs.dead_letters}
    assert {f"ok{i}" for i in range(12)} | {"f-FAULT_FLAKY"} <= set(outputs.events), "retry fixed the flaky one"
    for fault in ("FAULT_500", "FAULT_TIMEOUT", "FAULT_RESET"):
        letter = letters[f"f-{fault}"]
        assert letter.stage == "graph" and " in extract" in letter.error_message, letter  # names the node
        assert stub.seen[fault] > 1 and letter.attempts == 3, f"{fault} was retried"
    assert (letters["f-FAULT_GARBAGE"].attempts, stub.seen["FAULT_GARBAGE"]) == (1, 1), "garbage is not retried"
    print(f"model faults: requests per fault {dict(stub.seen)}; dead letters "
          f"{ {k: (v.stage, v.attempts, v.error_message[:80]) for k, v in letters.items()} }")  # fmt: skip


async def test_model_slower_than_max_poll_interval_causes_no_rebalance(kafka_broker: EmbeddedBroker) -> None:
    """Each post takes 3x max.poll.interval.ms; the processor keeps polling (paused) and stays in its group."""
    config = unique_config(kafka_broker.bootstrap)
    await create_topics(config)
    records = _posts("slow", 6)
    await produce(config.bootstrap, config.posts_topic, records)
    processor = ScriptedProcessor(delay_s=3.0)
    stream = stream_for(config, processor, max_in_flight=2, max_poll_interval_ms=1_000, session_timeout_ms=6_000)
    inputs = {key.decode() for key, _ in records}
    async with running(stream):
        outputs = await _outputs_for(config, inputs, timeout_s=120)
    audit("model-slower-than-max-poll-interval", inputs, outputs)
    assert stream.stats.rebalances == 0, "no member was dropped from the group"
    assert outputs.events == Counter(dict.fromkeys(inputs, 1)), "each post exactly once"
