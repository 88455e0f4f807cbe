"""What the renderers need to know about a trace beyond its events, worked out once.

This module owns `TraceView`: the events in time order, how deep each one sits under
the steps of its call, which connection on the client is which on the server, which
frame one side sent is the frame the other side received, and a summary per call.
It only reads events: no I/O, no trio.

Connections are matched through the calls they carried: a client connection and a
server connection that carried the same call id are the two ends of one connection.
Frames are then matched by position, since both ends see the same bytes in the same
order; matching stops at the first pair that disagrees (a trace that missed bytes).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from wire.trace import STEPS, Step, TraceEvent

OTHER_SIDE = {"client": "server", "server": "client"}


@dataclass(slots=True)
class CallSummary:
    """One call as the trace shows it."""

    call_id: str
    method: str | None = None
    status: str | None = None
    message: str | None = None
    sides: set[str] = field(default_factory=set)
    start_ns: int | None = None
    end_ns: int | None = None

    @property
    def duration_ns(self) -> int | None:
        if self.start_ns is None or self.end_ns is None:
            return None
        return self.end_ns - self.start_ns


class TraceView:
    """A trace, ordered and cross-referenced for rendering."""

    def __init__(self, events: Iterable[TraceEvent]) -> None:
        self.events: list[TraceEvent] = sorted(events, key=lambda e: e.t_ns)
        self.t0 = self.events[0].t_ns if self.events else 0
        self.depth: list[int] = []
        self.step_end: dict[int, TraceEvent] = {}  # span id → its end event
        self.step_start: dict[int, TraceEvent] = {}
        self.peer_of: dict[int, int] = {}  # frame event index ↔ the other side's copy
        self.conn_peer: dict[tuple[str, str], str] = {}  # (side, conn) → peer conn id
        self.calls: dict[str, CallSummary] = {}
        self._index_steps()
        self._index_depth()
        self._pair_connections()
        self._summarise_calls()

    # -- queries ----------------------------------------------------------------------

    def step_info(self, event: TraceEvent) -> Step | None:
        return STEPS.get((event.side, event.name))

    def duration_ns(self, event: TraceEvent) -> int | None:
        """How long a step took, from its start event."""
        if event.span is None:
            return None
        end = self.step_end.get(event.span)
        return end.t_ns - event.t_ns if end is not None else None

    def sides(self) -> list[str]:
        present = {e.side for e in self.events}
        return [s for s in ("client", "server") if s in present]

    # -- indexing ---------------------------------------------------------------------

    def _index_steps(self) -> None:
        for event in self.events:
            if event.kind == "step" and event.span is not None:
                if event.phase == "start":
                    self.step_start[event.span] = event
                elif event.phase == "end":
                    self.step_end[event.span] = event

    def _index_depth(self) -> None:
        span_depth: dict[int, int] = {}
        for event in self.events:
            parent_depth = span_depth.get(event.parent, -1) if event.parent is not None else -1
            depth = parent_depth + 1
            if event.kind == "step" and event.span is not None and event.phase == "start":
                span_depth[event.span] = depth
            if event.kind == "step" and event.phase == "end" and event.span is not None:
                depth = span_depth.get(event.span, depth)
            if event.kind in ("frame", "message") and event.parent is None and event.call_id:
                depth = 1  # belongs to a call, but to none of its steps
            self.depth.append(depth)

    def _pair_connections(self) -> None:
        calls_on: dict[tuple[str, str], set[str]] = defaultdict(set)
        for event in self.events:
            if event.conn_id is not None and event.call_id is not None:
                calls_on[(event.side, event.conn_id)].add(event.call_id)
        for (side, conn), calls in calls_on.items():
            if side != "client":
                continue
            for (other_side, other_conn), other_calls in calls_on.items():
                if other_side == "server" and calls & other_calls:
                    self.conn_peer[("client", conn)] = other_conn
                    self.conn_peer[("server", other_conn)] = conn
                    break
        frames: dict[tuple[str, str, str], list[int]] = defaultdict(list)
        for index, event in enumerate(self.events):
            if event.kind == "frame" and event.conn_id is not None:
                frames[(event.side, event.conn_id, event.phase)].append(index)
        for (side, conn), peer_conn in self.conn_peer.items():
            if side != "client":
                continue
            for sender, receiver in (("client", "server"), ("server", "client")):
                sent = frames.get((sender, conn if sender == "client" else peer_conn, "out"), [])
                got = frames.get((receiver, peer_conn if receiver == "server" else conn, "in"), [])
                for out_index, in_index in zip(sent, got, strict=False):
                    a, b = self.events[out_index], self.events[in_index]
                    if (
                        a.name != b.name
                        or a.stream_id != b.stream_id
                        or (a.attrs.get("length") != b.attrs.get("length"))
                    ):
                        break
                    self.peer_of[out_index] = in_index
                    self.peer_of[in_index] = out_index

    def _summarise_calls(self) -> None:
        for event in self.events:
            if event.call_id is None:
                continue
            call = self.calls.setdefault(event.call_id, CallSummary(event.call_id))
            call.sides.add(event.side)
            if call.start_ns is None:
                call.start_ns = event.t_ns
            call.end_ns = event.t_ns
            if event.kind != "step":
                continue
            method = event.attrs.get("method")
            if call.method is None and isinstance(method, str):
                call.method = method
            status = event.attrs.get("status")
            # The client's outermost step says how the call ended for the caller; the
            # server's is used only when the client side was not traced.
            if (
                event.phase == "end"
                and event.parent is None
                and isinstance(status, str)
                and (event.side == "client" or call.status is None)
            ):
                call.status = status
                message = event.attrs.get("message")
                call.message = message if isinstance(message, str) else None
