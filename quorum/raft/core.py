"""``Raft``: the protocol state machine (roles, terms, the log, membership).

The role-specific rules live in leaf modules that operate on a ``Raft``:
``election`` (campaigns, votes, candidates), ``leader`` (replication, commit, ReadIndex,
transfer) and ``follower`` (append/heartbeat/snapshot handling). This module holds the state,
the role transitions, ticking, and ``step`` which first applies the term rules of Raft §5.1
(and the pre-vote/lease exceptions of thesis §9.6) and then dispatches on the role.

Errors: ``step`` raises a ``ProposalDropped`` subclass only for proposals (PROP) and
InvalidConfChange for conf changes that can never apply; everything else a peer sends is
dropped or answered and counted in ``counters``.
"""

from __future__ import annotations

from collections import Counter
from random import Random

import msgspec

from quorum.errors import ConfigError, InvalidConfChange, SnapshotTemporarilyUnavailable
from quorum.raft import election, follower, leader
from quorum.raft.confchange import Changer, TrackerConfig, apply_to_tracker, restore
from quorum.raft.config import Config, ReadOnlyOption
from quorum.raft.log import RaftLog
from quorum.raft.progress import ProgressTracker
from quorum.raft.readonly import ReadOnly
from quorum.raft.storage import LogStorage
from quorum.raft.types import (
    NONE,
    ConfChange,
    ConfChangeTransition,
    ConfState,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    SoftState,
    StateRole,
)

MT = MessageType

# Messages a leader may send before its Ready is persisted (thesis §10.2.1): they depend on
# nothing the leader has not made durable yet. Pre-votes change nothing anywhere.
_EARLY_FROM_LEADER = frozenset({MT.APP, MT.HEARTBEAT, MT.SNAP, MT.TIMEOUT_NOW, MT.READ_INDEX_RESP})


