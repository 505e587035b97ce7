"""grpc.health.v1.Health on the etcd port, on both gRPC engines: SERVING with a leader and no
alarm, NOT_SERVING otherwise, NOT_FOUND / SERVICE_UNKNOWN for a service that is not served,
and Watch reporting each change."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from quorum.api.backend import Status
from quorum.api.etcd import health
from quorum.api.etcd.gen import grpc_health_pb2 as hpb
from quorum.api.etcd.gen import grpc_health_pb2_grpc as hrpc
from quorum.api.etcd.server import serve_etcd
from quorum.api.local import LocalBackend

SERVING = hpb.HealthCheckResponse.SERVING
NOT_SERVING = hpb.HealthCheckResponse.NOT_SERVING


class Switchable(LocalBackend):
    """A backend whose leader can be taken away."""

    leaderless = False

    async def status(self) -> Status:
        st = await super().status()
        leader = 0 if self.leaderless else st.leader
        return Status(st.version, st.db_size_bytes, leader, st.raft_index, st.raft_term,
                      st.raft_applied_index)


@pytest.mark.parametrize("engine", ["h2", "grpcio"])
def test_health_check_and_watch(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "WATCH_POLL_S", 0.02)

    async def main() -> None:
        backend = Switchable()
        server, port = await serve_etcd(backend, "127.0.0.1", 0, engine=engine)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = hrpc.HealthStub(channel)
                for service in ("", "etcdserverpb.KV"):
                    got = await stub.Check(hpb.HealthCheckRequest(service=service), timeout=10)
                    assert got.status == SERVING
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Check(hpb.HealthCheckRequest(service="no.such.Service"), timeout=10)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                unknown = stub.Watch(hpb.HealthCheckRequest(service="no.such.Service"))
                assert [r.status async for r in unknown] == [hpb.HealthCheckResponse.SERVICE_UNKNOWN]

                watch = stub.Watch(hpb.HealthCheckRequest())
                it = watch.__aiter__()
                assert (await asyncio.wait_for(it.__anext__(), 10)).status == SERVING
                backend.leaderless = True
                assert (await asyncio.wait_for(it.__anext__(), 10)).status == NOT_SERVING
                got = await stub.Check(hpb.HealthCheckRequest(), timeout=10)
                assert got.status == NOT_SERVING
                backend.leaderless = False
                assert (await asyncio.wait_for(it.__anext__(), 10)).status == SERVING
                watch.cancel()
        finally:
            await server.stop(None)
            await backend.close()

    asyncio.run(main())
