"""Free-standing streaming calls: `ClientConn.start_stream`, `ClientCall.close`/`aclose`.

A call from `start_stream` is not tied to a block, so these tests step it from
different places (inside and outside other cancel scopes, after sleeping between
steps) and check what its user and the server see: the deadline enforced by each
operation, RST_STREAM(CANCEL) when it is let go early, the server's handler cancelled,
and the stream's slot on the connection free again for the next call.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from tests.wire.rawpeer import (
    RST_STREAM,
    RawPeer,
    RawServer,
    answer_each_request,
    grpc_message,
    response_headers,
    start_raw_server,
    trailers,
)
from wire.client import ClientConn
from wire.errors import RpcError
from wire.metadata import Metadata
from wire.server import Server, ServerCall, stream_stream, unary_stream
from wire.status import StatusCode
from wire.trace import TraceCollector

RST_CANCEL = 0x8  # RFC 9113 §7


@dataclass
class Handlers:
    """What the server's handlers saw, for the tests to wait on and assert."""

    cancelled: list[str] = field(default_factory=list)
    handler_cancelled: trio.Event = field(default_factory=trio.Event)
    started: int = 0


def make_server(seen: Handlers, **kwargs: Any) -> Server:
    async def first_then_hang(request: bytes, call: ServerCall) -> None:
        # One reply, then nothing until the client gives up on the call.
        seen.started += 1
        await call.send_message(b"first:" + request)
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            seen.cancelled.append(call.method)
            seen.handler_cancelled.set()
            raise

    async def count(request: bytes, call: ServerCall) -> AsyncIterator[bytes]:
        seen.started += 1
        for number in range(int(request)):
            yield b"%d" % number

    async def shout(call: ServerCall) -> None:
        async for message in call:
            await call.send_message(message.upper())

    server = Server(**kwargs)
    server.add_service(
        "t.Streams",
        {
            "Hang": unary_stream(first_then_hang),
            "Count": unary_stream(count),
            "Shout": stream_stream(shout),
        },
    )
    return server


@asynccontextmanager
async def connected(
    seen: Handlers, *, tracer: TraceCollector | None = None, **server_kwargs: Any
) -> AsyncIterator[ClientConn]:
    server = make_server(seen, **server_kwargs)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve_tcp, 0)
        async with ClientConn(f"127.0.0.1:{port}", tracer=tracer) as conn:
            yield conn
        await server.shutdown(1)


async def test_a_started_call_can_be_stepped_from_other_cancel_scopes() -> None:
    # The call outlives the scope it was started in, and each step runs inside a scope
    # of the caller's that is left before the next step: were the call holding a cancel
    # scope of its own between steps, leaving these blocks would break trio's stack.
    seen = Handlers()
    async with connected(seen) as conn:
        with trio.fail_after(5):
            call = await conn.start_stream("/t.Streams/Shout", timeout=5)
        try:
            for word in (b"a", b"b"):
                with trio.fail_after(5):
                    await call.send_message(word)
                    assert await call.receive_message() == word.upper()
            with trio.fail_after(5):
                await call.done_writing()
                assert [m async for m in call] == []
            assert call.code == StatusCode.OK
        finally:
            await call.aclose()


@dataclass
class SilentServer:
    """A server that answers each call with one message, then says nothing more.

    It never enforces the call's grpc-timeout (cryo's `Server` would, and its reset
    would end the call on its own): only the client's deadline can end these calls.
    `resets` records each RST_STREAM the client sent: (stream id, error code).
    """

    raw: RawServer | None = None
    resets: list[tuple[int, int]] = field(default_factory=list)
    reset_seen: trio.Event = field(default_factory=trio.Event)

    async def script(self, peer: RawPeer) -> None:
        answered: set[int] = set()
        reset: set[int] = set()
        while not peer.gone:
            await peer.receive()
            for stream_id, stream in list(peer.streams.items()):
                if stream_id not in answered:
                    answered.add(stream_id)
                    await peer.respond(
                        stream_id, headers=response_headers(), body=grpc_message(b"first")
                    )
                if stream.reset_code is not None and stream_id not in reset:
                    reset.add(stream_id)
                    self.resets.append((stream_id, stream.reset_code))
                    self.reset_seen.set()

    @property
    def target(self) -> str:
        assert self.raw is not None
        return f"127.0.0.1:{self.raw.port}"


async def start_silent_server(nursery: trio.Nursery) -> SilentServer:
    server = SilentServer()
    server.raw = await start_raw_server(nursery, server.script)
    return server


