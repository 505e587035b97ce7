"""Helpers for the paper tests: nodes with hand-made logs over an index-0 bootstrap."""

from __future__ import annotations

import random

from quorum.raft import (
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    Ready,
    Snapshot,
    SnapshotMetadata,
)

MT = MessageType


def make_node(
    node_id: int,
    voters: tuple[int, ...] = (1, 2, 3),
    log_terms: tuple[int, ...] = (),
    term: int = 0,
    commit: int = 0,
    seed: int | None = None,
    **config: object,
) -> RawNode:
    """A node whose log holds entries 1..n with terms ``log_terms`` (pre-vote and
    check-quorum off unless given: the paper's base algorithm)."""
    storage = MemoryStorage()
    storage.apply_snapshot(Snapshot(metadata=SnapshotMetadata(conf_state=ConfState(voters))))
    storage.append([Entry(term=t, index=i + 1, data=b"") for i, t in enumerate(log_terms)])
    storage.set_hard_state(HardState(term=term, commit=commit))
    options: dict[str, object] = {"pre_vote": False, "check_quorum": False} | config
    cfg = Config(id=node_id, **options)  # type: ignore[arg-type]
    return RawNode(cfg, storage, random.Random(node_id if seed is None else seed))


def drain(node: RawNode) -> Ready:
    """Take the next Ready, persist it into the node's MemoryStorage and advance."""
    rd = node.ready()
    storage = node.raft.raft_log.storage
    assert isinstance(storage, MemoryStorage)
    if rd.snapshot is not None:
        storage.apply_snapshot(rd.snapshot)
    storage.append(rd.entries)
    if rd.hard_state is not None:
        storage.set_hard_state(rd.hard_state)
    node.advance(rd)
    return rd


def sent(rd: Ready) -> list[Message]:
    return sorted(rd.early_messages + rd.messages, key=lambda m: (m.to, m.type))


def log_terms(node: RawNode) -> list[int]:
    return [e.term for e in node.raft.raft_log.all_entries()]


def exchange(nodes: dict[int, RawNode], limit: int = 1000) -> None:
    """Run Ready/deliver rounds until nothing is left to do."""
    for _ in range(limit):
        queue: list[Message] = []
        for node in nodes.values():
            if node.has_ready():
                rd = drain(node)
                queue += rd.early_messages + rd.messages
        if not queue:
            return
        for m in queue:
            if m.to in nodes:
                nodes[m.to].step(m)
    raise AssertionError("no quiescence")
