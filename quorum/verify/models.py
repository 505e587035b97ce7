"""Sequential specifications the linearizability checker compares histories against.

A model is deterministic: ``step(state, op)`` says whether ``op`` with its recorded output is
legal in ``state`` and returns the next state. States must be hashable and compare by value
(the checker memoizes ``(linearized set, state)`` pairs).

Indeterminate operations (status INFO) have no output. A model must accept them in any state
whenever *some* outcome is possible and return the state that outcome produces. Where more
than one outcome would be possible the model must pick the one that changes the state; the
others are equivalent to the operation never taking effect, which the checker explores anyway.

Models partition a history when operations on different keys commute (Herlihy & Wing's
locality: a history is linearizable iff each per-object sub-history is), so each key is
checked on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol

import msgspec

from quorum.errors import UsageError
from quorum.verify.history import Operation, Status

State = Hashable


class Model(Protocol):
    """A sequential specification."""

    name: str

    def init(self) -> State:
        """The state before any operation."""
        ...

    def step(self, state: State, op: Operation) -> tuple[bool, State]:
        """Is ``op`` (with its output) legal in ``state``? Returns (legal, next state)."""
        ...

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        """Split into independently checkable sub-histories (one per key)."""
        ...

    def is_read_only(self, op: Operation) -> bool:
        """True if ``op`` never changes the state (an indeterminate one can then be dropped)."""
        ...

    def describe_op(self, op: Operation) -> str:
        """A short human-readable rendering for reports."""
        ...

    def patch(self, ops: Sequence[Operation]) -> list[Operation]:
        """Tighten indeterminate operations of one partition using what others observed.

        Must not change whether the sub-history is linearizable. Return ``list(ops)`` if the
        model knows nothing better.
        """
        ...


def partition_by_key(ops: Sequence[Operation]) -> list[list[Operation]]:
    groups: dict[str, list[Operation]] = {}
    for op in ops:
        groups.setdefault(op.key, []).append(op)
    return [groups[k] for k in sorted(groups)]


def _hashable(value: Any) -> Hashable:
    """Turn JSON values into hashable ones (lists -> tuples, dicts -> sorted item tuples)."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value  # type: ignore[no-any-return]


class RegisterModel:
    """One register per key with ``read``, ``write`` and ``cas``.

    * ``read``: output = the value read (``initial`` if never written);
    * ``write``: input = the value; output ignored;
    * ``cas``: input = ``[expected, new]``; output = True if it swapped, False if the current
      value differed. An indeterminate cas swaps if and only if the value matches, since a cas
      that fails has no effect (the same as never taking effect).
    """

    name = "register"

    def __init__(self, initial: Any = None) -> None:
        self.initial = _hashable(initial)

    def init(self) -> State:
        return self.initial

    def step(self, state: State, op: Operation) -> tuple[bool, State]:
        kind = op.kind
        if kind == "read":
            return op.indeterminate or _hashable(op.output) == state, state
        if kind == "write":
            return True, _hashable(op.input)
        if kind == "cas":
            expected, new = op.input
            matches = _hashable(expected) == state
            if op.indeterminate:
                return True, _hashable(new) if matches else state
            if op.output:
                return matches, _hashable(new)
            return not matches, state
        return False, state

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        return partition_by_key(ops)

    def is_read_only(self, op: Operation) -> bool:
        # A cas known to have failed changes nothing either.
        return op.kind == "read" or (op.kind == "cas" and not op.indeterminate and not op.output)

    def patch(self, ops: Sequence[Operation]) -> list[Operation]:
        """Resolve INFO writes and cas ops whose value somebody observed.

        If exactly one operation could have produced value v (values written are unique
        within the partition, and v is not the initial value), then a completed read
        returning v, or a successful cas expecting v, proves that operation took effect
        (and, for a cas, succeeded) before the observer returned. Its deadline becomes the
        earliest such return, so the search no longer carries it as pending forever, which
        is what makes histories with many timeouts expensive (etcd's robustness tests patch
        their histories the same way).
        """

        for op in ops:
            _check_register_op(op)

        def produced(op: Operation) -> Any:
            return op.input if op.kind == "write" else op.input[1]

        writers: dict[Hashable, int] = {}
        for op in ops:
            if op.kind in ("write", "cas"):
                v = _hashable(produced(op))
                writers[v] = writers.get(v, 0) + 1
        seen_by: dict[Hashable, float] = {}
        for op in ops:
            if op.indeterminate:
                continue
            if op.kind == "read":
                v = _hashable(op.output)
            elif op.kind == "cas" and op.output:
                v = _hashable(op.input[0])
            else:
                continue
            seen_by[v] = min(seen_by.get(v, math.inf), op.return_time)
        out = []
        for op in ops:
            if op.indeterminate and op.kind in ("write", "cas"):
                v = _hashable(produced(op))
                deadline = seen_by.get(v, math.inf)
                if (v != self.initial and writers[v] == 1
                        and op.call_time <= deadline < math.inf):
                    op = msgspec.structs.replace(
                        op, status=Status.OK, return_time=deadline,
                        output=True if op.kind == "cas" else op.output)
            out.append(op)
        return out

    def describe_op(self, op: Operation) -> str:
        out = "?" if op.indeterminate else repr(op.output)
        if op.kind == "read":
            return f"read {op.key} -> {out}"
        if op.kind == "write":
            return f"write {op.key} {op.input!r}"
        if op.kind == "cas":
            expected, new = op.input
            return f"cas {op.key} {expected!r}->{new!r} -> {out}"
        return f"{op.kind} {op.key} {op.input!r} -> {out}"


