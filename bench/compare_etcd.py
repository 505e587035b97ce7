"""quorum against etcd 3.4, side by side, with the same load generator (``quorum bench``).

Starts a 3-node quorum cluster (separate ``quorum serve`` processes, durable WAL, fsync on:
what ``quorum cluster up`` runs) and a 3-node etcd cluster (``/usr/bin/etcd``, fsync always
on in etcd) on loopback ports in a temporary directory, then runs ``quorum bench`` as a
separate client process against:

- ``etcd``         etcd's v3 gRPC API
- ``quorum-etcd``  quorum's etcd v3 gRPC API (same client code, same requests)
- ``quorum-native`` quorum's native protocol

for each workload (put x256 clients, put x1 client, linearizable get x256 clients), repeated
``--reps`` times with targets interleaved inside each repetition. Every target gets the
client endpoints of all three members (gRPC channels are spread over them, and followers
forward writes and ReadIndex requests to the leader; the native client's home connection
goes to the first reachable one, and it sends writes and linearizable reads straight to the
leader it learns from there). Prints a table of medians and ratios, and writes it as
markdown to ``--out``.

``--profile SECONDS`` additionally records the quorum leader with py-spy during one extra
put x256 run over the etcd API and over the native protocol, and prints the functions with
the most samples (own time and inclusive time).

    .venv/bin/python bench/compare_etcd.py --duration 5 --reps 3 --out /tmp/compare.md
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from quorum.cli.serve import node_command
from quorum.node.config import PeerSpec

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
WORKLOADS: list[tuple[str, int]] = [("put", 256), ("put", 1), ("get", 256)]
TARGETS = ("etcd", "quorum-etcd", "quorum-native")


def free_ports(count: int) -> list[int]:
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Cluster:
    """Three server processes of one system; ``stop()`` ends exactly these processes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: list[subprocess.Popen[bytes]] = []
        self.client_endpoints: list[str] = []  # etcd gRPC endpoints
        self.native_endpoints: list[str] = []  # quorum's native protocol

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def check_alive(self, root: Path) -> None:
        """Raise, naming the log, if a server process has exited (results would be void)."""
        for i, p in enumerate(self.procs, 1):
            if p.poll() is not None:
                raise RuntimeError(f"{self.name} node {i} (pid {p.pid}) exited with "
                                   f"{p.returncode}; see {root}/{self.name}{i}.log")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


