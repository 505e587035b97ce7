"""RawNode contract: Ready numbering, persistence-before-commit, restart re-delivery."""

from __future__ import annotations

import random

import pytest

from quorum.errors import ConfChangePending, InvalidConfChange, NoLeader, UsageError
from quorum.raft import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    Config,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    StateRole,
    bootstrap_snapshot,
)
from quorum.raft.describe import describe_ready, describe_status

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


def test_two_readies_then_advance_of_the_last_acknowledges_both() -> None:
    node, storage = single()
    node.campaign()
    persist(node, storage)
    persist(node, storage)
    node.propose(b"a")
    rd1 = node.ready()
    node.propose(b"b")
    rd2 = node.ready()
    assert [e.data for e in rd1.entries] == [b"a"] and [e.data for e in rd2.entries] == [b"b"]
    storage.append(rd1.entries)
    storage.append(rd2.entries)
    node.advance(rd2)
    rd3 = node.ready()
    assert [e.data for e in rd3.committed_entries] == [b"a", b"b"]


def test_restarted_node_keeps_its_vote() -> None:
    net = Net(pre_vote=False)
    net.node(2).step(_vote(2, candidate=1, term=5))
    net.process(2)
    net.restart(2)
    assert net.node(2).status().vote == 1 and net.node(2).status().term == 5
    net.node(2).step(_vote(2, candidate=3, term=5))
    rd = net.node(2).ready()
    assert [m.reject for m in rd.messages] == [True]  # one vote per term survives restarts


def _vote(to: int, candidate: int, term: int) -> Message:
    return Message(type=MessageType.VOTE, to=to, from_=candidate, term=term, index=1,
                   log_term=1)


def test_describe_and_status_are_deterministic_texts() -> None:
    net = Net()
    net.elect(1)
    net.node(1).propose(b"hi")
    rd = net.node(1).ready()
    text = describe_ready(rd)
    assert 'Entries: [2/3 "hi"]' in text
    assert 'early 1->2 APP term=2 log=2/2 commit=2 entries=[2/3 "hi"]' in text
    status = describe_status(net.node(1).status())
    assert status.splitlines()[0].startswith("id=1 role=LEADER term=2 vote=1 lead=1")
    assert "2: REPLICATE match=2 next=4 inflight=1" in status


def test_restart_rebuilds_the_configuration_applied_before_the_crash() -> None:
    """Storage reports the snapshot's ConfState; conf changes applied after the snapshot are
    not handed out again (they are <= applied), so the core replays them on load."""
    net = Net()
    net.add_empty(4)
    net.elect(1)
    net.node(1).propose_conf_change(ConfChange(changes=(ConfChangeSingle(
        ConfChangeType.ADD_NODE, 4),)))
    net.stabilize()
    assert net.node(2).status().conf_state.voters == (1, 2, 3, 4)
    net.restart(2)  # applied = the conf change's index
    assert net.node(2).status().conf_state.voters == (1, 2, 3, 4)
    assert net.members[2].applied[-1].type == EntryType.CONF_CHANGE


def test_restart_does_not_replay_changes_already_in_the_snapshot() -> None:
    """A storage that keeps entries below its snapshot (for lagging followers) must not make
    the node apply those conf changes twice (entering a joint config twice would fail)."""
    net = Net()
    net.add_empty(4)
    net.elect(1)
    joint = ConfChange(changes=(ConfChangeSingle(ConfChangeType.ADD_NODE, 4),
                                ConfChangeSingle(ConfChangeType.REMOVE_NODE, 3)),
                       transition=ConfChangeTransition.JOINT_EXPLICIT)
    net.node(1).propose_conf_change(joint)
    net.stabilize()
    member = net.members[2]
    applied = member.applied[-1].index
    conf = net.node(2).status().conf_state
    assert conf.voters_outgoing == (1, 2, 3)
    member.storage.create_snapshot(applied, conf, b"")  # snapshot, but keep every entry
    net.restart(2)
    assert net.node(2).status().conf_state == conf
    assert "ignored.invalid_conf_change_on_replay" not in net.node(2).status().counters


def test_fresh_leader_refuses_conf_change_until_its_entry_is_applied() -> None:
    net = Net()
    net.node(1).campaign()
    for _ in range(6):  # elect, but stop before the leader's empty entry is applied
        for node_id in (1, 2, 3):
            net.process(node_id)
        net.deliver()
        if net.node(1).status().role == StateRole.LEADER:
            break
    assert net.node(1).status().role == StateRole.LEADER
    add4 = ConfChange(changes=(ConfChangeSingle(ConfChangeType.ADD_NODE, 4),))
    with pytest.raises(ConfChangePending):
        net.node(1).propose_conf_change(add4)
    net.stabilize()
    net.node(1).propose_conf_change(add4)  # accepted once the empty entry is applied
    with pytest.raises(ConfChangePending):
        net.node(1).propose_conf_change(add4)  # one change at a time


def test_invalid_forwarded_conf_change_is_dropped_at_the_leader() -> None:
    net = Net()
    net.elect(1)
    net.node(2).propose_conf_change(ConfChange())  # "leave joint" outside a joint config
    net.stabilize()
    assert net.node(1).status().counters["dropped.invalid_conf_change"] == 1
    with pytest.raises(InvalidConfChange):
        net.node(1).propose_conf_change(ConfChange())
