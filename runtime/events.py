"""The runtime's event log: what happened to containers, stored and streamed live.

Owns: the `Event` record, giving each event a timestamp that is strictly later than the
one before (so "events after T" is exact, as a resuming subscriber needs), keeping the
most recent events in memory and in ``events.jsonl`` in the state directory, and handing
them to subscribers: first the stored ones after a timestamp, then live ones, through a
bounded queue per subscriber.

Must not: block the runtime on a slow subscriber (one that falls too far behind is cut
off with `SubscriberTooSlow` and can resubscribe from its last timestamp), know what a
container is, or speak gRPC.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import AsyncGenerator, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

__all__ = [
    "Event",
    "EventLog",
    "EventType",
    "SubscriberTooSlow",
    "Subscription",
]


class EventType:
    """The event types containerd 0.2 sent, and the two cryo adds."""

    START_CONTAINER = "start-container"
    EXIT = "exit"
    START_PROCESS = "start-process"
    PAUSE = "pause"
    RESUME = "resume"
    OOM = "oom"
    CHECKPOINT = "checkpoint"
    RESTORE = "restore"


@dataclass(frozen=True)
class Event:
    type: str
    id: str
    # Nanoseconds since the epoch; unique and increasing within one log.
    timestamp_ns: int
    pid: str = ""
    status: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Event:
        record = json.loads(line)
        return cls(
            type=str(record["type"]),
            id=str(record["id"]),
            timestamp_ns=int(record["timestamp_ns"]),
            pid=str(record.get("pid", "")),
            status=int(record.get("status", 0)),
        )


class SubscriberTooSlow(Exception):
    """The subscriber's queue overflowed; it missed events and must resubscribe."""


class Subscription:
    """One subscriber's view: the stored events it asked for, then live ones."""

    def __init__(
        self,
        log: EventLog,
        replay: list[Event],
        container_id: str,
        capacity: int,
        follow: bool,
    ) -> None:
        self._log = log
        self._replay = replay
        self._container_id = container_id
        self._follow = follow
        self._send, self._receive = trio.open_memory_channel[Event](capacity)
        self.overflowed = False
        self.closed = False

    def wants(self, event: Event) -> bool:
        return not self._container_id or event.id == self._container_id

    def offer(self, event: Event) -> None:
        """Queue a live event without waiting; a full queue cuts the subscriber off."""
        if self.closed or not self.wants(event):
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.overflowed = True
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._send.close()
            self._log._unsubscribe(self)

    async def events(self) -> AsyncGenerator[Event, None]:
        """Yield the replay, then live events until closed.

        Raises `SubscriberTooSlow` if live events arrived faster than they were taken.
        """
        try:
            for event in self._replay:
                await trio.lowlevel.checkpoint()
                yield event
            if not self._follow:
                return
            async for event in self._receive:
                yield event
            if self.overflowed:
                raise SubscriberTooSlow(
                    "the event stream fell behind and was cut off; subscribe again "
                    "from the timestamp of the last event received"
                )
        finally:
            self.close()


class EventLog:
    """Stored and live events; one instance per runtime."""

    def __init__(self, path: Path, *, keep: int = 10_000, subscriber_capacity: int = 1024) -> None:
        self._path = path
        self._keep = keep
        self._subscriber_capacity = subscriber_capacity
        self._stored: deque[Event] = deque(maxlen=keep)
        self._subscribers: set[Subscription] = set()
        self._last_ns = 0
        self._fd = -1
        self._lines_in_file = 0

    def open(self) -> None:
        """Load the stored events and open the file for appending.

        A torn last line (the runtime died mid-write) is dropped; a file that grew well
        past *keep* lines is rewritten with the newest ones only.
        """
        try:
            text = self._path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            text = ""
        lines = text.splitlines()
        loaded: list[Event] = []
        for line in lines:
            try:
                loaded.append(Event.from_json(line))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash, or damaged: not an event
        self._stored.extend(loaded)
        if self._stored:
            self._last_ns = max(event.timestamp_ns for event in self._stored)
        self._lines_in_file = len(lines)
        # A last line without its newline would glue onto the next event appended.
        if len(lines) > len(self._stored) or (text and not text.endswith("\n")):
            self._rewrite(self._stored)
            self._lines_in_file = len(self._stored)
        self._fd = self._open_for_append()

    def end_subscriptions(self) -> None:
        """End every live subscription (their streams finish normally)."""
        for subscription in list(self._subscribers):
            subscription.close()

    def close(self) -> None:
        self.end_subscriptions()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _rewrite(self, events: Iterable[Event]) -> None:
        # Through a temporary file, so a crash mid-rewrite keeps the old log.
        path = self._path
        temporary = path.with_name(path.name + ".compact")
        with temporary.open("w", encoding="utf-8") as file:
            file.writelines(event.to_json() + "\n" for event in events)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        if self._fd >= 0:
            # Our append fd still points at the file that was just replaced.
            os.close(self._fd)
            self._fd = self._open_for_append()

    def _open_for_append(self) -> int:
        return os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def append(self, type: str, container_id: str, *, pid: str = "", status: int = 0) -> Event:
        """Record an event now and hand it to every live subscriber.

        Synchronous on purpose: one short append to a file opened with O_APPEND lands in
        the page cache without waiting on the disk, and doing it without a checkpoint
        keeps the file, the memory copy and the subscribers in the same order.
        """
        now = time.time_ns()
        # Strictly increasing, even if the clock steps back or two events share a tick.
        self._last_ns = max(now, self._last_ns + 1)
        event = Event(type, container_id, self._last_ns, pid=pid, status=status)
        if self._fd >= 0:
            os.write(self._fd, (event.to_json() + "\n").encode())
            self._lines_in_file += 1
        self._stored.append(event)
        if self._lines_in_file > 2 * self._keep:
            # Keep the file from growing without bound: rewrite it with what is kept.
            self._rewrite(self._stored)
            self._lines_in_file = len(self._stored)
        for subscription in list(self._subscribers):
            subscription.offer(event)
        return event

    def subscribe(
        self, *, after_ns: int | None, container_id: str = "", follow: bool = True
    ) -> Subscription:
        """Stored events strictly after *after_ns* (none if None), then live ones.

        Taking the snapshot and registering for live events happen without a checkpoint
        in between, so no event is missed or seen twice at the seam.
        """
        replay: list[Event] = []
        if after_ns is not None:
            replay = [
                event
                for event in self._stored
                if event.timestamp_ns > after_ns and (not container_id or event.id == container_id)
            ]
        subscription = Subscription(self, replay, container_id, self._subscriber_capacity, follow)
        if follow:
            self._subscribers.add(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    @property
    def stored(self) -> list[Event]:
        return list(self._stored)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
