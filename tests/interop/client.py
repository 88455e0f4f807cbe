"""cryo's interop client: the 18 official cases (wire.md) through the generated stubs.

This module owns one coroutine per case, each doing what grpc's
`doc/interop-test-descriptions.md` says that case sends and asserting what it says
the client must see, and the command line the official runners use:

    python -m tests.interop.client --server_host=127.0.0.1 --server_port=N \\
        --test_case=all|name[,name] [--use_tls=false] [--server_host_override=NAME]

It prints `PASS <case>` or `FAIL <case>: <reason>` per case and exits non-zero if any
failed. A case fails by raising (`InteropCheckFailed`, or an `RpcError` it did not
expect); it must not print or exit on its own, so tests can call `run_case` directly.

Every call goes through the generated `TestServiceStub` and `UnimplementedServiceStub`
(`proto/interop/test_cryo.py`), as a user of cryo would make it. The one exception is
`server_compressed_unary`, which must see a unary response's compressed flag: see there.
"""

from __future__ import annotations

import argparse
import ssl
import sys
from collections.abc import AsyncIterable, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

if __package__ in (None, ""):
    # Run as `python tests/interop/client.py`: make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio

from proto.interop import empty_pb2, messages_pb2
from proto.interop.test_cryo import TestServiceStub, UnimplementedServiceStub
from tests.interop import interop_cases as spec
from tests.interop.interop_cases import check, require
from wire.client import ClientConn
from wire.errors import RpcError
from wire.metadata import Metadata
from wire.status import StatusCode

CASE_TIMEOUT = 30.0
"""No case needs more than a fraction of this; it only stops a hung case."""

T = TypeVar("T")


async def expect_status(code: StatusCode, call: Awaitable[Any], what: str) -> RpcError:
    """Await `call`, which must fail with `code`; return the error."""
    try:
        await call
    except RpcError as exc:
        check(
            exc.code == code,
            f"{what}: status {exc.code.name} ({exc.message!r}), expected {code.name}",
        )
        return exc
    raise spec.InteropCheckFailed(f"{what}: succeeded, expected {code.name}")


async def _drain(responses: AsyncIterable[T]) -> list[T]:
    return [message async for message in responses]


# -- the cases ------------------------------------------------------------------------


async def empty_unary(conn: ClientConn) -> None:
    response = await TestServiceStub(conn).EmptyCall(spec.empty())
    check(isinstance(response, empty_pb2.Empty), "EmptyCall returned no Empty message")


async def large_unary(conn: ClientConn) -> None:
    response = await TestServiceStub(conn).UnaryCall(spec.large_unary_request())
    spec.check_zero_body(response.payload, spec.LARGE_RESPONSE_SIZE, "UnaryCall")


async def client_streaming(conn: ClientConn) -> None:
    async with TestServiceStub(conn).StreamingInputCall() as call:
        for size in spec.CLIENT_STREAMING_SIZES:
            await call.send_message(spec.streaming_input_request(size))
        await call.done_writing()
        response = require(
            await call.receive_message(), "StreamingInputCall ended without a response"
        )
        check(await call.receive_message() is None, "StreamingInputCall sent two responses")
    check(
        response.aggregated_payload_size == spec.CLIENT_STREAMING_TOTAL,
        f"aggregated_payload_size {response.aggregated_payload_size}, "
        f"expected {spec.CLIENT_STREAMING_TOTAL}",
    )


async def server_streaming(conn: ClientConn) -> None:
    request = spec.streaming_output_request(spec.SERVER_STREAMING_SIZES)
    responses = await _drain(TestServiceStub(conn).StreamingOutputCall(request))
    spec.check_sizes(responses, spec.SERVER_STREAMING_SIZES, "StreamingOutputCall")


async def ping_pong(conn: ClientConn) -> None:
    async with TestServiceStub(conn).FullDuplexCall() as call:
        for request_size, response_size in zip(
            spec.PING_PONG_REQUEST_SIZES, spec.SERVER_STREAMING_SIZES, strict=True
        ):
            await call.send_message(
                spec.streaming_output_request([response_size], request_size=request_size)
            )
            response = require(
                await call.receive_message(), "FullDuplexCall ended before its reply"
            )
            spec.check_zero_body(response.payload, response_size, "FullDuplexCall reply")
        await call.done_writing()
        check(await call.receive_message() is None, "FullDuplexCall sent an extra reply")


