"""CPU per post of the graph alone: MikoPipeline.process for N posts in one process, no Kafka, ``--llm fake``.

What ``miko-stream run`` spends per post minus the Kafka runtime: decoding, the graph (micro-batches of the
posts in flight), the event and its JSON; with run's garbage-collector tuning (``--gc default``: without)
and the fake model's instant judge as verifier (``--verifier``, as in bench/overhead.py). Prints wall
posts/s, CPU ms per post (all threads of this process, so it stays meaningful on a shared machine) and the
load average. Profile it with ``py-spy record -f raw -o out.txt -- python -m bench.graph_cpu``.

Run from the project root:
    python -m bench.graph_cpu --data ../shared/data/mmsd_valid_captioned.jsonl --posts 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from graph.contracts import SourceRef
from graph.intake import InputLimits, decode_post
from miko_stream.gc_tuning import tune_gc_after_startup
from miko_stream.logging import configure_logging
from miko_stream.settings import Settings
from miko_stream.wiring import build_pipeline


def records(path: Path, count: int) -> list[bytes]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = []
    for index in range(count):
        row = dict(rows[index % len(rows)])
        row["id"] = f"{row.get('id', 'post')}-{index}"
        out.append(json.dumps(row).encode())
    return out


async def run(raws: list[bytes], in_flight: int, llm: str, verifier: str, tune_gc: bool) -> None:
    pipeline = build_pipeline(Settings(llm=llm, vision="none", verifier=verifier))
    if tune_gc:
        tune_gc_after_startup()  # as `miko-stream run` does
    gate = asyncio.Semaphore(in_flight)

    async def one(offset: int, raw: bytes) -> None:
        async with gate:
            post = decode_post(raw, InputLimits())
            event = await pipeline.process(post, SourceRef(topic="bench", partition=0, offset=offset))
            event.model_dump_json()

    await one(0, raws[0])  # warm-up
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(offset, raw) for offset, raw in enumerate(raws)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rate, per_cpu = len(raws) / wall, len(raws) / cpu
    gc_label = "tuned" if tune_gc else "default"
    print(f"{len(raws)} posts, {in_flight} in flight, --llm {llm}, verifier {verifier}, gc {gc_label}: "
          f"{rate:.0f} posts/s wall; CPU {1000 * cpu / len(raws):.3f} ms/post = {per_cpu:.0f} posts per CPU-second; "
          f"load {load}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="JSONL posts (e.g. mmsd_valid_captioned.jsonl)")
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--llm", default="fake")
    parser.add_argument(
        "--verifier",
        default=os.environ.get("MIKO_VERIFIER", "llm"),
        help="MIKO_VERIFIER (default llm: the fake model's instant judge, as bench/overhead.py uses).",
    )
    parser.add_argument(
        "--gc", choices=("tuned", "default"), default="tuned",
        help="tuned: freeze start-up objects and space out collections, as `miko-stream run` does.",
    )  # fmt: skip
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    asyncio.run(run(records(args.data, args.posts), args.in_flight, args.llm, args.verifier, args.gc == "tuned"))


if __name__ == "__main__":
    main()
