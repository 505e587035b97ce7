"""Snapshot files: streaming, retention, and what happens when the newest one is corrupt."""

from __future__ import annotations

import random

import pytest

from quorum.errors import Compacted, CorruptionError, SnapshotOutOfDate, UsageError
from quorum.raft.types import HardState, Snapshot, SnapshotMetadata
from quorum.storage import DurableStorage, SimFileSystem, StorageOptions
from quorum.storage.inspect import inspect
from quorum.storage.snapshot import SnapshotStore, verify_snapshot

from .model import VOTERS, entries

OPTIONS = StorageOptions(segment_bytes=4096, snapshot_chunk_bytes=1000)


def with_log(count: int = 100) -> tuple[SimFileSystem, DurableStorage]:
    fs = SimFileSystem(random.Random(5))
    storage = DurableStorage.open(fs, "/d", OPTIONS)
    for first in range(1, count + 1, 10):
        storage.save(HardState(1, 1, first + 9), entries(1, first, 10, size=200), must_sync=True)
    return fs, storage


def chunks(tag: int, count: int = 7) -> list[bytes]:
    return [bytes([tag]) * 900 for _ in range(count)]


def test_streamed_snapshot_round_trips_in_chunks() -> None:
    fs, storage = with_log()
    meta = storage.create_snapshot(40, VOTERS, iter(chunks(4)))
    assert (meta.index, meta.term, meta.conf_state) == (40, 1, VOTERS)
    read = list(storage.snapshot_chunks())
    assert b"".join(read) == b"".join(chunks(4)) and len(read) == 7  # 6300 bytes, 1000 a chunk
    storage.close()
    recovered = DurableStorage.open(fs, "/d", OPTIONS)
    assert recovered.snapshot().data == b"".join(chunks(4))
    assert recovered.initial_state()[1] == VOTERS
    assert (recovered.first_index(), recovered.term(40)) == (41, 1)


def test_only_the_newest_snapshots_are_kept() -> None:
    fs, storage = with_log()
    for index in (20, 40, 60, 80):
        storage.create_snapshot(index, VOTERS, chunks(index, 1))
    assert [i for i, _, _ in SnapshotStore(fs, "/d/snap").paths()] == [60, 80]


def test_compaction_keeps_the_wal_back_to_the_fallback_snapshot() -> None:
    _, storage = with_log()
    storage.create_snapshot(40, VOTERS, chunks(1, 1))
    storage.compact(40)
    assert storage.wal.segments[0].seq == 1  # one snapshot: no fallback below it, keep all
    storage.create_snapshot(90, VOTERS, chunks(2, 1))
    storage.compact(90)
    assert storage.first_index() == 91
    assert storage.wal.segments[0].seq > 1
    assert storage.wal.segments[1].first_index - 1 > 40  # nothing needed after 40 was released
    with pytest.raises(Compacted):
        storage.entries(90, 92)


def corrupt_newest(fs: SimFileSystem) -> str:
    path = SnapshotStore(fs, "/d/snap").paths()[-1][2]
    fs.flip_bit(path, fs.size(path) - 30)  # in the data: header and trailer still check out
    return path


def test_corrupt_newest_snapshot_falls_back_when_the_wal_covers_the_gap() -> None:
    fs, storage = with_log()
    storage.create_snapshot(40, VOTERS, chunks(1))
    storage.compact(40)
    storage.create_snapshot(90, VOTERS, chunks(2))
    storage.compact(90)
    storage.close()
    bad = corrupt_newest(fs)
    recovered = DurableStorage.open(fs, "/d", OPTIONS)
    assert recovered.snapshot_metadata().index == 40
    assert recovered.entries(41, 101) == entries(1, 41, 60, size=200)
    assert fs.exists(bad + ".corrupt") and not fs.exists(bad)  # kept aside, not deleted
    assert inspect("/d", fs).quarantined == [bad + ".corrupt"]


def test_corrupt_newest_snapshot_is_refused_when_the_wal_does_not_cover() -> None:
    fs, storage = with_log()
    storage.create_snapshot(40, VOTERS, chunks(1))
    storage.apply_snapshot(Snapshot(SnapshotMetadata(500, 3, VOTERS), b"leader"))  # log reset
    storage.close()
    bad = corrupt_newest(fs)
    with pytest.raises(CorruptionError) as info:
        DurableStorage.open(fs, "/d", OPTIONS)
    assert info.value.path == bad


