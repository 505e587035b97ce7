"""Unary etcd Put/s and Range/s through quorum's etcd API on a LocalBackend.

The server runs in its own process (``python -m quorum.api.etcd --engine h2|grpcio``); this
process drives it with ``--clients`` concurrent grpc.aio callers on one channel for
``--seconds`` each phase.

    .venv/bin/python bench/etcd_bench.py --clients 64 --seconds 5 --uvloop --engine h2

``--floor MODE,...`` instead measures the gRPC floor: a do-nothing KV.Put server (it answers
a fixed PutResponse, optionally after ``--delay`` seconds, standing in for a Raft round trip)
in each server configuration, started in its own process, with the server process's CPU
time per call (user + system, all threads, from /proc) next to calls/s. Modes (joined
with ``-``): ``aio`` (grpc.aio, the generated servicer), ``sync`` (grpc.server on a thread
pool of ``--threads``), plus ``uvloop``, ``generic`` (a generic handler on raw bytes: no
(de)serializer in grpc, the request parsed with the generated class in the handler),
``opts`` (channelz off, BDP probing off, optimization_target=throughput), ``migration``
(grpc.aio with a migration_thread_pool); ``h2`` is quorum's own gRPC server
(quorum.api.h2grpc) instead of grpcio's.

    .venv/bin/python bench/etcd_bench.py --floor aio-uvloop,h2-uvloop,sync --clients 256 --reps 3

``--dev ENGINE,...`` drives the dev server itself (the KV servicer on a LocalBackend) the way
``--floor`` drives a do-nothing server: calls/s and server CPU per Put, per engine, interleaved.

    .venv/bin/python bench/etcd_bench.py --dev h2,grpcio --clients 256 --seconds 4 --reps 3

"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc


def start_server(workdir: Path, uvloop: bool, engine: str) -> tuple[subprocess.Popen[bytes], int]:
    port_file = workdir / "port"
    extra = ["--uvloop"] if uvloop else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "quorum.api.etcd", "--port", "0", "--port-file", str(port_file),
         "--engine", engine, *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return proc, wait_port(proc, port_file, f"dev server ({engine})")


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
        t0 = time.process_time()  # CPU, not wall time: other jobs share the machine
        for call in calls:
            await call
        rows.append((name, (time.process_time() - t0) / n * 1e6))
    for name, us in rows:
        print(f"{name:20s} {us:6.1f} us/request")


# --- the gRPC floor: do-nothing servers ----------------------------------------------------

FLOOR_RESPONSE = pb.PutResponse(
    header=pb.ResponseHeader(cluster_id=1, member_id=2, revision=3, raft_term=4)
)


def floor_options(mode: str) -> list[tuple[str, Any]]:
    opts: list[tuple[str, Any]] = [("grpc.so_reuseport", 0)]
    if "opts" in mode.split("-"):
        opts += [("grpc.enable_channelz", 0), ("grpc.http2.bdp_probe", 0),
                 ("grpc.optimization_target", "throughput")]
    return opts


def floor_handlers(mode: str, delay: float) -> grpc.GenericRpcHandler:
    """KV.Put answering FLOOR_RESPONSE, async or blocking, typed or on raw bytes."""
    raw = "generic" in mode.split("-")
    answer: Any = FLOOR_RESPONSE.SerializeToString() if raw else FLOOR_RESPONSE
    parse = pb.PutRequest.FromString

    if mode.startswith("sync"):
        def put_sync(request: Any, context: Any) -> Any:
            if raw:
                parse(request)
            if delay:
                time.sleep(delay)
            return answer
        handler = put_sync
    else:
        async def put_async(request: Any, context: Any) -> Any:
            if raw:
                parse(request)
            if delay:
                await asyncio.sleep(delay)
            return answer
        handler = put_async  # type: ignore[assignment]
    if raw:
        method = grpc.unary_unary_rpc_method_handler(handler)
    else:
        method = grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=parse,
            response_serializer=pb.PutResponse.SerializeToString)
    return grpc.method_handlers_generic_handler("etcdserverpb.KV", {"Put": method})


def floor_serve(mode: str, port_file: Path, delay: float, threads: int) -> None:
    """Child process: serve the do-nothing Put in ``mode`` until terminated."""
    if mode.startswith("h2"):
        floor_serve_h2(mode, port_file, delay)
        return
    handlers = (floor_handlers(mode, delay),)
    if mode.startswith("sync"):
        sync_server = grpc.server(futures.ThreadPoolExecutor(threads),
                                  handlers=handlers, options=floor_options(mode))
        port = sync_server.add_insecure_port("127.0.0.1:0")
        sync_server.start()
        port_file.write_text(str(port))
        sync_server.wait_for_termination()
        return

    async def run() -> None:
        pool = futures.ThreadPoolExecutor(threads) if "migration" in mode else None
        server = grpc.aio.server(migration_thread_pool=pool, handlers=handlers,
                                 options=floor_options(mode))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_file.write_text(str(port))
        await server.wait_for_termination()

    if "uvloop" in mode:
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())


def floor_serve_h2(mode: str, port_file: Path, delay: float) -> None:
    """The do-nothing Put on quorum's own gRPC server (quorum.api.h2grpc)."""
    from quorum.api.h2grpc import GrpcServer

    class KV:
        async def Put(self, request: Any, context: Any) -> Any:
            if delay:
                await asyncio.sleep(delay)
            return FLOOR_RESPONSE

    async def run() -> None:
        server = GrpcServer()
        server.add_service(pb.DESCRIPTOR.services_by_name["KV"], KV())
        port = await server.start("127.0.0.1", 0)
        port_file.write_text(str(port))
        await asyncio.Event().wait()

    if "uvloop" in mode:
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())


