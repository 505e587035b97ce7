"""The list-append checker: planted anomalies must be caught, valid histories must pass."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum.errors import UsageError
from quorum.verify.elle import _tarjan, check_list_append
from quorum.verify.history import INFINITY, Operation, Status

_ids = itertools.count(1)


def T(call: float, ret: float, *micro: Any, status: Status = Status.OK,
      client: int = 0) -> Operation:
    """A transaction; micro-ops like ("append", "x", 1) or ("r", "x", [1, 2])."""
    out = [list(m) for m in micro]
    inp = [[f, k, v if f == "append" else None] for f, k, v in out]
    return Operation(client_id=client, op_id=next(_ids), kind="txn", input=inp,
                     output=out if status is Status.OK else None, call_time=call,
                     return_time=INFINITY if status is Status.INFO else ret, status=status)


def a(k: str, v: int) -> tuple[str, str, int]:
    return ("append", k, v)


def r(k: str, vs: list[int]) -> tuple[str, str, list[int]]:
    return ("r", k, vs)


def kinds(history: list[Operation], realtime: bool = True) -> list[str]:
    return check_list_append(history, realtime=realtime).kinds


def test_serial_history_is_valid() -> None:
    h = [
        T(0, 1, a("x", 1), r("x", [1])),
        T(2, 3, r("x", [1]), a("x", 2), a("y", 1)),
        T(4, 5, r("x", [1, 2]), r("y", [1])),
    ]
    result = check_list_append(h)
    assert result.valid and result.anomalies == [] and result.edge_count > 0


def test_concurrent_valid_history() -> None:
    h = [
        T(0, 10, a("x", 1)),
        T(0, 10, a("x", 2)),
        T(0, 10, r("x", [2])),
        T(11, 12, r("x", [2, 1])),
    ]
    assert kinds(h) == []


def test_g0_write_cycle() -> None:
    h = [
        T(0, 10, a("x", 1), a("y", 1)),
        T(0, 10, a("x", 2), a("y", 2)),
        T(11, 12, r("x", [1, 2]), r("y", [2, 1])),
    ]
    assert kinds(h) == ["G0"]
    (anomaly,) = check_list_append(h).anomalies
    assert {e.type for e in anomaly.cycle} == {"ww"} and len(anomaly.cycle) == 2


def test_g1c_circular_information_flow() -> None:
    h = [
        T(0, 10, a("x", 1), r("y", [1])),
        T(0, 10, a("y", 1), r("x", [1])),
    ]
    assert kinds(h) == ["G1c"]


def test_g_single_read_skew() -> None:
    h = [
        T(0, 10, r("x", []), r("y", [1])),
        T(0, 10, a("x", 1), a("y", 1)),
        T(11, 12, r("x", [1])),
    ]
    assert kinds(h) == ["G-single"]


def test_g2_write_skew() -> None:
    h = [
        T(0, 10, r("x", []), a("y", 1)),
        T(0, 10, r("y", []), a("x", 1)),
        T(11, 12, r("x", [1]), r("y", [1])),
    ]
    assert kinds(h) == ["G2"]


def test_stale_read_violates_realtime_only() -> None:
    h = [
        T(0, 1, a("x", 1)),
        T(2, 3, r("x", [])),
        T(4, 5, r("x", [1])),
    ]
    assert kinds(h) == ["G-single-realtime"]
    assert kinds(h, realtime=False) == []


def test_touching_intervals_have_no_realtime_order() -> None:
    h = [T(0, 2, a("x", 1)), T(2, 3, r("x", [])), T(4, 5, r("x", [1]))]
    assert kinds(h) == []


def test_g1a_aborted_read() -> None:
    h = [T(0, 1, a("x", 1), status=Status.FAIL), T(2, 3, r("x", [1]))]
    assert kinds(h) == ["G1a"]


def test_g1b_intermediate_read() -> None:
    h = [T(0, 10, a("x", 1), a("x", 2)), T(0, 10, r("x", [1]))]
    assert kinds(h) == ["G1b"]


def test_incompatible_order() -> None:
    h = [
        T(0, 1, a("x", 1)), T(0, 1, a("x", 2)),
        T(2, 3, r("x", [1, 2])), T(2, 3, r("x", [2, 1])),
    ]
    assert kinds(h) == ["incompatible-order"]


def test_duplicate_elements_and_garbage() -> None:
    assert kinds([T(0, 1, a("x", 1)), T(2, 3, r("x", [1, 1]))]) == ["duplicate-elements"]
    assert kinds([T(0, 1, r("x", [99]))]) == ["garbage-read"]
    assert "duplicate-appends" in kinds([T(0, 1, a("x", 1)), T(2, 3, a("x", 1))])


def test_internal_consistency() -> None:
    assert kinds([T(0, 1, a("x", 5), r("x", []))]) == ["internal"]
    # the value changed between two reads of one transaction (also a G-single: rw then wr)
    assert "internal" in kinds([T(0, 1, r("x", []), r("x", [7])), T(0, 1, a("x", 7))])
    assert kinds([T(0, 1, a("x", 5), r("x", [5])), T(2, 3, r("x", [5]), a("x", 6),
                                                        r("x", [5, 6]))]) == []


def test_indeterminate_append_may_be_observed() -> None:
    h = [T(0, 0, a("x", 1), status=Status.INFO), T(5, 6, r("x", [1])), T(7, 8, r("x", [1]))]
    assert kinds(h) == []


def test_indeterminate_txn_joins_cycles() -> None:
    # The INFO writer is a node: a reader that misses it after another saw it is caught.
    h = [
        T(0, 0, a("x", 1), a("y", 1), status=Status.INFO),
        T(5, 6, r("x", []), r("y", [1])),
        T(7, 8, r("x", [1])),
    ]
    assert kinds(h) == ["G-single"]


def test_cycle_report_names_transactions_and_edges() -> None:
    h = [
        T(0, 10, a("x", 1), r("y", [1])),
        T(0, 10, a("y", 1), r("x", [1])),
    ]
    (anomaly,) = check_list_append(h).anomalies
    assert sorted(anomaly.op_ids) == sorted(op.op_id for op in h)
    assert all(e.type == "wr" and e.key in ("x", "y") for e in anomaly.cycle)
    assert "-wr(" in anomaly.description


def test_deterministic() -> None:
    h = [
        T(0, 10, r("x", []), a("y", 1)), T(0, 10, r("y", []), a("x", 1)),
        T(11, 12, r("x", [1]), r("y", [1])),
    ]
    assert check_list_append(h) == check_list_append(h)


# --- the SCC routine against a brute-force reachability oracle ---------------------------


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 10**6), density=st.floats(0.0, 0.4))
def test_tarjan_matches_reachability(n: int, seed: int, density: float) -> None:
    rng = random.Random(seed)
    succ = {i: [j for j in range(n) if j != i and rng.random() < density] for i in range(n)}
    reach = {i: {i} for i in range(n)}
    changed = True
    while changed:
        changed = False
        for i in range(n):
            new = set().union(*(reach[j] for j in succ[i])) | reach[i]
            if new != reach[i]:
                reach[i], changed = new, True
    expected = {frozenset(j for j in range(n) if i in reach[j] and j in reach[i])
                for i in range(n)}
    got = {frozenset(c) for c in _tarjan(range(n), lambda i: succ[i])}
    assert got == expected


@pytest.mark.parametrize("seed", range(5))
def test_random_serial_histories_are_valid(seed: int) -> None:
    rng = random.Random(seed)
    lists: dict[str, list[int]] = {}
    h = []
    for i in range(200):
        micro: list[Any] = []
        for _ in range(rng.randint(1, 4)):
            k = rng.choice("abc")
            if rng.random() < 0.5:
                lists.setdefault(k, []).append(i * 10 + len(micro))
                micro.append(a(k, i * 10 + len(micro)))
            else:
                micro.append(r(k, list(lists.get(k, []))))
        h.append(T(2 * i, 2 * i + 1, *micro))
    assert kinds(h) == []
    # Planted: one read misses the latest append -> realtime (or data) cycle.
    victim = next(i for i in range(150, 200) for m in h[i].output
                  if m[0] == "r" and len(m[2]) > 1)
    out = [list(m) for m in h[victim].output]
    j = next(j for j, m in enumerate(out) if m[0] == "r" and len(m[2]) > 1)
    out[j][2] = out[j][2][:-1]
    old = h[victim]
    h[victim] = T(old.call_time, old.return_time, *[tuple(m) for m in out])
    assert check_list_append(h).valid is False


# --- soundness against brute force: every anomaly reported must be real -------------------


def serializable_brute_force(history: list[Operation]) -> bool:
    """Is there a serial order (respecting real time) of the committed transactions plus
    some of the indeterminate ones that reproduces every read?"""
    done = [op for op in history if op.status is Status.OK]
    info = [op for op in history if op.status is Status.INFO]
    for mask in range(1 << len(info)):
        chosen = done + [op for j, op in enumerate(info) if mask >> j & 1]
        for order in itertools.permutations(chosen):
            if any(b.return_time < a.call_time for x, a in enumerate(order)
                   for b in order[x + 1:]):
                continue
            lists: dict[str, list[int]] = {}
            ok = True
            for op in order:
                for f, k, v in (op.output if op.status is Status.OK else op.input):
                    if f == "append":
                        lists.setdefault(k, []).append(v)
                    elif op.status is Status.OK and v != lists.get(k, []):
                        ok = False
            if ok:
                return True
    return False


@st.composite
def tiny_append_history(draw: Any) -> list[Operation]:
    n = draw(st.integers(1, 4))
    values = iter(range(1, 100))
    appended: dict[str, list[int]] = {"x": [], "y": []}
    txns = []
    for _ in range(n):
        micro: list[Any] = []
        for _ in range(draw(st.integers(1, 3))):
            k = draw(st.sampled_from("xy"))
            if draw(st.booleans()):
                v = next(values)
                appended[k].append(v)
                micro.append(a(k, v))
            else:
                micro.append(("r", k, None))
        call = draw(st.integers(0, 6))
        ret = call + draw(st.integers(0, 4))
        status = draw(st.sampled_from([Status.OK, Status.OK, Status.OK, Status.INFO,
                                       Status.FAIL]))
        txns.append((call, ret, micro, status))
    out = []
    for call, ret, micro, status in txns:
        filled = []
        for f, k, v in micro:
            if f == "r":
                pool = appended[k]
                perm = draw(st.permutations(pool)) if pool else []
                v = perm[: draw(st.integers(0, len(perm)))]
            filled.append((f, k, v))
        out.append(T(call, ret, *filled, status=status))
    return out


@settings(max_examples=300, deadline=None)
@given(hist=tiny_append_history())
def test_reported_anomalies_are_real(hist: list[Operation]) -> None:
    result = check_list_append(hist)
    if serializable_brute_force(hist):
        assert result.valid, result.anomalies


@pytest.mark.parametrize("micro", [
    "append x 1",
    [["append", "x"]],
    [["write", "x", 1]],
    [["r", "x", 5]],
])
def test_malformed_transactions_raise(micro: Any) -> None:
    op = Operation(client_id=1, op_id=1, kind="txn", input=micro, output=micro, call_time=0,
                   return_time=1)
    with pytest.raises(UsageError):
        check_list_append([op])
