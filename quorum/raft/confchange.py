"""Membership changes: the Changer computes a new configuration from the current one.

Rules (Raft thesis §4.1-§4.3, etcd-io/raft confchange):

- A *simple* change alters at most one voter; it applies directly.
- A *joint* change enters the joint configuration C_old,new: decisions need a majority of both
  halves until the joint config is left (automatically or explicitly).
- A voter demoted to learner while it is still a voter of the outgoing half goes to
  ``learners_next`` and becomes a learner when the joint config is left.
- A node is never both voter and learner; the incoming config never becomes empty.
- UPDATE_NODE changes nothing here (it carries a member's addresses for the application), so
  it commutes with every role change: it cannot undo a promotion committed before it.

The Changer never mutates the tracker it reads: it returns a fresh ``TrackerConfig``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from quorum.errors import InvalidConfChange
from quorum.raft.progress import Progress, ProgressTracker
from quorum.raft.types import ConfChangeSingle, ConfChangeType, ConfState


@dataclasses.dataclass
class TrackerConfig:
    """A configuration plus the progress map that goes with it."""

    incoming: set[int]
    outgoing: set[int]
    learners: set[int]
    learners_next: set[int]
    auto_leave: bool
    progress: dict[int, Progress]

    def is_joint(self) -> bool:
        return bool(self.outgoing)

    def conf_state(self) -> ConfState:
        return ConfState(
            voters=tuple(sorted(self.incoming)),
            learners=tuple(sorted(self.learners)),
            voters_outgoing=tuple(sorted(self.outgoing)),
            learners_next=tuple(sorted(self.learners_next)),
            auto_leave=self.auto_leave,
        )


class Changer:
    """Computes configurations derived from ``tracker`` (which stays untouched)."""

    def __init__(self, tracker: ProgressTracker, last_index: int) -> None:
        self.tracker = tracker
        self.last_index = last_index

    def enter_joint(self, auto_leave: bool, changes: Iterable[ConfChangeSingle]) -> TrackerConfig:
        """Enter C_old,new: the outgoing half is the current config. Raises InvalidConfChange."""
        cfg = self._copy()
        if cfg.is_joint():
            raise InvalidConfChange("config is already joint")
        if not cfg.incoming:
            raise InvalidConfChange("cannot make a zero-voter config joint")
        cfg.outgoing = set(cfg.incoming)
        self._apply(cfg, changes)
        cfg.auto_leave = auto_leave
        return self._checked(cfg)

    def leave_joint(self) -> TrackerConfig:
        """Leave the joint config: keep the incoming half. Raises InvalidConfChange."""
        cfg = self._copy()
        if not cfg.is_joint():
            raise InvalidConfChange("cannot leave a non-joint config")
        for node_id in cfg.learners_next:
            cfg.learners.add(node_id)
            cfg.progress[node_id].is_learner = True
        cfg.learners_next = set()
        for node_id in cfg.outgoing:
            if node_id not in cfg.incoming and node_id not in cfg.learners:
                del cfg.progress[node_id]
        cfg.outgoing = set()
        cfg.auto_leave = False
        return self._checked(cfg)

    def simple(self, changes: Iterable[ConfChangeSingle]) -> TrackerConfig:
        """Apply changes that alter at most one voter. Raises InvalidConfChange."""
        cfg = self._copy()
        if cfg.is_joint():
            raise InvalidConfChange("cannot apply a simple config change in a joint config")
        self._apply(cfg, changes)
        changed = len(cfg.incoming ^ set(self.tracker.voters.incoming))
        if changed > 1:
            raise InvalidConfChange("more than one voter changed without entering joint config")
        return self._checked(cfg)

    # --- helpers -----------------------------------------------------------------------------

    def _copy(self) -> TrackerConfig:
        trk = self.tracker
        return TrackerConfig(
            incoming=set(trk.voters.incoming),
            outgoing=set(trk.voters.outgoing),
            learners=set(trk.learners),
            learners_next=set(trk.learners_next),
            auto_leave=trk.auto_leave,
            progress={k: pr.clone() for k, pr in trk.progress.items()},
        )

    def _apply(self, cfg: TrackerConfig, changes: Iterable[ConfChangeSingle]) -> None:
        for change in changes:
            if change.node_id <= 0:
                raise InvalidConfChange(f"invalid node id {change.node_id}")
            if change.type == ConfChangeType.ADD_NODE:
                self._make_voter(cfg, change.node_id)
            elif change.type == ConfChangeType.ADD_LEARNER:
                self._make_learner(cfg, change.node_id)
            elif change.type == ConfChangeType.REMOVE_NODE:
                self._remove(cfg, change.node_id)
            elif change.type == ConfChangeType.UPDATE_NODE:
                pass  # addresses only: the application records them, membership is unchanged
            else:
                raise InvalidConfChange(f"unknown change type {change.type!r}")
        if not cfg.incoming:
            raise InvalidConfChange("removed all voters")

    def _make_voter(self, cfg: TrackerConfig, node_id: int) -> None:
        pr = cfg.progress.get(node_id)
        if pr is None:
            self._init_progress(cfg, node_id, is_learner=False)
            return
        pr.is_learner = False
        cfg.learners.discard(node_id)
        cfg.learners_next.discard(node_id)
        cfg.incoming.add(node_id)

    def _make_learner(self, cfg: TrackerConfig, node_id: int) -> None:
        pr = cfg.progress.get(node_id)
        if pr is None:
            self._init_progress(cfg, node_id, is_learner=True)
            return
        if pr.is_learner:
            return
        self._remove(cfg, node_id)
        cfg.progress[node_id] = pr  # keep the progress of the demoted voter
        if node_id in cfg.outgoing:
            # Still a voter of the outgoing half: becomes a learner when the joint config ends.
            cfg.learners_next.add(node_id)
        else:
            pr.is_learner = True
            cfg.learners.add(node_id)

    def _remove(self, cfg: TrackerConfig, node_id: int) -> None:
        if node_id not in cfg.progress:
            return
        cfg.incoming.discard(node_id)
        cfg.learners.discard(node_id)
        cfg.learners_next.discard(node_id)
        if node_id not in cfg.outgoing:  # an outgoing voter keeps its progress until leave
            del cfg.progress[node_id]

    def _init_progress(self, cfg: TrackerConfig, node_id: int, is_learner: bool) -> None:
        if is_learner:
            cfg.learners.add(node_id)
        else:
            cfg.incoming.add(node_id)
        # Probe from the last index; a new node counts as recently active so check-quorum
        # does not depose the leader right after adding it.
        pr = Progress(max(self.last_index, 1), self.tracker.new_inflights(), is_learner)
        pr.recent_active = True
        cfg.progress[node_id] = pr

    @staticmethod
    def _checked(cfg: TrackerConfig) -> TrackerConfig:
        check_invariants(cfg)
        return cfg


def check_invariants(cfg: TrackerConfig) -> None:
    """Raise InvalidConfChange if the configuration is internally inconsistent."""
    members = cfg.incoming | cfg.outgoing | cfg.learners | cfg.learners_next
    for node_id in members:
        if node_id not in cfg.progress:
            raise InvalidConfChange(f"no progress for member {node_id}")
    for node_id in cfg.learners_next:
        if node_id not in cfg.outgoing:
            raise InvalidConfChange(f"{node_id} is in learners_next but not an outgoing voter")
        if cfg.progress[node_id].is_learner:
            raise InvalidConfChange(f"{node_id} is in learners_next but already a learner")
    for node_id in cfg.learners:
        if node_id in cfg.incoming or node_id in cfg.outgoing:
            raise InvalidConfChange(f"{node_id} is both learner and voter")
        if not cfg.progress[node_id].is_learner:
            raise InvalidConfChange(f"{node_id} is a learner without the learner flag")
    if not cfg.is_joint() and (cfg.learners_next or cfg.auto_leave):
        raise InvalidConfChange("learners_next and auto_leave require a joint config")


def restore(tracker: ProgressTracker, conf_state: ConfState, last_index: int) -> TrackerConfig:
    """The configuration described by ``conf_state``, built by replaying changes on ``tracker``.

    The tracker must be empty (fresh node or snapshot restore). Raises InvalidConfChange.
    """
    add, rem, learn = ConfChangeType.ADD_NODE, ConfChangeType.REMOVE_NODE, ConfChangeType.ADD_LEARNER
    incoming = [ConfChangeSingle(add, v) for v in conf_state.voters]
    incoming += [ConfChangeSingle(learn, v) for v in conf_state.learners]
    incoming += [ConfChangeSingle(learn, v) for v in conf_state.learners_next]
    scratch = ProgressTracker(tracker.max_inflight, tracker.max_inflight_bytes)
    if not conf_state.voters_outgoing:
        cfg = _replay_simple(scratch, incoming, last_index)
        if cfg is None:
            raise InvalidConfChange("a configuration needs at least one voter")
        return cfg
    outgoing = [ConfChangeSingle(add, v) for v in conf_state.voters_outgoing]
    cfg = _replay_simple(scratch, outgoing, last_index)
    assert cfg is not None  # voters_outgoing is non-empty
    apply_to_tracker(scratch, cfg)
    removals = [ConfChangeSingle(rem, v) for v in conf_state.voters_outgoing]
    return Changer(scratch, last_index).enter_joint(conf_state.auto_leave, removals + incoming)


def _replay_simple(
    scratch: ProgressTracker, changes: list[ConfChangeSingle], last_index: int
) -> TrackerConfig | None:
    cfg: TrackerConfig | None = None
    for change in changes:
        cfg = Changer(scratch, last_index).simple([change])
        apply_to_tracker(scratch, cfg)
    return cfg


def apply_to_tracker(tracker: ProgressTracker, cfg: TrackerConfig) -> None:
    """Install ``cfg`` into ``tracker`` (votes are kept; the caller resets them if needed)."""
    from quorum.raft.quorum import JointConfig

    tracker.voters = JointConfig(cfg.incoming, cfg.outgoing)
    tracker.learners = set(cfg.learners)
    tracker.learners_next = set(cfg.learners_next)
    tracker.auto_leave = cfg.auto_leave
    tracker.progress = cfg.progress