def process_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def floor_drive(port: int, clients: int, seconds: float, pid: int) -> tuple[float, float]:
    """Calls/s and the server's CPU us per call, ``clients`` concurrent Puts over 8 channels
    (the shape of ``quorum bench --target etcd``)."""
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(8)]
    stubs = [rpc.KVStub(ch) for ch in channels]
    value = b"x" * 100

    async def worker(n: int, stop: float) -> int:
        done, stub = 0, stubs[n % len(stubs)]
        while time.monotonic() < stop:
            await stub.Put(pb.PutRequest(key=b"bench/%012d" % done, value=value))
            done += 1
        return done

    await asyncio.gather(*(worker(n, time.monotonic() + 0.5) for n in range(clients)))  # warm up
    cpu0, t0 = process_cpu_s(pid), time.perf_counter()
    stop = time.monotonic() + seconds
    calls = sum(await asyncio.gather(*(worker(n, stop) for n in range(clients))))
    elapsed, cpu = time.perf_counter() - t0, process_cpu_s(pid) - cpu0
    for ch in channels:
        await ch.close()
    return calls / elapsed, cpu / max(1, calls) * 1e6


def wait_port(proc: subprocess.Popen[bytes], port_file: Path, what: str) -> int:
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)
    return int(port_file.read_text())


def interleave(names: list[str], args: argparse.Namespace,
               start: Callable[[str, Path], tuple[subprocess.Popen[bytes], int]]) -> None:
    """Each named server once per repetition (started by ``start`` in a temp dir, driven by
    floor_drive, stopped), repetitions interleaved; then medians."""
    import uvloop

    results: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for rep in range(args.reps):
        for name in names:
            with tempfile.TemporaryDirectory() as tmp:
                proc, port = start(name, Path(tmp))
                try:
                    rate, us = uvloop.run(floor_drive(port, args.clients[0], args.seconds, proc.pid))
                finally:
                    proc.terminate()
                    proc.wait(10)
            results[name].append((rate, us))
            print(f"rep {rep + 1} {name:24s} {rate:7,.0f} calls/s  server {us:6.1f} us/call",
                  flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}; medians of {args.reps}:")
    for name, rs in results.items():
        print(f"{name:24s} {statistics.median(r[0] for r in rs):7,.0f} calls/s  server "
              f"{statistics.median(r[1] for r in rs):6.1f} us/call  "
              f"(runs {', '.join(f'{r[1]:.0f}' for r in rs)} us)")


def floor(args: argparse.Namespace) -> None:
    """Every do-nothing server mode once per repetition (interleaved), then medians."""
    def start(mode: str, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
        port_file = tmp / "port"
        proc = subprocess.Popen(
            [sys.executable, __file__, "--floor-serve", mode, "--port-file", str(port_file),
             "--delay", str(args.delay), "--threads", str(args.threads)])
        return proc, wait_port(proc, port_file, f"floor server {mode}")

    interleave(args.floor.split(","), args, start)


def dev(args: argparse.Namespace) -> None:
    """The dev server on each engine, ``--clients`` concurrent Puts (floor_drive), interleaved."""
    interleave(args.dev.split(","), args,
               lambda engine, tmp: start_server(tmp, True, engine))


async def main(args: argparse.Namespace) -> None:
    if args.cpu:
        await cpu(args.cpu)
        return
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(Path(tmp), args.uvloop, args.engine)
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
    parser.add_argument("--floor", default="", metavar="MODES",
                        help="instead: do-nothing Put servers in these modes (see above)")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="--floor: seconds each do-nothing Put waits before answering")
    parser.add_argument("--threads", type=int, default=8,
                        help="--floor: thread pool size of sync / migration modes")
    parser.add_argument("--reps", type=int, default=3, help="--floor: repetitions")
    parser.add_argument("--dev", default="", metavar="ENGINES",
                        help="instead: the dev server on these engines (h2,grpcio), see above")
    parser.add_argument("--engine", choices=("h2", "grpcio"), default="h2",
                        help="the dev server's gRPC engine")
    parser.add_argument("--floor-serve", default="", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.floor_serve:
        floor_serve(parsed.floor_serve, parsed.port_file, parsed.delay, parsed.threads)
    elif parsed.floor:
        floor(parsed)
    elif parsed.dev:
        dev(parsed)
    else:
        asyncio.run(main(parsed))
