"""Replication flow control: batching, the in-flight window, snapshots, Ready limits."""

from __future__ import annotations

import random

from quorum.errors import SnapshotTemporarilyUnavailable
from quorum.raft import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    Config,
    Entry,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    Snapshot,
    StateRole,
    bootstrap_snapshot,
)

from .net import Net
from .paper_util import drain, make_node, sent

MT = MessageType


def replicating_leader(**config: object) -> RawNode:
    """Leader 1 of (1 2 3) whose followers acknowledged the empty entry (REPLICATE)."""
    node = make_node(1, **config)
    node.campaign()
    node.step(Message(type=MT.VOTE_RESP, to=1, from_=2, term=1))
    drain(node)
    for peer in (2, 3):
        node.step(Message(type=MT.APP_RESP, to=1, from_=peer, term=1, index=1))
    drain(node)
    return node


def test_batches_respect_entry_and_byte_limits() -> None:
    node = replicating_leader(max_entries_per_msg=3)
    # Seven entries in one proposal: one append to each follower would carry all seven.
    entries = tuple(Entry(term=0, index=0, data=b"x%d" % i) for i in range(7))
    node.raft.step(Message(type=MT.PROP, from_=1, entries=entries))
    rd = drain(node)
    batches = []
    for _ in range(5):
        to2 = [m for m in sent(rd) if m.type == MT.APP and m.to == 2 and m.entries]
        if not to2:
            break
        batches += [[e.index for e in m.entries] for m in to2]
        node.step(Message(type=MT.APP_RESP, to=1, from_=2, term=1, index=batches[-1][-1]))
        rd = drain(node)
    assert batches == [[2, 3, 4], [5, 6, 7], [8]]


def test_window_stops_sending_until_acknowledged() -> None:
    node = replicating_leader(max_inflight_msgs=2, max_entries_per_msg=1)
    for i in range(5):
        node.propose(b"p%d" % i)
    rd = drain(node)
    to2 = [m for m in sent(rd) if m.type == MT.APP and m.to == 2]
    assert [[e.index for e in m.entries] for m in to2] == [[2], [3]]  # window of 2 full
    node.step(Message(type=MT.APP_RESP, to=1, from_=2, term=1, index=3))
    rd = drain(node)
    to2 = [m for m in sent(rd) if m.type == MT.APP and m.to == 2]
    assert [[e.index for e in m.entries] for m in to2] == [[4], [5]]  # two slots freed
    status = {p.id: p for p in node.status().progress}
    assert status[2].inflight == 2 and status[2].paused
    node.step(Message(type=MT.APP_RESP, to=1, from_=2, term=1, index=4))
    to2 = [m for m in sent(drain(node)) if m.type == MT.APP and m.to == 2]
    assert [[e.index for e in m.entries] for m in to2] == [[6]]


def test_byte_limit_per_message() -> None:
    node = replicating_leader(max_size_per_msg=40)
    for _ in range(4):
        node.propose(b"y" * 20)  # 36 bytes each with the overhead
    apps = [m for m in sent(drain(node)) if m.type == MT.APP and m.to == 2]
    assert [len(m.entries) for m in apps] == [1, 1, 1, 1]


def test_committed_entries_per_ready_are_bounded() -> None:
    net = Net(max_committed_size_per_ready=50)
    net.elect(1)
    for i in range(6):
        net.node(1).propose(b"z" * 20 + bytes([i]))
    net.stabilize()
    assert len(net.data_applied(2)) == 6  # all applied, over several Readies


