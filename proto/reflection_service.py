"""gRPC server reflection (`grpc.reflection.v1` and `v1alpha`) for cryo's servers.

This module owns the answers to reflection requests: the names of the services a
`wire.Server` serves, and the serialized `FileDescriptorProto`s that describe them,
taken from a protobuf descriptor pool (the default one, where every imported `_pb2`
module registers its file). With it, generic tools (grpcurl, grpcio's
`ProtoReflectionDescriptorDatabase`, Postman) can list and call cryo's services
without their .proto files. It must not import grpcio, and it never sends a file
that is not in the pool.

    add_reflection_to_server(server)   # after or before the other services: the
                                       # service list is read at each request

Both versions are served: v1 is v1alpha renamed, with the same messages and field
numbers, so the v1alpha service converts through the wire encoding and shares the
v1 logic.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import descriptor, descriptor_pool

from proto.reflection.v1 import reflection_cryo as v1_cryo
from proto.reflection.v1 import reflection_pb2 as v1
from proto.reflection.v1alpha import reflection_cryo as v1alpha_cryo
from proto.reflection.v1alpha import reflection_pb2 as v1alpha
from wire.server import Server, ServerCall
from wire.status import StatusCode

__all__ = ["ReflectionServicer", "ReflectionServicerV1Alpha", "add_reflection_to_server"]


class ReflectionServicer(v1_cryo.ServerReflectionServicer):
    """`grpc.reflection.v1.ServerReflection` for one server's services."""

    def __init__(self, server: Server, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._server = server
        self._pool = pool if pool is not None else descriptor_pool.Default()

    async def ServerReflectionInfo(self, call: ServerCall) -> None:
        # Files already sent on this stream are not sent again as dependencies (as
        # grpc-go does): the client keeps what it got.
        sent: set[str] = set()
        async for request in call:
            await call.send_message(self.answer(request, sent))

    def answer(
        self, request: v1.ServerReflectionRequest, sent: set[str]
    ) -> v1.ServerReflectionResponse:
        """The response to one request; `sent` holds the file names this stream has."""
        response = v1.ServerReflectionResponse(valid_host=request.host)
        response.original_request.CopyFrom(request)
        kind = request.WhichOneof("message_request")
        pool = self._pool
        try:
            if kind == "list_services":
                listed = response.list_services_response
                listed.SetInParent()
                listed.service.extend(
                    v1.ServiceResponse(name=name) for name in sorted(self._server.services)
                )
            elif kind == "file_by_filename":
                file = pool.FindFileByName(request.file_by_filename)
                self._add_files(response, file, sent)
            elif kind == "file_containing_symbol":
                file = self._file_containing_symbol(request.file_containing_symbol)
                self._add_files(response, file, sent)
            elif kind == "file_containing_extension":
                wanted = request.file_containing_extension
                message = pool.FindMessageTypeByName(wanted.containing_type)
                extension = pool.FindExtensionByNumber(message, wanted.extension_number)
                file = pool.FindFileContainingSymbol(extension.full_name)
                self._add_files(response, file, sent)
            elif kind == "all_extension_numbers_of_type":
                message = pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
                numbers = response.all_extension_numbers_response
                numbers.base_type_name = message.full_name
                numbers.extension_number.extend(
                    sorted(extension.number for extension in pool.FindAllExtensions(message))
                )
            else:
                _set_error(response, StatusCode.INVALID_ARGUMENT, "empty reflection request")
        except KeyError:
            _set_error(response, StatusCode.NOT_FOUND, f"{kind} {_subject(request)!r} not found")
        return response

    def _file_containing_symbol(self, symbol: str) -> descriptor.FileDescriptor:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            # The pool finds messages, fields, enums and services, but not methods,
            # which clients ask for as `package.Service.Method`.
            return self._pool.FindMethodByName(symbol).containing_service.file

    def _add_files(
        self,
        response: v1.ServerReflectionResponse,
        file: descriptor.FileDescriptor,
        sent: set[str],
    ) -> None:
        files = response.file_descriptor_response
        files.SetInParent()
        # The file itself always, then each dependency this stream has not had yet.
        files.file_descriptor_proto.append(file.serialized_pb)
        sent.add(file.name)
        for dependency in _dependencies(file):
            if dependency.name not in sent:
                files.file_descriptor_proto.append(dependency.serialized_pb)
                sent.add(dependency.name)


class ReflectionServicerV1Alpha(v1alpha_cryo.ServerReflectionServicer):
    """`grpc.reflection.v1alpha.ServerReflection`, answered by a v1 servicer."""

    def __init__(self, v1_servicer: ReflectionServicer) -> None:
        self._v1 = v1_servicer

    async def ServerReflectionInfo(self, call: ServerCall) -> None:
        sent: set[str] = set()
        async for request in call:
            # Same fields, same numbers: the bytes of one are the bytes of the other.
            as_v1 = v1.ServerReflectionRequest.FromString(request.SerializeToString())
            answer = self._v1.answer(as_v1, sent)
            await call.send_message(
                v1alpha.ServerReflectionResponse.FromString(answer.SerializeToString())
            )


def add_reflection_to_server(
    server: Server, pool: descriptor_pool.DescriptorPool | None = None
) -> ReflectionServicer:
    """Serve reflection, v1 and v1alpha, for every service `server` has at request time."""
    servicer = ReflectionServicer(server, pool)
    v1_cryo.add_ServerReflectionServicer_to_server(servicer, server)
    v1alpha_cryo.add_ServerReflectionServicer_to_server(ReflectionServicerV1Alpha(servicer), server)
    return servicer


def _dependencies(file: descriptor.FileDescriptor) -> Iterable[descriptor.FileDescriptor]:
    """Every file `file` imports, directly or not, each once, nearest first."""
    seen = {file.name}
    queue = list(file.dependencies)
    while queue:
        dependency = queue.pop(0)
        if dependency.name in seen:
            continue
        seen.add(dependency.name)
        yield dependency
        queue.extend(dependency.dependencies)


def _set_error(response: v1.ServerReflectionResponse, code: StatusCode, message: str) -> None:
    response.error_response.error_code = int(code)
    response.error_response.error_message = message


def _subject(request: v1.ServerReflectionRequest) -> str:
    wanted = request.file_containing_extension
    kind = request.WhichOneof("message_request")
    if kind == "file_containing_extension":
        return f"{wanted.containing_type}({wanted.extension_number})"
    if kind == "all_extension_numbers_of_type":
        return request.all_extension_numbers_of_type
    if kind == "file_by_filename":
        return request.file_by_filename
    return request.file_containing_symbol
