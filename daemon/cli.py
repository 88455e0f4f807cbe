"""The `cryo` command line: `cryo trace`, `cryo demo`, and `CRYO_TRACE` for every command.

This module owns argument parsing, the built-in demo server that answers a
CreateCheckpoint-shaped call, turning a JSON request into the method's protobuf
message, and writing traces where the user asked. It must not reach the runtime except
over gRPC, and it makes no protocol decisions (wire/ does).

`cryo trace` runs one call with tracing on and shows its trace: by default
`/types.API/CreateCheckpoint` against a server it starts itself on a unix socket (so
both sides of the call are in the trace), or any method on any target with
`--target/--method/--request`. `CRYO_TRACE=<file or ->` traces whatever a command does:
`-` prints the terminal timeline on stderr; a file gets JSON lines, or HTML if its name
ends in `.html`, or the timeline if it ends in `.txt`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

import proto
from proto.types import api_pb2
from wire.client import ClientConn
from wire.errors import RpcError
from wire.server import Server, ServerCall, unary_unary
from wire.status import StatusCode
from wire.trace import (
    TraceCollector,
    TraceFanout,
    TraceSink,
    installed_tracer,
)
from wire.trace_env import FORMATS, TRACE_ENV, render, trace_from_env, use_color
from wire.tracing import (
    TraceFormatError,
    read_json_lines,
)

DEFAULT_METHOD = "/types.API/CreateCheckpoint"


class UsageError(Exception):
    """The command line asks for something that cannot be done (exit status 2)."""


# -- the built-in server ---------------------------------------------------------------


def default_request() -> api_pb2.CreateCheckpointRequest:
    """The request `docker checkpoint create demo cp1` makes the daemon send: what
    libcontainerd put in every Checkpoint (moby 17.x `client_linux.go`)."""
    return api_pb2.CreateCheckpointRequest(
        id="demo",
        checkpoint=api_pb2.Checkpoint(
            name="cp1", exit=False, tcp=True, unixSockets=True, shell=False, emptyNS=["network"]
        ),
    )


async def _demo_create_checkpoint(
    request: api_pb2.CreateCheckpointRequest, call: ServerCall
) -> api_pb2.CreateCheckpointResponse:
    # The demo server checks what the runtime checks first and dumps nothing: the
    # trace is about the call, not about CRIU.
    if not request.HasField("checkpoint") or not request.checkpoint.name:
        call.abort(StatusCode.INVALID_ARGUMENT, "a checkpoint needs a name")
    if not request.id:
        call.abort(StatusCode.INVALID_ARGUMENT, "no container id")
    return api_pb2.CreateCheckpointResponse()


def demo_server(tracer: TraceSink | None) -> Server:
    """A server that answers `/types.API/CreateCheckpoint` like the runtime would, without
    a container behind it."""
    server = Server(tracer=tracer)
    server.add_method(
        DEFAULT_METHOD,
        unary_unary(
            _demo_create_checkpoint,
            api_pb2.CreateCheckpointRequest.FromString,
            api_pb2.CreateCheckpointResponse.SerializeToString,
        ),
    )
    return server


# -- methods and JSON requests -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MethodShape:
    """What the trace command needs to know to call a method."""

    path: str
    request_type: type[Message]
    response_type: type[Message]
    client_streaming: bool
    server_streaming: bool


def load_proto_modules(extra: Iterable[str] = ()) -> None:
    """Import every generated module under `proto` (and `extra` ones), so that their
    services are in the default descriptor pool."""
    for info in pkgutil.walk_packages(proto.__path__, prefix="proto."):
        if info.name.endswith("_pb2"):
            try:
                importlib.import_module(info.name)
            except (ImportError, TypeError):
                # A module that does not load (protobuf raises TypeError on a clash in
                # the descriptor pool) only hides its own methods from --method.
                continue
    for name in extra:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UsageError(f"cannot import --proto module {name}: {exc}") from None


def find_method(path: str) -> MethodShape:
    """Look `/package.Service/Method` up in the protos cryo knows."""
    service, _, method = path.lstrip("/").partition("/")
    if not service or not method or "/" in method:
        raise UsageError(f"--method must look like /package.Service/Method, not {path!r}")
    pool = descriptor_pool.Default()
    try:
        found: MethodDescriptor = pool.FindMethodByName(f"{service}.{method}")
    except KeyError:
        raise UsageError(
            f"no method {path} in the protos cryo knows; name a generated module with --proto"
        ) from None
    return MethodShape(
        f"/{service}/{method}",
        message_factory.GetMessageClass(found.input_type),
        message_factory.GetMessageClass(found.output_type),
        found.client_streaming,
        found.server_streaming,
    )


def parse_requests(shape: MethodShape, text: str | None) -> list[Message]:
    """The request message(s) from JSON (proto3 JSON mapping); a JSON array gives one
    message per element for client-streaming methods."""
    raw: Any = {} if text is None else _load_json(text)
    items = raw if shape.client_streaming and isinstance(raw, list) else [raw]
    messages = []
    for item in items:
        message = shape.request_type()
        try:
            json_format.ParseDict(item, message)
        except json_format.ParseError as exc:
            raise UsageError(
                f"--request does not fit {message.DESCRIPTOR.full_name}: {exc}"
            ) from None
        messages.append(message)
    return messages


def _load_json(text: str) -> Any:
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read {text[1:]}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--request is not JSON: {exc}") from None


def to_json(message: Message) -> str:
    return json_format.MessageToJson(message, indent=None)


# -- running one traced call ---------------------------------------------------------------


@dataclass(slots=True)
class CallResult:
    """How the traced call ended: the responses, or the error."""

    responses: list[Message]
    error: RpcError | None


async def traced_call(
    tracer: TraceSink,
    shape: MethodShape,
    requests: Sequence[Message],
    *,
    target: str | None,
    timeout: float,
) -> CallResult:
    """Make one call with tracing on; without a target, against the built-in server."""
    if target is not None:
        return await _call(tracer, target, shape, requests, timeout)
    with tempfile.TemporaryDirectory(prefix="cryo-trace-") as folder:
        path = os.path.join(folder, "runtime.sock")
        server = demo_server(tracer)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_unix, path)
            try:
                return await _call(tracer, f"unix:{path}", shape, requests, timeout)
            finally:
                await server.shutdown(grace=1.0)


async def _call(
    tracer: TraceSink,
    target: str,
    shape: MethodShape,
    requests: Sequence[Message],
    timeout: float,
) -> CallResult:
    responses: list[Message] = []
    parse = shape.response_type.FromString
    async with ClientConn(target, tracer=tracer) as conn:
        try:
            if not shape.client_streaming and not shape.server_streaming:
                response = await conn.invoke(
                    shape.path,
                    requests[0],
                    request_serializer=_serialize,
                    response_deserializer=parse,
                    timeout=timeout,
                )
                responses.append(response)
            else:
                async with conn.open_stream(
                    shape.path,
                    request_serializer=_serialize,
                    response_deserializer=parse,
                    timeout=timeout,
                ) as call:
                    for request in requests:
                        await call.send_message(request)
                    await call.done_writing()
                    async for response in call:
                        responses.append(response)
        except RpcError as exc:
            return CallResult(responses, exc)
    return CallResult(responses, None)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


# -- rendering ---------------------------------------------------------------------------


def _emit(text: str, output: str | None, *, stream: Any) -> None:
    if output is None or output == "-":
        stream.write(text)
        stream.flush()
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc}") from None


# -- commands ----------------------------------------------------------------------------


def cmd_trace(args: argparse.Namespace) -> int:
    out_stream = sys.stdout
    color = args.format == "terminal" and args.output in (None, "-") and use_color(out_stream)
    if args.input is not None:
        try:
            with open(args.input, encoding="utf-8") as handle:
                events = list(read_json_lines(handle))
        except OSError as exc:
            raise UsageError(f"cannot read {args.input}: {exc}") from None
        except TraceFormatError as exc:
            raise UsageError(f"{args.input}: {exc}") from None
        _emit(render(events, args.format, color=color), args.output, stream=out_stream)
        return 0
    load_proto_modules(args.proto)
    method = args.method or DEFAULT_METHOD
    shape = find_method(method)
    if args.request is None and shape.path == DEFAULT_METHOD:
        requests: list[Message] = [default_request()]
    else:
        requests = parse_requests(shape, args.request)
    tracer = TraceCollector()
    # Under CRYO_TRACE the same events also go to the process-wide collector.
    everywhere = installed_tracer()
    sink: TraceSink = tracer if everywhere is None else TraceFanout(tracer, everywhere)
    result = trio.run(
        lambda: traced_call(sink, shape, requests, target=args.target, timeout=args.timeout)
    )
    _emit(render(tracer.events, args.format, color=color), args.output, stream=out_stream)
    for response in result.responses:
        print(f"response: {to_json(response)}", file=sys.stderr)
    if result.error is not None:
        error = result.error
        print(f"call failed: {error.code.name}: {error.message}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """cryo's main job end to end: docker checkpoint create through the daemon, or
    (--direct) the runtime's API called without the daemon."""
    if args.direct:
        from daemon import demo  # the demo's imports are only needed here

        return demo.main(args.kind or "process")
    if args.kind not in (None, "runc"):
        raise UsageError("the Docker path runs busybox containers with runc; --kind needs --direct")
    from daemon import docker_demo

    return docker_demo.main()


