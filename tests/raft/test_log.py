"""The Raft log: unstable tail, conflicts, fast backtracking, commit rules, size limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quorum.errors import Compacted
from quorum.raft.log import LogInvariantError, RaftLog, Unstable, limit_size
from quorum.raft.memory_storage import MemoryStorage
from quorum.raft.types import ENTRY_OVERHEAD_BYTES, Entry


def ents(*pairs: tuple[int, int]) -> list[Entry]:
    """(term, index) pairs."""
    return [Entry(term=t, index=i) for t, i in pairs]


def log_with(*terms: int, stable: int | None = None) -> RaftLog:
    """A log whose entry i (1-based) has terms[i-1]; the first ``stable`` are in storage."""
    stable = len(terms) if stable is None else stable
    storage = MemoryStorage()
    storage.append([Entry(term=t, index=i + 1) for i, t in enumerate(terms[:stable])])
    log = RaftLog(storage, 1 << 20)
    log.append([Entry(term=t, index=i + 1) for i, t in enumerate(terms)][stable:])
    return log


def test_unstable_truncate_and_append_cases() -> None:
    u = Unstable(5)
    u.truncate_and_append(ents((1, 5), (1, 6)))
    u.truncate_and_append(ents((1, 7)))  # contiguous
    assert [e.index for e in u.entries] == [5, 6, 7]
    u.accept_in_progress()
    u.truncate_and_append(ents((2, 6)))  # replaces the tail from 6
    assert [(e.term, e.index) for e in u.entries] == [(1, 5), (2, 6)]
    assert u.offset_in_progress == 6 and [e.index for e in u.next_entries()] == [6]
    u.truncate_and_append(ents((3, 4)))  # before the offset: replaces everything
    assert u.offset == 4 and [e.index for e in u.entries] == [4]


def test_unstable_stable_to_ignores_changed_terms() -> None:
    u = Unstable(1)
    u.truncate_and_append(ents((1, 1), (1, 2)))
    u.stable_to(2, 9)  # wrong term: the entry was replaced since
    assert u.offset == 1
    u.stable_to(1, 1)
    assert u.offset == 2 and [e.index for e in u.entries] == [2]


def test_find_conflict_and_maybe_append() -> None:
    log = log_with(1, 1, 2, 2)
    assert log.find_conflict(ents((1, 1), (1, 2))) == 0
    assert log.find_conflict(ents((2, 3), (2, 4), (2, 5))) == 5
    assert log.find_conflict(ents((3, 3))) == 3
    assert log.maybe_append(2, 9, 0, ents((3, 3))) is None  # prev term mismatch
    assert log.maybe_append(2, 1, 3, ents((3, 3))) == 3
    assert log.last_index() == 3 and log.term(3) == 3 and log.committed == 3
    with pytest.raises(LogInvariantError):
        log.maybe_append(1, 1, 3, ents((4, 2)))  # would overwrite committed entry 2


def test_find_conflict_by_term() -> None:
    log = log_with(1, 1, 2, 2, 2, 4, 4)
    assert log.find_conflict_by_term(7, 3) == (5, 2)  # skip every entry of term 4
    assert log.find_conflict_by_term(7, 4) == (7, 4)
    assert log.find_conflict_by_term(5, 1) == (2, 1)
    assert log.find_conflict_by_term(7, 0) == (0, 0)


def test_commit_rule_needs_the_given_term() -> None:
    log = log_with(1, 2)
    assert not log.maybe_commit(2, 1)  # entry 2 is of term 2, not 1
    assert log.maybe_commit(2, 2) and log.committed == 2
    with pytest.raises(LogInvariantError):
        log.commit_to(3)


def test_is_up_to_date() -> None:
    log = log_with(1, 2, 2)
    assert log.is_up_to_date(3, 2) and log.is_up_to_date(1, 3)
    assert not log.is_up_to_date(2, 2) and not log.is_up_to_date(9, 1)


def test_committed_entries_only_from_persisted_part() -> None:
    log = log_with(1, 1, 1, 1, stable=2)
    log.commit_to(4)
    assert [e.index for e in log.next_committed_entries()] == [1, 2]
    assert isinstance(log.storage, MemoryStorage)
    log.storage.append(log.unstable.entries)  # the runtime persists, then acknowledges
    log.stable_to(4, 1)
    assert [e.index for e in log.next_committed_entries()] == [1, 2, 3, 4]


def test_slice_size_limits_across_storage_and_unstable() -> None:
    storage = MemoryStorage()
    storage.append([Entry(term=1, index=i, data=b"x" * 10) for i in (1, 2, 3)])
    log = RaftLog(storage, 1 << 20)
    log.append([Entry(term=1, index=i, data=b"x" * 10) for i in (4, 5)])
    size = 10 + ENTRY_OVERHEAD_BYTES
    assert len(log.slice(1, 6)) == 5
    assert len(log.slice(1, 6, size * 4)) == 4  # crosses into the unstable part
    assert len(log.slice(1, 6, 1)) == 1  # always at least one entry
    assert len(limit_size(log.slice(4, 6), size)) == 1


def test_compacted_ranges_raise() -> None:
    storage = MemoryStorage()
    storage.append(ents((1, 1), (1, 2), (1, 3)))
    storage.compact(2)
    log = RaftLog(storage, 1 << 20)
    assert log.first_index() == 3 and log.term(2) == 1 and log.term(1) is None
    with pytest.raises(Compacted):
        log.slice(2, 4)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 12), st.integers(1, 3), st.integers(1, 5)),
        st.tuples(st.just("accept"), st.just(0), st.just(0), st.just(0)),
        st.tuples(st.just("stable"), st.integers(0, 14), st.integers(0, 5), st.just(0)),
    ),
    max_size=30,
)


@given(ops)
def test_unstable_matches_a_list_model(steps: list[tuple[str, int, int, int]]) -> None:
    """Unstable against a plain list: ``log`` is every entry (index i at log[i-1]); the first
    ``stable`` are persisted; the first ``handed`` were handed out in a Ready."""
    u = Unstable(1)
    log: list[int] = []
    stable = handed = 0
    for op, a, b, c in steps:
        if op == "append":
            first = min(a, len(log)) + 1  # no gaps
            u.truncate_and_append([Entry(term=c, index=first + k) for k in range(b)])
            log = log[: first - 1] + [c] * b
            stable, handed = min(stable, first - 1), min(handed, first - 1)
        elif op == "accept":
            u.accept_in_progress()
            handed = len(log)
        else:
            term = log[a - 1] if 1 <= a <= len(log) and b == 0 else b
            u.stable_to(a, term)
            if stable < a <= len(log) and log[a - 1] == term:
                stable = a
                handed = max(handed, stable)
        assert u.offset == stable + 1
        assert [e.term for e in u.entries] == log[stable:]
        assert [e.index for e in u.next_entries()] == list(range(handed + 1, len(log) + 1))
