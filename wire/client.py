"""The gRPC client: `ClientConn`, its call path, and streaming calls.

The unary call path is named after grpc-go (v1.3 `call.go`) so that a reader can
follow the well-known walk-through in this code:

    ClientConn.invoke → invoke → send_request → Transport.new_stream (here: new_stream)
      → encode → write → recv_response

Each of those functions says in its docstring which grpc-go function it mirrors.
`ClientConn` owns its connections (lazily made, remade on the next call after a
failure) and the nursery their reader and writer tasks run in. It makes no protocol
decisions; the sans-I/O `GrpcConnection` does.

Streaming calls (`ClientCall`) come either in a block whose cancel scope carries the
deadline (`open_stream`) or free-standing, enforcing the deadline in each operation
(`start_stream`). Both open their stream in `ClientConn._start_call` and let it go
in `ClientCall.close` (or, for a call dropped without closing it, in
`_let_go_dropped_call`), and nowhere else.
"""

from __future__ import annotations

import math
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import h2.errors
import trio
import trio.lowlevel

from wire.connection import ConnectionConfig, GrpcConnection
from wire.dial import Target, describe_peer, open_target, parse_target
from wire.errors import ProtocolMisuse, RpcError
from wire.framing import DEFAULT_MAX_RECEIVE_MESSAGE_LENGTH
from wire.metadata import Metadata, MetadataSource
from wire.status import StatusCode
from wire.trace import CallTrace, TraceSink, installed_tracer, new_trace_id
from wire.transport import StreamState, Transport

Req = TypeVar("Req")
Resp = TypeVar("Resp")

Serializer = Callable[[Any], bytes]
Deserializer = Callable[[bytes], Any]


SERVER_PREFACE_TIMEOUT = 20.0
"""Seconds a new connection may take to deliver the server's SETTINGS (grpc-go's
minimum connect timeout is also 20 s)."""


def _identity(data: Any) -> Any:
    return data


@dataclass(slots=True)
class CallOptions:
    """Per-call settings (grpc-go's `CallOption`s).

    `header` and `trailer`, when given, are filled with the response's initial and
    trailing metadata, like grpc-go's `grpc.Header(&md)` and `grpc.Trailer(&md)`.
    """

    timeout: float | None = None
    metadata: Metadata | None = None
    compression: str | None = None
    wait_for_ready: bool = False
    header: Metadata | None = None
    trailer: Metadata | None = None


@dataclass(frozen=True, slots=True)
class ClientKeepalive:
    """Client keepalive pings (gRFC A8); off unless given to `ClientConn`.

    A PING goes out after `time` seconds, and the connection is given up (its calls
    fail UNAVAILABLE) if the ACK takes longer than `timeout`. Without calls in flight
    no pings are sent unless `permit_without_calls`. Servers limit how often they may
    come (grpc-go: at most every 5 minutes by default).
    """

    time: float
    timeout: float = 20.0
    permit_without_calls: bool = False


UnaryInvoker = Callable[[str, Any, CallOptions], Awaitable[Any]]
UnaryClientInterceptor = Callable[[str, Any, CallOptions, UnaryInvoker], Awaitable[Any]]
"""grpc-go's `UnaryClientInterceptor`: `(method, request, options, invoker) -> response`.
Call `await invoker(method, request, options)` to go on down the chain."""


