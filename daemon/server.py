"""`cryo daemon`: the Docker-compatible daemon process, put together.

    cryo daemon -H unix:///run/cryo/docker.sock --data-root /var/lib/cryo
    docker -H unix:///run/cryo/docker.sock checkpoint create mycontainer cp1

Owns: start-up order and supervision. It opens the container table, starts the
runtime (`python -m runtime`, state under `<data-root>/runtime`) and keeps it healthy
the way Docker 17 kept containerd — a health check every 0.5 s with a 3 s timeout, a
restart after 3 failures or when the process exits — follows the runtime's events from
a cursor that survives restarts, and serves the HTTP API on the socket given.

Must not: hold state of its own (the store and the backend do) or talk types.API
other than through `daemon.containerd.RuntimeClient`.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from daemon import supervisor
from daemon.api import DockerApi
from daemon.backend import Backend
from daemon.containerd import RuntimeClient
from daemon.http import HttpServer
from daemon.store import ContainerStore
from proto.types import api_pb2
from wire.errors import RpcError

_REPO_ROOT = Path(__file__).resolve().parent.parent
HEALTH_INTERVAL = 0.5
HEALTH_TIMEOUT = 3.0
HEALTH_FAILURES = 3


@dataclass
class DaemonOptions:
    host: str  # unix:///path or tcp://127.0.0.1:port
    data_root: Path
    runc: str | None = None
    criu: str | None = None
    socket_mode: int = 0o660


def command_line(host: str, data_root: Path) -> list[str]:
    """How to start `cryo daemon` from this checkout as a child process (with
    `child_environment`): for the demo, the benchmarks and the tests."""
    return [sys.executable, "-m", "daemon", "daemon", "-H", host, "--data-root", str(data_root)]


def child_environment(**extra: str) -> dict[str, str]:
    """This process's environment, with this checkout first on PYTHONPATH, plus *extra*."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def log(text: str) -> None:
    print(f"cryo daemon: {text}", file=sys.stderr, flush=True)


def log_request(text: str) -> None:
    """Each API request, as dockerd's debug log has them ("Calling POST /v1.41/…")."""
    print(f"cryo daemon: api: {text}", file=sys.stderr, flush=True)


async def supervise_runtime(
    options: DaemonOptions,
    *,
    task_status: trio.TaskStatus[tuple[RuntimeClient, str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep one runtime running; `started((client, version))` after the first start."""
    state_dir = options.data_root / "runtime"
    state_dir.mkdir(parents=True, exist_ok=True)
    async with trio.open_nursery() as nursery:
        await _keep_runtime(options, state_dir, nursery, task_status)


async def _keep_runtime(
    options: DaemonOptions,
    state_dir: Path,
    nursery: trio.Nursery,
    task_status: trio.TaskStatus[tuple[RuntimeClient, str]],
) -> None:
    client: RuntimeClient | None = None
    while True:
        async with supervisor.launch(
            state_dir,
            criu=options.criu,
            runc=options.runc,
            log_file=options.data_root / "runtime.log",
        ) as runtime:
            if client is None:
                client = RuntimeClient(runtime.target)
                await nursery.start(client.run)
                version = await client.api.GetServerVersion(
                    api_pb2.GetServerVersionRequest(), timeout=HEALTH_TIMEOUT
                )
                log(f"runtime started (pid {runtime.pid}) on {runtime.target}")
                task_status.started((client, f"{version.major}.{version.minor}.{version.patch}"))
            else:
                client.retarget(runtime.target)
                log(f"runtime restarted (pid {runtime.pid}) on {runtime.target}")
            await _watch_health(client, runtime.process)


async def _watch_health(client: RuntimeClient, process: trio.Process) -> None:
    """Return when the runtime exited or failed HEALTH_FAILURES checks in a row."""
    failures = 0
    while process.returncode is None:
        await trio.sleep(HEALTH_INTERVAL)
        if await client.healthy(HEALTH_TIMEOUT):
            failures = 0
            continue
        failures += 1
        log(f"runtime health check failed ({failures}/{HEALTH_FAILURES})")
        if failures >= HEALTH_FAILURES:
            return
    log(f"runtime exited with status {process.returncode}")


async def serve(
    options: DaemonOptions, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the daemon until cancelled; `started()` once the API answers."""
    options.data_root.mkdir(parents=True, exist_ok=True)
    store = ContainerStore(options.data_root)
    for problem in store.load_errors:
        log(f"skipped an unreadable container record: {problem}")
    async with trio.open_nursery() as nursery:
        client, runtime_version = await nursery.start(supervise_runtime, options)
        backend = Backend(store, client, runc=options.runc or shutil.which("runc"))
        backend.run_in(nursery)
        try:
            await backend.reconcile()
        except RpcError as exc:
            log(f"could not compare containers with the runtime: {exc}")
        await nursery.start(client.follow_events, backend.on_runtime_event)
        api = DockerApi(backend, runtime_version=runtime_version)
        http = HttpServer(api, default_headers=api.default_headers, log=log, access_log=log_request)
        if options.host.startswith("unix://"):
            path = options.host.removeprefix("unix://")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            await nursery.start(partial(http.serve_unix, path, mode=options.socket_mode))
        elif options.host.startswith("tcp://"):
            host, _, port = options.host.removeprefix("tcp://").rpartition(":")
            await nursery.start(http.serve_tcp, host.strip("[]"), int(port))
        else:
            raise ValueError(
                f"unsupported host {options.host!r}: use unix:///path or tcp://host:port"
            )
        log(f"API listening on {options.host} (Docker Engine API {api.default_headers[0][1]})")
        task_status.started()
        await trio.sleep_forever()


async def run_until_signalled(options: DaemonOptions) -> None:
    """`serve`, until SIGTERM or SIGINT; then stop the runtime and its containers."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, options)
            async for signum in signals:
                log(f"{signal.Signals(signum).name}: stopping")
                nursery.cancel_scope.cancel()
                break


def main(options: DaemonOptions) -> int:
    if os.geteuid() != 0:
        log("warning: not root; runc containers and CRIU need root")
    trio.run(run_until_signalled, options)
    return 0
