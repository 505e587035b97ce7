"""gRPC's standard health service (grpc.health.v1.Health) on the etcd port.

The server as a whole (service "") is SERVING while this member knows a leader and no alarm
is raised, NOT_SERVING otherwise: a probe then takes a member that cannot serve writes out of
rotation, as the HTTP /health check does (that one also proves a linearizable read). The etcd
services can be named too; any other name is NOT_FOUND (Check) or SERVICE_UNKNOWN (Watch), as
the health protocol specifies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from quorum.api.backend import Backend
from quorum.api.etcd.gen import grpc_health_pb2 as hpb
from quorum.api.etcd.gen import grpc_health_pb2_grpc as hrpc

SERVICES = frozenset({
    "", "etcdserverpb.KV", "etcdserverpb.Watch", "etcdserverpb.Lease", "etcdserverpb.Cluster",
    "etcdserverpb.Maintenance", "etcdserverpb.Auth", "v3lockpb.Lock", "v3electionpb.Election",
})
WATCH_POLL_S = 0.5  # how often a Watch re-reads the member's status

Status = hpb.HealthCheckResponse.ServingStatus


class HealthServicer(hrpc.HealthServicer):
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def _status(self) -> int:
        try:
            st = await self._backend.status()
        except Exception:  # a member that cannot even report its status is not serving
            return int(hpb.HealthCheckResponse.NOT_SERVING)
        ok = bool(st.leader) and not st.errors
        return int(hpb.HealthCheckResponse.SERVING if ok else hpb.HealthCheckResponse.NOT_SERVING)

    async def Check(
        self, request: hpb.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> hpb.HealthCheckResponse:
        if request.service not in SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return hpb.HealthCheckResponse(status=await self._status())  # type: ignore[arg-type]

    async def Watch(
        self, request: hpb.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[hpb.HealthCheckResponse]:
        if request.service not in SERVICES:
            yield hpb.HealthCheckResponse(status=hpb.HealthCheckResponse.SERVICE_UNKNOWN)
            return
        last = -1
        while True:
            status = await self._status()
            if status != last:
                last = status
                yield hpb.HealthCheckResponse(status=status)  # type: ignore[arg-type]
            await asyncio.sleep(WATCH_POLL_S)
