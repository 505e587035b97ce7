"""The etcd port over TLS and mutual TLS, with etcdctl and a certificate made by openssl."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tls_certs import make_cert

from .servers import ETCDCTL, ETCDCTL_MISSING, make_etcdctl, start_server, stop_server

pytestmark = [
    pytest.mark.skipif(ETCDCTL is None, reason=ETCDCTL_MISSING),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]


def test_tls_and_mutual_tls(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "server")
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    server = start_server(tls_dir, "--cert-file", str(cert), "--key-file", str(key))
    try:
        ctl = make_etcdctl(server.endpoint)
        assert ctl("--cacert", str(cert), "put", "secure", "yes").stdout == "OK\n"
        assert ctl("--cacert", str(cert), "get", "secure", "--print-value-only").stdout == "yes\n"
        plain = ctl("--dial-timeout=2s", "--command-timeout=3s", "get", "secure", check=False)
        assert plain.returncode != 0  # plaintext clients cannot talk to a TLS port
    finally:
        stop_server(server)

    client_cert, client_key = make_cert(tmp_path, "client")
    mtls_dir = tmp_path / "mtls"
    mtls_dir.mkdir()
    server = start_server(mtls_dir, "--cert-file", str(cert), "--key-file", str(key),
                          "--trusted-ca-file", str(client_cert))
    try:
        ctl = make_etcdctl(server.endpoint)
        with_cert = ("--cacert", str(cert), "--cert", str(client_cert), "--key", str(client_key))
        assert ctl(*with_cert, "put", "mutual", "yes").stdout == "OK\n"
        anonymous = ctl("--cacert", str(cert), "--dial-timeout=2s", "--command-timeout=3s",
                        "get", "mutual", check=False)
        assert anonymous.returncode != 0  # no client certificate: refused
        assert ctl(*with_cert, "get", "mutual", "--print-value-only").stdout == "yes\n"
    finally:
        stop_server(server)
