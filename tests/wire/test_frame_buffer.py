"""`ChunkedFrameBuffer` against h2's own `FrameBuffer`: the same frames and the same
errors from the same bytes, however the bytes are split into reads."""

from __future__ import annotations

from typing import Any

import h2.exceptions
import pytest
from h2.frame_buffer import FrameBuffer
from hyperframe.exceptions import InvalidPaddingError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.connection import ConnectionConfig, GrpcConnection
from wire.frame_buffer import SMALL_READ, ChunkedFrameBuffer

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_FRAME = 1 << 16


def data_frame(stream_id: int, data: bytes, *, end: bool, pad: int | None) -> DataFrame:
    frame = DataFrame(stream_id, data=data, flags=["END_STREAM"] if end else [])
    if pad is not None:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    return frame


def frame_strategy() -> st.SearchStrategy[list[Any]]:
    stream = st.integers(1, 9).map(lambda n: 2 * n - 1)
    data = st.builds(
        data_frame,
        stream,
        st.binary(max_size=3000),
        end=st.booleans(),
        pad=st.none() | st.integers(0, 255),
    )
    headers_block = st.builds(
        lambda sid, parts: [
            HeadersFrame(sid, data=parts[0], flags=[] if len(parts) > 1 else ["END_HEADERS"]),
            *(
                ContinuationFrame(
                    sid, data=part, flags=["END_HEADERS"] if i == len(parts) - 2 else []
                )
                for i, part in enumerate(parts[1:])
            ),
        ],
        stream,
        st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=4),
    )
    single = st.one_of(
        data,
        st.builds(lambda: SettingsFrame(0, settings={4: 1 << 20, 5: 1 << 15})),
        st.builds(lambda: SettingsFrame(0, flags=["ACK"])),
        st.builds(lambda d: PingFrame(0, opaque_data=d), st.binary(min_size=8, max_size=8)),
        st.builds(
            lambda sid, n: WindowUpdateFrame(sid, window_increment=n), stream, st.integers(1, 2**20)
        ),
        st.builds(lambda sid: RstStreamFrame(sid, error_code=8), stream),
        st.builds(
            lambda d: GoAwayFrame(0, last_stream_id=5, error_code=0, additional_data=d),
            st.binary(max_size=40),
        ),
    ).map(lambda f: [f])
    return st.lists(st.one_of(single, headers_block), max_size=12).map(
        lambda groups: [f for g in groups for f in g]
    )


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return pieces


def describe(frame: Any) -> tuple[Any, ...]:
    """Everything h2 reads from a received frame."""
    return (
        type(frame).__name__,
        frame.stream_id,
        sorted(frame.flags),
        frame.body_len,
        bytes(getattr(frame, "data", b"") or b""),
        getattr(frame, "pad_length", None) or 0,
        getattr(frame, "settings", None),
        getattr(frame, "opaque_data", None),
        getattr(frame, "window_increment", None),
        getattr(frame, "error_code", None),
        getattr(frame, "last_stream_id", None),
        getattr(frame, "additional_data", None),
    )


def parse(buffer_class: type[FrameBuffer], pieces: list[bytes], *, server: bool) -> Any:
    """The frames `buffer_class` yields for `pieces`, or the error it raised."""
    buffer = buffer_class(server=server)
    buffer.max_frame_size = MAX_FRAME
    out: list[tuple[Any, ...]] = []
    try:
        for piece in pieces:
            buffer.add_data(piece)
            out.extend(describe(f) for f in buffer)
    except (h2.exceptions.ProtocolError, InvalidPaddingError) as exc:
        # (h2's connection turns InvalidPaddingError into a PROTOCOL_ERROR itself.)
        return out, type(exc).__name__, str(exc)
    return out, None, None


@settings(max_examples=300, deadline=None)
@given(frame_strategy(), st.lists(st.integers(0, 10**6), max_size=12), st.booleans())
def test_the_same_frames_as_h2_however_the_bytes_are_split(
    frames: list[Any], cuts: list[int], server: bool
) -> None:
    wire_bytes = (PREFACE if server else b"") + b"".join(f.serialize() for f in frames)
    pieces = split(wire_bytes, cuts)
    mine = parse(ChunkedFrameBuffer, pieces, server=server)
    assert mine == parse(FrameBuffer, pieces, server=server)
    assert mine[1] is None
    # HEADERS blocks come out whole, CONTINUATIONs folded in, as h2 delivers them.
    assert not any(d[0] == "ContinuationFrame" for d in mine[0])


@pytest.mark.parametrize(
    ("name", "wire_bytes"),
    [
        ("bad client preface", b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n"),
        ("frame over the size limit", DataFrame(1, data=bytes(MAX_FRAME + 1)).serialize()),
        ("PING of the wrong length", b"\x00\x00\x07\x06\x00\x00\x00\x00\x00" + bytes(7)),
        ("padding longer than the body", b"\x00\x00\x03\x00\x08\x00\x00\x00\x01\x05ab"),
        (
            "DATA inside a header block",
            HeadersFrame(1, data=b"x").serialize() + DataFrame(1, data=b"y").serialize(),
        ),
        ("unknown frame type, then a PING", b"\x00\x00\x01\xee\x00\x00\x00\x00\x00z"),
    ],
)
@pytest.mark.parametrize("read_size", [1, 5, 1 << 20])
def test_the_same_errors_as_h2(name: str, wire_bytes: bytes, read_size: int) -> None:
    server = name == "bad client preface"
    if name.startswith("unknown"):
        wire_bytes += PingFrame(0, opaque_data=b"12345678").serialize()
    pieces = [wire_bytes[i : i + read_size] for i in range(0, len(wire_bytes), read_size)]
    mine = parse(ChunkedFrameBuffer, pieces, server=server)
    assert mine == parse(FrameBuffer, pieces, server=server)
    if name.startswith("unknown"):
        assert mine[1] is None and mine[0][-1][0] == "PingFrame"
    else:
        assert mine[1] is not None


def test_a_data_payload_is_handed_on_as_bytes_of_its_own() -> None:
    # One copy, and no view that would keep the whole read alive.
    payload = bytes(range(256)) * 64
    wire_bytes = DataFrame(1, data=payload).serialize() + DataFrame(3, data=b"z").serialize()
    buffer = ChunkedFrameBuffer()
    buffer.max_frame_size = MAX_FRAME
    buffer.add_data(wire_bytes[:100])
    assert list(buffer) == []
    buffer.add_data(wire_bytes[100:])
    first, second = list(buffer)
    assert isinstance(first, DataFrame) and isinstance(second, DataFrame)
    assert type(first.data) is bytes and first.data == payload
    assert type(second.data) is bytes and second.data == b"z"


def test_grpc_connections_parse_with_it() -> None:
    conn = GrpcConnection(ConnectionConfig(client_side=False))
    assert isinstance(conn._h2.incoming_buffer, ChunkedFrameBuffer)


def test_a_peer_that_drips_bytes_does_not_grow_the_queue_per_read() -> None:
    payload = bytes(20_000)
    wire_bytes = DataFrame(1, data=payload).serialize()
    buffer = ChunkedFrameBuffer()
    buffer.max_frame_size = MAX_FRAME
    for i in range(len(wire_bytes) - 1):
        buffer.add_data(wire_bytes[i : i + 1])
        assert list(buffer) == []
    assert len(buffer._chunks) <= len(wire_bytes) // SMALL_READ + 1  # not one per read
    buffer.add_data(wire_bytes[-1:])
    (frame,) = list(buffer)
    assert isinstance(frame, DataFrame) and frame.data == payload
