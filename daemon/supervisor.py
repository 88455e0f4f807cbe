"""Start the runtime as a child process and know when it is ready: ``launch``.

    async with supervisor.launch() as launched:
        async with ClientConn(launched.target) as conn:
            ...

Owns: starting ``python -m runtime`` on a unix socket in a fresh temporary directory
(or the state directory given), waiting until it answers a health check, and stopping
it afterwards: SIGTERM (the runtime then stops its containers), SIGKILL if it does not
exit in time. For the daemon's supervision and demo, and for tests. The daemon reaches the runtime
only this way: a process it starts, and gRPC on the socket it names.

Must not: talk ``types.API`` itself, or leave a process or a temporary directory behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from proto.health import health_pb2
from proto.health.health_cryo import HealthStub
from wire.client import ClientConn
from wire.errors import RpcError
from wire.trace_env import TRACE_ENV, child_destination

__all__ = ["LaunchedRuntime", "RuntimeDidNotStart", "launch"]

_REPO_ROOT = Path(__file__).resolve().parent.parent


class RuntimeDidNotStart(Exception):
    """The runtime exited or stayed silent; the message ends with its last log lines."""


@dataclass
class LaunchedRuntime:
    """A running runtime process and where to reach it."""

    process: trio.Process
    socket_path: Path
    state_dir: Path

    @property
    def target(self) -> str:
        """The address to give `ClientConn`."""
        return f"unix:{self.socket_path}"

    @property
    def pid(self) -> int:
        return self.process.pid


async def _wait_until_serving(
    target: str, process: trio.Process, timeout: float, log_path: Path | None
) -> None:
    request = health_pb2.HealthCheckRequest(service="types.API")
    with trio.move_on_after(timeout):
        async with ClientConn(target) as conn:
            stub = HealthStub(conn)
            while process.returncode is None:
                try:
                    answer = await stub.Check(request, timeout=1.0)
                except RpcError:
                    answer = None  # not listening yet, or still starting up
                if answer is not None and answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                await trio.sleep(0.02)
    tail = ""
    if log_path is not None:
        text = await trio.to_thread.run_sync(lambda: log_path.read_text(errors="replace"))
        tail = "\n" + "\n".join(text.splitlines()[-20:])
    if process.returncode is not None:
        raise RuntimeDidNotStart(f"the runtime exited with status {process.returncode}{tail}")
    raise RuntimeDidNotStart(f"the runtime did not become healthy within {timeout} s{tail}")


@asynccontextmanager
async def launch(
    state_dir: Path | str | None = None,
    *,
    criu: str | None = None,
    runc: str | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_file: Path | str | None = None,
    startup_timeout: float = 30.0,
    stop_timeout: float = 20.0,
) -> AsyncIterator[LaunchedRuntime]:
    """Run ``python -m runtime`` until the block ends; yield how to reach it.

    The socket lives in a private temporary directory. Without *state_dir* the state
    lives there too (and goes with it). The runtime's log goes to *log_file* if given,
    else to this process's stderr.
    """
    scratch = Path(tempfile.mkdtemp(prefix="cryo-runtime-"))
    socket_path = scratch / "rt.sock"
    state = Path(state_dir) if state_dir is not None else scratch / "state"
    command = [
        sys.executable,
        "-m",
        "runtime",
        "--listen",
        f"unix://{socket_path}",
        "--state-dir",
        str(state),
    ]
    if criu is not None:
        command += ["--criu", criu]
    if runc is not None:
        command += ["--runc", runc]
    command += list(extra_args)
    child_env = dict(os.environ if env is None else env)
    if child_env.get(TRACE_ENV):
        # A runtime started by a traced program traces too, into a file of its own.
        child_env[TRACE_ENV] = child_destination(child_env[TRACE_ENV], "runtime")
    # The runtime imports its packages from this checkout, wherever we were started.
    child_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(_REPO_ROOT), child_env.get("PYTHONPATH", "")])
    )
    log_fd: int | None = None
    try:
        if log_file is not None:
            log_fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, env=child_env
        )
        try:
            await _wait_until_serving(
                f"unix:{socket_path}",
                process,
                startup_timeout,
                Path(log_file) if log_file is not None else None,
            )
            yield LaunchedRuntime(process, socket_path, state)
        finally:
            with trio.CancelScope(shield=True):
                await _stop(process, stop_timeout)
    finally:
        if log_fd is not None:
            os.close(log_fd)
        shutil.rmtree(scratch, ignore_errors=True)


async def _stop(process: trio.Process, timeout: float) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(timeout):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()
