"""The native protocol over TLS, in one process: a LocalBackend served by a TLS native server,
clients with and without the right certificates (made by the openssl command)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tls_certs import make_cert

from quorum.api.local import LocalBackend
from quorum.api.native.server import NativeServer, serve_native, server_tls_context
from quorum.client import AsyncClient, Client, ClientTls
from quorum.client.recipes import Lock
from quorum.errors import ConfigError, QuorumError, TlsHandshakeFailed, UsageError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

T = TypeVar("T")
LOG = "quorum.api.native"


class Certs:
    def __init__(self, folder: Path) -> None:
        self.server, self.server_key = make_cert(folder, "server")  # its own CA
        self.client, self.client_key = make_cert(folder, "client")  # another one
        self.other, self.other_key = make_cert(folder, "other")  # trusted by nobody

    def server_tls(self, client_auth: bool = True) -> Any:
        """The server presents ``server``; with client_auth it demands a certificate
        signed by ``client`` (the client's self-signed certificate is its own CA)."""
        return server_tls_context(str(self.server), str(self.server_key),
                                  str(self.client) if client_auth else "")

    def good(self, **extra: Any) -> ClientTls:
        return ClientTls(ca_file=str(self.server), cert_file=str(self.client),
                         key_file=str(self.client_key), **extra)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("tls"))


def run(coro: Coroutine[Any, Any, T], loop: str = "asyncio") -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 30)

    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(bounded())


@contextlib.asynccontextmanager
async def tls_server(tls: Any, **options: Any) -> AsyncIterator[NativeServer]:
    backend = LocalBackend()
    server = await serve_native(backend, "127.0.0.1", 0, tls=tls, **options)
    try:
        yield server
    finally:
        await server.close()
        await backend.close()


def handshake_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOG and "TLS handshake failed" in r.getMessage()]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_put_get_watch_lease_and_lock_over_mutual_tls(certs: Certs, loop: str) -> None:
    async def scenario() -> None:
        async with tls_server(certs.server_tls()) as server:
            assert server.scheme == "https"
            async with AsyncClient([server.endpoint], tls=certs.good()) as client, \
                    AsyncClient([server.endpoint], tls=certs.good()) as other:
                watcher = client.watch(b"w/", prefix=True)
                await watcher.start()
                put = await client.put(b"w/a", b"1")
                assert (await client.get(b"w/a")).value == b"1"  # type: ignore[union-attr]
                batch = await asyncio.wait_for(watcher.__anext__(), 10)
                assert [(e.kv.key, e.kv.value) for e in batch.events] == [(b"w/a", b"1")]
                assert batch.events[0].kv.mod_revision == put.revision
                await watcher.cancel()
                lease = await client.lease_grant(30)
                assert await client.lease_keepalive_once(lease.id) == 30
                async with Lock(client, "m", ttl_s=30) as token:
                    assert token > 0
                    assert (await other.range(b"\0", b"\0")).count >= 2  # the lock key exists
                async with Lock(other, "m", ttl_s=30) as token2:
                    assert token2 > token  # fencing tokens grow across holders

    run(scenario(), loop)


def test_sync_client_over_tls(certs: Certs) -> None:
    async def serve(ready: asyncio.Future[str], stop: asyncio.Event) -> None:
        async with tls_server(certs.server_tls()) as server:
            ready.set_result(server.endpoint)
            await stop.wait()

    import threading

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        ready: asyncio.Future[str] = loop.create_future()
        stop = asyncio.Event()
        task = asyncio.run_coroutine_threadsafe(serve(ready, stop), loop)
        endpoint = asyncio.run_coroutine_threadsafe(_wait(ready), loop).result(10)
        with Client([endpoint], tls=certs.good(), timeout_s=10) as client:
            watcher = client.watch(b"s")
            client.put(b"s", b"v")
            assert client.get(b"s").value == b"v"
            assert next(watcher.events()).kv.value == b"v"
            watcher.cancel()
        loop.call_soon_threadsafe(stop.set)
        task.result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def _wait(fut: asyncio.Future[str]) -> str:
    return await fut


