"""Generated stubs under `mypy --strict`: they pass, and they catch a user's type errors.

One mypy run checks the fixture's `relay_cryo`, a module that uses it the right way,
a module that uses it wrongly, and every `_cryo.py` under `proto/` with the services
built on them. protoc's own `.pyi` output is not held to `--strict` (it writes bare
`Mapping`), so those modules are exempt; everything cryo generates or writes is not.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

GOOD_USER = """
from __future__ import annotations

from collections.abc import AsyncIterator

from cryofixture import common_pb2, relay_cryo, relay_pb2
from wire.client import ClientConn
from wire.server import Server, ServerCall
from wire.stubs import ResponseStream


class Relay(relay_cryo.RelayServicer):
    async def Shout(self, request: common_pb2.Note, call: ServerCall) -> common_pb2.Note:
        return common_pb2.Note(text=request.text.upper())

    async def Count(
        self, request: common_pb2.Note, call: ServerCall
    ) -> AsyncIterator[common_pb2.Note]:
        for number in range(request.number):
            yield common_pb2.Note(number=number)

    async def Join(self, call: ServerCall) -> relay_pb2.Envelope.Sealed:
        texts = [note.text async for note in call]
        return relay_pb2.Envelope.Sealed(text="".join(texts), count=len(texts))

    async def Echo(self, call: ServerCall) -> None:
        async for note in call:
            await call.send_message(note)


def serve(server: Server) -> None:
    relay_cryo.add_RelayServicer_to_server(Relay(), server)


async def use(conn: ClientConn) -> list[int]:
    stub = relay_cryo.RelayStub(conn)
    loud: common_pb2.Note = await stub.Shout(common_pb2.Note(text="hi"), timeout=1.0)
    numbers = [note.number async for note in stub.Count(common_pb2.Note(number=3))]
    counted: ResponseStream[common_pb2.Note] = stub.Count(common_pb2.Note(number=1))
    numbers += [note.number async for note in counted]
    async with stub.Count(common_pb2.Note(number=3)) as responses:
        async for note in responses:
            numbers.append(note.number)
    async with stub.Join(timeout=2.0) as call:
        await call.send_message(common_pb2.Note(text=loud.text))
        await call.done_writing()
        sealed = await call.receive_message()
        if sealed is not None:
            numbers.append(sealed.count)
    async with stub.Echo() as bidi:
        await bidi.send_message(common_pb2.Note(number=7))
        async for back in bidi:
            numbers.append(back.number)
    return numbers
"""

# Each line marked `# error` must be reported, and nothing else in the file.
BAD_USER = """
from __future__ import annotations

from cryofixture import common_pb2, relay_cryo, relay_pb2
from wire.client import ClientConn
from wire.server import ServerCall
from wire.stubs import ResponseStream


class Wrong(relay_cryo.RelayServicer):
    async def Shout(self, request: common_pb2.Note, call: ServerCall) -> str:  # error
        return "not a Note"


async def use(conn: ClientConn) -> str:
    stub = relay_cryo.RelayStub(conn)
    await stub.Shout(relay_pb2.Envelope.Sealed())  # error
    reply = await stub.Shout(common_pb2.Note(), timeout="soon")  # error
    async with stub.Join() as call:
        await call.send_message(relay_pb2.Envelope.Sealed())  # error
    async for note in stub.Count(common_pb2.Note()):
        print(note.nonexistent)  # error
    sealed: ResponseStream[relay_pb2.Envelope.Sealed] = stub.Count(common_pb2.Note())  # error
    return reply.number  # error
"""


@pytest.mark.slow
def test_generated_stubs_pass_mypy_strict_and_catch_misuse(
    generated_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "good_user.py").write_text(GOOD_USER)
    (tmp_path / "bad_user.py").write_text(BAD_USER)
    stub_modules = sorted(
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        for path in (REPO_ROOT / "proto").rglob("*_cryo.py")
    )
    repo_modules = [*stub_modules, "proto.health_service", "proto.reflection_service"]
    exempt = sorted(
        ".".join(path.relative_to(root).with_suffix("").parts)
        for root in (REPO_ROOT, generated_dir)
        for path in (root / ("proto" if root == REPO_ROOT else "cryofixture")).rglob("*_pb2.pyi")
    )
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\nstrict = True\nexplicit_package_bases = True\n"
        f"[mypy-{','.join(exempt)}]\nignore_errors = True\n"
        "[mypy-grpc.*,grpc_tools.*]\nignore_missing_imports = True\n"
    )
    modules = ["cryofixture.relay_cryo", "good_user", "bad_user", *repo_modules]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(config),
            "--cache-dir",
            str(tmp_path / "cache"),
            *[arg for module in modules for arg in ("-m", module)],
        ],
        cwd=tmp_path,
        env={"MYPYPATH": f"{REPO_ROOT}:{generated_dir}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    reported = {
        (match["file"], int(match["line"]))
        for match in re.finditer(r"^(?P<file>[\w./-]+):(?P<line>\d+): error", result.stdout, re.M)
    }
    expected = {
        ("bad_user.py", number)
        for number, line in enumerate(BAD_USER.splitlines(), start=1)
        if line.endswith("# error")
    }
    assert reported == expected, result.stdout + result.stderr
