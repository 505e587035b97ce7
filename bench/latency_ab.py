"""Single-client put latency of two or more source trees, measured in the same minutes.

A change worth a few percent of a put's latency cannot be seen by running one tree, then the
other: on a shared 2-core machine the p50 of one fresh-cluster run moves by +-30 % with the
load. This tool starts one 3-node cluster per tree (durable WAL, fsync on, what ``quorum
cluster up`` runs), all at once, and then one client alternates 1-second windows of
sequential 100-byte puts between them (the order reversed every other window), so every tree
sees the same load. For each tree it prints the median over windows of (window p50 / the
first tree's p50 in the same round), how many windows were faster, and the pooled p50, p90
and p99.

Each tree's servers run with that tree's code: their working directory is the tree (``python
-m`` puts the working directory first on ``sys.path``, before ``PYTHONPATH``) and
``PYTHONPATH`` names it too. Give trees as ``NAME=PATH`` (``git worktree add`` makes one per
commit); two identical trees show the noise floor of a sitting (about 4 % at load 5).

    .venv/bin/python bench/latency_ab.py before=/tmp/wt-before after=. --windows 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_etcd  # a sibling script, not a package

from quorum.client.aio import AsyncClient

VALUE = b"x" * 100


@contextlib.contextmanager
def tree_env(path: Path) -> Iterator[None]:
    """Run what starts inside with ``path`` as working directory and PYTHONPATH."""
    cwd, saved = os.getcwd(), os.environ.get("PYTHONPATH")
    os.chdir(path)
    os.environ["PYTHONPATH"] = str(path)
    try:
        yield
    finally:
        os.chdir(cwd)
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


async def window(client: AsyncClient, seconds: float, first_key: int) -> list[float]:
    """Sequential puts for ``seconds``; their latencies in seconds."""
    out: list[float] = []
    end = time.perf_counter() + seconds
    i = first_key
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await client.put(b"ab/%d" % (i % 1000), VALUE)
        out.append(time.perf_counter() - t0)
        i += 1
    return out


async def measure(endpoints: dict[str, list[str]], windows: int, seconds: float) -> str:
    clients = {}
    for name, eps in endpoints.items():
        client = AsyncClient(eps, timeout_s=10, prefer_leader=True)
        await client.connect()
        await window(client, 0.5, 0)  # warm-up: connections, leader discovery, allocators
        clients[name] = client
    per_window: dict[str, list[float]] = {n: [] for n in clients}
    pooled: dict[str, list[float]] = {n: [] for n in clients}
    for w in range(windows):
        order = list(clients) if w % 2 == 0 else list(reversed(clients))
        for name in order:
            lat = await window(clients[name], seconds, w * 100_000)
            per_window[name].append(statistics.median(lat))
            pooled[name] += lat
    for client in clients.values():
        await client.close()
    base = next(iter(clients))
    lines = [f"{windows} windows of {seconds:g} s each; load average "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
             "| tree | p50 ratio (median) | windows faster | pooled p50 | p90 | p99 |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in clients:
        ratios = [a / b for a, b in zip(per_window[name], per_window[base], strict=True)]
        lat = sorted(pooled[name])
        lines.append(
            f"| {name} | {statistics.median(ratios):.3f} | "
            f"{sum(r < 1 for r in ratios)}/{len(ratios)} | {1e3 * percentile(lat, 0.5):.2f} ms | "
            f"{1e3 * percentile(lat, 0.9):.2f} ms | {1e3 * percentile(lat, 0.99):.2f} ms |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description="paired single-client put latency of source trees")
    ap.add_argument("trees", nargs="+", help="NAME=PATH; the first is the baseline")
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=1.0, help="length of one window")
    args = ap.parse_args()
    trees = {}
    for spec in args.trees:
        name, sep, path = spec.partition("=")
        if not sep or not (Path(path) / "quorum" / "__init__.py").exists():
            sys.exit(f"{spec!r}: expected NAME=PATH to a source tree")
        trees[name] = Path(path).resolve()
    root = Path(tempfile.mkdtemp(prefix="latency-ab-"))
    clusters: dict[str, compare_etcd.Cluster] = {}
    failed = True
    try:
        for name, path in trees.items():
            (root / name).mkdir()
            with tree_env(path):
                clusters[name] = compare_etcd.start_quorum(root / name)
        for cluster in clusters.values():
            compare_etcd.wait_ready("quorum-native", cluster.native_endpoints)
        endpoints = {n: c.native_endpoints for n, c in clusters.items()}
        print(asyncio.run(measure(endpoints, args.windows, args.seconds)))
        for name, cluster in clusters.items():
            cluster.check_alive(root / name)
        failed = False
    finally:
        for cluster in clusters.values():
            cluster.stop()
        if failed:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
