"""Randomized runs: a safety phase with faults, then a liveness phase after healing.

``run_seed(seed, profile, bugs)`` builds a :class:`Cluster` and, tick by tick, injects the
faults the :class:`Profile` asks for (drops, duplicates, delays, partitions, crashes at any point
of the Ready loop, restarts), client proposals and reads, membership changes and leadership
transfers. The invariant checker runs on every event. After ``safety_ticks`` the network heals,
every node restarts, and within ``liveness_ticks`` a leader must exist, every outstanding
proposal must commit (retried with its command id, deduplicated by the application) and all
nodes must converge to the same applied state. A failing seed's :class:`Result` carries a
one-line replay command.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random

from quorum.errors import InvalidConfChange, ProposalDropped, QuorumError
from quorum.raft.config import ReadOnlyOption
from quorum.raft.harness.cluster import CRASH_POINTS, Cluster, ClusterOptions, Proposal
from quorum.raft.harness.invariants import (
    CoreError,
    InvariantViolation,
    LivenessViolation,
    SafetyViolation,
)
from quorum.raft.harness.network import RELIABLE, Faults
from quorum.raft.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    MessageType,
)

DEFAULT_FAULTS = Faults(drop_rate=0.05, dup_rate=0.02, min_delay_ticks=0, max_delay_ticks=2)


@dataclass(frozen=True)
class Profile:
    """The mix of events of a randomized run. Rates are per-tick probabilities."""

    name: str
    voters: tuple[int, ...] = (3, 5)  # cluster sizes to choose from
    learners: int = 0
    safety_ticks: int = 300
    liveness_ticks: int = 400
    faults: Faults = DEFAULT_FAULTS
    partition_rate: float = 0.01
    heal_rate: float = 0.05
    isolate_leader_rate: float = 0.0
    cut_rate: float = 0.0  # cut one random direction of one link (healed with the rest)
    crash_rate: float = 0.01
    crash_leader_rate: float = 0.0
    restart_rate: float = 0.1
    proposals_per_tick: float = 0.5
    read_rate: float = 0.05
    conf_change_rate: float = 0.0
    remove_rate: float = 0.0  # remove a voter (at least three stay), or re-add a removed node
    transfer_rate: float = 0.005
    snapshot_every: int = 0
    disk_delay_rate: float = 0.0  # see ClusterOptions: asynchronous persistence
    disk_delay_ticks: int = 0
    bounce_after_vote_rate: float = 0.0
    cluster_options: dict[str, object] = field(default_factory=dict)  # ClusterOptions overrides
    config: dict[str, object] = field(default_factory=dict)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        # everything at once, moderate rates
        Profile(
            "mixed",
            learners=1,
            conf_change_rate=0.02,
            snapshot_every=40,
            disk_delay_rate=0.1,
            disk_delay_ticks=3,
            bounce_after_vote_rate=0.05,
            isolate_leader_rate=0.01,
            cut_rate=0.01,
            remove_rate=0.01,
        ),
        # Figure 8 (Raft §5.4.2): leaders are cut off right after they win or commit, so
        # entries of old terms sit on minorities while newer terms come and go. One entry per
        # append and a one-tick network make "old entry replicated, own no-op not yet" common.
        Profile(
            "figure8",
            voters=(3,),
            safety_ticks=1000,
            faults=Faults(min_delay_ticks=1, max_delay_ticks=1),
            partition_rate=0.0,
            heal_rate=0.5,
            isolate_leader_rate=0.5,
            crash_rate=0.0,
            crash_leader_rate=0.01,
            restart_rate=0.5,
            proposals_per_tick=1.0,
            transfer_rate=0.0,
            read_rate=0.0,
            config={"max_entries_per_msg": 1},
        ),
        # crash churn (MIT TestFigure8Unreliable-like): leaders crash often, lossy and slow net
        Profile(
            "churn",
            voters=(5,),
            faults=Faults(drop_rate=0.02, max_delay_ticks=3),
            partition_rate=0.03,
            heal_rate=0.1,
            crash_rate=0.01,
            crash_leader_rate=0.08,
            restart_rate=0.2,
            proposals_per_tick=1.0,
            transfer_rate=0.0,
            read_rate=0.0,
            disk_delay_rate=0.2,
            disk_delay_ticks=3,
        ),
        # vote persistence (§5.2, TEST_SCENARIOS A6): every voter crashes and restarts right
        # after granting; short timeouts and slow links make two candidates per term common
        Profile(
            "vote_crash",
            voters=(3, 5),
            safety_ticks=1000,
            faults=Faults(min_delay_ticks=1, max_delay_ticks=2),
            partition_rate=0.02,
            heal_rate=0.1,
            isolate_leader_rate=0.2,
            crash_rate=0.0,
            restart_rate=0.5,
            proposals_per_tick=0.3,
            read_rate=0.0,
            bounce_after_vote_rate=1.0,
            config={"pre_vote": False, "check_quorum": False, "election_ticks": 5},
        ),
        # partitions that let minorities pile up divergent uncommitted entries, then elections
        Profile(
            "divergent",
            voters=(3, 5),
            faults=Faults(drop_rate=0.02, max_delay_ticks=1),
            partition_rate=0.05,
            heal_rate=0.05,
            crash_rate=0.0,
            crash_leader_rate=0.03,
            restart_rate=0.3,
            proposals_per_tick=2.0,
            read_rate=0.0,
        ),
        # linearizable reads (thesis §6.4, TEST_SCENARIOS F34): many ReadIndex requests at
        # every node, leaders cut off now and then, so deposed leaders get asked too
        Profile(
            "reads",
            voters=(3, 5),
            isolate_leader_rate=0.05,
            heal_rate=0.05,
            read_rate=0.8,
        ),
        # the same with lease-based reads (thesis §6.4.1; needs check-quorum, no clock drift)
        Profile(
            "lease_reads",
            voters=(3, 5),
            isolate_leader_rate=0.05,
            heal_rate=0.05,
            read_rate=0.8,
            config={"read_only_option": ReadOnlyOption.LEASE_BASED},
        ),
        # a calm network: proposals, compaction and snapshots, occasional crashes
        Profile(
            "snapshots",
            voters=(3,),
            faults=RELIABLE,
            partition_rate=0.01,
            heal_rate=0.03,
            crash_rate=0.01,
            proposals_per_tick=1.0,
            snapshot_every=10,
        ),
    )
}


@dataclass
class Result:
    """The outcome of one seed. ``violation`` is None when every check passed."""

    seed: int
    profile: str
    bugs: frozenset[str]
    violation: InvariantViolation | None = None
    ticks: int = 0
    leaders: int = 0  # terms that had a leader
    proposed: int = 0
    committed: int = 0
    crashes: int = 0
    messages: int = 0
    reads: int = 0  # ReadIndex answers checked against acknowledged writes
    conf_changes: int = 0  # membership-change entries applied
    snapshots: int = 0  # snapshot messages sent
    transfers: int = 0  # TIMEOUT_NOW messages sent (leadership transfers carried out)

    @property
    def ok(self) -> bool:
        return self.violation is None

    @property
    def kind(self) -> str:
        if isinstance(self.violation, LivenessViolation):
            return "liveness"
        if isinstance(self.violation, CoreError):
            return "error"
        return "safety" if self.violation is not None else ""

    def replay(self) -> str:
        """The one-line command that reruns exactly this seed."""
        cmd = f"python -m quorum.raft.harness --seed {self.seed} --profile {self.profile}"
        return cmd + (f" --bugs {','.join(sorted(self.bugs))}" if self.bugs else "")

    def summary(self) -> str:
        head = "ok" if self.ok else f"FAILED ({self.kind}) {self.violation}"
        return (
            f"seed {self.seed} [{self.profile}] {head}; ticks={self.ticks} "
            f"leaders={self.leaders} proposed={self.proposed} committed={self.committed} "
            f"crashes={self.crashes} messages={self.messages} reads={self.reads}"
        )


class ScenarioRun:
    """One randomized run; the decisions come from ``rng``, the cluster has its own seed."""

    def __init__(self, seed: int, profile: Profile, bugs: frozenset[str]) -> None:
        self.rng = Random(seed * 7919 + 17)
        self.profile = profile
        voters = self.rng.choice(profile.voters)
        options = ClusterOptions(
            voters=voters,
            learners=profile.learners,
            faults=profile.faults,
            config=dict(profile.config),
            bugs=bugs,
            snapshot_every=profile.snapshot_every,
            disk_delay_rate=profile.disk_delay_rate,
            disk_delay_ticks=profile.disk_delay_ticks,
            bounce_after_vote_rate=profile.bounce_after_vote_rate,
            restart_at="mixed",
            record_applied=False,
        )
        if profile.cluster_options:
            options = dataclasses.replace(options, **profile.cluster_options)  # type: ignore[arg-type]
        self.cluster = Cluster(seed, options)
        self.cluster.on_apply = self._count_conf_change
        self._conf_indexes: set[int] = set()
        self.result = Result(seed, profile.name, bugs)
        self.outstanding: dict[int, Proposal] = {}

    def _count_conf_change(self, node_id: int, entry: Entry) -> None:
        if entry.type == EntryType.CONF_CHANGE:
            self._conf_indexes.add(entry.index)

    # --- safety phase -----------------------------------------------------------------------

    def safety_phase(self) -> None:
        for _ in range(self.profile.safety_ticks):
            self._inject_faults()
            self._client_traffic()
            self._admin()
            self.cluster.tick()

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def _inject_faults(self) -> None:
        p, c, rng = self.profile, self.cluster, self.rng
        if self._chance(p.partition_rate):
            ids = list(c.ids)
            rng.shuffle(ids)
            cut = rng.randint(1, len(ids) - 1)
            c.net.partition(ids[:cut], ids[cut:])
        if self._chance(p.cut_rate):
            c.net.cut(*rng.sample(c.ids, 2))
        if c.net.is_partitioned() and self._chance(p.heal_rate):
            c.net.heal()
        leader = c.leader()
        if leader is not None and self._chance(p.isolate_leader_rate):
            c.net.isolate(leader)
        alive = c.alive_ids()
        if alive and self._chance(p.crash_rate):
            self._crash(rng.choice(alive))
        leader = c.leader()
        if leader is not None and self._chance(p.crash_leader_rate):
            self._crash(leader)
        dead = [i for i in c.ids if not c.nodes[i].alive]
        if dead and self._chance(p.restart_rate):
            c.restart(rng.choice(dead))

    def _crash(self, node_id: int) -> None:
        """Crash now, or arm a crash at a random point of the node's next Ready."""
        self.result.crashes += 1
        if self.rng.random() < 0.5:
            self.cluster.crash(node_id)
        else:
            self.cluster.arm_crash(node_id, self.rng.choice(CRASH_POINTS))

    def _client_traffic(self) -> None:
        p, rng = self.profile, self.rng
        count = int(p.proposals_per_tick) + (rng.random() < p.proposals_per_tick % 1)
        for _ in range(count):
            self._propose()
        alive = self.cluster.alive_ids()
        if alive and self._chance(p.read_rate):
            with contextlib.suppress(ProposalDropped):
                self.cluster.read_index(rng.choice(alive))

    def _propose(self, node_id: int | None = None) -> None:
        try:
            proposal = self.cluster.propose(node_id, payload=b"v%d" % self.rng.getrandbits(16))
        except ProposalDropped:
            return
        self.result.proposed += 1
        self.outstanding[proposal.cid] = proposal

    def _admin(self) -> None:
        p, c, rng = self.profile, self.cluster, self.rng
        leader = c.leader()
        if leader is None:
            return
        if self._chance(p.transfer_rate):
            c.transfer_leader(rng.choice(c.nodes[leader].app.conf_state.voters or (leader,)))
        if self._chance(p.conf_change_rate):
            self._change_membership(leader)
        if self._chance(p.remove_rate):
            self._remove_or_readd(leader)

    def _change_membership(self, leader: int) -> None:
        """Leave an explicit joint configuration, swap a learner and a voter through joint
        consensus (§6 of the thesis; auto or explicit leave), or toggle a single node."""
        conf = self.cluster.nodes[leader].app.conf_state
        if conf.voters_outgoing and not conf.auto_leave:
            self._propose_change(leader, ConfChange())  # leave the joint configuration
        elif conf.learners and self.rng.random() < 0.5:
            self._joint_swap(leader, conf)
        else:
            self._toggle_learner(leader, conf)

    def _remove_or_readd(self, leader: int) -> None:
        """Remove a voter (the leader too: it must step down once the change applies) while
        three voters stay, or bring a removed node back as a learner (thesis §4.2.2)."""
        conf = self.cluster.nodes[leader].app.conf_state
        removed = [i for i in self.cluster.ids if i not in members(conf)]
        if removed and self.rng.random() < 0.5:
            node_id, kind = self.rng.choice(removed), ConfChangeType.ADD_LEARNER
        elif len(conf.voters) > 3 and not conf.voters_outgoing:
            node_id, kind = self.rng.choice(conf.voters), ConfChangeType.REMOVE_NODE
        else:
            return
        self._propose_change(leader, ConfChange(changes=(ConfChangeSingle(kind, node_id),)))

    def _joint_swap(self, leader: int, conf: ConfState) -> None:
        promote = self.rng.choice(conf.learners)
        demote = self.rng.choice(conf.voters)
        transition = self.rng.choice(
            (ConfChangeTransition.JOINT_IMPLICIT, ConfChangeTransition.JOINT_EXPLICIT)
        )
        changes = (
            ConfChangeSingle(ConfChangeType.ADD_NODE, promote),
            ConfChangeSingle(ConfChangeType.ADD_LEARNER, demote),
        )
        self._propose_change(leader, ConfChange(changes=changes, transition=transition))

    def _toggle_learner(self, leader: int, conf: ConfState) -> None:
        """Promote a learner, or demote a voter while at least three voters stay."""
        node_id = self.rng.choice(self.cluster.ids)
        if node_id in conf.learners:
            change = ConfChangeSingle(ConfChangeType.ADD_NODE, node_id)
        elif node_id in conf.voters and len(conf.voters) > 3:
            change = ConfChangeSingle(ConfChangeType.ADD_LEARNER, node_id)
        else:
            return
        self._propose_change(leader, ConfChange(changes=(change,)))

    def _propose_change(self, leader: int, change: ConfChange) -> None:
        with contextlib.suppress(ProposalDropped, InvalidConfChange):
            self.cluster.propose_conf_change(change, leader)

    # --- liveness phase ---------------------------------------------------------------------

    def liveness_phase(self) -> None:
        """Heal everything; then leader, commits and convergence must come within the bound."""
        c, bound = self.cluster, self.profile.liveness_ticks
        c.net.heal()
        c.net.faults = RELIABLE
        for node_id in c.ids:
            c.nodes[node_id].crash_at = ""
            if not c.nodes[node_id].alive:
                c.restart(node_id)
        retry_every = 4 * c.config_for(c.ids[0], 0).election_ticks
        for used in range(bound):
            self._drop_committed()
            if not self.outstanding and self._converged():
                return
            if used % retry_every == 0:
                self._retry_outstanding()
            c.tick()
        raise LivenessViolation(
            "liveness",
            f"{bound} ticks after healing: leader={c.leader()}, "
            f"{len(self.outstanding)} proposals not committed, "
            f"applied={[c.applied_index(i) for i in c.ids]}",
        )

    def _drop_committed(self) -> None:
        c = self.cluster
        for cid in [cid for cid in self.outstanding if c.is_committed(cid)]:
            del self.outstanding[cid]

    def _retry_outstanding(self) -> None:
        if self.cluster.leader() is None:
            return
        if not self.outstanding:
            self._propose()  # a fresh command proves the cluster still commits
            return
        for proposal in self.outstanding.values():
            try:
                self.cluster.repropose(proposal)
            except ProposalDropped:
                return

    def _converged(self) -> bool:
        """Every node applied the same index with the same state; a leader exists."""
        c = self.cluster
        leader = c.leader()
        if leader is None or c.nodes[leader].commit == 0:
            return False
        current = members(c.nodes[leader].app.conf_state)  # removed nodes stay behind
        apps = [c.nodes[i].app for i in c.ids if i in current]
        if any(a.applied_index != c.nodes[leader].commit for a in apps):
            return False
        if len({a.digest for a in apps}) != 1:
            raise SafetyViolation(
                "state-digest", f"equal applied index {apps[0].applied_index}, different states"
            )
        return True

    # --- the whole run ----------------------------------------------------------------------

    def run(self) -> Result:
        try:
            self.safety_phase()
            self.liveness_phase()
        except InvariantViolation as violation:
            self.result.violation = violation
        except QuorumError as error:  # the core refused something its contract allows
            self.result.violation = CoreError("core-error", f"{type(error).__name__}: {error}")
        c, r = self.cluster, self.result
        r.ticks = c.now_ticks
        r.leaders = len(c.checker.leader_of_term)
        r.committed = c.checker.max_applied_index()
        r.messages = sum(c.net.sent.values())
        r.reads = c.checker.reads_checked
        r.conf_changes = len(self._conf_indexes)
        r.snapshots = c.messages_sent(MessageType.SNAP)
        r.transfers = c.messages_sent(MessageType.TIMEOUT_NOW)
        return r


def members(conf: ConfState) -> set[int]:
    """Every node a configuration replicates to (voters and learners, joint halves too)."""
    return {*conf.voters, *conf.learners, *conf.voters_outgoing, *conf.learners_next}


def run_seed(
    seed: int,
    profile: str | Profile = "mixed",
    bugs: frozenset[str] | set[str] = frozenset(),
    *,
    report: Callable[[str], None] | None = None,
    **overrides: object,
) -> Result:
    """Run one randomized scenario; a pure function of its arguments.

    ``overrides`` replace Profile fields (e.g. ``safety_ticks=1000``). ``report`` receives one
    line for a failing seed: the violation and the replay command.
    """
    chosen = PROFILES[profile] if isinstance(profile, str) else profile
    if overrides:
        chosen = dataclasses.replace(chosen, **overrides)  # type: ignore[arg-type]
    result = ScenarioRun(seed, chosen, frozenset(bugs)).run()
    if report is not None and not result.ok:
        report(f"{result.summary()}\n  replay: {result.replay()}")
    return result
