"""The watch workload: watchers on every node's state machine, and clients writing multi-key
transactions so that one revision carries several events.

Each logical watcher lives on one node and survives its restarts the way an etcd client does:
when the process dies, the stream ends with whatever was delivered; when it comes back, the
watcher opens a new stream at the last revision it observed + 1. What every watcher received is
recorded as a ``quorum.verify.workloads.WatcherLog`` and checked at the end of the run against
the committed history (ordered, unique, atomic, reliable, resumable, no phantoms).

The committed history is read from the MVCC store of the converged replicas (every key's
retained records); the run has already checked that replicas agree (equal state hashes at equal
applied index), and the watch hub that is under test is not involved in building it. Compaction
drops old records, so before each compaction (``harvest``, called by the compaction actor) the
records it may drop are saved from the leader's store: every record at or below the leader's
revision, which is at or above the compaction's.

A watcher whose resume point was compacted is cancelled with the compaction revision and resumes
there; the checker excuses the compacted gap only for a stream that started below it, and the
workload checks that the revision the hub named is one at which a compaction was applied.
"""

from __future__ import annotations

import random
from typing import Any

from quorum.sim.world import SimNode, Violation, World
from quorum.state import commands as sc
from quorum.state.watch import WatchRequest
from quorum.state.watch import WatchResponse as StateWatchResponse
from quorum.verify.workloads import (
    WatcherLog,
    WatchEvent,
    WatchResponse,
    WatchStream,
    WatchViolation,
    check_watches,
)

# (key, range_end) of the watchers every node gets: every key, and the transaction keys only
WATCH_RANGES: tuple[tuple[str, str], ...] = (("\0", "\0"), ("w/", "w0"))
TXN_KEYS = ("w/a", "w/b", "w/c", "w/d")


class _Watch:
    """One logical watcher on one node: its log and the stream open in the current process."""

    def __init__(self, node_id: int, index: int, key: str, range_end: str) -> None:
        self.node_id = node_id
        self.log = WatcherLog(watcher_id=f"n{node_id}.w{index}", key=key, range_end=range_end)
        self.last_seen = 0  # highest revision observed (event or progress)
        self.incarnation = -1  # process the open stream belongs to
        self.watch_id = 0

    def request(self) -> WatchRequest:
        return WatchRequest(self.log.key.encode(), self.log.range_end.encode(),
                            start_revision=self.last_seen + 1)


