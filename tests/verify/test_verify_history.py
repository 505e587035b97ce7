"""The history format and recorder."""

from __future__ import annotations

import math

import msgspec
import pytest

from quorum.errors import UsageError
from quorum.verify.history import (
    Operation,
    Recorder,
    Status,
    decode_history,
    encode_history,
)


def test_logical_counter_orders_events_as_recorded() -> None:
    rec = Recorder()
    a = rec.invoke(1, "write", "x", 1)
    b = rec.invoke(2, "read", "x")
    rec.complete(a)
    rec.complete(b, 1)
    ops = {op.op_id: op for op in rec.history()}
    assert (ops[a].call_time, ops[a].return_time) == (1.0, 3.0)
    assert (ops[b].call_time, ops[b].return_time) == (2.0, 4.0)
    assert ops[b].output == 1 and ops[b].status is Status.OK


def test_caller_supplied_clock_and_explicit_times() -> None:
    now = [10.0]
    rec = Recorder(clock=lambda: now[0])
    op = rec.invoke(1, "write", "x", 5)
    now[0] = 12.5
    done = rec.complete(op)
    assert (done.call_time, done.return_time) == (10.0, 12.5)
    op2 = rec.invoke(1, "read", "x", at=20.0)
    assert rec.complete(op2, 5, at=21.0).return_time == 21.0


def test_timeout_is_indeterminate_with_infinite_return() -> None:
    rec = Recorder()
    op = rec.invoke(1, "write", "x", 1)
    out = rec.timeout(op)
    assert out.status is Status.INFO and math.isinf(out.return_time) and out.output is None
    # the client may go on after a timeout (its old op stays open forever)
    rec.complete(rec.invoke(1, "read", "x"), 1)


def test_fail_records_definite_failure() -> None:
    rec = Recorder()
    out = rec.fail(rec.invoke(3, "cas", "x", [1, 2]), "no leader")
    assert out.status is Status.FAIL and out.output == "no leader"
    assert out.return_time == 2.0


def test_ops_still_in_flight_are_reported_as_info() -> None:
    rec = Recorder()
    rec.invoke(1, "write", "x", 1)
    (op,) = rec.history()
    assert op.status is Status.INFO and math.isinf(op.return_time)


def test_misuse_raises_and_recorder_stays_usable() -> None:
    rec = Recorder()
    op = rec.invoke(1, "read", "x")
    with pytest.raises(UsageError):
        rec.invoke(1, "read", "x")  # a client is sequential
    with pytest.raises(UsageError):
        rec.complete(999)
    with pytest.raises(UsageError):
        rec.complete(op, 0, at=-5.0)  # time went backwards
    rec.complete(op, None)
    with pytest.raises(UsageError):
        rec.complete(op, None)  # already completed
    assert len(rec.history()) == 1


def test_json_round_trip_keeps_infinity_and_statuses() -> None:
    ops = [
        Operation(client_id=1, op_id=0, kind="write", key="k", input={"a": [1, 2]},
                  call_time=1.5, return_time=2.5),
        Operation(client_id=2, op_id=1, kind="cas", key="k", input=[1, 2], call_time=2.0,
                  status=Status.INFO),
        Operation(client_id=3, op_id=2, kind="read", key="k", output=None, call_time=3.0,
                  return_time=4.0, status=Status.FAIL),
    ]
    data = encode_history(ops)
    assert b"Infinity" not in data and b'"info"' in data
    assert decode_history(data) == ops
    assert decode_history(data.decode()) == ops


def test_decode_rejects_bad_input() -> None:
    with pytest.raises(UsageError):
        decode_history(b'{"version": 99, "operations": []}')
    with pytest.raises(msgspec.ValidationError):
        decode_history(b'{"version": 1, "operations": [{"op_id": 1}]}')
