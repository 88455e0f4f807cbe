"""JSON lines: the stable, documented form of a trace, for tools.

This module owns the schema (version `wire.trace.SCHEMA_VERSION`): one JSON object per
line, one line per `TraceEvent`, always with the same keys:

    {"v": 1, "t_ns": 81234567890123, "side": "client", "kind": "frame",
     "name": "HEADERS", "phase": "out", "conn": "conn1", "stream": 1,
     "call": "call2", "span": null, "parent": 7, "attrs": {...}}

`attrs` by kind is documented in docs/walkthrough.md ("The trace format"). Readers
must ignore attribute keys they do not know; a change that removes or renames a key
bumps `v`. This module converts and parses; it opens no files and imports no trio.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from wire.trace import SCHEMA_VERSION, TraceEvent

KEYS = (
    "v",
    "t_ns",
    "side",
    "kind",
    "name",
    "phase",
    "conn",
    "stream",
    "call",
    "span",
    "parent",
    "attrs",
)
"""The keys of every line, in the order they are written."""


class TraceFormatError(ValueError):
    """A line that is not an event of a schema version this code reads."""


def event_to_dict(event: TraceEvent) -> dict[str, Any]:
    return {
        "v": SCHEMA_VERSION,
        "t_ns": event.t_ns,
        "side": event.side,
        "kind": event.kind,
        "name": event.name,
        "phase": event.phase,
        "conn": event.conn_id,
        "stream": event.stream_id,
        "call": event.call_id,
        "span": event.span,
        "parent": event.parent,
        "attrs": event.attrs,
    }


def _jsonable(value: object) -> object:
    # Attributes are JSON values already; anything else a caller put there is shown
    # rather than allowed to break the whole trace.
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return str(value)


def event_to_json(event: TraceEvent) -> str:
    """One event as one line of JSON (no newline)."""
    return json.dumps(
        event_to_dict(event), separators=(",", ":"), ensure_ascii=False, default=_jsonable
    )


def to_json_lines(events: Iterable[TraceEvent]) -> str:
    """A whole trace as JSON lines (each line ends with a newline)."""
    return "".join(event_to_json(e) + "\n" for e in events)


def event_from_dict(data: dict[str, Any]) -> TraceEvent:
    version = data.get("v")
    if version != SCHEMA_VERSION:
        raise TraceFormatError(
            f"trace schema version {version!r}; this code reads {SCHEMA_VERSION}"
        )
    try:
        attrs = data.get("attrs") or {}
        if not isinstance(attrs, dict):
            raise TraceFormatError("attrs must be an object")
        return TraceEvent(
            t_ns=int(data["t_ns"]),
            side=str(data["side"]),
            kind=str(data["kind"]),
            name=str(data["name"]),
            phase=str(data["phase"]),
            conn_id=_opt_str(data.get("conn")),
            stream_id=_opt_int(data.get("stream")),
            call_id=_opt_str(data.get("call")),
            attrs=attrs,
            span=_opt_int(data.get("span")),
            parent=_opt_int(data.get("parent")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, TraceFormatError):
            raise
        raise TraceFormatError(f"not a trace event: {exc}") from None


def read_json_lines(lines: Iterable[str]) -> Iterator[TraceEvent]:
    """Parse JSON lines back into events (blank lines are skipped)."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceFormatError(f"line {number}: {exc}") from None
        if not isinstance(data, dict):
            raise TraceFormatError(f"line {number}: not a JSON object")
        try:
            yield event_from_dict(data)
        except TraceFormatError as exc:
            raise TraceFormatError(f"line {number}: {exc}") from None


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TraceFormatError(f"expected an integer or null, got {value!r}")
    return value
