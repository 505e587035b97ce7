"""Drive three Raft cores by hand: no threads, no sockets, no clock — just the contract.

    .venv/bin/python examples/three_rawnodes.py
"""

import random

from quorum.raft import Config, MemoryStorage, RawNode, bootstrap_snapshot

ids = (1, 2, 3)
stores = {i: MemoryStorage() for i in ids}
nodes = {}
for i in ids:
    stores[i].apply_snapshot(bootstrap_snapshot(voters=ids))  # a brand-new cluster
    nodes[i] = RawNode(Config(id=i), stores[i], rng=random.Random(i))
applied = {i: [] for i in ids}
inbox = []


def process(i):
    """The Ready rule: persist, then send, then apply, then advance."""
    node = nodes[i]
    while node.has_ready():
        rd = node.ready()
        inbox.extend(rd.early_messages)          # may leave before persistence
        if rd.snapshot is not None:
            stores[i].apply_snapshot(rd.snapshot)
        stores[i].append(rd.entries)             # "persist" (a real node fsyncs here)
        if rd.hard_state is not None:
            stores[i].set_hard_state(rd.hard_state)
        inbox.extend(rd.messages)                # only after persistence
        applied[i] += [e.data for e in rd.committed_entries if e.data]
        node.advance(rd)


def settle():
    for i in ids:
        process(i)
    while inbox:
        batch = inbox[:]
        inbox.clear()
        for m in batch:
            nodes[m.to].step(m)
        for i in ids:
            process(i)


nodes[1].campaign()          # or tick() until an election timeout fires
settle()
print("leader:", {i: n.status().lead for i, n in nodes.items()})
nodes[1].propose(b"hello")
settle()
nodes[2].propose(b"world")   # a follower forwards the proposal to the leader
settle()
for _ in range(3):           # a heartbeat carries the new commit index to the followers
    for n in nodes.values():
        n.tick()
    settle()
print("applied:", applied)
assert applied[1] == applied[2] == applied[3] == [b"hello", b"world"]
