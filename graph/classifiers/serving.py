"""Students in the stream: ``MIKO_CLASSIFIERS=sarcasm:DIR`` scores every event, batched across posts in flight.

A :class:`BatchedClassifier` collects the score requests that arrive in the same event-loop turn (the posts of
a micro-batch step arrive together, and so do those of other batches running at the same time) and scores
them in one forward pass in a worker thread, so the event loop keeps serving Kafka meanwhile. Requests that
arrive while a pass runs form the next one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from graph.classifiers.inputs import LabelledPost

if TYPE_CHECKING:
    from graph.classifiers.model import SarcasmStudent

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class ClassifierSpecError(ValueError):
    """An unusable ``MIKO_CLASSIFIERS`` value; the message shows the expected shape."""


class PostClassifier(Protocol):
    """What the graph's ``classify`` node needs: one score per post, awaited."""

    async def score(self, post: LabelledPost) -> float: ...


def parse_classifier_specs(spec: str) -> dict[str, Path]:
    """``"sarcasm:/models/sarcasm,irony:/models/irony"`` -> ``{"sarcasm": Path(...), "irony": Path(...)}``."""
    specs: dict[str, Path] = {}
    for part in (piece.strip() for piece in spec.split(",")):
        if not part:
            continue
        name, sep, folder = part.partition(":")
        if not sep or not _NAME.match(name) or not folder:
            raise ClassifierSpecError(f"classifier {part!r}: expected name:FOLDER, e.g. sarcasm:/models/sarcasm")
        if name in specs:
            raise ClassifierSpecError(f"classifier {name!r} is given twice")
        specs[name] = Path(folder).expanduser()
    return specs


@dataclass
class BatchedClassifier:
    """A saved student shared by all concurrent posts; scores the requests of one loop turn together."""

    student: SarcasmStudent
    max_batch: int = 64
    passes: int = 0
    scored: int = 0
    _queue: list[tuple[LabelledPost, asyncio.Future[float]]] = field(default_factory=list)
    _worker: asyncio.Task[None] | None = None

    async def score(self, post: LabelledPost) -> float:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._queue.append((post, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let every post of this step (and of other batches) queue its request first
        while self._queue:
            chunk, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                scores = await asyncio.to_thread(self._score, [post for post, _ in chunk])
            except Exception as error:  # every waiting post gets the error, and its node may retry
                for _, future in chunk:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), value in zip(chunk, scores, strict=True):
                if not future.done():
                    future.set_result(value)

    def _score(self, posts: Sequence[LabelledPost]) -> list[float]:
        self.passes += 1
        self.scored += len(posts)
        return self.student.score(posts, batch_size=self.max_batch)


def load_classifiers(spec: str) -> dict[str, BatchedClassifier]:
    """The students named in ``spec``, loaded once per process; raises ClassifierSpecError or StudentError."""
    from graph.classifiers.model import SarcasmStudent

    return {
        name: BatchedClassifier(SarcasmStudent.load(folder)) for name, folder in parse_classifier_specs(spec).items()
    }
