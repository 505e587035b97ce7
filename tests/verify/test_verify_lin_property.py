"""Property tests: histories generated from a real sequential execution must pass; the same
history with one read corrupted to a value nobody wrote must fail."""

from __future__ import annotations

import itertools
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from quorum.verify.history import INFINITY, Operation, Status
from quorum.verify.linearizability import Verdict, check
from quorum.verify.models import KvModel, RegisterModel

NEVER_WRITTEN = "never-written"


def sequential_history(seed: int, n_ops: int, n_keys: int) -> list[Operation]:
    """Run ops one by one on a real register map; op i takes effect at time 10*i.

    Each op's interval is stretched randomly around its effect point, so intervals overlap
    but always contain the point where the op really happened. Some writes and cas ops are
    indeterminate: half of those are applied (they happened), half are not (lost).
    """
    rng = random.Random(seed)
    values: dict[str, Any] = {}
    ops: list[Operation] = []
    for i in range(n_ops):
        key = f"k{rng.randrange(n_keys)}"
        point = 10.0 * i
        call = point - rng.uniform(0, 35)
        ret = point + rng.uniform(0, 35)
        kind = rng.choice(["read", "read", "write", "cas"])
        indeterminate = kind != "read" and rng.random() < 0.15
        applied = not indeterminate or rng.random() < 0.5
        if indeterminate and not applied:
            point = ret = INFINITY  # never took effect
        inp: Any = None
        out: Any = None
        if kind == "read":
            out = values.get(key)
        elif kind == "write":
            inp = i
            if applied:
                values[key] = i
        else:
            expected = values.get(key) if rng.random() < 0.6 else -1
            inp = [expected, i]
            out = applied and values.get(key) == expected
            if out:
                values[key] = i
        status = Status.INFO if indeterminate else Status.OK
        ops.append(Operation(
            client_id=i % 7, op_id=i, kind=kind, key=key, input=inp,
            output=None if indeterminate else out, call_time=call,
            return_time=INFINITY if indeterminate else ret, status=status,
        ))
    return ops


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), n_ops=st.integers(1, 60), n_keys=st.integers(1, 3))
def test_generated_history_is_linearizable(seed: int, n_ops: int, n_keys: int) -> None:
    hist = sequential_history(seed, n_ops, n_keys)
    assert check(RegisterModel(), hist).verdict is Verdict.OK


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), n_ops=st.integers(2, 60), n_keys=st.integers(1, 3),
       pick=st.integers(0, 10**6))
def test_corrupted_read_is_illegal(seed: int, n_ops: int, n_keys: int, pick: int) -> None:
    hist = sequential_history(seed, n_ops, n_keys)
    reads = [i for i, op in enumerate(hist) if op.kind == "read"]
    if not reads:
        hist.append(Operation(client_id=0, op_id=n_ops, kind="read", key="k0", output=None,
                              call_time=10.0 * n_ops, return_time=10.0 * n_ops + 1))
        reads = [n_ops]
    victim = reads[pick % len(reads)]
    hist[victim] = Operation(**{**_fields(hist[victim]), "output": NEVER_WRITTEN})
    result = check(RegisterModel(), hist)
    assert result.verdict is Verdict.ILLEGAL
    (bad,) = result.failing()
    assert bad.key == hist[victim].key


def _fields(op: Operation) -> dict[str, Any]:
    return {f: getattr(op, f) for f in op.__struct_fields__}


def kv_history(seed: int, n_ops: int) -> list[Operation]:
    """Like sequential_history, for the KV model: a dict of key -> (value, version)."""
    rng = random.Random(seed)
    store: dict[str, tuple[Any, int]] = {}
    ops: list[Operation] = []
    for i in range(n_ops):
        key = rng.choice("ab")
        point = 10.0 * i
        call, ret = point - rng.uniform(0, 25), point + rng.uniform(0, 25)
        value, version = store.get(key, (None, 0))
        kind = rng.choice(["get", "get", "put", "delete", "txn"])
        inp: Any = None
        out: Any = None
        if kind == "get":
            out = {"value": value, "version": version}
        elif kind == "put":
            inp = f"v{i}"
            store[key] = (inp, version + 1)
        elif kind == "delete":
            out = {"deleted": int(key in store)}
            store.pop(key, None)
        else:  # create-if-absent, else read
            inp = {"compare": [{"target": "version", "op": "==", "arg": 0}],
                   "then": [{"op": "put", "value": f"v{i}"}], "else": [{"op": "get"}]}
            if version == 0:
                store[key] = (f"v{i}", 1)
                out = {"succeeded": True, "results": []}
            else:
                out = {"succeeded": False, "results": [{"value": value, "version": version}]}
        ops.append(Operation(client_id=i % 5, op_id=i, kind=kind, key=key, input=inp,
                             output=out, call_time=call, return_time=ret))
    return ops


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), n_ops=st.integers(1, 50), pick=st.integers(0, 10**6))
def test_kv_generated_history_passes_and_corruption_fails(seed: int, n_ops: int,
                                                          pick: int) -> None:
    hist = kv_history(seed, n_ops)
    assert check(KvModel(), hist).verdict is Verdict.OK
    gets = [i for i, op in enumerate(hist) if op.kind == "get"]
    if gets:
        victim = gets[pick % len(gets)]
        hist[victim] = Operation(**{**_fields(hist[victim]),
                                    "output": {"value": NEVER_WRITTEN, "version": 1}})
        assert check(KvModel(), hist).verdict is Verdict.ILLEGAL


