"""A running 3-node mutual-TLS cluster (real processes) has every member's certificate, key
and CA bundle replaced: new client and peer connections use the new files without a
restart, and ``quorum bench`` measures the TLS cluster on both targets."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from tls_certs import issue_cert, make_ca, replace_file

from quorum.cli.serve import LocalTls
from quorum.client.aio import AsyncClient
from quorum.client.tls import ClientTls
from quorum.verify.procs import ProcCluster, ProcNode

from .test_tls import agreed_leader, tls_hashes

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.xdist_group("procs"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]
ROTATION_WAIT_S = 15.0  # the members check their files at most once a second


class RotatingCluster(ProcCluster):
    """Every member serves the same files (LocalTls's); a member listed in ``ca_override``
    is started with that CA bundle instead of the shared one."""

    def __init__(self, base: Path, certs: LocalTls) -> None:
        super().__init__(3, base, extra_args=certs.serve_args())
        self.certs = certs
        self.ca_override: dict[int, Path] = {}

    def _command(self, node: ProcNode) -> list[str]:
        cmd = super()._command(node)
        ca = self.ca_override.get(node.id)
        if ca is not None:
            cmd = [str(ca) if arg == str(self.certs.ca) else arg for arg in cmd]
        return cmd


def served_serial(addr: str, ctx: ssl.SSLContext) -> str:
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        return str(tls.getpeercert()["serialNumber"])


def serial_of(cert: Path) -> str:
    return ssl._ssl._test_decode_cert(str(cert))["serialNumber"]  # type: ignore[attr-defined]


async def wait_serials(cluster: ProcCluster, ctx: ssl.SSLContext, want: str) -> None:
    """Until every port of every member shows the certificate numbered ``want`` to a new
    connection."""
    addrs = [a for n in cluster.nodes.values()
             for a in (n.client_url, n.etcd_url, n.peer_listen)]
    deadline = asyncio.get_running_loop().time() + ROTATION_WAIT_S
    while True:
        seen = {a: await asyncio.to_thread(served_serial, a, ctx) for a in addrs}
        if set(seen.values()) == {want}:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not every port shows serial {want}: {seen}")
        await asyncio.sleep(0.2)


def bench(target: str, endpoints: list[str], ca: Path, pair: tuple[Path, Path]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "quorum.cli.main", "-w", "json", "--cacert", str(ca),
         "--cert", str(pair[0]), "--key", str(pair[1]), "bench", "--target", target,
         "--bench-endpoints", ",".join(endpoints), "--duration", "1", "--clients", "8",
         "--connections", "2"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_a_running_cluster_takes_new_certificates_and_a_new_ca_without_a_restart(
        tmp_path: Path) -> None:
    certs = LocalTls(tmp_path / "tls").ensure()
    old_ca = (certs.ca, certs.ca_key)
    new_ca = make_ca(tmp_path, "ca2")
    node2 = issue_cert(tmp_path, "node2", new_ca)
    client2 = issue_cert(tmp_path, "client2", new_ca)
    both = tmp_path / "both.pem"  # the bundle during a CA rotation: old and new CA
    both.write_text(old_ca[0].read_text() + new_ca[0].read_text())
    old_tls = ClientTls(ca_file=str(certs.ca), cert_file=str(certs.client),
                        key_file=str(certs.client_key))
    new_tls = ClientTls(ca_file=str(both), cert_file=str(client2[0]), key_file=str(client2[1]))

    async def scenario() -> None:
        with RotatingCluster(tmp_path / "data", certs) as cluster:
            await agreed_leader(cluster, old_tls)
            async with AsyncClient(cluster.endpoints(), timeout_s=10, tls=old_tls) as kept:
                await kept.put(b"before", b"1")
                # every member's files change under it: the new CA joins the bundle and the
                # member certificate is re-issued by the new CA
                replace_file(both, certs.ca)
                replace_file(node2[0], certs.node)
                replace_file(node2[1], certs.node_key)
                await wait_serials(cluster, new_tls.context(), serial_of(node2[0]))
                await kept.put(b"kept", b"2")  # an open client connection keeps working
            # Member 3 comes back trusting ONLY the new CA: it takes peer connections only
            # from members whose outbound links present their re-issued certificate, and the
            # others accept its certificate only if they reloaded the bundle.
            cluster.ca_override[3] = new_ca[0]
            cluster.restart(3)
            cluster.wait_ports()
            leader = await agreed_leader(cluster, new_tls)
            async with AsyncClient([cluster.nodes[leader].client_url], timeout_s=10,
                                   tls=new_tls) as client:
                for i in range(20):
                    await client.put(b"after/%02d" % i, b"v")
            hashes = await tls_hashes(cluster, new_tls)
            assert len(hashes) == 3 and len(set(hashes.values())) == 1, hashes
            for target, eps in (("quorum", cluster.endpoints()),
                                ("etcd", cluster.etcd_endpoints())):
                result = bench(target, eps, both, client2)
                assert result["errors"] == 0 and result["operations"] > 0, (target, result)

    asyncio.run(scenario())
