"""What the official interop cases send and expect, shared by both interop clients.

This module owns the case names (in grpc's `doc/interop-test-descriptions.md` order as
wire.md lists them), the method paths, the request sizes and messages each case uses,
and `check`, the one way a case reports a broken expectation. It must not open
connections or import a gRPC implementation: cryo's client (`client.py`) and the
grpcio client (`grpcio_peer.py`) both build on it, so that the two send the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from proto.interop import empty_pb2, messages_pb2

CASE_NAMES: tuple[str, ...] = (
    "empty_unary",
    "large_unary",
    "client_streaming",
    "server_streaming",
    "ping_pong",
    "empty_stream",
    "custom_metadata",
    "status_code_and_message",
    "special_status_message",
    "unimplemented_method",
    "unimplemented_service",
    "cancel_after_begin",
    "cancel_after_first_response",
    "timeout_on_sleeping_server",
    "client_compressed_unary",
    "server_compressed_unary",
    "client_compressed_streaming",
    "server_compressed_streaming",
)

T = TypeVar("T")

SERVICE = "grpc.testing.TestService"
EMPTY_CALL = f"/{SERVICE}/EmptyCall"
UNARY_CALL = f"/{SERVICE}/UnaryCall"
CACHEABLE_UNARY_CALL = f"/{SERVICE}/CacheableUnaryCall"
STREAMING_OUTPUT_CALL = f"/{SERVICE}/StreamingOutputCall"
STREAMING_INPUT_CALL = f"/{SERVICE}/StreamingInputCall"
FULL_DUPLEX_CALL = f"/{SERVICE}/FullDuplexCall"
HALF_DUPLEX_CALL = f"/{SERVICE}/HalfDuplexCall"
UNIMPLEMENTED_CALL = f"/{SERVICE}/UnimplementedCall"
UNIMPLEMENTED_SERVICE_CALL = "/grpc.testing.UnimplementedService/UnimplementedCall"

LARGE_REQUEST_SIZE = 271828
LARGE_RESPONSE_SIZE = 314159
CLIENT_STREAMING_SIZES = (27182, 8, 1828, 45904)
CLIENT_STREAMING_TOTAL = 74922
SERVER_STREAMING_SIZES = (31415, 9, 2653, 58979)
PING_PONG_REQUEST_SIZES = (27182, 8, 1828, 45904)
COMPRESSED_STREAMING_SIZES = (27182, 45904)
COMPRESSED_STREAMING_TOTAL = 73086
SERVER_COMPRESSED_STREAMING = ((True, 31415), (False, 92653))

ECHO_INITIAL_KEY = "x-grpc-test-echo-initial"
ECHO_INITIAL_VALUE = "test_initial_metadata_value"
ECHO_TRAILING_KEY = "x-grpc-test-echo-trailing-bin"
ECHO_TRAILING_VALUE = b"\xab\xab\xab"

STATUS_CODE_UNKNOWN = 2
STATUS_MESSAGE = "test status message"
SPECIAL_STATUS_MESSAGE = (
    "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"
)

SLEEPING_SERVER_TIMEOUT = 0.001
"""timeout_on_sleeping_server: the spec's 1 ms deadline."""


class InteropCheckFailed(AssertionError):
    """A case saw something its description says it must not."""


def check(condition: bool, message: str) -> None:
    """Fail the running case with `message` unless `condition` holds."""
    if not condition:
        raise InteropCheckFailed(message)


def require(value: T | None, message: str) -> T:
    """`value`, or fail the running case with `message` if it is None."""
    if value is None:
        raise InteropCheckFailed(message)
    return value


def zeros(size: int) -> messages_pb2.Payload:
    return messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=bytes(size))


def empty() -> empty_pb2.Empty:
    return empty_pb2.Empty()


def large_unary_request(
    *, expect_compressed: bool | None = None, response_compressed: bool | None = None
) -> messages_pb2.SimpleRequest:
    request = messages_pb2.SimpleRequest(
        response_type=messages_pb2.COMPRESSABLE,
        response_size=LARGE_RESPONSE_SIZE,
        payload=zeros(LARGE_REQUEST_SIZE),
    )
    if expect_compressed is not None:
        request.expect_compressed.value = expect_compressed
    if response_compressed is not None:
        request.response_compressed.value = response_compressed
    return request


def status_request(code: int, message: str) -> messages_pb2.SimpleRequest:
    return messages_pb2.SimpleRequest(
        response_status=messages_pb2.EchoStatus(code=code, message=message)
    )


def status_streaming_request(code: int, message: str) -> messages_pb2.StreamingOutputCallRequest:
    return messages_pb2.StreamingOutputCallRequest(
        response_status=messages_pb2.EchoStatus(code=code, message=message)
    )


def streaming_input_request(
    size: int, *, expect_compressed: bool | None = None
) -> messages_pb2.StreamingInputCallRequest:
    request = messages_pb2.StreamingInputCallRequest(payload=zeros(size))
    if expect_compressed is not None:
        request.expect_compressed.value = expect_compressed
    return request


def streaming_output_request(
    response_sizes: Iterable[int],
    *,
    request_size: int | None = None,
    compressed: Iterable[bool] | None = None,
) -> messages_pb2.StreamingOutputCallRequest:
    request = messages_pb2.StreamingOutputCallRequest(response_type=messages_pb2.COMPRESSABLE)
    flags = list(compressed) if compressed is not None else None
    for index, size in enumerate(response_sizes):
        parameters = request.response_parameters.add(size=size)
        if flags is not None:
            parameters.compressed.value = flags[index]
    if request_size is not None:
        request.payload.CopyFrom(zeros(request_size))
    return request


def check_zero_body(payload: messages_pb2.Payload, size: int, what: str) -> None:
    """The spec lets clients insist on an all-zero body of the exact size."""
    check(len(payload.body) == size, f"{what}: payload is {len(payload.body)} bytes, not {size}")
    check(payload.body.count(0) == size, f"{what}: payload is not all zeros")


def check_sizes(
    responses: list[messages_pb2.StreamingOutputCallResponse], expected: Iterable[int], what: str
) -> None:
    expected = list(expected)
    got = [len(r.payload.body) for r in responses]
    check(got == expected, f"{what}: response sizes {got}, expected {expected}")
    for response, size in zip(responses, expected, strict=True):
        check_zero_body(response.payload, size, what)
