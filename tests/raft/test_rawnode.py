"""RawNode contract: Ready numbering, persistence-before-commit, restart re-delivery."""

from __future__ import annotations

import random

import pytest

from quorum.errors import NoLeader, UsageError
from quorum.raft import Config, MemoryStorage, RawNode, StateRole, bootstrap_snapshot

from .net import Net


def single() -> tuple[RawNode, MemoryStorage]:
    storage = MemoryStorage()
    storage.apply_snapshot(bootstrap_snapshot((1,)))
    return RawNode(Config(id=1), storage, random.Random(1)), storage


def persist(node: RawNode, storage: MemoryStorage) -> None:
    rd = node.ready()
    storage.append(rd.entries)
    if rd.hard_state is not None:
        storage.set_hard_state(rd.hard_state)
    node.advance(rd)


def test_three_nodes_elect_and_commit() -> None:
    net = Net()
    net.elect(1)
    assert net.node(1).status().role == StateRole.LEADER
    net.node(1).propose(b"x")
    net.stabilize()
    for i in (1, 2, 3):
        assert net.data_applied(i) == [b"x"]


def test_single_node_commits_on_the_ready_after_persisting() -> None:
    node, storage = single()
    node.campaign()
    rd1 = node.ready()
    assert rd1.soft_state is not None and rd1.soft_state.role == StateRole.LEADER
    assert [e.index for e in rd1.entries] == [2]
    assert rd1.committed_entries == []
    assert rd1.must_sync
    storage.append(rd1.entries)
    assert rd1.hard_state is not None
    storage.set_hard_state(rd1.hard_state)
    node.advance(rd1)
    rd2 = node.ready()
    assert [e.index for e in rd2.committed_entries] == [2]
    assert rd2.hard_state is not None and rd2.hard_state.commit == 2
    assert not rd2.must_sync  # a commit index change alone needs no fsync
    node.advance(rd2)
    assert not node.has_ready()


def test_entries_not_persisted_never_commit_on_the_leader() -> None:
    node, storage = single()
    node.campaign()
    persist(node, storage)
    persist(node, storage)
    node.propose(b"a")
    rd = node.ready()
    assert [e.data for e in rd.entries] == [b"a"]
    # The runtime has not advanced: the leader must not count its own unsynced entry.
    assert node.status().commit == 2
    storage.append(rd.entries)
    assert node.status().commit == 2  # written but not acknowledged through advance yet
    node.advance(rd)
    assert node.status().commit == 3


def test_advance_requires_the_last_ready() -> None:
    node, _ = single()
    node.campaign()
    rd1 = node.ready()
    with pytest.raises(UsageError):
        node.advance(rd1.__class__(number=rd1.number + 5))
    node.propose(b"z")
    rd2 = node.ready()
    with pytest.raises(UsageError):
        node.advance(rd1)
    node.advance(rd2)
    with pytest.raises(UsageError):
        node.advance(rd2)


def test_restart_redelivers_committed_entries_above_applied() -> None:
    net = Net()
    net.elect(1)
    for data in (b"a", b"b", b"c"):
        net.node(1).propose(data)
    net.stabilize()
    member = net.members[2]
    member.applied = member.applied[:2]  # pretend only the first two entries were applied
    net.restart(2)
    net.stabilize()
    assert net.data_applied(2) == [b"a", b"b", b"c"]


def test_follower_without_leader_raises_no_leader() -> None:
    net = Net()
    with pytest.raises(NoLeader):
        net.node(2).propose(b"x")
    assert net.node(2).status().counters["proposals_dropped"] == 1
