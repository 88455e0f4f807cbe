"""Tracing real calls: the grpc-go steps on both sides, the frames they caused, message
framing, flow-control windows, deadlines, and one call id across client and server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h2.config
import h2.connection
import pytest
import trio

from wire.client import ClientConn
from wire.errors import RpcError
from wire.server import Server, ServerCall, stream_stream, unary_unary
from wire.status import StatusCode
from wire.trace import (
    CALL_ID_METADATA_KEY,
    CallTrace,
    FrameTracer,
    TraceCollector,
    TraceEvent,
    install_tracer,
)
from wire.tracing.terminal import render_terminal


async def echo(request: bytes, call: ServerCall) -> bytes:
    return request


async def sleepy(request: bytes, call: ServerCall) -> bytes:
    await trio.sleep(10)
    return request


async def chat(call: ServerCall) -> None:
    async for message in call:
        await call.send_message(message.upper())


def make_server(**kwargs: Any) -> Server:
    server = Server(**kwargs)
    server.add_service(
        "t.Svc",
        {"Echo": unary_unary(echo), "Sleepy": unary_unary(sleepy), "Chat": stream_stream(chat)},
    )
    return server


@asynccontextmanager
async def traced_pair(
    sink: TraceCollector, *, trace_server: bool = True, **client_kwargs: Any
) -> AsyncIterator[ClientConn]:
    server = make_server(tracer=sink if trace_server else None)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve_tcp, 0)
        async with ClientConn(f"127.0.0.1:{port}", tracer=sink, **client_kwargs) as conn:
            yield conn
        await server.shutdown(1)


def steps(events: list[TraceEvent], side: str, phase: str = "start") -> list[str]:
    return [e.name for e in events if e.kind == "step" and e.side == side and e.phase == phase]


def by_span(events: list[TraceEvent]) -> dict[int, TraceEvent]:
    return {e.span: e for e in events if e.kind == "step" and e.phase == "start" and e.span}


def frames(events: list[TraceEvent], side: str, phase: str, name: str) -> list[TraceEvent]:
    return [
        e
        for e in events
        if e.kind == "frame" and e.side == side and e.phase == phase and e.name == name
    ]


async def test_a_unary_call_walks_the_grpc_go_call_path_on_both_sides() -> None:
    sink = TraceCollector()
    async with traced_pair(sink) as conn:
        assert await conn.invoke("/t.Svc/Echo", b"hello", timeout=5) == b"hello"
    events = sink.events
    assert steps(events, "client") == [
        "ClientConn.invoke",
        "invoke",
        "get_transport",
        "send_request",
        "new_stream",
        "encode",
        "write",
        "recv_response",
    ]
    starts = [e for e in events if e.kind == "step" and e.phase == "start" and e.side == "client"]
    assert [e.attrs["grpc_go"] for e in starts] == [
        "ClientConn.Invoke",
        "invoke",
        "ClientConn.getTransport",
        "sendRequest",
        "http2Client.NewStream",
        "encode",
        "http2Client.Write",
        "recvResponse",
    ]
    server_steps = [
        e.name
        for e in events
        if e.kind == "step" and e.side == "server" and e.phase in ("start", "point")
    ]
    assert server_steps == [
        "handle_stream",
        "run_call",
        "receive_message",
        "handler",
        "send_message",
        "finish",
    ]
    # Every step says which function in wire/ performs it.
    assert all(str(e.attrs["func"]).startswith("wire/") for e in starts)
    # Steps nest: new_stream, encode and write sit under send_request.
    spans = by_span(events)
    send_request = next(e for e in starts if e.name == "send_request")
    for name in ("new_stream", "encode", "write"):
        step = next(e for e in starts if e.name == name)
        assert step.parent == send_request.span
    assert spans[send_request.parent or 0].name == "invoke"
    ends = {e.name: e for e in events if e.kind == "step" and e.phase == "end"}
    assert ends["ClientConn.invoke"].attrs["status"] == "OK"
    assert ends["run_call"].attrs["status"] == "OK"


async def test_client_and_server_events_share_one_call_id() -> None:
    sink = TraceCollector()
    async with traced_pair(sink) as conn:
        await conn.invoke("/t.Svc/Echo", b"x", timeout=5)
        await conn.invoke("/t.Svc/Echo", b"y", timeout=5)
    per_call = [e for e in sink.events if e.stream_id]
    call_ids = {e.call_id for e in per_call}
    assert len(call_ids) == 2 and None not in call_ids
    for call_id in call_ids:
        sides = {e.side for e in per_call if e.call_id == call_id}
        assert sides == {"client", "server"}
    # The server learnt the id from the request headers.
    headers = frames(sink.events, "server", "in", "HEADERS")[0]
    assert [CALL_ID_METADATA_KEY, headers.call_id] in headers.attrs["headers"]  # type: ignore[operator]


async def test_each_frame_belongs_to_the_step_that_caused_it() -> None:
    sink = TraceCollector()
    async with traced_pair(sink) as conn:
        await conn.invoke("/t.Svc/Echo", b"hello", timeout=5)
    spans = by_span(sink.events)

    def cause(event: TraceEvent) -> str | None:
        return spans[event.parent].name if event.parent in spans else None

    request_headers = frames(sink.events, "client", "out", "HEADERS")[0]
    request_data = frames(sink.events, "client", "out", "DATA")[0]
    assert cause(request_headers) == "new_stream"
    assert cause(request_data) == "write"
    assert "END_STREAM" in request_data.attrs["flags"]  # type: ignore[operator]
    response_headers, trailers = frames(sink.events, "server", "out", "HEADERS")
    assert cause(response_headers) == "send_message"
    assert cause(trailers) == "finish"
    assert [":status", "200"] in response_headers.attrs["headers"]  # type: ignore[operator]
    assert ["grpc-status", "0"] in trailers.attrs["headers"]  # type: ignore[operator]
    for frame in frames(sink.events, "client", "in", "HEADERS"):
        assert cause(frame) == "recv_response"


async def test_messages_show_their_prefix_and_both_sizes_when_compressed() -> None:
    sink = TraceCollector()
    payload = b"cryo " * 400
    async with traced_pair(sink, compression="gzip") as conn:
        assert await conn.invoke("/t.Svc/Echo", payload, timeout=5) == payload
    sent = next(
        e for e in sink.events if e.kind == "message" and e.side == "client" and e.phase == "out"
    )
    assert sent.attrs["compressed"] is True
    assert sent.attrs["uncompressed_length"] == len(payload)
    length = sent.attrs["length"]
    assert isinstance(length, int) and length < len(payload)
    assert sent.attrs["prefix"] == "01 " + length.to_bytes(4, "big").hex(" ")
    got = next(
        e for e in sink.events if e.kind == "message" and e.side == "server" and e.phase == "in"
    )
    assert (got.attrs["length"], got.attrs["uncompressed_length"]) == (length, len(payload))
    data = frames(sink.events, "client", "out", "DATA")[0]
    assert str(data.attrs["data_preview"]).startswith("01")


async def test_traced_windows_agree_with_h2_after_large_messages() -> None:
    sink = TraceCollector()
    payload = bytes(300_000)
    async with traced_pair(sink) as conn:
        assert await conn.invoke("/t.Svc/Echo", payload, timeout=5) == payload
        assert await conn.invoke("/t.Svc/Echo", payload, timeout=5) == payload
        await trio.sleep(0.05)  # let the writer drain any WINDOW_UPDATE
        transport = conn._transport
        assert transport is not None
        tracer = transport.connection.frame_tracer
        assert isinstance(tracer, FrameTracer)
        real = transport.connection._h2
        assert tracer.flow.send_connection == real.outbound_flow_control_window
        assert tracer.flow.receive_connection == real.inbound_flow_control_window
    data = frames(sink.events, "client", "out", "DATA")
    first = data[0].attrs["window"]
    assert isinstance(first, dict) and first["kind"] == "send"
    before, after = first["connection"]
    assert before - after == data[0].attrs["length"]


async def test_a_deadline_shows_as_the_status_and_a_reset_stream() -> None:
    sink = TraceCollector()
    async with traced_pair(sink) as conn:
        with pytest.raises(RpcError) as info:
            await conn.invoke("/t.Svc/Sleepy", b"x", timeout=0.2)
        assert info.value.code == StatusCode.DEADLINE_EXCEEDED
        await trio.sleep(0.1)
    ends = {(e.side, e.name): e for e in sink.events if e.kind == "step" and e.phase == "end"}
    assert ends[("client", "ClientConn.invoke")].attrs["status"] == "DEADLINE_EXCEEDED"
    new_stream = next(e for e in sink.events if e.name == "new_stream" and e.phase == "end")
    assert 0 < float(new_stream.attrs["timeout"]) <= 0.2  # type: ignore[arg-type]
    resets = frames(sink.events, "client", "out", "RST_STREAM")
    assert [r.attrs["error_code"] for r in resets] == ["CANCEL"]
    assert ends[("server", "run_call")].attrs["status"] in ("CANCELLED", "DEADLINE_EXCEEDED")


async def test_an_unknown_method_is_traced_to_its_unimplemented_status() -> None:
    sink = TraceCollector()
    async with traced_pair(sink) as conn:
        with pytest.raises(RpcError):
            await conn.invoke("/t.Svc/Nope", b"x", timeout=5)
    handle = next(e for e in sink.events if e.name == "handle_stream")
    assert handle.attrs["found"] is False
    finish = next(e for e in sink.events if e.name == "finish" and e.phase == "start")
    assert finish.attrs["status"] == "UNIMPLEMENTED"
    client_end = next(
        e
        for e in sink.events
        if e.side == "client" and e.name == "ClientConn.invoke" and e.phase == "end"
    )
    assert client_end.attrs["status"] == "UNIMPLEMENTED"


async def test_a_streaming_call_traces_each_message_both_ways() -> None:
    sink = TraceCollector()
    async with traced_pair(sink) as conn, conn.open_stream("/t.Svc/Chat", timeout=5) as call:
        for word in (b"a", b"b", b"c"):
            await call.send_message(word)
        await call.done_writing()
        assert [m async for m in call] == [b"A", b"B", b"C"]
    client = steps(sink.events, "client")
    assert client.count("send_message") == 3
    assert client.count("encode") == 3 and client.count("write") == 3
    assert "done_writing" in client
    received = [e for e in sink.events if e.name == "receive_message" and e.phase == "point"]
    assert len([e for e in received if e.side == "client"]) == 3
    assert len([e for e in received if e.side == "server"]) == 3
    root = next(e for e in sink.events if e.name == "ClientConn.open_stream" and e.phase == "end")
    assert root.attrs["status"] == "OK"
    assert {e.call_id for e in sink.events if e.stream_id} == {root.call_id}


async def test_without_a_tracer_nothing_is_emitted_and_an_installed_one_is_used() -> None:
    sink = TraceCollector()
    server = make_server()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve_tcp, 0)
        async with ClientConn(f"127.0.0.1:{port}") as conn:
            await conn.invoke("/t.Svc/Echo", b"x", timeout=5)
        install_tracer(sink)
        try:
            async with ClientConn(f"127.0.0.1:{port}") as conn:
                await conn.invoke("/t.Svc/Echo", b"x", timeout=5)
        finally:
            install_tracer(None)
        await server.shutdown(1)
    assert sink.events, "the installed tracer saw nothing"
    assert {e.side for e in sink.events} == {"client"}
    assert len([e for e in sink.events if e.name == "ClientConn.invoke"]) == 2  # start, end


def _h2_bytes(header_value_size: int) -> bytes:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(
        1,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/t.Svc/Echo"),
            (":authority", "x"),
            ("x-big", "v" * header_value_size),
        ],
    )
    conn.send_data(1, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    return conn.data_to_send()


def test_frames_are_described_whatever_the_chunking_and_across_continuations() -> None:
    data = _h2_bytes(40_000)  # more than one frame: HEADERS + CONTINUATION
    whole = TraceCollector()
    FrameTracer(whole, "client").frames_out(data)
    bytewise = TraceCollector()
    tracer = FrameTracer(bytewise, "client")
    for i in range(len(data)):
        tracer.frames_out(data[i : i + 1])
    names = [e.name for e in whole.events]
    assert names == ["PREFACE", "SETTINGS", "WINDOW_UPDATE", "HEADERS", "DATA"] or names == [
        "PREFACE",
        "SETTINGS",
        "HEADERS",
        "DATA",
    ]
    assert [(e.name, e.attrs) for e in bytewise.events] == [(e.name, e.attrs) for e in whole.events]
    headers = next(e for e in whole.events if e.name == "HEADERS")
    assert headers.attrs["continuations"] >= 2  # type: ignore[operator]
    assert ["x-big", "v" * 40_000] in headers.attrs["headers"]  # type: ignore[operator]


def test_a_reply_that_arrives_during_write_belongs_to_the_receiving_step() -> None:
    # Scheduling decides whether the response beats the end of `write`; the trace must
    # not: inbound frames belong to the step that takes them off the stream.
    sink = TraceCollector()
    call = CallTrace(sink, "client", method="/t.Svc/Echo")
    root = call.start("invoke")
    send = call.start("send_request")
    write = call.start("write")
    early = TraceEvent(1, "client", "frame", "HEADERS", "in", stream_id=1)
    call.inbound(early)
    assert not any(e.kind == "frame" for e in sink.events)  # held: nobody took it yet
    call.end(write)
    call.end(send)
    recv = call.start("recv_response")
    late = TraceEvent(2, "client", "frame", "DATA", "in", stream_id=1)
    call.inbound(late)
    call.end(recv)
    call.end(root)
    got = [e for e in sink.events if e.kind == "frame"]
    assert [(e.name, e.parent, e.t_ns) for e in got] == [("HEADERS", recv, 1), ("DATA", recv, 2)]
    assert got[0].attrs["arrived_during"] == "write"
    assert "arrived_during" not in got[1].attrs


def test_inbound_events_no_step_took_are_emitted_when_the_call_ends() -> None:
    sink = TraceCollector()
    call = CallTrace(sink, "client")
    root = call.start("ClientConn.open_stream")
    call.start("send_message", detached=True)
    call.inbound(TraceEvent(1, "client", "frame", "HEADERS", "in", stream_id=3))
    call.end(root, status="CANCELLED")
    frame = next(e for e in sink.events if e.kind == "frame")
    assert frame.parent == root and frame.attrs["arrived_during"] == "send_message"
    # …before the call's last event, so a reader of the stream sees it inside the call.
    assert sink.events[-1].kind == "step" and sink.events[-1].phase == "end"
    assert sink.events[-1].span == root


def test_a_server_takes_inbound_events_under_the_step_open_now() -> None:
    sink = TraceCollector()
    call = CallTrace(sink, "server")
    root = call.start("run_call")
    call.inbound(TraceEvent(1, "server", "frame", "DATA", "in", stream_id=1))
    assert sink.events[-1].kind == "frame" and sink.events[-1].parent == root
    call.end(root)


def test_the_timeline_says_when_a_frame_arrived_before_its_step() -> None:
    sink = TraceCollector()
    call = CallTrace(sink, "client", method="/t.Svc/Echo")
    root = call.start("invoke")
    write = call.start("write")
    call.inbound(TraceEvent(time.monotonic_ns(), "client", "frame", "HEADERS", "in", stream_id=1))
    call.end(write)
    recv = call.start("recv_response")
    call.end(recv)
    call.end(root)
    text = render_terminal(sink.events)
    line = next(li for li in text.splitlines() if "← HEADERS" in li)
    assert "(arrived during write)" in line
