"""Tracing: typed events for every step of a call, and the HTTP/2 frames it caused.

This module owns the trace event type, the sink protocol, and `FrameTracer`, which
describes the frames a connection sends and receives. It does no I/O: a sink decides
what to do with events (collect them, write JSON lines, render a timeline), and with no
sink installed nothing here runs at all (callers guard with `if tracer is not None`).

Frames are described by reading the very bytes that go over the wire: the 9-byte
frame header (RFC 9113 §4.1), and for HEADERS/CONTINUATION a shadow HPACK decoder that
sees every header block in order, so its dynamic table matches the real one.
"""

from __future__ import annotations

import itertools
import struct
import time
from dataclasses import dataclass, field
from typing import Protocol

import hpack

FRAME_TYPES = {
    0x0: "DATA",
    0x1: "HEADERS",
    0x2: "PRIORITY",
    0x3: "RST_STREAM",
    0x4: "SETTINGS",
    0x5: "PUSH_PROMISE",
    0x6: "PING",
    0x7: "GOAWAY",
    0x8: "WINDOW_UPDATE",
    0x9: "CONTINUATION",
}
_FLAG_NAMES = {
    "DATA": {0x1: "END_STREAM", 0x8: "PADDED"},
    "HEADERS": {0x1: "END_STREAM", 0x4: "END_HEADERS", 0x8: "PADDED", 0x20: "PRIORITY"},
    "SETTINGS": {0x1: "ACK"},
    "PING": {0x1: "ACK"},
    "CONTINUATION": {0x4: "END_HEADERS"},
}
_SETTING_NAMES = {
    1: "HEADER_TABLE_SIZE",
    2: "ENABLE_PUSH",
    3: "MAX_CONCURRENT_STREAMS",
    4: "INITIAL_WINDOW_SIZE",
    5: "MAX_FRAME_SIZE",
    6: "MAX_HEADER_LIST_SIZE",
}
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_ids = itertools.count(1)


def new_trace_id(prefix: str) -> str:
    """A process-unique id for a call or a connection (`c1`, `conn3`, …)."""
    return f"{prefix}{next(_ids)}"


@dataclass(slots=True, frozen=True)
class TraceEvent:
    """One thing that happened, on one side of one call or connection.

    kind:  "step" (a named step of the call path), "frame" (an HTTP/2 frame),
           "message" (a gRPC message framed or unframed), "note".
    name:  the step (e.g. "invoke", "send_request", "new_stream"), or the frame type.
    phase: "start"/"end" for steps, "out"/"in" for frames and messages, "point" else.
    """

    t_ns: int
    side: str
    kind: str
    name: str
    phase: str
    conn_id: str | None = None
    stream_id: int | None = None
    call_id: str | None = None
    attrs: dict[str, object] = field(default_factory=dict)


class TraceSink(Protocol):
    """Receives trace events. Must not block or do I/O on the caller's time."""

    def emit(self, event: TraceEvent) -> None: ...


class TraceCollector:
    """A sink that keeps events in memory, in order."""

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []

    def emit(self, event: TraceEvent) -> None:
        self.events.append(event)


class FrameTracer:
    """Describes a connection's frames and messages to a sink (one per connection)."""

    def __init__(self, sink: TraceSink, side: str, conn_id: str | None = None) -> None:
        self.sink = sink
        self.side = side
        self.conn_id = conn_id or new_trace_id("conn")
        self._streams = {"out": _FrameReader(), "in": _FrameReader()}

    def frames_out(self, data: bytes) -> None:
        self._frames("out", data)

    def frames_in(self, data: bytes) -> None:
        self._frames("in", data)

    def message_out(self, stream_id: int, wire_length: int, compressed: bool) -> None:
        self.sink.emit(
            TraceEvent(
                time.monotonic_ns(),
                self.side,
                "message",
                "message",
                "out",
                self.conn_id,
                stream_id,
                attrs={"compressed": compressed, "length": wire_length, "prefix": 5},
            )
        )

    def message_in(self, stream_id: int, wire_length: int, length: int, compressed: bool) -> None:
        self.sink.emit(
            TraceEvent(
                time.monotonic_ns(),
                self.side,
                "message",
                "message",
                "in",
                self.conn_id,
                stream_id,
                attrs={
                    "compressed": compressed,
                    "length": wire_length,
                    "uncompressed_length": length,
                },
            )
        )

    def step(
        self,
        name: str,
        phase: str,
        stream_id: int | None = None,
        call_id: str | None = None,
        **attrs: object,
    ) -> None:
        self.sink.emit(
            TraceEvent(
                time.monotonic_ns(),
                self.side,
                "step",
                name,
                phase,
                self.conn_id,
                stream_id,
                call_id,
                dict(attrs),
            )
        )

    def _frames(self, direction: str, data: bytes) -> None:
        now = time.monotonic_ns()
        for frame in self._streams[direction].feed(data):
            name, stream_id, attrs = frame
            self.sink.emit(
                TraceEvent(
                    now,
                    self.side,
                    "frame",
                    name,
                    direction,
                    self.conn_id,
                    stream_id,
                    attrs=attrs,
                )
            )


