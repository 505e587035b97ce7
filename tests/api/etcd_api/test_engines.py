"""The etcd port's gRPC engine is chosen per node (``NodeConfig.etcd_engine``, ``quorum serve
--etcd-engine``): both engines serve a real node's etcd API, and a bad choice is refused."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from click.testing import CliRunner

from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc
from quorum.api.etcd.server import serve_etcd
from quorum.api.local import LocalBackend
from quorum.api.process import QuorumProcess
from quorum.cli.main import cli
from quorum.errors import ConfigError
from quorum.node.config import NodeConfig
from quorum.node.storage import MemoryNodeStorage


def _free_addr() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("engine", ["h2", "grpcio"])
def test_a_node_serves_the_etcd_api_on_either_engine(engine: str) -> None:
    async def main() -> None:
        etcd = _free_addr()
        proc = QuorumProcess(
            NodeConfig(id=7, peer_listen=_free_addr(), client_listen="", etcd_listen=etcd,
                       tick_ms=10, fsync=False, etcd_engine=engine),
            storage=MemoryNodeStorage(),
        )
        await proc.start()
        try:
            async with grpc.aio.insecure_channel(etcd) as channel:
                kv = rpc.KVStub(channel)
                for _ in range(500):  # the single node elects itself within a few ticks
                    try:
                        put = await kv.Put(pb.PutRequest(key=b"k", value=b"v"), timeout=5)
                        break
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                        await asyncio.sleep(0.02)
                got = await kv.Range(pb.RangeRequest(key=b"k"), timeout=5)
            assert put.header.member_id == 7
            assert got.header.revision == put.header.revision
            assert [(kv.key, kv.value) for kv in got.kvs] == [(b"k", b"v")]
            assert type(proc.etcd).__module__.startswith(
                "quorum.api.h2grpc" if engine == "h2" else "grpc")
        finally:
            await proc.stop()

    asyncio.run(main())


def test_an_unknown_engine_is_refused() -> None:
    with pytest.raises(ConfigError, match="etcd_engine"):
        NodeConfig(etcd_engine="http1").validate()

    async def serve() -> None:
        await serve_etcd(LocalBackend(), "127.0.0.1", 0, engine="http1")

    with pytest.raises(ValueError, match="unknown gRPC engine"):
        asyncio.run(serve())
    result = CliRunner().invoke(cli, ["serve", "--etcd-engine", "http1"])
    assert result.exit_code == 2 and "http1" in result.output
