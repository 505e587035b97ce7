"""Smoke tests of every `quorum` CLI command against a real 3-node cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quorum.verify.procs import ProcCluster

pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("procs")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    with ProcCluster(3, tmp_path_factory.mktemp("cli")) as c:
        q_ok(c, "status")
        yield c


def q(cluster: ProcCluster, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "quorum.cli.main", "--endpoints",
           ",".join(cluster.endpoints()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def q_ok(cluster: ProcCluster, *args: str) -> str:
    for _ in range(40):  # the first call may race the first election
        r = q(cluster, *args)
        if r.returncode == 0:
            return r.stdout
        if "NoLeader" not in r.stderr and "RequestTimeout" not in r.stderr:
            break
        time.sleep(0.25)
    raise AssertionError(f"quorum {' '.join(args)} failed: {r.stdout}\n{r.stderr}")


def q_json(cluster: ProcCluster, *args: str) -> object:
    return json.loads(q_ok(cluster, "-w", "json", *args))


def test_put_get_del(cluster: ProcCluster) -> None:
    assert "OK" in q_ok(cluster, "put", "a/1", "one")
    q_ok(cluster, "put", "a/2", "two")
    q_ok(cluster, "put", "a/3", "three")
    out = q_ok(cluster, "-w", "simple", "get", "a/1")
    assert out.split() == ["a/1", "one"]
    resp = q_json(cluster, "get", "a/", "--prefix")
    assert isinstance(resp, dict)
    assert [kv["key"] for kv in resp["kvs"]] == ["a/1", "a/2", "a/3"]
    rev1 = resp["kvs"][0]["mod_revision"]
    q_ok(cluster, "put", "a/1", "uno")
    old = q_json(cluster, "get", "a/1", "--rev", str(rev1))
    assert isinstance(old, dict) and old["kvs"][0]["value"] == "one"
    limited = q_json(cluster, "get", "a/", "--prefix", "--limit", "2")
    assert isinstance(limited, dict) and len(limited["kvs"]) == 2 and limited["more"]
    desc = q_json(cluster, "get", "a/", "--prefix", "--sort-by", "key", "--order", "descend")
    assert isinstance(desc, dict) and [kv["key"] for kv in desc["kvs"]] == ["a/3", "a/2", "a/1"]
    keys = q_ok(cluster, "-w", "simple", "get", "a/", "--prefix", "--keys-only").split()
    assert keys == ["a/1", "a/2", "a/3"]
    assert q_ok(cluster, "get", "a/", "--prefix", "--count-only").strip() == "3"
    ser = q_json(cluster, "get", "a/2", "--serializable")
    assert isinstance(ser, dict) and ser["kvs"][0]["value"] == "two"
    out = q_ok(cluster, "del", "a/", "--prefix", "--prev-kv")
    assert out.splitlines()[0] == "3"
    assert q_ok(cluster, "get", "a/", "--prefix", "--count-only").strip() == "0"


def test_txn(cluster: ProcCluster) -> None:
    q_ok(cluster, "put", "t", "v1")
    out = q_ok(cluster, "txn", "--if", "value(t) = v1", "--then", "put t v2", "--else", "get t")
    assert out.splitlines()[0] == "SUCCESS"
    out = q_ok(cluster, "txn", "--if", "value(t) = v1", "--then", "put t v3", "--else", "get t")
    assert out.splitlines() == ["FAILURE", "t = v2"]
    bad = q(cluster, "txn", "--if", "nonsense", "--then", "put t v")
    assert bad.returncode != 0


def test_watch_prints_events(cluster: ProcCluster) -> None:
    cmd = [sys.executable, "-m", "quorum.cli.main", "--endpoints", ",".join(cluster.endpoints()),
           "watch", "w/", "--prefix", "--count", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    q_ok(cluster, "put", "w/x", "1")
    q_ok(cluster, "del", "w/x")
    out, err = proc.communicate(timeout=20)
    lines = out.splitlines()
    assert lines[0].startswith("PUT w/x = 1"), (out, err)
    assert lines[1].startswith("DELETE w/x"), (out, err)


def test_compact_and_history(cluster: ProcCluster) -> None:
    q_ok(cluster, "put", "c", "1")
    resp = q_json(cluster, "get", "c")
    assert isinstance(resp, dict)
    rev = resp["revision"]
    q_ok(cluster, "put", "c", "2")
    assert "compacted" in q_ok(cluster, "compact", str(rev))
    r = q(cluster, "get", "c", "--rev", str(rev - 1))
    assert r.returncode != 0 and "compacted" in r.stderr.lower()


def test_leases(cluster: ProcCluster) -> None:
    grant = q_json(cluster, "lease", "grant", "30")
    assert isinstance(grant, dict)
    lease_hex = format(grant["id"], "x")
    q_ok(cluster, "put", "leased", "x", "--lease", lease_hex)
    assert "keepalived with TTL(30)" in q_ok(cluster, "lease", "keep-alive", "--once", lease_hex)
    ttl = q_ok(cluster, "lease", "ttl", lease_hex, "--keys")
    assert "granted with TTL(30s)" in ttl and "leased" in ttl
    assert lease_hex in q_ok(cluster, "lease", "list")
    q_ok(cluster, "lease", "revoke", lease_hex)
    assert q_ok(cluster, "get", "leased", "--count-only").strip() == "0"
    assert "already expired" in q_ok(cluster, "lease", "ttl", lease_hex)


def test_lock_runs_command_with_fencing_token(cluster: ProcCluster) -> None:
    out = q_ok(cluster, "lock", "cli-lock", "--", sys.executable, "-c",
               "import os; print('token-in-env', os.environ['QUORUM_FENCING_TOKEN'])")
    token_line = next(ln for ln in out.splitlines() if ln.startswith("fencing token:"))
    token = token_line.split(":")[1].strip()
    assert f"token-in-env {token}" in out


def test_elect_and_observe(cluster: ProcCluster) -> None:
    base = [sys.executable, "-m", "quorum.cli.main", "--endpoints", ",".join(cluster.endpoints())]
    campaigner = subprocess.Popen([*base, "elect", "cli-election", "alice"],
                                  stdout=subprocess.PIPE, text=True)
    try:
        assert campaigner.stdout is not None
        assert campaigner.stdout.readline().startswith("elected: alice")
        observer = subprocess.Popen([*base, "elect", "cli-election", "--listen"],
                                    stdout=subprocess.PIPE, text=True)
        try:
            assert observer.stdout is not None
            assert observer.stdout.readline().strip() == "alice"
        finally:
            observer.kill()
            observer.wait()
    finally:
        campaigner.kill()
        campaigner.wait()


def test_status_members_hash_snapshot(cluster: ProcCluster, tmp_path: Path) -> None:
    st = q_json(cluster, "status")
    assert isinstance(st, list) and len(st) == 3
    leaders = {s["status"]["leader_id"] for s in st}
    assert len(leaders) == 1 and 0 not in leaders
    members = q_json(cluster, "member", "list")
    assert isinstance(members, list) and len(members) == 3
    hashes = q_json(cluster, "hash")
    assert isinstance(hashes, list) and len(hashes) == 3
    snap = tmp_path / "snap.bin"
    assert "snapshot saved" in q_ok(cluster, "snapshot", "save", str(snap))
    assert snap.stat().st_size > 0


def test_member_add_promote_remove_and_move_leader(cluster: ProcCluster) -> None:
    added = q_json(cluster, "member", "add", "http://127.0.0.1:1", "--learner")
    assert isinstance(added, dict)
    new_id = format(added["member"]["member_id"], "x")
    assert added["member"]["is_learner"]
    r = q(cluster, "member", "promote", new_id)  # it never started: not ready
    assert r.returncode != 0 and "LearnerNotReady" in r.stderr
    q_ok(cluster, "member", "remove", new_id)
    members = q_json(cluster, "member", "list")
    assert isinstance(members, list) and len(members) == 3
    st = q_json(cluster, "status")
    assert isinstance(st, list)
    leader = st[0]["status"]["leader_id"]
    target = next(s["status"]["member_id"] for s in st if s["status"]["member_id"] != leader)
    leader_ep = next(s["endpoint"] for s in st if s["status"]["member_id"] == leader)
    out = subprocess.run([sys.executable, "-m", "quorum.cli.main", "--endpoints", leader_ep,
                          "move-leader", format(target, "x")], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    st = q_json(cluster, "status")
    assert isinstance(st, list) and {s["status"]["leader_id"] for s in st} == {target}


def test_wal_inspect_and_verify(cluster: ProcCluster) -> None:
    data_dir = cluster.base_dir / "node1"
    out = subprocess.run([sys.executable, "-m", "quorum.cli.main", "wal", "inspect",
                          str(data_dir)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "segment" in out.stdout.lower() or "wal" in out.stdout.lower()
    ver = subprocess.run([sys.executable, "-m", "quorum.cli.main", "wal", "verify",
                          str(data_dir)], capture_output=True, text=True, timeout=30)
    assert ver.returncode == 0, ver.stdout + ver.stderr


def test_lease_ids_are_hex_even_when_they_look_decimal() -> None:
    from quorum.cli.main import _lease_id

    assert _lease_id("10") == 0x10
    assert _lease_id("0x1f") == 0x1F
    assert _lease_id("ff") == 0xFF