async def empty_stream(conn: ClientConn) -> None:
    async with TestServiceStub(conn).FullDuplexCall() as call:
        await call.done_writing()
        responses = await _drain(call)
    check(responses == [], f"FullDuplexCall sent {len(responses)} responses, expected none")


def _echo_metadata() -> Metadata:
    return Metadata(
        [
            (spec.ECHO_INITIAL_KEY, spec.ECHO_INITIAL_VALUE),
            (spec.ECHO_TRAILING_KEY, spec.ECHO_TRAILING_VALUE),
        ]
    )


def _check_echoed(initial: Metadata | None, trailing: Metadata | None, what: str) -> None:
    got_initial = initial.get(spec.ECHO_INITIAL_KEY) if initial is not None else None
    check(
        got_initial == spec.ECHO_INITIAL_VALUE,
        f"{what}: initial metadata {spec.ECHO_INITIAL_KEY}={got_initial!r}",
    )
    got_trailing = trailing.get(spec.ECHO_TRAILING_KEY) if trailing is not None else None
    check(
        got_trailing == spec.ECHO_TRAILING_VALUE,
        f"{what}: trailing metadata {spec.ECHO_TRAILING_KEY}={got_trailing!r}",
    )


async def custom_metadata(conn: ClientConn) -> None:
    stub = TestServiceStub(conn)
    header, trailer = Metadata(), Metadata()
    response = await stub.UnaryCall(
        spec.large_unary_request(), metadata=_echo_metadata(), header=header, trailer=trailer
    )
    spec.check_zero_body(response.payload, spec.LARGE_RESPONSE_SIZE, "UnaryCall")
    _check_echoed(header, trailer, "UnaryCall")

    request = spec.streaming_output_request(
        [spec.LARGE_RESPONSE_SIZE], request_size=spec.LARGE_REQUEST_SIZE
    )
    async with stub.FullDuplexCall(metadata=_echo_metadata()) as call:
        await call.send_message(request)
        await call.done_writing()
        responses = await _drain(call)
        initial = await call.initial_metadata()
        trailing = call.trailing_metadata
    spec.check_sizes(responses, [spec.LARGE_RESPONSE_SIZE], "FullDuplexCall")
    _check_echoed(initial, trailing, "FullDuplexCall")


async def _check_echo_status(conn: ClientConn, message: str, *, streaming: bool) -> None:
    stub = TestServiceStub(conn)
    code = StatusCode(spec.STATUS_CODE_UNKNOWN)
    if not streaming:
        error = await expect_status(
            code, stub.UnaryCall(spec.status_request(code, message)), "UnaryCall"
        )
        check(
            error.message == message,
            f"UnaryCall: status message {error.message!r}, expected {message!r}",
        )
        return
    async with stub.FullDuplexCall() as call:
        await call.send_message(spec.status_streaming_request(code, message))
        await call.done_writing()
        error = await expect_status(code, _drain(call), "FullDuplexCall")
    check(
        error.message == message,
        f"FullDuplexCall: status message {error.message!r}, expected {message!r}",
    )


async def status_code_and_message(conn: ClientConn) -> None:
    await _check_echo_status(conn, spec.STATUS_MESSAGE, streaming=False)
    await _check_echo_status(conn, spec.STATUS_MESSAGE, streaming=True)


async def special_status_message(conn: ClientConn) -> None:
    await _check_echo_status(conn, spec.SPECIAL_STATUS_MESSAGE, streaming=False)


async def unimplemented_method(conn: ClientConn) -> None:
    await expect_status(
        StatusCode.UNIMPLEMENTED,
        TestServiceStub(conn).UnimplementedCall(spec.empty()),
        "TestService/UnimplementedCall",
    )


async def unimplemented_service(conn: ClientConn) -> None:
    await expect_status(
        StatusCode.UNIMPLEMENTED,
        UnimplementedServiceStub(conn).UnimplementedCall(spec.empty()),
        "UnimplementedService/UnimplementedCall",
    )


async def cancel_after_begin(conn: ClientConn) -> None:
    async with TestServiceStub(conn).StreamingInputCall() as call:
        call.cancel()
        await expect_status(StatusCode.CANCELLED, call.receive_message(), "StreamingInputCall")


