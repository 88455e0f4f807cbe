"""The health service: Check and Watch as cryo's own client and grpcio's client see them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from proto.health import health_cryo, health_pb2
from proto.health_service import (
    NOT_SERVING,
    SERVICE_UNKNOWN,
    SERVING,
    HealthServicer,
    add_HealthServicer_to_server,
)
from wire.client import ClientConn
from wire.errors import RpcError
from wire.server import Server
from wire.status import StatusCode

GRPCIO_CLIENT = Path(__file__).resolve().parent / "grpcio_client.py"
Request = health_pb2.HealthCheckRequest


@pytest.fixture
def health() -> HealthServicer:
    return HealthServicer({"": SERVING, "cryo.Known": NOT_SERVING})


@pytest.fixture
async def port(nursery: trio.Nursery, health: HealthServicer) -> int:
    server = Server()
    add_HealthServicer_to_server(health, server)
    bound: int = await nursery.start(server.serve_tcp, 0)
    return bound


@pytest.fixture
async def stub(port: int) -> AsyncIterator[health_cryo.HealthStub]:
    async with ClientConn(f"127.0.0.1:{port}") as conn:
        yield health_cryo.HealthStub(conn)


async def test_check_reports_known_services_and_not_found_for_others(
    stub: health_cryo.HealthStub, health: HealthServicer
) -> None:
    assert (await stub.Check(Request(service=""))).status == SERVING
    assert (await stub.Check(Request(service="cryo.Known"))).status == NOT_SERVING
    health.set("cryo.Known", SERVING)
    assert (await stub.Check(Request(service="cryo.Known"))).status == SERVING
    with pytest.raises(RpcError) as caught:
        await stub.Check(Request(service="cryo.Unknown"))
    assert caught.value.code == StatusCode.NOT_FOUND


async def test_watch_streams_the_status_then_each_change(
    stub: health_cryo.HealthStub, health: HealthServicer
) -> None:
    with trio.fail_after(5):
        async with stub.Watch(Request(service="cryo.Known")) as updates:
            assert (await updates.__anext__()).status == NOT_SERVING
            health.set("cryo.Known", SERVING)
            assert (await updates.__anext__()).status == SERVING
            health.set("cryo.Known", SERVING)  # no change, no message
            health.clear("cryo.Known")
            assert (await updates.__anext__()).status == SERVICE_UNKNOWN


async def test_watch_of_an_unknown_service_waits_for_it_to_appear(
    stub: health_cryo.HealthStub, health: HealthServicer
) -> None:
    with trio.fail_after(5):
        updates = stub.Watch(Request(service="cryo.Later"))
        assert (await updates.__anext__()).status == SERVICE_UNKNOWN
        health.set("cryo.Later", SERVING)
        assert (await updates.__anext__()).status == SERVING
        await updates.aclose()


async def test_graceful_shutdown_reports_not_serving_and_ends_watches(
    stub: health_cryo.HealthStub, health: HealthServicer
) -> None:
    with trio.fail_after(5):
        updates = stub.Watch(Request(service=""))
        assert (await updates.__anext__()).status == SERVING
        health.enter_graceful_shutdown()
        assert [update.status async for update in updates] == [NOT_SERVING]
        assert updates.code == StatusCode.OK
        health.set("", SERVING)  # ignored from now on
        assert (await stub.Check(Request(service=""))).status == NOT_SERVING


async def run_grpcio_client(*args: str) -> list[dict[str, object]]:
    result = await trio.run_process(
        [sys.executable, str(GRPCIO_CLIENT), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


@pytest.mark.interop
async def test_grpcio_health_client_checks_a_cryo_server(port: int) -> None:
    with trio.fail_after(60):
        answers = await run_grpcio_client("check", str(port), "", "cryo.Known", "cryo.Unknown")
    assert answers == [
        {"service": "", "status": "SERVING"},
        {"service": "cryo.Known", "status": "NOT_SERVING"},
        {"service": "cryo.Unknown", "code": "NOT_FOUND"},
    ]


@pytest.mark.interop
async def test_grpcio_health_client_watches_changes(port: int, health: HealthServicer) -> None:
    command = [sys.executable, str(GRPCIO_CLIENT), "watch", str(port), "cryo.Known", "3"]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    lines = LineReader(process.stdout)
    try:
        with trio.fail_after(60):
            assert json.loads(await lines.next()) == {"status": "NOT_SERVING"}
            health.set("cryo.Known", SERVING)
            assert json.loads(await lines.next()) == {"status": "SERVING"}
            health.clear("cryo.Known")
            assert json.loads(await lines.next()) == {"status": "SERVICE_UNKNOWN"}
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


class LineReader:
    """Lines from a trio byte stream, one at a time."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> str:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some()
            if not chunk:
                raise EOFError(f"stream ended after {self._buffer!r}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()
