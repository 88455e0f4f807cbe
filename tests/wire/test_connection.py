"""The sans-I/O connection, client and server paired over a fake link (plain bytes)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wire import events as ev
from wire.connection import ConnectionConfig, GrpcConnection
from wire.metadata import Metadata
from wire.status import StatusCode, StatusDetails


class Link:
    """A client and a server connection joined by byte-shuffling, no I/O."""

    def __init__(
        self, client_cfg: ConnectionConfig | None = None, server_cfg: ConnectionConfig | None = None
    ) -> None:
        self.client = GrpcConnection(client_cfg or ConnectionConfig(client_side=True))
        self.server = GrpcConnection(server_cfg or ConnectionConfig(client_side=False))
        self.client.initiate()
        self.server.initiate()
        self.client_events: list[ev.Event] = []
        self.server_events: list[ev.Event] = []
        self.pump()

    def pump(self) -> None:
        for _ in range(10_000):
            c2s = self.client.data_to_send()
            s2c = self.server.data_to_send()
            if not c2s and not s2c:
                return
            if c2s:
                self.server_events += self.server.receive_data(c2s)
            if s2c:
                self.client_events += self.client.receive_data(s2c)
        raise AssertionError("link never went quiet")

    def take(self, side: str, kind: type[ev.Event]) -> list[ev.Event]:
        events = self.client_events if side == "client" else self.server_events
        found = [e for e in events if isinstance(e, kind)]
        for e in found:
            events.remove(e)
        return found


def test_unary_exchange_carries_metadata_message_and_status() -> None:
    link = Link()
    md = Metadata([("x-user", "ann"), ("trace-bin", b"\x00\x01")])
    sid = link.client.start_request("/pkg.Svc/Do", authority="h:1", timeout=2.5, metadata=md)
    link.client.send_message(sid, b"ping", end_stream=True)
    link.pump()
    (req,) = link.take("server", ev.RequestReceived)
    assert isinstance(req, ev.RequestReceived)
    assert req.method == "/pkg.Svc/Do"
    assert req.metadata.get("x-user") == "ann"
    assert req.metadata.get("trace-bin") == b"\x00\x01"
    assert req.timeout is not None and 2.4 < req.timeout <= 2.5
    (msg,) = link.take("server", ev.MessageReceived)
    assert isinstance(msg, ev.MessageReceived) and msg.payload == b"ping"
    assert link.take("server", ev.RequestEnded)

    link.server.send_headers(sid, Metadata([("h", "1")]))
    link.server.send_message(sid, b"pong")
    link.server.send_trailers(sid, StatusCode.OK, metadata=Metadata([("t", "2")]))
    link.pump()
    (headers,) = link.take("client", ev.ResponseHeadersReceived)
    assert isinstance(headers, ev.ResponseHeadersReceived) and headers.metadata.get("h") == "1"
    (reply,) = link.take("client", ev.MessageReceived)
    assert isinstance(reply, ev.MessageReceived) and reply.payload == b"pong"
    (end,) = link.take("client", ev.ResponseEnded)
    assert isinstance(end, ev.ResponseEnded)
    assert end.code == StatusCode.OK and end.trailing_metadata.get("t") == "2"
    assert link.client.active_streams == 0 and link.server.active_streams == 0


def test_error_status_with_details_survives_the_round_trip() -> None:
    link = Link()
    sid = link.client.start_request("/p.S/M", authority="a")
    link.client.send_message(sid, b"", end_stream=True)
    link.pump()
    details = StatusDetails(StatusCode.FAILED_PRECONDITION, "not running", ())
    link.server.send_trailers(
        sid, StatusCode.FAILED_PRECONDITION, "Container x not running 100%", details=details
    )
    link.pump()
    (end,) = link.take("client", ev.ResponseEnded)
    assert isinstance(end, ev.ResponseEnded)
    assert end.code == StatusCode.FAILED_PRECONDITION
    assert end.message == "Container x not running 100%"
    assert end.details == details
    # Trailers-Only: no response headers event was produced.
    assert not link.take("client", ev.ResponseHeadersReceived)


def test_compressed_messages_both_ways_and_per_message_opt_out() -> None:
    link = Link()
    sid = link.client.start_request("/p.S/M", authority="a", encoding="gzip")
    body = b"a" * 10_000
    link.client.send_message(sid, body)
    link.client.send_message(sid, body, compress=False)
    link.client.end_request(sid)
    link.pump()
    (req,) = link.take("server", ev.RequestReceived)
    assert isinstance(req, ev.RequestReceived) and req.encoding == "gzip"
    msgs = link.take("server", ev.MessageReceived)
    assert [m.payload for m in msgs] == [body, body]  # type: ignore[attr-defined]
    assert [m.compressed for m in msgs] == [True, False]  # type: ignore[attr-defined]
    assert msgs[0].wire_length < 200  # type: ignore[attr-defined]
    link.server.send_headers(sid, encoding="deflate")
    link.server.send_message(sid, body)
    link.server.send_trailers(sid, StatusCode.OK)
    link.pump()
    (reply,) = link.take("client", ev.MessageReceived)
    assert isinstance(reply, ev.MessageReceived) and reply.payload == body and reply.compressed


def test_unread_stream_holds_only_its_own_window() -> None:
    """Messages the application has not consumed keep their stream window closed,
    but the connection window is credited as bytes arrive, so other streams go on."""
    cfg = ConnectionConfig(client_side=False, stream_window=64 * 1024, connection_window=128 * 1024)
    link = Link(server_cfg=cfg)
    slow = link.client.start_request("/p.S/Slow", authority="a")
    chunk = b"x" * 16_000
    for _ in range(8):  # 128 KB, twice what the stream window allows unread
        link.client.send_message(slow, chunk)
    link.pump()
    received = link.take("server", ev.MessageReceived)
    assert 3 <= len(received) <= 4  # the stream window (64 KiB) stopped the rest
    assert link.client.pending_send_bytes(slow) > 0
    # Another stream still gets through: the connection window was credited.
    fast = link.client.start_request("/p.S/Fast", authority="a")
    link.client.send_message(fast, chunk * 3, end_stream=True)
    link.pump()
    fast_msgs = [m for m in link.take("server", ev.MessageReceived) if m.stream_id == fast]  # type: ignore[attr-defined]
    assert len(fast_msgs) == 1
    # Consuming the slow stream's messages lets the rest of it through.
    for m in received:
        link.server.acknowledge_message(slow, m.wire_length)  # type: ignore[attr-defined]
    link.pump()
    for m in link.take("server", ev.MessageReceived):
        link.server.acknowledge_message(slow, m.wire_length)  # type: ignore[attr-defined]
        link.pump()
    link.pump()
    assert link.client.pending_send_bytes(slow) == 0


def test_server_ends_before_client_half_closed_sends_rst_no_error() -> None:
    link = Link()
    sid = link.client.start_request("/p.S/M", authority="a")
    link.client.send_message(sid, b"one")
    link.pump()
    link.server.send_trailers(sid, StatusCode.OK)
    link.pump()
    (end,) = link.take("client", ev.ResponseEnded)
    assert isinstance(end, ev.ResponseEnded) and end.code == StatusCode.OK
    assert link.server.active_streams == 0


def test_bad_content_type_is_rejected_with_415() -> None:
    link = Link()
    sid = link.client.start_request("/p.S/M", authority="a", content_type="text/plain")
    link.client.end_request(sid)
    link.pump()
    assert not link.take("server", ev.RequestReceived)
    (end,) = link.take("client", ev.ResponseEnded)
    assert isinstance(end, ev.ResponseEnded)
    assert end.code == StatusCode.INTERNAL  # grpc-status sent with the 415


def test_goaway_fails_unprocessed_streams_unavailable() -> None:
    link = Link()
    first = link.client.start_request("/p.S/M", authority="a")
    second = link.client.start_request("/p.S/M", authority="a")
    link.pump()
    link.server.close(last_stream_id=first)
    link.pump()
    ended = link.take("client", ev.ResponseEnded)
    assert [e.stream_id for e in ended] == [second]  # type: ignore[attr-defined]
    assert ended[0].code == StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert link.take("client", ev.GoAwayReceived)
    assert not link.client.is_usable


def test_connection_lost_ends_every_call() -> None:
    link = Link()
    sid = link.client.start_request("/p.S/M", authority="a")
    link.pump()
    events = link.client.connection_lost("peer vanished")
    ended = [e for e in events if isinstance(e, ev.ResponseEnded)]
    assert [(e.stream_id, e.code) for e in ended] == [(sid, StatusCode.UNAVAILABLE)]
    aborted = [
        e for e in link.server.connection_lost("peer vanished") if isinstance(e, ev.RequestAborted)
    ]
    assert aborted and aborted[0].error.code == StatusCode.UNAVAILABLE


def test_peer_protocol_violation_fails_the_connection() -> None:
    link = Link()
    link.client.start_request("/p.S/M", authority="a")
    link.pump()
    events = link.client.receive_data(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")
    assert any(isinstance(e, ev.ConnectionFailed) for e in events)
    assert not link.client.is_usable


def test_streams_below_goaway_last_stream_id_still_complete() -> None:
    """h2 alone ends everything at the first GOAWAY; gRPC's graceful drain needs the
    streams the server accepted to finish (RFC 9113 §6.8)."""
    link = Link()
    first = link.client.start_request("/p.S/M", authority="a")
    link.client.send_message(first, b"x", end_stream=True)
    link.pump()
    link.server.start_graceful_shutdown(b"drain001")
    link.pump()
    assert link.take("client", ev.GoAwayReceived)
    assert link.take("server", ev.PingAcknowledged)
    link.server.finish_graceful_shutdown()
    link.server.send_message(first, b"reply")
    link.server.send_trailers(first, StatusCode.OK)
    link.pump()
    (reply,) = link.take("client", ev.MessageReceived)
    assert isinstance(reply, ev.MessageReceived) and reply.payload == b"reply"
    (end,) = link.take("client", ev.ResponseEnded)
    assert isinstance(end, ev.ResponseEnded) and end.code == StatusCode.OK


def test_stream_opened_after_final_goaway_is_refused() -> None:
    link = Link()
    first = link.client.start_request("/p.S/M", authority="a")
    link.pump()
    link.server.close(last_stream_id=first)
    # The client has not read the GOAWAY yet and opens another stream.
    late = link.client.start_request("/p.S/M", authority="a")
    link.client.end_request(late)
    link.pump()
    assert [e.stream_id for e in link.take("server", ev.RequestReceived)] == [first]  # type: ignore[attr-defined]
    ended = link.take("client", ev.ResponseEnded)
    assert [(e.stream_id, e.code) for e in ended] == [(late, StatusCode.UNAVAILABLE)]  # type: ignore[attr-defined]


def test_too_many_pings_get_goaway_enhance_your_calm() -> None:
    from wire.connection import KeepalivePolicy

    now = [0.0]
    cfg = ConnectionConfig(
        client_side=False, keepalive=KeepalivePolicy(min_time=10.0), clock=lambda: now[0]
    )
    link = Link(server_cfg=cfg)
    sid = link.client.start_request("/p.S/M", authority="a")
    link.pump()
    for i in range(4):
        now[0] += 1.0
        link.client.ping(b"%08d" % i)
        link.pump()
    (goaway,) = link.take("client", ev.GoAwayReceived)
    assert isinstance(goaway, ev.GoAwayReceived)
    assert goaway.error_code == 0xB and goaway.debug_data == b"too_many_pings"
    ended = link.take("client", ev.ResponseEnded)
    assert [e.stream_id for e in ended] == [sid]  # type: ignore[attr-defined]


def test_small_stream_window_takes_effect_only_when_acknowledged() -> None:
    """A client may send under the default 65,535-byte window before it has read the
    server's SETTINGS; a server that shrank its window must not call that a
    flow-control error (RFC 9113 §6.9.2)."""
    client = GrpcConnection(ConnectionConfig(client_side=True))
    server = GrpcConnection(ConnectionConfig(client_side=False, stream_window=1000))
    client.initiate()
    server.initiate()
    sid = client.start_request("/p.S/M", authority="a")
    client.send_message(sid, b"z" * 60_000, end_stream=True)
    events = server.receive_data(client.data_to_send())  # before any SETTINGS exchange
    assert not any(isinstance(e, ev.ConnectionFailed) for e in events)
    messages = [e for e in events if isinstance(e, ev.MessageReceived)]
    assert len(messages) == 1 and len(messages[0].payload) == 60_000


@given(
    data=st.binary(max_size=64),
    padded=st.booleans(),
    pad_length=st.integers(min_value=0, max_value=20),
)
def test_data_frame_repr_is_unchanged_but_cheap(data: bytes, padded: bool, pad_length: int) -> None:
    """cryo replaces hyperframe's DATA-frame repr (which h2 computes for every frame it
    receives) with one that reads only the first bytes; the text must stay the same."""
    from hyperframe.frame import DataFrame, Frame

    frame = DataFrame(1, data=data, flags=["PADDED"] if padded else [])
    if padded:
        frame.pad_length = pad_length
    upstream = Frame._body_repr(frame)  # the generic fallback DATA frames used
    assert frame._body_repr() == upstream


def test_settings_ack_and_a_large_frame_in_one_read() -> None:
    """h2 checks every frame of a read against the frame-size limit it had when the
    read began; the ACK that raises the limit may come in the same read as the first
    large frame."""
    client = GrpcConnection(ConnectionConfig(client_side=True, max_frame_size=256 * 1024))
    server = GrpcConnection(ConnectionConfig(client_side=False, max_frame_size=256 * 1024))
    client.initiate()
    server.initiate()
    sid = client.start_request("/p.S/M", authority="a")
    client.end_request(sid)
    (request, _ended) = [
        e
        for e in server.receive_data(client.data_to_send())
        if isinstance(e, ev.RequestReceived | ev.RequestEnded)
    ]
    server.send_message(sid, b"q" * 200_000)  # one 200 kB frame: the client allows 256 KiB
    server.send_trailers(sid, StatusCode.OK)
    # Server preface, SETTINGS, the ACK of the client's SETTINGS and the big frame: one read.
    events = client.receive_data(server.data_to_send())
    assert not any(isinstance(e, ev.ConnectionFailed) for e in events), events
    messages = [e for e in events if isinstance(e, ev.MessageReceived)]
    assert [len(m.payload) for m in messages] == [200_000]
    assert isinstance(request, ev.RequestReceived)
