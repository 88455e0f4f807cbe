"""`cryo trace`, `cryo demo` and `CRYO_TRACE`, run as a user runs them: as processes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import trio

from proto.types import api_pb2
from wire.server import Server, ServerCall, unary_unary
from wire.status import StatusCode
from wire.trace_env import child_destination, format_for

REPO = Path(__file__).resolve().parents[2]


async def cryo(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    environ = dict(os.environ, PYTHONPATH=str(REPO), NO_COLOR="1")
    environ.pop("CRYO_TRACE", None)
    environ.update(env or {})
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-m", "daemon", *args],
            cwd=REPO,
            env=environ,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def load(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_trace_default_call_shows_both_sides_of_create_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "trace.jsonl"
    code, stdout, stderr = await cryo("trace", "--format", "jsonl", "-o", str(out))
    assert code == 0, stderr
    assert stdout == ""
    events = load(out.read_text())
    assert {e["side"] for e in events} == {"client", "server"}
    headers = [e for e in events if e["name"] == "HEADERS" and e["side"] == "client"]
    assert [":path", "/types.API/CreateCheckpoint"] in headers[0]["attrs"]["headers"]  # type: ignore[index]
    root = next(e for e in events if e["name"] == "ClientConn.invoke" and e["phase"] == "end")
    assert root["attrs"] == {"status": "OK"}
    assert "response: {}" in stderr


async def test_demo_runs_docker_checkpoint_through_the_daemon_showing_the_call() -> None:
    code, stdout, stderr = await cryo("demo")
    assert code == 0, stderr
    for command in (
        "$ docker run -d --name counter busybox",
        "$ docker checkpoint create counter cp1",
        "$ docker checkpoint ls counter",
        "$ docker start --checkpoint cp1 counter",
        "$ docker checkpoint rm counter cp1",
    ):
        assert command in stdout
    assert "Exited (137)" in stdout
    assert "HTTP POST /v1.41/containers/counter/checkpoints → 201" in stdout
    assert "HTTP POST /v1.41/containers/counter/start?checkpoint=cp1 → 204" in stdout
    assert "(no gap, no repeat)" in stdout
    assert "/types.API/CreateCheckpoint: OK" in stdout
    assert "▶ ClientConn.invoke /types.API/CreateCheckpoint" in stdout
    assert ":path: /types.API/CreateCheckpoint" in stdout
    # The runtime traced its side into a file of its own: one call, both ends.
    assert "[client + server]" in stdout
    assert "▶ run_call /types.API/CreateCheckpoint" in stdout and "▶ handler" in stdout
    assert "demo finished" in stdout and "\x1b[" not in stdout


async def test_direct_demo_checkpoints_and_restores_a_counter_showing_the_call() -> None:
    code, stdout, stderr = await cryo("demo", "--direct")
    assert code == 0, stderr
    assert "runtime started" in stdout
    assert "/types.API/CreateCheckpoint: OK" in stdout
    for step in ("▶ new_stream", "▶ write", "▶ recv_response", "grpc-go recvResponse"):
        assert step in stdout
    assert "ListCheckpoint: ['cp1']" in stdout
    assert "(no gap, no repeat)" in stdout
    assert "demo finished" in stdout and "\x1b[" not in stdout


async def test_demo_with_a_runc_container() -> None:
    code, stdout, stderr = await cryo("demo", "--direct", "--kind", "runc")
    assert code == 0, stderr
    assert "container 'demo' (runc) created" in stdout
    assert "(no gap, no repeat)" in stdout


async def test_trace_any_method_on_any_target_with_a_json_request(tmp_path: Path) -> None:
    seen: list[api_pb2.CreateCheckpointRequest] = []

    async def create(request: api_pb2.CreateCheckpointRequest, call: ServerCall) -> object:
        seen.append(request)
        call.abort(StatusCode.NOT_FOUND, f"no such container: {request.id}")

    server = Server()
    server.add_method(
        "/types.API/CreateCheckpoint",
        unary_unary(
            create,
            api_pb2.CreateCheckpointRequest.FromString,
            api_pb2.CreateCheckpointResponse.SerializeToString,
        ),
    )
    page = tmp_path / "trace.html"
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve_tcp, 0)
        request = json.dumps({"id": "web", "checkpoint": {"name": "c1", "tcp": True}})
        code, _, stderr = await cryo(
            "trace",
            "--target",
            f"127.0.0.1:{port}",
            "--method",
            "/types.API/CreateCheckpoint",
            "--request",
            request,
            "--format",
            "html",
            "-o",
            str(page),
        )
        await server.shutdown(1)
    assert code == 1
    assert "call failed: NOT_FOUND: no such container: web" in stderr
    assert seen[0].id == "web" and seen[0].checkpoint.name == "c1" and seen[0].checkpoint.tcp
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "NOT_FOUND" in html
    assert "peer (not traced)" in html or '"peer"' in html  # only the client side was traced


async def test_trace_refuses_unknown_methods_and_bad_requests() -> None:
    code, _, stderr = await cryo("trace", "--method", "/no.Such/Method")
    assert code == 2 and "no method /no.Such/Method" in stderr
    code, _, stderr = await cryo(
        "trace", "--method", "/types.API/CreateCheckpoint", "--request", '{"nope": 1}'
    )
    assert code == 2 and "does not fit types.CreateCheckpointRequest" in stderr


async def test_cryo_trace_env_traces_any_command(tmp_path: Path) -> None:
    out = tmp_path / "everything.jsonl"
    code, _, stderr = await cryo("demo", "--direct", env={"CRYO_TRACE": str(out)})
    assert code == 0, stderr
    events = load(out.read_text())
    assert any(e["name"] == "recv_response" for e in events)
    code, _, stderr = await cryo("demo", env={"CRYO_TRACE": "-"})  # the daemon's calls too
    assert code == 0
    assert "▶ ClientConn.invoke /types.API/CreateCheckpoint" in stderr


async def test_a_saved_trace_renders_again(tmp_path: Path) -> None:
    saved = tmp_path / "t.jsonl"
    code, _, stderr = await cryo("trace", "--format", "jsonl", "-o", str(saved))
    assert code == 0, stderr
    code, stdout, stderr = await cryo("trace", "--input", str(saved))
    assert code == 0, stderr
    assert "/types.API/CreateCheckpoint: OK" in stdout.splitlines()[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"v": 99}\n')
    code, _, stderr = await cryo("trace", "--input", str(bad))
    assert code == 2 and "version" in stderr


def test_a_child_program_traces_into_a_file_of_its_own() -> None:
    assert child_destination("/tmp/t.jsonl", "runtime") == "/tmp/t.runtime.jsonl"
    assert child_destination("call.html", "runtime") == "call.runtime.html"
    assert child_destination("-", "runtime") == "-"
    assert [format_for(d) for d in ("a.html", "a.htm", "a.txt", "a.jsonl", "a")] == [
        "html",
        "html",
        "terminal",
        "jsonl",
        "jsonl",
    ]