def test_corrupt_only_snapshot_with_single_retention_is_refused() -> None:
    fs = SimFileSystem(random.Random(5))
    options = StorageOptions(segment_bytes=4096, snapshots_kept=1)
    storage = DurableStorage.open(fs, "/d", options)
    for first in range(1, 101, 10):
        storage.save(HardState(1, 1, first + 9), entries(1, first, 10, size=200), must_sync=True)
    storage.create_snapshot(90, VOTERS, chunks(2))
    storage.compact(90)
    storage.close()
    corrupt_newest(fs)
    with pytest.raises(CorruptionError, match="checksum"):
        DurableStorage.open(fs, "/d", options)


def test_damaged_header_or_trailer_is_detected_without_reading_data() -> None:
    fs, storage = with_log()
    storage.create_snapshot(40, VOTERS, chunks(1))
    path = SnapshotStore(fs, "/d/snap").paths()[-1][2]
    for offset, message in ((20, "metadata checksum"), (fs.size(path) - 10, "trailer")):
        fs.flip_bit(path, offset)
        with pytest.raises(CorruptionError, match=message):
            verify_snapshot(fs, path)
        fs.flip_bit(path, offset)
    verify_snapshot(fs, path)


def test_installed_snapshot_resets_the_log() -> None:
    fs, storage = with_log()
    storage.apply_snapshot(Snapshot(SnapshotMetadata(500, 3, VOTERS), b"leader"))
    assert (storage.first_index(), storage.last_index(), storage.term(500)) == (501, 500, 3)
    with pytest.raises(SnapshotOutOfDate):
        storage.apply_snapshot(Snapshot(SnapshotMetadata(400, 3, VOTERS), b"old"))
    storage.save(HardState(3, 0, 500), entries(3, 501, 2), must_sync=True)
    storage.close()
    recovered = DurableStorage.open(fs, "/d", OPTIONS)
    assert (recovered.first_index(), recovered.last_index()) == (501, 502)
    assert recovered.initial_state()[0] == HardState(3, 0, 500)


def test_crash_between_install_file_and_wal_marker_keeps_matching_entries_only() -> None:
    """The snapshot file is durable but the reset marker is not: the old log does not hold
    the snapshot's last entry with its term, so it is discarded (Raft §7)."""
    fs, storage = with_log()
    storage.save(HardState(9, 0, 100), [], must_sync=True)
    storage.wal.append_marker = lambda marker, sync: None  # type: ignore[method-assign]
    storage.apply_snapshot(Snapshot(SnapshotMetadata(150, 9, VOTERS), b"leader"))
    fs.crash(torn=False)
    recovered = DurableStorage.open(fs, "/d", OPTIONS)
    assert (recovered.first_index(), recovered.last_index()) == (151, 150)
    assert recovered.initial_state()[0] == HardState(9, 0, 150)
    # recovery completed the install, so the log continues at 151 across another restart
    recovered.save(HardState(9, 0, 150), entries(9, 151, 3), must_sync=True)
    recovered.close()
    again = DurableStorage.open(fs, "/d", OPTIONS)
    assert (again.first_index(), again.last_index()) == (151, 153)


def test_snapshot_rules() -> None:
    _, storage = with_log()
    with pytest.raises(UsageError, match="commit"):
        storage.create_snapshot(101, VOTERS, [])
    storage.create_snapshot(30, VOTERS, [])
    with pytest.raises(SnapshotOutOfDate):
        storage.create_snapshot(30, VOTERS, [])
    with pytest.raises(UsageError, match="newest snapshot"):
        storage.compact(31)
    assert storage.snapshot().data == b""


def test_crash_between_install_file_and_wal_marker_keeps_a_matching_suffix() -> None:
    fs, storage = with_log()
    storage.wal.append_marker = lambda marker, sync: None  # type: ignore[method-assign]
    storage.apply_snapshot(Snapshot(SnapshotMetadata(80, 1, VOTERS), b"leader"))
    fs.crash(torn=False)
    recovered = DurableStorage.open(fs, "/d", OPTIONS)
    assert (recovered.first_index(), recovered.last_index()) == (81, 100)
    assert recovered.entries(81, 101) == entries(1, 81, 20, size=200)


def test_install_older_than_the_newest_snapshot_file_is_refused() -> None:
    _, storage = with_log()
    storage.create_snapshot(60, VOTERS, [b"s"])
    storage.compact(30)  # compaction may stay behind the snapshot
    with pytest.raises(SnapshotOutOfDate):
        storage.apply_snapshot(Snapshot(SnapshotMetadata(45, 2, VOTERS), b"old"))
    assert (storage.first_index(), storage.last_index()) == (31, 100)
