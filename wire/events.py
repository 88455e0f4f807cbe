"""gRPC events: what the sans-I/O connection tells the layer above it.

`wire.connection.GrpcConnection.receive_data` turns the peer's bytes into a list of
these. They are past-tense facts about one stream (or the whole connection), already
decoded to gRPC terms: metadata is a `Metadata`, messages are decompressed payloads,
and a finished client call carries its final status. This module only declares the
event types; it owns no state and does no I/O.

Every client stream ends with exactly one `ResponseEnded`. Every server stream ends
either when the server sends its trailers, or with one `RequestAborted`.
"""

from __future__ import annotations

from dataclasses import dataclass

from wire.errors import RpcError
from wire.metadata import Metadata
from wire.status import StatusCode, StatusDetails


class Event:
    """Base class of every gRPC event."""

    __slots__ = ()


# --- server side -------------------------------------------------------------------


@dataclass(slots=True)
class RequestReceived(Event):
    """A client opened a stream with valid gRPC request headers."""

    stream_id: int
    method: str
    metadata: Metadata
    timeout: float | None
    encoding: str | None
    accept_encoding: tuple[str, ...]
    authority: str
    content_type: str


@dataclass(slots=True)
class RequestEnded(Event):
    """The client half-closed its side (END_STREAM) at a message boundary."""

    stream_id: int


@dataclass(slots=True)
class RequestAborted(Event):
    """The server stream cannot go on: the client reset it, the connection went away,
    or the client broke the protocol on it. Any handler for it should be cancelled."""

    stream_id: int
    error: RpcError


# --- client side -------------------------------------------------------------------


@dataclass(slots=True)
class ResponseHeadersReceived(Event):
    """The server sent its response headers (not a Trailers-Only response)."""

    stream_id: int
    metadata: Metadata
    encoding: str | None


@dataclass(slots=True)
class ResponseEnded(Event):
    """A client call is over: its final status and trailing metadata."""

    stream_id: int
    code: StatusCode
    message: str
    details: StatusDetails | None
    trailing_metadata: Metadata

    def to_error(self, initial_metadata: Metadata | None = None) -> RpcError:
        return RpcError(
            self.code,
            self.message,
            details=self.details,
            initial_metadata=initial_metadata,
            trailing_metadata=self.trailing_metadata,
        )


# --- both sides --------------------------------------------------------------------


@dataclass(slots=True)
class MessageReceived(Event):
    """One whole gRPC message arrived (payload already decompressed)."""

    stream_id: int
    payload: bytes
    wire_length: int
    compressed: bool


@dataclass(slots=True)
class WindowOpened(Event):
    """The peer gave send credit (WINDOW_UPDATE or SETTINGS): blocked writers may go on."""


@dataclass(slots=True)
class StreamCapacityChanged(Event):
    """A stream slot may have become free, or the peer changed MAX_CONCURRENT_STREAMS."""


@dataclass(slots=True)
class GoAwayReceived(Event):
    """The peer will accept no new streams; those above `last_stream_id` were not
    processed (their calls have already been ended with UNAVAILABLE)."""

    last_stream_id: int
    error_code: int
    debug_data: bytes


@dataclass(slots=True)
class PingAcknowledged(Event):
    """The peer answered one of our PINGs."""

    data: bytes


@dataclass(slots=True)
class ConnectionFailed(Event):
    """The connection is unusable (peer protocol violation, or the transport said it
    was lost). Every stream has been ended or aborted with events of its own."""

    reason: str
