"""The exceptions that ``wire`` shows to the programs that use it.

This module owns exactly two types: :class:`RpcError`, the one error a failed
call raises on the client and the one a server handler raises to send a
status; and :class:`ProtocolMisuse`, raised when the local program uses the
API wrongly. Transport failures are mapped to :class:`RpcError` at the layer
boundary that sees them, never here.

It must not import ``trio`` or anything that does I/O, and must not format
tracebacks or paths into messages that may travel to a peer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wire.status import StatusCode, StatusDetails

if TYPE_CHECKING:
    from wire.metadata import Metadata


class RpcError(Exception):
    """A call ended with a status other than OK.

    On the client, every failed call raises this, whether the status came
    from the server's trailers or was decided locally (deadline, cancellation,
    lost connection). On the server, a handler raises it (or
    ``context.abort`` does) to end the call with *code* and *message*.
    """

    code: StatusCode
    message: str
    details: StatusDetails | None
    initial_metadata: Metadata | None
    trailing_metadata: Metadata | None

    def __init__(
        self,
        code: StatusCode,
        message: str = "",
        *,
        details: StatusDetails | None = None,
        initial_metadata: Metadata | None = None,
        trailing_metadata: Metadata | None = None,
    ) -> None:
        # Passing both to Exception keeps `args` meaningful for pickling and logging.
        super().__init__(code, message)
        # An int from a caller becomes the enum; an unknown number is a programming error.
        self.code = StatusCode(code)
        self.message = message
        self.details = details
        self.initial_metadata = initial_metadata
        self.trailing_metadata = trailing_metadata

    def __str__(self) -> str:
        if self.message:
            return f"{self.code.name}: {self.message}"
        return self.code.name

    def __repr__(self) -> str:
        parts = [f"StatusCode.{self.code.name}", repr(self.message)]
        if self.details is not None:
            parts.append(f"details={self.details!r}")
        if self.initial_metadata is not None:
            parts.append(f"initial_metadata={self.initial_metadata!r}")
        if self.trailing_metadata is not None:
            parts.append(f"trailing_metadata={self.trailing_metadata!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


class ProtocolMisuse(Exception):
    """The local program used the API in a way the protocol does not allow.

    Examples: sending on a stream it already closed, or sending a message
    after the trailers. This is a bug in the caller, not something the peer
    did, so it is never turned into a status sent over the wire.
    """
