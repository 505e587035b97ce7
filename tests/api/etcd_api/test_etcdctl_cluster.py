"""etcdctl against a real 3-node quorum cluster (``quorum serve`` processes with
``--etcd-listen``): the etcd surface on the Raft node runtime's Backend, not LocalBackend."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .servers import ETCDCTL, ETCDCTL_MISSING, Etcdctl, make_etcdctl

# One worker runs the whole module (make unit uses --dist loadgroup): one cluster for all the
# tests, in file order, the destructive one last.
pytestmark = pytest.mark.xdist_group("etcd-cluster")

START_TIMEOUT_S = 30.0
NODES = (1, 2, 3)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class Cluster:
    procs: list[subprocess.Popen[bytes]]
    etcd_endpoints: list[str]
    logs: list[Path]

    def ctl(self, node: int | None = None) -> Etcdctl:
        """etcdctl on one node's endpoint (1-based), or on all of them."""
        if node is None:
            return make_etcdctl(",".join(self.etcd_endpoints))
        return make_etcdctl(self.etcd_endpoints[node - 1])


def _start(tmp: Path) -> Cluster:
    ports = free_ports(3 * len(NODES))
    peer, client, etcd = ports[0::3], ports[1::3], ports[2::3]
    spec = ",".join(
        f"{i}=127.0.0.1:{peer[i - 1]}/{client[i - 1]}/{etcd[i - 1]}" for i in NODES
    )
    procs, logs = [], []
    for i in NODES:
        log = tmp / f"node{i}.log"
        logs.append(log)
        with log.open("wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "quorum.cli.main", "serve", "--id", str(i),
                 "--data-dir", str(tmp / f"data{i}"),
                 "--peer-listen", f"127.0.0.1:{peer[i - 1]}",
                 "--client-listen", f"127.0.0.1:{client[i - 1]}",
                 "--etcd-listen", f"127.0.0.1:{etcd[i - 1]}",
                 "--initial-cluster", spec],
                stdout=out, stderr=subprocess.STDOUT,
            ))
    return Cluster(procs, [f"127.0.0.1:{p}" for p in etcd], logs)


def _leader(cluster: Cluster) -> int:
    """The member id every endpoint reports as leader (0 while they disagree or have none)."""
    try:
        res = cluster.ctl()("endpoint", "status", "-w", "json", "--command-timeout=3s",
                            check=False, timeout=20)
    except subprocess.TimeoutExpired:
        return 0
    if res.returncode != 0:
        return 0
    leaders = {s["Status"].get("leader", 0) for s in json.loads(res.stdout)}  # 0 is omitted
    return leaders.pop() if len(leaders) == 1 else 0


def _stop(cluster: Cluster) -> None:
    for p in cluster.procs:
        p.terminate()
    for p in cluster.procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if ETCDCTL is None:
        pytest.skip(ETCDCTL_MISSING)
    c = _start(tmp_path_factory.mktemp("cluster"))
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _leader(c):
            if time.monotonic() > deadline or any(p.poll() is not None for p in c.procs):
                logs = "\n".join(log.read_text(errors="replace")[-3000:] for log in c.logs)
                raise AssertionError("the cluster elected no leader:\n" + logs)
            time.sleep(0.2)
        yield c
    finally:
        _stop(c)


