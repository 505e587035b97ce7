"""The compaction actor: compactions in small steps, proposed while everything else goes on.

A client-level compaction is a series of log commands (``CompactionRequest`` with ``start`` and
``limit``; see ``quorum.api.compaction.compact_in_steps``, which the backends use): the first
makes it take effect, each next one drops the old records of the next ``limit`` keys. Here the
limit is tiny (1-3 keys of the handful the workloads write), so a series spans several entries
between which writes, crashes, leader changes, snapshots and restarts happen. Every replica must
still hold the same state at the same applied index: the world's state-hash invariant checks
that, and the watch workload checks watchers cancelled because their resume point was compacted.

Like ``compact_in_steps``, a series follows each answer's ``next`` and ends quietly when a step
is refused (a newer compaction superseded it, a leader change, a timeout): the next compaction
covers every key again.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from quorum.sim.world import SimNode, World
from quorum.state import commands as sc


class _Series:
    """One compaction in progress: its revision, step size and steps so far."""

    def __init__(self, revision: int, limit: int) -> None:
        self.revision = revision
        self.limit = limit
        self.steps = 0


class _StepWaiter:
    """Resolves one proposed step; at most one outcome counts (answer, error or timeout)."""

    def __init__(self, compactor: Compactor, series: _Series) -> None:
        self.compactor = compactor
        self.series = series
        self.done = False

    def resolve(self, value: Any) -> None:
        if not self.done:
            self.done = True
            self.compactor.answered(self.series, value)

    def fail(self, exc: BaseException) -> None:
        if not self.done:
            self.done = True
            self.compactor.ended(self.series, type(exc).__name__)

    def timeout(self) -> None:
        self.fail(TimeoutError())


class Compactor:
    """Starts a compaction every ``every_ms`` (at most ``max_series`` in flight), at a revision
    up to ``max_lag`` behind the leader's, ``step_keys`` keys per step, each step proposed
    ``step_gap_ms`` after the previous one's answer (so other work comes in between)."""

    def __init__(self, world: World, rng: random.Random, *,
                 every_ms: tuple[int, int] = (150, 500), max_lag: int = 30,
                 step_keys: tuple[int, int] = (1, 3), step_gap_ms: tuple[int, int] = (5, 60),
                 max_series: int = 2, timeout_ms: int = 1000) -> None:
        self.world = world
        self.rng = rng
        self.every_ms = every_ms
        self.max_lag = max_lag
        self.step_keys = step_keys
        self.step_gap_ms = step_gap_ms
        self.max_series = max_series
        self.timeout_ms = timeout_ms
        self.active = True
        self.in_flight = 0
        # Called with the leader's node just before a compaction at a new revision is
        # proposed: the watch workload saves the history it is about to drop.
        self.before_compaction: Callable[[SimNode], None] | None = None
        self.series = 0  # compactions started (first step proposed)
        self.steps = 0  # step answers received (first steps included)
        self.completed = 0  # series that reached the last key
        self.ended_early: dict[str, int] = {}  # why series stopped before the last key

    def start(self) -> None:
        self.world.at(self.rng.randint(*self.every_ms), self._tick)

    def stop(self) -> None:
        self.active = False

    def _tick(self) -> None:
        if not self.active:
            return
        if self.in_flight < self.max_series:
            self._begin()
        self.world.at(self.rng.randint(*self.every_ms), self._tick)

    def _leader(self) -> SimNode | None:
        node = self.world.nodes.get(self.world.leader())
        return node if node is not None and node.kv is not None else None

    def _begin(self) -> None:
        node = self._leader()
        if node is None:
            return
        assert node.kv is not None
        store = node.kv.store
        revision = store.revision - self.rng.randint(0, self.max_lag)
        if revision <= store.compact_revision:
            return  # nothing new to compact yet
        if self.before_compaction is not None:
            self.before_compaction(node)
        series = _Series(revision, self.rng.randint(*self.step_keys))
        self.series += 1
        self.in_flight += 1
        self.world.trace(f"compact at revision {revision} ({series.limit} keys a step) "
                         f"via n{node.id}")
        self._propose(node, series, b"")

    def _propose(self, node: SimNode, series: _Series, start: bytes) -> None:
        assert node.core is not None
        waiter = _StepWaiter(self, series)
        request = sc.CompactionRequest(series.revision, False, start, series.limit)
        node.core.propose(sc.encode_command(request), waiter)
        self.world.drive(node)
        self.world.at(self.timeout_ms, waiter.timeout)

    def answered(self, series: _Series, value: Any) -> None:
        if not isinstance(value, sc.CompactionResponse):
            self.ended(series, f"answer {type(value).__name__}")
            return
        self.steps += 1
        series.steps += 1
        if not value.next:
            self.completed += 1
            self.in_flight -= 1
            self.world.trace(f"compaction at {series.revision} done in {series.steps} steps")
            return
        # the next step a little later, through whichever node leads then
        self.world.at(self.rng.randint(*self.step_gap_ms), lambda: self._next_step(series, value.next))

    def _next_step(self, series: _Series, start: bytes) -> None:
        node = self._leader()
        if node is None or not self.active:
            self.ended(series, "no leader" if node is None else "stopped")
            return
        self._propose(node, series, start)

    def ended(self, series: _Series, why: str) -> None:
        self.in_flight -= 1
        self.ended_early[why] = self.ended_early.get(why, 0) + 1
        self.world.trace(f"compaction at {series.revision} stopped after {series.steps} "
                         f"steps: {why}")
