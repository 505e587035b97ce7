"""Hypothesis drives the cluster with arbitrary operation sequences (ticks, proposals,
partitions, cuts, crashes at any Ready point, restarts, slow disks, compaction, membership
changes); the invariant checker runs on every event and, at the end, the healed cluster must
converge. Failing sequences shrink to a short reproduction."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from quorum.errors import InvalidConfChange, ProposalDropped
from quorum.raft.harness.cluster import CRASH_POINTS, Cluster
from quorum.raft.harness.network import Faults
from quorum.raft.types import ConfChange, ConfChangeSingle, ConfChangeType

NODES = st.integers(min_value=1, max_value=4)


class ClusterMachine(RuleBasedStateMachine):
    """Four nodes (three voters and a learner) under arbitrary operations."""

    cluster: Cluster

    @initialize(
        seed=st.integers(0, 2**16),
        slow_disk=st.booleans(),
        restart_at=st.sampled_from(["snapshot", "applied"]),
    )
    def start(self, seed: int, slow_disk: bool, restart_at: str) -> None:
        self.cluster = Cluster(
            seed=seed,
            voters=3,
            learners=1,
            snapshot_every=8,
            faults=Faults(drop_rate=0.05, max_delay_ticks=2),
            disk_delay_rate=0.3 if slow_disk else 0.0,
            disk_delay_ticks=3,
            restart_at=restart_at,
            record_applied=False,
        )

    @rule(ticks=st.integers(1, 15))
    def tick(self, ticks: int) -> None:
        self.cluster.tick(ticks)

    @rule(count=st.integers(1, 5))
    def propose(self, count: int) -> None:
        for _ in range(count):
            with contextlib.suppress(ProposalDropped):
                self.cluster.propose(payload=b"v")

    @rule(node=NODES)
    def isolate(self, node: int) -> None:
        self.cluster.net.isolate(node)

    @rule(a=NODES, b=NODES)
    def cut(self, a: int, b: int) -> None:
        self.cluster.net.cut(a, b)

    @rule()
    def heal(self) -> None:
        self.cluster.net.heal()

    @precondition(lambda self: len(self.cluster.alive_ids()) > 1)
    @rule(node=NODES, point=st.sampled_from(["now", *CRASH_POINTS]))
    def crash(self, node: int, point: str) -> None:
        if not self.cluster.nodes[node].alive:
            return
        if point == "now":
            self.cluster.crash(node)
        else:
            self.cluster.arm_crash(node, point)

    @rule(node=NODES)
    def restart(self, node: int) -> None:
        if not self.cluster.nodes[node].alive:
            self.cluster.restart(node)

    @rule(node=NODES, promote=st.booleans())
    def change_membership(self, node: int, promote: bool) -> None:
        kind = ConfChangeType.ADD_NODE if promote else ConfChangeType.ADD_LEARNER
        with contextlib.suppress(ProposalDropped, InvalidConfChange):
            self.cluster.propose_conf_change(ConfChange(changes=(ConfChangeSingle(kind, node),)))

    @rule(node=NODES)
    def transfer(self, node: int) -> None:
        self.cluster.transfer_leader(node)

    def teardown(self) -> None:
        if not hasattr(self, "cluster"):
            return
        c = self.cluster
        c.net.heal()
        c.net.faults = Faults()
        for node in c.ids:
            c.nodes[node].crash_at = ""
            if not c.nodes[node].alive:
                c.restart(node)
        index = c.one(b"final", 2, max_ticks=600)
        # membership changes only promote and demote, so all four nodes must catch up
        caught_up = c.run_until(lambda: c.count_applied(index) == len(c.ids), 300)
        assert caught_up >= 0, [c.applied_index(i) for i in c.ids]


TestClusterMachine = ClusterMachine.TestCase
TestClusterMachine.settings = settings(
    max_examples=25,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
