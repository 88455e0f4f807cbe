"""Call metadata and the ``grpc-timeout`` header.

This module owns :class:`Metadata` (the ordered multimap of custom headers a
call sends and receives), its validation, its conversion to and from HTTP/2
header pairs (including base64 for ``-bin`` keys), the header-list size rule,
and the encoding of ``grpc-timeout``.

It must not import ``trio``, read clocks, or decide which transport headers a
request carries: the connection builds the header block and only asks this
module to translate the custom part. Rules follow grpc ``doc/PROTOCOL-HTTP2.md``.
"""

from __future__ import annotations

import binascii
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeAlias, overload

MetadataSource: TypeAlias = "Iterable[tuple[str, str | bytes]] | Mapping[str, str | bytes]"

DEFAULT_MAX_METADATA_SIZE = 8 * 1024
"""Suggested limit on one received header block, in the RFC 7540 accounting."""

_KEY_PATTERN = re.compile(r"[0-9a-z_.\-]+")
_ASCII_VALUE_PATTERN = re.compile(r"[\x20-\x7e]*")

# Headers the transport itself writes. Letting a caller add them would either
# duplicate a header the peer parses (content-type, te, user-agent) or make h2
# refuse the whole header block (the connection-specific ones, RFC 9113 8.2.2).
_TRANSPORT_OWNED_KEYS = frozenset(
    {
        "content-type",
        "te",
        "user-agent",
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    }
)

# Headers decode_metadata leaves out: they describe the call, not the application.
# user-agent is kept on purpose, as servers expose it (grpc-go does too).
_TRANSPORT_HEADERS = frozenset(
    {
        "content-type",
        "te",
        "grpc-encoding",
        "grpc-accept-encoding",
        "grpc-timeout",
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "content-length",
    }
)


class InvalidMetadata(ValueError):
    """A metadata key or value breaks gRPC's rules, whether added locally or received."""


def _is_binary_key(key: str) -> bool:
    return key.endswith("-bin")


class Metadata:
    """An ordered multimap of metadata, as sent in headers or trailers.

    Keys are lower-cased on the way in. A key ending in ``-bin`` holds
    ``bytes``; any other key holds ``str`` made of printable ASCII. Keys
    starting with ``grpc-`` belong to the protocol and are refused unless the
    object is made with ``allow_reserved=True``, which the library does for
    metadata it received.
    """

    __slots__ = ("_allow_reserved", "_pairs")

    def __init__(self, pairs: MetadataSource = (), *, allow_reserved: bool = False) -> None:
        self._allow_reserved = allow_reserved
        self._pairs: list[tuple[str, str | bytes]] = []
        self.extend(pairs)

    @property
    def allow_reserved(self) -> bool:
        """Whether ``grpc-`` and transport-owned keys may be stored (true for received metadata)."""
        return self._allow_reserved

    def add(self, key: str, value: str | bytes) -> None:
        """Append one (key, value) pair after validating both."""
        self._pairs.append(self._validated(key, value))

    def extend(self, other: MetadataSource | Metadata) -> None:
        """Append every pair of *other* in order, validating each."""
        items: Iterable[tuple[str, str | bytes]]
        items = other.items() if isinstance(other, Mapping) else other
        for key, value in items:
            self.add(key, value)

    def _validated(self, key: str, value: str | bytes) -> tuple[str, str | bytes]:
        if not isinstance(key, str):
            raise InvalidMetadata(f"metadata key must be str, not {type(key).__name__}")
        # Check ASCII before lower-casing: str.lower() maps some non-ASCII letters
        # (the Kelvin sign, for one) onto ASCII ones.
        key = key.lower() if key.isascii() else key
        if not _KEY_PATTERN.fullmatch(key):
            raise InvalidMetadata(
                f"invalid metadata key {key!r}: use one or more of 0-9 a-z _ - . only"
            )
        if not self._allow_reserved:
            if key.startswith("grpc-"):
                raise InvalidMetadata(
                    f"metadata key {key!r} is reserved: the grpc- prefix belongs to the protocol"
                )
            if key in _TRANSPORT_OWNED_KEYS:
                raise InvalidMetadata(
                    f"metadata key {key!r} is set by the transport and cannot be sent as metadata"
                )
        if _is_binary_key(key):
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise InvalidMetadata(
                    f"metadata key {key!r} ends in -bin, so its value must be bytes,"
                    f" not {type(value).__name__}"
                )
            return key, bytes(value)
        if not isinstance(value, str):
            raise InvalidMetadata(
                f"metadata key {key!r} needs a str value (only keys ending in -bin carry bytes),"
                f" not {type(value).__name__}"
            )
        if not _ASCII_VALUE_PATTERN.fullmatch(value):
            raise InvalidMetadata(
                f"value of metadata key {key!r} must be printable ASCII (0x20-0x7E): {value!r}"
            )
        if value[:1] == " " or value[-1:] == " ":
            # HTTP/2 forbids surrounding whitespace (RFC 9113 8.2.1): h2 would strip
            # it when sending and reject it when receiving, so refuse it up front.
            raise InvalidMetadata(
                f"value of metadata key {key!r} must not start or end with a space: {value!r}"
            )
        return key, value

    @overload
    def get(self, key: str) -> str | bytes | None: ...

    @overload
    def get(self, key: str, default: str | bytes) -> str | bytes: ...

    @overload
    def get(self, key: str, default: None) -> str | bytes | None: ...

    def get(self, key: str, default: str | bytes | None = None) -> str | bytes | None:
        """The first value stored under *key*, or *default*."""
        key = key.lower()
        for stored_key, value in self._pairs:
            if stored_key == key:
                return value
        return default

    def get_all(self, key: str) -> list[str | bytes]:
        """Every value stored under *key*, in the order they were added."""
        key = key.lower()
        return [value for stored_key, value in self._pairs if stored_key == key]

    def __getitem__(self, key: str) -> str | bytes:
        key = key.lower()
        for stored_key, value in self._pairs:
            if stored_key == key:
                return value
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        key = key.lower()
        return any(stored_key == key for stored_key, _ in self._pairs)

    def __iter__(self) -> Iterator[tuple[str, str | bytes]]:
        return iter(list(self._pairs))

    def __len__(self) -> int:
        return len(self._pairs)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Metadata):
            return self._pairs == other._pairs
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like list

    def __repr__(self) -> str:
        return f"Metadata({self._pairs!r})"

    def keys(self) -> list[str]:
        """Distinct keys in the order they first appear."""
        return list(dict.fromkeys(key for key, _ in self._pairs))

    def copy(self) -> Metadata:
        """An independent copy that keeps the ``allow_reserved`` setting."""
        clone = Metadata(allow_reserved=self._allow_reserved)
        clone._pairs = list(self._pairs)
        return clone


