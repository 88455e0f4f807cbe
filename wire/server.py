"""The gRPC server: method registry, per-call handler tasks, listeners, shutdown.

`Server` owns the method table, the listeners and one `Transport` per accepted
connection; each request runs its handler in a task of that connection's nursery,
inside a cancel scope that carries the call's deadline. `ServerCall` is what a handler
sees: the request metadata, the stream of requests and responses, and the ways to end
the call (return, raise `RpcError`, or `abort`). Protocol decisions (415, UNIMPLEMENTED
encodings, trailers, resets) belong to the sans-I/O connection, not here.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import logging
import math
import os
import ssl
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, NoReturn

import h2.errors
import trio
import trio.lowlevel

from wire import events as ev
from wire.connection import ConnectionConfig, GrpcConnection, KeepalivePolicy
from wire.dial import describe_peer
from wire.errors import ProtocolMisuse, RpcError
from wire.framing import DEFAULT_MAX_RECEIVE_MESSAGE_LENGTH
from wire.metadata import Metadata
from wire.status import StatusCode, StatusDetails
from wire.trace import CALL_ID_METADATA_KEY, CallTrace, TraceSink, installed_tracer
from wire.transport import StreamState, Transport

log = logging.getLogger("wire.server")


class Cardinality(enum.Enum):
    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"

    @property
    def client_streams(self) -> bool:
        return self in (Cardinality.STREAM_UNARY, Cardinality.STREAM_STREAM)

    @property
    def server_streams(self) -> bool:
        return self in (Cardinality.UNARY_STREAM, Cardinality.STREAM_STREAM)


@dataclass(frozen=True, slots=True)
class MethodHandler:
    """How to serve one method.

    Handler shapes, by cardinality:
      UNARY_UNARY:   async (request, call) -> response
      UNARY_STREAM:  async (request, call) -> None, sending with `call.send_message`;
                     or an async generator (request, call) yielding responses
      STREAM_UNARY:  async (call) -> response, reading `async for request in call`
      STREAM_STREAM: async (call) -> None, or an async generator (call)
    """

    cardinality: Cardinality
    handler: Callable[..., Any]
    request_deserializer: Callable[[bytes], Any] | None = None
    response_serializer: Callable[[Any], bytes] | None = None


@dataclass(frozen=True, slots=True)
class MethodInfo:
    """What an interceptor learns of the method being called."""

    path: str
    cardinality: Cardinality


def unary_unary(
    handler: Callable[..., Any],
    deserializer: Callable[[bytes], Any] | None = None,
    serializer: Callable[[Any], bytes] | None = None,
) -> MethodHandler:
    return MethodHandler(Cardinality.UNARY_UNARY, handler, deserializer, serializer)


def unary_stream(
    handler: Callable[..., Any],
    deserializer: Callable[[bytes], Any] | None = None,
    serializer: Callable[[Any], bytes] | None = None,
) -> MethodHandler:
    return MethodHandler(Cardinality.UNARY_STREAM, handler, deserializer, serializer)


def stream_unary(
    handler: Callable[..., Any],
    deserializer: Callable[[bytes], Any] | None = None,
    serializer: Callable[[Any], bytes] | None = None,
) -> MethodHandler:
    return MethodHandler(Cardinality.STREAM_UNARY, handler, deserializer, serializer)


def stream_stream(
    handler: Callable[..., Any],
    deserializer: Callable[[bytes], Any] | None = None,
    serializer: Callable[[Any], bytes] | None = None,
) -> MethodHandler:
    return MethodHandler(Cardinality.STREAM_STREAM, handler, deserializer, serializer)


UnaryHandler = Callable[[Any, "ServerCall"], Awaitable[Any]]
UnaryServerInterceptor = Callable[[Any, "ServerCall", MethodInfo, UnaryHandler], Awaitable[Any]]
"""grpc-go `UnaryServerInterceptor`: `(request, call, info, handler) -> response`."""
StreamHandler = Callable[["ServerCall"], Awaitable[Any]]
StreamServerInterceptor = Callable[["ServerCall", MethodInfo, StreamHandler], Awaitable[Any]]
"""grpc-go `StreamServerInterceptor`: `(call, info, handler)`; the handler runs the stream."""


class ServerCall:
    """One call as its handler sees it: context and stream in one object."""

    def __init__(
        self,
        server: Server,
        transport: Transport,
        state: StreamState,
        request: ev.RequestReceived,
        handler: MethodHandler,
    ) -> None:
        self._transport = transport
        self._state = state
        self._request = request
        self._handler = handler
        self.method = request.method
        self.invocation_metadata = request.metadata
        self.peer = transport.peer
        self.authority = request.authority
        self.deadline = (
            trio.current_time() + request.timeout if request.timeout is not None else math.inf
        )
        self._trailing = Metadata()
        self._compression: str | None = server.compression
        self._headers_sent = False
        self._last_message_compressed = False
        self.scope = trio.CancelScope(deadline=self.deadline)
        self._trace: CallTrace | None = None

    # -- context ------------------------------------------------------------------------

    @property
    def stream_id(self) -> int:
        return self._state.stream_id

    @property
    def request_encoding(self) -> str | None:
        return self._request.encoding

    @property
    def last_message_compressed(self) -> bool:
        """Whether the request message received last had its compressed flag set.

        The flag is per message: a client may send some messages of a `gzip` stream
        uncompressed. The interop case `client_compressed_unary` checks exactly this.
        """
        return self._last_message_compressed

    def time_remaining(self) -> float | None:
        if math.isinf(self.deadline):
            return None
        return max(self.deadline - trio.current_time(), 0.0)

    @property
    def cancelled(self) -> bool:
        """True once the client cancelled, or the connection is gone."""
        return self._state.aborted is not None

    def set_compression(self, encoding: str | None) -> None:
        """Compress responses with `encoding` if the client accepts it (else identity)."""
        if self._headers_sent:
            raise ProtocolMisuse("set_compression must come before the first response")
        self._compression = encoding

    def set_trailing_metadata(self, metadata: Metadata | Mapping[str, str | bytes]) -> None:
        md = metadata if isinstance(metadata, Metadata) else Metadata(metadata)
        self._trailing.extend(md)

    async def send_initial_metadata(self, metadata: Metadata | Mapping[str, str | bytes]) -> None:
        """Send the response headers now, with this metadata."""
        md = metadata if isinstance(metadata, Metadata) else Metadata(metadata)
        self._send_headers(md)
        self._transport.kick()
        await trio.lowlevel.checkpoint()

    def abort(
        self, code: StatusCode, message: str = "", *, details: StatusDetails | None = None
    ) -> NoReturn:
        """End the call with this status (raises; do not catch it)."""
        raise RpcError(code, message, details=details)

    # -- stream -------------------------------------------------------------------------

    async def receive_message(self) -> Any | None:
        """The next request message, or None once the client half-closed."""
        state = self._state
        connection = self._transport.connection
        while True:
            if state.messages:
                message = state.messages.popleft()
                self._last_message_compressed = message.compressed
                if self._trace is not None:
                    self._trace.point(
                        "receive_message",
                        size=len(message.payload),
                        wire_length=message.wire_length,
                        compressed=message.compressed,
                    )
                connection.acknowledge_message(state.stream_id, message.wire_length)
                if connection.has_data_to_send():
                    self._transport.kick()
                deserialize = self._handler.request_deserializer
                if deserialize is None:
                    return message.payload
                try:
                    return deserialize(message.payload)
                except Exception as exc:  # whatever the parser raises on bad input
                    raise RpcError(
                        StatusCode.INTERNAL,
                        f"failed to parse request message: {type(exc).__name__}",
                    ) from None
            if state.aborted is not None:
                # The abort also cancelled the handler's scope; a checkpoint delivers
                # that as trio.Cancelled, so handlers see cancellation the trio way.
                await trio.lowlevel.checkpoint()
                raise state.aborted
            if state.request_ended:
                return None
            await state.lot.park()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            message = await self.receive_message()
            if message is None:
                return
            yield message

    async def send_message(self, message: Any, *, compress: bool = True) -> None:
        """Send one response message; waits while the client's window is full."""
        if self._state.aborted is not None:
            await trio.lowlevel.checkpoint()  # as in receive_message: Cancelled first
        if self._queue_message(message, compress):
            await self._transport.wait_writable(self._state)
        else:
            await self._transport.after_queue()

    def _queue_message(self, message: Any, compress: bool) -> int:
        """Queue one response message (no I/O); returns the bytes waiting for window.

        The caller decides when the bytes leave: `send_message` through the transport's
        batching, a unary reply together with its trailers in `_finish`.
        """
        state = self._state
        if state.aborted is not None:
            raise state.aborted
        trace = self._trace
        span = trace.start("send_message") if trace is not None else 0
        serialize = self._handler.response_serializer
        payload = serialize(message) if serialize is not None else message
        if not self._headers_sent:
            self._send_headers(None)
        pending = self._transport.connection.send_message(
            state.stream_id, payload, compress=compress
        )
        if trace is not None:
            trace.end(span, size=len(payload), waiting_for_window=pending)
        return pending

    # -- internals ----------------------------------------------------------------------

    def _send_headers(self, metadata: Metadata | None) -> None:
        if self._headers_sent:
            raise ProtocolMisuse("response headers were already sent")
        self._headers_sent = True
        encoding = self._compression
        if encoding is not None and encoding not in self._request.accept_encoding:
            encoding = None  # never compress with an encoding the client did not accept
        self._transport.connection.send_headers(self._state.stream_id, metadata, encoding=encoding)

    def _finish(self, code: StatusCode, message: str, details: StatusDetails | None) -> None:
        if self._state.aborted is not None:
            return
        trace = self._trace
        span = trace.start("finish", status=code.name, message=message) if trace is not None else 0
        self._transport.connection.send_trailers(
            self._state.stream_id,
            code,
            message,
            details=details,
            metadata=self._trailing or None,
        )
        if trace is not None:
            trace.end(span)
        self._transport.kick()


