"""Leader election on the harness (MIT 6.5840 Raft lab 3A equivalents). Bounds are in ticks;
election_ticks = 10, so a randomized election timeout lies in [10, 20)."""

from __future__ import annotations

import random

from quorum.raft.harness.cluster import Cluster
from quorum.raft.harness.network import Faults
from quorum.raft.types import StateRole

ET = 10
ELECTION_BOUND = 5 * ET  # a pre-vote round plus a vote round, with one split vote to spare


def leaders_among(c: Cluster, ids: list[int]) -> list[int]:
    return [i for i in ids if c.nodes[i].alive and c.nodes[i].role == StateRole.LEADER]


def wait_one_leader(c: Cluster, ids: list[int]) -> int:
    """Tick until exactly one of ``ids`` leads; return it (fails past the bound)."""
    used = c.run_until(lambda: len(leaders_among(c, ids)) == 1, ELECTION_BOUND)
    assert used >= 0, f"no single leader among {ids} within {ELECTION_BOUND} ticks"
    return leaders_among(c, ids)[0]


def test_initial_election() -> None:
    c = Cluster(seed=1, voters=3)
    leader = wait_one_leader(c, list(c.ids))
    terms = {c.nodes[i].term for i in c.ids}
    assert len(terms) == 1, f"nodes disagree on the term: {terms}"
    term = terms.pop()
    assert term >= 1
    c.tick(2 * ET)  # no faults: the term and the leader stay put
    assert {c.nodes[i].term for i in c.ids} == {term}
    assert leaders_among(c, list(c.ids)) == [leader]


def test_reelection() -> None:
    c = Cluster(seed=2, voters=3)
    first = wait_one_leader(c, list(c.ids))
    others = [i for i in c.ids if i != first]
    c.net.isolate(first)  # the leader disappears: the other two elect a new one
    second = wait_one_leader(c, others)
    assert c.nodes[second].term > c.nodes[first].term

    c.net.heal()  # the old leader rejoins: it must step down without disturbing the new one
    c.tick(2 * ET)
    assert leaders_among(c, list(c.ids)) == [second]

    third = next(i for i in c.ids if i != second)
    c.net.isolate(second)  # two of three gone: nobody may claim leadership
    c.net.isolate(third)
    c.tick(2 * ET)
    assert leaders_among(c, list(c.ids)) == []

    c.net.heal()
    c.net.isolate(second)  # a quorum returns: a leader comes back
    wait_one_leader(c, [i for i in c.ids if i != second])


def test_many_elections() -> None:
    c = Cluster(seed=3, voters=7)
    wait_one_leader(c, list(c.ids))
    rng = random.Random(3)
    for _ in range(10):
        out = rng.sample(list(c.ids), 3)
        for node in out:
            c.net.isolate(node)
        rest = [i for i in c.ids if i not in out]
        wait_one_leader(c, rest)
        c.net.heal()
    c.tick(2 * ET)
    assert len(leaders_among(c, list(c.ids))) == 1


def test_no_leader_without_quorum_from_the_start() -> None:
    c = Cluster(seed=4, voters=3)
    c.net.partition([1], [2], [3])
    c.tick(4 * ET)
    assert leaders_among(c, list(c.ids)) == []
    c.net.heal()
    wait_one_leader(c, list(c.ids))


def test_isolated_node_does_not_raise_the_term_with_pre_vote() -> None:
    c = Cluster(seed=5, voters=3)
    leader = wait_one_leader(c, list(c.ids))
    term = c.nodes[leader].term
    follower = next(i for i in c.ids if i != leader)
    c.net.isolate(follower)
    c.tick(10 * ET)
    c.net.heal()
    c.tick(2 * ET)
    assert leaders_among(c, list(c.ids)) == [leader]
    assert c.nodes[leader].term == term


def test_isolated_leader_steps_down_with_check_quorum() -> None:
    c = Cluster(seed=6, voters=3)
    leader = wait_one_leader(c, list(c.ids))
    c.net.isolate(leader)
    # check-quorum looks back over one election timeout, once per election timeout
    used = c.run_until(lambda: c.nodes[leader].role != StateRole.LEADER, 2 * ET)
    assert used >= 0, "a leader cut off from every follower kept its role"


def test_split_votes_under_heavy_loss_still_elect() -> None:
    c = Cluster(seed=7, voters=5, faults=Faults(drop_rate=0.3, max_delay_ticks=2))
    used = c.run_until(lambda: c.leader() is not None, 30 * ET)
    assert used >= 0, "no leader with 30 % loss"
    c.net.faults = Faults()  # then a reliable network keeps exactly one
    c.tick(3 * ET)
    assert len(c.leaders()) == 1
