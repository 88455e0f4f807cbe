"""The interop TestService (grpc `doc/interop-test-descriptions.md`) served by cryo.

This module owns `InteropTestService`, the handlers of `grpc.testing.TestService`
written as an override of the generated `TestServiceServicer`
(`proto/interop/test_cryo.py`) and registered with the generated
`add_TestServiceServicer_to_server`, and the command line the official interop
runners use:

    python -m tests.interop.server --port=N [--use_tls=false] [--host=127.0.0.1]

With `--port=0` it binds a free port; either way it prints `listening on HOST:PORT`
once it accepts connections. It must not reach beyond loopback unless told to. It
leaves `UnimplementedCall` to the generated base class, which answers UNIMPLEMENTED
(as the official servers do), and does not serve `grpc.testing.UnimplementedService`
at all, which must stay unknown to the server.

Compression is strict, as in grpc's C++ interop server: `expect_compressed` true needs
the request's compressed flag set, and false needs it clear.
"""

from __future__ import annotations

import argparse
import functools
import ssl
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as `python tests/interop/server.py`: make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio

from proto.interop import empty_pb2, messages_pb2
from proto.interop.test_cryo import TestServiceServicer, add_TestServiceServicer_to_server
from tests.interop.interop_cases import ECHO_INITIAL_KEY, ECHO_TRAILING_KEY
from wire.errors import RpcError
from wire.metadata import Metadata
from wire.server import Server, ServerCall
from wire.status import StatusCode

Request = messages_pb2.SimpleRequest
StreamRequest = messages_pb2.StreamingOutputCallRequest
StreamResponse = messages_pb2.StreamingOutputCallResponse


def _payload(size: int) -> messages_pb2.Payload:
    return messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=bytes(size))


def _check_response_type(response_type: int) -> None:
    # COMPRESSABLE is the only PayloadType left in messages.proto.
    if response_type != messages_pb2.COMPRESSABLE:
        raise RpcError(StatusCode.INVALID_ARGUMENT, f"unsupported response_type {response_type}")


def _check_compression(call: ServerCall, expected: messages_pb2.BoolValue | None) -> None:
    """CompressedRequest: fail with INVALID_ARGUMENT unless the flag matches."""
    if expected is None:
        return
    compressed = call.last_message_compressed
    if expected.value and not compressed:
        call.abort(
            StatusCode.INVALID_ARGUMENT,
            "expected a compressed request but the compressed flag is clear",
        )
    if not expected.value and compressed:
        call.abort(
            StatusCode.INVALID_ARGUMENT,
            "expected an uncompressed request but the compressed flag is set",
        )


def _check_echo_status(call: ServerCall, status: messages_pb2.EchoStatus) -> None:
    if status.code != 0:
        call.abort(StatusCode(status.code), status.message)


async def _echo_metadata(call: ServerCall) -> None:
    """Echo Metadata: the echo-initial pair goes in the response headers, sent now;
    the echo-trailing-bin pair in the trailers."""
    md = call.invocation_metadata
    initial = md.get(ECHO_INITIAL_KEY)
    trailing = md.get(ECHO_TRAILING_KEY)
    if trailing is not None:
        call.set_trailing_metadata(Metadata([(ECHO_TRAILING_KEY, trailing)]))
    if initial is not None:
        await call.send_initial_metadata(Metadata([(ECHO_INITIAL_KEY, initial)]))


async def _send_responses(call: ServerCall, request: StreamRequest) -> None:
    _check_response_type(request.response_type)
    for parameters in request.response_parameters:
        if parameters.interval_us > 0:
            await trio.sleep(parameters.interval_us / 1e6)
        await call.send_message(
            StreamResponse(payload=_payload(parameters.size)), compress=parameters.compressed.value
        )


class InteropTestService(TestServiceServicer):
    """grpc.testing.TestService as the interop cases expect it (UnimplementedCall is
    the generated base class's: UNIMPLEMENTED)."""

    async def EmptyCall(self, request: empty_pb2.Empty, call: ServerCall) -> empty_pb2.Empty:
        await _echo_metadata(call)
        return empty_pb2.Empty()

    async def UnaryCall(self, request: Request, call: ServerCall) -> messages_pb2.SimpleResponse:
        _check_compression(
            call, request.expect_compressed if request.HasField("expect_compressed") else None
        )
        if request.response_compressed.value:
            # Must precede the response headers, which _echo_metadata may send.
            call.set_compression("gzip")
        await _echo_metadata(call)
        _check_echo_status(call, request.response_status)
        _check_response_type(request.response_type)
        return messages_pb2.SimpleResponse(payload=_payload(request.response_size))

    async def CacheableUnaryCall(
        self, request: Request, call: ServerCall
    ) -> messages_pb2.SimpleResponse:
        # The timestamp makes every answer different; a caching proxy would repeat one.
        await call.send_initial_metadata(Metadata([("cache-control", "max-age=60, public")]))
        body = str(time.time_ns()).encode()
        return messages_pb2.SimpleResponse(
            payload=messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=body)
        )

    async def StreamingOutputCall(self, request: StreamRequest, call: ServerCall) -> None:
        if any(p.compressed.value for p in request.response_parameters):
            # Per message after this: the `compressed` flag of each ResponseParameters.
            call.set_compression("gzip")
        await _echo_metadata(call)
        await _send_responses(call, request)
        _check_echo_status(call, request.response_status)

    async def StreamingInputCall(self, call: ServerCall) -> messages_pb2.StreamingInputCallResponse:
        await _echo_metadata(call)
        total = 0
        async for request in call:
            _check_compression(
                call, request.expect_compressed if request.HasField("expect_compressed") else None
            )
            total += len(request.payload.body)
        return messages_pb2.StreamingInputCallResponse(aggregated_payload_size=total)

    async def FullDuplexCall(self, call: ServerCall) -> None:
        # Which responses are compressed is only known request by request, and the
        # encoding must be chosen before the headers: offer gzip, flag per message.
        call.set_compression("gzip")
        await _echo_metadata(call)
        async for request in call:
            _check_echo_status(call, request.response_status)
            await _send_responses(call, request)

    async def HalfDuplexCall(self, call: ServerCall) -> None:
        call.set_compression("gzip")
        await _echo_metadata(call)
        requests = [request async for request in call]
        for request in requests:
            _check_echo_status(call, request.response_status)
            await _send_responses(call, request)


def build_server() -> Server:
    server = Server()
    add_TestServiceServicer_to_server(InteropTestService(), server)
    return server


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    # gRPC peers refuse a TLS connection that did not agree on h2 by ALPN.
    context.set_alpn_protocols(["h2"])
    return context


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="cryo's gRPC interop test server")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--use_tls", type=_parse_bool, default=False)
    parser.add_argument("--tls_cert_file", help="PEM certificate (with --use_tls=true)")
    parser.add_argument("--tls_key_file", help="PEM private key (with --use_tls=true)")
    options = parser.parse_args(argv)
    if options.use_tls and not (options.tls_cert_file and options.tls_key_file):
        parser.error("--use_tls=true needs --tls_cert_file and --tls_key_file")
    return options


async def serve(options: argparse.Namespace) -> None:
    server = build_server()
    ssl_context = (
        server_ssl_context(options.tls_cert_file, options.tls_key_file) if options.use_tls else None
    )
    async with trio.open_nursery() as nursery:
        serve_tcp = functools.partial(server.serve_tcp, ssl_context=ssl_context)
        port = await nursery.start(serve_tcp, options.port, options.host)
        print(f"listening on {options.host}:{port}", flush=True)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        trio.run(serve, options)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
