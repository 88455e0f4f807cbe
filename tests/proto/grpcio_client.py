"""grpcio's health and reflection clients, run against a cryo server from a child process.

This script owns the grpcio side of the health and reflection tests:

    python tests/proto/grpcio_client.py check PORT SERVICE...
    python tests/proto/grpcio_client.py watch PORT SERVICE COUNT
    python tests/proto/grpcio_client.py reflect PORT SYMBOL...
    python tests/proto/grpcio_client.py reflect-v1 PORT

Each prints JSON lines on stdout. It runs in a process of its own because grpcio's
`grpc_health` and `grpc_reflection` modules register `grpc.health.v1` and
`grpc.reflection.v1alpha` in protobuf's default descriptor pool, where cryo's own
modules of the same packages already are in the test process; the pool refuses a
symbol defined twice. It never imports `wire` or `proto`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

TIMEOUT = 10.0


def emit(record: object) -> None:
    print(json.dumps(record), flush=True)


def check(channel: grpc.Channel, services: list[str]) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in services:
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        except grpc.RpcError as error:
            emit({"service": service, "code": error.code().name})
        else:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            emit({"service": service, "status": status})


def watch(channel: grpc.Channel, service: str, count: int) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    responses = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
    try:
        for received, reply in enumerate(responses, start=1):
            emit({"status": health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)})
            if received == count:
                break
        else:
            emit({"ended": responses.code().name})
    finally:
        responses.cancel()


def reflect(channel: grpc.Channel, symbols: list[str]) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    emit({"services": sorted(database.get_services())})
    pool = descriptor_pool.DescriptorPool(database)
    for symbol in symbols:
        try:
            service = pool.FindServiceByName(symbol)
        except KeyError:
            emit({"symbol": symbol, "found": False})
            continue
        emit(
            {
                "symbol": symbol,
                "found": True,
                "file": service.file.name,
                "dependencies": sorted(dep.name for dep in service.file.dependencies),
                "methods": {
                    method.name: [method.input_type.full_name, method.output_type.full_name]
                    for method in service.methods
                },
            }
        )


def reflect_v1(channel: grpc.Channel) -> None:
    # grpcio-reflection has no v1 client; v1's messages are v1alpha's under a new
    # package name, so the v1alpha classes encode and decode them.
    info = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )

    def requests() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        yield reflection_pb2.ServerReflectionRequest(file_by_filename="proto/health/health.proto")

    listed, by_name = list(info(requests(), timeout=TIMEOUT))
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(data).name
        for data in by_name.file_descriptor_response.file_descriptor_proto
    ]
    emit(
        {
            "services": sorted(s.name for s in listed.list_services_response.service),
            "files": files,
        }
    )


def main(argv: list[str]) -> int:
    command, port, *rest = argv
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        if command == "check":
            check(channel, rest)
        elif command == "watch":
            watch(channel, rest[0], int(rest[1]))
        elif command == "reflect":
            reflect(channel, rest)
        elif command == "reflect-v1":
            reflect_v1(channel)
        else:
            print(f"unknown command {command}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