async def test_deadline_passing_while_an_operation_waits_gives_deadline_exceeded(
    nursery: trio.Nursery,
) -> None:
    server = await start_silent_server(nursery)
    async with ClientConn(server.target) as conn:
        call = await conn.start_stream("/t.Raw/Silent", timeout=0.3)
        try:
            await call.send_message(b"x")
            await call.done_writing()
            assert await call.receive_message() == b"first"
            started = trio.current_time()
            with trio.fail_after(5), pytest.raises(RpcError) as waiting:
                await call.receive_message()
            assert waiting.value.code == StatusCode.DEADLINE_EXCEEDED
            assert trio.current_time() - started < 1.0
            # Every later operation says the same, rather than hanging or CANCELLED.
            with pytest.raises(RpcError) as again:
                await call.receive_message()
            assert again.value.code == StatusCode.DEADLINE_EXCEEDED
            with pytest.raises(RpcError) as sending:
                await call.send_message(b"late")
            assert sending.value.code == StatusCode.DEADLINE_EXCEEDED
            # What came before the deadline stays readable.
            assert isinstance(await call.initial_metadata(), Metadata)
        finally:
            call.close()
        # The server was told: the stream was reset with CANCEL.
        with trio.fail_after(5):
            await server.reset_seen.wait()
        assert server.resets == [(call.stream_id, RST_CANCEL)]


async def test_deadline_that_passed_between_operations_is_enforced_by_the_next(
    nursery: trio.Nursery,
) -> None:
    # No scope is held while the caller does something else: the deadline passes in
    # its own code, and the next operation that has to wait reports it.
    server = await start_silent_server(nursery)
    async with ClientConn(server.target) as conn:
        call = await conn.start_stream("/t.Raw/Silent", timeout=0.2)
        try:
            await call.send_message(b"x")
            await call.done_writing()
            await trio.sleep(0.4)
            assert await call.receive_message() == b"first"  # already here: no wait
            with trio.fail_after(5), pytest.raises(RpcError) as caught:
                await call.receive_message()
            assert caught.value.code == StatusCode.DEADLINE_EXCEEDED
        finally:
            call.close()


async def test_a_server_enforcing_our_timeout_also_reads_as_deadline_exceeded() -> None:
    # cryo's server resets the stream with CANCEL when our grpc-timeout fires there;
    # if that reset is what the client meets, it is still the deadline.
    seen = Handlers()
    async with connected(seen) as conn:
        call = await conn.start_stream("/t.Streams/Hang", timeout=0.2)
        try:
            await call.send_message(b"x")
            await call.done_writing()
            with trio.fail_after(5):
                await seen.handler_cancelled.wait()  # the server's timer fired
            assert await call.receive_message() == b"first:x"
            with pytest.raises(RpcError) as caught:
                await call.receive_message()
            assert caught.value.code == StatusCode.DEADLINE_EXCEEDED
        finally:
            call.close()


async def test_deadline_passing_before_the_stream_opens() -> None:
    seen = Handlers()
    async with connected(seen) as conn:
        with pytest.raises(RpcError) as caught:
            await conn.start_stream("/t.Streams/Hang", timeout=0)
    assert caught.value.code == StatusCode.DEADLINE_EXCEEDED
    assert seen.started == 0


async def test_close_before_the_end_resets_the_stream_and_cancels_the_handler() -> None:
    seen = Handlers()
    async with connected(seen) as conn:
        call = await conn.start_stream("/t.Streams/Hang")
        await call.send_message(b"x")
        await call.done_writing()
        assert await call.receive_message() == b"first:x"
        await call.aclose()
        with trio.fail_after(5):
            await seen.handler_cancelled.wait()
        assert seen.cancelled == ["/t.Streams/Hang"]
        with pytest.raises(RpcError) as caught:
            await call.receive_message()
        assert caught.value.code == StatusCode.CANCELLED
        await call.aclose()  # a second close changes nothing


async def test_close_sends_rst_stream_cancel_on_the_wire(nursery: trio.Nursery) -> None:
    reset_codes: list[int] = []
    done = trio.Event()

    async def script(peer: RawPeer) -> None:
        # One message, then the stream stays open until the client resets it.
        await peer.wait_for(lambda: bool(peer.streams))
        stream_id = next(iter(peer.streams))
        await peer.respond(stream_id, headers=response_headers(), body=grpc_message(b"hi"))
        reset_codes.append(await peer.wait_reset(stream_id))
        done.set()
        await peer.wait_gone()

    server = await start_raw_server(nursery, script)
    async with ClientConn(f"127.0.0.1:{server.port}") as conn:
        call = await conn.start_stream("/t.Raw/Hang")
        with trio.fail_after(5):
            assert await call.receive_message() == b"hi"
        call.close()
        with trio.fail_after(5):
            await done.wait()
    assert reset_codes == [RST_CANCEL]


