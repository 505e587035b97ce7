"""What the upgrade tests write on old code, and what they read back on new code.

``write_history`` exercises every kind of record a data directory can hold across an upgrade:
puts (overwrites, so keys have several versions), single and range deletes (tombstones),
transactions taking either branch, a lease with keys attached, a revoked lease (its keys
deleted), a compaction (so a snapshot carries a compact revision and history above it), and
client sessions (every write goes through one). ``read_state`` reads one node alone
(serializable reads), so each node's own state machine is compared, not the leader's.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from quorum.client import txn as t
from quorum.client.aio import AsyncClient
from quorum.errors import QuorumError, RevisionCompacted
from quorum.state.commands import Event, KeyValue

ALL = b"\0"  # as key and range_end: every key
LEASE_TTL_S = 3600  # far beyond any test: the leased keys must survive the whole upgrade


@dataclass(frozen=True)
class Written:
    """What ``write_history`` left: the lease that stays, and revisions worth reading at."""

    lease_id: int
    compacted_at: int  # history below this revision is gone
    probe_revision: int  # above the compaction, below the head: history to compare
    head: int


@dataclass(frozen=True)
class NodeState:
    """One node's state machine as its own reads show it."""

    revision: int
    kvs: tuple[KeyValue, ...]  # every key at the latest revision
    probe: tuple[KeyValue, ...]  # every key at Written.probe_revision
    hash: int  # HashKV: digest of the history at ``revision`` (etcd's HashKV)
    compact_revision: int
    lease: tuple[int, tuple[bytes, ...]]  # (granted TTL, attached keys) of Written.lease_id
    events: tuple[Event, ...]  # a watch from just above the compaction to ``revision``
    compacted_refused: bool  # a read below the compaction raises RevisionCompacted


async def write_history(client: AsyncClient, rounds: int = 3) -> Written:
    """About 60 + 60 * rounds revisions of mixed writes; returns what the checks need."""
    for r in range(rounds):
        for i in range(40):
            await client.put(f"k/{i:03d}".encode(), f"v{r}-{i}".encode())
        for i in range(0, 40, 7):
            await client.delete(f"k/{i:03d}".encode())
        await client.delete(f"k/{10 * r + 1:03d}".encode(), f"k/{10 * r + 4:03d}".encode())
        for i in range(8):
            key = f"t/{i}".encode()
            # creates the key the first round, then takes the failure branch (an update)
            await client.txn([t.version(key) == 0],
                             [t.put(key, b"new"), t.put(f"t/{i}/created".encode(), b"1")],
                             [t.put(key, f"round{r}".encode()), t.get(key)])
    keep = (await client.lease_grant(LEASE_TTL_S)).id
    gone = (await client.lease_grant(LEASE_TTL_S)).id
    for i in range(5):
        await client.put(f"lease/keep/{i}".encode(), b"held", lease=keep)
        await client.put(f"lease/gone/{i}".encode(), b"held", lease=gone)
    await client.lease_revoke(gone)
    compacted_at = (await client.put(b"marker/compact", b"here")).revision
    await client.compact(compacted_at)
    for i in range(20):
        await client.put(f"k/{i:03d}".encode(), f"after-compaction-{i}".encode())
    probe = (await client.put(b"marker/probe", b"here")).revision
    head = probe
    for i in range(20, 40):
        head = (await client.put(f"k/{i:03d}".encode(), f"after-probe-{i}".encode())).revision
    return Written(keep, compacted_at, probe, head)


async def read_state(endpoint: str, written: Written) -> NodeState:
    """Read one node's state with serializable (local) reads and a watch on that node."""
    async with AsyncClient([endpoint], timeout_s=5) as c:
        now = await c.range(ALL, ALL, serializable=True)
        probe = await c.range(ALL, ALL, revision=written.probe_revision, serializable=True)
        hkv = await c.hash_kv(now.revision)
        ttl = await c.lease_time_to_live(written.lease_id, keys=True)
        events = await watched(c, written.compacted_at + 1, now.revision)
        try:
            await c.range(ALL, ALL, revision=written.compacted_at - 1, serializable=True)
            refused = False
        except RevisionCompacted:
            refused = True
    return NodeState(now.revision, now.kvs, probe.kvs, hkv.hash, hkv.compact_revision,
                     (ttl.granted_ttl_s, tuple(sorted(ttl.keys))), events, refused)


async def watched(client: AsyncClient, start: int, head: int) -> tuple[Event, ...]:
    """Every event (with its previous version) of revisions ``start``..``head``, replayed
    from history by a watch."""
    watcher = client.watch(ALL, ALL, start_revision=start, prev_kv=True)
    events: list[Event] = []
    try:
        async with asyncio.timeout(10):
            async for batch in watcher:
                events += batch.events
                # a batch without events is a progress notice: all up to its revision sent
                done_to = events[-1].kv.mod_revision if batch.events else batch.revision
                if done_to >= head:
                    break
    finally:
        await watcher.cancel()
    return tuple(e for e in events if e.kv.mod_revision <= head)


async def converged(endpoints: list[str], written: Written,
                    timeout_s: float = 20.0) -> dict[str, NodeState]:
    """Each node's state once all have applied the same revision (a follower may lag the
    leader by a heartbeat); after ``timeout_s`` whatever they hold, for the caller to
    compare."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            states = {ep: await read_state(ep, written) for ep in endpoints}
        except QuorumError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        if len({s.revision for s in states.values()}) == 1 or time.monotonic() > deadline:
            return states
        await asyncio.sleep(0.2)


async def write_after(client: AsyncClient, tag: str, count: int = 30) -> int:
    """Writes on the new code (puts, a txn, a delete); returns the revision of the last."""
    for i in range(count):
        await client.put(f"after/{tag}/{i:03d}".encode(), f"{tag}-{i}".encode())
    await client.txn([t.value(f"after/{tag}/000".encode()) == f"{tag}-0".encode()],
                     [t.put(f"after/{tag}/txn".encode(), b"took success")], [])
    return (await client.delete(f"after/{tag}/001".encode())).revision
