"""The daemon's client of the runtime (Docker's libcontainerd): `RuntimeClient`.

Owns: the gRPC connection to the runtime's `types.API` (on the socket the daemon's
supervisor started it on), one lock per container so that the daemon sends at most
one state-changing call per container at a time (Docker 17 did the same), the runtime's
health check, and the event subscription with its cursor: after the runtime restarts
or the stream breaks, the subscription resumes after the last event it delivered.

Must not: decide what a Docker operation means (`daemon.backend`), or start the
runtime (`daemon.supervisor`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from google.protobuf.timestamp_pb2 import Timestamp

from proto.health import health_pb2
from proto.health.health_cryo import HealthStub
from proto.types import api_pb2
from proto.types.api_cryo import APIStub
from wire.client import ClientConn
from wire.errors import RpcError
from wire.status import StatusCode

EventHandler = Callable[[api_pb2.Event], Awaitable[None]]

RESUBSCRIBE_DELAY = 0.2  # seconds between attempts while the runtime is away


class RuntimeClient:
    """types.API over one `ClientConn`, retargeted when the runtime is restarted.

    `run` (a task of the daemon's nursery) owns the connection: it holds one
    `ClientConn` block open at a time and replaces it when `retarget` names a new
    socket. Callers use `api` from any task; a call in flight on a replaced
    connection fails with UNAVAILABLE, as it would have with the runtime gone.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.conn: ClientConn | None = None
        self._locks: dict[str, trio.Lock] = {}
        self.cursor: Timestamp | None = None  # timestamp of the last event delivered
        self._retargeted = trio.Event()

    @property
    def api(self) -> APIStub:
        if self.conn is None:
            raise RpcError(StatusCode.UNAVAILABLE, "the runtime connection is not open")
        return APIStub(self.conn)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a connection to the current target open; `started()` once it is."""
        started = False
        while True:
            changed = self._retargeted
            async with ClientConn(self.target) as conn:
                self.conn = conn
                if not started:
                    started = True
                    task_status.started()
                try:
                    await changed.wait()
                finally:
                    self.conn = None

    def lock(self, container_id: str) -> trio.Lock:
        """The lock every state-changing call for *container_id* holds."""
        lock = self._locks.get(container_id)
        if lock is None:
            lock = self._locks[container_id] = trio.Lock()
        return lock

    def forget(self, container_id: str) -> None:
        lock = self._locks.get(container_id)
        if lock is not None and not lock.locked():
            del self._locks[container_id]

    def retarget(self, target: str) -> None:
        """The runtime now listens at *target* (it was restarted)."""
        self.target = target
        self._retargeted.set()
        self._retargeted = trio.Event()

    async def healthy(self, timeout: float = 3.0) -> bool:
        """One health check of types.API (Docker checked every 500 ms, 3 s timeout)."""
        try:
            if self.conn is None:
                return False
            answer = await HealthStub(self.conn).Check(
                health_pb2.HealthCheckRequest(service="types.API"), timeout=timeout
            )
        except RpcError:
            return False
        return answer.status == health_pb2.HealthCheckResponse.SERVING

    async def follow_events(
        self,
        handle: EventHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Deliver every runtime event to *handle*, in order, forever.

        Starts with stored events after the cursor (all of them the first time), then
        live ones; when the stream ends or fails, subscribes again from the cursor.
        `task_status.started()` is called once the first subscription is open.
        """
        started = False
        while True:
            request = api_pb2.EventsRequest()
            if self.cursor is not None:
                request.timestamp.CopyFrom(self.cursor)
            try:
                async with self.api.Events(request) as events:
                    if not started:
                        started = True
                        task_status.started()
                    async for event in events:
                        if event.HasField("timestamp"):
                            self.cursor = Timestamp()
                            self.cursor.CopyFrom(event.timestamp)
                        await handle(event)
            except RpcError:
                pass  # the runtime went away or is restarting: resubscribe from the cursor
            with trio.move_on_after(RESUBSCRIBE_DELAY):
                await self._retargeted.wait()
