"""ReadIndex modes beyond the interaction scripts: the lease fallback."""

from __future__ import annotations

from quorum.raft import MessageType, ReadOnlyOption

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
