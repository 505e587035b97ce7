"""Client histories: what each client invoked, when, and what came back.

A history is a list of :class:`Operation`. Each operation is an *interval* on one time axis,
``[call_time, return_time]``, stamped by whoever records it (a simulator's logical clock, a
real-process harness's monotonic clock). Intervals are closed: an operation that returns at
``t`` and one invoked at ``t`` are concurrent, which is the conservative reading when two
events share a timestamp.

Status says how much is known about the outcome:

* ``OK``   the operation took effect exactly once, between call and return, and ``output``
  is what it returned;
* ``FAIL`` the operation certainly did not take effect (the server rejected it before doing
  anything); checkers drop it;
* ``INFO`` indeterminate (timeout, lost connection): it may have taken effect at any moment
  after ``call_time``, or never. Its ``return_time`` is ``+inf`` and its ``output`` is unknown.

The recorder never reads a clock: times come from the caller, or from an internal logical
counter that increases by one per recorded event (correct whenever the recorder is called in
the order the events happened, e.g. in a single-threaded simulation).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from quorum.errors import UsageError

INFINITY = math.inf
FORMAT_VERSION = 1


class Status(enum.Enum):
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    """One client operation.

    ``kind``, ``input`` and ``output`` are interpreted by a model (see ``models.py``); they
    must be JSON values (None, bool, int, float, str, lists and string-keyed dicts).
    ``op_id`` is unique within a history.
    """

    client_id: int
    op_id: int
    kind: str
    key: str = ""
    input: Any = None
    output: Any = None
    call_time: float = 0.0
    return_time: float = INFINITY
    status: Status = Status.OK

    @property
    def indeterminate(self) -> bool:
        return self.status is Status.INFO


class _WireOperation(msgspec.Struct, kw_only=True):
    # JSON has no infinity: an indeterminate return is written as null.
    client_id: int
    op_id: int
    kind: str
    key: str = ""
    input: Any = None
    output: Any = None
    call_time: float = 0.0
    return_time: float | None = None
    status: Status = Status.OK


class _WireHistory(msgspec.Struct):
    version: int
    operations: list[_WireOperation]


def encode_history(ops: Iterable[Operation]) -> bytes:
    """Encode a history as JSON (``{"version": 1, "operations": [...]}``)."""
    wire = [
        _WireOperation(
            client_id=op.client_id,
            op_id=op.op_id,
            kind=op.kind,
            key=op.key,
            input=op.input,
            output=op.output,
            call_time=op.call_time,
            return_time=None if math.isinf(op.return_time) else op.return_time,
            status=op.status,
        )
        for op in ops
    ]
    return msgspec.json.encode(_WireHistory(FORMAT_VERSION, wire))


def decode_history(data: bytes | str) -> list[Operation]:
    """Decode a history written by :func:`encode_history`.

    Raises msgspec.ValidationError on malformed input and UsageError on an unknown version.
    """
    wire = msgspec.json.decode(data, type=_WireHistory)
    if wire.version != FORMAT_VERSION:
        raise UsageError(f"unsupported history format version {wire.version}")
    return [
        Operation(
            client_id=w.client_id,
            op_id=w.op_id,
            kind=w.kind,
            key=w.key,
            input=w.input,
            output=w.output,
            call_time=w.call_time,
            return_time=INFINITY if w.return_time is None else w.return_time,
            status=w.status,
        )
        for w in wire.operations
    ]


class _Pending(msgspec.Struct):
    client_id: int
    kind: str
    key: str
    input: Any
    call_time: float


class Recorder:
    """Records a history as clients invoke and complete operations.

    ``clock`` is a caller-supplied function returning the current time on one monotonic axis
    (simulated or real); when it is omitted, a logical counter is used. Every method also takes
    an explicit ``at=`` time which wins over both.

    Misuse (completing an unknown op, a client with two operations in flight, time going
    backwards) raises UsageError; the recorder stays usable.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock
        self._counter = 0.0
        self._last_time = -INFINITY
        self._next_op_id = 0
        self._pending: dict[int, _Pending] = {}
        self._busy_clients: set[int] = set()
        self._done: list[Operation] = []

    def _now(self, at: float | None) -> float:
        if at is not None:
            t = float(at)
        elif self._clock is not None:
            t = float(self._clock())
        else:
            self._counter += 1.0
            t = self._counter
        if t < self._last_time or math.isnan(t):
            raise UsageError(f"time went backwards: {t} < {self._last_time}")
        self._last_time = t
        return t

    def invoke(
        self, client_id: int, kind: str, key: str = "", input: Any = None, *, at: float | None = None
    ) -> int:
        """Record an invocation; returns the op_id to complete it with.

        A client is sequential: it may have at most one operation in flight (that is what lets
        a checker read real-time order off a single client's lane).
        """
        if client_id in self._busy_clients:
            raise UsageError(f"client {client_id} already has an operation in flight")
        t = self._now(at)
        op_id = self._next_op_id
        self._next_op_id += 1
        self._pending[op_id] = _Pending(client_id, kind, key, input, t)
        self._busy_clients.add(client_id)
        return op_id

    def complete(self, op_id: int, output: Any = None, *, at: float | None = None) -> Operation:
        """The operation returned successfully with ``output``."""
        return self._finish(op_id, output, Status.OK, at)

    def fail(self, op_id: int, output: Any = None, *, at: float | None = None) -> Operation:
        """The operation certainly did not take effect (``output`` may describe the error)."""
        return self._finish(op_id, output, Status.FAIL, at)

    def timeout(self, op_id: int, *, at: float | None = None) -> Operation:
        """The outcome is unknown: the operation may take effect at any later time, or never."""
        return self._finish(op_id, None, Status.INFO, at)

    def _finish(self, op_id: int, output: Any, status: Status, at: float | None) -> Operation:
        pending = self._pending.get(op_id)
        if pending is None:
            raise UsageError(f"operation {op_id} is not in flight")
        t = self._now(at)
        del self._pending[op_id]
        self._busy_clients.discard(pending.client_id)
        op = Operation(
            client_id=pending.client_id,
            op_id=op_id,
            kind=pending.kind,
            key=pending.key,
            input=pending.input,
            output=output,
            call_time=pending.call_time,
            # An indeterminate op's interval never closes: it may take effect any time later.
            return_time=INFINITY if status is Status.INFO else t,
            status=status,
        )
        self._done.append(op)
        return op

    def history(self) -> list[Operation]:
        """All recorded operations, in op_id order; ops still in flight count as INFO."""
        open_ops = [
            Operation(
                client_id=p.client_id,
                op_id=op_id,
                kind=p.kind,
                key=p.key,
                input=p.input,
                call_time=p.call_time,
                status=Status.INFO,
            )
            for op_id, p in self._pending.items()
        ]
        return sorted(self._done + open_ops, key=lambda op: op.op_id)
