"""etcdctl (etcd 3.4, from the etcd-client package) against quorum's etcd API on a LocalBackend.

Each test uses its own key prefix, so they share one server per module. Outputs are compared
with the shapes etcdctl prints for a real etcd.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quorum.api.etcd.snapshot_file import unwrap
from quorum.state import RangeRequest, StateMachine, prefix_end

from .servers import (
    ETCDCTL,
    ETCDCTL_MISSING,
    Etcdctl,
    EtcdServer,
    make_etcdctl,
    start_server,
    stop_server,
)

WAIT_S = 10.0


def revision(etcdctl: Etcdctl) -> int:
    out = etcdctl("get", "no-such-key-for-revision", "-w", "json").stdout
    return int(json.loads(out)["header"].get("revision", 0))  # 0 is omitted from JSON


class Background:
    """An etcdctl command running in the background with its output in a file."""

    def __init__(self, server: EtcdServer, tmp: Path, *args: str) -> None:
        assert ETCDCTL is not None
        self.out_path = tmp / f"bg-{time.monotonic_ns()}.out"
        self._out = self.out_path.open("w")
        env = {**os.environ, "ETCDCTL_API": "3"}
        self.proc = subprocess.Popen(
            [ETCDCTL, f"--endpoints={server.endpoint}", "--dial-timeout=10s", *args],
            stdout=self._out, stderr=subprocess.STDOUT, env=env,
        )

    def output(self) -> str:
        return self.out_path.read_text()

    def wait_for(self, text: str, timeout_s: float = WAIT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while text not in self.output():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not printed within {timeout_s}s:\n{self.output()}")
            time.sleep(0.05)
        return self.output()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._out.close()


@pytest.fixture
def background(etcd_server: EtcdServer, tmp_path: Path) -> Iterator[list[Background]]:
    started: list[Background] = []
    yield started
    for bg in started:
        bg.stop()


def bg(started: list[Background], server: EtcdServer, tmp: Path, *args: str) -> Background:
    b = Background(server, tmp, *args)
    started.append(b)
    return b


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """A server of the test's own, with an empty store (the module's server has history)."""
    if ETCDCTL is None:
        pytest.skip(ETCDCTL_MISSING)
    server = start_server(tmp_path)
    yield server
    stop_server(server)
    assert "Traceback" not in server.log(), server.log()


# --- an empty store (what a fresh etcd 3.4 answers, checked with `etcd --data-dir $(mktemp -d)`) ---


def test_a_fresh_store_is_at_revision_1_as_etcds(
    fresh_server: EtcdServer, tmp_path: Path, background: list[Background]
) -> None:
    ctl = make_etcdctl(fresh_server.endpoint)
    assert revision(ctl) == 1  # etcd: `get x -w json` answers header revision 1
    hashkv = json.loads(ctl("endpoint", "hashkv", "-w", "json").stdout)[0]["HashKV"]
    assert hashkv["header"]["revision"] == 1
    assert hashkv["compact_revision"] == -1  # etcd's "never compacted"
    assert ctl("compaction", "1").stdout == "compacted revision 1\n"  # as etcd: allowed
    again = ctl("compaction", "1", check=False)
    assert again.returncode != 0 and "required revision has been compacted" in again.stderr
    assert ctl("get", "f/k", "--rev=1").stdout == ""  # the compact revision stays readable
    watch = bg(background, fresh_server, tmp_path, "watch", "f/k", "--rev=1", "-w", "json")
    put = json.loads(ctl("put", "f/k", "v", "-w", "json").stdout)
    assert put["header"]["revision"] == 2  # etcd: the first write gets revision 2
    line = watch.wait_for("\n").splitlines()[0]
    [event] = json.loads(line)["Events"]
    assert (event["kv"]["create_revision"], event["kv"]["mod_revision"]) == (2, 2)
    hashkv = json.loads(ctl("endpoint", "hashkv", "-w", "json").stdout)[0]["HashKV"]
    assert (hashkv["header"]["revision"], hashkv["compact_revision"]) == (2, 1)


def test_the_first_lock_of_a_fresh_store_is_granted_at_once(fresh_server: EtcdServer) -> None:
    """A lock taken before anything else was written. etcd 3.4's Mutex.Lock returns at once
    when its own key is the oldest of the prefix, so unlike Election.Campaign (the elect test
    below) it does not wait on max_create_revision = own - 1 here and would not hang on a store
    starting at 0 either: what fails then is the revision check."""
    ctl = make_etcdctl(fresh_server.endpoint)
    assert revision(ctl) == 1  # nothing written yet
    try:
        res = ctl("lock", "first/lock", "echo", "held", timeout=WAIT_S * 2)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("the first lock of a fresh store was not granted") from exc
    assert res.stdout == "held\n"


# --- KV ---------------------------------------------------------------------------------------


def test_put_and_get(etcdctl: Etcdctl) -> None:
    assert etcdctl("put", "kv/a", "1").stdout == "OK\n"
    assert etcdctl("get", "kv/a").stdout == "kv/a\n1\n"
    assert etcdctl("get", "kv/missing").stdout == ""


def test_get_prefix_limit_sort_keys_only(etcdctl: Etcdctl) -> None:
    for key, value in (("p/b", "2"), ("p/a", "3"), ("p/c", "1"), ("q/x", "no")):
        etcdctl("put", key, value)
    assert etcdctl("get", "--prefix", "p/").stdout == "p/a\n3\np/b\n2\np/c\n1\n"
    assert etcdctl("get", "--prefix", "p/", "--limit", "2").stdout == "p/a\n3\np/b\n2\n"
    by_value = etcdctl("get", "--prefix", "p/", "--sort-by=VALUE", "--order=ASCEND").stdout
    assert by_value == "p/c\n1\np/b\n2\np/a\n3\n"
    newest = etcdctl("get", "--prefix", "p/", "--sort-by=MODIFY", "--order=DESCEND", "--limit=1")
    assert newest.stdout == "p/c\n1\n"
    assert etcdctl("get", "--prefix", "p/", "--keys-only").stdout == "p/a\n\np/b\n\np/c\n\n"
    assert etcdctl("get", "--prefix", "p/", "--print-value-only").stdout == "3\n2\n1\n"
    assert etcdctl("get", "p/a", "p/c").stdout == "p/a\n3\np/b\n2\n"  # [key, range_end)
    assert etcdctl("get", "--from-key", "p/c").stdout.startswith("p/c\n1\nq/x\nno\n")


def test_get_json_output_has_header_and_counts(etcdctl: Etcdctl) -> None:
    for i in range(3):
        etcdctl("put", f"js/{i}", f"v{i}")
    doc = json.loads(etcdctl("get", "--prefix", "js/", "--limit", "2", "-w", "json").stdout)
    header = doc["header"]
    assert header["member_id"] == 1 and header["raft_term"] == 1 and header["cluster_id"] > 0
    assert header["revision"] >= 3
    assert doc["count"] == 3 and doc["more"] is True
    kvs = doc["kvs"]
    assert [base64.b64decode(kv["key"]) for kv in kvs] == [b"js/0", b"js/1"]
    assert base64.b64decode(kvs[0]["value"]) == b"v0"
    assert kvs[0]["version"] == 1 and kvs[0]["create_revision"] == kvs[0]["mod_revision"]


def test_get_at_revision_and_serializable(etcdctl: Etcdctl) -> None:
    etcdctl("put", "rev/k", "old")
    old_rev = revision(etcdctl)
    etcdctl("put", "rev/k", "new")
    assert etcdctl("get", "rev/k", f"--rev={old_rev}").stdout == "rev/k\nold\n"
    assert etcdctl("get", "rev/k").stdout == "rev/k\nnew\n"
    assert etcdctl("get", "rev/k", "--consistency=s").stdout == "rev/k\nnew\n"
    future = etcdctl("get", "rev/k", f"--rev={old_rev + 10_000}", check=False)
    assert future.returncode != 0
    assert "etcdserver: mvcc: required revision is a future revision" in future.stderr


def test_del_prefix_with_prev_kv(etcdctl: Etcdctl) -> None:
    etcdctl("put", "del/a", "1")
    etcdctl("put", "del/b", "2")
    etcdctl("put", "dem", "keep")
    assert etcdctl("del", "--prefix", "del/", "--prev-kv").stdout == "2\ndel/a\n1\ndel/b\n2\n"
    assert etcdctl("get", "--prefix", "del/").stdout == ""
    assert etcdctl("del", "del/a").stdout == "0\n"
    assert etcdctl("get", "dem").stdout == "dem\nkeep\n"


def test_txn_from_stdin_both_branches(etcdctl: Etcdctl) -> None:
    etcdctl("put", "txn/flag", "on")
    script = 'value("txn/flag") = "on"\n\nput txn/out yes\nget txn/flag\n\nput txn/out no\n\n'
    assert etcdctl("txn", "-i=false", input=script).stdout == (
        "SUCCESS\n\nOK\n\ntxn/flag\non\n"
    )
    assert etcdctl("get", "txn/out", "--print-value-only").stdout == "yes\n"
    failing = 'mod("txn/flag") < "1"\n\nput txn/out yes\n\nput txn/out no\n\n'
    assert etcdctl("txn", input=failing).stdout == "FAILURE\n\nOK\n"
    assert etcdctl("get", "txn/out", "--print-value-only").stdout == "no\n"


def test_txn_from_file_json_output(etcdctl: Etcdctl, etcd_server: EtcdServer, tmp_path: Path) -> None:
    script = tmp_path / "txn.txt"
    script.write_text('create("txn2/k") = "0"\n\nput txn2/k first\n\nget txn2/k\n\n')
    env = {**os.environ, "ETCDCTL_API": "3"}
    cmd = [ETCDCTL or "etcdctl", f"--endpoints={etcd_server.endpoint}", "txn", "-w", "json"]
    with script.open() as f:  # etcdctl txn < file
        first = subprocess.run(cmd, stdin=f, capture_output=True, text=True, timeout=20, env=env)
    doc = json.loads(first.stdout)
    assert doc["succeeded"] is True
    assert "ResponsePut" in doc["responses"][0]["Response"]
    with script.open() as f:
        again = subprocess.run(cmd, stdin=f, capture_output=True, text=True, timeout=20, env=env)
    doc = json.loads(again.stdout)
    assert "succeeded" not in doc  # false: omitted by etcdctl's JSON printer
    kvs = doc["responses"][0]["Response"]["ResponseRange"]["kvs"]
    assert base64.b64decode(kvs[0]["value"]) == b"first"


# --- watch ------------------------------------------------------------------------------------


def test_watch_prefix_with_prev_kv(
    etcdctl: Etcdctl, etcd_server: EtcdServer, tmp_path: Path, background: list[Background]
) -> None:
    start = revision(etcdctl) + 1  # watch from a known revision: no race with the puts
    w = bg(background, etcd_server, tmp_path, "watch", "--prefix", "w/", "--prev-kv", f"--rev={start}")
    etcdctl("put", "w/a", "1")
    etcdctl("put", "w/a", "2")
    etcdctl("put", "other", "x")
    etcdctl("del", "w/a")
    w.wait_for("DELETE\n")
    time.sleep(0.3)  # let etcdctl print the whole event
    # With --prev-kv etcdctl prints the previous key/value before the event's own; a DELETE's
    # own value is empty.
    assert w.output() == "PUT\nw/a\n1\nPUT\nw/a\n1\nw/a\n2\nDELETE\nw/a\n2\nw/a\n\n"


def test_watch_replays_history_from_revision(etcdctl: Etcdctl, etcd_server: EtcdServer,
                                             tmp_path: Path, background: list[Background]) -> None:
    etcdctl("put", "hist/k", "one")
    first = revision(etcdctl)
    etcdctl("put", "hist/k", "two")
    w = bg(background, etcd_server, tmp_path, "watch", "hist/k", f"--rev={first}")
    out = w.wait_for("two\n")
    assert out == "PUT\nhist/k\none\nPUT\nhist/k\ntwo\n"


def test_watch_of_compacted_revision_is_canceled(etcd_server: EtcdServer, tmp_path: Path) -> None:
    if ETCDCTL is None:
        pytest.skip(ETCDCTL_MISSING)
    server = start_server(tmp_path)  # compaction is global: use a server of its own
    try:
        ctl = make_etcdctl(server.endpoint)
        for i in range(5):  # revisions 2..6
            ctl("put", "c/k", str(i))
        assert ctl("compaction", "4").stdout == "compacted revision 4\n"
        res = ctl("watch", "c/k", "--rev=2", check=False, timeout=20)
        assert "required revision has been compacted" in res.stdout + res.stderr
        old = ctl("get", "c/k", "--rev=3", check=False)
        assert old.returncode != 0
        assert "etcdserver: mvcc: required revision has been compacted" in old.stderr
        assert ctl("get", "c/k", "--rev=4").stdout == "c/k\n2\n"
    finally:
        stop_server(server)


# --- leases -----------------------------------------------------------------------------------


def _grant(etcdctl: Etcdctl, ttl: int) -> str:
    out = etcdctl("lease", "grant", str(ttl)).stdout
    # "lease 0000000000000001 granted with TTL(100s)"
    words = out.split()
    assert words[0] == "lease" and words[2:4] == ["granted", "with"], out
    assert out.strip().endswith(f"TTL({ttl}s)")
    return words[1]


def test_lease_grant_attach_keepalive_timetolive_revoke(etcdctl: Etcdctl) -> None:
    lease = _grant(etcdctl, 100)
    etcdctl("put", "--lease", lease, "lease/k", "v")
    ttl = etcdctl("lease", "timetolive", lease, "--keys").stdout
    assert ttl.startswith(f"lease {lease} granted with TTL(100s), remaining(")
    assert ttl.strip().endswith("attached keys([lease/k])")
    assert etcdctl("lease", "keep-alive", "--once", lease).stdout == (
        f"lease {lease} keepalived with TTL(100)\n"
    )
    listed = etcdctl("lease", "list").stdout.split("\n")
    assert listed[0].startswith("found ") and lease in listed
    assert etcdctl("lease", "revoke", lease).stdout == f"lease {lease} revoked\n"
    assert etcdctl("get", "lease/k").stdout == ""
    assert etcdctl("lease", "timetolive", lease).stdout == f"lease {lease} already expired\n"


def test_lease_expiry_deletes_attached_keys(etcdctl: Etcdctl) -> None:
    lease = _grant(etcdctl, 1)
    etcdctl("put", "--lease", lease, "expire/k", "v")
    deadline = time.monotonic() + WAIT_S
    while etcdctl("get", "expire/k").stdout:
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.2)
    assert etcdctl("lease", "timetolive", lease).stdout == f"lease {lease} already expired\n"


def test_unknown_lease_is_refused(etcdctl: Etcdctl) -> None:
    res = etcdctl("put", "--lease", "7fffffff", "nolease/k", "v", check=False)
    assert res.returncode != 0 and "etcdserver: requested lease not found" in res.stderr
    res = etcdctl("lease", "revoke", "7fffffff", check=False)
    assert res.returncode != 0 and "etcdserver: requested lease not found" in res.stderr


# --- cluster and maintenance --------------------------------------------------------------


def test_member_list(etcdctl: Etcdctl, etcd_server: EtcdServer) -> None:
    line = etcdctl("member", "list").stdout.strip()
    assert line == "1, started, default, http://127.0.0.1:2380, http://127.0.0.1:0, false" or (
        line.startswith("1, started, default, http://127.0.0.1:2380, ") and line.endswith(", false")
    )
    doc = json.loads(etcdctl("member", "list", "-w", "json").stdout)
    assert [m["ID"] for m in doc["members"]] == [1]
    refused = etcdctl("member", "add", "x", "--peer-urls=http://127.0.0.1:2390", check=False)
    assert refused.returncode != 0 and "Unimplemented" in refused.stderr


def test_endpoint_status_health_hashkv(etcdctl: Etcdctl, etcd_server: EtcdServer) -> None:
    etcdctl("put", "ep/k", "v")
    status = json.loads(etcdctl("endpoint", "status", "-w", "json").stdout)[0]
    st = status["Status"]
    assert st["leader"] == 1 and st["raftTerm"] == 1 and st["version"] == "3.4.0"
    assert st["raftIndex"] >= 1 and st["raftAppliedIndex"] == st["raftIndex"]
    assert st["dbSize"] > 0
    res = etcdctl("endpoint", "health")
    health = res.stdout + res.stderr  # etcdctl 3.4 prints the health line on stderr
    assert health.startswith(f"{etcd_server.endpoint} is healthy: successfully committed proposal")
    hashkv = etcdctl("endpoint", "hashkv").stdout.strip()
    endpoint, digest = hashkv.split(", ")
    assert endpoint == etcd_server.endpoint and int(digest) > 0
    assert etcdctl("endpoint", "hashkv").stdout.strip() == hashkv  # no write between: same hash
    etcdctl("put", "ep/k", "changed")
    assert etcdctl("endpoint", "hashkv").stdout.strip() != hashkv


def test_snapshot_save_restores_to_equal_state(etcdctl: Etcdctl, tmp_path: Path) -> None:
    etcdctl("put", "snap/a", "1")
    etcdctl("put", "snap/b", "2")
    path = tmp_path / "snap.db"
    res = etcdctl("snapshot", "save", str(path))
    assert f"Snapshot saved at {path}" in res.stdout
    data = path.read_bytes()
    assert len(data) % 512 == 32  # etcdctl checks this shape (db pages + sha256)
    machine = StateMachine.from_snapshot([unwrap(data)])
    got = machine.range(RangeRequest(b"snap/", prefix_end(b"snap/")))
    assert [(kv.key, kv.value) for kv in got.kvs] == [(b"snap/a", b"1"), (b"snap/b", b"2")]


def test_defrag_alarm_and_auth(etcdctl: Etcdctl) -> None:
    assert "Finished defragmenting etcd member" in etcdctl("defrag").stdout
    assert etcdctl("alarm", "list").stdout == ""
    auth = etcdctl("auth", "enable", check=False)
    assert auth.returncode != 0 and "authentication is not supported" in auth.stderr


# --- lock and election (etcdctl runs etcd's client-side recipes over KV/Watch/Lease) ------


def test_lock_is_mutually_exclusive(
    etcdctl: Etcdctl, etcd_server: EtcdServer, tmp_path: Path, background: list[Background]
) -> None:
    holder = bg(background, etcd_server, tmp_path, "lock", "lk/mutex")
    holder.wait_for("lk/mutex/")  # etcdctl prints the owner key while holding the lock
    waiter = bg(background, etcd_server, tmp_path, "lock", "lk/mutex", "echo", "second-got-it")
    time.sleep(1.0)
    assert "second-got-it" not in waiter.output()  # still waiting while the holder holds
    holder.stop()  # SIGTERM: etcdctl releases the lock (its session's lease is revoked)
    waiter.wait_for("second-got-it")
    assert waiter.proc.wait(10) == 0


def test_lock_runs_command_while_holding(etcdctl: Etcdctl) -> None:
    assert etcdctl("lock", "lk/exec", "echo", "inside").stdout == "inside\n"


def test_elect_shows_the_leader(
    fresh_server: EtcdServer, tmp_path: Path, background: list[Background]
) -> None:
    # On a fresh store: the first campaign key ever written. etcd's Election.Campaign then
    # waits for older keys with max_create_revision = its own - 1 (0 would mean "no bound",
    # i.e. waiting for itself), so this also checks that the first write is revision 2.
    assert revision(make_etcdctl(fresh_server.endpoint)) == 1
    leader = bg(background, fresh_server, tmp_path, "elect", "el/race", "alice")
    leader.wait_for("alice")
    listener = bg(background, fresh_server, tmp_path, "elect", "-l", "el/race")
    out = listener.wait_for("alice")
    assert out.startswith("el/race/") and out.split("\n")[1] == "alice"
    second = bg(background, fresh_server, tmp_path, "elect", "el/race", "bob")
    time.sleep(1.0)
    assert "bob" not in second.output()  # bob waits behind alice
    leader.stop()  # alice resigns
    second.wait_for("bob")
    listener.wait_for("bob")


def test_compaction_errors(etcdctl: Etcdctl) -> None:
    far = etcdctl("compaction", str(revision(etcdctl) + 1000), check=False)
    assert far.returncode != 0
    assert "etcdserver: mvcc: required revision is a future revision" in far.stderr


def test_make_mirror_copies_a_prefix_to_another_server(
    etcdctl: Etcdctl, etcd_server: EtcdServer, tmp_path: Path, background: list[Background]
) -> None:
    """make-mirror syncs the existing keys, then follows a watch (both servers are quorum)."""
    target_dir = tmp_path / "target"
    target_dir.mkdir()
    target = start_server(target_dir)
    try:
        etcdctl("put", "mm/a", "1")
        mirror = bg(background, etcd_server, tmp_path, "make-mirror", "--prefix", "mm/", target.endpoint)
        dest = make_etcdctl(target.endpoint)
        etcdctl("put", "mm/b", "2")
        etcdctl("del", "mm/a")
        deadline = time.monotonic() + WAIT_S
        while dest("get", "--prefix", "mm/").stdout != "mm/b\n2\n":
            assert time.monotonic() < deadline, dest("get", "--prefix", "mm/").stdout + mirror.output()
            time.sleep(0.1)
    finally:
        stop_server(target)


def test_interactive_watch_runs_several_watchers_on_one_stream(
    etcdctl: Etcdctl, etcd_server: EtcdServer, tmp_path: Path
) -> None:
    assert ETCDCTL is not None
    out_path = tmp_path / "iw.out"
    start = revision(etcdctl) + 1
    with out_path.open("w") as out:
        proc = subprocess.Popen(
            [ETCDCTL, f"--endpoints={etcd_server.endpoint}", "watch", "-i"],
            stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
    try:
        assert proc.stdin is not None
        proc.stdin.write(f"watch iw/a --rev={start}\nwatch --prefix iw/b --rev={start}\n")
        proc.stdin.flush()
        etcdctl("put", "iw/a", "1")
        etcdctl("put", "iw/b/x", "2")
        etcdctl("put", "iw/c", "not watched")
        deadline = time.monotonic() + WAIT_S
        while out_path.read_text().count("PUT") < 2:
            assert time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.05)
        time.sleep(0.3)
        assert out_path.read_text() == "PUT\niw/a\n1\nPUT\niw/b/x\n2\n"
    finally:
        proc.kill()
        proc.wait(10)


def test_put_ignore_value_and_ignore_lease(etcdctl: Etcdctl) -> None:
    etcdctl("put", "ign/k", "old")
    lease = _grant(etcdctl, 100)
    assert etcdctl("put", "ign/k", "--ignore-value", f"--lease={lease}").stdout == "OK\n"
    assert etcdctl("get", "ign/k", "--print-value-only").stdout == "old\n"
    assert etcdctl("lease", "timetolive", lease, "--keys").stdout.strip().endswith(
        "attached keys([ign/k])"
    )
    assert etcdctl("put", "ign/k", "new", "--ignore-lease").stdout == "OK\n"
    doc = json.loads(etcdctl("get", "ign/k", "-w", "json").stdout)
    assert base64.b64decode(doc["kvs"][0]["value"]) == b"new"
    assert doc["kvs"][0]["lease"] == int(lease, 16)  # the lease was kept
    missing = etcdctl("put", "ign/none", "--ignore-value", check=False)
    assert missing.returncode != 0 and "etcdserver: key not found" in missing.stderr
