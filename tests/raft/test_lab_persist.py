"""Crash and restart (MIT 6.5840 Raft lab 3C persistence equivalents).

The application here is volatile (``durable_app=False``): a restarted node rebuilds it from
its persisted snapshot and re-applies the committed log above it, so these tests check that
everything committed survives in the persisted Raft log, and the checker verifies that every
re-applied entry equals what was applied at that index before.
"""

from __future__ import annotations

from quorum.raft.harness.cluster import Cluster

ET = 10


def volatile_cluster(voters: int, seed: int, **kw: object) -> Cluster:
    c = Cluster(seed=seed, voters=voters, durable_app=False, **kw)
    assert c.wait_leader(5 * ET) is not None
    return c


def leader_of(c: Cluster) -> int:
    leader = c.wait_leader(5 * ET)
    assert leader is not None
    return leader


def test_persist1() -> None:
    c = volatile_cluster(3, seed=11)
    first = c.one(b"11", 3)
    for node in c.ids:  # crash and restart all: the committed entry is re-applied everywhere
        c.crash(node)
    for node in c.ids:
        c.restart(node)
    c.one(b"12", 3)
    assert c.count_applied(first) == 3
    leader1 = leader_of(c)
    c.restart(leader1)
    c.one(b"13", 3)
    leader2 = leader_of(c)
    c.crash(leader2)
    c.one(b"14", 2)
    c.restart(leader2)
    c.one(b"14b", 3)  # wait for leader2 to rejoin before the next crash
    i3 = c.ids[(c.ids.index(leader_of(c)) + 1) % 3]
    c.crash(i3)
    c.one(b"15", 2)
    c.restart(i3)
    last = c.one(b"16", 3)
    assert all(c.applied_index(i) >= last for i in c.ids)
    assert all(c.nodes[i].restarts >= 1 for i in c.ids)


def test_persist2() -> None:
    c = volatile_cluster(5, seed=12)
    index = 0
    for iteration in range(5):
        index = c.one(b"%d" % (10 + iteration), 5)
        leader1 = leader_of(c)
        i = c.ids.index(leader1)
        f1, f2 = c.ids[(i + 1) % 5], c.ids[(i + 2) % 5]
        c.crash(f1)
        c.crash(f2)
        c.one(b"%d" % (20 + iteration), 3)
        f3, f4 = c.ids[(i + 3) % 5], c.ids[(i + 4) % 5]
        c.crash(leader1)
        c.crash(f3)
        c.crash(f4)
        c.restart(f1)
        c.restart(f2)
        c.tick(2 * ET)
        c.restart(f3)
        c.one(b"%d" % (30 + iteration), 3)
        c.restart(leader1)
        c.restart(f4)
    final = c.one(b"1000", 5)
    assert final > index
    assert all(c.applied_index(i) >= final for i in c.ids)


def test_persist3_partitioned_leader_and_follower_crash() -> None:
    c = volatile_cluster(3, seed=13)
    c.one(b"101", 3)
    leader = leader_of(c)
    i = c.ids.index(leader)
    other, lagger = c.ids[(i + 1) % 3], c.ids[(i + 2) % 3]
    c.net.isolate(lagger)
    c.one(b"102", 2)
    c.crash(leader)
    c.crash(other)
    c.net.heal()
    c.restart(leader)
    c.one(b"103", 2)  # the restarted leader still has 102 and brings the lagger up
    c.restart(other)
    last = c.one(b"104", 3)
    assert all(c.applied_index(n) >= last for n in c.ids)


def test_crash_at_every_persistence_point() -> None:
    """A node crashing inside its Ready loop (before persisting, after persisting but before
    sending, after sending but before applying) loses nothing committed."""
    c = volatile_cluster(3, seed=14)
    for round_ in range(9):
        point = ("before_persist", "after_persist", "after_send")[round_ % 3]
        victim = c.ids[round_ % 3]
        c.arm_crash(victim, point)
        c.one(b"w%d" % round_, 2)
        if not c.nodes[victim].alive:
            c.restart(victim)
    last = c.one(b"end", 3)
    assert all(c.applied_index(n) >= last for n in c.ids)
    assert sum(c.nodes[n].restarts for n in c.ids) == 9  # every armed crash did happen
