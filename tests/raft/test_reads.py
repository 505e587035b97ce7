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
