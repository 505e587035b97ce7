"""DurableStorage as the core sees it: the LogStorage protocol's rules."""

from __future__ import annotations

import random

import pytest

from quorum.errors import Compacted, Unavailable
from quorum.raft.types import ENTRY_OVERHEAD_BYTES, HardState, Snapshot, SnapshotMetadata
from quorum.storage import DurableStorage, SimFileSystem, StorageOptions

from .model import VOTERS, entries


def storage_1_to_50() -> DurableStorage:
    storage = DurableStorage.open(SimFileSystem(random.Random(2)), "/d", StorageOptions())
    storage.save(HardState(3, 1, 40), entries(3, 1, 50, size=100), must_sync=True)
    storage.create_snapshot(20, VOTERS, [b"s"])
    storage.compact(20)
    return storage


def test_ranges_and_errors() -> None:
    storage = storage_1_to_50()
    assert (storage.first_index(), storage.last_index()) == (21, 50)
    assert storage.term(20) == 3  # the snapshot's term, kept for the log-matching check
    assert storage.entries(21, 51) == entries(3, 21, 30, size=100)
    assert storage.entries(30, 30) == []
    with pytest.raises(Compacted):
        storage.term(19)
    with pytest.raises(Compacted):
        storage.entries(20, 22)
    with pytest.raises(Unavailable):
        storage.term(51)
    with pytest.raises(Unavailable):
        storage.entries(49, 52)


def test_max_bytes_limits_but_returns_at_least_one() -> None:
    storage = storage_1_to_50()
    size = 100 + ENTRY_OVERHEAD_BYTES
    assert len(storage.entries(21, 51, max_bytes=3 * size)) == 3
    assert len(storage.entries(21, 51, max_bytes=3 * size - 1)) == 2
    assert len(storage.entries(21, 51, max_bytes=0)) == 1


def test_initial_state_reports_snapshot_configuration_and_raised_commit() -> None:
    fs = SimFileSystem(random.Random(2))
    storage = DurableStorage.open(fs, "/d", StorageOptions())
    assert storage.initial_state() == (HardState(), storage.conf_state())
    assert storage.snapshot().is_empty()
    storage.save(HardState(3, 1, 40), entries(3, 1, 50), must_sync=True)
    storage.apply_snapshot(Snapshot(SnapshotMetadata(100, 4, VOTERS), b"s"))
    # the hard state saved with the install is lost in a crash: the snapshot still implies it
    fs.crash(torn=False)
    recovered = DurableStorage.open(fs, "/d", StorageOptions())
    assert recovered.initial_state() == (HardState(3, 1, 100), VOTERS)
