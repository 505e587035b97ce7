"""Real server processes whose code version is chosen per node, for the upgrade tests.

Each node runs ``python -m quorum.cli.main serve`` with ``PYTHONPATH`` pointing at one code
tree: an older release extracted from tests/upgrade/data/quorum-<commit>.tar.gz, or the
current checkout. The working directory is a scratch directory holding no ``quorum`` package,
so ``-m`` cannot import the checkout by accident (``sys.path[0]`` is the working directory).

Addresses: a node's stored membership names its peers by address, so a node restarted on new
code must come back on the very same address. Each test passes its own ``subnet`` and node N
binds 127.61.<subnet>.N (all of 127/8 is loopback on Linux), with ports found free on that IP
when the cluster is created; two tests, or two engineers running the suite, never share one.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from quorum.client.aio import AsyncClient
from quorum.errors import QuorumError
from quorum.node.datadir import LEGACY_CLUSTER_ID

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"

# Code under test. The stored fixtures, with what each one speaks (docs/upgrade.md).
FORMAT1_COMMIT = "ec25af5"  # state format 1 snapshots, peer protocol 1
PREBATCH_COMMIT = "dedeab2"  # state format 2 snapshots, peer protocol 1, no ProposalBatch


@dataclass(frozen=True)
class Code:
    """A tree of quorum code: ``root`` holds the ``quorum`` package."""

    name: str
    root: Path


CURRENT = Code("current", ROOT)


def _legacy_cluster_id(code: Code) -> tuple[str, ...]:
    """Releases from before cluster ids were derived all used one fixed id, and have no
    ``--cluster-id`` flag. A new cluster that mixes them with newer code (these tests start
    such clusters from empty directories) must give the newer members that old id, as an
    operator would (docs/upgrade.md). Only for an empty directory: an upgraded one keeps the
    old id by itself, which the rolling upgrades check by starting newer code without it."""
    serve = code.root / "quorum" / "cli" / "serve.py"
    if "--cluster-id" not in serve.read_text():
        return ()
    return ("--cluster-id", str(LEGACY_CLUSTER_ID))


def code_env(code: Code) -> dict[str, str]:
    """The environment that makes ``python -m quorum...`` run ``code`` (with the working
    directory ``scratch`` of the cluster: a directory without a quorum package)."""
    return {**os.environ, "PYTHONPATH": str(code.root)}


def extract_release(commit: str, dest: Path) -> Code:
    """Extract the stored fixture of ``commit`` under ``dest`` (once; reused after)."""
    root = dest / commit
    if not (root / "quorum" / "__init__.py").exists():
        with tarfile.open(DATA / f"quorum-{commit}.tar.gz") as tar:
            tar.extractall(root, filter="data")
    return Code(commit, root)


def patched_current(dest: Path, name: str, path: str, old: str, new: str) -> Code:
    """A copy of the current package under ``dest`` with the one occurrence of ``old`` in
    ``quorum/<path>`` replaced by ``new``: a planted bug. Fails loudly if ``old`` is not
    there exactly once (the code moved: update the planted test, do not drop it)."""
    shutil.copytree(ROOT / "quorum", dest / "quorum",
                    ignore=shutil.ignore_patterns("__pycache__"))
    target = dest / "quorum" / path
    source = target.read_text()
    assert source.count(old) == 1, f"{path} no longer holds {old!r}; update the planted bug"
    target.write_text(source.replace(old, new))
    return Code(name, dest)


def free_port(ip: str, rng: random.Random) -> int:
    """A port free on ``ip`` right now, below Linux's ephemeral range (32768+) so that an
    outgoing connection of some other process cannot take it between a stop and a restart."""
    for _ in range(200):
        port = rng.randrange(20_000, 32_000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((ip, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {ip}")


class Node:
    def __init__(self, node_id: int, ip: str, rng: random.Random) -> None:
        self.id = node_id
        self.ip = ip
        self.peer_port, self.client_port, self.etcd_port = (free_port(ip, rng) for _ in range(3))
        self.proc: subprocess.Popen[bytes] | None = None
        self.code: Code | None = None

    @property
    def client_url(self) -> str:
        return f"{self.ip}:{self.client_port}"

    def spec(self) -> str:
        return f"{self.id}={self.ip}:{self.peer_port}/{self.client_port}/{self.etcd_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class UpgradeCluster:
    """``n`` nodes on 127.61.<subnet>.1..n. Use as a context manager: every process it
    started is killed on exit, whatever happened."""

    def __init__(self, base_dir: Path, subnet: int, n: int = 3, *, snapshot_entries: int = 25,
                 tick_ms: int = 50, election_ticks: int = 10, fsync: bool = False,
                 log_level: str = "") -> None:
        """``fsync`` off is enough for clean stops (the kernel keeps what was written);
        tests that SIGKILL nodes turn it on so that Raft's durability assumption holds."""
        assert 1 <= subnet <= 254
        self.base_dir = base_dir
        self.scratch = base_dir / "cwd"  # the servers' working directory: no quorum/ here
        self.scratch.mkdir(parents=True, exist_ok=True)
        rng = random.Random(os.getpid() * 1000 + subnet)
        self.nodes = {i: Node(i, f"127.61.{subnet}.{i}", rng) for i in range(1, n + 1)}
        self.initial = ",".join(node.spec() for node in self.nodes.values())
        self.snapshot_entries = snapshot_entries
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        self.fsync = fsync
        # warning shows the refusals; QUORUM_UPGRADE_LOG_LEVEL=info (or debug) to dig
        self.log_level = log_level or os.environ.get("QUORUM_UPGRADE_LOG_LEVEL", "warning")

    def __enter__(self) -> UpgradeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes.values():
            if node.alive:
                assert node.proc is not None
                node.proc.kill()
                node.proc.wait()

    def data_dir(self, node_id: int) -> Path:
        return self.base_dir / f"node{node_id}"

    def log_path(self, node_id: int) -> Path:
        return self.base_dir / f"node{node_id}.log"

    def log_text(self, node_id: int) -> str:
        path = self.log_path(node_id)
        return path.read_text(errors="replace") if path.exists() else ""

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, node_id: int, code: Code) -> None:
        """Start ``node_id`` on ``code``. The flags used exist in every stored release."""
        node = self.nodes[node_id]
        assert not node.alive, f"node {node_id} is already running"
        command = [
            sys.executable, "-m", "quorum.cli.main", "serve",
            "--id", str(node_id), "--data-dir", str(self.data_dir(node_id)),
            "--peer-listen", f"{node.ip}:{node.peer_port}",
            "--client-listen", node.client_url,
            "--etcd-listen", f"{node.ip}:{node.etcd_port}",
            "--initial-cluster", self.initial,
            "--tick-ms", str(self.tick_ms), "--election-ticks", str(self.election_ticks),
            "--snapshot-entries", str(self.snapshot_entries), "--log-level", self.log_level,
            *(() if self.fsync else ("--no-fsync",)),
            *(() if self.data_dir(node_id).exists() else _legacy_cluster_id(code)),
        ]
        env = code_env(code)
        with open(self.log_path(node_id), "ab") as log:
            log.write(f"=== starting node {node_id} on {code.name} code\n".encode())
            log.flush()
            node.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=self.scratch)
        node.code = code

    def start_all(self, code: Code) -> None:
        for node_id in self.nodes:
            self.start(node_id, code)
        self.wait_ports()

    def stop(self, node_id: int) -> int:
        """Clean stop (SIGTERM, as an operator's service manager does); returns the exit
        status. A node that does not stop within 20 s is killed and reported as -9."""
        node = self.nodes[node_id]
        if node.proc is None or not node.alive:
            return node.proc.returncode if node.proc is not None else 0
        node.proc.send_signal(signal.SIGTERM)
        try:
            return node.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()
            return -9

    def kill(self, node_id: int) -> None:
        """SIGKILL: the node dies mid-flight, as in a crash or a forced service stop."""
        node = self.nodes[node_id]
        if node.proc is not None and node.alive:
            node.proc.kill()
            node.proc.wait()

    def stop_all(self) -> dict[int, int]:
        return {node_id: self.stop(node_id) for node_id in self.nodes}

    def wait_ports(self, timeout_s: float = 30.0, only: int | None = None) -> None:
        """Wait until the live nodes (or just ``only``) accept native client connections."""
        deadline = time.monotonic() + timeout_s
        for node in self.nodes.values():
            if only is not None and node.id != only:
                continue
            while True:
                try:
                    with socket.create_connection((node.ip, node.client_port), timeout=0.2):
                        break
                except OSError:
                    if not node.alive:
                        raise RuntimeError(
                            f"node {node.id} exited:\n{self.log_text(node.id)}") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"node {node.id} did not start:\n"
                                           f"{self.log_text(node.id)}") from None
                    time.sleep(0.05)

    def endpoints(self) -> list[str]:
        return [node.client_url for node in self.nodes.values() if node.alive]

    # --- observations -------------------------------------------------------------------------

    async def leader_among(self, members: set[int], timeout_s: float = 20.0) -> int:
        """The leader every node of ``members`` reports, once they agree on one in
        ``members``; AssertionError if they do not within ``timeout_s``, with what each node
        last reported (leader, term, last index, applied index) to start the diagnosis."""
        deadline = time.monotonic() + timeout_s
        seen: dict[int, object] = {}
        while time.monotonic() < deadline:
            seen = {}
            for node_id in members:
                try:
                    async with AsyncClient([self.nodes[node_id].client_url], timeout_s=1) as c:
                        st = await c.status()
                    seen[node_id] = (st.leader_id, st.raft_term, st.raft_index,
                                     st.raft_applied_index)
                except QuorumError as exc:
                    seen[node_id] = repr(exc)
            leaders = {v[0] if isinstance(v, tuple) else -1 for v in seen.values()}
            if len(leaders) == 1 and leaders <= members:
                return leaders.pop()
            await asyncio.sleep(0.1)
        raise AssertionError(f"nodes {sorted(members)} agree on no leader among them; "
                             f"node: (leader, term, index, applied): {seen}; "
                             f"their links since their last start: {self.link_events(members)}")

    def link_events(self, members: set[int], last: int = 6) -> dict[int, list[str]]:
        """The last few lines each node logged about its links (connected at INFO, down at
        WARNING, retries at DEBUG) since its last start: with a stalled election, whether
        each node could reach the others. Only what the log level let through."""
        events = {}
        for node_id in sorted(members):
            text = self.log_text(node_id)
            since_start = text[text.rfind("=== starting node"):]
            lines = [line for line in since_start.splitlines()
                     if "quorum.transport: link " in line]
            events[node_id] = lines[-last:]
        return events
