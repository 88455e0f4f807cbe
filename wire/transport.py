"""The trio transport: one HTTP/2 connection over one `trio.abc.Stream`.

`Transport` owns the byte stream, one reader task, and one writer task, and it is
the only code that moves bytes between the socket and the sans-I/O `GrpcConnection`.
It keeps the trio-side view of each stream (`StreamState`: received messages waiting
for the application, the final status, parking lots for waiters). It makes no
protocol decisions: those are the connection's.

Writing: commands only queue bytes in the connection, then call `kick`, which never
blocks. On a plain socket (TCP or unix) `kick` hands the bytes to the kernel at once
with one non-blocking `send`; whatever the kernel does not take, and everything on
other streams (TLS), goes to the writer task. A call task that is cancelled (a
deadline) therefore never abandons a half-written frame, which would corrupt the
connection for every other call (the rule trio-websocket follows), and a unary call
is one write on each side with no task switch for it.

Reading: one reader task. On a plain socket it calls `recv` directly and waits with
`trio.lowlevel.wait_readable` only when nothing is there, instead of paying for
`SocketStream.receive_some`'s yield on every read; it still yields every few reads
so that a flood of bytes cannot starve other tasks.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from wire import events as ev
from wire.connection import GrpcConnection
from wire.errors import RpcError
from wire.metadata import Metadata
from wire.status import StatusCode

log = logging.getLogger("wire.transport")

RECEIVE_SIZE = 256 * 1024
# Reads in a row without waiting before the reader yields anyway (fairness).
READS_BEFORE_YIELD = 16
# Queued bytes at which a sender stops batching and writes at once.
FLUSH_THRESHOLD = 64 * 1024


def os_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The OS socket under a plain trio `SocketStream`, or None (TLS, memory streams).

    trio keeps it in a private attribute; if that ever changes, cryo falls back to the
    stream's own async methods and only loses speed.
    """
    if type(stream) is trio.SocketStream:
        inner = getattr(stream.socket, "_sock", None)
        if isinstance(inner, socket.socket):
            return inner
    return None


@dataclass(eq=False)
class StreamState:
    """What the trio side knows of one stream; one per stream, owned by its Transport."""

    stream_id: int
    messages: deque[ev.MessageReceived] = field(default_factory=deque)
    lot: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)
    # client side
    headers: ev.ResponseHeadersReceived | None = None
    ended: ev.ResponseEnded | None = None
    # server side
    request_ended: bool = False
    aborted: RpcError | None = None
    on_abort: Callable[[RpcError], None] | None = None


