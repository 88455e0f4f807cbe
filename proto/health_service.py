"""The gRPC health-checking service (`grpc.health.v1.Health`) for cryo's servers.

This module owns the table of serving statuses a server reports and the two rpcs
that read it: Check (the status now; NOT_FOUND for a service it does not know) and
Watch (the status now, then every change, as grpc doc/health-checking.md asks).
The server's own code decides the statuses and calls `set`; this module never guesses
them. It must not import grpcio: any gRPC health client can ask it over the wire.

    health = HealthServicer()                  # "" (the whole server) is SERVING
    add_HealthServicer_to_server(health, server)
    health.set("types.API", NOT_SERVING)

`set`, `clear` and `enter_graceful_shutdown` are plain functions, to be called from
the trio thread that runs the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import trio

from proto.health import health_cryo, health_pb2
from proto.health.health_cryo import add_HealthServicer_to_server
from wire.server import ServerCall
from wire.status import StatusCode

ServingStatus: TypeAlias = health_pb2.HealthCheckResponse.ServingStatus

UNKNOWN: ServingStatus = health_pb2.HealthCheckResponse.UNKNOWN
SERVING: ServingStatus = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: ServingStatus = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: ServingStatus = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

__all__ = [
    "NOT_SERVING",
    "SERVICE_UNKNOWN",
    "SERVING",
    "UNKNOWN",
    "HealthServicer",
    "ServingStatus",
    "add_HealthServicer_to_server",
]


class HealthServicer(health_cryo.HealthServicer):
    """Serving statuses by service name, served as `grpc.health.v1.Health`."""

    def __init__(self, statuses: Mapping[str, ServingStatus] | None = None) -> None:
        """Start with `statuses`; by default the whole server ("") is SERVING."""
        self._statuses: dict[str, ServingStatus] = dict(
            statuses if statuses is not None else {"": SERVING}
        )
        # Set and replaced on every change: each Watch waits on the current one.
        self._changed = trio.Event()
        self._shutting_down = False

    # -- what the server's code calls -------------------------------------------------

    def set(self, service: str, status: ServingStatus) -> None:
        """Report `status` for `service` ("" for the whole server); watchers hear of it.

        After `enter_graceful_shutdown` every status stays NOT_SERVING.
        """
        if self._shutting_down or self._statuses.get(service) == status:
            return
        self._statuses[service] = status
        self._notify()

    def clear(self, service: str) -> None:
        """Forget `service`: Check answers NOT_FOUND, Watch says SERVICE_UNKNOWN."""
        if self._shutting_down or self._statuses.pop(service, None) is None:
            return
        self._notify()

    def enter_graceful_shutdown(self) -> None:
        """Report every service NOT_SERVING for good, and end the Watch calls.

        Call it before `Server.shutdown`, so that clients move elsewhere while the
        in-flight calls finish, and open Watch calls do not hold the shutdown up.
        """
        if self._shutting_down:
            return
        for service in self._statuses:
            self._statuses[service] = NOT_SERVING
        self._shutting_down = True
        self._notify()

    def status(self, service: str) -> ServingStatus | None:
        """The status reported for `service`, or None if it is not known."""
        return self._statuses.get(service)

    def _notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    # -- the rpcs ---------------------------------------------------------------------

    async def Check(
        self, request: health_pb2.HealthCheckRequest, call: ServerCall
    ) -> health_pb2.HealthCheckResponse:
        status = self._statuses.get(request.service)
        if status is None:
            call.abort(StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, call: ServerCall) -> None:
        # Changes that come faster than the client reads are folded into the latest
        # one: a watcher wants the current status, not the history.
        sent: ServingStatus | None = None
        while True:
            changed = self._changed
            status = self._statuses.get(request.service, SERVICE_UNKNOWN)
            if status != sent:
                await call.send_message(health_pb2.HealthCheckResponse(status=status))
                sent = status
            if self._shutting_down:
                # The call ends with OK; the health protocol tells clients to retry.
                return
            await changed.wait()
