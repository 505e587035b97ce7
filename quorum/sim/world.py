"""A simulated world: virtual time, a faulty network, and nodes built from production classes.

Each node is the production stack — ``NodeCore`` + ``process_ready`` + ``DurableStorage`` on a
``SimFileSystem`` + the ``quorum.state`` key-value state machine — driven in one thread. Time is
virtual (integer milliseconds, jumping from event to event); every random choice comes from one
seeded ``random.Random``, so a run is a pure function of its seed and replays exactly.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from functools import partial

import msgspec

from quorum.node.core import NodeCore, bootstrap_data
from quorum.node.envelope import MemberInfo
from quorum.node.kv import KvStateMachine
from quorum.node.ready import process_ready, run_sync
from quorum.node.storage import DurableNodeStorage, bootstrap
from quorum.raft import Config, ReadOnlyOption
from quorum.raft.types import Entry, Message, MessageType, Ready, Snapshot
from quorum.state import CompactionRequest, Request, Response, StateConfig
from quorum.storage.durable import DurableStorage, StorageOptions
from quorum.storage.simfs import SimFileSystem, SimulatedCrash


class Violation(Exception):
    """A safety invariant broke; ``kind`` names the rule."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class NetConfig(msgspec.Struct, kw_only=True):
    min_delay_ms: int = 1
    max_delay_ms: int = 10
    drop: float = 0.0
    duplicate: float = 0.0
    # Duplicate forwarded proposals (PROP) too. Off by default: NodeCore does not deduplicate
    # a forwarded proposal delivered twice, so both copies are committed and applied (see
    # docs/sim.md, findings); with this on the sim finds the resulting violations.
    duplicate_proposals: bool = False


class SimNode:
    """One simulated server process: its disk survives crashes; everything else does not."""

    def __init__(self, world: World, node_id: int) -> None:
        self.world = world
        self.id = node_id
        self.fs = SimFileSystem(random.Random(world.rng.getrandbits(64)))
        self.core: NodeCore | None = None
        self.kv: KvStateMachine | None = None
        self.paused = False
        self.parked: list[Message] = []  # arrived while paused (kernel buffers)
        self.drift = 1.0
        self.incarnation = 0
        self.crashes = 0
        self.last_applied = 0
        self.last_commit = 0  # commit index seen at the last check while leading

    @property
    def up(self) -> bool:
        return self.core is not None


