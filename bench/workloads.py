"""The benchmark workloads W1-W5 and the libraries that run them, as plain data.

This module owns the numbers of bench.md (how many calls, what payload, how many
concurrent callers), the method paths of the Echo service, and the result record a
client process hands back. It must not start processes or talk to a network: the
client, server and runner modules do that.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

ECHO_SERVICE = "cryo.bench.Echo"
UNARY = f"/{ECHO_SERVICE}/Unary"
SERVER_STREAM = f"/{ECHO_SERVICE}/ServerStream"
CLIENT_STREAM = f"/{ECHO_SERVICE}/ClientStream"
BIDI = f"/{ECHO_SERVICE}/Bidi"

CRYO = "cryo"
GRPCIO = "grpcio"
GRPCIO_AIO = "grpcio-aio"
TCP_TRIO = "tcp-trio"
"""Raw TCP ping-pong on trio with no HTTP/2: the floor for W1 and W5 on this machine."""

LIBRARIES = (CRYO, GRPCIO, GRPCIO_AIO, TCP_TRIO)
DEFAULT_LIBRARIES = (CRYO, GRPCIO, GRPCIO_AIO)
LIBRARY_TITLES = {
    CRYO: "cryo (wire, trio)",
    GRPCIO: "grpcio (sync)",
    GRPCIO_AIO: "grpcio (aio)",
    TCP_TRIO: "raw TCP ping-pong on trio (no HTTP/2)",
}


@dataclass(frozen=True, slots=True)
class Workload:
    """One row of bench.md: what a client does, and how its figure is named."""

    id: str
    title: str
    count: int  # calls, messages or round trips measured
    payload: int  # bytes per message
    concurrency: int  # callers sharing the one connection
    warmup: int  # unmeasured operations first, on the same connection
    unit: str  # what `rate` counts per second
    latency: bool = False  # per-operation p50/p99 are reported

    def scaled(self, factor: float) -> Workload:
        """The same workload with counts multiplied by `factor` (at least one each)."""
        if factor == 1.0:
            return self
        return dataclasses.replace(
            self,
            count=max(1, math.ceil(self.count * factor)),
            warmup=max(1, math.ceil(self.warmup * factor)),
            concurrency=max(1, min(self.concurrency, math.ceil(self.count * factor))),
        )


def grpcio_echo_module() -> Any:
    """protoc's grpcio stubs for Echo (`EchoStub`, `add_EchoServicer_to_server`).

    Typed as Any on purpose: the generated module has no annotations to check against.
    """
    module: ModuleType = importlib.import_module("proto.echo.echo_pb2_grpc")
    return module


MIB = 1024 * 1024

WORKLOADS: dict[str, Workload] = {
    w.id: w
    for w in (
        Workload(
            "W1", "2,000 sequential unary calls, 10 B", 2_000, 10, 1, 200, "calls/s", latency=True
        ),
        Workload(
            "W2",
            "64 concurrent callers, 20,000 unary calls, 10 B",
            20_000,
            10,
            64,
            1_280,
            "calls/s",
        ),
        Workload("W3", "200 unary calls of 1 MiB, echoed", 200, MIB, 1, 10, "MB/s"),
        Workload("W4", "one server stream of 100,000 x 100 B", 100_000, 100, 1, 5_000, "msgs/s"),
        Workload(
            "W5",
            "5,000 ping-pong round trips on one bidi stream, 10 B",
            5_000,
            10,
            1,
            300,
            "rt/s",
            latency=True,
        ),
    )
}

SUPPORTED: dict[str, frozenset[str]] = {
    CRYO: frozenset(WORKLOADS),
    GRPCIO: frozenset(WORKLOADS),
    GRPCIO_AIO: frozenset(WORKLOADS),
    TCP_TRIO: frozenset({"W1", "W5"}),
}


def supports(client: str, server: str, workload: str) -> bool:
    """Whether this client and server can run the workload together.

    The raw TCP floor speaks no gRPC, so it only pairs with itself.
    """
    if (client == TCP_TRIO) != (server == TCP_TRIO):
        return False
    return workload in SUPPORTED[client] and workload in SUPPORTED[server]


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an already sorted list (NaN when it is empty)."""
    if not ordered:
        return math.nan
    rank = max(0, math.ceil(fraction * len(ordered)) - 1)
    return ordered[rank]


@dataclass(slots=True)
class CellResult:
    """What one client process measured for one workload (one repetition of one cell)."""

    client: str
    server: str
    workload: str
    count: int
    seconds: float  # wall time of the measured part
    client_cpu: float  # CPU seconds of the client process over the measured part
    server_cpu: float  # CPU seconds of the server process over the same span
    client_sys: float  # the part of client_cpu spent in the kernel (system calls)
    server_sys: float
    payload_bytes: int  # request payload bytes in the measured part (for MB/s)
    p50_us: float = math.nan  # per-operation latency, for workloads that record it
    p99_us: float = math.nan
    error: str | None = None
    rep: int = 0  # which repetition of the run (set by the runner)

    @property
    def rate(self) -> float:
        """The workload's figure: operations (or MB of request payload) per second."""
        if self.seconds <= 0:
            return math.nan
        if self.workload == "W3":
            return self.payload_bytes / 1e6 / self.seconds
        return self.count / self.seconds

    @property
    def cpu_per_10k(self) -> float:
        """CPU seconds, client and server together, per 10,000 operations."""
        if self.count <= 0:
            return math.nan
        return (self.client_cpu + self.server_cpu) / self.count * 10_000

    @property
    def kernel_share(self) -> float:
        """Which fraction of both processes' CPU was system (kernel) time."""
        total = self.client_cpu + self.server_cpu
        return (self.client_sys + self.server_sys) / total if total > 0 else math.nan

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> CellResult:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})  # type: ignore[arg-type]
