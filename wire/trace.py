"""Tracing: typed events for every step of a call, and the HTTP/2 frames it caused.

This module owns the trace event type (`TraceEvent`), the sink protocol, the table of
call-path steps and the grpc-go functions they mirror (`STEPS`), `CallTrace` (the step
events of one call on one side) and `FrameTracer` (the frames and messages of one
connection). It does no I/O and imports no trio: a sink decides what to do with events
(collect them, then render a timeline, JSON lines or HTML, see `wire.tracing`), and with
no sink installed nothing here runs at all, because every caller guards with
`if tracer is not None`.

Frames are described from the very bytes that go over the wire: the 9-byte frame
header (RFC 9113 §4.1), and for HEADERS/CONTINUATION a shadow HPACK decoder that sees
every header block in order, so its dynamic table matches the real one. Flow-control
windows are followed the same way, from the frames alone (a shadow of RFC 9113 §6.9):
what each DATA and WINDOW_UPDATE frame did to the stream and connection windows.

Joining steps and frames: a `CallTrace` binds its stream to the connection's
`FrameTracer`, so frames and messages on that stream carry the call id. An outbound
frame is attributed to the step that queued its bytes: each step records the byte
offset of the connection's output when it starts and ends (`pending_out` tells how
much is queued but not yet drained), and a frame belongs to the innermost step of its
call whose byte range holds the frame's first byte. An inbound frame belongs to the
step of its call that was waiting for it, if any.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Protocol

import hpack

from wire.errors import RpcError
from wire.metadata import Metadata

SCHEMA_VERSION = 1
"""Version of the event schema (see `wire.tracing.jsonl` and docs/walkthrough.md)."""

CALL_ID_METADATA_KEY = "cryo-trace-call-id"
"""Request metadata that carries the client's call id to the server, so that one trace
holds both sides of a call. Sent only while the client is tracing."""

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
    8: "ENABLE_CONNECT_PROTOCOL",
}
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DEFAULT_WINDOW = 65535
_DATA_PREVIEW = 64
_ids = itertools.count(1)
_spans = itertools.count(1)


def new_trace_id(prefix: str) -> str:
    """A process-unique id for a call or a connection (`call1`, `conn3`, …)."""
    return f"{prefix}{next(_ids)}"


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the call path: what it does, and where it lives here and in grpc-go."""

    side: str
    name: str
    grpc_go: str
    func: str
    summary: str


STEPS: dict[tuple[str, str], Step] = {
    (s.side, s.name): s
    for s in (
        Step(
            "client",
            "ClientConn.invoke",
            "ClientConn.Invoke",
            "wire/client.py:ClientConn.invoke",
            "a unary call enters the client and runs its interceptors",
        ),
        Step(
            "client",
            "invoke",
            "invoke",
            "wire/client.py:invoke",
            "one unary call: get a transport, send the request, receive the response",
        ),
        Step(
            "client",
            "get_transport",
            "ClientConn.getTransport",
            "wire/client.py:ClientConn.get_transport",
            "pick the live HTTP/2 connection, or dial one and send the preface",
        ),
        Step(
            "client",
            "send_request",
            "sendRequest",
            "wire/client.py:send_request",
            "open a stream, encode the request, write it with END_STREAM",
        ),
        Step(
            "client",
            "new_stream",
            "http2Client.NewStream",
            "wire/client.py:new_stream",
            "open an HTTP/2 stream and queue the request HEADERS",
        ),
        Step(
            "client",
            "encode",
            "encode",
            "wire/client.py:encode",
            "serialise the request message to bytes",
        ),
        Step(
            "client",
            "write",
            "http2Client.Write",
            "wire/client.py:write",
            "frame the message (5-byte prefix) into DATA and wait for window",
        ),
        Step(
            "client",
            "recv_response",
            "recvResponse",
            "wire/client.py:recv_response",
            "wait for response headers, the one message and the trailers",
        ),
        Step(
            "client",
            "ClientConn.open_stream",
            "ClientConn.NewStream",
            "wire/client.py:ClientConn.open_stream",
            "a streaming call: one stream, messages both ways until the status",
        ),
        Step(
            "client",
            "ClientConn.start_stream",
            "ClientConn.NewStream",
            "wire/client.py:ClientConn.start_stream",
            "a streaming call not tied to a block; each operation carries the deadline",
        ),
        Step(
            "client",
            "send_message",
            "clientStream.SendMsg",
            "wire/client.py:ClientCall.send_message",
            "encode and write one request message",
        ),
        Step(
            "client",
            "done_writing",
            "clientStream.CloseSend",
            "wire/client.py:ClientCall.done_writing",
            "half-close: END_STREAM",
        ),
        Step(
            "client",
            "receive_message",
            "clientStream.RecvMsg",
            "wire/client.py:ClientCall.receive_message",
            "take one response message off the stream",
        ),
        Step(
            "client",
            "cancel",
            "clientStream.CloseSend / cancel",
            "wire/client.py:ClientCall.cancel",
            "give up on the call: RST_STREAM(CANCEL)",
        ),
        Step(
            "server",
            "handle_stream",
            "Server.handleStream",
            "wire/server.py:Server._on_request",
            "request HEADERS arrived: look up the method and start the call",
        ),
        Step(
            "server",
            "run_call",
            "Server.processUnaryRPC",
            "wire/server.py:Server._run_call",
            "run one call under its deadline and end it with a status",
        ),
        Step(
            "server",
            "receive_message",
            "recvMsg",
            "wire/server.py:ServerCall.receive_message",
            "take one request message off the stream",
        ),
        Step(
            "server",
            "handler",
            "md.Handler",
            "wire/server.py:_run_unary_handler",
            "the application's method handler",
        ),
        Step(
            "server",
            "send_message",
            "Server.sendResponse",
            "wire/server.py:ServerCall._queue_message",
            "response HEADERS if not sent yet, then the framed message in DATA",
        ),
        Step(
            "server",
            "finish",
            "http2Server.WriteStatus",
            "wire/server.py:ServerCall._finish",
            "the status in trailers (HEADERS with END_STREAM)",
        ),
    )
}
"""The call-path steps, keyed by (side, step name)."""