# --- cross-check against brute force on tiny random histories -----------------------------


def brute_force_linearizable(model: Any, ops: list[Operation]) -> bool:
    """Try every subset of INFO ops and every order that respects real time."""
    done = [op for op in ops if op.status is Status.OK]
    info = [op for op in ops if op.status is Status.INFO]
    for mask in range(1 << len(info)):
        chosen = done + [op for j, op in enumerate(info) if mask >> j & 1]
        for order in itertools.permutations(chosen):
            if not all(not (b.return_time < a.call_time)
                       for x, a in enumerate(order) for b in order[x + 1:]):
                continue
            state = model.init()
            for op in order:
                legal, state = model.step(state, op)
                if not legal:
                    break
            else:
                return True
    return False


@st.composite
def tiny_register_history(draw: Any) -> list[Operation]:
    n = draw(st.integers(1, 6))
    ops = []
    for i in range(n):
        kind = draw(st.sampled_from(["read", "write", "cas"]))
        call = draw(st.integers(0, 8))
        status = draw(st.sampled_from([Status.OK, Status.OK, Status.OK, Status.INFO,
                                       Status.FAIL]))
        ret = INFINITY if status is Status.INFO else call + draw(st.integers(0, 5))
        value = st.sampled_from([None, 1, 2])
        inp: Any = None
        out: Any = None
        if kind == "read":
            out = draw(value)
        elif kind == "write":
            inp = draw(value)
        else:
            inp = [draw(value), draw(value)]
            out = draw(st.booleans())
        ops.append(Operation(client_id=i, op_id=i, kind=kind, key="x", input=inp,
                             output=None if status is Status.INFO else out, call_time=call,
                             return_time=ret, status=status))
    return ops


@settings(max_examples=400, deadline=None)
@given(hist=tiny_register_history())
def test_checker_agrees_with_brute_force(hist: list[Operation]) -> None:
    model = RegisterModel()
    expected = brute_force_linearizable(model, hist)
    got = check(model, hist).verdict
    assert got is (Verdict.OK if expected else Verdict.ILLEGAL)


@st.composite
def tiny_unique_write_history(draw: Any) -> list[Operation]:
    # Unique written values, so the observation patch applies to INFO writes and cas ops.
    n = draw(st.integers(1, 6))
    ops = []
    for i in range(n):
        kind = draw(st.sampled_from(["read", "write", "cas"]))
        call = draw(st.integers(0, 8))
        status = draw(st.sampled_from([Status.OK, Status.OK, Status.INFO]))
        ret = INFINITY if status is Status.INFO else call + draw(st.integers(0, 5))
        seen = st.sampled_from([None, *range(10, 10 + n)])
        inp: Any = None
        out: Any = None
        if kind == "read":
            out = draw(seen)
        elif kind == "write":
            inp = 10 + i
        else:
            inp = [draw(seen), 10 + i]
            out = draw(st.booleans())
        ops.append(Operation(client_id=i, op_id=i, kind=kind, key="x", input=inp,
                             output=None if status is Status.INFO else out, call_time=call,
                             return_time=ret, status=status))
    return ops


@settings(max_examples=400, deadline=None)
@given(hist=tiny_unique_write_history())
def test_patched_checker_agrees_with_brute_force(hist: list[Operation]) -> None:
    model = RegisterModel()
    expected = brute_force_linearizable(model, hist)
    assert check(model, hist).verdict is (Verdict.OK if expected else Verdict.ILLEGAL)


@st.composite
def tiny_kv_history(draw: Any) -> list[Operation]:
    n = draw(st.integers(1, 6))
    vals = st.sampled_from(["a", "b"])
    ops = []
    for i in range(n):
        kind = draw(st.sampled_from(["get", "put", "delete", "txn"]))
        call = draw(st.integers(0, 8))
        status = draw(st.sampled_from([Status.OK, Status.OK, Status.INFO]))
        ret = INFINITY if status is Status.INFO else call + draw(st.integers(0, 5))
        inp: Any = None
        out: Any = None
        if kind == "get":
            value = draw(st.sampled_from([None, "a", "b"]))
            out = {"value": value, "version": 0 if value is None else draw(st.integers(1, 3))}
        elif kind == "put":
            inp = draw(vals)
        elif kind == "delete":
            out = {"deleted": draw(st.integers(0, 1))}
        else:
            inp = {"compare": [{"target": "version", "op": "==", "arg": 0}],
                   "then": [{"op": "put", "value": draw(vals)}], "else": [{"op": "get"}]}
            ok = draw(st.booleans())
            got = draw(st.sampled_from(["a", "b"]))
            out = {"succeeded": ok,
                   "results": [] if ok else [{"value": got, "version": draw(st.integers(1, 3))}]}
        ops.append(Operation(client_id=i, op_id=i, kind=kind, key="k", input=inp,
                             output=None if status is Status.INFO else out, call_time=call,
                             return_time=ret, status=status))
    return ops


@settings(max_examples=400, deadline=None)
@given(hist=tiny_kv_history())
def test_kv_checker_agrees_with_brute_force(hist: list[Operation]) -> None:
    model = KvModel()
    expected = brute_force_linearizable(model, hist)
    assert check(model, hist).verdict is (Verdict.OK if expected else Verdict.ILLEGAL)
