"""The write-ahead log: segmented, checksummed, group-committed, crash-safe.

Write path: each :meth:`Wal.save` encodes one BATCH record (entries + hard state), writes it
with one ``pwrite`` and, iff ``must_sync``, one ``fdatasync`` (group commit: the runtime calls
it once per Ready). Records later in the log supersede earlier ones: a batch whose first index
is <= the last index overwrites the tail from there (Raft §5.3, a follower removing a
conflicting suffix), both in memory and on replay.

Read path: :meth:`Wal.open` replays all segments in sequence order. See docs/storage.md
"Recovery rules" for what is repaired (a torn tail of the last segment, with a warning) and
what is refused (everything else, with CorruptionError naming the file and offset).

Failure model: ENOSPC raises DiskFullError, the partial write is cut back off, and the WAL
stays usable. Any other write error or any fsync error raises FatalIOError and the WAL
refuses further writes: after a failed fsync the kernel may have dropped the dirty pages, so
retrying could acknowledge data that is not on disk.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from quorum.errors import CorruptionError, DiskFullError, FatalIOError, UsageError
from quorum.raft.types import Entry, HardState
from quorum.storage import record
from quorum.storage.fs import FileHandle, FileSystem, run_io
from quorum.storage.record import Batch, RecordType, SnapshotMarker
from quorum.storage.segment import (
    TMP_SUFFIX,
    SegmentName,
    SegmentScan,
    create_segment,
    header_bytes,
    list_segments,
    read_segment,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MIB = 1024 * 1024

# Test-only switches, each breaking one durability rule; the crash tests must catch every one.
PLANTED_BUGS = frozenset(
    {
        "skip_fsync",  # acknowledge a must_sync save without fsync
        "skip_rotation_fsync",  # start a new segment without fsyncing the old one
        "skip_dir_fsync",  # create a segment without fsyncing the directory
    }
)
DEFAULT_SEGMENT_BYTES = 64 * MIB


@dataclass(frozen=True)
class WalOptions:
    segment_bytes: int = DEFAULT_SEGMENT_BYTES  # rotate once a segment would grow past this
    preallocate: bool = False  # reserve segment_bytes when a segment is created
    planted_bugs: frozenset[str] = frozenset()  # test-only, see PLANTED_BUGS
    # > 0: keep this many bytes reserved ahead of the last write (posix_fallocate, in steps
    # of this size), so most appends overwrite reserved blocks instead of growing the file.
    # On ext4 here an fdatasync after a 150-byte append took ~230 us growing the file and
    # ~150 us inside reserved space (docs/benchmarks.md). The reserved tail reads as zeros,
    # which replay takes for the end of the log, as with ``preallocate``.
    preallocate_ahead: int = 0

    @property
    def reserves(self) -> bool:
        """Segments may end in reserved zeros (cut off at rotation)."""
        return self.preallocate or self.preallocate_ahead > 0


@dataclass
class Replayed:
    """The log as the WAL records it, after replay. ``entries[0].index == log_start``."""

    hard_state: HardState = field(default_factory=HardState)
    log_start: int = 1
    entries: list[Entry] = field(default_factory=list)
    last_marker: SnapshotMarker | None = None  # newest snapshot marker seen
    torn_bytes: int = 0  # bytes cut off the tail of the last segment
    first_segment: str = ""  # path of the oldest segment (where the log starts)
    hard_state_at: tuple[str, int] = ("", -1)  # file and offset of the hard state's record

    @property
    def last_index(self) -> int:
        return self.log_start + len(self.entries) - 1

    def append(self, entries: Sequence[Entry], path: str, offset: int) -> None:
        """Apply one batch; a first index beyond last + 1 is a gap (lost records)."""
        first = entries[0].index
        if first > self.last_index + 1:
            raise CorruptionError(
                f"index gap: batch starts at {first} but the log ends at {self.last_index}",
                path,
                offset,
            )
        if first < self.log_start:  # overwrites everything replayed so far
            self.entries = list(entries)
            self.log_start = first
        else:
            del self.entries[first - self.log_start :]
            self.entries.extend(entries)

    def reset(self, marker: SnapshotMarker) -> None:
        """A snapshot installed from the leader replaces the whole log (Raft §7)."""
        self.entries = []
        self.log_start = marker.index + 1


class Wal:
    """An open WAL positioned at the end of its last segment. Create with :meth:`open`."""

    def __init__(
        self,
        fs: FileSystem,
        wal_dir: str,
        options: WalOptions,
        segments: list[SegmentName],
        handle: FileHandle,
        offset: int,
        replayed: Replayed,
    ) -> None:
        self.fs = fs
        self.dir = wal_dir
        self.options = options
        self.segments = segments  # oldest first; the last one is open for appending
        self._handle: FileHandle | None = handle
        self._offset = offset  # end of valid data in the last segment: next write goes here
        # bytes of the last segment's file reserved so far (its size; writes below it do not
        # grow the file)
        self._reserving = options.preallocate_ahead > 0  # off for good if the FS refuses
        self._reserved = _io(handle.size) if self._reserving else 0
        # Rotation is pointless for a segment holding only its initial records.
        self._segment_used = offset > len(header_bytes(segments[-1]))
        self._hard_state = replayed.hard_state
        self._last_index = replayed.last_index
        self._failed: BaseException | None = None
        self.fsyncs = 0  # counters for benchmarks and tests
        self.bytes_written = 0

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, fs: FileSystem, wal_dir: str, options: WalOptions) -> tuple[Wal, Replayed]:
        """Replay the WAL in ``wal_dir`` (creating a first segment if there is none).

        Raises CorruptionError (refuse to start) or FatalIOError/DiskFullError (I/O).
        """
        fs.mkdir(wal_dir)
        _remove_temporaries(fs, wal_dir)
        names = list_segments(fs, wal_dir)
        if not names:
            return cls._create_empty(fs, wal_dir, options)
        with _gc_paused():
            replayed, offset = _replay_all(fs, wal_dir, names)
        handle = _io(lambda: fs.open(os.path.join(wal_dir, names[-1].filename)))
        if replayed.torn_bytes:
            _io(lambda: _cut_tail(handle, offset))
        return cls(fs, wal_dir, options, names, handle, offset, replayed), replayed

    @classmethod
    def _create_empty(
        cls, fs: FileSystem, wal_dir: str, options: WalOptions
    ) -> tuple[Wal, Replayed]:
        name = SegmentName(1, 1)
        initial = header_bytes(name)
        prealloc = options.segment_bytes if options.preallocate else 0
        handle = _io(lambda: create_segment(fs, wal_dir, name, bytes(initial), prealloc))
        replayed = Replayed()
        return cls(fs, wal_dir, options, [name], handle, len(initial), replayed), replayed

    # --- writing -----------------------------------------------------------------------------

    def save(self, hard_state: HardState | None, entries: Sequence[Entry], must_sync: bool) -> None:
        """Append one batch: one write, and one fsync iff ``must_sync``.

        Raises DiskFullError (nothing written; retry later), FatalIOError (WAL unusable).
        """
        if hard_state is None and not entries:
            if must_sync:
                self._sync()
            return
        payload = record.encode_struct(Batch(list(entries), hard_state))
        buf = bytearray()
        record.append_record(buf, RecordType.BATCH, payload)
        self._append(buf)
        if hard_state is not None:
            self._hard_state = hard_state
        if entries:
            self._last_index = entries[-1].index
        if must_sync and "skip_fsync" not in self.options.planted_bugs:
            self._sync()

    def append_marker(self, marker: SnapshotMarker, sync: bool) -> None:
        """Record that a snapshot became durable; ``marker.reset`` discards the log."""
        buf = bytearray()
        record.append_record(buf, RecordType.SNAPSHOT_MARKER, record.encode_struct(marker))
        self._append(buf)
        if marker.reset:
            self._last_index = marker.index
        if sync:
            self._sync()

    def sync(self) -> None:
        self._sync()

    def _append(self, buf: bytearray) -> None:
        handle = self._writable()
        end = self._offset + len(buf)
        if end > self.options.segment_bytes and self._segment_used:
            self._rotate()
            handle = self._writable()
            end = self._offset + len(buf)
        if self._reserving and end > self._reserved:
            self._reserve(handle, end)
        try:
            handle.pwrite(buf, self._offset)
        except OSError as exc:
            self._write_failed(handle, exc)
        self._offset += len(buf)
        self._segment_used = True
        self.bytes_written += len(buf)

    def _reserve(self, handle: FileHandle, end: int) -> None:
        """Reserve the file up to ``end`` plus ``preallocate_ahead`` bytes (never past the
        segment size unless ``end`` itself is). Nothing is written yet, so a full disk here
        loses nothing: DiskFullError, and the next save retries."""
        ahead = self.options.preallocate_ahead
        target = max(end, min(end + ahead, self.options.segment_bytes))
        try:
            handle.preallocate(target)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(f"disk full reserving {self._current_path()}") from exc
            # Reserving is only a speed-up, and nothing was written: a file system that
            # cannot do it gets plain appends from now on.
            log.warning("WAL space reservation off: %s on %s", exc, self._current_path())
            self._reserving = False
            return
        self._reserved = target

    def _write_failed(self, handle: FileHandle, exc: OSError) -> None:
        if exc.errno != errno.ENOSPC:
            self._fail(exc, "write")
        # Cut the partial record off so later appends start on a clean boundary; if even that
        # fails, the tail is unknown and we must stop.
        try:
            handle.truncate(self._offset)
        except OSError as cut_exc:
            self._fail(cut_exc, "truncate after ENOSPC")
        raise DiskFullError(f"disk full writing {self._current_path()}") from exc

    def _sync(self) -> None:
        handle = self._writable()
        try:
            handle.sync()
        except OSError as exc:
            self._fail(exc, "fsync")
        self.fsyncs += 1

    def _rotate(self) -> None:
        """Close the current segment durably and start the next one.

        The old segment is fsynced first: records saved with must_sync=False must not be lost
        while later records in the new segment survive (that would look like mid-log
        corruption). The new segment starts with the current hard state so that releasing
        old segments never loses it.
        """
        handle = self._writable()
        try:
            if self.options.reserves:
                handle.truncate(self._offset)
            if "skip_rotation_fsync" not in self.options.planted_bugs:
                handle.sync()
        except OSError as exc:
            self._fail(exc, "fsync before rotation")
        name = SegmentName(self.segments[-1].seq + 1, self._last_index + 1)
        extra = bytearray()
        if not self._hard_state.is_empty():
            hs = record.encode_struct(self._hard_state)
            record.append_record(extra, RecordType.HARD_STATE, hs)
        initial = header_bytes(name, bytes(extra))
        prealloc = self.options.segment_bytes if self.options.preallocate else 0
        try:
            skip_dir = "skip_dir_fsync" in self.options.planted_bugs
            new = create_segment(self.fs, self.dir, name, bytes(initial), prealloc, skip_dir)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(f"disk full creating segment {name.filename}") from exc
            self._fail(exc, "segment creation")
        handle.close()
        self._handle = new
        self.segments.append(name)
        self._offset = len(initial)
        self._reserved = max(prealloc, len(initial))
        self._segment_used = False

    def release_through(self, index: int) -> list[str]:
        """Remove segments whose entries all lie at or below ``index`` (covered by a durable
        snapshot). Oldest first, with a directory fsync after each, so a crash leaves a
        contiguous suffix of segments. Returns the removed paths."""
        removed = []
        while len(self.segments) > 1 and self.segments[1].first_index - 1 <= index:
            path = os.path.join(self.dir, self.segments[0].filename)
            try:
                self.fs.remove(path)
                self.fs.fsync_dir(self.dir)
            except OSError as exc:
                self._fail(exc, "segment release")
            self.segments.pop(0)
            removed.append(path)
        return removed

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    # --- state ---------------------------------------------------------------------------------

    def _writable(self) -> FileHandle:
        if self._failed is not None:
            raise FatalIOError("the WAL failed earlier and refuses writes") from self._failed
        if self._handle is None:
            raise UsageError("the WAL is closed")
        return self._handle

    def _fail(self, exc: OSError, what: str) -> None:
        self._failed = exc
        raise FatalIOError(f"{what} failed on {self._current_path()}: {exc}") from exc

    def _current_path(self) -> str:
        return os.path.join(self.dir, self.segments[-1].filename)

    @property
    def segment_offset(self) -> int:
        """Bytes of valid data in the current (last) segment."""
        return self._offset

    @property
    def failed(self) -> bool:
        return self._failed is not None


# --- replay helpers ----------------------------------------------------------------------------


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Replay allocates millions of acyclic objects (entries are gc=False Structs, but their
    lists are tracked); pausing the cyclic collector avoids repeated full-heap scans that
    otherwise triple recovery time. Nothing created here forms a cycle."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _replay_all(fs: FileSystem, wal_dir: str, names: list[SegmentName]) -> tuple[Replayed, int]:
    """Replay every segment in order; return the log and the end offset of the last one."""
    replayed = Replayed(log_start=names[0].first_index)
    replayed.first_segment = os.path.join(wal_dir, names[0].filename)
    offset = 0
    for position, name in enumerate(names):
        if position and name.seq != names[position - 1].seq + 1:
            path = os.path.join(wal_dir, name.filename)
            raise CorruptionError(f"missing segment before seq {name.seq}", path, 0)
        scan = _io(lambda: read_segment(fs, wal_dir, name))  # noqa: B023 - called at once
        check_stop(scan, last=position == len(names) - 1, replayed=replayed)
        replay_segment(scan, replayed, expect_first=None if position == 0 else True)
        offset = scan.end
    return replayed, offset


def _remove_temporaries(fs: FileSystem, wal_dir: str) -> None:
    """A ``.tmp`` segment is one whose creation never completed: it holds no saved data."""
    for name in fs.listdir(wal_dir):
        if name.endswith(TMP_SUFFIX):
            path = os.path.join(wal_dir, name)
            _io(lambda: fs.remove(path))  # noqa: B023 - called at once


def check_stop(scan: SegmentScan, last: bool, replayed: Replayed, announce: bool = True) -> None:
    """Judge a bad record: a torn tail of the last segment is cut off; anything else is
    corruption. A valid record after the damage, or a complete record whose mismatch one
    flipped bit explains, means it is not a torn tail."""
    if scan.stop is None:
        return
    if not last or scan.valid_after_stop is not None or scan.bit_flip_at is not None:
        detail = "" if last else " in a segment that is not the last"
        if scan.valid_after_stop is not None:
            detail += f", valid record follows at offset {scan.valid_after_stop}"
        if scan.bit_flip_at is not None:
            detail += (
                f"; the record is complete and one flipped bit at offset {scan.bit_flip_at} "
                "explains it: media corruption, not a torn write"
            )
        raise CorruptionError(f"bad record: {scan.stop.reason}{detail}", scan.path, scan.stop.offset)
    replayed.torn_bytes = scan.size - scan.end
    if not announce:
        return
    log.warning(
        "WAL %s: torn record at offset %d (%s); cutting off %d bytes of unsynced tail",
        scan.path,
        scan.end,
        scan.stop.reason,
        replayed.torn_bytes,
    )


def replay_segment(scan: SegmentScan, replayed: Replayed, expect_first: bool | None) -> None:
    if expect_first and scan.name.first_index != replayed.last_index + 1:
        raise CorruptionError(
            f"segment starts at index {scan.name.first_index} but the log ends at "
            f"{replayed.last_index}",
            scan.path,
            0,
        )
    for rec in scan.records:
        try:
            _replay_record(rec, replayed, scan.path)
        except (ValueError, TypeError) as exc:  # msgspec errors: CRC fine, content not
            raise CorruptionError(f"record does not decode: {exc}", scan.path, rec.offset) from exc


def _replay_record(rec: record.Record, replayed: Replayed, path: str) -> None:
    if rec.type == RecordType.BATCH:
        batch = record.decode_batch(rec.payload)
        if batch.entries:
            _check_batch(batch.entries, path, rec.offset)
            replayed.append(batch.entries, path, rec.offset)
        if batch.hard_state is not None:
            replayed.hard_state = batch.hard_state
            replayed.hard_state_at = (path, rec.offset)
    elif rec.type == RecordType.HARD_STATE:
        replayed.hard_state = record.decode_hard_state(rec.payload)
        replayed.hard_state_at = (path, rec.offset)
    elif rec.type == RecordType.SNAPSHOT_MARKER:
        marker = record.decode_marker(rec.payload)
        replayed.last_marker = marker
        if marker.reset:
            replayed.reset(marker)
    else:
        raise CorruptionError(f"unexpected record type {rec.type.name}", path, rec.offset)


def _check_batch(entries: list[Entry], path: str, offset: int) -> None:
    first = entries[0].index
    if first < 1 or entries[-1].index != first + len(entries) - 1:
        raise CorruptionError("batch indexes are not consecutive", path, offset)


def _cut_tail(handle: FileHandle, offset: int) -> None:
    handle.truncate(offset)
    handle.sync()


def _io(action: Callable[[], T]) -> T:
    """Run an I/O action during open, mapping OSError into the error tree."""
    return run_io(action, " while opening the WAL")

