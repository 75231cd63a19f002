"""Fan-out of dashboard messages to any number of SSE clients without letting a slow one hold anyone back.

* Each message is serialised once and gets the next id; the last ``replay`` messages stay in a ring buffer.
* Each client has a bounded queue. Publishing never waits: a client whose queue is full is dropped (its
  stream ends). The browser's EventSource reconnects after the ``retry`` delay and sends ``Last-Event-ID``;
  the client then gets exactly the messages after that id from the ring buffer, so nothing is shown twice.
  When the id is no longer in the buffer (or absent), the client starts from a fresh snapshot instead.
* Publishing costs O(clients) ``put_nowait`` calls and nothing else, so the indexer that publishes is not
  slowed by the number of viewers (bench/viewers.py measures it).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Message:
    """One SSE message: ``id`` orders them, ``event`` is the type the page listens for, ``data`` is JSON."""

    id: int
    event: str
    data: str

    def as_sse(self) -> dict[str, str]:
        return {"id": str(self.id), "event": self.event, "data": self.data}


@dataclass(eq=False)  # clients are kept in a set: identity, not value, equality
class Client:
    queue: asyncio.Queue[Message | None]
    dropped: bool = False


@dataclass
class BroadcastStats:
    clients: int = 0
    connects: int = 0
    dropped: int = 0
    resumed: int = 0
    published: int = 0
    last_id: int = 0
    by_event: dict[str, int] = field(default_factory=dict)


class Broadcaster:
    """Publishes messages to every connected client; see the module docstring for the guarantees."""

    def __init__(self, *, queue_size: int = 256, replay: int = 2048) -> None:
        self.queue_size = queue_size
        self._replay: deque[Message] = deque(maxlen=replay)
        self._clients: set[Client] = set()
        self._next_id = 1
        self.stats = BroadcastStats()

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    def publish(self, event: str, payload: Any) -> Message:
        """Serialise ``payload`` once and queue it for every client; never blocks."""
        message = Message(self._next_id, event, json.dumps(payload, separators=(",", ":"), default=str))
        self._next_id += 1
        self._replay.append(message)
        for client in list(self._clients):
            if client.dropped:
                continue
            try:
                client.queue.put_nowait(message)
            except asyncio.QueueFull:
                self._drop(client)
        self.stats.published += 1
        self.stats.last_id = message.id
        self.stats.by_event[event] = self.stats.by_event.get(event, 0) + 1
        return message

    def close(self) -> None:
        """End every stream (server shutdown); clients reconnect to whatever serves next."""
        for client in list(self._clients):
            if not client.dropped:
                client.dropped = True
                while not client.queue.empty():
                    client.queue.get_nowait()
                client.queue.put_nowait(None)

    def _drop(self, client: Client) -> None:
        """The client is too slow: end its stream (a sentinel after emptying its queue); it reconnects."""
        client.dropped = True
        self.stats.dropped += 1
        while not client.queue.empty():
            client.queue.get_nowait()
        client.queue.put_nowait(None)

    def since(self, last_id: int) -> list[Message] | None:
        """The buffered messages after ``last_id``; None when some of them already left the buffer."""
        if last_id >= self.last_id:
            return []
        if not self._replay or self._replay[0].id > last_id + 1:
            return None
        return [message for message in self._replay if message.id > last_id]

    async def stream(
        self, last_event_id: str | None, snapshot: Callable[[], Any], *, retry_ms: int = 2000
    ) -> AsyncIterator[dict[str, Any]]:
        """One client's SSE messages: a resume (messages after ``last_event_id``) or a snapshot, then live ones."""
        client = Client(asyncio.Queue(maxsize=self.queue_size))
        # Register before reading the buffer: no message can fall between the backlog and the live queue.
        self._clients.add(client)
        self.stats.connects += 1
        self.stats.clients = len(self._clients)
        try:
            backlog = self.since(int(last_event_id)) if last_event_id and last_event_id.isdigit() else None
            if backlog is None:
                start = self.last_id
                yield {"id": str(start), "event": "snapshot", "data": json.dumps(snapshot(), default=str),
                       "retry": retry_ms}  # fmt: skip
                backlog = []
            else:
                self.stats.resumed += 1
                start = int(last_event_id or 0)
                yield {"comment": f"resumed after {start}", "retry": retry_ms}
            for message in backlog:
                yield message.as_sse()
                start = message.id
            while True:
                message = await client.queue.get()
                if message is None:
                    return  # dropped: the browser reconnects with Last-Event-ID
                if message.id > start:  # skip what the backlog already sent
                    yield message.as_sse()
        finally:
            self._clients.discard(client)
            self.stats.clients = len(self._clients)
