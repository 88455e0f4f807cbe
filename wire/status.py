"""gRPC status codes, the ``grpc-message`` encoding, and the serialised ``google.rpc.Status``.

This module owns every table that turns something seen on the wire into a
:class:`StatusCode`: the ``grpc-status`` trailer, an HTTP ``:status`` when no
``grpc-status`` came, and an HTTP/2 ``RST_STREAM`` error code. It also owns the
percent-encoding of ``grpc-message`` and a hand-written protobuf codec for
``grpc-status-details-bin`` (``wire`` may not import ``protobuf``).

It must not do I/O, import ``trio``, or decide *when* a status is sent: that is
the connection's job. Every function here is pure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StatusCode(enum.IntEnum):
    """The 17 canonical gRPC status codes (grpc ``doc/statuscodes.md``)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


def parse_grpc_status(value: str | bytes) -> StatusCode:
    """Parse a received ``grpc-status`` header value.

    A well-formed number that is not one of the 17 codes becomes UNKNOWN, as
    ``doc/statuscodes.md`` asks of receivers. Anything that is not a plain
    decimal number raises :class:`ValueError`; the caller reports that as
    INTERNAL ("malformed grpc-status"), as grpc-go's ``http2_client`` does.
    """
    text = value.decode("ascii", errors="replace") if isinstance(value, bytes) else value
    # str.isdigit() accepts non-ASCII digits such as "٣"; a header never may.
    if not text or len(text) > 10 or not all("0" <= ch <= "9" for ch in text):
        raise ValueError(f"malformed grpc-status {text!r}")
    number = int(text)
    try:
        return StatusCode(number)
    except ValueError:
        return StatusCode.UNKNOWN


# --- grpc-message percent-encoding (PROTOCOL-HTTP2.md, "Status-Message") ---

# One entry per byte value: the byte itself when it may travel as is, "%XX" when not.
_MESSAGE_ESCAPES: tuple[str, ...] = tuple(
    chr(byte) if 0x20 <= byte <= 0x7E and byte != 0x25 else f"%{byte:02X}" for byte in range(256)
)
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def encode_grpc_message(message: str) -> str:
    """Percent-encode *message* for the ``grpc-message`` trailer.

    The text is taken as UTF-8; every byte outside 0x20-0x7E, and ``%`` itself,
    becomes ``%XX`` with upper-case hex digits. A lone surrogate (which has no
    UTF-8 form) is sent as ``?`` rather than failing the whole status.
    """
    if message.isascii() and message.isprintable() and "%" not in message:
        # The common case: plain English error text goes out untouched.
        return message
    data = message.encode("utf-8", errors="replace")
    return "".join([_MESSAGE_ESCAPES[byte] for byte in data])


def decode_grpc_message(value: str | bytes) -> str:
    """Undo :func:`encode_grpc_message`; never raises.

    A ``%`` not followed by two hex digits is kept literally (as grpc-go's
    ``decodeGrpcMessage`` does), and bytes that are not valid UTF-8 become
    U+FFFD, so a misbehaving peer still yields a readable message.
    """
    data = value.encode("utf-8", errors="surrogatepass") if isinstance(value, str) else bytes(value)
    if b"%" not in data:
        return data.decode("utf-8", errors="replace")
    pieces = data.split(b"%")
    decoded = bytearray(pieces[0])
    for piece in pieces[1:]:
        if len(piece) >= 2 and piece[0] in _HEX_DIGITS and piece[1] in _HEX_DIGITS:
            decoded.append(int(piece[:2], 16))
            decoded += piece[2:]
        else:
            decoded += b"%"
            decoded += piece
    return decoded.decode("utf-8", errors="replace")


# --- status from HTTP (doc/http-grpc-status-mapping.md) ---

_HTTP_STATUS_TO_CODE: dict[int, StatusCode] = {
    400: StatusCode.INTERNAL,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.UNIMPLEMENTED,
    429: StatusCode.UNAVAILABLE,
    502: StatusCode.UNAVAILABLE,
    503: StatusCode.UNAVAILABLE,
    504: StatusCode.UNAVAILABLE,
}


def status_from_http_status(http_status: int) -> StatusCode:
    """The status to report when a response carries no ``grpc-status``."""
    return _HTTP_STATUS_TO_CODE.get(http_status, StatusCode.UNKNOWN)


