"""Rolling upgrade: three nodes on an older release (peer protocol 1) are moved to the current
code (protocol 2) one at a time while a client writes throughout.

What docs/transport.md "Versions" claims, checked step by step:

* version 1 and version 2 nodes refuse each other at the first frame, with a logged reason
  (each side's log names the other's version);
* the side with a majority keeps serving writes: the two old nodes after the first step, the
  two new nodes after the second, all three after the third;
* the minority node learns nothing from the other version (its revision does not move), so no
  node is ever sent an entry it cannot apply;
* no node diverges: at every step all nodes hash the same history up to the lowest revision
  any of them has (HashKV at that revision), and after the last step all hold the same keys
  and the same hash;
* no acknowledged write is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from quorum.client.aio import AsyncClient
from quorum.errors import QuorumError

from .cluster import CURRENT, FORMAT1_COMMIT, PREBATCH_COMMIT, Code, UpgradeCluster
from .workload import ALL, NodeState, Written, converged, read_state, write_history

pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("procs")]

PREFIX = b"roll/"


class Writer:
    """Puts roll/<n> = n from several tasks until stopped; remembers what was acknowledged.
    A failed put (no leader yet, node stopping) is retried as a new key after a pause."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.acked: list[int] = []
        self.failed = 0
        self._next = 0
        self._stop = False

    async def run(self, tasks: int = 4) -> None:
        await asyncio.gather(*(self._one() for _ in range(tasks)))

    async def _one(self) -> None:
        while not self._stop:
            self._next += 1
            n = self._next
            try:
                await self.client.put(PREFIX + b"%08d" % n, b"%d" % n, timeout_s=3)
                self.acked.append(n)
            except QuorumError:
                self.failed += 1
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        self._stop = True

    async def progress(self, count: int, timeout_s: float = 30.0) -> None:
        """Wait for ``count`` more acknowledgements: the cluster serves writes."""
        target = len(self.acked) + count
        deadline = time.monotonic() + timeout_s
        while len(self.acked) < target:
            assert time.monotonic() < deadline, (
                f"writes stalled: {len(self.acked)} acked, {self.failed} failed")
            await asyncio.sleep(0.05)


async def revision_of(cluster: UpgradeCluster, node_id: int) -> int:
    async with AsyncClient([cluster.nodes[node_id].client_url], timeout_s=3) as c:
        return (await c.range(ALL, ALL, count_only=True, serializable=True)).revision


async def no_divergence(cluster: UpgradeCluster) -> dict[int, int]:
    """HashKV of every node at the lowest revision any node has: replicas of one log agree on
    every prefix of it, whichever version applied it. Returns each node's revision."""
    revisions = {i: await revision_of(cluster, i) for i in cluster.nodes}
    common = min(revisions.values())
    hashes = {}
    for i, node in cluster.nodes.items():
        async with AsyncClient([node.client_url], timeout_s=3) as c:
            hashes[i] = (await c.hash_kv(common)).hash
    assert len(set(hashes.values())) == 1, f"diverged at revision {common}: {hashes}"
    return revisions


async def refused_each_other(cluster: UpgradeCluster, new: set[int], old: set[int],
                             timeout_s: float = 15.0) -> None:
    """Each new node logged refusing protocol 1 and each old node refusing protocol 2 (every
    node dials every other, so each side sees the other's first frame)."""
    wanted = {i: "unsupported protocol version 1" for i in new}
    wanted |= {i: "unsupported protocol version 2" for i in old}
    deadline = time.monotonic() + timeout_s
    while True:
        missing = {i: text for i, text in wanted.items() if text not in cluster.log_text(i)}
        if not missing:
            return
        assert time.monotonic() < deadline, f"no logged refusal: {missing}"
        await asyncio.sleep(0.2)


async def stays_put(cluster: UpgradeCluster, node_id: int, writer: Writer) -> None:
    """The minority node's revision does not move while the majority commits writes: it is
    sent nothing by the other version (and applies nothing on its own)."""
    before = await revision_of(cluster, node_id)
    await writer.progress(40)
    assert await revision_of(cluster, node_id) == before


