"""The Echo server of each benchmarked library, one per process.

    python -m bench.echo_servers --lib cryo|grpcio|grpcio-aio|tcp-trio [--port 0]

The process binds 127.0.0.1, prints `READY <port> <pid>` on stdout, and serves until
its standard input reaches end-of-file (the runner closed it, or died) or until
`--max-seconds` pass, so a benchmark never leaves a server behind. Each server uses its
library's default API with no tuning, and does the same work: echo the request, or
stream `count` messages of `size` bytes. This module must not measure anything; the
client does.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from typing import Any

import trio

from bench.workloads import (
    CRYO,
    GRPCIO,
    GRPCIO_AIO,
    LIBRARIES,
    TCP_TRIO,
    grpcio_echo_module,
)
from proto.echo.echo_pb2 import Msg, StreamReq

GRPCIO_SYNC_WORKERS = 10
"""Thread pool of the grpcio sync server: the figure grpcio's own examples use."""


def announce(port: int) -> None:
    """Tell the runner where we listen (the pid matters when a profiler wraps us)."""
    print(f"READY {port} {os.getpid()}", flush=True)


def stop_when_told(max_seconds: float, stop: Callable[[], None] = _thread.interrupt_main) -> None:
    """Call `stop` at EOF on stdin or after `max_seconds`.

    The default, KeyboardInterrupt in the main thread, lets trio and grpcio's sync
    server (and a profiler wrapping the process) shut down normally; if that hangs,
    the process ends hard.
    """

    def interrupt_then_exit() -> None:
        stop()
        # A daemon timer: it ends a server that hangs on its way out, and never holds
        # up one that exits normally.
        hard_stop = threading.Timer(5.0, os._exit, args=(0,))
        hard_stop.daemon = True
        hard_stop.start()

    def watch_stdin() -> None:
        # os.read, not sys.stdin: a daemon thread parked inside the buffered reader
        # holds its lock, and the interpreter then aborts on its way out.
        while os.read(0, 4096):
            pass
        interrupt_then_exit()

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    timer = threading.Timer(max_seconds, interrupt_then_exit)
    timer.daemon = True
    timer.start()


# -- cryo -------------------------------------------------------------------------------


async def serve_cryo(port: int) -> None:
    from proto.echo.echo_cryo import EchoServicer, add_EchoServicer_to_server
    from wire.server import Server, ServerCall

    class Echo(EchoServicer):
        async def Unary(self, request: Msg, call: ServerCall) -> Msg:
            return request

        async def ServerStream(self, request: StreamReq, call: ServerCall) -> None:
            message = Msg(payload=b"x" * request.size)
            for _ in range(request.count):
                await call.send_message(message)

        async def ClientStream(self, call: ServerCall) -> Msg:
            total = 0
            async for request in call:
                total += len(request.payload)
            return Msg(payload=str(total).encode())

        async def Bidi(self, call: ServerCall) -> None:
            async for request in call:
                await call.send_message(request)

    server = Server()
    add_EchoServicer_to_server(Echo(), server)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.serve_tcp, port)
        announce(bound)


# -- grpcio, sync and aio ---------------------------------------------------------------


def _grpcio_servicers() -> tuple[type, type]:
    # Plain classes: grpcio only looks the methods up by name, and protoc's servicer
    # base class carries no types to inherit.
    class SyncEcho:
        def Unary(self, request: Msg, context: Any) -> Msg:
            return request

        def ServerStream(self, request: StreamReq, context: Any) -> Iterator[Msg]:
            message = Msg(payload=b"x" * request.size)
            for _ in range(request.count):
                yield message

        def ClientStream(self, requests: Iterator[Msg], context: Any) -> Msg:
            total = sum(len(r.payload) for r in requests)
            return Msg(payload=str(total).encode())

        def Bidi(self, requests: Iterator[Msg], context: Any) -> Iterator[Msg]:
            yield from requests

    class AioEcho:
        async def Unary(self, request: Msg, context: Any) -> Msg:
            return request

        async def ServerStream(self, request: StreamReq, context: Any) -> AsyncIterator[Msg]:
            message = Msg(payload=b"x" * request.size)
            for _ in range(request.count):
                yield message

        async def ClientStream(self, requests: AsyncIterator[Msg], context: Any) -> Msg:
            total = 0
            async for request in requests:
                total += len(request.payload)
            return Msg(payload=str(total).encode())

        async def Bidi(self, requests: AsyncIterator[Msg], context: Any) -> AsyncIterator[Msg]:
            async for request in requests:
                yield request

    return SyncEcho, AioEcho


def serve_grpcio(port: int) -> None:
    import grpc

    sync_echo, _ = _grpcio_servicers()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=GRPCIO_SYNC_WORKERS))
    grpcio_echo_module().add_EchoServicer_to_server(sync_echo(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    announce(bound)
    try:
        server.wait_for_termination()
    finally:
        server.stop(None)


def serve_grpcio_aio(port: int, max_seconds: float) -> None:
    import asyncio

    import grpc

    _, aio_echo = _grpcio_servicers()

    async def main() -> None:
        # asyncio does not unwind cleanly from a KeyboardInterrupt raised into its
        # loop, so the stop signal arrives as an event instead.
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()

        def request_stop() -> None:
            loop.call_soon_threadsafe(stopping.set)

        stop_when_told(max_seconds, request_stop)
        server = grpc.aio.server()
        grpcio_echo_module().add_EchoServicer_to_server(aio_echo(), server)
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        announce(bound)
        await stopping.wait()
        await server.stop(None)

    asyncio.run(main())


# -- the raw TCP floor ------------------------------------------------------------------


async def serve_tcp_trio(port: int) -> None:
    async def echo(stream: trio.SocketStream) -> None:
        # A client that leaves mid-echo must not take the server down with it.
        with contextlib.suppress(trio.BrokenResourceError):
            async for data in stream:
                await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, echo, port)
        announce(listeners[0].socket.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", required=True, choices=LIBRARIES)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)
    if args.lib != GRPCIO_AIO:
        stop_when_told(args.max_seconds)
    try:
        if args.lib == CRYO:
            trio.run(serve_cryo, args.port)
        elif args.lib == GRPCIO:
            serve_grpcio(args.port)
        elif args.lib == GRPCIO_AIO:
            serve_grpcio_aio(args.port, args.max_seconds)
        elif args.lib == TCP_TRIO:
            trio.run(serve_tcp_trio, args.port)
    except* KeyboardInterrupt:
        pass  # the runner asked us to stop (trio may wrap it in an exception group)
    return 0


if __name__ == "__main__":
    sys.exit(main())
