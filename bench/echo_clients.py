"""The Echo client of each benchmarked library: runs one workload and measures it.

    python -m bench.echo_clients --lib cryo --workload W1 --port P --server-pid PID \
        [--scale 1.0] [--result out.json]

One process runs one workload on one connection: an unmeasured warm-up on that
connection first, then the measured part, timed with a monotonic clock and with the
CPU time of this process and of the server process read at its two ends. The result
(a `CellResult`) is written as JSON. Every library is driven through its default API
with no tuning. This module must not start servers or compare results; the runner and
the report do that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import queue
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio

from bench.cpu_time import own_cpu_seconds, process_cpu_seconds
from bench.workloads import (
    CRYO,
    GRPCIO,
    GRPCIO_AIO,
    LIBRARIES,
    TCP_TRIO,
    WORKLOADS,
    CellResult,
    Workload,
    grpcio_echo_module,
    percentile,
    supports,
)
from proto.echo.echo_pb2 import Msg, StreamReq


class WrongReply(Exception):
    """The server answered, but not with what an echo should give back."""


class Meter:
    """Wall time and the CPU time of both processes over the measured part."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.seconds = 0.0
        self.client_cpu = (0.0, 0.0)  # user, system
        self.server_cpu = (0.0, 0.0)
        self._start: tuple[tuple[float, float], tuple[float, float], float] = (
            (0.0, 0.0),
            (0.0, 0.0),
            0.0,
        )

    def start(self) -> None:
        self._start = (
            own_cpu_seconds(),
            process_cpu_seconds(self.server_pid),
            time.perf_counter(),
        )

    def stop(self) -> None:
        now = time.perf_counter()
        client, server = own_cpu_seconds(), process_cpu_seconds(self.server_pid)
        client0, server0, then = self._start
        self.seconds = now - then
        self.client_cpu = (client[0] - client0[0], client[1] - client0[1])
        self.server_cpu = (server[0] - server0[0], server[1] - server0[1])


def check_echo(reply: Msg, size: int) -> None:
    if len(reply.payload) != size:
        raise WrongReply(f"echo of {size} bytes came back as {len(reply.payload)}")


# -- call loops shared by the libraries -------------------------------------------------


async def trio_calls(
    call: Callable[[], Awaitable[None]], n: int, concurrency: int, latencies: list[float] | None
) -> None:
    """`n` calls, by `concurrency` trio tasks; latencies (µs) recorded when given a list."""
    if concurrency == 1:
        clock = time.perf_counter_ns
        for _ in range(n):
            started = clock()
            await call()
            if latencies is not None:
                latencies.append((clock() - started) / 1000)
        return
    remaining = n

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(caller)


async def asyncio_calls(
    call: Callable[[], Awaitable[Any]], n: int, concurrency: int, latencies: list[float] | None
) -> None:
    """Like `trio_calls`, on asyncio tasks."""
    if concurrency == 1:
        clock = time.perf_counter_ns
        for _ in range(n):
            started = clock()
            await call()
            if latencies is not None:
                latencies.append((clock() - started) / 1000)
        return
    remaining = n

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    await asyncio.gather(*(caller() for _ in range(concurrency)))


def thread_calls(
    call: Callable[[], None], n: int, concurrency: int, latencies: list[float] | None
) -> None:
    """Like `trio_calls`, on threads (the grpcio sync way to have concurrent callers)."""
    if concurrency == 1:
        clock = time.perf_counter_ns
        for _ in range(n):
            started = clock()
            call()
            if latencies is not None:
                latencies.append((clock() - started) / 1000)
        return
    lock = threading.Lock()
    remaining = n
    failures: list[BaseException] = []

    def caller() -> None:
        nonlocal remaining
        try:
            while True:
                with lock:
                    if remaining <= 0:
                        return
                    remaining -= 1
                call()
        except BaseException as exc:  # re-raised in the main thread below
            failures.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


# -- cryo -------------------------------------------------------------------------------


