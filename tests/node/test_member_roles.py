"""Member roles under concurrent changes: a member's address record never changes its role.

The race behind the verify finding "a promoted member keeps acting as a learner": a node added
as a learner publishes its own addresses as a conf change that repeats the role it believes it
has (learner). When that change reaches the leader after the promotion was applied there but
before the learner applied it, it committed after the promotion and demoted the new voter.
With three voters the cluster then had only two, so losing either one left no leader.
"""

from __future__ import annotations

from quorum.node.core import NodeCore
from quorum.node.envelope import MemberInfo
from quorum.node.statemachine import CounterStateMachine
from quorum.node.storage import MemoryNodeStorage
from quorum.raft import StateRole
from quorum.raft.types import ConfChange, ConfChangeSingle, ConfChangeType

from .test_core import Box, Net

NEW = 4
ADDR = MemberInfo(NEW, peer_url="127.0.0.1:9004")
PUBLISHED = MemberInfo(NEW, peer_url="127.0.0.1:9004", client_url="127.0.0.1:7004",
                       is_learner=True)


def _change(kind: ConfChangeType, node_id: int) -> ConfChange:
    return ConfChange((ConfChangeSingle(kind, node_id),))


def _applied(net: Net, core: NodeCore, cc: ConfChange,
             members: tuple[MemberInfo, ...] = ()) -> None:
    box = Box()
    core.propose_conf_change(cc, box, members)
    net.pump()
    assert box.error is None, box.error
    assert box.calls == 1


def _three_voters_and_a_learner() -> tuple[Net, int, int]:
    """Voters {leader, other} after removing a follower, then a fresh node 4 added as a
    learner and caught up (the verify member nemesis's replace step)."""
    net = Net(3)
    leader = net.elect()
    gone, other = (i for i in (1, 2, 3) if i != leader)
    _applied(net, net.cores[leader], _change(ConfChangeType.REMOVE_NODE, gone))
    net.down.add(gone)
    net.storages[NEW] = MemoryNodeStorage()  # joins empty, catches up from a snapshot
    net.sms[NEW] = CounterStateMachine()
    net.cores[NEW] = net._make(NEW, 1)
    _applied(net, net.cores[leader], _change(ConfChangeType.ADD_LEARNER, NEW), (ADDR,))
    net.tick(5)
    assert NEW in net.cores[NEW].conf_state.learners
    assert net.cores[NEW].leader_id == leader
    return net, leader, other


def _promote_then_publish_stale_role(net: Net, leader: int) -> None:
    """The leader applies the promotion while the learner has not heard of it yet; the
    learner then records its addresses with the role it still sees (learner)."""
    net.down.add(NEW)  # the learner is slow: the promotion commits on the two voters
    _applied(net, net.cores[leader], _change(ConfChangeType.ADD_NODE, NEW))
    assert NEW in net.cores[leader].conf_state.voters
    net.down.discard(NEW)
    learner = net.cores[NEW]
    assert NEW in learner.conf_state.learners  # its view is still the old one
    publish = Box()
    # What the runtime's address publication proposes: the member's role as it sees it.
    kind = ConfChangeType.ADD_LEARNER if PUBLISHED.is_learner else ConfChangeType.ADD_NODE
    learner.propose_conf_change(_change(kind, NEW), publish, (PUBLISHED,))
    net.pump()
    net.tick(5)
    assert publish.error is None, publish.error


def test_a_stale_address_record_does_not_demote_a_promoted_member() -> None:
    net, leader, other = _three_voters_and_a_learner()
    _promote_then_publish_stale_role(net, leader)
    for i in (leader, other, NEW):
        cs = net.cores[i].conf_state
        assert NEW in cs.voters and NEW not in cs.learners, (i, cs)
        member = net.cores[i].members[NEW]
        assert member.client_url == PUBLISHED.client_url  # the addresses were recorded
        assert not member.is_learner
    assert not net.cores[NEW].rn.raft.is_learner


def test_the_cluster_keeps_a_leader_when_one_of_three_voters_is_down() -> None:
    """The availability symptom: voters {leader, other, 4}; with ``other`` down the leader
    still hears a quorum (itself and 4), so check-quorum keeps it leading."""
    net, leader, other = _three_voters_and_a_learner()
    _promote_then_publish_stale_role(net, leader)
    net.down.add(other)
    net.tick(40)  # several election timeouts: check-quorum runs on the leader
    assert net.cores[leader].role == StateRole.LEADER
    box = Box()
    net.cores[leader].propose(b"\x00" * 7 + b"\x01", box)
    net.pump()
    net.tick(2)
    assert box.error is None and box.calls == 1


def test_real_role_changes_are_proposed_as_they_are() -> None:
    """Only a change repeating the current role becomes an address record: a promotion and
    a demotion still change the role."""
    net, leader, other = _three_voters_and_a_learner()
    _applied(net, net.cores[leader], _change(ConfChangeType.ADD_NODE, NEW))
    net.tick(2)
    assert all(NEW in net.cores[i].conf_state.voters for i in (leader, other, NEW))
    _applied(net, net.cores[leader], _change(ConfChangeType.ADD_LEARNER, other))
    net.tick(2)
    for i in (leader, other, NEW):
        cs = net.cores[i].conf_state
        assert cs.voters == tuple(sorted((leader, NEW))) and cs.learners == (other,), (i, cs)
