"""Runs the benchmark: server and client processes, interleaved repetitions, profiles.

`run_benchmark` starts one echo server process per library, then for each repetition
and each workload runs one client process per cell (rep 1 of every cell, then rep 2,
…; the order of the libraries rotates from one repetition to the next so that none is
always first after a quiet pause). Every client process is bounded by a timeout and
every server ends when its stdin closes, so a run never leaves processes behind.
`run_profiles` runs the cryo cells again under a sampling profiler, one side at a
time. This module must not compute figures or write the report; `bench.report` does.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bench.workloads import CRYO, WORKLOADS, CellResult, supports

REPO = Path(__file__).resolve().parent.parent
SERVER_START_TIMEOUT = 60.0

Log = Callable[[str], None]


def log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Cell:
    """One client library against one server library on one workload."""

    client: str
    server: str
    workload: str

    @property
    def pair(self) -> str:
        return self.client if self.client == self.server else f"{self.client} → {self.server}"


def plan_cells(libs: Sequence[str], workloads: Sequence[str], *, cross: bool) -> list[Cell]:
    """Each library against itself; with `cross`, also cryo against each other library
    in both directions (the interoperability check bench.md asks for)."""
    pairs = [(lib, lib) for lib in libs]
    if cross and CRYO in libs:
        for lib in libs:
            if lib != CRYO:
                pairs += [(CRYO, lib), (lib, CRYO)]
    return [
        Cell(client, server, w)
        for w in workloads
        for client, server in pairs
        if supports(client, server, w)
    ]


# -- profilers --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Profiler:
    """How to run a Python module under a sampling profiler, writing to a file."""

    kind: str  # "py-spy" or "pyinstrument"
    executable: str
    rate: int = 250

    @property
    def suffix(self) -> str:
        return ".collapsed.txt" if self.kind == "py-spy" else ".pyinstrument.txt"

    def command(self, module: str, args: Sequence[str], out: Path) -> list[str]:
        if self.kind == "py-spy":
            # --gil: only samples in which the process runs Python code holding the GIL.
            # Without it, this machine's py-spy counts a process that is runnable but
            # waiting for a CPU (inside send(), after waking its peer) as busy; with it,
            # sample-seconds match the CPU time the kernel reports.
            return [
                self.executable,
                "record",
                "--gil",
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--full-filenames",
                "--output",
                str(out),
                "--",
                sys.executable,
                "-m",
                module,
                *args,
            ]
        return [
            sys.executable,
            "-m",
            "pyinstrument",
            "--renderer",
            "text",
            "--outfile",
            str(out),
            "-m",
            module,
            *args,
        ]


def find_profiler(rate: int) -> Profiler | None:
    """py-spy if it is installed (next to this Python or on PATH), else pyinstrument."""
    candidate = Path(sys.executable).with_name("py-spy")
    spy = str(candidate) if candidate.exists() else shutil.which("py-spy")
    if spy is not None:
        return Profiler("py-spy", spy, rate)
    try:
        importlib.metadata.version("pyinstrument")
    except importlib.metadata.PackageNotFoundError:
        return None
    return Profiler("pyinstrument", sys.executable, rate)


# -- processes --------------------------------------------------------------------------


STEADY_HEAP_TUNABLES = "glibc.malloc.trim_threshold=33554432:glibc.malloc.mmap_threshold=16777216"
"""glibc settings for `--heap steady`: blocks up to 16 MiB come from the heap, and the
heap is given back to the kernel only above 32 MiB free. With glibc's defaults a
process that frees a few MiB per call (W3: 1 MiB messages, several copies on each
side, in both libraries) hands the pages back and faults them in again on the next
call; how often that happens varies from run to run, which makes W3 bimodal."""

HEAPS = ("default", "steady")


def set_heap(heap: str) -> None:
    """Make every process this run starts, of every library alike, use `heap`."""
    if heap not in HEAPS:
        raise ValueError(f"unknown heap setting {heap!r}; expected one of {', '.join(HEAPS)}")
    if heap == "steady":
        os.environ["GLIBC_TUNABLES"] = ":".join(
            t for t in (os.environ.get("GLIBC_TUNABLES"), STEADY_HEAP_TUNABLES) if t
        )


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    return env


class EchoServer:
    """One `bench.echo_servers` process; it ends when we close its stdin."""

    def __init__(
        self,
        lib: str,
        *,
        profiler: Profiler | None = None,
        profile_out: Path | None = None,
        log: Log = log_to_stderr,
    ) -> None:
        self.lib = lib
        self.port = 0
        self.pid = 0
        self._log = log
        args = ["--lib", lib]
        if profiler is not None and profile_out is not None:
            command = profiler.command("bench.echo_servers", args, profile_out)
        else:
            command = [sys.executable, "-m", "bench.echo_servers", *args]
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=_child_env(),
            text=True,
        )
        self._errors: list[str] = []
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()
        self._wait_ready()

    def _pump_stdout(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _pump_stderr(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self._errors.append(line.rstrip())
            del self._errors[:-20]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"{self.lib} server did not start in time") from None
            if line is None:
                self.stop()
                raise RuntimeError(
                    f"{self.lib} server exited before it was ready: " + " | ".join(self._errors)
                )
            if line.startswith("READY "):
                _, port, pid = line.split()
                self.port, self.pid = int(port), int(pid)
                return

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Close stdin (the server's signal to stop), wait, and kill it if it lingers."""
        if self._process.stdin is not None and not self._process.stdin.closed:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._log(f"{self.lib} server (pid {self._process.pid}) did not stop; killing it")
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ServerAddress(Protocol):
    """Where a client finds its server: the port, and the pid whose CPU it reads."""

    port: int
    pid: int