class WatchWorkload:
    """Watchers on every node plus ``writers`` clients proposing multi-key transactions."""

    def __init__(self, world: World, rng: random.Random, writers: int = 1) -> None:
        self.world = world
        self.rng = rng
        self.watches: dict[int, list[_Watch]] = {}
        self.writers = writers
        self.active = True
        self.txns = 0
        self.responses = 0
        self.resumed = 0  # streams reopened after a cancel (slow consumer or compacted)
        self.compacted = 0  # streams cancelled because their start revision was compacted
        # history saved before compactions dropped it: revision -> key -> event
        self.harvested: dict[int, dict[str, WatchEvent]] = {}
        self.harvested_to = 0  # every committed record at or below this was saved

    def start(self) -> None:
        previous = self.world.on_node_started

        def started(node: SimNode) -> None:
            if previous is not None:
                previous(node)
            self.attach(node)

        self.world.on_node_started = started
        for node in list(self.world.nodes.values()):
            self.attach(node)
        for _ in range(self.writers):
            self.world.at(self.rng.randint(0, 30), self._write)

    # --- watchers ---------------------------------------------------------------------------

    def attach(self, node: SimNode) -> None:
        """(Re)open the node's watchers in its current process, resuming where each stopped."""
        if node.kv is None:
            return
        watches = self.watches.setdefault(node.id, [
            _Watch(node.id, i, key, end) for i, (key, end) in enumerate(WATCH_RANGES)])
        for w in watches:
            self._open(node, w)
        self._schedule_drain(node, node.incarnation)

    def _open(self, node: SimNode, w: _Watch) -> None:
        assert node.kv is not None
        w.watch_id = node.kv.store.watch(w.request())
        w.incarnation = node.incarnation
        w.log.streams.append(WatchStream(start_revision=w.last_seen + 1))

    def _schedule_drain(self, node: SimNode, incarnation: int) -> None:
        def drain() -> None:
            if node.kv is None or node.incarnation != incarnation:
                return  # the process died: its streams ended with what they delivered
            if not node.paused:
                self.drain(node)
            self.world.at(self.rng.randint(10, 60), drain)

        self.world.at(self.rng.randint(10, 60), drain)

    def drain(self, node: SimNode) -> None:
        if node.kv is None:
            return
        for w in self.watches.get(node.id, ()):
            if w.incarnation != node.incarnation:
                continue
            for resp in node.kv.store.drain_watch(w.watch_id):
                self._record(node, w, resp)

    def _record(self, node: SimNode, w: _Watch, resp: StateWatchResponse) -> None:
        self.responses += 1
        stream = w.log.streams[-1]
        if resp.events:
            events = [_event(e) for e in resp.events]
            stream.responses.append(WatchResponse(events=events))
            w.last_seen = max(w.last_seen, *(e.revision for e in events))
        elif resp.progress:
            stream.responses.append(WatchResponse(progress_revision=resp.revision))
            w.last_seen = max(w.last_seen, resp.revision)
        if resp.canceled:
            # A slow consumer resumes after what it saw; a compacted one at the compaction
            # revision (what lies below is gone; the checker excuses that gap only).
            stream.compact_revision = resp.compact_revision
            if resp.compact_revision:
                self._check_compacted(node, w, resp.compact_revision)
                w.last_seen = max(w.last_seen, resp.compact_revision - 1)
            self.resumed += 1
            self._open(node, w)

    def _check_compacted(self, node: SimNode, w: _Watch, compact_revision: int) -> None:
        """A compacted cancel must name a compaction that was applied (else the watcher would
        skip events that still exist, and the checker would excuse the gap)."""
        self.compacted += 1
        if compact_revision not in self.world.compactions:
            raise Violation("watch-compacted",
                            f"{w.log.watcher_id} on n{node.id} cancelled as compacted at "
                            f"{compact_revision}; compactions applied: "
                            f"{sorted(self.world.compactions)[-5:]}")

    # --- history kept across compactions -----------------------------------------------------

    def harvest(self, node: SimNode) -> None:
        """Save the committed records of ``node`` (the leader about to propose a compaction)
        that are newer than the last harvest. Sound because every compaction goes through
        here first: a record a compaction drops is at or below its revision, which is at or
        below this node's revision now, and is either still on this node or was dropped by an
        earlier compaction, whose harvest saved it."""
        if node.kv is None:
            return
        store = node.kv.store
        for rev, events in _records(node, self.harvested_to).items():
            bucket = self.harvested.setdefault(rev, {})
            for ev in events:
                bucket[ev.key] = ev
        self.harvested_to = max(self.harvested_to, store.revision)

    # --- transaction writers ----------------------------------------------------------------

    def _write(self) -> None:
        if not self.active:
            return
        live = [n for n in self.world.nodes.values() if n.core is not None]
        if not live:
            self.world.at(20, self._write)
            return
        node = self.rng.choice(live)
        keys = self.rng.sample(TXN_KEYS, self.rng.randint(2, len(TXN_KEYS)))
        self.txns += 1
        puts = tuple(sc.PutRequest(k.encode(), f"{self.txns}".encode()) for k in sorted(keys))
        waiter = _TxnWaiter(self)
        assert node.core is not None
        node.core.propose(sc.encode_command(sc.TxnRequest((), puts, ())), waiter)
        self.world.drive(node)
        self.world.at(1000, waiter.timeout)

    def written(self) -> None:
        self.world.at(self.rng.randint(5, 40), self._write)

    def stop(self) -> None:
        self.active = False

    # --- the check --------------------------------------------------------------------------

    def check(self) -> list[WatchViolation]:
        """Drain what is left, then check every watcher against the committed history."""
        for node in self.world.nodes.values():
            self.drain(node)
        committed = committed_history(self.world, self.harvested)
        logs = [w.log for ws in self.watches.values() for w in ws]
        return check_watches(committed, logs)


class _TxnWaiter:
    def __init__(self, workload: WatchWorkload) -> None:
        self.workload = workload
        self.done = False

    def resolve(self, _value: Any) -> None:
        self._finish()

    def fail(self, _exc: BaseException) -> None:
        self._finish()

    def timeout(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self.workload.written()


def _event(e: sc.Event) -> WatchEvent:
    if e.type == sc.EventType.PUT:
        return WatchEvent(revision=e.kv.mod_revision, key=e.kv.key.decode(), type="put",
                          value=e.kv.value.decode())
    return WatchEvent(revision=e.kv.mod_revision, key=e.kv.key.decode(), type="delete")


def committed_history(world: World, harvested: dict[int, dict[str, WatchEvent]] | None = None,
                      ) -> dict[int, list[WatchEvent]]:
    """revision -> events: the MVCC records of the most advanced live replica, plus those
    ``harvested`` before compactions dropped them."""
    merged: dict[int, dict[str, WatchEvent]] = {
        rev: dict(events) for rev, events in (harvested or {}).items()}
    nodes = [n for n in world.nodes.values() if n.kv is not None and n.core is not None]
    if nodes:
        node = max(nodes, key=lambda n: (n.kv.store.revision if n.kv else 0, n.id))
        for rev, events in _records(node, 0).items():
            bucket = merged.setdefault(rev, {})
            for ev in events:
                if bucket.setdefault(ev.key, ev) != ev:
                    raise Violation("watch-history", f"{ev.key!r}@{rev} differs between the "
                                    f"saved history and n{node.id}'s records")
    return {rev: sorted(events.values(), key=lambda e: e.key)
            for rev, events in merged.items()}


def _records(node: SimNode, after: int) -> dict[int, list[WatchEvent]]:
    """revision -> events of the records ``node`` retains above revision ``after``."""
    assert node.kv is not None
    mvcc = node.kv.store.store
    out: dict[int, list[WatchEvent]] = {}
    for key in mvcc.keys_in(b"\0", b"\0"):
        for mod, _create, version, value, _lease in mvcc.history(key):
            if mod <= after:
                continue
            ev = (WatchEvent(revision=mod, key=key.decode(), type="put", value=value.decode())
                  if version else WatchEvent(revision=mod, key=key.decode(), type="delete"))
            out.setdefault(mod, []).append(ev)
    return out