class Raft:
    """One node's protocol state. Driven by ``RawNode``; not thread-safe."""

    def __init__(self, config: Config, storage: LogStorage, rng: Random) -> None:
        config.validate()
        self.config = config
        self.id = config.id
        self.rng = rng
        self.raft_log = RaftLog(storage, config.max_committed_size_per_ready)
        self.trk = ProgressTracker(config.max_inflight_msgs, config.max_inflight_bytes)
        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.role = StateRole.FOLLOWER
        self.is_learner = False
        self.msgs: list[Message] = []  # must wait until the current Ready is persisted
        self.early_msgs: list[Message] = []  # may be sent before persistence
        self.read_states: list[ReadState] = []
        self.read_only = ReadOnly()
        self.pending_read_index: list[Message] = []  # wait for a commit in our own term
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_ticks
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.bcast_pending = False  # leader: appends deferred until the next Ready
        self.read_round_pending = False  # leader: a ReadIndex heartbeat round is due
        self.ticks = 0  # local logical clock (heartbeats carry their send tick)
        self.startup_quiet_ticks = 0  # ignore vote requests until ticks reaches this
        # leader: per voter, 1 + the send tick of the newest heartbeat it acknowledged
        self.heartbeat_acks: dict[int, int] = {}
        self.counters: Counter[str] = Counter()
        self._load(storage, config)

    def _load(self, storage: LogStorage, config: Config) -> None:
        hard_state, conf_state = storage.initial_state()
        if conf_state != ConfState():
            self.switch_to_config(restore(self.trk, conf_state, self.raft_log.last_index()))
        if not hard_state.is_empty():
            self._load_hard_state(hard_state)
            if config.read_only_option == ReadOnlyOption.LEASE_BASED:
                # A lease holder counts on us not voting for another leader for an election
                # timeout after its heartbeat; a restart must not erase that promise.
                self.startup_quiet_ticks = config.election_ticks
        if self.term < self.raft_log.last_term():
            # Invariant: current term >= every log term. A bootstrap snapshot may carry a
            # term the hard state never saw; adopting it keeps the first election's term
            # above every existing entry (so "an entry of my term" really is mine).
            self.term, self.vote = self.raft_log.last_term(), NONE
        if config.applied > 0:
            if config.applied > self.raft_log.committed:
                raise ConfigError(
                    f"applied {config.applied} is beyond the persisted commit "
                    f"{self.raft_log.committed}."
                )
            self.raft_log.applied_to(max(config.applied, self.raft_log.applied))
        self._replay_applied_conf_changes()
        self.become_follower(self.term, NONE)

    def _replay_applied_conf_changes(self) -> None:
        """Rebuild the configuration as of ``applied``.

        Storage reports the ConfState of its snapshot; conf changes applied after the
        snapshot (up to ``Config.applied``) are not handed out again, so they are replayed
        here. A change that cannot apply failed identically when first applied: skipped.
        """
        log = self.raft_log
        # Entries up to the snapshot are already part of its ConfState (a storage may keep
        # some entries below its snapshot to help lagging followers).
        first, applied = max(log.first_index(), self._snapshot_index() + 1), log.applied
        if applied < first:
            return
        for entry in log.slice(first, applied + 1):
            if entry.type != EntryType.CONF_CHANGE:
                continue
            try:
                self.apply_conf_change(ConfChange.decode(entry.data))
            except InvalidConfChange:
                self.count("ignored.invalid_conf_change_on_replay")

    def _snapshot_index(self) -> int:
        try:
            return self.raft_log.storage.snapshot().metadata.index
        except SnapshotTemporarilyUnavailable:
            return self.raft_log.first_index() - 1

    def _load_hard_state(self, hard_state: HardState) -> None:
        log = self.raft_log
        if not log.committed <= hard_state.commit <= log.last_index():
            raise ConfigError(
                f"persisted commit {hard_state.commit} is outside "
                f"[{log.committed}, {log.last_index()}]: storage is inconsistent."
            )
        log.committed = hard_state.commit
        self.term = hard_state.term
        self.vote = hard_state.vote

    # --- observable state --------------------------------------------------------------------

    def soft_state(self) -> SoftState:
        return SoftState(leader_id=self.lead, role=self.role)

    def hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.raft_log.committed)

    def bug(self, name: str) -> bool:
        return self.config.bug(name)

    # --- sending -----------------------------------------------------------------------------

    def send(self, m: Message) -> None:
        """Queue ``m``; fill in the sender and (except for votes/forwards) our term."""
        updates: dict[str, object] = {}
        if m.from_ == NONE:
            updates["from_"] = self.id
        if m.type not in election.VOTE_TYPES and m.type not in (MT.PROP, MT.READ_INDEX):
            updates["term"] = self.term
        if updates:
            m = msgspec.structs.replace(m, **updates)
        early = m.type == MT.PRE_VOTE or (
            self.role == StateRole.LEADER and m.type in _EARLY_FROM_LEADER
        )
        (self.early_msgs if early else self.msgs).append(m)

    def count(self, reason: str) -> None:
        self.counters[reason] += 1

    # --- role transitions --------------------------------------------------------------------

    def reset(self, term: int) -> None:
        """Common part of every role change: new term clears the vote (§5.1)."""
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.reset_randomized_election_timeout()
        self.lead_transferee = NONE
        self.trk.reset_votes()
        next_index = self.raft_log.last_index() + 1
        for node_id, pr in self.trk.visit():
            pr.reset(next_index)
            if node_id == self.id:
                # Only what the runtime persisted counts for our own commitment vote.
                pr.match = self.raft_log.stable_last_index()
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.read_only = ReadOnly()
        self.pending_read_index = []
        self.heartbeat_acks = {}

    def reset_randomized_election_timeout(self) -> None:
        """Timeout in [election_ticks, 2*election_ticks) breaks split votes (§5.2)."""
        ticks = self.config.election_ticks
        self.randomized_election_timeout = ticks + self.rng.randrange(ticks)

    def become_follower(self, term: int, lead: int) -> None:
        self.reset(term)
        self.lead = lead
        self.role = StateRole.FOLLOWER

    def become_candidate(self) -> None:
        if self.role == StateRole.LEADER:
            raise AssertionError("invalid transition leader -> candidate")
        self.reset(self.term + 1)
        self.vote = self.id
        self.role = StateRole.CANDIDATE

    def become_pre_candidate(self) -> None:
        """Pre-vote (thesis §9.6): neither the term nor the vote changes."""
        if self.role == StateRole.LEADER:
            raise AssertionError("invalid transition leader -> pre-candidate")
        self.trk.reset_votes()
        self.lead = NONE
        self.role = StateRole.PRE_CANDIDATE

    def become_leader(self) -> None:
        leader.become_leader(self)

    # --- time --------------------------------------------------------------------------------

    def tick(self) -> None:
        self.ticks += 1
        if self.role == StateRole.LEADER:
            leader.tick_heartbeat(self)
        else:
            self.tick_election()

    def tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(type=MT.HUP, from_=self.id))

    def promotable(self) -> bool:
        """Only a voter with no snapshot pending may campaign."""
        pr = self.trk.progress.get(self.id)
        return pr is not None and not pr.is_learner and self.raft_log.unstable.snapshot is None

    def leader_lost(self, peer: int) -> None:
        """The runtime has outside evidence that ``peer``, our leader, is gone (its connection
        closed): stop honouring its lease and wait only the random part of the election
        timeout. Ignored unless we are a follower of ``peer``, and with lease-based reads.

        Safety does not depend on timing (votes still need an up-to-date log, §5.4.1), only
        two timing-based promises do: leader stickiness (§4.2.3 of the thesis: a follower in
        lease ignores vote requests, so a rejoining node cannot disrupt a healthy leader) and
        lease reads (§6.4.1: a leader serves reads while no other leader can have been
        elected). Wrongly dropping the first costs at most an unneeded election; the second
        would allow a stale read, so lease-based reads disable this."""
        if self.role != StateRole.FOLLOWER or self.lead != peer or peer == NONE:
            return
        if self.config.read_only_option == ReadOnlyOption.LEASE_BASED:
            self.count("ignored.leader_lost_lease_reads")
            return
        self.count("leader_lost")
        # in_lease() is false from here; the remaining wait is randomized - election_ticks,
        # in [0, election_ticks): still random, so two followers rarely split the vote.
        self.election_elapsed = max(self.election_elapsed, self.config.election_ticks)

    def in_lease(self) -> bool:
        """Leader stickiness (thesis §4.2.3): a follower that heard from a leader within the
        election timeout ignores vote requests, so a rejoining node cannot depose it."""
        if not self.config.check_quorum:
            return False
        if self.ticks < self.startup_quiet_ticks:
            return True  # restarted in lease mode: we may have promised a leader our silence
        return self.lead != NONE and self.election_elapsed < self.config.election_ticks

    # --- the entry point ---------------------------------------------------------------------

    def step(self, m: Message) -> None:
        """Feed one (validated) message. Raises ProposalDropped subclasses for PROP only."""
        if m.term == 0:
            pass  # local message (or a forwarded proposal / read index)
        elif m.term > self.term:
            if not self._step_higher_term(m):
                return
        elif m.term < self.term:
            self._step_lower_term(m)
            return
        self._dispatch(m)

    def _step_higher_term(self, m: Message) -> bool:
        """Term rules for a message from a later term; False if the message is ignored."""
        if m.type in election.VOTE_REQUEST_TYPES:
            force = m.context == election.CAMPAIGN_TRANSFER
            if not force and self.in_lease():
                self.count("ignored.vote_in_lease")
                return False
        if m.type == MT.PRE_VOTE:
            pass  # never change our term because of a pre-vote (thesis §9.6)
        elif m.type == MT.PRE_VOTE_RESP and not m.reject:
            pass  # a granted pre-vote carries the future term; it is counted, not adopted
        elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
            self.become_follower(m.term, m.from_)
        else:
            self.become_follower(m.term, NONE)
        return True

    def _step_lower_term(self, m: Message) -> None:
        self.count("dropped.stale_term")
        if (self.config.check_quorum or self.config.pre_vote) and m.type in (
            MT.HEARTBEAT,
            MT.APP,
        ):
            # A node partitioned away with a higher term would otherwise never learn of the
            # current leader (it ignores our messages); the response makes the stale leader
            # step down (etcd-io/raft behaviour).
            self.send(Message(type=MT.APP_RESP, to=m.from_))
        elif m.type == MT.PRE_VOTE:
            self.send(Message(type=MT.PRE_VOTE_RESP, to=m.from_, term=self.term, reject=True))

    def _dispatch(self, m: Message) -> None:
        if m.type == MT.HUP:
            election.hup(self, transfer=False)
        elif m.type in election.VOTE_REQUEST_TYPES:
            election.handle_vote_request(self, m)
        elif self.role == StateRole.LEADER:
            leader.step_leader(self, m)
        elif self.role in (StateRole.CANDIDATE, StateRole.PRE_CANDIDATE):
            election.step_candidate(self, m)
        else:
            follower.step_follower(self, m)

    # --- membership --------------------------------------------------------------------------

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed conf change. Raises InvalidConfChange (config unchanged)."""
        return self.switch_to_config(self.changed_config(cc))

    def changed_config(self, cc: ConfChange) -> TrackerConfig:
        """The configuration ``cc`` leads to. Raises InvalidConfChange."""
        changer = Changer(self.trk, self.raft_log.last_index())
        if cc.leave_joint():
            return changer.leave_joint()
        if cc.transition != ConfChangeTransition.AUTO or len(cc.changes) > 1:
            auto_leave = cc.transition != ConfChangeTransition.JOINT_EXPLICIT
            return changer.enter_joint(auto_leave, cc.changes)
        return changer.simple(cc.changes)

    def switch_to_config(self, cfg: TrackerConfig) -> ConfState:
        apply_to_tracker(self.trk, cfg)
        pr = self.trk.progress.get(self.id)
        self.is_learner = pr is not None and pr.is_learner
        if self.role == StateRole.LEADER:
            leader.on_config_change(self, removed=pr is None or pr.is_learner)
        return self.trk.conf_state()

    def has_unapplied_conf_changes(self) -> bool:
        """A node must not campaign while a committed conf change is unapplied: the
        configuration it would count votes in may be outdated (etcd-io/raft)."""
        log = self.raft_log
        if log.applied >= log.committed:
            return False
        entries = log.slice(log.applied + 1, log.committed + 1)
        return any(e.type == EntryType.CONF_CHANGE for e in entries)

    def applied_to(self, index: int) -> None:
        """The application applied up to ``index``; leave an auto-leave joint config (§4.3)."""
        self.raft_log.applied_to(max(index, self.raft_log.applied))
        leader.maybe_auto_leave(self)

    def validate_conf_change(self, cc: ConfChange) -> None:
        """Raise InvalidConfChange if ``cc`` cannot apply to the current configuration."""
        if not cc.leave_joint() and any(c.node_id <= 0 for c in cc.changes):
            raise InvalidConfChange("conf change names a node id <= 0")
        self.changed_config(cc)
