"""NodeCore: the synchronous heart of a running node.

It owns the Raft RawNode, the node's storage and the state machine, and keeps the bookkeeping
between callers and the log: pending proposals (resolved when their entry is applied), batched
ReadIndex requests (resolved once the applied index reaches the read index), membership
addresses, automatic snapshots. It performs no I/O of its own beyond the storage calls made by
``persist``; the asyncio server and the simulator drive it the same way:

    core.drain()                       # feed queued ticks, messages, proposals, reads
    while core.has_ready():
        await process_ready(core, core.ready(), persist)   # quorum.node.ready

Every input is queued and fed to Raft only by ``drain()``, so nothing touches the RawNode or
the storage's memory while a Ready is being persisted (possibly in another thread), and the
proposals that arrive during an fsync naturally form the next batch (group commit).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import msgspec

from quorum.errors import (
    DiskFullError,
    LeaderChanged,
    NodeStopped,
    NotLeader,
    ProposalDropped,
    QuorumError,
    RequestTimeout,
)
from quorum.node import envelope
from quorum.node.envelope import (
    BATCH_MARKER,
    ConfChangeContext,
    MemberInfo,
    Proposal,
    ProposalBatch,
)
from quorum.node.statemachine import StateMachine
from quorum.node.storage import NodeStorage
from quorum.raft import Config, RawNode
from quorum.raft.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    Ready,
    Snapshot,
    SoftState,
    StateRole,
)

log = logging.getLogger("quorum.node")

# Snapshots smaller than this take the plain interval whatever snapshot_log_ratio says: at the
# snapshot encoder's few hundred MB/s, one costs a few ms.
SNAPSHOT_RATIO_FLOOR = 4 << 20


class Waiter(Protocol):
    """Receives the outcome of one request exactly once."""

    def resolve(self, value: Any) -> None: ...

    def fail(self, exc: BaseException) -> None: ...


class _Pending:
    __slots__ = ("deadline_tick", "waiter")

    def __init__(self, waiter: Waiter, deadline_tick: int) -> None:
        self.waiter = waiter
        self.deadline_tick = deadline_tick


class NodeCore:
    """One node's consensus bookkeeping. Not thread-safe: call it from one thread only.

    Raises nothing on peer input; caller misuse raises quorum.errors.UsageError.
    """

    def __init__(
        self,
        raft_config: Config,
        storage: NodeStorage,
        state_machine: StateMachine,
        rng: random.Random,
        send: Callable[[list[Message]], None],
        *,
        snapshot_entries: int = 10_000,
        snapshot_catchup_entries: int = 5_000,
        snapshot_log_ratio: float = 0.0,
        snapshot_ratio_floor: int = SNAPSHOT_RATIO_FLOOR,
        request_timeout_ticks: int = 50,
        members: tuple[MemberInfo, ...] = (),
        incarnation: int = 0,
        planted_bugs: frozenset[str] = frozenset(),
        max_batch_bytes: int = 256 * 1024,
    ) -> None:
        self.id = raft_config.id
        self.storage = storage
        self.sm = state_machine
        self._send = send
        # Counted in commands, not entries (an entry may carry a batch of commands): what
        # the interval bounds is the log a restart replays and a lagging follower is sent.
        self.snapshot_entries = snapshot_entries
        # Raft thesis 5.1.1: a snapshot costs its whole size, so once the state is large a
        # fixed interval makes every command pay O(state / interval) of encoding and disk
        # writes (quorum's MVCC history only grows until compacted). With a ratio r > 0 a
        # periodic snapshot also waits until the log applied since the previous snapshot
        # holds r times that snapshot's bytes, which bounds snapshot work to 1/r bytes per
        # logged byte and the log to about r states. Snapshots under snapshot_ratio_floor
        # bytes ignore the ratio (cheap, and small states keep the plain interval).
        self.snapshot_log_ratio = snapshot_log_ratio
        self.snapshot_ratio_floor = snapshot_ratio_floor
        self._log_bytes_applied = 0  # payload bytes of every applied entry
        self._log_bytes_at_snapshot = 0  # _log_bytes_applied at the newest snapshot
        self._snapshot_bytes = 0  # size of the newest snapshot's data (0: none yet)
        self._written_bytes = 0  # size of the last snapshot write_snapshot made durable
        # A state machine with apply_batch gets the proposals of one loop turn as ONE entry
        # (ProposalBatch), up to this many payload bytes per entry: the per-entry costs of
        # the log, the messages, Raft's step and apply are then paid once per batch.
        self._apply_batch: Callable[[int, list[bytes]], list[Any]] | None = getattr(
            state_machine, "apply_batch", None)
        self.max_batch_bytes = max_batch_bytes
        self._commands_applied = 0  # every applied entry counts 1, a batch of n counts n
        self._commands_at_snapshot = 0  # _commands_applied at the newest snapshot
        # (index, _commands_applied after it) per applied entry, oldest first: compaction
        # keeps snapshot_catchup_entries COMMANDS below a snapshot (not entries, which would
        # keep ~100x more log under load). Bounded: losing the oldest marks only makes
        # compaction keep more.
        self._marks: collections.deque[tuple[int, int]] = collections.deque(maxlen=1 << 16)
        self.snapshot_catchup_entries = snapshot_catchup_entries
        self.request_timeout_ticks = request_timeout_ticks
        self.members: dict[int, MemberInfo] = {m.id: m for m in members}
        self.on_members_changed: Callable[[dict[int, MemberInfo]], None] | None = None
        self.on_soft_state: Callable[[SoftState], None] | None = None
        self.on_applied: Callable[[int], None] | None = None
        # observers (simulator invariants): every entry applied, no-ops and conf changes too
        self.on_entry_applied: Callable[[Entry], None] | None = None
        # once per applied Ready (batch work such as waking watchers)
        self.on_ready_applied: Callable[[Ready], None] | None = None
        self.stopped = False
        # Test-only switches that break a rule on purpose (docs/verify.md): "stale_read"
        # answers reads from local state without a ReadIndex barrier; "stale_role_record"
        # proposes a change that repeats its node's role as that role, not as UPDATE_NODE.
        self.planted_bugs = planted_bugs
        # fsync=False trades durability for speed (documented as unsafe: a power loss can
        # lose acknowledged writes); tests of fsync-less modes only.
        self.fsync = True
        # Set while the disk is full: new writes are refused at once with DiskFullError (they
        # are certainly not in the log); the runtime keeps retrying the pending persist.
        self.disk_full = False
        # request ids embed the incarnation so a restarted node never mistakes an entry
        # proposed by its previous life for one of its new requests.
        self._next_request = incarnation << 32
        self._incarnation = incarnation
        self._ticks = 0
        self._now_tick = 0
        self._inbox: list[Message] = []
        self._proposals: list[tuple[bytes, _Pending]] = []
        self._leader_only: list[tuple[bytes, _Pending]] = []
        self._conf_changes: list[tuple[ConfChange, tuple[MemberInfo, ...], _Pending]] = []
        self._reads: list[_Pending] = []
        self._actions: list[Callable[[RawNode], None]] = []
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._read_batches: dict[bytes, list[_Pending]] = {}
        self._ready_reads: list[tuple[int, list[_Pending]]] = []  # (read index, waiters)
        self._next_read_ctx = 0
        self.leader_id = 0
        self.role = StateRole.FOLLOWER
        self.applied = 0
        self.snapshot_index = 0
        self.conf_state = ConfState()
        self._rng = rng
        self._snapshot_due = False
        # Set by an asyncio runtime: receives each captured snapshot to encode and write off
        # the event loop (it later calls write_snapshot in the persist thread, then
        # finish_snapshot here). None: snapshots are taken synchronously in advance().
        self.start_background_snapshot: Callable[[SnapshotJob], None] | None = None
        self.snapshot_in_flight: SnapshotJob | None = None
        self._recent = RecentRequests()
        self._boot(raft_config)

    # --- boot ------------------------------------------------------------------------------

    def _boot(self, raft_config: Config) -> None:
        """Restore the state machine from the newest snapshot; Raft re-delivers the rest."""
        snap = self.storage.log.snapshot()
        if not snap.is_empty():
            self._restore_snapshot(snap)
        cfg = dataclasses.replace(raft_config, applied=self.applied)
        self.rn = RawNode(cfg, self.storage.log, self._rng)
        # The live configuration: the storage's snapshot plus any change the core replayed.
        self.conf_state = self.rn.status().conf_state

    # --- inputs (queued; fed to Raft by drain) ------------------------------------------------

    def tick(self, n: int = 1) -> None:
        self._ticks += n

    def receive(self, messages: list[Message]) -> None:
        self._inbox.extend(messages)

    def propose(self, payload: bytes, waiter: Waiter, *, leader_only: bool = False) -> None:
        """Replicate ``payload``; the waiter gets the state machine's result when applied.

        ``leader_only``: the command encodes a decision only the current leader may take
        (lease expiry measured on its clock). It is appended only if this node is the leader
        when the proposal reaches Raft, never forwarded: a deposed leader resuming from a
        pause would otherwise forward a stale decision to the new leader, which would commit
        it. (A deposed leader's own appends never commit: followers refuse its old term.)"""
        if self._reject_if_stopped(waiter):
            return
        if self.disk_full:
            waiter.fail(DiskFullError("disk full: write refused (nothing was written)"))
            return
        queue = self._leader_only if leader_only else self._proposals
        queue.append((payload, _Pending(waiter, self._deadline())))

    def propose_conf_change(
        self, change: ConfChange, waiter: Waiter, members: tuple[MemberInfo, ...] = ()
    ) -> None:
        """Propose a membership change; ``members`` are addresses of nodes being added."""
        if self._reject_if_stopped(waiter):
            return
        self._conf_changes.append((change, members, _Pending(waiter, self._deadline())))

    def read(self, waiter: Waiter) -> None:
        """Linearizable read barrier: the waiter resolves (with the applied index) once the
        local state machine reflects every write committed before the call (ReadIndex)."""
        if self._reject_if_stopped(waiter):
            return
        if "stale_read" in self.planted_bugs:
            waiter.resolve(self.applied)
            return
        self._reads.append(_Pending(waiter, self._deadline()))

    def transfer_leader(self, target: int) -> None:
        self.call(lambda rn: rn.transfer_leader(target))

    def campaign(self) -> None:
        self.call(lambda rn: rn.campaign())

    def report_unreachable(self, peer: int) -> None:
        self.call(lambda rn: rn.report_unreachable(peer))

    def leader_lost(self, peer: int) -> None:
        """Evidence from the transport that ``peer`` is gone: if it is our leader, stop
        honouring its lease so the followers elect a successor after only the random part of
        the election timeout (Raft.leader_lost; ignored with lease-based reads)."""
        self.call(lambda rn: rn.leader_lost(peer))

    def report_snapshot(self, peer: int, ok: bool) -> None:
        self.call(lambda rn: rn.report_snapshot(peer, ok))

    def call(self, action: Callable[[RawNode], None]) -> None:
        """Queue an operation on the RawNode; it runs in the next ``drain`` (never while a
        Ready is being persisted, when the storage may be changing in another thread)."""
        self._actions.append(action)

    def on_disk_full(self) -> None:
        """The disk filled while persisting a Ready. Writes already in the log may still
        commit once space returns, so their callers learn only that the outcome is unknown;
        queued proposals never reached the log and fail with DiskFullError."""
        self.disk_full = True
        queued, self._proposals = self._proposals, []
        for _, p in queued:
            p.waiter.fail(DiskFullError("disk full: write refused (nothing was written)"))
        pending, self._pending = self._pending, OrderedDict()
        for p in pending.values():
            p.waiter.fail(RequestTimeout("disk full while persisting; outcome unknown"))

    def stop(self) -> None:
        """Fail every pending request with NodeStopped; further requests fail at once."""
        self.stopped = True
        exc = NodeStopped("node stopped")
        self._fail_all(exc, writes=True)

    def _reject_if_stopped(self, waiter: Waiter) -> bool:
        if self.stopped:
            waiter.fail(NodeStopped("node stopped"))
        return self.stopped

    def _deadline(self) -> int:
        return self._now_tick + self.request_timeout_ticks

    def _new_request_id(self) -> int:
        self._next_request += 1
        return self._next_request

    # --- feeding Raft ----------------------------------------------------------------------

    def drain(self) -> None:
        """Feed every queued input to the RawNode (proposals batched into one Ready)."""
        for _ in range(self._ticks):
            self.rn.tick()
            self._now_tick += 1
        if self._ticks:
            self._ticks = 0
            self._expire_requests()
        if self._actions:
            actions, self._actions = self._actions, []
            for action in actions:
                action(self.rn)
        if self._inbox:
            inbox, self._inbox = self._inbox, []
            for msg in inbox:
                self.rn.step(msg)
        if self._leader_only:
            self._feed_leader_only()
        if self._proposals:
            self._feed_proposals()
        if self._conf_changes:
            self._feed_conf_changes()
        if self._reads:
            self._feed_reads()

    def _feed_leader_only(self) -> None:
        """Runs after the inbox was stepped: a leader that just learned of a newer term has
        already stepped down here, so its stale decisions are refused, not forwarded."""
        proposals, self._leader_only = self._leader_only, []
        if self.rn.raft.role == StateRole.LEADER:
            self._proposals = proposals + self._proposals
            return
        for _, pending in proposals:
            pending.waiter.fail(NotLeader("not the leader: a leader-only command was refused",
                                          leader_id=self.rn.raft.lead))

    def _feed_proposals(self) -> None:
        """Everything proposed since the last drain goes to Raft in one step: as one entry
        per proposal, or packed into as few ProposalBatch entries as ``max_batch_bytes``
        allows when the state machine applies batches. Request ids are consecutive either
        way (a batch names only its first)."""
        proposals, self._proposals = self._proposals, []
        first = self._next_request + 1
        self._next_request += len(proposals)
        if self._apply_batch is None:
            datas = [envelope.encode(Proposal(self.id, first + i, payload))
                     for i, (payload, _) in enumerate(proposals)]
        else:
            datas = self._pack(first, [payload for payload, _ in proposals])
        try:
            self.rn.propose_batch(datas)
        except ProposalDropped as exc:
            for _, pending in proposals:
                pending.waiter.fail(exc)
            return
        for i, (_, pending) in enumerate(proposals):
            self._pending[first + i] = pending

    def _pack(self, first: int, payloads: list[bytes]) -> list[bytes]:
        """Entry data for ``payloads`` (request ids from ``first`` on), in order: runs of at
        most ``max_batch_bytes`` (a larger payload travels alone), a run of one as a plain
        Proposal."""
        datas: list[bytes] = []
        start, size = 0, 0
        for i, payload in enumerate(payloads):
            if i > start and size + len(payload) > self.max_batch_bytes:
                datas.append(self._entry_data(first + start, payloads[start:i]))
                start, size = i, 0
            size += len(payload)
        datas.append(self._entry_data(first + start, payloads[start:]))
        return datas

    def _entry_data(self, first: int, payloads: list[bytes]) -> bytes:
        if len(payloads) == 1:
            return envelope.encode(Proposal(self.id, first, payloads[0]))
        return envelope.encode(ProposalBatch(self.id, first, tuple(payloads)))

    def _feed_conf_changes(self) -> None:
        changes, self._conf_changes = self._conf_changes, []
        for change, members, pending in changes:
            req = self._new_request_id()
            ctx = envelope.encode(ConfChangeContext(self.id, req, members))
            cc = ConfChange(self._role_neutral(change).changes, change.transition, ctx)
            try:
                self.rn.propose_conf_change(cc)
            except QuorumError as exc:
                pending.waiter.fail(exc)
                continue
            self._pending[req] = pending

    def _role_neutral(self, change: ConfChange) -> ConfChange:
        """A single change that repeats the role its node has in this node's applied
        configuration (ADD_NODE of a voter, ADD_LEARNER of a learner) is meant to change no
        role: it records addresses (a member publishing itself, ``member update``). It is
        proposed as UPDATE_NODE, which changes no role whenever it commits. Proposed as is, it
        would apply whatever role the proposer saw: a learner publishing itself just after
        its promotion (committed on the leader, not yet applied here) was demoted again when
        its stale ADD_LEARNER committed after the promotion. Conf changes take effect in log
        order, not in the order their proposers saw the configuration, so a change that means
        "no role change" must not name a role."""
        if (len(change.changes) != 1 or change.transition != ConfChangeTransition.AUTO
                or "stale_role_record" in self.planted_bugs):
            return change
        single = change.changes[0]
        cs = self.conf_state
        if not ((single.type == ConfChangeType.ADD_NODE and single.node_id in cs.voters)
                or (single.type == ConfChangeType.ADD_LEARNER
                    and single.node_id in cs.learners)):
            return change
        update = ConfChangeSingle(ConfChangeType.UPDATE_NODE, single.node_id)
        return ConfChange((update,), change.transition, change.context)

    def _feed_reads(self) -> None:
        """One ReadIndex request serves every read queued since the last drain (batching)."""
        reads, self._reads = self._reads, []
        self._next_read_ctx += 1
        # The incarnation makes contexts unique across restarts: a leader's answer to a read
        # of this node's previous life must never release a new read at an old index.
        ctx = (self._incarnation.to_bytes(8, "big") + self._next_read_ctx.to_bytes(8, "big")
               + self.id.to_bytes(8, "big"))
        try:
            self.rn.read_index(ctx)
        except ProposalDropped as exc:  # no leader known: fail fast, the caller retries
            for p in reads:
                p.waiter.fail(exc)
            return
        self._read_batches[ctx] = reads

    # --- the Ready cycle (ordered by quorum.node.ready.process_ready) ---------------------------

    def has_ready(self) -> bool:
        return self.rn.has_ready()

    def ready(self) -> Ready:
        return self.rn.ready()

    def send(self, messages: list[Message]) -> None:
        if messages:
            self._send(messages)

    def persist(self, rd: Ready) -> None:
        """Make the Ready's snapshot, entries and hard state durable (may run in a thread)."""
        snap = rd.snapshot
        # idempotent: a persist retried after a full disk must not install the snapshot twice
        if (snap is not None and not snap.is_empty()
                and self.storage.log.first_index() <= snap.metadata.index):
            self.storage.apply_snapshot(snap)
        if rd.entries or rd.hard_state is not None:
            self.storage.save(rd.hard_state, rd.entries, rd.must_sync and self.fsync)

    def apply(self, rd: Ready) -> None:
        """Apply a persisted Ready: soft state, snapshot, committed entries, read states."""
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state)
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            self._restore_snapshot(rd.snapshot)
        for entry in rd.committed_entries:
            self._apply_entry(entry)
        for rs in rd.read_states:
            batch = self._read_batches.pop(rs.context, None)
            if batch:
                self._ready_reads.append((rs.index, batch))
        self._release_reads()
        if self.on_ready_applied is not None:
            self.on_ready_applied(rd)

    def advance(self, rd: Ready) -> None:
        self.rn.advance(rd)
        self._maybe_snapshot()

    # --- applying --------------------------------------------------------------------------

    def _apply_entry(self, entry: Entry) -> None:
        # Invariant: entries arrive in log order, each exactly once (applied < entry.index).
        if entry.index <= self.applied:
            return
        if self.on_entry_applied is not None:
            self.on_entry_applied(entry)
        if entry.type == EntryType.CONF_CHANGE:
            self._apply_conf_change(entry)
        elif entry.data:
            if entry.data[0] == BATCH_MARKER:
                self._apply_batch_entry(entry)
            else:
                self._apply_proposal(entry)
        self._commands_applied += 1
        self._log_bytes_applied += len(entry.data)
        self._marks.append((entry.index, self._commands_applied))
        self.applied = entry.index
        if self.on_applied is not None:
            self.on_applied(entry.index)

    def _apply_proposal(self, entry: Entry) -> None:
        try:
            prop = envelope.decode_proposal(entry.data)
        except Exception:  # an entry we cannot decode is a bug elsewhere; never crash on it
            log.error("undecodable entry at index %d skipped", entry.index)
            return
        if self._recent.seen(prop.origin, prop.request_id):
            return  # a proposal delivered twice (a duplicated forward): applied once already
        try:
            result: Any = self.sm.apply(entry.index, prop.payload)
            failed: BaseException | None = None
        except QuorumError as exc:
            result, failed = None, exc
        if prop.origin != self.id:
            return
        pending = self._pending.pop(prop.request_id, None)
        if pending is None:
            return
        if failed is not None:
            pending.waiter.fail(failed)
        else:
            pending.waiter.resolve(result)

    def _apply_batch_entry(self, entry: Entry) -> None:
        """Apply a ProposalBatch: its commands in order, all at the entry's index. The
        duplicate filter works per command (a batch delivered twice applies once), so a
        batch may apply only some of its commands."""
        try:
            batch = envelope.decode_batch(entry.data)
        except Exception:  # as in _apply_proposal: a bug elsewhere, never crash on it
            log.error("undecodable batch entry at index %d skipped", entry.index)
            return
        origin, first, payloads = batch.origin, batch.first_request_id, batch.payloads
        self._commands_applied += len(payloads) - 1  # the entry itself counts 1
        fresh = self._recent.fresh(origin, first, len(payloads))
        if not fresh:
            return
        commands = list(payloads) if len(fresh) == len(payloads) else [payloads[i] for i in fresh]
        results = self._apply_commands(entry.index, commands)
        if origin != self.id:
            return
        pending_of = self._pending
        for i, result in zip(fresh, results):
            pending = pending_of.pop(first + i, None)
            if pending is None:
                continue
            if isinstance(result, QuorumError):
                pending.waiter.fail(result)
            else:
                pending.waiter.resolve(result)

    def _apply_commands(self, index: int, commands: list[bytes]) -> list[Any]:
        """One result per command, a QuorumError in place of a failed one. A state machine
        without apply_batch (a log written for another one) gets one apply call each."""
        if self._apply_batch is not None:
            return self._apply_batch(index, commands)
        results: list[Any] = []
        for command in commands:
            try:
                results.append(self.sm.apply(index, command))
            except QuorumError as exc:
                results.append(exc)
        return results

    def _apply_conf_change(self, entry: Entry) -> None:
        cc = ConfChange.decode(entry.data)
        before = _members_of(self.conf_state)
        self.conf_state = self.rn.apply_conf_change(cc)
        if _members_of(self.conf_state) - before:
            # A node that joins empty catches up from a snapshot, and Raft ignores a snapshot
            # whose configuration does not name the receiver: snapshot right after the
            # change (in advance), so a new member never waits for the next periodic one.
            self._snapshot_due = True
        ctx = envelope.decode_context(cc.context)
        for m in ctx.members:
            self.members[m.id] = m
        self._sync_members()
        if ctx.origin == self.id:
            pending = self._pending.pop(ctx.request_id, None)
            if pending is not None:
                pending.waiter.resolve(self.conf_state)

    def _sync_members(self) -> None:
        """Keep the address book equal to the configuration (learner flags included)."""
        cs = self.conf_state
        voters = set(cs.voters) | set(cs.voters_outgoing)
        learners = set(cs.learners) | set(cs.learners_next)
        current = voters | learners
        for mid in list(self.members):
            if mid not in current:
                del self.members[mid]
        for mid in current:
            m = self.members.get(mid, MemberInfo(id=mid))
            self.members[mid] = MemberInfo(
                m.id, m.name, m.peer_url, m.client_url, m.etcd_url, mid in learners - voters
            )
        if self.on_members_changed is not None:
            self.on_members_changed(dict(self.members))

    def _restore_snapshot(self, snap: Snapshot) -> None:
        env = envelope.decode_snapshot(snap.data)
        self.sm.restore([env.state])
        self.members = {m.id: m for m in env.members}
        self._recent = RecentRequests.restore(env.recent)
        self.conf_state = snap.metadata.conf_state
        self.applied = snap.metadata.index
        self.snapshot_index = snap.metadata.index
        self._commands_at_snapshot = self._commands_applied
        self._log_bytes_at_snapshot = self._log_bytes_applied
        self._snapshot_bytes = len(snap.data)
        self._marks.clear()  # the log below the snapshot is gone
        if self.on_members_changed is not None:
            self.on_members_changed(dict(self.members))

    def _maybe_snapshot(self) -> None:
        """Snapshot every ``snapshot_entries`` applied entries (keeping a catch-up tail), and
        after a membership change that added a node. With ``start_background_snapshot`` set
        (the asyncio runtime) only the capture happens here; the rest runs in a thread."""
        if self.snapshot_in_flight is not None:
            return  # one at a time; the next check comes at the next advance
        due = self._snapshot_due and self.applied > self.snapshot_index
        if not (due or self._periodic_snapshot_due()):
            return
        self._snapshot_due = False
        if self.start_background_snapshot is None:
            self.take_snapshot()
            return
        job = self.capture_snapshot()
        self.snapshot_in_flight = job
        self.start_background_snapshot(job)

    def _periodic_snapshot_due(self) -> bool:
        """``snapshot_entries`` commands since the newest snapshot and, when that snapshot
        is at least ``snapshot_ratio_floor`` bytes, ``snapshot_log_ratio`` times its size
        of log applied since (see __init__)."""
        if self.snapshot_entries <= 0 or self.applied <= self.snapshot_index:
            return False
        if self._commands_applied - self._commands_at_snapshot < self.snapshot_entries:
            return False
        if self.snapshot_log_ratio <= 0 or self._snapshot_bytes < self.snapshot_ratio_floor:
            return True
        logged = self._log_bytes_applied - self._log_bytes_at_snapshot
        return logged >= self.snapshot_log_ratio * self._snapshot_bytes

    def take_snapshot(self) -> Snapshot:
        """Capture, encode, write and install a snapshot now (synchronous path: simulator,
        tests, and state machines driven without a runtime thread)."""
        job = self.capture_snapshot()
        snap = self.write_snapshot(job, job.encode())
        self.finish_snapshot(job)
        return snap

    def capture_snapshot(self) -> SnapshotJob:
        """A point-in-time view of the applied state, cheap enough for the event loop.

        State machines that declare ``snapshot_captures_state`` (quorum's KV store: its
        ``snapshot()`` copies pointers and encodes lazily) are encoded later, possibly in
        another thread while applying goes on; any other state machine's chunks are
        materialized here, since a lazy iterator might read state that applying changes."""
        chunks: Iterable[bytes] = self.sm.snapshot()
        if not getattr(self.sm, "snapshot_captures_state", False):
            chunks = list(chunks)
        return SnapshotJob(self.applied, self.conf_state, tuple(self.members.values()),
                           self._recent.dump(), chunks, self._commands_applied,
                           self._log_bytes_applied)

    def write_snapshot(self, job: SnapshotJob, data: bytes) -> Snapshot:
        """Make the encoded snapshot durable (may run in the persist thread: it writes the WAL
        marker, so it must never run concurrently with ``persist``). The storage writes a
        temp file, fsyncs and renames it: a crash midway leaves the previous snapshot and the
        WAL as they were. Raises SnapshotOutOfDate (a newer snapshot was installed from the
        leader meanwhile), DiskFullError, FatalIOError."""
        snap = self.storage.create_snapshot(job.index, job.conf_state, data)
        # read by finish_snapshot, which runs after this returns (one snapshot in flight)
        self._written_bytes = len(data)
        return snap

    def finish_snapshot(self, job: SnapshotJob, written: bool = True) -> None:
        """On the core's thread, after ``write_snapshot`` (``written``) or once the job was
        abandoned: advance the snapshot index and compact the log, keeping a catch-up tail.
        Invariant: compaction never passes the newest durable snapshot."""
        if self.snapshot_in_flight is job:
            self.snapshot_in_flight = None
        if not written or job.index <= self.snapshot_index:
            return  # abandoned, or a newer snapshot was installed meanwhile
        self.snapshot_index = job.index
        self._commands_at_snapshot = max(self._commands_at_snapshot, job.commands)
        self._log_bytes_at_snapshot = max(self._log_bytes_at_snapshot, job.log_bytes)
        self._snapshot_bytes = self._written_bytes
        compact_to = self._catchup_start(job)
        if compact_to > self.storage.log.first_index():
            self.storage.compact(compact_to)

    def _catchup_start(self, job: SnapshotJob) -> int:
        """The newest index at or below the snapshot that still leaves at least
        ``snapshot_catchup_entries`` commands above it (0: none). With one command per entry
        this is ``job.index - snapshot_catchup_entries``, as before batches existed."""
        target = job.commands - self.snapshot_catchup_entries
        marks = self._marks
        compact_to = 0
        while marks and marks[0][1] <= target and marks[0][0] <= job.index:
            compact_to = marks.popleft()[0]
        return compact_to

    # --- reads, leadership, timeouts -------------------------------------------------------

    def _release_reads(self) -> None:
        if not self._ready_reads:
            return
        still: list[tuple[int, list[_Pending]]] = []
        for index, batch in self._ready_reads:
            if index <= self.applied:
                for p in batch:
                    p.waiter.resolve(self.applied)
            else:
                still.append((index, batch))
        self._ready_reads = still

    def _on_soft_state(self, ss: SoftState) -> None:
        changed = ss.leader_id != self.leader_id
        self.leader_id, self.role = ss.leader_id, ss.role
        if changed and self._pending:
            # A pending write may still commit under the new leader: its outcome is unknown.
            self._fail_all(LeaderChanged("leader changed; outcome unknown"), writes=True)
        elif changed:
            self._fail_all(LeaderChanged("leader changed"), writes=False)
        if self.on_soft_state is not None:
            self.on_soft_state(ss)

    def _fail_all(self, exc: BaseException, *, writes: bool) -> None:
        if writes:
            pending, self._pending = self._pending, OrderedDict()
            for p in pending.values():
                p.waiter.fail(exc)
            for _, p in self._proposals + self._leader_only:
                p.waiter.fail(exc)
            for _, _, p in self._conf_changes:
                p.waiter.fail(exc)
            self._proposals, self._leader_only, self._conf_changes = [], [], []
        batches = list(self._read_batches.values()) + [b for _, b in self._ready_reads]
        self._read_batches, self._ready_reads = {}, []
        for batch in batches:
            for p in batch:
                p.waiter.fail(exc)

    def _expire_requests(self) -> None:
        """Fail requests past their deadline (insertion order = deadline order)."""
        now = self._now_tick
        while self._pending:
            req, p = next(iter(self._pending.items()))
            if p.deadline_tick > now:
                break
            del self._pending[req]
            p.waiter.fail(RequestTimeout("request timed out; outcome unknown"))
        for ctx, batch in list(self._read_batches.items()):
            if batch and batch[0].deadline_tick <= now:
                del self._read_batches[ctx]
                for p in batch:
                    p.waiter.fail(RequestTimeout("read timed out"))
        waiting = []
        for index, batch in self._ready_reads:  # read index known, not yet applied here
            if batch and batch[0].deadline_tick <= now:
                for p in batch:
                    p.waiter.fail(RequestTimeout("read timed out waiting for apply"))
            else:
                waiting.append((index, batch))
        self._ready_reads = waiting

    # --- introspection ---------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.role == StateRole.LEADER

    def pending_requests(self) -> int:
        return len(self._pending) + len(self._proposals) + len(self._reads)