def test_a_fresh_cluster_is_at_revision_1_and_its_first_campaign_wins_at_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Runs first in this module, before anything is written: every node restored the new
    cluster's bootstrap snapshot, which holds an empty store at revision 1, as etcd's. etcd's
    Election.Campaign then waits for the keys created before its own with max_create_revision
    = own - 1, where 0 means "no bound": a first key at revision 1 would wait for itself."""
    for node in NODES:
        header = json.loads(cluster.ctl(node)("get", "x", "-w", "json").stdout)["header"]
        assert header.get("revision", 0) == 1  # 0 is omitted from JSON
    out = tmp_path / "elect.out"
    with out.open("w") as f:
        campaign = subprocess.Popen(
            [ETCDCTL or "etcdctl", f"--endpoints={cluster.etcd_endpoints[0]}", "elect",
             "cf/first", "alice"],
            stdout=f, stderr=subprocess.STDOUT, env={"ETCDCTL_API": "3"},
        )
    try:
        deadline = time.monotonic() + 15
        while "alice" not in out.read_text():  # printed once the campaign has won
            assert time.monotonic() < deadline, "no leader elected:\n" + out.read_text()
            time.sleep(0.05)
        key = out.read_text().split("\n")[0]
        got = json.loads(cluster.ctl(2)("get", key, "-w", "json").stdout)["kvs"][0]
        assert got["create_revision"] == 2  # the first write of the cluster
    finally:
        campaign.terminate()
        campaign.wait(10)


def test_members_and_one_leader(cluster: Cluster) -> None:
    doc = json.loads(cluster.ctl()("member", "list", "-w", "json").stdout)
    assert sorted(m["ID"] for m in doc["members"]) == [1, 2, 3]
    statuses = json.loads(cluster.ctl()("endpoint", "status", "-w", "json").stdout)
    leader = _leader(cluster)
    assert leader in (1, 2, 3)
    assert len({s["Status"]["raftTerm"] for s in statuses}) == 1
    assert [s["Status"]["header"]["member_id"] for s in statuses] == [1, 2, 3]


def test_write_on_one_node_is_read_linearizably_on_the_others(cluster: Cluster) -> None:
    for node in NODES:
        assert cluster.ctl(node)("put", f"c/{node}", f"from-{node}").stdout == "OK\n"
        for reader in NODES:
            got = cluster.ctl(reader)("get", f"c/{node}", "--print-value-only").stdout
            assert got == f"from-{node}\n"
    hashes = {line.split(", ")[1] for line in
              cluster.ctl()("endpoint", "hashkv").stdout.strip().split("\n")}
    assert len(hashes) == 1  # every replica has the same history


def test_watch_on_a_follower_sees_writes_through_another_node(cluster: Cluster, tmp_path: Path) -> None:
    header = json.loads(cluster.ctl(1)("get", "x", "-w", "json").stdout)["header"]
    start = int(header.get("revision", 0)) + 1  # 0 is omitted from JSON
    out = tmp_path / "watch.out"
    with out.open("w") as f:
        watcher = subprocess.Popen(
            [ETCDCTL or "etcdctl", f"--endpoints={cluster.etcd_endpoints[0]}", "watch",
             "--prefix", "cw/", f"--rev={start}"],
            stdout=f, stderr=subprocess.STDOUT, env={"ETCDCTL_API": "3"},
        )
    try:
        cluster.ctl(3)("put", "cw/a", "1")
        cluster.ctl(2)("del", "cw/a")
        deadline = time.monotonic() + 15
        while "DELETE" not in out.read_text():
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        assert out.read_text().startswith("PUT\ncw/a\n1\nDELETE\ncw/a\n")
    finally:
        watcher.terminate()
        watcher.wait(10)


def test_lease_from_a_follower_and_lock(cluster: Cluster) -> None:
    granted = cluster.ctl(2)("lease", "grant", "30").stdout.split()[1]
    cluster.ctl(3)("put", "--lease", granted, "cl/k", "v")
    kept = cluster.ctl(1)("lease", "keep-alive", "--once", granted).stdout
    assert kept == f"lease {granted} keepalived with TTL(30)\n"
    assert cluster.ctl(3)("lease", "revoke", granted).stdout == f"lease {granted} revoked\n"
    assert cluster.ctl(1)("get", "cl/k").stdout == ""
    assert cluster.ctl(2)("lock", "cl/lock", "echo", "held").stdout == "held\n"


def test_move_leader(cluster: Cluster) -> None:
    leader = _leader(cluster)
    target = next(n for n in NODES if n != leader)
    res = cluster.ctl()("move-leader", f"{target:x}")
    assert f"Leadership transferred from {leader:x} to {target:x}" in res.stdout
    deadline = time.monotonic() + 15
    while _leader(cluster) != target:
        assert time.monotonic() < deadline, "leadership did not move"
        time.sleep(0.1)
    assert cluster.ctl(target)("put", "after-move", "ok").stdout == "OK\n"


def test_member_add_learner_promote_refused_then_remove(cluster: Cluster) -> None:
    peer = f"http://127.0.0.1:{free_ports(1)[0]}"  # nobody runs there: the learner never syncs
    added = cluster.ctl()("member", "add", "extra", f"--peer-urls={peer}", "--learner").stdout
    assert added.startswith("Member ") and "added to cluster" in added
    new_id = added.split()[1]
    members = json.loads(cluster.ctl()("member", "list", "-w", "json").stdout)["members"]
    learner = next(m for m in members if f"{m['ID']:x}" == new_id)
    assert learner.get("isLearner") is True and learner["peerURLs"] == [peer]
    # Sent to the leader, which knows how far the learner got. (A follower currently lets the
    # promotion through unchecked: reported to the node runtime's owner.)
    refused = cluster.ctl(_leader(cluster))("member", "promote", new_id, check=False)
    assert refused.returncode != 0
    assert "can only promote a learner member which is in sync with leader" in refused.stderr
    removed = cluster.ctl()("member", "remove", new_id).stdout
    assert removed.split()[:2] == ["Member", new_id] and "removed from cluster" in removed
    members = json.loads(cluster.ctl()("member", "list", "-w", "json").stdout)["members"]
    assert sorted(m["ID"] for m in members) == [1, 2, 3]


def test_etcdctl_keeps_working_after_the_leader_is_killed(cluster: Cluster) -> None:
    """Runs last in this module: it kills a node. Writes acknowledged before the crash survive,
    and etcdctl (given every endpoint) fails over to the survivors once they elect a leader."""
    cluster.ctl()("put", "fo/before", "1")
    leader = _leader(cluster)
    victim = cluster.procs[leader - 1]
    victim.kill()
    victim.wait(10)
    survivors = [n for n in NODES if n != leader]
    deadline = time.monotonic() + 30
    while True:
        res = cluster.ctl(survivors[0])("put", "fo/after", "2", "--command-timeout=3s", check=False)
        if res.returncode == 0:
            break
        assert time.monotonic() < deadline, res.stderr  # UNAVAILABLE until a new leader
        time.sleep(0.2)
    for node in survivors:
        got = cluster.ctl(node)("get", "--prefix", "fo/").stdout
        assert got == "fo/after\n2\nfo/before\n1\n"
