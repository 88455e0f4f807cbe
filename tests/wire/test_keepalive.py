"""Client keepalive (gRFC A8): pings after quiet, a dead peer detected, and backing
off when the server says "too_many_pings"."""

from __future__ import annotations

import trio

from tests.wire.rawpeer import FLAG_ACK, PING, RawPeer, RawServer
from wire.client import ClientConn, ClientKeepalive
from wire.connection import KeepalivePolicy
from wire.server import Server


def client_pings(peer: RawPeer) -> int:
    return sum(1 for frame in peer.frames_of(PING) if not frame.flags & FLAG_ACK)


async def test_keepalive_pings_are_sent_and_answered(nursery: trio.Nursery) -> None:
    async def script(peer: RawPeer) -> None:
        while not peer.gone:
            await peer.receive()  # h2 answers each PING with an ACK

    server = RawServer(script)
    port = await nursery.start(server.serve)
    keepalive = ClientKeepalive(time=0.05, timeout=1.0, permit_without_calls=True)
    with trio.fail_after(10):
        async with ClientConn(f"127.0.0.1:{port}", keepalive=keepalive) as conn:
            transport = await conn.get_transport()
            # The raw peer's frame log has no event to wait on: look again.
            while not server.peers or client_pings(server.peers[0]) < 3:  # noqa: ASYNC110
                await trio.sleep(0.02)
            assert transport.usable


async def test_no_pings_without_calls_unless_permitted(nursery: trio.Nursery) -> None:
    async def script(peer: RawPeer) -> None:
        while not peer.gone:
            await peer.receive()

    server = RawServer(script)
    port = await nursery.start(server.serve)
    with trio.fail_after(10):
        async with ClientConn(
            f"127.0.0.1:{port}", keepalive=ClientKeepalive(time=0.02, timeout=1.0)
        ) as conn:
            await conn.get_transport()
            await trio.sleep(0.3)
            assert client_pings(server.peers[0]) == 0


async def test_a_peer_that_stops_answering_is_given_up(nursery: trio.Nursery) -> None:
    async def script(peer: RawPeer) -> None:
        await trio.sleep_forever()  # reads nothing more: no PING is ever acknowledged

    server = RawServer(script)
    port = await nursery.start(server.serve)
    keepalive = ClientKeepalive(time=0.05, timeout=0.2, permit_without_calls=True)
    with trio.fail_after(10):
        async with ClientConn(f"127.0.0.1:{port}", keepalive=keepalive) as conn:
            transport = await conn.get_transport()
            await transport.ended.wait()
            assert "keepalive" in (transport.close_reason or "")


async def test_too_many_pings_doubles_the_keepalive_time(nursery: trio.Nursery) -> None:
    server = Server(keepalive=KeepalivePolicy(min_time=10.0, permit_without_calls=True))
    port = await nursery.start(server.serve_tcp, 0)
    keepalive = ClientKeepalive(time=0.02, timeout=1.0, permit_without_calls=True)
    with trio.fail_after(10):
        async with ClientConn(f"127.0.0.1:{port}", keepalive=keepalive) as conn:
            first = await conn.get_transport()
            await first.ended.wait()
            assert first.goaway is not None and first.goaway.debug_data == b"too_many_pings"
            second = await conn.get_transport()
            assert second is not first and second.usable
            assert conn.keepalive is not None and conn.keepalive.time == 0.04
    await server.shutdown(grace=1)
