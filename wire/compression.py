"""Per-message compression: the codecs and the rules for when a message may be (de)compressed.

This module owns the ``identity``, ``deflate`` and ``gzip`` codecs, the
``grpc-accept-encoding`` list, and the decisions of grpc ``doc/compression.md``
about a received message's compressed flag versus the stream's
``grpc-encoding``. Decompression is bounded, so a small message cannot
inflate into gigabytes.

It must not choose which encoding a call uses (the caller does, from what the
peer accepts), look at framing, or import ``trio``.
"""

from __future__ import annotations

import abc
import functools
import zlib

from wire.errors import RpcError
from wire.framing import ReceivedMessage
from wire.status import StatusCode


class Codec(abc.ABC):
    """One ``grpc-encoding``. Each call to a method uses a fresh (de)compression context."""

    name: str

    @abc.abstractmethod
    def compress(self, data: bytes) -> bytes:
        """*data* compressed as one self-contained message."""

    @abc.abstractmethod
    def decompress(self, data: bytes, max_length: int | None) -> bytes:
        """*data* decompressed.

        Raises ``RpcError(RESOURCE_EXHAUSTED)`` as soon as the output would
        exceed *max_length* (None: no limit), and ``RpcError(INTERNAL)`` for
        corrupt or truncated input.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _too_large(max_length: int) -> RpcError:
    return RpcError(
        StatusCode.RESOURCE_EXHAUSTED,
        f"received message after decompression larger than max (more than {max_length} bytes)",
    )


class IdentityCodec(Codec):
    """No compression at all; the default when nothing else was negotiated."""

    name = "identity"

    def compress(self, data: bytes) -> bytes:
        return data

    def decompress(self, data: bytes, max_length: int | None) -> bytes:
        if max_length is not None and len(data) > max_length:
            raise _too_large(max_length)
        return data


class ZlibCodec(Codec):
    """A DEFLATE-based encoding; *wbits* picks the container (15: zlib, 31: gzip)."""

    def __init__(self, name: str, wbits: int, *, level: int = zlib.Z_DEFAULT_COMPRESSION) -> None:
        self.name = name
        self._wbits = wbits
        self._level = level

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data, self._level, self._wbits)

    def decompress(self, data: bytes, max_length: int | None) -> bytes:
        out = bytearray()
        remaining = bytes(data)
        # A gzip body may hold several members back to back (RFC 1952 2.2);
        # readers such as grpc-go's accept that, so every member is inflated.
        while True:
            inflater = zlib.decompressobj(self._wbits)
            try:
                if max_length is None:
                    out += inflater.decompress(remaining)
                else:
                    # Ask for one byte more than allowed: getting it proves the
                    # message is too large without inflating the rest of it.
                    out += inflater.decompress(remaining, max_length - len(out) + 1)
            except zlib.error as exc:
                raise self._corrupt(str(exc)) from exc
            if max_length is not None and len(out) > max_length:
                raise _too_large(max_length)
            if not inflater.eof:
                raise self._corrupt("truncated")
            remaining = inflater.unused_data
            if not remaining:
                return bytes(out)
            if self._wbits != 31:
                raise self._corrupt("data after the end of the stream")

    def _corrupt(self, reason: str) -> RpcError:
        return RpcError(
            StatusCode.INTERNAL,
            f"failed to decompress the received message ({self.name}): {reason}",
        )


IDENTITY = IdentityCodec()
DEFLATE = ZlibCodec("deflate", 15)
GZIP = ZlibCodec("gzip", 31)

_CODECS: dict[str, Codec] = {codec.name: codec for codec in (IDENTITY, DEFLATE, GZIP)}

SUPPORTED_ENCODINGS: tuple[str, ...] = ("identity", "deflate", "gzip")


def get_codec(name: str) -> Codec | None:
    """The codec for a ``grpc-encoding`` name, or None when it is not supported."""
    return _CODECS.get(name.strip().lower())


def accept_encoding_value(names: tuple[str, ...] = SUPPORTED_ENCODINGS) -> str:
    """The ``grpc-accept-encoding`` header value listing *names*."""
    return ",".join(names)


@functools.lru_cache(maxsize=64)
def parse_accept_encoding(value: str | bytes | None) -> tuple[str, ...]:
    """The encodings a peer listed in ``grpc-accept-encoding``.

    Names are trimmed and lower-cased; order is kept and repeats are dropped. A peer
    sends the same value on every call, so answers are cached.
    """
    if value is None:
        return ()
    text = value.decode("ascii", errors="replace") if isinstance(value, bytes) else value
    names = (part.strip().lower() for part in text.split(","))
    return tuple(dict.fromkeys(name for name in names if name))


def _unsupported_encoding_message(encoding: str) -> str:
    # grpc-go's wording, so users can search for it.
    return f'grpc: Decompressor is not installed for grpc-encoding "{encoding}"'


def check_request_encoding(encoding: str | None) -> None:
    """Refuse a request whose ``grpc-encoding`` this server cannot decompress.

    Raises ``RpcError(UNIMPLEMENTED)``; the server answers with it and lists
    what it accepts in ``grpc-accept-encoding``.
    """
    if encoding is None or get_codec(encoding) is not None:
        return
    raise RpcError(StatusCode.UNIMPLEMENTED, _unsupported_encoding_message(encoding))


def decode_payload(message: ReceivedMessage, encoding: str | None, max_length: int | None) -> bytes:
    """The serialised message inside *message*, given the stream's ``grpc-encoding``.

    An uncompressed message is legal under any encoding. A compressed one
    needs a real encoding that is supported; otherwise the stream fails with
    INTERNAL (a server refuses unknown request encodings earlier, with
    :func:`check_request_encoding`).
    """
    if not message.compressed:
        return message.payload
    if encoding is None:
        raise RpcError(StatusCode.INTERNAL, "compressed flag set but no grpc-encoding")
    codec = get_codec(encoding)
    if codec is None:
        raise RpcError(StatusCode.INTERNAL, _unsupported_encoding_message(encoding))
    if codec is IDENTITY:
        raise RpcError(StatusCode.INTERNAL, "compressed flag set but grpc-encoding is identity")
    return codec.decompress(message.payload, max_length)


def encode_payload(payload: bytes, codec: Codec | None) -> tuple[bytes, bool]:
    """The bytes to frame for *payload* and the compressed flag to frame them with."""
    if codec is None or codec is IDENTITY or codec.name == "identity":
        return payload, False
    return codec.compress(payload), True