class ClientConn:
    """A client connection to one target (grpc-go `ClientConn`).

    Use it as an async context manager: it owns a nursery for its connection tasks.

        async with ClientConn("127.0.0.1:50051") as conn:
            reply = await conn.invoke("/pkg.Svc/Method", request_bytes)
    """

    def __init__(
        self,
        target: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        authority: str | None = None,
        compression: str | None = None,
        max_receive_message_length: int | None = DEFAULT_MAX_RECEIVE_MESSAGE_LENGTH,
        max_send_message_length: int | None = None,
        interceptors: Sequence[UnaryClientInterceptor] = (),
        tracer: TraceSink | None = None,
        user_agent: str | None = None,
        connection_config: ConnectionConfig | None = None,
        keepalive: ClientKeepalive | None = None,
    ) -> None:
        self.target: Target = parse_target(target)
        self.keepalive = keepalive
        self._ssl_context = ssl_context
        self._server_hostname = server_hostname
        self.authority = authority or self.target.authority
        self._scheme = "https" if ssl_context is not None else "http"
        self.compression = compression
        self._interceptors = tuple(interceptors)
        self._tracer = tracer if tracer is not None else installed_tracer()
        config = connection_config or ConnectionConfig(client_side=True)
        config = replace(
            config,
            client_side=True,
            max_receive_message_length=max_receive_message_length,
            max_send_message_length=max_send_message_length,
        )
        if user_agent is not None:
            config.user_agent = f"{user_agent} {config.user_agent}"
        self._config = config
        self._transport: Transport | None = None
        self._connect_lock = trio.Lock()
        self._exit_stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> ClientConn:
        stack = AsyncExitStack()
        self._nursery = await stack.enter_async_context(trio.open_nursery())
        self._exit_stack = stack
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.close()
        finally:
            # Leave the nursery we entered even when close() was cancelled (a deadline
            # around the whole block): skipping it corrupts trio's cancel-scope stack.
            if self._exit_stack is not None:
                stack, self._exit_stack = self._exit_stack, None
                await stack.__aexit__(None, None, None)

    async def close(self) -> None:
        """Close the connection; calls still running fail with UNAVAILABLE."""
        self._closed = True
        transport, self._transport = self._transport, None
        try:
            if transport is not None:
                transport.connection.close()
                transport.kick()
                with trio.move_on_after(0.5):
                    await trio.lowlevel.checkpoint()  # let the writer send GOAWAY
        finally:
            # Also when cancelled while waiting: no connection task may outlive close().
            if transport is not None:
                transport.abort("client connection closed")
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()

    # -- unary --------------------------------------------------------------------------

    async def invoke(
        self,
        method: str,
        request: Any,
        *,
        request_serializer: Serializer = _identity,
        response_deserializer: Deserializer = _identity,
        timeout: float | None = None,
        metadata: Metadata | MetadataSource | None = None,
        compression: str | None = None,
        wait_for_ready: bool = False,
        header: Metadata | None = None,
        trailer: Metadata | None = None,
    ) -> Any:
        """Make a unary call and return the response (grpc-go `ClientConn.Invoke`).

        The request goes through the unary interceptors, then `invoke`. A failed call
        raises `RpcError`.
        """
        options = CallOptions(
            timeout,
            _checked_metadata(metadata),
            compression if compression is not None else self.compression,
            wait_for_ready,
            header,
            trailer,
        )

        tracer = self._tracer
        trace = CallTrace(tracer, "client", method=method) if tracer is not None else None

        async def base(method: str, request: Any, options: CallOptions) -> Any:
            if trace is None:
                return await invoke(
                    self, method, request, options, request_serializer, response_deserializer
                )
            with trace.step("invoke", timeout=options.timeout):
                return await invoke(
                    self,
                    method,
                    request,
                    options,
                    request_serializer,
                    response_deserializer,
                    trace=trace,
                )

        invoker: UnaryInvoker = base
        for interceptor in reversed(self._interceptors):
            invoker = _bind_interceptor(interceptor, invoker)
        if trace is None:
            return await invoker(method, request, options)
        with trace.step("ClientConn.invoke", timeout=timeout, compression=options.compression):
            return await invoker(method, request, options)

    # -- streaming ----------------------------------------------------------------------

    @asynccontextmanager
    async def open_stream(
        self,
        method: str,
        *,
        request_serializer: Serializer = _identity,
        response_deserializer: Deserializer = _identity,
        timeout: float | None = None,
        metadata: Metadata | MetadataSource | None = None,
        compression: str | None = None,
        wait_for_ready: bool = False,
    ) -> AsyncIterator[ClientCall[Any, Any]]:
        """Open a streaming call (grpc-go `ClientConn.NewStream`), for any cardinality.

            async with conn.open_stream("/pkg.Svc/Chat") as call:
                await call.send_message(b"hi")
                await call.done_writing()
                async for reply in call:
                    ...

        The deadline covers the whole block; when it passes, the call is cancelled
        (RST_STREAM(CANCEL)) and the block raises `RpcError(DEADLINE_EXCEEDED)`.
        Leaving the block before the call ended cancels it. For a call that must
        outlive a block, see `start_stream`.
        """
        options = CallOptions(
            timeout,
            _checked_metadata(metadata),
            compression if compression is not None else self.compression,
            wait_for_ready,
        )
        deadline = _deadline(options.timeout)
        trace = self._call_trace(method)
        root = trace.start("ClientConn.open_stream", timeout=timeout) if trace is not None else 0
        with trio.CancelScope(deadline=deadline) as scope:
            # The block's scope carries the deadline, so the call's operations need none.
            call = await self._start_call(
                method,
                options,
                deadline,
                request_serializer,
                response_deserializer,
                trace,
                root,
                deadline_per_operation=False,
            )
            try:
                yield call
            except RpcError as exc:
                if _reset_by_server_after_deadline(exc, call._state, deadline):
                    raise RpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded") from None
                raise
            finally:
                call._note_deadline_if_passed()
                call.close()
        if scope.cancelled_caught:
            if trace is not None:
                trace.end_all(status="DEADLINE_EXCEEDED", message="deadline exceeded")
            raise RpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")

    async def start_stream(
        self,
        method: str,
        *,
        request_serializer: Serializer = _identity,
        response_deserializer: Deserializer = _identity,
        timeout: float | None = None,
        metadata: Metadata | MetadataSource | None = None,
        compression: str | None = None,
        wait_for_ready: bool = False,
    ) -> ClientCall[Any, Any]:
        """Start a streaming call that is not tied to a block (grpc-go `ClientConn.NewStream`).

            call = await conn.start_stream("/pkg.Svc/Watch", timeout=30)
            try:
                await call.send_message(request)
                await call.done_writing()
                async for reply in call:
                    ...
            finally:
                await call.aclose()

        The call opens its stream as `open_stream` does, but no cancel scope outlives
        this method: the deadline is enforced by each operation (`send_message`,
        `done_writing`, `receive_message`, `initial_metadata`) under a scope of its
        own. An operation that meets the deadline resets the stream
        (RST_STREAM(CANCEL)) and raises `RpcError(DEADLINE_EXCEEDED)`, as do the
        operations after it. So the call may be kept in an object and stepped from
        anywhere, such as an async iterator its user may leave at any `break`
        (`wire.stubs.ResponseStream`), without corrupting trio's scope stack.

        The caller owns the call: `close()` or `aclose()` frees its stream (cancelling
        it first if it has not ended). A call dropped without that is let go soon after
        it is garbage-collected, from the trio scheduler.
        """
        options = CallOptions(
            timeout,
            _checked_metadata(metadata),
            compression if compression is not None else self.compression,
            wait_for_ready,
        )
        deadline = _deadline(options.timeout)
        trace = self._call_trace(method)
        root = 0
        if trace is not None:
            root = trace.start("ClientConn.start_stream", timeout=timeout)
        if math.isinf(deadline):
            return await self._start_call(
                method,
                options,
                deadline,
                request_serializer,
                response_deserializer,
                trace,
                root,
                deadline_per_operation=True,
            )
        with trio.CancelScope(deadline=deadline):
            return await self._start_call(
                method,
                options,
                deadline,
                request_serializer,
                response_deserializer,
                trace,
                root,
                deadline_per_operation=True,
            )
        if trace is not None:
            trace.end_all(status="DEADLINE_EXCEEDED", message="deadline exceeded")
        raise RpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")

    async def _start_call(
        self,
        method: str,
        options: CallOptions,
        deadline: float,
        request_serializer: Serializer,
        response_deserializer: Deserializer,
        trace: CallTrace | None,
        trace_root: int,
        *,
        deadline_per_operation: bool,
    ) -> ClientCall[Any, Any]:
        """Open a streaming call's stream and send its HEADERS.

        The one place where `open_stream` and `start_stream` open a stream; the one
        place that lets it go is `ClientCall.close`. The caller holds the deadline's
        cancel scope around this step. Nothing here waits once the stream is open, so
        a cancellation cannot leave an opened stream without its `ClientCall`.
        """
        try:
            transport = await self.get_transport(options.wait_for_ready)
            if trace is not None:
                trace.attach(transport.connection.frame_tracer)
            state = await new_stream(self, transport, method, options, deadline, trace=trace)
        except Exception as exc:
            if trace is not None:
                if isinstance(exc, RpcError):
                    trace.end(trace_root, status=exc.code.name, message=exc.message)
                else:
                    trace.end(trace_root, error=type(exc).__name__)
            raise
        # The HEADERS go now: the caller may wait for the server before sending.
        transport.kick()
        return ClientCall(
            transport,
            state,
            request_serializer,
            response_deserializer,
            method,
            deadline=deadline,
            deadline_per_operation=deadline_per_operation,
            trace=trace,
            trace_root=trace_root,
        )

    def _call_trace(self, method: str) -> CallTrace | None:
        tracer = self._tracer
        return CallTrace(tracer, "client", method=method) if tracer is not None else None

    # -- connections --------------------------------------------------------------------

    async def get_transport(self, wait_for_ready: bool = False) -> Transport:
        """A usable connection, made now if needed (grpc-go `getTransport`)."""
        transport = self._transport
        if transport is not None and transport.usable:
            return transport
        if self._closed:
            # grpc-go: ErrClientConnClosing, a CANCELLED status, for calls made on (or
            # still waiting in) a connection its owner has closed.
            raise RpcError(StatusCode.CANCELLED, "grpc: the client connection is closing")
        if self._nursery is None:
            raise ProtocolMisuse("use ClientConn as `async with ClientConn(...) as conn`")
        async with self._connect_lock:
            transport = self._transport
            if transport is not None and transport.usable:
                return transport
            backoff = 1.0
            while True:
                try:
                    transport = await self._connect()
                except (OSError, ConnectionError, ssl.SSLError, trio.BrokenResourceError) as exc:
                    if not wait_for_ready:
                        raise RpcError(
                            StatusCode.UNAVAILABLE, f"failed to connect to {self.target}: {exc}"
                        ) from None
                    await trio.sleep(backoff * random.uniform(0.8, 1.2))
                    backoff = min(backoff * 1.6, 120.0)
                    continue
                self._transport = transport
                return transport

    async def _connect(self) -> Transport:
        assert self._nursery is not None
        stream = await open_target(
            self.target, ssl_context=self._ssl_context, server_hostname=self._server_hostname
        )
        connection = GrpcConnection(self._config, tracer=self._tracer)
        transport = Transport(stream, connection, peer=describe_peer(stream))
        self._learn_from(self._transport)
        await self._nursery.start(transport.run)
        # As grpc-go does, use the connection only once the server's SETTINGS are in:
        # streams opened before could exceed its MAX_CONCURRENT_STREAMS or windows.
        with trio.move_on_after(SERVER_PREFACE_TIMEOUT):
            await transport.peer_settings.wait()
        if transport.closed or not transport.connection.peer_settings_received:
            transport.abort("no HTTP/2 SETTINGS from the server")
            raise ConnectionError(transport.close_reason or "no HTTP/2 SETTINGS from the server")
        keepalive = self.keepalive
        if keepalive is not None and transport.nursery is not None:
            transport.nursery.start_soon(
                transport.keepalive,
                keepalive.time,
                keepalive.timeout,
                keepalive.permit_without_calls,
            )
        return transport

    def _learn_from(self, previous: Transport | None) -> None:
        """gRFC A8: a server that answered our pings with GOAWAY(ENHANCE_YOUR_CALM,
        "too_many_pings") gets them half as often on the next connection."""
        goaway = previous.goaway if previous is not None else None
        if (
            self.keepalive is not None
            and goaway is not None
            and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
            and goaway.debug_data == b"too_many_pings"
        ):
            self.keepalive = replace(self.keepalive, time=self.keepalive.time * 2)


