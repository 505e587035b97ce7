"""How long automatic snapshots stall a node's event loop (see docs/benchmarks.md, "Running
cluster").

    .venv/bin/python bench/snapshot_stall_bench.py [--puts 60000] [--clients 256] [--runs 2]

One single-node cluster in this process (RaftServer + NodeCore + the KV state machine on
durable storage in a temp dir, fsync on, a snapshot every 10,000 entries, uvloop when
installed) takes PUTS writes of 100-byte values to distinct keys from CLIENTS concurrent
writers, while a monitor task sleeps 1 ms in a loop and records how late it wakes up (the
event loop's stalls). Runs alternate ``background`` (snapshots encoded in a thread, written
between Readies) and ``inline`` (the whole snapshot taken in ``advance`` on the loop, as
before), RUNS times each, and print per run: writes/s, put latency p50/p99/max, the longest
loop stall and the number of stalls over 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time

from quorum.node.core import NodeCore, bootstrap_data
from quorum.node.envelope import MemberInfo
from quorum.node.kv import KvStateMachine
from quorum.node.server import RaftServer
from quorum.node.storage import DurableNodeStorage, bootstrap
from quorum.raft import Config
from quorum.state import commands as sc
from quorum.storage.durable import DurableStorage
from quorum.storage.fs import OsFileSystem

MEMBERS = (MemberInfo(1, peer_url="127.0.0.1:1"),)


async def one_run(background: bool, puts: int, clients: int) -> dict[str, float]:
    storage = DurableNodeStorage(DurableStorage.open(OsFileSystem(), tempfile.mkdtemp(
        prefix="quorum-stall-")))
    bootstrap(storage, (1,), bootstrap_data(MEMBERS, KvStateMachine()))
    core = NodeCore(Config(id=1), storage, KvStateMachine(), random.Random(1), lambda _m: None,
                    members=MEMBERS, snapshot_entries=10_000, request_timeout_ticks=100_000)
    server = RaftServer(core, tick_s=0.1, background_snapshots=background)
    await server.start()
    core.campaign()
    server.wake()
    while not core.is_leader:
        await asyncio.sleep(0.01)
    stalls: list[float] = []
    latencies: list[float] = []
    done = False

    async def monitor() -> None:
        while not done:
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            stalls.append(time.perf_counter() - t0 - 0.001)

    async def writer(first: int) -> None:
        for i in range(first, puts, clients):
            payload = sc.encode_command(sc.PutRequest(b"key/%09d" % i, b"v" * 100))
            t0 = time.perf_counter()
            await server.propose(payload)
            latencies.append(time.perf_counter() - t0)

    mon = asyncio.create_task(monitor())
    start = time.perf_counter()
    await asyncio.gather(*(writer(c) for c in range(clients)))
    elapsed = time.perf_counter() - start
    done = True
    await mon
    snapshots = core.snapshot_index
    await server.stop()
    storage.close()
    latencies.sort()
    return {
        "rate": puts / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "max_ms": 1000 * latencies[-1],
        "stall_ms": 1000 * max(stalls),
        "stalls_50ms": sum(s > 0.05 for s in stalls),
        "snapshot_index": snapshots,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=60_000)
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    results: dict[str, list[dict[str, float]]] = {"background": [], "inline": []}
    for _ in range(args.runs):
        for mode in results:
            r = runner(one_run(mode == "background", args.puts, args.clients))
            results[mode].append(r)
            print(f"{mode:10} {r['rate']:7.0f} puts/s  p50 {r['p50_ms']:6.1f} ms  p99 "
                  f"{r['p99_ms']:6.1f} ms  max {r['max_ms']:6.1f} ms  longest loop stall "
                  f"{r['stall_ms']:6.1f} ms  stalls > 50 ms: {r['stalls_50ms']:.0f}  "
                  f"(last snapshot at {r['snapshot_index']:.0f})", flush=True)
    for mode, rs in results.items():
        print(f"median {mode:10} {statistics.median(r['rate'] for r in rs):7.0f} puts/s  p99 "
              f"{statistics.median(r['p99_ms'] for r in rs):6.1f} ms  longest stall "
              f"{statistics.median(r['stall_ms'] for r in rs):6.1f} ms")


if __name__ == "__main__":
    main()
