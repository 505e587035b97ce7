"""A local cluster of real ``quorum serve`` processes, with fault injection.

Used by the real-process tests and by ``quorum verify``: start N servers on free loopback ports,
SIGKILL / restart / SIGSTOP / SIGCONT them, add members that join, and find the leader.
Every process writes its log to ``<base_dir>/nodeN.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_ports(count: int) -> list[int]:
    """Ports the kernel reports free right now (bound then released; loopback only)."""
    socks, ports = [], []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class ProcNode:
    def __init__(self, node_id: int, peer: int, native: int, etcd: int,
                 listen: int | None = None) -> None:
        self.id = node_id
        self.peer_url = f"127.0.0.1:{peer}"  # what the other nodes dial (maybe a proxy)
        self.peer_listen = f"127.0.0.1:{listen or peer}"  # where the node really listens
        self.client_url = f"127.0.0.1:{native}"
        self.etcd_url = f"127.0.0.1:{etcd}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.join = False

    def spec(self) -> str:
        return (f"{self.id}={self.peer_url}/{self.client_url.rpartition(':')[2]}"
                f"/{self.etcd_url.rpartition(':')[2]}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class ProcCluster:
    """N real server processes on loopback. Use as a context manager (stops everything)."""

    def __init__(self, n: int, base_dir: str | Path, *, tick_ms: int = 50,
                 election_ticks: int = 10, snapshot_entries: int = 10_000,
                 extra_args: tuple[str, ...] = (), proxied: bool = False,
                 cluster_id: int | None = None) -> None:
        """``proxied``: peers dial each node through a port of a PartitionProxy (started by
        the caller on ``proxy_ports()``), so partitions can be injected. ``cluster_id``
        (default: a random one per cluster): clusters started at once on one machine may
        be handed a port another one used a moment before (``free_ports`` cannot reserve
        them); with one shared id a node could then take another cluster's peer for its
        own member of the same id and mix the two logs. Distinct ids make the peer
        handshake refuse it."""
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        self.snapshot_entries = snapshot_entries
        self.extra_args = extra_args
        self.cluster_id = cluster_id or random.SystemRandom().randrange(1, 1 << 62)
        per = 4 if proxied else 3
        ports = free_ports(per * n)
        self.nodes: dict[int, ProcNode] = {}
        for i in range(1, n + 1):
            p = ports[per * (i - 1): per * i]
            self.nodes[i] = ProcNode(i, p[0], p[1], p[2], p[3] if proxied else None)
        self._initial = ",".join(node.spec() for node in self.nodes.values())
        self.node_env: dict[int, dict[str, str]] = {}  # extra environment per node

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> ProcCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _command(self, node: ProcNode) -> list[str]:
        return [
            sys.executable, "-m", "quorum.cli.main", "serve",
            "--id", str(node.id), "--data-dir", str(self.base_dir / f"node{node.id}"),
            "--peer-listen", node.peer_listen, "--client-listen", node.client_url,
            "--etcd-listen", node.etcd_url, "--initial-cluster", self._initial,
            "--cluster-id", str(self.cluster_id),
            "--tick-ms", str(self.tick_ms), "--election-ticks", str(self.election_ticks),
            "--snapshot-entries", str(self.snapshot_entries), "--log-level", "warning",
            *(("--join",) if node.join else ()), *self.extra_args,
        ]

    def start(self) -> None:
        for node in self.nodes.values():
            self.start_node(node.id)
        self.wait_ports()

    def start_node(self, node_id: int) -> None:
        node = self.nodes[node_id]
        log = open(self.base_dir / f"node{node_id}.log", "ab")  # noqa: SIM115 - owned by child
        env = {**os.environ, **self.node_env.get(node_id, {})}
        node.proc = subprocess.Popen(self._command(node), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        log.close()
        node.paused = False

    def wait_ports(self, timeout_s: float = 20.0) -> None:
        """Wait until every live node accepts connections on its native port."""
        deadline = time.monotonic() + timeout_s
        for node in self.nodes.values():
            if not node.alive:
                continue
            host, port = node.client_url.rsplit(":", 1)
            while True:
                try:
                    with socket.create_connection((host, int(port)), timeout=0.2):
                        break
                except OSError:
                    if time.monotonic() > deadline or not node.alive:
                        raise RuntimeError(f"node {node.id} did not start; see its log") from None
                    time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.proc is None:
                continue
            if node.paused:
                self.resume(node.id)
            if node.alive:
                node.proc.terminate()
        for node in self.nodes.values():
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()

    # --- faults -------------------------------------------------------------------------------

    def kill(self, node_id: int) -> None:
        """SIGKILL: the process dies at once; only what it fsynced survives."""
        node = self.nodes[node_id]
        if node.proc is not None and node.alive:
            if node.paused:
                os.kill(node.proc.pid, signal.SIGCONT)
            node.proc.kill()
            node.proc.wait()
        node.paused = False

    def restart(self, node_id: int) -> None:
        self.kill(node_id)
        self.start_node(node_id)

    def pause(self, node_id: int) -> None:
        """SIGSTOP: the process freezes (a long GC pause or VM stall)."""
        node = self.nodes[node_id]
        if node.proc is not None and node.alive and not node.paused:
            os.kill(node.proc.pid, signal.SIGSTOP)
            node.paused = True

    def resume(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.proc is not None and node.paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.proc.pid, signal.SIGCONT)
            node.paused = False

    # --- membership ---------------------------------------------------------------------------

    def add_node(self, node_id: int, ports: tuple[int, int, int] | None = None,
                 listen: int | None = None) -> ProcNode:
        """Create (not start) a node that joins the running cluster as ``node_id`` (the id
        ``member add`` returned); ``ports`` = (peer, native, etcd), the peer port being the
        one given to ``member add``. ``listen``: the port the node really listens on for
        peers when ``peer`` is a proxy's port (see PartitionProxy.add_target)."""
        peer, native, etcd = ports or free_ports(3)
        node = ProcNode(node_id, peer, native, etcd, listen)
        node.join = True
        self.nodes[node_id] = node
        self._initial = ",".join(n.spec() for n in self.nodes.values())
        return node

    def remove_node(self, node_id: int) -> ProcNode:
        """Kill the node's process and forget it (after ``member remove``). Its data
        directory stays; the caller wipes it if the node is to come back fresh."""
        self.kill(node_id)
        node = self.nodes.pop(node_id)
        self._initial = ",".join(n.spec() for n in self.nodes.values())
        return node

    # --- addresses ----------------------------------------------------------------------------

    def proxy_ports(self) -> dict[int, int]:
        """node -> the advertised peer port (the proxy's listening port when proxied)."""
        return {i: int(n.peer_url.rsplit(":", 1)[1]) for i, n in self.nodes.items()}

    def real_peer_addresses(self) -> dict[int, tuple[str, int]]:
        return {i: (n.peer_listen.rsplit(":", 1)[0], int(n.peer_listen.rsplit(":", 1)[1]))
                for i, n in self.nodes.items()}

    def endpoints(self, alive_only: bool = True) -> list[str]:
        return [n.client_url for n in self.nodes.values()
                if not alive_only or (n.alive and not n.paused)]

    def etcd_endpoints(self) -> list[str]:
        return [n.etcd_url for n in self.nodes.values() if n.alive and not n.paused]

    async def agreed_leader(self, timeout_s: float = 10.0, not_: int = 0) -> int:
        """The member id every live node reports as leader (other than ``not_``), polled
        until they agree; AssertionError if they do not within ``timeout_s``."""
        from quorum.client.aio import AsyncClient  # the client is needed only here
        from quorum.errors import QuorumError

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen: set[int] = set()
            for ep in self.endpoints():
                try:
                    async with AsyncClient([ep], timeout_s=0.5) as c:
                        seen.add((await c.status()).leader_id)
                except QuorumError:
                    seen.add(-1)
            if len(seen) == 1 and not seen & {0, -1, not_}:
                return seen.pop()
            await asyncio.sleep(0.1)
        raise AssertionError("no agreed leader")

    def log_text(self, node_id: int) -> str:
        path = self.base_dir / f"node{node_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""
