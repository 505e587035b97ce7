"""The linearizability checker against hand-made histories that must pass and must fail."""

from __future__ import annotations

from typing import Any

import pytest

from quorum.errors import UsageError
from quorum.verify.history import INFINITY, Operation, Status
from quorum.verify.linearizability import Verdict, check, check_partition
from quorum.verify.models import KvModel, RegisterModel

_ids = iter(range(10**9))


def op(client: int, kind: str, call: float, ret: float, *, key: str = "x", input: Any = None,
       output: Any = None, status: Status = Status.OK) -> Operation:
    if status is Status.INFO:
        ret = INFINITY
    return Operation(client_id=client, op_id=next(_ids), kind=kind, key=key, input=input,
                     output=output, call_time=call, return_time=ret, status=status)


def w(client: int, value: Any, call: float, ret: float, **kw: Any) -> Operation:
    return op(client, "write", call, ret, input=value, **kw)


def r(client: int, value: Any, call: float, ret: float, **kw: Any) -> Operation:
    return op(client, "read", call, ret, output=value, **kw)


def cas(client: int, old: Any, new: Any, ok: bool | None, call: float, ret: float,
        **kw: Any) -> Operation:
    return op(client, "cas", call, ret, input=[old, new], output=ok, **kw)


REG = RegisterModel()

LEGAL: dict[str, list[Operation]] = {
    "empty": [],
    "sequential": [w(1, 1, 0, 1), r(2, 1, 2, 3), w(1, 2, 4, 5), r(2, 2, 6, 7)],
    "initial value read": [r(1, None, 0, 1), w(2, 1, 2, 3)],
    "concurrent writes, reads agree on last": [
        w(1, 1, 0, 10), w(2, 2, 0, 10), r(3, 1, 11, 12), r(4, 1, 13, 14),
    ],
    "concurrent writes, other order": [w(1, 1, 0, 10), w(2, 2, 1, 9), r(3, 1, 11, 12)],
    "read overlapping write sees either": [w(1, 1, 0, 10), r(2, None, 1, 2), r(3, 1, 3, 4)],
    "touching intervals are concurrent": [w(1, 1, 0, 5), r(2, None, 5, 6)],
    "cas success then failure": [
        w(1, 0, 0, 1), cas(1, 0, 1, True, 2, 3), cas(2, 0, 2, False, 4, 5), r(3, 1, 6, 7),
    ],
    "concurrent cas, one wins": [
        w(1, 0, 0, 1), cas(2, 0, 1, True, 2, 10), cas(3, 0, 2, False, 2, 10), r(4, 1, 11, 12),
    ],
    "indeterminate write later shows up": [
        w(1, 1, 0, 0, status=Status.INFO), r(2, None, 1, 2), r(2, 1, 3, 4), r(3, 1, 5, 6),
    ],
    "indeterminate write never shows up": [
        w(1, 1, 0, 0, status=Status.INFO), r(2, None, 1, 2), r(2, None, 30, 40),
    ],
    "indeterminate cas took effect": [
        w(1, 0, 0, 1), cas(2, 0, 7, None, 2, 0, status=Status.INFO), r(3, 7, 50, 51),
    ],
    "indeterminate cas did not": [
        w(1, 0, 0, 1), cas(2, 0, 7, None, 2, 0, status=Status.INFO), r(3, 0, 50, 51),
    ],
    "failed write is ignored": [w(1, 1, 0, 1, status=Status.FAIL), r(2, None, 2, 3)],
    "indeterminate read is ignored": [w(1, 1, 0, 1), r(2, 99, 2, 0, status=Status.INFO)],
    # The search first places the timeout early, where it fails; the same completed ops and
    # state reached *without* it must still be explored, since it may land later (catches
    # over-eager pruning). The late write of 1 keeps the value ambiguous, so nothing is patched.
    "indeterminate write lands after a later write": [
        w(1, 1, 0, 0, status=Status.INFO), w(2, None, 1, 2), r(3, 1, 3, 4), w(2, 1, 10, 11),
    ],
    # A read of 1 does not prove the timed-out write of 1 happened when another write of 1
    # exists; had it happened (after the write of 5), the read of 5 would be impossible.
    "duplicate value: timeout need not have happened": [
        w(1, 1, 0, 1), r(2, 1, 2, 3), w(3, 5, 2.5, 2.6), w(4, 1, 2.7, 0, status=Status.INFO),
        r(5, 5, 4, 5),
    ],
    "two keys independent": [
        w(1, 1, 0, 1, key="x"), w(1, 2, 2, 3, key="y"), r(2, 1, 4, 5, key="x"),
        r(2, 2, 4, 5, key="y"),
    ],
}

