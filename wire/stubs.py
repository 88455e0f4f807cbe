"""Support for generated stubs: what the `_cryo.py` modules of protoc-gen-cryo share.

This module owns `ResponseStream`, what a generated server-streaming stub method
returns, so that each generated module imports it instead of carrying a copy. It is
built only on `ClientConn`'s public streaming API: `open_stream` when used as a block,
`start_stream` when iterated directly. It must not open, reset or release a stream
itself (`ClientConn` and `ClientCall` do, in one place each), must not hold a cancel
scope across a yield to its user, and knows nothing of protobuf: a message is
whatever the serializers given to it take and return.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Generic, TypeVar

import trio

from wire.client import ClientCall, ClientConn
from wire.errors import ProtocolMisuse, RpcError
from wire.metadata import Metadata, MetadataSource
from wire.status import StatusCode

Req = TypeVar("Req")
Resp = TypeVar("Resp")

__all__ = ["ResponseStream"]


class ResponseStream(Generic[Resp]):
    """The responses of one server-streaming call.

    Use it as a block, whose end ends the call and whose deadline covers the block
    (`ClientConn.open_stream`):

        async with stub.Method(request) as responses:
            async for response in responses:
                ...

    or iterate it directly (`ClientConn.start_stream`):

        async for response in stub.Method(request):
            ...

    Iterated directly, the call starts at the first step and is let go when the
    responses end, when a step fails, at `aclose()`, or (if the loop is left early)
    soon after the object is dropped. No cancel scope is held between two steps, so
    leaving the loop early is safe under trio; each step enforces the deadline.
    """

    def __init__(
        self,
        conn: ClientConn,
        method: str,
        request: Req,
        request_serializer: Callable[[Req], bytes],
        response_deserializer: Callable[[bytes], Resp],
        *,
        timeout: float | None = None,
        metadata: Metadata | MetadataSource | None = None,
        compression: str | None = None,
        wait_for_ready: bool = False,
    ) -> None:
        self._conn = conn
        self._method = method
        self._request: Any = request
        self._serialize: Callable[[Any], bytes] = request_serializer
        self._deserialize = response_deserializer
        self._timeout = timeout
        self._metadata = metadata
        self._compression = compression
        self._wait_for_ready = wait_for_ready
        self._call: ClientCall[Any, Resp] | None = None
        # Set while the call runs inside `async with` (the block owns the call then).
        self._block: AsyncExitStack | None = None
        self._finished = False

    # -- as a block -------------------------------------------------------------------

    async def __aenter__(self) -> ResponseStream[Resp]:
        if self._call is not None or self._finished:
            raise ProtocolMisuse("this call has already started")
        async with AsyncExitStack() as stack:
            call: ClientCall[Any, Resp] = await stack.enter_async_context(
                self._conn.open_stream(
                    self._method,
                    request_serializer=self._serialize,
                    response_deserializer=self._deserialize,
                    timeout=self._timeout,
                    metadata=self._metadata,
                    compression=self._compression,
                    wait_for_ready=self._wait_for_ready,
                )
            )
            await call.send_message(self._request)
            await call.done_writing()
            self._call = call
            self._block = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        block, self._block = self._block, None
        self._finished = True
        if block is None:
            return None
        return await block.__aexit__(exc_type, exc, traceback)

    # -- as an iterator ---------------------------------------------------------------

    def __aiter__(self) -> ResponseStream[Resp]:
        return self

    async def __anext__(self) -> Resp:
        if self._finished:
            raise StopAsyncIteration
        if self._block is not None and self._call is not None:
            message = await self._call.receive_message()
        else:
            call = self._call if self._call is not None else await self._start()
            try:
                message = await call.receive_message()
            except BaseException:
                self._let_go()
                raise
            if message is None:
                self._let_go()
        if message is None:
            raise StopAsyncIteration
        return message

    async def aclose(self) -> None:
        """Stop early: the call is cancelled (RST_STREAM(CANCEL)) if it still runs."""
        if self._block is not None and self._call is not None:
            self._call.cancel()  # the block lets the stream go when it ends
        else:
            self._let_go()
        await trio.lowlevel.checkpoint()

    # -- the call ---------------------------------------------------------------------

    async def initial_metadata(self) -> Metadata:
        """The response headers' metadata; waits for them (and starts the call)."""
        if self._block is not None and self._call is not None:
            return await self._call.initial_metadata()
        call = self._call if self._call is not None else await self._start()
        try:
            return await call.initial_metadata()
        except RpcError:
            self._let_go()
            raise

    @property
    def trailing_metadata(self) -> Metadata | None:
        """The trailers' metadata, once the call ended."""
        return self._call.trailing_metadata if self._call is not None else None

    @property
    def code(self) -> StatusCode | None:
        """The call's status code, once it ended."""
        return self._call.code if self._call is not None else None

    @property
    def details(self) -> str | None:
        """The call's status message, once it ended."""
        return self._call.details if self._call is not None else None

    @property
    def last_message_compressed(self) -> bool:
        """Whether the response received last had its compressed flag set."""
        return self._call.last_message_compressed if self._call is not None else False

    def cancel(self) -> None:
        """Cancel the call; the next step raises RpcError(CANCELLED)."""
        if self._call is not None:
            self._call.cancel()

    async def _start(self) -> ClientCall[Any, Resp]:
        if self._finished:
            raise ProtocolMisuse("this call has already ended")
        call: ClientCall[Any, Resp] = await self._conn.start_stream(
            self._method,
            request_serializer=self._serialize,
            response_deserializer=self._deserialize,
            timeout=self._timeout,
            metadata=self._metadata,
            compression=self._compression,
            wait_for_ready=self._wait_for_ready,
        )
        self._call = call
        try:
            await call.send_message(self._request)
            await call.done_writing()
        except BaseException:
            self._let_go()
            raise
        return call

    def _let_go(self) -> None:
        self._finished = True
        if self._call is not None and self._block is None:
            self._call.close()
