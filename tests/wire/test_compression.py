"""Per-message compression: codecs, bounded decompression, and the compressed-flag rules."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wire.compression import (
    SUPPORTED_ENCODINGS,
    Codec,
    accept_encoding_value,
    check_request_encoding,
    decode_payload,
    encode_payload,
    get_codec,
    parse_accept_encoding,
)
from wire.errors import RpcError
from wire.framing import ReceivedMessage
from wire.status import StatusCode


def codec(name: str) -> Codec:
    found = get_codec(name)
    assert found is not None
    return found


@pytest.mark.parametrize("name", ["identity", "deflate", "gzip"])
@given(data=st.binary(max_size=2000))
def test_codecs_round_trip(name: str, data: bytes) -> None:
    chosen = codec(name)
    assert chosen.decompress(chosen.compress(data), None) == data
    assert chosen.decompress(chosen.compress(data), len(data)) == data


def test_gzip_uses_the_gzip_container_and_interoperates_with_the_stdlib() -> None:
    data = b"checkpoint " * 100
    compressed = codec("gzip").compress(data)
    assert compressed[:2] == b"\x1f\x8b"
    assert gzip.decompress(compressed) == data
    assert codec("gzip").decompress(gzip.compress(data), None) == data


def test_deflate_uses_the_zlib_container() -> None:
    data = b"checkpoint " * 100
    compressed = codec("deflate").compress(data)
    assert zlib.decompress(compressed, wbits=15) == data
    with pytest.raises(zlib.error):
        zlib.decompress(compressed, wbits=-15)  # not raw deflate
    assert codec("deflate").decompress(zlib.compress(data), None) == data


@pytest.mark.parametrize("name", ["deflate", "gzip"])
def test_each_message_is_compressed_on_its_own(name: str) -> None:
    # With a shared context the second message would depend on the first.
    first = codec(name).compress(b"same words again " * 20)
    second = codec(name).compress(b"same words again " * 20)
    assert first == second
    assert codec(name).decompress(second, None) == b"same words again " * 20


def test_gzip_accepts_several_members_back_to_back() -> None:
    data = gzip.compress(b"one ") + gzip.compress(b"two")
    assert codec("gzip").decompress(data, None) == b"one two"
    with pytest.raises(RpcError) as info:
        codec("gzip").decompress(data, 6)
    assert info.value.code is StatusCode.RESOURCE_EXHAUSTED


def _zeros_compressed(name: str, size: int) -> bytes:
    wbits = 31 if name == "gzip" else 15
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = bytes(1024 * 1024)
    parts = [compressor.compress(block) for _ in range(size // len(block))]
    return b"".join(parts) + compressor.flush()


@pytest.mark.parametrize("name", ["deflate", "gzip"])
def test_zip_bomb_is_refused_without_inflating_it(name: str) -> None:
    bomb = _zeros_compressed(name, 64 * 1024 * 1024)  # 64 MiB of zeros in about 64 KiB
    limit = 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(RpcError) as info:
            codec(name).decompress(bomb, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code is StatusCode.RESOURCE_EXHAUSTED
    assert peak < 8 * limit


@pytest.mark.parametrize("name", ["identity", "deflate", "gzip"])
def test_output_limit_is_exact(name: str) -> None:
    data = b"x" * 1000
    compressed = codec(name).compress(data)
    assert codec(name).decompress(compressed, 1000) == data
    with pytest.raises(RpcError) as info:
        codec(name).decompress(compressed, 999)
    assert info.value.code is StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("name", ["deflate", "gzip"])
def test_corrupt_input_is_internal(name: str) -> None:
    compressed = codec(name).compress(b"payload " * 50)
    cases = [
        b"not compressed at all",
        compressed[:-6],  # truncated
        compressed[:2] + bytes(b ^ 0x55 for b in compressed[2:12]) + compressed[12:],
        b"",
    ]
    for data in cases:
        with pytest.raises(RpcError) as info:
            codec(name).decompress(data, None)
        assert info.value.code is StatusCode.INTERNAL


def test_deflate_refuses_data_after_the_stream() -> None:
    with pytest.raises(RpcError) as info:
        codec("deflate").decompress(zlib.compress(b"a") + b"junk", None)
    assert info.value.code is StatusCode.INTERNAL


def test_codec_lookup() -> None:
    assert SUPPORTED_ENCODINGS == ("identity", "deflate", "gzip")
    assert [codec(name).name for name in SUPPORTED_ENCODINGS] == list(SUPPORTED_ENCODINGS)
    assert codec("GZIP").name == "gzip"
    assert get_codec("snappy") is None
    assert get_codec("") is None


def test_accept_encoding_header() -> None:
    assert accept_encoding_value() == "identity,deflate,gzip"
    assert accept_encoding_value(("gzip",)) == "gzip"
    assert parse_accept_encoding(" GZip , deflate,,identity,gzip") == (
        "gzip",
        "deflate",
        "identity",
    )
    assert parse_accept_encoding(b"gzip") == ("gzip",)
    assert parse_accept_encoding(None) == ()
    assert parse_accept_encoding("") == ()


# --- the compressed flag against grpc-encoding (doc/compression.md) ---


@pytest.mark.parametrize("encoding", [None, "identity", "gzip", "deflate", "snappy"])
def test_uncompressed_message_is_legal_under_any_encoding(encoding: str | None) -> None:
    message = ReceivedMessage(b"\x1f\x8b raw bytes", False)
    assert decode_payload(message, encoding, None) == b"\x1f\x8b raw bytes"


def test_compressed_flag_without_encoding_is_internal() -> None:
    with pytest.raises(RpcError) as info:
        decode_payload(ReceivedMessage(b"x", True), None, None)
    assert info.value.code is StatusCode.INTERNAL
    assert info.value.message == "compressed flag set but no grpc-encoding"


def test_compressed_flag_with_identity_encoding_is_internal() -> None:
    with pytest.raises(RpcError) as info:
        decode_payload(ReceivedMessage(b"x", True), "identity", None)
    assert info.value.code is StatusCode.INTERNAL


def test_compressed_flag_with_unknown_encoding_is_internal() -> None:
    with pytest.raises(RpcError) as info:
        decode_payload(ReceivedMessage(b"x", True), "snappy", None)
    assert info.value.code is StatusCode.INTERNAL
    assert "snappy" in info.value.message


@pytest.mark.parametrize("name", ["gzip", "deflate"])
def test_compressed_message_is_decompressed_within_the_limit(name: str) -> None:
    message = ReceivedMessage(codec(name).compress(b"a" * 5000), True)
    assert decode_payload(message, name, 5000) == b"a" * 5000
    with pytest.raises(RpcError) as info:
        decode_payload(message, name, 4999)
    assert info.value.code is StatusCode.RESOURCE_EXHAUSTED


def test_server_refuses_an_unknown_request_encoding_as_unimplemented() -> None:
    check_request_encoding(None)
    check_request_encoding("identity")
    check_request_encoding("gzip")
    with pytest.raises(RpcError) as info:
        check_request_encoding("snappy")
    assert info.value.code is StatusCode.UNIMPLEMENTED
    assert info.value.message == 'grpc: Decompressor is not installed for grpc-encoding "snappy"'


def test_encode_payload() -> None:
    payload = b"container state " * 30
    assert encode_payload(payload, None) == (payload, False)
    assert encode_payload(payload, codec("identity")) == (payload, False)
    wire_payload, compressed = encode_payload(payload, codec("gzip"))
    assert compressed
    assert len(wire_payload) < len(payload)
    assert decode_payload(ReceivedMessage(wire_payload, compressed), "gzip", None) == payload


@given(payload=st.binary(max_size=500), name=st.sampled_from(SUPPORTED_ENCODINGS))
def test_encode_then_decode_payload_round_trips(payload: bytes, name: str) -> None:
    wire_payload, compressed = encode_payload(payload, codec(name))
    assert decode_payload(ReceivedMessage(wire_payload, compressed), name, None) == payload