def _members_of(cs: ConfState) -> set[int]:
    return {*cs.voters, *cs.learners, *cs.voters_outgoing, *cs.learners_next}


def bootstrap_data(members: tuple[MemberInfo, ...], state_machine: StateMachine,
                   recent: tuple[tuple[int, tuple[int, ...]], ...] = ()) -> bytes:
    """Snapshot data: the members' addresses, the state machine's image and the duplicate
    filter. With no filter it is what every member of a new cluster starts from."""
    return _encode_snapshot(members, state_machine.snapshot(), recent)


def _encode_snapshot(members: tuple[MemberInfo, ...], chunks: Iterable[bytes],
                     recent: tuple[tuple[int, tuple[int, ...]], ...],
                     between_chunks: Callable[[], None] | None = None) -> bytes:
    """The msgpack form of ``SnapshotEnvelope(FORMAT_VERSION, members, state, recent)``
    (array_like: a 4-element array) written piece by piece, so the state (megabytes) is
    copied once, by the final join, instead of joined and then copied again by the encoder.
    Byte-identical to encoding the struct (tests/node/test_snapshot_encoding.py)."""
    ordered = tuple(sorted(members, key=lambda m: m.id))
    parts: list[bytes] = []
    size = 0
    for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if between_chunks is not None:
            between_chunks()
    enc = _SNAPSHOT_ENCODER.encode
    head = b"\x94" + enc(envelope.FORMAT_VERSION) + enc(ordered) + _msgpack_bin_header(size)
    return b"".join([head, *parts, enc(recent)])


