"""Renderers of a real trace: JSON lines that round-trip, the terminal walk-through, and
the HTML sequence diagram (checked in headless Chromium when it is installed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from wire.client import ClientConn
from wire.metadata import Metadata
from wire.server import Server, ServerCall, unary_unary
from wire.trace import SCHEMA_VERSION, TraceCollector, TraceEvent
from wire.tracing import (
    TraceFormatError,
    read_json_lines,
    render_html,
    render_terminal,
    to_json_lines,
)
from wire.tracing.html import build_layout
from wire.tracing.jsonl import KEYS
from wire.tracing.model import TraceView

REPO = Path(__file__).resolve().parents[2]
HOSTILE = "</script><script>document.title='owned'</script>"


async def echo(request: bytes, call: ServerCall) -> bytes:
    return request


async def traced_echo_call(metadata: Metadata | None = None) -> list[TraceEvent]:
    sink = TraceCollector()
    server = Server(tracer=sink)
    server.add_method("/t.Svc/Echo", unary_unary(echo))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve_tcp, 0)
        async with ClientConn(f"127.0.0.1:{port}", tracer=sink) as conn:
            await conn.invoke("/t.Svc/Echo", b"hello", timeout=5, metadata=metadata)
        await server.shutdown(1)
    return sink.events


async def test_json_lines_round_trip_with_the_documented_keys() -> None:
    events = await traced_echo_call()
    text = to_json_lines(events)
    lines = text.splitlines()
    assert len(lines) == len(events)
    for line in lines:
        data = json.loads(line)
        assert tuple(data) == KEYS
        assert data["v"] == SCHEMA_VERSION
    assert list(read_json_lines(text.splitlines())) == events


def test_json_lines_from_another_schema_version_are_refused() -> None:
    line = json.dumps({"v": SCHEMA_VERSION + 1, "t_ns": 1, "side": "client"})
    with pytest.raises(TraceFormatError, match="version"):
        list(read_json_lines([line]))
    with pytest.raises(TraceFormatError, match="line 2"):
        list(read_json_lines(["", "not json"]))


async def test_terminal_timeline_reads_as_an_annotated_walk_through() -> None:
    events = await traced_echo_call()
    text = render_terminal(events)
    assert "\x1b[" not in text
    assert text.startswith("call call")
    assert "/t.Svc/Echo: OK" in text.splitlines()[0]
    for grpc_go in (
        "ClientConn.Invoke",
        "sendRequest",
        "http2Client.NewStream",
        "encode",
        "http2Client.Write",
        "recvResponse",
        "Server.handleStream",
        "Server.processUnaryRPC",
        "http2Server.WriteStatus",
    ):
        assert f"grpc-go {grpc_go} " in text
    assert "wire/client.py:send_request" in text
    lines = text.splitlines()

    def indent_of(marker: str) -> int:
        return next(line for line in lines if marker in line).index(marker)

    assert indent_of("▶ new_stream") > indent_of("▶ send_request") > indent_of("▶ invoke")
    assert any(line.strip() == ":path: /t.Svc/Echo" for line in lines)
    assert any("→ DATA stream 1 [END_STREAM]" in line and "send window" in line for line in lines)
    assert "\x1b[" in render_terminal(events, color=True)
    quiet = render_terminal(events, connection_frames=False, details=False)
    assert "SETTINGS" not in quiet and ":path:" not in quiet


async def test_html_page_is_self_contained_and_cannot_be_broken_by_header_values() -> None:
    events = await traced_echo_call(Metadata({"x-note": HOSTILE}))
    page = render_html(events)
    assert page.count("</script>") == 2  # the data block and the drawing script
    external = re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)
    assert external == []
    layout = build_layout(TraceView(events))
    assert layout["lanes"] == ["client", "server"]
    arrows = [item for item in layout["items"] if item["type"] == "arrow"]
    # Every frame is one arrow: the received copy lands on the sent one's arrow.
    sent = [e for e in events if e.kind == "frame" and e.phase == "out"]
    assert len(arrows) == len(sent)
    assert all(item["row1"] >= item["row0"] for item in arrows)


def test_the_renderers_do_not_import_trio() -> None:
    script = (
        "import sys, wire.tracing, wire.tracing.html, wire.tracing.terminal\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'trio'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="Debian's chromium is not installed (scripts/setup-system.sh installs it; CI must)",
)
async def test_html_diagram_renders_in_headless_chromium(tmp_path: Path) -> None:
    events = await traced_echo_call(Metadata({"x-note": HOSTILE}))
    layout = build_layout(TraceView(events))
    items = layout["items"]
    headers_arrow = next(
        i
        for i, item in enumerate(items)
        if item["type"] == "arrow"
        and item["label"].startswith("HEADERS s1")
        and item["lane"] == "client"
    )
    page = tmp_path / "trace.html"
    page.write_text(render_html(events), encoding="utf-8")
    assert CHROMIUM is not None
    result = await trio.run_process(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=3000",
            "--dump-dom",
            f"{page.as_uri()}#item={headers_arrow}",
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    dom = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")[-2000:]
    assert f'data-rendered="{len(items)}"' in dom, "the drawing script did not run to its end"
    arrows = sum(1 for item in items if item["type"] == "arrow")
    assert len(re.findall(r'class="item arrow', dom)) == arrows
    # The frame chosen in the URL is selected and its headers are shown, as text.
    details = dom.split('id="details"')[1]
    assert ":path" in details and "/t.Svc/Echo" in details
    assert "&lt;/script&gt;" in details  # the hostile header value, shown and not run
    assert "<title>owned" not in dom
