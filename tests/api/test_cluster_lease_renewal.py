"""Lease renewals on a cluster node: only a leader that still has its majority renews.

A leader cut off from its majority keeps acting as leader until check quorum steps it down
(up to two election timeouts, Raft thesis §6.2); meanwhile the others may elect a new
leader, which restarts every lease's TTL at its promotion and knows nothing of what the old
leader renewed. A renewal the old leader acknowledged in that window promised the client a
TTL from the renewal that the real leader never granted: the lease could expire before it,
as ``quorum verify`` found (seed 816, 5 nodes, pause/partition/member: a key gone 43 ms
before the TTL since a renewal that a partitioned leader had answered in 1 ms).
"""

from __future__ import annotations

import asyncio

import pytest
from inproc_cluster import cluster, leader_of

from quorum.api.process import QuorumProcess
from quorum.errors import QuorumError
from quorum.state import commands as sc

# Check quorum steps an isolated leader down after one to two election timeouts: 200 ticks of
# 10 ms here, a window wide enough for the renewal below to be asked inside it.
ELECTION_TICKS = 200


async def _grant(leader: QuorumProcess) -> int:
    granted = await leader.backend.write(sc.LeaseGrantRequest(ttl=30))
    assert isinstance(granted, sc.LeaseGrantResponse)
    return granted.id


def test_a_leader_renews_while_it_has_its_majority() -> None:
    async def body() -> None:
        async with cluster(election_ticks=ELECTION_TICKS) as procs:
            leader = await leader_of(procs)
            lease = await _grant(leader)
            assert await asyncio.wait_for(leader.backend.lease_keepalive(lease), 5) == 30

    asyncio.run(body())


def test_a_leader_cut_off_from_its_majority_does_not_acknowledge_a_renewal() -> None:
    async def body() -> None:
        async with cluster(election_ticks=ELECTION_TICKS) as procs:
            leader = await leader_of(procs)
            lease = await _grant(leader)
            followers = [p for p in procs if p is not leader]
            for p in followers:
                procs.remove(p)
            await asyncio.gather(*(p.stop() for p in followers))
            # still leader by its own account: check quorum has not stepped it down yet
            assert leader.core.is_leader
            with pytest.raises(QuorumError):
                await asyncio.wait_for(leader.backend.lease_keepalive(lease), 10)

    asyncio.run(body())