def run_client(
    cell: Cell,
    server: ServerAddress,
    *,
    scale: float,
    timeout: float,
    profiler: Profiler | None = None,
    profile_out: Path | None = None,
) -> CellResult:
    """One client process for one cell; a failure comes back as a result with `error`."""
    with tempfile.TemporaryDirectory(prefix="cryo-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        args = [
            "--lib",
            cell.client,
            "--server-lib",
            cell.server,
            "--workload",
            cell.workload,
            "--port",
            str(server.port),
            "--server-pid",
            str(server.pid),
            "--scale",
            repr(scale),
            "--result",
            str(result_path),
        ]
        if profiler is not None and profile_out is not None:
            command = profiler.command("bench.echo_clients", args, profile_out)
        else:
            command = [sys.executable, "-m", "bench.echo_clients", *args]
        error: str | None = None
        try:
            done = subprocess.run(
                command,
                cwd=REPO,
                env=_child_env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            error = f"client did not finish within {timeout:.0f} s"
        else:
            if not result_path.exists():
                tail = done.stderr.strip().splitlines()[-3:]
                error = f"client exited {done.returncode}: " + " | ".join(tail)
        if error is None:
            return CellResult.from_json(json.loads(result_path.read_text()))
        return CellResult(
            client=cell.client,
            server=cell.server,
            workload=cell.workload,
            count=0,
            seconds=0.0,
            client_cpu=0.0,
            server_cpu=0.0,
            client_sys=0.0,
            server_sys=0.0,
            payload_bytes=0,
            error=error,
        )


# -- a whole run ------------------------------------------------------------------------


@dataclass(slots=True)
class RunOptions:
    workloads: list[str]
    libs: list[str]
    reps: int = 5
    scale: float = 1.0
    cross: bool = False
    timeout: float = 300.0
    profile: bool = False
    profile_rate: int = 250


@dataclass(slots=True)
class ProfileFile:
    name: str  # e.g. "cryo W1 client"
    path: Path
    kind: str


@dataclass(slots=True)
class RunRecord:
    """Everything a report needs: what ran, where, and every repetition's result."""

    started: str
    options: dict[str, object]
    environment: dict[str, str]
    load_before: tuple[float, float, float]
    finished: str = ""
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    results: list[CellResult] = field(default_factory=list)
    profiles: list[ProfileFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "started": self.started,
            "finished": self.finished,
            "options": self.options,
            "environment": self.environment,
            "load_before": self.load_before,
            "load_after": self.load_after,
            "results": [r.to_json() for r in self.results],
            "profiles": [
                {"name": p.name, "path": str(p.path), "kind": p.kind} for p in self.profiles
            ],
            "notes": self.notes,
        }


def describe_environment() -> dict[str, str]:
    """Versions and machine facts that move the figures."""
    env = {
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
        "platform": platform.platform(),
    }
    for package in ("h2", "hpack", "hyperframe", "trio", "grpcio", "protobuf"):
        try:
            env[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            env[package] = "absent"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                env["cpu"] = line.split(":", 1)[1].strip()
                break
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit, dirty = "", ""
    if commit:
        env["cryo commit"] = commit + (" (with uncommitted changes)" if dirty else "")
    env["wire/ digest"] = wire_source_digest()
    env["GLIBC_TUNABLES"] = os.environ.get("GLIBC_TUNABLES") or "(none)"
    return env


def wire_source_digest() -> str:
    """A short digest of cryo's wire/ sources: which code a run measured, even
    between commits, and whether it changed while the run went on."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "wire").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _rotated(items: Sequence[Cell], by: int) -> list[Cell]:
    if not items:
        return []
    k = by % len(items)
    return [*items[k:], *items[:k]]


def _describe(result: CellResult) -> str:
    if result.error is not None:
        return f"FAILED: {result.error}"
    unit = WORKLOADS[result.workload].unit
    return f"{result.rate:,.0f} {unit}"


def run_benchmark(options: RunOptions, log: Log = log_to_stderr) -> RunRecord:
    """The timed part: interleaved repetitions of every cell; servers live for the run."""
    record = RunRecord(
        started=_stamp(),
        options={
            "workloads": options.workloads,
            "libs": options.libs,
            "reps": options.reps,
            "scale": options.scale,
            "cross": options.cross,
        },
        environment=describe_environment(),
        load_before=os.getloadavg(),
    )
    cells = plan_cells(options.libs, options.workloads, cross=options.cross)
    servers: dict[str, EchoServer] = {}
    try:
        for lib in dict.fromkeys(c.server for c in cells):
            servers[lib] = EchoServer(lib, log=log)
        for rep in range(1, options.reps + 1):
            for workload in options.workloads:
                row = [c for c in cells if c.workload == workload]
                for cell in _rotated(row, rep - 1):
                    server = servers[cell.server]
                    if not server.alive:
                        record.notes.append(
                            f"rep {rep}: the {cell.server} server had died; restarted it"
                        )
                        server.stop()
                        server = servers[cell.server] = EchoServer(cell.server, log=log)
                    result = run_client(cell, server, scale=options.scale, timeout=options.timeout)
                    result.rep = rep
                    record.results.append(result)
                    log(f"rep {rep}/{options.reps} {workload} {cell.pair}: {_describe(result)}")
    finally:
        for server in servers.values():
            server.stop()
    record.load_after = os.getloadavg()
    record.finished = _stamp()
    if wire_source_digest() != record.environment["wire/ digest"]:
        record.notes.append(
            "wire/ changed while the run went on: cryo's cells measured more than one version of it"
        )
    return record


def profile_scale(workload: str) -> float:
    """Profiled runs are longer, so that a few hundred samples land in each: at least
    10,000 operations, except W3 whose 200 MiB already take seconds."""
    if workload == "W3":
        return 1.0
    return max(1.0, 10_000 / WORKLOADS[workload].count)


def run_profiles(
    options: RunOptions, out_dir: Path, profiler: Profiler, log: Log = log_to_stderr
) -> Iterator[ProfileFile]:
    """Each cryo workload twice more: once with the server profiled, once the client.

    One profiler at a time, so that the sampler's own CPU use disturbs as little as it
    can on two cores. These runs are not part of the timed figures.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for workload in options.workloads:
        cell = Cell(CRYO, CRYO, workload)
        scale = profile_scale(workload) * options.scale
        for side in ("server", "client"):
            out = out_dir / f"cryo-{workload}-{side}{profiler.suffix}"
            server_profile = (profiler, out) if side == "server" else (None, None)
            client_profile = (profiler, out) if side == "client" else (None, None)
            with EchoServer(
                CRYO, profiler=server_profile[0], profile_out=server_profile[1], log=log
            ) as server:
                result = run_client(
                    cell,
                    server,
                    scale=scale,
                    timeout=options.timeout,
                    profiler=client_profile[0],
                    profile_out=client_profile[1],
                )
            log(f"profile {workload} {side}: {_describe(result)} -> {out}")
            if out.exists():
                yield ProfileFile(f"cryo {workload} {side}", out, profiler.kind)
