"""Simulated clients: a register workload (read / write / compare-and-set over a few keys).

Each client is sequential (one operation in flight), picks a random live node, and records its
operations in a ``quorum.verify`` history with virtual timestamps. Writes whose outcome is
unknown (timeout, leader change, crash of the node) are recorded as indeterminate.
"""

from __future__ import annotations

import random
from collections import deque
from functools import partial
from typing import Any

from quorum.errors import NoLeader, NotLeader, ProposalDropped, QuorumError
from quorum.sim.world import SimNode, World
from quorum.state import commands as sc
from quorum.verify.history import Operation, Recorder

_CERTAINLY_NOT_APPLIED = (NoLeader, NotLeader, ProposalDropped)


class _Waiter:
    def __init__(self, client: Client, op_id: int, kind: str, node: SimNode, key: str,
                 started_incarnation: int) -> None:
        self.client = client
        self.op_id = op_id
        self.kind = kind
        self.node = node
        self.key = key
        self.incarnation = started_incarnation
        self.done = False

    def resolve(self, value: Any) -> None:
        if self.done:
            return
        self.done = True
        self.client.finish(self, value, None)

    def fail(self, exc: BaseException) -> None:
        if self.done:
            return
        self.done = True
        self.client.finish(self, None, exc)


class Client:
    """One sequential client issuing random register operations."""

    def __init__(self, world: World, recorder: Recorder, client_id: int, keys: list[str],
                 rng: random.Random, timeout_ms: int = 1000,
                 recent: dict[str, deque[int]] | None = None) -> None:
        self.world = world
        self.recent: dict[str, deque[int]] = {} if recent is None else recent
        self.recorder = recorder
        self.id = client_id
        self.keys = keys
        self.rng = rng
        self.timeout_ms = timeout_ms
        self.counter = 0
        self.current: _Waiter | None = None
        self.active = True
        self.completed = 0

    def start(self) -> None:
        self.world.at(self.rng.randint(0, 20), self.next_op)

    def next_op(self) -> None:
        if not self.active or self.current is not None:
            return
        live = [n for n in self.world.nodes.values() if n.core is not None]
        if not live:
            self.world.at(20, self.next_op)
            return
        node = self.rng.choice(live)
        key = self.rng.choice(self.keys)
        roll = self.rng.random()
        self.counter += 1
        value = self.id * 1_000_000 + self.counter
        if roll < 0.45:
            self._issue(node, "read", key, None)
        elif roll < 0.8:
            self._issue(node, "write", key, value)
        else:
            expected = self.rng.choice([None, *self.recent_values(key)])
            self._issue(node, "cas", key, [expected, value])

    def recent_values(self, key: str) -> list[int]:
        """Values clients recently wrote (so some compare-and-sets succeed): the last three
        writes invoked on the key by any client sharing ``recent`` (no history scan)."""
        return list(self.recent.get(key, ()))

    def _issue(self, node: SimNode, kind: str, key: str, arg: Any) -> None:
        op_id = self.recorder.invoke(self.id, kind, key, arg, at=self.world.now)
        if kind == "write":
            self.recent.setdefault(key, deque(maxlen=3)).append(arg)
        core = node.core
        assert core is not None
        waiter = _Waiter(self, op_id, kind, node, key, node.incarnation)
        self.current = waiter
        if kind == "read":
            core.read(_ReadAdapter(waiter))
        else:
            core.propose(_command(kind, key, arg), waiter)
        self.world.drive(node)
        self.world.at(self.timeout_ms, partial(self._timeout, waiter))

    def _timeout(self, waiter: _Waiter) -> None:
        if not waiter.done:
            waiter.done = True
            self.finish(waiter, None, TimeoutError("client timeout"))

    def finish(self, waiter: _Waiter, value: Any, exc: BaseException | None) -> None:
        t = self.world.now
        if exc is None:
            self.recorder.complete(waiter.op_id, _output(waiter.kind, value), at=t)
        elif waiter.kind == "read" or isinstance(exc, _CERTAINLY_NOT_APPLIED):
            self.recorder.fail(waiter.op_id, repr(exc), at=t)
        else:
            self.recorder.timeout(waiter.op_id, at=t)
        self.completed += exc is None
        self.current = None
        self.world.at(self.rng.randint(1, 10), self.next_op)

    def stop(self) -> None:
        self.active = False


class _ReadAdapter:
    """Resolves a read barrier with the value of the key at that moment on that node."""

    def __init__(self, waiter: _Waiter) -> None:
        self.waiter = waiter

    def resolve(self, _applied: Any) -> None:
        node = self.waiter.node
        if node.kv is None or node.incarnation != self.waiter.incarnation:
            self.waiter.fail(QuorumError("node restarted during the read"))
            return
        resp = node.kv.store.range(sc.RangeRequest(self.waiter.key.encode()))
        value = int(resp.kvs[0].value) if resp.kvs else None
        self.waiter.resolve(value)

    def fail(self, exc: BaseException) -> None:
        self.waiter.fail(exc)


def _command(kind: str, key: str, arg: Any) -> bytes:
    k = key.encode()
    if kind == "write":
        return sc.encode_command(sc.PutRequest(k, str(arg).encode()))
    expected, new = arg
    if expected is None:
        cmp = sc.Compare(k, sc.CompareTarget.VERSION, sc.CompareResult.EQUAL, 0)
    else:
        cmp = sc.Compare(k, sc.CompareTarget.VALUE, sc.CompareResult.EQUAL, str(expected).encode())
    return sc.encode_command(sc.TxnRequest((cmp,), (sc.PutRequest(k, str(new).encode()),), ()))


def _output(kind: str, value: Any) -> Any:
    if kind == "read":
        return value
    if kind == "cas":
        return bool(getattr(value, "succeeded", False))
    return None


def finish_pending(clients: list[Client], world: World) -> None:
    """At the end of a run, operations still in flight have unknown outcomes."""
    for c in clients:
        c.stop()
        if c.current is not None and not c.current.done:
            c.current.done = True
            if c.current.kind == "read":
                c.recorder.fail(c.current.op_id, "run ended", at=world.now)
            else:
                c.recorder.timeout(c.current.op_id, at=world.now)
            c.current = None


__all__ = ["Client", "Operation", "finish_pending"]