async def test_close_after_the_end_sends_no_reset(nursery: trio.Nursery) -> None:
    async def responder(peer: RawPeer, stream_id: int) -> None:
        await peer.respond(stream_id, headers=response_headers(), trailers=trailers(0))

    server = await start_raw_server(nursery, answer_each_request(responder))
    async with ClientConn(f"127.0.0.1:{server.port}") as conn:
        call = await conn.start_stream("/t.Raw/Empty")
        await call.done_writing()
        with trio.fail_after(5):
            assert await call.receive_message() is None
        await call.aclose()
        # A round trip after the close: anything it sent has reached the peer by then.
        with trio.fail_after(5):
            follow = await conn.start_stream("/t.Raw/Empty")
            await follow.done_writing()
            assert await follow.receive_message() is None
            await follow.aclose()
    assert [peer.frames_of(RST_STREAM) for peer in server.peers] == [[]]


async def open_count_call_when_allowed(
    conn: ClientConn, opened: trio.Event, *, task_status: trio.TaskStatus[None]
) -> None:
    """Start a Count call; it waits while the server's one stream is taken."""
    task_status.started()
    call = await conn.start_stream("/t.Streams/Count")
    try:
        opened.set()
        await call.send_message(b"2")
        await call.done_writing()
        assert [m async for m in call] == [b"0", b"1"]
    finally:
        call.close()


async def test_after_close_the_stream_slot_is_free() -> None:
    # The server allows one stream at a time: the waiting call may only start once
    # the first one's slot is given back, and must be woken when it is.
    seen = Handlers()
    async with connected(seen, max_concurrent_streams=1) as conn:
        first = await conn.start_stream("/t.Streams/Hang")
        await first.send_message(b"1")
        await first.done_writing()
        assert await first.receive_message() == b"first:1"
        opened = trio.Event()
        async with trio.open_nursery() as waiting:
            await waiting.start(open_count_call_when_allowed, conn, opened)
            await trio.sleep(0.3)
            assert not opened.is_set(), "a second stream opened past MAX_CONCURRENT_STREAMS"
            first.close()
            with trio.fail_after(5):
                await opened.wait()


async def test_a_dropped_call_is_let_go_soon_after() -> None:
    seen = Handlers()
    async with connected(seen, max_concurrent_streams=1) as conn:
        dropped = await conn.start_stream("/t.Streams/Hang")
        await dropped.send_message(b"1")
        await dropped.done_writing()
        assert await dropped.receive_message() == b"first:1"
        opened = trio.Event()
        async with trio.open_nursery() as waiting:
            await waiting.start(open_count_call_when_allowed, conn, opened)
            await trio.sleep(0.1)
            assert not opened.is_set()
            del dropped
            gc.collect()
            with trio.fail_after(5):
                await seen.handler_cancelled.wait()
                await opened.wait()


async def test_open_stream_frees_its_slot_through_the_same_close() -> None:
    seen = Handlers()
    async with connected(seen, max_concurrent_streams=1) as conn:
        opened = trio.Event()
        async with trio.open_nursery() as waiting:
            async with conn.open_stream("/t.Streams/Hang") as call:
                await call.send_message(b"1")
                await call.done_writing()
                assert await call.receive_message() == b"first:1"
                await waiting.start(open_count_call_when_allowed, conn, opened)
                await trio.sleep(0.1)
                assert not opened.is_set()
            with trio.fail_after(5):
                await seen.handler_cancelled.wait()
                await opened.wait()


async def test_a_started_call_is_traced_from_start_to_close() -> None:
    sink = TraceCollector()
    seen = Handlers()
    async with connected(seen, tracer=sink) as conn:
        call = await conn.start_stream("/t.Streams/Count", timeout=5)
        await call.send_message(b"2")
        await call.done_writing()
        assert [m async for m in call] == [b"0", b"1"]
        call.close()
    client = [e for e in sink.events if e.side == "client" and e.kind == "step"]
    root_end = next(e for e in client if e.name == "ClientConn.start_stream" and e.phase == "end")
    assert root_end.attrs["status"] == "OK"
    names = {e.name for e in client if e.phase == "start"}
    assert {"new_stream", "send_message", "done_writing"} <= names
    received = [e for e in client if e.name == "receive_message" and e.phase == "point"]
    assert len(received) == 2
    assert {e.call_id for e in client} == {root_end.call_id}


async def test_a_started_call_that_times_out_is_traced_as_such() -> None:
    sink = TraceCollector()
    seen = Handlers()
    async with connected(seen, tracer=sink) as conn:
        call = await conn.start_stream("/t.Streams/Hang", timeout=0.2)
        await call.send_message(b"x")
        await call.done_writing()
        assert await call.receive_message() == b"first:x"
        with pytest.raises(RpcError):
            await call.receive_message()
        call.close()
    root_end = next(
        e
        for e in sink.events
        if e.side == "client" and e.name == "ClientConn.start_stream" and e.phase == "end"
    )
    assert root_end.attrs["status"] == "DEADLINE_EXCEEDED"
