"""cryo's client against cryo's server over real sockets: transports, interceptors,
connection lifecycle. Error paths against a raw HTTP/2 peer live in test_*_errors.py."""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trustme

from wire.client import CallOptions, ClientConn, UnaryInvoker
from wire.errors import ProtocolMisuse, RpcError
from wire.metadata import Metadata
from wire.server import (
    MethodInfo,
    Server,
    ServerCall,
    StreamHandler,
    UnaryHandler,
    stream_stream,
    stream_unary,
    unary_stream,
    unary_unary,
)
from wire.status import StatusCode


async def echo(request: bytes, call: ServerCall) -> bytes:
    return request


async def whoami(request: bytes, call: ServerCall) -> bytes:
    tag = call.invocation_metadata.get("x-tag", "-")
    return f"{call.peer}|{tag!s}".encode()


async def count(request: bytes, call: ServerCall) -> AsyncIterator[bytes]:
    for i in range(int(request)):
        yield b"%d" % i


async def total(call: ServerCall) -> bytes:
    return b"%d" % sum([len(m) async for m in call])


async def shout(call: ServerCall) -> None:
    async for message in call:
        await call.send_message(message.upper())


def make_server(**kwargs: Any) -> Server:
    server = Server(**kwargs)
    server.add_service(
        "t.Svc",
        {
            "Echo": unary_unary(echo),
            "WhoAmI": unary_unary(whoami),
            "Count": unary_stream(count),
            "Total": stream_unary(total),
            "Shout": stream_stream(shout),
        },
    )
    return server


@asynccontextmanager
async def serving(server: Server, **tcp: Any) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: server.serve_tcp(0, task_status=task_status, **tcp)
        )
        yield port
        await server.shutdown(grace=1)


async def test_all_four_cardinalities_over_tcp() -> None:
    server = make_server()
    with trio.fail_after(10):
        async with serving(server) as port, ClientConn(f"127.0.0.1:{port}") as conn:
            assert await conn.invoke("/t.Svc/Echo", b"hi") == b"hi"
            async with conn.open_stream("/t.Svc/Count") as call:
                await call.send_message(b"3")
                await call.done_writing()
                assert [m async for m in call] == [b"0", b"1", b"2"]
                assert call.code == StatusCode.OK
            async with conn.open_stream("/t.Svc/Total") as call:
                for chunk in (b"ab", b"cde", b""):
                    await call.send_message(chunk)
                await call.done_writing()
                assert await call.receive_message() == b"5"
            async with conn.open_stream("/t.Svc/Shout") as call:
                for word in (b"x", b"yz"):
                    await call.send_message(word)
                    assert await call.receive_message() == word.upper()
                await call.done_writing()
                assert await call.receive_message() is None


async def test_unix_socket_with_restrictive_mode() -> None:
    server = make_server()
    with tempfile.TemporaryDirectory() as tmp, trio.fail_after(10):
        path = os.path.join(tmp, "rt.sock")
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_unix, path)
            assert os.stat(path).st_mode & 0o777 == 0o600
            async with ClientConn(f"unix://{path}") as conn:
                reply = await conn.invoke("/t.Svc/WhoAmI", b"")
                assert reply.startswith(b"unix:")
            await server.shutdown(grace=1)
        assert not await trio.Path(path).exists()


async def test_ipv6_loopback() -> None:
    server = make_server()
    with trio.fail_after(10):
        async with serving(server, host="::1") as port, ClientConn(f"[::1]:{port}") as conn:
            assert (await conn.invoke("/t.Svc/WhoAmI", b"")).startswith(b"ipv6:[::1]")


async def test_tls_with_alpn_h2() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    server = make_server()
    with trio.fail_after(10):
        async with (
            serving(server, ssl_context=server_ctx) as port,
            ClientConn(
                f"127.0.0.1:{port}", ssl_context=client_ctx, server_hostname="localhost"
            ) as conn,
        ):
            assert await conn.invoke("/t.Svc/Echo", b"secret") == b"secret"


async def test_tls_client_refuses_untrusted_server() -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("localhost").configure_cert(server_ctx)
    server = make_server()
    with trio.fail_after(10):
        async with (
            serving(server, ssl_context=server_ctx) as port,
            ClientConn(
                f"127.0.0.1:{port}",
                ssl_context=ssl.create_default_context(),
                server_hostname="localhost",
            ) as conn,
        ):
            with pytest.raises(RpcError) as err:
                await conn.invoke("/t.Svc/Echo", b"x")
            assert err.value.code == StatusCode.UNAVAILABLE


