"""The load generator behind ``quorum bench``.

Workloads: ``put`` (100-byte values over a key space), ``get`` (linearizable reads of keys
written first), ``mixed`` (50/50). N concurrent clients, each sequential (one request in flight),
spread over a few connections. Targets: quorum's native protocol, or any etcd v3 endpoint over
gRPC (etcd itself, or quorum's etcd port) with the same workload, so both can be measured side
by side in one run.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from quorum.client.tls import ClientTls
from quorum.errors import UsageError

Op = Callable[[int], Awaitable[Any]]  # op(client_index) -> awaitable


class BenchConfig(msgspec.Struct, kw_only=True):
    target: str = "quorum"  # quorum | etcd
    endpoints: tuple[str, ...] = ("127.0.0.1:23101",)
    workload: str = "put"  # put | get | mixed
    clients: int = 256
    connections: int = 8
    duration_s: float = 10.0
    warmup_s: float = 1.0
    value_bytes: int = 100
    keys: int = 100_000
    serializable: bool = False
    pids: tuple[int, ...] = ()  # server processes whose CPU time is reported per operation
    # TLS to the target (None: plain TCP, unless an endpoint is written https://...)
    tls: ClientTls | None = None


class BenchResult(msgspec.Struct, kw_only=True):
    target: str
    workload: str
    clients: int
    operations: int
    errors: int
    duration_s: float
    ops_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_us_per_op: float | None = None
    # CPU of this load process per operation (all its threads): what the client costs the
    # machine it shares with the servers
    client_cpu_us_per_op: float | None = None


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def process_cpu_s(pids: Sequence[int]) -> float:
    """User + system CPU seconds of the given processes (Linux /proc)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / tick


async def run_bench(cfg: BenchConfig, ops: Callable[[str], Op],
                    progress: Callable[[float], None] | None = None) -> BenchResult:
    """Drive ``cfg.clients`` sequential clients for ``cfg.duration_s`` after a warm-up."""
    latencies: list[float] = []
    errors = 0
    counting = False
    stop = False
    rng = random.Random(7)
    kinds = {"put": ["put"], "get": ["get"], "mixed": ["put", "get"]}[cfg.workload]
    table = [ops(kind) for kind in kinds]  # built once: the load process's CPU is shared
    single = table[0] if len(table) == 1 else None

    async def client(i: int) -> None:
        nonlocal errors
        while not stop:
            op = single or rng.choice(table)
            t0 = time.perf_counter()
            try:
                await op(i)
            except Exception:
                errors += counting
                await asyncio.sleep(0.01)
                continue
            if counting:
                latencies.append(time.perf_counter() - t0)

    tasks = [asyncio.create_task(client(i)) for i in range(cfg.clients)]
    await asyncio.sleep(cfg.warmup_s)
    counting = True
    cpu0, t0 = process_cpu_s(cfg.pids), time.perf_counter()
    own0 = time.process_time()
    end = t0 + cfg.duration_s
    while time.perf_counter() < end:
        await asyncio.sleep(min(0.5, end - time.perf_counter()))
        if progress is not None:
            progress(min(1.0, (time.perf_counter() - t0) / cfg.duration_s))
    counting = False
    elapsed = time.perf_counter() - t0
    cpu = process_cpu_s(cfg.pids) - cpu0
    own = time.process_time() - own0
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    lat = sorted(latencies)
    n = len(lat)
    return BenchResult(
        target=cfg.target, workload=cfg.workload, clients=cfg.clients, operations=n,
        errors=errors, duration_s=elapsed, ops_per_s=n / elapsed if elapsed else 0.0,
        p50_ms=_percentile(lat, 0.5) * 1e3, p90_ms=_percentile(lat, 0.9) * 1e3,
        p99_ms=_percentile(lat, 0.99) * 1e3, max_ms=(lat[-1] * 1e3) if lat else 0.0,
        server_cpu_us_per_op=(cpu / n * 1e6) if (cfg.pids and n) else None,
        client_cpu_us_per_op=(own / n * 1e6) if n else None,
    )


# --- targets ------------------------------------------------------------------------------------