RECEIVING_STEPS = frozenset({("client", "recv_response"), ("client", "receive_message")})
"""Steps that take inbound frames and messages off a client's stream. What arrives while
none is open (a fast server answers while `write` is still returning) waits for the
next one, as the bytes wait in the stream's buffer; its event keeps its arrival time
and says which step was running then (`arrived_during`)."""

_HELD_LIMIT = 256  # inbound events a call holds for its next receiving step, at most

MESSAGE_STEP = {
    "out": (
        "encode (msgHeader) / http2Client.Write",
        "wire/connection.py:GrpcConnection.send_message",
    ),
    "in": ("parser.recvMsg", "wire/connection.py:GrpcConnection._decode_messages"),
}
"""Where a gRPC message is framed (out) and unframed (in), here and in grpc-go."""


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One thing that happened, on one side of one call or connection.

    kind:   "step" (a step of the call path), "frame" (an HTTP/2 frame), "message"
            (a gRPC message framed or unframed), "note".
    name:   the step (see `STEPS`), the frame type, or "message".
    phase:  "start"/"end"/"point" for steps, "out"/"in" for frames and messages.
    t_ns:   `time.monotonic_ns()` when it happened; a frame's time is when its bytes
            were handed to (out) or taken from (in) the socket.
    span:   a step's own id (start and end events share it).
    parent: the step this event belongs under: a step's enclosing step, or the step
            that caused a frame or message. None at the top of a call or connection.
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
    span: int | None = None
    parent: int | None = None


class TraceSink(Protocol):
    """Receives trace events. Must not block or do I/O on the caller's time."""

    def emit(self, event: TraceEvent) -> None: ...


class TraceCollector:
    """A sink that keeps events in memory, in order."""

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []

    def emit(self, event: TraceEvent) -> None:
        self.events.append(event)


class TraceFanout:
    """A sink that hands each event to several sinks, in order."""

    def __init__(self, *sinks: TraceSink) -> None:
        self.sinks = sinks

    def emit(self, event: TraceEvent) -> None:
        for sink in self.sinks:
            sink.emit(event)


_installed: TraceSink | None = None


def install_tracer(sink: TraceSink | None) -> None:
    """Make `sink` the tracer of every `ClientConn` and `Server` created from now on
    without a `tracer=` of their own (None uninstalls). Programs use this to turn
    tracing on everywhere at once (the `cryo` CLI does, for `CRYO_TRACE`)."""
    global _installed
    _installed = sink


