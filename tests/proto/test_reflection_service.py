"""Server reflection: what generic tools learn of a cryo server's services.

The server runs the fixture's Relay service, health and reflection. cryo's own
generated reflection stubs (v1 and v1alpha) check the protocol details; grpcio's
`ProtoReflectionDescriptorDatabase`, in a child process, checks that a real client
can rebuild the services from what it is sent.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio
from google.protobuf import descriptor_pb2

from proto.health_service import HealthServicer, add_HealthServicer_to_server
from proto.reflection.v1 import reflection_cryo as v1_cryo
from proto.reflection.v1 import reflection_pb2 as v1
from proto.reflection.v1alpha import reflection_cryo as v1alpha_cryo
from proto.reflection.v1alpha import reflection_pb2 as v1alpha
from proto.reflection_service import add_reflection_to_server
from wire.client import ClientConn
from wire.server import Server
from wire.status import StatusCode

GRPCIO_CLIENT = Path(__file__).resolve().parent / "grpcio_client.py"
SERVICES = [
    "cryo.fixture.Relay",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
]


@pytest.fixture
async def port(nursery: trio.Nursery, relay_cryo: ModuleType) -> int:
    server = Server()
    add_reflection_to_server(server)  # before the others: the list is read per request
    relay_cryo.add_RelayServicer_to_server(relay_cryo.RelayServicer(), server)
    add_HealthServicer_to_server(HealthServicer(), server)
    bound: int = await nursery.start(server.serve_tcp, 0)
    return bound


@pytest.fixture
async def conn(port: int) -> AsyncIterator[ClientConn]:
    async with ClientConn(f"127.0.0.1:{port}") as conn:
        yield conn


def file_names(response: Any) -> list[str]:
    return [
        descriptor_pb2.FileDescriptorProto.FromString(data).name
        for data in response.file_descriptor_response.file_descriptor_proto
    ]


async def test_v1_lists_services_and_sends_files_with_their_dependencies_once(
    conn: ClientConn,
) -> None:
    Request = v1.ServerReflectionRequest
    with trio.fail_after(5):
        async with v1_cryo.ServerReflectionStub(conn).ServerReflectionInfo() as call:
            await call.send_message(Request(host="h", list_services=""))
            listed = await call.receive_message()
            assert listed is not None
            assert [s.name for s in listed.list_services_response.service] == SERVICES
            assert listed.valid_host == "h"
            assert listed.original_request.list_services == ""

            await call.send_message(Request(file_containing_symbol="cryo.fixture.Relay"))
            relay = await call.receive_message()
            assert file_names(relay) == [
                "cryofixture/relay.proto",
                "google/protobuf/empty.proto",
                "cryofixture/common.proto",
                "cryofixture/empty.proto",
            ]
            # Already sent on this stream: only the file asked for comes again.
            await call.send_message(Request(file_containing_symbol="cryo.fixture.common.Note"))
            assert file_names(await call.receive_message()) == ["cryofixture/common.proto"]

            await call.send_message(Request(file_containing_symbol="cryo.fixture.Relay.Shout"))
            assert file_names(await call.receive_message()) == ["cryofixture/relay.proto"]

            await call.send_message(Request(file_by_filename="proto/health/health.proto"))
            assert file_names(await call.receive_message()) == ["proto/health/health.proto"]
            await call.done_writing()
            assert await call.receive_message() is None


async def test_v1_answers_unknown_names_with_not_found_and_keeps_the_stream(
    conn: ClientConn,
) -> None:
    Request = v1.ServerReflectionRequest
    asks = [
        Request(file_containing_symbol="no.such.Service"),
        Request(file_by_filename="no/such.proto"),
        Request(
            file_containing_extension=v1.ExtensionRequest(
                containing_type="cryo.fixture.common.Note", extension_number=100
            )
        ),
        Request(all_extension_numbers_of_type="no.such.Message"),
    ]
    with trio.fail_after(5):
        async with v1_cryo.ServerReflectionStub(conn).ServerReflectionInfo() as call:
            for ask in asks:
                await call.send_message(ask)
                answer = await call.receive_message()
                assert answer is not None
                assert answer.WhichOneof("message_response") == "error_response"
                assert answer.error_response.error_code == StatusCode.NOT_FOUND
            await call.send_message(Request(all_extension_numbers_of_type="cryo.fixture.Blank"))
            numbers = await call.receive_message()
            assert numbers is not None
            assert numbers.all_extension_numbers_response.base_type_name == "cryo.fixture.Blank"
            assert list(numbers.all_extension_numbers_response.extension_number) == []


async def test_v1alpha_gives_the_same_answers(conn: ClientConn) -> None:
    with trio.fail_after(5):
        async with v1alpha_cryo.ServerReflectionStub(conn).ServerReflectionInfo() as call:
            await call.send_message(v1alpha.ServerReflectionRequest(list_services=""))
            listed = await call.receive_message()
            await call.send_message(
                v1alpha.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health")
            )
            health = await call.receive_message()
    assert isinstance(listed, v1alpha.ServerReflectionResponse)
    assert [s.name for s in listed.list_services_response.service] == SERVICES
    assert file_names(health) == ["proto/health/health.proto"]


async def run_grpcio_client(*args: str) -> list[dict[str, Any]]:
    result = await trio.run_process(
        [sys.executable, str(GRPCIO_CLIENT), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


@pytest.mark.interop
async def test_grpcio_reflection_client_rebuilds_cryo_services(port: int) -> None:
    with trio.fail_after(60):
        listed, relay, health, missing = await run_grpcio_client(
            "reflect", str(port), "cryo.fixture.Relay", "grpc.health.v1.Health", "no.Such"
        )
    assert listed == {"services": SERVICES}
    assert relay["file"] == "cryofixture/relay.proto"
    assert relay["dependencies"] == [
        "cryofixture/common.proto",
        "cryofixture/empty.proto",
        "google/protobuf/empty.proto",
    ]
    assert relay["methods"] == {
        "Shout": ["cryo.fixture.common.Note", "cryo.fixture.common.Note"],
        "Count": ["cryo.fixture.common.Note", "cryo.fixture.common.Note"],
        "Join": ["cryo.fixture.common.Note", "cryo.fixture.Envelope.Sealed"],
        "Echo": ["cryo.fixture.common.Note", "cryo.fixture.common.Note"],
        "import": ["google.protobuf.Empty", "google.protobuf.Empty"],
    }
    assert health["methods"] == {
        "Check": ["grpc.health.v1.HealthCheckRequest", "grpc.health.v1.HealthCheckResponse"],
        "Watch": ["grpc.health.v1.HealthCheckRequest", "grpc.health.v1.HealthCheckResponse"],
    }
    assert missing == {"symbol": "no.Such", "found": False}


@pytest.mark.interop
async def test_grpcio_reaches_reflection_v1(port: int) -> None:
    with trio.fail_after(60):
        [answer] = await run_grpcio_client("reflect-v1", str(port))
    assert answer == {"services": SERVICES, "files": ["proto/health/health.proto"]}