def cmd_daemon(args: argparse.Namespace) -> int:
    """The Docker-compatible daemon: HTTP API on a socket, the runtime supervised."""
    from daemon import server  # the daemon's imports are only needed here

    return server.main(
        server.DaemonOptions(
            host=args.host,
            data_root=Path(args.data_root),
            runc=args.runc,
            criu=args.criu,
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryo",
        description="cryo: gRPC on h2 and trio, and checkpoints with CRIU.",
        epilog=f"{TRACE_ENV}=<file or -> traces any command (JSON lines; .html; .txt; -: stderr).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    trace = commands.add_parser(
        "trace",
        help="run one call and show how it walks through the gRPC call path",
        description=(
            "Run one gRPC call with tracing on and show its trace. Without --target, "
            f"calls {DEFAULT_METHOD} on a server started for the purpose, so both sides "
            "of the call are traced."
        ),
    )
    trace.add_argument("--format", choices=FORMATS, default="terminal")
    trace.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    trace.add_argument("--target", metavar="T", help="host:port, [v6]:port or unix:/path")
    trace.add_argument("--method", metavar="M", help="/package.Service/Method")
    trace.add_argument(
        "--request", metavar="JSON", help="the request as JSON (or @file); an array streams"
    )
    trace.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    trace.add_argument(
        "--proto",
        action="append",
        default=[],
        metavar="MODULE",
        help="also import this generated _pb2 module to find --method (repeatable)",
    )
    trace.add_argument(
        "--input", metavar="FILE", help="render a trace saved as JSON lines instead of calling"
    )
    trace.set_defaults(run=cmd_trace)

    demo = commands.add_parser(
        "demo",
        help="docker checkpoint create / start --checkpoint through cryo's daemon (traced)",
        description=(
            "Start cryo's daemon, run a counting busybox container with the docker CLI, "
            "checkpoint it (HTTP → daemon → gRPC CreateCheckpoint → runtime → CRIU), "
            "restore it, check the count goes on, and show the gRPC call's trace. With "
            "--direct, call the runtime's types.API without the daemon instead."
        ),
    )
    demo.add_argument(
        "--direct",
        action="store_true",
        help="skip the daemon and the docker CLI: call the runtime's API directly",
    )
    demo.add_argument(
        "--kind",
        choices=("process", "runc"),
        default=None,
        help="with --direct: a process on the host (default) or a runc busybox container",
    )
    demo.set_defaults(run=cmd_demo)

    daemon = commands.add_parser(
        "daemon",
        help="serve the Docker Engine API (containers, checkpoints) for the docker CLI",
        description=(
            "Serve a Docker-compatible HTTP API and run containers through cryo's runtime, "
            "which it starts and supervises. Then: docker -H <host> checkpoint create C NAME."
        ),
    )
    daemon.add_argument(
        "-H",
        "--host",
        default="unix:///run/cryo/docker.sock",
        help="unix:///path or tcp://127.0.0.1:port",
    )
    daemon.add_argument(
        "--data-root", default="/var/lib/cryo", help="containers, runtime state, logs"
    )
    daemon.add_argument("--runc", help="the runc binary (default: from PATH)")
    daemon.add_argument("--criu", help="the criu binary (default: the runtime's choice)")
    daemon.set_defaults(run=cmd_daemon)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    write_trace = trace_from_env()
    try:
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except UsageError as exc:
        print(f"cryo: {exc}", file=sys.stderr)
        return 2
    finally:
        if write_trace is not None:
            write_trace()


if __name__ == "__main__":
    sys.exit(main())