# --- key-value store ----------------------------------------------------------------------

# Per-key state: (value, version). version counts modifications since the key was created,
# as in etcd; a missing key is (None, 0).
KvState = tuple[Hashable, int]
_ABSENT: KvState = (None, 0)

_COMPARE_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a is not None and b is not None and a > b,
    "<": lambda a, b: a is not None and b is not None and a < b,
}


class KvModel:
    """A key-value store checked one key at a time.

    Kinds (``key`` is the key; inputs and outputs are JSON values):

    * ``get`` / ``range`` (over exactly one key): output ``{"value": v, "version": n}``, with
      ``value`` null for a missing key; ``version`` may be omitted (then only the value is
      checked);
    * ``put``: input = the value; output ignored;
    * ``delete``: output ``{"deleted": 0|1}`` or null (not checked);
    * ``txn``: input ``{"compare": [{"target": "value"|"version", "op": "=="|"!="|">"|"<",
      "arg": x}, ...], "then": [req, ...], "else": [req, ...]}`` where a request is
      ``{"op": "put", "value": v}``, ``{"op": "delete"}`` or ``{"op": "get"}``; output
      ``{"succeeded": bool, "results": [...]}`` where each get result has the get output form
      (``results`` may be omitted). All requests address the operation's key.
    """

    name = "kv"

    def init(self) -> State:
        return _ABSENT

    def step(self, state: State, op: Operation) -> tuple[bool, State]:
        cur: KvState = state  # type: ignore[assignment]
        kind = op.kind
        if kind in ("get", "range"):
            return op.indeterminate or _read_matches(cur, op.output), cur
        if kind == "put":
            return True, _put(cur, op.input)
        if kind == "delete":
            return _delete_output_ok(cur, op), _ABSENT
        if kind == "txn":
            return _step_txn(cur, op)
        return False, cur

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        return partition_by_key(ops)

    def is_read_only(self, op: Operation) -> bool:
        if op.kind in ("get", "range"):
            return True
        if op.kind == "txn":
            return all(r.get("op") == "get" for r in _txn_requests(op))
        return False

    def patch(self, ops: Sequence[Operation]) -> list[Operation]:
        """Resolve INFO puts whose (unique) value a completed get observed (see
        RegisterModel.patch for why this is sound)."""
        puts: dict[Hashable, int] = {}
        for op in ops:
            _check_kv_op(op)
            if op.kind == "put":
                v = _hashable(op.input)
                puts[v] = puts.get(v, 0) + 1
            elif op.kind == "txn":  # txn puts make the writer of a value ambiguous
                for req in _txn_requests(op):
                    if req.get("op") == "put":
                        v = _hashable(req.get("value"))
                        puts[v] = puts.get(v, 0) + 2
        seen_by: dict[Hashable, float] = {}
        for op in ops:
            if op.kind in ("get", "range") and not op.indeterminate and isinstance(op.output,
                                                                                  dict):
                v = _hashable(op.output.get("value"))
                seen_by[v] = min(seen_by.get(v, math.inf), op.return_time)
        out = []
        for op in ops:
            if op.indeterminate and op.kind == "put":
                v = _hashable(op.input)
                deadline = seen_by.get(v, math.inf)
                if v is not None and puts[v] == 1 and op.call_time <= deadline < math.inf:
                    op = msgspec.structs.replace(op, status=Status.OK, return_time=deadline)
            out.append(op)
        return out

    def describe_op(self, op: Operation) -> str:
        out = "?" if op.indeterminate else _short(op.output)
        if op.kind == "put":
            return f"put {op.key} {op.input!r}"
        if op.kind == "txn":
            return f"txn {op.key} {_short(op.input)} -> {out}"
        return f"{op.kind} {op.key} -> {out}"