class ClientCall(Generic[Req, Resp]):
    """One streaming call, as the client sees it (grpc-go `ClientStream`).

    `send_message` / `done_writing` / `receive_message` mirror grpc-go's `SendMsg`,
    `CloseSend` and `RecvMsg`. `receive_message` returns None at the end of a
    successful stream and raises `RpcError` for any other status. `close()` lets the
    call go: `open_stream` does it when its block ends, the owner of a call from
    `start_stream` does it when done.
    """

    def __init__(
        self,
        transport: Transport,
        state: StreamState,
        serializer: Serializer,
        deserializer: Deserializer,
        method: str,
        *,
        deadline: float = math.inf,
        deadline_per_operation: bool = False,
        trace: CallTrace | None = None,
        trace_root: int = 0,
    ) -> None:
        self._transport = transport
        self._state = state
        self._serialize = serializer
        self._deserialize = deserializer
        self.method = method
        self._deadline = deadline
        # Finite only for a call from `start_stream`: each operation then runs in a
        # cancel scope of its own, since no scope of the caller's carries the deadline.
        self._operation_deadline = deadline if deadline_per_operation else math.inf
        self._cancelled = False
        # Why the call was given up locally, when not by `cancel()`: later operations
        # and the trace report this status instead of CANCELLED.
        self._failure: tuple[StatusCode, str] | None = None
        self._released = False
        self._last_message_compressed = False
        self._trace = trace
        self._trace_root = trace_root

    @property
    def stream_id(self) -> int:
        return self._state.stream_id

    @property
    def last_message_compressed(self) -> bool:
        """Whether the response message received last had its compressed flag set.

        The flag is per message: a server may send some messages of a `gzip` stream
        uncompressed (the interop case `server_compressed_streaming` checks this).
        """
        return self._last_message_compressed

    async def send_message(self, message: Req, *, compress: bool = True) -> None:
        """Send one request message (grpc-go `SendMsg`); waits for flow-control window.

        If the server already ended the call, this returns quietly: the status will
        come from `receive_message` (as grpc-go returns io.EOF from SendMsg).
        """
        if math.isinf(self._operation_deadline):
            await self._send_message(message, compress)
            return
        with trio.CancelScope(deadline=self._operation_deadline):
            await self._send_message(message, compress)
            return
        raise self._deadline_passed()

    async def _send_message(self, message: Req, compress: bool) -> None:
        state = self._state
        if self._cancelled:
            raise self._local_error()
        if state.ended is not None:
            return
        trace = self._trace
        if trace is None:
            await write(
                self._transport,
                state,
                encode(self._serialize, message),
                compress=compress,
                last=False,
            )
            return
        with trace.step("send_message", detached=True):
            with trace.step("encode") as step:
                payload = encode(self._serialize, message)
                step.note(size=len(payload))
            with trace.step("write", last=False):
                await write(self._transport, state, payload, compress=compress, last=False)

    async def done_writing(self) -> None:
        """Half-close: no more requests (grpc-go `CloseSend`)."""
        state = self._state
        if state.ended is not None or self._cancelled:
            return
        trace = self._trace
        span = trace.start("done_writing", detached=True) if trace is not None else 0
        self._transport.connection.end_request(state.stream_id)
        if trace is not None:
            trace.end(span)
        self._transport.kick()
        if math.isinf(self._operation_deadline):
            await trio.lowlevel.checkpoint()
            return
        with trio.CancelScope(deadline=self._operation_deadline):
            await trio.lowlevel.checkpoint()
            return
        raise self._deadline_passed()

    async def receive_message(self) -> Resp | None:
        """The next response message, or None when the stream ended with OK."""
        if math.isinf(self._operation_deadline):
            return await self._receive_message()
        with trio.CancelScope(deadline=self._operation_deadline):
            return await self._receive_message()
        raise self._deadline_passed()

    async def _receive_message(self) -> Resp | None:
        state = self._state
        transport = self._transport
        while True:
            if self._cancelled:
                raise self._local_error()
            if state.messages:
                message = state.messages.popleft()
                self._last_message_compressed = message.compressed
                if self._trace is not None:
                    self._trace.point(
                        "receive_message",
                        detached=True,
                        size=len(message.payload),
                        wire_length=message.wire_length,
                        compressed=message.compressed,
                    )
                transport.connection.acknowledge_message(state.stream_id, message.wire_length)
                if transport.connection.has_data_to_send():
                    transport.kick()
                response: Resp = _deserialize(self._deserialize, message.payload, self)
                return response
            ended = state.ended
            if ended is not None:
                if ended.code == StatusCode.OK:
                    return None
                if ended.code == StatusCode.CANCELLED and trio.current_time() >= self._deadline:
                    # The server enforced our grpc-timeout and its RST_STREAM(CANCEL)
                    # beat our own timer: the call did time out (grpc-go PR 2211).
                    raise RpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
                raise ended.to_error(self._initial_or_none())
            await state.lot.park()

    def __aiter__(self) -> AsyncIterator[Resp]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Resp]:
        while True:
            message = await self.receive_message()
            if message is None:
                return
            yield message

    async def initial_metadata(self) -> Metadata:
        """The response headers' metadata (grpc-go `Header()`): waits for them."""
        if math.isinf(self._operation_deadline):
            return await self._initial_metadata()
        with trio.CancelScope(deadline=self._operation_deadline):
            return await self._initial_metadata()
        raise self._deadline_passed()

    async def _initial_metadata(self) -> Metadata:
        state = self._state
        while state.headers is None and state.ended is None:
            if self._cancelled:
                raise self._local_error()
            await state.lot.park()
        return state.headers.metadata if state.headers is not None else Metadata()

    @property
    def trailing_metadata(self) -> Metadata | None:
        """The trailers' metadata once the call ended (grpc-go `Trailer()`)."""
        ended = self._state.ended
        return ended.trailing_metadata if ended is not None else None

    @property
    def code(self) -> StatusCode | None:
        ended = self._state.ended
        return ended.code if ended is not None else None

    @property
    def details(self) -> str | None:
        ended = self._state.ended
        return ended.message if ended is not None else None

    def cancel(self) -> None:
        """Cancel the call: RST_STREAM(CANCEL); later operations raise CANCELLED."""
        if self._state.ended is None and not self._cancelled:
            trace = self._trace
            span = trace.start("cancel", detached=True) if trace is not None else 0
            self._reset_if_running()
            if trace is not None:
                trace.end(span)

    def close(self) -> None:
        """Let the call go: free its stream, after RST_STREAM(CANCEL) if it still runs.

        Idempotent, and never blocks. Afterwards the stream no longer counts against
        the server's MAX_CONCURRENT_STREAMS; what the call had received stays readable,
        and an operation that would have to wait raises CANCELLED.
        """
        if self._released:
            return
        self._released = True
        state = self._state
        self._reset_if_running()
        self._transport.release(state.stream_id)
        trace = self._trace
        if trace is not None:
            status, message = self._final_status()
            trace.end(self._trace_root, status=status, message=message)

    async def aclose(self) -> None:
        """`close()`, then a checkpoint, as an async close is expected to have."""
        self.close()
        await trio.lowlevel.checkpoint()

    def __del__(self) -> None:
        # A call from `start_stream` dropped without `close()` (say, a `break` out of a
        # loop over it). It is let go from the scheduler, never from here: a garbage
        # collection may run in the middle of the connection's own code.
        if getattr(self, "_released", True):
            return
        self._released = True
        with suppress(RuntimeError):  # trio has stopped, and the connection with it
            trio.lowlevel.current_trio_token().run_sync_soon(
                _let_go_dropped_call,
                self._transport,
                self._state,
                not self._cancelled,
                self._trace,
                self._trace_root,
            )

    # -- internals --------------------------------------------------------------------

    def _reset_if_running(self) -> None:
        """RST_STREAM(CANCEL) once, unless the call already ended."""
        if self._state.ended is None and not self._cancelled:
            self._cancelled = True
            self._transport.cancel_stream(self._state)

    def _deadline_passed(self) -> RpcError:
        """An operation's scope hit the deadline: reset the stream if the call still
        runs, and say so in this and every later operation."""
        if self._failure is None:
            self._failure = (StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        self._reset_if_running()
        return RpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")

    def _note_deadline_if_passed(self) -> None:
        """`open_stream`'s block ends: if its deadline cut the call short, the trace
        should say DEADLINE_EXCEEDED rather than CANCELLED."""
        if (
            self._failure is None
            and self._state.ended is None
            and trio.current_time() >= self._deadline
        ):
            self._failure = (StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")

    def _local_error(self) -> RpcError:
        code, message = self._failure or (StatusCode.CANCELLED, "the call was cancelled")
        return RpcError(code, message)

    def _final_status(self) -> tuple[str, str]:
        ended = self._state.ended
        if ended is not None:
            return ended.code.name, ended.message
        code, message = self._failure or (StatusCode.CANCELLED, "")
        return code.name, message

    def _initial_or_none(self) -> Metadata | None:
        headers = self._state.headers
        return headers.metadata if headers is not None else None


def _let_go_dropped_call(
    transport: Transport,
    state: StreamState,
    reset: bool,
    trace: CallTrace | None,
    trace_root: int,
) -> None:
    """`ClientCall.close` for a call that was garbage-collected, run by the scheduler."""
    if trace is not None:
        trace.end(trace_root, status="CANCELLED", message="the call was dropped")
    if transport.closed:
        return  # its streams went with it
    if reset:
        transport.let_go(state)
    else:
        transport.release(state.stream_id)


# -- the unary call path, step by step (grpc-go call.go) ------------------------------


async def invoke(
    cc: ClientConn,
    method: str,
    request: Any,
    options: CallOptions,
    serializer: Serializer,
    deserializer: Deserializer,
    trace: CallTrace | None = None,
) -> Any:
    """Run one unary call (grpc-go `invoke` in call.go).

    As in grpc-go: get a transport, `send_request`, then `recv_response`; close the
    stream however the call ends. Differences: the deadline is a trio cancel scope
    rather than a context, and a deadline that has already passed fails here, before
    any byte is sent.
    """
    # An interceptor may have replaced the metadata: check it before any byte is sent.
    options.metadata = _checked_metadata(options.metadata)
    deadline = _deadline(options.timeout)
    if math.isinf(deadline):
        # No deadline, no cancel scope: scopes are not free, and W1 makes many calls.
        return await _invoke_steps(
            cc, method, request, options, serializer, deserializer, trace, deadline
        )
    with trio.CancelScope(deadline=deadline) as scope:
        return await _invoke_steps(
            cc, method, request, options, serializer, deserializer, trace, deadline
        )
    assert scope.cancelled_caught
    raise RpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")


async def _invoke_steps(
    cc: ClientConn,
    method: str,
    request: Any,
    options: CallOptions,
    serializer: Serializer,
    deserializer: Deserializer,
    trace: CallTrace | None,
    deadline: float,
) -> Any:
    """The steps of `invoke` inside its deadline; the stream is released however it ends."""
    transport: Transport | None = None
    state: StreamState | None = None
    try:
        if trace is None:
            transport = await cc.get_transport(options.wait_for_ready)
            state = await send_request(
                cc, transport, method, request, options, serializer, deadline
            )
            return await recv_response(transport, state, deserializer, options)
        step = trace.start("get_transport")
        reused = cc._transport
        transport = await cc.get_transport(options.wait_for_ready)
        trace.attach(transport.connection.frame_tracer)
        trace.end(step, conn=trace.conn_id, new_connection=transport is not reused)
        step = trace.start("send_request")
        state = await send_request(
            cc, transport, method, request, options, serializer, deadline, trace=trace
        )
        trace.end(step)
        step = trace.start("recv_response")
        response = await recv_response(transport, state, deserializer, options)
        trace.end(step, status="OK")
        return response
    except RpcError as exc:
        if _reset_by_server_after_deadline(exc, state, deadline):
            raise RpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded") from None
        raise
    finally:
        if transport is not None and state is not None:
            # Cancelled or timed out, the server is told (RST_STREAM(CANCEL)).
            transport.let_go(state)


async def send_request(
    cc: ClientConn,
    transport: Transport,
    method: str,
    request: Any,
    options: CallOptions,
    serializer: Serializer,
    deadline: float,
    trace: CallTrace | None = None,
) -> StreamState:
    """Open the stream and send the one request message (grpc-go `sendRequest`).

    grpc-go: `t.NewStream(ctx, callHdr)`, `encode(codec, args, compressor)`, then
    `t.Write(stream, outBuf, &Options{Last: true})`. Same here: the message goes out
    with END_STREAM on its DATA frame.
    """
    state = await new_stream(cc, transport, method, options, deadline, trace=trace)
    if trace is None:
        await write(transport, state, encode(serializer, request), compress=True, last=True)
        return state
    with trace.step("encode") as step:
        payload = encode(serializer, request)
        step.note(size=len(payload))
    with trace.step("write", last=True):
        await write(transport, state, payload, compress=True, last=True)
    return state


async def new_stream(
    cc: ClientConn,
    transport: Transport,
    method: str,
    options: CallOptions,
    deadline: float,
    trace: CallTrace | None = None,
) -> StreamState:
    """Open an HTTP/2 stream and queue the request HEADERS (grpc-go `http2Client.NewStream`).

    Waits while the server's MAX_CONCURRENT_STREAMS is reached. The `grpc-timeout`
    sent is what is left of the deadline now.
    """
    if not math.isinf(deadline) and deadline <= trio.current_time():
        raise RpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call started")
    await transport.wait_for_capacity()
    if not transport.usable:
        raise RpcError(StatusCode.UNAVAILABLE, transport.close_reason or "connection is closing")
    timeout = None if math.isinf(deadline) else max(deadline - trio.current_time(), 0.0)
    metadata = options.metadata
    span = 0
    if trace is not None:
        span = trace.start("new_stream")
        metadata = trace.request_metadata(metadata)
    stream_id = transport.connection.start_request(
        method,
        authority=cc.authority,
        scheme=cc._scheme,
        timeout=timeout,
        metadata=metadata,
        encoding=options.compression,
    )
    # No kick here: a unary call's HEADERS wait for its DATA so that both leave in
    # one write; `open_stream` sends a streaming call's HEADERS at once.
    if trace is not None:
        trace.bind_stream(stream_id)
        trace.end(span, stream=stream_id, timeout=timeout)
    return transport.open_state(stream_id)


def encode(serializer: Serializer, message: Any) -> bytes:
    """Serialise one message (grpc-go `encode` in rpc_util.go).

    grpc-go's encode also compresses and adds the 5-byte prefix; here those two steps
    belong to the sans-I/O connection (`GrpcConnection.send_message`), so that the
    trace shows them where the bytes are made.
    """
    data = serializer(message)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolMisuse(f"serializer returned {type(data).__name__}, not bytes")
    return bytes(data)


async def write(
    transport: Transport,
    state: StreamState,
    payload: bytes,
    *,
    compress: bool,
    last: bool,
) -> None:
    """Queue one message on the stream and wait for window (grpc-go `http2Client.Write`).

    The last message of a call goes out at once (for a unary call, in one write with
    its HEADERS); others may be batched with the ones that follow (`after_queue`).
    """
    pending = transport.connection.send_message(
        state.stream_id, payload, compress=compress, end_stream=last
    )
    if pending:
        transport.kick()
        await transport.wait_writable(state)
    elif last:
        transport.kick()
        await trio.lowlevel.checkpoint()
    else:
        await transport.after_queue()


async def recv_response(
    transport: Transport,
    state: StreamState,
    deserializer: Deserializer,
    options: CallOptions,
) -> Any:
    """Wait for the reply and the status (grpc-go `recvResponse`).

    grpc-go reads the header, then one message with `recv`, then expects io.EOF and
    the trailer. Here the reader task has already split the stream into events; this
    waits for the end and checks that exactly one message came with status OK.
    """
    while state.ended is None:
        await state.lot.park()
    ended = state.ended
    initial = state.headers.metadata if state.headers is not None else None
    if options.header is not None and initial is not None:
        options.header.extend(initial)
    if options.trailer is not None:
        options.trailer.extend(ended.trailing_metadata)
    if ended.code != StatusCode.OK:
        raise ended.to_error(initial)
    if len(state.messages) != 1:
        raise RpcError(
            StatusCode.INTERNAL,
            f"unary call got {len(state.messages)} response messages, expected 1",
            initial_metadata=initial,
            trailing_metadata=ended.trailing_metadata,
        )
    return _deserialize(deserializer, state.messages.popleft().payload, None)


def _deserialize(
    deserializer: Deserializer, payload: bytes, call: ClientCall[Any, Any] | None
) -> Any:
    try:
        return deserializer(payload)
    except Exception as exc:  # a bad message from the peer, whatever the parser raises
        if call is not None:
            call.cancel()
        raise RpcError(
            StatusCode.INTERNAL, f"failed to parse response message: {type(exc).__name__}"
        ) from None


def _checked_metadata(metadata: Metadata | MetadataSource | None) -> Metadata | None:
    """Validate caller metadata up front (plain pairs or a mapping are accepted, as in
    grpcio): a bad key or value is the caller's error, raised before anything is sent."""
    if metadata is None or isinstance(metadata, Metadata):
        return metadata
    return Metadata(metadata)


def _reset_by_server_after_deadline(
    exc: RpcError, state: StreamState | None, deadline: float
) -> bool:
    """True if the call ended CANCELLED by the server after our deadline had passed.

    A server that enforces our `grpc-timeout` resets the stream with CANCEL when it
    fires. When that RST_STREAM beats our own timer, the call did time out: report
    DEADLINE_EXCEEDED, as grpc-go does (`handleRSTStream`, grpc-go PR 2211).
    """
    return (
        exc.code == StatusCode.CANCELLED
        and state is not None
        and state.ended is not None
        and state.ended.code == StatusCode.CANCELLED
        and trio.current_time() >= deadline
    )


def _deadline(timeout: float | None) -> float:
    if timeout is None:
        return math.inf
    return trio.current_time() + timeout


def _bind_interceptor(interceptor: UnaryClientInterceptor, invoker: UnaryInvoker) -> UnaryInvoker:
    async def call(method: str, request: Any, options: CallOptions) -> Any:
        return await interceptor(method, request, options, invoker)

    return call


__all__ = [
    "CallOptions",
    "ClientCall",
    "ClientConn",
    "UnaryClientInterceptor",
    "UnaryInvoker",
    "encode",
    "invoke",
    "new_stream",
    "new_trace_id",
    "recv_response",
    "send_request",
    "write",
]
