"""The terminal timeline: a trace as an annotated walk-through, one line per event.

This module owns the text layout: time since the first event, the side, then the
event indented under the step it belongs to, with each step's grpc-go counterpart and
the function in wire/ that performs it. A frame the other side also traced is shown
in full where it was sent and briefly where it arrived. It returns a string; it does
no I/O and imports no trio.
"""

from __future__ import annotations

from collections.abc import Iterable

from wire.trace import TraceEvent
from wire.tracing.describe import (
    frame_details,
    frame_summary,
    message_summary,
    ms,
    status_text,
    step_attrs_text,
)
from wire.tracing.model import TraceView

_COLORS = {
    "client": "\x1b[36m",
    "server": "\x1b[35m",
    "frame": "\x1b[33m",
    "dim": "\x1b[2m",
    "bold": "\x1b[1m",
    "bad": "\x1b[31m",
    "reset": "\x1b[0m",
}
_INDENT = "  "


def render_terminal(
    events: Iterable[TraceEvent],
    *,
    color: bool = False,
    connection_frames: bool = True,
    details: bool = True,
) -> str:
    """The whole trace as text lines (ending with a newline).

    `connection_frames=False` leaves out frames on stream 0 (SETTINGS, PING, …);
    `details=False` leaves out header lists and data bytes.
    """
    view = TraceView(events)
    paint = _painter(color)
    lines: list[str] = []
    for call in view.calls.values():
        took = f" in {ms(call.duration_ns)}" if call.duration_ns is not None else ""
        sides = " + ".join(sorted(call.sides))
        status = call.status or "no status"
        if call.message:
            status += f" ({call.message})"
        lines.append(
            paint("bold", f"call {call.call_id} {call.method or '?'}: {status}{took}")
            + paint("dim", f"  [{sides}]")
        )
    if lines:
        lines.append("")
    for index, event in enumerate(view.events):
        lines.extend(_event_lines(view, index, event, paint, connection_frames, details))
    return "\n".join(lines) + "\n"


def _event_lines(
    view: TraceView,
    index: int,
    event: TraceEvent,
    paint: _Paint,
    connection_frames: bool,
    details: bool,
) -> list[str]:
    if event.kind == "frame" and not event.stream_id and not connection_frames:
        return []
    depth = view.depth[index]
    when = f"{(event.t_ns - view.t0) / 1e6:9.3f} ms"
    head = paint("dim", when) + "  " + paint(event.side, f"{event.side:<6}") + "  "
    pad = _INDENT * depth
    body_pad = " " * (len(when) + 2 + 6 + 2) + pad + "    "
    if event.kind == "step":
        return _step_lines(view, event, head, pad, paint)
    if event.kind == "frame":
        arrow = "→" if event.phase == "out" else "←"
        text = frame_summary(event)[len(event.name) :]
        conn = f"{event.conn_id} " if not event.stream_id and event.conn_id else ""
        first = head + pad + paint("dim", conn) + paint("frame", f"{arrow} {event.name}") + text
        peer = view.peer_of.get(index)
        if event.phase == "in" and peer is not None:
            sent = view.events[peer]
            way = f"  (as sent by the {sent.side}, {ms(event.t_ns - sent.t_ns)} on the way)"
            return [first + paint("dim", way)]
        out = [first]
        if details:
            out.extend(body_pad + paint("dim", line) for line in frame_details(event))
        return out
    if event.kind == "message":
        return [head + pad + "✉ " + message_summary(event)]
    return [head + pad + f"{event.name} {step_attrs_text(event)}".rstrip()]


def _step_lines(
    view: TraceView, event: TraceEvent, head: str, pad: str, paint: _Paint
) -> list[str]:
    info = view.step_info(event)
    grpc_go = event.attrs.get("grpc_go") or (info.grpc_go if info else None)
    func = event.attrs.get("func") or (info.func if info else None)
    note = ""
    if grpc_go or func:
        note = paint("dim", f"  ⟵ grpc-go {grpc_go} · {func}")
    if event.phase == "start":
        text = f"▶ {event.name}"
        method = event.attrs.get("method")
        if event.parent is None and isinstance(method, str):
            text += f" {method}"
        attrs = step_attrs_text(event, with_status=True)
        if attrs:
            text += f"  {attrs}"
        took = view.duration_ns(event)
        if took is not None:
            text += paint("dim", f"  ({ms(took)})")
        return [head + pad + paint("bold", text) + note]
    if event.phase == "point":
        text = f"• {event.name}"
        attrs = step_attrs_text(event)
        if attrs:
            text += f"  {attrs}"
        return [head + pad + text + note]
    # An end line only when the end says something: a status, an error, a result.
    status = status_text(event)
    attrs = step_attrs_text(event)
    if not status and not attrs:
        return []
    bad = ("status" in event.attrs and event.attrs["status"] != "OK") or "error" in event.attrs
    text = f"◀ {event.name}"
    if status:
        text += " " + paint("bad" if bad else "bold", status)
    if attrs:
        text += f"  {attrs}"
    return [head + pad + text]


class _Paint:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, what: str, text: str) -> str:
        if not self.color or what not in _COLORS:
            return text
        return f"{_COLORS[what]}{text}{_COLORS['reset']}"


def _painter(color: bool) -> _Paint:
    return _Paint(color)
