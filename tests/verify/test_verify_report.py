"""JSON and HTML reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from quorum.verify.elle import check_list_append
from quorum.verify.history import INFINITY, Operation, Status
from quorum.verify.linearizability import check
from quorum.verify.models import RegisterModel
from quorum.verify.report import elle_report_html, report_html, report_json, write_report


def _op(op_id: int, client: int, kind: str, call: float, ret: float, key: str = "x",
        input: object = None, output: object = None, status: Status = Status.OK) -> Operation:
    return Operation(client_id=client, op_id=op_id, kind=kind, key=key, input=input,
                     output=output, call_time=call, return_time=ret, status=status)


FAILING = [
    _op(1, 1, "write", 0, 1, input=1),
    _op(2, 1, "write", 2, 3, input=2),
    _op(3, 2, "read", 4, 5, output=1),  # stale: cannot be placed after write 2
    _op(4, 3, "write", 1, INFINITY, input=9, status=Status.INFO),
    _op(5, 3, "read", 0, 1, key="y", output=None),
]


def _classes(page: str, op_id: int) -> set[str]:
    m = re.search(rf"<div class='([^']*)' data-op='{op_id}'", page)
    assert m, f"op {op_id} not drawn"
    return set(m.group(1).split())


def test_failing_html_marks_prefix_and_unplaced_op() -> None:
    result = check(RegisterModel(), FAILING)
    page = report_html(result, FAILING, RegisterModel(), title="planted stale read")
    assert page.startswith("<!DOCTYPE html>")
    assert "id='verdict'>ILLEGAL<" in page and "planted stale read" in page
    for client in (1, 2, 3):
        assert f">client {client}<" in page
    assert "unplaced" in _classes(page, 3)
    assert "lin" in _classes(page, 1) and "lin" in _classes(page, 2)
    assert "info" in _classes(page, 4)
    assert "could not be placed next: read x -&gt; 1" in page
    # the OK partition (key y) is drawn too, without failure marks
    assert _classes(page, 5) == {"op", "ok"}
    # standalone: no external assets
    assert "<style>" in page and "<script>" in page
    for external in ("<link", " src=", "http://", "https://"):
        assert external not in page


def test_passing_html() -> None:
    hist = [_op(1, 1, "write", 0, 1, input=1), _op(2, 2, "read", 2, 3, output=1)]
    page = report_html(check(RegisterModel(), hist), hist)
    assert "id='verdict'>OK<" in page
    assert "unplaced" not in _classes(page, 2) and "lin" not in _classes(page, 2)


def test_html_escapes_values() -> None:
    hist = [_op(1, 1, "write", 0, 1, input="<script>alert(1)</script>")]
    page = report_html(check(RegisterModel(), hist), hist)
    assert "<script>alert(1)" not in page and "&lt;script&gt;" in page


def test_json_report_round_trips() -> None:
    result = check(RegisterModel(), FAILING)
    doc = json.loads(report_json(result, FAILING))
    assert doc["kind"] == "linearizability" and doc["verdict"] == "illegal"
    (bad,) = [p for p in doc["result"]["partitions"] if p["verdict"] == "illegal"]
    # the indeterminate write 9 fits before write 2, so the longest prefix includes it
    assert bad["linearized"] == [1, 4, 2] and bad["unplaced"] == [3]
    assert len(doc["history"]) == len(FAILING)
    assert doc["history"][3]["return_time"] is None  # indeterminate


def test_elle_reports() -> None:
    hist = [
        Operation(client_id=1, op_id=1, kind="txn", input=[["append", "x", 1], ["r", "y", None]],
                  output=[["append", "x", 1], ["r", "y", [1]]], call_time=0, return_time=10),
        Operation(client_id=2, op_id=2, kind="txn", input=[["append", "y", 1], ["r", "x", None]],
                  output=[["append", "y", 1], ["r", "x", [1]]], call_time=0, return_time=10),
    ]
    result = check_list_append(hist)
    page = elle_report_html(result, hist)
    assert "id='verdict'>ILLEGAL<" in page and "G1c" in page
    assert "unplaced" in _classes(page, 1) and "unplaced" in _classes(page, 2)
    doc = json.loads(report_json(result, hist))
    assert doc["kind"] == "list-append" and doc["result"]["anomalies"][0]["kind"] == "G1c"


def test_write_report_files(tmp_path: Path) -> None:
    result = check(RegisterModel(), FAILING)
    json_path, html_path = write_report(tmp_path / "run-7", result, FAILING, RegisterModel())
    assert json_path.name == "run-7.json" and html_path.name == "run-7.html"
    assert json.loads(json_path.read_bytes())["verdict"] == "illegal"
    assert "ILLEGAL" in html_path.read_text()


def test_large_failing_partition_is_drawn_around_the_failure() -> None:
    hist = []
    for i in range(600):  # write i, then read it back, one after the other
        hist.append(_op(2 * i, 1, "write", 4 * i, 4 * i + 1, input=i))
        hist.append(_op(2 * i + 1, 2, "read", 4 * i + 2, 4 * i + 3, output=i))
    stale = 2 * 550 + 1
    hist[stale] = _op(stale, 2, "read", 4 * 550 + 2, 4 * 550 + 3, output=549)
    result = check(RegisterModel(), hist)
    (part,) = result.failing()
    assert part.unplaced == [stale] and len(part.linearized) == 2 * 550 + 1
    page = report_html(result, hist, RegisterModel())
    assert "showing" in page and "around the failure" in page
    assert "unplaced" in _classes(page, stale)
    assert "lin" in _classes(page, 2 * 550)  # the write the stale read missed
    assert "data-op='0'" not in page  # far from the failure: not drawn
    assert "1051 earlier operations" in page  # the prefix list is cut to its last 50
