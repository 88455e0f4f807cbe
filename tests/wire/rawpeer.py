"""A raw HTTP/2 peer that tests drive frame by frame, to put cryo's wire layer on trial.

This module owns `RawPeer` (one `h2` connection over one trio TCP stream, with a log of
every frame the other side sent), `RawServer` (accepts connections on 127.0.0.1 and hands
each to a test's script), `open_raw_client` (a raw client connection to a cryo `Server`)
and small builders for gRPC header blocks and messages with any flag or length a test
wants, legal or not.

It must not import cryo's connection, transport, client or server: a harness that shared
their code could not catch their bugs. It speaks loopback only, and every wait in it ends
when the other side goes away.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import trio
from hyperframe.frame import Frame, GoAwayFrame

Headers = list[tuple[bytes, bytes]]

# Frame types and flags of RFC 9113 section 6, for reading the frame log.
DATA = 0x0
HEADERS = 0x1
RST_STREAM = 0x3
SETTINGS = 0x4
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1

_FRAME_HEADER = struct.Struct(">HBBBL")  # 24-bit length split as 16 + 8 bits


class PeerGone(Exception):
    """The other side closed the connection while the script was waiting on it."""


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One frame as it came off the wire, before h2 interpreted it."""

    type: int
    flags: int
    stream_id: int
    payload: bytes

    @property
    def end_stream(self) -> bool:
        return self.type in (DATA, HEADERS) and bool(self.flags & FLAG_END_STREAM)

    @property
    def error_code(self) -> int:
        """The error code of a RST_STREAM or GOAWAY frame."""
        if self.type == RST_STREAM:
            return int.from_bytes(self.payload[:4], "big")
        if self.type == GOAWAY:
            return int.from_bytes(self.payload[4:8], "big")
        raise ValueError(f"frame type {self.type} carries no error code")

    @property
    def last_stream_id(self) -> int:
        """The last-stream-id of a GOAWAY frame."""
        return int.from_bytes(self.payload[:4], "big") & 0x7FFFFFFF

    @property
    def debug_data(self) -> bytes:
        """The additional debug data of a GOAWAY frame."""
        return self.payload[8:]


@dataclass(slots=True)
class RawStream:
    """What one side of the raw peer saw on one stream."""

    stream_id: int
    headers: Headers | None = None  # request headers, or the first response headers
    data: bytearray = field(default_factory=bytearray)
    trailers: Headers | None = None
    ended: bool = False  # the other side sent END_STREAM
    reset_code: int | None = None  # the other side sent RST_STREAM with this code

    @property
    def done(self) -> bool:
        return self.ended or self.reset_code is not None

    def header(self, name: bytes) -> bytes | None:
        """The first value of `name` in the headers, else in the trailers."""
        for block in (self.headers or [], self.trailers or []):
            for key, value in block:
                if key == name:
                    return value
        return None

    def messages(self) -> list[tuple[int, bytes]]:
        """The gRPC messages in the DATA received so far: (compressed flag, payload)."""
        return parse_messages(bytes(self.data))


