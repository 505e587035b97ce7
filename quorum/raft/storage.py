"""The storage interface the consensus core reads, and an in-memory implementation.

The core only ever *reads* storage; the runtime writes it (after persisting a Ready) and then
calls ``advance``. ``quorum.storage`` provides the durable implementation; ``MemoryStorage``
(below) serves tests, the harness and the simulator.
"""

from __future__ import annotations

from typing import Protocol

from quorum.raft.types import ConfState, Entry, HardState, Snapshot


class LogStorage(Protocol):
    """What the core reads. Indexes are 1-based; a snapshot at index I stands for entries <= I.

    ``first_index()`` is the first entry still available (snapshot index + 1);
    ``term(first_index() - 1)`` must return the snapshot's term (it is kept for the
    log-matching check). Requests below that raise ``quorum.errors.Compacted``; beyond
    ``last_index()`` raise ``quorum.errors.Unavailable``.
    """

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted hard state and the configuration as of the last applied snapshot/log."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi). At least one entry is returned if any is in range, even if it
        exceeds ``max_bytes`` (size = len(data) + a fixed per-entry overhead)."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index`` (the snapshot term for the snapshot index)."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot; may raise ``SnapshotTemporarilyUnavailable``."""
        ...