class _FrameReader:
    """Splits one direction's bytes into frame descriptions (resumable)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._preface_checked = False
        self._decoder = hpack.Decoder()
        self._decoder.max_allowed_table_size = 2**32
        self._header_block = bytearray()
        self._header_frame: tuple[str, int, dict[str, object]] | None = None

    def feed(self, data: bytes) -> list[tuple[str, int, dict[str, object]]]:
        self._buf += data
        out: list[tuple[str, int, dict[str, object]]] = []
        if not self._preface_checked:
            if len(self._buf) < len(_PREFACE) and _PREFACE.startswith(bytes(self._buf)):
                return out
            self._preface_checked = True
            if self._buf.startswith(_PREFACE):
                del self._buf[: len(_PREFACE)]
                out.append(("PREFACE", 0, {}))
        while len(self._buf) >= 9:
            length = int.from_bytes(self._buf[0:3], "big")
            if len(self._buf) < 9 + length:
                break
            ftype, flags = self._buf[3], self._buf[4]
            stream_id = int.from_bytes(self._buf[5:9], "big") & 0x7FFFFFFF
            payload = bytes(self._buf[9 : 9 + length])
            del self._buf[: 9 + length]
            described = self._describe(ftype, flags, stream_id, payload)
            if described is not None:
                out.append(described)
        return out

    def _describe(
        self, ftype: int, flags: int, stream_id: int, payload: bytes
    ) -> tuple[str, int, dict[str, object]] | None:
        name = FRAME_TYPES.get(ftype, f"UNKNOWN_{ftype:#x}")
        names = _FLAG_NAMES.get(name, {})
        attrs: dict[str, object] = {
            "length": len(payload),
            "flags": [flag for bit, flag in names.items() if flags & bit],
        }
        if name in ("HEADERS", "CONTINUATION"):
            block = payload
            if name == "HEADERS":
                pad = payload[0] if flags & 0x8 else 0
                start = (1 if flags & 0x8 else 0) + (5 if flags & 0x20 else 0)
                block = payload[start : len(payload) - pad]
                self._header_frame = (name, stream_id, attrs)
            self._header_block += block
            if not flags & 0x4:
                return None
            head = self._header_frame or (name, stream_id, attrs)
            try:
                decoded = self._decoder.decode(bytes(self._header_block), raw=True)
                head[2]["headers"] = [
                    (k.decode("utf-8", "replace"), _show_value(k, v)) for k, v in decoded
                ]
            except hpack.HPACKError as exc:
                head[2]["headers_error"] = str(exc)
            self._header_block.clear()
            self._header_frame = None
            return head
        if name == "DATA":
            pad = payload[0] if flags & 0x8 and payload else 0
            body = payload[1 : len(payload) - pad] if flags & 0x8 else payload
            attrs["data_preview"] = body[:32].hex()
        elif name == "SETTINGS":
            attrs["settings"] = {
                _SETTING_NAMES.get(k, str(k)): v
                for k, v in (
                    struct.unpack(">HI", payload[i : i + 6]) for i in range(0, len(payload) - 5, 6)
                )
            }
        elif name == "WINDOW_UPDATE" and len(payload) >= 4:
            attrs["increment"] = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        elif name == "RST_STREAM" and len(payload) >= 4:
            attrs["error_code"] = _error_name(int.from_bytes(payload[:4], "big"))
        elif name == "GOAWAY" and len(payload) >= 8:
            attrs["last_stream_id"] = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            attrs["error_code"] = _error_name(int.from_bytes(payload[4:8], "big"))
            attrs["debug"] = payload[8:].decode("utf-8", "replace")
        elif name == "PING":
            attrs["data"] = payload.hex()
        return name, stream_id, attrs


def _show_value(name: bytes, value: bytes) -> str:
    if name.endswith(b"-bin"):
        return value.decode("ascii", "replace")
    return value.decode("utf-8", "replace")


_ERROR_NAMES = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}


def _error_name(code: int) -> str:
    return _ERROR_NAMES.get(code, str(code))
