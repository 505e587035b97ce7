"""A simulated, seeded network for the in-memory Raft cluster harness.

Every message goes through :meth:`Network.send`. Whether it is dropped, duplicated or delayed
is decided by the network's own ``Random``, so a run is a pure function of the seed.
Time is counted in ticks: a message sent at tick ``t`` with delay ``d`` becomes deliverable at
tick ``t + d``; messages with equal delivery tick keep their send order, so random delays are
what produces reordering.

Reachability is checked twice, at send and at delivery: a message in flight when a partition
starts is lost, as on a real network whose connection was cut.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from random import Random

from quorum.raft.types import Message, MessageType


@dataclass(frozen=True)
class Faults:
    """Per-message fault probabilities and the delay range (ticks, inclusive)."""

    drop_rate: float = 0.0
    dup_rate: float = 0.0
    min_delay_ticks: int = 0
    max_delay_ticks: int = 0

    def is_reliable(self) -> bool:
        return self.drop_rate == 0.0 and self.dup_rate == 0.0 and self.max_delay_ticks == 0


RELIABLE = Faults()


class Network:
    """Queues messages between node ids, applying faults, partitions and one-way cuts."""

    def __init__(self, rng: Random, faults: Faults = RELIABLE) -> None:
        self._rng = rng
        self.faults = faults
        self.now_ticks = 0
        self._queue: list[tuple[int, int, Message]] = []  # (deliver_at, seq, msg)
        self._seq = 0
        self._group_of: dict[int, int] = {}  # node -> partition group; absent = group 0
        self._cut: set[tuple[int, int]] = set()  # one-way (from, to) links that drop all
        self.sent: Counter[MessageType] = Counter()
        self.sent_from: Counter[tuple[MessageType, int]] = Counter()  # (type, from)
        self.delivered: Counter[tuple[MessageType, int]] = Counter()  # (type, to)
        self.dropped = 0
        self.duplicated = 0
        self.sent_entries = 0  # entries carried by all messages sent
        self.sent_entry_bytes = 0  # their data bytes
        self._lost: list[Message] = []

    # --- topology ---------------------------------------------------------------------------

    def partition(self, *groups: Iterable[int]) -> None:
        """Split the nodes into ``groups``; nodes named in no group stay together in group 0."""
        self._group_of = {}
        for number, group in enumerate(groups, start=1):
            for node in group:
                self._group_of[node] = number

    def isolate(self, node: int) -> None:
        """Cut ``node`` off from every other node (other partitions are kept)."""
        self._group_of[node] = -node

    def heal(self) -> None:
        """Remove every partition and one-way cut."""
        self._group_of = {}
        self._cut = set()

    def cut(self, from_id: int, to_id: int) -> None:
        """Drop every message from ``from_id`` to ``to_id`` (the reverse direction still works)."""
        self._cut.add((from_id, to_id))

    def restore(self, from_id: int, to_id: int) -> None:
        self._cut.discard((from_id, to_id))

    def connected(self, from_id: int, to_id: int) -> bool:
        same_group = self._group_of.get(from_id, 0) == self._group_of.get(to_id, 0)
        return same_group and (from_id, to_id) not in self._cut

    def is_partitioned(self) -> bool:
        return bool(self._group_of) or bool(self._cut)

    # --- traffic ----------------------------------------------------------------------------

    def send(self, msg: Message) -> bool:
        """Queue ``msg``; return False if it was dropped at once (unreachable or random loss)."""
        self.sent[msg.type] += 1
        self.sent_from[(msg.type, msg.from_)] += 1
        if msg.entries:
            self.sent_entries += len(msg.entries)
            self.sent_entry_bytes += sum(len(e.data) for e in msg.entries)
        faults = self.faults
        if not self.connected(msg.from_, msg.to) or (
            faults.drop_rate and self._rng.random() < faults.drop_rate
        ):
            self.dropped += 1
            return False
        self._enqueue(msg)
        if faults.dup_rate and self._rng.random() < faults.dup_rate:
            self.duplicated += 1
            self._enqueue(msg)
        return True

    def _enqueue(self, msg: Message) -> None:
        faults = self.faults
        delay = 0
        if faults.max_delay_ticks:
            delay = self._rng.randint(faults.min_delay_ticks, faults.max_delay_ticks)
        self._seq += 1
        heapq.heappush(self._queue, (self.now_ticks + delay, self._seq, msg))

    def due(self) -> list[Message]:
        """Pop every message deliverable now, in delivery order, minus those cut off meanwhile.

        Messages lost here are counted in ``dropped`` and returned by :meth:`take_lost`.
        """
        out: list[Message] = []
        queue = self._queue
        while queue and queue[0][0] <= self.now_ticks:
            msg = heapq.heappop(queue)[2]
            if self.connected(msg.from_, msg.to):
                out.append(msg)
                self.delivered[(msg.type, msg.to)] += 1
            else:
                self.dropped += 1
                self._lost.append(msg)
        return out

    def take_lost(self) -> list[Message]:
        """Messages lost in flight since the last call (the harness reports lost snapshots)."""
        lost, self._lost = self._lost, []
        return lost

    def has_lost(self) -> bool:
        return bool(self._lost)

    def has_due(self) -> bool:
        return bool(self._queue) and self._queue[0][0] <= self.now_ticks

    def in_flight(self) -> int:
        return len(self._queue)

    def advance(self, ticks: int = 1) -> None:
        self.now_ticks += ticks

    def drop_to(self, node: int) -> None:
        """Discard every queued message addressed to ``node`` (it crashed); they count as lost
        in flight, so senders hear about them through :meth:`take_lost`."""
        kept = []
        for item in self._queue:
            if item[2].to == node:
                self.dropped += 1
                self._lost.append(item[2])
            else:
                kept.append(item)
        self._queue = kept
        heapq.heapify(self._queue)

    def clear(self) -> None:
        self._queue = []
