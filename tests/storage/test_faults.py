"""Disk full, write errors and fsync failures: typed errors, nothing written is damaged."""

from __future__ import annotations

import random

import pytest

from quorum.errors import DiskFullError, FatalIOError
from quorum.raft.types import HardState, Snapshot, SnapshotMetadata
from quorum.storage import DurableStorage, SimFileSystem, SimulatedCrash, StorageOptions, record
from quorum.storage.record import Batch

from .model import VOTERS, entries

OPTIONS = StorageOptions(segment_bytes=8192)


def opened(capacity: int | None = None) -> tuple[SimFileSystem, DurableStorage]:
    fs = SimFileSystem(random.Random(3), capacity_bytes=capacity)
    storage = DurableStorage.open(fs, "/d", OPTIONS)
    storage.save(HardState(1, 1, 0), entries(1, 1, 10), must_sync=True)
    return fs, storage


def test_disk_full_keeps_previous_data_and_reads_then_recovers() -> None:
    fs, storage = opened()
    fs.capacity_bytes = fs.used_bytes() + 200
    with pytest.raises(DiskFullError):
        storage.save(HardState(1, 1, 5), entries(1, 11, 10), must_sync=True)
    assert storage.last_index() == 10  # memory unchanged
    assert storage.entries(1, 11) == entries(1, 1, 10)  # reads keep working
    assert fs.used_bytes() <= fs.capacity_bytes  # the partial record was cut off
    fs.capacity_bytes = None  # space freed: later writes succeed
    storage.save(HardState(1, 1, 5), entries(1, 11, 10), must_sync=True)
    fs.crash(torn=False)
    recovered = DurableStorage.open(fs, "/d", OPTIONS)
    assert recovered.entries(1, 21) == entries(1, 1, 20)
    assert recovered.initial_state()[0] == HardState(1, 1, 5)


def test_disk_full_during_rotation_keeps_the_old_segment_usable() -> None:
    fs, storage = opened()
    while storage.wal.segment_offset + 2000 < OPTIONS.segment_bytes:
        storage.save(None, entries(1, storage.last_index() + 1, 10, size=100), must_sync=True)
    fs.capacity_bytes = fs.used_bytes() + 10  # not even room for the next segment's header
    last = storage.last_index()
    with pytest.raises(DiskFullError):
        storage.save(None, entries(1, last + 1, 20, size=100), must_sync=True)
    assert len(storage.wal.segments) == 1 and not any(n.endswith(".tmp") for n in fs.listdir("/d/wal"))
    fs.capacity_bytes = None
    storage.save(None, entries(1, last + 1, 20, size=100), must_sync=True)
    assert len(storage.wal.segments) == 2
    fs.crash(torn=True)
    assert DurableStorage.open(fs, "/d", OPTIONS).last_index() == last + 20


def test_disk_full_writing_a_snapshot_leaves_no_partial_file() -> None:
    fs, storage = opened()
    storage.save(HardState(1, 1, 10), [], must_sync=True)
    fs.capacity_bytes = fs.used_bytes() + 100
    with pytest.raises(DiskFullError):
        storage.create_snapshot(10, VOTERS, [b"z" * 1000])
    assert fs.listdir("/d/snap") == []
    fs.capacity_bytes = None
    storage.create_snapshot(10, VOTERS, [b"z" * 1000])
    assert storage.snapshot().data == b"z" * 1000


def test_disk_full_at_the_snapshot_header_leaves_no_partial_file() -> None:
    fs, storage = opened()
    storage.save(HardState(1, 1, 10), [], must_sync=True)
    fs.capacity_bytes = fs.used_bytes() + 3
    with pytest.raises(DiskFullError):
        storage.create_snapshot(10, VOTERS, [b"z"])
    assert fs.listdir("/d/snap") == []


def test_fsync_failure_is_fatal_and_refuses_further_writes() -> None:
    fs, storage = opened()
    fs.fail_sync_at(1)
    with pytest.raises(FatalIOError):
        storage.save(HardState(2, 0, 0), entries(2, 11, 1), must_sync=True)
    # The fsync may have dropped dirty pages: acknowledging anything later could be a lie.
    with pytest.raises(FatalIOError):
        storage.save(HardState(2, 0, 0), entries(2, 11, 1), must_sync=True)
    with pytest.raises(FatalIOError):
        storage.apply_snapshot(Snapshot(SnapshotMetadata(50, 2, VOTERS), b""))
    assert storage.entries(1, 11) == entries(1, 1, 10)  # reads of durable data still work


def test_write_error_is_fatal() -> None:
    fs, storage = opened()
    fs.fail_write_at(1)
    with pytest.raises(FatalIOError):
        storage.save(None, entries(1, 11, 1), must_sync=True)
    assert storage.last_index() == 10
    with pytest.raises(FatalIOError):
        storage.save(None, entries(1, 11, 1), must_sync=True)


def test_fsync_failure_while_writing_a_snapshot_is_fatal() -> None:
    fs, storage = opened()
    storage.save(HardState(1, 1, 10), [], must_sync=True)
    fs.fail_sync_at(1)
    with pytest.raises(FatalIOError):
        storage.create_snapshot(10, VOTERS, [b"data"])
    with pytest.raises(FatalIOError):
        storage.save(None, entries(1, 11, 1), must_sync=True)


def test_one_write_and_at_most_one_fsync_per_save() -> None:
    fs, storage = opened()
    writes, syncs = fs.write_count, fs.sync_count
    storage.save(HardState(1, 1, 3), entries(1, 11, 100, size=10), must_sync=True)
    assert (fs.write_count - writes, fs.sync_count - syncs) == (1, 1)
    storage.save(HardState(1, 1, 4), [], must_sync=False)  # commit only: no fsync
    assert (fs.write_count - writes, fs.sync_count - syncs) == (2, 1)


def test_slow_fsync_hook_sees_every_sync() -> None:
    fs, storage = opened()
    seen: list[str] = []
    fs.on_sync = seen.append
    storage.save(None, entries(1, 11, 1), must_sync=True)
    assert len(seen) == 1 and seen[0].startswith(f"/d/wal/{storage.wal.segments[-1].filename}")


def test_a_save_that_hit_disk_full_never_reappears_after_a_crash() -> None:
    """ENOSPC may leave a partial record on disk until the cut-back reaches it; even when all
    but the padding was written, recovery must not resurrect the failed save."""
    failed = entries(1, 4, 1, size=61)
    payload = record.encode_struct(Batch(failed, HardState(1, 1, 0)))
    assert len(payload) % 8, "the record must need padding for this test"
    partial_survived = 0
    for seed in range(40):
        fs = SimFileSystem(random.Random(seed))
        storage = DurableStorage.open(fs, "/d", OPTIONS)
        storage.save(HardState(1, 1, 0), entries(1, 1, 3), must_sync=True)
        segment = f"/d/wal/{storage.wal.segments[-1].filename}"
        durable_size = fs.size(segment)
        fs.capacity_bytes = fs.used_bytes() + 16 + len(payload)  # all but the padding fits
        fs.crash_at_event = fs.events + 2  # crash before the cut-back truncate
        with pytest.raises(SimulatedCrash):
            storage.save(HardState(1, 1, 0), failed, must_sync=True)
        fs.crash(torn=True)
        partial_survived += fs.size(segment) == durable_size + 16 + len(payload)
        assert DurableStorage.open(fs, "/d", OPTIONS).last_index() == 3
    assert partial_survived > 0, "no seed kept the partial record: the test proves nothing"
