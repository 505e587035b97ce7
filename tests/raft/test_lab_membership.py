"""Leadership transfer and membership changes on the harness (TEST_SCENARIOS E28-E31)."""

from __future__ import annotations

from quorum.raft.harness.cluster import Cluster
from quorum.raft.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    StateRole,
)

ET = 10


def started(voters: int, learners: int = 0, seed: int = 51) -> tuple[Cluster, int]:
    c = Cluster(seed=seed, voters=voters, learners=learners)
    leader = c.wait_leader(5 * ET)
    assert leader is not None
    c.one(b"warm", voters + learners)
    return c, leader


def change(kind: ConfChangeType, node: int) -> ConfChange:
    return ConfChange(changes=(ConfChangeSingle(kind, node),))


def conf_everywhere(c: Cluster, max_ticks: int = 10 * ET) -> set[ConfState]:
    c.run_until(lambda: len({c.nodes[i].app.conf_state for i in c.alive_ids()}) == 1, max_ticks)
    return {c.nodes[i].app.conf_state for i in c.alive_ids()}


def test_leadership_transfer() -> None:
    c, leader = started(3)
    target = next(i for i in c.ids if i != leader)
    term = c.nodes[leader].term
    c.transfer_leader(target)
    assert c.run_until(lambda: c.leader() == target, 3 * ET) >= 0
    assert c.nodes[target].term > term
    assert c.leaders() == [target]
    index = c.one(b"after transfer", 3)
    assert all(c.applied_index(i) >= index for i in c.ids)


def test_learner_replicates_but_never_votes() -> None:
    c, leader = started(3, learners=1)
    learner = 4
    index = c.one(b"to the learner too", 4)
    assert c.applied_index(learner) >= index
    others = [i for i in (1, 2, 3) if i != leader]
    c.net.partition([leader], [others[0]], [others[1], learner])  # learner + 1 voter: no quorum
    c.tick(4 * ET)
    assert c.nodes[learner].role != StateRole.LEADER
    assert c.leaders() in ([], [leader])  # only the stale, cut-off leader may still claim it


def test_promote_learner_then_it_counts() -> None:
    c, leader = started(3, learners=1)
    c.propose_conf_change(change(ConfChangeType.ADD_NODE, 4), leader)
    confs = conf_everywhere(c)
    assert len(confs) == 1
    conf = confs.pop()
    assert 4 in conf.voters and 4 not in conf.learners
    # four voters: two of them alone cannot elect a leader
    c.net.partition([1, 2], [3, 4])
    c.tick(4 * ET)
    assert all(c.nodes[i].role != StateRole.LEADER or i == leader for i in c.ids)
    c.net.heal()
    c.one(b"after promotion", 4)


def test_remove_the_leader() -> None:
    c, leader = started(3)
    c.propose_conf_change(change(ConfChangeType.REMOVE_NODE, leader), leader)
    rest = [i for i in c.ids if i != leader]
    assert c.run_until(lambda: any(c.nodes[i].role == StateRole.LEADER for i in rest), 10 * ET) >= 0
    new = c.leader()
    assert new in rest
    assert new is not None and leader not in c.nodes[new].app.conf_state.voters
    c.tick(2 * ET)
    assert c.nodes[leader].role != StateRole.LEADER
    proposal = c.propose(new, b"without the old leader")
    assert c.run_until(lambda: c.count_applied(c.cid_index.get(proposal.cid, 10**9)) >= 2, 5 * ET) >= 0


def test_joint_consensus_auto_leave() -> None:
    c, leader = started(3, learners=1)
    victim = next(i for i in (1, 2, 3) if i != leader)
    joint = ConfChange(
        changes=(
            ConfChangeSingle(ConfChangeType.ADD_NODE, 4),
            ConfChangeSingle(ConfChangeType.REMOVE_NODE, victim),
        ),
        transition=ConfChangeTransition.JOINT_IMPLICIT,
    )
    c.propose_conf_change(joint, leader)
    c.run_until(
        lambda: all(
            not c.nodes[i].app.conf_state.voters_outgoing
            and 4 in c.nodes[i].app.conf_state.voters
            for i in c.ids
            if i != victim
        ),
        10 * ET,
    )
    for node in c.ids:
        if node == victim:
            continue
        conf = c.nodes[node].app.conf_state
        assert conf.voters_outgoing == ()  # left the joint configuration automatically
        assert set(conf.voters) == {i for i in (1, 2, 3, 4) if i != victim}
    c.one(b"after joint", 3)
