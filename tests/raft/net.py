"""A tiny synchronous in-memory network of RawNodes for the core's unit tests.

Each node persists its Ready into its MemoryStorage, applies committed conf changes, records
applied entries and read states, then advances. Messages are queued and delivered in FIFO
order; ``drop`` filters let a test cut links.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable

from quorum.raft import (
    ConfChange,
    Config,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    RawNode,
    ReadState,
    Ready,
    bootstrap_snapshot,
)


@dataclasses.dataclass
class Member:
    node: RawNode
    storage: MemoryStorage
    applied: list[Entry] = dataclasses.field(default_factory=list)
    read_states: list[ReadState] = dataclasses.field(default_factory=list)


class Net:
    def __init__(
        self,
        voters: Iterable[int] = (1, 2, 3),
        learners: Iterable[int] = (),
        **config: object,
    ) -> None:
        self.voters = tuple(voters)
        self.learners = tuple(learners)
        self.config = config
        self.members: dict[int, Member] = {}
        self.queue: list[Message] = []
        self.cut: set[tuple[int, int]] = set()  # (from, to) links that drop messages
        self.sent: list[Message] = []
        for node_id in (*self.voters, *self.learners):
            storage = MemoryStorage()
            storage.apply_snapshot(bootstrap_snapshot(self.voters, self.learners))
            self.members[node_id] = Member(self._node(node_id, storage, 0), storage)

    def _node(self, node_id: int, storage: MemoryStorage, applied: int) -> RawNode:
        cfg = Config(id=node_id, applied=applied, **self.config)  # type: ignore[arg-type]
        return RawNode(cfg, storage, random.Random(node_id))

    def add_empty(self, node_id: int) -> None:
        """A node that joins later: empty storage, learns everything from the leader."""
        storage = MemoryStorage()
        self.members[node_id] = Member(self._node(node_id, storage, 0), storage)

    def node(self, node_id: int) -> RawNode:
        return self.members[node_id].node

    def restart(self, node_id: int) -> None:
        m = self.members[node_id]
        applied = m.applied[-1].index if m.applied else m.storage.first_index() - 1
        m.node = self._node(node_id, m.storage, applied)
        self.queue = [q for q in self.queue if q.to != node_id]

    def isolate(self, node_id: int) -> None:
        for other in self.members:
            if other != node_id:
                self.cut |= {(node_id, other), (other, node_id)}

    def heal(self) -> None:
        self.cut.clear()

    def process(self, node_id: int) -> bool:
        m = self.members[node_id]
        if not m.node.has_ready():
            return False
        rd = m.node.ready()
        self._handle(m, rd)
        m.node.advance(rd)
        return True

    def process_pipelined(self, node_id: int, between: Callable[[], None]) -> bool:
        """Take a Ready, let ``between`` feed the node more input, take a second Ready, then
        handle both in order and advance only the last (a runtime that overlaps work)."""
        m = self.members[node_id]
        if not m.node.has_ready():
            return False
        first = m.node.ready()
        between()
        second = m.node.ready() if m.node.has_ready() else None
        self._handle(m, first)
        if second is not None:
            self._handle(m, second)
        m.node.advance(second if second is not None else first)
        return True

    def _handle(self, m: Member, rd: Ready) -> None:
        if rd.snapshot is not None:
            m.storage.apply_snapshot(rd.snapshot)
        m.storage.append(rd.entries)
        if rd.hard_state is not None:
            m.storage.set_hard_state(rd.hard_state)
        self._send(rd.early_messages + rd.messages)
        for entry in rd.committed_entries:
            if entry.type == EntryType.CONF_CHANGE:
                m.node.apply_conf_change(ConfChange.decode(entry.data))
            m.applied.append(entry)
        m.read_states.extend(rd.read_states)

    def deliver_to(self, node_id: int) -> None:
        """Deliver the queued messages addressed to ``node_id`` only."""
        mine = [q for q in self.queue if q.to == node_id]
        self.queue = [q for q in self.queue if q.to != node_id]
        for msg in mine:
            self.members[node_id].node.step(msg)

    def _send(self, msgs: list[Message]) -> None:
        for msg in msgs:
            self.sent.append(msg)
            if (msg.from_, msg.to) not in self.cut and msg.to in self.members:
                self.queue.append(msg)

    def deliver(self, keep: Callable[[Message], bool] | None = None) -> int:
        batch, self.queue = self.queue, []
        for msg in batch:
            if keep is None or keep(msg):
                self.members[msg.to].node.step(msg)
        return len(batch)

    def stabilize(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            busy = any([self.process(i) for i in sorted(self.members)])
            if not busy and not self.queue:
                return
            self.deliver()
        raise AssertionError("cluster did not stabilize")

    def elect(self, node_id: int) -> None:
        self.node(node_id).campaign()
        self.stabilize()

    def tick(self, node_id: int, n: int = 1) -> None:
        for _ in range(n):
            self.node(node_id).tick()

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for member in self.members.values():
                member.node.tick()
            self.stabilize()

    def data_applied(self, node_id: int) -> list[bytes]:
        return [e.data for e in self.members[node_id].applied
                if e.type == EntryType.NORMAL and e.data]