def _b64encode_unpadded(value: bytes) -> bytes:
    return binascii.b2a_base64(value, newline=False).rstrip(b"=")


def _b64decode_lenient(part: bytes, key: str) -> bytes:
    # Peers may send padded or unpadded base64 (PROTOCOL-HTTP2.md); add the
    # missing padding, then decode strictly so junk is not silently dropped.
    padded = part + b"=" * (-len(part) % 4)
    try:
        return binascii.a2b_base64(padded, strict_mode=True)
    except binascii.Error as exc:
        raise InvalidMetadata(f"value of metadata key {key!r} is not valid base64") from exc


def decode_binary_value(value: bytes, key: str) -> bytes:
    """Decode a received ``-bin`` header value (comma-joined base64 parts, padded or not)."""
    return b"".join(_b64decode_lenient(part.strip(), key) for part in value.split(b","))


def encode_metadata(md: Metadata) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 header pairs for *md*; ``-bin`` values become unpadded base64."""
    headers: list[tuple[bytes, bytes]] = []
    for key, value in md:
        if isinstance(value, bytes):
            headers.append((key.encode("ascii"), _b64encode_unpadded(value)))
        else:
            headers.append((key.encode("ascii"), value.encode("ascii")))
    return headers


def _header_text(raw: bytes | str, what: str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode("ascii")
    except UnicodeDecodeError as exc:
        raise InvalidMetadata(f"received metadata {what} is not ASCII: {bytes(raw)!r}") from exc


_TRANSPORT_HEADER_NAMES = frozenset(name.encode() for name in _TRANSPORT_HEADERS)
_KEY_BYTES = re.compile(rb"[0-9a-z_.\-]+")
# Printable ASCII with no space at either end (RFC 9113 8.2.1), or empty.
_PLAIN_VALUE_BYTES = re.compile(rb"(?:[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?")


def decode_metadata(headers: Iterable[tuple[bytes | str, bytes | str]]) -> Metadata:
    """The application metadata in a received header or trailer block.

    Pseudo-headers and the headers that belong to the transport are left out
    (``user-agent`` is kept). A ``-bin`` value may hold several values joined
    by ``,``; each part is base64 in padded or unpadded form. Bad keys, bad
    values, or bad base64 raise :class:`InvalidMetadata`.
    """
    md = Metadata(allow_reserved=True)
    pairs = md._pairs
    for raw_name, raw_value in headers:
        name_bytes = raw_name if isinstance(raw_name, bytes) else str(raw_name).encode("utf-8")
        if name_bytes[:1] == b":" or name_bytes in _TRANSPORT_HEADER_NAMES:
            continue
        value_bytes = raw_value if isinstance(raw_value, bytes) else str(raw_value).encode("utf-8")
        if not _KEY_BYTES.fullmatch(name_bytes):
            # Rare: upper case or invalid characters. The general path lower-cases
            # what it may and explains what it must refuse.
            name = _header_text(name_bytes, "key")
            name = name.lower() if name.isascii() else name
            if name in _TRANSPORT_HEADERS:
                continue
            if _is_binary_key(name):
                for part in value_bytes.split(b","):
                    md.add(name, _b64decode_lenient(part, name))
            else:
                md.add(name, _header_text(value_bytes, f"value for {name!r}"))
            continue
        name = name_bytes.decode("ascii")
        if name.endswith("-bin"):
            for part in value_bytes.split(b","):
                pairs.append((name, _b64decode_lenient(part, name)))
        elif _PLAIN_VALUE_BYTES.fullmatch(value_bytes):
            pairs.append((name, value_bytes.decode("ascii")))
        else:
            md.add(name, _header_text(value_bytes, f"value for {name!r}"))  # raises
    return md


def header_list_size(headers: Iterable[tuple[bytes | str, bytes | str]]) -> int:
    """The size of a header list as RFC 7540 section 6.5.2 counts it.

    Each field costs the octet length of its name and value plus 32.
    """
    total = 0
    for name, value in headers:
        name_length = len(name.encode("utf-8")) if isinstance(name, str) else len(name)
        value_length = len(value.encode("utf-8")) if isinstance(value, str) else len(value)
        total += name_length + value_length + 32
    return total


# --- grpc-timeout ---


class InvalidTimeout(ValueError):
    """A ``grpc-timeout`` value that does not follow ``1*8DIGIT unit``."""


_MAX_TIMEOUT_DIGITS = 8
_MAX_TIMEOUT_COUNT = 10**_MAX_TIMEOUT_DIGITS - 1
_TIMEOUT_PATTERN = re.compile(r"([0-9]{1,8})([HMSmun])")

# (unit, factor, factor divides seconds): finest first, the order encode_timeout tries them.
_TIMEOUT_UNITS: tuple[tuple[str, int, bool], ...] = (
    ("n", 1_000_000_000, True),
    ("u", 1_000_000, True),
    ("m", 1_000, True),
    ("S", 1, False),
    ("M", 60, False),
    ("H", 3600, False),
)
_UNIT_BY_NAME = {name: (factor, is_fraction) for name, factor, is_fraction in _TIMEOUT_UNITS}


def _seconds_from_count(count: int, factor: int, is_fraction: bool) -> float:
    # Dividing two exact integers is correctly rounded, so "300000u" reads back
    # as exactly the float 0.3, not 300000 * 1e-6.
    return count / factor if is_fraction else float(count * factor)


def encode_timeout(seconds: float) -> str:
    """The ``grpc-timeout`` value for a deadline *seconds* from now.

    Uses the finest unit whose count fits in 8 digits and rounds up, so the
    server never sees a shorter deadline than the client's. A deadline already
    passed is ``"0n"``; one too far away to express is ``"99999999H"``.
    """
    if math.isnan(seconds):
        raise InvalidTimeout("timeout is NaN")
    if seconds <= 0:
        return "0n"
    if math.isinf(seconds):
        return f"{_MAX_TIMEOUT_COUNT}H"
    for unit, factor, is_fraction in _TIMEOUT_UNITS:
        count = math.ceil(seconds * factor if is_fraction else seconds / factor)
        if count > _MAX_TIMEOUT_COUNT:
            continue
        # Float multiplication may round below the true value; step up until
        # the receiver's reading is not shorter than what we meant.
        while _seconds_from_count(count, factor, is_fraction) < seconds:
            count += 1
        if count <= _MAX_TIMEOUT_COUNT:
            return f"{count}{unit}"
    return f"{_MAX_TIMEOUT_COUNT}H"


def decode_timeout(value: str | bytes) -> float:
    """The number of seconds in a received ``grpc-timeout`` value."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            text = bytes(value).decode("ascii")
        except UnicodeDecodeError as exc:
            raise InvalidTimeout(f"grpc-timeout is not ASCII: {bytes(value)!r}") from exc
    else:
        text = value
    match = _TIMEOUT_PATTERN.fullmatch(text)
    if match is None:
        raise InvalidTimeout(
            f"malformed grpc-timeout {text!r}: want 1 to 8 digits and one of H M S m u n"
        )
    factor, is_fraction = _UNIT_BY_NAME[match.group(2)]
    return _seconds_from_count(int(match.group(1)), factor, is_fraction)
