"""The stream processor against the real embedded broker, with scripted processors in place of the graph.

The real graph through the real CLI is exercised by test_stream_crash.py and test_produce_tail.py.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from helpers.kafka import (
    BROKER_START_S,
    Outputs,
    collect,
    committed_offsets,
    create_topics,
    outputs_of,
    post_line,
    produce,
    unique_config,
)
from helpers.stream import ScriptedProcessor, running, stream_for
from helpers.wait import wait_until

from graph.contracts import DeadLetterStage
from graph.intake import InputLimits
from miko_stream.broker import EmbeddedBroker, free_port


async def test_events_dead_letters_and_tombstones(kafka_broker: EmbeddedBroker) -> None:
    bootstrap = kafka_broker.bootstrap
    config = unique_config(bootstrap)
    await create_topics(config)
    huge = b'{"id": "huge", "text": "' + b"x" * 100_000 + b'"}'
    poison: list[tuple[bytes | None, bytes | None]] = [
        (b"bad-json", b'{"id": "bad-json", "text": '),
        (None, b'{"text": "no id"}'),
        (None, b"[1, 2, 3]"),
        (b"long", json.dumps({"id": "long", "text": "y" * 2_000}).encode()),
        (b"huge", huge),
        (b"boom", post_line("boom")),
    ]
    valid = [(f"p{i}".encode(), post_line(f"p{i}")) for i in range(30)]
    tombstone = (b"p3", None)
    # Poison first: later posts must still flow.
    partitions = await produce(bootstrap, config.posts_topic, [*poison, *valid, tombstone])
    processor = ScriptedProcessor(fail={"boom"})
    limits = InputLimits(max_record_bytes=50_000, max_text_chars=1_000)
    stream = stream_for(config, processor, limits, max_request_bytes=64 * 1024)
    expected = len(valid) + len(poison) + 1
    async with running(stream):
        records = await collect(bootstrap, outputs_of(config), lambda r: len(r) >= expected)
    stats = stream.stats
    outputs = Outputs.read(records, config)

    assert outputs.events == Counter({f"p{i}": 1 for i in range(30)})
    assert outputs.tombstones == [b"p3"]
    letters = {letter.original()[:40]: letter for letter in outputs.dead_letters}
    assert (
        {prefix: (letter.stage, letter.post_id) for prefix, letter in letters.items()}
        == {
            b'{"id": "bad-json", "text": ': (DeadLetterStage.DECODE, None),
            b'{"text": "no id"}': (DeadLetterStage.VALIDATE, None),
            b"[1, 2, 3]": (DeadLetterStage.VALIDATE, None),
            poison[3][1][:40]: (DeadLetterStage.LIMITS, "long"),  # type: ignore[index]
            huge[:40]: (DeadLetterStage.LIMITS, None),
            post_line("boom")[:40]: (DeadLetterStage.GRAPH, "boom"),
        }
    )
    boom = letters[post_line("boom")[:40]]
    assert (boom.attempts, boom.error_class, boom.partition is not None) == (3, "GraphGaveUp", True)
    cut = letters[huge[:40]]
    assert huge.startswith(cut.original()) and len(cut.original()) < len(huge)
    assert "cut to" in cut.error_message, "an original too big for the dead-letter topic is cut, and says so"
    event = next(item for item in outputs.event_records if item.post_id == "p0")
    assert event.source is not None and event.source.topic == config.posts_topic
    assert (stats.processed, stats.dead_lettered, stats.tombstones) == (30, 6, 1)

    per_partition = Counter(partitions)
    committed = await committed_offsets(bootstrap, config)
    assert committed == {p: per_partition[p] or None for p in range(config.topic_partitions)}


async def test_backpressure_bounds_in_flight_and_keeps_the_group_membership(
    kafka_broker: EmbeddedBroker,
) -> None:
    """Posts slower than max.poll.interval.ms: polling goes on while paused: no rebalance (aiokafka #848)."""
    bootstrap = kafka_broker.bootstrap
    config = unique_config(bootstrap, topic_partitions=1)
    await create_topics(config)
    await produce(bootstrap, config.posts_topic, [(None, post_line(f"s{i}")) for i in range(8)])
    processor = ScriptedProcessor(delay_s=1.2)
    processor.gate = asyncio.Event()  # held until the stream has paused with four posts in flight
    stream = stream_for(config, processor, max_in_flight=4, low_water=1, max_poll_interval_ms=800)
    async with running(stream):
        await wait_until(lambda: stream.stats.paused and processor.active == 4, what="a pause at four in flight")
        processor.gate.set()
        await wait_until(lambda: stream.stats.processed >= 8, what="all eight posts")
    assert processor.peak == 4, "bounded in-flight, and the bound is used"
    assert stream.stats.rebalances == 0, "the group kept this consumer although each post outlived the poll interval"
    assert processor.calls == Counter({f"s{i}": 1 for i in range(8)})
    assert await committed_offsets(bootstrap, config) == {0: 8}


async def test_graceful_stop_drains_in_flight_posts_and_commits(kafka_broker: EmbeddedBroker) -> None:
    bootstrap = kafka_broker.bootstrap
    config = unique_config(bootstrap)
    await create_topics(config)
    await produce(bootstrap, config.posts_topic, [(f"g{i}".encode(), post_line(f"g{i}")) for i in range(12)])
    processor = ScriptedProcessor()
    processor.gate = asyncio.Event()
    stream = stream_for(config, processor)
    task = asyncio.create_task(stream.run())
    await wait_until(lambda: processor.active == 12, what="all twelve posts in flight")
    stream.request_stop()  # all twelve are in flight, none finished
    processor.gate.set()
    stats = await asyncio.wait_for(task, 120)
    assert stats.processed == 12
    outputs = Outputs.read(await collect(bootstrap, outputs_of(config), lambda r: len(r) >= 12), config)
    assert outputs.events == Counter({f"g{i}": 1 for i in range(12)})
    committed = await committed_offsets(bootstrap, config)
    assert sum(offset or 0 for offset in committed.values()) == 12, "everything was committed: a restart redoes nothing"


async def test_drain_timeout_leaves_unfinished_posts_for_the_next_run(kafka_broker: EmbeddedBroker) -> None:
    bootstrap = kafka_broker.bootstrap
    config = unique_config(bootstrap, topic_partitions=1)
    await create_topics(config)
    await produce(bootstrap, config.posts_topic, [(None, post_line(f"d{i}")) for i in range(6)])
    stuck = ScriptedProcessor(hang={"d2"})
    stream = stream_for(config, stuck, drain_timeout_s=0.5)
    async with running(stream):
        await wait_until(lambda: stream.stats.processed >= 5, what="every post but the hanging one")
    assert await committed_offsets(bootstrap, config) == {0: 2}, "never past the post that did not finish"

    healthy = ScriptedProcessor()
    async with running(stream_for(config, healthy)):
        records = await collect(bootstrap, outputs_of(config), lambda r: len({x.key for x in r}) >= 6)
    outputs = Outputs.read(records, config)
    assert set(outputs.events) == {f"d{i}" for i in range(6)}
    assert healthy.calls == Counter({"d2": 1, "d3": 1, "d4": 1, "d5": 1}), "redone from the committed offset"


async def test_waits_for_a_broker_that_is_not_up_yet(tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    config = unique_config(f"127.0.0.1:{port}")
    stream = stream_for(config, ScriptedProcessor())
    async with running(stream) as task:
        await asyncio.sleep(1.5)  # the fault: no broker for a while (nothing is asserted about this time)
        with EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log", start_timeout=BROKER_START_S) as broker:
            await produce(broker.bootstrap, config.posts_topic, [(b"late", post_line("late"))])
            records = await collect(broker.bootstrap, outputs_of(config), lambda r: len(r) >= 1)
            stream.request_stop()
            await asyncio.wait_for(asyncio.shield(task), 120)  # stopped while the broker is still there
    assert Outputs.read(records, config).events == Counter({"late": 1})


async def test_partitions_move_between_two_processors(kafka_broker: EmbeddedBroker) -> None:
    bootstrap = kafka_broker.bootstrap
    config = unique_config(bootstrap)
    await create_topics(config)
    ids = [f"r{i}" for i in range(60)]
    first, second = ScriptedProcessor(delay_s=0.02), ScriptedProcessor(delay_s=0.02)
    stream_a = stream_for(config, first, max_in_flight=4)
    stream_b = stream_for(config, second, max_in_flight=4)
    async with running(stream_a):
        await produce(bootstrap, config.posts_topic, [(key.encode(), post_line(key)) for key in ids[:30]])
        await wait_until(lambda: stream_a.stats.processed >= 5, what="the first member to work")
        async with running(stream_b):
            await wait_until(lambda: bool(stream_b.assignment()) and bool(stream_a.assignment()), what="rebalance")
            assert not stream_a.assignment() & stream_b.assignment()
            await produce(bootstrap, config.posts_topic, [(key.encode(), post_line(key)) for key in ids[30:]])
            records = await collect(bootstrap, outputs_of(config), lambda r: len({x.key for x in r}) >= len(ids))
            await wait_until(lambda: stream_a.stats.in_flight == 0, what="the first member to finish")
    outputs = Outputs.read(records, config)
    assert set(outputs.events) == set(ids)
    assert stream_a.stats.rebalances >= 1 and stream_b.stats.received > 0, "the second member got work"
    committed = await committed_offsets(bootstrap, config)
    assert sum(offset or 0 for offset in committed.values()) == len(ids), "both committed what they did"


async def test_a_keyless_tombstone_is_dead_lettered() -> None:
    """aiokafka cannot send a record with neither key nor value, but other clients can."""
    from aiokafka.structs import ConsumerRecord

    config = unique_config("127.0.0.1:1")
    stream = stream_for(config, ScriptedProcessor())
    record = ConsumerRecord(config.posts_topic, 0, 7, 0, 0, None, None, None, 0, 0, ())
    output = await stream._output_for(record)
    assert (output.topic, output.key) == (config.dlq_topic, None)
    assert output.value is not None and b'"stage":"validate"' in output.value


async def test_outputs_keep_the_per_key_order_of_the_input(kafka_broker: EmbeddedBroker) -> None:
    """The tombstone needs no graph and would be sent first; it must wait for the slow event of its post."""
    bootstrap = kafka_broker.bootstrap
    config = unique_config(bootstrap, topic_partitions=1)
    await create_topics(config)
    await produce(bootstrap, config.posts_topic, [(b"k", post_line("k")), (b"k", None), (b"other", None)])
    async with running(stream_for(config, ScriptedProcessor(delay_s=0.5))):
        records = await collect(bootstrap, [config.intentions_topic], lambda r: len(r) >= 3)
    assert [(record.key, record.value is None) for record in records] == [
        (b"other", True), (b"k", False), (b"k", True),
    ]  # fmt: skip


async def test_survives_a_broker_outage(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The broker goes away and comes back (empty: Tansu keeps topics in memory); the processor carries on."""
    port = free_port()
    config = unique_config(f"127.0.0.1:{port}")
    stream = stream_for(config, ScriptedProcessor())
    with EmbeddedBroker(port=port, log_path=tmp_path / "before.log", start_timeout=BROKER_START_S) as broker:
        await create_topics(config)
        task = asyncio.create_task(stream.run())
        await produce(broker.bootstrap, config.posts_topic, [(b"before", post_line("before"))])
        await collect(broker.bootstrap, [config.intentions_topic], lambda r: len(r) >= 1)
    await asyncio.sleep(3)  # the outage; that the processor lived through it shows below, not by a clock
    with EmbeddedBroker(port=port, log_path=tmp_path / "after.log", start_timeout=BROKER_START_S) as broker:
        await create_topics(config)
        await produce(broker.bootstrap, config.posts_topic, [(b"after", post_line("after"))])
        records = await collect(broker.bootstrap, [config.intentions_topic], lambda r: len(r) >= 1)
        stream.request_stop()
        await asyncio.wait_for(task, 120)
    assert [record.key for record in records] == [b"after"]