ILLEGAL: dict[str, list[Operation]] = {
    "stale read after completed write": [w(1, 1, 0, 1), w(1, 2, 2, 3), r(2, 1, 4, 5)],
    "read of a never-written value": [w(1, 1, 0, 1), r(2, 42, 2, 3)],
    "read sees write before it was invoked": [r(2, 1, 0, 1), w(1, 1, 2, 3)],
    "lost cas: both succeed from the same value": [
        w(1, 0, 0, 1), cas(2, 0, 1, True, 2, 10), cas(3, 0, 2, True, 2, 10),
    ],
    "cas reports failure although value matched": [w(1, 0, 0, 1), cas(2, 0, 1, False, 2, 3)],
    "non-monotonic reads": [w(1, 1, 0, 10), r(2, 1, 1, 2), r(2, None, 3, 4)],
    "failed write observed": [w(1, 1, 0, 1, status=Status.FAIL), r(2, 1, 2, 3)],
    "indeterminate write seen before invocation": [
        r(2, 1, 0, 1), w(1, 1, 2, 0, status=Status.INFO),
    ],
    "indeterminate write flickers": [
        w(1, 1, 0, 0, status=Status.INFO), w(3, 2, 0, 1), r(2, 1, 2, 3), r(2, 2, 4, 5),
        r(2, 1, 6, 7),
    ],
    "concurrent writes, readers disagree": [
        w(1, 1, 0, 10), w(2, 2, 0, 10), r(3, 1, 11, 12), r(4, 2, 13, 14),
    ],
}


@pytest.mark.parametrize("name", sorted(LEGAL))
def test_legal_histories_pass(name: str) -> None:
    result = check(REG, LEGAL[name])
    assert result.verdict is Verdict.OK, result
    # the linearization covers every completed operation that was checked
    placed = {i for p in result.partitions for i in p.linearized}
    completed = {o.op_id for o in LEGAL[name] if o.status is Status.OK}
    assert completed <= placed


@pytest.mark.parametrize("name", sorted(ILLEGAL))
def test_illegal_histories_fail(name: str) -> None:
    result = check(REG, ILLEGAL[name])
    assert result.verdict is Verdict.ILLEGAL, result
    (bad,) = result.failing()
    assert len(bad.unplaced) == 1


def test_illegal_reports_longest_prefix_and_unplaced_op() -> None:
    a, b, stale = w(1, 1, 0, 1), w(1, 2, 2, 3), r(2, 1, 4, 5)
    (part,) = check(REG, [a, b, stale]).partitions
    assert part.linearized == [a.op_id, b.op_id]
    assert part.unplaced == [stale.op_id]


def test_only_the_bad_key_fails() -> None:
    good = [w(1, 1, 0, 1, key="a"), r(2, 1, 2, 3, key="a")]
    bad = [w(1, 1, 0, 1, key="b"), r(2, 5, 2, 3, key="b")]
    result = check(REG, good + bad)
    assert result.verdict is Verdict.ILLEGAL
    verdicts = {p.key: p.verdict for p in result.partitions}
    assert verdicts == {"a": Verdict.OK, "b": Verdict.ILLEGAL}


def _wide_concurrent_history(n: int) -> list[Operation]:
    # n concurrent writes then a read of one of them: many orders to explore.
    ops = [w(i, i, 0, 100) for i in range(n)]
    return [*ops, r(99, 0, 101, 102)]


def test_budget_gives_unknown_never_ok() -> None:
    legal = _wide_concurrent_history(8)
    assert check(REG, legal).verdict is Verdict.OK
    assert check(REG, legal, max_steps=5).verdict is Verdict.UNKNOWN
    illegal = [*legal[:-1], r(99, 1234, 101, 102)]
    assert check(REG, illegal).verdict is Verdict.ILLEGAL
    assert check(REG, illegal, max_steps=5).verdict is Verdict.UNKNOWN


