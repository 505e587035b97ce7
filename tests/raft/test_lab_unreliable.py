"""Unreliable networks and churn (MIT TestUnreliableAgree3C / TestUnreliableChurn3C / TestReliableChurn3C
equivalents): every acknowledged command ends up applied exactly once on every node."""

from __future__ import annotations

import contextlib
import random
from collections import Counter

from quorum.errors import ProposalDropped
from quorum.raft.harness.cluster import Cluster, command_id
from quorum.raft.harness.network import Faults

ET = 10


def log_command_counts(c: Cluster) -> Counter[int]:
    """How often each command id occurs in the applied (committed) log."""
    counts: Counter[int] = Counter()
    for index in range(1, c.checker.max_applied_index() + 1):
        entry = c.checker.applied_entry(index)
        if entry is not None and command_id(entry[1]):
            counts[command_id(entry[1])] += 1
    return counts


def heal_everything(c: Cluster) -> None:
    c.net.heal()
    c.net.faults = Faults()
    for node in c.ids:
        if not c.nodes[node].alive:
            c.restart(node)


def test_unreliable_agreement() -> None:
    faults = Faults(drop_rate=0.1, dup_rate=0.1, min_delay_ticks=0, max_delay_ticks=3)
    c = Cluster(seed=21, voters=5, faults=faults)
    rng = random.Random(21)
    for _ in range(50):
        for _client in range(4):  # four clients, each proposes once (no retry after append)
            with contextlib.suppress(ProposalDropped):
                c.propose(payload=b"%d" % rng.randrange(10**6))
        c.tick(rng.randrange(1, 4))
    heal_everything(c)
    last = c.one(b"end", 5, max_ticks=500)
    acked = [p for p in c.proposals.values() if p.acked_index]
    assert len(acked) > 150, f"only {len(acked)} of 200 commands acknowledged"
    counts = log_command_counts(c)
    for proposal in acked:
        # duplicated and reordered appends must not put a command in the log twice
        assert counts[proposal.cid] == 1, f"command {proposal.cid} in the log {counts[proposal.cid]}x"
        assert all(proposal.cid in c.nodes[i].app.applied_ids for i in c.ids)
    assert all(c.applied_index(i) >= last for i in c.ids)


def churn(c: Cluster, ticks: int, rng: random.Random) -> None:
    """Clients keep proposing (retrying unacknowledged commands with the same id) while nodes
    crash, restart and get partitioned."""
    for _ in range(ticks):
        with contextlib.suppress(ProposalDropped):
            c.propose(payload=b"%d" % rng.randrange(10**6))
        roll = rng.random()
        alive = c.alive_ids()
        if roll < 0.03 and len(alive) > 1:
            c.crash(rng.choice(alive))
        elif roll < 0.08:
            dead = [i for i in c.ids if not c.nodes[i].alive]
            if dead:
                c.restart(rng.choice(dead))
        elif roll < 0.1:
            c.net.isolate(rng.choice(c.ids))
        elif roll < 0.13:
            c.net.heal()
        c.tick()
    heal_everything(c)


def check_churn_outcome(c: Cluster) -> None:
    pending = [p for p in c.proposals.values() if p.cid not in c.cid_index]
    for proposal in pending:  # clients retry what they never heard back about
        with contextlib.suppress(ProposalDropped):
            c.repropose(proposal)
    last = c.one(b"end", len(c.ids), max_ticks=600)
    assert all(c.applied_index(i) >= last for i in c.ids)
    digests = {c.nodes[i].app.digest for i in c.ids}
    assert len(digests) == 1, "equal applied index, different application state"
    acked = [p for p in c.proposals.values() if p.acked_index]
    assert acked
    for proposal in acked:  # applied once each: the application deduplicates retries
        assert all(proposal.cid in c.nodes[i].app.applied_ids for i in c.ids)


def test_reliable_churn() -> None:
    c = Cluster(seed=22, voters=5, durable_app=False)
    churn(c, 400, random.Random(22))
    check_churn_outcome(c)


def test_unreliable_churn() -> None:
    faults = Faults(drop_rate=0.1, dup_rate=0.05, min_delay_ticks=0, max_delay_ticks=4)
    c = Cluster(seed=23, voters=5, faults=faults, disk_delay_rate=0.2, disk_delay_ticks=3)
    churn(c, 400, random.Random(23))
    check_churn_outcome(c)
