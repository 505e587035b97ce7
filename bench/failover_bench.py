"""How long writes stop after SIGKILL of the leader (default timing: heartbeat 100 ms, election
timeout 1 s). Runs a 3-node cluster of real processes on loopback, writes continuously from a
few clients, kills the leader ROUNDS times (restarting it between rounds) and prints the gap
between the kill and the first write acknowledged afterwards.

    .venv/bin/python bench/failover_bench.py [ROUNDS] [--latency REPS]

``--latency REPS`` first measures one sequential client's puts (``quorum bench --clients 1``,
5 s per run, REPS runs each) sent to the leader and to a follower (which forwards), printing
the medians of the runs' p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
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


def single_client(endpoint: str, seconds: float = 5.0) -> dict[str, float]:
    """One ``quorum bench`` run: one client, sequential 100-byte puts, to ``endpoint``."""
    cmd = [sys.executable, "-m", "quorum.cli.main", "-w", "json", "bench", "--target", "quorum",
           "--bench-endpoints", endpoint, "--workload", "put", "--clients", "1",
           "--connections", "1", "--duration", str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=True)
    result: dict[str, float] = json.loads(out.stdout)
    return result


async def latency(cluster: ProcCluster, reps: int) -> None:
    leader = await leader_id(cluster)
    follower = min(i for i in cluster.nodes if i != leader)
    for role, node in (("leader", leader), ("follower", follower)):
        endpoint = cluster.nodes[node].client_url
        runs = [await asyncio.to_thread(single_client, endpoint) for _ in range(reps)]
        p50 = statistics.median(r["p50_ms"] for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        rates = ", ".join(f"{r['ops_per_s']:.0f}" for r in runs)
        print(f"put x1 to the {role}: p50 {p50:.2f} ms, p99 {p99:.2f} ms "
              f"(medians of {reps} runs; ops/s {rates})")


async def main(rounds: int, latency_reps: int) -> None:
    with ProcCluster(3, tempfile.mkdtemp(prefix="quorum-failover-"), tick_ms=100,
                     election_ticks=10) as cluster:
        if latency_reps:
            await latency(cluster, latency_reps)
        if not rounds:
            return
        gaps = []
        for r in range(rounds):
            gap = await one_round(cluster)
            gaps.append(gap)
            print(f"round {r + 1}: writes resumed {gap * 1000:.0f} ms after SIGKILL of the leader")
        print(f"median {statistics.median(gaps) * 1000:.0f} ms, max {max(gaps) * 1000:.0f} ms "
              f"over {rounds} rounds")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rounds", type=int, nargs="?", default=5)
    parser.add_argument("--latency", type=int, default=0, metavar="REPS")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.latency))