async def run_cryo(w: Workload, port: int, meter: Meter, latencies: list[float]) -> int:
    """Run the workload with cryo's generated Echo stub; returns how many operations
    completed."""
    from proto.echo.echo_cryo import EchoStub
    from wire.client import ClientConn

    async with ClientConn(f"127.0.0.1:{port}") as conn:
        stub = EchoStub(conn)
        if w.id in ("W1", "W2", "W3"):
            request = Msg(payload=b"x" * w.payload)

            async def call() -> None:
                reply = await stub.Unary(request)
                check_echo(reply, w.payload)

            await trio_calls(call, w.warmup, w.concurrency, None)
            meter.start()
            await trio_calls(call, w.count, w.concurrency, latencies if w.latency else None)
            meter.stop()
            return w.count

        if w.id == "W4":

            async def stream(n: int) -> int:
                got = 0
                async with stub.ServerStream(StreamReq(count=n, size=w.payload)) as responses:
                    async for _ in responses:
                        got += 1
                return got

            await stream(w.warmup)
            meter.start()
            got = await stream(w.count)
            meter.stop()
            return got

        # W5: ping-pong on one bidi stream; the warm-up uses the same stream.
        request = Msg(payload=b"x" * w.payload)
        async with stub.Bidi() as bidi:

            async def round_trip() -> None:
                await bidi.send_message(request)
                reply = await bidi.receive_message()
                if reply is None:
                    raise WrongReply("the bidi stream ended early")
                check_echo(reply, w.payload)

            await trio_calls(round_trip, w.warmup, 1, None)
            meter.start()
            await trio_calls(round_trip, w.count, 1, latencies)
            meter.stop()
            await bidi.done_writing()
            if await bidi.receive_message() is not None:
                raise WrongReply("the bidi stream sent more than it was sent")
        return w.count


# -- grpcio sync ------------------------------------------------------------------------


def run_grpcio(w: Workload, port: int, meter: Meter, latencies: list[float]) -> int:
    import grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = grpcio_echo_module().EchoStub(channel)
        if w.id in ("W1", "W2", "W3"):
            request = Msg(payload=b"x" * w.payload)

            def call() -> None:
                check_echo(stub.Unary(request), w.payload)

            thread_calls(call, w.warmup, w.concurrency, None)
            meter.start()
            thread_calls(call, w.count, w.concurrency, latencies if w.latency else None)
            meter.stop()
            return w.count

        if w.id == "W4":

            def stream(n: int) -> int:
                return sum(1 for _ in stub.ServerStream(StreamReq(count=n, size=w.payload)))

            stream(w.warmup)
            meter.start()
            got = stream(w.count)
            meter.stop()
            return got

        # W5: the sync API takes a request iterator; feed it from a queue.
        outbox: queue.SimpleQueue[Msg | None] = queue.SimpleQueue()

        def requests() -> Iterator[Msg]:
            while (item := outbox.get()) is not None:
                yield item

        request = Msg(payload=b"x" * w.payload)
        replies = stub.Bidi(requests())

        def round_trip() -> None:
            outbox.put(request)
            check_echo(next(replies), w.payload)

        thread_calls(round_trip, w.warmup, 1, None)
        meter.start()
        thread_calls(round_trip, w.count, 1, latencies)
        meter.stop()
        outbox.put(None)
        if any(True for _ in replies):
            raise WrongReply("the bidi stream sent more than it was sent")
        return w.count
    finally:
        channel.close()


# -- grpcio aio -------------------------------------------------------------------------


