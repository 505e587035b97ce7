"""The cluster driver: the Ready rule, crashes at each persistence point, restarts from
persisted state, slow disks, determinism, and the end-of-run state comparison."""

from __future__ import annotations

import pytest

from quorum.raft.harness.cluster import Cluster
from quorum.raft.harness.invariants import SafetyViolation
from quorum.raft.harness.scenario import PROFILES, ScenarioRun
from quorum.raft.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeType,
    MessageType,
    Ready,
    StateRole,
)

ET = 10


def with_leader(**kw: object) -> tuple[Cluster, int]:
    c = Cluster(seed=5, voters=3, **kw)
    leader = c.wait_leader(5 * ET)
    assert leader is not None
    c.one(b"warm", 3)
    return c, leader


def test_crash_before_persist_loses_the_ready_entries() -> None:
    c, leader = with_leader()
    last = c.nodes[leader].storage.last_index()
    c.arm_crash(leader, "before_persist")
    c.propose(leader, b"doomed")
    c.settle()
    assert not c.nodes[leader].alive
    assert c.nodes[leader].storage.last_index() == last  # never persisted
    assert c.messages_sent(MessageType.APP) > 0  # but the early appends went out


def test_crash_after_persist_keeps_entries_but_sends_nothing_else() -> None:
    c, leader = with_leader()
    follower = next(i for i in c.ids if i != leader)
    last = c.nodes[follower].storage.last_index()
    c.arm_crash(follower, "after_persist")
    other = next(i for i in c.ids if i not in (leader, follower))
    sent = c.net.sent_from
    before = (sent[(MessageType.APP_RESP, follower)], sent[(MessageType.APP_RESP, other)])
    c.propose(leader, b"kept")
    c.settle()
    assert not c.nodes[follower].alive
    assert c.nodes[follower].storage.last_index() == last + 1
    # the follower's answer (which depends on persistence) never left; the other one's did
    assert sent[(MessageType.APP_RESP, follower)] == before[0]
    assert sent[(MessageType.APP_RESP, other)] > before[1]
    assert c.nodes[other].storage.last_index() == last + 1


def test_restart_resumes_from_persisted_state() -> None:
    c, leader = with_leader()
    index = c.one(b"durable", 3)
    follower = next(i for i in c.ids if i != leader)
    term = c.nodes[follower].term
    c.crash(follower)
    c.restart(follower)
    status = c.nodes[follower].raw.status()  # type: ignore[union-attr]
    assert status.term == term and status.last_index >= index
    assert c.applied_index(follower) >= index  # the durable application kept its state


def test_leader_lookup_prefers_the_highest_term() -> None:
    c, old = with_leader(config={"check_quorum": False})
    c.net.isolate(old)
    c.run_until(lambda: c.leader() != old, 10 * ET)
    new = c.leader()
    assert new is not None and new != old
    assert c.nodes[old].role == StateRole.LEADER  # the deposed one still believes it leads
    assert sorted(c.leaders()) == sorted([old, new])


def test_slow_disk_still_commits_and_keeps_receiving() -> None:
    c, _ = with_leader(disk_delay_rate=1.0, disk_delay_ticks=3)
    for k in range(10):
        c.one(b"slow%d" % k, 3)
    assert all(c.nodes[i].pending is None or c.nodes[i].alive for i in c.ids)


def test_same_seed_same_run() -> None:
    def run() -> tuple[list[tuple[int, int]], int]:
        c = Cluster(seed=9, voters=5)
        c.wait_leader(5 * ET)
        for k in range(20):
            c.one(b"%d" % k, 5)
        return c.log_terms(1), sum(c.net.sent.values())

    assert run() == run()


def test_different_application_states_at_equal_index_are_caught() -> None:
    run = ScenarioRun(3, PROFILES["snapshots"], frozenset())
    run.safety_phase()
    run.cluster.nodes[2].app.digest ^= 1  # plant: node 2's state diverges silently
    with pytest.raises(SafetyViolation, match="state-digest"):
        run.liveness_phase()


def test_restart_rebuilds_the_configuration_applied_after_the_snapshot() -> None:
    # The core takes its configuration from the storage snapshot's ConfState; a restart must
    # replay the conf changes above it even though the durable application already has them.
    c = Cluster(seed=6, voters=3, learners=1)
    leader = c.wait_leader(5 * ET)
    assert leader is not None
    c.propose_conf_change(
        ConfChange(changes=(ConfChangeSingle(ConfChangeType.ADD_NODE, 4),)), leader
    )
    c.run_until(lambda: all(4 in c.nodes[i].app.conf_state.voters for i in c.ids), 5 * ET)
    follower = next(i for i in c.ids if i != leader)
    assert c.nodes[follower].storage.snapshot().metadata.index == 1  # nothing compacted
    c.restart(follower)
    c.settle()
    status = c.nodes[follower].raw.status()  # type: ignore[union-attr]
    assert 4 in status.conf_state.voters
    assert status.conf_state == c.nodes[follower].app.conf_state


def test_hold_if_delays_one_ready_while_the_node_keeps_stepping() -> None:
    c, leader = with_leader()
    follower = next(i for i in c.ids if i != leader)
    held: list[int] = []

    def hold_if(node: int, rd: Ready) -> int:
        if node == follower and rd.entries and not held:
            held.append(rd.entries[-1].index)
            return 5
        return 0

    c.hold_if = hold_if
    index = c.one(b"while held", 2)  # the leader commits with the other follower
    assert held == [index]
    assert c.nodes[follower].storage.last_index() < index  # not persisted yet
    assert c.nodes[follower].pending is not None
    c.tick(6)
    assert c.nodes[follower].pending is None
    assert c.applied_index(follower) >= index
