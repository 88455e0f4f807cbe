"""Error paths between cryo and grpcio, each tried in both directions.

Beyond the official cases: status with details and non-ASCII text, unknown streaming
methods and services, a deadline on a sleeping server and cancellation (both as the
server sees them), oversized messages against either side's receive limit, and gzip
and deflate compression each way with the compressed flag checked on the wire.

Both servers run in this process on 127.0.0.1: cryo's in the test's trio loop, grpcio's
on its thread pool; the grpcio client runs in a worker thread. Each serves a small
`cryo.interop.Probe` service of raw-bytes methods that record what the server saw.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pytest
import trio
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tests.interop.grpcio_peer import RAW_MESSAGES_OPTION, undo_compression
from wire.client import ClientConn
from wire.errors import RpcError
from wire.metadata import Metadata
from wire.server import Server, ServerCall, stream_stream, unary_unary
from wire.status import AnyMessage, StatusCode, StatusDetails

pytestmark = pytest.mark.interop

T = TypeVar("T")

SERVICE = "cryo.interop.Probe"
RECEIVE_LIMIT = 64 * 1024
SMALL_CLIENT_LIMIT = 1024
SLEEP_TIMEOUT = 0.3
OBSERVE_WITHIN = 3.0  # how long a server may take to notice the end of a call
SPECIAL_MESSAGE = "\t\nstatus with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608"
FAILED_PRECONDITION = 9
ERROR_INFO_URL = "type.googleapis.com/google.rpc.ErrorInfo"
RESPOND_ENCODING_KEY = "x-respond-encoding"
COMPRESSIBLE = b"cryo interop " * 2000
GRPCIO_COMPRESSION = {"gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}


def _error_info() -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason="PROBE_FAILED", domain="interop.cryo.test")


# -- the grpcio probe server ----------------------------------------------------------


@dataclass
class GrpcioObservations:
    """What grpcio's handlers saw; set on grpcio's threads, read by the test."""

    time_remaining: float | None = None
    call_ended: threading.Event = field(default_factory=threading.Event)
    handler_started: threading.Event = field(default_factory=threading.Event)


class GrpcioProbe:
    def __init__(self) -> None:
        self.seen = GrpcioObservations()

    def _watch(self, context: grpc.ServicerContext) -> None:
        # The callback runs when the RPC terminates for any reason: here, before the
        # handler returned, so only a cancellation or deadline can have caused it.
        context.add_callback(self.seen.call_ended.set)
        self.seen.time_remaining = context.time_remaining()
        self.seen.handler_started.set()

    def sleep(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._watch(context)
        self.seen.call_ended.wait(5)
        return b""

    def hold(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._watch(context)
        yield b"started"
        self.seen.call_ended.wait(5)

    def sized(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return bytes(int(request))

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    def inspect(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        plain, compressed = undo_compression(request)
        label = {b"\x1f": b"gzip", b"\x78": b"deflate"}[request[:1]] if compressed else b"none"
        return label + b"|" + plain

    def respond(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        encoding = dict(context.invocation_metadata())[RESPOND_ENCODING_KEY]
        context.set_compression(GRPCIO_COMPRESSION[encoding])
        return request

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        detail = any_pb2.Any()
        detail.Pack(_error_info())
        status = status_pb2.Status(
            code=FAILED_PRECONDITION, message=SPECIAL_MESSAGE, details=[detail]
        )
        context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort_with_status returned")

    def handler(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Sleep": unary(self.sleep),
                "Hold": grpc.stream_stream_rpc_method_handler(self.hold),
                "Sized": unary(self.sized),
                "Echo": unary(self.echo),
                "Inspect": unary(self.inspect),
                "Respond": unary(self.respond),
                "Fail": unary(self.fail),
            },
        )


@dataclass
class RunningGrpcioProbe:
    probe: GrpcioProbe
    target: str

    @property
    def seen(self) -> GrpcioObservations:
        return self.probe.seen


@pytest.fixture
def grpcio_probe() -> Iterator[RunningGrpcioProbe]:
    probe = GrpcioProbe()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[RAW_MESSAGES_OPTION, ("grpc.max_receive_message_length", RECEIVE_LIMIT)],
    )
    server.add_generic_rpc_handlers((probe.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield RunningGrpcioProbe(probe, f"127.0.0.1:{port}")
    # Let sleeping handlers go before stopping, so no worker thread outlives the test.
    probe.seen.call_ended.set()
    server.stop(grace=None).wait(5)


# -- the cryo probe server ------------------------------------------------------------


@dataclass
class CryoObservations:
    time_remaining: float | None = None
    cancelled: trio.Event = field(default_factory=trio.Event)
    steps: list[str] = field(default_factory=list)  # what the handler got to, for failures


class CryoProbe:
    def __init__(self) -> None:
        self.seen = CryoObservations()
        self.target = ""

    async def sleep(self, request: bytes, call: ServerCall) -> bytes:
        self.seen.time_remaining = call.time_remaining()
        try:
            await trio.sleep(5)
        except trio.Cancelled:
            self.seen.cancelled.set()
            raise
        return b""

    async def hold(self, call: ServerCall) -> None:
        self.seen.steps.append("started")
        try:
            await call.send_message(b"started")
            self.seen.steps.append("sent")
            await trio.sleep(5)
            self.seen.steps.append("slept")
        except trio.Cancelled:
            self.seen.cancelled.set()
            raise
        except BaseException as exc:
            self.seen.steps.append(f"raised {exc!r}")
            raise

    async def sized(self, request: bytes, call: ServerCall) -> bytes:
        return bytes(int(request))

    async def echo(self, request: bytes, call: ServerCall) -> bytes:
        return request

    async def inspect(self, request: bytes, call: ServerCall) -> bytes:
        label = f"{call.request_encoding}:{call.last_message_compressed}"
        return label.encode() + b"|" + request

    async def respond(self, request: bytes, call: ServerCall) -> bytes:
        encoding = call.invocation_metadata[RESPOND_ENCODING_KEY]
        assert isinstance(encoding, str)
        call.set_compression(encoding)
        return request

    async def fail(self, request: bytes, call: ServerCall) -> bytes:
        detail = AnyMessage(ERROR_INFO_URL, _error_info().SerializeToString())
        call.abort(
            StatusCode.FAILED_PRECONDITION,
            SPECIAL_MESSAGE,
            details=StatusDetails(FAILED_PRECONDITION, SPECIAL_MESSAGE, (detail,)),
        )

    def server(self) -> Server:
        server = Server(max_receive_message_length=RECEIVE_LIMIT)
        server.add_service(
            SERVICE,
            {
                "Sleep": unary_unary(self.sleep),
                "Hold": stream_stream(self.hold),
                "Sized": unary_unary(self.sized),
                "Echo": unary_unary(self.echo),
                "Inspect": unary_unary(self.inspect),
                "Respond": unary_unary(self.respond),
                "Fail": unary_unary(self.fail),
            },
        )
        return server


@pytest.fixture
async def cryo_probe(nursery: trio.Nursery) -> CryoProbe:
    probe = CryoProbe()
    port = await nursery.start(probe.server().serve_tcp, 0)
    probe.target = f"127.0.0.1:{port}"
    return probe


# -- helpers --------------------------------------------------------------------------


def _path(method: str) -> str:
    return f"/{SERVICE}/{method}"


async def in_grpcio_client(
    target: str, work: Callable[[grpc.Channel], T], options: list[tuple[str, Any]] | None = None
) -> T:
    """Run `work(channel)` on a fresh grpcio channel in a worker thread."""

    def run() -> T:
        with grpc.insecure_channel(target, options=options or []) as channel:
            return work(channel)

    return await trio.to_thread.run_sync(run)


def grpcio_error(action: Callable[[], object]) -> grpc.RpcError:
    try:
        action()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the grpcio call succeeded")


async def cryo_error(action: Callable[[], Any]) -> RpcError:
    try:
        await action()
    except RpcError as exc:
        return exc
    raise AssertionError("the cryo call succeeded")


# -- status, details and non-ASCII messages ---------------------------------------


async def test_grpcio_status_with_details_reaches_cryo_client(
    grpcio_probe: RunningGrpcioProbe,
) -> None:
    async with ClientConn(grpcio_probe.target) as conn:
        error = await cryo_error(lambda: conn.invoke(_path("Fail"), b""))
    assert error.code == StatusCode.FAILED_PRECONDITION
    assert error.message == SPECIAL_MESSAGE
    assert error.details is not None
    assert (error.details.code, error.details.message) == (FAILED_PRECONDITION, SPECIAL_MESSAGE)
    [detail] = error.details.details
    assert detail.type_url == ERROR_INFO_URL
    assert error_details_pb2.ErrorInfo.FromString(detail.value) == _error_info()


async def test_cryo_status_with_details_reaches_grpcio_client(cryo_probe: CryoProbe) -> None:
    def call(channel: grpc.Channel) -> tuple[grpc.StatusCode, str, Any]:
        error = grpcio_error(lambda: channel.unary_unary(_path("Fail"))(b"", timeout=10))
        # from_call also checks that the details agree with grpc-status and grpc-message.
        return error.code(), error.details(), rpc_status.from_call(error)

    code, message, status = await in_grpcio_client(cryo_probe.target, call)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert message == SPECIAL_MESSAGE
    assert (status.code, status.message) == (FAILED_PRECONDITION, SPECIAL_MESSAGE)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info == _error_info()


# -- unknown streaming methods and services -------------------------------------------

UNKNOWN_PATHS = [f"/{SERVICE}/NoSuchMethod", "/cryo.interop.NoSuchService/Call"]


@pytest.mark.parametrize("path", UNKNOWN_PATHS)
async def test_cryo_bidi_call_to_unknown_grpcio_method(
    path: str, grpcio_probe: RunningGrpcioProbe
) -> None:
    async with ClientConn(grpcio_probe.target) as conn, conn.open_stream(path) as call:
        await call.send_message(b"hello")
        await call.done_writing()
        error = await cryo_error(call.receive_message)
    assert error.code == StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("path", UNKNOWN_PATHS)
async def test_grpcio_bidi_call_to_unknown_cryo_method(path: str, cryo_probe: CryoProbe) -> None:
    def call(channel: grpc.Channel) -> grpc.StatusCode:
        responses = channel.stream_stream(path)(iter([b"hello"]), timeout=10)
        return grpcio_error(lambda: list(responses)).code()

    assert await in_grpcio_client(cryo_probe.target, call) == grpc.StatusCode.UNIMPLEMENTED


# -- deadlines and cancellation, as the server sees them ------------------------------


async def test_cryo_deadline_on_sleeping_grpcio_server(grpcio_probe: RunningGrpcioProbe) -> None:
    async with ClientConn(grpcio_probe.target) as conn:
        started = time.monotonic()
        error = await cryo_error(lambda: conn.invoke(_path("Sleep"), b"", timeout=SLEEP_TIMEOUT))
        elapsed = time.monotonic() - started
    assert error.code == StatusCode.DEADLINE_EXCEEDED
    assert SLEEP_TIMEOUT <= elapsed < SLEEP_TIMEOUT + 1.0
    seen = grpcio_probe.seen
    assert seen.time_remaining is not None and 0 < seen.time_remaining <= SLEEP_TIMEOUT
    assert await trio.to_thread.run_sync(seen.call_ended.wait, OBSERVE_WITHIN), (
        "the grpcio handler never saw its call end"
    )


async def test_grpcio_deadline_on_sleeping_cryo_server(cryo_probe: CryoProbe) -> None:
    def call(channel: grpc.Channel) -> grpc.StatusCode:
        unary = channel.unary_unary(_path("Sleep"))
        return grpcio_error(lambda: unary(b"", timeout=SLEEP_TIMEOUT)).code()

    assert await in_grpcio_client(cryo_probe.target, call) == grpc.StatusCode.DEADLINE_EXCEEDED
    with trio.fail_after(OBSERVE_WITHIN):
        await cryo_probe.seen.cancelled.wait()
    remaining = cryo_probe.seen.time_remaining
    assert remaining is not None and 0 < remaining <= SLEEP_TIMEOUT


async def test_cryo_cancel_is_seen_by_grpcio_server(grpcio_probe: RunningGrpcioProbe) -> None:
    async with ClientConn(grpcio_probe.target) as conn, conn.open_stream(_path("Hold")) as call:
        assert await call.receive_message() == b"started"
        assert not grpcio_probe.seen.call_ended.is_set()
        call.cancel()
        error = await cryo_error(call.receive_message)
    assert error.code == StatusCode.CANCELLED
    remaining = grpcio_probe.seen.time_remaining
    assert remaining is not None and remaining > 3600  # no deadline: only the cancel ends it
    assert await trio.to_thread.run_sync(grpcio_probe.seen.call_ended.wait, OBSERVE_WITHIN), (
        "the grpcio handler never saw the cancellation"
    )


async def test_cryo_stream_reaches_grpcio_server_before_any_message(
    grpcio_probe: RunningGrpcioProbe,
) -> None:
    # A streaming call that sends nothing yet (the server speaks first) on a connection
    # that is already idle: its HEADERS must still leave at once.
    async with ClientConn(grpcio_probe.target) as conn:
        assert await conn.invoke(_path("Echo"), b"settle the connection") == (
            b"settle the connection"
        )
        with trio.fail_after(5):
            async with conn.open_stream(_path("Hold")) as call:
                assert await call.receive_message() == b"started"
                call.cancel()


async def test_grpcio_cancel_is_seen_by_cryo_server(cryo_probe: CryoProbe) -> None:
    def call(channel: grpc.Channel) -> tuple[bytes, grpc.StatusCode]:
        responses = channel.stream_stream(_path("Hold"))(iter(()))
        first = next(responses)
        responses.cancel()
        return first, grpcio_error(lambda: next(responses)).code()

    first, code = await in_grpcio_client(cryo_probe.target, call)
    assert (first, code) == (b"started", grpc.StatusCode.CANCELLED)
    with trio.move_on_after(OBSERVE_WITHIN):
        await cryo_probe.seen.cancelled.wait()
    assert cryo_probe.seen.cancelled.is_set(), (
        f"the cryo handler was not cancelled; it got to {cryo_probe.seen.steps}"
    )


# -- oversized messages -----------------------------------------------------------


async def test_cryo_client_refuses_oversized_grpcio_response(
    grpcio_probe: RunningGrpcioProbe,
) -> None:
    async with ClientConn(
        grpcio_probe.target, max_receive_message_length=SMALL_CLIENT_LIMIT
    ) as conn:
        error = await cryo_error(
            lambda: conn.invoke(_path("Sized"), str(SMALL_CLIENT_LIMIT + 1).encode())
        )
        assert error.code == StatusCode.RESOURCE_EXHAUSTED
        # Only that call failed: the connection goes on.
        assert await conn.invoke(_path("Sized"), str(SMALL_CLIENT_LIMIT).encode()) == bytes(
            SMALL_CLIENT_LIMIT
        )


async def test_grpcio_server_refuses_oversized_cryo_request(
    grpcio_probe: RunningGrpcioProbe,
) -> None:
    async with ClientConn(grpcio_probe.target) as conn:
        error = await cryo_error(lambda: conn.invoke(_path("Echo"), bytes(RECEIVE_LIMIT + 1)))
        assert error.code == StatusCode.RESOURCE_EXHAUSTED
        assert await conn.invoke(_path("Echo"), bytes(RECEIVE_LIMIT)) == bytes(RECEIVE_LIMIT)


async def test_grpcio_client_refuses_oversized_cryo_response(cryo_probe: CryoProbe) -> None:
    def call(channel: grpc.Channel) -> tuple[grpc.StatusCode, bytes]:
        sized = channel.unary_unary(_path("Sized"))
        code = grpcio_error(lambda: sized(str(SMALL_CLIENT_LIMIT + 1).encode(), timeout=10)).code()
        return code, sized(str(SMALL_CLIENT_LIMIT).encode(), timeout=10)

    code, after = await in_grpcio_client(
        cryo_probe.target, call, options=[("grpc.max_receive_message_length", SMALL_CLIENT_LIMIT)]
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert after == bytes(SMALL_CLIENT_LIMIT)


async def test_cryo_server_refuses_oversized_grpcio_request(cryo_probe: CryoProbe) -> None:
    def call(channel: grpc.Channel) -> tuple[grpc.StatusCode, bytes]:
        echo = channel.unary_unary(_path("Echo"))
        code = grpcio_error(lambda: echo(bytes(RECEIVE_LIMIT + 1), timeout=10)).code()
        return code, echo(bytes(RECEIVE_LIMIT), timeout=10)

    code, after = await in_grpcio_client(cryo_probe.target, call)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert after == bytes(RECEIVE_LIMIT)


# -- compression, with the flag checked by the receiver ------------------------------

ENCODINGS = ["gzip", "deflate"]


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_cryo_client_compresses_for_grpcio_server(
    encoding: str, grpcio_probe: RunningGrpcioProbe
) -> None:
    async with ClientConn(grpcio_probe.target) as conn:
        compressed = await conn.invoke(_path("Inspect"), COMPRESSIBLE, compression=encoding)
        plain = await conn.invoke(_path("Inspect"), COMPRESSIBLE)
    assert compressed == encoding.encode() + b"|" + COMPRESSIBLE
    assert plain == b"none|" + COMPRESSIBLE


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_grpcio_client_compresses_for_cryo_server(
    encoding: str, cryo_probe: CryoProbe
) -> None:
    def call(channel: grpc.Channel) -> tuple[bytes, bytes]:
        inspect = channel.unary_unary(_path("Inspect"))
        return (
            inspect(COMPRESSIBLE, compression=GRPCIO_COMPRESSION[encoding], timeout=10),
            inspect(COMPRESSIBLE, timeout=10),
        )

    compressed, plain = await in_grpcio_client(cryo_probe.target, call)
    assert compressed == f"{encoding}:True|".encode() + COMPRESSIBLE
    assert plain == b"None:False|" + COMPRESSIBLE


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_grpcio_server_compresses_for_cryo_client(
    encoding: str, grpcio_probe: RunningGrpcioProbe
) -> None:
    async with ClientConn(grpcio_probe.target) as conn:
        metadata = Metadata([(RESPOND_ENCODING_KEY, encoding)])
        async with conn.open_stream(_path("Respond"), metadata=metadata) as call:
            await call.send_message(COMPRESSIBLE)
            await call.done_writing()
            response = await call.receive_message()
            flag = call.last_message_compressed
            assert await call.receive_message() is None
    assert response == COMPRESSIBLE
    assert flag is True


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_cryo_server_compresses_for_grpcio_client(
    encoding: str, cryo_probe: CryoProbe
) -> None:
    def call(channel: grpc.Channel) -> bytes:
        respond = channel.unary_unary(_path("Respond"))
        raw: bytes = respond(COMPRESSIBLE, metadata=((RESPOND_ENCODING_KEY, encoding),), timeout=10)
        return raw

    raw = await in_grpcio_client(cryo_probe.target, call, options=[RAW_MESSAGES_OPTION])
    plain, compressed = undo_compression(raw)
    assert compressed is True
    assert raw[:1] == {"gzip": b"\x1f", "deflate": b"\x78"}[encoding]
    assert plain == COMPRESSIBLE