def _check_register_op(op: Operation) -> None:
    if op.kind not in ("read", "write", "cas"):
        raise UsageError(f"op {op.op_id}: the register model has no kind {op.kind!r}")
    if op.kind == "cas" and not (isinstance(op.input, list | tuple) and len(op.input) == 2):
        raise UsageError(f"op {op.op_id}: cas input must be [expected, new], got {op.input!r}")


def _check_kv_op(op: Operation) -> None:
    if op.kind not in ("get", "range", "put", "delete", "txn"):
        raise UsageError(f"op {op.op_id}: the kv model has no kind {op.kind!r}")
    if op.kind != "txn":
        return
    spec = op.input
    ok = isinstance(spec, dict) and all(isinstance(spec.get(f, []), list)
                                        for f in ("compare", "then", "else"))
    if ok:
        ok = all(isinstance(c, dict) and c.get("op", "==") in _COMPARE_OPS
                 and c.get("target", "value") in ("value", "version")
                 for c in spec.get("compare", []))
        ok = ok and all(isinstance(r, dict) and r.get("op") in ("put", "delete", "get")
                        for r in spec.get("then", []) + spec.get("else", []))
    if not ok:
        raise UsageError(f"op {op.op_id}: malformed txn {spec!r}")


def _txn_requests(op: Operation) -> list[dict[str, Any]]:
    spec = op.input if isinstance(op.input, dict) else {}
    return list(spec.get("then", [])) + list(spec.get("else", []))


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _put(cur: KvState, value: Any) -> KvState:
    return (_hashable(value), cur[1] + 1)


def _read_matches(cur: KvState, output: Any) -> bool:
    if not isinstance(output, dict):
        return False
    if _hashable(output.get("value")) != cur[0]:
        return False
    version = output.get("version")
    return version is None or version == cur[1]


def _delete_output_ok(cur: KvState, op: Operation) -> bool:
    if op.indeterminate or not isinstance(op.output, dict) or "deleted" not in op.output:
        return True
    existed = 1 if cur != _ABSENT else 0
    return bool(op.output["deleted"] == existed)


def _compare_holds(cur: KvState, compare: dict[str, Any]) -> bool:
    target = compare.get("target", "value")
    actual = cur[1] if target == "version" else cur[0]
    fn = _COMPARE_OPS.get(compare.get("op", "=="))
    return fn is not None and bool(fn(actual, _hashable(compare.get("arg"))))


def _step_txn(cur: KvState, op: Operation) -> tuple[bool, State]:
    spec: dict[str, Any] = op.input or {}
    succeeded = all(_compare_holds(cur, c) for c in spec.get("compare", []))
    if not op.indeterminate:
        out = op.output if isinstance(op.output, dict) else {}
        if bool(out.get("succeeded")) != succeeded:
            return False, cur
    requests: list[dict[str, Any]] = spec.get("then" if succeeded else "else", [])
    results: list[Any] | None = None
    if not op.indeterminate and isinstance(op.output, dict):
        results = op.output.get("results")
    state = cur
    for i, req in enumerate(requests):
        kind = req.get("op")
        if kind == "get":
            if results is not None and (i >= len(results) or not _read_matches(state, results[i])):
                return False, cur
        elif kind == "put":
            state = _put(state, req.get("value"))
        elif kind == "delete":
            state = _ABSENT
        else:
            return False, cur
    return True, state