def test_a_server_certificate_from_an_untrusted_ca_is_refused_at_once(
    certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with tls_server(certs.server_tls()) as server:
            wrong_ca = ClientTls(ca_file=str(certs.other), cert_file=str(certs.client),
                                 key_file=str(certs.client_key))
            async with AsyncClient([server.endpoint], tls=wrong_ca, timeout_s=20,
                                   connect_timeout_s=10) as client:
                with pytest.raises(TlsHandshakeFailed, match="certificate verify failed"):
                    await client.put(b"k", b"v")
            # one attempt, not a retry loop until the 20 s deadline: the refusal is final
            for _ in range(500):  # until the server has noticed the client hang up
                if handshake_failures(caplog):
                    break
                await asyncio.sleep(0.01)
            assert len(handshake_failures(caplog)) == 1
            async with AsyncClient([server.endpoint], tls=certs.good()) as client:
                assert (await client.put(b"k", b"v")).revision > 1  # others are served

    caplog.set_level(logging.INFO, logger=LOG)  # the server sees the client hang up: INFO
    run(scenario())


def test_skipping_verification_accepts_the_untrusted_certificate(certs: Certs) -> None:
    """The check above is what refuses: with verification off the same client connects."""

    async def scenario() -> None:
        async with tls_server(certs.server_tls()) as server:
            unchecked = ClientTls(ca_file=str(certs.other), cert_file=str(certs.client),
                                  key_file=str(certs.client_key), verify=False)
            async with AsyncClient([server.endpoint], tls=unchecked) as client:
                assert (await client.put(b"k", b"v")).revision > 1

    run(scenario())


def test_a_client_without_a_certificate_is_refused_with_a_typed_error(
    certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with tls_server(certs.server_tls()) as server:
            for tls in (ClientTls(ca_file=str(certs.server)),  # no certificate at all
                        ClientTls(ca_file=str(certs.server), cert_file=str(certs.other),
                                  key_file=str(certs.other_key))):  # one nobody signed
                async with AsyncClient([server.endpoint], tls=tls, timeout_s=20,
                                       connect_timeout_s=10) as client:
                    with pytest.raises(TlsHandshakeFailed, match="refused"):
                        await client.put(b"k", b"v")
            for _ in range(500):  # the server logs as it closes: wait for both lines
                if len(handshake_failures(caplog)) >= 2:
                    break
                await asyncio.sleep(0.01)
            reasons = handshake_failures(caplog)
            assert len(reasons) == 2, reasons
            assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in reasons[0]
            assert "certificate verify failed" in reasons[1]

    caplog.set_level(logging.WARNING, logger=LOG)
    run(scenario())


def test_a_plaintext_client_is_closed_with_a_logged_reason_and_others_are_served(
    certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with tls_server(certs.server_tls()) as server:
            async with AsyncClient([server.endpoint], tls=certs.good()) as good:
                await good.put(b"before", b"1")
                async with AsyncClient([server.endpoint], timeout_s=0.5) as plain:
                    with pytest.raises(QuorumError):
                        await plain.put(b"k", b"v")
                # raw garbage, too
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(b"\x00\x00\x00\x05hello, not TLS at all")
                assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
                writer.close()
                # the TLS client's connection, opened before, still works; new ones too
                assert (await good.get(b"before")).value == b"1"  # type: ignore[union-attr]
                async with AsyncClient([server.endpoint], tls=certs.good()) as fresh:
                    assert (await fresh.get(b"before")).value == b"1"  # type: ignore[union-attr]
            reasons = handshake_failures(caplog)
            assert any("WRONG_VERSION_NUMBER" in r for r in reasons), reasons
            # (a connection the plaintext client opened as its deadline passed may have been
            # closed before it sent a byte: the server then saw the client hang up)
            assert all("WRONG_VERSION_NUMBER" in r or "closed the connection" in r
                       for r in reasons), reasons

    caplog.set_level(logging.WARNING, logger=LOG)
    run(scenario())


def test_a_tls_client_against_a_plaintext_server_gets_a_typed_error(certs: Certs) -> None:
    async def scenario() -> None:
        async with tls_server(None) as server:
            assert server.scheme == "http"
            async with AsyncClient([server.endpoint], tls=certs.good(), timeout_s=20) as client:
                with pytest.raises(TlsHandshakeFailed, match="closed the connection"):
                    await client.put(b"k", b"v")

    run(scenario())


def test_the_server_name_is_checked_and_can_be_overridden(certs: Certs) -> None:
    """The certificates name IP 127.0.0.1 only: dialed as ``localhost`` they do not match,
    unless the client is told which name to expect."""

    async def scenario() -> None:
        async with tls_server(certs.server_tls()) as server:
            by_name = f"localhost:{server.port}"
            async with AsyncClient([by_name], tls=certs.good(), timeout_s=20) as client:
                with pytest.raises(TlsHandshakeFailed, match="certificate verify failed"):
                    await client.put(b"k", b"v")
            override = certs.good(server_name="127.0.0.1")
            async with AsyncClient([by_name], tls=override) as client:
                assert (await client.put(b"k", b"v")).revision > 1

    run(scenario())


def test_an_https_endpoint_means_tls_even_without_options(certs: Certs) -> None:
    """With no ClientTls the system's trust store checks the server: a self-signed
    certificate is refused, which shows TLS was spoken at all."""

    async def scenario() -> None:
        async with tls_server(certs.server_tls(client_auth=False)) as server:
            async with AsyncClient([f"https://{server.endpoint}"], timeout_s=20) as client:
                assert client.endpoints == [server.endpoint]
                with pytest.raises(TlsHandshakeFailed, match="certificate verify failed"):
                    await client.put(b"k", b"v")
            trusted = ClientTls(ca_file=str(certs.server))
            async with AsyncClient([f"https://{server.endpoint}"], tls=trusted) as client:
                assert (await client.put(b"k", b"v")).revision > 1

    run(scenario())


def test_one_refusing_endpoint_does_not_stop_the_client_using_another(certs: Certs) -> None:
    async def scenario() -> None:
        odd_tls = server_tls_context(str(certs.other), str(certs.other_key))
        async with tls_server(odd_tls) as odd, tls_server(certs.server_tls()) as good, \
                AsyncClient([odd.endpoint, good.endpoint], tls=certs.good()) as client:
            assert (await client.put(b"k", b"v")).revision > 1
            assert client.endpoint == good.endpoint

    run(scenario())


def test_unusable_client_tls_files_are_a_config_error_naming_them(
    certs: Certs, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match=r"missing\.pem"):
        ClientTls(ca_file=str(missing)).context()
    with pytest.raises(ConfigError, match=r"missing\.pem"):
        ClientTls(ca_file=str(certs.server), cert_file=str(certs.client),
                  key_file=str(missing)).context()
    with pytest.raises(ConfigError, match="key"):
        ClientTls(cert_file=str(certs.client)).context()
    with pytest.raises(ConfigError):  # a key that is not the certificate's
        ClientTls(cert_file=str(certs.client), key_file=str(certs.other_key)).context()


def test_tls_and_a_custom_connector_do_not_mix(certs: Certs) -> None:
    async def connector(endpoint: str, timeout_s: float, max_frame: int) -> Any:
        raise OSError("unused")

    with pytest.raises(UsageError, match="connector"):
        AsyncClient(["127.0.0.1:1"], tls=certs.good(), connector=connector)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_bytes_that_come_with_the_connection_reach_the_handshake(
    certs: Certs, loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Clients in another thread that write the moment they are connected: a TLS client's
    ClientHello and a plaintext client's frame both arrive with the connection, before the
    server has run any callback of it. The handshake must see them: the TLS client gets its
    session, the plaintext one a close with a logged reason (not a hang)."""
    import socket

    def blocking_clients(port: int) -> tuple[bytes, str]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"\0\0\0\x05hello")
            closed = raw.recv(100)
        ctx = certs.good().context()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            version = tls.version() or ""
        return closed, version

    async def scenario() -> None:
        async with tls_server(certs.server_tls()) as server:
            closed, version = await asyncio.to_thread(blocking_clients, server.port)
            assert closed == b""
            assert version.startswith("TLS")

    caplog.set_level(logging.WARNING, logger=LOG)
    run(scenario(), loop)
    assert any("WRONG_VERSION_NUMBER" in r for r in handshake_failures(caplog))


def test_a_client_that_never_starts_its_handshake_is_closed_in_time(
    certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with tls_server(certs.server_tls(), tls_handshake_timeout_s=0.3) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            assert await asyncio.wait_for(reader.read(), 10) == b""  # silent, then closed
            writer.close()
            async with AsyncClient([server.endpoint], tls=certs.good()) as client:
                assert (await client.put(b"k", b"v")).revision > 1

    caplog.set_level(logging.WARNING, logger=LOG)
    run(scenario())
    assert any("no handshake in time" in r for r in handshake_failures(caplog)), \
        handshake_failures(caplog)


def test_a_tcp_probe_that_hangs_up_is_logged_at_info_not_warning(
    certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """Load balancers and health checks connect and close: that must not be a warning each
    time, while a refused handshake stays one."""

    async def scenario() -> None:
        async with tls_server(certs.server_tls()) as server:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.close()
            for _ in range(200):  # until the server has seen the hang-up
                if handshake_failures(caplog):
                    break
                await asyncio.sleep(0.01)

    caplog.set_level(logging.INFO, logger=LOG)
    run(scenario())
    records = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].levelno == logging.INFO
    assert "closed the connection" in records[0].getMessage()


def test_a_server_that_never_answers_the_probe_times_out_and_nothing_leaks(
    certs: Certs,
) -> None:
    """A TLS peer that completes the handshake and then says nothing: the connect attempt
    ends at its timeout, as for an unreachable endpoint, and each attempt's connection is
    closed (the silent server sees every one of them go)."""
    opened: list[asyncio.Transport] = []
    lost: list[int] = []

    class Silent(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            opened.append(transport)  # type: ignore[arg-type]

        def connection_lost(self, exc: Exception | None) -> None:
            lost.append(1)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Silent, "127.0.0.1", 0, ssl=certs.server_tls())
        port = server.sockets[0].getsockname()[1]
        try:
            async with AsyncClient([f"127.0.0.1:{port}"], tls=certs.good(), timeout_s=1.0,
                                   connect_timeout_s=0.3) as client:
                with pytest.raises(QuorumError) as err:
                    await client.put(b"k", b"v")
                assert not isinstance(err.value, TlsHandshakeFailed)  # silence is not refusal
            for _ in range(200):
                if opened and len(lost) == len(opened):
                    break
                await asyncio.sleep(0.01)
            assert opened and len(lost) == len(opened), (len(opened), len(lost))
        finally:
            server.close()

    run(scenario())
