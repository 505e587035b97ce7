"""Native protocol throughput: pipelined puts and gets against a LocalBackend server.

The server runs in a child process (its own core), the load in this one:

    .venv/bin/python bench/native_bench.py [--seconds 3] [--inflight 256] [--uvloop]

Modes: ``client`` goes through AsyncClient (sessions, retries, deadlines); ``raw`` sends
protocol frames on one Connection with no client logic (the protocol's ceiling). Writes
through the client run in sessions (exactly-once), ``raw`` puts run without one.
Numbers are requests per second completed; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from quorum.api.native import messages as m
from quorum.client import AsyncClient
from quorum.client.connection import open_connection
from quorum.state.commands import PutRequest, RangeRequest

SERVER = """
import asyncio, sys
from quorum.api.local import LocalBackend
from quorum.api.native.server import serve_native
if sys.argv[1] == "1":
    import uvloop; uvloop.install()
async def main():
    backend = LocalBackend()
    server = await serve_native(backend, "127.0.0.1", 0)
    print(server.port, flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


async def drive(op: Callable[[int], Awaitable[object]], seconds: float, inflight: int) -> float:
    """Keep ``inflight`` operations running for ``seconds``; return completed per second."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def lane(lane_id: int) -> None:
        nonlocal done
        i = lane_id
        while time.perf_counter() < stop_at:
            await op(i)
            done += 1
            i += inflight

    start = time.perf_counter()
    await asyncio.gather(*(lane(k) for k in range(inflight)))
    return done / (time.perf_counter() - start)


async def bench(endpoint: str, seconds: float, inflight: int) -> dict[str, float]:
    results: dict[str, float] = {}
    client = AsyncClient([endpoint], timeout_s=30, max_sessions=inflight)
    value = b"x" * 32
    await client.put(b"k0", value)
    results["client put"] = await drive(
        lambda i: client.put(b"k%d" % (i % 1000), value), seconds, inflight
    )
    results["client get"] = await drive(lambda i: client.get(b"k%d" % (i % 1000)), seconds, inflight)
    await client.close()

    conn = await open_connection(endpoint, 5)
    ids = iter(range(1, 1 << 62))
    results["raw put"] = await drive(
        lambda i: conn.request(m.Request(next(ids), PutRequest(b"k%d" % (i % 1000), value))),
        seconds, inflight,
    )
    results["raw get"] = await drive(
        lambda i: conn.request(m.Request(next(ids), RangeRequest(b"k%d" % (i % 1000)))),
        seconds, inflight,
    )
    conn.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--inflight", type=int, default=256)
    parser.add_argument("--uvloop", action="store_true", help="uvloop in client and server")
    args = parser.parse_args()
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, "1" if args.uvloop else "0"],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        if args.uvloop:
            import uvloop

            uvloop.install()
        results = asyncio.run(bench(f"127.0.0.1:{port}", args.seconds, args.inflight))
    finally:
        proc.terminate()
        proc.wait()
    loop = "uvloop" if args.uvloop else "asyncio"
    for name, rate in results.items():
        print(f"{name:12s} {rate:10.0f} req/s  (inflight {args.inflight}, {loop})")


if __name__ == "__main__":
    main()
