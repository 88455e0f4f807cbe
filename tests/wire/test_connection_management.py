"""Connection management (wire.md): GOAWAY, lost connections, stream limits, flow control,
keepalive enforcement and graceful shutdown, each checked frame by frame with a raw peer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import h2.errors
import h2.events
import h2.settings
import pytest
import trio

from tests.wire.rawpeer import (
    DATA,
    FLAG_ACK,
    GOAWAY,
    PING,
    SETTINGS,
    PeerGone,
    RawPeer,
    answer_each_request,
    grpc_message,
    open_raw_client,
    request_headers,
    response_headers,
    start_raw_server,
    trailers,
)
from wire.client import ClientConn
from wire.errors import RpcError
from wire.server import Server, ServerCall, unary_stream, unary_unary
from wire.status import StatusCode

GUARD = 5  # seconds; no test may hang
METHOD = "/cryo.test.Echo/Unary"
_ERR = h2.errors.ErrorCodes
_SETTING = h2.settings.SettingCodes


async def _echo(peer: RawPeer, stream_id: int) -> None:
    """Answer a request with its own message, prefixed, and status OK."""
    [(_, payload)] = peer.stream_state(stream_id).messages()
    await peer.respond(
        stream_id,
        headers=response_headers(),
        body=grpc_message(b"echo:" + payload),
        trailers=trailers(0),
    )


# -- GOAWAY and lost connections (client side) ---------------------------------------------


async def test_goaway_finishes_lower_stream_fails_higher_and_next_call_reconnects(
    nursery: trio.Nursery,
) -> None:
    first_connection = answer_each_request(_echo)

    async def script(peer: RawPeer) -> None:
        if peer is not server.peers[0]:
            await first_connection(peer)
            return
        # Both calls must be in before the GOAWAY says only stream 1 will be processed.
        await peer.wait_for(lambda: peer.stream_state(1).ended and peer.stream_state(3).ended)
        await peer.send_goaway(last_stream_id=1)
        await _echo(peer, 1)
        await peer.wait_gone()

    results: dict[bytes, bytes | RpcError] = {}

    async def call(conn: ClientConn, name: bytes) -> None:
        try:
            results[name] = await conn.invoke(METHOD, name)
        except RpcError as exc:
            results[name] = exc

    with trio.fail_after(GUARD):
        server = await start_raw_server(nursery, script)
        async with ClientConn(f"127.0.0.1:{server.port}") as conn:
            async with trio.open_nursery() as calls:
                calls.start_soon(call, conn, b"a")
                calls.start_soon(call, conn, b"b")
            third = await conn.invoke(METHOD, b"c")
    [(_, on_stream_1)] = server.peers[0].stream_state(1).messages()
    [(_, on_stream_3)] = server.peers[0].stream_state(3).messages()
    assert results[on_stream_1] == b"echo:" + on_stream_1
    refused = results[on_stream_3]
    assert isinstance(refused, RpcError)
    assert refused.code == StatusCode.UNAVAILABLE
    # The call after the GOAWAY went out on a new connection.
    assert third == b"echo:c"
    assert len(server.peers) == 2
    assert server.peers[1].stream_state(1).messages() == [(0, b"c")]


async def test_connection_lost_mid_call_is_unavailable_and_next_call_reconnects(
    nursery: trio.Nursery,
) -> None:
    later_connections = answer_each_request(_echo)

    async def script(peer: RawPeer) -> None:
        if peer is not server.peers[0]:
            await later_connections(peer)
            return
        await peer.wait_for(lambda: peer.stream_state(1).ended)
        await peer.close()  # mid-call: headers and message in, no answer, socket gone

    with trio.fail_after(GUARD):
        server = await start_raw_server(nursery, script)
        async with ClientConn(f"127.0.0.1:{server.port}") as conn:
            with pytest.raises(RpcError) as info:
                await conn.invoke(METHOD, b"lost")
            reply = await conn.invoke(METHOD, b"again")
    assert info.value.code == StatusCode.UNAVAILABLE
    assert reply == b"echo:again"
    assert len(server.peers) == 2


# -- the peer's settings -----------------------------------------------------------------------


async def test_max_concurrent_streams_is_respected(nursery: trio.Nursery) -> None:
    most_open = 0

    async def script(peer: RawPeer) -> None:
        nonlocal most_open
        open_now: set[int] = set()
        while not peer.gone:
            for event in await peer.receive():
                if isinstance(event, h2.events.RequestReceived):
                    assert event.stream_id is not None
                    open_now.add(event.stream_id)
                    most_open = max(most_open, len(open_now))
            for stream_id in sorted(open_now):
                if peer.stream_state(stream_id).ended:
                    # Hold each stream a moment, so that an overlap would be seen.
                    await trio.sleep(0.02)
                    await _echo(peer, stream_id)
                    open_now.discard(stream_id)

    replies: list[bytes] = []

    async def call(conn: ClientConn, name: bytes) -> None:
        replies.append(await conn.invoke(METHOD, name))

    with trio.fail_after(GUARD):
        # The SETTINGS come late: streams opened before them would all be open at once.
        server = await start_raw_server(
            nursery, script, settings={_SETTING.MAX_CONCURRENT_STREAMS: 1}, preface_delay=0.05
        )
        async with ClientConn(f"127.0.0.1:{server.port}") as conn, trio.open_nursery() as calls:
            for name in (b"a", b"b", b"c"):
                calls.start_soon(call, conn, name)
    assert sorted(replies) == [b"echo:a", b"echo:b", b"echo:c"]
    assert most_open == 1
    assert len(server.peers) == 1


async def test_small_initial_window_still_carries_a_large_request(nursery: trio.Nursery) -> None:
    request = bytes(range(256)) * 400  # 100 KiB, a hundred times the window

    with trio.fail_after(GUARD):
        server = await start_raw_server(
            nursery,
            answer_each_request(_echo),
            settings={_SETTING.INITIAL_WINDOW_SIZE: 1000},
        )
        async with ClientConn(f"127.0.0.1:{server.port}") as conn:
            reply = await conn.invoke(METHOD, request)
    assert reply == b"echo:" + request
    # Once the client acknowledged our SETTINGS, no DATA frame exceeded the window.
    frames = server.peers[0].frames
    # Two SETTINGS went out (the preface's, then the small window); the last ACK is
    # for the window.
    ack_index = max(
        i for i, frame in enumerate(frames) if frame.type == SETTINGS and frame.flags & FLAG_ACK
    )
    later_data = [frame for frame in frames[ack_index:] if frame.type == DATA]
    assert later_data
    assert max(len(frame.payload) for frame in later_data) <= 1000


async def test_window_lowered_mid_stream_goes_negative_and_transfer_completes(
    nursery: trio.Nursery,
) -> None:
    request = bytes(range(256)) * 400  # 100 KiB; the default window is 64 KiB
    default_window = 65535
    received_before_change = 0

    async def script(peer: RawPeer) -> None:
        nonlocal received_before_change
        # No credit at all until the client has used up the default window.
        await peer.wait_for(lambda: len(peer.stream_state(1).data) >= default_window)
        received_before_change = len(peer.stream_state(1).data)
        # The client's window on stream 1 becomes 1000 - 65535: negative.
        peer.h2.update_settings({_SETTING.INITIAL_WINDOW_SIZE: 1000})
        await peer.flush()
        await peer.next_event(lambda event: isinstance(event, h2.events.SettingsAcknowledged))
        peer.acknowledge(1, received_before_change)
        peer.auto_ack_data = True
        await peer.flush()
        await answer_each_request(_echo)(peer)

    with trio.fail_after(GUARD):
        server = await start_raw_server(nursery, script, auto_ack_data=False)
        async with ClientConn(f"127.0.0.1:{server.port}") as conn:
            reply = await conn.invoke(METHOD, request)
    assert received_before_change == default_window
    assert reply == b"echo:" + request


# -- the server's side: keepalive, shutdown, starvation ---------------------------------------


@dataclass
class HandlerLog:
    started: trio.Event = field(default_factory=trio.Event)
    cancelled: trio.Event = field(default_factory=trio.Event)
    finished: trio.Event = field(default_factory=trio.Event)
    sent: int = 0


def _make_server(log: HandlerLog, nap: float) -> Server:
    async def unary(request: bytes, call: ServerCall) -> bytes:
        return b"echo:" + request

    async def sleepy(request: bytes, call: ServerCall) -> bytes:
        log.started.set()
        try:
            await trio.sleep(nap)
        except trio.Cancelled:
            log.cancelled.set()
            raise
        log.finished.set()
        return b"rested"

    async def flood(request: bytes, call: ServerCall) -> None:
        chunk = b"f" * (100 * 1024)
        for _ in range(100):  # 10 MB in all
            await call.send_message(chunk)
            log.sent += 1

    server = Server()
    server.add_service(
        "cryo.test.Echo",
        {
            "Unary": unary_unary(unary),
            "Sleepy": unary_unary(sleepy),
            "Flood": unary_stream(flood),
        },
    )
    return server


async def _start(nursery: trio.Nursery, log: HandlerLog, nap: float = 10) -> tuple[Server, int]:
    server = _make_server(log, nap)
    port: int = await nursery.start(server.serve_tcp, 0)
    return server, port


async def test_ping_flood_earns_goaway_too_many_pings(nursery: trio.Nursery) -> None:
    log = HandlerLog()
    pings = acks = 0
    goaway: h2.events.ConnectionTerminated | None = None
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log)
        async with open_raw_client(port) as peer:
            await peer.send_request(request_headers(b"/cryo.test.Echo/Sleepy"), grpc_message(b""))
            await log.started.wait()  # a call is active: the stricter rule applies
            while goaway is None and pings < 20:
                pings += 1
                peer.h2.ping(pings.to_bytes(8, "big"))
                await peer.flush()
                event = await peer.next_event(
                    lambda e: isinstance(
                        e, h2.events.PingAckReceived | h2.events.ConnectionTerminated
                    )
                )
                if isinstance(event, h2.events.PingAckReceived):
                    acks += 1
                    assert event.ping_data == pings.to_bytes(8, "big")
                    # The GOAWAY may follow its ping's ACK in the same read.
                    found = peer.peek(lambda e: isinstance(e, h2.events.ConnectionTerminated))
                    if found is not None:
                        assert isinstance(found, h2.events.ConnectionTerminated)
                        goaway = found
                    await trio.sleep(0.01)
                else:
                    assert isinstance(event, h2.events.ConnectionTerminated)
                    goaway = event
            # The server ends the connection, and the call with it.
            with trio.fail_after(1):
                await peer.wait_gone()
        with trio.fail_after(1):
            await log.cancelled.wait()
    assert goaway is not None
    assert goaway.error_code == _ERR.ENHANCE_YOUR_CALM
    assert goaway.additional_data == b"too_many_pings"
    # The first ping sets the clock; three more too soon are more than two strikes.
    assert pings == 4
    assert acks == pings  # every ping was acknowledged, the last one too


async def test_graceful_shutdown_two_goaways_then_in_flight_call_completes(
    nursery: trio.Nursery,
) -> None:
    log = HandlerLog()
    with trio.fail_after(GUARD):
        server, port = await _start(nursery, log, nap=0.5)
        async with open_raw_client(port) as peer:
            stream_id = await peer.send_request(
                request_headers(b"/cryo.test.Echo/Sleepy"), grpc_message(b"hi")
            )
            await log.started.wait()
            shutdown_done = trio.Event()

            async def shut_down() -> None:
                await server.shutdown(grace=5)
                shutdown_done.set()

            nursery.start_soon(shut_down)
            await peer.wait_for(lambda: len(peer.frames_of(GOAWAY)) >= 2)
            # A stream opened after the final GOAWAY is refused, not processed.
            late_id = await peer.send_request(
                request_headers(b"/cryo.test.Echo/Unary"), grpc_message(b"late")
            )
            late_code = await peer.wait_reset(late_id)
            stream = await peer.wait_stream_done(stream_id)
            with trio.fail_after(2):
                await peer.wait_gone()  # drained: the server closes the connection
        with trio.fail_after(2):
            await shutdown_done.wait()
    first, second, *later = peer.frames_of(GOAWAY)
    assert first.last_stream_id == 2**31 - 1 and first.error_code == _ERR.NO_ERROR
    assert second.last_stream_id == stream_id and second.error_code == _ERR.NO_ERROR
    # A GOAWAY sent on closing may repeat the last one, never raise it (RFC 9113 §6.8).
    assert all(goaway.last_stream_id <= stream_id for goaway in later)
    frames = peer.frames
    pings = [i for i, f in enumerate(frames) if f.type == PING and not f.flags & FLAG_ACK]
    assert pings, "the server must send a PING between the two GOAWAYs"
    assert frames.index(first) < pings[0] < frames.index(second)
    assert late_code == _ERR.REFUSED_STREAM
    assert stream.header(b"grpc-status") == b"0"
    assert stream.messages() == [(0, b"rested")]
    assert log.finished.is_set() and not log.cancelled.is_set()


async def test_shutdown_past_grace_cancels_the_handler(nursery: trio.Nursery) -> None:
    log = HandlerLog()
    with trio.fail_after(GUARD):
        server, port = await _start(nursery, log, nap=10)
        async with open_raw_client(port) as peer:
            await peer.send_request(request_headers(b"/cryo.test.Echo/Sleepy"), grpc_message(b""))
            await log.started.wait()
            started = trio.current_time()
            async with trio.open_nursery() as reader:
                reader.start_soon(_read_until_gone, peer)
                await server.shutdown(grace=0.2)
            took = trio.current_time() - started
        with trio.fail_after(1):
            await log.cancelled.wait()
    assert 0.2 <= took < 2
    assert not log.finished.is_set()


async def _read_until_gone(peer: RawPeer) -> None:
    # Keep reading (and acking the drain PING) like a live client would.
    with contextlib.suppress(PeerGone):
        await peer.wait_gone()


async def test_unread_stream_does_not_starve_the_connection(nursery: trio.Nursery) -> None:
    """grpclib issue 67: a stream nobody reads must not stop the others."""
    log = HandlerLog()
    with trio.fail_after(GUARD):
        _, port = await _start(nursery, log)
        async with (
            ClientConn(f"127.0.0.1:{port}") as conn,
            conn.open_stream("/cryo.test.Echo/Flood") as flood,
        ):
            await flood.send_message(b"go")
            await flood.done_writing()
            # Let the flood fill whatever it is allowed to fill.
            await trio.sleep(0.2)
            reply = await conn.invoke(METHOD, b"still there?", timeout=2)
            sent_while_unread = log.sent
    assert reply == b"echo:still there?"
    # Buffering for the unread stream is bounded by its window: the 10 MB did not all go.
    assert sent_while_unread < 100, sent_while_unread
