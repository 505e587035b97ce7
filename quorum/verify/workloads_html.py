"""Small standalone HTML pages for the workloads whose results are tables, not histories
(lock, watch, lease), and the index page of a ``quorum verify`` run."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em} .pass{color:#176f2c} .fail{color:#b00020} .unknown{color:#a66b00}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:2px 8px;
text-align:left} th{background:#f3f3f3} li{margin:.2em 0}
"""


def esc(value: object) -> str:
    return html.escape(str(value))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, verdict: str, sections: Sequence[str]) -> str:
    cls = verdict.lower()
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{esc(title)}: "
            f"<span class='{cls}'>{esc(verdict)}</span></h1>{''.join(sections)}</body></html>")


def simple_page(title: str, problems: Sequence[str], details: Mapping[str, object],
                headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Problems, a key/value summary, then one table."""
    verdict = "FAIL" if problems else "PASS"
    items = "".join(f"<li>{esc(p)}</li>" for p in problems) or "<li>none</li>"
    sections = [f"<h2>problems</h2><ul>{items}</ul>",
                "<h2>summary</h2>" + table(("what", "value"), list(details.items()))]
    if rows:
        sections.append(table(headers, rows))
    return page(title, verdict, sections)
