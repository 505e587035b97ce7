"""The Lease service. Grant and revoke are state-machine commands; keepalive, time-to-live and
the lease list ask the serving node (the leader tracks lease deadlines, not the log)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from quorum.api.backend import Backend
from quorum.api.etcd import convert
from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc
from quorum.api.etcd.status import abort_with, status_of
from quorum.errors import LeaseNotFound
from quorum.state import commands as sc
from quorum.state.config import MAX_LEASE_TTL_S

ERR_LEASE_TTL_TOO_LARGE = "etcdserver: too large lease TTL"


class LeaseServicer(rpc.LeaseServicer):
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def LeaseGrant(
        self, request: pb.LeaseGrantRequest, context: grpc.aio.ServicerContext
    ) -> pb.LeaseGrantResponse:
        if request.TTL > MAX_LEASE_TTL_S:  # etcd's own code and text for this case
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, ERR_LEASE_TTL_TOO_LARGE)
        try:
            res = await self._backend.write(sc.LeaseGrantRequest(ttl=request.TTL, id=request.ID))
        except Exception as exc:
            await abort_with(context, exc)
            raise
        assert isinstance(res, sc.LeaseGrantResponse)
        header = convert.header_pb(self._backend.header(), res.revision)
        return pb.LeaseGrantResponse(header=header, ID=res.id, TTL=res.ttl)

    async def LeaseRevoke(
        self, request: pb.LeaseRevokeRequest, context: grpc.aio.ServicerContext
    ) -> pb.LeaseRevokeResponse:
        try:
            res = await self._backend.write(sc.LeaseRevokeRequest(id=request.ID))
        except Exception as exc:
            await abort_with(context, exc)
            raise
        return pb.LeaseRevokeResponse(header=convert.header_pb(self._backend.header(), res.revision))

    async def LeaseKeepAlive(
        self,
        request_iterator: AsyncIterator[pb.LeaseKeepAliveRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.LeaseKeepAliveResponse]:
        async for request in request_iterator:
            try:
                ttl = await self._backend.lease_keepalive(request.ID)
            except LeaseNotFound:
                # etcd answers an unknown or expired lease with TTL 0 instead of an error, so
                # a client's keepalive loop learns the lease is gone and stops.
                ttl = 0
            except Exception as exc:
                code, message = status_of(exc)
                await context.abort(code, message)
                raise
            header = convert.header_pb(self._backend.header())
            yield pb.LeaseKeepAliveResponse(header=header, ID=request.ID, TTL=ttl)

    async def LeaseTimeToLive(
        self, request: pb.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.LeaseTimeToLiveResponse:
        try:
            info = await self._backend.lease_time_to_live(request.ID, keys=request.keys)
        except LeaseNotFound:
            info = None
        except Exception as exc:
            await abort_with(context, exc)
            raise
        header = convert.header_pb(self._backend.header())
        if info is None or info.ttl_s < 0:
            return pb.LeaseTimeToLiveResponse(header=header, ID=request.ID, TTL=-1)
        return pb.LeaseTimeToLiveResponse(
            header=header, ID=info.id, TTL=info.ttl_s, grantedTTL=info.granted_ttl_s,
            keys=list(info.keys) if request.keys else [],
        )

    async def LeaseLeases(
        self, request: pb.LeaseLeasesRequest, context: grpc.aio.ServicerContext
    ) -> pb.LeaseLeasesResponse:
        try:
            ids = await self._backend.leases()
        except Exception as exc:
            await abort_with(context, exc)
            raise
        return pb.LeaseLeasesResponse(
            header=convert.header_pb(self._backend.header()),
            leases=[pb.LeaseStatus(ID=i) for i in ids],
        )
