"""ReadIndex modes beyond the interaction scripts: the lease fallback."""

from __future__ import annotations

from quorum.raft import Message, MessageType, ReadOnlyOption

from .net import Net

MT = MessageType


def test_lease_read_without_recent_quorum_falls_back_to_a_heartbeat_round() -> None:
    net = Net(read_only_option=ReadOnlyOption.LEASE_BASED)
    net.elect(1)
    net.node(1).read_index(b"fresh-lease")
    net.stabilize()
    assert [rs.context for rs in net.members[1].read_states] == [b"fresh-lease"]
    # Cut 1 off and let one check-quorum round pass: the acks that vouched for the lease are
    # older than an election timeout now (a new leader may exist elsewhere).
    net.isolate(1)
    net.tick(1, net.node(1).raft.config.election_ticks)
    net.stabilize()
    net.node(1).read_index(b"stale-lease")
    net.stabilize()
    assert [rs.context for rs in net.members[1].read_states] == [b"fresh-lease"]
    net.heal()  # the heartbeat round it sent instead is answered: now the read is served
    net.tick(1, net.node(1).raft.config.heartbeat_ticks)
    net.stabilize()
    assert [rs.context for rs in net.members[1].read_states] == [b"fresh-lease", b"stale-lease"]


def test_no_lease_reads_during_a_leadership_transfer() -> None:
    """The transfer campaign bypasses the followers' refusal to vote, so the lease is void."""
    net = Net(read_only_option=ReadOnlyOption.LEASE_BASED)
    net.elect(1)
    net.tick(1, net.node(1).raft.config.heartbeat_ticks)
    net.stabilize()  # a quorum acknowledged a heartbeat: the lease is valid
    net.node(1).read_index(b"leased")
    net.process(1)
    assert [rs.context for rs in net.members[1].read_states] == [b"leased"]
    net.isolate(3)
    net.node(1).transfer_leader(3)  # 3 is cut off: the transfer stays pending
    net.node(1).read_index(b"during-transfer")
    rd = net.node(1).ready()
    assert rd.read_states == []
    assert any(m.type == MT.HEARTBEAT and m.context == b"during-transfer"
               for m in rd.early_messages)


def test_restarted_follower_in_lease_mode_stays_silent_for_an_election_timeout() -> None:
    """A follower that acknowledged a lease-granting heartbeat and then restarted must not
    help elect another leader before that lease could have run out."""
    net = Net(read_only_option=ReadOnlyOption.LEASE_BASED, pre_vote=False)
    net.elect(1)
    net.restart(2)
    vote = Message(type=MT.VOTE, to=2, from_=3, term=9, index=99, log_term=9)
    net.node(2).step(vote)
    assert net.node(2).status().counters["ignored.vote_in_lease"] == 1
    assert net.node(2).status().term == 2  # not even the term moved
    net.tick(2, net.node(2).raft.config.election_ticks)
    net.node(2).step(vote)
    assert net.node(2).status().vote == 3


def test_restart_in_safe_mode_votes_at_once() -> None:
    net = Net(pre_vote=False)
    net.elect(1)
    net.restart(2)
    net.node(2).step(Message(type=MT.VOTE, to=2, from_=3, term=9, index=99, log_term=9))
    assert net.node(2).status().vote == 3
