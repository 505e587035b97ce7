"""The per-address limit on a client port's open connections (quorum.api.conncap, ZooKeeper's
maxClientCnxns): one client IP holds at most N connections to a port, the N+1th is closed at
once and logged, other addresses are not affected, and a freed slot is taken again.

127.0.0.2 is a second client address: Linux routes all of 127.0.0.0/8 to the loopback
interface, so a client socket bound to it reaches a server listening on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import uvloop
from click.testing import CliRunner
from tls_certs import make_cert

from quorum.api.conncap import LOG_EVERY_S, SWEEP_SLACK, ConnectionCap, peer_ip
from quorum.api.etcd.config import EtcdApiConfig, EtcdTls
from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc
from quorum.api.etcd.server import build_server, serve_etcd
from quorum.api.local import LocalBackend
from quorum.api.native import messages as m
from quorum.api.native.server import NativeServer, serve_native, server_tls_context
from quorum.api.process import QuorumProcess
from quorum.cli.main import cli
from quorum.errors import ConfigError
from quorum.node.config import NodeConfig, load_config
from quorum.node.storage import MemoryNodeStorage
from quorum.state.commands import PutRequest

from .test_server import RawConn

OTHER = "127.0.0.2"


class FakeTransport:
    """What the gate uses of a transport: its peer, closing, and the protocol hand-over."""

    def __init__(self, peer: object) -> None:
        self.peer = peer
        self.closing = False
        self.protocol: Any = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol


def _accept(cap: ConnectionCap, peer: object) -> FakeTransport:
    transport = FakeTransport(peer)
    cap.factory(asyncio.Protocol)().connection_made(transport)  # type: ignore[arg-type]
    return transport


def _run(body: Callable[[], Awaitable[None]], loop: str = "asyncio") -> None:
    factory = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(body())


async def _open(server: NativeServer, source: str = "127.0.0.1") -> RawConn:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port,
                                                   local_addr=(source, 0))
    return RawConn(reader, writer)


async def _served(conn: RawConn, rid: int) -> bool:
    conn.send(m.Request(rid, PutRequest(b"k%d" % rid, b"v")))
    return (await conn.answers(1))[0].id == rid


# --- addresses ---------------------------------------------------------------------------------


def test_a_peer_counts_against_its_ip_and_a_v4_mapped_one_against_its_v4_address() -> None:
    assert peer_ip(("10.1.2.3", 5000)) == "10.1.2.3"
    assert peer_ip(("::ffff:10.1.2.3", 5000, 0, 0)) == "10.1.2.3"
    assert peer_ip(("2001:db8:0::1", 5000, 0, 0)) == "2001:db8::1"  # canonical form
    assert peer_ip(("::1", 5000, 0, 0)) == "::1"
    assert peer_ip("") is None  # a Unix socket's peer
    assert peer_ip(None) is None
    assert peer_ip(("not-an-ip", 1)) is None


def test_v4_mapped_and_plain_v4_connections_share_one_allowance() -> None:
    cap = ConnectionCap("native", 0, per_ip=2)
    first = _accept(cap, ("10.1.2.3", 1))
    second = _accept(cap, ("::ffff:10.1.2.3", 2, 0, 0))
    third = _accept(cap, ("10.1.2.3", 3))
    assert first.protocol is not None and second.protocol is not None
    assert third.closing and third.protocol is None
    other = _accept(cap, ("2001:db8::7", 4, 0, 0))  # IPv6 has its own allowance
    assert other.protocol is not None and cap.open_from("2001:db8::7") == 1
    assert cap.refused == cap.refused_per_ip == 1


def test_closed_transports_are_forgotten() -> None:
    cap = ConnectionCap("native", 0, per_ip=1)
    for i in range(10 * SWEEP_SLACK):  # many one-off clients, each gone before the next
        _accept(cap, (f"10.0.{i // 256}.{i % 256}", 1)).close()
    # A sweep runs when the table holds SWEEP_SLACK more than the open ones: the addresses
    # that never came back do not pile up.
    assert len(cap._by_ip) <= SWEEP_SLACK
    kept = _accept(cap, ("10.9.9.9", 1))
    assert kept.protocol is not None
    assert _accept(cap, ("10.9.9.9", 2)).closing  # an open one still counts
    kept.close()
    assert _accept(cap, ("10.9.9.9", 3)).protocol is not None  # its slot is free again


def test_the_gate_is_not_in_the_way_when_nothing_is_limited() -> None:
    cap = ConnectionCap("native", 0, per_ip=0)
    assert cap.factory(asyncio.Protocol) is asyncio.Protocol


# --- the native port -----------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_native_port_limits_connections_per_ip(loop: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        server = await serve_native(LocalBackend(), "127.0.0.1", 0, max_connections_per_ip=2)
        try:
            first, second = await _open(server), await _open(server)
            assert await _served(first, 1) and await _served(second, 2)
            third = await _open(server)
            assert await third.closed_by_server()
            assert server.cap.refused_per_ip == 1
            other = await _open(server, OTHER)  # another address has its own allowance
            assert await _served(other, 3)
            assert await _served(second, 4)  # those already in are still served
            first.writer.close()
            await asyncio.sleep(0.2)  # the server sees the close
            fourth = await _open(server)  # the freed slot is taken again
            assert await _served(fourth, 5)
            for conn in (second, third, other, fourth):
                conn.writer.close()
        finally:
            await server.close()

    with caplog.at_level(logging.WARNING, logger="quorum.api"):
        _run(body, loop)
    assert ("native port: 1 connection(s) refused: 1 beyond the per-address limit "
            "(--max-client-connections-per-ip) of 2; from 127.0.0.1 (1)") in caplog.text


def test_native_port_without_a_per_ip_limit_serves_them_all() -> None:
    """The twin of the test above with the limit off: the third connection is served, so the
    refusal there comes from the limit."""
    async def body() -> None:
        server = await serve_native(LocalBackend(), "127.0.0.1", 0, max_connections_per_ip=0)
        try:
            conns = [await _open(server) for _ in range(3)]
            for i, conn in enumerate(conns):
                assert await _served(conn, i + 1)
            assert server.cap.refused == 0
            for conn in conns:
                conn.writer.close()
        finally:
            await server.close()

    _run(body)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_native_tls_port_refuses_before_the_handshake(loop: str, tmp_path: Path) -> None:
    """A handshake under way counts against its address, and the refused client is closed
    without a byte of TLS: the gate runs before the handshake is started."""
    cert, key = make_cert(tmp_path, "server")

    async def body() -> None:
        server = await serve_native(LocalBackend(), "127.0.0.1", 0,
                                    tls=server_tls_context(str(cert), str(key)),
                                    max_connections_per_ip=1)
        try:
            pending = await _open(server)  # no ClientHello: its handshake waits
            refused = await _open(server)
            assert await asyncio.wait_for(refused.reader.read(), 5) == b""
            assert server.cap.refused_per_ip == 1
            client = ssl.create_default_context(cafile=str(cert))
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.port, ssl=client, local_addr=(OTHER, 0))
            tls_conn = RawConn(reader, writer)
            assert await _served(tls_conn, 1)
            pending.writer.close()
            await asyncio.sleep(0.2)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client)
            again = RawConn(reader, writer)
            assert await _served(again, 2)
            for conn in (refused, tls_conn, again):
                conn.writer.close()
        finally:
            await server.close()

    _run(body, loop)


# --- the etcd port (h2 engine) -------------------------------------------------------------------


async def _http_get(port: int, source: str, tls: ssl.SSLContext | None = None) -> bytes:
    """The etcd port's answer to an HTTP/1 GET /version from ``source`` (b"" if closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0),
                                                   ssl=tls)
    try:
        writer.write(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            return await asyncio.wait_for(reader.read(12), 5)
        except ConnectionResetError:
            return b""
    finally:
        writer.close()


def test_etcd_port_limits_connections_per_ip(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        server, port = await serve_etcd(LocalBackend(), "127.0.0.1", 0,
                                        config=EtcdApiConfig(max_connections_per_ip=1))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as kept:
                await rpc.KVStub(kept).Put(pb.PutRequest(key=b"k", value=b"v"), timeout=5)
                assert await _http_get(port, "127.0.0.1") == b""  # the second from 127.0.0.1
                assert await _http_get(port, OTHER) == b"HTTP/1.1 200"
                got = await rpc.KVStub(kept).Range(pb.RangeRequest(key=b"k"), timeout=5)
                assert [kv.value for kv in got.kvs] == [b"v"]
            await asyncio.sleep(0.2)  # the server sees the channel's connection close
            assert await _http_get(port, "127.0.0.1") == b"HTTP/1.1 200"
            assert server.cap.refused_per_ip == 1
        finally:
            await server.stop(None)

    with caplog.at_level(logging.WARNING, logger="quorum.api"):
        _run(body)
    assert ("etcd port: 1 connection(s) refused: 1 beyond the per-address limit "
            "(--max-client-connections-per-ip) of 1; from 127.0.0.1 (1)") in caplog.text


async def _closed_at_once(port: int, source: str = "127.0.0.1") -> bool:
    """Whether a plain TCP connection from ``source`` is closed by the server without a
    byte (within 1 s), rather than left waiting for its ClientHello."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        return await asyncio.wait_for(reader.read(), 1.0) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        writer.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_etcd_tls_port_limits_connections_per_ip_before_the_handshake(
        loop: str, tmp_path: Path) -> None:
    """The h2 engine listens on plain TCP and runs the TLS handshake after the admission:
    a handshake under way counts against its address, and a refused client is closed
    without a byte of TLS."""
    cert, key = make_cert(tmp_path, "server")
    client = ssl.create_default_context(cafile=str(cert))

    async def body() -> None:
        server, port = await serve_etcd(LocalBackend(), "127.0.0.1", 0,
                                        tls=EtcdTls(str(cert), str(key)),
                                        config=EtcdApiConfig(max_connections_per_ip=1))
        try:
            _reader, pending = await asyncio.open_connection("127.0.0.1", port)  # no hello
            assert await _closed_at_once(port)
            assert server.cap.refused_per_ip == 1
            assert await _http_get(port, OTHER, client) == b"HTTP/1.1 200"
            pending.close()
            await asyncio.sleep(0.2)
            assert await _http_get(port, "127.0.0.1", client) == b"HTTP/1.1 200"
            assert server.cap.refused == 1
        finally:
            await server.stop(None)

    _run(body, loop)


@pytest.mark.parametrize("cap", [1, 0])
def test_etcd_tls_port_counts_handshakes_under_way_against_the_cap(
        cap: int, tmp_path: Path) -> None:
    """Connections that never finish (or start) their handshake hold descriptors too: they
    count against the port's cap. The twin without a cap leaves the second one waiting."""
    cert, key = make_cert(tmp_path, "server")

    async def body() -> None:
        server, port = await serve_etcd(LocalBackend(), "127.0.0.1", 0,
                                        tls=EtcdTls(str(cert), str(key)),
                                        config=EtcdApiConfig(max_connections=cap))
        try:
            _reader, pending = await asyncio.open_connection("127.0.0.1", port)  # no hello
            assert await _closed_at_once(port, OTHER) == (cap == 1)
            assert len(server.cap.handshakes) >= 1
            pending.close()
        finally:
            await server.stop(None)

    _run(body)


def test_etcd_port_without_a_per_ip_limit_serves_a_second_connection() -> None:
    async def body() -> None:
        server, port = await serve_etcd(LocalBackend(), "127.0.0.1", 0)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as kept:
                await rpc.KVStub(kept).Put(pb.PutRequest(key=b"k", value=b"v"), timeout=5)
                assert await _http_get(port, "127.0.0.1") == b"HTTP/1.1 200"
        finally:
            await server.stop(None)

    _run(body)


# --- logging ------------------------------------------------------------------------------------


def test_refusals_of_both_kinds_share_one_rate_limited_line(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    served: list[object] = []
    cap = ConnectionCap("etcd", 2, served, per_ip=1, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="quorum.api"):
        _accept(cap, ("10.0.0.1", 1))
        for port in range(2, 6):  # 4 refused per address within the interval: one line
            _accept(cap, ("10.0.0.1", port))
        served.extend([object(), object()])  # the port is full now
        for port in range(2, 4):
            _accept(cap, ("10.0.0.2", port))
        now[0] += LOG_EVERY_S - 0.1
        _accept(cap, ("10.0.0.3", 1))
        assert len(caplog.records) == 1
        now[0] += 0.1
        _accept(cap, ("10.0.0.3", 2))
    lines = [r.getMessage() for r in caplog.records]
    assert cap.refused == 8 and cap.refused_per_ip == 4
    assert lines == [
        "etcd port: 1 connection(s) refused: 1 beyond the per-address limit "
        "(--max-client-connections-per-ip) of 1; from 10.0.0.1 (1)",
        "etcd port: 7 connection(s) refused: 4 at the cap (--max-client-connections) of 2, "
        "2 open; 3 beyond the per-address limit (--max-client-connections-per-ip) of 1; "
        "from 10.0.0.1 (3), 10.0.0.2 (2), 10.0.0.3 (2)",
    ]


# --- configuration and the grpcio engine ---------------------------------------------------------


def test_per_ip_config_is_validated(tmp_path: Path) -> None:
    assert NodeConfig().max_client_connections_per_ip == 0  # off by default (docs/node.md)
    with pytest.raises(ConfigError, match="max_client_connections_per_ip must be >= 0"):
        NodeConfig(max_client_connections_per_ip=-1).validate()
    with pytest.raises(ConfigError, match="max_connections_per_ip must not be negative"):
        EtcdApiConfig(max_connections_per_ip=-1).validate()
    path = tmp_path / "node.toml"
    path.write_text("max_client_connections_per_ip = 60\n")
    assert load_config(path).max_client_connections_per_ip == 60


def test_grpcio_engine_refuses_a_per_ip_limit_it_cannot_enforce() -> None:
    with pytest.raises(ConfigError, match="grpcio engine"):
        NodeConfig(etcd_engine="grpcio", max_client_connections_per_ip=5).validate()
    # the same values are fine where nothing is left unenforced: the h2 engine, or no etcd
    # port, or grpcio with only the total cap (which gRPC core enforces)
    NodeConfig(etcd_engine="h2", max_client_connections_per_ip=5).validate()
    NodeConfig(etcd_engine="grpcio", etcd_listen="", max_client_connections_per_ip=5).validate()
    NodeConfig(etcd_engine="grpcio", max_client_connections=5).validate()
    with pytest.raises(ConfigError, match="grpcio engine cannot enforce"):
        build_server(LocalBackend(), EtcdApiConfig(max_connections_per_ip=5))
    result = CliRunner().invoke(cli, ["serve", "--etcd-engine", "grpcio",
                                      "--max-client-connections-per-ip", "5"])
    assert result.exit_code == 2 and "grpcio engine" in result.output
    result = CliRunner().invoke(cli, ["serve", "--max-client-connections-per-ip", "-1"])
    assert result.exit_code == 2 and "max_client_connections_per_ip" in result.output


@pytest.mark.parametrize("cap", [1, 0])
def test_grpcio_engine_enforces_the_total_cap(cap: int) -> None:
    """grpc.max_allowed_incoming_connections: with a cap of 1 a second connection is closed
    as soon as it is accepted; with no cap (the twin) it stays open."""
    async def body() -> None:
        server, port = await serve_etcd(LocalBackend(), "127.0.0.1", 0, engine="grpcio",
                                        config=EtcdApiConfig(max_connections=cap))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as kept:
                await rpc.KVStub(kept).Put(pb.PutRequest(key=b"k", value=b"v"), timeout=5)
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    got = await asyncio.wait_for(reader.read(), 1.0)
                    closed = got == b""
                except ConnectionResetError:
                    closed = True
                except TimeoutError:
                    closed = False
                writer.close()
                assert closed == (cap == 1)
                got = await rpc.KVStub(kept).Range(pb.RangeRequest(key=b"k"), timeout=5)
                assert [kv.value for kv in got.kvs] == [b"v"]
        finally:
            await server.stop(None)

    _run(body)


def _free_addr() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_a_node_applies_the_per_ip_limit_to_both_ports() -> None:
    async def body() -> None:
        native, etcd = _free_addr(), _free_addr()
        proc = QuorumProcess(
            NodeConfig(id=3, peer_listen=_free_addr(), client_listen=native, etcd_listen=etcd,
                       tick_ms=10, fsync=False, max_client_connections_per_ip=1),
            storage=MemoryNodeStorage(),
        )
        await proc.start()
        try:
            assert proc.native.cap.per_ip == proc.etcd.cap.per_ip == 1
            assert proc.native.cap.limit == proc.etcd.cap.limit == proc.connection_cap > 0
            kept = await _open(proc.native)
            assert await (await _open(proc.native)).closed_by_server()
            port = int(etcd.rsplit(":", 1)[1])
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)  # kept
            assert await _http_get(port, "127.0.0.1") == b""
            assert proc.native.cap.refused_per_ip == proc.etcd.cap.refused_per_ip == 1
            kept.writer.close()
            writer.close()
        finally:
            await proc.stop()

    _run(body)
