"""``RawNode``: the public, thread-unsafe API of the consensus core (see docs/raft.md).

The caller drives it: ``tick``/``step``/``propose``/... change state; ``ready`` hands out a
numbered batch of work; ``advance`` acknowledges the last batch after it was persisted,
sent and applied. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from random import Random

import msgspec

from quorum.errors import InvalidConfChange, ProposalDropped, UsageError
from quorum.raft.config import Config
from quorum.raft.core import Raft
from quorum.raft.leader import flush_bcast, maybe_commit, reduce_uncommitted_size
from quorum.raft.status import Status, status_of
from quorum.raft.storage import LogStorage
from quorum.raft.types import (
    NONE,
    RESPONSE_MESSAGES,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Ready,
    Snapshot,
    SnapshotMetadata,
    StateRole,
)
from quorum.raft.validate import malformed_reason

MT = MessageType


def bootstrap_snapshot(voters: tuple[int, ...], learners: tuple[int, ...] = ()) -> Snapshot:
    """The snapshot every member of a brand-new cluster starts from (index 1, term 1).

    Apply it to each initial member's storage before creating the RawNode; nodes that join
    later start empty and receive a snapshot from the leader.
    """
    if not voters:
        raise UsageError("a cluster needs at least one voter")
    conf = ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))
    return Snapshot(metadata=SnapshotMetadata(index=1, term=1, conf_state=conf))


class RawNode:
    """One Raft node. Usable after any raised error unless the docstring says otherwise."""

    def __init__(self, config: Config, storage: LogStorage, rng: Random) -> None:
        """Raises ConfigError for an invalid config or inconsistent storage."""
        self.raft = Raft(config, storage, rng)
        self._prev_soft = self.raft.soft_state()
        self._prev_hard = self.raft.hard_state()
        self._number = 0
        self._outstanding = 0  # number of the last Ready handed out and not yet advanced
        self._stable_pending: tuple[int, int] | None = None  # last entry handed out
        self._snapshot_pending = 0  # index of the snapshot handed out

    # --- inputs ------------------------------------------------------------------------------

    def tick(self) -> None:
        self.raft.tick()

    def campaign(self) -> None:
        """Start an election now (pre-vote first when enabled); ignored if not promotable."""
        self.raft.step(Message(type=MT.HUP, from_=self.raft.id))

    def step(self, m: Message) -> None:
        """Feed one message from a peer. Never raises: bad input is dropped and counted."""
        reason = malformed_reason(m, self.raft.id)
        if reason is not None:
            self.raft.count("dropped." + reason)
            return
        if m.type in RESPONSE_MESSAGES and m.from_ not in self.raft.trk.progress:
            self.raft.count("dropped.unknown_peer")
            return
        try:
            self.raft.step(m)
        except ProposalDropped:
            self.raft.count("proposals_dropped")
        except InvalidConfChange:
            self.raft.count("dropped.invalid_conf_change")

    def propose(self, data: bytes) -> None:
        """Append ``data`` (leader) or forward it (follower).

        Raises NoLeader, NotLeader (forwarding disabled), TransferInProgress,
        UncommittedLogFull or ProposalDropped; nothing changed in that case.
        """
        self._propose(Entry(term=0, index=0, type=EntryType.NORMAL, data=data))

    def propose_batch(self, datas: Sequence[bytes]) -> None:
        """Append several entries in one step (the runtime's batch of one loop turn): all of
        them or, on the errors of :meth:`propose`, none."""
        if datas:
            entries = tuple(Entry(term=0, index=0, type=EntryType.NORMAL, data=d) for d in datas)
            try:
                self.raft.step(Message(type=MT.PROP, from_=self.raft.id, entries=entries))
            except ProposalDropped:
                self.raft.count("proposals_dropped")
                raise

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose a membership change. Besides the ``propose`` errors, raises
        ConfChangePending (a change is in flight, or no entry of this leader's term applied
        yet) and InvalidConfChange (the change can never apply to the current config)."""
        if not cc.leave_joint() and any(c.node_id <= 0 for c in cc.changes):
            raise InvalidConfChange("conf change names a node id <= 0")
        self._propose(Entry(term=0, index=0, type=EntryType.CONF_CHANGE, data=cc.encode()))

    def _propose(self, entry: Entry) -> None:
        try:
            self.raft.step(Message(type=MT.PROP, from_=self.raft.id, entries=(entry,)))
        except ProposalDropped:
            self.raft.count("proposals_dropped")
            raise

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed conf-change entry; returns the new configuration.

        Raises InvalidConfChange if ``cc`` cannot apply; the configuration is then unchanged
        (deterministically on every node, so the entry may be treated as a no-op).
        """
        return self.raft.apply_conf_change(cc)

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; the answer is a ReadState with ``context`` in a
        later Ready. Raises UsageError for an empty context, NoLeader if no leader is known."""
        if not context:
            raise UsageError("read_index needs a non-empty context")
        entry = Entry(term=0, index=0, data=context)
        self.raft.step(Message(type=MT.READ_INDEX, from_=self.raft.id, entries=(entry,)))

    def transfer_leader(self, target: int) -> None:
        """Hand leadership to ``target`` (ignored for self, learners and unknown nodes)."""
        self.raft.step(Message(type=MT.TRANSFER_LEADER, from_=target, term=0))

    def leader_lost(self, peer: int) -> None:
        """Outside evidence that ``peer``, this follower's leader, is gone (see Raft.leader_lost)."""
        self.raft.leader_lost(peer)

    def report_unreachable(self, peer: int) -> None:
        self._local_feedback(Message(type=MT.UNREACHABLE, from_=peer))

    def report_snapshot(self, peer: int, ok: bool) -> None:
        """The transport finished (``ok``) or failed to send a snapshot to ``peer``."""
        self._local_feedback(Message(type=MT.SNAP_STATUS, from_=peer, reject=not ok))

    def _local_feedback(self, m: Message) -> None:
        if self.raft.role == StateRole.LEADER and m.from_ in self.raft.trk.progress:
            self.raft.step(m)

    # --- outputs -----------------------------------------------------------------------------

    def has_ready(self) -> bool:
        r = self.raft
        log = r.raft_log
        return bool(
            r.bcast_pending
            or r.read_round_pending
            or r.msgs
            or r.early_msgs
            or r.read_states
            or r.soft_state() != self._prev_soft
            or r.hard_state() != self._prev_hard
            or log.unstable.next_entries()
            or log.unstable.next_snapshot() is not None
            or log.has_next_committed_entries()
        )

    def ready(self) -> Ready:
        """The next batch of work; call ``advance`` with it when done."""
        r = self.raft
        log = r.raft_log
        flush_bcast(r)
        self._number += 1
        rd = Ready(number=self._number)
        soft, hard = r.soft_state(), r.hard_state()
        if soft != self._prev_soft:
            rd.soft_state = soft
        if hard != self._prev_hard:
            rd.hard_state = hard
            if r.bug("forget_vote"):
                rd.hard_state = msgspec.structs.replace(hard, vote=NONE)  # planted bug
        rd.entries = log.unstable.next_entries()
        rd.snapshot = log.unstable.next_snapshot()
        rd.committed_entries = log.next_committed_entries()
        rd.read_states, r.read_states = r.read_states, []
        rd.messages, r.msgs = r.msgs, []
        rd.early_messages, r.early_msgs = r.early_msgs, []
        term_or_vote = hard.term != self._prev_hard.term or hard.vote != self._prev_hard.vote
        rd.must_sync = bool(rd.entries) or rd.snapshot is not None or term_or_vote
        self._accept(rd, hard)
        return rd

    def _accept(self, rd: Ready, hard: HardState) -> None:
        """Everything in ``rd`` is now in progress: not handed out again."""
        log = self.raft.raft_log
        log.unstable.accept_in_progress()
        if rd.entries:
            self._stable_pending = (rd.entries[-1].index, rd.entries[-1].term)
        if rd.snapshot is not None:
            self._snapshot_pending = rd.snapshot.metadata.index
        if rd.committed_entries:
            log.accept_applying(rd.committed_entries[-1].index)
            reduce_uncommitted_size(self.raft, rd.committed_entries)
        self._prev_soft = self.raft.soft_state()
        self._prev_hard = hard
        self._outstanding = rd.number

    def advance(self, rd: Ready) -> None:
        """Acknowledge ``rd`` (must be the last Ready handed out): its entries, snapshot and
        hard state are persisted, messages sent, committed entries applied.

        Raises UsageError otherwise (state unchanged)."""
        if self._outstanding == 0 or rd.number != self._outstanding:
            raise UsageError(
                f"advance({rd.number}) but the last Ready handed out is {self._outstanding or 'none'}"
            )
        self._outstanding = 0
        r = self.raft
        log = r.raft_log
        if self._snapshot_pending:
            log.stable_snap_to(self._snapshot_pending)
            r.applied_to(self._snapshot_pending)
            self._snapshot_pending = 0
        if self._stable_pending is not None:
            log.stable_to(*self._stable_pending)
            self._stable_pending = None
            self._on_persisted()
        if log.applying > log.applied:
            r.applied_to(log.applying)

    def _on_persisted(self) -> None:
        """The leader's own log now counts toward commitment up to what is durable."""
        r = self.raft
        if r.role != StateRole.LEADER:
            return
        own = r.trk.progress.get(r.id)
        persisted = r.raft_log.stable_last_index()
        if own is not None and own.maybe_update(persisted) and maybe_commit(r):
            r.bcast_pending = True

    # --- observation -------------------------------------------------------------------------

    def status(self) -> Status:
        return status_of(self.raft)

    @property
    def id(self) -> int:
        return self.raft.id
