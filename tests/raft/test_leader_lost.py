"""leader_lost: a follower told (by its runtime) that its leader's connection closed stops
honouring the leader's lease, so a quick pre-vote is not refused by leader stickiness."""

from __future__ import annotations

from quorum.raft import ReadOnlyOption, StateRole

from .net import Net


def _kill_leader_and_time_out_node_2(net: Net, lost: bool) -> int:
    """Leader 1 dies; node 3 heard from it half an election timeout ago; node 2 ticks until
    it campaigns. Returns the ticks node 2 needed."""
    net.elect(1)
    net.isolate(1)
    et = net.node(2).raft.config.election_ticks
    net.tick(3, et // 2)
    if lost:
        net.node(2).leader_lost(1)
        net.node(3).leader_lost(1)
    for ticks in range(1, 2 * et + 1):
        net.tick(2, 1)
        net.stabilize()
        if net.node(2).raft.role != StateRole.FOLLOWER:
            return ticks
    raise AssertionError("node 2 never campaigned")


def test_without_it_a_follower_in_lease_refuses_the_pre_vote() -> None:
    net = Net(pre_vote=True, check_quorum=True)
    ticks = _kill_leader_and_time_out_node_2(net, lost=False)
    et = net.node(2).raft.config.election_ticks
    assert ticks >= et  # the whole randomized timeout
    assert net.node(3).status().counters["ignored.vote_in_lease"] >= 1
    assert net.node(2).raft.role == StateRole.PRE_CANDIDATE  # stuck until its next timeout


def test_after_it_the_pre_vote_and_the_vote_are_granted_at_once() -> None:
    net = Net(pre_vote=True, check_quorum=True)
    ticks = _kill_leader_and_time_out_node_2(net, lost=True)
    et = net.node(2).raft.config.election_ticks
    assert ticks <= et  # only the random part of the timeout
    assert net.node(2).raft.role == StateRole.LEADER
    assert net.node(3).status().counters.get("ignored.vote_in_lease", 0) == 0
    assert net.node(3).raft.lead == 2


def test_it_is_ignored_with_lease_reads() -> None:
    """A lease-holding leader may be serving reads: its followers keep their promise."""
    net = Net(pre_vote=True, check_quorum=True, read_only_option=ReadOnlyOption.LEASE_BASED)
    _kill_leader_and_time_out_node_2(net, lost=True)
    assert net.node(3).status().counters["ignored.leader_lost_lease_reads"] == 1
    assert net.node(3).status().counters["ignored.vote_in_lease"] >= 1
    assert net.node(2).raft.role == StateRole.PRE_CANDIDATE


def test_it_is_ignored_for_another_peer_and_a_heartbeat_restores_the_lease() -> None:
    net = Net(pre_vote=True, check_quorum=True)
    net.elect(1)
    net.node(3).leader_lost(2)  # not our leader
    assert net.node(3).raft.in_lease()
    net.node(3).leader_lost(1)
    assert not net.node(3).raft.in_lease()
    net.tick(1, net.node(1).raft.config.heartbeat_ticks)  # the leader was alive after all
    net.stabilize()
    assert net.node(3).raft.in_lease() and net.node(3).raft.lead == 1
