"""TLS on peer links, with a self-signed certificate made by the openssl command for the test."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

from .harness import Node, app, cluster, eventually, run

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=quorum-peer", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def _contexts(cert: Path, key: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Mutual TLS: every member presents the cluster certificate and checks the other's."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(cert))
    server.load_cert_chain(str(cert), str(key))
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    client.load_cert_chain(str(cert), str(key))
    return server, client


def test_messages_flow_over_mutual_tls(loop_name: str, cert_files: tuple[Path, Path]) -> None:
    server, client = _contexts(*cert_files)

    async def scenario() -> None:
        a = Node(1, server_ssl=server, client_ssl=client)
        b = Node(2, server_ssl=server, client_ssl=client)
        await cluster(a, b)
        a.transport.send([app(1, 2, i) for i in range(1, 1001)])
        b.transport.send([app(2, 1, i) for i in range(1, 1001)])
        await eventually(lambda: len(a.received) == len(b.received) == 1000, "TLS traffic")
        assert [m.entries[0].index for m in b.received] == list(range(1, 1001))
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_plaintext_peer_cannot_talk_to_a_tls_server(
    loop_name: str, cert_files: tuple[Path, Path]
) -> None:
    server, client = _contexts(*cert_files)

    async def scenario() -> None:
        plain = Node(1)
        secure = Node(2, server_ssl=server, client_ssl=client)
        await cluster(plain, secure)
        plain.transport.send([app(1, 2, 1)])
        await eventually(lambda: 2 in plain.unreachable, "the plaintext link fails")
        await asyncio.sleep(0)
        assert secure.received == []
        await plain.transport.close()
        await secure.transport.close()

    run(scenario(), loop_name)


def test_a_failure_of_a_new_kind_is_warned_again(
    caplog: pytest.LogCaptureFixture, cert_files: tuple[Path, Path]
) -> None:
    """One warning per outage, but a new kind of failure in the same outage is warned too:
    a peer that refused connections, then starts with a certificate we do not trust."""
    errors: list[BaseException] = [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionRefusedError(111, "Connection refused"),
        ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate"),
        ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate"),
    ]

    async def scenario() -> None:
        a = Node(1)
        calls = 0

        async def failing_dial(*_args: object, **_kw: object) -> NoReturn:
            nonlocal calls
            calls += 1
            raise errors[min(calls, len(errors)) - 1]

        a.transport.dial = failing_dial  # type: ignore[method-assign]
        await a.transport.start()
        a.transport.update_peers({2: ("127.0.0.1", 9)})
        await eventually(lambda: calls >= len(errors) + 1, "five failed connects")
        await a.transport.close()

    with caplog.at_level(logging.DEBUG, logger="quorum.transport"):
        run(scenario())
    downs = [(r.levelno, r.getMessage()) for r in caplog.records if "down:" in r.getMessage()]
    warned = [m for level, m in downs if level == logging.WARNING]
    assert len(downs) >= 5
    assert len(warned) == 2, downs
    assert "ConnectionRefusedError" in warned[0]
    assert "certificate verify failed" in warned[1]
