"""Targets and dialling: turn `host:port`, `[v6]:port` or `unix:/path` into a stream.

Owns target parsing and opening the byte stream (TCP, unix socket, TLS with ALPN h2).
It knows nothing of HTTP/2 or gRPC.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import trio


class InvalidTarget(ValueError):
    """A target string that names no address cryo can dial."""


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed dial target."""

    kind: str  # "tcp" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def authority(self) -> str:
        """The `:authority` a request to this target carries."""
        if self.kind == "unix":
            return "localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else self.authority


def parse_target(target: str) -> Target:
    """Parse `host:port`, `[::1]:port`, `dns:///host:port`, `unix:/path` or `unix:///path`."""
    if target.startswith("unix:"):
        path = target[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise InvalidTarget(f"unix target {target!r} has no path")
        return Target("unix", path=path)
    rest = target[len("dns:///") :] if target.startswith("dns:///") else target
    if rest.startswith("["):
        host, sep, port_text = rest[1:].partition("]:")
        if not sep:
            raise InvalidTarget(f"target {target!r}: expected [v6-address]:port")
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep or not host:
            raise InvalidTarget(f"target {target!r}: expected host:port or unix:/path")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidTarget(f"target {target!r}: bad port {port_text!r}")
    return Target("tcp", host=host, port=int(port_text))


async def open_target(
    target: Target, *, ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None
) -> trio.abc.Stream:
    """Open the byte stream a client speaks HTTP/2 on (TLS negotiates ALPN `h2`)."""
    stream: trio.abc.Stream
    if target.kind == "unix":
        stream = await trio.open_unix_socket(target.path)
    else:
        stream = await trio.open_tcp_stream(target.host, target.port)
    if ssl_context is not None:
        ssl_context.set_alpn_protocols(["h2"])
        tls = trio.SSLStream(
            stream,
            ssl_context,
            server_hostname=server_hostname or target.host or "localhost",
            https_compatible=True,
        )
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        if tls.selected_alpn_protocol() != "h2":
            await trio.aclose_forcefully(tls)
            raise ConnectionError("the server did not agree to HTTP/2 (ALPN h2)")
        stream = tls
    return stream


def describe_peer(stream: trio.abc.Stream) -> str:
    """A human-readable peer address (`ipv4:127.0.0.1:5000`, `unix:/path`)."""
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    sock = getattr(inner, "socket", None)
    if sock is None:
        return "unknown"
    try:
        name = sock.getpeername()
    except OSError:
        return "unknown"
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
    return f"unix:{name or ''}"
