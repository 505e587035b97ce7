"""Leader-side lease deadlines, with no clock: the caller passes ``now`` (seconds, from any
monotonic clock it owns) to every call that needs time.

Rules (etcd's lessor, Raft-driven expiry):

- Only the leader tracks deadlines. ``promote(now, leases)`` on becoming leader restarts every
  lease with its FULL remaining time -- the checkpointed remaining TTL if the state has one,
  else the granted TTL -- plus ``extend_s``: a failover never expires a lease early (a client
  could not keep it alive while there was no leader). ``demote()`` forgets all deadlines.
- ``expired(now)`` lists leases whose deadline passed; the runtime proposes a
  LeaseExpireRequest for them. Each is then held back for ``retry_s`` so it is not proposed
  again on every tick while the proposal is in flight; once the expire (or a revoke) is
  applied the runtime calls ``revoked(id)``.
- ``keepalive(id, now)`` restarts the lease's TTL. If the state holds a checkpoint for it, a
  clearing checkpoint (remaining 0) is queued, so a later leader does not restart from the
  stale shorter value. While ``clear_pending(id)`` is true the runtime must not acknowledge
  the keepalive until that LeaseCheckpointRequest (from ``checkpoints(now)``) is applied:
  a failover in between would restart the lease from the stale remaining TTL, shorter than
  what the client was just promised (etcd waits for the same checkpoint).
- ``checkpoints(now)`` returns, every ``checkpoint_interval_s``, the remaining TTL of every
  lease longer than ``checkpoint_min_ttl_s`` (and the queued clearing ones): the runtime
  proposes them as a LeaseCheckpointRequest so long leases survive failover with their
  remaining time rather than a full restart.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable

from quorum.errors import LeaseNotFound, UsageError
from quorum.state.commands import LeaseCheckpoint
from quorum.state.lease import LeaseInfo


class LeaseTracker:
    """Deadlines of the leases known to the leader. Not replicated; pure."""

    def __init__(self, *, extend_s: float = 0.0, retry_s: float = 3.0,
                 checkpoint_interval_s: float = 300.0, checkpoint_min_ttl_s: int = 300) -> None:
        if min(extend_s, retry_s, checkpoint_interval_s, checkpoint_min_ttl_s) < 0:
            raise UsageError("LeaseTracker intervals must not be negative")
        self.extend_s = extend_s
        self.retry_s = retry_s
        self.checkpoint_interval_s = checkpoint_interval_s
        self.checkpoint_min_ttl_s = checkpoint_min_ttl_s
        self.is_leader = False
        self._ttl: dict[int, int] = {}
        self._deadline: dict[int, float] = {}
        self._heap: list[tuple[float, int]] = []  # (deadline, id); stale entries skipped
        self._checkpointed: set[int] = set()  # leases the state holds a checkpoint for
        self._clear: set[int] = set()  # clearing checkpoints to propose
        self._awaiting: set[int] = set()  # keepalives waiting for their clearing checkpoint
        self._next_checkpoint = 0.0

    # --- leadership ---------------------------------------------------------------------------

    def promote(self, now: float, leases: Iterable[LeaseInfo]) -> None:
        """Become the lease authority; restart every lease from its full remaining time."""
        self.is_leader = True
        self._ttl.clear()
        self._deadline.clear()
        self._heap.clear()
        self._checkpointed.clear()
        self._clear.clear()
        self._awaiting.clear()
        for info in leases:
            remaining = info.remaining_ttl or info.granted_ttl
            self._ttl[info.id] = info.granted_ttl
            if info.remaining_ttl:
                self._checkpointed.add(info.id)
            self._set(info.id, now + remaining + self.extend_s)
        self._next_checkpoint = now + self.checkpoint_interval_s

    def demote(self) -> None:
        """Stop being the lease authority (followers never expire leases)."""
        self.is_leader = False
        self._ttl.clear()
        self._deadline.clear()
        self._heap.clear()
        self._checkpointed.clear()
        self._clear.clear()
        self._awaiting.clear()

    # --- changes the runtime mirrors from applied commands ------------------------------------

    def granted(self, lease_id: int, ttl: int, now: float) -> None:
        """A LeaseGrant was applied (leader only; ignored on followers)."""
        if self.is_leader:
            self._ttl[lease_id] = ttl
            self._set(lease_id, now + ttl)

    def revoked(self, lease_id: int) -> None:
        """A revoke or expire of ``lease_id`` was applied."""
        self._ttl.pop(lease_id, None)
        self._deadline.pop(lease_id, None)
        self._checkpointed.discard(lease_id)
        self._clear.discard(lease_id)
        self._awaiting.discard(lease_id)

    def checkpoint_applied(self, checkpoint: LeaseCheckpoint) -> None:
        if checkpoint.remaining_ttl:
            self._checkpointed.add(checkpoint.id)
        else:
            self._checkpointed.discard(checkpoint.id)
            self._awaiting.discard(checkpoint.id)

    # --- queries and renewals -----------------------------------------------------------------

    def keepalive(self, lease_id: int, now: float) -> int:
        """Restart the lease's TTL; returns it. Raises LeaseNotFound (also on a follower:
        keepalives must go to the leader)."""
        ttl = self._ttl.get(lease_id)
        if ttl is None or not self.is_leader:
            raise LeaseNotFound()
        self._set(lease_id, now + ttl)
        if lease_id in self._checkpointed:
            self._clear.add(lease_id)
            self._awaiting.add(lease_id)
        return ttl

    def clear_pending(self, lease_id: int) -> bool:
        """Whether a keepalive of ``lease_id`` waits for a clearing checkpoint to be applied."""
        return lease_id in self._awaiting

    def remaining(self, lease_id: int, now: float) -> int | None:
        """Seconds left (rounded up, >= 0) as known to this leader; None if not tracked."""
        deadline = self._deadline.get(lease_id)
        if deadline is None:
            return None
        return max(0, math.ceil(deadline - now))

    def expired(self, now: float) -> list[int]:
        """Leases whose deadline is <= now, oldest deadline first (ties by id). Each is held
        back for ``retry_s`` before it can be reported again."""
        if not self.is_leader:
            return []
        found: list[int] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, lease_id = heapq.heappop(heap)
            if self._deadline.get(lease_id) != deadline:
                continue  # superseded (keepalive, retry hold-back) or gone
            found.append(lease_id)
            # Held back at once: a second heap entry with the same deadline (grant and
            # keepalive at the same instant) then no longer matches.
            self._deadline[lease_id] = now + self.retry_s
        for lease_id in found:
            heapq.heappush(heap, (self._deadline[lease_id], lease_id))
        return found

    def checkpoints(self, now: float) -> list[LeaseCheckpoint]:
        """Checkpoints to propose now (possibly none), ascending by id."""
        if not self.is_leader:
            return []
        out = {i: LeaseCheckpoint(i, 0) for i in self._clear}
        self._clear.clear()
        if now >= self._next_checkpoint:
            self._next_checkpoint = now + self.checkpoint_interval_s
            for lease_id, ttl in self._ttl.items():
                if ttl > self.checkpoint_min_ttl_s and lease_id not in self._awaiting:
                    left = self.remaining(lease_id, now) or 0
                    out[lease_id] = LeaseCheckpoint(lease_id, max(1, left))
        return [out[i] for i in sorted(out)]

    def _set(self, lease_id: int, deadline: float) -> None:
        self._deadline[lease_id] = deadline
        heapq.heappush(self._heap, (deadline, lease_id))
