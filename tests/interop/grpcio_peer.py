"""grpcio as the other side of the interop tests: a strict TestService and a client.

This module owns a grpcio implementation of `grpc.testing.TestService` (the server
features of grpc's `doc/interop-test-descriptions.md`) and a grpcio client that runs
the same 18 cases as cryo's `client.py`, plus their command lines:

    python -m tests.interop.grpcio_peer server --port=N [--host=127.0.0.1]
    python -m tests.interop.grpcio_peer client --server_port=N [--test_case=all|a,b]

It must stay a faithful grpcio peer: only grpcio's public API, except the one place
noted below where that API has no way to do what a case asks. It never imports `wire`.

How grpcio is made to see the per-message compressed flag
---------------------------------------------------------
grpcio's API hands a handler the decompressed request, so it cannot tell a compressed
message from a plain one. With the channel argument `grpc.per_message_decompression`
set to 0, grpc core leaves compressed messages as they arrived, and the deserializer
gets the raw bytes. Tried with grpcio 1.85: a gzip message then starts with the gzip
magic `1f 8b`, a deflate one with the zlib header `78 9c`, and an uncompressed one is
the plain protobuf; `grpc-encoding` itself is not shown in the invocation metadata.
No protobuf can start with `1f` (wire type 7 does not exist), and none of the test
messages has field 15 (tag byte `78`), so the first bytes say which case it is. The
deserializers here (`flagged`) decompress such bytes themselves and return the message
with its flag. The same works on the client side for responses.

The one non-public step: grpcio's client API cannot send a single message of a
compressed stream uncompressed (grpc core's GRPC_WRITE_NO_COMPRESS), which
`client_compressed_streaming` needs. grpcio passes the module constant
`grpc._channel._EMPTY_FLAGS` as the write flags of every streamed request, read at
send time; `_compressed_then_plain` sets it to NO_COMPRESS (2) around that one message
and restores it. The server side has a public API for this
(`disable_next_message_compression`).

Deadlines: a server that enforces `grpc-timeout` (cryo's, like grpc-java's) resets the
stream with CANCEL when it fires. If that RST_STREAM arrives before grpcio's own timer
has fired, grpcio 1.85 reports CANCELLED ("Stream removed (RST_STREAM ... code 8)"),
now and then on a busy machine. grpc-go (PR 2211), and the text proposed for
PROTOCOL-HTTP2.md in grpc PR 27216, report DEADLINE_EXCEEDED instead when a call ends
CANCELLED after its deadline has passed; grpcio does not, so `timeout_on_sleeping_server`
makes that check itself.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import queue
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

if __package__ in (None, ""):
    # Run as `python tests/interop/grpcio_peer.py`: make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc
from google.protobuf.message import Message

from proto.interop import empty_pb2, messages_pb2, test_pb2_grpc
from tests.interop import interop_cases as spec
from tests.interop.interop_cases import check, require

M = TypeVar("M", bound=Message)

RAW_MESSAGES_OPTION = ("grpc.per_message_decompression", 0)
_NO_COMPRESS_WRITE_FLAG = 2  # grpc core's GRPC_WRITE_NO_COMPRESS
_STATUS_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}

CASE_TIMEOUT = 30.0


# -- seeing the compressed flag -------------------------------------------------------


@dataclass(frozen=True)
class Flagged(Generic[M]):
    """A message and whether it arrived with its compressed flag set."""

    message: M
    compressed: bool


def undo_compression(data: bytes) -> tuple[bytes, bool]:
    """(plain bytes, was compressed) for a message read with decompression turned off."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data), True
    if data[:1] == b"\x78" and len(data) >= 2 and int.from_bytes(data[:2], "big") % 31 == 0:
        return zlib.decompress(data), True
    return data, False


def flagged(message_type: type[M]) -> Callable[[bytes], Flagged[M]]:
    """A deserializer for a channel or server with `RAW_MESSAGES_OPTION`."""

    def deserialize(data: bytes) -> Flagged[M]:
        plain, compressed = undo_compression(data)
        return Flagged(message_type.FromString(plain), compressed)

    return deserialize


