"""Per-follower replication progress as the leader sees it, and the tracker of all of them.

A Progress is in one of three states (etcd-io/raft design, Raft thesis §10.2.1 pipelining):

- PROBE: the leader does not know where the follower's log matches; it sends one append at a
  time and pauses until a response (or a heartbeat response) arrives.
- REPLICATE: the match point is known; appends are pipelined optimistically, bounded by the
  in-flight window (``Inflights``).
- SNAPSHOT: the follower needs a snapshot; nothing else is sent until ``report_snapshot``.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator

from quorum.raft.quorum import JointConfig, VoteResult
from quorum.raft.types import ConfState


class ProgressState(enum.IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Inflights:
    """A bounded FIFO of in-flight appends: (last index, bytes) per message.

    Full when it holds ``capacity`` messages, or when a byte budget is set and reached.
    """

    __slots__ = ("_bytes", "_queue", "capacity", "max_bytes")

    def __init__(self, capacity: int, max_bytes: int = 0) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._queue: deque[tuple[int, int]] = deque()
        self._bytes = 0

    def add(self, last_index: int, size: int) -> None:
        """Record an append whose last entry is ``last_index``. Caller checks ``full()`` first."""
        self._queue.append((last_index, size))
        self._bytes += size

    def free_le(self, index: int) -> None:
        """Free every in-flight append whose last index is <= ``index`` (it was acknowledged)."""
        while self._queue and self._queue[0][0] <= index:
            self._bytes -= self._queue.popleft()[1]

    def full(self) -> bool:
        if len(self._queue) >= self.capacity:
            return True
        return self.max_bytes > 0 and self._bytes >= self.max_bytes

    def count(self) -> int:
        return len(self._queue)

    def reset(self) -> None:
        self._queue.clear()
        self._bytes = 0

    def clone(self) -> Inflights:
        other = Inflights(self.capacity, self.max_bytes)
        other._queue = deque(self._queue)
        other._bytes = self._bytes
        return other


class Progress:
    """What the leader knows about one follower's log."""

    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "msg_app_flow_paused",
        "next",
        "pending_snapshot",
        "recent_active",
        "state",
    )

    def __init__(self, next_index: int, inflights: Inflights, is_learner: bool = False) -> None:
        # Invariant: 0 <= match < next.
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0  # index of the snapshot being sent (SNAPSHOT state)
        self.recent_active = False  # heard from within the last election timeout
        # PROBE: one append sent, waiting for an answer. REPLICATE: the window is full.
        self.msg_app_flow_paused = False
        self.inflights = inflights
        self.is_learner = is_learner

    # --- state transitions ---------------------------------------------------------------

    def _reset_state(self, state: ProgressState) -> None:
        self.msg_app_flow_paused = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def reset(self, next_index: int) -> None:
        """Forget everything (new term): probe from ``next_index``."""
        self._reset_state(ProgressState.PROBE)
        self.match = 0
        self.next = next_index
        self.recent_active = False

    def become_probe(self) -> None:
        """Probe from just after the match (or after the snapshot that was being sent)."""
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    # --- updates from the protocol -------------------------------------------------------

    def update_on_entries_send(self, entries_count: int, last_index: int, size: int) -> None:
        """Account for an append just sent carrying ``entries_count`` entries."""
        if self.state == ProgressState.REPLICATE:
            if entries_count > 0:
                self.next = last_index + 1
                self.inflights.add(last_index, size)
            # A full window pauses the flow until an acknowledgement, or a heartbeat
            # response, unpauses it (the latter lets one empty append through, which
            # recovers from appends lost while they filled the window).
            self.msg_app_flow_paused = self.inflights.full()
        elif self.state == ProgressState.PROBE:
            # One message per probe round: pause until the follower answers.
            self.msg_app_flow_paused = True

    def maybe_update(self, index: int) -> bool:
        """An acknowledgement up to ``index`` arrived. Returns True if match moved forward."""
        if index <= self.match:
            return False
        self.match = index
        self.next = max(self.next, index + 1)
        self.msg_app_flow_paused = False
        return True

    def clone(self) -> Progress:
        other = Progress(self.next, self.inflights.clone(), self.is_learner)
        other.match = self.match
        other.state = self.state
        other.pending_snapshot = self.pending_snapshot
        other.recent_active = self.recent_active
        other.msg_app_flow_paused = self.msg_app_flow_paused
        return other

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A rejection of the append whose previous index was ``rejected`` arrived.

        ``match_hint`` is the leader-side guess of the follower's matching index. Returns False
        if the rejection is stale (out of order) and must be ignored.
        """
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # stale: that index is already known to match
            self.next = self.match + 1  # fall back to probing from the known match
            return True
        if self.next - 1 != rejected:
            return False  # stale: not the probe we are waiting for
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.msg_app_flow_paused = False
        return True

    def is_paused(self) -> bool:
        """True if the leader must not send another append right now."""
        if self.state in (ProgressState.PROBE, ProgressState.REPLICATE):
            return self.msg_app_flow_paused
        return True  # SNAPSHOT

    def describe(self) -> str:
        text = f"{self.state.name} match={self.match} next={self.next}"
        if self.is_learner:
            text += " learner"
        if self.is_paused():
            text += " paused"
        if self.pending_snapshot:
            text += f" pendingSnap={self.pending_snapshot}"
        if not self.recent_active:
            text += " inactive"
        if self.inflights.count():
            text += f" inflight={self.inflights.count()}"
            if self.inflights.full():
                text += "[full]"
        return text


class ProgressTracker:
    """The configuration plus a Progress per member plus the votes of the current election."""

    def __init__(self, max_inflight: int, max_inflight_bytes: int = 0) -> None:
        self.voters = JointConfig()
        self.learners: set[int] = set()
        # Voters of the outgoing config that become learners when the joint config is left.
        self.learners_next: set[int] = set()
        self.auto_leave = False
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes

    def new_inflights(self) -> Inflights:
        return Inflights(self.max_inflight, self.max_inflight_bytes)

    def conf_state(self) -> ConfState:
        return ConfState(
            voters=tuple(sorted(self.voters.incoming)),
            learners=tuple(sorted(self.learners)),
            voters_outgoing=tuple(sorted(self.voters.outgoing)),
            learners_next=tuple(sorted(self.learners_next)),
            auto_leave=self.auto_leave,
        )

    def is_singleton(self) -> bool:
        return len(self.voters.incoming) == 1 and not self.voters.outgoing

    def committed(self) -> int:
        """The largest index a quorum of voters (both halves when joint) has persisted."""

        def lookup(voter: int) -> int | None:
            pr = self.progress.get(voter)
            return pr.match if pr is not None else None

        return self.voters.committed_index(lookup)

    def visit(self) -> Iterator[tuple[int, Progress]]:
        """Members in ascending id order, so every output is deterministic."""
        for node_id in sorted(self.progress):
            yield node_id, self.progress[node_id]

    def quorum_active(self) -> bool:
        """True if a quorum of voters (incl. the leader itself) was recently active."""
        votes = {
            node_id: pr.recent_active
            for node_id, pr in self.progress.items()
            if not pr.is_learner
        }
        return self.voters.vote_result(votes) == VoteResult.WON

    def voter_ids(self) -> list[int]:
        return sorted(self.voters.ids())

    def learner_ids(self) -> list[int]:
        return sorted(self.learners | self.learners_next)

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node_id: int, granted: bool) -> None:
        """Only the first vote of each node counts."""
        self.votes.setdefault(node_id, granted)

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        """(granted, rejected, result) over the current voters."""
        granted = rejected = 0
        for node_id in self.voters.ids():
            vote = self.votes.get(node_id)
            if vote is True:
                granted += 1
            elif vote is False:
                rejected += 1
        return granted, rejected, self.voters.vote_result(self.votes)
