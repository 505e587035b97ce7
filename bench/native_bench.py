"""Native protocol throughput: pipelined puts and gets against a LocalBackend server.

The server runs in a child process (its own core), the load in this one:

    .venv/bin/python bench/native_bench.py [--seconds 3] [--inflight 256] [--uvloop]

Modes: ``client`` goes through AsyncClient (sessions, retries, deadlines); ``raw`` sends
protocol frames on one Connection with no client logic (the protocol's ceiling). Writes
through the client run in sessions (exactly-once), ``raw`` puts run without one.
Numbers are requests per second completed; see docs/benchmarks.md.

``--cpu`` instead measures CPU time per request with no network: on the server side, frames
are fed to one server connection whose transport is a stub, next to the same requests
called on the backend directly (the difference is the protocol layer's own cost); on the
client side, AsyncClient calls are answered at once by a stub transport.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

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


class _StubTransport(asyncio.Transport):
    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("stub", 0)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def cpu_per_request(n: int = 20000) -> dict[str, float]:
    """Microseconds per request: through the server connection, and on the backend alone."""
    import msgspec

    from quorum.api.local import LocalBackend
    from quorum.api.native.dispatch import BackendDispatcher
    from quorum.api.native.framing import frame
    from quorum.api.native.server import NativeServer, _Connection

    out: dict[str, float] = {}
    value = b"x" * 32
    makers = {
        "put": lambda i: PutRequest(b"k%d" % (i % 1000), value),
        "get": lambda i: RangeRequest(b"k%d" % (i % 1000)),
    }
    backend = LocalBackend()
    conn = _Connection(NativeServer(BackendDispatcher(backend), 1 << 22, 1 << 30))
    conn.connection_made(_StubTransport())
    enc = msgspec.msgpack.Encoder()
    for name, make in makers.items():
        data = b"".join(frame(enc.encode(m.Request(i + 1, make(i)))) for i in range(n))
        start = time.perf_counter()
        for at in range(0, len(data), 65536):
            conn.data_received(data[at : at + 65536])
            await asyncio.sleep(0)  # let the batched flush run, as the loop would
        out[f"server {name}"] = (time.perf_counter() - start) / n * 1e6
    direct = LocalBackend()
    start = time.perf_counter()
    for i in range(n):
        await direct.write(makers["put"](i))
    out["backend put"] = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for i in range(n):
        await direct.read(makers["get"](i))
    out["backend get"] = (time.perf_counter() - start) / n * 1e6
    out.update(await client_cpu_per_request(n))
    return out


class _AnsweringTransport(asyncio.Transport):
    """Answers each request frame at once with a canned result, like an infinitely fast
    server, so only the client's own work (and this stub's codec) is measured."""

    def __init__(self, conn: Any) -> None:
        super().__init__()
        import msgspec

        from quorum.api.native.framing import FrameDecoder

        self._conn = conn
        self._frames = FrameDecoder()
        self._decode = msgspec.msgpack.Decoder(m.Request).decode
        self._encode = msgspec.msgpack.Encoder().encode

    def write(self, data: bytes | bytearray | memoryview) -> None:
        from quorum.api.native.framing import frame
        from quorum.state.commands import KeyValue, PutResponse, RangeResponse
        from quorum.state.commands import SessionOpenResponse as Opened

        out = []
        for body in self._frames.feed(bytes(data)):
            req = self._decode(body)
            if isinstance(req.body, PutRequest):
                resp: Any = PutResponse(5)
            elif isinstance(req.body, RangeRequest):
                resp = RangeResponse(5, (KeyValue(b"k", b"v", 1, 1, 1),), False, 1)
            else:
                resp = Opened(1, req.id)
            out.append(frame(self._encode(m.Response(req.id, resp))))
        asyncio.get_running_loop().call_soon(self._conn.data_received, b"".join(out))

    def get_extra_info(self, name: str, default: object = None) -> object:
        return None

    def abort(self) -> None:
        pass


async def client_cpu_per_request(n: int, inflight: int = 256) -> dict[str, float]:
    """Microseconds per AsyncClient call against a stub that answers at once."""
    from quorum.client.connection import Connection

    client = AsyncClient(["stub:1"], timeout_s=30, max_sessions=inflight)
    conn = Connection("stub:1", 1 << 22)
    conn.connection_made(_AnsweringTransport(conn))
    client._conn = conn
    out: dict[str, float] = {}
    calls = {"client get": lambda: client.get(b"k"), "client put": lambda: client.put(b"k", b"v")}
    per_lane = n // inflight
    for name, call in calls.items():

        async def lane(call: Callable[[], Awaitable[object]] = call) -> None:
            for _ in range(per_lane):
                await call()

        start = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(inflight)))
        out[name] = (time.perf_counter() - start) / (per_lane * inflight) * 1e6
    return out


def cluster_bench(nodes: int, seconds: float, inflight: int) -> None:
    """Client puts/gets against real node processes (durable WAL, Raft replication)."""
    import tempfile

    from quorum.verify.procs import ProcCluster

    async def load(endpoints: list[str]) -> dict[str, float]:
        client = AsyncClient(endpoints, timeout_s=30, max_sessions=inflight)
        value = b"x" * 32
        await client.put(b"k0", value)  # waits out the first election
        out = {
            "cluster put": await drive(
                lambda i: client.put(b"k%d" % (i % 1000), value), seconds, inflight
            ),
            "cluster get": await drive(lambda i: client.get(b"k%d" % (i % 1000)), seconds, inflight),
            "cluster get (serializable)": await drive(
                lambda i: client.get(b"k%d" % (i % 1000), serializable=True), seconds, inflight
            ),
        }
        await client.close()
        return out

    with tempfile.TemporaryDirectory() as tmp, ProcCluster(nodes, tmp) as cluster:
        results = asyncio.run(load(cluster.endpoints()))
    for name, rate in results.items():
        print(f"{name:28s} {rate:10.0f} req/s  ({nodes} nodes, inflight {inflight})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--inflight", type=int, default=256)
    parser.add_argument("--uvloop", action="store_true", help="uvloop in client and server")
    parser.add_argument("--cpu", action="store_true", help="CPU per request, no network")
    parser.add_argument("--cluster", type=int, default=0,
                        help="run the client load against an N-node Raft cluster instead")
    args = parser.parse_args()
    if args.cluster:
        cluster_bench(args.cluster, args.seconds, args.inflight)
        return
    if args.cpu:
        for name, micros in asyncio.run(cpu_per_request()).items():
            print(f"{name:12s} {micros:6.1f} us/request  ({1e6 / micros:8.0f} /s of one core)")
        return
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