async def quorum_target(cfg: BenchConfig) -> tuple[Callable[[str], Op], Callable[[], Awaitable[None]]]:
    """Ops over the native protocol (a few pipelined connections shared by all clients)."""
    from quorum.client.aio import AsyncClient

    conns = [AsyncClient(list(cfg.endpoints), timeout_s=10, prefer_leader=True, tls=cfg.tls)
             for _ in range(cfg.connections)]
    for c in conns:
        await c.connect()
    value = b"x" * cfg.value_bytes
    rng = random.Random(1)
    await _preload(lambda k: conns[0].put(k, value), cfg)

    def make(kind: str) -> Op:
        async def put(i: int) -> Any:
            return await conns[i % len(conns)].put(_key(rng, cfg), value)

        async def get(i: int) -> Any:
            return await conns[i % len(conns)].range(_key(rng, cfg),
                                                     serializable=cfg.serializable)

        return put if kind == "put" else get

    async def close() -> None:
        for c in conns:
            await c.close()

    return make, close


async def etcd_target(cfg: BenchConfig) -> tuple[Callable[[str], Op], Callable[[], Awaitable[None]]]:
    """Ops over etcd's v3 gRPC API (works against etcd and against quorum's etcd port)."""

    from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
    from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc

    channels = [_grpc_channel(cfg, cfg.endpoints[i % len(cfg.endpoints)])
                for i in range(cfg.connections)]
    stubs = [rpc.KVStub(ch) for ch in channels]
    value = b"x" * cfg.value_bytes
    rng = random.Random(1)
    await _preload(lambda k: stubs[0].Put(pb.PutRequest(key=k, value=value)), cfg)

    def make(kind: str) -> Op:
        async def put(i: int) -> Any:
            return await stubs[i % len(stubs)].Put(pb.PutRequest(key=_key(rng, cfg), value=value))

        async def get(i: int) -> Any:
            return await stubs[i % len(stubs)].Range(
                pb.RangeRequest(key=_key(rng, cfg), serializable=cfg.serializable))

        return put if kind == "put" else get

    async def close() -> None:
        for ch in channels:
            await ch.close()

    return make, close


def _grpc_channel(cfg: BenchConfig, endpoint: str) -> Any:
    """A gRPC channel to ``endpoint``: over TLS with ``cfg.tls`` (or an https:// endpoint,
    then with gRPC's default roots), else plaintext."""
    import grpc

    scheme, _, address = endpoint.rpartition("://")
    tls = cfg.tls if cfg.tls is not None or scheme != "https" else ClientTls()
    if tls is None:
        return grpc.aio.insecure_channel(address)
    if not tls.verify:
        raise UsageError("--insecure-skip-tls-verify is not available with --target etcd: "
                         "gRPC always checks the server's certificate (give --cacert)")
    tls.context()  # ConfigError naming a file that cannot be used

    def read(path: str) -> bytes | None:
        return Path(path).read_bytes() if path else None

    credentials = grpc.ssl_channel_credentials(root_certificates=read(tls.ca_file),
                                               private_key=read(tls.key_file),
                                               certificate_chain=read(tls.cert_file))
    options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.aio.secure_channel(address, credentials, options)


def _key(rng: random.Random, cfg: BenchConfig) -> bytes:
    return b"bench/%012d" % rng.randrange(cfg.keys)


async def _preload(put: Callable[[bytes], Awaitable[Any]], cfg: BenchConfig) -> None:
    """Reads need keys to exist: write a slice of the key space first (get/mixed only)."""
    if cfg.workload == "put":
        return
    sem = asyncio.Semaphore(64)
    n = min(cfg.keys, 2000)

    async def one(i: int) -> None:
        async with sem:
            await put(b"bench/%012d" % i)

    await asyncio.gather(*(one(i) for i in range(n)))
    cfg.keys = n


def run_bench_sync(cfg: BenchConfig,
                   progress: Callable[[float], None] | None = None) -> BenchResult:
    """Run :func:`bench` in a fresh event loop: uvloop for quorum's native target when it is
    installed (the servers run on it too; its loop costs the shared CPU less per request),
    the default loop for gRPC targets (grpc.aio drives its own polling)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if cfg.target == "quorum":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(bench(cfg, progress))


async def bench(cfg: BenchConfig, progress: Callable[[float], None] | None = None) -> BenchResult:
    make, close = await (quorum_target(cfg) if cfg.target == "quorum" else etcd_target(cfg))
    try:
        return await run_bench(cfg, make, progress)
    finally:
        await close()
