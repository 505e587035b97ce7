"""What the connection caps cost at accept time: connection churn on the native port with no
cap, with the total cap, and with the total cap plus the per-IP limit, interleaved.

Three LocalBackend servers run in child processes on uvloop (as ``quorum serve`` does): one
with no limit (the server's protocol factory is used as is), one with
``max_connections`` (each new connection passes the admission gate of quorum.api.conncap),
one with ``max_connections`` and ``max_connections_per_ip`` (the gate also keeps the
per-address table). The load comes from this process (on uvloop too): ``--workers``
concurrent loops, each opening a TCP connection, sending one put, reading its answer and
closing. Rounds alternate the servers so all see the same background load:

    .venv/bin/python bench/conncap_bench.py [--rounds 5] [--seconds 2] [--workers 8]

``--etcd-tls``: the same on the etcd port (h2 engine) over TLS, each connection a TLS
handshake and an HTTP/1 GET /version. ``--baseline TREE``: a fourth server, with the cap,
from another checkout (e.g. a worktree of the commit before a change), interleaved too.

Prints connections per second per round and the medians, and each server's median against
the unlimited one. Requests on an admitted connection do not pass the gate (it hands
the transport to the server's protocol before the first read), so only accepts are measured.

``--micro``: instead, the admission alone, in process, without sockets: microseconds per
new connection through each configuration's factory (with a stand-in transport), with
``--open`` connections already open from the same address (the per-IP table's worst case).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

import msgspec
import uvloop

from quorum.api.conncap import ConnectionCap
from quorum.api.native import messages as m
from quorum.api.native.framing import frame
from quorum.state.commands import PutRequest

SERVER = """
import asyncio, sys
import uvloop
from quorum.api.local import LocalBackend
uvloop.install()
port_kind, cap, per_ip = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
limits = {"max_connections_per_ip": per_ip} if per_ip else {}  # a tree without it: 0 only
async def main():
    if port_kind == "native":
        from quorum.api.native.server import serve_native
        server = await serve_native(LocalBackend(), "127.0.0.1", 0, max_connections=cap,
                                    **limits)
        port = server.port
    else:
        from quorum.api.etcd.config import EtcdApiConfig, EtcdTls
        from quorum.api.etcd.server import serve_etcd
        server, port = await serve_etcd(LocalBackend(), "127.0.0.1", 0,
                                        tls=EtcdTls(sys.argv[4], sys.argv[5]),
                                        config=EtcdApiConfig(max_connections=cap, **limits))
    print(port, flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

CONFIGS = {"no limit": (0, 0), "cap": (10_000, 0), "cap + per-IP": (10_000, 1_000)}
REQUEST = frame(msgspec.msgpack.encode(m.Request(1, PutRequest(b"k", b"v"))))


async def churn(port: int, seconds: float, workers: int,
                tls: ssl.SSLContext | None = None) -> float:
    """Connections opened, served one request and closed per second: a native put, or
    with ``tls`` an HTTP/1 GET /version to the etcd port over TLS."""
    done = 0
    deadline = time.perf_counter() + seconds
    request = REQUEST if tls is None else b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n"

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
            writer.write(request)
            assert await reader.read(4096), "closed before the answer"
            writer.close()
            await writer.wait_closed()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return done / (time.perf_counter() - started)


class _Transport:
    """What the admission gate uses of a transport."""

    def __init__(self) -> None:
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("10.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def set_protocol(self, protocol: object) -> None:
        pass


def micro(rounds: int, n: int, already_open: int) -> None:
    """µs per admission (factory call, then connection_made) for each configuration."""
    results: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(rounds):
        for name, (limit, per_ip) in CONFIGS.items():
            served: list[object] = []
            cap = ConnectionCap("native", limit, served, per_ip=per_ip)
            admit = cap.factory(asyncio.Protocol)
            for _ in range(already_open):  # open, and stay open
                admit().connection_made(_Transport())  # type: ignore[arg-type]
            transports = [_Transport() for _ in range(n)]
            started = time.perf_counter()
            for t in transports:
                admit().connection_made(t)  # type: ignore[arg-type]
                t.closed = True  # the client leaves at once: churn
            results[name].append((time.perf_counter() - started) / n * 1e6)
    for name, values in results.items():
        print(f"median {name:>13}: {statistics.median(values):6.2f} us per admission "
              f"({already_open} open from the address)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--micro", action="store_true")
    parser.add_argument("--open", type=int, default=500)
    parser.add_argument("--etcd-tls", action="store_true",
                        help="churn TLS connections on the etcd port (h2 engine) instead")
    parser.add_argument("--baseline", metavar="TREE",
                        help="also serve the cap from this checkout (its PYTHONPATH)")
    args = parser.parse_args()
    if args.micro:
        micro(args.rounds, 100_000, args.open)
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    kind, tls, extra = "native", None, []
    with tempfile.TemporaryDirectory() as tmp:
        if args.etcd_tls:
            cert, key = f"{tmp}/bench.pem", f"{tmp}/bench-key.pem"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                 "-days", "1", "-subj", "/CN=bench", "-addext", "subjectAltName=IP:127.0.0.1"],
                check=True, capture_output=True)
            kind, tls, extra = "etcd", ssl.create_default_context(cafile=cert), [cert, key]
        servers = {name: (env, cap, per_ip) for name, (cap, per_ip) in CONFIGS.items()}
        if args.baseline:  # the same cap served by another checkout, e.g. before a change
            servers["cap, baseline"] = (dict(env, PYTHONPATH=args.baseline), 10_000, 0)
        run(args, kind, tls, extra, servers)


def run(args: argparse.Namespace, kind: str, tls: ssl.SSLContext | None, extra: list[str],
        servers: dict[str, tuple[dict[str, str], int, int]]) -> None:
    procs = {name: subprocess.Popen(
                 [sys.executable, "-c", SERVER, kind, str(cap), str(per_ip), *extra],
                 stdout=subprocess.PIPE, text=True, env=server_env)
             for name, (server_env, cap, per_ip) in servers.items()}
    try:
        ports = {name: int(p.stdout.readline()) for name, p in procs.items()}  # type: ignore[union-attr]
        results: dict[str, list[float]] = {name: [] for name in servers}
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        for r in range(args.rounds):
            for name, port in ports.items():
                rate = uvloop.run(churn(port, args.seconds, args.workers, tls))
                results[name].append(rate)
                print(f"round {r + 1} {name:>13}: {rate:8,.0f} connections/s")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        base = statistics.median(results["no limit"])
        for name, rates in results.items():
            med = statistics.median(rates)
            print(f"median {name:>13}: {med:8,.0f} connections/s  ({med / base:.3f}x no limit)")
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
