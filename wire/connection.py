"""The sans-I/O gRPC connection: one owner for an HTTP/2 connection's state.

`GrpcConnection` owns an `h2.connection.H2Connection` and every piece of per-stream
gRPC state (message decoders, negotiated encodings, queued outbound bytes, flow-control
accounting). It takes bytes in (`receive_data`) and gives events (`wire.events`) out;
commands (`start_request`, `send_message`, `send_trailers`, …) only queue bytes, which
`data_to_send` drains. It never touches a socket, a clock it was not given, or trio.

Theory of operation
-------------------
* Requests and responses are HTTP/2 streams (PROTOCOL-HTTP2.md). A client stream goes
  `start_request` → `send_message`* → `end_request`; the server answers
  `send_headers`? → `send_message`* → `send_trailers`. If the server never sent
  headers, `send_trailers` produces a Trailers-Only response.
* Outbound bytes wait in a per-stream queue until the peer's flow-control window lets
  them out; what ends a stream (END_STREAM or trailers) waits behind them. A
  WINDOW_UPDATE drains the queues and yields `WindowOpened`, so a writer blocked on
  `pending_send_bytes` knows to look again.
* Inbound flow control keeps one unread stream from starving the others (grpclib issue
  67): the connection window is credited as bytes arrive; a stream's window is credited
  for bytes of partial messages at once, and for whole messages when the application
  says it consumed them (`acknowledge_message`). So what a stream may hold unread is
  bounded by its window, and the connection never stalls on it.
* Every protocol decision is made here: status from trailers, from HTTP status, or from
  RST_STREAM codes; 415 for a wrong content-type; UNIMPLEMENTED for an unknown request
  encoding; RESOURCE_EXHAUSTED for an oversized message; GOAWAY handling; the keepalive
  ping policy.
* h2 parses what arrives with `wire.frame_buffer.ChunkedFrameBuffer` instead of its own
  buffer, so a DATA payload is copied once between the socket and the message decoder.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from wire import events as ev
from wire.compression import (
    Codec,
    accept_encoding_value,
    check_request_encoding,
    decode_payload,
    get_codec,
    parse_accept_encoding,
)
from wire.errors import ProtocolMisuse, RpcError
from wire.frame_buffer import ChunkedFrameBuffer
from wire.framing import DEFAULT_MAX_RECEIVE_MESSAGE_LENGTH, MessageDecoder, encode_prefix
from wire.metadata import (
    InvalidMetadata,
    InvalidTimeout,
    Metadata,
    decode_binary_value,
    decode_metadata,
    decode_timeout,
    encode_metadata,
    encode_timeout,
)
from wire.status import (
    StatusCode,
    StatusDetails,
    decode_grpc_message,
    encode_grpc_message,
    parse_grpc_status,
    status_from_http_status,
    status_from_rst_stream,
)
from wire.trace import FrameTracer, TraceSink


def _describe_data_frame_body(frame: Any) -> str:
    """What hyperframe's repr shows of a DATA frame's body, from its first bytes only.

    h2 formats every frame it receives for a debug line (`repr(frame)`) even when
    nothing logs it, and hyperframe builds a DATA frame's repr by serialising and
    hex-encoding the whole body, then keeping 20 hex digits: for a 1 MiB message that
    is a megabyte copied and hex-encoded for nothing. This gives the very same text
    from the first 11 bytes of the body.
    """
    pad_length = getattr(frame, "pad_length", 0) or 0
    head = (bytes([pad_length]) if "PADDED" in frame.flags else b"") + bytes(frame.data[:11])
    if len(head) < 11:
        head += b"\0" * min(pad_length, 11 - len(head))
    if not head:
        return "None"
    digits = head.hex()
    return "<hex:" + (digits[:20] + "..." if len(digits) > 20 else digits) + ">"


def _install_cheap_data_frame_repr() -> None:
    data_frame_class = getattr(h2.connection, "DataFrame", None)
    if data_frame_class is not None and hasattr(data_frame_class, "_body_repr"):
        data_frame_class._body_repr = _describe_data_frame_body


_install_cheap_data_frame_repr()

MAX_WINDOW = 2**31 - 1
DEFAULT_STREAM_WINDOW = 4 * 1024 * 1024
DEFAULT_CONNECTION_WINDOW = 16 * 1024 * 1024
DEFAULT_MAX_FRAME_SIZE = 256 * 1024
GOAWAY_DRAIN_STREAM_ID = 2**31 - 1
GRPC_CONTENT_TYPE = b"application/grpc"

_ERR = h2.errors.ErrorCodes


@dataclass(slots=True)
class KeepalivePolicy:
    """gRFC A8 server-side enforcement: pings closer together than `min_time` (while
    calls are active; `idle_min_time` otherwise) earn a strike; more than `max_strikes`
    earn GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings"). Sending HEADERS or DATA forgives."""

    min_time: float = 300.0
    permit_without_calls: bool = False
    idle_min_time: float = 7200.0
    max_strikes: int = 2


