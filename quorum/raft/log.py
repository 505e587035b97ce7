"""The Raft log as the core sees it: stable entries (in LogStorage) + unstable entries.

``Unstable`` holds what the runtime has not persisted yet (new entries, a received snapshot).
Entries handed out in a Ready are "in progress" until ``advance`` marks them stable.
``RaftLog`` adds the commit/applying/applied indexes and the log-matching helpers.

Invariants: applied <= applying <= committed <= last_index; first_index - 1 <= applied
(after a snapshot restore, applied jumps to the snapshot index once it is persisted).
"""

from __future__ import annotations

from quorum.errors import Compacted, Unavailable
from quorum.raft.storage import LogStorage
from quorum.raft.types import Entry, Snapshot, entry_size


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix within ``max_bytes``, but always at least one entry."""
    if max_bytes is None or not entries:
        return entries
    total = entry_size(entries[0])
    for i in range(1, len(entries)):
        total += entry_size(entries[i])
        if total > max_bytes:
            return entries[:i]
    return entries


def entries_size(entries: list[Entry]) -> int:
    return sum(entry_size(e) for e in entries)


class Unstable:
    """Entries (and possibly a snapshot) not yet persisted; ``entries[i]`` has index offset+i."""

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset
        self.snapshot_in_progress = False
        self.offset_in_progress = offset  # entries below this were handed out in a Ready

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.metadata.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            snap = self.snapshot
            if snap is not None and snap.metadata.index == index:
                return snap.metadata.term
            return None
        last = self.maybe_last_index()
        if last is None or index > last:
            return None
        return self.entries[index - self.offset].term

    def next_entries(self) -> list[Entry]:
        """Entries not yet handed out in a Ready."""
        return self.entries[self.offset_in_progress - self.offset :]

    def next_snapshot(self) -> Snapshot | None:
        if self.snapshot is None or self.snapshot_in_progress:
            return None
        return self.snapshot

    def accept_in_progress(self) -> None:
        """Everything currently unstable was handed out in a Ready."""
        if self.entries:
            self.offset_in_progress = self.entries[-1].index + 1
        if self.snapshot is not None:
            self.snapshot_in_progress = True

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to (index, term) were persisted; ignored if the log changed since."""
        if self.maybe_term(index) != term or index < self.offset:
            return
        drop = index + 1 - self.offset
        self.entries = self.entries[drop:]
        self.offset = index + 1
        self.offset_in_progress = max(self.offset_in_progress, self.offset)

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == index:
            self.snapshot = None
            self.snapshot_in_progress = False

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.metadata.index + 1
        self.offset_in_progress = self.offset
        self.entries = []
        self.snapshot = snapshot
        self.snapshot_in_progress = False

    def truncate_and_append(self, entries: list[Entry]) -> None:
        """Append ``entries``, first dropping any unstable entry at or after their first index."""
        first = entries[0].index
        if first == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif first <= self.offset:
            # Replaces every unstable entry; storage entries >= first are overwritten on persist.
            self.entries = list(entries)
            self.offset = first
            self.offset_in_progress = first
        else:
            self.entries = self.entries[: first - self.offset] + list(entries)
            self.offset_in_progress = min(self.offset_in_progress, first)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        return self.entries[lo - self.offset : hi - self.offset]


class LogInvariantError(AssertionError):
    """An internal invariant of the log broke (a bug in the core, never bad peer input)."""


