"""``DurableStorage``: the Raft log and snapshots on disk, served to the core from memory.

Directory layout under ``data_dir``: ``wal/`` (segments, see ``quorum.storage.wal``) and
``snap/`` (snapshot files, see ``quorum.storage.snapshot``).

Reads (the ``quorum.raft.storage.LogStorage`` protocol) are served from memory: the entries
after the last compaction point, which the runtime bounds by taking snapshots and compacting.
Writes go to disk first and reach memory only once written, so the core never reads an entry
that a failed write did not store.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from quorum.errors import (
    Compacted,
    ConfigError,
    CorruptionError,
    DiskFullError,
    FatalIOError,
    SnapshotOutOfDate,
    Unavailable,
    UsageError,
)
from quorum.raft.storage import LogStorage
from quorum.raft.types import (
    ENTRY_OVERHEAD_BYTES,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
    entry_size,
)
from quorum.storage import snapshot as snapfile
from quorum.storage.fs import FileSystem, run_io
from quorum.storage.record import SnapshotMarker
from quorum.storage.segment import list_segments
from quorum.storage.snapshot import SnapshotFile, SnapshotStore
from quorum.storage.wal import DEFAULT_SEGMENT_BYTES, PLANTED_BUGS, Replayed, Wal, WalOptions

log = logging.getLogger(__name__)
T = TypeVar("T")

CORRUPT_SUFFIX = ".corrupt"


@dataclass(frozen=True)
class StorageOptions:
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    preallocate: bool = False
    preallocate_ahead: int = 0  # see WalOptions.preallocate_ahead
    snapshots_kept: int = 2
    snapshot_chunk_bytes: int = snapfile.DEFAULT_CHUNK_BYTES
    # Test-only switches that break a durability rule on purpose (names in PLANTED_BUGS);
    # tests/storage/test_crash.py shows the crash campaign catches each one.
    planted_bugs: frozenset[str] = frozenset()
    planted_skip_fsync: bool = False  # same as "skip_fsync" in planted_bugs (kept for callers)

    def validate(self) -> None:
        """Raise ConfigError naming the first broken rule."""
        if self.segment_bytes < 4096:
            raise ConfigError("segment_bytes must be at least 4096")
        if self.preallocate_ahead < 0:
            raise ConfigError("preallocate_ahead must not be negative")
        if self.snapshots_kept < 1:
            raise ConfigError("snapshots_kept must be at least 1")
        if self.snapshot_chunk_bytes < 1:
            raise ConfigError("snapshot_chunk_bytes must be positive")
        if unknown := self.planted_bugs - PLANTED_BUGS:
            raise ConfigError(f"unknown planted bugs: {sorted(unknown)}")

    def wal_options(self) -> WalOptions:
        bugs = self.planted_bugs | ({"skip_fsync"} if self.planted_skip_fsync else set())
        return WalOptions(self.segment_bytes, self.preallocate, frozenset(bugs),
                          self.preallocate_ahead)


class DurableStorage:
    """Durable Raft storage. Open with :meth:`open`; implements ``LogStorage``.

    Errors: ``DiskFullError`` (nothing changed; reads keep working; a later write may
    succeed), ``FatalIOError`` (this object refuses further writes; restart the node),
    ``CorruptionError`` from :meth:`open` (refuse to start), ``UsageError`` for calls that
    break the contract (the object stays usable).
    """

    def __init__(
        self,
        fs: FileSystem,
        data_dir: str,
        options: StorageOptions,
        wal: Wal,
        snaps: SnapshotStore,
        snap: SnapshotFile | None,
        hard_state: HardState,
        entries: list[Entry],
    ) -> None:
        self.fs = fs
        self.data_dir = data_dir
        self.options = options
        self.wal = wal
        self._snaps = snaps
        self._snap = snap
        self._hard_state = hard_state
        meta = snap.metadata if snap else SnapshotMetadata()
        # Invariant: _entries[k].index == _base_index + 1 + k; _base_term = term(_base_index).
        self._base_index = meta.index
        self._base_term = meta.term
        self._entries = entries
        self._closed = False
        self._failed: BaseException | None = None
        # Guards the memory log so that a runtime may run save() (disk I/O, then a short
        # memory update under the lock) on a worker thread while the core reads on another.
        # Writers must still be serialized by the caller: one write call at a time.
        self._mu = threading.Lock()

    # --- opening -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls, fs: FileSystem, data_dir: str, options: StorageOptions | None = None
    ) -> DurableStorage:
        """Recover (or create) the storage in ``data_dir``.

        Raises CorruptionError naming the file and offset when the data fails a check that a
        crash cannot explain; FatalIOError/DiskFullError on I/O errors.
        """
        options = options or StorageOptions()
        options.validate()
        wal_dir, snap_dir = os.path.join(data_dir, "wal"), os.path.join(data_dir, "snap")
        for directory in (data_dir, snap_dir, wal_dir):
            _io(functools.partial(_ensure_dir, fs, directory))
        snaps = SnapshotStore(fs, snap_dir, options.snapshots_kept)
        _io(snaps.remove_temporaries)
        _check_wal_present(fs, wal_dir, snaps)
        wal, replayed = Wal.open(fs, wal_dir, options.wal_options())
        try:
            snap = _choose_snapshot(fs, snaps, replayed)
            entries = _entries_after_snapshot(replayed, snap)
            hard_state = _check_hard_state(replayed, snap, entries or [])
            if entries is None:
                assert snap is not None  # with no snapshot (index 0) the log always continues
                _finish_install(wal, replayed, snap)
                entries = []
        except BaseException:
            wal.close()
            raise
        return cls(fs, data_dir, options, wal, snaps, snap, hard_state, entries)

    # --- LogStorage ----------------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted hard state (commit raised to the snapshot index: a snapshot holds
        only committed entries) and the configuration of the latest snapshot."""
        hs = self._hard_state
        snap_index = self.snapshot_metadata().index
        if hs.commit < snap_index:
            hs = HardState(hs.term, hs.vote, snap_index)
        return hs, self.conf_state()

    def conf_state(self) -> ConfState:
        return self._snap.metadata.conf_state if self._snap else ConfState()

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi), at least one if any is in range. Raises Compacted/Unavailable."""
        with self._mu:
            last = self._base_index + len(self._entries)
            if lo <= self._base_index:
                raise Compacted(f"index {lo} is compacted (first index {self._base_index + 1})")
            if hi > last + 1:
                raise Unavailable(f"index {hi - 1} is beyond the last index {last}")
            start = lo - self._base_index - 1
            chosen = self._entries[start : start + max(0, hi - lo)]
        if max_bytes is None:
            return chosen
        return _limit_bytes(chosen, max_bytes)

    def term(self, index: int) -> int:
        with self._mu:
            return self._term_locked(index)

    def _term_locked(self, index: int) -> int:
        if index == self._base_index:
            return self._base_term
        if index < self._base_index:
            raise Compacted(f"index {index} is compacted (first index {self._base_index + 1})")
        last = self._base_index + len(self._entries)
        if index > last:
            raise Unavailable(f"index {index} is beyond the last index {last}")
        return self._entries[index - self._base_index - 1].term

    def first_index(self) -> int:
        with self._mu:
            return self._base_index + 1

    def last_index(self) -> int:
        with self._mu:
            return self._base_index + len(self._entries)

    def snapshot(self) -> Snapshot:
        """The newest durable snapshot with its data read from disk (empty if none).
        Raises CorruptionError if the file no longer passes its checksum."""
        if self._snap is None:
            return Snapshot()
        return _io(lambda: snapfile.load_snapshot(self.fs, self._require_snap()))

    def snapshot_metadata(self) -> SnapshotMetadata:
        return self._snap.metadata if self._snap else SnapshotMetadata()

    def snapshot_chunks(self) -> Iterator[bytes]:
        """Stream the newest snapshot's data; the last step raises CorruptionError on a bad
        checksum, so act on the data only after the iterator is exhausted."""
        if self._snap is None:
            return iter(())
        return snapfile.read_chunks(self.fs, self._snap, self.options.snapshot_chunk_bytes)

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    # --- write side ----------------------------------------------------------------------------

    def save(self, hard_state: HardState | None, entries: Sequence[Entry], must_sync: bool) -> None:
        """Persist a Ready's hard state and entries: one write, one fsync iff ``must_sync``.

        Entries starting at or below the last index replace the tail from there (Raft §5.3).
        Raises DiskFullError (nothing changed), FatalIOError, UsageError.
        """
        self._check_writable()
        if entries:
            self._check_append(entries)
        self._guard(lambda: self.wal.save(hard_state, entries, must_sync))
        with self._mu:
            if entries:
                del self._entries[entries[0].index - self._base_index - 1 :]
                self._entries.extend(entries)
            if hard_state is not None:
                self._hard_state = hard_state

    def _check_append(self, entries: Sequence[Entry]) -> None:
        first = entries[0].index
        if first <= self._base_index or first > self.last_index() + 1:
            raise UsageError(
                f"entries start at {first}; must be within "
                f"[{self.first_index()}, {self.last_index() + 1}]"
            )
        # Raft never rewrites a committed entry (Log Matching + Leader Completeness, §5.4).
        if first <= min(self._hard_state.commit, self.last_index()):
            raise UsageError(
                f"entries starting at {first} would overwrite committed index "
                f"{self._hard_state.commit}"
            )

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Persist a snapshot received from the leader, then reset the log to start after it.
        Raises SnapshotOutOfDate, DiskFullError, FatalIOError."""
        self.install_snapshot(snapshot.metadata, [snapshot.data])

    def install_snapshot(self, metadata: SnapshotMetadata, chunks: Iterable[bytes]) -> None:
        """Streaming form of :meth:`apply_snapshot`.

        Order: snapshot file durable (temp, fsync, rename, dir fsync), then a reset marker in
        the WAL (fsynced), then memory. A crash between the two leaves a newer snapshot file
        and the old log; recovery then keeps only log entries that match the snapshot.
        """
        self._check_writable()
        # Newer than both the compaction point and the newest snapshot file: an older one
        # would leave a newer file on disk that recovery prefers over the reset log.
        newest = max(self._base_index, self.snapshot_metadata().index)
        if metadata.index <= newest:
            raise SnapshotOutOfDate(f"snapshot at {metadata.index} is not newer than {newest}")
        snap = self._write_snapshot(metadata, chunks)  # syncs the WAL first
        marker = SnapshotMarker(metadata.index, metadata.term, reset=True)
        self._guard(lambda: self.wal.append_marker(marker, sync=True))
        with self._mu:
            self._snap = snap
            self._entries = []
            self._base_index, self._base_term = metadata.index, metadata.term
        self._after_snapshot()

    def create_snapshot(
        self, index: int, conf_state: ConfState, chunks: Iterable[bytes]
    ) -> SnapshotMetadata:
        """Persist a snapshot of the applied state at ``index`` (<= commit). The log is not
        compacted; call :meth:`compact`. Raises SnapshotOutOfDate, UsageError, DiskFullError,
        FatalIOError."""
        self._check_writable()
        current = self._snap.metadata.index if self._snap else 0
        if index <= current:
            raise SnapshotOutOfDate(f"snapshot at {index} is not newer than {current}")
        if index > self._hard_state.commit:
            raise UsageError(f"snapshot index {index} is beyond the commit index")
        metadata = SnapshotMetadata(index, self.term(index), conf_state)
        snap = self._write_snapshot(metadata, chunks)
        marker = SnapshotMarker(index, metadata.term, reset=False)
        self._guard(lambda: self.wal.append_marker(marker, sync=False))
        self._snap = snap
        self._after_snapshot()
        return metadata

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` from memory (keeping its term) and release WAL
        segments no snapshot recovery can need. Raises Compacted, UsageError, FatalIOError."""
        self._check_writable()
        if index <= self._base_index:
            raise Compacted(f"index {index} is already compacted")
        snap_index = self._snap.metadata.index if self._snap else 0
        if index > snap_index:
            raise UsageError(f"cannot compact to {index}: the newest snapshot is at {snap_index}")
        with self._mu:
            self._base_term = self._term_locked(index)
            del self._entries[: index - self._base_index]
            self._base_index = index
        self._release()

    def close(self) -> None:
        self._closed = True
        self.wal.close()

    # --- helpers -------------------------------------------------------------------------------

    def _write_snapshot(self, metadata: SnapshotMetadata, chunks: Iterable[bytes]) -> SnapshotFile:
        """Sync the WAL, then write the snapshot file. Invariant: a durable snapshot never
        runs ahead of WAL records written before it (an unsynced commit-only hard state or
        entries), so recovery always sees a prefix of the history plus that snapshot."""
        self._guard(self.wal.sync)
        return self._guard(lambda: self._snaps.write(metadata, chunks))

    def _after_snapshot(self) -> None:
        self._guard(self._snaps.prune)
        self._release()

    def _release(self) -> None:
        """Release WAL segments below the *fallback* snapshot (the second newest kept one, or
        none), so that if the newest snapshot is found corrupt at startup the previous one plus
        the WAL can still rebuild the state. With ``snapshots_kept == 1`` there is no fallback
        and the WAL is released up to the newest snapshot."""
        indexes = [index for index, _, _ in self._guard(self._snaps.paths)]
        if self.options.snapshots_kept == 1:
            bound = indexes[-1] if indexes else 0
        else:
            bound = indexes[-2] if len(indexes) >= 2 else 0
        bound = min(bound, self._base_index)
        if bound > 0:
            self._guard(lambda: self.wal.release_through(bound))

    def _require_snap(self) -> SnapshotFile:
        assert self._snap is not None
        return self._snap

    def _check_writable(self) -> None:
        if self._closed:
            raise UsageError("storage is closed")
        if self._failed is not None or self.wal.failed:
            raise FatalIOError("storage failed earlier and refuses writes")

    def _guard(self, action: Callable[[], T]) -> T:
        """Run a write action; map OSError and remember fatal failures."""
        try:
            return action()
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(f"disk full: {exc}") from exc
            self._failed = exc
            raise FatalIOError(f"I/O error: {exc}") from exc
        except FatalIOError as exc:
            self._failed = exc
            raise


# --- recovery helpers ----------------------------------------------------------------------------


def _choose_snapshot(fs: FileSystem, snaps: SnapshotStore, replayed: Replayed) -> SnapshotFile | None:
    """The newest snapshot that passes its checksums.

    If newer snapshots are corrupt, fall back to the newest valid one (or to none) only if the
    WAL still holds every entry after it; the corrupt files are then renamed ``*.corrupt`` and
    kept for inspection. Otherwise refuse to start with the newest file's CorruptionError.
    """
    corrupt: list[tuple[str, CorruptionError]] = []
    chosen: SnapshotFile | None = None
    for _, _, path in reversed(_io(snaps.paths)):
        try:
            chosen = _io(lambda: snapfile.verify_snapshot(fs, path))  # noqa: B023 - called now
            break
        except CorruptionError as exc:
            log.error("snapshot %s is corrupt: %s", path, exc)
            corrupt.append((path, exc))
    if not corrupt:
        return chosen
    base = chosen.metadata.index if chosen else 0
    if replayed.log_start > base + 1:
        raise corrupt[0][1]
    for path, _ in corrupt:
        log.error("falling back to the snapshot at %d; %s renamed to *%s", base, path, CORRUPT_SUFFIX)
        _io(lambda: fs.rename(path, path + CORRUPT_SUFFIX))  # noqa: B023 - called now
    _io(lambda: fs.fsync_dir(snaps.dir))
    return chosen


def _entries_after_snapshot(replayed: Replayed, snap: SnapshotFile | None) -> list[Entry] | None:
    """The replayed log restricted to indexes after the snapshot, or None when the log does
    not continue from the snapshot and must be discarded.

    If the log holds the snapshot's last entry with the snapshot's term, the entries after it
    are kept; otherwise the whole log is discarded (Raft §7, InstallSnapshot steps 6-7): this
    is a snapshot install whose WAL reset marker never became durable.
    """
    index = snap.metadata.index if snap else 0
    term = snap.metadata.term if snap else 0
    if replayed.log_start > index + 1:
        raise CorruptionError(
            f"log starts at {replayed.log_start} but the snapshot ends at {index}: entries missing",
            replayed.first_segment,
            0,
        )
    if index == replayed.log_start - 1:
        return replayed.entries
    if index > replayed.last_index or replayed.entries[index - replayed.log_start].term != term:
        return None
    return replayed.entries[index - replayed.log_start + 1 :]


def _finish_install(wal: Wal, replayed: Replayed, snap: SnapshotFile) -> None:
    """Write the reset marker an interrupted install did not get to write, so that entries
    appended from now on (at snapshot index + 1) replay without a gap."""
    meta = snap.metadata
    log.warning(
        "snapshot %s (index %d, term %d) does not continue the WAL's log [%d, %d]: "
        "completing its install, discarding that log",
        snap.path,
        meta.index,
        meta.term,
        replayed.log_start,
        replayed.last_index,
    )
    wal.append_marker(SnapshotMarker(meta.index, meta.term, reset=True), sync=True)


def _check_hard_state(
    replayed: Replayed, snap: SnapshotFile | None, entries: list[Entry]
) -> HardState:
    """Cross-check the hard state with the log: a violation means lost or damaged records."""
    hs = replayed.hard_state
    snap_index = snap.metadata.index if snap else 0
    last = entries[-1].index if entries else snap_index
    path, offset = replayed.hard_state_at
    if hs.commit > last:
        raise CorruptionError(
            f"hard state commit {hs.commit} is beyond the last entry {last}", path, offset
        )
    if entries and entries[-1].term > hs.term:
        raise CorruptionError(
            f"log holds an entry of term {entries[-1].term} but the hard state term is {hs.term}",
            path,
            offset,
        )
    return hs


def _check_wal_present(fs: FileSystem, wal_dir: str, snaps: SnapshotStore) -> None:
    """The first segment is created before any snapshot can be written, so snapshots without
    segments mean the WAL (and the term and vote in it) was lost: refuse rather than start
    with a blank hard state that could vote twice in a term."""
    if list_segments(fs, wal_dir):
        return
    existing = _io(snaps.paths)
    if existing:
        raise CorruptionError("no WAL segments, but snapshots exist: the WAL is missing", wal_dir)


def _ensure_dir(fs: FileSystem, path: str) -> None:
    """Create ``path`` if missing and make its entry durable in the parent directory."""
    if fs.exists(path):
        return
    fs.mkdir(path)
    fs.fsync_dir(os.path.dirname(os.path.normpath(path)) or ".")


def _limit_bytes(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """The longest prefix within ``max_bytes`` (sizes as the core counts them), at least one."""
    total = 0
    for count, entry in enumerate(entries):
        total += entry_size(entry)
        if total > max_bytes:
            return entries[: max(count, 1)]
    return entries


def _io(action: Callable[[], T]) -> T:
    return run_io(action)


def _implements_log_storage(storage: DurableStorage) -> LogStorage:
    """Checked by mypy: DurableStorage satisfies the protocol the core reads."""
    return storage


__all__ = ["ENTRY_OVERHEAD_BYTES", "DurableStorage", "StorageOptions"]