async def cancel_after_first_response(conn: ClientConn) -> None:
    request = spec.streaming_output_request([31415], request_size=27182)
    async with TestServiceStub(conn).FullDuplexCall() as call:
        await call.send_message(request)
        require(await call.receive_message(), "FullDuplexCall ended before its first reply")
        call.cancel()
        await expect_status(StatusCode.CANCELLED, call.receive_message(), "FullDuplexCall")


async def timeout_on_sleeping_server(conn: ClientConn) -> None:
    async def call_and_wait() -> None:
        async with TestServiceStub(conn).FullDuplexCall(
            timeout=spec.SLEEPING_SERVER_TIMEOUT
        ) as call:
            await call.send_message(
                messages_pb2.StreamingOutputCallRequest(payload=spec.zeros(27182))
            )
            await call.receive_message()

    await expect_status(StatusCode.DEADLINE_EXCEEDED, call_and_wait(), "FullDuplexCall")


async def client_compressed_unary(conn: ClientConn) -> None:
    stub = TestServiceStub(conn)
    # The probe: an uncompressed request that claims to be compressed must be refused,
    # else the server cannot tell and the rest of the case would prove nothing.
    await expect_status(
        StatusCode.INVALID_ARGUMENT,
        stub.UnaryCall(spec.large_unary_request(expect_compressed=True)),
        "UnaryCall probe (uncompressed, expect_compressed=true)",
    )
    for compressed in (True, False):
        response = await stub.UnaryCall(
            spec.large_unary_request(expect_compressed=compressed),
            compression="gzip" if compressed else None,
        )
        spec.check_zero_body(
            response.payload, spec.LARGE_RESPONSE_SIZE, f"UnaryCall (compressed={compressed})"
        )


async def server_compressed_unary(conn: ClientConn) -> None:
    # The case checks the compressed flag of the one response message, and the stub's
    # unary method (like grpc-go's Invoke) returns only the message. So this call is
    # made as a stream of one request and one response on the same method, whose
    # `ClientCall` reports the flag; the bytes on the wire are those of a unary call.
    for compressed in (True, False):
        async with conn.open_stream(
            spec.UNARY_CALL,
            request_serializer=messages_pb2.SimpleRequest.SerializeToString,
            response_deserializer=messages_pb2.SimpleResponse.FromString,
        ) as call:
            await call.send_message(spec.large_unary_request(response_compressed=compressed))
            await call.done_writing()
            response = require(await call.receive_message(), "UnaryCall ended without a response")
            check(
                call.last_message_compressed == compressed,
                f"response_compressed={compressed} but the response's compressed flag "
                f"is {call.last_message_compressed}",
            )
            check(await call.receive_message() is None, "UnaryCall sent two responses")
        spec.check_zero_body(response.payload, spec.LARGE_RESPONSE_SIZE, "UnaryCall")


async def client_compressed_streaming(conn: ClientConn) -> None:
    stub = TestServiceStub(conn)
    first, second = spec.COMPRESSED_STREAMING_SIZES
    async with stub.StreamingInputCall() as call:
        await call.send_message(spec.streaming_input_request(first, expect_compressed=True))
        await call.done_writing()
        await expect_status(
            StatusCode.INVALID_ARGUMENT,
            call.receive_message(),
            "StreamingInputCall probe (uncompressed, expect_compressed=true)",
        )
    async with stub.StreamingInputCall(compression="gzip") as call:
        await call.send_message(
            spec.streaming_input_request(first, expect_compressed=True), compress=True
        )
        await call.send_message(
            spec.streaming_input_request(second, expect_compressed=False), compress=False
        )
        await call.done_writing()
        response = require(
            await call.receive_message(), "StreamingInputCall ended without a response"
        )
    check(
        response.aggregated_payload_size == spec.COMPRESSED_STREAMING_TOTAL,
        f"aggregated_payload_size {response.aggregated_payload_size}, "
        f"expected {spec.COMPRESSED_STREAMING_TOTAL}",
    )