class RaftLog:
    """Storage + unstable entries + commit/apply indexes."""

    def __init__(self, storage: LogStorage, max_applying_bytes: int) -> None:
        self.storage = storage
        first, last = storage.first_index(), storage.last_index()
        self.unstable = Unstable(last + 1)
        # Everything up to the snapshot is committed and applied by definition.
        self.committed = first - 1
        self.applying = first - 1
        self.applied = first - 1
        self.max_applying_bytes = max_applying_bytes

    # --- indexes and terms -------------------------------------------------------------------

    def first_index(self) -> int:
        first = self.unstable.maybe_first_index()
        return first if first is not None else self.storage.first_index()

    def last_index(self) -> int:
        last = self.unstable.maybe_last_index()
        return last if last is not None else self.storage.last_index()

    def term(self, index: int) -> int | None:
        """The term at ``index``; None if compacted away or beyond the log."""
        if index < self.first_index() - 1 or index > self.last_index():
            return None
        term = self.unstable.maybe_term(index)
        if term is not None:
            return term
        try:
            return self.storage.term(index)
        except (Compacted, Unavailable):
            return None

    def last_term(self) -> int:
        term = self.term(self.last_index())
        if term is None:
            raise LogInvariantError(f"no term for last index {self.last_index()}")
        return term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """The §5.4.1 rule: a log is at least as up-to-date as ours if its last term is higher,
        or the same with an index at least as large."""
        ours = self.last_term()
        return last_term > ours or (last_term == ours and last_index >= self.last_index())

    # --- appending ---------------------------------------------------------------------------

    def find_conflict(self, entries: list[Entry]) -> int:
        """Index of the first entry whose term differs from ours (or that we lack); 0 if none."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose term is <= ``term``, and that term.

        Used for fast backtracking (etcd-io/raft; thesis §5.3 optimisation): every entry above
        the returned index has a term greater than ``term`` and cannot match.
        """
        while index > 0:
            ours = self.term(index)
            if ours is None:
                return index, 0
            if ours <= term:
                return index, ours
            index -= 1
        return 0, 0

    def maybe_append(
        self, prev_index: int, prev_term: int, committed: int, entries: list[Entry]
    ) -> int | None:
        """Append after (prev_index, prev_term) if it matches our log; return the last new index.

        Entries already present with the same term are skipped; the first conflicting entry
        and everything after it are replaced (log matching property, §5.3).
        Raises LogInvariantError if that would overwrite a committed entry.
        """
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise LogInvariantError(f"entry {conflict} conflicts with a committed entry")
            self.append(entries[conflict - prev_index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, entries: list[Entry]) -> int:
        if entries:
            if entries[0].index - 1 < self.committed:
                raise LogInvariantError("appending below the commit index")
            self.unstable.truncate_and_append(entries)
        return self.last_index()

    # --- commit / apply ----------------------------------------------------------------------

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise LogInvariantError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit up to ``index`` if our entry there has ``term`` (the caller passes its current
        term: Raft §5.4.2 forbids committing older-term entries by counting replicas)."""
        if index > self.committed and term != 0 and self.match_term(index, term):
            self.commit_to(index)
            return True
        return False

    def stable_last_index(self) -> int:
        """The last index the runtime has persisted (unstable entries excluded)."""
        if self.unstable.snapshot is not None:
            return 0  # the snapshot itself is not durable yet: claim nothing
        return self.unstable.offset - 1

    def max_appliable_index(self) -> int:
        """Only persisted entries are applied (a crash must not forget applied entries)."""
        return min(self.committed, self.unstable.offset - 1)

    def has_next_committed_entries(self) -> bool:
        if self.unstable.snapshot is not None:
            return False  # apply the snapshot first
        return self.applying < self.max_appliable_index()

    def next_committed_entries(self) -> list[Entry]:
        if not self.has_next_committed_entries():
            return []
        lo, hi = self.applying + 1, self.max_appliable_index() + 1
        return self.slice(lo, hi, self.max_applying_bytes)

    def accept_applying(self, index: int) -> None:
        self.applying = max(self.applying, index)

    def applied_to(self, index: int) -> None:
        if index == 0:
            return
        if index > self.committed or index < self.applied:
            raise LogInvariantError(
                f"applied {index} outside [{self.applied}, {self.committed}]"
            )
        self.applied = index
        self.applying = max(self.applying, index)

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    def restore(self, snapshot: Snapshot) -> None:
        self.committed = snapshot.metadata.index
        self.unstable.restore(snapshot)

    # --- reading entries ---------------------------------------------------------------------

    def entries_from(self, lo: int, max_bytes: int | None) -> list[Entry]:
        """Entries from ``lo`` to the end, size-limited. Raises Compacted if ``lo`` is gone."""
        if lo > self.last_index():
            return []
        return self.slice(lo, self.last_index() + 1, max_bytes)

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi) limited to ``max_bytes`` (at least one). Raises Compacted."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise Compacted(f"index {lo} is compacted (first index {self.first_index()})")
        if hi > self.last_index() + 1:
            raise LogInvariantError(f"slice [{lo}, {hi}) beyond last index {self.last_index()}")
        offset = self.unstable.offset
        if lo >= offset:
            return limit_size(self.unstable.slice(lo, hi), max_bytes)
        cut = min(hi, offset)
        stored = self.storage.entries(lo, cut, max_bytes)
        if hi <= offset or len(stored) < cut - lo:
            return stored
        if max_bytes is not None:
            used = entries_size(stored)
            if used >= max_bytes:
                return stored
            tail = self.unstable.slice(offset, hi)
            return stored + tail[: _fit_count(tail, max_bytes - used)]
        return stored + self.unstable.slice(offset, hi)

    def all_entries(self) -> list[Entry]:
        """Every retained entry (tests and descriptions)."""
        return self.slice(self.first_index(), self.last_index() + 1)


def _fit_count(entries: list[Entry], max_bytes: int) -> int:
    """How many leading entries fit in ``max_bytes`` (may be 0: the batch already has one)."""
    total = 0
    for i, entry in enumerate(entries):
        total += entry_size(entry)
        if total > max_bytes:
            return i
    return len(entries)
