"""The storage the runtime writes: a durable log plus snapshots, behind one small interface.

``quorum.storage`` provides the durable implementation (WAL + snapshot files on a FileSystem);
``MemoryNodeStorage`` keeps everything in memory (tests, and nodes run with fsync off).
"""

from __future__ import annotations

from typing import Protocol

from quorum.raft.storage import LogStorage
from quorum.raft.types import ConfState, Entry, HardState, Snapshot
from quorum.storage.durable import DurableStorage


class NodeStorage(Protocol):
    @property
    def log(self) -> LogStorage:
        """What the Raft core reads."""
        ...

    def save(self, hard_state: HardState | None, entries: list[Entry], must_sync: bool) -> None:
        """Persist hard state and entries (entries may overwrite a conflicting tail).

        One write and, iff ``must_sync``, one fsync. Raises FatalIOError / DiskFullError."""
        ...

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Persist a snapshot received from the leader and reset the log to start after it."""
        ...

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Persist a snapshot of the applied state at ``index`` (local compaction point)."""
        ...

    def compact(self, index: int) -> None:
        """Release log entries up to and including ``index`` (must be <= a snapshot index)."""
        ...

    def close(self) -> None: ...

    def is_empty(self) -> bool:
        """True for a node that has never stored anything (needs bootstrap or a snapshot)."""
        ...


class MemoryNodeStorage:
    """NodeStorage over the core's MemoryStorage: nothing survives the process."""

    def __init__(self) -> None:
        from quorum.raft import MemoryStorage

        self._mem = MemoryStorage()

    @property
    def log(self) -> LogStorage:
        return self._mem

    def save(self, hard_state: HardState | None, entries: list[Entry], must_sync: bool) -> None:
        if entries:
            self._mem.append(entries)
        if hard_state is not None:
            self._mem.set_hard_state(hard_state)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        self._mem.apply_snapshot(snapshot)

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        snap: Snapshot = self._mem.create_snapshot(index, conf_state, data)
        return snap

    def compact(self, index: int) -> None:
        self._mem.compact(index)

    def close(self) -> None:
        pass

    def is_empty(self) -> bool:
        return self._mem.last_index() == 0 and self._mem.snapshot().is_empty()


class DurableNodeStorage:
    """NodeStorage over quorum.storage's WAL and snapshot files."""

    def __init__(self, durable: DurableStorage) -> None:
        self.durable = durable

    @property
    def log(self) -> LogStorage:
        return self.durable

    def save(self, hard_state: HardState | None, entries: list[Entry], must_sync: bool) -> None:
        self.durable.save(hard_state, entries, must_sync)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        self.durable.apply_snapshot(snapshot)

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        meta = self.durable.create_snapshot(index, conf_state, [data])
        return Snapshot(meta, data)

    def compact(self, index: int) -> None:
        self.durable.compact(index)

    def close(self) -> None:
        self.durable.close()

    def is_empty(self) -> bool:
        d = self.durable
        return d.last_index() == 0 and d.snapshot_metadata().index == 0


def bootstrap(
    storage: NodeStorage, voters: tuple[int, ...], data: bytes, learners: tuple[int, ...] = ()
) -> None:
    """Give a member of a brand-new cluster its first state: a snapshot at index 1, term 1
    holding the initial configuration and ``data`` (the snapshot envelope of the empty state
    machine and the members' addresses). Every initial member does the same, so they agree.
    """
    from quorum.raft import bootstrap_snapshot

    snap = bootstrap_snapshot(voters, learners)
    storage.apply_snapshot(Snapshot(snap.metadata, data))
    storage.save(HardState(term=1, vote=0, commit=1), [], True)
