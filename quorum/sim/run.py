"""One simulated run: a safety phase with faults, then a liveness phase after healing.

``run_seed(seed)`` returns a ``SimResult``; a failing result carries a one-line replay command.
Checked continuously: at most one leader per term, no two nodes apply different commands at an
index, applied index monotonic, equal state hashes at equal applied index. Checked at the end:
linearizability of the client history (register model, per key), and liveness (after healing,
a new write commits and every node converges to the same state).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from functools import partial

import msgspec

from quorum.sim.compaction import Compactor
from quorum.sim.membership import Reconfigurer
from quorum.sim.watch import WatchWorkload
from quorum.sim.workload import Client, finish_pending
from quorum.sim.world import Violation, World
from quorum.state import StateConfig
from quorum.verify.history import Operation, Recorder
from quorum.verify.linearizability import Verdict, check
from quorum.verify.models import RegisterModel

RAFT_BUGS = frozenset({"commit_old_term", "skip_vote_log_check", "forget_vote",
                       "read_index_no_quorum"})
NODE_BUGS = frozenset({"stale_read", "stale_role_record"})
STORAGE_BUGS = frozenset({"ack_before_fsync"})
# the watch hub splits a revision's events; odd-id replicas skip a key per compaction step
STATE_BUGS = frozenset({"split_txn_events", "skip_compaction_key"})
KNOWN_BUGS = RAFT_BUGS | NODE_BUGS | STORAGE_BUGS | STATE_BUGS


class SimOptions(msgspec.Struct, kw_only=True):
    nodes: int = 3
    clients: int = 3
    keys: int = 3
    safety_ms: int = 2_500
    liveness_ms: int = 2_000
    tick_ms: int = 10
    election_ticks: int = 10
    snapshot_entries: int = 100
    snapshot_log_ratio: float = 0.0  # NodeCore.snapshot_log_ratio, with no size floor
    fault_every_ms: tuple[int, int] = (100, 600)
    max_drop: float = 0.2
    bugs: frozenset[str] = frozenset()
    check_linearizability: bool = True
    # which faults the nemesis draws from (names of Nemesis methods); empty = all of them
    faults: tuple[str, ...] = ()
    max_entries_per_msg: int = 4096  # 1 = one entry per AppendEntries (slow, exposes Figure 8)
    pre_vote: bool = True
    check_quorum: bool = True
    bounce_after_vote: bool = False  # crash and restart a node right after it grants a vote
    lin_max_steps: int = 300_000  # search budget; beyond it the verdict is UNKNOWN, not a pass
    watch: bool = True  # watchers on every node, multi-key transaction writers, watch check
    watch_writers: int = 1
    # small watch buffers and replay steps: watchers are cancelled as slow consumers and must
    # resume, and lagging watchers catch up in many small steps (0 = the state defaults)
    watch_buffer_events: int = 0
    watch_replay_events: int = 0
    lease_reads: bool = False  # ReadOnlyOption.LEASE_BASED: reads trust the leader lease
    drift: float = 0.05  # each node's clock rate is drawn from [1 - drift, 1 + drift]
    skew: float = 0.05  # "skew_clock" gives the leader a rate in [1 / (1 + skew), 1]
    jump_ticks: int = 10  # "clock_jump" advances a node's clock by 1..jump_ticks ticks
    profile: str = "default"  # the name the options came from (for the replay command)
    delay_ms: tuple[int, int] = (1, 10)  # network delay range (until a "lossy" fault)
    duplicate_proposals: bool = False  # see NetConfig.duplicate_proposals
    # the compaction actor (quorum.sim.compaction): a compaction every compaction_every_ms,
    # up to compaction_lag revisions behind the leader's, compaction_step_keys keys a step
    compaction: bool = True
    compaction_every_ms: tuple[int, int] = (150, 500)
    compaction_lag: int = 30
    compaction_step_keys: tuple[int, int] = (1, 3)


# Fault profiles. "default" mixes every fault; the others bias the nemesis toward the
# conditions of one classic failure, which the default mix reaches only rarely.
PROFILES: dict[str, dict[str, object]] = {
    "default": {},
    # membership changes under crashes, partitions and leader transfers
    "reconfig": {
        "fault_every_ms": (60, 300), "watch_buffer_events": 4, "watch_replay_events": 3,
        "watch_writers": 2,
        "faults": ("reconfigure", "reconfigure", "reconfigure", "crash_one", "isolate_leader",
                   "random_partition", "heal", "heal", "transfer_leader", "lossy",
                   "pause_one", "resume_all", "clock_jump"),
    },
    # lease reads with clocks that stay within the lease's assumption (drift +-1%, no jumps,
    # no pauses): linearizable. Leaders are isolated often, so the lease is what is tested.
    "lease": {
        "lease_reads": True, "drift": 0.01, "skew": 0.01, "clients": 4,
        "fault_every_ms": (60, 250),
        "faults": ("isolate_leader", "heal", "skew_clock", "crash_one", "random_partition",
                   "transfer_leader"),
    },
    # lease reads with the leader's clock running far slower than the others' (drift beyond
    # the assumption): expected to find stale reads (see docs/sim.md)
    "lease_skew": {
        "lease_reads": True, "drift": 0.01, "skew": 6.0, "clients": 4,
        "fault_every_ms": (60, 250),
        "faults": ("isolate_leader", "heal", "skew_clock", "skew_clock", "random_partition"),
    },
    # compactions in one- or two-key steps every 80-250 ms, close behind the head, under
    # crashes (watchers resume below the compaction), leader changes in mid-series, frequent
    # snapshots (taken and installed between steps) and tiny watch buffers
    "compaction": {
        "compaction_every_ms": (80, 250), "compaction_lag": 8, "compaction_step_keys": (1, 2),
        "snapshot_entries": 30, "snapshot_log_ratio": 1.0,
        "watch_buffer_events": 4, "watch_replay_events": 3,
        "watch_writers": 2, "fault_every_ms": (60, 300),
        "faults": ("crash_one", "crash_leader", "transfer_leader", "isolate_leader",
                   "random_partition", "heal", "heal", "pause_one", "resume_all",
                   "crash_mid_write", "lossy"),
    },
    # rapid leader churn on 5 nodes: crashes and isolation of leaders
    "churn": {
        "nodes": 5, "fault_every_ms": (20, 120),
        "faults": ("crash_leader", "isolate_leader", "crash_one", "heal", "random_partition",
                   "crash_majority"),
    },
    # Figure 8 (Raft paper 5.4.2): one entry per AppendEntries over a one-tick network, leaders
    # cut off at random, right after they win (their no-op stays local) and right after their
    # commit index moves (what they just replicated reached one follower only). A leader that
    # commits an entry of an older term by counting replicas can then be succeeded by a leader
    # without it: the leader-completeness check flags that at once.
    "figure8": {
        "nodes": 3, "clients": 6, "fault_every_ms": (10, 20), "max_entries_per_msg": 1,
        "delay_ms": (10, 10), "safety_ms": 3_000, "election_ticks": 5, "pre_vote": False,
        "watch": False,
        "faults": ("heal", "isolate_leader", "isolate_leader", "isolate_new_leader",
                   "isolate_on_commit"),
    },
    # a voter crashes right after granting its vote and comes back at once
    "vote_crash": {
        "nodes": 3, "fault_every_ms": (50, 200), "election_ticks": 5, "pre_vote": False,
        "check_quorum": False, "bounce_after_vote": True,
        "faults": ("isolate_leader", "heal", "random_partition"),
    },
}


def profile_options(profile: str, **overrides: object) -> SimOptions:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: one of {', '.join(PROFILES)}")
    return msgspec.convert({**PROFILES[profile], "profile": profile, **overrides}, SimOptions)


class SimResult(msgspec.Struct, kw_only=True):
    seed: int
    ok: bool
    violation: str = ""
    detail: str = ""
    operations: int = 0
    completed: int = 0
    faults: int = 0
    messages: int = 0
    elapsed_s: float = 0.0
    replay: str = ""
    lin_verdict: str = ""  # OK, ILLEGAL or UNKNOWN (search budget exhausted)
    conf_changes: int = 0  # membership changes proposed
    watch_responses: int = 0  # watch responses delivered to the watchers
    watch_resumes: int = 0  # watch streams reopened after a cancel
    watch_compacted: int = 0  # of those, cancelled because their start was compacted
    compactions: int = 0  # compactions started by the compaction actor
    compaction_steps: int = 0  # compaction steps answered (first steps included)
    compactions_completed: int = 0  # series that reached the last key
    compaction_ends: dict[str, int] = msgspec.field(default_factory=dict)  # why others stopped
    history: list[Operation] = msgspec.field(default_factory=list)


def replay_command(seed: int, options: SimOptions) -> str:
    bugs = f" --bugs {','.join(sorted(options.bugs))}" if options.bugs else ""
    return (f"quorum sim --seed {seed} --profile {options.profile} --nodes {options.nodes}"
            f"{bugs} --trace")


class Nemesis:
    """Random faults during the safety phase."""

    def __init__(self, world: World, rng: random.Random, options: SimOptions) -> None:
        self.world = world
        self.rng = rng
        self.options = options
        self.count = 0
        self.active = True
        self.membership = Reconfigurer(world, random.Random(rng.getrandbits(64)), options.nodes)

    def start(self) -> None:
        self.world.at(self.rng.randint(*self.options.fault_every_ms), self.step)
        if "crash_new_leader" in self.options.faults:
            self.world.on_new_leader = self.crash_new_leader
        if "isolate_new_leader" in self.options.faults:
            self.world.on_new_leader = self.isolate_new_leader
        if "isolate_on_commit" in self.options.faults:
            self.world.on_leader_commit = self.isolate_on_commit

    def isolate_new_leader(self, node_id: int) -> None:
        """Cut a fresh leader off before its first entry (a no-op of its term) spreads."""
        if self.active and self.rng.random() < 0.5:
            self.world.at(self.rng.randint(0, 10), lambda: self._isolate(node_id))

    def isolate_on_commit(self, node_id: int) -> None:
        """Cut a leader off right after its commit index moved: entries it has just
        replicated may not have reached anyone else (Figure 8's moment, Raft paper 5.4.2)."""
        if self.active and self.rng.random() < 0.5:
            self._isolate(node_id)

    def _isolate(self, node_id: int) -> None:
        if self.active and node_id in self.world.nodes:  # never after the final heal
            self.world.partition(tuple(i for i in self._ids() if i != node_id))

    def crash_new_leader(self, node_id: int) -> None:
        """Kill a fresh leader a few milliseconds into its term (half of the time)."""
        if not self.active or self.rng.random() < 0.5:
            return
        self.world.at(self.rng.randint(1, 8), lambda: self._kill_and_restart(node_id))

    def _kill_and_restart(self, node_id: int) -> None:
        node = self.world.nodes.get(node_id)
        if self.active and node is not None and node.core is not None:
            self.world.crash(node_id, torn=False)
            self.world.at(self.rng.randint(20, 150), lambda: self._restart(node_id))

    def step(self) -> None:
        if not self.active:
            return
        self.count += 1
        self.rng.choice(self._faults())()
        self.world.at(self.rng.randint(*self.options.fault_every_ms), self.step)

    def _faults(self) -> list[Callable[[], None]]:
        if self.options.faults:
            hooks = ("crash_new_leader", "isolate_new_leader", "isolate_on_commit")
            return [getattr(self, n) for n in self.options.faults if n not in hooks]
        return [
            self.isolate_leader, self.random_partition, self.heal, self.heal,
            self.crash_one, self.crash_majority, self.pause_one, self.resume_all,
            self.lossy, self.transfer_leader, self.crash_mid_write, self.reconfigure,
            self.clock_jump, self.skew_clock,
        ]

    def _ids(self) -> list[int]:
        return list(self.world.nodes)

    def isolate_leader(self) -> None:
        leader = self.world.leader()
        if leader:
            self.world.partition(tuple(i for i in self._ids() if i != leader))

    def random_partition(self) -> None:
        ids = self._ids()
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        self.world.partition(tuple(sorted(ids[:cut])), tuple(sorted(ids[cut:])))

    def heal(self) -> None:
        self.world.heal()
        self.world.net.drop = 0.0
        self.world.net.duplicate = 0.0

    def crash_one(self) -> None:
        target = self.rng.choice(self._ids())
        self.world.crash(target, torn=self.rng.random() < 0.5)
        self.world.at(self.rng.randint(50, 800), lambda: self._restart(target))

    def crash_leader(self) -> None:
        leader = self.world.leader()
        if leader:
            self.world.crash(leader, torn=self.rng.random() < 0.5)
            self.world.at(self.rng.randint(30, 300), lambda: self._restart(leader))

    def crash_majority(self) -> None:
        """Power loss on a majority at once: only fsynced data may count."""
        ids = self._ids()
        self.rng.shuffle(ids)
        for target in ids[: len(ids) // 2 + 1]:
            self.world.crash(target)
            self.world.at(self.rng.randint(50, 400), partial(self._restart, target))

    def crash_mid_write(self) -> None:
        """Crash a node at a random point of its next disk operations."""
        node = self.world.nodes[self.rng.choice(self._ids())]
        if node.core is not None:
            node.fs.crash_at_event = node.fs.events + self.rng.randint(1, 12)

    def _restart(self, node_id: int) -> None:
        self.world.start(node_id)  # no-op if it is up again or was retired

    def pause_one(self) -> None:
        target = self.rng.choice(self._ids())
        self.world.pause(target)
        self.world.at(self.rng.randint(100, 1000), lambda: self.world.resume(target))

    def resume_all(self) -> None:
        for i in self._ids():
            self.world.resume(i)

    def lossy(self) -> None:
        self.world.net.drop = self.rng.uniform(0.0, self.options.max_drop)
        self.world.net.duplicate = self.rng.uniform(0.0, 0.1)
        self.world.net.max_delay_ms = self.rng.choice([5, 10, 30, 60])
        self.world.trace(f"net drop={self.world.net.drop:.2f} dup={self.world.net.duplicate:.2f}"
                         f" delay<={self.world.net.max_delay_ms}ms")

    def transfer_leader(self) -> None:
        leader = self.world.leader()
        core = self.world.nodes[leader].core if leader else None
        if core is not None:
            target = self.rng.choice([i for i in self._ids() if i != leader])
            core.transfer_leader(target)
            self.world.trace(f"transfer leadership n{leader} -> n{target}")
            self.world.drive(self.world.nodes[leader])

    def reconfigure(self) -> None:
        self.membership.step()

    def clock_jump(self) -> None:
        target = self.rng.choice(self._ids())
        self.world.clock_jump(target, self.rng.randint(1, self.options.jump_ticks))

    def skew_clock(self) -> None:
        """The leader's clock slows down (others keep their rate): a leader that trusts its
        lease for longer than its followers wait is what lease reads must not meet."""
        leader = self.world.leader()
        if leader:
            self.world.set_drift(leader, self.rng.uniform(1.0, 1.0 + self.options.skew))

    def stop_and_heal(self) -> None:
        self.active = False
        self.heal()
        self.world.net.max_delay_ms = 10
        for node_id, node in list(self.world.nodes.items()):
            node.fs.crash_at_event = None
            self.world.resume(node_id)
            if node.core is None:
                self.world.start(node_id)


def run_seed(seed: int, options: SimOptions | None = None,
             trace: Callable[[str], None] | None = None) -> SimResult:
    options = options or SimOptions()
    started = time.perf_counter()
    unknown = options.bugs - KNOWN_BUGS
    if unknown:
        raise ValueError(f"unknown planted bugs: {sorted(unknown)}")
    world = World(seed, options.nodes, tick_ms=options.tick_ms,
                  election_ticks=options.election_ticks,
                  snapshot_entries=options.snapshot_entries,
                  raft_bugs=options.bugs & RAFT_BUGS, node_bugs=options.bugs & NODE_BUGS,
                  skip_fsync="ack_before_fsync" in options.bugs, trace=trace,
                  max_entries_per_msg=options.max_entries_per_msg, pre_vote=options.pre_vote,
                  check_quorum=options.check_quorum,
                  bounce_after_vote=options.bounce_after_vote, lease_reads=options.lease_reads,
                  split_txn_events_bug="split_txn_events" in options.bugs,
                  state_config=_state_config(options),
                  skip_compaction_key_bug="skip_compaction_key" in options.bugs,
                  snapshot_log_ratio=options.snapshot_log_ratio)
    world.net.min_delay_ms, world.net.max_delay_ms = options.delay_ms
    world.net.duplicate_proposals = options.duplicate_proposals
    rng = random.Random(world.rng.getrandbits(64))
    for node in world.nodes.values():
        node.drift = rng.uniform(1.0 - options.drift, 1.0 + options.drift)  # clock rate
    recorder = Recorder()
    keys = [f"k{i}" for i in range(options.keys)]
    recent: dict[str, deque[int]] = {}  # last writes per key, shared by the clients
    clients = [Client(world, recorder, c, keys, random.Random(rng.getrandbits(64)),
                      recent=recent) for c in range(options.clients)]
    nemesis = Nemesis(world, random.Random(rng.getrandbits(64)), options)
    watches = WatchWorkload(world, random.Random(rng.getrandbits(64)), options.watch_writers)
    compactor = Compactor(world, random.Random(rng.getrandbits(64)),
                          every_ms=options.compaction_every_ms, max_lag=options.compaction_lag,
                          step_keys=options.compaction_step_keys)
    if options.watch:
        compactor.before_compaction = watches.harvest
    result = SimResult(seed=seed, ok=True, replay=replay_command(seed, options))
    try:
        for c in clients:
            c.start()
        if options.watch:
            watches.start()
        nemesis.start()
        if options.compaction:
            compactor.start()
        world.run_until(options.safety_ms)
        compactor.stop()
        nemesis.stop_and_heal()
        world.trace("--- liveness phase: healed ---")
        _liveness(world, clients, watches, options, nemesis.membership.retire_removed)
        if options.watch:
            _check_watches(watches)
    except Violation as v:
        result.ok, result.violation, result.detail = False, v.kind, v.detail
    finish_pending(clients, world)
    history = recorder.history()
    result.history = history
    result.operations = len(history)
    result.completed = sum(c.completed for c in clients)
    result.faults = nemesis.count
    result.conf_changes = nemesis.membership.changes
    result.watch_responses = watches.responses
    result.watch_resumes = watches.resumed
    result.watch_compacted = watches.compacted
    result.compactions = compactor.series
    result.compaction_steps = compactor.steps
    result.compactions_completed = compactor.completed
    result.compaction_ends = dict(sorted(compactor.ended_early.items()))
    result.messages = world.messages_sent
    if result.ok and options.check_linearizability:
        verdict = check(RegisterModel(), history, max_steps=options.lin_max_steps)
        result.lin_verdict = verdict.verdict.name
        if verdict.verdict == Verdict.ILLEGAL:
            result.ok, result.violation = False, "linearizability"
            bad = verdict.failing()
            result.detail = f"{len(bad)} key(s) not linearizable: " + ", ".join(
                p.key for p in bad)
    result.elapsed_s = time.perf_counter() - started
    return result


def _state_config(options: SimOptions) -> StateConfig | None:
    limits = {k: v for k, v in (("watch_buffer_events", options.watch_buffer_events),
                                ("watch_replay_events", options.watch_replay_events)) if v}
    return StateConfig(**limits) if limits else None


def _liveness(world: World, clients: list[Client], watches: WatchWorkload,
              options: SimOptions, retire_removed: Callable[[], None]) -> None:
    """After healing, clients must complete operations again and the members of the committed
    configuration must converge (same applied index, same state hash). Nodes whose removal
    has committed are shut down as they are found (as an operator would): a removed node that
    still runs cannot serve its clients, whose requests to it only time out."""
    before = sum(c.completed for c in clients)
    deadline = world.now + options.liveness_ms
    progress_by = world.now + options.liveness_ms // 2
    # Stop as soon as clients made progress (an early stop saves time, not checks).
    while sum(c.completed for c in clients) <= before + len(clients) and world.now < progress_by:
        retire_removed()
        world.run_until(world.now + 50)
    if sum(c.completed for c in clients) <= before:
        raise Violation("liveness", "no client operation completed after healing")
    for c in clients:
        c.stop()
    watches.stop()
    while world.now < deadline:
        world.run_until(world.now + 50)
        if _converged(world) is None:
            return
    raise Violation("liveness", f"replicas did not converge: {_converged(world)}")


def _converged(world: World) -> str | None:
    """None if every member of the leader's configuration is up and all agree; else why not."""
    leader = world.nodes.get(world.leader())
    if leader is None or leader.core is None:
        return "no leader"
    cs = leader.core.conf_state
    members = sorted(set(cs.voters) | set(cs.learners) | set(cs.voters_outgoing))
    applied: dict[int, int] = {}
    hashes: set[int] = set()
    for node_id in members:
        node = world.nodes.get(node_id)
        if node is None or node.core is None or node.kv is None:
            return f"member n{node_id} is not running (members {members})"
        applied[node_id] = node.core.applied
        hashes.add(node.kv.store.state_hash())
    if len(set(applied.values())) != 1 or len(hashes) != 1:
        return f"applied {applied}, {len(hashes)} distinct state hashes"
    return None


def _check_watches(watches: WatchWorkload) -> None:
    bad = watches.check()
    if bad:
        first = bad[0]
        raise Violation(f"watch-{first.kind}",
                        f"{len(bad)} violation(s); first: {first.watcher_id} at revision "
                        f"{first.revision}: {first.detail}")
