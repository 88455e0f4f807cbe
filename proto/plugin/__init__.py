"""protoc-gen-cryo: the protoc plugin that writes typed `wire` stubs for every service.

This package owns the plugin's protocol with protoc (a `CodeGeneratorRequest` on
stdin, a `CodeGeneratorResponse` on stdout) and its options; the text of each
generated module is made by `proto.plugin.stub_module`. It must not write files
itself or import `wire`: protoc writes what the plugin returns.

Run it through grpcio-tools' protoc, next to the message generators:

    python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --cryo_out=. x/y.proto
        (with `protoc-gen-cryo` on PATH, or `--plugin=protoc-gen-cryo=EXECUTABLE`)

Option `--cryo_opt=module=PKG=NEWPKG` (repeatable) says that the `_pb2` modules of
package PKG were moved to NEWPKG, e.g. `module=grpc.testing=proto.interop`.

What `x/y.proto` gives, in `x/y_cryo.py` (files without a service give nothing):

* `class EchoStub`, made with a `wire.client.ClientConn`, one method per rpc:
  - unary: `await stub.Unary(request, *, timeout=None, metadata=None,
    compression=None, wait_for_ready=False, header=None, trailer=None) -> Response`;
    `header` and `trailer` are `Metadata` objects filled with the response's.
  - server-streaming: `stub.ServerStream(request, *, timeout, metadata, compression,
    wait_for_ready)` returns a `wire.stubs.ResponseStream[Response]` (imported, not
    copied into the module). Use it as
    `async with stub.ServerStream(request) as responses: async for r in responses`,
    or iterate it directly: `async for r in stub.ServerStream(request)`. Iterated
    directly it holds no cancel scope between steps, so breaking out of the loop is
    safe under trio; the call is cancelled when the object is dropped or `aclose()`d.
    It also has `initial_metadata()`, `trailing_metadata`, `code`, `details`,
    `last_message_compressed`, `cancel()`.
  - client-streaming and bidi: `stub.Bidi(*, timeout, metadata, compression,
    wait_for_ready)` returns an async context manager of a typed
    `wire.client.ClientCall[Request, Response]`: `send_message`, `done_writing`,
    `receive_message` (None at the end of an OK stream), `async for`,
    `initial_metadata()`, `trailing_metadata`, `cancel()`. The deadline covers the
    block (`ClientConn.open_stream`).
* `class EchoServicer`, one method per rpc answering UNIMPLEMENTED, in the handler
  shapes of `wire.server`: unary `async def Unary(self, request, call) -> Response`;
  client-streaming `async def ClientStream(self, call) -> Response` reading
  `async for request in call`; server-streaming `ServerStream(self, request, call)`
  and bidi `Bidi(self, call)` are declared to return
  `Awaitable[None] | AsyncIterator[Response]`, so an override may be an `async def`
  that sends with `await call.send_message(...)` or an async generator that yields.
* `def add_EchoServicer_to_server(servicer, server)`: registers every rpc at its
  full path with the messages' serializers.
* `SERVICE_NAME` on the stub and servicer classes: the service's full name.

Generated modules import only `wire`, the standard library and their `_pb2` modules,
and pass `mypy --strict` together with the `.pyi` files of those.
An rpc named after a Python keyword gets a trailing underscore (`import_`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from google.protobuf.compiler import plugin_pb2

from proto.plugin.stub_module import index_message_types, render_stub_module, stub_file_name

__all__ = ["generate", "main", "parse_options"]


def parse_options(parameter: str) -> dict[str, str]:
    """Read `module=PKG=NEWPKG` options (comma-separated, as protoc joins them)."""
    module_map: dict[str, str] = {}
    for option in filter(None, (part.strip() for part in parameter.split(","))):
        key, _, value = option.partition("=")
        old, _, new = value.partition("=")
        if key != "module" or not old or not new:
            raise ValueError(f"unknown protoc-gen-cryo option {option!r} (expected module=A=B)")
        module_map[old] = new
    return module_map


def generate(
    request: plugin_pb2.CodeGeneratorRequest,
) -> plugin_pb2.CodeGeneratorResponse:
    """Answer one protoc request: a stub module for each file to generate that has services."""
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    try:
        module_map: Mapping[str, str] = parse_options(request.parameter)
        types = index_message_types(request.proto_file, module_map)
        files = {file.name: file for file in request.proto_file}
        for name in request.file_to_generate:
            source = render_stub_module(files[name], types)
            if source is not None:
                response.file.add(name=stub_file_name(name), content=source)
    except ValueError as exc:
        # protoc shows this text as the plugin's error, next to the file name.
        response.error = str(exc)
    return response


def main() -> int:
    """The `protoc-gen-cryo` executable: request on stdin, response on stdout."""
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = generate(request)
    sys.stdout.buffer.write(response.SerializeToString())
    sys.stdout.buffer.flush()
    return 0
