"""The event log: replay after a timestamp, then live; order; persistence; slow readers.

Owns: what an Events subscriber relies on: nothing at or before its timestamp is
replayed, nothing is missed or repeated between replay and live events, a restart keeps
the stored events, and a reader that stops reading cannot hold the runtime up.
Must not: need root, CRIU or runc.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
import trio

from runtime.events import Event, EventLog, EventType, SubscriberTooSlow


@pytest.fixture
def log(tmp_path: Path) -> EventLog:
    events = EventLog(tmp_path / "events.jsonl", subscriber_capacity=8)
    events.open()
    return events


async def take(stream: AsyncGenerator[Event, None], count: int) -> list[Event]:
    taken: list[Event] = []
    with trio.fail_after(5):
        async for event in stream:
            taken.append(event)
            if len(taken) == count:
                break
    return taken


async def test_replay_is_strictly_after_the_timestamp_then_live(log: EventLog) -> None:
    first = log.append(EventType.START_CONTAINER, "a", pid="init")
    second = log.append(EventType.START_CONTAINER, "b", pid="init")
    third = log.append(EventType.EXIT, "a", pid="init", status=137)
    subscription = log.subscribe(after_ns=first.timestamp_ns)
    stream = subscription.events()
    replayed = await take(stream, 2)
    assert replayed == [second, third]
    live = log.append(EventType.RESTORE, "a", pid="init")
    assert await take(stream, 1) == [live]
    await stream.aclose()
    assert log.subscriber_count == 0


async def test_without_a_timestamp_only_live_events_come(log: EventLog) -> None:
    log.append(EventType.START_CONTAINER, "a")
    stream = log.subscribe(after_ns=None).events()
    live = log.append(EventType.PAUSE, "a")
    assert await take(stream, 1) == [live]
    await stream.aclose()


async def test_stored_only_ends_after_the_replay_and_filters_by_id(log: EventLog) -> None:
    log.append(EventType.START_CONTAINER, "a")
    wanted = log.append(EventType.START_CONTAINER, "b")
    log.append(EventType.EXIT, "a", status=0)
    subscription = log.subscribe(after_ns=0, container_id="b", follow=False)
    with trio.fail_after(5):
        replayed = [event async for event in subscription.events()]
    assert replayed == [wanted]


def test_timestamps_strictly_increase_even_on_a_stuck_clock(
    log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("runtime.events.time.time_ns", lambda: 1_000_000_000)
    stamps = [log.append(EventType.OOM, "a").timestamp_ns for _ in range(5)]
    assert stamps == sorted(set(stamps))
    assert len(stamps) == 5


async def test_a_reader_that_falls_behind_is_cut_off_not_waited_for(log: EventLog) -> None:
    slow = log.subscribe(after_ns=None).events()
    healthy = log.subscribe(after_ns=None)
    healthy_stream = healthy.events()
    # More than the queue holds, with nobody reading the slow one: append never blocks.
    for number in range(20):
        log.append(EventType.START_CONTAINER, f"c{number}")
        assert len(await take(healthy_stream, 1)) == 1
    received = []
    with pytest.raises(SubscriberTooSlow, match="subscribe again"):
        with trio.fail_after(5):
            async for event in slow:
                received.append(event.id)
    assert received == [f"c{number}" for number in range(8)], "what fitted is delivered"
    await healthy_stream.aclose()


async def test_stored_events_survive_a_restart_and_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    before = EventLog(path)
    before.open()
    kept = [before.append(EventType.START_CONTAINER, "a"), before.append(EventType.EXIT, "a")]
    before.close()
    with path.open("a") as file:
        file.write('{"id":"a","pid":"init","sta')  # the runtime died mid-write
    after = EventLog(path)
    after.open()
    assert after.stored == kept
    newer = after.append(EventType.START_CONTAINER, "a")
    assert newer.timestamp_ns > kept[-1].timestamp_ns
    after.close()
    again = EventLog(path)
    again.open()
    assert again.stored == [*kept, newer], "the torn line must not swallow the next event"
    again.close()


def test_the_file_is_compacted_to_what_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, keep=10)
    log.open()
    for number in range(25):
        log.append(EventType.START_CONTAINER, f"c{number}")
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) <= 20
    reopened = EventLog(path, keep=10)
    reopened.open()
    assert [event.id for event in reopened.stored] == [f"c{n}" for n in range(15, 25)]
    reopened.close()
