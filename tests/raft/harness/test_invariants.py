"""Planted violations for the invariant checker: each invariant must fire on a fabricated
history that breaks it, and stay quiet on the legal variant of the same history."""

from __future__ import annotations

import pytest

from quorum.raft.harness.invariants import (
    APPLIED_MONOTONIC,
    COMMIT_BOUND,
    ELECTION_SAFETY,
    LEADER_COMPLETENESS,
    LOG_MATCHING,
    STALE_READ,
    STATE_MACHINE_SAFETY,
    InvariantChecker,
    SafetyViolation,
)
from quorum.raft.types import Entry


def ents(*terms: int, start: int = 1, tag: bytes = b"") -> list[Entry]:
    """Entries with the given terms from index ``start``; data names index, term and tag."""
    return [
        Entry(term=t, index=start + i, data=b"%d/%d%s" % (start + i, t, tag))
        for i, t in enumerate(terms)
    ]


def fires(invariant: str) -> pytest.RaisesContext[SafetyViolation]:
    return pytest.raises(SafetyViolation, match=f"^{invariant}:")


def test_two_leaders_in_one_term_fire() -> None:
    c = InvariantChecker()
    c.leader_elected(1, term=3)
    c.leader_elected(1, term=3)  # the same leader reported twice is fine
    c.leader_elected(2, term=4)
    with fires(ELECTION_SAFETY):
        c.leader_elected(3, term=3)


def test_leader_messages_count_as_leadership() -> None:
    c = InvariantChecker()
    c.leader_acted(1, term=2)
    with fires(ELECTION_SAFETY):
        c.leader_acted(2, term=2)


def test_log_matching_fires_on_different_prefix_same_index_term() -> None:
    c = InvariantChecker()
    c.entries_persisted(1, ents(1, 1, 2))
    c.entries_persisted(2, ents(1, 1, 2))  # identical: fine
    c.entries_persisted(3, ents(1))
    with fires(LOG_MATCHING):
        # entry 2 differs in data but entry 3 claims (3, term 2) like node 1's: prefixes differ
        c.entries_persisted(3, [*ents(1, start=2, tag=b"x"), *ents(2, start=3)])


def test_log_matching_allows_truncation_and_overwrite() -> None:
    c = InvariantChecker()
    c.entries_persisted(1, ents(1, 1, 1))
    c.entries_persisted(1, ents(2, start=2))  # a new leader overwrote the uncommitted suffix
    c.entries_persisted(2, ents(1, 2))
    c.entries_persisted(3, ents(1, 1, 1))


def test_log_gap_fires() -> None:
    c = InvariantChecker()
    c.entries_persisted(1, ents(1))
    with fires(LOG_MATCHING):
        c.entries_persisted(1, ents(1, start=3))


def test_commit_beyond_last_index_fires() -> None:
    c = InvariantChecker()
    c.entries_persisted(1, ents(1, 1))
    c.commit_persisted(1, 2)
    with fires(COMMIT_BOUND):
        c.commit_persisted(1, 3)


def test_committed_entry_replaced_fires() -> None:
    c = InvariantChecker()
    c.term_persisted(1, 1)
    c.entries_persisted(1, ents(1, 1))
    c.commit_persisted(1, 2)
    c.entries_persisted(2, [*ents(1), *ents(2, start=2)])
    with fires(STATE_MACHINE_SAFETY):
        c.commit_persisted(2, 2)


def test_leader_without_committed_entry_fires() -> None:
    c = InvariantChecker()
    for node in (1, 2):
        c.term_persisted(node, 1)
        c.entries_persisted(node, ents(1, 1, 1))
    c.commit_persisted(1, 3)  # committed, learned in term 1
    c.entries_persisted(3, ents(1))  # node 3 missed entries 2 and 3
    c.leader_elected(2, term=2)  # has everything: fine
    with fires(LEADER_COMPLETENESS):
        c.leader_elected(3, term=3)


def test_leader_of_an_older_term_may_lack_later_commits() -> None:
    c = InvariantChecker()
    c.term_persisted(1, 5)
    c.entries_persisted(1, ents(1, 5))
    c.commit_persisted(1, 2)  # committed in term 5
    c.entries_persisted(3, ents(1))
    c.leader_elected(3, term=4)  # a late vote in an older term: legal, entry 2 came later


def test_snapshot_covers_committed_prefix_for_leader() -> None:
    c = InvariantChecker()
    c.term_persisted(1, 1)
    c.entries_persisted(1, ents(1, 1, 1))
    c.commit_persisted(1, 3)
    c.snapshot_persisted(2, index=3, term=1)
    c.leader_elected(2, term=2)


def test_snapshot_disagreeing_with_committed_fires() -> None:
    c = InvariantChecker()
    c.term_persisted(1, 1)
    c.entries_persisted(1, ents(1, 1))
    c.commit_persisted(1, 2)
    c.entries_persisted(2, [*ents(1), *ents(2, start=2)])
    with fires(STATE_MACHINE_SAFETY):
        c.snapshot_persisted(3, index=2, term=2)


def test_different_entries_applied_at_one_index_fire() -> None:
    c = InvariantChecker()
    c.entry_applied(1, ents(1)[0])
    c.entry_applied(2, ents(1)[0])
    with fires(STATE_MACHINE_SAFETY):
        c.entry_applied(3, ents(2)[0])


def test_applied_index_going_back_or_skipping_fires() -> None:
    c = InvariantChecker()
    for entry in ents(1, 1):
        c.entry_applied(1, entry)
    with fires(APPLIED_MONOTONIC):
        c.entry_applied(1, ents(1, start=2)[0])  # index 2 again
    c2 = InvariantChecker()
    c2.entry_applied(1, ents(1)[0])
    with fires(APPLIED_MONOTONIC):
        c2.entry_applied(1, ents(1, start=3)[0])  # skipped index 2


def test_restart_below_applied_fires() -> None:
    c = InvariantChecker()
    for entry in ents(1, 1, 1):
        c.entry_applied(1, entry)
    c.restarted(1, applied=3)
    with fires(APPLIED_MONOTONIC):
        c.restarted(1, applied=2)


def test_reapply_after_restart_must_match() -> None:
    c = InvariantChecker()
    for entry in ents(1, 1):
        c.entry_applied(1, entry)
    c.restarted(2, applied=0)
    c.entry_applied(2, ents(1)[0])
    with fires(STATE_MACHINE_SAFETY):
        c.entry_applied(2, ents(1, start=2, tag=b"other")[0])


def test_old_snapshot_fires() -> None:
    c = InvariantChecker()
    for entry in ents(1, 1, 1):
        c.entry_applied(1, entry)
    with fires(APPLIED_MONOTONIC):
        c.snapshot_applied(1, 2)


def test_stale_read_fires() -> None:
    c = InvariantChecker()
    c.read_issued(1, b"a")
    c.write_acked(5)
    c.read_answered(1, b"a", 3)  # issued before the write was acknowledged: may miss it
    c.read_issued(2, b"b")
    c.read_answered(2, b"b", 5)
    c.read_issued(1, b"c")
    with fires(STALE_READ):
        c.read_answered(1, b"c", 4)
    assert c.reads_checked == 3
