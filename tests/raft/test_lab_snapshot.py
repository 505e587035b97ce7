"""Compaction and InstallSnapshot (MIT 6.5840 Raft lab 3D equivalents). Nodes compact their
log every ``snapshot_every`` applied entries; a follower that falls behind the leader's first
index must be brought back with a snapshot."""

from __future__ import annotations

import pytest

from quorum.raft.harness.cluster import Cluster
from quorum.raft.harness.network import Faults
from quorum.raft.types import MessageType

ET = 10
EVERY = 10


def snapshot_cluster(seed: int, **kw: object) -> tuple[Cluster, int]:
    c = Cluster(seed=seed, voters=3, snapshot_every=EVERY, **kw)
    leader = c.wait_leader(5 * ET)
    assert leader is not None
    c.one(b"start", 3)
    return c, leader


@pytest.mark.parametrize("how", ["disconnect", "crash", "unreliable"])
def test_snapshot_install(how: str) -> None:
    faults = Faults(drop_rate=0.1, max_delay_ticks=2) if how == "unreliable" else Faults()
    c, leader = snapshot_cluster(31, faults=faults, durable_app=(how != "crash"))
    lagger = next(i for i in c.ids if i != leader)
    for round_ in range(3):
        if how == "crash":
            c.crash(lagger)
        else:
            c.net.isolate(lagger)
        for k in range(3 * EVERY):
            c.one(b"r%d-%d" % (round_, k), 2, max_ticks=400)
        live = c.leader()
        assert live is not None
        assert c.nodes[live].storage.first_index() > c.applied_index(lagger) + 1  # compacted
        snaps = c.messages_sent(MessageType.SNAP)
        if how == "crash":
            c.restart(lagger)
        else:
            c.net.heal()
        last = c.one(b"r%d-end" % round_, 3, max_ticks=400)
        assert c.messages_sent(MessageType.SNAP) > snaps, "caught up without a snapshot?"
        assert c.applied_index(lagger) >= last
        assert c.nodes[lagger].storage.snapshot().metadata.index > 1
    digests = {c.nodes[i].app.digest for i in c.ids if c.applied_index(i) == last}
    assert len(digests) == 1


def test_snapshot_bounds_the_log() -> None:
    c, _ = snapshot_cluster(32)
    for k in range(100):
        c.one(b"%d" % k, 3)
    for node in c.ids:
        storage = c.nodes[node].storage
        assert storage.last_index() - storage.first_index() + 1 <= 2 * EVERY


def test_snapshot_all_crash() -> None:
    """Crash every node repeatedly: each restarts from its snapshot plus log (volatile app)."""
    c, _ = snapshot_cluster(33, durable_app=False)
    for round_ in range(5):
        for k in range(EVERY + 3):
            c.one(b"%d-%d" % (round_, k), 3)
        before = [c.applied_index(i) for i in c.ids]
        for node in c.ids:
            c.crash(node)
        for node in c.ids:
            c.restart(node)
        last = c.one(b"after%d" % round_, 3, max_ticks=400)
        assert last > max(before)
        assert all(c.applied_index(i) >= last for i in c.ids)


def test_snapshot_init_then_one_write_then_crash() -> None:
    c, _ = snapshot_cluster(34, durable_app=False)
    for k in range(EVERY + 1):  # past the first snapshot
        c.one(b"%d" % k, 3)
    c.one(b"one more", 3)
    for node in c.ids:
        c.crash(node)
    for node in c.ids:
        c.restart(node)
    last = c.one(b"after", 3, max_ticks=400)
    assert all(c.applied_index(i) >= last for i in c.ids)
    assert all(c.nodes[i].storage.snapshot().metadata.index > 1 for i in c.ids)
