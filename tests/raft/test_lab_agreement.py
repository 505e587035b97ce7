"""Log agreement on the harness (MIT 6.5840 Raft lab 3B equivalents). Bounds are in ticks;
election_ticks = 10. ``Cluster.one`` proposes at the leader and waits until the command is
applied on the given number of nodes (retrying with the same command id after a leader change).
"""

from __future__ import annotations

import contextlib
import random

from quorum.errors import ProposalDropped
from quorum.raft.harness.cluster import Cluster
from quorum.raft.types import MessageType, StateRole

ET = 10


def started(voters: int, seed: int, **kw: object) -> tuple[Cluster, int]:
    c = Cluster(seed=seed, voters=voters, **kw)
    leader = c.wait_leader(5 * ET)
    assert leader is not None
    return c, leader


def followers(c: Cluster, leader: int) -> list[int]:
    return [i for i in c.ids if i != leader]


def test_basic_agreement() -> None:
    c, _ = started(3, seed=1)
    index = c.applied_index(c.ids[0])
    for k in range(3):
        assert c.count_applied(index + 1) == 0  # nothing committed before it was proposed
        got = c.one(b"cmd%d" % k, expected=3)
        assert got == index + 1, f"command {k} got index {got}, expected {index + 1}"
        index = got


def test_follower_failure() -> None:
    c, leader = started(3, seed=2)
    c.one(b"101", 3)
    f1, f2 = followers(c, leader)
    c.crash(f1)
    c.one(b"102", 2)  # a majority remains
    c.tick(ET)
    c.one(b"103", 2)
    c.crash(f2)  # no majority: a command must not commit
    proposal = c.propose(leader, b"104")
    c.tick(4 * ET)
    assert proposal.cid not in c.cid_index
    assert c.count_applied(c.nodes[leader].storage.last_index()) == 0


def test_leader_failure() -> None:
    c, leader = started(3, seed=3)
    c.one(b"101", 3)
    c.crash(leader)
    c.one(b"102", 2)
    c.tick(ET)
    c.one(b"103", 2)
    second = c.leader()
    assert second is not None and second != leader
    c.crash(second)  # one node left: whatever it is asked must not commit
    last = next(i for i in c.alive_ids())
    commit = c.nodes[last].commit
    with contextlib.suppress(ProposalDropped):  # a follower may know no leader: also fine
        c.propose(last, b"104")
    c.tick(4 * ET)
    assert c.nodes[last].commit == commit
    assert c.nodes[last].role != StateRole.LEADER


def test_fail_agree_then_rejoin() -> None:
    c, leader = started(3, seed=4)
    c.one(b"101", 3)
    lagger = followers(c, leader)[0]
    c.net.isolate(lagger)
    for k in range(4):
        c.one(b"10%d" % (k + 2), 2)
    c.net.heal()  # the disconnected follower catches up
    index = c.one(b"106", 3)
    assert c.applied_index(lagger) >= index


def test_fail_no_agree() -> None:
    c, leader = started(5, seed=5)
    c.one(b"10", 5)
    for node in followers(c, leader)[:3]:
        c.net.isolate(node)
    proposal = c.propose(leader, b"20")
    c.settle()
    index = c.nodes[leader].storage.last_index()
    c.tick(4 * ET)
    assert c.count_applied(index) == 0, "committed without a majority"
    assert proposal.cid not in c.cid_index
    c.net.heal()
    got = c.one(b"30", 5)  # the leader may have changed; agreement resumes
    assert got > index - 1


def test_concurrent_starts() -> None:
    c, leader = started(3, seed=6)
    c.one(b"first", 3)
    term = c.nodes[leader].term
    proposals = [c.propose(leader, b"concurrent%d" % k) for k in range(5)]
    c.run_until(lambda: all(p.cid in c.cid_index for p in proposals), 4 * ET)
    indexes = sorted(c.cid_index[p.cid] for p in proposals)
    assert indexes == list(range(indexes[0], indexes[0] + 5)), indexes
    assert c.nodes[leader].term == term and c.leader() == leader


