"""The real `miko-stream run --llm fake:20` as a subprocess: killed with SIGKILL twice while it works, then
restarted, it loses nothing (duplicates are allowed and counted); stopped with SIGTERM, it loses nothing and
duplicates nothing."""

from __future__ import annotations

import json
import random
import signal
from collections import Counter
from pathlib import Path

import pytest
from helpers.kafka import (
    MAX_TEXT_CHARS,
    OutputWatcher,
    create_topics,
    produce,
    running,
    start_processor,
    stop,
    unique_config,
)

from miko_stream.broker import EmbeddedBroker


def make_inputs(
    count: int, invalid_share: float, seed: int
) -> tuple[list[tuple[bytes | None, bytes]], set[str], set[bytes]]:
    """Posts, a share of them bad (bad JSON, schema errors, oversize); keyed the way `produce` keys them."""
    rng = random.Random(seed)
    words = ["coffee", "monday", "rain", "traffic", "airport", "stuck", "delayed", "again", "wonderful"]
    valid: set[str] = set()
    invalid: set[bytes] = set()
    records: list[tuple[bytes | None, bytes]] = []
    for index in range(count):
        post_id = f"crash-{seed}-{index}"
        if rng.random() >= invalid_share:
            text = " ".join(rng.choice(words) for _ in range(8)) + " # blessed emoji_12"
            records.append((post_id.encode(), json.dumps({"id": post_id, "text": text}).encode()))
            valid.add(post_id)
            continue
        kind = index % 3
        if kind == 0:
            raw = f'{{"id": "{post_id}", "text": "unterminated'.encode()
        elif kind == 1:
            raw = json.dumps({"id": [post_id], "text": "an id must be text"}).encode()
        else:
            raw = json.dumps({"id": post_id, "text": "z" * (MAX_TEXT_CHARS + 1)}).encode()
        records.append((None, raw))
        invalid.add(raw)
    return records, valid, invalid


@pytest.mark.timeout(1200)  # bounds a hang; the test takes ~30 s on an idle machine
async def test_sigkill_twice_then_restart_loses_nothing(kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    config = unique_config(kafka_broker.bootstrap)
    await create_topics(config)
    records, valid, invalid = make_inputs(300, invalid_share=0.1, seed=7)
    await produce(kafka_broker.bootstrap, config.posts_topic, records)
    rng = random.Random(11)
    kills = [rng.randint(40, 110), rng.randint(150, 220)]  # inputs done when each SIGKILL lands
    log = tmp_path / "processor.log"
    async with OutputWatcher(kafka_broker.bootstrap, config) as watcher:
        covered = lambda: watcher.covered(valid, invalid)  # noqa: E731
        for target in kills:
            # Four posts at a time: slow enough that the kill lands while work is left (a wide processor can
            # finish all 300 between two polls of the watcher on a loaded machine).
            process = start_processor(config, log, max_in_flight=4)
            await watcher.wait_for(covered, target, timeout_s=300, alive=running(process))
            assert stop(process, signal.SIGKILL) == -signal.SIGKILL
            assert covered() < len(records), "killed while it still had work"
        process = start_processor(config, log)
        await watcher.wait_for(covered, len(records), timeout_s=300, alive=running(process))
        assert stop(process, signal.SIGTERM) == 0, log.read_text()[-3000:]
        outputs = watcher.outputs()

    assert set(outputs.events) == valid, "every valid post has an event"
    assert set(outputs.dead_originals()) == invalid, "every invalid input has a dead letter"
    duplicates = sum(n - 1 for n in outputs.events.values()) + sum(n - 1 for n in outputs.dead_originals().values())
    print(
        f"crash test: {len(records)} inputs ({len(valid)} valid, {len(invalid)} invalid), 2 SIGKILLs + restart: "
        f"{sum(outputs.events.values())} events for {len(outputs.events)} posts, "
        f"{len(outputs.dead_letters)} dead letters for {len(outputs.dead_originals())} inputs, {duplicates} duplicates"
    )
    assert Counter(letter.stage for letter in outputs.dead_letters).keys() <= {"decode", "validate", "limits"}


async def test_sigterm_drains_and_neither_loses_nor_duplicates(kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    config = unique_config(kafka_broker.bootstrap)
    await create_topics(config)
    records, valid, invalid = make_inputs(120, invalid_share=0.0, seed=3)
    await produce(kafka_broker.bootstrap, config.posts_topic, records)
    log = tmp_path / "processor.log"
    async with OutputWatcher(kafka_broker.bootstrap, config) as watcher:
        covered = lambda: watcher.covered(valid, invalid)  # noqa: E731
        process = start_processor(config, log)
        await watcher.wait_for(covered, 30, timeout_s=300, alive=running(process))
        assert stop(process, signal.SIGTERM) == 0, log.read_text()[-3000:]
        assert covered() < len(records), "stopped while it still had work"
        process = start_processor(config, log)
        await watcher.wait_for(covered, len(records), timeout_s=300, alive=running(process))
        assert stop(process, signal.SIGTERM) == 0, log.read_text()[-3000:]
        await watcher.poll()
        outputs = watcher.outputs()
    assert outputs.events == Counter(dict.fromkeys(valid, 1)), "each post exactly once"
    assert outputs.dead_letters == []