@dataclass(slots=True)
class ConnectionConfig:
    """Knobs of one connection. Defaults follow grpc-go where it has one."""

    client_side: bool
    max_receive_message_length: int | None = DEFAULT_MAX_RECEIVE_MESSAGE_LENGTH
    max_send_message_length: int | None = None
    stream_window: int = DEFAULT_STREAM_WINDOW
    connection_window: int = DEFAULT_CONNECTION_WINDOW
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_concurrent_streams: int | None = None  # what we allow the peer to open
    max_header_list_size: int = 16 * 1024
    validate_headers: bool = False  # h2's own header validation (costly; we validate)
    user_agent: str = "grpc-python-cryo/0.1.0"
    keepalive: KeepalivePolicy | None = None  # server side only
    clock: Callable[[], float] = time.monotonic


@dataclass(slots=True, eq=False)
class _Stream:
    """The gRPC state of one HTTP/2 stream. Owned by GrpcConnection alone."""

    stream_id: int
    decoder: MessageDecoder
    recv_encoding: str | None = None
    send_codec: Codec | None = None
    # outbound: bytes waiting for window, then what ends our side
    pending: deque[memoryview] = field(default_factory=deque)
    pending_len: int = 0
    end_after_pending: bool = False  # END_STREAM (client half-close)
    trailers_after_pending: list[tuple[bytes, bytes]] | None = None
    local_closed: bool = False  # END_STREAM sent (or queued and flushed)
    # inbound
    remote_closed: bool = False
    headers_sent: bool = False  # server: response headers sent
    headers_received: bool = False  # client: response headers seen
    finished: bool = False  # the call is over for the layer above
    # flow-control accounting for the stream window (see theory of operation)
    received: int = 0
    credited: int = 0
    unconsumed: int = 0


