"""Reports of a check: JSON for programs, a standalone HTML page for people.

The HTML page has no external assets (inline CSS and a little inline JS). Per checked
partition (key) it draws one lane per client on a shared time axis; each operation is a box
from its call to its return (indeterminate ones run off the right edge, dashed). For a failing
partition the boxes of the longest linearizable prefix are green and numbered in linearization
order, the operation that could not be placed is red, and the other concurrent operations that
did not fit either are orange. The time axis is compressed to the order of events (each distinct
timestamp gets one column), so short and long operations stay readable; hover a box for exact
times. For list-append results the transactions of each reported cycle are highlighted and the
cycle is spelled out with its edge types.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from quorum.verify.elle import ElleResult
from quorum.verify.history import Operation, Status, encode_history
from quorum.verify.linearizability import CheckResult, PartitionResult, Verdict
from quorum.verify.models import Model

MAX_PARTITIONS_SHOWN = 50  # failing partitions come first; the rest are summarised
MAX_OPS_DRAWN = 400  # per partition; larger ones are drawn around the failure
FOCUS_TAIL = 50  # placed operations drawn (and listed) before the unplaced one
COLUMN_PX = 28  # narrowest column of the compressed time axis
COLUMN_MAX_PX = 120
LANE_PX = 34


def report_json(result: CheckResult | ElleResult, history: Sequence[Operation]) -> bytes:
    """The result plus the history it was computed from, as one JSON document."""
    if isinstance(result, CheckResult):
        kind, verdict = "linearizability", result.verdict.value
    else:
        kind, verdict = "list-append", "ok" if result.valid else "illegal"
    doc = {
        "kind": kind,
        "verdict": verdict,
        "result": msgspec.to_builtins(result),
        "history": msgspec.json.decode(encode_history(history))["operations"],
    }
    return msgspec.json.encode(doc)


def write_report(prefix: str | Path, result: CheckResult | ElleResult,
                 history: Sequence[Operation], model: Model | None = None,
                 title: str = "") -> tuple[Path, Path]:
    """Write ``<prefix>.json`` and ``<prefix>.html``; returns both paths."""
    base = Path(prefix)
    json_path, html_path = base.with_suffix(".json"), base.with_suffix(".html")
    json_path.write_bytes(report_json(result, history))
    if isinstance(result, CheckResult):
        page = report_html(result, history, model, title)
    else:
        page = elle_report_html(result, history, title)
    html_path.write_text(page, encoding="utf-8")
    return json_path, html_path


# --- linearizability ------------------------------------------------------------------------


def report_html(result: CheckResult, history: Sequence[Operation], model: Model | None = None,
                title: str = "") -> str:
    """A standalone HTML page for a linearizability result."""
    by_id = {op.op_id: op for op in history}
    describe = model.describe_op if model is not None else _describe
    order = sorted(result.partitions, key=lambda p: (p.verdict is not Verdict.ILLEGAL, p.key))
    sections = [_partition_section(p, by_id, describe) for p in order[:MAX_PARTITIONS_SHOWN]]
    hidden = len(order) - len(sections)
    if hidden > 0:
        sections.append(f"<p class='note'>{hidden} more partitions not drawn.</p>")
    failing = len(result.failing())
    summary = (f"model <b>{_e(result.model)}</b> &middot; {len(history)} operations &middot; "
               f"{len(result.partitions)} partitions, {failing} failing &middot; "
               f"{result.steps} search steps &middot; {len(result.dropped_op_ids)} dropped "
               "(failed, or indeterminate reads)")
    return _page(title or "linearizability check", result.verdict.value, summary, sections)


def _partition_section(part: PartitionResult, by_id: Mapping[int, Operation],
                       describe: Any) -> str:
    ops = [by_id[i] for i in part.op_ids if i in by_id]
    rank = {op_id: n + 1 for n, op_id in enumerate(part.linearized)}
    classes: dict[int, str] = {}
    badges: dict[int, str] = {}
    if part.verdict is Verdict.ILLEGAL:
        for op_id, n in rank.items():
            classes[op_id], badges[op_id] = "lin", str(n)
        for op_id in part.candidates:
            classes[op_id] = "candidate"
        for op_id in part.unplaced:
            classes[op_id], badges[op_id] = "unplaced", "✗"
    head = (f"<h2 class='{part.verdict.value}'>key {_e(part.key)!s} &mdash; "
            f"{part.verdict.value.upper()} <small>({len(ops)} ops, {part.steps} steps)"
            "</small></h2>")
    body = [head]
    shown = _focus(part, ops)
    if len(shown) < len(ops):
        where = "around the failure" if part.verdict is Verdict.ILLEGAL else "first"
        body.append(f"<p class='note'>showing {len(shown)} of {len(ops)} operations "
                    f"({where}); the JSON report has them all.</p>")
    body.append(_lanes(shown, classes, badges, describe))
    if part.verdict is Verdict.ILLEGAL:
        body.append(_prefix_list(part, by_id, describe))
    return f"<section class='part {part.verdict.value}'>{''.join(body)}</section>"


def _focus(part: PartitionResult, ops: Sequence[Operation]) -> list[Operation]:
    """The operations worth drawing: all of a small partition; for a large failing one, those
    overlapping the time span from the last FOCUS_TAIL placed operations to the unplaced one
    (where the contradiction is); for a large passing one, the first ones."""
    if len(ops) <= MAX_OPS_DRAWN:
        return list(ops)
    if part.verdict is not Verdict.ILLEGAL:
        return sorted(ops, key=lambda o: o.call_time)[:MAX_OPS_DRAWN]
    by_id = {op.op_id: op for op in ops}
    marked = [by_id[i] for i in (*part.linearized[-FOCUS_TAIL:], *part.unplaced)]
    start = min(op.call_time for op in marked)
    end = max((op.return_time for op in marked if not math.isinf(op.return_time)),
              default=start)
    near = [op for op in ops if op.call_time <= end and op.return_time >= start]
    return sorted(near, key=lambda o: o.call_time)[:MAX_OPS_DRAWN]


def _prefix_list(part: PartitionResult, by_id: Mapping[int, Operation], describe: Any) -> str:
    first = max(0, len(part.linearized) - FOCUS_TAIL)
    items = [f"<li value='{first + n + 1}'>{_e(describe(by_id[i]))} "
             f"<span class='id'>op {i}</span></li>"
             for n, i in enumerate(part.linearized[first:])]
    if first:
        items.insert(0, f"<li class='note' value='1'>… {first} earlier operations</li>")
    bad = "".join(
        f"<p class='unplaced-text'>✗ could not be placed next: {_e(describe(by_id[i]))} "
        f"<span class='id'>op {i}</span></p>" for i in part.unplaced)
    also = ""
    if part.candidates:
        names = ", ".join(f"op {i}" for i in part.candidates)
        also = f"<p class='note'>concurrent operations that did not fit either: {names}</p>"
    return (f"<div class='prefix'><h3>longest linearizable prefix ({len(part.linearized)} "
            f"ops)</h3><ol>{''.join(items)}</ol>{bad}{also}</div>")


# --- list-append ----------------------------------------------------------------------------


def elle_report_html(result: ElleResult, history: Sequence[Operation], title: str = "") -> str:
    """A standalone HTML page for a list-append result."""
    txns = [op for op in history if op.kind == "txn"]
    involved: dict[int, str] = {}
    badges: dict[int, str] = {}
    items = []
    for n, anomaly in enumerate(result.anomalies, 1):
        for op_id in anomaly.op_ids:
            involved.setdefault(op_id, "unplaced" if anomaly.cycle else "candidate")
            badges.setdefault(op_id, f"A{n}")
        items.append(f"<li><b>A{n} {_e(anomaly.kind)}</b>: {_e(anomaly.description)}</li>")
    verdict = "ok" if result.valid else "illegal"
    summary = (f"list-append &middot; {result.txn_count} transactions &middot; "
               f"{result.edge_count} dependency edges &middot; "
               f"anomalies: {_e(', '.join(result.kinds) or 'none')}")
    sections = [f"<section class='part {verdict}'><h2 class='{verdict}'>anomalies</h2>"
                f"<ol class='anomalies'>{''.join(items) or '<li>none</li>'}</ol>"]
    shown = [op for op in txns if op.op_id in involved] or txns
    if len(shown) <= MAX_OPS_DRAWN:
        sections.append(_lanes(shown, involved, badges, _describe))
    sections.append("</section>")
    return _page(title or "list-append check", verdict, summary, sections)


# --- drawing --------------------------------------------------------------------------------


def _describe(op: Operation) -> str:
    out = "?" if op.status is Status.INFO else op.output
    return f"{op.kind} {op.key} {op.input!r} -> {out!r}".replace("  ", " ")


def _lanes(ops: Sequence[Operation], classes: Mapping[int, str], badges: Mapping[int, str],
           describe: Any) -> str:
    times = sorted({t for op in ops for t in (op.call_time, op.return_time)
                    if not math.isinf(t)})
    column = {t: i for i, t in enumerate(times)}
    end = len(times) + 1  # where indeterminate operations run off to
    clients = sorted({op.client_id for op in ops})
    lane_of = {c: i for i, c in enumerate(clients)}
    texts = {op.op_id: describe(op) for op in ops}
    # Columns wide enough that a one-column box shows its text, within limits.
    col = min(COLUMN_MAX_PX, max([COLUMN_PX, *(7 * len(t) + 24 for t in texts.values())]))
    boxes = []
    for op in ops:
        left = column[op.call_time]
        right = end if math.isinf(op.return_time) else column[op.return_time]
        cls = ["op", classes.get(op.op_id, ""), op.status.value]
        text = texts[op.op_id]
        tip = (f"op {op.op_id} client {op.client_id} [{op.call_time}, {op.return_time}] "
               f"{op.status.value}: {text}")
        badge = badges.get(op.op_id)
        badge_html = f"<b class='badge'>{_e(badge)}</b>" if badge else ""
        boxes.append(
            f"<div class='{' '.join(c for c in cls if c)}' data-op='{op.op_id}' "
            f"style='left:{left * col}px;width:{max(1, right - left) * col - 4}px;"
            f"top:{lane_of[op.client_id] * LANE_PX + 4}px' title='{_e(tip)}'>"
            f"{badge_html}{_e(text)}</div>")
    labels = "".join(f"<div class='lane-label' style='top:{i * LANE_PX + 4}px'>client {c}</div>"
                     for i, c in enumerate(clients))
    width = (end + 1) * col
    height = max(1, len(clients)) * LANE_PX + 8
    return (f"<div class='lanes'><div class='labels' style='height:{height}px'>{labels}</div>"
            f"<div class='axis'><div class='canvas' style='width:{width}px;height:{height}px'>"
            f"{''.join(boxes)}</div></div></div>")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


_CSS = """
body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222}
header{padding:10px 14px;border-radius:6px;margin-bottom:14px}
header.ok{background:#e3f6e3}header.illegal{background:#fbe3e3}header.unknown{background:#fff3d6}
.verdict{font-size:22px;font-weight:700;letter-spacing:.05em}
h2{font-size:15px;margin:18px 0 6px}h2.illegal{color:#b00}h2.ok{color:#070}h2.unknown{color:#a60}
.lanes{display:flex;border:1px solid #ddd;border-radius:4px}
.labels{position:relative;width:80px;flex:none;border-right:1px solid #ddd;background:#fafafa}
.lane-label{position:absolute;left:6px;color:#666;font-size:11px;line-height:26px}
.axis{overflow-x:auto;flex:1}.canvas{position:relative}
.op{position:absolute;height:24px;line-height:24px;padding:0 4px;box-sizing:border-box;
 border:1px solid #8aa;background:#eef4f7;border-radius:3px;font-size:11px;white-space:nowrap;
 overflow:hidden;text-overflow:ellipsis;cursor:pointer}
.op.info{border-style:dashed;background:#f4f4f4}.op.fail{opacity:.45}
.op.lin{background:#c8efc8;border-color:#3a3}.op.unplaced{background:#f7b4b4;border:2px solid #c00}
.op.candidate{background:#fde0b8;border-color:#d80}.op.sel{outline:3px solid #36f}
.badge{display:inline-block;min-width:14px;margin-right:4px;padding:0 3px;border-radius:7px;
 background:#fff;font-size:10px;text-align:center;line-height:14px}
.prefix ol{columns:2;margin:6px 0}.id{color:#888;font-size:11px}
.unplaced-text{color:#b00;font-weight:600}.note{color:#777}
#detail{position:fixed;bottom:0;left:0;right:0;background:#222;color:#eee;padding:6px 12px;
 font:12px monospace;display:none}
.controls{margin:8px 0}
"""

_JS = """
document.addEventListener('click',function(e){
  var box=e.target.closest('.op');var d=document.getElementById('detail');
  document.querySelectorAll('.op.sel').forEach(function(b){b.classList.remove('sel')});
  if(!box){d.style.display='none';return}
  box.classList.add('sel');d.textContent=box.title;d.style.display='block';
});
document.getElementById('only-failing').addEventListener('change',function(e){
  document.querySelectorAll('section.part.ok').forEach(function(s){
    s.style.display=e.target.checked?'none':''});
});
"""


def _page(title: str, verdict: str, summary: str, sections: Sequence[str]) -> str:
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}: {verdict.upper()}</title><style>{_CSS}</style></head><body>"
        f"<header class='{verdict}'><div class='verdict' id='verdict'>{verdict.upper()}</div>"
        f"<div>{_e(title)}</div><div>{summary}</div></header>"
        "<div class='controls'><label><input type='checkbox' id='only-failing'> show only "
        "failing partitions</label></div>"
        f"{''.join(sections)}<div id='detail'></div><script>{_JS}</script></body></html>"
    )
