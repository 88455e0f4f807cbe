"""The gRPC message framing: a 5-byte prefix (flag, big-endian length) before each message.

This module owns encoding that prefix and :class:`MessageDecoder`, which
reassembles messages from DATA payloads whatever their chunk boundaries, and
enforces the receive size limit from the prefix alone, before any of the
payload is buffered.

It must not decompress (see ``wire.compression``), parse protobuf, or know
about streams, flow control or ``trio``: it is fed bytes and returns messages.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wire.errors import RpcError
from wire.status import StatusCode

PREFIX_LENGTH = 5
DEFAULT_MAX_RECEIVE_MESSAGE_LENGTH = 4 * 1024 * 1024

_PREFIX = struct.Struct(">BI")
_MAX_WIRE_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One framed message as it arrived.

    *payload* is still compressed when *compressed* is true; its length is the
    length that was on the wire.
    """

    payload: bytes
    compressed: bool


def encode_prefix(length: int, compressed: bool) -> bytes:
    """The 5-byte prefix for a message of *length* bytes."""
    if length < 0:
        raise ValueError(f"message length cannot be negative: {length}")
    if length > _MAX_WIRE_LENGTH:
        # The prefix has 32 bits for the length; grpc-go's encode fails the same way.
        raise RpcError(StatusCode.RESOURCE_EXHAUSTED, f"message too large ({length} bytes)")
    return _PREFIX.pack(1 if compressed else 0, length)


def encode_message(payload: bytes, compressed: bool) -> bytes:
    """*payload* with its prefix, ready to go into DATA frames."""
    return encode_prefix(len(payload), compressed) + payload


class MessageDecoder:
    """Turns a stream's DATA payloads back into messages.

    ``feed`` may be called with chunks of any size; a prefix or a payload may
    be split across any number of them. Errors are raised as :class:`RpcError`
    with the status the stream must fail with, and are sticky: once the stream
    is known to be broken, every later ``feed`` raises the same error.
    Messages that completed earlier in the chunk that raised are not returned;
    the stream fails as a whole.
    """

    __slots__ = (
        "_error",
        "_max_message_length",
        "_partial_prefix",
        "_payload_compressed",
        "_payload_length",
        "_payload_parts",
        "_payload_received",
    )

    def __init__(self, max_message_length: int | None = DEFAULT_MAX_RECEIVE_MESSAGE_LENGTH) -> None:
        self._max_message_length = max_message_length
        # Bytes of a prefix that arrived without the rest of it.
        self._partial_prefix = bytearray()
        # The message whose payload is being collected; length 0 means none.
        self._payload_length = 0
        self._payload_compressed = False
        self._payload_parts: list[bytes] = []
        self._payload_received = 0
        self._error: RpcError | None = None

    @property
    def max_message_length(self) -> int | None:
        """The largest payload accepted, as counted on the wire; None for no limit."""
        return self._max_message_length

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for a message not yet complete (prefix bytes included)."""
        return len(self._partial_prefix) + self._payload_received

    def at_message_boundary(self) -> bool:
        """True when no partial message is held, so the stream may end here."""
        return not self._partial_prefix and self._payload_length == 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[ReceivedMessage]:
        """Take the next chunk of the stream and return the messages it completed."""
        if self._error is not None:
            raise self._error
        try:
            return self._feed(data)
        except RpcError as exc:
            self._error = exc
            raise

    def _feed(self, data: bytes | bytearray | memoryview) -> list[ReceivedMessage]:
        if not isinstance(data, bytes):
            # Slices of a caller's buffer must be copied: it may be reused after we return.
            data = bytes(data)
        messages: list[ReceivedMessage] = []
        end = len(data)
        pos = 0

        if self._payload_length:
            pos = self._continue_payload(data, 0, messages)
        elif self._partial_prefix:
            pos = self._continue_prefix(data, messages)

        while pos < end:
            if end - pos < PREFIX_LENGTH:
                self._partial_prefix += data[pos:]
                break
            flag, length = _PREFIX.unpack_from(data, pos)
            pos += PREFIX_LENGTH
            compressed = self._check_prefix(flag, length)
            if end - pos >= length:
                # Hot path: the whole payload is here; one slice, no buffering.
                messages.append(ReceivedMessage(data[pos : pos + length], compressed))
                pos += length
            else:
                self._start_payload(length, compressed, data[pos:])
                break
        return messages

    def _check_prefix(self, flag: int, length: int) -> bool:
        if flag > 1:
            raise RpcError(
                StatusCode.INTERNAL,
                f"invalid compressed flag {flag} in message prefix (want 0 or 1)",
            )
        limit = self._max_message_length
        if limit is not None and length > limit:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"received message larger than max ({length} vs. {limit})",
            )
        return flag == 1

    def _start_payload(self, length: int, compressed: bool, first_part: bytes) -> None:
        self._payload_length = length
        self._payload_compressed = compressed
        # Parts are joined once at the end: collecting a large message from many
        # 16 KiB DATA frames stays linear in its size.
        self._payload_parts = [first_part] if first_part else []
        self._payload_received = len(first_part)

    def _continue_payload(self, data: bytes, pos: int, messages: list[ReceivedMessage]) -> int:
        missing = self._payload_length - self._payload_received
        available = len(data) - pos
        if available < missing:
            self._payload_parts.append(data[pos:] if pos else data)
            self._payload_received += available
            return len(data)
        end = pos + missing
        self._payload_parts.append(data[pos:end])
        messages.append(ReceivedMessage(b"".join(self._payload_parts), self._payload_compressed))
        self._payload_length = 0
        self._payload_parts = []
        self._payload_received = 0
        return end

    def _continue_prefix(self, data: bytes, messages: list[ReceivedMessage]) -> int:
        missing = PREFIX_LENGTH - len(self._partial_prefix)
        self._partial_prefix += data[:missing]
        if len(self._partial_prefix) < PREFIX_LENGTH:
            return len(data)
        flag, length = _PREFIX.unpack(self._partial_prefix)
        self._partial_prefix.clear()
        compressed = self._check_prefix(flag, length)
        if length == 0:
            messages.append(ReceivedMessage(b"", compressed))
            return missing
        self._start_payload(length, compressed, b"")
        return self._continue_payload(data, missing, messages)