class GrpcConnection:
    """One HTTP/2 connection carrying gRPC calls, client or server side."""

    def __init__(self, config: ConnectionConfig, *, tracer: TraceSink | None = None) -> None:
        self.config = config
        self.client_side = config.client_side
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=config.client_side,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                validate_inbound_headers=config.validate_headers,
                normalize_inbound_headers=config.validate_headers,
            )
        )
        ChunkedFrameBuffer.install(self._h2)  # each DATA payload copied once on the way in
        self._streams: dict[int, _Stream] = {}
        self._accept_up_to = GOAWAY_DRAIN_STREAM_ID
        frame_table = self._h2._frame_dispatch_table
        for frame_type in list(frame_table):
            if frame_type.__name__ == "GoAwayFrame":
                frame_table[frame_type] = self._receive_goaway_frame
        self._conn_uncredited = 0
        self._goaway_received: ev.GoAwayReceived | None = None
        self._goaway_sent = False
        self._peer_settings_received = False
        self._failed: str | None = None
        self._last_ping_at: float | None = None
        self._ping_strikes = 0
        self._accept_encoding = accept_encoding_value().encode()
        self._user_agent = config.user_agent.encode()
        self._trace = (
            FrameTracer(
                tracer,
                "client" if config.client_side else "server",
                pending_out=self._queued_out_length,
            )
            if (tracer is not None)
            else None
        )

    # -- set-up ---------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the connection preface and our SETTINGS, and open the connection window."""
        self._h2.initiate_connection()
        # Our settings go in a SETTINGS frame of their own and take effect when the
        # peer acknowledges it (RFC 9113 §6.5.3): data the peer sent under the default
        # window, and frames of the default size, stay valid until then. (h2 applies
        # values given to its constructor at once, which breaks both.)
        settings: dict[h2.settings.SettingCodes | int, int] = {
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.config.stream_window,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: self.config.max_frame_size,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.config.max_header_list_size,
        }
        if self.client_side:
            settings[h2.settings.SettingCodes.ENABLE_PUSH] = 0
        if self.config.max_concurrent_streams is not None:
            settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = (
                self.config.max_concurrent_streams
            )
        self._h2.update_settings(settings)
        # Accept frames up to our new size at once. h2 raises its limit when the ACK is
        # processed, but checks frames against the limit it had when the chunk of bytes
        # began: an ACK and a large frame arriving together would be a FRAME_SIZE_ERROR.
        self._h2.max_inbound_frame_size = max(
            self._h2.max_inbound_frame_size, self.config.max_frame_size
        )
        extra = self.config.connection_window - 65535
        if extra > 0:
            self._h2.increment_flow_control_window(extra)

    # -- queries ----------------------------------------------------------------------

    @property
    def is_usable(self) -> bool:
        """True while new streams may be opened on this connection."""
        return self._failed is None and self._goaway_received is None and not self._goaway_sent

    @property
    def failure(self) -> str | None:
        return self._failed

    @property
    def peer_settings_received(self) -> bool:
        """Whether the peer's first SETTINGS frame (its half of the preface) has arrived."""
        return self._peer_settings_received

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def can_open_stream(self) -> bool:
        """Whether the peer's MAX_CONCURRENT_STREAMS leaves room for one more stream."""
        limit = self._h2.remote_settings.max_concurrent_streams
        # Our own table is a cheap upper bound of the streams h2 counts as open (h2
        # walks every stream to count); ask h2 only when that bound is at the limit.
        return len(self._streams) < limit or self._h2.open_outbound_streams < limit

    def pending_send_bytes(self, stream_id: int) -> int:
        """Bytes queued on a stream that the peer's window has not let out yet."""
        stream = self._streams.get(stream_id)
        return stream.pending_len if stream is not None else 0

    def buffered_bytes(self) -> int:
        """How many bytes `data_to_send` would return now."""
        return len(self._h2._data_to_send)

    def has_data_to_send(self) -> bool:
        """Whether `data_to_send` would return anything (without draining it)."""
        return bool(self._h2._data_to_send)

    @property
    def frame_tracer(self) -> FrameTracer | None:
        """The tracer of this connection's frames (None when not tracing)."""
        return self._trace

    def _queued_out_length(self) -> int:
        # How far the next queued byte is from the last drained one: lets a trace
        # attribute each outbound frame to the step that queued it.
        return len(self._h2._data_to_send)

    def data_to_send(self) -> bytes:
        """Drain the bytes that commands and received frames have queued."""
        data = self._h2.data_to_send()
        if data and self._trace is not None:
            self._trace.frames_out(data)
        return data

    # -- client commands ------------------------------------------------------------

    def start_request(
        self,
        path: str,
        *,
        authority: str,
        scheme: str = "http",
        timeout: float | None = None,
        metadata: Metadata | None = None,
        encoding: str | None = None,
        content_type: str = "application/grpc",
    ) -> int:
        """Open a stream and queue the request HEADERS (grpc-go: `NewStream`).

        Header order follows PROTOCOL-HTTP2.md. Returns the new stream id.
        """
        self._check_open()
        codec = None
        if encoding is not None and encoding != "identity":
            codec = get_codec(encoding)
            if codec is None:
                raise ProtocolMisuse(f"unsupported compression {encoding!r}")
        stream_id = self._h2.get_next_available_stream_id()
        headers: list[tuple[bytes, bytes]] = [
            (b":method", b"POST"),
            (b":scheme", scheme.encode()),
            (b":path", path.encode()),
            (b":authority", authority.encode()),
            (b"te", b"trailers"),
        ]
        if timeout is not None:
            headers.append((b"grpc-timeout", encode_timeout(timeout).encode()))
        headers.append((b"content-type", content_type.encode()))
        if codec is not None:
            headers.append((b"grpc-encoding", codec.name.encode()))
        headers.append((b"grpc-accept-encoding", self._accept_encoding))
        headers.append((b"user-agent", self._user_agent))
        if metadata:
            headers.extend(encode_metadata(metadata))
        self._h2.send_headers(stream_id, headers)
        self._streams[stream_id] = _Stream(
            stream_id,
            MessageDecoder(self.config.max_receive_message_length),
            send_codec=codec,
        )
        return stream_id

    def end_request(self, stream_id: int) -> None:
        """Half-close the client side: END_STREAM after whatever is still queued."""
        stream = self._live_stream(stream_id)
        if stream.local_closed or stream.end_after_pending:
            return
        if stream.pending_len:
            stream.end_after_pending = True
        else:
            self._h2.end_stream(stream_id)
            stream.local_closed = True

    def cancel_stream(self, stream_id: int) -> None:
        """The client gives up on a call (cancel or deadline): RST_STREAM(CANCEL).

        The stream is forgotten at once; no `ResponseEnded` follows, because the caller
        already knows how its call ended.
        """
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        stream.finished = True
        self._reset(stream_id, _ERR.CANCEL)

    # -- server commands ------------------------------------------------------------

    def send_headers(
        self,
        stream_id: int,
        metadata: Metadata | None = None,
        *,
        encoding: str | None = None,
    ) -> None:
        """Queue the response HEADERS (`:status 200`, content-type, encodings, metadata)."""
        stream = self._live_stream(stream_id)
        if stream.headers_sent:
            raise ProtocolMisuse("response headers were already sent")
        if encoding is not None and encoding != "identity":
            codec = get_codec(encoding)
            if codec is None:
                raise ProtocolMisuse(f"unsupported compression {encoding!r}")
            stream.send_codec = codec
        headers: list[tuple[bytes, bytes]] = [
            (b":status", b"200"),
            (b"content-type", GRPC_CONTENT_TYPE),
        ]
        if stream.send_codec is not None:
            headers.append((b"grpc-encoding", stream.send_codec.name.encode()))
        headers.append((b"grpc-accept-encoding", self._accept_encoding))
        if metadata:
            headers.extend(encode_metadata(metadata))
        self._h2.send_headers(stream_id, headers)
        stream.headers_sent = True
        self._ping_strikes = 0

    def send_trailers(
        self,
        stream_id: int,
        code: StatusCode,
        message: str = "",
        *,
        details: StatusDetails | None = None,
        metadata: Metadata | None = None,
    ) -> None:
        """End a server stream with its status (grpc-go: `WriteStatus`).

        Without prior headers this is a Trailers-Only response. If the client had not
        half-closed yet, RST_STREAM(NO_ERROR) follows the trailers (PROTOCOL-HTTP2.md).
        """
        stream = self._streams.get(stream_id)
        if stream is None or stream.finished:
            return
        headers: list[tuple[bytes, bytes]] = []
        if not stream.headers_sent:
            headers += [(b":status", b"200"), (b"content-type", GRPC_CONTENT_TYPE)]
            stream.headers_sent = True
        headers.append((b"grpc-status", str(int(code)).encode()))
        if message:
            headers.append((b"grpc-message", encode_grpc_message(message).encode()))
        if details is not None:
            md = Metadata(allow_reserved=True)
            md.add("grpc-status-details-bin", details.to_bytes())
            headers.extend(encode_metadata(md))
        if metadata:
            headers.extend(encode_metadata(metadata))
        stream.finished = True
        if stream.pending_len:
            stream.trailers_after_pending = headers
        else:
            self._send_trailers_now(stream, headers)

    def reset_stream(self, stream_id: int, error_code: int = _ERR.CANCEL) -> None:
        """Server gives up on a stream (e.g. its deadline fired): RST_STREAM."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        stream.finished = True
        self._reset(stream_id, error_code)

    # -- both sides -----------------------------------------------------------------

    def send_message(
        self,
        stream_id: int,
        payload: bytes,
        *,
        compress: bool = True,
        end_stream: bool = False,
    ) -> int:
        """Frame one message (5-byte prefix, grpc-go `encode`/`Write`) and queue it.

        It is compressed with the stream's encoding unless `compress` is False.
        `end_stream` (client only) half-closes after it, on the same DATA frame.
        Returns the number of bytes that wait for flow-control window.
        """
        stream = self._live_stream(stream_id)
        if stream.local_closed or stream.end_after_pending or stream.finished:
            raise ProtocolMisuse("cannot send a message on a stream whose side is closed")
        if not self.client_side and not stream.headers_sent:
            self.send_headers(stream_id)
        limit = self.config.max_send_message_length
        if limit is not None and len(payload) > limit:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"trying to send message larger than max ({len(payload)} vs. {limit})",
            )
        compressed = False
        codec = stream.send_codec
        original = payload
        if compress and codec is not None:
            payload = codec.compress(payload)
            compressed = True
        framed = encode_prefix(len(payload), compressed) + payload
        if self._trace is not None:
            self._trace.message_out(stream_id, len(payload), len(original), compressed)
        self._ping_strikes = 0
        if not stream.pending_len and len(framed) <= self._sendable(stream_id):
            # Fast path: the whole message fits the window and one frame.
            self._h2.send_data(stream_id, framed, end_stream=end_stream)
            if end_stream:
                stream.local_closed = True
            return 0
        stream.pending.append(memoryview(framed))
        stream.pending_len += len(framed)
        if end_stream:
            stream.end_after_pending = True
        self._flush_stream(stream)
        return stream.pending_len

    def acknowledge_message(self, stream_id: int, wire_length: int) -> None:
        """The application consumed a message: give its bytes back to the stream window."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.unconsumed -= wire_length
        self._credit_stream(stream)

    def ping(self, data: bytes) -> None:
        self._h2.ping(data)

    def close(
        self,
        error_code: int = _ERR.NO_ERROR,
        *,
        last_stream_id: int | None = None,
        debug: bytes = b"",
    ) -> None:
        """Queue a GOAWAY. No new streams are accepted or opened afterwards.

        With NO_ERROR, streams up to `last_stream_id` (default: the highest the peer
        opened) go on to completion (RFC 9113 §6.8); with an error code, the
        connection is over and every call ends now.
        """
        if self._failed is not None:
            return
        if last_stream_id is None:
            # Streams refused after an earlier GOAWAY count as opened for h2 but were
            # never processed: a later GOAWAY must not raise last-stream-id (§6.8).
            last_stream_id = min(self._h2.highest_inbound_stream_id, self._accept_up_to)
        self._send_goaway(error_code, last_stream_id, debug)

    def start_graceful_shutdown(self, ping_data: bytes) -> None:
        """First half of the two-GOAWAY drain: GOAWAY(2^31-1) and a PING.

        When the PING is acknowledged, call `finish_graceful_shutdown`: by then every
        stream the client started before seeing the first GOAWAY has reached us.
        """
        self._send_goaway(_ERR.NO_ERROR, GOAWAY_DRAIN_STREAM_ID, b"")
        self._h2.ping(ping_data)

    def finish_graceful_shutdown(self) -> None:
        """Second GOAWAY, naming the highest stream we will process."""
        if self._failed is None:
            self._send_goaway(_ERR.NO_ERROR, self._h2.highest_inbound_stream_id, b"")

    def connection_lost(self, reason: str) -> list[ev.Event]:
        """The transport broke: every call ends (client UNAVAILABLE, server aborted)."""
        if self._failed is not None:
            return []
        return self._fail_all(reason)

    # -- receiving --------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[ev.Event]:
        """Feed bytes from the peer; get the gRPC events they carry."""
        if self._failed is not None:
            return []
        if self._trace is not None:
            self._trace.frames_in(data)
        try:
            h2_events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            code = getattr(exc, "error_code", _ERR.PROTOCOL_ERROR)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.close_connection(code, additional_data=str(exc).encode()[:200])
            return self._fail_all(f"HTTP/2 protocol error from peer: {exc}")
        out: list[ev.Event] = []
        handler = self._handle_client_event if self.client_side else self._handle_server_event
        for event in h2_events:
            handler(event, out)
        return out

    # -- internals: event handling ----------------------------------------------------

    def _handle_common_event(self, event: h2.events.Event, out: list[ev.Event]) -> bool:
        if isinstance(event, h2.events.WindowUpdated):
            self._flush_all()
            out.append(ev.WindowOpened())
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._peer_settings_received = True
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._flush_all()
                out.append(ev.WindowOpened())
            if h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS in event.changed_settings:
                out.append(ev.StreamCapacityChanged())
        elif isinstance(event, h2.events.PingAckReceived):
            out.append(ev.PingAcknowledged(event.ping_data))
        elif isinstance(event, h2.events.PingReceived):
            self._police_ping(out)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._on_goaway(event, out)
        else:
            return False
        return True

    def _handle_client_event(self, event: h2.events.Event, out: list[ev.Event]) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self._on_data(event)
            if stream is not None:
                self._decode_messages(stream, event.data, out)
                if event.stream_ended is not None:
                    self._client_stream_ended(stream, out)
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                if event.stream_ended is not None:
                    stream.remote_closed = True  # Trailers-Only
                self._on_response_headers(stream, event.headers, out)
                if event.stream_ended is not None and not stream.finished:
                    self._finish_from_headers(stream, event.headers, out)
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None and not stream.finished:
                # Trailers end the stream (their StreamEnded event comes next): the
                # call is over on both sides, so nothing is left to reset.
                stream.remote_closed = True
                if not stream.decoder.at_message_boundary():
                    self._end_call(
                        stream,
                        StatusCode.INTERNAL,
                        "server closed the stream in the middle of a message",
                        out,
                    )
                else:
                    self._finish_from_headers(stream, event.headers, out)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                self._client_stream_ended(stream, out)
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None and not stream.finished:
                stream.finished = True
                code = status_from_rst_stream(event.error_code)
                out.append(
                    ev.ResponseEnded(
                        stream.stream_id,
                        code,
                        "stream terminated by RST_STREAM with error code: "
                        + _err_name(event.error_code),
                        None,
                        Metadata(),
                    )
                )
        elif not self._handle_common_event(event, out) and isinstance(
            event, h2.events.InformationalResponseReceived
        ):
            pass

    def _handle_server_event(self, event: h2.events.Event, out: list[ev.Event]) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self._on_data(event)
            if stream is not None and not stream.finished:
                self._decode_messages(stream, event.data, out)
                if event.stream_ended is not None:
                    self._server_request_ended(stream, out)
        elif isinstance(event, h2.events.RequestReceived):
            self._on_request(event, out)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id)
            if stream is not None and not stream.remote_closed:
                self._server_request_ended(stream, out)
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None and not stream.finished:
                stream.finished = True
                code = status_from_rst_stream(event.error_code)
                if event.error_code == _ERR.CANCEL:
                    code = StatusCode.CANCELLED
                out.append(
                    ev.RequestAborted(
                        stream.stream_id,
                        RpcError(code, f"client reset the stream ({_err_name(event.error_code)})"),
                    )
                )
        elif isinstance(event, h2.events.TrailersReceived):
            # Clients have no trailers in gRPC; treat as end of request.
            stream = self._streams.get(event.stream_id)
            if stream is not None and not stream.remote_closed:
                self._server_request_ended(stream, out)
        else:
            self._handle_common_event(event, out)

    # -- server: request headers ------------------------------------------------------

    def _on_request(self, event: h2.events.RequestReceived, out: list[ev.Event]) -> None:
        stream_id = event.stream_id
        if stream_id > self._accept_up_to:
            # After our final GOAWAY: the client learns from it that this stream was
            # not processed, and may retry it elsewhere.
            self._reset(stream_id, _ERR.REFUSED_STREAM)
            return
        method = path = authority = b""
        content_type = b""
        encoding: bytes | None = None
        accept: bytes | None = None
        timeout_raw: bytes | None = None
        for name, value in event.headers:
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-encoding":
                encoding = value
            elif name == b"grpc-accept-encoding":
                accept = value
            elif name == b"grpc-timeout":
                timeout_raw = value
            elif name == b"host" and not authority:
                authority = value
        stream = _Stream(stream_id, MessageDecoder(self.config.max_receive_message_length))
        self._streams[stream_id] = stream
        if event.stream_ended is not None:
            stream.remote_closed = True
        if not _is_grpc_content_type(content_type):
            self._reject_http(stream, 415, f"invalid gRPC request content-type {content_type!r}")
            return
        if method != b"POST":
            self._reject_http(stream, 405, f"invalid gRPC request method {method!r}")
            return
        if not path.startswith(b"/"):
            self._reject_status(
                stream, StatusCode.UNIMPLEMENTED, f"malformed method name: {path!r}"
            )
            return
        timeout: float | None = None
        try:
            if timeout_raw is not None:
                timeout = decode_timeout(timeout_raw)
            metadata = decode_metadata(event.headers)
        except (InvalidTimeout, InvalidMetadata) as exc:
            self._reject_status(stream, StatusCode.INTERNAL, str(exc))
            return
        enc = encoding.decode("ascii", "replace") if encoding is not None else None
        try:
            check_request_encoding(enc)
        except RpcError as exc:
            self._reject_status(stream, exc.code, exc.message)
            return
        stream.recv_encoding = enc
        out.append(
            ev.RequestReceived(
                stream_id,
                path.decode("utf-8", "replace"),
                metadata,
                timeout,
                enc,
                parse_accept_encoding(accept),
                authority.decode("utf-8", "replace"),
                content_type.decode("ascii", "replace"),
            )
        )
        if stream.remote_closed:
            out.append(ev.RequestEnded(stream_id))

    def _reject_http(self, stream: _Stream, http_status: int, message: str) -> None:
        headers = [
            (b":status", str(http_status).encode()),
            (b"content-type", b"text/plain; charset=utf-8"),
        ]
        if http_status == 415:
            headers.append((b"grpc-status", str(int(StatusCode.INTERNAL)).encode()))
            headers.append((b"grpc-message", encode_grpc_message(message).encode()))
        stream.finished = True
        stream.headers_sent = True
        self._h2.send_headers(stream.stream_id, headers, end_stream=True)
        self._after_local_end(stream)

    def _reject_status(self, stream: _Stream, code: StatusCode, message: str) -> None:
        headers = [
            (b":status", b"200"),
            (b"content-type", GRPC_CONTENT_TYPE),
            (b"grpc-status", str(int(code)).encode()),
            (b"grpc-message", encode_grpc_message(message).encode()),
        ]
        if code == StatusCode.UNIMPLEMENTED:
            headers.append((b"grpc-accept-encoding", self._accept_encoding))
        stream.finished = True
        stream.headers_sent = True
        self._h2.send_headers(stream.stream_id, headers, end_stream=True)
        self._after_local_end(stream)

    def _server_request_ended(self, stream: _Stream, out: list[ev.Event]) -> None:
        stream.remote_closed = True
        if stream.finished:
            self._forget_if_done(stream)
            return
        if not stream.decoder.at_message_boundary():
            self._abort_server_stream(
                stream, RpcError(StatusCode.INTERNAL, "client ended the stream mid-message"), out
            )
            return
        out.append(ev.RequestEnded(stream.stream_id))

    def _abort_server_stream(self, stream: _Stream, error: RpcError, out: list[ev.Event]) -> None:
        """A request broke the protocol: tell the client, and cancel the handler."""
        self.send_trailers(stream.stream_id, error.code, error.message)
        stream.pending.clear()
        stream.pending_len = 0
        if stream.trailers_after_pending is not None:
            self._send_trailers_now(stream, stream.trailers_after_pending)
        out.append(ev.RequestAborted(stream.stream_id, error))

    # -- client: response headers and status --------------------------------------------

    def _on_response_headers(
        self, stream: _Stream, headers: list[tuple[bytes, bytes]], out: list[ev.Event]
    ) -> None:
        stream.headers_received = True
        http_status = 0
        content_type = b""
        encoding: bytes | None = None
        for name, value in headers:
            if name == b":status":
                http_status = int(value) if value.isdigit() else 0
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-encoding":
                encoding = value
        if any(name == b"grpc-status" for name, _ in headers):
            return  # Trailers-Only: _finish_from_headers handles it
        if http_status != 200 or not _is_grpc_content_type(content_type):
            code = status_from_http_status(http_status)
            why = (
                f"unexpected HTTP status code received from server: {http_status}"
                if http_status != 200
                else f"unexpected content-type {content_type.decode('ascii', 'replace')!r}"
            )
            self._end_call(stream, code, why, out)
            self._reset(stream.stream_id, _ERR.CANCEL)
            return
        try:
            metadata = decode_metadata(headers)
        except InvalidMetadata as exc:
            self._end_call(stream, StatusCode.INTERNAL, f"bad response metadata: {exc}", out)
            self._reset(stream.stream_id, _ERR.CANCEL)
            return
        enc = encoding.decode("ascii", "replace") if encoding is not None else None
        stream.recv_encoding = enc
        out.append(ev.ResponseHeadersReceived(stream.stream_id, metadata, enc))

    def _finish_from_headers(
        self, stream: _Stream, headers: list[tuple[bytes, bytes]], out: list[ev.Event]
    ) -> None:
        """Turn trailers (or a Trailers-Only response) into the call's final status."""
        status_raw: bytes | None = None
        message = ""
        details: StatusDetails | None = None
        http_status: int | None = None
        for name, value in headers:
            if name == b"grpc-status":
                status_raw = value
            elif name == b"grpc-message":
                message = decode_grpc_message(value)
            elif name == b":status":
                http_status = int(value) if value.isdigit() else 0
        if status_raw is None:
            if http_status is not None and http_status != 200:
                code = status_from_http_status(http_status)
                message = f"unexpected HTTP status code received from server: {http_status}"
            elif http_status is not None:
                code = StatusCode.UNKNOWN
                message = "server sent a response with no grpc-status"
            else:
                code = StatusCode.INTERNAL
                message = "server sent trailers with no grpc-status"
            self._end_call(stream, code, message, out)
            return
        try:
            code = parse_grpc_status(status_raw)
        except ValueError:
            self._end_call(
                stream, StatusCode.INTERNAL, f"malformed grpc-status {status_raw!r}", out
            )
            return
        try:
            trailing = decode_metadata(headers)
        except InvalidMetadata as exc:
            self._end_call(stream, StatusCode.INTERNAL, f"bad trailing metadata: {exc}", out)
            return
        for name, value in headers:
            if name == b"grpc-status-details-bin":
                try:
                    details = StatusDetails.from_bytes(decode_binary_value(value, "details"))
                except ValueError:  # InvalidMetadata too: bad details never hide the status
                    details = None
        self._end_call(stream, code, message, out, details=details, trailing=trailing)

    def _client_stream_ended(self, stream: _Stream, out: list[ev.Event]) -> None:
        stream.remote_closed = True
        if not stream.finished:
            self._end_call(
                stream,
                StatusCode.INTERNAL,
                "server closed the stream without sending trailers",
                out,
            )
        self._forget_if_done(stream)

    def _end_call(
        self,
        stream: _Stream,
        code: StatusCode,
        message: str,
        out: list[ev.Event],
        *,
        details: StatusDetails | None = None,
        trailing: Metadata | None = None,
    ) -> None:
        if stream.finished:
            return
        stream.finished = True
        out.append(
            ev.ResponseEnded(
                stream.stream_id,
                code,
                message,
                details,
                trailing if trailing is not None else Metadata(),
            )
        )
        if not stream.remote_closed:
            # We end the call before the server did (a local decision): stop the stream.
            self._reset(stream.stream_id, _ERR.CANCEL)
            self._streams.pop(stream.stream_id, None)
        else:
            self._forget_if_done(stream)

    # -- data, messages, flow control --------------------------------------------------

    def _on_data(self, event: h2.events.DataReceived) -> _Stream | None:
        n = event.flow_controlled_length
        self._conn_uncredited += n
        if self._conn_uncredited >= self.config.connection_window // 4:
            self._h2.increment_flow_control_window(self._conn_uncredited)
            self._conn_uncredited = 0
        stream = self._streams.get(event.stream_id)
        if stream is None:
            return None
        # Padding is never delivered: count it as received and consumed.
        stream.received += n
        return stream

    def _decode_messages(self, stream: _Stream, data: bytes, out: list[ev.Event]) -> None:
        try:
            messages = stream.decoder.feed(data)
            for message in messages:
                payload = decode_payload(
                    message, stream.recv_encoding, self.config.max_receive_message_length
                )
                wire_length = len(message.payload) + 5
                stream.unconsumed += wire_length
                if self._trace is not None:
                    self._trace.message_in(
                        stream.stream_id, len(message.payload), len(payload), message.compressed
                    )
                out.append(
                    ev.MessageReceived(stream.stream_id, payload, wire_length, message.compressed)
                )
        except RpcError as exc:
            if self.client_side:
                self._end_call(stream, exc.code, exc.message, out)
            else:
                self._abort_server_stream(stream, exc, out)
            return
        self._credit_stream(stream)

    def _credit_stream(self, stream: _Stream) -> None:
        """Credit what the stream holds neither as unread messages nor ever will."""
        owed = stream.received - stream.unconsumed - stream.credited
        if owed <= 0 or owed < self.config.stream_window // 4:
            return
        if stream.remote_closed or stream.finished:
            stream.credited += owed
            return
        with contextlib.suppress(
            h2.exceptions.StreamClosedError, KeyError, h2.exceptions.ProtocolError
        ):
            self._h2.increment_flow_control_window(owed, stream.stream_id)
        stream.credited += owed

    def _sendable(self, stream_id: int) -> int:
        try:
            window = self._h2.local_flow_control_window(stream_id)
        except (h2.exceptions.StreamClosedError, KeyError):
            return 0
        return min(window, self._h2.max_outbound_frame_size)

    def _flush_stream(self, stream: _Stream) -> None:
        sid = stream.stream_id
        while stream.pending:
            room = self._sendable(sid)
            if room <= 0:
                return
            head = stream.pending[0]
            if len(head) <= room:
                stream.pending.popleft()
                chunk = head
            else:
                chunk = head[:room]
                stream.pending[0] = head[room:]
            stream.pending_len -= len(chunk)
            last = not stream.pending and stream.end_after_pending
            self._h2.send_data(sid, chunk.tobytes(), end_stream=last)
            if last:
                stream.local_closed = True
        if stream.end_after_pending and not stream.local_closed:
            self._h2.end_stream(sid)
            stream.local_closed = True
        if stream.trailers_after_pending is not None:
            headers, stream.trailers_after_pending = stream.trailers_after_pending, None
            self._send_trailers_now(stream, headers)

    def _flush_all(self) -> None:
        for stream in list(self._streams.values()):
            if stream.pending or stream.trailers_after_pending is not None:
                self._flush_stream(stream)

    def _send_trailers_now(self, stream: _Stream, headers: list[tuple[bytes, bytes]]) -> None:
        try:
            self._h2.send_headers(stream.stream_id, headers, end_stream=True)
        except h2.exceptions.StreamClosedError:
            self._streams.pop(stream.stream_id, None)
            return
        self._ping_strikes = 0
        self._after_local_end(stream)

    def _after_local_end(self, stream: _Stream) -> None:
        stream.local_closed = True
        if not stream.remote_closed:
            self._reset(stream.stream_id, _ERR.NO_ERROR)
            self._streams.pop(stream.stream_id, None)
        else:
            self._forget_if_done(stream)

    def _forget_if_done(self, stream: _Stream) -> None:
        if stream.finished and (stream.local_closed or self.client_side) and stream.remote_closed:
            self._streams.pop(stream.stream_id, None)

    def _send_goaway(self, error_code: int, last_stream_id: int, debug: bytes) -> None:
        self._goaway_sent = True
        self._accept_up_to = min(self._accept_up_to, last_stream_id)
        state_before = self._h2.state_machine.state
        self._h2.close_connection(error_code, additional_data=debug, last_stream_id=last_stream_id)
        if error_code == _ERR.NO_ERROR:
            # h2 treats any GOAWAY as the end of the connection and would refuse every
            # later frame; RFC 9113 §6.8 lets the streams already accepted finish.
            self._h2.state_machine.state = state_before

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[h2.events.Event]]:
        """Stands in for h2's GOAWAY handling, which closes the whole connection and
        drops queued bytes; here the streams at or below last-stream-id go on."""
        event = h2.events.ConnectionTerminated()
        try:
            event.error_code = h2.errors.ErrorCodes(frame.error_code)
        except ValueError:
            event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        if frame.error_code != _ERR.NO_ERROR:
            self._h2.state_machine.process_input(h2.connection.ConnectionInputs.RECV_GOAWAY)
        return [], [event]

    def _reset(self, stream_id: int, error_code: int) -> None:
        with contextlib.suppress(
            h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError
        ):
            self._h2.reset_stream(stream_id, error_code)

    # -- connection-level ---------------------------------------------------------------

    def _on_goaway(self, event: h2.events.ConnectionTerminated, out: list[ev.Event]) -> None:
        last = event.last_stream_id if event.last_stream_id is not None else 0
        error_code = int(event.error_code) if event.error_code is not None else 0
        goaway = ev.GoAwayReceived(last, error_code, event.additional_data or b"")
        self._goaway_received = goaway
        if self.client_side:
            for stream in list(self._streams.values()):
                if stream.stream_id > last and not stream.finished:
                    stream.finished = True
                    self._streams.pop(stream.stream_id, None)
                    out.append(
                        ev.ResponseEnded(
                            stream.stream_id,
                            StatusCode.UNAVAILABLE,
                            "the connection is draining (GOAWAY); the call was not processed",
                            None,
                            Metadata(),
                        )
                    )
        out.append(goaway)
        if error_code != _ERR.NO_ERROR:
            # A GOAWAY with an error closes the connection: streams at or below
            # last-stream-id will never complete either.
            out.extend(
                self._fail_all(
                    f"connection closed by peer with GOAWAY ({_err_name(error_code)})"
                    + (
                        f": {event.additional_data.decode('utf-8', 'replace')}"
                        if event.additional_data
                        else ""
                    )
                )
            )

    def _police_ping(self, out: list[ev.Event]) -> None:
        policy = self.config.keepalive
        if policy is None or self.client_side:
            return
        now = self.config.clock()
        interval = (
            policy.min_time
            if (self._streams or policy.permit_without_calls)
            else (policy.idle_min_time)
        )
        if self._last_ping_at is not None and now - self._last_ping_at < interval:
            self._ping_strikes += 1
            if self._ping_strikes > policy.max_strikes:
                self._send_goaway(
                    _ERR.ENHANCE_YOUR_CALM, self._h2.highest_inbound_stream_id, b"too_many_pings"
                )
                out.extend(self._fail_all("too many pings from the client (GOAWAY sent)"))
                return
        self._last_ping_at = now

    def _fail_all(self, reason: str) -> list[ev.Event]:
        self._failed = reason
        out: list[ev.Event] = []
        for stream in list(self._streams.values()):
            if stream.finished and self.client_side:
                continue
            if self.client_side:
                out.append(
                    ev.ResponseEnded(
                        stream.stream_id, StatusCode.UNAVAILABLE, reason, None, Metadata()
                    )
                )
            else:
                out.append(
                    ev.RequestAborted(stream.stream_id, RpcError(StatusCode.UNAVAILABLE, reason))
                )
            stream.finished = True
        self._streams.clear()
        out.append(ev.ConnectionFailed(reason))
        return out

    def _live_stream(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise ProtocolMisuse(f"stream {stream_id} is not open")
        return stream

    def _check_open(self) -> None:
        if self._failed is not None:
            raise ProtocolMisuse(f"the connection has failed: {self._failed}")
        if self._goaway_received is not None or self._goaway_sent:
            raise ProtocolMisuse("the connection is closing (GOAWAY)")


def _is_grpc_content_type(value: bytes) -> bool:
    return value == GRPC_CONTENT_TYPE or (
        value.startswith(GRPC_CONTENT_TYPE) and value[16:17] in (b"+", b";")
    )


def _err_name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return str(code)