class World:
    """Virtual time, the network and the nodes. Faults are methods; ``run_until`` advances."""

    def __init__(self, seed: int, n: int, *, tick_ms: int = 10, election_ticks: int = 10,
                 snapshot_entries: int = 200, raft_bugs: frozenset[str] = frozenset(),
                 node_bugs: frozenset[str] = frozenset(), skip_fsync: bool = False,
                 trace: Callable[[str], None] | None = None,
                 max_entries_per_msg: int = 4096, pre_vote: bool = True,
                 check_quorum: bool = True, bounce_after_vote: bool = False,
                 lease_reads: bool = False, split_txn_events_bug: bool = False,
                 state_config: StateConfig | None = None,
                 skip_compaction_key_bug: bool = False,
                 snapshot_log_ratio: float = 0.0) -> None:
        self.seed = seed
        # > 0: snapshots also wait for ratio x the last snapshot's bytes of log, at every
        # size (the floor is 0 here: simulated states are a few KiB)
        self.snapshot_log_ratio = snapshot_log_ratio
        self.state_config = state_config
        self.split_txn_events_bug = split_txn_events_bug
        # planted bug: the replicas with an odd id skip a key in each compaction step
        self.skip_compaction_key_bug = skip_compaction_key_bug
        self.compactions: set[int] = set()  # revisions of compactions some replica applied
        self.lease_reads = lease_reads
        self.pre_vote = pre_vote
        self.check_quorum = check_quorum
        self.bounce_after_vote = bounce_after_vote
        self.max_entries_per_msg = max_entries_per_msg
        self.rng = random.Random(seed)
        self.now = 0
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        self.snapshot_entries = snapshot_entries
        self.raft_bugs = raft_bugs
        self.node_bugs = node_bugs
        self.skip_fsync = skip_fsync
        self.trace_fn = trace
        self.net = NetConfig()
        self.blocked: set[tuple[int, int]] = set()  # (from, to) links that drop everything
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self.nodes = {i: SimNode(self, i) for i in range(1, n + 1)}
        self.members = tuple(MemberInfo(i, f"n{i}", f"sim:{i}") for i in self.nodes)
        self.next_id = n + 1  # ids are never reused: a node that joins again gets a new one
        self.retired: set[int] = set()  # removed from the cluster; its disk is gone
        self.leaders: dict[int, int] = {}  # term -> leader id (election safety)
        self.applied_digest: dict[int, tuple[int, int]] = {}  # index -> (term, data hash)
        self.state_hashes: dict[int, tuple[int, int]] = {}  # applied index -> (hash, node)
        # index -> (term of the leader that first committed it, the entry's term)
        self.commit_terms: dict[int, tuple[int, int]] = {}
        self.max_committed = 0
        self.on_node_started: Callable[[SimNode], None] | None = None
        self.on_new_leader: Callable[[int], None] | None = None
        self.on_leader_commit: Callable[[int], None] | None = None  # commit index moved
        self._announced: set[int] = set()
        self.messages_sent = 0
        for node in self.nodes.values():
            self._bootstrap(node)
            self.start(node.id)

    # --- time ---------------------------------------------------------------------------------

    def at(self, delay_ms: int, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._events, (self.now + max(0, delay_ms), self._seq, fn))

    def run_until(self, t_ms: int) -> None:
        while self._events and self._events[0][0] <= t_ms:
            when, _, fn = heapq.heappop(self._events)
            self.now = when
            fn()
        self.now = max(self.now, t_ms)

    def trace(self, text: str) -> None:
        if self.trace_fn is not None:
            self.trace_fn(f"{self.now:>8}ms {text}")

    # --- nodes --------------------------------------------------------------------------------

    def _storage_options(self) -> StorageOptions:
        return StorageOptions(segment_bytes=64 * 1024, planted_skip_fsync=self.skip_fsync)

    def _bootstrap(self, node: SimNode) -> None:
        storage = DurableNodeStorage(DurableStorage.open(node.fs, "/data",
                                                         self._storage_options()))
        voters = tuple(self.nodes)
        bootstrap(storage, voters, bootstrap_data(self.members, KvStateMachine()))
        storage.close()

    def add_node(self) -> int:
        """A new server process with a fresh, empty disk and a new id. It starts empty (like
        ``quorum serve --join``) and stays idle until a configuration that names it commits."""
        node_id = self.next_id
        self.next_id += 1
        self.nodes[node_id] = SimNode(self, node_id)
        self.trace(f"n{node_id} created (empty disk)")
        self.start(node_id)
        return node_id

    def retire(self, node_id: int) -> None:
        """Shut a node down for good (after its removal committed): process and disk are gone;
        messages still in flight to it are dropped."""
        if node_id in self.nodes:
            self.crash(node_id, torn=False)
            del self.nodes[node_id]
            self.retired.add(node_id)
            self.blocked = {(a, b) for a, b in self.blocked if node_id not in (a, b)}
            self.trace(f"n{node_id} retired")

    def member(self, node_id: int) -> MemberInfo:
        return MemberInfo(node_id, f"n{node_id}", f"sim:{node_id}")

    def start(self, node_id: int) -> None:
        """(Re)start a node from what its disk holds."""
        node = self.nodes.get(node_id)
        if node is None or node.core is not None:
            return  # retired meanwhile, or already restarted by another timer
        node.incarnation += 1
        try:
            durable = DurableStorage.open(node.fs, "/data", self._storage_options())
        except SimulatedCrash:
            node.fs.crash()
            self.at(50, lambda: self.start(node_id))
            return
        node.kv = KvStateMachine(self.state_config,
                                 split_txn_events_bug=self.split_txn_events_bug)
        node.kv.store.skip_compaction_key_bug = self.skip_compaction_key_bug and node_id % 2 == 1
        node.kv.on_apply = self._applied_command
        cfg = Config(id=node_id, election_ticks=self.election_ticks, heartbeat_ticks=1,
                     max_entries_per_msg=self.max_entries_per_msg, pre_vote=self.pre_vote,
                     check_quorum=self.check_quorum, planted_bugs=self.raft_bugs,
                     read_only_option=(ReadOnlyOption.LEASE_BASED if self.lease_reads
                                       else ReadOnlyOption.SAFE))
        node.core = NodeCore(
            cfg, DurableNodeStorage(durable), node.kv, random.Random(self.rng.getrandbits(64)),
            partial(self._send, node_id, node.incarnation),
            snapshot_entries=self.snapshot_entries,
            snapshot_catchup_entries=self.snapshot_entries // 2,
            request_timeout_ticks=self.election_ticks * 4,
            members=self.members, incarnation=node.incarnation, planted_bugs=self.node_bugs,
        )
        node.core.snapshot_log_ratio = self.snapshot_log_ratio
        node.core.snapshot_ratio_floor = 0
        node.last_applied = node.core.applied
        self._hook_apply(node)
        self.trace(f"n{node_id} start (incarnation {node.incarnation}, applied "
                   f"{node.core.applied})")
        if self.on_node_started is not None:
            self.on_node_started(node)
        self._schedule_tick(node, node.incarnation)

    def clock_jump(self, node_id: int, ticks: int) -> None:
        """The node's clock leaps forward: ``ticks`` ticks elapse at once (an NTP step, a VM
        resumed with a catch-up burst of timer interrupts)."""
        node = self.nodes.get(node_id)
        if node is not None and node.core is not None and not node.paused:
            self.trace(f"n{node_id} clock jumps {ticks} ticks")
            node.core.tick(ticks)
            self.drive(node)

    def set_drift(self, node_id: int, drift: float) -> None:
        """From now on the node's ticks come every ``tick_ms * drift`` ms (>1: a slow clock)."""
        node = self.nodes.get(node_id)
        if node is not None:
            node.drift = drift
            self.trace(f"n{node_id} clock rate x{1 / drift:.2f}")

    def _hook_apply(self, node: SimNode) -> None:
        """Record every applied entry (commands, no-ops, conf changes) for the cross-node
        state-machine-safety invariant: one index, one entry, on every node, forever."""
        assert node.core is not None

        def applied(entry: Entry) -> None:
            digest = (entry.term, hash(entry.data))
            seen = self.applied_digest.setdefault(entry.index, digest)
            if seen != digest:
                raise Violation(
                    "state-machine-safety",
                    f"n{node.id} applied (term {entry.term}) at index {entry.index}, where "
                    f"another node applied an entry of term {seen[0]}")

        node.core.on_entry_applied = applied

    def _applied_command(self, request: Request, _result: Response) -> None:
        """Record the revision of every compaction a replica starts (the watch workload
        checks that a watcher cancelled as compacted names one of them)."""
        if isinstance(request, CompactionRequest) and not request.start:
            self.compactions.add(request.revision)

    def crash(self, node_id: int, torn: bool = True) -> None:
        """Power loss: the process dies and unsynced writes are lost (maybe torn)."""
        node = self.nodes.get(node_id)
        if node is None or node.core is None:
            return
        node.core.stop()
        node.core = None
        node.kv = None
        node.paused = False
        node.parked.clear()
        node.crashes += 1
        node.fs.crash(torn=torn)
        self.trace(f"n{node_id} crash")

    def pause(self, node_id: int) -> None:
        node = self.nodes.get(node_id)
        if node is not None and node.core is not None and not node.paused:
            node.paused = True
            self.trace(f"n{node_id} pause")

    def resume(self, node_id: int) -> None:
        node = self.nodes.get(node_id)
        if node is not None and node.paused:
            node.paused = False
            parked, node.parked = node.parked, []
            self.trace(f"n{node_id} resume ({len(parked)} parked messages)")
            if node.core is not None:
                node.core.receive(parked)
                self.drive(node)

    def _schedule_tick(self, node: SimNode, incarnation: int) -> None:
        def tick() -> None:
            if node.core is None or node.incarnation != incarnation:
                return
            if not node.paused:
                node.core.tick()
                self.drive(node)
            self.at(max(1, round(self.tick_ms * node.drift)), tick)  # the rate may change

        self.at(max(1, round(self.tick_ms * node.drift)), tick)

    # --- the Ready loop (the production function) ----------------------------------------------

    def drive(self, node: SimNode) -> None:
        core = node.core
        if core is None or node.paused:
            return

        async def persist(rd: Ready) -> None:
            core.persist(rd)

        try:
            core.drain()
            while core.has_ready():
                run_sync(process_ready(core, core.ready(), persist))
                core.drain()
        except SimulatedCrash:
            self.crash(node.id)
            self.at(self.rng.randint(20, 200), lambda: self.start(node.id))
            return
        self._check(node)

    # --- invariants ---------------------------------------------------------------------------

    def _check(self, node: SimNode) -> None:
        core = node.core
        if core is None:
            return
        if core.is_leader:
            term = core.rn.raft.term
            other = self.leaders.setdefault(term, node.id)
            if other != node.id:
                raise Violation("election-safety", f"n{other} and n{node.id} lead term {term}")
            if term not in self._announced:
                self._announced.add(term)
                self.trace(f"n{node.id} leads term {term}")
                self._check_leader_completeness(node, term)
                if self.on_new_leader is not None:
                    self.on_new_leader(node.id)
            commit = core.rn.raft.raft_log.committed
            if commit > node.last_commit:
                self._record_commits(node, term, commit)
                if self.on_leader_commit is not None:
                    self.on_leader_commit(node.id)
            node.last_commit = commit
        if core.applied < node.last_applied:
            raise Violation("applied-monotonic",
                            f"n{node.id} applied went {node.last_applied} -> {core.applied}")
        if core.applied != node.last_applied and core.applied % 16 == 0 and node.kv is not None:
            digest = node.kv.store.state_hash()
            seen = self.state_hashes.setdefault(core.applied, (digest, node.id))
            if seen[0] != digest:
                raise Violation("state-hash",
                                f"n{node.id} and n{seen[1]} differ at applied {core.applied}")
        node.last_applied = core.applied

    def _record_commits(self, node: SimNode, term: int, commit: int) -> None:
        """Remember, for each newly committed index, the term of the leader committing it."""
        assert node.core is not None
        log = node.core.rn.raft.raft_log
        start = max(node.last_commit + 1, log.first_index(), self.max_committed + 1)
        for index in range(start, commit + 1):
            self.commit_terms.setdefault(index, (term, log.term(index) or 0))
        self.max_committed = max(self.max_committed, commit)

    def _check_leader_completeness(self, node: SimNode, term: int) -> None:
        """Leader Completeness (Raft paper 5.4): an entry committed in term T is in the log of
        every leader of a term above T. Checked when a leader is first seen, for the indexes
        its log still holds (compacted ones are covered by its snapshot)."""
        assert node.core is not None
        log = node.core.rn.raft.raft_log
        last = log.last_index()
        for index in range(max(log.first_index(), 1), self.max_committed + 1):
            committed_in, entry_term = self.commit_terms.get(index, (term, 0))
            if committed_in < term and (index > last or log.term(index) != entry_term):
                raise Violation(
                    "leader-completeness",
                    f"n{node.id} leads term {term} without the entry (term {entry_term}) at "
                    f"index {index} committed in term {committed_in}")

    # --- network ------------------------------------------------------------------------------

    def _send(self, src: int, incarnation: int, messages: list[Message]) -> None:
        node = self.nodes.get(src)
        if node is None or node.core is None or node.incarnation != incarnation:
            return
        for msg in messages:
            self.messages_sent += 1
            if self.bounce_after_vote and msg.type == MessageType.VOTE_RESP and not msg.reject:
                self.at(0, lambda: self._bounce(src))
            copies = 2 if self.rng.random() < self.net.duplicate else 1
            if msg.type == MessageType.PROP and not self.net.duplicate_proposals:
                copies = 1
            for _ in range(copies):
                if self.rng.random() < self.net.drop:
                    self._snapshot_result(msg, False)
                    continue
                delay = self.rng.randint(self.net.min_delay_ms, self.net.max_delay_ms)
                self.at(delay, partial(self._deliver, msg))

    def _bounce(self, node_id: int) -> None:
        """Crash right after a vote was granted, and restart at once."""
        node = self.nodes.get(node_id)
        if node is not None and node.core is not None:
            self.crash(node_id, torn=False)
            self.at(1, lambda: self.start(node_id))

    def _deliver(self, msg: Message) -> None:
        dst = self.nodes.get(msg.to)
        ok = (dst is not None and dst.core is not None
              and (msg.from_, msg.to) not in self.blocked)
        self._snapshot_result(msg, ok)
        if not ok or dst is None or dst.core is None:
            return
        if dst.paused:
            dst.parked.append(msg)
            return
        dst.core.receive([msg])
        self.drive(dst)

    def _snapshot_result(self, msg: Message, ok: bool) -> None:
        """The runtime reports a snapshot's fate to the sender (as the transport does)."""
        if msg.type != MessageType.SNAP:
            return
        src = self.nodes.get(msg.from_)
        if src is not None and src.core is not None:
            src.core.report_snapshot(msg.to, ok)
            self.at(0, lambda: self.drive(src))

    # --- partitions ---------------------------------------------------------------------------

    def partition(self, *groups: tuple[int, ...]) -> None:
        """Only nodes in the same group can talk (nodes in no group are isolated)."""
        where = {n: gi for gi, g in enumerate(groups) for n in g}
        self.blocked = {(a, b) for a in self.nodes for b in self.nodes
                        if a != b and (a not in where or where.get(a) != where.get(b))}
        self.trace(f"partition {' | '.join(','.join(map(str, g)) for g in groups)}")

    def block(self, links: set[tuple[int, int]]) -> None:
        self.blocked = set(links)
        self.trace(f"block {sorted(links)}")

    def heal(self) -> None:
        if self.blocked:
            self.trace("heal")
        self.blocked = set()

    # --- queries ------------------------------------------------------------------------------

    def leader(self) -> int:
        """The live, unpaused node that believes it leads at the highest term (0 if none)."""
        best = (0, 0)
        for node in self.nodes.values():
            if node.core is not None and not node.paused and node.core.is_leader:
                best = max(best, (node.core.rn.raft.term, node.id))
        return best[1]

    def snapshot_of(self, node_id: int) -> Snapshot:
        node = self.nodes[node_id]
        assert node.core is not None
        return node.core.storage.log.snapshot()
