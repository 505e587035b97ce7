"""Smoke tests on real files: the same storage code on OsFileSystem in a temp directory."""

from __future__ import annotations

import errno
from pathlib import Path

from quorum.raft.types import HardState
from quorum.storage import DurableStorage, OsFileSystem, StorageOptions
from quorum.storage.fs import FileHandle

from .model import VOTERS, entries


def test_real_files_round_trip(tmp_path: Path) -> None:
    fs = OsFileSystem()
    options = StorageOptions(segment_bytes=8192)
    storage = DurableStorage.open(fs, str(tmp_path / "node"), options)
    for first in range(1, 201, 20):
        storage.save(HardState(2, 1, first - 1), entries(2, first, 20, size=100), must_sync=True)
    storage.create_snapshot(100, VOTERS, [b"a" * 5000, b"b" * 5000])
    storage.compact(100)
    storage.close()
    assert len(list((tmp_path / "node" / "wal").glob("*.wal"))) > 2
    recovered = DurableStorage.open(fs, str(tmp_path / "node"), options)
    assert recovered.initial_state() == (HardState(2, 1, 180), VOTERS)
    assert recovered.entries(101, 201) == entries(2, 101, 100, size=100)
    assert recovered.snapshot().data == b"a" * 5000 + b"b" * 5000


def test_real_torn_tail_is_cut(tmp_path: Path) -> None:
    fs = OsFileSystem()
    storage = DurableStorage.open(fs, str(tmp_path), StorageOptions())
    storage.save(HardState(1, 0, 0), entries(1, 1, 10), must_sync=True)
    storage.save(None, entries(1, 11, 10), must_sync=True)
    storage.close()
    (segment,) = (tmp_path / "wal").glob("*.wal")
    with segment.open("r+b") as f:
        f.truncate(segment.stat().st_size - 7)
    assert DurableStorage.open(fs, str(tmp_path), StorageOptions()).last_index() == 10


def test_preallocated_segments_recover(tmp_path: Path) -> None:
    fs = OsFileSystem()
    options = StorageOptions(segment_bytes=16384, preallocate=True)
    storage = DurableStorage.open(fs, str(tmp_path), options)
    for first in range(1, 301, 30):
        storage.save(HardState(1, 0, 0), entries(1, first, 30, size=100), must_sync=True)
    storage.close()
    recovered = DurableStorage.open(fs, str(tmp_path), options)
    assert recovered.entries(1, 301) == entries(1, 1, 300, size=100)
    recovered.save(None, entries(1, 301, 1), must_sync=True)
    recovered.close()
    assert DurableStorage.open(fs, str(tmp_path), options).last_index() == 301


def test_space_reserved_ahead_on_real_files(tmp_path: Path) -> None:
    """The live segment's file is reserved in steps ahead of the data (so appends do not grow
    it), full segments are cut back to their data at rotation, and everything replays, after a
    restart too."""
    fs = OsFileSystem()
    options = StorageOptions(segment_bytes=32768, preallocate_ahead=8192)
    storage = DurableStorage.open(fs, str(tmp_path), options)
    sizes = []
    for first in range(1, 601, 30):
        storage.save(HardState(1, 0, 0), entries(1, first, 30, size=100), must_sync=True)
        live = sorted((tmp_path / "wal").glob("*.wal"))[-1]
        sizes.append(live.stat().st_size)
        assert live.stat().st_size >= storage.wal.segment_offset  # the data fits the file
        assert live.stat().st_size <= max(options.segment_bytes,
                                          storage.wal.segment_offset + options.preallocate_ahead)
    assert len(set(sizes)) > 2  # reserved in several steps
    segments = sorted((tmp_path / "wal").glob("*.wal"))
    assert len(segments) >= 2
    for full in segments[:-1]:
        data = full.read_bytes()
        assert data[-8:] != bytes(8)  # cut back at rotation: no reserved zeros left behind
    live = segments[-1]
    assert live.stat().st_size > storage.wal.segment_offset  # space is reserved ahead
    storage.close()
    recovered = DurableStorage.open(fs, str(tmp_path), options)
    assert recovered.entries(1, 601) == entries(1, 1, 600, size=100)
    recovered.save(None, entries(1, 601, 1), must_sync=True)
    recovered.close()
    assert DurableStorage.open(fs, str(tmp_path), options).last_index() == 601


def test_a_file_system_that_cannot_reserve_gets_plain_appends(tmp_path: Path) -> None:
    """Reserving is a speed-up: an error other than a full disk turns it off, nothing fails."""

    class NoFallocate(OsFileSystem):
        def open(self, path: str, create: bool = False) -> FileHandle:
            handle = super().open(path, create)

            def refuse(size: int) -> None:
                raise OSError(errno.EOPNOTSUPP, "not supported")

            handle.preallocate = refuse  # type: ignore[method-assign]
            return handle

    fs = NoFallocate()
    options = StorageOptions(segment_bytes=16384, preallocate_ahead=4096)
    storage = DurableStorage.open(fs, str(tmp_path), options)
    for first in range(1, 301, 30):
        storage.save(HardState(1, 0, 0), entries(1, first, 30, size=100), must_sync=True)
    storage.close()
    assert DurableStorage.open(fs, str(tmp_path), options).entries(1, 301) == entries(
        1, 1, 300, size=100)
