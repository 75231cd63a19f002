"""Offline batch: a JSONL file of posts through the pipeline, many posts in flight, events and dead letters to files."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

from graph.contracts import DeadLetter, SourceRef
from graph.intake import InputLimits, read_jsonl_records
from graph.outcome import PostProcessor, Processed, process_record

log = structlog.get_logger(__name__)


@dataclass
class BatchReport:
    records: int = 0
    events: int = 0
    dead_letters: int = 0
    partial: int = 0
    elapsed_s: float = 0.0

    @property
    def posts_per_s(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s else 0.0


class BatchRunner:
    """Feeds records to the pipeline with bounded concurrency and writes each outcome as soon as it is known."""

    def __init__(self, pipeline: PostProcessor, limits: InputLimits, concurrency: int = 64) -> None:
        self.pipeline = pipeline
        self.limits = limits
        self.concurrency = max(1, concurrency)

    async def run(
        self,
        source: Path,
        out: IO[str],
        dlq: IO[str],
        limit: int | None = None,
        on_done: Callable[[], None] = lambda: None,
    ) -> BatchReport:
        report = BatchReport()
        started = time.perf_counter()
        slots = asyncio.Semaphore(self.concurrency)

        async def one(number: int, raw: bytes) -> None:
            try:
                is_event, line = await self._process(source.name, number, raw, report)
                (out if is_event else dlq).write(line + "\n")
            finally:
                slots.release()
                on_done()

        async with asyncio.TaskGroup() as tasks:
            for number, raw in read_jsonl_records(source, limit):
                await slots.acquire()
                report.records += 1
                tasks.create_task(one(number, raw))
        report.elapsed_s = time.perf_counter() - started
        return report

    async def _process(self, topic: str, number: int, raw: bytes, report: BatchReport) -> tuple[bool, str]:
        """(True, event JSON) or (False, dead-letter JSON); never raises (one bad line never ends the batch)."""
        where = {"topic": topic, "partition": 0, "offset": number}
        outcome = await process_record(raw, self.limits, self.pipeline, SourceRef(**where))
        if isinstance(outcome, Processed):
            report.events += 1
            report.partial += outcome.event.status == "partial"
            return True, outcome.value.decode()
        return False, self._dead(report, outcome.dead_letter(raw, **where))

    @staticmethod
    def _dead(report: BatchReport, letter: DeadLetter) -> str:
        report.dead_letters += 1
        log.warning("dead_letter", post_id=letter.post_id, stage=letter.stage, error=letter.error_message[:200])
        return letter.model_dump_json()