def _msgpack_bin_header(size: int) -> bytes:
    """The header msgpack (and msgspec) writes before ``size`` bytes of binary data."""
    if size < 1 << 8:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 1 << 16:
        return b"\xc5" + size.to_bytes(2, "big")
    if size < 1 << 32:
        return b"\xc6" + size.to_bytes(4, "big")
    raise ValueError(f"snapshot state of {size} bytes exceeds msgpack's 4 GiB binary limit")


# Used only for snapshot envelopes (one snapshot is encoded at a time, possibly in a thread).
_SNAPSHOT_ENCODER = msgspec.msgpack.Encoder()


@dataclasses.dataclass(frozen=True)
class SnapshotJob:
    """A captured snapshot waiting to be encoded and written: everything in it is a value
    that applying later entries does not change (see NodeCore.capture_snapshot)."""

    index: int
    conf_state: ConfState
    members: tuple[MemberInfo, ...]
    recent: tuple[tuple[int, tuple[int, ...]], ...]
    chunks: Iterable[bytes]
    commands: int = 0  # NodeCore's applied-command count at the capture
    log_bytes: int = 0  # NodeCore's applied log bytes at the capture

    def encode(self, between_chunks: Callable[[], None] | None = None) -> bytes:
        """The snapshot data (safe in another thread; one call per job: ``chunks`` may be a
        one-shot iterator). ``between_chunks`` runs after each state chunk (a thread passes
        a yield of the GIL, so the event loop keeps its turns during a long encode)."""
        return _encode_snapshot(self.members, self.chunks, self.recent, between_chunks)