def installed_tracer() -> TraceSink | None:
    """The sink set by `install_tracer`, if any."""
    return _installed


# -- steps of one call ---------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Span:
    span_id: int
    name: str
    parent: int | None
    start_off: int | None  # output byte offset of the connection when the step began
    end_off: int | None = None  # … and when it ended (None while open)
    closed: bool = False


class CallTrace:
    """The step events of one call on one side, and the spans frames are attributed to.

    Create one per call only when tracing (the caller holds `None` otherwise). Steps
    nest: a step started while another is open belongs under it, unless `detached`
    (streaming operations that may run from several tasks hang off the call's root).
    Ending a step also ends any step still open inside it (marked `unwound`), so a step
    left by an exception never dangles.
    """

    __slots__ = (
        "_held",
        "_open",
        "_root",
        "_spans",
        "call_id",
        "conn_id",
        "finished",
        "frames",
        "method",
        "side",
        "sink",
        "stream_id",
    )

    def __init__(
        self, sink: TraceSink, side: str, *, call_id: str | None = None, method: str | None = None
    ) -> None:
        self.sink = sink
        self.side = side
        self.call_id = call_id or new_trace_id("call")
        self.method = method
        self.frames: FrameTracer | None = None
        self.conn_id: str | None = None
        self.stream_id: int | None = None
        self._open: list[_Span] = []
        self._spans: list[_Span] = []  # closed or open, kept until frames are past them
        self._root: int | None = None
        self._held: list[TraceEvent] = []  # inbound, waiting for a receiving step
        self.finished = False

    # -- joining the connection -------------------------------------------------------

    def attach(self, frames: FrameTracer | None) -> None:
        """The call runs on this connection (its frame tracer, None if not tracing)."""
        self.frames = frames
        if frames is not None:
            self.conn_id = frames.conn_id

    def bind_stream(self, stream_id: int) -> None:
        """The call's stream is `stream_id`: its frames carry this call's id."""
        self.stream_id = stream_id
        if self.frames is not None:
            self.frames.bind(stream_id, self)

    def request_metadata(self, metadata: Metadata | None) -> Metadata:
        """`metadata` plus the call id, for the server's half of the trace."""
        md = metadata.copy() if metadata is not None else Metadata()
        md.add(CALL_ID_METADATA_KEY, self.call_id)
        return md

    # -- steps ------------------------------------------------------------------------

    def start(self, name: str, *, detached: bool = False, **attrs: object) -> int:
        """Begin step `name`; returns its span id for `end`."""
        span_id = next(_spans)
        parent = self._root if detached or not self._open else self._open[-1].span_id
        offset = self.frames.out_offset() if self.frames is not None else None
        span = _Span(span_id, name, parent, offset)
        if self._root is None:
            self._root = span_id
        self._open.append(span)
        if offset is not None:
            self._spans.append(span)
        step = STEPS.get((self.side, name))
        if step is not None:
            attrs.setdefault("grpc_go", step.grpc_go)
            attrs.setdefault("func", step.func)
        if self.method is not None and parent is None:
            attrs.setdefault("method", self.method)
        self._emit(name, "start", span_id, parent, attrs)
        if self._held and (self.side, name) in RECEIVING_STEPS:
            self._release_held(span_id)
        return span_id

    def end(self, span_id: int, **attrs: object) -> None:
        """End a step (and any still open inside it)."""
        index = next((i for i, s in enumerate(self._open) if s.span_id == span_id), None)
        if index is None:
            return
        offset = self.frames.out_offset() if self.frames is not None else None
        if index == 0 and self._held:
            self._release_held(self._root)  # the call ends: nothing took them
        # Steps still open inside were left by the exception that ends this one.
        unwound: dict[str, object] = {"unwound": True}
        unwound.update((k, v) for k, v in attrs.items() if k in ("status", "message", "error"))
        for inner in reversed(self._open[index + 1 :]):
            self._close(inner, offset, dict(unwound))
        self._close(self._open[index], offset, attrs)
        del self._open[index:]
        if not self._open:
            self.finished = True
            if self.frames is not None and self.stream_id is not None:
                self.frames.release(self.stream_id)

    def point(self, name: str, *, detached: bool = False, **attrs: object) -> None:
        """A step with no duration (e.g. a message taken off the stream)."""
        parent = self._root if detached or not self._open else self._open[-1].span_id
        step = STEPS.get((self.side, name))
        if step is not None:
            attrs.setdefault("grpc_go", step.grpc_go)
            attrs.setdefault("func", step.func)
        self._emit(name, "point", next(_spans), parent, attrs)

    def step(self, name: str, *, detached: bool = False, **attrs: object) -> StepScope:
        """`with trace.step("write"):` — start, and end when the block exits; an
        exception ends it with the status it carries (`RpcError`) or its type."""
        return StepScope(self, name, detached, attrs)

    def end_all(self, **attrs: object) -> None:
        """End every open step (the call is over), the outermost with `attrs`."""
        if self._open:
            self.end(self._open[0].span_id, **attrs)

    # -- attribution (used by FrameTracer) ------------------------------------------

    def span_at(self, offset: int) -> int | None:
        """The innermost step whose output byte range holds `offset`."""
        best: int | None = None
        best_start = -1
        keep: list[_Span] = []
        for span in self._spans:
            if span.end_off is not None and span.end_off <= offset:
                continue  # frames only move forward: this span can never match again
            keep.append(span)
            start = span.start_off
            if start is not None and best_start <= start <= offset:
                best, best_start = span.span_id, start
        self._spans = keep
        return best if best is not None else self.open_span()

    def open_span(self) -> int | None:
        """The innermost step open now."""
        return self._open[-1].span_id if self._open else self._root

    def inbound(self, event: TraceEvent) -> None:
        """Emit an inbound frame or message of this call under the step that takes it:
        on a client, the innermost open receiving step, or the next one to start
        (see `RECEIVING_STEPS`); on a server, the step open now."""
        if self.side == "client" and not self.finished:
            for span in reversed(self._open):
                if (self.side, span.name) in RECEIVING_STEPS:
                    self.sink.emit(replace(event, parent=span.span_id))
                    return
            if self._open:
                event.attrs["arrived_during"] = self._open[-1].name
                self._held.append(event)
                if len(self._held) > _HELD_LIMIT:
                    self._release_held(self.open_span())
                return
        self.sink.emit(replace(event, parent=self.open_span()))

    # -- internals --------------------------------------------------------------------

    def _release_held(self, parent: int | None) -> None:
        held, self._held = self._held, []
        for event in held:
            self.sink.emit(replace(event, parent=parent))

    def _close(self, span: _Span, offset: int | None, attrs: dict[str, object]) -> None:
        span.closed = True
        span.end_off = offset
        if offset is None and span in self._spans:
            self._spans.remove(span)
        self._emit(span.name, "end", span.span_id, span.parent, attrs)

    def _emit(
        self, name: str, phase: str, span: int, parent: int | None, attrs: dict[str, object]
    ) -> None:
        self.sink.emit(
            TraceEvent(
                time.monotonic_ns(),
                self.side,
                "step",
                name,
                phase,
                self.conn_id,
                self.stream_id,
                self.call_id,
                attrs,
                span,
                parent,
            )
        )