class FlakySnapshotStorage(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.ready_snapshot = False

    def snapshot(self) -> Snapshot:
        if not self.ready_snapshot:
            raise SnapshotTemporarilyUnavailable("producing")
        return super().snapshot()


def test_snapshot_temporarily_unavailable_is_retried() -> None:
    storage = FlakySnapshotStorage()
    storage.apply_snapshot(bootstrap_snapshot((1, 2)))
    leader = RawNode(Config(id=1, pre_vote=False), storage, random.Random(1))
    leader.campaign()
    leader.step(Message(type=MT.VOTE_RESP, to=1, from_=2, term=2))
    assert leader.raft.role == StateRole.LEADER
    drain(leader)
    # Follower 2 has an empty log: it needs entry 1, which only the snapshot holds.
    leader.step(Message(type=MT.APP_RESP, to=1, from_=2, term=2, index=1, reject=True,
                        reject_hint=0))
    assert not [m for m in sent(drain(leader)) if m.type == MT.SNAP]
    assert leader.status().counters["deferred.snapshot_unavailable"] == 1
    storage.ready_snapshot = True
    leader.step(Message(type=MT.HEARTBEAT_RESP, to=1, from_=2, term=2))
    snaps = [m for m in sent(drain(leader)) if m.type == MT.SNAP]
    assert len(snaps) == 1 and snaps[0].snapshot is not None
    assert {p.id: p.state for p in leader.status().progress}[2] == "SNAPSHOT"
    leader.report_snapshot(2, ok=True)
    assert {p.id: p.state for p in leader.status().progress}[2] == "PROBE"


def test_heartbeat_commit_is_min_of_match_and_commit() -> None:
    node = replicating_leader()
    node.propose(b"a")
    drain(node)
    node.step(Message(type=MT.APP_RESP, to=1, from_=2, term=1, index=2))
    drain(node)
    node.tick()
    beats = {m.to: m.commit for m in sent(drain(node)) if m.type == MT.HEARTBEAT}
    assert beats == {2: 2, 3: 1}  # 3 only acknowledged index 1


def test_follower_recovers_when_lost_appends_filled_the_window() -> None:
    """Regression: a REPLICATE window full of lost appends must not stall the follower.
    A heartbeat response lets one empty append through; its rejection resets to PROBE."""
    net = Net(max_inflight_msgs=2)
    net.elect(1)
    net.isolate(2)
    for i in range(6):
        net.node(1).propose(b"lost%d" % i)
        net.stabilize()
    status = {p.id: p for p in net.node(1).status().progress}
    assert status[2].paused and status[2].inflight == 2
    net.heal()
    net.tick(1, net.node(1).raft.config.heartbeat_ticks)
    net.stabilize()
    assert net.data_applied(2) == [b"lost%d" % i for i in range(6)]


def test_auto_leave_is_retried_after_an_aborted_transfer() -> None:
    """The leader's automatic leave of a joint config is refused while a transfer is in
    progress; once the transfer is abandoned it is proposed again on a heartbeat tick."""
    net = Net(voters=(1, 2, 3))
    net.add_empty(4)
    net.elect(1)
    net.isolate(3)
    # Joint with auto-leave; adding a learner keeps the quorums at (1 2 3) on both sides.
    cc = ConfChange(changes=(ConfChangeSingle(ConfChangeType.ADD_LEARNER, 4),),
                    transition=ConfChangeTransition.JOINT_IMPLICIT)
    net.node(1).propose_conf_change(cc)
    net.node(1).transfer_leader(3)  # 3 is unreachable: this transfer will be aborted
    net.stabilize()
    status = net.node(1).status()
    assert status.conf_state.voters_outgoing == (1, 2, 3)  # joint, the leave was refused
    assert status.counters["deferred.auto_leave"] >= 1
    for _ in range(2 * net.node(1).raft.config.election_ticks):
        net.tick(1)
        net.stabilize()
    status = net.node(1).status()
    assert status.conf_state.voters == (1, 2, 3) and not status.conf_state.voters_outgoing
    assert status.conf_state.learners == (4,)


def follower_at_term_1() -> RawNode:
    """Follower 2 of (1 2 3) whose log holds the leader's empty entry 1/1."""
    node = make_node(2, log_terms=(1,), term=1)
    node.step(Message(type=MT.HEARTBEAT, to=2, from_=1, term=1))
    drain(node)
    return node


def acks(rd: object) -> list[tuple[int, bool]]:
    return [(m.index, m.reject) for m in sent(rd) if m.type == MT.APP_RESP]  # type: ignore[arg-type]


def test_appends_stepped_together_get_one_acknowledgement() -> None:
    # A commit notice (no entries) and the next write's append arrive in one read: the
    # follower persists both in one Ready and answers once, with the higher match.
    node = follower_at_term_1()
    node.step(Message(type=MT.APP, to=2, from_=1, term=1, index=1, log_term=1, commit=1))
    node.step(Message(type=MT.APP, to=2, from_=1, term=1, index=1, log_term=1, commit=1,
                      entries=(Entry(term=1, index=2, data=b"a"),)))
    assert acks(drain(node)) == [(2, False)]


def test_a_lower_or_rejected_acknowledgement_is_never_merged() -> None:
    node = follower_at_term_1()
    # a stale duplicate after a newer append: its lower ack does not replace the higher one
    entries = (Entry(term=1, index=2, data=b"a"), Entry(term=1, index=3, data=b"b"))
    node.step(Message(type=MT.APP, to=2, from_=1, term=1, index=1, log_term=1, entries=entries))
    node.step(Message(type=MT.APP, to=2, from_=1, term=1, index=1, log_term=1,
                      entries=entries[:1]))
    assert acks(drain(node)) == [(3, False), (2, False)]
    # a rejection (beyond our log) keeps its hint, and an acceptance after it is sent too
    node.step(Message(type=MT.APP, to=2, from_=1, term=1, index=9, log_term=1))
    node.step(Message(type=MT.APP, to=2, from_=1, term=1, index=3, log_term=1, commit=3))
    assert acks(drain(node)) == [(9, True), (3, False)]
