"""What TLS costs on the native port: the same load over plain TCP and over TLS, interleaved.

A LocalBackend server runs in a child process (one plain, one TLS with client-certificate
authentication, both uvloop when ``--uvloop``); the load comes from this process through
AsyncClient. Rounds alternate plain and TLS so both see the same background load:

    .venv/bin/python bench/native_tls_bench.py [--rounds 3] [--seconds 3] [--inflight 256] [--uvloop]
    .venv/bin/python bench/native_tls_bench.py --cluster 3 [--rounds 3] [--seconds 3]

Per round: pipelined puts and gets (``--inflight`` in flight on one connection), sequential
puts (one in flight: the round trip), and connections opened and closed per second (TCP
connect, for TLS the handshake and the client's confirming round trip, one status request).
Prints per-round figures and the medians; certificates are made with the openssl command.

``--cluster N``: instead, N real node processes (durable WAL, fsync on, Raft replication),
started afresh for each round, alternately plain and with mutual TLS on the client ports and
between members (as ``quorum cluster up --tls`` runs them); the load prefers the leader.
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from native_bench import drive

from quorum.client import AsyncClient, ClientTls

SERVER = """
import asyncio, sys
from quorum.api.local import LocalBackend
from quorum.api.native.server import serve_native, server_tls_context
if sys.argv[1] == "1":
    import uvloop; uvloop.install()
tls = server_tls_context(sys.argv[2], sys.argv[3], sys.argv[4]) if len(sys.argv) > 2 else None
async def main():
    server = await serve_native(LocalBackend(), "127.0.0.1", 0, tls=tls)
    print(server.port, flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def make_certs(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "bench.pem", folder / "bench-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=bench",
         "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


async def one_round(endpoint: str, tls: ssl.SSLContext | None, seconds: float,
                    inflight: int) -> dict[str, float]:
    """``tls``: one context for every client of the round, as a long-lived program would
    hold it (building one from the PEM files costs more than the handshake itself)."""
    out: dict[str, float] = {}
    value = b"x" * 100
    async with AsyncClient([endpoint], timeout_s=30, max_sessions=inflight, tls=tls) as client:
        await client.put(b"k0", value)
        out["put pipelined"] = await drive(
            lambda i: client.put(b"k%d" % (i % 1000), value), seconds, inflight)
        out["get pipelined"] = await drive(
            lambda i: client.get(b"k%d" % (i % 1000)), seconds, inflight)
        out["put sequential"] = await drive(
            lambda i: client.put(b"k%d" % (i % 1000), value), seconds, 1)

    async def connect_once(_: int) -> None:
        async with AsyncClient([endpoint], timeout_s=30, tls=tls) as c:
            await c.status()

    out["connect+status"] = await drive(connect_once, seconds, 1)
    return out


async def cluster_round(endpoints: list[str], tls: ssl.SSLContext | None, seconds: float,
                        inflight: int) -> dict[str, float]:
    value = b"x" * 100
    async with AsyncClient(endpoints, timeout_s=30, max_sessions=inflight, tls=tls,
                           prefer_leader=True) as client:
        await client.put(b"k0", value)  # waits out the first election
        await client.connect()  # and finds the leader
        return {
            "put pipelined": await drive(
                lambda i: client.put(b"k%d" % (i % 1000), value), seconds, inflight),
            "get pipelined": await drive(
                lambda i: client.get(b"k%d" % (i % 1000)), seconds, inflight),
            "put sequential": await drive(
                lambda i: client.put(b"k%d" % (i % 1000), value), seconds, 1),
        }


def cluster_main(args: Any) -> None:
    from quorum.cli.serve import LocalTls
    from quorum.verify.procs import ProcCluster

    results: dict[str, list[dict[str, float]]] = {"plain": [], "tls": []}
    with tempfile.TemporaryDirectory() as tmp:
        certs = LocalTls(Path(tmp) / "tls").ensure()
        ctx = ClientTls(ca_file=str(certs.ca), cert_file=str(certs.client),
                        key_file=str(certs.client_key)).context()
        for r in range(args.rounds):
            for name, extra, client_tls in (("plain", (), None),
                                            ("tls", certs.serve_args(), ctx)):
                base = Path(tmp) / f"{name}{r}"
                with ProcCluster(args.cluster, base, extra_args=extra) as cluster:
                    res = asyncio.run(cluster_round(cluster.endpoints(), client_tls,
                                                    args.seconds, args.inflight))
                results[name].append(res)
                print(f"round {r + 1} {name:5s} " + "  ".join(
                    f"{k} {v:8.0f}/s" for k, v in res.items()), flush=True)
    report(results, args)


def start_server(args: list[str], script: str = SERVER) -> tuple[subprocess.Popen[str], str]:
    """Run ``script`` (which prints its port) in a child process; (process, endpoint)."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ))
    assert proc.stdout is not None
    return proc, f"127.0.0.1:{int(proc.stdout.readline())}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--inflight", type=int, default=256)
    parser.add_argument("--uvloop", action="store_true", help="uvloop in client and servers")
    parser.add_argument("--cluster", type=int, default=0,
                        help="N real node processes per round instead of a LocalBackend server")
    args = parser.parse_args()
    if args.cluster:
        cluster_main(args)
        return
    loop_flag = "1" if args.uvloop else "0"
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = make_certs(Path(tmp))
        tls = ClientTls(ca_file=str(cert), cert_file=str(cert), key_file=str(key)).context()
        plain_proc, plain_ep = start_server([loop_flag])
        tls_proc, tls_ep = start_server([loop_flag, str(cert), str(key), str(cert)])
        results: dict[str, list[dict[str, float]]] = {"plain": [], "tls": []}
        try:
            if args.uvloop:
                import uvloop

                uvloop.install()
            for r in range(args.rounds):
                for name, ep, client_tls in (("plain", plain_ep, None), ("tls", tls_ep, tls)):
                    res = asyncio.run(one_round(ep, client_tls, args.seconds, args.inflight))
                    results[name].append(res)
                    print(f"round {r + 1} {name:5s} " + "  ".join(
                        f"{k} {v:8.0f}/s" for k, v in res.items()), flush=True)
        finally:
            for proc in (plain_proc, tls_proc):
                proc.terminate()
                proc.wait()
    report(results, args)


def report(results: dict[str, list[dict[str, float]]], args: Any) -> None:
    what = f"{args.cluster} nodes" if args.cluster else ("uvloop" if args.uvloop else "asyncio")
    print(f"\nmedians of {args.rounds} rounds ({args.seconds:.0f} s each, inflight "
          f"{args.inflight}, {what}; load average {os.getloadavg()[0]:.1f})")
    for key in results["plain"][0]:
        plain = statistics.median(r[key] for r in results["plain"])
        tls = statistics.median(r[key] for r in results["tls"])
        print(f"{key:16s} plain {plain:8.0f}/s  tls {tls:8.0f}/s  tls/plain {tls / plain:5.2f}")


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"({time.time() - started:.0f} s)")