class RecentRequests:
    """The request ids applied most recently per origin node: replicated state (derived from
    the log alone, carried in snapshots), so every replica skips the same duplicates.

    A proposal forwarded by a follower and delivered twice to the leader is appended twice;
    both copies commit. The second is skipped when applied. Bound: the last ``window``
    requests of each origin (a copy arriving later than that would apply again)."""

    def __init__(self, window: int = 4096) -> None:
        self.window = window
        self._ids: dict[int, set[int]] = {}
        self._order: dict[int, collections.deque[int]] = {}

    def seen(self, origin: int, request_id: int) -> bool:
        """True if already applied; otherwise record it and return False."""
        ids = self._ids.get(origin)
        if ids is None:  # (not setdefault: that builds a set and a deque per applied entry)
            ids = self._ids[origin] = set()
            self._order[origin] = collections.deque()
        elif request_id in ids:
            return True
        order = self._order[origin]
        ids.add(request_id)
        order.append(request_id)
        if len(order) > self.window:
            ids.discard(order.popleft())
        return False

    def fresh(self, origin: int, first: int, count: int) -> list[int]:
        """``seen`` for request ids ``first .. first + count - 1`` of one batch: the
        positions not applied before (each is recorded now). Same final state as calling
        ``seen`` for each in order: the ids of a batch are distinct, so trimming the window
        once at the end evicts the same ids."""
        ids = self._ids.get(origin)
        if ids is None:
            ids = self._ids[origin] = set()
            self._order[origin] = collections.deque()
        order = self._order[origin]
        out: list[int] = []
        for i in range(count):
            request_id = first + i
            if request_id not in ids:
                ids.add(request_id)
                order.append(request_id)
                out.append(i)
        while len(order) > self.window:
            ids.discard(order.popleft())
        return out

    def dump(self) -> tuple[tuple[int, tuple[int, ...]], ...]:
        return tuple((origin, tuple(self._order[origin])) for origin in sorted(self._order))

    @classmethod
    def restore(cls, dumped: tuple[tuple[int, tuple[int, ...]], ...]) -> RecentRequests:
        recent = cls()
        for origin, ids in dumped:
            for request_id in ids:
                recent.seen(origin, request_id)
        return recent
