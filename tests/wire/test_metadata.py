"""Metadata validation and header conversion, and the grpc-timeout header."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wire.metadata import (
    DEFAULT_MAX_METADATA_SIZE,
    InvalidMetadata,
    InvalidTimeout,
    Metadata,
    decode_metadata,
    decode_timeout,
    encode_metadata,
    encode_timeout,
    header_list_size,
)

# --- the Metadata multimap ---


def test_metadata_keeps_order_and_repeats() -> None:
    md = Metadata([("x-a", "1"), ("x-b", "2"), ("x-a", "3")])
    md.add("trace-bin", b"\x00\xff")
    assert list(md) == [("x-a", "1"), ("x-b", "2"), ("x-a", "3"), ("trace-bin", b"\x00\xff")]
    assert len(md) == 4
    assert md.get("x-a") == "1"
    assert md["x-a"] == "1"
    assert md.get_all("x-a") == ["1", "3"]
    assert md.get_all("missing") == []
    assert md.get("missing") is None
    assert md.get("missing", "fallback") == "fallback"
    assert md.keys() == ["x-a", "x-b", "trace-bin"]


def test_metadata_lower_cases_keys() -> None:
    md = Metadata({"X-Request-ID": "42"})
    assert list(md) == [("x-request-id", "42")]
    assert "X-REQUEST-ID" in md
    assert md["X-Request-Id"] == "42"
    assert 42 not in md


def test_metadata_missing_key_raises_key_error() -> None:
    with pytest.raises(KeyError):
        Metadata()["absent"]


def test_metadata_equality_copy_and_extend() -> None:
    md = Metadata([("a", "1")])
    clone = md.copy()
    assert clone == md
    clone.add("b", "2")
    assert clone != md
    assert list(md) == [("a", "1")]
    md.extend(Metadata([("b", "2")]))
    assert md == clone
    md.extend({"c": "3"})
    md.extend([("d-bin", b"4")])
    assert [key for key, _ in md] == ["a", "b", "c", "d-bin"]
    assert md != [("a", "1")]
    assert "Metadata([('a', '1')" in repr(md)


def test_metadata_copy_keeps_reserved_permission() -> None:
    received = Metadata([("grpc-previous-rpc-attempts", "1")], allow_reserved=True)
    clone = received.copy()
    clone.add("grpc-retry-pushback-ms", "10")
    assert clone.allow_reserved


def test_iterating_metadata_while_adding_is_safe() -> None:
    md = Metadata([("a", "1")])
    for key, value in md:
        md.add(key, value)
    assert len(md) == 2


# The Kelvin sign at the end lower-cases to an ASCII "k", but only by Unicode rules.
@pytest.mark.parametrize("key", ["", "a b", "caf\u00e9", ":path", "x/y", "x\n", "x=1", "\u212a"])
def test_invalid_key_is_refused(key: str) -> None:
    with pytest.raises(InvalidMetadata):
        Metadata().add(key, "v")


@pytest.mark.parametrize("value", ["line\nbreak", "tab\there", "caf\u00e9", "\x7f", "\x00"])
def test_value_outside_printable_ascii_is_refused(value: str) -> None:
    with pytest.raises(InvalidMetadata, match="printable ASCII"):
        Metadata().add("x-v", value)


@pytest.mark.parametrize("value", [" leading", "trailing ", " "])
def test_value_with_surrounding_space_is_refused(value: str) -> None:
    # h2 would strip it silently when sending and refuse it when receiving.
    with pytest.raises(InvalidMetadata, match="space"):
        Metadata().add("x-v", value)


def test_values_that_are_fine() -> None:
    md = Metadata([("x-empty", ""), ("x-inner", "a b ~!"), ("x.dot_under-dash", "0")])
    assert md.get_all("x-empty") == [""]


def test_binary_key_needs_bytes() -> None:
    with pytest.raises(InvalidMetadata, match="-bin"):
        Metadata().add("trace-bin", "not bytes")
    md = Metadata([("trace-bin", bytearray(b"\x01"))])  # type: ignore[list-item]
    assert md["trace-bin"] == b"\x01"
    assert isinstance(md["trace-bin"], bytes)


def test_text_key_refuses_bytes() -> None:
    with pytest.raises(InvalidMetadata, match="str"):
        Metadata().add("x-text", b"bytes")


@pytest.mark.parametrize("key", ["grpc-foo", "grpc-status", "GRPC-Timeout", "grpc-trace-bin"])
def test_grpc_prefixed_keys_are_reserved(key: str) -> None:
    with pytest.raises(InvalidMetadata, match="reserved"):
        Metadata().add(key, b"x" if key.endswith("-bin") else "x")
    md = Metadata(allow_reserved=True)
    md.add(key, b"x" if key.endswith("-bin") else "x")
    assert key.lower() in md


@pytest.mark.parametrize("key", ["content-type", "te", "user-agent", "connection", "upgrade"])
def test_transport_owned_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidMetadata, match="transport"):
        Metadata([(key, "x")])


# --- headers out and in ---


def test_encode_metadata_gives_header_pairs_with_unpadded_base64() -> None:
    md = Metadata([("x-a", "1"), ("trace-bin", b"\x01\x02"), ("trace-bin", b""), ("x-a", "2")])
    assert encode_metadata(md) == [
        (b"x-a", b"1"),
        (b"trace-bin", b"AQI"),
        (b"trace-bin", b""),
        (b"x-a", b"2"),
    ]


def test_decode_metadata_skips_pseudo_and_transport_headers_but_keeps_user_agent() -> None:
    headers = [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"grpc-encoding", b"gzip"),
        (b"grpc-accept-encoding", b"gzip"),
        (b"grpc-timeout", b"1S"),
        (b"grpc-status", b"0"),
        (b"grpc-message", b"ok"),
        (b"grpc-status-details-bin", b"CAE"),
        (b"content-length", b"0"),
        (b"user-agent", b"grpc-go/1.3.0"),
        (b"x-custom", b"v"),
        (b"grpc-previous-rpc-attempts", b"1"),
    ]
    md = decode_metadata(headers)
    assert list(md) == [
        ("user-agent", "grpc-go/1.3.0"),
        ("x-custom", "v"),
        ("grpc-previous-rpc-attempts", "1"),
    ]


def test_decode_metadata_refuses_non_ascii_str_keys() -> None:
    with pytest.raises(InvalidMetadata):
        decode_metadata([("\u212a", "v")])


def test_decode_metadata_accepts_str_headers() -> None:
    md = decode_metadata([(":path", "/a/b"), ("X-Custom", "v"), ("k-bin", "AQI=")])
    assert list(md) == [("x-custom", "v"), ("k-bin", b"\x01\x02")]


@pytest.mark.parametrize("raw", [b"AQI", b"AQI=", b"AQIDBA", b"AQIDBA==", b"AQIDBA="])
def test_binary_values_accept_padded_and_unpadded_base64(raw: bytes) -> None:
    expected = {b"AQI": b"\x01\x02", b"AQI=": b"\x01\x02"}.get(raw, b"\x01\x02\x03\x04")
    assert decode_metadata([(b"k-bin", raw)]).get_all("k-bin") == [expected]


def test_binary_value_is_split_on_commas() -> None:
    md = decode_metadata([(b"k-bin", b"AQ,Ag==,"), (b"k-bin", b"Aw")])
    assert md.get_all("k-bin") == [b"\x01", b"\x02", b"", b"\x03"]


def test_text_values_are_not_split_on_commas() -> None:
    assert decode_metadata([(b"x-list", b"a,b")]).get_all("x-list") == ["a,b"]


@pytest.mark.parametrize("raw", [b"A", b"AQ!=", b"AQ==AQ==", b"=AQI", b"AQ I", b"\xff"])
def test_bad_base64_is_invalid_metadata(raw: bytes) -> None:
    with pytest.raises(InvalidMetadata, match="base64"):
        decode_metadata([(b"k-bin", raw)])


@pytest.mark.parametrize(
    "header",
    [
        (b"bad key", b"v"),
        (b"x-v", b"caf\xc3\xa9"),
        (b"x-v", b"a\nb"),
        (b"caf\xc3\xa9", b"v"),
    ],
)
def test_bad_received_header_is_invalid_metadata(header: tuple[bytes, bytes]) -> None:
    with pytest.raises(InvalidMetadata):
        decode_metadata([header])


TRANSPORT_OWNED = {
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
keys = st.from_regex(r"[0-9a-z_.\-]{1,20}", fullmatch=True).filter(
    lambda key: not key.startswith("grpc-") and key not in TRANSPORT_OWNED
)
text_values = st.from_regex(r"([\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?)?", fullmatch=True)


@st.composite
def metadata_pairs(draw: st.DrawFn) -> list[tuple[str, str | bytes]]:
    pairs: list[tuple[str, str | bytes]] = []
    for key in draw(st.lists(keys, max_size=8)):
        if key.endswith("-bin"):
            pairs.append((key, draw(st.binary(max_size=40))))
        else:
            pairs.append((key, draw(text_values)))
    return pairs


@given(metadata_pairs())
def test_metadata_round_trips_through_headers(pairs: list[tuple[str, str | bytes]]) -> None:
    md = Metadata(pairs)
    headers = encode_metadata(md)
    assert all(b"=" not in value for key, value in headers if key.endswith(b"-bin"))
    assert decode_metadata(headers) == md


def test_header_list_size_uses_the_rfc_7540_rule() -> None:
    headers: list[tuple[bytes | str, bytes | str]] = [(b"x-a", b"12345"), ("k", "")]
    assert header_list_size(headers) == (3 + 5 + 32) + (1 + 0 + 32)
    assert header_list_size([("caf\u00e9", "v")]) == 5 + 1 + 32
    assert DEFAULT_MAX_METADATA_SIZE == 8192


# --- grpc-timeout ---


@pytest.mark.parametrize(
    ("seconds", "encoded"),
    [
        (1.0, "1000000u"),
        (0.1, "100000u"),
        (0.05, "50000000n"),
        (1e-9, "1n"),
        (1.5e-9, "2n"),  # rounded up, never down
        (1e-12, "1n"),
        (100.0, "100000m"),
        (99999.999, "99999999m"),
        (3600.0, "3600000m"),
        (1e6, "1000000S"),
        (1e9, "16666667M"),
        (1e11, "27777778H"),
        (0.0, "0n"),
        (-3.0, "0n"),
        (359999996400.0, "99999999H"),
        (359999996401.0, "99999999H"),  # too far away to express: clamped
        (1e20, "99999999H"),
        (math.inf, "99999999H"),
    ],
)
def test_encode_timeout(seconds: float, encoded: str) -> None:
    assert encode_timeout(seconds) == encoded


def test_encode_timeout_refuses_nan() -> None:
    with pytest.raises(InvalidTimeout):
        encode_timeout(math.nan)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1S", 1.0),
        (b"100m", 0.1),
        ("2H", 7200.0),
        ("3M", 180.0),
        ("5u", 5e-6),
        ("7n", 7e-9),
        ("0n", 0.0),
        ("00000001S", 1.0),
        ("99999999H", 99999999 * 3600.0),
    ],
)
def test_decode_timeout(value: str | bytes, seconds: float) -> None:
    assert decode_timeout(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "",
        "S",
        "10",
        "123456789S",
        "-1S",
        "+1S",
        " 1S",
        "1S ",
        "1 S",
        "1s",
        "1x",
        "1.5S",
        "1SS",
        "1S\n",
        "\uff11S",  # a full-width digit is still not an ASCII digit
        b"\xff1S",
    ],
)
def test_malformed_timeout_is_refused(value: str | bytes) -> None:
    with pytest.raises(InvalidTimeout):
        decode_timeout(value)


UNIT_SECONDS = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "S": Fraction(1),
    "M": Fraction(60),
    "H": Fraction(3600),
}
FINEST_FIRST = "numSMH"


LARGEST_TIMEOUT = 99_999_999 * 3600.0


@given(st.floats(min_value=0.0, max_value=LARGEST_TIMEOUT, exclude_min=True))
def test_timeout_round_trip_is_never_shorter_and_within_one_unit(seconds: float) -> None:
    encoded = encode_timeout(seconds)
    count, unit = int(encoded[:-1]), encoded[-1]
    assert 1 <= len(encoded) - 1 <= 8
    unit_size = UNIT_SECONDS[unit]
    # The receiver reads back at least the float it was given (rounding up) ...
    assert decode_timeout(encoded) >= seconds
    # ... and, in exact arithmetic, strays from it by less than one unit.
    assert abs(count * unit_size - Fraction(seconds)) < unit_size
    # The finest unit that fits was chosen: every finer one would need more than 8 digits.
    for finer in FINEST_FIRST[: FINEST_FIRST.index(unit)]:
        assert math.ceil(Fraction(seconds) / UNIT_SECONDS[finer]) > 99_999_999
