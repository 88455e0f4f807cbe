"""What tracing costs: W1 and W4 with no tracer, against wire/ before step tracing existed.

This module owns one benchmark: cryo's client and server, each in its own process on
127.0.0.1, run W1 (sequential unary calls, 10 bytes) and W4 (one server stream of
100-byte messages) with three builds of wire/:

- `before`: wire/ as of a revision without the step events (exported with `git
  archive`, never checked out), tracing off;
- `off`: the working tree's wire/, tracing off (the zero-cost claim);
- `on`: the working tree's wire/ with a collector on both sides (for scale; its W4 is
  a tenth as long, since every message leaves several events in memory).

Repetitions are interleaved (rep 1 of every variant, then rep 2, …) and medians are
reported with their spread, as bench.md asks. Every process stops itself: servers exit
when their stdin closes or after a time limit. This is a benchmark, not a test: it
asserts nothing, it prints a table.

    python -m bench.trace_overhead --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BEFORE_STEP_TRACING = "ec7ea4088204d3efcde68e2f20dd0ff4b2d6060b"
"""The last revision whose client and server emit no step events (frames only)."""

UNARY = "/cryo.bench.Echo/Unary"
SERVER_STREAM = "/cryo.bench.Echo/ServerStream"
W1_CALLS, W1_WARMUP, W1_PAYLOAD = 2000, 200, 10
W4_MESSAGES, W4_PAYLOAD = 100_000, 100
SERVER_MAX_SECONDS = 300.0
VARIANTS = ("before", "off", "on")


# -- the processes -----------------------------------------------------------------------


def serve(trace: bool) -> None:
    import trio

    from proto.echo.echo_pb2 import Msg, StreamReq
    from wire.server import Server, ServerCall, unary_stream, unary_unary
    from wire.trace import TraceCollector

    async def unary(request: Msg, call: ServerCall) -> Msg:
        return request

    async def server_stream(request: StreamReq, call: ServerCall) -> None:
        message = Msg(payload=b"x" * request.size)
        for _ in range(request.count):
            await call.send_message(message)

    async def main() -> None:
        server = Server(tracer=TraceCollector() if trace else None)
        server.add_method(UNARY, unary_unary(unary, Msg.FromString, Msg.SerializeToString))
        server.add_method(
            SERVER_STREAM,
            unary_stream(server_stream, StreamReq.FromString, Msg.SerializeToString),
        )
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve_tcp, 0)
            print(port, flush=True)
            # Stop when the runner closes our stdin, or after a time limit regardless.
            with trio.move_on_after(SERVER_MAX_SECONDS):
                await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


def client(port: int, trace: bool, w4_messages: int) -> None:
    import trio

    from proto.echo.echo_pb2 import Msg, StreamReq
    from wire.client import ClientConn
    from wire.trace import TraceCollector

    async def main() -> dict[str, Any]:
        tracer = TraceCollector() if trace else None
        request = Msg(payload=b"x" * W1_PAYLOAD)
        async with ClientConn(f"127.0.0.1:{port}", tracer=tracer) as conn:

            async def unary() -> None:
                await conn.invoke(
                    UNARY,
                    request,
                    request_serializer=Msg.SerializeToString,
                    response_deserializer=Msg.FromString,
                )

            for _ in range(W1_WARMUP):
                await unary()
            latencies = []
            cpu0, t0 = time.process_time(), time.perf_counter()
            for _ in range(W1_CALLS):
                start = time.perf_counter()
                await unary()
                latencies.append(time.perf_counter() - start)
            w1_seconds, w1_cpu = time.perf_counter() - t0, time.process_time() - cpu0
            latencies.sort()
            cpu0, t0 = time.process_time(), time.perf_counter()
            received = 0
            async with conn.open_stream(
                SERVER_STREAM,
                request_serializer=StreamReq.SerializeToString,
                response_deserializer=Msg.FromString,
            ) as call:
                await call.send_message(StreamReq(count=w4_messages, size=W4_PAYLOAD))
                await call.done_writing()
                async for _ in call:
                    received += 1
            w4_seconds, w4_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        return {
            "w1_calls_per_s": W1_CALLS / w1_seconds,
            "w1_p50_us": latencies[len(latencies) // 2] * 1e6,
            "w1_p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
            "w1_client_cpu_us_per_call": w1_cpu / W1_CALLS * 1e6,
            "w4_messages_per_s": received / w4_seconds,
            "w4_client_cpu_us_per_message": w4_cpu / max(received, 1) * 1e6,
        }

    print(json.dumps(trio.run(main)), flush=True)


# -- the runner --------------------------------------------------------------------------


def export_before(revision: str, into: Path) -> None:
    """wire/ as of `revision`, into `into/wire`, without touching the work tree."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "wire"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True, timeout=60)


