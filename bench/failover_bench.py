"""How long writes stop after SIGKILL of the leader (default timing: heartbeat 100 ms, election
timeout 1 s). Runs a 3-node cluster of real processes on loopback, writes continuously from a
few clients, kills the leader ROUNDS times (restarting it between rounds) and prints the gap
between the kill and the first write acknowledged afterwards.

    .venv/bin/python bench/failover_bench.py [ROUNDS]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time

from quorum.client.aio import AsyncClient
from quorum.errors import QuorumError
from quorum.verify.procs import ProcCluster


async def leader_id(cluster: ProcCluster) -> int:
    while True:
        for ep in cluster.endpoints():
            try:
                async with AsyncClient([ep], timeout_s=0.5) as c:
                    lead = (await c.status()).leader_id
                    if lead:
                        return lead
            except QuorumError:
                pass
        await asyncio.sleep(0.05)


async def one_round(cluster: ProcCluster) -> float:
    leader = await leader_id(cluster)
    acked: list[tuple[float, float]] = []  # (issued, acknowledged)
    stop = False

    async def writer(i: int) -> None:
        async with AsyncClient(cluster.endpoints(), timeout_s=5, dead_after_s=0.5) as c:
            n = 0
            while not stop:
                n += 1
                issued = time.monotonic()
                try:
                    await c.put(b"failover/%d" % i, b"%d" % n)
                    acked.append((issued, time.monotonic()))
                except QuorumError:
                    await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(writer(i)) for i in range(4)]
    await asyncio.sleep(1.0)
    cluster.kill(leader)
    killed = time.monotonic()
    # the first write *issued after* the kill that is acknowledged
    def resumed() -> list[float]:
        return [done for issued, done in acked if issued > killed]

    while not resumed() and time.monotonic() - killed < 20:
        await asyncio.sleep(0.01)
    gap = min(resumed(), default=float("inf")) - killed
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    cluster.start_node(leader)
    cluster.wait_ports()
    await asyncio.sleep(1.0)
    return gap


async def main(rounds: int) -> None:
    with ProcCluster(3, tempfile.mkdtemp(prefix="quorum-failover-"), tick_ms=100,
                     election_ticks=10) as cluster:
        gaps = []
        for r in range(rounds):
            gap = await one_round(cluster)
            gaps.append(gap)
            print(f"round {r + 1}: writes resumed {gap * 1000:.0f} ms after SIGKILL of the leader")
        print(f"median {statistics.median(gaps) * 1000:.0f} ms, max {max(gaps) * 1000:.0f} ms "
              f"over {rounds} rounds")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