class StepScope:
    """The `with` form of a step; `note(**attrs)` adds to what its end event carries."""

    __slots__ = ("_attrs", "_detached", "_end_attrs", "_name", "_span", "_trace")

    def __init__(
        self, trace: CallTrace, name: str, detached: bool, attrs: dict[str, object]
    ) -> None:
        self._trace = trace
        self._name = name
        self._detached = detached
        self._attrs = attrs
        self._end_attrs: dict[str, object] = {}
        self._span = 0

    def note(self, **attrs: object) -> None:
        self._end_attrs.update(attrs)

    def __enter__(self) -> StepScope:
        self._span = self._trace.start(self._name, detached=self._detached, **self._attrs)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self._end_attrs.update(error_attrs(exc))
        elif self._span == self._trace._root:
            # The call's outermost step returned: the call ended with OK.
            self._end_attrs.setdefault("status", "OK")
        self._trace.end(self._span, **self._end_attrs)


def error_attrs(exc: BaseException) -> dict[str, object]:
    """How an exception that ended a step shows in its end event."""
    if isinstance(exc, RpcError):
        return {"status": exc.code.name, "message": exc.message}
    return {"error": type(exc).__name__}


# -- frames and messages of one connection ----------------------------------------------


class FrameTracer:
    """Describes a connection's frames and messages to a sink (one per connection).

    `pending_out` says how many bytes are queued for sending but not yet drained; with
    it, outbound frames are attributed to the steps that queued them.
    """

    def __init__(
        self,
        sink: TraceSink,
        side: str,
        conn_id: str | None = None,
        *,
        pending_out: Callable[[], int] | None = None,
    ) -> None:
        self.sink = sink
        self.side = side
        self.conn_id = conn_id or new_trace_id("conn")
        self._pending_out = pending_out
        self._drained = 0
        self._readers = {"out": _FrameReader(), "in": _FrameReader()}
        self.flow = FlowShadow()
        self._calls: dict[int, CallTrace] = {}
        self._call_ids: dict[int, str] = {}
        self._wire_closed: set[int] = set()  # streams over on the wire, call still running

    # -- calls ------------------------------------------------------------------------

    def out_offset(self) -> int:
        """The output byte offset that the next queued byte will have."""
        return self._drained + (self._pending_out() if self._pending_out is not None else 0)

    def bind(self, stream_id: int, call: CallTrace) -> None:
        self._calls[stream_id] = call
        self._call_ids[stream_id] = call.call_id

    def release(self, stream_id: int) -> None:
        """The call on `stream_id` is over; forget it once its stream is closed too."""
        if stream_id in self._wire_closed:
            self._wire_closed.discard(stream_id)
            self._calls.pop(stream_id, None)

    def call_id_for(self, stream_id: int) -> str | None:
        return self._call_ids.get(stream_id)

    # -- bytes ------------------------------------------------------------------------

    def frames_out(self, data: bytes) -> None:
        self._frames("out", data)
        self._drained += len(data)

    def frames_in(self, data: bytes) -> None:
        self._frames("in", data)

    # -- messages ---------------------------------------------------------------------

    def message_out(
        self, stream_id: int, length: int, uncompressed_length: int, compressed: bool
    ) -> None:
        """A message was framed: `length` bytes after the prefix (compressed if
        `compressed`), `uncompressed_length` before compression."""
        call = self._calls.get(stream_id)
        self.sink.emit(
            TraceEvent(
                time.monotonic_ns(),
                self.side,
                "message",
                "message",
                "out",
                self.conn_id,
                stream_id,
                self._call_ids.get(stream_id),
                {
                    "compressed": compressed,
                    "length": length,
                    "uncompressed_length": uncompressed_length,
                    "prefix": _prefix(compressed, length),
                },
                None,
                call.open_span() if call is not None else None,
            )
        )

    def message_in(self, stream_id: int, wire_length: int, length: int, compressed: bool) -> None:
        """A message was unframed: `wire_length` bytes after the prefix, `length` after
        decompression."""
        event = TraceEvent(
            time.monotonic_ns(),
            self.side,
            "message",
            "message",
            "in",
            self.conn_id,
            stream_id,
            self._call_ids.get(stream_id),
            {
                "compressed": compressed,
                "length": wire_length,
                "uncompressed_length": length,
                "prefix": _prefix(compressed, wire_length),
            },
        )
        call = self._calls.get(stream_id)
        if call is not None:
            call.inbound(event)
        else:
            self.sink.emit(event)

    def step(
        self,
        name: str,
        phase: str,
        stream_id: int | None = None,
        call_id: str | None = None,
        **attrs: object,
    ) -> None:
        """A connection-level event that belongs to no call step (kind "note")."""
        self.sink.emit(
            TraceEvent(
                time.monotonic_ns(),
                self.side,
                "note",
                name,
                phase,
                self.conn_id,
                stream_id,
                call_id,
                dict(attrs),
            )
        )

    # -- internals --------------------------------------------------------------------

    def _frames(self, direction: str, data: bytes) -> None:
        now = time.monotonic_ns()
        base = self._drained
        for offset, (name, stream_id, attrs) in self._readers[direction].feed(data):
            if name == "HEADERS" and direction == "in" and stream_id not in self._call_ids:
                for key, value in _pairs(attrs.get("headers")):
                    if key == CALL_ID_METADATA_KEY:
                        self._call_ids[stream_id] = value
            window = self.flow.apply(direction, name, stream_id, attrs)
            if window is not None:
                attrs["window"] = window
            call = self._calls.get(stream_id) if stream_id else None
            # Outbound frames belong to the step that queued their bytes; inbound ones
            # go to the call, which knows which step takes them (`CallTrace.inbound`).
            out_parent = (
                call.span_at(base + offset) if call is not None and direction == "out" else None
            )
            event = TraceEvent(
                now,
                self.side,
                "frame",
                name,
                direction,
                self.conn_id,
                stream_id,
                self._call_ids.get(stream_id) if stream_id else None,
                attrs,
                None,
                out_parent,
            )
            if call is not None and direction == "in":
                call.inbound(event)
            else:
                self.sink.emit(event)
            if stream_id and (name == "RST_STREAM" or self.flow.closed(stream_id)):
                self._forget(stream_id, call)

    def _forget(self, stream_id: int, call: CallTrace | None) -> None:
        # The stream is over on the wire. Its call may still be running (the client
        # unframes the reply after the trailers arrived): keep it until it ends. Later
        # frames for the stream (a RST_STREAM after trailers) still name the call.
        self.flow.forget(stream_id)
        if call is None or call.finished:
            self._calls.pop(stream_id, None)
        else:
            self._wire_closed.add(stream_id)
        if len(self._call_ids) > 4096:
            for key in list(itertools.islice(self._call_ids, 2048)):
                del self._call_ids[key]


