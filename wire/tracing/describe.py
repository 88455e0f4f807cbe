"""Words for trace events: the one-line summaries and detail lines every renderer shows.

This module owns how a frame, a message or a step is put into words (so the terminal
timeline and the HTML diagram say the same thing). Pure functions of events; no I/O,
no trio.
"""

from __future__ import annotations

from wire.trace import TraceEvent

_HIDDEN_STEP_ATTRS = {"grpc_go", "func", "method"}
MAX_VALUE = 120


def clip(text: str, limit: int = MAX_VALUE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def show_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") + ("s" if value else "")
    if value is None:
        return "none"
    return clip(str(value), 60)


def window_text(window: object) -> str:
    """`send window: stream 65535→65525, connection 65535→65525`."""
    if not isinstance(window, dict):
        return ""
    parts = []
    for scope in ("stream", "connection"):
        change = window.get(scope)
        if isinstance(change, list) and len(change) == 2:
            parts.append(f"{scope} {change[0]}→{change[1]}")
    return f"{window.get('kind', '')} window: " + ", ".join(parts) if parts else ""


def frame_summary(event: TraceEvent) -> str:
    """`HEADERS stream 1 [END_STREAM END_HEADERS] 12 B` and what matters of its payload."""
    attrs = event.attrs
    flags = attrs.get("flags")
    text = event.name
    if event.stream_id:
        text += f" stream {event.stream_id}"
    if isinstance(flags, list) and flags:
        text += " [" + " ".join(str(f) for f in flags) + "]"
    if event.name != "PREFACE":
        text += f" {attrs.get('length', 0)} B"
    extra = ""
    if event.name == "SETTINGS":
        settings = attrs.get("settings")
        if isinstance(settings, dict) and settings:
            extra = " ".join(f"{k}={v}" for k, v in settings.items())
    elif event.name == "WINDOW_UPDATE":
        extra = f"+{attrs.get('increment')}"
    elif event.name in ("RST_STREAM", "GOAWAY"):
        extra = str(attrs.get("error_code", ""))
        if event.name == "GOAWAY":
            extra += f" last_stream_id={attrs.get('last_stream_id')}"
            if attrs.get("debug"):
                extra += f" debug={attrs.get('debug')!r}"
    elif event.name == "PING":
        extra = f"data {attrs.get('data')}"
    elif event.name == "HEADERS":
        status = header(event, "grpc-status")
        if status is not None:
            extra = f"grpc-status {status}"
    window = window_text(attrs.get("window"))
    return "  ".join(part for part in (text, extra, window, arrival_text(event)) if part)


def arrival_text(event: TraceEvent) -> str:
    """For an inbound event taken by a later step: which step was running when it came."""
    during = event.attrs.get("arrived_during")
    return f"(arrived during {during})" if during else ""


def header(event: TraceEvent, name: str) -> str | None:
    for pair in header_pairs(event):
        if pair[0] == name:
            return pair[1]
    return None


def header_pairs(event: TraceEvent) -> list[tuple[str, str]]:
    headers = event.attrs.get("headers")
    if not isinstance(headers, list):
        return []
    return [(str(p[0]), str(p[1])) for p in headers if isinstance(p, list | tuple) and len(p) == 2]


def frame_details(event: TraceEvent) -> list[str]:
    """Lines under a frame: its decoded headers, or the first bytes of DATA."""
    if event.name == "HEADERS":
        lines = [f"{k}: {clip(v)}" for k, v in header_pairs(event)]
        if event.attrs.get("headers_error"):
            lines.append(f"(headers not decoded: {event.attrs['headers_error']})")
        return lines
    if event.name == "DATA":
        preview = event.attrs.get("data_preview")
        if isinstance(preview, str) and preview:
            shown = " ".join(preview[i : i + 2] for i in range(0, min(len(preview), 64), 2))
            more = "…" if int(str(event.attrs.get("length", 0))) > 32 else ""
            return [f"bytes: {shown}{more}"]
    return []


def message_summary(event: TraceEvent) -> str:
    a = event.attrs
    compressed = bool(a.get("compressed"))
    verb = "framed" if event.phase == "out" else "unframed"
    size = f"{a.get('length')} B on the wire"
    if compressed:
        size += f", {a.get('uncompressed_length')} B uncompressed"
    flag = "flag 1 (compressed)" if compressed else "flag 0"
    text = f"message {verb}: {size}, {flag}, prefix {a.get('prefix')}"
    arrival = arrival_text(event)
    return f"{text}  {arrival}" if arrival else text


def step_attrs_text(event: TraceEvent, *, with_status: bool = False) -> str:
    """The attributes of a step event worth a reader's eye, as `key=value`."""
    parts = []
    for key, value in event.attrs.items():
        if key in _HIDDEN_STEP_ATTRS or value is None or value == "":
            continue
        if key in ("status", "message") and not with_status:
            continue
        parts.append(f"{key}={show_value(value)}")
    return " ".join(parts)


def status_text(event: TraceEvent) -> str:
    a = event.attrs
    if "status" in a:
        message = a.get("message")
        return f"{a['status']}" + (f" ({clip(str(message), 80)})" if message else "")
    if "error" in a:
        return f"raised {a['error']}"
    return ""


def ms(ns: int) -> str:
    return f"{ns / 1e6:.3f} ms"
