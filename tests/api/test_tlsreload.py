"""Certificate reload without a restart (quorum.api.tlsreload): the watcher on its own with a
fake clock, then a real node (in process, real TLS on loopback) whose native, etcd and peer
ports pick up rotated files for new connections while open connections keep working."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from tls_certs import issue_cert, make_ca, replace_file

from quorum.api import tlsreload
from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc
from quorum.api.native.server import server_tls_context
from quorum.api.process import QuorumProcess
from quorum.api.tlsreload import ReloadingTls
from quorum.client import AsyncClient, ClientTls
from quorum.errors import QuorumError
from quorum.node.config import NodeConfig
from quorum.node.storage import MemoryNodeStorage

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
    pytest.mark.timeout(120),
]
T = TypeVar("T")


class Certs:
    """Two CAs; server certificates s1, s2 (CA 1) and s3 (CA 2); client certificates c1
    (CA 1) and c2 (CA 2). The node reads the files under ``live`` (node.pem, node-key.pem,
    ca.pem), which the tests replace."""

    def __init__(self, folder: Path) -> None:
        self.ca1, self.ca2 = make_ca(folder, "ca1"), make_ca(folder, "ca2")
        self.s1 = issue_cert(folder, "s1", self.ca1)
        self.s2 = issue_cert(folder, "s2", self.ca1)
        self.s3 = issue_cert(folder, "s3", self.ca2)
        self.c1 = issue_cert(folder, "c1", self.ca1)
        self.c2 = issue_cert(folder, "c2", self.ca2)
        self.serials = {name: serial_of(getattr(self, name)[0])
                        for name in ("s1", "s2", "s3")}


def serial_of(cert: Path) -> str:
    return ssl._ssl._test_decode_cert(str(cert))["serialNumber"]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


class Live:
    """The files a node is configured with, and how to rotate them."""

    def __init__(self, folder: Path, certs: Certs) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.cert, self.key, self.ca = (folder / "node.pem", folder / "node-key.pem",
                                        folder / "ca.pem")
        self.install(certs.s1, certs.ca1[0])

    def install(self, pair: tuple[Path, Path], ca: Path | None = None) -> None:
        replace_file(pair[0], self.cert)
        replace_file(pair[1], self.key)
        if ca is not None:
            replace_file(ca, self.ca)


def client_context(ca: Path, pair: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if pair is not None:
        ctx.load_cert_chain(str(pair[0]), str(pair[1]))
    return ctx


async def served_serial(addr: str, ctx: ssl.SSLContext) -> str:
    """The serial number of the certificate a NEW connection to ``addr`` is shown."""
    host, port = addr.rsplit(":", 1)

    def handshake() -> str:
        with socket.create_connection((host, int(port)), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            return str(tls.getpeercert()["serialNumber"])

    return await asyncio.to_thread(handshake)


async def native_put(endpoint: str, ca: Path, pair: tuple[Path, Path]) -> None:
    tls = ClientTls(ca_file=str(ca), cert_file=str(pair[0]), key_file=str(pair[1]))
    async with AsyncClient([endpoint], timeout_s=5, tls=tls) as c:
        await c.put(b"k", b"v")


async def etcd_put(endpoint: str, ca: Path, pair: tuple[Path, Path]) -> None:
    creds = grpc.ssl_channel_credentials(ca.read_bytes(), pair[1].read_bytes(),
                                         pair[0].read_bytes())
    # a local subchannel pool: every channel makes its own connection
    async with grpc.aio.secure_channel(endpoint, creds,
                                       [("grpc.use_local_subchannel_pool", 1)]) as ch:
        await rpc.KVStub(ch).Put(pb.PutRequest(key=b"k", value=b"v"), timeout=5)


def free_addr() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def node_config(tmp: Path, live: Live, engine: str = "h2") -> NodeConfig:
    """One member with mutual TLS on every port, all from ``live``'s files."""
    cert, key, ca = str(live.cert), str(live.key), str(live.ca)
    return NodeConfig(
        id=1, data_dir=str(tmp / "data"), peer_listen=free_addr(), client_listen=free_addr(),
        etcd_listen=free_addr(), tick_ms=10, fsync=False, etcd_engine=engine,
        cert_file=cert, key_file=key, trusted_ca_file=ca, client_cert_auth=True,
        peer_cert_file=cert, peer_key_file=key, peer_trusted_ca_file=ca,
        peer_client_cert_auth=True)


def run(coro: Coroutine[Any, Any, T], loop: str = "asyncio") -> T:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(coro, 60))


async def until_elected(cfg: NodeConfig, ca: Path, pair: tuple[Path, Path]) -> None:
    for _ in range(200):
        try:
            await native_put(cfg.client_listen, ca, pair)
            return
        except QuorumError:
            await asyncio.sleep(0.05)
    raise AssertionError("the single member never took writes")


