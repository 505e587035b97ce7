"""Figure 8 of the Raft paper (§5.4.2) and leader churn (MIT TestFigure8*3C equivalents)."""

from __future__ import annotations

import contextlib
import random

import pytest

from quorum.errors import ProposalDropped
from quorum.raft.harness.cluster import Cluster
from quorum.raft.harness.invariants import LEADER_COMPLETENESS, SafetyViolation
from quorum.raft.harness.network import Faults
from quorum.raft.types import StateRole

ET = 10


def leader_among(c: Cluster, ids: list[int]) -> int | None:
    found = [i for i in ids if c.nodes[i].alive and c.nodes[i].role == StateRole.LEADER]
    return found[0] if found else None


def figure8(bugs: frozenset[str] = frozenset()) -> Cluster:
    """The paper's Figure 8 on three nodes, driven step by step with partitions.

    (a) leader A appends X at index i while cut off; (b) B wins the next term and appends its
    own entry at i, cut off before sending it; (c) A wins again with C's vote and replicates X
    to C (one entry per append), so X sits on a majority while A's own no-op does not yet;
    A is cut off at once. (d) B wins with C's vote (its last term is higher) and overwrites X.
    X may never have been reported committed in (c): committing it by counting replicas
    (an older term's entry) is exactly what §5.4.2 forbids.
    """
    c = Cluster(
        seed=1,
        voters=3,
        faults=Faults(min_delay_ticks=1, max_delay_ticks=1),
        config={"max_entries_per_msg": 1},
        bugs=bugs,
    )
    a = c.wait_leader(5 * ET)
    assert a is not None
    c.one(b"base", 3)
    c.net.isolate(a)  # (a)
    c.propose(a, b"X")
    c.tick()
    x_index = c.nodes[a].storage.last_index()
    others = [i for i in c.ids if i != a]
    assert c.run_until(lambda: leader_among(c, others) is not None, 10 * ET) >= 0  # (b)
    b = leader_among(c, others)
    assert b is not None
    peer = next(i for i in others if i != b)
    c.net.partition([a], [b], [peer])  # B's entry at i never leaves B
    c.tick(2)
    assert c.log_terms(b)[-1] == (x_index, c.nodes[b].term)
    c.net.partition([a, peer], [b])  # (c)
    won = c.run_until(
        lambda: c.nodes[a].role == StateRole.LEADER and c.nodes[a].commit >= x_index, 20 * ET
    )
    assert won >= 0
    c.net.partition([a], [b, peer])  # (d)
    c.run_until(lambda: leader_among(c, [b, peer]) is not None, 20 * ET)
    c.net.heal()
    c.one(b"after", 3)
    return c


def test_figure8_old_term_entry_is_not_committed_by_counting() -> None:
    c = figure8()
    # A reported X committed only once its own no-op was on C too, so B could not win in (d):
    # X survives and is applied everywhere
    assert all(b"X" in [d[8:] for d in c.applied_data(i)] for i in c.ids)


def test_figure8_planted_commit_old_term_is_caught() -> None:
    with pytest.raises(SafetyViolation) as caught:
        figure8(frozenset({"commit_old_term"}))
    assert caught.value.invariant == LEADER_COMPLETENESS


def churn(c: Cluster, rounds: int, rng: random.Random) -> None:
    """MIT TestFigure8: propose at every self-declared leader, let a little time pass,
    sometimes crash a leader, keep at least three nodes up."""
    for _ in range(rounds):
        for node in c.leaders():
            with contextlib.suppress(ProposalDropped):
                c.propose(node, b"%d" % rng.randrange(10**6))
        c.tick(rng.randrange(ET // 2) if rng.random() < 0.9 else rng.randrange(2 * ET))
        leader = c.leader()
        if leader is not None and rng.random() < 0.5:
            c.crash(leader)
        dead = [i for i in c.ids if not c.nodes[i].alive]
        if len(c.ids) - len(dead) < 3:
            c.restart(rng.choice(dead))
    c.net.heal()
    c.net.faults = Faults()
    for node in c.ids:
        if not c.nodes[node].alive:
            c.restart(node)


def test_figure8_churn_reliable() -> None:
    rng = random.Random(81)
    c = Cluster(seed=81, voters=5, durable_app=False, disk_delay_rate=0.2, disk_delay_ticks=2)
    c.one(b"start", 1)
    churn(c, 200, rng)
    last = c.one(b"end", 5, max_ticks=500)
    assert all(c.applied_index(i) >= last for i in c.ids)
    assert len(c.checker.leader_of_term) > 20  # there really was churn


def test_figure8_churn_unreliable() -> None:
    rng = random.Random(82)
    faults = Faults(drop_rate=0.1, dup_rate=0.05, min_delay_ticks=0, max_delay_ticks=ET)
    c = Cluster(seed=82, voters=5, faults=faults, durable_app=False)
    c.one(b"start", 1, max_ticks=500)
    churn(c, 200, rng)
    last = c.one(b"end", 5, max_ticks=500)
    assert all(c.applied_index(i) >= last for i in c.ids)
