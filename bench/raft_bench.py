"""Throughput of the pure Raft core: a 3-voter in-memory cluster, no I/O.

Each loop turn proposes a batch of entries at the leader, then every node handles its Ready
(persist into MemoryStorage, send, apply, advance) and messages are delivered. Reports
committed entries per second, and the same for a single voter.

    .venv/bin/python bench/raft_bench.py [--entries N] [--batch B] [--size BYTES]
"""

from __future__ import annotations

import argparse
import random
import time

from quorum.raft import (
    Config,
    EntryType,
    MemoryStorage,
    Message,
    RawNode,
    StateRole,
    bootstrap_snapshot,
)


def cluster(n: int) -> dict[int, tuple[RawNode, MemoryStorage]]:
    voters = tuple(range(1, n + 1))
    out = {}
    for node_id in voters:
        storage = MemoryStorage()
        storage.apply_snapshot(bootstrap_snapshot(voters))
        out[node_id] = (RawNode(Config(id=node_id), storage, random.Random(node_id)), storage)
    return out


def turn(nodes: dict[int, tuple[RawNode, MemoryStorage]]) -> int:
    """Handle one Ready per node and deliver; return the entries applied at node 1."""
    outbox: list[Message] = []
    applied = 0
    for node_id, (node, storage) in nodes.items():
        if not node.has_ready():
            continue
        rd = node.ready()
        outbox += rd.early_messages
        if rd.snapshot is not None:
            storage.apply_snapshot(rd.snapshot)
        storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        outbox += rd.messages
        if node_id == 1:
            applied += sum(1 for e in rd.committed_entries
                           if e.type == EntryType.NORMAL and e.data)
        node.advance(rd)
    for m in outbox:
        nodes[m.to][0].step(m)
    return applied


def run(n: int, entries: int, batch: int, size: int) -> float:
    nodes = cluster(n)
    leader = nodes[1][0]
    leader.campaign()
    while leader.status().role != StateRole.LEADER or leader.status().commit < 2:
        turn(nodes)
    payload = b"x" * size
    applied = proposed = 0
    start = time.perf_counter()
    while applied < entries:
        for _ in range(min(batch, entries - proposed)):
            leader.propose(payload)
            proposed += 1
        applied += turn(nodes)
    return entries / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    for n in (1, 3):
        rate = run(n, args.entries, args.batch, args.size)
        print(f"{n} voter(s), batch {args.batch}, {args.size} B: {rate:,.0f} entries/s")
    rate = run(3, args.entries // 10, 1, args.size)
    print(f"3 voters, batch 1, {args.size} B: {rate:,.0f} entries/s")


if __name__ == "__main__":
    main()
