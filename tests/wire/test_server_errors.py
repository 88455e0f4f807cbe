"""The server's error paths (wire.md), driven by a raw HTTP/2 client that sends any frame.

Each test starts a cryo `Server` on a loopback port, sends it requests a real, buggy or
hostile client might send, and checks the frames that come back and what the handler saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import h2.errors
import pytest
import trio

from tests.wire.rawpeer import (
    HEADERS,
    RST_STREAM,
    RawPeer,
    RawStream,
    grpc_message,
    open_raw_client,
    request_headers,
)
from wire.client import ClientConn
from wire.errors import RpcError
from wire.server import Server, ServerCall, stream_stream, unary_stream, unary_unary
from wire.status import StatusCode

GUARD = 5  # seconds; no test may hang
SERVICE = "cryo.test.Echo"
_ERR = h2.errors.ErrorCodes


@dataclass
class HandlerLog:
    """What the handlers saw: how often they ran, and whether they were cancelled."""

    runs: int = 0
    started: trio.Event = field(default_factory=trio.Event)
    cancelled: trio.Event = field(default_factory=trio.Event)


def _make_server(log: HandlerLog, **kwargs: Any) -> Server:
    async def unary(request: bytes, call: ServerCall) -> bytes:
        log.runs += 1
        return b"echo:" + request

    async def fail(request: bytes, call: ServerCall) -> bytes:
        log.runs += 1
        raise ValueError("secret /etc/cryo/private.key")

    async def sleep(request: bytes, call: ServerCall) -> bytes:
        log.runs += 1
        log.started.set()
        try:
            await trio.sleep(10)
        except trio.Cancelled:
            log.cancelled.set()
            raise
        return b"woke up"

    async def stream(request: bytes, call: ServerCall) -> None:
        log.runs += 1
        await call.send_message(b"first")
        log.started.set()
        try:
            await trio.sleep(10)
        except trio.Cancelled:
            log.cancelled.set()
            raise

    async def chat(call: ServerCall) -> None:
        log.runs += 1
        try:
            async for message in call:
                await call.send_message(b"echo:" + message)
                log.started.set()
        except trio.Cancelled:
            log.cancelled.set()
            raise

    server = Server(**kwargs)
    server.add_service(
        SERVICE,
        {
            "Unary": unary_unary(unary),
            "Fail": unary_unary(fail),
            "Sleep": unary_unary(sleep),
            "Stream": unary_stream(stream),
            "Chat": stream_stream(chat),
        },
    )
    return server


async def _start(nursery: trio.Nursery, log: HandlerLog, **kwargs: Any) -> tuple[Server, int]:
    server = _make_server(log, **kwargs)
    port: int = await nursery.start(server.serve_tcp, 0)
    return server, port


def _path(method: str, service: str = SERVICE) -> bytes:
    return f"/{service}/{method}".encode()


async def _exchange(
    port: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    end_stream: bool = True,
) -> tuple[RawPeer, RawStream]:
    async with open_raw_client(port) as peer:
        stream_id = await peer.send_request(headers, body, end_stream=end_stream)
        stream = await peer.wait_stream_done(stream_id)
    return peer, stream


def _grpc_status(stream: RawStream) -> int | None:
    value = stream.header(b"grpc-status")
    return int(value) if value is not None else None


def _is_trailers_only(peer: RawPeer, stream_id: int) -> bool:
    """One HEADERS frame carrying END_STREAM, and nothing else but an optional RST."""
    frames = [frame for frame in peer.frames_on(stream_id) if frame.type != RST_STREAM]
    return len(frames) == 1 and frames[0].type == HEADERS and frames[0].end_stream


# -- request validation ----------------------------------------------------------------------


async def test_wrong_content_type_is_http_415(nursery: trio.Nursery) -> None:
    log = HandlerLog()
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log)
        _, stream = await _exchange(
            port,
            request_headers(_path("Unary"), content_type=b"text/plain"),
            grpc_message(b"hi"),
        )
    assert stream.header(b":status") == b"415"
    assert log.runs == 0


async def test_get_is_http_405(nursery: trio.Nursery) -> None:
    log = HandlerLog()
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log)
        _, stream = await _exchange(port, request_headers(_path("Unary"), method=b"GET"))
    assert stream.header(b":status") == b"405"
    assert log.runs == 0


async def test_unknown_request_encoding_is_unimplemented_and_lists_accepted(
    nursery: trio.Nursery,
) -> None:
    log = HandlerLog()
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log)
        peer, stream = await _exchange(
            port,
            request_headers(_path("Unary"), extra=[(b"grpc-encoding", b"snappy")]),
            grpc_message(b"squashed", flag=1),
        )
    assert stream.header(b":status") == b"200"
    assert _grpc_status(stream) == StatusCode.UNIMPLEMENTED
    assert _is_trailers_only(peer, stream.stream_id)
    accepted = (stream.header(b"grpc-accept-encoding") or b"").split(b",")
    assert {name.strip() for name in accepted} >= {b"gzip", b"deflate", b"identity"}
    assert log.runs == 0


@pytest.mark.parametrize("value", [b"1x", b"123456789S", b"-1S", b""])
async def test_malformed_grpc_timeout_is_internal(nursery: trio.Nursery, value: bytes) -> None:
    log = HandlerLog()
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log)
        _, stream = await _exchange(
            port,
            request_headers(_path("Unary"), extra=[(b"grpc-timeout", value)]),
            grpc_message(b"hi"),
        )
    assert _grpc_status(stream) == StatusCode.INTERNAL
    assert log.runs == 0


async def test_well_formed_grpc_timeout_is_accepted(nursery: trio.Nursery) -> None:
    # The counterpart of the malformed values: the same request with "5S" is served.
    log = HandlerLog()
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log)
        _, stream = await _exchange(
            port,
            request_headers(_path("Unary"), extra=[(b"grpc-timeout", b"5S")]),
            grpc_message(b"hi"),
        )
    assert _grpc_status(stream) == StatusCode.OK
    assert stream.messages() == [(0, b"echo:hi")]


async def test_bad_base64_in_bin_metadata_is_internal(nursery: trio.Nursery) -> None:
    log = HandlerLog()
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log)
        _, stream = await _exchange(
            port,
            request_headers(_path("Unary"), extra=[(b"trace-bin", b"!!not*base64!!")]),
            grpc_message(b"hi"),
        )
    assert _grpc_status(stream) == StatusCode.INTERNAL
    assert log.runs == 0


async def test_request_over_the_size_limit_is_resource_exhausted(nursery: trio.Nursery) -> None:
    log = HandlerLog()
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log, max_receive_message_length=1024)
        _, stream = await _exchange(
            port, request_headers(_path("Unary")), grpc_message(b"x" * 2000)
        )
    assert _grpc_status(stream) == StatusCode.RESOURCE_EXHAUSTED


async def test_oversized_request_fails_from_its_prefix_alone(nursery: trio.Nursery) -> None:
    # 100 MiB announced, 4 KiB sent, the stream left open: only a decision taken on
    # the prefix can answer this.
    log = HandlerLog()
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log)
        _, stream = await _exchange(
            port,
            request_headers(_path("Unary")),
            grpc_message(b"x" * 4096, length=100 * 1024 * 1024),
            end_stream=False,
        )
    assert _grpc_status(stream) == StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], grpc_message(b"hi", flag=2)),
        ([], grpc_message(b"hi", flag=1)),
        ([(b"grpc-encoding", b"identity")], grpc_message(b"hi", flag=1)),
    ],
    ids=["flag-2", "flag-1-without-encoding", "flag-1-under-identity"],
)
async def test_bad_compressed_flag_is_internal(
    nursery: trio.Nursery, extra: list[tuple[bytes, bytes]], message: bytes
) -> None:
    log = HandlerLog()
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log)
        _, stream = await _exchange(port, request_headers(_path("Unary"), extra=extra), message)
    assert _grpc_status(stream) == StatusCode.INTERNAL


# -- unknown methods --------------------------------------------------------------------------


async def test_unknown_service_is_unimplemented_trailers_only(nursery: trio.Nursery) -> None:
    log = HandlerLog()
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log)
        peer, stream = await _exchange(
            port, request_headers(_path("Unary", service="no.such.Service")), grpc_message(b"hi")
        )
    assert _grpc_status(stream) == StatusCode.UNIMPLEMENTED
    assert stream.header(b"grpc-message") == b"unknown service no.such.Service"
    assert _is_trailers_only(peer, stream.stream_id)


async def test_unknown_method_is_unimplemented_trailers_only(nursery: trio.Nursery) -> None:
    log = HandlerLog()
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log)
        peer, stream = await _exchange(
            port, request_headers(_path("NoSuchMethod")), grpc_message(b"hi")
        )
    assert _grpc_status(stream) == StatusCode.UNIMPLEMENTED
    message = stream.header(b"grpc-message") or b""
    assert b"NoSuchMethod" in message
    assert _is_trailers_only(peer, stream.stream_id)


# -- handler failures and deadlines -----------------------------------------------------------


async def test_handler_exception_is_unknown_without_internals(nursery: trio.Nursery) -> None:
    log = HandlerLog()
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log)
        _, stream = await _exchange(port, request_headers(_path("Fail")), grpc_message(b"hi"))
    assert log.runs == 1
    assert _grpc_status(stream) == StatusCode.UNKNOWN
    message = stream.header(b"grpc-message") or b""
    assert b"secret" not in message
    assert b"/etc" not in message
    assert b"ValueError" not in message


async def test_grpc_timeout_cancels_handler_and_resets_stream(nursery: trio.Nursery) -> None:
    log = HandlerLog()
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log)
        async with open_raw_client(port) as peer:
            stream_id = await peer.send_request(
                request_headers(_path("Sleep"), extra=[(b"grpc-timeout", b"100m")]),
                grpc_message(b"hi"),
            )
            sent = trio.current_time()
            code = await peer.wait_reset(stream_id)
            elapsed = trio.current_time() - sent
        with trio.fail_after(1):
            await log.cancelled.wait()
    assert code == _ERR.CANCEL
    assert 0.1 <= elapsed < 1.0
    assert log.cancelled.is_set()


# -- how a call ends -----------------------------------------------------------------------------


async def test_ok_has_grpc_status_in_trailers_and_no_reset_after_half_close(
    nursery: trio.Nursery,
) -> None:
    log = HandlerLog()
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log)
        peer, stream = await _exchange(port, request_headers(_path("Unary")), grpc_message(b"hi"))
        # Give a RST_STREAM that should not come the chance to arrive.
        await trio.sleep(0.05)
    assert stream.headers is not None and stream.trailers is not None
    assert _grpc_status(RawStream(0, trailers=stream.trailers)) == StatusCode.OK
    assert stream.messages() == [(0, b"echo:hi")]
    assert not [frame for frame in peer.frames_on(stream.stream_id) if frame.type == RST_STREAM]


async def test_server_finishing_before_half_close_resets_with_no_error(
    nursery: trio.Nursery,
) -> None:
    log = HandlerLog()
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log)
        async with open_raw_client(port) as peer:
            # The request message, but no END_STREAM: the client has not half-closed.
            stream_id = await peer.send_request(
                request_headers(_path("Unary")), grpc_message(b"hi"), end_stream=False
            )
            code = await peer.wait_reset(stream_id)
            stream = peer.stream_state(stream_id)
    assert stream.trailers is not None
    assert _grpc_status(RawStream(0, trailers=stream.trailers)) == StatusCode.OK
    assert stream.messages() == [(0, b"echo:hi")]
    assert code == _ERR.NO_ERROR
    frames = peer.frames_on(stream_id)
    trailer_index = max(i for i, f in enumerate(frames) if f.type == HEADERS and f.end_stream)
    reset_index = next(i for i, f in enumerate(frames) if f.type == RST_STREAM)
    assert trailer_index < reset_index


@pytest.mark.parametrize("method", ["Stream", "Chat"])
async def test_client_cancel_cancels_the_handler(nursery: trio.Nursery, method: str) -> None:
    log = HandlerLog()
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log)
        async with ClientConn(f"127.0.0.1:{port}") as conn:
            async with conn.open_stream(f"/{SERVICE}/{method}") as call:
                await call.send_message(b"hi")
                if method == "Stream":
                    await call.done_writing()
                assert await call.receive_message() in (b"first", b"echo:hi")
                await log.started.wait()
                call.cancel()
                with pytest.raises(RpcError) as info:
                    await call.receive_message()
            with trio.fail_after(1):
                await log.cancelled.wait()
    assert info.value.code == StatusCode.CANCELLED