def start_quorum(root: Path, extra: tuple[str, ...] = ()) -> Cluster:
    ports = free_ports(9)
    specs = tuple(
        PeerSpec(i, f"127.0.0.1:{ports[3 * (i - 1)]}", f"127.0.0.1:{ports[3 * (i - 1) + 1]}",
                 f"127.0.0.1:{ports[3 * (i - 1) + 2]}", f"node{i}")
        for i in (1, 2, 3)
    )
    c = Cluster("quorum")
    for spec in specs:
        log = open(root / f"quorum{spec.id}.log", "ab")  # noqa: SIM115 - owned by the child
        c.procs.append(subprocess.Popen(
            node_command(spec, specs, root, ("--log-level", "warning", *extra)),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    c.client_endpoints = [s.etcd_url for s in specs]
    c.native_endpoints = [s.client_url for s in specs]
    return c


def start_etcd(root: Path) -> Cluster:
    ports = free_ports(6)
    peer = {i: f"http://127.0.0.1:{ports[2 * (i - 1)]}" for i in (1, 2, 3)}
    client = {i: f"http://127.0.0.1:{ports[2 * (i - 1) + 1]}" for i in (1, 2, 3)}
    initial = ",".join(f"e{i}={peer[i]}" for i in (1, 2, 3))
    c = Cluster("etcd")
    for i in (1, 2, 3):
        log = open(root / f"etcd{i}.log", "ab")  # noqa: SIM115 - owned by the child
        c.procs.append(subprocess.Popen(
            [ETCD, "--name", f"e{i}", "--data-dir", str(root / f"etcd{i}"),
             "--listen-peer-urls", peer[i], "--initial-advertise-peer-urls", peer[i],
             "--listen-client-urls", client[i], "--advertise-client-urls", client[i],
             "--initial-cluster", initial, "--initial-cluster-state", "new",
             "--initial-cluster-token", f"bench-{os.getpid()}", "--log-level", "warn",
             "--logger", "zap"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    c.client_endpoints = [u.removeprefix("http://") for u in client.values()]
    return c


def bench(target: str, endpoints: list[str], workload: str, clients: int, duration: float,
          pids: list[int]) -> dict[str, Any]:
    """One ``quorum bench`` run in its own process; returns its JSON result."""
    kind = "quorum" if target == "quorum-native" else "etcd"
    cmd = [sys.executable, "-m", "quorum.cli.main", "-w", "json", "bench", "--target", kind,
           "--bench-endpoints", ",".join(endpoints), "--workload", workload,
           "--clients", str(clients), "--duration", str(duration),
           "--pids", ",".join(map(str, pids))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    if out.returncode != 0:
        raise RuntimeError(f"bench failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def wait_ready(target: str, endpoints: list[str]) -> None:
    """Until a short put run completes without errors (leader elected, every port up)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            r = bench(target, endpoints, "put", 4, 0.5, [])
            if r["operations"] > 0 and r["errors"] == 0:
                return
        except RuntimeError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{target} not ready after 60 s")


def quorum_leader_pid(q: Cluster) -> int:
    out = subprocess.run(
        [sys.executable, "-m", "quorum.cli.main", "--endpoints", ",".join(q.native_endpoints),
         "-w", "json", "status"], capture_output=True, text=True, timeout=30)
    for row in json.loads(out.stdout):
        st = row.get("status") or {}
        if st.get("leader_id") and st.get("leader_id") == st.get("member_id"):
            return q.pids[q.native_endpoints.index(row["endpoint"])]
    raise RuntimeError(f"cannot tell the leader from: {out.stdout[:500]}")


def profile(pid: int, seconds: float, target: str, endpoints: list[str], root: Path,
            clients: int = 256) -> str:
    """py-spy the leader during one put run; a summary of where its time goes."""
    raw = root / f"profile-{target}-{clients}.txt"
    spy = subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
         "--duration", str(int(seconds)), "--rate", "200", "--format", "raw", "--function",
         "--output", str(raw), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = bench(target, endpoints, "put", clients, seconds + 1, [pid])
    spy.wait(timeout=seconds + 60)
    return summarize_profile(
        raw, f"{target}, put x{clients}: {r['ops_per_s']:,.0f} puts/s while profiled")


BOILERPLATE = ("runpy", "click/", "cli/main.py", "cli/serve.py", "threading.py",
               "concurrent/futures/thread.py", "asyncio/runners.py")


def summarize_profile(raw: Path, title: str, top: int = 25) -> str:
    """Own and inclusive sample shares per function from py-spy's raw (collapsed) output.
    Time spent in C code (uvloop, grpc's core, fdatasync) is charged to the Python frame
    that called it: ``Runner.run`` own time is the event loop's native part."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        total += n
        frames = stack.split(";")
        own[_short(frames[-1])] += n
        for f in {f for f in frames if not any(b in f for b in BOILERPLATE)}:
            incl[_short(f)] += n
    if not total:
        return f"## {title}\nno samples"
    lines = [f"## {title}", f"{total} samples", "", "own time (top functions):"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "inclusive (entry points and runners left out):"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """``func (/long/path/pkg/file.py)`` -> ``func (pkg/file.py)``."""
    name, sep, where = frame.partition(" (")
    parts = where.rstrip(")").split("/")
    return f"{name}{sep}{'/'.join(parts[-2:])})" if sep else frame


def fmt_row(target: str, results: list[dict[str, Any]]) -> tuple[float, float, float, str]:
    rate = statistics.median(r["ops_per_s"] for r in results)
    p50 = statistics.median(r["p50_ms"] for r in results)
    p99 = statistics.median(r["p99_ms"] for r in results)
    cpu = [r["server_cpu_us_per_op"] for r in results if r.get("server_cpu_us_per_op")]
    return rate, p50, p99, f"{statistics.median(cpu):,.0f}" if cpu else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description="quorum vs etcd 3.4 with quorum bench")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="compare_etcd.md", help="markdown table written here")
    ap.add_argument("--profile", type=float, default=0.0,
                    help="py-spy the quorum leader for this many seconds (0 = no profile)")
    ap.add_argument("--profile-clients", type=int, default=256,
                    help="concurrent clients of the profiled put run")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, profiles)")
    ap.add_argument("--workloads", default="put:256,put:1,get:256",
                    help="workload:clients list (workload = put | get | mixed)")
    ap.add_argument("--quorum-args", default="",
                    help="extra `quorum serve` flags, e.g. '--snapshot-entries 100000'")
    args = ap.parse_args()
    if not Path(ETCD).exists():
        sys.exit("etcd not found: apt-get install -y etcd-server")
    WORKLOADS[:] = [(w, int(c)) for w, c in (x.split(":") for x in args.workloads.split(","))]
    root = Path(tempfile.mkdtemp(prefix="compare-etcd-"))
    etcd = quorum = None
    failed = True
    try:
        quorum, etcd = start_quorum(root, tuple(args.quorum_args.split())), start_etcd(root)
        endpoints = {"etcd": etcd.client_endpoints, "quorum-etcd": quorum.client_endpoints,
                     "quorum-native": quorum.native_endpoints}
        pids = {"etcd": etcd.pids, "quorum-etcd": quorum.pids, "quorum-native": quorum.pids}
        for target in TARGETS:
            wait_ready(target, endpoints[target])
        print(f"clusters up (etcd pids {etcd.pids}, quorum pids {quorum.pids}); data in {root}")
        results: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
        for rep in range(args.reps):
            for workload, clients in WORKLOADS:
                for target in TARGETS:
                    quorum.check_alive(root)
                    etcd.check_alive(root)
                    r = bench(target, endpoints[target], workload, clients, args.duration,
                              pids[target])
                    results.setdefault((workload, clients, target), []).append(r)
                    print(f"rep {rep + 1} {workload} x{clients:<3d} {target:14s} "
                          f"{r['ops_per_s']:9,.0f}/s p50 {r['p50_ms']:7.2f} ms "
                          f"p99 {r['p99_ms']:7.2f} ms errors {r['errors']}", flush=True)
        table = render(results, args.reps, args.duration)
        print()
        print(table)
        Path(args.out).write_text(table + "\n")
        print(f"\nwritten to {args.out}")
        if args.profile > 0:
            leader = quorum_leader_pid(quorum)
            for target in ("quorum-etcd", "quorum-native"):
                print()
                print(profile(leader, args.profile, target, endpoints[target], root,
                              args.profile_clients))
        failed = False
    finally:
        for c in (quorum, etcd):
            if c is not None:
                c.stop()
        if args.keep or failed:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def render(results: dict[tuple[str, int, str], list[dict[str, Any]]], reps: int,
           duration: float) -> str:
    head = (f"| workload | target | ops/s (median of {reps} x {duration:g} s) | runs ops/s | "
            "p50 ms | p99 ms | server CPU µs/op (3 nodes) | vs etcd |")
    rows = [head, "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for workload, clients in WORKLOADS:
        label = f"{workload} x{clients}" + (" (linearizable)" if workload == "get" else "")
        base = fmt_row("etcd", results[(workload, clients, "etcd")])[0]
        for target in TARGETS:
            rs = results[(workload, clients, target)]
            rate, p50, p99, cpu = fmt_row(target, rs)
            runs = ", ".join(f"{r['ops_per_s']:,.0f}" for r in rs)
            ratio = f"{rate / base:.2f}x" if base else "-"
            rows.append(f"| {label} | {target} | {rate:,.0f} | {runs} | {p50:.2f} | {p99:.2f} "
                        f"| {cpu} | {ratio} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
