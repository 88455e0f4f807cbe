"""Why the runtime refused or failed a request, in terms the API layer can map to a status.

Owns: one exception type per kind of outcome a client can act on differently (bad
request, no such thing, already there, wrong state, missing feature, a tool failed).
Their messages are written for the client: they may quote CRIU's or runc's log lines,
which is what makes a failed checkpoint debuggable, but never a traceback.

Must not: import `wire` or know status codes; `runtime.server` maps these to gRPC
statuses in one table.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "FeatureUnavailable",
    "InvalidRequest",
    "NotFound",
    "OperationFailed",
    "RequestFailed",
    "Unsupported",
    "WrongState",
]


class RequestFailed(Exception):
    """Base: a request could not be carried out; ``str()`` is meant for the client."""


class InvalidRequest(RequestFailed):
    """The request itself is malformed: a missing field, a bad name, a path that escapes."""


class NotFound(RequestFailed):
    """The container or checkpoint named does not exist."""


class AlreadyExists(RequestFailed):
    """A container or checkpoint of that name exists (or is being made) already."""


class WrongState(RequestFailed):
    """The container is not in a state that allows this (e.g. checkpoint of a stopped one)."""


class FeatureUnavailable(RequestFailed):
    """This machine's CRIU or kernel cannot do what was asked (e.g. incremental dumps)."""


class OperationFailed(RequestFailed):
    """CRIU or runc failed; the message carries the relevant lines of its log."""


class Unsupported(RequestFailed):
    """A part of containerd's API that cryo does not implement (e.g. resource limits)."""
