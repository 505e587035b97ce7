"""An in-memory Raft cluster: N ``RawNode``s on a simulated :class:`Network`, driven in ticks.

Each node keeps two things that survive a crash, both in memory:

- its ``MemoryStorage``: the *persisted* Raft state (snapshot, log, hard state). The driving
  loop writes it exactly where a real runtime would fsync;
- its :class:`AppState`: the application, persisted synchronously with every apply (like a
  state machine that stores its applied index with its data). On restart the new ``RawNode``
  gets ``Config.applied = app.applied_index``, so committed entries above it are re-delivered
  and nothing is applied twice.

Everything else (the ``RawNode`` with its unstable log, messages in flight to it) is lost on a
crash. One function, :meth:`Cluster.handle_ready`, implements the Ready rule of docs/raft.md;
every observable effect is reported to an :class:`InvariantChecker` as it happens.

Client commands are entries whose data starts with an 8-byte command id; the application
applies each id once (duplicates from client retries are skipped, Raft thesis §6.3).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from random import Random

import msgspec

from quorum.errors import ProposalDropped
from quorum.raft import Config, MemoryStorage, RawNode, bootstrap_snapshot
from quorum.raft.harness.invariants import (
    InvariantChecker,
    InvariantViolation,
    LivenessViolation,
)
from quorum.raft.harness.network import RELIABLE, Faults, Network
from quorum.raft.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Ready,
    Snapshot,
    StateRole,
)

ID_BYTES = 8
LEADER_MESSAGES = frozenset({MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP})
CRASH_POINTS = ("before_persist", "after_persist", "after_send")


def command_id(data: bytes) -> int:
    """The client command id carried by an entry's data (0 for the leader's no-op)."""
    return int.from_bytes(data[:ID_BYTES], "big") if len(data) >= ID_BYTES else 0


class AppImage(msgspec.Struct, array_like=True):
    """What a snapshot of the application holds."""

    applied_index: int
    digest: int
    applied_ids: list[int]


@dataclass
class AppState:
    """The replicated application of one node; survives crashes (persisted on every apply)."""

    applied_index: int = 0
    digest: int = 0  # hash over the applied commands, in order
    applied_ids: set[int] = field(default_factory=set)
    conf_state: ConfState = field(default_factory=ConfState)
    record: bool = True
    applied: list[tuple[int, int, bytes]] = field(default_factory=list)  # (index, term, data)

    def apply(self, entry: Entry, cid: int) -> bool:
        """Apply one normal entry carrying command ``cid`` (``command_id(entry.data)``);
        False when it is a no-op or a duplicate command id."""
        self.applied_index = entry.index
        if self.record:
            self.applied.append((entry.index, entry.term, entry.data))
        if cid == 0 or cid in self.applied_ids:
            return False
        self.applied_ids.add(cid)
        self.digest = hash((self.digest, entry.data))
        return True

    def image(self) -> bytes:
        ids = sorted(self.applied_ids)
        return msgspec.msgpack.encode(AppImage(self.applied_index, self.digest, ids))

    def restore(self, snapshot: Snapshot) -> None:
        self.applied_index = snapshot.metadata.index
        if snapshot.data:  # the bootstrap snapshot carries no application image
            image = msgspec.msgpack.decode(snapshot.data, type=AppImage)
            self.digest = image.digest
            self.applied_ids = set(image.applied_ids)
        self.conf_state = snapshot.metadata.conf_state


@dataclass
class SimNode:
    """One member: persisted storage and app state, plus the volatile ``RawNode`` if alive."""

    id: int
    storage: MemoryStorage
    app: AppState
    raw: RawNode | None = None
    role: StateRole = StateRole.FOLLOWER
    leader_id: int = 0
    term: int = 0
    commit: int = 0
    leader_term_seen: int = 0  # the last term this node was reported leader in
    crash_at: str = ""  # an armed crash point inside the next handle_ready
    pending: Ready | None = None  # a Ready whose persistence is still in progress (slow disk)
    pending_until: int = 0  # the tick at which it completes
    restart_applied: int = 1  # Config.applied of the current RawNode
    restarts: int = 0

    @property
    def alive(self) -> bool:
        return self.raw is not None


@dataclass
class Proposal:
    """A client command the harness proposed and tracks until it is applied."""

    cid: int
    data: bytes
    node: int  # the node that accepted it
    tick: int
    acked_index: int = 0


@dataclass
class ClusterOptions:
    """Knobs of one cluster; ``config`` holds Config field overrides (election_ticks, ...)."""

    voters: int = 3
    learners: int = 0
    faults: Faults = RELIABLE
    config: dict[str, object] = field(default_factory=dict)
    bugs: frozenset[str] = frozenset()
    snapshot_every: int = 0  # compact a node's log when it holds this many applied entries
    record_applied: bool = True
    check: bool = True  # False skips the invariant checker (benchmarks only)
    # False: the application is volatile; a restarted node rebuilds it from its storage's
    # snapshot and re-applies the committed log above it (exercises log durability harder).
    durable_app: bool = True
    # Config.applied after a restart of a durable application: "snapshot" (the storage's
    # snapshot index: the core re-delivers committed entries above it, conf changes included,
    # and the application skips the ones it has), "applied" (the application's applied index:
    # the core replays the conf changes itself) or "mixed" (a coin flip per restart).
    restart_at: str = "snapshot"
    # Report a peer unreachable to a leader whose message was lost to a partition or a crash,
    # as a transport whose connection failed would (random loss is not reported).
    report_unreachable: bool = True
    # Slow disk: with this probability a Ready's persistence completes up to
    # ``disk_delay_ticks`` ticks later. Early messages go out at once; the node keeps receiving
    # messages meanwhile (the Ready is outstanding, as in an asynchronous-fsync runtime).
    disk_delay_rate: float = 0.0
    disk_delay_ticks: int = 0
    # With this probability a node that just sent a vote grant crashes and restarts at once
    # (Raft §5.2: the vote must have been persisted before the grant went out).
    bounce_after_vote_rate: float = 0.0
    # Planted runtime bug (tests only): send a Ready's messages before persisting it, so a
    # crash can forget a vote or an entry that was already acknowledged.
    unsafe_send_before_persist: bool = False
    max_settle_rounds: int = 100_000


class Cluster:
    """A deterministic in-memory cluster; a run is a pure function of ``seed`` and the calls."""

    def __init__(self, seed: int = 0, options: ClusterOptions | None = None, **kw: object) -> None:
        self.options = opts = options or ClusterOptions()
        if kw:
            self.options = opts = dataclasses.replace(opts, **kw)  # type: ignore[arg-type]
        self.seed = seed
        self.rng = Random(seed)
        self.net = Network(Random(self.rng.getrandbits(64)), opts.faults)
        self._disk_rng = Random(self.rng.getrandbits(64))
        self.checker = InvariantChecker()
        self.now_ticks = 0
        voter_ids = tuple(range(1, opts.voters + 1))
        learner_ids = tuple(range(opts.voters + 1, opts.voters + opts.learners + 1))
        self.ids = voter_ids + learner_ids
        boot = bootstrap_snapshot(voter_ids, learner_ids)
        self.nodes: dict[int, SimNode] = {}
        for node_id in self.ids:
            self.nodes[node_id] = node = self._bootstrap(node_id, boot)
            self._start(node)
        self.proposals: dict[int, Proposal] = {}
        self.cid_index: dict[int, int] = {}  # command id -> the index it was first applied at
        self._next_cid = 1
        self._next_read = 1
        self.read_results: list[tuple[int, bytes, int]] = []  # (node, context, index)
        self._feedback: list[tuple[Message, bool]] = []  # (message, delivered) for the sender
        self.on_apply: Callable[[int, Entry], None] | None = None
        # A targeted slow fsync: hold_if(node, ready) > 0 makes that Ready's persistence take
        # that many ticks (early messages go out; the node keeps stepping messages meanwhile).
        self.hold_if: Callable[[int, Ready], int] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def config_for(self, node_id: int, applied: int) -> Config:
        base = Config(id=node_id, applied=applied, planted_bugs=self.options.bugs)
        return dataclasses.replace(base, **self.options.config)  # type: ignore[arg-type]

    def _bootstrap(self, node_id: int, boot: Snapshot) -> SimNode:
        """A brand-new member: storage and application both start at the bootstrap snapshot."""
        storage = MemoryStorage()
        storage.apply_snapshot(boot)
        meta = boot.metadata
        app = AppState(meta.index, conf_state=meta.conf_state, record=self.options.record_applied)
        self.checker.snapshot_persisted(node_id, meta.index, meta.term)
        self.checker.snapshot_applied(node_id, meta.index)
        return SimNode(node_id, storage, app)

    def _start(self, node: SimNode) -> None:
        hard, _ = node.storage.initial_state()
        node.term, node.commit = hard.term, hard.commit
        node.role, node.leader_id, node.leader_term_seen = StateRole.FOLLOWER, 0, 0
        rng = Random(self.rng.getrandbits(64))
        node.raw = RawNode(self.config_for(node.id, node.restart_applied), node.storage, rng)
        self.checker.term_persisted(node.id, hard.term)

    def crash(self, node_id: int) -> None:
        """Stop ``node_id``: its RawNode, unpersisted state and undelivered inbox are lost."""
        node = self.nodes[node_id]
        node.raw = None
        node.role, node.leader_id = StateRole.FOLLOWER, 0
        node.crash_at, node.pending = "", None  # an unfinished fsync is lost
        self.net.drop_to(node_id)
        self.checker.forget_reads(node_id)

    def restart(self, node_id: int) -> None:
        """Start a crashed node again from what it persisted."""
        node = self.nodes[node_id]
        if node.alive:
            self.crash(node_id)
        node.restarts += 1
        node.restart_applied = node.storage.snapshot().metadata.index
        if self.options.durable_app:
            self.checker.restarted(node_id, node.app.applied_index)  # never goes back
            if self._restart_at_applied():
                node.restart_applied = node.app.applied_index
            else:  # the core re-delivers from its snapshot; the application skips what it has
                self.checker.restarted_from_scratch(node_id, node.restart_applied)
        else:
            self._rebuild_app(node)
        self._start(node)

    def _restart_at_applied(self) -> bool:
        mode = self.options.restart_at
        return mode == "applied" or (mode == "mixed" and self._disk_rng.random() < 0.5)

    def _rebuild_app(self, node: SimNode) -> None:
        """Volatile application: start over from the persisted snapshot (or the empty state)."""
        snapshot = node.storage.snapshot()
        fresh = AppState(conf_state=snapshot.metadata.conf_state, record=node.app.record)
        if not snapshot.is_empty():
            fresh.restore(snapshot)
        node.app = fresh
        self.checker.restarted_from_scratch(node.id, fresh.applied_index)

    def arm_crash(self, node_id: int, point: str) -> None:
        """Crash ``node_id`` inside its next Ready at ``point`` (one of CRASH_POINTS)."""
        assert point in CRASH_POINTS, point
        self.nodes[node_id].crash_at = point

    def alive_ids(self) -> list[int]:
        return [i for i in self.ids if self.nodes[i].alive]

    # --- the Ready rule ---------------------------------------------------------------------

    def handle_ready(self, node: SimNode) -> None:
        """Persist, send, apply, advance: the order docs/raft.md requires, in one place."""
        raw = node.raw
        assert raw is not None
        rd = raw.ready()
        self._send_all(rd.early_messages)  # may precede persistence (thesis §10.2.1)
        opts = self.options
        if opts.unsafe_send_before_persist:  # planted runtime bug: answers before the fsync
            sent, rd.messages = rd.messages, []
            self._send_all(sent)
            if self._maybe_bounce_after_vote(node, sent):
                return
        if self._crash_here(node, "before_persist"):
            return
        held = self.hold_if(node.id, rd) if self.hold_if is not None else 0
        if held:  # a targeted slow fsync
            node.pending, node.pending_until = rd, self.now_ticks + held
            return
        if opts.disk_delay_rate and self._disk_rng.random() < opts.disk_delay_rate:
            node.pending = rd
            node.pending_until = self.now_ticks + self._disk_rng.randint(1, opts.disk_delay_ticks)
            return
        self.finish_ready(node, rd)

    def finish_ready(self, node: SimNode, rd: Ready) -> None:
        """The part of the Ready rule after the early messages: persist, send, apply, advance."""
        raw = node.raw
        assert raw is not None
        node.pending = None
        self._persist(node, rd)
        if self._crash_here(node, "after_persist"):
            return
        self._send_all(rd.messages)
        if self._crash_here(node, "after_send") or self._maybe_bounce_after_vote(
            node, rd.messages
        ):
            return
        self._apply(node, rd.committed_entries)
        for state in rd.read_states:
            self.checker.read_answered(node.id, state.context, state.index)
            self.read_results.append((node.id, state.context, state.index))
        raw.advance(rd)
        self._maybe_compact(node)

    def _crash_here(self, node: SimNode, point: str) -> bool:
        if node.crash_at != point:
            return False
        self.crash(node.id)
        return True

    def _maybe_bounce_after_vote(self, node: SimNode, sent: list[Message]) -> bool:
        rate = self.options.bounce_after_vote_rate
        if not rate or not any(m.type == MessageType.VOTE_RESP and not m.reject for m in sent):
            return False
        if self._disk_rng.random() >= rate:
            return False
        self.restart(node.id)
        return True

    def _persist(self, node: SimNode, rd: Ready) -> None:
        check = self.checker if self.options.check else None
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            node.storage.apply_snapshot(rd.snapshot)
            node.app.restore(rd.snapshot)
            node.commit = max(node.commit, rd.snapshot.metadata.index)
            if check:
                meta = rd.snapshot.metadata
                check.snapshot_persisted(node.id, meta.index, meta.term)
                check.snapshot_applied(node.id, meta.index)
        if rd.entries:
            node.storage.append(rd.entries)
            if check:
                check.entries_persisted(node.id, rd.entries)
        if rd.hard_state is not None:
            node.storage.set_hard_state(rd.hard_state)
            node.term, node.commit = rd.hard_state.term, rd.hard_state.commit
            if check:
                check.term_persisted(node.id, node.term)
                check.commit_persisted(node.id, node.commit)
        if rd.soft_state is not None:
            node.role, node.leader_id = rd.soft_state.role, rd.soft_state.leader_id
        if node.role == StateRole.LEADER and node.leader_term_seen != node.term:
            node.leader_term_seen = node.term
            if check:
                check.leader_elected(node.id, node.term)

    def _apply(self, node: SimNode, entries: list[Entry]) -> None:
        check = self.checker if self.options.check else None
        raw = node.raw
        assert raw is not None
        app, cid_index, proposals, on_apply = node.app, self.cid_index, self.proposals, self.on_apply
        for entry in entries:  # the hot path of the benchmark: keep it lean
            if check:
                check.entry_applied(node.id, entry)
            if entry.index <= app.applied_index:  # re-delivered after a restart
                if entry.type == EntryType.CONF_CHANGE:  # the core rebuilds its config
                    raw.apply_conf_change(ConfChange.decode(entry.data))
                continue
            if entry.type == EntryType.CONF_CHANGE:
                app.conf_state = raw.apply_conf_change(ConfChange.decode(entry.data))
                app.applied_index = entry.index
            else:
                cid = command_id(entry.data)
                if app.apply(entry, cid):
                    if cid not in cid_index:
                        cid_index[cid] = entry.index
                    if cid in proposals:
                        self._maybe_ack(node, proposals[cid], entry.index)
            if on_apply is not None:
                on_apply(node.id, entry)

    def _maybe_ack(self, node: SimNode, proposal: Proposal, index: int) -> None:
        if proposal.node == node.id and not proposal.acked_index:
            proposal.acked_index = index  # the client hears back from its node
            self.checker.write_acked(index)

    def _maybe_compact(self, node: SimNode) -> None:
        every = self.options.snapshot_every
        if not every:
            return
        storage, applied = node.storage, node.app.applied_index
        held = storage.snapshot().metadata
        # Snapshot again once the membership moved past the held snapshot's: a node added
        # after it would refuse to install it (it is not a member there) and never catch up.
        stale_conf = applied > held.index and node.app.conf_state != held.conf_state
        if applied - storage.first_index() + 1 < every and not stale_conf:
            return
        storage.create_snapshot(applied, node.app.conf_state, node.app.image())
        storage.compact(applied)
        if self.options.check:
            self.checker.log_compacted(node.id, applied)

    # --- messages ---------------------------------------------------------------------------

    def _send_all(self, messages: Iterable[Message]) -> None:
        net, check = self.net, self.options.check
        for msg in messages:
            if check and msg.type in LEADER_MESSAGES:
                self.checker.leader_acted(msg.from_, msg.term)
            reachable = net.connected(msg.from_, msg.to)
            if not net.send(msg) and (not reachable or msg.type == MessageType.SNAP):
                self._feedback.append((msg, False))

    def _deliver(self, msg: Message) -> None:
        target = self.nodes.get(msg.to)
        if target is None or target.raw is None:
            self._feedback.append((msg, False))  # connection refused
            return
        target.raw.step(msg)
        if msg.type == MessageType.SNAP:
            self._feedback.append((msg, True))

    def _report_feedback(self) -> None:
        """Tell senders what a transport would: snapshot sent or failed (report_snapshot), peer
        unreachable because of a partition or a crash (report_unreachable, if enabled)."""
        self._feedback += [(msg, False) for msg in self.net.take_lost()]
        feedback, self._feedback = self._feedback, []
        for msg, ok in feedback:
            raw = self.nodes[msg.from_].raw if msg.from_ in self.nodes else None
            if raw is None:
                continue
            if msg.type == MessageType.SNAP:
                raw.report_snapshot(msg.to, ok)
            elif not ok and self.options.report_unreachable and msg.type in LEADER_MESSAGES:
                raw.report_unreachable(msg.to)

    # --- driving ----------------------------------------------------------------------------

    def settle(self) -> None:
        """Process Readies and deliver due messages until nothing is left to do this tick."""
        for _ in range(self.options.max_settle_rounds):
            if not self.turn():
                return
        raise InvariantViolation("settle", "messages kept flowing without any tick passing")

    def turn(self, one_ready: bool = False) -> bool:
        """One loop turn: every live node handles its Ready (only one each if ``one_ready``),
        then the messages due are delivered once. Returns False if nothing happened."""
        progressed = False
        for node_id in self.ids:
            node = self.nodes[node_id]
            if node.pending is not None and node.pending_until <= self.now_ticks:
                self.finish_ready(node, node.pending)
                progressed = True
            while node.raw is not None and node.pending is None and node.raw.has_ready():
                self.handle_ready(node)
                progressed = True
                if one_ready:
                    break
        due = self.net.due()
        for msg in due:
            self._deliver(msg)
        if self._feedback or self.net.has_lost():
            self._report_feedback()
            progressed = True
        return progressed or bool(due)

    def tick(self, ticks: int = 1) -> None:
        """Advance logical time: each live node ticks once, then the cluster settles."""
        for _ in range(ticks):
            self.now_ticks += 1
            self.net.advance()
            for node_id in self.ids:
                raw = self.nodes[node_id].raw
                if raw is not None:
                    raw.tick()
            self.settle()

    def run_until(self, predicate: Callable[[], bool], max_ticks: int) -> int:
        """Tick until ``predicate()`` holds; return the ticks used, or -1 past ``max_ticks``."""
        self.settle()
        for used in range(max_ticks + 1):
            if predicate():
                return used
            self.tick()
        return -1

    # --- leaders and client operations -------------------------------------------------------

    def leader(self) -> int | None:
        """The live node claiming leadership in the highest term (stale leaders lose)."""
        best: SimNode | None = None
        for node_id in self.ids:
            node = self.nodes[node_id]
            leads = node.alive and node.role == StateRole.LEADER
            if leads and (best is None or node.term > best.term):
                best = node
        return best.id if best else None

    def leaders(self) -> list[int]:
        return [i for i in self.alive_ids() if self.nodes[i].role == StateRole.LEADER]

    def wait_leader(self, max_ticks: int) -> int | None:
        self.run_until(lambda: self.leader() is not None, max_ticks)
        return self.leader()

    def propose(self, node_id: int | None = None, payload: bytes = b"") -> Proposal:
        """Propose a new client command at ``node_id`` (default: the leader).

        Raises ProposalDropped (or a subclass) if the node refuses it; nothing is tracked then.
        """
        target = node_id if node_id is not None else self.leader()
        raw = self.nodes[target].raw if target is not None else None
        if target is None or raw is None:
            raise ProposalDropped("no live node to propose at")
        cid = self._next_cid
        data = cid.to_bytes(ID_BYTES, "big") + payload
        raw.propose(data)
        self._next_cid += 1
        proposal = Proposal(cid, data, target, self.now_ticks)
        self.proposals[cid] = proposal
        return proposal

    def repropose(self, proposal: Proposal, node_id: int | None = None) -> None:
        """Retry ``proposal`` with the same command id (the application dedups it)."""
        target = node_id if node_id is not None else self.leader()
        raw = self.nodes[target].raw if target is not None else None
        if target is None or raw is None:
            raise ProposalDropped("no live node to propose at")
        raw.propose(proposal.data)
        proposal.node, proposal.tick = target, self.now_ticks

    def is_committed(self, cid: int) -> bool:
        """True once some node applied the command (applied implies committed)."""
        return any(cid in self.nodes[i].app.applied_ids for i in self.ids)

    def read_index(self, node_id: int) -> bytes:
        """Ask ``node_id`` for a ReadIndex; the answer lands in ``read_results``.

        Raises ProposalDropped (NoLeader, ...) when the node refuses the request.
        """
        raw = self.nodes[node_id].raw
        assert raw is not None
        context = b"read-%d" % self._next_read
        self._next_read += 1
        raw.read_index(context)  # answers come in a later Ready, so register afterwards
        self.checker.read_issued(node_id, context)
        return context

    def propose_conf_change(self, change: ConfChange, node_id: int | None = None) -> None:
        target = node_id if node_id is not None else self.leader()
        raw = self.nodes[target].raw if target is not None else None
        if target is None or raw is None:
            raise ProposalDropped("no live node to propose at")
        raw.propose_conf_change(change)

    def transfer_leader(self, target: int) -> None:
        leader = self.leader()
        raw = self.nodes[leader].raw if leader is not None else None
        if raw is not None:
            raw.transfer_leader(target)

    def one(self, payload: bytes, expected: int, max_ticks: int = 300, retry: bool = True) -> int:
        """Get ``payload`` committed and applied on ``expected`` nodes; return its index.

        Proposes at the current leader and, when ``retry``, proposes again (same command id)
        if it has not committed after two election timeouts. Raises LivenessViolation when
        ``max_ticks`` pass first.
        """
        retry_ticks = 2 * self.config_for(self.ids[0], 0).election_ticks
        proposal: Proposal | None = None
        for _ in range(max_ticks):
            if proposal is None:
                with contextlib.suppress(ProposalDropped):
                    proposal = self.propose(payload=payload)
            elif retry and self.now_ticks - proposal.tick >= retry_ticks:
                with contextlib.suppress(ProposalDropped):
                    self.repropose(proposal)
            index = self.cid_index.get(proposal.cid, 0) if proposal else 0
            if index and self.count_applied(index) >= expected:
                return index
            self.tick()
        raise LivenessViolation(
            "one", f"{payload!r} not applied on {expected} nodes within {max_ticks} ticks"
        )

    def count_applied(self, index: int) -> int:
        """How many nodes (alive or not) have applied ``index``."""
        return sum(self.nodes[i].app.applied_index >= index for i in self.ids)

    # --- views for tests --------------------------------------------------------------------

    def applied_index(self, node_id: int) -> int:
        return self.nodes[node_id].app.applied_index

    def applied_data(self, node_id: int) -> list[bytes]:
        """The non-empty normal entries ``node_id`` applied since it started (recorded)."""
        return [data for _, _, data in self.nodes[node_id].app.applied if data]

    def log_terms(self, node_id: int) -> list[tuple[int, int]]:
        """(index, term) of every entry in ``node_id``'s persisted log."""
        storage = self.nodes[node_id].storage
        lo, hi = storage.first_index(), storage.last_index()
        return [(e.index, e.term) for e in storage.entries(lo, hi + 1)] if hi >= lo else []

    def messages_sent(self, kind: MessageType) -> int:
        return self.net.sent[kind]