async def test_interceptors_wrap_calls_in_order_on_both_sides() -> None:
    seen: list[str] = []

    async def client_tag(
        method: str, request: Any, options: CallOptions, invoker: UnaryInvoker
    ) -> Any:
        seen.append(f"client-outer {method}")
        options.metadata = Metadata([("x-tag", "tagged")])
        return await invoker(method, request, options)

    async def client_inner(
        method: str, request: Any, options: CallOptions, invoker: UnaryInvoker
    ) -> Any:
        seen.append("client-inner")
        return await invoker(method, request, options)

    async def server_unary(
        request: Any, call: ServerCall, info: MethodInfo, handler: UnaryHandler
    ) -> Any:
        seen.append(f"server {info.path} {info.cardinality.value}")
        if call.invocation_metadata.get("x-tag") != "tagged":
            call.abort(StatusCode.PERMISSION_DENIED, "untagged")
        return await handler(request, call)

    async def server_stream(call: ServerCall, info: MethodInfo, handler: StreamHandler) -> Any:
        seen.append(f"server-stream {info.path}")
        return await handler(call)

    server = make_server(interceptors=[server_unary], stream_interceptors=[server_stream])
    with trio.fail_after(10):
        async with serving(server) as port:
            async with ClientConn(
                f"127.0.0.1:{port}", interceptors=[client_tag, client_inner]
            ) as conn:
                assert (await conn.invoke("/t.Svc/WhoAmI", b"")).endswith(b"|tagged")
                async with conn.open_stream("/t.Svc/Count") as call:
                    await call.send_message(b"1")
                    await call.done_writing()
                    assert [m async for m in call] == [b"0"]
            async with ClientConn(f"127.0.0.1:{port}") as plain:
                with pytest.raises(RpcError) as err:
                    await plain.invoke("/t.Svc/Echo", b"")
                assert err.value.code == StatusCode.PERMISSION_DENIED
    assert seen[:3] == [
        "client-outer /t.Svc/WhoAmI",
        "client-inner",
        "server /t.Svc/WhoAmI unary_unary",
    ]
    assert "server-stream /t.Svc/Count" in seen


async def test_lazy_connect_and_reconnect_after_server_restart() -> None:
    with trio.fail_after(15):
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        await listener.aclose()  # reserve a port number, then free it
        async with ClientConn(f"127.0.0.1:{port}") as conn:
            with pytest.raises(RpcError) as err:
                await conn.invoke("/t.Svc/Echo", b"")
            assert err.value.code == StatusCode.UNAVAILABLE
            for _ in range(2):
                server = make_server()
                async with trio.open_nursery() as nursery:
                    await nursery.start(server.serve_tcp, port)
                    assert await conn.invoke("/t.Svc/Echo", b"up") == b"up"
                    await server.shutdown(grace=1)


async def test_wait_for_ready_waits_for_the_server_to_come_up() -> None:
    with trio.fail_after(15):
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        await listener.aclose()
        server = make_server()
        async with ClientConn(f"127.0.0.1:{port}") as conn, trio.open_nursery() as nursery:

            async def start_late() -> None:
                await trio.sleep(0.5)
                await nursery.start(server.serve_tcp, port)

            nursery.start_soon(start_late)
            reply = await conn.invoke("/t.Svc/Echo", b"ready", wait_for_ready=True, timeout=10)
            assert reply == b"ready"
            await server.shutdown(grace=1)


async def test_header_and_trailer_sinks_and_initial_metadata() -> None:
    async def meta(request: bytes, call: ServerCall) -> bytes:
        await call.send_initial_metadata({"x-initial": "i"})
        call.set_trailing_metadata({"x-trailing-bin": b"\x00\xff"})
        return b"ok"

    server = Server()
    server.add_method("/t.Svc/Meta", unary_unary(meta))
    with trio.fail_after(10):
        async with serving(server) as port, ClientConn(f"127.0.0.1:{port}") as conn:
            header, trailer = Metadata(), Metadata()
            assert await conn.invoke("/t.Svc/Meta", b"", header=header, trailer=trailer) == b"ok"
            assert header.get("x-initial") == "i"
            assert trailer.get("x-trailing-bin") == b"\x00\xff"


async def test_many_concurrent_calls_share_one_connection() -> None:
    server = make_server(max_concurrent_streams=8)
    results: list[bytes] = []
    with trio.fail_after(20):
        async with serving(server) as port, ClientConn(f"127.0.0.1:{port}") as conn:

            async def caller(i: int) -> None:
                for j in range(10):
                    results.append(await conn.invoke("/t.Svc/Echo", b"%d-%d" % (i, j)))

            async with trio.open_nursery() as nursery:
                for i in range(32):
                    nursery.start_soon(caller, i)
    assert sorted(results) == sorted(b"%d-%d" % (i, j) for i in range(32) for j in range(10))


async def test_large_messages_both_ways_with_small_windows() -> None:
    from wire.connection import ConnectionConfig

    small = ConnectionConfig(
        client_side=False, stream_window=32 * 1024, connection_window=64 * 1024
    )
    server = make_server(connection_config=small)
    payload = os.urandom(3 * 1024 * 1024)
    with trio.fail_after(20):
        async with (
            serving(server) as port,
            ClientConn(
                f"127.0.0.1:{port}",
                connection_config=ConnectionConfig(
                    client_side=True, stream_window=32 * 1024, connection_window=64 * 1024
                ),
            ) as conn,
        ):
            assert await conn.invoke("/t.Svc/Echo", payload) == payload


async def test_a_call_on_a_closed_connection_is_cancelled_not_a_misuse() -> None:
    # grpc-go's ErrClientConnClosing: whoever still holds the ClientConn after its
    # owner closed it gets a status it can handle like any other failed call.
    conn = ClientConn("127.0.0.1:1")
    with pytest.raises(ProtocolMisuse):
        await conn.invoke("/t.Svc/Echo", b"x", timeout=1)  # never entered
    async with conn:
        pass
    with pytest.raises(RpcError) as caught:
        await conn.invoke("/t.Svc/Echo", b"x", timeout=1)
    assert caught.value.code == StatusCode.CANCELLED