async def run_grpcio_aio(w: Workload, port: int, meter: Meter, latencies: list[float]) -> int:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = grpcio_echo_module().EchoStub(channel)
        if w.id in ("W1", "W2", "W3"):
            request = Msg(payload=b"x" * w.payload)

            async def call() -> None:
                check_echo(await stub.Unary(request), w.payload)

            await asyncio_calls(call, w.warmup, w.concurrency, None)
            meter.start()
            await asyncio_calls(call, w.count, w.concurrency, latencies if w.latency else None)
            meter.stop()
            return w.count

        if w.id == "W4":

            async def stream(n: int) -> int:
                got = 0
                async for _ in stub.ServerStream(StreamReq(count=n, size=w.payload)):
                    got += 1
                return got

            await stream(w.warmup)
            meter.start()
            got = await stream(w.count)
            meter.stop()
            return got

        request = Msg(payload=b"x" * w.payload)
        bidi = stub.Bidi()

        async def round_trip() -> None:
            await bidi.write(request)
            reply = await bidi.read()
            if reply is grpc.aio.EOF:
                raise WrongReply("the bidi stream ended early")
            check_echo(reply, w.payload)

        await asyncio_calls(round_trip, w.warmup, 1, None)
        meter.start()
        await asyncio_calls(round_trip, w.count, 1, latencies)
        meter.stop()
        await bidi.done_writing()
        if await bidi.read() is not grpc.aio.EOF:
            raise WrongReply("the bidi stream sent more than it was sent")
        return w.count


# -- the raw TCP floor ------------------------------------------------------------------


async def run_tcp_trio(w: Workload, port: int, meter: Meter, latencies: list[float]) -> int:
    """W1 and W5 as bare ping-pongs of `payload` bytes on one TCP connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = b"x" * w.payload

        async def round_trip() -> None:
            await stream.send_all(request)
            got = 0
            while got < len(request):
                data = await stream.receive_some(65536)
                if not data:
                    raise WrongReply("the server closed the connection")
                got += len(data)

        await trio_calls(round_trip, w.warmup, 1, None)
        meter.start()
        await trio_calls(round_trip, w.count, 1, latencies)
        meter.stop()
    return w.count


def run_workload(lib: str, w: Workload, port: int, server_pid: int, server_lib: str) -> CellResult:
    """Run one cell and return what it measured (or the error that stopped it)."""
    meter = Meter(server_pid)
    latencies: list[float] = []
    error: str | None = None
    done = 0
    try:
        if not supports(lib, server_lib, w.id):
            raise ValueError(f"{lib} against {server_lib} cannot run {w.id}")
        if lib == CRYO:
            done = trio.run(run_cryo, w, port, meter, latencies)
        elif lib == GRPCIO:
            done = run_grpcio(w, port, meter, latencies)
        elif lib == GRPCIO_AIO:
            done = asyncio.run(run_grpcio_aio(w, port, meter, latencies))
        elif lib == TCP_TRIO:
            done = trio.run(run_tcp_trio, w, port, meter, latencies)
        if done != w.count:
            error = f"expected {w.count} operations, {done} completed"
    except Exception as exc:  # reported in the result, so one failed cell does not end a run
        error = f"{type(exc).__name__}: {exc}"
    latencies.sort()
    payload_bytes = w.count * w.payload
    return CellResult(
        client=lib,
        server=server_lib,
        workload=w.id,
        count=done,
        seconds=meter.seconds,
        client_cpu=sum(meter.client_cpu),
        server_cpu=sum(meter.server_cpu),
        client_sys=meter.client_cpu[1],
        server_sys=meter.server_cpu[1],
        payload_bytes=payload_bytes,
        p50_us=percentile(latencies, 0.50) if latencies else math.nan,
        p99_us=percentile(latencies, 0.99) if latencies else math.nan,
        error=error,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", required=True, choices=LIBRARIES)
    parser.add_argument("--server-lib", help="the library serving (default: --lib)")
    parser.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--result", help="write the JSON result here (default: stdout)")
    args = parser.parse_args(argv)
    workload = WORKLOADS[args.workload].scaled(args.scale)
    result = run_workload(
        args.lib, workload, args.port, args.server_pid, args.server_lib or args.lib
    )
    text = json.dumps(result.to_json())
    if args.result:
        with open(args.result, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0 if result.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
