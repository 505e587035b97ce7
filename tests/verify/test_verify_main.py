"""The re-check entry point: python -m quorum.verify."""

from __future__ import annotations

from pathlib import Path

import pytest

from quorum.verify.__main__ import main
from quorum.verify.history import Operation, encode_history


def _write(tmp_path: Path, ops: list[Operation]) -> Path:
    path = tmp_path / "history.json"
    path.write_bytes(encode_history(ops))
    return path


def _op(op_id: int, kind: str, call: float, ret: float, **kw: object) -> Operation:
    return Operation(client_id=op_id, op_id=op_id, kind=kind, key="x", call_time=call,
                     return_time=ret, **kw)  # type: ignore[arg-type]


def test_register_ok_and_illegal_exit_codes(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    good = _write(tmp_path, [_op(1, "write", 0, 1, input=1), _op(2, "read", 2, 3, output=1)])
    assert main([str(good)]) == 0
    bad = _write(tmp_path, [_op(1, "write", 0, 1, input=1), _op(2, "read", 2, 3, output=7)])
    prefix = tmp_path / "report"
    assert main([str(bad), "--report", str(prefix)]) == 1
    out = capsys.readouterr().out
    assert "ILLEGAL" in out and "cannot place op [2]" in out
    assert (tmp_path / "report.html").exists() and (tmp_path / "report.json").exists()


def test_budget_gives_unknown_exit_code(tmp_path: Path) -> None:
    ops = [_op(i, "write", 0, 10, input=i) for i in range(6)]
    path = _write(tmp_path, [*ops, _op(9, "read", 11, 12, output=0)])
    assert main([str(path), "--max-steps", "3"]) == 2


def test_list_append_and_bad_input(tmp_path: Path) -> None:
    txn = _op(1, "txn", 0, 1, input=[["r", "x", None]], output=[["r", "x", [5]]])
    path = _write(tmp_path, [txn])
    assert main([str(path), "--model", "list-append"]) == 1  # garbage read
    (tmp_path / "junk.json").write_text("{not json")
    assert main([str(tmp_path / "junk.json")]) == 3
    assert main([str(path), "--model", "kv"]) == 3  # a list-append txn is not a kv txn
