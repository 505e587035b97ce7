"""MemoryStorage: the LogStorage contract plus the write side."""

from __future__ import annotations

import pytest

from quorum.errors import Compacted, SnapshotOutOfDate, Unavailable
from quorum.raft import ConfState, Entry, MemoryStorage, bootstrap_snapshot


def filled(n: int) -> MemoryStorage:
    s = MemoryStorage()
    s.append([Entry(term=1 + i // 3, index=i + 1, data=b"d") for i in range(n)])
    return s


def test_bounds_and_terms() -> None:
    s = filled(5)
    assert (s.first_index(), s.last_index()) == (1, 5)
    assert s.term(0) == 0 and s.term(5) == 2
    with pytest.raises(Unavailable):
        s.term(6)
    with pytest.raises(Unavailable):
        s.entries(4, 7)
    assert [e.index for e in s.entries(2, 4)] == [2, 3]


def test_append_truncates_conflicting_suffix_and_rejects_gaps() -> None:
    s = filled(5)
    s.append([Entry(term=9, index=3)])
    assert s.last_index() == 3 and s.term(3) == 9
    with pytest.raises(Exception, match="missing log entries"):
        s.append([Entry(term=9, index=7)])


def test_compact_and_snapshot() -> None:
    s = filled(6)
    snap = s.create_snapshot(4, ConfState(voters=(1,)), b"img")
    assert snap.metadata.index == 4 and snap.metadata.term == 2
    s.compact(4)
    assert s.first_index() == 5 and s.term(4) == 2
    with pytest.raises(Compacted):
        s.term(3)
    with pytest.raises(Compacted):
        s.entries(4, 6)
    with pytest.raises(SnapshotOutOfDate):
        s.create_snapshot(3, None)
    s.append([Entry(term=2, index=3), Entry(term=2, index=4), Entry(term=3, index=5)])
    assert s.term(5) == 3  # entries below first_index were ignored


def test_apply_snapshot_replaces_everything() -> None:
    s = MemoryStorage()
    s.apply_snapshot(bootstrap_snapshot((1, 2, 3)))
    assert (s.first_index(), s.last_index(), s.term(1)) == (2, 1, 1)
    assert s.initial_state()[1] == ConfState(voters=(1, 2, 3))
    with pytest.raises(SnapshotOutOfDate):
        s.apply_snapshot(bootstrap_snapshot((1,)))