# -- the server ---------------------------------------------------------------------


def _payload(size: int) -> messages_pb2.Payload:
    return messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=bytes(size))


class GrpcioTestService(test_pb2_grpc.TestServiceServicer):
    """TestService on grpcio; requests arrive as `Flagged` (see the module docstring)."""

    @staticmethod
    def _echo_metadata(context: grpc.ServicerContext) -> None:
        received = dict(context.invocation_metadata())
        initial = received.get(spec.ECHO_INITIAL_KEY)
        trailing = received.get(spec.ECHO_TRAILING_KEY)
        if trailing is not None:
            context.set_trailing_metadata(((spec.ECHO_TRAILING_KEY, trailing),))
        if initial is not None:
            context.send_initial_metadata(((spec.ECHO_INITIAL_KEY, initial),))

    @staticmethod
    def _check_compression(context: grpc.ServicerContext, request: Flagged[Any]) -> None:
        message = request.message
        if not message.HasField("expect_compressed"):
            return
        expected = message.expect_compressed.value
        if expected != request.compressed:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"expected compressed={expected}, got compressed={request.compressed}",
            )

    @staticmethod
    def _check_status(context: grpc.ServicerContext, status: messages_pb2.EchoStatus) -> None:
        if status.code != 0:
            context.abort(_STATUS_BY_NUMBER[status.code], status.message)

    def EmptyCall(
        self, request: Flagged[empty_pb2.Empty], context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._echo_metadata(context)
        return empty_pb2.Empty()

    def UnaryCall(
        self, request: Flagged[messages_pb2.SimpleRequest], context: grpc.ServicerContext
    ) -> messages_pb2.SimpleResponse:
        self._check_compression(context, request)
        message = request.message
        if message.response_compressed.value:
            context.set_compression(grpc.Compression.Gzip)
        self._echo_metadata(context)
        self._check_status(context, message.response_status)
        return messages_pb2.SimpleResponse(payload=_payload(message.response_size))

    def CacheableUnaryCall(
        self, request: Flagged[messages_pb2.SimpleRequest], context: grpc.ServicerContext
    ) -> messages_pb2.SimpleResponse:
        context.send_initial_metadata((("cache-control", "max-age=60, public"),))
        return messages_pb2.SimpleResponse(
            payload=messages_pb2.Payload(
                type=messages_pb2.COMPRESSABLE, body=str(time.time_ns()).encode()
            )
        )

    @staticmethod
    def _responses(
        request: messages_pb2.StreamingOutputCallRequest, context: grpc.ServicerContext
    ) -> Iterator[messages_pb2.StreamingOutputCallResponse]:
        for parameters in request.response_parameters:
            if parameters.interval_us > 0:
                time.sleep(parameters.interval_us / 1e6)
            if not parameters.compressed.value:
                context.disable_next_message_compression()
            yield messages_pb2.StreamingOutputCallResponse(payload=_payload(parameters.size))

    def StreamingOutputCall(
        self,
        request: Flagged[messages_pb2.StreamingOutputCallRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[messages_pb2.StreamingOutputCallResponse]:
        message = request.message
        if any(p.compressed.value for p in message.response_parameters):
            context.set_compression(grpc.Compression.Gzip)
        self._echo_metadata(context)
        yield from self._responses(message, context)
        self._check_status(context, message.response_status)

    def StreamingInputCall(
        self,
        request_iterator: Iterator[Flagged[messages_pb2.StreamingInputCallRequest]],
        context: grpc.ServicerContext,
    ) -> messages_pb2.StreamingInputCallResponse:
        self._echo_metadata(context)
        total = 0
        for request in request_iterator:
            self._check_compression(context, request)
            total += len(request.message.payload.body)
        return messages_pb2.StreamingInputCallResponse(aggregated_payload_size=total)

    def FullDuplexCall(
        self,
        request_iterator: Iterator[Flagged[messages_pb2.StreamingOutputCallRequest]],
        context: grpc.ServicerContext,
    ) -> Iterator[messages_pb2.StreamingOutputCallResponse]:
        context.set_compression(grpc.Compression.Gzip)
        self._echo_metadata(context)
        for request in request_iterator:
            self._check_status(context, request.message.response_status)
            yield from self._responses(request.message, context)

    def HalfDuplexCall(
        self,
        request_iterator: Iterator[Flagged[messages_pb2.StreamingOutputCallRequest]],
        context: grpc.ServicerContext,
    ) -> Iterator[messages_pb2.StreamingOutputCallResponse]:
        context.set_compression(grpc.Compression.Gzip)
        self._echo_metadata(context)
        requests = [request.message for request in request_iterator]
        for message in requests:
            self._check_status(context, message.response_status)
            yield from self._responses(message, context)


def test_service_handler(service: GrpcioTestService) -> grpc.GenericRpcHandler:
    """The TestService method table, with `flagged` request deserializers.

    The generated `add_TestServiceServicer_to_server` cannot be used: its deserializers
    expect decompressed bytes, which a server with `RAW_MESSAGES_OPTION` does not give.
    UnimplementedCall is left out on purpose, as in every interop server.
    """
    simple = flagged(messages_pb2.SimpleRequest)
    output = flagged(messages_pb2.StreamingOutputCallRequest)
    out_response = messages_pb2.StreamingOutputCallResponse.SerializeToString
    return grpc.method_handlers_generic_handler(
        spec.SERVICE,
        {
            "EmptyCall": grpc.unary_unary_rpc_method_handler(
                service.EmptyCall, flagged(empty_pb2.Empty), empty_pb2.Empty.SerializeToString
            ),
            "UnaryCall": grpc.unary_unary_rpc_method_handler(
                service.UnaryCall, simple, messages_pb2.SimpleResponse.SerializeToString
            ),
            "CacheableUnaryCall": grpc.unary_unary_rpc_method_handler(
                service.CacheableUnaryCall, simple, messages_pb2.SimpleResponse.SerializeToString
            ),
            "StreamingOutputCall": grpc.unary_stream_rpc_method_handler(
                service.StreamingOutputCall, output, out_response
            ),
            "StreamingInputCall": grpc.stream_unary_rpc_method_handler(
                service.StreamingInputCall,
                flagged(messages_pb2.StreamingInputCallRequest),
                messages_pb2.StreamingInputCallResponse.SerializeToString,
            ),
            "FullDuplexCall": grpc.stream_stream_rpc_method_handler(
                service.FullDuplexCall, output, out_response
            ),
            "HalfDuplexCall": grpc.stream_stream_rpc_method_handler(
                service.HalfDuplexCall, output, out_response
            ),
        },
    )


def start_server(
    port: int = 0, host: str = "127.0.0.1", *, credentials: grpc.ServerCredentials | None = None
) -> tuple[grpc.Server, int]:
    """Start the TestService on grpcio; returns the server and its bound port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[RAW_MESSAGES_OPTION])
    server.add_generic_rpc_handlers((test_service_handler(GrpcioTestService()),))
    address = f"{host}:{port}"
    bound = (
        server.add_secure_port(address, credentials)
        if credentials is not None
        else server.add_insecure_port(address)
    )
    server.start()
    return server, bound


# -- the client -----------------------------------------------------------------------


class RequestPipe:
    """A request iterator the case feeds one message at a time (for bidi and cancel)."""

    _END = object()

    def __init__(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()

    def add(self, message: Any) -> None:
        self._queue.put(message)

    def close(self) -> None:
        self._queue.put(self._END)

    def __iter__(self) -> Iterator[Any]:
        while True:
            message = self._queue.get()
            if message is self._END:
                return
            yield message


def _compressed_then_plain(first: Any, second: Any) -> Iterator[Any]:
    """Yield `first` (compressed by the call) and `second` with NO_COMPRESS.

    grpcio's consumer thread sends each request right after taking it from this
    iterator, reading `grpc._channel._EMPTY_FLAGS` as it does (see module docstring).
    """
    import grpc._channel as channel_module

    check(
        getattr(channel_module, "_EMPTY_FLAGS", None) == 0,
        "this grpcio has no grpc._channel._EMPTY_FLAGS: cannot send one message "
        "of a compressed stream uncompressed",
    )
    yield first
    channel_module._EMPTY_FLAGS = _NO_COMPRESS_WRITE_FLAG
    try:
        yield second
    finally:
        channel_module._EMPTY_FLAGS = 0


def expect_status(code: grpc.StatusCode, action: Callable[[], Any], what: str) -> grpc.RpcError:
    try:
        action()
    except grpc.RpcError as exc:
        check(
            exc.code() == code,
            f"{what}: status {exc.code().name} ({exc.details()!r}), expected {code.name}",
        )
        return exc
    raise spec.InteropCheckFailed(f"{what}: succeeded, expected {code.name}")


class GrpcioInteropClient:
    """The interop cases on grpcio: the generated stub on a plain channel, and a
    channel with `RAW_MESSAGES_OPTION` where a case must see compressed flags."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        host_override: str | None = None,
    ) -> None:
        options: list[tuple[str, Any]] = []
        if host_override:
            options.append(("grpc.ssl_target_name_override", host_override))
            options.append(("grpc.default_authority", host_override))

        def open_channel(extra: list[tuple[str, Any]]) -> grpc.Channel:
            if credentials is not None:
                return grpc.secure_channel(target, credentials, options=options + extra)
            return grpc.insecure_channel(target, options=options + extra)

        self.channel = open_channel([])
        self.raw_channel = open_channel([RAW_MESSAGES_OPTION])
        self.stub = test_pb2_grpc.TestServiceStub(self.channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self.channel.close()
        self.raw_channel.close()

    def __enter__(self) -> GrpcioInteropClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run_case(self, name: str) -> None:
        case = getattr(self, name, None)
        if name not in spec.CASE_NAMES or case is None:
            raise ValueError(f"unknown interop case {name!r}")
        case()

    # -- cases ----------------------------------------------------------------------

    def empty_unary(self) -> None:
        response = self.stub.EmptyCall(spec.empty(), timeout=CASE_TIMEOUT)
        check(isinstance(response, empty_pb2.Empty), "EmptyCall returned no Empty message")

    def large_unary(self) -> None:
        response = self.stub.UnaryCall(spec.large_unary_request(), timeout=CASE_TIMEOUT)
        spec.check_zero_body(response.payload, spec.LARGE_RESPONSE_SIZE, "UnaryCall")

    def client_streaming(self) -> None:
        requests = [spec.streaming_input_request(s) for s in spec.CLIENT_STREAMING_SIZES]
        response = self.stub.StreamingInputCall(iter(requests), timeout=CASE_TIMEOUT)
        check(
            response.aggregated_payload_size == spec.CLIENT_STREAMING_TOTAL,
            f"aggregated_payload_size {response.aggregated_payload_size}",
        )

    def server_streaming(self) -> None:
        request = spec.streaming_output_request(spec.SERVER_STREAMING_SIZES)
        responses = list(self.stub.StreamingOutputCall(request, timeout=CASE_TIMEOUT))
        spec.check_sizes(responses, spec.SERVER_STREAMING_SIZES, "StreamingOutputCall")

    def ping_pong(self) -> None:
        pipe = RequestPipe()
        responses = self.stub.FullDuplexCall(iter(pipe), timeout=CASE_TIMEOUT)
        try:
            for request_size, response_size in zip(
                spec.PING_PONG_REQUEST_SIZES, spec.SERVER_STREAMING_SIZES, strict=True
            ):
                pipe.add(spec.streaming_output_request([response_size], request_size=request_size))
                response = require(next(responses, None), "FullDuplexCall ended before its reply")
                spec.check_zero_body(response.payload, response_size, "FullDuplexCall reply")
            pipe.close()
            check(next(responses, None) is None, "FullDuplexCall sent an extra reply")
        finally:
            pipe.close()

    def empty_stream(self) -> None:
        responses = list(self.stub.FullDuplexCall(iter(()), timeout=CASE_TIMEOUT))
        check(responses == [], f"FullDuplexCall sent {len(responses)} responses")

    def custom_metadata(self) -> None:
        metadata = (
            (spec.ECHO_INITIAL_KEY, spec.ECHO_INITIAL_VALUE),
            (spec.ECHO_TRAILING_KEY, spec.ECHO_TRAILING_VALUE),
        )
        response, call = self.stub.UnaryCall.with_call(
            spec.large_unary_request(), metadata=metadata, timeout=CASE_TIMEOUT
        )
        spec.check_zero_body(response.payload, spec.LARGE_RESPONSE_SIZE, "UnaryCall")
        self._check_echoed(call, "UnaryCall")
        request = spec.streaming_output_request(
            [spec.LARGE_RESPONSE_SIZE], request_size=spec.LARGE_REQUEST_SIZE
        )
        stream = self.stub.FullDuplexCall(iter([request]), metadata=metadata, timeout=CASE_TIMEOUT)
        responses = list(stream)
        spec.check_sizes(responses, [spec.LARGE_RESPONSE_SIZE], "FullDuplexCall")
        self._check_echoed(stream, "FullDuplexCall")

    @staticmethod
    def _check_echoed(call: Any, what: str) -> None:
        initial = dict(call.initial_metadata() or ())
        trailing = dict(call.trailing_metadata() or ())
        check(
            initial.get(spec.ECHO_INITIAL_KEY) == spec.ECHO_INITIAL_VALUE,
            f"{what}: initial metadata {initial!r}",
        )
        check(
            trailing.get(spec.ECHO_TRAILING_KEY) == spec.ECHO_TRAILING_VALUE,
            f"{what}: trailing metadata {trailing!r}",
        )

    def _check_echo_status(self, message: str, *, streaming: bool) -> None:
        code = _STATUS_BY_NUMBER[spec.STATUS_CODE_UNKNOWN]
        if streaming:
            request = spec.status_streaming_request(spec.STATUS_CODE_UNKNOWN, message)
            error = expect_status(
                code,
                lambda: list(self.stub.FullDuplexCall(iter([request]), timeout=CASE_TIMEOUT)),
                "FullDuplexCall",
            )
        else:
            error = expect_status(
                code,
                lambda: self.stub.UnaryCall(
                    spec.status_request(spec.STATUS_CODE_UNKNOWN, message), timeout=CASE_TIMEOUT
                ),
                "UnaryCall",
            )
        check(
            error.details() == message, f"status message {error.details()!r}, expected {message!r}"
        )

    def status_code_and_message(self) -> None:
        self._check_echo_status(spec.STATUS_MESSAGE, streaming=False)
        self._check_echo_status(spec.STATUS_MESSAGE, streaming=True)

    def special_status_message(self) -> None:
        self._check_echo_status(spec.SPECIAL_STATUS_MESSAGE, streaming=False)

    def unimplemented_method(self) -> None:
        expect_status(
            grpc.StatusCode.UNIMPLEMENTED,
            lambda: self.stub.UnimplementedCall(spec.empty(), timeout=CASE_TIMEOUT),
            "TestService/UnimplementedCall",
        )

    def unimplemented_service(self) -> None:
        stub = test_pb2_grpc.UnimplementedServiceStub(self.channel)  # type: ignore[no-untyped-call]
        expect_status(
            grpc.StatusCode.UNIMPLEMENTED,
            lambda: stub.UnimplementedCall(spec.empty(), timeout=CASE_TIMEOUT),
            "UnimplementedService/UnimplementedCall",
        )

    def cancel_after_begin(self) -> None:
        pipe = RequestPipe()
        future = self.stub.StreamingInputCall.future(iter(pipe), timeout=CASE_TIMEOUT)
        try:
            future.cancel()
            check(future.cancelled(), "the call did not become cancelled")
            check(
                future.code() == grpc.StatusCode.CANCELLED,
                f"status {future.code()}, expected CANCELLED",
            )
        finally:
            pipe.close()

    def cancel_after_first_response(self) -> None:
        pipe = RequestPipe()
        responses = self.stub.FullDuplexCall(iter(pipe), timeout=CASE_TIMEOUT)
        try:
            pipe.add(spec.streaming_output_request([31415], request_size=27182))
            check(next(responses, None) is not None, "FullDuplexCall ended before its reply")
            responses.cancel()
            expect_status(grpc.StatusCode.CANCELLED, lambda: next(responses), "FullDuplexCall")
        finally:
            pipe.close()

    def timeout_on_sleeping_server(self) -> None:
        pipe = RequestPipe()
        started = time.monotonic()
        responses = self.stub.FullDuplexCall(iter(pipe), timeout=spec.SLEEPING_SERVER_TIMEOUT)
        try:
            pipe.add(messages_pb2.StreamingOutputCallRequest(payload=spec.zeros(27182)))
            next(responses)
        except grpc.RpcError as exc:
            code = exc.code()
            if (
                code == grpc.StatusCode.CANCELLED
                and time.monotonic() - started >= spec.SLEEPING_SERVER_TIMEOUT
            ):
                # The server's RST_STREAM(CANCEL) at the deadline beat grpcio's own timer
                # (see the module docstring): the call did time out.
                code = grpc.StatusCode.DEADLINE_EXCEEDED
            check(
                code == grpc.StatusCode.DEADLINE_EXCEEDED,
                f"FullDuplexCall: status {exc.code().name} ({exc.details()!r}), "
                "expected DEADLINE_EXCEEDED",
            )
            return
        finally:
            pipe.close()
        raise spec.InteropCheckFailed("FullDuplexCall: got a reply, expected DEADLINE_EXCEEDED")

    def client_compressed_unary(self) -> None:
        expect_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            lambda: self.stub.UnaryCall(
                spec.large_unary_request(expect_compressed=True), timeout=CASE_TIMEOUT
            ),
            "UnaryCall probe (uncompressed, expect_compressed=true)",
        )
        for compressed in (True, False):
            response = self.stub.UnaryCall(
                spec.large_unary_request(expect_compressed=compressed),
                timeout=CASE_TIMEOUT,
                compression=grpc.Compression.Gzip if compressed else grpc.Compression.NoCompression,
            )
            spec.check_zero_body(
                response.payload, spec.LARGE_RESPONSE_SIZE, f"UnaryCall (compressed={compressed})"
            )

    def server_compressed_unary(self) -> None:
        call = self.raw_channel.unary_unary(
            spec.UNARY_CALL,
            request_serializer=messages_pb2.SimpleRequest.SerializeToString,
            response_deserializer=flagged(messages_pb2.SimpleResponse),
        )
        for compressed in (True, False):
            response = call(
                spec.large_unary_request(response_compressed=compressed), timeout=CASE_TIMEOUT
            )
            check(
                response.compressed == compressed,
                f"response_compressed={compressed} but the compressed flag is "
                f"{response.compressed}",
            )
            spec.check_zero_body(response.message.payload, spec.LARGE_RESPONSE_SIZE, "UnaryCall")

    def client_compressed_streaming(self) -> None:
        first, second = spec.COMPRESSED_STREAMING_SIZES
        probe = spec.streaming_input_request(first, expect_compressed=True)
        expect_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            lambda: self.stub.StreamingInputCall(iter([probe]), timeout=CASE_TIMEOUT),
            "StreamingInputCall probe (uncompressed, expect_compressed=true)",
        )
        requests = _compressed_then_plain(
            spec.streaming_input_request(first, expect_compressed=True),
            spec.streaming_input_request(second, expect_compressed=False),
        )
        response = self.stub.StreamingInputCall(
            requests, timeout=CASE_TIMEOUT, compression=grpc.Compression.Gzip
        )
        check(
            response.aggregated_payload_size == spec.COMPRESSED_STREAMING_TOTAL,
            f"aggregated_payload_size {response.aggregated_payload_size}",
        )

    def server_compressed_streaming(self) -> None:
        flags = [compressed for compressed, _ in spec.SERVER_COMPRESSED_STREAMING]
        sizes = [size for _, size in spec.SERVER_COMPRESSED_STREAMING]
        call = self.raw_channel.unary_stream(
            spec.STREAMING_OUTPUT_CALL,
            request_serializer=messages_pb2.StreamingOutputCallRequest.SerializeToString,
            response_deserializer=flagged(messages_pb2.StreamingOutputCallResponse),
        )
        responses = list(
            call(spec.streaming_output_request(sizes, compressed=flags), timeout=CASE_TIMEOUT)
        )
        spec.check_sizes([r.message for r in responses], sizes, "StreamingOutputCall")
        seen = [r.compressed for r in responses]
        check(seen == flags, f"compressed flags {seen}, expected {flags}")


# -- command line -----------------------------------------------------------------


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _run_server(options: argparse.Namespace) -> int:
    credentials = None
    if options.use_tls:
        key = Path(options.tls_key_file).read_bytes()
        cert = Path(options.tls_cert_file).read_bytes()
        credentials = grpc.ssl_server_credentials([(key, cert)])
    server, port = start_server(options.port, options.host, credentials=credentials)
    print(f"listening on {options.host}:{port}", flush=True)
    # Runs until killed (the tests send SIGTERM) or interrupted.
    with contextlib.suppress(KeyboardInterrupt):
        server.wait_for_termination()
    server.stop(grace=None)
    return 0


def _run_client(options: argparse.Namespace) -> int:
    names = (
        list(spec.CASE_NAMES)
        if options.test_case == "all"
        else [n.strip() for n in options.test_case.split(",") if n.strip()]
    )
    unknown = [n for n in names if n not in spec.CASE_NAMES]
    if unknown or not names:
        print(f"unknown test case(s): {', '.join(unknown) or '(none given)'}", file=sys.stderr)
        return 2
    credentials = None
    if options.use_tls:
        root = Path(options.ca_file).read_bytes() if options.ca_file else None
        credentials = grpc.ssl_channel_credentials(root_certificates=root)
    host = options.server_host
    target = f"[{host}]:{options.server_port}" if ":" in host else f"{host}:{options.server_port}"
    failed = False
    with GrpcioInteropClient(
        target, credentials=credentials, host_override=options.server_host_override
    ) as client:
        for name in names:
            try:
                client.run_case(name)
            except (spec.InteropCheckFailed, grpc.RpcError) as exc:
                failed = True
                print(f"FAIL {name}: {exc}", flush=True)
            else:
                print(f"PASS {name}", flush=True)
    return 1 if failed else 0


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="grpcio interop peer for cryo's tests")
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server", help="serve grpc.testing.TestService")
    server.add_argument("--port", type=int, required=True, help="0 picks a free port")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--use_tls", type=_parse_bool, default=False)
    server.add_argument("--tls_cert_file")
    server.add_argument("--tls_key_file")
    client = commands.add_parser("client", help="run interop cases against a server")
    client.add_argument("--server_host", default="127.0.0.1")
    client.add_argument("--server_port", type=int, required=True)
    client.add_argument("--server_host_override")
    client.add_argument("--test_case", default="all")
    client.add_argument("--use_tls", type=_parse_bool, default=False)
    client.add_argument("--ca_file")
    options = parser.parse_args(list(argv) if argv is not None else None)
    if options.command == "server":
        if options.use_tls and not (options.tls_cert_file and options.tls_key_file):
            parser.error("--use_tls=true needs --tls_cert_file and --tls_key_file")
        return _run_server(options)
    return _run_client(options)


if __name__ == "__main__":
    sys.exit(main())
