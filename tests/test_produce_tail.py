"""`produce`, `tail`, `broker` and the whole path produce -> run -> tail through the real CLI and broker."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from helpers.kafka import collect, produce, running, start_processor, stop, unique_config

from graph.contracts import DeadLetter, IntentionEvent
from miko_stream.broker import EmbeddedBroker, free_port, wait_for_port
from miko_stream.commands.stream import parse_rate

LINES = [
    b'{"id": "a1", "text": "first post # monday emoji_1"}',
    b'{"id": 42, "text": "numeric id"}',
    b'{"id": "a3", "text": "crlf line"}\r',
    b"   ",
    b'{"text": "no id"}',
    b'{"id": "a5", "text": "unterminated',
    b'{"id": "a6", "text": "caf\xc3\xa9 \xf0\x9f\x98\x80 bytes kept as they are"}',
]


def write_lines(path: Path) -> Path:
    path.write_bytes(b"\n".join(LINES) + b"\n")
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line in a process of its own (its logging setup must not leak into this one)."""
    return subprocess.run([sys.executable, "-m", "miko_stream", *args], capture_output=True, text=True, timeout=120)


def invoke(*args: str) -> str:
    result = cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize(("text", "expected"), [("50", 50.0), ("50/s", 50.0), ("2.5/s", 2.5), (" 7 /s ", 7.0)])
def test_parse_rate(text: str, expected: float) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-3/s", "fast", "5/min"])
def test_parse_rate_refuses_nonsense(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_rate(text)


def test_produce_sends_each_line_unchanged_keyed_by_id(kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    config = unique_config(kafka_broker.bootstrap)
    source = write_lines(tmp_path / "posts.jsonl")
    invoke(
        "produce",
        str(source),
        "--bootstrap",
        config.bootstrap,
        "--topic",
        config.posts_topic,
        "--rate",
        "500/s",
    )
    records = asyncio.run(collect(config.bootstrap, [config.posts_topic], lambda r: len(r) >= 6))
    by_value = {record.value: record.key for record in records}
    expected = {
        line.rstrip(b"\r"): key for line, key in zip(LINES, [b"a1", b"42", b"a3", None, None, None, b"a6"], strict=True)
    }
    del expected[b"   "]  # blank lines are not records
    assert by_value == expected


def test_produce_reports_a_missing_file(tmp_path: Path) -> None:
    result = cli("produce", str(tmp_path / "nope.jsonl"))
    assert result.returncode == 2 and "not found" in result.stderr


def test_tail_prints_values_and_tombstones(kafka_broker: EmbeddedBroker) -> None:
    config = unique_config(kafka_broker.bootstrap)
    asyncio.run(produce(config.bootstrap, config.intentions_topic, [(b"k1", b'{"post_id": "k1"}'), (b"k2", None)]))
    out = invoke(
        "tail",
        "--bootstrap",
        config.bootstrap,
        "--topic",
        config.intentions_topic,
        "--from-beginning",
        "--max",
        "2",
    )
    lines = out.splitlines()
    assert lines[0] == '{"post_id": "k1"}'
    assert json.loads(lines[1]) | {"partition": 0, "offset": 0} == {
        "tombstone": True, "key": "k2", "partition": 0, "offset": 0,
    }  # fmt: skip


def test_tail_stops_after_an_idle_timeout(kafka_broker: EmbeddedBroker) -> None:
    config = unique_config(kafka_broker.bootstrap)
    out = invoke("tail", "--bootstrap", config.bootstrap, "--topic", config.intentions_topic, "--idle-timeout", "1")
    assert out == ""


def test_broker_command_serves_kafka_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "miko_stream", "broker", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert wait_for_port("127.0.0.1", port, timeout=120), "the broker listens"
        topic = "broker-cmd"
        asyncio.run(produce(f"127.0.0.1:{port}", topic, [(b"k", b"v")]))
        records = asyncio.run(collect(f"127.0.0.1:{port}", [topic], lambda r: len(r) >= 1))
        assert records[0].value == b"v"
    finally:
        code = stop(process, signal.SIGTERM)
    assert code == 0
    assert process.stdout is not None and b"broker stopped" in process.stdout.read()


def test_end_to_end_produce_run_tail(kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    """The CLI all the way: produce a file, run the processor (fake model), read the outputs with tail."""
    config = unique_config(kafka_broker.bootstrap)
    source = write_lines(tmp_path / "posts.jsonl")
    invoke("produce", str(source), "--bootstrap", config.bootstrap, "--topic", config.posts_topic)
    asyncio.run(produce(config.bootstrap, config.posts_topic, [(b"a1", None)]))  # and delete a1 again
    process = start_processor(config, tmp_path / "processor.log")
    tail = ["tail", "--bootstrap", config.bootstrap, "--from-beginning", "--idle-timeout", "1", "--topic"]
    try:
        deadline = time.monotonic() + 120
        while True:
            intentions = invoke(*tail, config.intentions_topic).splitlines()
            dead = invoke(*tail, config.dlq_topic).splitlines()
            if len(intentions) >= 5 and len(dead) >= 2:
                break
            assert running(process)(), (tmp_path / "processor.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (intentions, dead)
    finally:
        assert stop(process, signal.SIGTERM) == 0
    events = [IntentionEvent.model_validate_json(line) for line in intentions if '"tombstone"' not in line]
    assert sorted(event.post_id for event in events) == ["42", "a1", "a3", "a6"]
    assert all(event.models.llm == "fake:20" and event.intentions for event in events)
    assert "café" in next(event.text for event in events if event.post_id == "a6"), "UTF-8 arrived intact"
    a1 = [line for line in intentions if '"a1"' in line]
    assert len(a1) == 2 and json.loads(a1[1])["tombstone"], "the tombstone follows a1's event, like on posts"
    letters = [DeadLetter.model_validate_json(line) for line in dead]
    assert sorted(letter.stage for letter in letters) == ["decode", "validate"]
