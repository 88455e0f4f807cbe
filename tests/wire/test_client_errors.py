"""The client's error paths (wire.md), against a raw HTTP/2 server that scripts each frame.

Every test points a cryo `ClientConn` at a `RawServer` that answers in a way a real,
buggy or hostile server might, and checks what the caller of `invoke` sees.
"""

from __future__ import annotations

import base64
import gzip
import re

import h2.errors
import h2.events
import pytest
import trio

from tests.wire.rawpeer import (
    DATA,
    RawPeer,
    Script,
    answer_each_request,
    first_value,
    grpc_message,
    header_names,
    response_headers,
    start_raw_server,
    trailers,
)
from wire.client import ClientConn
from wire.errors import RpcError
from wire.metadata import InvalidMetadata, Metadata
from wire.status import StatusCode

METHOD = "/cryo.test.Echo/Unary"
GUARD = 5  # seconds; no test may hang
_ERR = h2.errors.ErrorCodes


def _is_request(event: h2.events.Event) -> bool:
    return isinstance(event, h2.events.RequestReceived)


def _respond_with(
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    trailer_block: list[tuple[bytes, bytes]] | None = None,
    end_with_data: bool = False,
) -> Script:
    async def responder(peer: RawPeer, stream_id: int) -> None:
        await peer.respond(
            stream_id,
            headers=headers,
            body=body,
            trailers=trailer_block,
            end_with_data=end_with_data,
        )

    return answer_each_request(responder)


async def _call_error(nursery: trio.Nursery, script: Script) -> RpcError:
    server = await start_raw_server(nursery, script)
    async with ClientConn(f"127.0.0.1:{server.port}") as conn:
        with pytest.raises(RpcError) as info:
            await conn.invoke(METHOD, b"ping")
    return info.value


# -- status from the response -----------------------------------------------------------


