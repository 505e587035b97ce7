"""`quorum serve` with TLS between members (--peer-*) and on the client ports, etcd and native
(--cert-file ...): real processes on loopback, certificates made by the openssl command."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tls_certs import make_cert

from quorum.client.aio import AsyncClient
from quorum.client.recipes import Lock
from quorum.client.tls import ClientTls
from quorum.errors import QuorumError, TlsHandshakeFailed
from quorum.verify.procs import ProcCluster, ProcNode, free_ports

from .test_faults import hashes

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.xdist_group("procs"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]
ETCDCTL = shutil.which("etcdctl")


def peer_args(cert: Path, key: Path, ca: Path) -> tuple[str, ...]:
    return ("--peer-cert-file", str(cert), "--peer-key-file", str(key),
            "--peer-trusted-ca-file", str(ca), "--peer-client-cert-auth")


class MixedCluster(ProcCluster):
    """Node ``odd`` runs with its own (untrusted) peer certificate."""

    def __init__(self, base: Path, trusted: tuple[str, ...], odd: int,
                 untrusted: tuple[str, ...]) -> None:
        super().__init__(3, base, extra_args=trusted)
        self.odd, self.untrusted = odd, untrusted

    def _command(self, node: ProcNode) -> list[str]:
        cmd = super()._command(node)
        if node.id != self.odd:
            return cmd
        return cmd[:len(cmd) - len(self.extra_args)] + list(self.untrusted)


async def agreed_leader(cluster: ProcCluster, tls: ClientTls | None = None,
                        skip: int = 0, timeout_s: float = 20.0) -> int:
    """The leader every live node but ``skip`` reports, asked over TLS when ``tls`` is given
    (ProcCluster's own helper speaks plain TCP, which TLS native ports refuse)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        seen: set[int] = set()
        for node_id, node in cluster.nodes.items():
            if node_id == skip:
                continue
            try:
                async with AsyncClient([node.client_url], timeout_s=2, tls=tls) as c:
                    seen.add((await c.status()).leader_id)
            except QuorumError:
                seen.add(0)
        if len(seen) == 1 and 0 not in seen:
            return seen.pop()
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no agreed leader: {seen}")
        await asyncio.sleep(0.2)


async def tls_hashes(cluster: ProcCluster, tls: ClientTls,
                     timeout_s: float = 15.0) -> dict[int, tuple[int, int]]:
    """(revision, hash) per node once they agree (or the last answers at the deadline)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        out: dict[int, tuple[int, int]] = {}
        for node_id, node in cluster.nodes.items():
            try:
                async with AsyncClient([node.client_url], timeout_s=5, tls=tls) as c:
                    kv = await c.hash_kv()
                    out[node_id] = (kv.revision, kv.hash)
            except QuorumError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
        if len(out) == len(cluster.nodes) and len(set(out.values())) == 1:
            return out
        if asyncio.get_running_loop().time() > deadline:
            return out
        await asyncio.sleep(0.2)


def test_members_replicate_over_mutual_tls_and_etcdctl_uses_the_tls_port(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "cluster")
    extra = (*peer_args(cert, key, cert), "--cert-file", str(cert), "--key-file", str(key))
    tls = ClientTls(ca_file=str(cert))  # --cert-file secures the native port too

    async def scenario() -> None:
        with ProcCluster(3, tmp_path / "data", extra_args=extra) as cluster:
            await agreed_leader(cluster, tls)
            async with AsyncClient(cluster.endpoints(), timeout_s=10, tls=tls) as client:
                for i in range(50):
                    await client.put(b"tls/%02d" % i, b"v%d" % i)
            h = await tls_hashes(cluster, tls)
            assert len(h) == 3 and len(set(h.values())) == 1, h
            if ETCDCTL is None:
                return
            env = {**os.environ, "ETCDCTL_API": "3"}
            base = [ETCDCTL, f"--endpoints={cluster.etcd_endpoints()[0]}", "--cacert",
                    str(cert), "--dial-timeout=10s", "--command-timeout=20s"]
            out = subprocess.run([*base, "get", "tls/07", "--print-value-only"], env=env,
                                 capture_output=True, text=True, timeout=60, check=True)
            assert out.stdout == "v7\n"
            members = json.loads(subprocess.run(
                [*base, "member", "list", "-w", "json"], env=env, capture_output=True,
                text=True, timeout=60, check=True).stdout)["members"]
            assert len(members) == 3
            for m in members:
                assert all(u.startswith("https://") for u in m["peerURLs"]), m
                assert any(u.startswith("https://") for u in m["clientURLs"]), m

    asyncio.run(scenario())


def test_a_member_with_an_untrusted_certificate_is_kept_out(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "cluster")
    other, other_key = make_cert(tmp_path, "intruder")
    odd = 3

    async def scenario() -> None:
        trusted = peer_args(cert, key, cert)
        # the odd node trusts the cluster's CA but presents a certificate nobody trusts
        untrusted = peer_args(other, other_key, cert)
        with MixedCluster(tmp_path / "data", trusted, odd, untrusted) as cluster:
            leader = await agreed_leader(cluster, skip=odd)
            assert leader != odd
            async with AsyncClient([n.client_url for i, n in cluster.nodes.items() if i != odd],
                                   timeout_s=10) as client:
                last = 0
                for i in range(20):
                    last = (await client.put(b"k%d" % i, b"v")).revision
            await asyncio.sleep(2.0)  # far longer than replication takes between the others
            h = await hashes(cluster)
            assert h[1 if odd != 1 else 2][0] == last
            assert h[odd][0] < last, h  # the odd node never received the writes

    asyncio.run(scenario())


@pytest.mark.parametrize("which", ["peer", "etcd"])
def test_an_unusable_tls_file_stops_the_start_naming_it(tmp_path: Path, which: str) -> None:
    cert, key = make_cert(tmp_path, "cluster")
    missing = tmp_path / "missing.pem"
    args = (peer_args(cert, key, missing) if which == "peer"
            else ("--cert-file", str(cert), "--key-file", str(missing)))
    peer, client, etcd = free_ports(3)
    data = tmp_path / "node1"
    cmd = [sys.executable, "-m", "quorum.cli.main", "serve", "--id", "1", "--data-dir", str(data),
           "--peer-listen", f"127.0.0.1:{peer}", "--client-listen", f"127.0.0.1:{client}",
           "--etcd-listen", f"127.0.0.1:{etcd}",
           "--initial-cluster", f"1=127.0.0.1:{peer}/{client}/{etcd}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert res.returncode != 0
    assert "ConfigError" in res.stderr and str(missing) in res.stderr, res.stderr
    assert not data.exists()  # refused before the data directory was created


def test_half_a_peer_tls_setting_is_a_usage_error(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "cluster")
    res = subprocess.run(
        [sys.executable, "-m", "quorum.cli.main", "serve", "--data-dir", str(tmp_path / "d"),
         "--peer-cert-file", str(cert), "--peer-key-file", str(key)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 2
    assert "peer_trusted_ca_file" in res.stderr


# --- TLS on the native port ---------------------------------------------------------------


class NativeTls:
    """A cluster certificate (peers and client ports, named 127.0.0.1) and a client
    certificate; trusted-ca.pem holds both, as one CA signing both would."""

    def __init__(self, folder: Path) -> None:
        self.cert, self.key = make_cert(folder, "cluster")
        self.client, self.client_key = make_cert(folder, "client")
        self.stranger, self.stranger_key = make_cert(folder, "stranger")
        self.trusted = folder / "trusted-ca.pem"
        self.trusted.write_bytes(self.cert.read_bytes() + self.client.read_bytes())

    def serve_args(self) -> tuple[str, ...]:
        return (*peer_args(self.cert, self.key, self.cert),
                "--cert-file", str(self.cert), "--key-file", str(self.key),
                "--trusted-ca-file", str(self.trusted), "--client-cert-auth")

    def client_tls(self) -> ClientTls:
        return ClientTls(ca_file=str(self.cert), cert_file=str(self.client),
                         key_file=str(self.client_key))

    def cli_args(self) -> tuple[str, ...]:
        return ("--cacert", str(self.cert), "--cert", str(self.client),
                "--key", str(self.client_key))


@pytest.fixture(scope="module")
def native_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcCluster, NativeTls]]:
    base = tmp_path_factory.mktemp("native-tls")
    certs = NativeTls(base)
    with ProcCluster(3, base / "data", extra_args=certs.serve_args()) as cluster:
        asyncio.run(agreed_leader(cluster, certs.client_tls()))
        yield cluster, certs


def refusals(cluster: ProcCluster) -> list[str]:
    """The handshakes a node refused (a client that merely hung up mid-handshake, such as
    ProcCluster's port probe, is left out)."""
    return [line for i in cluster.nodes for line in cluster.log_text(i).splitlines()
            if "TLS handshake failed" in line and "closed the connection" not in line]


def test_put_get_watch_lock_and_a_relayed_keepalive_over_mutual_tls(
    native_tls: tuple[ProcCluster, NativeTls]
) -> None:
    cluster, certs = native_tls
    tls = certs.client_tls()

    async def scenario() -> None:
        leader = await agreed_leader(cluster, tls)
        follower = next(i for i in cluster.nodes if i != leader)
        before = len(refusals(cluster))
        async with AsyncClient(cluster.endpoints(), timeout_s=10, tls=tls) as client, \
                AsyncClient([cluster.nodes[follower].client_url], timeout_s=10,
                            tls=tls) as via_follower:
            watcher = via_follower.watch(b"nt/", prefix=True)
            await watcher.start()
            put = await client.put(b"nt/a", b"1")
            got = await via_follower.get(b"nt/a")
            assert got is not None and got.value == b"1"
            batch = await asyncio.wait_for(watcher.__anext__(), 10)
            assert [(e.kv.key, e.kv.mod_revision) for e in batch.events] == [
                (b"nt/a", put.revision)]
            await watcher.cancel()
            # a follower passes keepalives to the leader's native port: over TLS, with
            # the member's own certificate as its client certificate
            lease = await via_follower.lease_grant(30)
            assert await via_follower.lease_keepalive_once(lease.id) == 30
            async with Lock(client, "nt-lock", ttl_s=30) as token:
                assert token > put.revision
            members = await client.member_list()
            assert len(members) == 3
            for member in members:
                assert member.client_urls[0].startswith("https://"), member  # native
                assert all(u.startswith("https://") for u in member.client_urls), member
        assert len(refusals(cluster)) == before  # no relay (nor client) was refused

    asyncio.run(scenario())


def test_plaintext_and_untrusted_clients_are_refused_and_the_node_keeps_serving(
    native_tls: tuple[ProcCluster, NativeTls]
) -> None:
    cluster, certs = native_tls
    node = cluster.nodes[1]

    async def scenario() -> None:
        async with AsyncClient([node.client_url], timeout_s=10, tls=certs.client_tls()) as good:
            await good.put(b"served", b"before")
            async with AsyncClient([node.client_url], timeout_s=1) as plain:
                with pytest.raises(QuorumError):
                    await plain.put(b"k", b"v")
            stranger = ClientTls(ca_file=str(certs.cert), cert_file=str(certs.stranger),
                                 key_file=str(certs.stranger_key))
            async with AsyncClient([node.client_url], timeout_s=10, tls=stranger) as odd:
                with pytest.raises(TlsHandshakeFailed, match="refused"):
                    await odd.put(b"k", b"v")
            async with AsyncClient([node.client_url], timeout_s=10,
                                   tls=ClientTls(ca_file=str(certs.stranger))) as wrong_ca:
                with pytest.raises(TlsHandshakeFailed, match="certificate verify failed"):
                    await wrong_ca.put(b"k", b"v")
            got = await good.get(b"served")  # the connection opened before still works
            assert got is not None and got.value == b"before"
            assert (await good.put(b"served", b"after")).revision > 0
        log = cluster.log_text(1)
        assert "TLS handshake failed (WRONG_VERSION_NUMBER)" in log  # the plaintext client
        assert "certificate verify failed" in log  # the stranger's certificate

    asyncio.run(scenario())


def test_cli_put_get_status_and_member_list_over_tls(
    native_tls: tuple[ProcCluster, NativeTls]
) -> None:
    cluster, certs = native_tls
    base = [sys.executable, "-m", "quorum.cli.main", "--endpoints", ",".join(cluster.endpoints()),
            "--timeout", "10"]

    def quorum(*args: str, tls: tuple[str, ...] = certs.cli_args(),
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *tls, *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    put = quorum("put", "cli-tls", "hello")
    assert put.returncode == 0, put.stderr
    got = quorum("-w", "json", "get", "cli-tls")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["kvs"][0]["value"] == "hello"
    status = json.loads(quorum("-w", "json", "status").stdout)
    assert len(status) == 3
    assert all(s["endpoint"].startswith("https://") and "status" in s for s in status), status
    members = quorum("member", "list")
    assert members.returncode == 0 and members.stdout.count("https://") >= 6, members.stdout
    hashes_out = quorum("hash")
    assert hashes_out.returncode == 0 and hashes_out.stdout.count("https://") == 3, hashes_out
    client_cert = ("--cert", str(certs.client), "--key", str(certs.client_key))
    unchecked = quorum("get", "cli-tls", tls=("--insecure-skip-tls-verify", *client_cert))
    assert unchecked.returncode == 0 and "hello" in unchecked.stdout, unchecked.stderr
    # dialed by name, the certificates (IP 127.0.0.1 only) match only with the name override
    by_name = ("--endpoints", cluster.endpoints()[0].replace("127.0.0.1", "localhost"),
               *certs.cli_args())
    mismatch = quorum("get", "cli-tls", tls=by_name)
    assert mismatch.returncode != 0 and "mismatch" in mismatch.stderr, mismatch.stderr
    renamed = quorum("get", "cli-tls", tls=(*by_name, "--tls-server-name", "127.0.0.1"))
    assert renamed.returncode == 0 and "hello" in renamed.stdout, renamed.stderr
    # the same command without a client certificate, or trusting the wrong CA, is refused
    no_cert = quorum("get", "cli-tls", tls=("--cacert", str(certs.cert)))
    assert no_cert.returncode != 0 and "TlsHandshakeFailed" in no_cert.stderr, no_cert.stderr
    wrong_ca = quorum("get", "cli-tls", tls=("--cacert", str(certs.stranger), "--cert",
                                             str(certs.client), "--key", str(certs.client_key)))
    assert wrong_ca.returncode != 0, wrong_ca.stdout
    assert "certificate verify failed" in wrong_ca.stderr, wrong_ca.stderr
    missing = quorum("get", "cli-tls", tls=("--cacert", str(certs.cert) + ".missing"))
    assert missing.returncode != 0 and "ConfigError" in missing.stderr, missing.stderr


def test_leader_discovery_failover_and_watch_resume_over_tls(tmp_path: Path) -> None:
    """Every connection the client opens is TLS: to the endpoints given, to the leader it
    discovers, and to the members it fails over to when the leader is SIGKILLed; the watch
    homed on the killed node resumes elsewhere without a gap."""
    certs = NativeTls(tmp_path)
    tls = certs.client_tls()

    async def scenario() -> None:
        with ProcCluster(3, tmp_path / "data", extra_args=certs.serve_args()) as cluster:
            leader = await agreed_leader(cluster, tls)
            follower = next(i for i in cluster.nodes if i != leader)
            around = [cluster.nodes[i].client_url for i in cluster.nodes if i != leader]
            async with AsyncClient([cluster.nodes[follower].client_url], timeout_s=10,
                                   tls=tls, prefer_leader=True) as writer, \
                    AsyncClient([cluster.nodes[leader].client_url, *around], timeout_s=10,
                                tls=tls) as watch_client:
                await writer.connect()
                # found through the follower's status and member list, reached over TLS
                assert writer.leader_endpoint == cluster.nodes[leader].client_url
                watcher = watch_client.watch(b"f/", prefix=True)
                await watcher.start()
                got: list[int] = []

                async def consume() -> None:
                    async for batch in watcher:
                        got.extend(int(ev.kv.value) for ev in batch.events)
                        if len(got) >= 40:
                            return

                consumer = asyncio.create_task(consume())
                for i in range(20):
                    await writer.put(b"f/%d" % (i % 4), b"%d" % i)
                cluster.kill(leader)
                for i in range(20, 40):
                    await writer.put(b"f/%d" % (i % 4), b"%d" % i)
                await asyncio.wait_for(consumer, 30)
                await watcher.cancel()
                assert watch_client.endpoint != cluster.nodes[leader].client_url
            assert got == list(range(40))
            assert refusals(cluster) == []  # every reconnect was a proper TLS session

    asyncio.run(scenario())


def _free_base_port(nodes: int) -> int:
    """A base port whose node ports (cluster up: base+i, base+100+i, base+200+i) are free."""
    import random
    import socket

    for _ in range(100):
        base = random.randint(30000, 50000)
        try:
            for port in (base + off + i for off in (0, 100, 200) for i in range(1, nodes + 1)):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no free base port")


def test_cluster_up_tls_makes_a_ca_and_serves_mutual_tls(tmp_path: Path) -> None:
    base = _free_base_port(3)
    data = tmp_path / "local"
    up = subprocess.Popen(
        [sys.executable, "-m", "quorum.cli.main", "cluster", "up", "--tls", "--nodes", "3",
         "--base-port", str(base), "--data-dir", str(data), "--tick-ms", "50", "--no-fsync"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        assert up.stdout is not None
        lines = []
        for line in up.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        exports = next(ln for ln in lines if "QUORUM_CACERT=" in ln).split()[1:]
        env = {**os.environ, **dict(e.split("=", 1) for e in exports),
               "QUORUM_ENDPOINTS": ",".join(f"127.0.0.1:{base + 100 + i}" for i in (1, 2, 3))}
        cli = [sys.executable, "-m", "quorum.cli.main", "--timeout", "10"]

        def quorum(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*cli, *args], env=env, capture_output=True, text=True,
                                  timeout=60, stdin=subprocess.DEVNULL)

        put = quorum("put", "greeting", "hello")  # waits out the first election
        assert put.returncode == 0, (put.stderr, "".join(lines))
        got = quorum("-w", "json", "get", "greeting")
        assert json.loads(got.stdout)["kvs"][0]["value"] == "hello", got.stderr
        status = json.loads(quorum("-w", "json", "status").stdout)
        assert [s["endpoint"][:8] for s in status] == ["https://"] * 3
        assert all("status" in s for s in status), status
        # the CA is real: a client without its certificate is refused
        env.pop("QUORUM_CERT")
        env.pop("QUORUM_KEY")
        refused = quorum("get", "greeting")
        assert refused.returncode != 0 and "TlsHandshakeFailed" in refused.stderr
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=30)
    assert "cluster stopped" in out


# --- the startup check of the relay's TLS settings (no processes) ---------------------------


def test_tls_handshake_problem_names_the_side_that_refuses(tmp_path: Path) -> None:
    from quorum.api.native.server import server_tls_context
    from quorum.api.process import tls_handshake_problem

    certs = NativeTls(tmp_path)
    server = server_tls_context(str(certs.cert), str(certs.key), str(certs.trusted))
    member = ClientTls(ca_file=str(certs.cert), cert_file=str(certs.cert),
                       key_file=str(certs.key)).context()
    assert tls_handshake_problem(server, member, "127.0.0.1") is None
    untrusting = ClientTls(ca_file=str(certs.stranger), cert_file=str(certs.cert),
                           key_file=str(certs.key)).context()
    problem = tls_handshake_problem(server, untrusting, "127.0.0.1")
    assert problem is not None and problem.startswith("the client side: certificate verify")
    problem = tls_handshake_problem(server, member, "localhost")
    assert problem is not None and "mismatch" in problem
    only_clients = server_tls_context(str(certs.cert), str(certs.key), str(certs.client))
    problem = tls_handshake_problem(only_clients, member, "127.0.0.1")
    assert problem is not None and problem.startswith("the server side"), problem


def test_a_member_whose_own_certificate_its_client_ca_does_not_trust_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """trusted_ca_file signs the clients' certificates only: a follower presenting the
    member certificate to the leader would be refused. quorum serve says so at startup."""
    from quorum.api.process import QuorumProcess
    from quorum.node.config import NodeConfig

    certs = NativeTls(tmp_path)

    def checked(trusted: Path) -> list[str]:
        caplog.clear()
        proc = QuorumProcess(NodeConfig(
            data_dir=str(tmp_path / "unused"), client_listen="127.0.0.1:7379",
            cert_file=str(certs.cert), key_file=str(certs.key),
            trusted_ca_file=str(trusted), client_cert_auth=True))
        proc._native_ssl = proc._native_tls()
        proc._relay_ssl = proc._relay_tls()
        proc._check_relay_tls()
        return [r.getMessage() for r in caplog.records if "relay" in r.getMessage()]

    caplog.set_level(logging.WARNING, logger="quorum.server")
    warned = checked(certs.client)
    assert len(warned) == 1 and "the server side" in warned[0], warned
    assert checked(certs.trusted) == []  # the bundle trusts members and clients alike
