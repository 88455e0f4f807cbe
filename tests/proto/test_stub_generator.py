"""Generated stubs end to end: a cryo server and client speaking through `relay_cryo`.

`cryofixture/relay.proto` has one rpc of each cardinality; the conftest compiles it
with protoc-gen-cryo. Each test runs a real `wire.Server` on loopback and calls it
through the generated `RelayStub`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio
from google.protobuf import empty_pb2

from wire.client import ClientConn
from wire.errors import RpcError
from wire.metadata import Metadata
from wire.server import Server
from wire.status import StatusCode
from wire.stubs import ResponseStream

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Seen:
    """What the servicer observed, for the tests to assert on."""

    metadata: list[Metadata] = field(default_factory=list)
    encodings: list[str | None] = field(default_factory=list)
    count_stopped: trio.Event = field(default_factory=trio.Event)
    count_finished_all: bool = False


def make_relay(
    relay_cryo: ModuleType,
    common_pb2: ModuleType,
    relay_pb2: ModuleType,
    seen: Seen,
    *,
    generators: bool,
) -> Any:
    """A Relay servicer; `generators` picks which streaming style each rpc uses."""

    class Relay(relay_cryo.RelayServicer):  # type: ignore[name-defined,misc]
        async def Shout(self, request: Any, call: Any) -> Any:
            seen.metadata.append(call.invocation_metadata)
            seen.encodings.append(call.request_encoding)
            await call.send_initial_metadata(Metadata({"loudness": "high"}))
            call.set_trailing_metadata(Metadata({"shouted": request.text}))
            return common_pb2.Note(text=request.text.upper(), number=request.number)

        async def Join(self, call: Any) -> Any:
            texts = [note.text async for note in call]
            return relay_pb2.Envelope.Sealed(text="+".join(texts), count=len(texts))

        async def import_(self, request: Any, call: Any) -> Any:
            return empty_pb2.Empty()

    if generators:

        async def count(self: Any, request: Any, call: Any) -> Any:
            try:
                for number in range(1, request.number + 1):
                    yield common_pb2.Note(number=number)
                    if request.text == "then hang":
                        await trio.sleep_forever()
                seen.count_finished_all = True
            finally:
                seen.count_stopped.set()

        async def echo(self: Any, call: Any) -> None:
            async for note in call:
                await call.send_message(common_pb2.Note(text=note.text, number=note.number))

    else:

        async def count(self: Any, request: Any, call: Any) -> None:  # type: ignore[misc]
            for number in range(1, request.number + 1):
                await call.send_message(common_pb2.Note(number=number))
            seen.count_stopped.set()

        async def echo(self: Any, call: Any) -> Any:  # type: ignore[misc]
            async for note in call:
                yield common_pb2.Note(text=note.text, number=note.number)

    Relay.Count = count
    Relay.Echo = echo
    return Relay()


@pytest.fixture
def seen() -> Seen:
    return Seen()


async def start(nursery: trio.Nursery, register: Any) -> str:
    server = Server()
    register(server)
    port = await nursery.start(server.serve_tcp, 0)
    return f"127.0.0.1:{port}"


@pytest.fixture
async def target(
    nursery: trio.Nursery,
    relay_cryo: ModuleType,
    common_pb2: ModuleType,
    relay_pb2: ModuleType,
    seen: Seen,
) -> str:
    servicer = make_relay(relay_cryo, common_pb2, relay_pb2, seen, generators=True)
    return await start(nursery, lambda s: relay_cryo.add_RelayServicer_to_server(servicer, s))


async def test_unary_call_carries_metadata_compression_and_returns_headers(
    target: str, relay_cryo: ModuleType, common_pb2: ModuleType, seen: Seen
) -> None:
    header, trailer = Metadata(), Metadata()
    async with ClientConn(target) as conn:
        stub = relay_cryo.RelayStub(conn)
        reply = await stub.Shout(
            common_pb2.Note(text="hello", number=7),
            timeout=5,
            metadata=Metadata({"who": "tester"}),
            compression="gzip",
            header=header,
            trailer=trailer,
        )
    assert (reply.text, reply.number) == ("HELLO", 7)
    assert seen.metadata[0].get("who") == "tester"
    assert seen.encodings == ["gzip"]
    assert header.get("loudness") == "high"
    assert trailer.get("shouted") == "hello"


@pytest.mark.parametrize("generators", [True, False], ids=["async-generators", "send_message"])
async def test_all_four_cardinalities(
    nursery: trio.Nursery,
    relay_cryo: ModuleType,
    common_pb2: ModuleType,
    relay_pb2: ModuleType,
    seen: Seen,
    generators: bool,
) -> None:
    servicer = make_relay(relay_cryo, common_pb2, relay_pb2, seen, generators=generators)
    target = await start(nursery, lambda s: relay_cryo.add_RelayServicer_to_server(servicer, s))
    async with ClientConn(target) as conn:
        stub = relay_cryo.RelayStub(conn)

        loud = await stub.Shout(common_pb2.Note(text="a"))
        assert loud.text == "A"

        directly = [note.number async for note in stub.Count(common_pb2.Note(number=4))]
        assert directly == [1, 2, 3, 4]
        async with stub.Count(common_pb2.Note(number=3)) as responses:
            in_block = [note.number async for note in responses]
        assert in_block == [1, 2, 3]
        assert responses.code == StatusCode.OK

        async with stub.Join() as call:
            for text in ("x", "y", "z"):
                await call.send_message(common_pb2.Note(text=text))
            await call.done_writing()
            sealed = await call.receive_message()
        assert isinstance(sealed, relay_pb2.Envelope.Sealed)
        assert (sealed.text, sealed.count) == ("x+y+z", 3)

        async with stub.Echo() as bidi:
            echoed = []
            for number in range(3):  # one at a time: each answer comes before the next ask
                await bidi.send_message(common_pb2.Note(number=number))
                answer = await bidi.receive_message()
                echoed.append(answer.number)
            await bidi.done_writing()
            assert await bidi.receive_message() is None
        assert echoed == [0, 1, 2]


async def test_unoverridden_rpcs_answer_unimplemented(
    nursery: trio.Nursery, relay_cryo: ModuleType, common_pb2: ModuleType
) -> None:
    target = await start(
        nursery, lambda s: relay_cryo.add_RelayServicer_to_server(relay_cryo.RelayServicer(), s)
    )
    async with ClientConn(target) as conn:
        stub = relay_cryo.RelayStub(conn)
        errors: list[RpcError] = []
        with pytest.raises(RpcError) as unary:
            await stub.Shout(common_pb2.Note())
        errors.append(unary.value)
        with pytest.raises(RpcError) as server_streaming:
            async for _ in stub.Count(common_pb2.Note(number=1)):
                pass
        errors.append(server_streaming.value)
        with pytest.raises(RpcError) as client_streaming:
            async with stub.Join() as call:
                await call.done_writing()
                await call.receive_message()
        errors.append(client_streaming.value)
        with pytest.raises(RpcError) as bidi:
            async with stub.Echo() as call:
                await call.receive_message()
        errors.append(bidi.value)
    assert [(e.code, e.message) for e in errors] == [
        (StatusCode.UNIMPLEMENTED, "Method not implemented!")
    ] * 4


async def test_leaving_a_directly_iterated_stream_early_cancels_the_call(
    target: str, relay_cryo: ModuleType, common_pb2: ModuleType, seen: Seen
) -> None:
    async with ClientConn(target) as conn:
        stub = relay_cryo.RelayStub(conn)
        # A cancel scope around the loop: were the stream holding one of its own across
        # steps, leaving this block after the `break` would corrupt trio's scope stack.
        with trio.fail_after(5):
            async for note in stub.Count(common_pb2.Note(number=1_000_000)):
                if note.number == 3:
                    break
        with trio.fail_after(5):
            await seen.count_stopped.wait()
        assert not seen.count_finished_all, "the server went on sending to an abandoned stream"
        # The connection is still good for other calls.
        assert (await stub.Shout(common_pb2.Note(text="after"))).text == "AFTER"


async def test_aclose_stops_a_directly_iterated_stream(
    target: str, relay_cryo: ModuleType, common_pb2: ModuleType, seen: Seen
) -> None:
    async with ClientConn(target) as conn:
        stub = relay_cryo.RelayStub(conn)
        responses = stub.Count(common_pb2.Note(number=1_000_000))
        assert (await responses.__anext__()).number == 1
        await responses.aclose()
        with trio.fail_after(5):
            await seen.count_stopped.wait()
        assert not seen.count_finished_all
        with pytest.raises(StopAsyncIteration):
            await responses.__anext__()


@pytest.mark.parametrize("as_block", [False, True], ids=["directly", "block"])
async def test_server_streaming_deadline(
    target: str, relay_cryo: ModuleType, common_pb2: ModuleType, seen: Seen, as_block: bool
) -> None:
    async with ClientConn(target) as conn:
        stub = relay_cryo.RelayStub(conn)
        received = []
        request = common_pb2.Note(number=5, text="then hang")
        with trio.fail_after(5), pytest.raises(RpcError) as caught:
            if as_block:
                async with stub.Count(request, timeout=0.3) as responses:
                    async for note in responses:
                        received.append(note.number)
            else:
                async for note in stub.Count(request, timeout=0.3):
                    received.append(note.number)
        assert caught.value.code == StatusCode.DEADLINE_EXCEEDED
        assert received == [1]
        with trio.fail_after(5):
            await seen.count_stopped.wait()


async def test_server_streaming_stubs_return_wires_one_response_stream(
    target: str, relay_cryo: ModuleType, common_pb2: ModuleType
) -> None:
    async with ClientConn(target) as conn:
        responses = relay_cryo.RelayStub(conn).Count(common_pb2.Note(number=2))
        assert isinstance(responses, ResponseStream)
        assert [note.number async for note in responses] == [1, 2]


def test_generated_modules_import_the_response_stream_instead_of_copying_it(
    generated_dir: Path,
) -> None:
    fixture = generated_dir / "cryofixture" / "relay_cryo.py"
    modules = [fixture, *sorted((REPO_ROOT / "proto").rglob("*_cryo.py"))]
    copies = [path.name for path in modules if "class ResponseStream" in path.read_text()]
    assert copies == []
    assert "from wire.stubs import ResponseStream" in modules[0].read_text()


async def test_response_stream_reports_metadata_and_status(
    nursery: trio.Nursery, relay_cryo: ModuleType, common_pb2: ModuleType
) -> None:
    class Announcing(relay_cryo.RelayServicer):  # type: ignore[name-defined,misc]
        async def Count(self, request: Any, call: Any) -> None:
            await call.send_initial_metadata(Metadata({"total": str(request.number)}))
            for number in range(request.number):
                await call.send_message(common_pb2.Note(number=number))
            call.set_trailing_metadata(Metadata({"done": "yes"}))

    target = await start(nursery, lambda s: relay_cryo.add_RelayServicer_to_server(Announcing(), s))
    async with ClientConn(target) as conn:
        responses = relay_cryo.RelayStub(conn).Count(common_pb2.Note(number=2))
        assert (await responses.initial_metadata()).get("total") == "2"
        assert [n.number async for n in responses] == [0, 1]
        assert responses.code == StatusCode.OK
        assert responses.trailing_metadata is not None
        assert responses.trailing_metadata.get("done") == "yes"


async def test_keyword_rpc_and_second_service(
    nursery: trio.Nursery, target: str, relay_cryo: ModuleType, generated_dir: Any
) -> None:
    blank_pb2 = importlib.import_module("cryofixture.empty_pb2")
    pinged = []

    class Quiet(relay_cryo.QuietServicer):  # type: ignore[name-defined,misc]
        async def Ping(self, request: Any, call: Any) -> Any:
            pinged.append(call.method)
            return empty_pb2.Empty()

    quiet_target = await start(
        nursery, lambda s: relay_cryo.add_QuietServicer_to_server(Quiet(), s)
    )
    async with ClientConn(target) as conn:
        # `rpc import` is `import_` in Python and keeps its name on the wire.
        assert await relay_cryo.RelayStub(conn).import_(empty_pb2.Empty()) == empty_pb2.Empty()
    async with ClientConn(quiet_target) as conn:
        await relay_cryo.QuietStub(conn).Ping(blank_pb2.Blank())
    assert pinged == ["/cryo.fixture.Quiet/Ping"]
    assert relay_cryo.RelayStub.SERVICE_NAME == "cryo.fixture.Relay"
    assert relay_cryo.QuietServicer.SERVICE_NAME == "cryo.fixture.Quiet"
