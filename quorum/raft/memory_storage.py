"""``MemoryStorage``: an in-memory ``LogStorage`` for tests, the harness and the simulator.

``_entries[0]`` is a dummy entry standing for the snapshot (its index and term), so
``term(first_index() - 1)`` works without special cases.
"""

from __future__ import annotations

from quorum.errors import Compacted, SnapshotOutOfDate, Unavailable, UsageError
from quorum.raft.log import limit_size
from quorum.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMetadata


class MemoryStorage:
    """Implements ``LogStorage`` plus the write side the runtime uses after each Ready."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self._snapshot = Snapshot()
        self._entries: list[Entry] = [Entry(term=0, index=0)]

    # --- LogStorage ----------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._snapshot.metadata.conf_state

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        return self._entries[0].index + len(self._entries) - 1

    def term(self, index: int) -> int:
        offset = self._entries[0].index
        if index < offset:
            raise Compacted(f"index {index} is compacted (snapshot at {offset})")
        if index - offset >= len(self._entries):
            raise Unavailable(f"index {index} is beyond the last index {self.last_index()}")
        return self._entries[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        offset = self._entries[0].index
        if lo <= offset:
            raise Compacted(f"index {lo} is compacted (snapshot at {offset})")
        if hi > self.last_index() + 1:
            raise Unavailable(f"index {hi - 1} is beyond the last index {self.last_index()}")
        return limit_size(self._entries[lo - offset : hi - offset], max_bytes)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # --- write side ----------------------------------------------------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace everything with ``snapshot``. Raises SnapshotOutOfDate if it is older.

        A fresh storage also accepts an index-0 snapshot: it only sets the initial ConfState.
        """
        fresh = self.last_index() == 0 and self._snapshot.is_empty()
        if snapshot.metadata.index <= self._snapshot.metadata.index and not fresh:
            raise SnapshotOutOfDate(
                f"snapshot {snapshot.metadata.index} <= held {self._snapshot.metadata.index}"
            )
        self._snapshot = snapshot
        self._entries = [Entry(term=snapshot.metadata.term, index=snapshot.metadata.index)]

    def create_snapshot(
        self, index: int, conf_state: ConfState | None, data: bytes = b""
    ) -> Snapshot:
        """Record a snapshot of the state machine at ``index`` (an applied, retained index).

        Raises SnapshotOutOfDate if not newer than the held one, UsageError beyond the log.
        """
        if index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDate(f"snapshot {index} <= held {self._snapshot.metadata.index}")
        if index > self.last_index():
            raise UsageError(f"snapshot index {index} beyond last index {self.last_index()}")
        conf = conf_state if conf_state is not None else self._snapshot.metadata.conf_state
        meta = SnapshotMetadata(index=index, term=self.term(index), conf_state=conf)
        self._snapshot = Snapshot(metadata=meta, data=data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries before ``index`` (``index`` becomes the dummy). Raises Compacted/UsageError."""
        offset = self._entries[0].index
        if index <= offset:
            raise Compacted(f"index {index} already compacted (snapshot at {offset})")
        if index > self.last_index():
            raise UsageError(f"compact {index} beyond last index {self.last_index()}")
        keep = self._entries[index - offset :]
        self._entries = [Entry(term=keep[0].term, index=keep[0].index), *keep[1:]]

    def append(self, entries: list[Entry]) -> None:
        """Append, truncating any existing entries at or after ``entries[0].index``."""
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return  # entirely compacted away already
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        offset = entries[0].index - self._entries[0].index
        if offset > len(self._entries):
            raise UsageError(
                f"missing log entries: last {self.last_index()}, appending at {entries[0].index}"
            )
        del self._entries[offset:]  # in place: appends at the end copy nothing
        self._entries.extend(entries)
