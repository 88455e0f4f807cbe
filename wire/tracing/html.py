"""The HTML sequence diagram: a trace as one self-contained page that opens offline.

This module owns the diagram's layout and the page around it. Client and server are
two lanes; steps are bars on their lane, nested by depth; each HTTP/2 frame is an
arrow from the side that sent it to the side that received it (to a lane of its own
when the other side was not traced); clicking anything shows its details (headers,
bytes, windows, the grpc-go function and the function in wire/). The layout is worked
out here, in Python, and embedded as JSON; a small script in the page draws it as SVG.
The page loads nothing from anywhere. This module returns a string: no I/O, no trio.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from typing import Any

from wire.trace import MESSAGE_STEP, TraceEvent
from wire.tracing.describe import (
    frame_summary,
    header_pairs,
    message_summary,
    ms,
    status_text,
    step_attrs_text,
    window_text,
)
from wire.tracing.model import TraceView

PEER_LANE = "peer"


def render_html(events: Iterable[TraceEvent], *, title: str = "cryo trace") -> str:
    """The page, as a string of HTML."""
    view = TraceView(events)
    layout = build_layout(view)
    data = json.dumps(layout, separators=(",", ":"), ensure_ascii=True)
    # Inside <script>, "</" could end the element and "<!--" change parsing.
    data = data.replace("<", "\\u003c")
    return (
        _PAGE.replace("__TITLE__", html.escape(title))
        .replace("__SUMMARY__", _summary_html(view))
        .replace("__DATA__", data)
    )


def build_layout(view: TraceView) -> dict[str, Any]:
    """Lanes, rows and items of the diagram (what the page's script draws)."""
    sides = view.sides()
    lanes = list(sides)
    if len(sides) == 1:
        lanes = [sides[0], PEER_LANE] if sides[0] == "client" else [PEER_LANE, sides[0]]
    items: list[dict[str, Any]] = []
    row_of: dict[int, int] = {}  # event index → row
    step_item: dict[int, dict[str, Any]] = {}  # span → its bar
    row = 0
    for index, event in enumerate(view.events):
        if event.kind == "step" and event.phase == "end":
            bar = step_item.get(event.span) if event.span is not None else None
            status = status_text(event)
            if bar is not None:
                bar["row1"] = row
                if status:
                    bar["end_label"] = status
                    bar["bad"] = "status" in event.attrs and event.attrs["status"] != "OK"
                    bar["details"]["rows"].append(["ended", status])
            if status:
                row += 1
            continue
        row_of[index] = row
        if event.kind == "frame" and event.phase == "in" and index in view.peer_of:
            out_index = view.peer_of[index]
            if out_index in row_of:
                # The arrow was drawn from the sender; this row is where it lands.
                for item in items:
                    if item.get("event") == out_index:
                        item["row1"] = row
                        item["details"]["rows"].append(
                            ["received", f"{ms(event.t_ns - view.t0)} ({event.side})"]
                        )
                        item["details"]["rows"].append(
                            ["on the way", ms(event.t_ns - view.events[out_index].t_ns)]
                        )
                        break
                row += 1
                continue
        item = _item(view, index, event, row, lanes)
        items.append(item)
        if event.kind == "step" and event.phase == "start" and event.span is not None:
            step_item[event.span] = item
        row += 1
    for item in items:
        item.pop("event", None)
    return {"lanes": lanes, "rows": row, "items": items}


def _item(
    view: TraceView, index: int, event: TraceEvent, row: int, lanes: list[str]
) -> dict[str, Any]:
    when = ms(event.t_ns - view.t0)
    base: dict[str, Any] = {"event": index, "lane": event.side, "row0": row, "row1": row}
    rows: list[list[str]] = [["time", when], ["side", event.side]]
    if event.call_id:
        rows.append(["call", event.call_id])
    if event.conn_id:
        rows.append(["connection", event.conn_id])
    if event.stream_id:
        rows.append(["stream", str(event.stream_id)])
    details: dict[str, Any] = {"rows": rows}
    base["details"] = details
    base["depth"] = view.depth[index]
    if event.kind == "step":
        info = view.step_info(event)
        grpc_go = event.attrs.get("grpc_go") or (info.grpc_go if info else "")
        func = event.attrs.get("func") or (info.func if info else "")
        label = event.name
        method = event.attrs.get("method")
        if event.parent is None and isinstance(method, str):
            label += f" {method}"
        details["title"] = f"step {event.name}"
        if info is not None:
            rows.append(["what", info.summary])
        rows.append(["grpc-go", str(grpc_go)])
        rows.append(["in wire/", str(func)])
        took = view.duration_ns(event)
        if took is not None:
            rows.append(["took", ms(took)])
        attrs = step_attrs_text(event, with_status=True)
        if attrs:
            rows.append(["attributes", attrs])
        base.update(type="step" if event.phase == "start" else "point", label=label)
        return base
    if event.kind == "message":
        details["title"] = f"gRPC message {'out' if event.phase == 'out' else 'in'}"
        rows.append(["framing", message_summary(event)])
        grpc_go, func = MESSAGE_STEP.get(event.phase, ("", ""))
        rows.append(["grpc-go", grpc_go])
        rows.append(["in wire/", func])
        base.update(type="message", label=f"message {event.attrs.get('length')} B")
        return base
    if event.kind == "frame":
        summary = frame_summary(event)
        details["title"] = f"{event.name} frame ({'sent' if event.phase == 'out' else 'received'})"
        flags = event.attrs.get("flags")
        rows.append(["length", f"{event.attrs.get('length', 0)} B"])
        if isinstance(flags, list) and flags:
            rows.append(["flags", " ".join(str(f) for f in flags)])
        window = window_text(event.attrs.get("window"))
        if window:
            rows.append(["flow control", window])
        rows.append(["summary", summary])
        headers = header_pairs(event)
        if headers:
            details["headers"] = [[k, v] for k, v in headers]
        preview = event.attrs.get("data_preview")
        if isinstance(preview, str) and preview:
            details["bytes"] = preview
        # A frame the traced other side never saw (the connection closed first) is
        # drawn dashed, to where it was headed.
        other_side = "server" if event.side == "client" else "client"
        target = other_side if other_side in lanes else PEER_LANE
        if index not in view.peer_of:
            base["unmatched"] = True
        if event.phase == "out":
            base.update(type="arrow", lane=event.side, to=target)
        else:
            base.update(type="arrow", lane=target, to=event.side)
        label = event.name + (f" s{event.stream_id}" if event.stream_id else "")
        if isinstance(flags, list) and flags:
            label += " [" + " ".join(str(f) for f in flags) + "]"
        base["label"] = label
        return base
    details["title"] = event.name
    base.update(type="point", label=event.name)
    return base


def _summary_html(view: TraceView) -> str:
    parts = []
    for call in view.calls.values():
        took = f" in {ms(call.duration_ns)}" if call.duration_ns is not None else ""
        status = call.status or "no status"
        parts.append(
            "<li><code>"
            + html.escape(call.call_id)
            + "</code> <b>"
            + html.escape(call.method or "?")
            + "</b>: "
            + html.escape(status + (f" ({call.message})" if call.message else "") + took)
            + "</li>"
        )
    return "<ul>" + "".join(parts) + "</ul>" if parts else "<p>No calls in this trace.</p>"


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
  body { font: 13px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330; background: #fafbfc; }
  header { padding: 10px 16px; border-bottom: 1px solid #dde2ea; background: #fff; }
  header h1 { font-size: 16px; margin: 0 0 4px; }
  header ul { margin: 0; padding-left: 18px; }
  main { display: flex; align-items: flex-start; }
  #diagram { flex: 1; overflow: auto; padding: 8px; }
  #details { width: 380px; position: sticky; top: 0; max-height: 100vh; overflow: auto;
             border-left: 1px solid #dde2ea; background: #fff; padding: 10px 14px;
             box-sizing: border-box; }
  #details h2 { font-size: 14px; margin: 0 0 8px; }
  #details table { border-collapse: collapse; width: 100%; }
  #details td { vertical-align: top; padding: 2px 4px; border-bottom: 1px solid #eef0f4;
                word-break: break-all; }
  #details td:first-child { color: #5b6475; white-space: nowrap; word-break: normal; }
  #details pre { background: #f3f5f8; padding: 6px; white-space: pre-wrap; word-break: break-all; }
  .lane-line { stroke: #9aa3b2; stroke-dasharray: 4 4; }
  .lane-title { font-weight: bold; font-size: 14px; }
  .bar { fill: #dbe7ff; stroke: #4a6fd1; }
  .bar.server { fill: #f3dcff; stroke: #9a46c9; }
  .bar.bad { stroke: #c62828; }
  .arrow line { stroke: #c47f00; stroke-width: 1.6; }
  .arrow.peer line { stroke-dasharray: 5 3; }
  .arrow text { fill: #7a4f00; }
  .item { cursor: pointer; }
  .item:hover text, .item.selected text { font-weight: bold; }
  .item.selected line, .item.selected rect, .item.selected circle { stroke: #d62828; }
  .label { font-size: 12px; }
  .status-bad { fill: #c62828; }
  .status-ok { fill: #2e7d32; }
  .message { fill: #fff3c4; stroke: #c47f00; }
</style>
</head>
<body>
<header>
  <h1>__TITLE__</h1>
  __SUMMARY__
  <small>Time runs down. Bars are steps of the call path; arrows are HTTP/2 frames, drawn from
  the side that sent them to the side that received them. Click anything for its details.</small>
</header>
<main>
  <div id="diagram"></div>
  <aside id="details"><h2>Details</h2><p>Click a frame, a step or a message.</p></aside>
</main>
<script id="trace-layout" type="application/json">__DATA__</script>
<script>
(function () {
  "use strict";
  var layout = JSON.parse(document.getElementById("trace-layout").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var ROW = 22, TOP = 40, LANE_GAP = 460, MARGIN = 330, DEPTH = 7;
  var laneX = {};
  layout.lanes.forEach(function (lane, i) { laneX[lane] = MARGIN + i * LANE_GAP; });
  var width = MARGIN * 2 + (layout.lanes.length - 1) * LANE_GAP;
  var height = TOP + (layout.rows + 1) * ROW;
  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function text(parent, x, y, value, anchor, cls) {
    var t = el("text", {x: x, y: y, "text-anchor": anchor || "start", "class": cls || "label"},
               parent);
    t.textContent = value;
    return t;
  }
  function y(row) { return TOP + row * ROW + ROW / 2; }
  var svg = el("svg", {width: width, height: height, viewBox: "0 0 " + width + " " + height});
  svg.setAttribute("id", "sequence");
  layout.lanes.forEach(function (lane) {
    var x = laneX[lane];
    el("line", {x1: x, y1: TOP - 8, x2: x, y2: height, "class": "lane-line"}, svg);
    text(svg, x, TOP - 16, lane === "peer" ? "peer (not traced)" : lane, "middle", "lane-title");
  });
  var selected = null;
  function select(node, item) {
    if (selected) { selected.classList.remove("selected"); }
    selected = node;
    node.classList.add("selected");
    var box = document.getElementById("details");
    box.textContent = "";
    var h = document.createElement("h2");
    h.textContent = item.details.title || item.label;
    box.appendChild(h);
    var table = document.createElement("table");
    item.details.rows.forEach(function (r) {
      var tr = document.createElement("tr");
      r.forEach(function (cell) {
        var td = document.createElement("td");
        td.textContent = cell;
        tr.appendChild(td);
      });
      table.appendChild(tr);
    });
    box.appendChild(table);
    if (item.details.headers) {
      var hh = document.createElement("h2");
      hh.textContent = "Headers";
      box.appendChild(hh);
      var ht = document.createElement("table");
      ht.setAttribute("id", "headers");
      item.details.headers.forEach(function (pair) {
        var tr = document.createElement("tr");
        pair.forEach(function (cell) {
          var td = document.createElement("td");
          td.textContent = cell;
          tr.appendChild(td);
        });
        ht.appendChild(tr);
      });
      box.appendChild(ht);
    }
    if (item.details.bytes) {
      var hb = document.createElement("h2");
      hb.textContent = "Bytes (first " + item.details.bytes.length / 2 + ")";
      box.appendChild(hb);
      var pre = document.createElement("pre");
      pre.textContent = item.details.bytes.match(/.{1,2}/g).join(" ");
      box.appendChild(pre);
    }
  }
  layout.items.forEach(function (item, i) {
    var g = el("g", {"class": "item " + item.type, "data-index": i}, svg);
    var x = laneX[item.lane];
    var side = item.lane === "server" ? 1 : -1;
    if (item.type === "step") {
      var off = item.depth * DEPTH;
      var bx = side < 0 ? x - 6 - off : x + off;
      var y0 = y(item.row0) - ROW / 2 + 3, y1 = y(item.row1) - ROW / 2 + 3;
      el("rect", {x: bx, y: y0, width: 6, height: Math.max(y1 - y0, ROW - 6),
                  "class": "bar " + item.lane + (item.bad ? " bad" : "")}, g);
      var lx = side < 0 ? x - 14 - off - 12 * item.depth : x + 14 + off + 12 * item.depth;
      text(g, lx, y(item.row0) + 4, item.label, side < 0 ? "end" : "start");
      if (item.end_label) {
        text(g, lx, y(item.row1) + 4, "\\u25c0 " + item.end_label, side < 0 ? "end" : "start",
             "label " + (item.bad ? "status-bad" : "status-ok"));
      }
    } else if (item.type === "arrow") {
      var x1 = laneX[item.lane], x2 = laneX[item.to];
      var ya = y(item.row0), yb = y(item.row1);
      if (item.unmatched) { g.classList.add("peer"); }
      el("line", {x1: x1, y1: ya, x2: x2, y2: yb}, g);
      var dir = x2 > x1 ? -1 : 1;
      el("path", {d: "M" + x2 + " " + yb + " l" + (dir * 9) + " -4 l0 8 z", fill: "#c47f00"}, g);
      el("line", {x1: x1, y1: ya, x2: x2, y2: yb, stroke: "transparent", "stroke-width": 10}, g);
      // The label sits by the sender, where the arrow leaves: arrows cross in the middle.
      var lx = x1 - dir * 12;
      var ly = ya + (yb - ya) * 12 / Math.abs(x2 - x1) - 4;
      text(g, lx, ly, item.label, x2 > x1 ? "start" : "end");
    } else if (item.type === "message") {
      var mx = side < 0 ? x - 40 - item.depth * DEPTH : x + 28 + item.depth * DEPTH;
      el("rect", {x: mx, y: y(item.row0) - 6, width: 16, height: 11, "class": "message"}, g);
      text(g, side < 0 ? mx - 4 : mx + 20, y(item.row0) + 4, item.label,
           side < 0 ? "end" : "start");
    } else {
      var px = side < 0 ? x - 10 - item.depth * DEPTH : x + 10 + item.depth * DEPTH;
      el("circle", {cx: px, cy: y(item.row0), r: 4, fill: "#4a6fd1"}, g);
      text(g, side < 0 ? px - 10 : px + 10, y(item.row0) + 4, item.label,
           side < 0 ? "end" : "start");
    }
    g.addEventListener("click", function () { select(g, item); });
  });
  document.getElementById("diagram").appendChild(svg);
  var match = /item=(\\d+)/.exec(location.hash);
  if (match) {
    var index = parseInt(match[1], 10);
    var node = svg.querySelector('[data-index="' + index + '"]');
    if (node) { select(node, layout.items[index]); }
  }
  document.body.setAttribute("data-rendered", String(layout.items.length));
})();
</script>
</body>
</html>
"""
