"""quorum.api.h2grpc over TLS: grpcio's secure channel (HTTP/2 chosen by ALPN), and clients
that do not speak TLS on the TLS port (an HTTP/2 preface in clear, random bytes, a handshake
cut short) are dropped while TLS clients go on being served."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc

from .support import PREFACE, STEP_S, KVServicer, Probe, blob, build_server, run

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="needs the openssl command")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "server.pem", folder / "server-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    return cert, key


@contextlib.asynccontextmanager
async def tls_serving(cert: tuple[Path, Path],
                      **options: Any) -> AsyncIterator[tuple[int, Probe]]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    ctx.set_alpn_protocols(["h2"])
    probe = Probe()
    server = build_server(probe, snapshot_chunks=40, **options)
    port = await server.start("127.0.0.1", 0, ssl_context=ctx)
    try:
        yield port, probe
    finally:
        await server.stop(None)


async def _secure_calls(port: int, cert_file: Path) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=cert_file.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        got = await asyncio.wait_for(rpc.KVStub(ch).Put(pb.PutRequest(key=b"tls")), STEP_S)
        assert got.prev_kv.key == b"tls"
        chunks = [r.blob async for r in rpc.MaintenanceStub(ch).Snapshot(pb.SnapshotRequest())]
        assert chunks == [blob(i, len(chunks[0])) for i in range(40)]


def test_grpcio_over_tls(cert: tuple[Path, Path]) -> None:
    async def body() -> None:
        async with tls_serving(cert) as (port, _probe):
            await _secure_calls(port, cert[0])

    run(body)


@pytest.mark.parametrize("garbage", [
    PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",  # HTTP/2 in clear on a TLS port
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    bytes(range(256)) * 4,
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a ClientHello cut short
])
def test_non_tls_clients_are_dropped(cert: tuple[Path, Path], garbage: bytes) -> None:
    async def body() -> None:
        async with tls_serving(cert) as (port, _probe):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(garbage)
            writer.write_eof()
            with contextlib.suppress(ConnectionError):
                while await asyncio.wait_for(reader.read(65536), STEP_S):
                    pass  # a TLS alert perhaps, then the end of the connection
            writer.close()
            await _secure_calls(port, cert[0])

    run(body)


def test_tls_client_offering_only_http1_is_answered_in_http1(cert: tuple[Path, Path]) -> None:
    """A TLS client that offers only http/1.1 by ALPN gets no protocol chosen and is served
    as HTTP/1 (404: this server has no HTTP/1 handler); TLS gRPC clients are unaffected."""

    async def body() -> None:
        async with tls_serving(cert) as (port, _probe):
            ctx = ssl.create_default_context(cafile=str(cert[0]))
            ctx.set_alpn_protocols(["http/1.1"])
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=ctx), STEP_S)
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(65536), STEP_S)
            assert answer.startswith(b"HTTP/1.1 404 "), answer
            writer.close()
            await _secure_calls(port, cert[0])

    run(body)


_AUTH_KEYS = {b"security_level", b"transport_security_type", b"x509_common_name",
              b"x509_subject_alternative_name", b"peer_identities", b"peer_identity_key"}


def test_auth_context_under_mutual_tls_is_grpcs(cert: tuple[Path, Path]) -> None:
    """The same client certificate presented to grpc.aio's server and to quorum's: the
    handler's auth_context, peer_identities and peer_identity_key agree (the keys quorum
    fills; grpc adds more, such as the PEM of the certificate)."""
    cert_pem, key_pem = cert[0].read_bytes(), cert[1].read_bytes()

    async def seen(port: int) -> list[tuple[bytes, bytes]]:
        creds = grpc.ssl_channel_credentials(cert_pem, key_pem, cert_pem)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
            got = await asyncio.wait_for(
                rpc.KVStub(ch).Range(pb.RangeRequest(key=b"md-auth")), STEP_S)
        return [(kv.key, kv.value) for kv in got.kvs if kv.key in _AUTH_KEYS]

    async def body() -> None:
        from .test_differential import _grpcio_handlers

        reference = grpc.aio.server()
        services = pb.DESCRIPTOR.services_by_name
        reference.add_generic_rpc_handlers((_grpcio_handlers(services["KV"],
                                                             KVServicer(Probe())),))
        port = reference.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
            [(key_pem, cert_pem)], root_certificates=cert_pem, require_client_auth=True))
        await reference.start()
        try:
            want = await seen(port)
        finally:
            await reference.stop(None)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        ctx.load_verify_locations(str(cert[0]))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.set_alpn_protocols(["h2"])
        server = build_server(Probe())
        port = await server.start("127.0.0.1", 0, ssl_context=ctx)
        try:
            got = await seen(port)
        finally:
            await server.stop(None)
        assert (b"x509_common_name", b"[b'localhost']") in want
        assert got == want

    run(body)


@pytest.mark.parametrize("opening", [b"", b"\x16\x03\x01\x02\x00\x01"],
                         ids=["nothing", "half a ClientHello"])
def test_tls_handshake_never_completed_is_closed(cert: tuple[Path, Path],
                                                 opening: bytes) -> None:
    """The TLS handshake precedes the HTTP/2 preface; the handshake deadline bounds it too
    (asyncio alone would wait 60 s, past this test's STEP_S)."""

    async def body() -> None:
        async with tls_serving(cert, handshake_timeout=0.3) as (port, _probe):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(opening)
                while True:
                    try:
                        chunk = await asyncio.wait_for(reader.read(65536), STEP_S)
                    except ConnectionResetError:
                        break
                    if not chunk:
                        break
            finally:
                writer.close()
            await _secure_calls(port, cert[0])

    run(body)