def test_deterministic() -> None:
    hist = ILLEGAL["indeterminate write flickers"] + LEGAL["two keys independent"]
    assert check(REG, hist) == check(REG, hist)


def test_rejects_malformed_history() -> None:
    a = w(1, 1, 0, 1)
    with pytest.raises(UsageError):
        check(REG, [a, a])
    with pytest.raises(UsageError):
        check(REG, [w(1, 1, 5, 1)])


def test_check_partition_ignores_keys() -> None:
    # Checked as one object, a write to y is a write to the same register.
    hist = [w(1, 1, 0, 1, key="x"), w(1, 2, 2, 3, key="y"), r(2, 1, 4, 5, key="x")]
    assert check(REG, hist).verdict is Verdict.OK
    assert check_partition(REG, hist).verdict is Verdict.ILLEGAL


def test_register_initial_value() -> None:
    hist = [r(1, 0, 0, 1)]
    assert check(RegisterModel(initial=0), hist).verdict is Verdict.OK
    assert check(RegisterModel(), hist).verdict is Verdict.ILLEGAL


# --- key-value model ---------------------------------------------------------------------


def kv(client: int, kind: str, call: float, ret: float, **kw: Any) -> Operation:
    return op(client, kind, call, ret, key=kw.pop("key", "k"), **kw)


def get(client: int, value: Any, version: int | None, call: float, ret: float,
        **kw: Any) -> Operation:
    out: dict[str, Any] = {"value": value}
    if version is not None:
        out["version"] = version
    return kv(client, "get", call, ret, output=out, **kw)


def txn(client: int, compare: list[dict[str, Any]], then: list[dict[str, Any]],
        els: list[dict[str, Any]], output: Any, call: float, ret: float,
        **kw: Any) -> Operation:
    spec = {"compare": compare, "then": then, "else": els}
    return kv(client, "txn", call, ret, input=spec, output=output, **kw)


KV = KvModel()
VERSION_IS_0 = [{"target": "version", "op": "==", "arg": 0}]

KV_LEGAL: dict[str, list[Operation]] = {
    "put get": [kv(1, "put", 0, 1, input="a"), get(2, "a", 1, 2, 3)],
    "missing key": [get(1, None, 0, 0, 1)],
    "versions count puts": [
        kv(1, "put", 0, 1, input="a"), kv(1, "put", 2, 3, input="b"), get(2, "b", 2, 4, 5),
    ],
    "delete resets": [
        kv(1, "put", 0, 1, input="a"), kv(1, "delete", 2, 3, output={"deleted": 1}),
        get(2, None, 0, 4, 5), kv(1, "delete", 6, 7, output={"deleted": 0}),
    ],
    "create-if-absent txn": [
        txn(1, VERSION_IS_0, [{"op": "put", "value": "me"}], [{"op": "get"}],
            {"succeeded": True}, 0, 1),
        txn(2, VERSION_IS_0, [{"op": "put", "value": "you"}], [{"op": "get"}],
            {"succeeded": False, "results": [{"value": "me", "version": 1}]}, 2, 3),
        get(3, "me", 1, 4, 5),
    ],
    "value compare": [
        kv(1, "put", 0, 1, input="a"),
        txn(1, [{"target": "value", "op": "==", "arg": "a"}], [{"op": "delete"}], [],
            {"succeeded": True}, 2, 3),
        get(1, None, None, 4, 5),
    ],
    "indeterminate txn took effect": [
        txn(1, VERSION_IS_0, [{"op": "put", "value": "me"}], [], None, 0, 0,
            status=Status.INFO),
        get(2, "me", 1, 5, 6),
    ],
    "range alias": [kv(1, "put", 0, 1, input="a"), kv(2, "range", 2, 3, output={"value": "a"})],
}

