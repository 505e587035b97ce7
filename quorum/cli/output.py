"""Printing for people (rich tables) and for programs (``-w json``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def text(data: bytes) -> str:
    """Bytes shown as text: UTF-8 where possible, escapes elsewhere."""
    return data.decode("utf-8", errors="backslashreplace")


def to_jsonable(value: Any) -> Any:
    """msgspec Structs, bytes and tuples -> JSON-friendly values (bytes as UTF-8 text)."""
    if isinstance(value, msgspec.Struct):
        return {f: to_jsonable(getattr(value, f)) for f in value.__struct_fields__}
    if isinstance(value, (bytes, bytearray)):
        return text(bytes(value))
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if hasattr(value, "name") and hasattr(value, "value") and isinstance(value.value, int):
        return value.name  # enums
    return value


def emit_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2, sort_keys=False))


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c)
    for row in rows:
        t.add_row(*[str(x) for x in row])
    console.print(t)


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"[red]Error:[/red] {escape(message)}", soft_wrap=True)
    sys.exit(code)