async def server_compressed_streaming(conn: ClientConn) -> None:
    flags = [compressed for compressed, _ in spec.SERVER_COMPRESSED_STREAMING]
    sizes = [size for _, size in spec.SERVER_COMPRESSED_STREAMING]
    request = spec.streaming_output_request(sizes, compressed=flags)
    received: list[messages_pb2.StreamingOutputCallResponse] = []
    seen_flags: list[bool] = []
    async with TestServiceStub(conn).StreamingOutputCall(request) as responses:
        async for response in responses:
            received.append(response)
            seen_flags.append(responses.last_message_compressed)
    spec.check_sizes(received, sizes, "StreamingOutputCall")
    check(seen_flags == flags, f"compressed flags {seen_flags}, expected {flags}")


CASES: dict[str, Callable[[ClientConn], Awaitable[None]]] = {
    "empty_unary": empty_unary,
    "large_unary": large_unary,
    "client_streaming": client_streaming,
    "server_streaming": server_streaming,
    "ping_pong": ping_pong,
    "empty_stream": empty_stream,
    "custom_metadata": custom_metadata,
    "status_code_and_message": status_code_and_message,
    "special_status_message": special_status_message,
    "unimplemented_method": unimplemented_method,
    "unimplemented_service": unimplemented_service,
    "cancel_after_begin": cancel_after_begin,
    "cancel_after_first_response": cancel_after_first_response,
    "timeout_on_sleeping_server": timeout_on_sleeping_server,
    "client_compressed_unary": client_compressed_unary,
    "server_compressed_unary": server_compressed_unary,
    "client_compressed_streaming": client_compressed_streaming,
    "server_compressed_streaming": server_compressed_streaming,
}
assert tuple(CASES) == spec.CASE_NAMES


async def run_case(conn: ClientConn, name: str) -> None:
    """Run one case on `conn`; raises if the case fails (or takes over CASE_TIMEOUT)."""
    case = CASES[name]
    with trio.fail_after(CASE_TIMEOUT):
        await case(conn)


# -- command line -----------------------------------------------------------------


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="cryo's gRPC interop test client")
    parser.add_argument("--server_host", default="127.0.0.1")
    parser.add_argument("--server_port", type=int, required=True)
    parser.add_argument("--server_host_override", help="name for TLS verification and :authority")
    parser.add_argument(
        "--test_case",
        default="all",
        help=f"all, or a comma-separated list of: {', '.join(spec.CASE_NAMES)}",
    )
    parser.add_argument("--use_tls", type=_parse_bool, default=False)
    parser.add_argument(
        "--use_test_ca",
        type=_parse_bool,
        default=False,
        help="trust --ca_file instead of the system roots",
    )
    parser.add_argument("--ca_file", help="PEM CA certificate for --use_test_ca=true")
    options = parser.parse_args(argv)
    names = (
        list(spec.CASE_NAMES)
        if options.test_case == "all"
        else [n.strip() for n in options.test_case.split(",") if n.strip()]
    )
    unknown = [n for n in names if n not in CASES]
    if unknown or not names:
        parser.error(f"unknown test case(s): {', '.join(unknown) or '(none given)'}")
    options.names = names
    if options.use_test_ca and not options.ca_file:
        parser.error("--use_test_ca=true needs --ca_file")
    return options


def client_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    # Certificates are always checked (the spec forbids turning that off).
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    return context


async def run_cases(options: argparse.Namespace) -> list[tuple[str, str | None]]:
    """Run the chosen cases in order on one connection; (name, failure or None) each."""
    host = options.server_host
    target = f"[{host}]:{options.server_port}" if ":" in host else f"{host}:{options.server_port}"
    override = options.server_host_override
    ssl_context = client_ssl_context(options.ca_file) if options.use_tls else None
    authority = f"{override}:{options.server_port}" if override else None
    results: list[tuple[str, str | None]] = []
    async with ClientConn(
        target, ssl_context=ssl_context, server_hostname=override, authority=authority
    ) as conn:
        for name in options.names:
            try:
                await run_case(conn, name)
            except (spec.InteropCheckFailed, RpcError) as exc:
                results.append((name, str(exc) or type(exc).__name__))
            except trio.TooSlowError:
                results.append((name, f"did not finish within {CASE_TIMEOUT:g} s"))
            else:
                results.append((name, None))
    return results


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    results = trio.run(run_cases, options)
    for name, failure in results:
        print(f"PASS {name}" if failure is None else f"FAIL {name}: {failure}", flush=True)
    return 1 if any(failure is not None for _, failure in results) else 0


if __name__ == "__main__":
    sys.exit(main())