class Transport:
    """A live HTTP/2 connection: reader and writer tasks, and the streams on it."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        connection: GrpcConnection,
        *,
        peer: str,
        on_request: Callable[[Transport, ev.RequestReceived], None] | None = None,
    ) -> None:
        self.stream = stream
        self.connection = connection
        self.peer = peer
        self.streams: dict[int, StreamState] = {}
        self._on_request = on_request
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._flushed_lot = trio.lowlevel.ParkingLot()
        self._idle_lot = trio.lowlevel.ParkingLot()
        self._window_lot = trio.lowlevel.ParkingLot()
        self._capacity_lot = trio.lowlevel.ParkingLot()
        self._ping_waiters: dict[bytes, trio.Event] = {}
        self.closed = False
        self.close_reason: str | None = None
        self.goaway: ev.GoAwayReceived | None = None
        self._cancel_scope: trio.CancelScope | None = None
        self.nursery: trio.Nursery | None = None
        self.ended = trio.Event()  # set once the connection is closed, for any reason
        # Set when the connection should close as soon as everything queued has left.
        self._close_when_flushed: str | None = None
        # Bytes taken from the connection that have not all reached the kernel yet.
        # While set, only the writer task sends (so bytes never overtake each other).
        self._unsent: memoryview | None = None
        self._sock = os_socket(stream)
        # Set once the peer's SETTINGS arrived (or the connection ended before them).
        self.peer_settings = trio.Event()

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the reader and writer until the connection ends; owns their nursery."""
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self._cancel_scope = nursery.cancel_scope
                self.connection.initiate()
                nursery.start_soon(self._writer)
                nursery.start_soon(self._reader)
                task_status.started()
        finally:
            self._lost(self.close_reason or "transport closed")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)

    def abort(self, reason: str) -> None:
        """Stop the connection now (no goodbye). Every open call fails."""
        if self.close_reason is None:
            self.close_reason = reason
        self._lost(reason)
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    def kick(self) -> None:
        """Send what the connection has queued, or leave it to the writer. Never blocks."""
        sock = self._sock
        if sock is not None and self._unsent is None and not self.closed:
            data = self.connection.data_to_send()
            if data:
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    sent = 0  # the writer meets the same error and ends the connection
                if sent < len(data):
                    self._unsent = memoryview(data)[sent:]
            if self._unsent is None and self._close_when_flushed is None:
                if self._flushed_lot:
                    self._flushed_lot.unpark_all()
                return
        self._writer_lot.unpark_all()

    async def after_queue(self) -> None:
        """A message was queued: batch it with what follows, within limits.

        Streaming senders call this after each message. Below `FLUSH_THRESHOLD` the
        bytes wait for the writer task, which runs when the sender next blocks, so a
        burst of small messages leaves in one write; at the threshold they go now and
        the sender yields. If the kernel refused earlier bytes, the sender waits for
        the writer to drain them: that is the backpressure that bounds the buffer.
        """
        if self._unsent is not None:
            self._writer_lot.unpark_all()
            await self.wait_flushed()
        elif self.connection.buffered_bytes() >= FLUSH_THRESHOLD:
            self.kick()
            await trio.lowlevel.checkpoint()
        else:
            self._writer_lot.unpark_all()
            await trio.lowlevel.checkpoint_if_cancelled()

    @property
    def usable(self) -> bool:
        return not self.closed and self.connection.is_usable

    # -- stream bookkeeping -----------------------------------------------------------

    def open_state(self, stream_id: int) -> StreamState:
        state = StreamState(stream_id)
        self.streams[stream_id] = state
        return state

    def release(self, stream_id: int) -> None:
        """The application is done with a stream: forget it, let a queued stream start."""
        if self.streams.pop(stream_id, None) is not None:
            self._capacity_lot.unpark_all()
        if not self.streams:
            self._idle_lot.unpark_all()
        if not self.streams and not self.closed and not self.connection.is_usable:
            # Draining after GOAWAY and nothing left to finish: close, but only after
            # the writer has sent what is queued (the last trailers, a GOAWAY); aborting
            # here would drop those bytes.
            self._close_when_flushed = "connection drained"
            self.kick()

    def cancel_stream(self, state: StreamState) -> None:
        """A client gives up on a call it has not seen end: RST_STREAM(CANCEL), now."""
        self.connection.cancel_stream(state.stream_id)
        self.kick()

    def let_go(self, state: StreamState) -> None:
        """A client is done with a stream: cancel it if it still runs, then release it."""
        if state.ended is None:
            self.cancel_stream(state)
        self.release(state.stream_id)

    async def wait_for_capacity(self) -> None:
        """Wait until the peer's MAX_CONCURRENT_STREAMS lets one more stream open."""
        while not self.connection.can_open_stream():
            if self.closed or not self.connection.is_usable:
                return
            await self._capacity_lot.park()

    async def wait_writable(self, state: StreamState) -> None:
        """Block while the stream's bytes wait for the peer's flow-control window."""
        conn = self.connection
        self.kick()  # what the window allows must be out before we wait for more
        while conn.pending_send_bytes(state.stream_id) > 0:
            if self.closed or state.ended is not None or state.aborted is not None:
                return
            await self._window_lot.park()

    async def wait_flushed(self) -> None:
        """Wait until the writer has handed every queued byte to the stream."""
        # `_unsent`: bytes already drained from the connection may still be on their
        # way into the stream; they are not flushed until the kernel took them all.
        while (self.connection.has_data_to_send() or self._unsent is not None) and not self.closed:
            self.kick()
            await self._flushed_lot.park()

    async def wait_idle(self) -> None:
        """Wait until no stream is in use on this connection."""
        while self.streams and not self.closed:
            await self._idle_lot.park()

    async def ping(self, data: bytes) -> None:
        """Send a PING and wait for its ACK."""
        self.connection.ping(data)
        await self.wait_ping_ack(data)

    async def wait_ping_ack(self, data: bytes) -> None:
        """Wait for the ACK of a PING with this payload (already queued or sent)."""
        done = self._ping_waiters.setdefault(data, trio.Event())
        self.kick()
        await done.wait()

    # -- tasks --------------------------------------------------------------------------

    async def keepalive(self, interval: float, timeout: float, permit_without_calls: bool) -> None:
        """Client keepalive (gRFC A8): PING after `interval` of quiet, and give the
        connection up if the ACK takes longer than `timeout`. Without calls in flight
        it stays silent unless `permit_without_calls`."""
        sent = 0
        while not self.closed:
            await trio.sleep(interval)
            if not self.streams and not permit_without_calls:
                continue
            sent += 1
            data = b"ka%06d" % (sent % 1_000_000)
            self.connection.ping(data)
            with trio.move_on_after(timeout):
                await self.wait_ping_ack(data)
                continue
            self.abort(f"keepalive ping not answered within {timeout} s")
            return

    async def _writer(self) -> None:
        conn = self.connection
        try:
            while True:
                if self._unsent is None:
                    data = conn.data_to_send()
                    if data:
                        self._unsent = memoryview(data)
                if self._unsent is not None:
                    await self._send_unsent()
                    if not conn.has_data_to_send():
                        self._flushed_lot.unpark_all()
                    continue
                if conn.failure is not None or self.closed:
                    break
                if self._close_when_flushed is not None:
                    self.abort(self._close_when_flushed)
                    break
                await self._writer_lot.park()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.abort(f"connection lost while writing: {exc}")

    async def _send_unsent(self) -> None:
        """Get `_unsent` into the kernel, waiting for room as needed; then clear it."""
        unsent = self._unsent
        assert unsent is not None
        sock = self._sock
        if sock is None:
            await self.stream.send_all(unsent)
        else:
            while unsent:
                try:
                    unsent = unsent[sock.send(unsent) :]
                except BlockingIOError:
                    self._unsent = unsent
                    await trio.lowlevel.wait_writable(sock)
        self._unsent = None

    async def _receive(self) -> bytes:
        sock = self._sock
        if sock is None:
            return bytes(await self.stream.receive_some(RECEIVE_SIZE))
        while True:
            try:
                return sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)

    async def _reader(self) -> None:
        conn = self.connection
        reason = "connection closed by peer"
        reads = 0
        try:
            while True:
                data = await self._receive()
                if not data:
                    break
                events = conn.receive_data(data)
                if events:
                    self._dispatch(events)
                if conn.peer_settings_received:
                    self.peer_settings.set()
                if conn.has_data_to_send():
                    self.kick()
                if conn.failure is not None:
                    reason = conn.failure
                    # Give the writer a moment to flush our GOAWAY, then end.
                    with trio.move_on_after(1):
                        await self.wait_flushed()
                    break
                reads += 1
                if reads >= READS_BEFORE_YIELD:
                    reads = 0
                    await trio.lowlevel.checkpoint()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            reason = f"connection lost: {exc}"
        self.abort(reason)

    # -- dispatch -----------------------------------------------------------------------

    def _dispatch(self, events: list[ev.Event]) -> None:
        streams = self.streams
        for event in events:
            if isinstance(event, ev.MessageReceived):
                state = streams.get(event.stream_id)
                if state is not None:
                    state.messages.append(event)
                    state.lot.unpark_all()
            elif isinstance(event, ev.ResponseEnded):
                state = streams.get(event.stream_id)
                if state is not None:
                    state.ended = event
                    state.lot.unpark_all()
                self._capacity_lot.unpark_all()
                self._window_lot.unpark_all()
            elif isinstance(event, ev.ResponseHeadersReceived):
                state = streams.get(event.stream_id)
                if state is not None:
                    state.headers = event
                    state.lot.unpark_all()
            elif isinstance(event, ev.RequestReceived):
                if self._on_request is not None:
                    self._on_request(self, event)
            elif isinstance(event, ev.RequestEnded):
                state = streams.get(event.stream_id)
                if state is not None:
                    state.request_ended = True
                    state.lot.unpark_all()
            elif isinstance(event, ev.RequestAborted):
                self._abort_stream(event.stream_id, event.error)
            elif isinstance(event, ev.WindowOpened):
                self._window_lot.unpark_all()
            elif isinstance(event, ev.StreamCapacityChanged):
                self._capacity_lot.unpark_all()
            elif isinstance(event, ev.PingAcknowledged):
                waiter = self._ping_waiters.pop(event.data, None)
                if waiter is not None:
                    waiter.set()
            elif isinstance(event, ev.GoAwayReceived):
                self.goaway = event
                self._capacity_lot.unpark_all()
            elif isinstance(event, ev.ConnectionFailed):
                self.close_reason = event.reason

    def _abort_stream(self, stream_id: int, error: RpcError) -> None:
        state = self.streams.get(stream_id)
        if state is None:
            return
        state.aborted = error
        state.lot.unpark_all()
        if state.on_abort is not None:
            state.on_abort(error)

    def _lost(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._dispatch(self.connection.connection_lost(reason))
        for state in list(self.streams.values()):
            if state.ended is None and state.aborted is None:
                if self.connection.client_side:
                    state.ended = ev.ResponseEnded(
                        state.stream_id, StatusCode.UNAVAILABLE, reason, None, Metadata()
                    )
                    state.lot.unpark_all()
                else:
                    self._abort_stream(state.stream_id, RpcError(StatusCode.UNAVAILABLE, reason))
        self._window_lot.unpark_all()
        self._capacity_lot.unpark_all()
        self._writer_lot.unpark_all()
        self._flushed_lot.unpark_all()
        self._idle_lot.unpark_all()
        for waiter in self._ping_waiters.values():
            waiter.set()
        self.peer_settings.set()
        self.ended.set()