class FlowShadow:
    """Flow-control windows as the frames on the wire define them (RFC 9113 §6.9).

    `send` windows are what the peer lets us send (its SETTINGS and WINDOW_UPDATEs in,
    our DATA out); `receive` windows are what we let the peer send (ours out, its DATA
    in). Our INITIAL_WINDOW_SIZE counts from the peer's SETTINGS ACK, as in h2.
    """

    def __init__(self) -> None:
        self.send_connection = _DEFAULT_WINDOW
        self.receive_connection = _DEFAULT_WINDOW
        self.peer_initial = _DEFAULT_WINDOW
        self.local_initial = _DEFAULT_WINDOW
        self.send_streams: dict[int, int] = {}
        self.receive_streams: dict[int, int] = {}
        self._unacked_settings: list[int | None] = []
        self._ended: dict[int, set[str]] = {}

    def apply(
        self, direction: str, name: str, stream_id: int, attrs: dict[str, object]
    ) -> dict[str, object] | None:
        """Account for one frame; returns the windows it changed, before and after."""
        if name == "SETTINGS":
            self._settings(direction, attrs)
            return None
        if stream_id and name in ("HEADERS", "DATA", "WINDOW_UPDATE"):
            self._open(stream_id)
        if stream_id and "END_STREAM" in _strings(attrs.get("flags")):
            self._ended.setdefault(stream_id, set()).add(direction)
        if name == "DATA":
            size = _int(attrs.get("length"))
            if direction == "out":
                return self._change("send", stream_id, -size)
            return self._change("receive", stream_id, -size)
        if name == "WINDOW_UPDATE" and "increment" in attrs:
            increment = _int(attrs.get("increment"))
            kind = "receive" if direction == "out" else "send"
            return self._change(kind, stream_id, increment)
        return None

    def closed(self, stream_id: int) -> bool:
        return stream_id != 0 and len(self._ended.get(stream_id, ())) == 2

    def forget(self, stream_id: int) -> None:
        self.send_streams.pop(stream_id, None)
        self.receive_streams.pop(stream_id, None)
        self._ended.pop(stream_id, None)

    def _open(self, stream_id: int) -> None:
        if stream_id not in self.send_streams:
            self.send_streams[stream_id] = self.peer_initial
            self.receive_streams[stream_id] = self.local_initial

    def _change(self, kind: str, stream_id: int, delta: int) -> dict[str, object]:
        streams = self.send_streams if kind == "send" else self.receive_streams
        conn_attr = "send_connection" if kind == "send" else "receive_connection"
        out: dict[str, object] = {"kind": kind}
        if stream_id == 0 or delta < 0:
            before = getattr(self, conn_attr)
            setattr(self, conn_attr, before + delta)
            out["connection"] = [before, before + delta]
        if stream_id != 0:
            before = streams.get(stream_id, 0)
            streams[stream_id] = before + delta
            out["stream"] = [before, before + delta]
        return out

    def _settings(self, direction: str, attrs: dict[str, object]) -> None:
        raw = attrs.get("settings")
        settings = raw if isinstance(raw, dict) else {}
        acked = "ACK" in _strings(attrs.get("flags"))
        if direction == "out":
            if not acked:
                self._unacked_settings.append(settings.get("INITIAL_WINDOW_SIZE"))
            return
        if acked:
            if self._unacked_settings:
                value = self._unacked_settings.pop(0)
                if value is not None:
                    delta = value - self.local_initial
                    self.local_initial = value
                    for sid in self.receive_streams:
                        self.receive_streams[sid] += delta
            return
        value = settings.get("INITIAL_WINDOW_SIZE")
        if value is not None:
            delta = int(value) - self.peer_initial
            self.peer_initial = int(value)
            for sid in self.send_streams:
                self.send_streams[sid] += delta


