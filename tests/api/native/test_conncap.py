"""The cap on a client port's open connections (quorum.api.conncap): beyond it a new client
is closed at once and the refusal logged, everyone already connected keeps being served, and
a freed slot is taken again."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from quorum.api.conncap import LOG_EVERY_S, ConnectionCap
from quorum.api.etcd.config import EtcdApiConfig
from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc
from quorum.api.etcd.server import serve_etcd
from quorum.api.local import LocalBackend
from quorum.api.native import messages as m
from quorum.api.native.server import serve_native
from quorum.api.process import OWN_DESCRIPTORS, client_connection_cap
from quorum.errors import ConfigError
from quorum.state.commands import PutRequest

from .test_conncap_per_ip import FakeTransport
from .test_server import RawConn


def test_native_port_refuses_beyond_its_cap_and_serves_the_others(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        server = await serve_native(LocalBackend(), "127.0.0.1", 0, max_connections=2)
        try:
            first, second = await RawConn.open(server), await RawConn.open(server)
            first.send(m.Request(1, PutRequest(b"a", b"1")))
            assert (await first.answers(1))[0].id == 1
            third = await RawConn.open(server)
            assert await third.closed_by_server()
            assert server.cap.refused == 1
            second.send(m.Request(2, PutRequest(b"b", b"2")))  # still served
            assert (await second.answers(1))[0].id == 2
            first.writer.close()
            await asyncio.sleep(0.2)  # the server sees the close
            fourth = await RawConn.open(server)  # the freed slot is taken again
            fourth.send(m.Request(3, PutRequest(b"c", b"3")))
            assert (await fourth.answers(1))[0].id == 3
            for conn in (second, third, fourth):
                conn.writer.close()
        finally:
            await server.close()

    with caplog.at_level(logging.WARNING, logger="quorum.api"):
        asyncio.run(body())
    assert ("native port: 1 connection(s) refused: 1 at the cap (--max-client-connections) "
            "of 2, 2 open; from 127.0.0.1 (1)") in caplog.text


def test_etcd_port_refuses_beyond_its_cap(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        server, port = await serve_etcd(LocalBackend(), "127.0.0.1", 0,
                                        config=EtcdApiConfig(max_connections=1))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as kept:
                await rpc.KVStub(kept).Put(pb.PutRequest(key=b"k", value=b"v"), timeout=5)
                # its own connection (gRPC shares one between channels to one target)
                async with grpc.aio.insecure_channel(
                        f"127.0.0.1:{port}",
                        options=[("grpc.use_local_subchannel_pool", 1)]) as extra:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await rpc.KVStub(extra).Range(pb.RangeRequest(key=b"k"), timeout=2)
                    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                                grpc.StatusCode.DEADLINE_EXCEEDED)
                got = await rpc.KVStub(kept).Range(pb.RangeRequest(key=b"k"), timeout=5)
                assert [kv.value for kv in got.kvs] == [b"v"]
            assert server.cap.refused >= 1
        finally:
            await server.stop(None)

    with caplog.at_level(logging.WARNING, logger="quorum.api"):
        asyncio.run(body())
    assert "etcd port:" in caplog.text and "the cap (--max-client-connections) of 1" in caplog.text


def test_refusals_are_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    cap = ConnectionCap("native", 1, [object()], clock=lambda: now[0])
    gate = cap.factory(asyncio.Protocol)

    def admit() -> None:
        gate().connection_made(FakeTransport(("10.0.0.9", 4000)))  # type: ignore[arg-type]

    with caplog.at_level(logging.WARNING, logger="quorum.api"):
        for _ in range(3):
            admit()
        now[0] += LOG_EVERY_S
        admit()
    lines = [r.getMessage() for r in caplog.records]
    assert cap.refused == 4
    assert [line.split(":")[1].strip() for line in lines] == ["1 connection(s) refused",
                                                               "3 connection(s) refused"]


def test_no_cap_admits_everything() -> None:
    cap = ConnectionCap("native", 0, list(range(50_000)))
    assert isinstance(cap.factory(asyncio.Protocol)(), asyncio.Protocol)
    assert cap.refused == 0


def test_the_derived_cap_leaves_descriptors_for_the_node() -> None:
    assert client_connection_cap(7) == 7  # configured wins
    assert client_connection_cap(0, 1024) == (1024 - OWN_DESCRIPTORS) // 2
    assert client_connection_cap(0, 1 << 20) == 10_000  # at most 10,000 per port
    assert client_connection_cap(0, 100) == 16  # a floor, so a tiny limit still serves


def test_a_negative_cap_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_connections"):
        EtcdApiConfig(max_connections=-1).validate()
