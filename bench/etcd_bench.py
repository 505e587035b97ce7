"""Unary etcd Put/s and Range/s through quorum's grpc.aio server on a LocalBackend.

The server runs in its own process (``python -m quorum.api.etcd``); this process drives it
with ``--clients`` concurrent grpc.aio callers on one channel for ``--seconds`` each phase.

    .venv/bin/python bench/etcd_bench.py --clients 64 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc


def start_server(workdir: Path, uvloop: bool) -> tuple[subprocess.Popen[bytes], int]:
    port_file = workdir / "port"
    extra = ["--uvloop"] if uvloop else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "quorum.api.etcd", "--port", "0", "--port-file", str(port_file),
         *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


async def phase(kv: rpc.KVStub, clients: int, seconds: float, put: bool) -> tuple[int, list[float]]:
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    value = b"v" * 100

    async def worker(n: int) -> int:
        done = 0
        while time.monotonic() < stop:
            key = b"bench/%d/%d" % (n, done % 1000)
            t0 = time.perf_counter()
            if put:
                await kv.Put(pb.PutRequest(key=key, value=value))
            else:
                await kv.Range(pb.RangeRequest(key=key))
            latencies.append(time.perf_counter() - t0)
            done += 1
        return done

    counts = await asyncio.gather(*(worker(n) for n in range(clients)))
    return sum(counts), latencies


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


async def cpu(n: int) -> None:
    """Server-side CPU per request without gRPC: the KV servicer called directly (translation
    + LocalBackend), against the backend called directly (state machine only)."""
    from quorum.api.etcd.config import EtcdApiConfig
    from quorum.api.etcd.kv import KVServicer
    from quorum.api.local import LocalBackend
    from quorum.state import PutRequest, RangeRequest

    backend = LocalBackend()
    servicer = KVServicer(backend, EtcdApiConfig())
    value = b"v" * 100
    puts = [pb.PutRequest(key=b"bench/%d" % (i % 1000), value=value) for i in range(n)]
    gets = [pb.RangeRequest(key=b"bench/%d" % (i % 1000)) for i in range(n)]
    rows = []
    for name, calls in (
        ("put via servicer", [servicer.Put(r, None) for r in puts]),  # type: ignore[arg-type]
        ("put via backend", [backend.write(PutRequest(r.key, r.value)) for r in puts]),
        ("range via servicer", [servicer.Range(r, None) for r in gets]),  # type: ignore[arg-type]
        ("range via backend", [backend.read(RangeRequest(r.key)) for r in gets]),
    ):
        t0 = time.perf_counter()
        for call in calls:
            await call
        rows.append((name, (time.perf_counter() - t0) / n * 1e6))
    for name, us in rows:
        print(f"{name:20s} {us:6.1f} us/request")


async def main(args: argparse.Namespace) -> None:
    if args.cpu:
        await cpu(args.cpu)
        return
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(Path(tmp), args.uvloop)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                kv = rpc.KVStub(channel)
                await phase(kv, 4, 0.5, put=True)  # warm up
                for clients in args.clients:
                    for name, is_put in (("Put", True), ("Range", False)):
                        n, lat = await phase(kv, clients, args.seconds, is_put)
                        print(
                            f"{name:5s} clients={clients:3d}: {n / args.seconds:8.0f}/s  "
                            f"p50 {pct(lat, 0.5):6.2f} ms  p99 {pct(lat, 0.99):6.2f} ms"
                        )
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--uvloop", action="store_true", help="server on uvloop")
    parser.add_argument("--cpu", type=int, default=0, metavar="N",
                        help="instead: server CPU per request over N direct calls (no gRPC)")
    asyncio.run(main(parser.parse_args()))