# HTTP/2 error codes by number (RFC 9113 section 7), mapped as grpc-go's
# http2ErrConvTab does. FLOW_CONTROL_ERROR is RESOURCE_EXHAUSTED there too.
_RST_STREAM_TO_CODE: dict[int, StatusCode] = {
    0x3: StatusCode.RESOURCE_EXHAUSTED,  # FLOW_CONTROL_ERROR
    0x7: StatusCode.UNAVAILABLE,  # REFUSED_STREAM: nothing was processed, safe to retry
    0x8: StatusCode.CANCELLED,  # CANCEL
    0xB: StatusCode.RESOURCE_EXHAUSTED,  # ENHANCE_YOUR_CALM
    0xC: StatusCode.PERMISSION_DENIED,  # INADEQUATE_SECURITY
}


def status_from_rst_stream(error_code: int) -> StatusCode:
    """The status for a stream the peer reset with HTTP/2 *error_code*.

    NO_ERROR maps to INTERNAL too: a reset stream that never delivered a
    ``grpc-status`` did not end the call properly.
    """
    return _RST_STREAM_TO_CODE.get(int(error_code), StatusCode.INTERNAL)


# --- google.rpc.Status, hand-encoded in the protobuf wire format ---

_WIRETYPE_VARINT = 0
_WIRETYPE_FIXED64 = 1
_WIRETYPE_LENGTH_DELIMITED = 2
_WIRETYPE_START_GROUP = 3
_WIRETYPE_END_GROUP = 4
_WIRETYPE_FIXED32 = 5

_UINT64_MASK = (1 << 64) - 1
_MAX_VARINT_BYTES = 10
_MAX_FIELD_NUMBER = (1 << 29) - 1


def _encode_varint(value: int) -> bytes:
    # Negative int32 values travel sign-extended to 64 bits, as protobuf requires.
    value &= _UINT64_MASK
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_tag(field_number: int, wire_type: int) -> bytes:
    return _encode_varint((field_number << 3) | wire_type)


def _encode_length_delimited(field_number: int, payload: bytes) -> bytes:
    tag = _encode_tag(field_number, _WIRETYPE_LENGTH_DELIMITED)
    return tag + _encode_varint(len(payload)) + payload


def _decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    for index in range(pos, min(pos + _MAX_VARINT_BYTES, len(data))):
        byte = data[index]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & _UINT64_MASK, index + 1
        shift += 7
    if len(data) - pos >= _MAX_VARINT_BYTES:
        raise ValueError("varint longer than 10 bytes")
    raise ValueError("truncated varint")


def _decode_tag(data: bytes, pos: int) -> tuple[int, int, int]:
    """Read a field tag: (field number, wire type, position after it)."""
    tag, pos = _decode_varint(data, pos)
    field_number = tag >> 3
    if not 1 <= field_number <= _MAX_FIELD_NUMBER:
        raise ValueError(f"invalid field number {field_number}")
    return field_number, tag & 0x7, pos


def _skip_field(data: bytes, pos: int, field_number: int, wire_type: int) -> int:
    """Return the position after the value of an unknown field."""
    if wire_type == _WIRETYPE_VARINT:
        return _decode_varint(data, pos)[1]
    if wire_type == _WIRETYPE_FIXED64:
        end = pos + 8
    elif wire_type == _WIRETYPE_FIXED32:
        end = pos + 4
    elif wire_type == _WIRETYPE_LENGTH_DELIMITED:
        length, pos = _decode_varint(data, pos)
        end = pos + length
    elif wire_type == _WIRETYPE_START_GROUP:
        # Groups are obsolete but still legal in an unknown field: skip to the
        # END_GROUP tag that carries the same field number.
        while True:
            inner_field, inner_type, pos = _decode_tag(data, pos)
            if inner_type == _WIRETYPE_END_GROUP:
                if inner_field != field_number:
                    raise ValueError("mismatched end-group tag")
                return pos
            pos = _skip_field(data, pos, inner_field, inner_type)
    else:
        raise ValueError(f"invalid wire type {wire_type}")
    if end > len(data):
        raise ValueError("truncated field")
    return end


