"""The simulated file system loses exactly what its fault model says, deterministically."""

from __future__ import annotations

import errno
import random

import pytest

from quorum.storage import SimFileSystem, SimulatedCrash


def fresh(seed: int = 1) -> SimFileSystem:
    fs = SimFileSystem(random.Random(seed))
    fs.mkdir("/d")
    return fs


def durable_file(fs: SimFileSystem, path: str, data: bytes) -> None:
    handle = fs.open(path, create=True)
    handle.pwrite(data, 0)
    handle.sync()
    handle.close()
    fs.fsync_dir("/d")


def test_unsynced_data_is_lost_and_synced_data_kept() -> None:
    fs = fresh()
    durable_file(fs, "/d/a", b"synced")
    handle = fs.open("/d/a")
    handle.pwrite(b"-unsynced", 6)
    fs.crash(torn=False)
    assert fs.read_file("/d/a") == b"synced"


def test_torn_crash_keeps_a_sector_prefix_of_unsynced_writes() -> None:
    outcomes = set()
    for seed in range(40):
        fs = fresh(seed)
        durable_file(fs, "/d/a", b"")
        handle = fs.open("/d/a")
        handle.pwrite(b"x" * 2048, 0)  # four sectors
        fs.crash(torn=True)
        data = fs.read_file("/d/a")
        assert len(data) % 512 == 0 and len(data) <= 2048
        good = len(data) if data == b"x" * len(data) else len(data) - 512
        assert data[:good] == b"x" * good  # only the last surviving sector may be mangled
        outcomes.add((len(data), data == b"x" * len(data)))
    assert len(outcomes) >= 4  # various lengths, some with a mangled last sector


def test_directory_entries_need_fsync_dir() -> None:
    fs = fresh()
    handle = fs.open("/d/new", create=True)
    handle.pwrite(b"data", 0)
    handle.sync()  # the file's data is durable, its name is not
    fs.crash(torn=False)
    assert not fs.exists("/d/new")


def test_rename_and_remove_are_durable_only_after_fsync_dir() -> None:
    fs = fresh()
    durable_file(fs, "/d/a", b"A")
    durable_file(fs, "/d/b", b"B")
    fs.rename("/d/a", "/d/c")
    fs.remove("/d/b")
    fs.crash(torn=False)
    assert fs.listdir("/d") == ["a", "b"]
    fs.rename("/d/a", "/d/c")
    fs.remove("/d/b")
    fs.fsync_dir("/d")
    fs.crash(torn=False)
    assert fs.listdir("/d") == ["c"] and fs.read_file("/d/c") == b"A"


def test_enospc_writes_what_fits_then_fails() -> None:
    fs = SimFileSystem(random.Random(1), capacity_bytes=10)
    handle = fs.open("/f", create=True)
    with pytest.raises(OSError) as info:
        handle.pwrite(b"0123456789abc", 0)
    assert info.value.errno == errno.ENOSPC
    assert fs.read_file("/f") == b"0123456789"
    handle.pwrite(b"XY", 0)  # overwriting needs no new space
    assert fs.read_file("/f") == b"XY23456789"


def test_injected_eio_on_nth_write_and_sync() -> None:
    fs = fresh()
    handle = fs.open("/d/a", create=True)
    fs.fail_write_at(2)
    fs.fail_sync_at(1)
    handle.pwrite(b"1", 0)
    with pytest.raises(OSError, match="injected write"):
        handle.pwrite(b"2", 1)
    with pytest.raises(OSError, match="injected fsync"):
        handle.sync()
    handle.sync()  # only the injected one fails


def test_bit_flip_hits_live_and_durable_image() -> None:
    fs = fresh()
    durable_file(fs, "/d/a", b"\x00\x00")
    fs.flip_bit("/d/a", 1, bit=3)
    assert fs.read_file("/d/a") == b"\x00\x08"
    fs.crash()
    assert fs.read_file("/d/a") == b"\x00\x08"


def test_crash_point_stops_everything_until_crash() -> None:
    fs = fresh()
    handle = fs.open("/d/a", create=True)
    fs.crash_at_event = fs.events + 2
    handle.pwrite(b"1", 0)
    with pytest.raises(SimulatedCrash):
        handle.sync()
    with pytest.raises(SimulatedCrash):  # a crashed process does no cleanup I/O
        fs.remove("/d/a")
    fs.crash()
    with pytest.raises(OSError):  # handles from before the crash are dead
        handle.pwrite(b"2", 0)


def test_same_seed_same_outcome() -> None:
    def run(seed: int) -> bytes:
        fs = fresh(seed)
        durable_file(fs, "/d/a", b"")
        handle = fs.open("/d/a")
        for i in range(10):
            handle.pwrite(bytes([i]) * 300, i * 300)
        fs.crash(torn=True)
        return fs.read_file("/d/a")

    assert run(7) == run(7)
    assert len({run(s) for s in range(10)}) > 1


def test_injected_eio_can_target_a_path() -> None:
    fs = fresh()
    wal = fs.open("/d/x.wal", create=True)
    snap = fs.open("/d/y.snap", create=True)
    fs.fail_sync_at(2, path_contains=".snap")
    wal.sync()
    snap.sync()
    wal.sync()
    with pytest.raises(OSError, match="injected fsync"):
        snap.sync()
