"""Linearizable reads through ReadIndex (Raft thesis §6.4; TEST_SCENARIOS F34/F35).

The checker records, for every ReadIndex request, the highest index a leader had acknowledged
to a client when the read was issued; an answer below it is a stale read.
"""

from __future__ import annotations

import pytest

from quorum.raft.harness.cluster import Cluster
from quorum.raft.harness.invariants import STALE_READ, SafetyViolation

ET = 10


def started(seed: int, **kw: object) -> tuple[Cluster, int]:
    c = Cluster(seed=seed, voters=3, **kw)
    leader = c.wait_leader(5 * ET)
    assert leader is not None
    return c, leader


def answers(c: Cluster, context: bytes) -> list[int]:
    return [index for _, ctx, index in c.read_results if ctx == context]


def test_read_at_leader_and_follower_see_acknowledged_writes() -> None:
    c, leader = started(41)
    written = c.one(b"w1", 3)
    at_leader = c.read_index(leader)
    follower = next(i for i in c.ids if i != leader)
    at_follower = c.read_index(follower)  # forwarded to the leader
    c.tick(2)
    assert answers(c, at_leader) and answers(c, at_leader)[0] >= written
    assert answers(c, at_follower) and answers(c, at_follower)[0] >= written
    assert c.checker.reads_checked == 2


def partitioned_old_leader_read(bugs: frozenset[str]) -> tuple[Cluster, bytes, int]:
    """Cut the leader off, let the others elect a new leader and acknowledge a write, then ask
    the old leader (which still believes it leads: check-quorum is off) for a read."""
    c, old = started(42, config={"check_quorum": False}, bugs=bugs)
    c.one(b"before", 3)
    c.net.isolate(old)
    written = c.one(b"after the partition", 2)
    assert c.leader() != old and c.nodes[old].role.name == "LEADER"
    context = c.read_index(old)
    c.tick(3 * ET)
    return c, context, written


def test_partitioned_old_leader_serves_no_stale_read() -> None:
    c, context, _ = partitioned_old_leader_read(frozenset())
    assert answers(c, context) == []  # no quorum confirms its leadership: no answer
    c.net.heal()
    c.tick(2 * ET)  # the old leader steps down; a late answer would still be checked
    assert len(c.leaders()) == 1


def test_planted_read_index_no_quorum_gives_a_stale_read_that_is_caught() -> None:
    with pytest.raises(SafetyViolation) as caught:
        partitioned_old_leader_read(frozenset({"read_index_no_quorum"}))
    assert caught.value.invariant == STALE_READ