# --- the watcher ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_files_are_checked_at_most_once_per_interval_and_rebuilt_only_on_change(
        tmp_path: Path, certs: Certs) -> None:
    live = Live(tmp_path, certs)
    clock, builds = FakeClock(), []

    def build() -> ssl.SSLContext:
        builds.append(clock.now)
        return server_tls_context(str(live.cert), str(live.key))

    source = ReloadingTls("test", {"cert_file": str(live.cert), "key_file": str(live.key)},
                          build, interval_s=1.0, clock=clock)
    first = source.current()
    live.install(certs.s2)
    clock.now = 0.5
    assert source.current() is first  # within the interval: the files are not looked at
    clock.now = 1.0
    second = source.current()
    assert second is not first and source.reloads == 1
    for t in (2.0, 3.0, 4.0):  # unchanged files: no rebuild
        clock.now = t
        assert source.current() is second
    assert builds == [0.0, 1.0]


def test_a_change_that_cannot_be_used_keeps_the_old_context_and_is_logged_once(
        tmp_path: Path, certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    live = Live(tmp_path, certs)
    clock = FakeClock()
    source = ReloadingTls(
        "the test port", {"cert_file": str(live.cert), "key_file": str(live.key)},
        lambda: server_tls_context(str(live.cert), str(live.key)), interval_s=1.0, clock=clock)
    first = source.current()
    caplog.set_level(logging.ERROR, logger="quorum.tls")

    def errors_after(change: Callable[[], None]) -> list[str]:
        caplog.clear()
        change()
        for _ in range(3):  # later checks of the same files: no new rebuild, no new log
            clock.now += 1.0
            assert source.current() is first
        return [r.getMessage() for r in caplog.records]

    # a rotation half done: the new certificate next to the old key
    [mismatch] = errors_after(lambda: replace_file(certs.s2[0], live.cert))
    assert f"key_file {live.key}" in mismatch and "does not match" in mismatch, mismatch
    assert "the test port" in mismatch
    # a certificate file written halfway
    text = certs.s2[0].read_text()
    [torn] = errors_after(lambda: live.cert.write_text(text[: len(text) // 2]))
    assert f"cert_file {live.cert}: not a PEM certificate" in torn, torn
    # a missing key file
    [missing] = errors_after(live.key.unlink)
    assert f"key_file {live.key}: No such file" in missing, missing
    assert source.failures == 3 and source.reloads == 0
    # the rotation completed: the next check takes it
    live.install(certs.s2)
    clock.now += 1.0
    assert source.current() is not first and source.reloads == 1


def test_the_first_build_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ReloadingTls("x", {"cert_file": str(tmp_path / "none.pem")},
                     lambda: server_tls_context(str(tmp_path / "none.pem"), ""))


# --- a real node ----------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_rotated_certificates_reach_new_connections_on_every_port(
        tmp_path: Path, certs: Certs, loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tlsreload, "CHECK_INTERVAL_S", 0.0)
    live = Live(tmp_path / "live", certs)
    cfg = node_config(tmp_path, live)
    ca1 = certs.ca1[0]

    async def main() -> None:
        proc = QuorumProcess(cfg, storage=MemoryNodeStorage())
        await proc.start()
        try:
            await until_elected(cfg, ca1, certs.c1)
            ports = (cfg.client_listen, cfg.etcd_listen, cfg.peer_listen)
            ctx = client_context(ca1, certs.c1)
            for addr in ports:
                assert await served_serial(addr, ctx) == certs.serials["s1"], addr
            tls = ClientTls(ca_file=str(ca1), cert_file=str(certs.c1[0]),
                            key_file=str(certs.c1[1]))
            async with AsyncClient([cfg.client_listen], timeout_s=5, tls=tls) as kept:
                await kept.put(b"before", b"1")  # the connection is open from here on
                live.install(certs.s2)
                for addr in ports:
                    assert await served_serial(addr, ctx) == certs.serials["s2"], addr
                await native_put(cfg.client_listen, ca1, certs.c1)
                await etcd_put(cfg.etcd_listen, ca1, certs.c1)
                await kept.put(b"after", b"2")  # still on the connection opened before
                assert kept.failovers == 0
        finally:
            await proc.stop()

    run(main(), loop)


@pytest.mark.parametrize("engine", ["h2", "grpcio"])
def test_a_rotated_ca_bundle_changes_whom_the_ports_trust(
        tmp_path: Path, certs: Certs, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rotation to a new CA: the server's certificate (s3) and the CA that must sign client
    certificates both change. A client trusting only the new CA gets in with a client
    certificate of the new CA; one trusting only the old CA, or presenting a client
    certificate of the old CA, is refused."""
    monkeypatch.setattr(tlsreload, "CHECK_INTERVAL_S", 0.0)
    live = Live(tmp_path / "live", certs)
    cfg = node_config(tmp_path, live, engine)
    ca1, ca2 = certs.ca1[0], certs.ca2[0]

    async def refused(call: Coroutine[Any, Any, None]) -> bool:
        try:
            await call
        except (QuorumError, grpc.aio.AioRpcError, ssl.SSLError, OSError):
            return True
        return False

    async def main() -> None:
        proc = QuorumProcess(cfg, storage=MemoryNodeStorage())
        await proc.start()
        try:
            await until_elected(cfg, ca1, certs.c1)
            await etcd_put(cfg.etcd_listen, ca1, certs.c1)
            live.install(certs.s3, ca2)
            await native_put(cfg.client_listen, ca2, certs.c2)
            await etcd_put(cfg.etcd_listen, ca2, certs.c2)
            for put, addr in ((native_put, cfg.client_listen), (etcd_put, cfg.etcd_listen)):
                assert await refused(put(addr, ca1, certs.c1)), addr  # old CA only
                assert await refused(put(addr, ca2, certs.c1)), addr  # old client cert
            assert await served_serial(cfg.peer_listen, client_context(ca2, certs.c2)) \
                == certs.serials["s3"]
            with pytest.raises(ssl.SSLError):  # the peer port now trusts CA 2 only
                await served_serial(cfg.peer_listen, client_context(ca1, certs.c1))
            # the leader relay's next connection presents s3 and trusts CA 2 (its old
            # context trusted CA 1 and s1 only: it would refuse the port's s3)
            relay = await proc._leader_client(1)
            assert (await relay.status()).leader_id == 1
        finally:
            await proc.stop()

    run(main())


def test_bad_files_keep_the_ports_serving_the_previous_certificate(
        tmp_path: Path, certs: Certs, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(tlsreload, "CHECK_INTERVAL_S", 0.0)
    live = Live(tmp_path / "live", certs)
    cfg = node_config(tmp_path, live)
    ca1 = certs.ca1[0]
    ctx = client_context(ca1, certs.c1)
    caplog.set_level(logging.ERROR, logger="quorum.tls")

    async def main() -> None:
        proc = QuorumProcess(cfg, storage=MemoryNodeStorage())
        await proc.start()
        try:
            await until_elected(cfg, ca1, certs.c1)
            replace_file(certs.s2[0], live.cert)  # the key is still s1's: a mismatch
            for _ in range(3):
                for addr in (cfg.client_listen, cfg.etcd_listen, cfg.peer_listen):
                    assert await served_serial(addr, ctx) == certs.serials["s1"], addr
            await native_put(cfg.client_listen, ca1, certs.c1)
            logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            # one error for the client ports' files and one for the peer files (the same
            # paths, named by different settings), not one per watcher nor per connection
            assert len(logged) == 2, logged
            assert sum(f"(key_file {live.key}: the key does not match" in m
                       for m in logged) == 1, logged
            assert sum(f"(peer_key_file {live.key}: the key does not match" in m
                       for m in logged) == 1, logged
            replace_file(certs.s2[1], live.key)  # the rotation completes
            for addr in (cfg.client_listen, cfg.etcd_listen, cfg.peer_listen):
                assert await served_serial(addr, ctx) == certs.serials["s2"], addr
        finally:
            await proc.stop()

    run(main())


def test_a_session_of_before_a_ca_rotation_is_not_resumed(
        tmp_path: Path, certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS 1.3 resumption skips certificate checks: a client holding a session of before the
    rotation must make a full handshake, and then meets the new CA."""
    monkeypatch.setattr(tlsreload, "CHECK_INTERVAL_S", 0.0)
    live = Live(tmp_path / "live", certs)

    def build() -> ssl.SSLContext:
        return server_tls_context(str(live.cert), str(live.key), str(live.ca))

    source = ReloadingTls("test", {"cert_file": str(live.cert), "key_file": str(live.key),
                                   "trusted_ca_file": str(live.ca)}, build)
    listening = tlsreload.listening_context(source, build)
    old_client = client_context(certs.ca1[0], certs.c1)

    async def main() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.read(1))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=listening)
        port = server.sockets[0].getsockname()[1]

        def connect(session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool]:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    old_client.wrap_socket(raw, server_hostname="127.0.0.1",
                                           session=session) as tls:
                tls.sendall(b"x")
                assert tls.recv(1) == b"x"  # the session (and any ticket) arrives by now
                return tls.session, tls.session_reused

        try:
            session, _ = await asyncio.to_thread(connect, None)
            live.install(certs.s3, certs.ca2[0])
            with pytest.raises(ssl.SSLError):  # a full handshake: s3 is not trusted
                await asyncio.to_thread(connect, session)
        finally:
            server.close()
            await server.wait_closed()

    run(main())