class _FrameReader:
    """Splits one direction's bytes into frame descriptions (resumable).

    `feed` returns each complete frame with the offset of its first byte, counted from
    the start of this feed's bytes (negative when the frame began in an earlier feed).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._preface_checked = False
        self._decoder = hpack.Decoder()
        self._decoder.max_allowed_table_size = 2**32
        self._header_block = bytearray()
        self._header_frame: tuple[str, int, dict[str, object]] | None = None
        self._header_offset = 0

    def feed(self, data: bytes) -> list[tuple[int, tuple[str, int, dict[str, object]]]]:
        start = -len(self._buf)  # offset of the buffer's first byte in `data`
        self._buf += data
        out: list[tuple[int, tuple[str, int, dict[str, object]]]] = []
        if not self._preface_checked:
            if len(self._buf) < len(_PREFACE) and _PREFACE.startswith(bytes(self._buf)):
                return out
            self._preface_checked = True
            if self._buf.startswith(_PREFACE):
                del self._buf[: len(_PREFACE)]
                out.append((start, ("PREFACE", 0, {"length": len(_PREFACE)})))
                start += len(_PREFACE)
        while len(self._buf) >= 9:
            length = int.from_bytes(self._buf[0:3], "big")
            if len(self._buf) < 9 + length:
                break
            ftype, flags = self._buf[3], self._buf[4]
            stream_id = int.from_bytes(self._buf[5:9], "big") & 0x7FFFFFFF
            payload = bytes(self._buf[9 : 9 + length])
            del self._buf[: 9 + length]
            described = self._describe(ftype, flags, stream_id, payload, start)
            if described is not None:
                out.append(described)
            start += 9 + length
        return out

    def _describe(
        self, ftype: int, flags: int, stream_id: int, payload: bytes, offset: int
    ) -> tuple[int, tuple[str, int, dict[str, object]]] | None:
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
                begin = (1 if flags & 0x8 else 0) + (5 if flags & 0x20 else 0)
                block = payload[begin : len(payload) - pad]
                self._header_frame = (name, stream_id, attrs)
                self._header_offset = offset
            else:
                head_attrs = self._header_frame[2] if self._header_frame is not None else attrs
                head_attrs["continuations"] = _int(head_attrs.get("continuations")) + 1
            self._header_block += block
            if not flags & 0x4:
                return None  # the header block goes on in CONTINUATION frames
            head = self._header_frame or (name, stream_id, attrs)
            try:
                decoded = self._decoder.decode(bytes(self._header_block), raw=True)
                head[2]["headers"] = [
                    [k.decode("utf-8", "replace"), _show_value(k, v)] for k, v in decoded
                ]
            except hpack.HPACKError as exc:
                head[2]["headers_error"] = str(exc)
            self._header_block.clear()
            self._header_frame = None
            return self._header_offset, head
        if name == "DATA":
            pad = payload[0] if flags & 0x8 and payload else 0
            body = payload[1 : len(payload) - pad] if flags & 0x8 else payload
            attrs["data_preview"] = body[:_DATA_PREVIEW].hex()
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
        return offset, (name, stream_id, attrs)


def _prefix(compressed: bool, length: int) -> str:
    """The 5-byte message prefix as it is on the wire, in hex."""
    return (bytes([int(compressed)]) + length.to_bytes(4, "big")).hex(" ")


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _pairs(value: object) -> list[tuple[str, str]]:
    """Decoded headers (a list of [name, value]) as tuples."""
    if not isinstance(value, list):
        return []
    return [(str(p[0]), str(p[1])) for p in value if isinstance(p, list | tuple) and len(p) == 2]


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


def iter_steps(events: Iterable[TraceEvent]) -> Iterator[TraceEvent]:
    """The step events of a trace, in order."""
    return (e for e in events if e.kind == "step")