async def upgrade(cluster: UpgradeCluster, node_id: int, new: Code) -> None:
    assert cluster.stop(node_id) == 0, f"node {node_id} did not stop cleanly"
    cluster.start(node_id, new)
    cluster.wait_ports(only=node_id)


async def missing_acked(endpoints: list[str], acked: list[int]) -> list[int]:
    async with AsyncClient(endpoints, timeout_s=10) as c:
        present = {int(kv.value) for kv in (await c.get_prefix(PREFIX)).kvs}
    return sorted(set(acked) - present)


async def next_to_upgrade(cluster: UpgradeCluster, old: set[int], leader_first: bool) -> int:
    """The old node that leads the old nodes (``leader_first``), or one that does not. While
    the old nodes are the majority one of them leads; afterwards the choice is arbitrary."""
    if len(old) * 2 <= len(cluster.nodes):
        return min(old)
    leader = await cluster.leader_among(old)
    return leader if leader_first else min(old - {leader})


async def rolling(cluster: UpgradeCluster, old_code: Code, new_code: Code,
                  leader_first: bool) -> None:
    cluster.start_all(old_code)
    await cluster.leader_among({1, 2, 3})
    async with AsyncClient(cluster.endpoints(), timeout_s=10) as client:
        written: Written = await write_history(client, rounds=1)
    history: NodeState = await read_state(cluster.nodes[1].client_url, written)

    old, new = set(cluster.nodes), set()
    async with AsyncClient(cluster.endpoints(), timeout_s=10) as client:
        writer = Writer(client)
        load = asyncio.create_task(writer.run())
        try:
            await writer.progress(50)
            await no_divergence(cluster)
            while old:
                node_id = await next_to_upgrade(cluster, old, leader_first)
                await upgrade(cluster, node_id, new_code)
                old.remove(node_id)
                new.add(node_id)
                majority = new if len(new) > len(old) else old
                minority = set(cluster.nodes) - majority
                await cluster.leader_among(majority)
                await writer.progress(40)  # the majority's version serves writes
                if minority:
                    await refused_each_other(cluster, new=new, old=old)
                    for m in minority:
                        await stays_put(cluster, m, writer)
                await no_divergence(cluster)
        finally:
            writer.stop()
            with contextlib.suppress(QuorumError):
                await asyncio.wait_for(load, 15)

    assert await missing_acked(cluster.endpoints(), writer.acked) == []
    states = await converged(cluster.endpoints(), written)
    assert len(set(states.values())) == 1, f"nodes diverge after the upgrade: {states}"
    final = next(iter(states.values()))
    # what the old code wrote before the upgrade began is still there as it was
    assert final.probe == history.probe
    assert final.lease == history.lease
    assert final.compact_revision == history.compact_revision


ORDERS = {"leader-first": True, "followers-first": False}


@pytest.mark.parametrize("order", list(ORDERS))
def test_rolling_upgrade_from_protocol1(tmp_path: Path, releases: dict[str, Code],
                                        order: str) -> None:
    """dedeab2 -> current: the protocol change alone (the snapshots are format 2 on both)."""
    with UpgradeCluster(tmp_path, 21 + ORDERS[order]) as cluster:
        asyncio.run(rolling(cluster, releases[PREBATCH_COMMIT], CURRENT, ORDERS[order]))


@pytest.mark.parametrize("order", list(ORDERS))
def test_rolling_upgrade_from_format1(tmp_path: Path, releases: dict[str, Code],
                                      order: str) -> None:
    """ec25af5 -> current: also format 1 snapshots on the old nodes."""
    with UpgradeCluster(tmp_path, 23 + ORDERS[order]) as cluster:
        asyncio.run(rolling(cluster, releases[FORMAT1_COMMIT], CURRENT, ORDERS[order]))