class _LenientH2Connection(h2.connection.H2Connection):
    """h2 treats any GOAWAY, sent or received, as the end of the connection and then
    refuses every frame. A graceful GOAWAY lets streams up to last-stream-id finish, and
    these tests must see (and send) exactly that, so this peer keeps the connection open
    after a received GOAWAY and keeps the bytes queued before it."""

    def _receive_goaway_frame(
        self, frame: GoAwayFrame
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors._error_code_from_int(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class RawPeer:
    """One HTTP/2 connection driven by hand: the test decides every frame.

    Frames go out when the script calls `flush` (or `send_*`); frames come in with
    `receive`, which also updates `streams`, `frames`, `events`, and answers what h2
    answers on its own (SETTINGS and PING acknowledgements). With `auto_ack_data` the
    peer gives flow-control credit back as soon as DATA arrives, like a reader that keeps
    up; without it, credit is only given when the script says so.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        *,
        client_side: bool,
        settings: dict[int, int] | None = None,
        auto_ack_data: bool = True,
    ) -> None:
        self.stream = stream
        self.h2 = _LenientH2Connection(
            h2.config.H2Configuration(
                client_side=client_side,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                validate_inbound_headers=True,
                normalize_inbound_headers=False,
            )
        )
        self._settings = settings
        self.auto_ack_data = auto_ack_data
        self.streams: dict[int, RawStream] = {}
        self.frames: list[RawFrame] = []
        self.events: list[h2.events.Event] = []
        self.gone = False
        self._pending: deque[h2.events.Event] = deque()
        self._inbound = bytearray()
        self._changed = trio.lowlevel.ParkingLot()
        self._receive_lock = trio.Lock()

    # -- sending ----------------------------------------------------------------------

    async def start(self) -> None:
        """Send the preface, then the script's SETTINGS in a frame of their own.

        h2 would make settings given at construction current at once; sent as an update
        they take effect when the other side acknowledges them, as RFC 9113 §6.5.3 says,
        so data the other side sent under the defaults is not held against it.
        """
        self.h2.initiate_connection()
        if self._settings:
            self.h2.update_settings(self._settings)
        await self.flush()

    async def flush(self) -> None:
        """Send what h2 has queued."""
        data = self.h2.data_to_send()
        if data:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.gone = True
                raise PeerGone(str(exc)) from None

    async def send_goaway(
        self, last_stream_id: int, error_code: int = 0, debug: bytes = b""
    ) -> None:
        """Send GOAWAY without closing h2's side: streams up to last_stream_id go on."""
        frame = GoAwayFrame(
            stream_id=0,
            last_stream_id=last_stream_id,
            error_code=error_code,
            additional_data=debug,
        )
        self.h2._prepare_for_sending([frame])
        await self.flush()

    async def send_request(
        self,
        headers: Headers,
        body: bytes = b"",
        *,
        end_stream: bool = True,
    ) -> int:
        """Open a stream with `headers`, send `body` as one DATA frame, maybe half-close."""
        stream_id = self.h2.get_next_available_stream_id()
        self.streams[stream_id] = RawStream(stream_id)
        self.h2.send_headers(stream_id, headers, end_stream=end_stream and not body)
        step = self.h2.max_outbound_frame_size
        for start in range(0, len(body), step):
            last = start + step >= len(body)
            self.h2.send_data(stream_id, body[start : start + step], end_stream=end_stream and last)
        await self.flush()
        return stream_id

    async def respond(
        self,
        stream_id: int,
        *,
        headers: Headers | None = None,
        body: bytes = b"",
        trailers: Headers | None = None,
        end_with_data: bool = False,
    ) -> None:
        """Answer a stream: response headers, one DATA frame, then trailers (each optional).

        With `end_with_data` the DATA frame carries END_STREAM and no trailers follow.
        """
        if headers is not None:
            only = not body and trailers is None and not end_with_data
            self.h2.send_headers(stream_id, headers, end_stream=only)
        if body or end_with_data:
            step = self.h2.max_outbound_frame_size
            chunks = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
            for index, chunk in enumerate(chunks):
                last = index == len(chunks) - 1
                self.h2.send_data(stream_id, chunk, end_stream=end_with_data and last)
        if trailers is not None:
            self.h2.send_headers(stream_id, trailers, end_stream=True)
        await self.flush()

    async def reset(self, stream_id: int, error_code: int) -> None:
        self.h2.reset_stream(stream_id, error_code)
        await self.flush()

    async def close(self) -> None:
        """Drop the TCP connection without any goodbye."""
        self.gone = True
        await trio.aclose_forcefully(self.stream)

    # -- receiving --------------------------------------------------------------------

    async def receive(self) -> list[h2.events.Event]:
        """Read once from the socket; return the events it carried ([] once gone)."""
        async with self._receive_lock:
            if self.gone:
                return []
            try:
                data = await self.stream.receive_some(256 * 1024)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.gone = True
                self._changed.unpark_all()
                return []
            self._log_frames(data)
            events = self.h2.receive_data(data)
            for event in events:
                self._track(event)
            self.events.extend(events)
            self._pending.extend(events)
            self._changed.unpark_all()
            with suppress(PeerGone):
                await self.flush()
            return events

    async def next_event(
        self, predicate: Callable[[h2.events.Event], bool] = lambda _: True
    ) -> h2.events.Event:
        """The next event not yet taken that matches `predicate` (earlier ones are dropped)."""
        while True:
            while self._pending:
                event = self._pending.popleft()
                if predicate(event):
                    return event
            if self.gone:
                raise PeerGone("connection closed while waiting for an event")
            await self.receive()

    def peek(self, predicate: Callable[[h2.events.Event], bool]) -> h2.events.Event | None:
        """The first event already read but not yet taken that matches, left in place."""
        return next((event for event in self._pending if predicate(event)), None)

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Read until `condition()` holds; raise PeerGone if the connection ends first."""
        while not condition():
            if self.gone:
                raise PeerGone("connection closed before the condition held")
            await self.receive()

    async def wait_stream_done(self, stream_id: int) -> RawStream:
        """Read until the other side ended or reset `stream_id`."""
        await self.wait_for(lambda: self.stream_state(stream_id).done)
        return self.stream_state(stream_id)

    async def wait_reset(self, stream_id: int) -> int:
        """Read until the other side resets `stream_id`; return the RST_STREAM error code."""
        await self.wait_for(lambda: self.stream_state(stream_id).reset_code is not None)
        code = self.stream_state(stream_id).reset_code
        assert code is not None
        return code

    async def wait_gone(self) -> None:
        """Read (and answer pings) until the other side closes the connection."""
        while not self.gone:
            await self.receive()

    def stream_state(self, stream_id: int) -> RawStream:
        return self.streams.setdefault(stream_id, RawStream(stream_id))

    def frames_on(self, stream_id: int) -> list[RawFrame]:
        return [frame for frame in self.frames if frame.stream_id == stream_id]

    def frames_of(self, frame_type: int) -> list[RawFrame]:
        return [frame for frame in self.frames if frame.type == frame_type]

    def _track(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived | h2.events.ResponseReceived):
            assert event.stream_id is not None
            stream = self.stream_state(event.stream_id)
            if stream.headers is None:
                stream.headers = list(event.headers or [])
            if event.stream_ended is not None:
                stream.ended = True
        elif isinstance(event, h2.events.TrailersReceived):
            assert event.stream_id is not None
            stream = self.stream_state(event.stream_id)
            stream.trailers = list(event.headers or [])
            if event.stream_ended is not None:
                stream.ended = True
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None and event.data is not None
            stream = self.stream_state(event.stream_id)
            stream.data += event.data
            if event.stream_ended is not None:
                stream.ended = True
            if self.auto_ack_data and event.flow_controlled_length:
                self.acknowledge(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            self.stream_state(event.stream_id).ended = True
        elif isinstance(event, h2.events.StreamReset):
            assert event.stream_id is not None
            self.stream_state(event.stream_id).reset_code = int(event.error_code or 0)

    def acknowledge(self, stream_id: int, length: int) -> None:
        """Give `length` bytes of credit back to the stream and the connection at once.

        Exact WINDOW_UPDATEs rather than h2's `acknowledge_received_data`, whose
        heuristics may hold back a small credit forever when the window is below zero.
        """
        self.h2.increment_flow_control_window(length)
        if self.stream_state(stream_id).ended:
            return  # the other side is done sending on it: no stream credit needed
        with suppress(h2.exceptions.StreamClosedError, KeyError):
            self.h2.increment_flow_control_window(length, stream_id)

    def _log_frames(self, data: bytes) -> None:
        buffer = self._inbound
        buffer += data
        if not self.frames and buffer.startswith(b"PRI * HTTP/2.0"):
            # A client's connection preface is not a frame.
            if len(buffer) < 24:
                return
            del buffer[:24]
        while len(buffer) >= 9:
            high, low, frame_type, flags, stream_id = _FRAME_HEADER.unpack_from(buffer)
            length = (high << 8) | low
            if len(buffer) < 9 + length:
                break
            payload = bytes(buffer[9 : 9 + length])
            del buffer[: 9 + length]
            self.frames.append(RawFrame(frame_type, flags, stream_id & 0x7FFFFFFF, payload))


Script = Callable[[RawPeer], Awaitable[None]]


class RawServer:
    """A scripted HTTP/2 server on 127.0.0.1: each accepted connection runs `script`.

        server = RawServer(answer_each_request(responder))
        port = await nursery.start(server.serve)

    `peers` lists every connection in the order they came; a script that needs to act
    differently on a second connection can look at its position there.
    """

    def __init__(
        self,
        script: Script,
        *,
        settings: dict[int, int] | None = None,
        auto_ack_data: bool = True,
        preface_delay: float = 0.0,
    ) -> None:
        self.script = script
        self.settings = settings
        self.auto_ack_data = auto_ack_data
        self.preface_delay = preface_delay
        self.peers: list[RawPeer] = []
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1")
            )
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started(self.port)

    async def _handle(self, stream: trio.SocketStream) -> None:
        peer = RawPeer(
            stream, client_side=False, settings=self.settings, auto_ack_data=self.auto_ack_data
        )
        self.peers.append(peer)
        try:
            # A slow server: the client must not open streams before our SETTINGS.
            await trio.sleep(self.preface_delay)
            await peer.start()
            await self.script(peer)
        except PeerGone:
            pass  # the client left; what the test checks was recorded on the way
        finally:
            await trio.aclose_forcefully(stream)


Responder = Callable[[RawPeer, int], Awaitable[None]]


def answer_each_request(responder: Responder) -> Script:
    """A script that calls `responder(peer, stream_id)` once per request, when the client
    has half-closed it, and keeps the connection up until the client leaves."""

    async def script(peer: RawPeer) -> None:
        answered: set[int] = set()
        while not peer.gone:
            await peer.receive()
            for stream_id, stream in list(peer.streams.items()):
                if stream.ended and stream_id not in answered:
                    answered.add(stream_id)
                    await responder(peer, stream_id)

    return script


async def start_raw_server(
    nursery: trio.Nursery,
    script: Script,
    *,
    settings: dict[int, int] | None = None,
    auto_ack_data: bool = True,
    preface_delay: float = 0.0,
) -> RawServer:
    server = RawServer(
        script, settings=settings, auto_ack_data=auto_ack_data, preface_delay=preface_delay
    )
    await nursery.start(server.serve)
    return server


@asynccontextmanager
async def open_raw_client(
    port: int, *, settings: dict[int, int] | None = None, auto_ack_data: bool = True
) -> AsyncIterator[RawPeer]:
    """A raw client connection to 127.0.0.1:`port`, preface and SETTINGS already sent."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    peer = RawPeer(stream, client_side=True, settings=settings, auto_ack_data=auto_ack_data)
    try:
        await peer.start()
        yield peer
    finally:
        await trio.aclose_forcefully(stream)


# -- gRPC builders ------------------------------------------------------------------------


def grpc_message(payload: bytes, *, flag: int = 0, length: int | None = None) -> bytes:
    """A message with its 5-byte prefix; `flag` and `length` may lie on purpose."""
    announced = len(payload) if length is None else length
    return struct.pack(">BI", flag, announced) + payload


def parse_messages(data: bytes) -> list[tuple[int, bytes]]:
    """Split a stream's DATA into (flag, payload) messages; a cut-off tail is an error."""
    messages: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 5:
            raise ValueError(f"{len(data) - pos} bytes left over, less than a prefix")
        flag, length = struct.unpack_from(">BI", data, pos)
        pos += 5
        if len(data) - pos < length:
            raise ValueError(f"message of {length} bytes cut off at {len(data) - pos}")
        messages.append((flag, data[pos : pos + length]))
        pos += length
    return messages


def response_headers(
    *,
    status: bytes = b"200",
    content_type: bytes = b"application/grpc",
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> Headers:
    return [(b":status", status), (b"content-type", content_type), *extra]


def trailers(status: int | bytes | None = 0, message: bytes | None = None) -> Headers:
    """A trailer block; `status=None` leaves grpc-status out."""
    block: Headers = []
    if status is not None:
        value = status if isinstance(status, bytes) else str(status).encode()
        block.append((b"grpc-status", value))
    if message is not None:
        block.append((b"grpc-message", message))
    return block


def request_headers(
    path: bytes,
    *,
    method: bytes = b"POST",
    content_type: bytes = b"application/grpc",
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> Headers:
    """Request headers in PROTOCOL-HTTP2.md order, with `extra` appended."""
    return [
        (b":method", method),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"127.0.0.1"),
        (b"te", b"trailers"),
        (b"content-type", content_type),
        *extra,
    ]


def header_names(headers: Headers) -> list[bytes]:
    return [name for name, _ in headers]


def first_value(headers: Headers | None, name: bytes) -> bytes | None:
    for key, value in headers or []:
        if key == name:
            return value
    return None
