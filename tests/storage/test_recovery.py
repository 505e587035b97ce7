"""Recovery rules: torn tails are cut (with a warning), everything else is refused."""

from __future__ import annotations

import logging
import random

import pytest

from quorum.errors import CorruptionError, UsageError
from quorum.raft.types import HardState
from quorum.storage import DurableStorage, SimFileSystem, StorageOptions
from quorum.storage.record import HEADER_BYTES
from quorum.storage.segment import SegmentName, list_segments, read_segment

from .model import VOTERS, entries

OPTIONS = StorageOptions(segment_bytes=8192)


def filled(seed: int = 0, batches: int = 30) -> tuple[SimFileSystem, list[str]]:
    """A closed storage with several segments of synced batches (5 entries each)."""
    fs = SimFileSystem(random.Random(seed))
    storage = DurableStorage.open(fs, "/d", OPTIONS)
    for b in range(batches):
        storage.save(HardState(1, 1, 5 * b), entries(1, 5 * b + 1, 5, size=100), must_sync=True)
    storage.close()
    paths = [f"/d/wal/{n.filename}" for n in list_segments(fs, "/d/wal")]
    assert len(paths) >= 3
    return fs, paths


def test_clean_reopen_restores_log_and_hard_state() -> None:
    fs, _ = filled()
    storage = DurableStorage.open(fs, "/d", OPTIONS)
    assert storage.initial_state()[0] == HardState(1, 1, 145)
    assert (storage.first_index(), storage.last_index()) == (1, 150)
    assert storage.entries(1, 151) == entries(1, 1, 150, size=100)


def test_torn_tail_is_cut_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    fs, paths = filled()
    storage = DurableStorage.open(fs, "/d", OPTIONS)
    storage.save(None, entries(1, 151, 5, size=100), must_sync=True)
    storage.close()
    last = paths[-1]
    size = fs.size(last)
    fs.truncate(last, size - 100)  # the last record lost its end: a torn write
    with caplog.at_level(logging.WARNING, logger="quorum.storage"):
        recovered = DurableStorage.open(fs, "/d", OPTIONS)
    assert recovered.last_index() == 150
    assert any("torn record" in r.message and last in r.message for r in caplog.records)
    # the file was cut back, so new appends continue from a clean boundary
    recovered.save(None, entries(1, 151, 1), must_sync=True)
    recovered.close()
    assert DurableStorage.open(fs, "/d", OPTIONS).last_index() == 151


def test_zeroed_sector_at_the_tail_is_a_torn_write() -> None:
    fs, paths = filled()
    size = fs.size(paths[-1])
    handle = fs.open(paths[-1])
    handle.pwrite(bytes(64), size - 64)  # the end of the last record reads back as zeros
    handle.close()
    assert DurableStorage.open(fs, "/d", OPTIONS).last_index() == 145


def test_bit_flip_mid_log_is_refused_with_file_and_offset() -> None:
    fs, paths = filled()
    fs.flip_bit(paths[1], HEADER_BYTES + 200)  # inside a record of a middle segment
    with pytest.raises(CorruptionError) as info:
        DurableStorage.open(fs, "/d", OPTIONS)
    assert info.value.path == paths[1]
    assert 0 < info.value.offset <= HEADER_BYTES + 200


def test_bit_flip_in_last_segment_before_valid_records_is_refused() -> None:
    fs, paths = filled()
    fs.flip_bit(paths[-1], 100)  # an early record of the last segment; more follow
    with pytest.raises(CorruptionError, match="valid record follows") as info:
        DurableStorage.open(fs, "/d", OPTIONS)
    assert info.value.path == paths[-1]


def test_missing_segment_is_refused() -> None:
    fs, paths = filled()
    fs.remove(paths[1])
    with pytest.raises(CorruptionError, match="missing segment"):
        DurableStorage.open(fs, "/d", OPTIONS)


def test_missing_first_segment_without_snapshot_is_refused() -> None:
    fs, paths = filled()
    fs.remove(paths[0])
    with pytest.raises(CorruptionError, match="entries missing") as info:
        DurableStorage.open(fs, "/d", OPTIONS)
    assert (info.value.path, info.value.offset) == (paths[1], 0)


def test_damaged_segment_header_is_refused() -> None:
    fs, paths = filled()
    fs.flip_bit(paths[-1], 3)
    with pytest.raises(CorruptionError, match="segment header") as info:
        DurableStorage.open(fs, "/d", OPTIONS)
    assert (info.value.path, info.value.offset) == (paths[-1], 0)


def test_hard_state_commit_beyond_log_is_refused() -> None:
    """Planted inconsistency: a hard state whose commit points past the log (lost entries)."""
    fs, _ = filled()
    storage = DurableStorage.open(fs, "/d", OPTIONS)
    storage.wal.save(HardState(1, 1, 999), [], must_sync=True)  # bypasses DurableStorage checks
    storage.close()
    with pytest.raises(CorruptionError, match="commit 999 is beyond") as info:
        DurableStorage.open(fs, "/d", OPTIONS)
    assert info.value.path.endswith(".wal") and info.value.offset > 0


def test_term_regression_is_refused() -> None:
    """Planted inconsistency: entries of a term newer than the persisted term (PAR)."""
    fs, _ = filled()
    storage = DurableStorage.open(fs, "/d", OPTIONS)
    storage.wal.save(None, entries(7, 151, 1), must_sync=True)
    storage.close()
    with pytest.raises(CorruptionError, match="hard state term is 1"):
        DurableStorage.open(fs, "/d", OPTIONS)


