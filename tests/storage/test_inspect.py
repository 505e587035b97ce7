"""inspect/verify describe a data directory and report corruption without changing it."""

from __future__ import annotations

import random

import msgspec

from quorum.raft.types import HardState
from quorum.storage import DurableStorage, SimFileSystem, StorageOptions
from quorum.storage.inspect import Report, inspect, render, verify
from quorum.storage.snapshot import SnapshotStore

from .model import VOTERS, entries


def populated() -> SimFileSystem:
    fs = SimFileSystem(random.Random(9))
    storage = DurableStorage.open(fs, "/d", StorageOptions(segment_bytes=4096))
    for first in range(1, 101, 10):
        storage.save(HardState(2, 1, first + 9), entries(2, first, 10, size=150), must_sync=True)
    storage.create_snapshot(50, VOTERS, [b"x" * 3000])
    storage.close()
    return fs


def test_inspect_describes_segments_snapshots_and_hard_state() -> None:
    fs = populated()
    report = inspect("/d", fs)
    assert report.ok, report.problems
    assert report.hard_state == HardState(2, 1, 100)
    assert (report.log_first_index, report.log_last_index) == (1, 100)
    assert len(report.segments) > 2
    assert sum(s.entries for s in report.segments) == 100
    assert report.segments[0].min_index == 1 and report.segments[-1].max_index == 100
    assert [(s.index, s.term, s.data_bytes) for s in report.snapshots] == [(50, 2, 3000)]
    assert not report.snapshots[0].data_checked
    decoded = msgspec.json.decode(msgspec.json.encode(report), type=Report)
    assert decoded == report
    assert "OK" in render(report) and "snapshot" in render(report)


def test_verify_reports_torn_tail_without_cutting_it() -> None:
    fs = populated()
    last = inspect("/d", fs).segments[-1].path
    size = fs.size(last)
    fs.truncate(last, size - 20)
    report = verify("/d", fs)
    assert report.ok and report.torn_tail_bytes > 0
    assert fs.size(last) == size - 20  # read-only
    assert "torn tail" in render(report)


def test_verify_names_corrupt_segment_and_snapshot() -> None:
    fs = populated()
    segment = inspect("/d", fs).segments[1].path
    fs.flip_bit(segment, 200)
    snap_path = SnapshotStore(fs, "/d/snap").paths()[0][2]
    fs.flip_bit(snap_path, fs.size(snap_path) - 100)
    assert inspect("/d", fs).snapshots[0].problem == ""  # header-only check passes
    report = verify("/d", fs)
    assert not report.ok
    assert any(segment in p for p in report.problems)
    assert any(snap_path in p and "checksum" in p for p in report.problems)
    assert "PROBLEMS FOUND" in render(report)
