"""The 18 official interop cases between cryo and grpcio, in every pairing.

Each case is its own test per pairing, so a failure names both. Servers run as child
processes (conftest.py); cryo's client runs in the test's trio loop, grpcio's in a
worker thread. grpcio against grpcio checks the peer itself: if that pairing fails,
the grpcio peer is wrong, not cryo.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.interop import client as cryo_client
from tests.interop.conftest import (
    REPO_ROOT,
    TLS_SERVER_NAME,
    ServerProcess,
    TlsFiles,
    start_server_process,
)
from tests.interop.grpcio_peer import GrpcioInteropClient
from tests.interop.interop_cases import CASE_NAMES
from wire.client import ClientConn

pytestmark = pytest.mark.interop


async def _run_cryo_client(server: ServerProcess, case: str) -> None:
    server.check_alive()
    async with ClientConn(server.target) as conn:
        await cryo_client.run_case(conn, case)
    server.check_alive()


async def _run_grpcio_client(server: ServerProcess, case: str) -> None:
    server.check_alive()

    def run() -> None:
        with GrpcioInteropClient(server.target) as peer:
            peer.run_case(case)

    await trio.to_thread.run_sync(run)
    server.check_alive()


@pytest.mark.parametrize("case", CASE_NAMES)
async def test_cryo_client_against_grpcio_server(
    case: str, grpcio_interop_server: ServerProcess
) -> None:
    await _run_cryo_client(grpcio_interop_server, case)


@pytest.mark.parametrize("case", CASE_NAMES)
async def test_grpcio_client_against_cryo_server(
    case: str, cryo_interop_server: ServerProcess
) -> None:
    await _run_grpcio_client(cryo_interop_server, case)


@pytest.mark.parametrize("case", CASE_NAMES)
async def test_cryo_client_against_cryo_server(
    case: str, cryo_interop_server: ServerProcess
) -> None:
    await _run_cryo_client(cryo_interop_server, case)


@pytest.mark.parametrize("case", CASE_NAMES)
async def test_grpcio_client_against_grpcio_server(
    case: str, grpcio_interop_server: ServerProcess
) -> None:
    await _run_grpcio_client(grpcio_interop_server, case)


# -- the command lines, as the official interop runners call them -------------------


def _run_command(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


def test_cryo_client_command_line_passes_every_case(
    grpcio_interop_server: ServerProcess,
) -> None:
    result = _run_command(
        [
            "tests/interop/client.py",
            "--server_host=127.0.0.1",
            f"--server_port={grpcio_interop_server.port}",
            "--test_case=all",
            "--use_tls=false",
        ]
    )
    assert result.stdout.splitlines() == [f"PASS {case}" for case in CASE_NAMES], result.stderr
    assert result.returncode == 0


def test_cryo_client_command_line_exits_non_zero_on_failure() -> None:
    with refused_port() as port:
        result = _run_command(
            [
                "tests/interop/client.py",
                f"--server_port={port}",
                "--test_case=empty_unary,large_unary",
            ]
        )
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["FAIL empty_unary", "FAIL large_unary"]
    assert "UNAVAILABLE" in lines[0]
    assert result.returncode == 1


def test_cryo_client_command_line_refuses_unknown_case() -> None:
    result = _run_command(
        ["tests/interop/client.py", "--server_port=1", "--test_case=empty_unary,no_such_case"]
    )
    assert result.returncode == 2
    assert "no_such_case" in result.stderr


def test_grpcio_client_command_line_against_cryo_server(
    cryo_interop_server: ServerProcess,
) -> None:
    result = _run_command(
        [
            "-m",
            "tests.interop.grpcio_peer",
            "client",
            f"--server_port={cryo_interop_server.port}",
            "--test_case=large_unary,ping_pong",
        ]
    )
    assert result.stdout.splitlines() == ["PASS large_unary", "PASS ping_pong"], result.stderr
    assert result.returncode == 0


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that is bound but does not listen: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- TLS with ALPN (interop servers must support it) ---------------------------------

TLS_CASES = (
    "empty_unary",
    "large_unary",
    "ping_pong",
    "custom_metadata",
    "server_compressed_streaming",
)


def _tls_server(kind: str, tls: TlsFiles, log_dir: Path) -> ServerProcess:
    module = ["tests.interop.server"] if kind == "cryo" else ["tests.interop.grpcio_peer", "server"]
    return start_server_process(
        f"{kind} TLS interop server",
        [
            *module,
            "--port=0",
            "--use_tls=true",
            f"--tls_cert_file={tls.cert}",
            f"--tls_key_file={tls.key}",
        ],
        log_dir,
    )


@pytest.mark.parametrize(("client_kind", "server_kind"), [("cryo", "grpcio"), ("grpcio", "cryo")])
def test_tls_interop(
    client_kind: str, server_kind: str, tls_files: TlsFiles, server_log_dir: Path
) -> None:
    server = _tls_server(server_kind, tls_files, server_log_dir)
    try:
        client_args = (
            ["tests/interop/client.py", "--use_test_ca=true"]
            if client_kind == "cryo"
            else ["-m", "tests.interop.grpcio_peer", "client"]
        )
        result = _run_command(
            [
                *client_args,
                "--server_host=127.0.0.1",
                f"--server_port={server.port}",
                "--use_tls=true",
                f"--ca_file={tls_files.cert}",
                f"--server_host_override={TLS_SERVER_NAME}",
                f"--test_case={','.join(TLS_CASES)}",
            ]
        )
    finally:
        server.stop()
    assert result.stdout.splitlines() == [f"PASS {case}" for case in TLS_CASES], (
        result.stdout + result.stderr + server.log.read_text()
    )
    assert result.returncode == 0
