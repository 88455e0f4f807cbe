"""Fixtures of the interop tests: the two TestService servers as child processes.

This module owns starting cryo's interop server (`server.py`) and the grpcio one
(`grpcio_peer.py server`) as subprocesses on 127.0.0.1 with port 0, reading the port
each reports, waiting until it accepts, and stopping it by its PID afterwards. It also
makes a throwaway TLS certificate with the `openssl` command for the TLS tests. It
must not start anything that listens beyond loopback or outlives the test session.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 20.0
TLS_SERVER_NAME = "interop.cryo.test"


@dataclass
class ServerProcess:
    """A running interop server: its process, where it listens, and its stderr log."""

    name: str
    process: subprocess.Popen[str]
    host: str
    port: int
    log: Path

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def check_alive(self) -> None:
        """Fail the current test, with the server's log, if the server has died."""
        if self.process.poll() is not None:
            pytest.fail(
                f"{self.name} exited with status {self.process.returncode}:\n"
                f"{self.log.read_text()[-4000:]}"
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _read_port(process: subprocess.Popen[str], deadline: float) -> int:
    """The port from the server's `listening on HOST:PORT` line."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(deadline - time.monotonic(), 0)):
                break
            line = process.stdout.readline()
            if not line:
                break  # the server exited
            if line.startswith("listening on "):
                return int(line.rsplit(":", 1)[1])
    raise RuntimeError("no `listening on` line")


def _wait_accepting(host: str, port: int, deadline: float) -> None:
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start_server_process(name: str, args: list[str], log_dir: Path) -> ServerProcess:
    """Start `python -m <args>` from the repository root and wait until it accepts."""
    log = log_dir / f"{name}.log"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    host = "127.0.0.1"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        port = _read_port(process, deadline)
        _wait_accepting(host, port, deadline)
    except (RuntimeError, OSError) as exc:
        server = ServerProcess(name, process, host, 0, log)
        server.stop()
        raise RuntimeError(f"{name} did not start ({exc}):\n{log.read_text()[-4000:]}") from None
    return ServerProcess(name, process, host, port, log)


@pytest.fixture(scope="session")
def server_log_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cryo-interop-") as folder:
        yield Path(folder)


@pytest.fixture(scope="session")
def cryo_interop_server(server_log_dir: Path) -> Iterator[ServerProcess]:
    server = start_server_process(
        "cryo interop server",
        ["tests.interop.server", "--port=0", "--host=127.0.0.1"],
        server_log_dir,
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def grpcio_interop_server(server_log_dir: Path) -> Iterator[ServerProcess]:
    server = start_server_process(
        "grpcio interop server",
        ["tests.interop.grpcio_peer", "server", "--port=0", "--host=127.0.0.1"],
        server_log_dir,
    )
    yield server
    server.stop()


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for TLS_SERVER_NAME (also its own CA) and its key."""

    cert: Path
    key: Path


@pytest.fixture(scope="session")
def tls_files(server_log_dir: Path) -> TlsFiles:
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the openssl command is missing; scripts/setup-system.sh installs it")
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = server_log_dir / "server.pem", server_log_dir / "server.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={TLS_SERVER_NAME}",
            "-addext",
            f"subjectAltName=DNS:{TLS_SERVER_NAME}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return TlsFiles(cert, key)
