"""`quorum serve` with TLS between members (--peer-*) and on the etcd port (--cert-file ...):
real processes on loopback, certificates made by the openssl command."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tls_certs import make_cert

from quorum.client.aio import AsyncClient
from quorum.errors import QuorumError
from quorum.verify.procs import ProcCluster, ProcNode, free_ports

from .test_faults import converged_hashes, hashes, leader_of

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


def test_members_replicate_over_mutual_tls_and_etcdctl_uses_the_tls_port(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "cluster")
    extra = (*peer_args(cert, key, cert), "--cert-file", str(cert), "--key-file", str(key))

    async def scenario() -> None:
        with ProcCluster(3, tmp_path / "data", extra_args=extra) as cluster:
            await leader_of(cluster, timeout_s=20)
            async with AsyncClient(cluster.endpoints(), timeout_s=10) as client:
                for i in range(50):
                    await client.put(b"tls/%02d" % i, b"v%d" % i)
            h = await converged_hashes(cluster)
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
            leader = await leader_of_two(cluster, odd)
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


async def leader_of_two(cluster: ProcCluster, odd: int, timeout_s: float = 20.0) -> int:
    """The leader the two trusted members agree on (the odd one cannot take part)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        seen: set[int] = set()
        for node_id, node in cluster.nodes.items():
            if node_id == odd:
                continue
            try:
                async with AsyncClient([node.client_url], timeout_s=2) as c:
                    seen.add((await c.status()).leader_id)
            except QuorumError:
                seen.add(0)
        if len(seen) == 1 and 0 not in seen:
            return seen.pop()
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no agreed leader among the trusted members: {seen}")
        await asyncio.sleep(0.2)


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
