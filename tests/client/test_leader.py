"""Leader-preferring connections against a real 3-node cluster (separate processes).

The first endpoint given to the client is a follower. Without leader preference every write
and linearizable read would reach the leader through it (the follower's ``forwarded``
counter in its status shows each one); with it they go to the leader directly, and after a
leadership transfer the client follows the new leader.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from quorum.client.aio import AsyncClient
from quorum.verify.procs import ProcCluster

pytestmark = [pytest.mark.timeout(120), pytest.mark.xdist_group("procs")]

WRITES = 40


async def _leader(cluster: ProcCluster, not_: int = 0, timeout_s: float = 15.0) -> int:
    """The leader every node agrees on (other than ``not_``)."""
    return await cluster.agreed_leader(timeout_s, not_)


async def _forwarded(cluster: ProcCluster, node_id: int) -> int:
    """Writes and linearizable reads node ``node_id`` passed on to the leader so far."""
    async with AsyncClient([cluster.nodes[node_id].client_url], timeout_s=2) as c:
        return (await c.status()).forwarded


async def _work(client: AsyncClient, tag: bytes) -> None:
    for i in range(WRITES):
        await client.put(tag + b"/%d" % i, b"v")
        assert (await client.get(tag + b"/%d" % i)) is not None


def _follower_first(cluster: ProcCluster, leader: int) -> list[str]:
    follower = next(i for i in cluster.nodes if i != leader)
    others = [cluster.nodes[i].client_url for i in cluster.nodes if i != follower]
    return [cluster.nodes[follower].client_url, *others]


def test_writes_and_reads_go_to_the_leader_and_follow_a_transfer(tmp_path: Path) -> None:
    async def scenario() -> None:
        with ProcCluster(3, tmp_path) as cluster:
            leader = await _leader(cluster)
            endpoints = _follower_first(cluster, leader)
            follower = next(i for i, n in cluster.nodes.items() if n.client_url == endpoints[0])
            async with AsyncClient(endpoints, timeout_s=5, prefer_leader=True) as client:
                await client.connect()
                assert client.endpoint == endpoints[0]  # home is the follower...
                assert client.leader_endpoint == cluster.nodes[leader].client_url  # ...
                before = await _forwarded(cluster, follower)
                await _work(client, b"a")
                # nothing went through the follower (the forwarded count did not move)
                assert await _forwarded(cluster, follower) == before

                # hand leadership to the home node: the old leader now forwards, its hint
                # moves the client; home leads, so one connection serves everything
                async with AsyncClient([cluster.nodes[leader].client_url], timeout_s=5) as c:
                    await c.move_leader(follower)
                assert await _leader(cluster) == follower
                await _work(client, b"b")
                assert client.leader_endpoint == endpoints[0]
                old_leader_count = await _forwarded(cluster, leader)
                await _work(client, b"c")
                assert await _forwarded(cluster, leader) == old_leader_count
                assert await _forwarded(cluster, follower) == before

    asyncio.run(scenario())


def test_without_leader_preference_the_follower_forwards_every_request(tmp_path: Path) -> None:
    """The counter the test above relies on does count: the same work through a client that
    does not prefer the leader shows up in the follower's ``forwarded``."""

    async def scenario() -> None:
        with ProcCluster(3, tmp_path) as cluster:
            leader = await _leader(cluster)
            endpoints = _follower_first(cluster, leader)
            follower = next(i for i, n in cluster.nodes.items() if n.client_url == endpoints[0])
            async with AsyncClient(endpoints, timeout_s=5) as client:  # the default
                await client.connect()
                before = await _forwarded(cluster, follower)
                await _work(client, b"a")
                assert client.leader_endpoint == endpoints[0]
                # every put and get went through the follower (session opens add a few)
                assert await _forwarded(cluster, follower) - before >= 2 * WRITES

    asyncio.run(scenario())


def test_after_the_leader_is_killed_the_client_moves_to_the_new_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        with ProcCluster(3, tmp_path) as cluster:
            leader = await _leader(cluster)
            endpoints = _follower_first(cluster, leader)
            async with AsyncClient(endpoints, timeout_s=10, prefer_leader=True) as client:
                await client.connect()
                await _work(client, b"a")
                assert client.leader_endpoint == cluster.nodes[leader].client_url
                cluster.kill(leader)
                await _work(client, b"b")  # retried through home until a leader is known
                new_leader = await _leader(cluster, not_=leader)
                await _work(client, b"c")
                assert client.leader_endpoint == cluster.nodes[new_leader].client_url
                # settled: the remaining follower passes nothing on any more
                others = [i for i in cluster.nodes if i not in (leader, new_leader)]
                counts = {i: await _forwarded(cluster, i) for i in others}
                await _work(client, b"d")
                assert {i: await _forwarded(cluster, i) for i in others} == counts

    asyncio.run(scenario())