def test_rejoin_of_partitioned_leader() -> None:
    c, leader1 = started(3, seed=7)
    c.one(b"101", 3)
    c.net.isolate(leader1)  # the old leader takes commands it can never commit
    stale = [c.propose(leader1, b"stale%d" % k) for k in range(3)]
    rest = followers(c, leader1)
    c.one(b"103", 2)  # the others elect a new leader and commit
    leader2 = c.leader()
    assert leader2 in rest
    c.net.heal()
    c.net.isolate(leader2)  # the new leader goes; the old one rejoins the remaining follower
    c.one(b"104", 2)
    c.net.heal()
    index = c.one(b"105", 3)
    assert all(c.applied_index(i) >= index for i in c.ids)
    for proposal in stale:  # the old leader's uncommitted entries were overwritten
        assert proposal.cid not in c.cid_index


def test_backup_over_divergent_logs() -> None:
    c, leader1 = started(5, seed=8)
    rng = random.Random(8)
    c.one(b"start", 5)
    others = followers(c, leader1)
    # the leader and one follower are cut off and take 50 commands that never commit
    c.net.partition([leader1, others[0]], others[1:])
    for k in range(50):
        c.propose(leader1, b"lost%d" % k)
    c.tick(2)
    # the other three elect a leader and commit 50 commands
    for k in range(50):
        c.one(b"won%d" % k, 3, max_ticks=200)
    leader2 = c.leader()
    assert leader2 in others[1:]
    # leader2 and one more are cut off and take 50 more commands that never commit
    third = next(i for i in others[1:] if i != leader2)
    lone = next(i for i in others[1:] if i not in (leader2, third))
    c.net.partition([leader2, third], [leader1, others[0], lone])
    for k in range(50):
        c.propose(leader2, b"lost2-%d" % k)
    c.tick(2)
    # the original leader's group (now a majority with the lone node) elects and commits 50
    for _ in range(50):
        c.one(b"again%d" % rng.randrange(10**6), 3, max_ticks=300)
    # everyone together: the divergent tails are repaired within a message budget
    c.net.heal()
    before = c.messages_sent(MessageType.APP)
    index = c.one(b"all", 5, max_ticks=300)
    apps = c.messages_sent(MessageType.APP) - before
    assert all(c.applied_index(i) >= index for i in c.ids)
    # fast backtracking (follower hint + leader term search) repairs each of the four
    # divergent followers in a few round trips, not one per conflicting entry (50+)
    assert apps <= 60, f"{apps} appends to repair 4 followers"


def test_rpc_counts() -> None:
    c, leader = started(3, seed=9)
    votes = sum(c.messages_sent(t) for t in (MessageType.VOTE, MessageType.PRE_VOTE))
    assert votes <= 12, f"{votes} vote requests to elect one leader"
    c.one(b"warm", 3)
    apps_before = c.messages_sent(MessageType.APP)
    bytes_before = c.net.sent_entry_bytes
    commands = 10
    payload = b"x" * 100
    for k in range(commands):
        c.one(payload + b"%d" % k, 3)
    apps = c.messages_sent(MessageType.APP) - apps_before
    # one append per command per follower, plus a little slack for commit notices
    assert apps <= 3 * commands * 2, f"{apps} appends for {commands} commands"
    # each command's bytes cross the network about once per follower (MIT TestRPCBytes3B)
    sent_bytes = c.net.sent_entry_bytes - bytes_before
    command_bytes = commands * (8 + len(payload) + 1)  # id + payload + suffix
    assert sent_bytes <= 1.5 * 2 * command_bytes, f"{sent_bytes} bytes for {command_bytes}"
    # idle: heartbeats only, bounded by one per follower per heartbeat tick
    hb_before = c.messages_sent(MessageType.HEARTBEAT)
    apps_before = c.messages_sent(MessageType.APP)
    c.tick(3 * ET)
    assert c.messages_sent(MessageType.HEARTBEAT) - hb_before <= 2 * 3 * ET
    assert c.messages_sent(MessageType.APP) - apps_before == 0
    assert c.leader() == leader