def run_cell(variant: str, before_dir: Path) -> dict[str, Any]:
    # `before` puts the exported wire/ ahead of the repository on the path; proto/ and
    # bench/ still come from the repository.
    path = [str(before_dir)] if variant == "before" else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*path, str(REPO)]))
    trace = ["--trace"] if variant == "on" else []
    w4 = W4_MESSAGES // 10 if variant == "on" else W4_MESSAGES
    me = [sys.executable, "-m", "bench.trace_overhead"]
    server = subprocess.Popen(
        [*me, "serve", *trace],
        env=env,
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        server_cpu0 = process_cpu_seconds(server.pid)
        done = subprocess.run(
            [*me, "client", str(port), "--w4-messages", str(w4), *trace],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        result["server_cpu_s"] = process_cpu_seconds(server.pid) - server_cpu0
        return result
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(results: dict[str, list[dict[str, Any]]], reps: int, revision: str) -> str:
    figures = [
        ("w1_calls_per_s", "W1 calls/s"),
        ("w1_p50_us", "W1 p50 µs"),
        ("w1_p99_us", "W1 p99 µs"),
        ("w1_client_cpu_us_per_call", "W1 client CPU µs/call"),
        ("w4_messages_per_s", "W4 msgs/s"),
        ("w4_client_cpu_us_per_message", "W4 client CPU µs/msg"),
        ("server_cpu_s", "server CPU s, W1+W4"),
    ]
    lines = [
        f"Tracing overhead: medians of {reps} interleaved runs (spread = (max-min)/median).",
        f"`before` = wire/ at {revision[:12]} (no step events); `on` runs W4 with "
        f"{W4_MESSAGES // 10:,} messages.",
        "",
        "| figure | " + " | ".join(VARIANTS) + " | off vs before |",
        "|---|" + "---|" * (len(VARIANTS) + 1),
    ]
    for key, title in figures:
        cells, medians = [], {}
        for variant in VARIANTS:
            values = [r[key] for r in results[variant]]
            median = statistics.median(values)
            medians[variant] = median
            spread = (max(values) - min(values)) / median if median else 0.0
            shown = f"{median:,.1f}" if median < 100 else f"{median:,.0f}"
            cells.append(f"{shown} (±{spread:.0%})")
        ratio = medians["off"] / medians["before"] if medians["before"] else float("nan")
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trace_overhead")
    sub = parser.add_subparsers(dest="mode")
    serve_p = sub.add_parser("serve")
    serve_p.add_argument("--trace", action="store_true")
    client_p = sub.add_parser("client")
    client_p.add_argument("port", type=int)
    client_p.add_argument("--trace", action="store_true")
    client_p.add_argument("--w4-messages", type=int, default=W4_MESSAGES)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--before", default=BEFORE_STEP_TRACING, metavar="REVISION")
    parser.add_argument("-o", "--output", metavar="FILE", help="also write the table here")
    args = parser.parse_args(argv)
    if args.mode == "serve":
        serve(args.trace)
        return 0
    if args.mode == "client":
        client(args.port, args.trace, args.w4_messages)
        return 0
    if shutil.which("git") is None:
        parser.error("git is needed to export the `before` revision of wire/")
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="cryo-trace-bench-") as folder:
        before_dir = Path(folder)
        export_before(args.before, before_dir)
        for rep in range(args.reps):
            for variant in VARIANTS:
                results[variant].append(run_cell(variant, before_dir))
                print(
                    f"rep {rep + 1}/{args.reps} {variant}: {results[variant][-1]}",
                    file=sys.stderr,
                    flush=True,
                )
    table = report(results, args.reps, args.before)
    print(table, end="")
    if args.output:
        Path(args.output).write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