def _iter_fields(data: bytes) -> list[tuple[int, int, int, int]]:
    """Split a message into (field number, wire type, value start, value end).

    For a length-delimited field the span is the payload; for a varint it is the
    varint's bytes; other wire types are returned so the caller can ignore them.
    """
    fields: list[tuple[int, int, int, int]] = []
    pos = 0
    while pos < len(data):
        field_number, wire_type, pos = _decode_tag(data, pos)
        if wire_type == _WIRETYPE_END_GROUP:
            raise ValueError("end-group tag without a group")
        if wire_type == _WIRETYPE_LENGTH_DELIMITED:
            length, start = _decode_varint(data, pos)
            end = start + length
            if end > len(data):
                raise ValueError("truncated length-delimited field")
        else:
            start = pos
            end = _skip_field(data, pos, field_number, wire_type)
        fields.append((field_number, wire_type, start, end))
        pos = end
    return fields


def _decode_utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # proto3 `string` fields must be valid UTF-8; protobuf itself refuses to parse otherwise.
        raise ValueError(f"{what} is not valid UTF-8") from exc


@dataclass(frozen=True)
class AnyMessage:
    """A ``google.protobuf.Any``: a type URL and the serialised message it names."""

    type_url: str
    value: bytes

    def to_bytes(self) -> bytes:
        """The protobuf encoding of this ``Any``; proto3 leaves empty fields out."""
        out = b""
        if self.type_url:
            out += _encode_length_delimited(1, self.type_url.encode("utf-8"))
        if self.value:
            out += _encode_length_delimited(2, bytes(self.value))
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> AnyMessage:
        """Parse an encoded ``Any``; unknown fields are skipped, bad input is ValueError."""
        data = bytes(data)
        type_url = ""
        value = b""
        for field_number, wire_type, start, end in _iter_fields(data):
            if wire_type != _WIRETYPE_LENGTH_DELIMITED:
                continue
            if field_number == 1:
                type_url = _decode_utf8(data[start:end], "Any.type_url")
            elif field_number == 2:
                value = data[start:end]
        return cls(type_url=type_url, value=value)


@dataclass(frozen=True)
class StatusDetails:
    """A ``google.rpc.Status``, as carried in the ``grpc-status-details-bin`` trailer.

    Its *code* is a plain int rather than :class:`StatusCode` because the
    message may come from a peer that uses codes this library does not know.
    """

    code: int
    message: str
    details: tuple[AnyMessage, ...] = ()

    def __post_init__(self) -> None:
        # Accept a list for convenience but keep the frozen object hashable.
        if not isinstance(self.details, tuple):
            object.__setattr__(self, "details", tuple(self.details))

    def to_bytes(self) -> bytes:
        """The protobuf encoding, byte-identical to ``google.rpc.Status.SerializeToString()``."""
        code = int(self.code)
        if not -(1 << 31) <= code < (1 << 31):
            raise ValueError(f"status code {code} does not fit in int32")
        out = b""
        if code:
            out += _encode_tag(1, _WIRETYPE_VARINT) + _encode_varint(code)
        if self.message:
            out += _encode_length_delimited(2, self.message.encode("utf-8"))
        for detail in self.details:
            out += _encode_length_delimited(3, detail.to_bytes())
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> StatusDetails:
        """Parse an encoded ``google.rpc.Status``.

        Unknown fields (and known fields with an unexpected wire type, which
        protobuf also treats as unknown) are skipped. Truncated or otherwise
        malformed input raises :class:`ValueError`.
        """
        data = bytes(data)
        code = 0
        message = ""
        details: list[AnyMessage] = []
        for field_number, wire_type, start, end in _iter_fields(data):
            if field_number == 1 and wire_type == _WIRETYPE_VARINT:
                raw = _decode_varint(data, start)[0] & 0xFFFFFFFF
                # int32 keeps the low 32 bits of the varint, read as two's complement.
                code = raw - (1 << 32) if raw & 0x80000000 else raw
            elif field_number == 2 and wire_type == _WIRETYPE_LENGTH_DELIMITED:
                message = _decode_utf8(data[start:end], "Status.message")
            elif field_number == 3 and wire_type == _WIRETYPE_LENGTH_DELIMITED:
                details.append(AnyMessage.from_bytes(data[start:end]))
        return cls(code=code, message=message, details=tuple(details))