def test_overwriting_committed_entries_is_rejected() -> None:
    fs, _ = filled()
    storage = DurableStorage.open(fs, "/d", OPTIONS)
    with pytest.raises(UsageError, match="committed"):
        storage.save(HardState(2, 0, 145), entries(2, 140, 3), must_sync=True)
    storage.save(HardState(2, 0, 145), entries(2, 146, 3), must_sync=True)  # above commit: ok
    assert storage.last_index() == 148 and storage.term(148) == 2


def test_conflicting_tail_overwrite_survives_reopen() -> None:
    fs, _ = filled()
    storage = DurableStorage.open(fs, "/d", OPTIONS)
    storage.save(HardState(2, 2, 145), entries(2, 148, 2), must_sync=True)
    storage.close()
    recovered = DurableStorage.open(fs, "/d", OPTIONS)
    assert recovered.last_index() == 149
    assert [recovered.term(i) for i in (146, 147, 148, 149)] == [1, 1, 2, 2]


def test_hard_state_survives_release_of_the_segment_that_held_it() -> None:
    fs, _ = filled()
    storage = DurableStorage.open(fs, "/d", StorageOptions(segment_bytes=8192, snapshots_kept=1))
    storage.create_snapshot(140, VOTERS, [b"x"])
    storage.compact(140)
    for b in range(30, 45):  # no hard state in these saves: it must be carried over
        storage.save(None, entries(1, 5 * b + 1, 5, size=100), must_sync=True)
    storage.create_snapshot(145, VOTERS, [b"y"])
    storage.compact(145)
    assert storage.wal.segments[0].seq > 2
    storage.close()
    recovered = DurableStorage.open(fs, "/d", OPTIONS)
    assert recovered.initial_state()[0] == HardState(1, 1, 145)
    assert (recovered.first_index(), recovered.last_index()) == (146, 225)


def test_index_gap_inside_the_log_is_refused() -> None:
    """Planted: a batch that skips an index (as if a record had vanished)."""
    fs, _ = filled()
    storage = DurableStorage.open(fs, "/d", OPTIONS)
    storage.wal.save(None, entries(1, 152, 1), must_sync=True)  # 151 is missing
    storage.wal.save(None, entries(1, 153, 1), must_sync=True)
    storage.close()
    with pytest.raises(CorruptionError, match="index gap") as info:
        DurableStorage.open(fs, "/d", OPTIONS)
    assert info.value.offset > 0


def test_segment_not_continuing_the_log_is_refused() -> None:
    """Planted: a segment named as if the log had reached further than it did."""
    fs, _ = filled()
    storage = DurableStorage.open(fs, "/d", OPTIONS)
    storage.wal._last_index += 7  # the next rotation names the segment wrongly
    storage.wal._rotate()
    storage.close()
    with pytest.raises(CorruptionError, match="segment starts at index 158"):
        DurableStorage.open(fs, "/d", OPTIONS)


def test_segment_renamed_to_another_index_is_refused() -> None:
    fs, paths = filled()
    name = SegmentName.parse(paths[-1].rsplit("/", 1)[1])
    assert name is not None
    fs.rename(paths[-1], f"/d/wal/{SegmentName(name.seq, name.first_index + 1).filename}")
    with pytest.raises(CorruptionError, match="does not match its file name"):
        DurableStorage.open(fs, "/d", OPTIONS)


def test_bit_flip_in_the_last_record_is_refused_not_cut() -> None:
    """The last record may hold an fsynced vote: a flipped bit there is media corruption, and
    cutting it off as a torn write would let the node vote twice in a term (PAR)."""
    fs, paths = filled()
    storage = DurableStorage.open(fs, "/d", OPTIONS)
    storage.save(HardState(2, 3, 145), [], must_sync=True)  # voted for 3 in term 2
    storage.close()
    last = paths[-1]
    fs.flip_bit(last, fs.size(last) - 12, bit=5)
    with pytest.raises(CorruptionError, match="one flipped bit") as info:
        DurableStorage.open(fs, "/d", OPTIONS)
    assert info.value.path == last


def test_bit_flip_in_the_last_records_header_is_refused() -> None:
    fs, paths = filled()
    last = paths[-1]
    scan = read_segment(fs, "/d/wal", SegmentName.parse(last.rsplit("/", 1)[1]))  # type: ignore[arg-type]
    for byte in (0, 5, 8):  # stored checksum, length, type
        fs.flip_bit(last, scan.records[-1].offset + byte, bit=1)
        with pytest.raises(CorruptionError, match="one flipped bit"):
            DurableStorage.open(fs, "/d", OPTIONS)
        fs.flip_bit(last, scan.records[-1].offset + byte, bit=1)
    assert DurableStorage.open(fs, "/d", OPTIONS).last_index() == 150


def test_missing_wal_with_snapshots_present_is_refused() -> None:
    fs, _ = filled()
    storage = DurableStorage.open(fs, "/d", OPTIONS)
    storage.create_snapshot(100, VOTERS, [b"s"])
    storage.close()
    for name in fs.listdir("/d/wal"):
        fs.remove(f"/d/wal/{name}")
    with pytest.raises(CorruptionError, match="WAL is missing"):
        DurableStorage.open(fs, "/d", OPTIONS)