async def test_trailers_only_status_and_percent_encoded_message(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        # "café ☕ 100%" percent-encoded as a server must (UTF-8 bytes, and % itself).
        script = _respond_with(
            headers=response_headers() + trailers(5, b"caf%C3%A9 %E2%98%95 100%25 not found"),
        )
        error = await _call_error(nursery, script)
    assert error.code == StatusCode.NOT_FOUND
    assert error.message == "café ☕ 100% not found"


@pytest.mark.parametrize(
    ("http_status", "expected"),
    [
        (400, StatusCode.INTERNAL),
        (401, StatusCode.UNAUTHENTICATED),
        (403, StatusCode.PERMISSION_DENIED),
        (404, StatusCode.UNIMPLEMENTED),
        (429, StatusCode.UNAVAILABLE),
        (502, StatusCode.UNAVAILABLE),
        (503, StatusCode.UNAVAILABLE),
        (504, StatusCode.UNAVAILABLE),
        (500, StatusCode.UNKNOWN),
    ],
)
async def test_http_status_without_grpc_status(
    nursery: trio.Nursery, http_status: int, expected: StatusCode
) -> None:
    with trio.fail_after(GUARD):
        # What a proxy in front of the server sends: an HTTP error page, no gRPC at all.
        script = _respond_with(
            headers=response_headers(status=str(http_status).encode(), content_type=b"text/plain"),
            body=b"upstream trouble",
            end_with_data=True,
        )
        error = await _call_error(nursery, script)
    assert error.code == expected
    assert str(http_status) in error.message


async def test_non_grpc_content_type_is_unknown(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        script = _respond_with(
            headers=response_headers(content_type=b"text/html"),
            body=b"<html>hello</html>",
            end_with_data=True,
        )
        error = await _call_error(nursery, script)
    assert error.code == StatusCode.UNKNOWN


# -- the compressed flag ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "message"),
    [
        (None, grpc_message(b"hello", flag=2)),
        (b"gzip", grpc_message(gzip.compress(b"hello"), flag=2)),
        (None, grpc_message(gzip.compress(b"hello"), flag=1)),
        (b"snappy", grpc_message(b"hello", flag=1)),
    ],
    ids=["flag-2", "flag-2-under-gzip", "flag-1-without-encoding", "flag-1-unknown-encoding"],
)
async def test_bad_compressed_flag_is_internal(
    nursery: trio.Nursery, encoding: bytes | None, message: bytes
) -> None:
    extra = [(b"grpc-encoding", encoding)] if encoding is not None else []
    with trio.fail_after(GUARD):
        script = _respond_with(
            headers=response_headers(extra=extra), body=message, trailer_block=trailers(0)
        )
        error = await _call_error(nursery, script)
    assert error.code == StatusCode.INTERNAL


async def test_uncompressed_message_under_gzip_is_legal(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        script = _respond_with(
            headers=response_headers(extra=[(b"grpc-encoding", b"gzip")]),
            body=grpc_message(b"plain reply", flag=0),
            trailer_block=trailers(0),
        )
        server = await start_raw_server(nursery, script)
        async with ClientConn(f"127.0.0.1:{server.port}") as conn:
            reply = await conn.invoke(METHOD, b"ping")
    assert reply == b"plain reply"


async def test_compressed_reply_is_decompressed(nursery: trio.Nursery) -> None:
    # The counterpart of the failures above: flag 1 under a known encoding works.
    with trio.fail_after(GUARD):
        script = _respond_with(
            headers=response_headers(extra=[(b"grpc-encoding", b"gzip")]),
            body=grpc_message(gzip.compress(b"squeezed"), flag=1),
            trailer_block=trailers(0),
        )
        server = await start_raw_server(nursery, script)
        async with ClientConn(f"127.0.0.1:{server.port}") as conn:
            reply = await conn.invoke(METHOD, b"ping")
    assert reply == b"squeezed"


# -- size limit ----------------------------------------------------------------------------


async def test_oversized_reply_fails_from_its_prefix_alone(nursery: trio.Nursery) -> None:
    """A prefix announcing 100 MiB fails the call at once, though only 4 KiB follow.

    If the client waited to buffer the payload the call could never end (the rest is
    never sent): so ending promptly with RESOURCE_EXHAUSTED proves the check comes first.
    """
    announced = 100 * 1024 * 1024
    reset_seen = trio.Event()
    reset_code: list[int] = []

    async def script(peer: RawPeer) -> None:
        stream_id = (await peer.next_event(_is_request)).stream_id  # type: ignore[attr-defined]
        await peer.respond(
            stream_id,
            headers=response_headers(),
            body=grpc_message(b"x" * 4096, length=announced),
        )
        reset_code.append(await peer.wait_reset(stream_id))
        reset_seen.set()
        await peer.wait_gone()

    with trio.fail_after(GUARD):
        server = await start_raw_server(nursery, script)
        async with ClientConn(f"127.0.0.1:{server.port}") as conn:
            with pytest.raises(RpcError) as info:
                await conn.invoke(METHOD, b"ping")
            await reset_seen.wait()
    assert info.value.code == StatusCode.RESOURCE_EXHAUSTED
    assert str(announced) in info.value.message
    # The client also stopped the stream, so the server stops sending it.
    assert reset_code == [h2.errors.ErrorCodes.CANCEL]


# -- malformed endings ---------------------------------------------------------------------


async def test_trailers_without_grpc_status_are_internal(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        script = _respond_with(
            headers=response_headers(),
            body=grpc_message(b"reply"),
            trailer_block=[(b"x-some-trailer", b"yes")],
        )
        error = await _call_error(nursery, script)
    assert error.code == StatusCode.INTERNAL


async def test_end_stream_on_data_without_trailers_is_internal(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        script = _respond_with(
            headers=response_headers(), body=grpc_message(b"reply"), end_with_data=True
        )
        error = await _call_error(nursery, script)
    assert error.code == StatusCode.INTERNAL


async def test_stream_ending_mid_message_is_internal_even_with_ok_status(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(GUARD):
        # 10 bytes announced, 3 sent, then trailers that claim OK.
        script = _respond_with(
            headers=response_headers(),
            body=grpc_message(b"abc", length=10),
            trailer_block=trailers(0),
        )
        error = await _call_error(nursery, script)
    assert error.code == StatusCode.INTERNAL


async def test_stream_ending_mid_prefix_is_internal(nursery: trio.Nursery) -> None:
    with trio.fail_after(GUARD):
        script = _respond_with(headers=response_headers(), body=b"\x00\x00", end_with_data=True)
        error = await _call_error(nursery, script)
    assert error.code == StatusCode.INTERNAL


# -- RST_STREAM ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error_code", "expected"),
    [
        (_ERR.CANCEL, StatusCode.CANCELLED),
        (_ERR.REFUSED_STREAM, StatusCode.UNAVAILABLE),
        (_ERR.ENHANCE_YOUR_CALM, StatusCode.RESOURCE_EXHAUSTED),
        (_ERR.INADEQUATE_SECURITY, StatusCode.PERMISSION_DENIED),
        (_ERR.FLOW_CONTROL_ERROR, StatusCode.RESOURCE_EXHAUSTED),
        (_ERR.INTERNAL_ERROR, StatusCode.INTERNAL),
    ],
    ids=lambda value: getattr(value, "name", str(value)),
)
async def test_rst_stream_code_maps_to_status(
    nursery: trio.Nursery, error_code: int, expected: StatusCode
) -> None:
    async def responder(peer: RawPeer, stream_id: int) -> None:
        await peer.reset(stream_id, error_code)

    with trio.fail_after(GUARD):
        error = await _call_error(nursery, answer_each_request(responder))
    assert error.code == expected


# -- deadlines ------------------------------------------------------------------------------

_TIMEOUT_VALUE = re.compile(rb"([0-9]{1,8})([HMSmun])")
_UNIT_SECONDS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


async def test_deadline_sends_grpc_timeout_then_cancels_the_stream(
    nursery: trio.Nursery,
) -> None:
    timeout = 0.3
    seen: dict[str, object] = {}
    reset_seen = trio.Event()

    async def script(peer: RawPeer) -> None:
        stream_id = (await peer.next_event(_is_request)).stream_id  # type: ignore[attr-defined]
        seen["grpc-timeout"] = first_value(peer.stream_state(stream_id).headers, b"grpc-timeout")
        # Never answer: the client's deadline must end the call.
        seen["reset"] = await peer.wait_reset(stream_id)
        reset_seen.set()
        await peer.wait_gone()

    with trio.fail_after(GUARD):
        server = await start_raw_server(nursery, script)
        async with ClientConn(f"127.0.0.1:{server.port}") as conn:
            started = trio.current_time()
            with pytest.raises(RpcError) as info:
                await conn.invoke(METHOD, b"ping", timeout=timeout)
            elapsed = trio.current_time() - started
            await reset_seen.wait()
    assert info.value.code == StatusCode.DEADLINE_EXCEEDED
    assert timeout <= elapsed < timeout + 1
    raw = seen["grpc-timeout"]
    assert isinstance(raw, bytes)
    match = _TIMEOUT_VALUE.fullmatch(raw)
    assert match is not None, raw
    announced = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    assert 0 < announced <= timeout
    assert seen["reset"] == _ERR.CANCEL


async def test_deadline_already_passed_fails_without_connecting() -> None:
    # A bound socket that does not listen: any connection attempt would be refused
    # and reported as UNAVAILABLE, so DEADLINE_EXCEEDED proves none was made.
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    try:
        with trio.fail_after(GUARD):
            async with ClientConn(f"127.0.0.1:{port}") as conn:
                with pytest.raises(RpcError) as info:
                    await conn.invoke(METHOD, b"ping", timeout=0)
                # The same target really is unreachable: a call without a deadline says so.
                with pytest.raises(RpcError) as unreachable:
                    await conn.invoke(METHOD, b"ping")
    finally:
        sock.close()
    assert info.value.code == StatusCode.DEADLINE_EXCEEDED
    assert unreachable.value.code == StatusCode.UNAVAILABLE


async def test_cancelling_a_block_around_client_conn_unwinds_cleanly(
    nursery: trio.Nursery,
) -> None:
    # A caller's own deadline around the whole `async with ClientConn` block, while a
    # call waits on a server that never answers: the block must unwind like any other.
    connection_closed = trio.Event()

    async def script(peer: RawPeer) -> None:
        await peer.wait_gone()
        connection_closed.set()

    server = await start_raw_server(nursery, script)
    with trio.fail_after(GUARD):
        with trio.move_on_after(0.2) as outer:
            async with ClientConn(f"127.0.0.1:{server.port}") as conn:
                await conn.invoke(METHOD, b"ping")
        assert outer.cancelled_caught
        # The connection went away with the block, and trio carries on as usual.
        await connection_closed.wait()
        await trio.lowlevel.checkpoint()


# -- what the request looks like on the wire ---------------------------------------------------


async def test_request_headers_order_metadata_and_end_stream(nursery: trio.Nursery) -> None:
    async def responder(peer: RawPeer, stream_id: int) -> None:
        await peer.respond(
            stream_id,
            headers=response_headers(),
            body=grpc_message(b"ok"),
            trailers=trailers(0),
        )

    with trio.fail_after(GUARD):
        server = await start_raw_server(nursery, answer_each_request(responder))
        metadata = Metadata([("x-custom", "value 1"), ("trace-bin", b"\x00\x01\x02\xff")])
        async with ClientConn(f"127.0.0.1:{server.port}") as conn:
            await conn.invoke(METHOD, b"x" * 1000, timeout=5, metadata=metadata, compression="gzip")
    peer = server.peers[0]
    stream = peer.stream_state(1)
    assert stream.headers is not None
    assert header_names(stream.headers) == [
        b":method",
        b":scheme",
        b":path",
        b":authority",
        b"te",
        b"grpc-timeout",
        b"content-type",
        b"grpc-encoding",
        b"grpc-accept-encoding",
        b"user-agent",
        b"x-custom",
        b"trace-bin",
    ]
    values = dict(stream.headers)
    assert values[b":method"] == b"POST"
    assert values[b":path"] == METHOD.encode()
    assert values[b":authority"] == f"127.0.0.1:{server.port}".encode()
    assert values[b"te"] == b"trailers"
    assert values[b"content-type"].startswith(b"application/grpc")
    assert values[b"grpc-encoding"] == b"gzip"
    assert values[b"user-agent"].startswith(b"grpc-python-cryo/")
    assert values[b"x-custom"] == b"value 1"
    # -bin values travel as unpadded base64.
    assert values[b"trace-bin"] == base64.b64encode(b"\x00\x01\x02\xff").rstrip(b"=")
    assert b"=" not in values[b"trace-bin"]
    # The one message, gzip-compressed, carries END_STREAM on its own DATA frame.
    [(flag, payload)] = stream.messages()
    assert flag == 1 and gzip.decompress(payload) == b"x" * 1000
    data_frames = [frame for frame in peer.frames_on(1) if frame.type == DATA]
    assert data_frames[-1].end_stream
    assert data_frames[-1].payload  # not an empty frame sent just to end the stream
    assert not any(frame.end_stream for frame in data_frames[:-1])


@pytest.mark.parametrize(
    "pairs",
    [
        [("bad key", "value")],
        [("x-custom", "caf\u00e9")],
        [("x-custom", "line\nbreak")],
        [("trace-bin", "not bytes")],
        [("x-custom", b"bytes for a text key")],
    ],
    ids=["space-in-key", "non-ascii-value", "control-char", "str-for-bin", "bytes-for-text"],
)
async def test_invalid_metadata_fails_before_anything_is_sent(
    nursery: trio.Nursery, pairs: list[tuple[str, str | bytes]]
) -> None:
    async def responder(peer: RawPeer, stream_id: int) -> None:
        raise AssertionError("no request may reach the server")

    with trio.fail_after(GUARD):
        server = await start_raw_server(nursery, answer_each_request(responder))
        # Built up front, as most callers do...
        with pytest.raises(InvalidMetadata):
            Metadata(pairs)
        # ...or handed to the call as plain pairs, as grpcio users write it.
        async with ClientConn(f"127.0.0.1:{server.port}") as conn:
            with pytest.raises(InvalidMetadata):
                await conn.invoke(METHOD, b"ping", metadata=pairs)
            with pytest.raises(InvalidMetadata):
                async with conn.open_stream(METHOD, metadata=pairs):
                    raise AssertionError("the stream must not open")
    assert server.peers == []  # not even a connection was made


async def test_uppercase_metadata_key_is_sent_lower_cased(nursery: trio.Nursery) -> None:
    # HTTP/2 forbids upper-case header names; Metadata lower-cases keys (as grpc-go's
    # metadata.New does), so the header that leaves is legal.
    async def responder(peer: RawPeer, stream_id: int) -> None:
        await peer.respond(
            stream_id, headers=response_headers(), body=grpc_message(b"ok"), trailers=trailers(0)
        )

    with trio.fail_after(GUARD):
        server = await start_raw_server(nursery, answer_each_request(responder))
        async with ClientConn(f"127.0.0.1:{server.port}") as conn:
            await conn.invoke(METHOD, b"ping", metadata=Metadata([("X-Mixed-Case", "v")]))
    headers = server.peers[0].stream_state(1).headers
    assert first_value(headers, b"x-mixed-case") == b"v"
    assert not any(name != name.lower() for name in header_names(headers or []))
