"""Renderers of traces: a terminal timeline, JSON lines, and an HTML sequence diagram.

This package turns `wire.trace.TraceEvent`s into things people and tools read. Its
modules are pure: they take events and return strings (the caller writes them
wherever it likes), and none of them imports trio, so a trace saved as JSON lines can
be rendered anywhere.
"""

from __future__ import annotations

from wire.tracing.html import render_html
from wire.tracing.jsonl import TraceFormatError, read_json_lines, to_json_lines
from wire.tracing.terminal import render_terminal

__all__ = ["TraceFormatError", "read_json_lines", "render_html", "render_terminal", "to_json_lines"]
