"""ReadIndex bookkeeping on the leader (Raft thesis §6.4).

A request records the leader's commit index when it arrived; the leader then broadcasts a
heartbeat carrying the request context. Once a quorum acknowledges that context, the request
and every request queued before it are released in arrival order: leadership was confirmed
after they arrived, so their recorded commit index is a safe read point.
"""

from __future__ import annotations

import dataclasses

from quorum.raft.types import Message


@dataclasses.dataclass
class ReadIndexStatus:
    request: Message  # the READ_INDEX message (local or forwarded from a follower)
    index: int  # the leader's commit index when the request arrived
    acks: set[int] = dataclasses.field(default_factory=set)


class ReadOnly:
    """Pending ReadIndex requests keyed by context, in arrival order."""

    def __init__(self) -> None:
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: int, request: Message, self_id: int) -> bool:
        """Queue a request; a context already pending is ignored (returns False)."""
        context = request.entries[0].data
        if context in self.pending:
            return False
        # The leader acknowledges its own request at once.
        self.pending[context] = ReadIndexStatus(request, index, {self_id})
        self.queue.append(context)
        return True

    def recv_ack(self, node_id: int, context: bytes) -> set[int] | None:
        """Record that ``node_id`` acknowledged the heartbeat for ``context``; return the acks."""
        status = self.pending.get(context)
        if status is None:
            return None
        status.acks.add(node_id)
        return status.acks

    def advance(self, context: bytes) -> list[ReadIndexStatus]:
        """Release ``context`` and everything queued before it; [] if it is unknown."""
        if context not in self.pending:
            return []
        position = self.queue.index(context)
        released = self.queue[: position + 1]
        del self.queue[: position + 1]
        return [self.pending.pop(ctx) for ctx in released]

    def last_pending_context(self) -> bytes | None:
        return self.queue[-1] if self.queue else None

    def count(self) -> int:
        return len(self.queue)