KV_ILLEGAL: dict[str, list[Operation]] = {
    "stale get": [
        kv(1, "put", 0, 1, input="a"), kv(1, "put", 2, 3, input="b"), get(2, "a", None, 4, 5),
    ],
    "wrong version": [kv(1, "put", 0, 1, input="a"), get(2, "a", 2, 2, 3)],
    "deleted key still read": [
        kv(1, "put", 0, 1, input="a"), kv(1, "delete", 2, 3), get(2, "a", None, 4, 5),
    ],
    "delete count wrong": [kv(1, "delete", 0, 1, output={"deleted": 1})],
    "two creators": [
        txn(1, VERSION_IS_0, [{"op": "put", "value": "me"}], [], {"succeeded": True}, 0, 5),
        txn(2, VERSION_IS_0, [{"op": "put", "value": "you"}], [], {"succeeded": True}, 0, 5),
    ],
    "txn else-branch read wrong": [
        kv(1, "put", 0, 1, input="a"),
        txn(2, VERSION_IS_0, [], [{"op": "get"}],
            {"succeeded": False, "results": [{"value": "zzz", "version": 1}]}, 2, 3),
    ],
}


@pytest.mark.parametrize("name", sorted(KV_LEGAL))
def test_kv_legal(name: str) -> None:
    assert check(KV, KV_LEGAL[name]).verdict is Verdict.OK


@pytest.mark.parametrize("name", sorted(KV_ILLEGAL))
def test_kv_illegal(name: str) -> None:
    assert check(KV, KV_ILLEGAL[name]).verdict is Verdict.ILLEGAL


@pytest.mark.parametrize("bad", [
    Operation(client_id=1, op_id=1, kind="frobnicate", key="k", call_time=0, return_time=1),
    Operation(client_id=1, op_id=1, kind="txn", key="k", input=[1], call_time=0,
              return_time=1),
    Operation(client_id=1, op_id=1, kind="txn", key="k", input={"then": [{"op": "nuke"}]},
              call_time=0, return_time=1),
    Operation(client_id=1, op_id=1, kind="txn", key="k",
              input={"compare": [{"op": "~", "arg": 1}]}, call_time=0, return_time=1),
])
def test_kv_malformed_ops_raise(bad: Operation) -> None:
    with pytest.raises(UsageError):
        check(KV, [bad])


@pytest.mark.parametrize("bad", [
    Operation(client_id=1, op_id=1, kind="get", call_time=0, return_time=1),
    Operation(client_id=1, op_id=1, kind="cas", input=5, call_time=0, return_time=1),
])
def test_register_malformed_ops_raise(bad: Operation) -> None:
    with pytest.raises(UsageError):
        check(REG, [bad])


def test_kv_read_only_txn_detection() -> None:
    ro = txn(1, [], [{"op": "get"}], [{"op": "get"}], None, 0, 1)
    rw = txn(1, [], [{"op": "get"}], [{"op": "put", "value": 1}], None, 0, 1)
    assert KV.is_read_only(ro) and not KV.is_read_only(rw)


def test_register_patch_resolves_observed_timeouts() -> None:
    timed_out = w(1, 7, 0, 0, status=Status.INFO)
    cas_out = cas(2, 7, 8, None, 1, 0, status=Status.INFO)
    unseen = w(3, 9, 0, 0, status=Status.INFO)
    read7, read8 = r(4, 7, 2, 3), r(4, 8, 5, 6)
    patched = {op.op_id: op for op in REG.patch([timed_out, cas_out, unseen, read7, read8])}
    assert patched[timed_out.op_id].status is Status.OK
    assert patched[timed_out.op_id].return_time == 3  # before the first read of 7 returned
    assert patched[cas_out.op_id].output is True and patched[cas_out.op_id].return_time == 6
    assert patched[unseen.op_id].status is Status.INFO
    # observed before it was invoked: left alone (the checker then reports it illegal)
    late = w(1, 7, 10, 0, status=Status.INFO)
    assert REG.patch([late, read7])[0].status is Status.INFO


def test_kv_patch_resolves_observed_timeouts() -> None:
    put = kv(1, "put", 0, 0, input="v1", status=Status.INFO)
    seen = get(2, "v1", None, 3, 4)
    out = KV.patch([put, seen])
    assert out[0].status is Status.OK and out[0].return_time == 4
    twice = kv(3, "put", 5, 6, input="v1")
    assert KV.patch([put, seen, twice])[0].status is Status.INFO  # ambiguous writer