class Server:
    """A gRPC server on trio.

    server = Server()
    server.add_method("/pkg.Svc/Echo", unary_unary(echo))
    async with trio.open_nursery() as nursery:
        port = (await nursery.start(server.serve_tcp, 0))
    """

    def __init__(
        self,
        *,
        interceptors: Sequence[UnaryServerInterceptor] = (),
        stream_interceptors: Sequence[StreamServerInterceptor] = (),
        max_receive_message_length: int | None = DEFAULT_MAX_RECEIVE_MESSAGE_LENGTH,
        max_send_message_length: int | None = None,
        max_concurrent_streams: int | None = None,
        compression: str | None = None,
        keepalive: KeepalivePolicy | None = None,
        tracer: TraceSink | None = None,
        connection_config: ConnectionConfig | None = None,
    ) -> None:
        self._methods: dict[str, MethodHandler] = {}
        self._services: set[str] = set()
        self._interceptors = tuple(interceptors)
        self._stream_interceptors = tuple(stream_interceptors)
        self.compression = compression
        self._tracer = tracer if tracer is not None else installed_tracer()
        config = connection_config or ConnectionConfig(client_side=False)
        self._config = replace(
            config,
            client_side=False,
            max_receive_message_length=max_receive_message_length,
            max_send_message_length=max_send_message_length,
            max_concurrent_streams=max_concurrent_streams,
            keepalive=keepalive if keepalive is not None else KeepalivePolicy(),
        )
        self._transports: set[Transport] = set()
        self._listener_scopes: list[trio.CancelScope] = []
        self._serve_scope: trio.CancelScope | None = None
        self.listeners: list[trio.SocketListener] = []

    # -- registry -----------------------------------------------------------------------

    def add_method(self, path: str, handler: MethodHandler) -> None:
        """Serve `handler` at `/package.Service/Method`."""
        if not path.startswith("/") or path.count("/") != 2:
            raise ValueError(f"method path must look like /package.Service/Method, not {path!r}")
        if path in self._methods:
            raise ValueError(f"method {path} is already registered")
        self._methods[path] = handler
        self._services.add(path.split("/")[1])

    def add_service(self, service: str, methods: Mapping[str, MethodHandler]) -> None:
        for name, handler in methods.items():
            self.add_method(f"/{service}/{name}", handler)

    @property
    def services(self) -> frozenset[str]:
        return frozenset(self._services)

    @property
    def methods(self) -> Mapping[str, MethodHandler]:
        return dict(self._methods)

    # -- serving ------------------------------------------------------------------------

    async def serve_tcp(
        self,
        port: int,
        host: str | None = "127.0.0.1",
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on TCP; `task_status.started(port)` reports the bound port."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        await self.serve_listeners(
            listeners, ssl_context=ssl_context, task_status=task_status, started_value=bound
        )

    async def serve_unix(
        self,
        path: str,
        *,
        mode: int = 0o600,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on a unix socket at `path` (created with `mode`; a stale one is replaced)."""
        _remove_stale_socket(path)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        old_umask = os.umask(0o777 & ~mode)
        try:
            await sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        sock.listen(128)
        listener = trio.SocketListener(sock)
        try:
            await self.serve_listeners([listener], task_status=task_status, started_value=path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def serve_listeners(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
        started_value: Any = None,
    ) -> None:
        """Accept connections until `shutdown` (or cancellation); owns their tasks."""
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["h2"])
        self.listeners.extend(listeners)
        async with trio.open_nursery() as nursery:
            self._serve_scope = nursery.cancel_scope
            for listener in listeners:
                scope = trio.CancelScope()
                self._listener_scopes.append(scope)
                nursery.start_soon(self._accept_loop, listener, nursery, scope, ssl_context)
            task_status.started(started_value)

    async def _accept_loop(
        self,
        listener: trio.SocketListener,
        nursery: trio.Nursery,
        scope: trio.CancelScope,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        with scope:
            async with listener:
                while True:
                    try:
                        stream: trio.abc.Stream = await listener.accept()
                    except OSError as exc:
                        log.warning("accept failed: %s", exc)
                        await trio.sleep(0.1)
                        continue
                    nursery.start_soon(self._serve_connection, stream, ssl_context)

    async def _serve_connection(
        self, stream: trio.abc.Stream, ssl_context: ssl.SSLContext | None
    ) -> None:
        peer = describe_peer(stream)
        if ssl_context is not None:
            tls = trio.SSLStream(stream, ssl_context, server_side=True, https_compatible=True)
            try:
                with trio.fail_after(10):
                    await tls.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError) as exc:
                log.info("TLS handshake with %s failed: %s", peer, exc)
                await trio.aclose_forcefully(stream)
                return
            stream = tls
        connection = GrpcConnection(self._config, tracer=self._tracer)
        transport = Transport(stream, connection, peer=peer, on_request=self._on_request)
        self._transports.add(transport)
        try:
            await transport.run()
        finally:
            self._transports.discard(transport)

    # -- calls --------------------------------------------------------------------------

    def _on_request(self, transport: Transport, request: ev.RequestReceived) -> None:
        handler = self._methods.get(request.method)
        connection = transport.connection
        trace = None
        if self._tracer is not None:
            trace = _start_call_trace(self._tracer, transport, request, handler is not None)
        if handler is None:
            service, _, method = request.method[1:].partition("/")
            message = (
                f"unknown method {method} for service {service}"
                if service in self._services
                else f"unknown service {service}"
            )
            span = (
                trace.start("finish", status="UNIMPLEMENTED", message=message)
                if trace is not None
                else 0
            )
            connection.send_trailers(request.stream_id, StatusCode.UNIMPLEMENTED, message)
            if trace is not None:
                trace.end(span)
            transport.kick()
            return
        state = transport.open_state(request.stream_id)
        call = ServerCall(self, transport, state, request, handler)
        call._trace = trace
        state.on_abort = partial(_cancel_call, call)
        assert transport.nursery is not None
        transport.nursery.start_soon(self._run_call, transport, call, name=request.method)

    async def _run_call(self, transport: Transport, call: ServerCall) -> None:
        code = StatusCode.OK
        message = ""
        details: StatusDetails | None = None
        if call._trace is not None:
            streaming = call._handler.cardinality is not Cardinality.UNARY_UNARY
            call._trace.start(
                "run_call",
                grpc_go="Server.processStreamingRPC" if streaming else "Server.processUnaryRPC",
                cardinality=call._handler.cardinality.value,
                timeout=call.time_remaining(),
            )
        try:
            with call.scope:
                try:
                    await self._dispatch(call)
                except RpcError as exc:
                    code, message, details = exc.code, exc.message, exc.details
                    if exc.trailing_metadata:
                        call.set_trailing_metadata(exc.trailing_metadata)
                except Exception:
                    log.exception("handler for %s raised", call.method)
                    code, message = StatusCode.UNKNOWN, "unexpected error in the method handler"
                else:
                    code = StatusCode.OK
                if call._state.aborted is None:
                    call._finish(code, message, details)
            if call.scope.cancelled_caught and call._state.aborted is None:
                # The deadline fired: stop the stream (wire.md: RST_STREAM(CANCEL)).
                transport.connection.reset_stream(call.stream_id, h2.errors.ErrorCodes.CANCEL)
                transport.kick()
        finally:
            if call._trace is not None:
                _end_call_trace(call._trace, call, code, message)
            transport.release(call.stream_id)

    async def _dispatch(self, call: ServerCall) -> None:
        handler = call._handler
        info = MethodInfo(call.method, handler.cardinality)
        if handler.cardinality.client_streams:
            stream_fn: StreamHandler = partial(_run_stream_handler, handler)
            for interceptor in reversed(self._stream_interceptors):
                stream_fn = _bind_stream_interceptor(interceptor, info, stream_fn)
            await stream_fn(call)
            return
        request = await call.receive_message()
        if request is None:
            raise RpcError(StatusCode.INTERNAL, "client sent no request message")
        if handler.cardinality is Cardinality.UNARY_UNARY:
            unary_fn: UnaryHandler = partial(_run_unary_handler, handler)
            for unary_interceptor in reversed(self._interceptors):
                unary_fn = _bind_unary_interceptor(unary_interceptor, info, unary_fn)
            response = await unary_fn(request, call)
            # No checkpoint between the reply and its trailers: they leave together,
            # in one write, unless the client's window holds the reply back.
            if call._queue_message(response, True):
                await call._transport.wait_writable(call._state)
        else:
            server_stream_fn: StreamHandler = partial(_run_server_stream_handler, handler, request)
            for stream_interceptor in reversed(self._stream_interceptors):
                server_stream_fn = _bind_stream_interceptor(
                    stream_interceptor, info, server_stream_fn
                )
            await server_stream_fn(call)

    # -- shutdown -----------------------------------------------------------------------

    async def shutdown(self, grace: float | None = 5.0) -> None:
        """Stop accepting, drain with two GOAWAYs, wait up to `grace`, then cancel.

        First GOAWAY(2^31-1) plus a PING; when the PING is answered every stream the
        client opened before seeing the GOAWAY has reached us, so the second GOAWAY can
        name the real last stream. In-flight calls then get `grace` seconds to finish.
        """
        for scope in self._listener_scopes:
            scope.cancel()
        transports = list(self._transports)
        with trio.move_on_after(grace if grace is not None else math.inf):
            async with trio.open_nursery() as nursery:
                for transport in transports:
                    nursery.start_soon(self._drain, transport)
        for transport in list(self._transports):
            transport.abort("server shut down")
        if self._serve_scope is not None:
            self._serve_scope.cancel()

    async def _drain(self, transport: Transport) -> None:
        if transport.closed:
            return
        transport.connection.start_graceful_shutdown(b"cryodrn1")
        with trio.move_on_after(2):
            await transport.wait_ping_ack(b"cryodrn1")
        if not transport.closed:
            transport.connection.finish_graceful_shutdown()
            transport.kick()
        await transport.wait_idle()
        transport.connection.close()
        with trio.move_on_after(1):
            await transport.wait_flushed()
        transport.abort("server shut down")


def _remove_stale_socket(path: str) -> None:
    """A socket file left by an earlier server is replaced; any other file is not."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    os.unlink(path)


def _cancel_call(call: ServerCall, error: RpcError) -> None:
    call.scope.cancel()


async def _run_unary_handler(handler: MethodHandler, request: Any, call: ServerCall) -> Any:
    trace = call._trace
    if trace is None:
        return await handler.handler(request, call)
    span = trace.start("handler")
    response = await handler.handler(request, call)
    trace.end(span)
    return response


async def _run_server_stream_handler(
    handler: MethodHandler, request: Any, call: ServerCall
) -> None:
    trace = call._trace
    span = trace.start("handler") if trace is not None else 0
    await _drive(handler.handler(request, call), call)
    if trace is not None:
        trace.end(span)


async def _run_stream_handler(handler: MethodHandler, call: ServerCall) -> None:
    trace = call._trace
    span = trace.start("handler") if trace is not None else 0
    result = handler.handler(call)
    if handler.cardinality is Cardinality.STREAM_UNARY:
        response = await result
        await call.send_message(response)
    else:
        await _drive(result, call)
    if trace is not None:
        trace.end(span)


def _start_call_trace(
    sink: TraceSink, transport: Transport, request: ev.RequestReceived, found: bool
) -> CallTrace:
    """The server half of a call's trace, under the client's call id when it sent one."""
    call_id = request.metadata.get(CALL_ID_METADATA_KEY)
    trace = CallTrace(
        sink,
        "server",
        call_id=call_id if isinstance(call_id, str) else None,
        method=request.method,
    )
    trace.attach(transport.connection.frame_tracer)
    trace.bind_stream(request.stream_id)
    trace.point(
        "handle_stream",
        method=request.method,
        timeout=request.timeout,
        peer=transport.peer,
        encoding=request.encoding,
        found=found,
    )
    return trace


def _end_call_trace(trace: CallTrace, call: ServerCall, code: StatusCode, message: str) -> None:
    """End the call's steps with the status the client was sent (or why none was)."""
    aborted = call._state.aborted
    if aborted is not None:
        trace.end_all(status=aborted.code.name, message=aborted.message)
    elif call.scope.cancelled_caught:
        trace.end_all(status="DEADLINE_EXCEEDED", message="deadline exceeded: RST_STREAM(CANCEL)")
    else:
        trace.end_all(status=code.name, message=message)


async def _drive(result: Any, call: ServerCall) -> None:
    if inspect.isasyncgen(result):
        try:
            async for item in result:
                await call.send_message(item)
        finally:
            await result.aclose()
    else:
        await result


def _bind_unary_interceptor(
    interceptor: UnaryServerInterceptor, info: MethodInfo, handler: UnaryHandler
) -> UnaryHandler:
    async def call(request: Any, server_call: ServerCall) -> Any:
        return await interceptor(request, server_call, info, handler)

    return call


def _bind_stream_interceptor(
    interceptor: StreamServerInterceptor, info: MethodInfo, handler: StreamHandler
) -> StreamHandler:
    async def call(server_call: ServerCall) -> Any:
        return await interceptor(server_call, info, handler)

    return call
