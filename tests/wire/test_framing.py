"""The 5-byte message prefix and the resumable MessageDecoder."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wire.errors import RpcError
from wire.framing import (
    DEFAULT_MAX_RECEIVE_MESSAGE_LENGTH,
    PREFIX_LENGTH,
    MessageDecoder,
    ReceivedMessage,
    encode_message,
    encode_prefix,
)
from wire.status import StatusCode


def test_prefix_layout() -> None:
    assert PREFIX_LENGTH == 5
    assert encode_prefix(5, False) == b"\x00\x00\x00\x00\x05"
    assert encode_prefix(0x01020304, True) == b"\x01\x01\x02\x03\x04"
    assert encode_message(b"hi", False) == b"\x00\x00\x00\x00\x02hi"
    assert encode_message(b"", True) == b"\x01\x00\x00\x00\x00"


def test_prefix_cannot_describe_more_than_four_gibibytes() -> None:
    assert encode_prefix(2**32 - 1, False) == b"\x00\xff\xff\xff\xff"
    with pytest.raises(RpcError) as info:
        encode_prefix(2**32, False)
    assert info.value.code is StatusCode.RESOURCE_EXHAUSTED


def test_negative_length_is_a_bug() -> None:
    with pytest.raises(ValueError):
        encode_prefix(-1, False)


def test_default_receive_limit_is_four_mebibytes() -> None:
    assert DEFAULT_MAX_RECEIVE_MESSAGE_LENGTH == 4 * 1024 * 1024
    assert MessageDecoder().max_message_length == DEFAULT_MAX_RECEIVE_MESSAGE_LENGTH


def test_one_message_in_one_chunk() -> None:
    decoder = MessageDecoder()
    assert decoder.feed(encode_message(b"payload", False)) == [ReceivedMessage(b"payload", False)]
    assert decoder.at_message_boundary()
    assert decoder.buffered_bytes == 0


def test_several_messages_in_one_chunk_including_empty_ones() -> None:
    data = encode_message(b"a", False) + encode_message(b"", False) + encode_message(b"zz", True)
    assert MessageDecoder().feed(data) == [
        ReceivedMessage(b"a", False),
        ReceivedMessage(b"", False),
        ReceivedMessage(b"zz", True),
    ]


def test_message_fed_one_byte_at_a_time() -> None:
    decoder = MessageDecoder()
    data = encode_message(b"hello", True) + encode_message(b"", False)
    received: list[ReceivedMessage] = []
    for index in range(len(data)):
        received += decoder.feed(data[index : index + 1])
        expected_boundary = index + 1 in (10, 15)
        assert decoder.at_message_boundary() is expected_boundary
    assert received == [ReceivedMessage(b"hello", True), ReceivedMessage(b"", False)]


def test_empty_chunk_changes_nothing() -> None:
    decoder = MessageDecoder()
    assert decoder.feed(b"") == []
    decoder.feed(b"\x00\x00")
    assert decoder.feed(b"") == []
    assert decoder.buffered_bytes == 2


def test_partial_prefix_and_payload_are_reported() -> None:
    decoder = MessageDecoder()
    decoder.feed(b"\x00\x00\x00")
    assert not decoder.at_message_boundary()
    assert decoder.buffered_bytes == 3
    decoder.feed(b"\x00\x04ab")
    assert not decoder.at_message_boundary()
    assert decoder.buffered_bytes == 2
    assert decoder.feed(b"cd\x00") == [ReceivedMessage(b"abcd", False)]
    assert decoder.buffered_bytes == 1
    assert not decoder.at_message_boundary()


def test_prefix_completed_with_a_whole_message_behind_it() -> None:
    decoder = MessageDecoder()
    decoder.feed(b"\x00\x00")
    data = b"\x00\x00\x03abc" + encode_message(b"next", False)
    assert decoder.feed(data) == [ReceivedMessage(b"abc", False), ReceivedMessage(b"next", False)]


def test_memoryview_chunks_are_copied() -> None:
    buffer = bytearray(encode_message(b"abcdef", False))
    decoder = MessageDecoder()
    first = decoder.feed(memoryview(buffer)[:8])
    buffer[5:8] = b"XXX"  # the caller reuses its buffer after feed returns
    received = first + decoder.feed(memoryview(buffer)[8:])
    assert received == [ReceivedMessage(b"abcdef", False)]
    assert isinstance(received[0].payload, bytes)


@pytest.mark.parametrize("flag", [2, 0x80, 0xFF])
def test_compressed_flag_other_than_zero_or_one_is_internal(flag: int) -> None:
    decoder = MessageDecoder()
    with pytest.raises(RpcError) as info:
        decoder.feed(bytes([flag]) + b"\x00\x00\x00\x01x")
    assert info.value.code is StatusCode.INTERNAL
    assert str(flag) in info.value.message


def test_oversized_message_is_refused_from_the_prefix_alone() -> None:
    decoder = MessageDecoder(max_message_length=10)
    with pytest.raises(RpcError) as info:
        decoder.feed(encode_prefix(11, False))  # no payload bytes sent at all
    assert info.value.code is StatusCode.RESOURCE_EXHAUSTED
    assert info.value.message == "received message larger than max (11 vs. 10)"
    assert decoder.buffered_bytes == 0


def test_oversized_message_refused_when_the_prefix_is_split() -> None:
    decoder = MessageDecoder(max_message_length=10)
    decoder.feed(b"\x00\x00")
    with pytest.raises(RpcError) as info:
        decoder.feed(b"\x00\x00\x0b")
    assert info.value.code is StatusCode.RESOURCE_EXHAUSTED


def test_message_at_exactly_the_limit_is_accepted() -> None:
    decoder = MessageDecoder(max_message_length=10)
    assert decoder.feed(encode_message(b"0123456789", False)) == [
        ReceivedMessage(b"0123456789", False)
    ]


def test_no_limit_accepts_a_huge_prefix() -> None:
    decoder = MessageDecoder(max_message_length=None)
    assert decoder.feed(encode_prefix(2**32 - 1, False)) == []
    assert not decoder.at_message_boundary()


def test_errors_are_sticky() -> None:
    decoder = MessageDecoder(max_message_length=1)
    with pytest.raises(RpcError):
        decoder.feed(encode_prefix(2, False))
    # The rest of that message must not be taken for a new prefix.
    with pytest.raises(RpcError) as info:
        decoder.feed(b"\x00\x00\x00\x00\x00")
    assert info.value.code is StatusCode.RESOURCE_EXHAUSTED


@st.composite
def messages_and_chunks(draw: st.DrawFn) -> tuple[list[ReceivedMessage], list[bytes]]:
    messages = draw(
        st.lists(st.builds(ReceivedMessage, st.binary(max_size=300), st.booleans()), max_size=8)
    )
    data = b"".join(encode_message(m.payload, m.compressed) for m in messages)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return messages, [data[start:end] for start, end in itertools.pairwise(bounds)]


@given(messages_and_chunks())
def test_any_chunking_yields_the_same_messages(
    case: tuple[list[ReceivedMessage], list[bytes]],
) -> None:
    messages, chunks = case
    decoder = MessageDecoder()
    received: list[ReceivedMessage] = []
    for chunk in chunks:
        received += decoder.feed(chunk)
    assert received == messages
    assert decoder.at_message_boundary()
    assert decoder.buffered_bytes == 0


def test_large_message_in_16_kib_chunks_is_collected_in_linear_time() -> None:
    # 32 MiB in 2048 chunks. Re-copying the buffer on every chunk would move
    # about 32 GiB and take many seconds; collecting the chunks takes milliseconds.
    payload = bytes(range(256)) * (32 * 1024 * 4)
    data = encode_message(payload, False)
    chunk = 16 * 1024
    decoder = MessageDecoder(max_message_length=None)
    started = time.perf_counter()
    received: list[ReceivedMessage] = []
    for start in range(0, len(data), chunk):
        received += decoder.feed(data[start : start + chunk])
    elapsed = time.perf_counter() - started
    assert len(received) == 1
    assert received[0].payload == payload
    assert elapsed < 3.0
