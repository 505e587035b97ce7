"""The Cluster and Maintenance services, onto the Backend's member and maintenance calls."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from quorum.api.backend import AlarmAction, AlarmType, Backend, Member
from quorum.api.etcd import convert, snapshot_file
from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc
from quorum.api.etcd.status import abort_with
from quorum.errors import RevisionCompacted

# The etcd API level quorum speaks. Clients read StatusResponse.version to pick features, so it
# names the etcd release whose API quorum implements, not quorum's own version (that one is in
# docs/etcd.md and in quorum's native status).
ETCD_API_VERSION = "3.4.0"
SNAPSHOT_CHUNK_BYTES = 32 * 1024


def member_pb(m: Member) -> pb.Member:
    clients = m.etcd_urls or m.client_urls
    return pb.Member(
        ID=m.id, name=m.name, peerURLs=list(m.peer_urls), clientURLs=list(clients),
        isLearner=m.is_learner,
    )


class ClusterServicer(rpc.ClusterServicer):
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def _header(self) -> pb.ResponseHeader:
        return convert.header_pb(self._backend.header())

    async def MemberAdd(
        self, request: pb.MemberAddRequest, context: grpc.aio.ServicerContext
    ) -> pb.MemberAddResponse:
        try:
            change = await self._backend.member_add(tuple(request.peerURLs), request.isLearner)
        except Exception as exc:
            await abort_with(context, exc)
            raise
        out = pb.MemberAddResponse(
            header=self._header(), members=[member_pb(m) for m in change.members]
        )
        if change.member is not None:
            out.member.CopyFrom(member_pb(change.member))
        return out

    async def MemberRemove(
        self, request: pb.MemberRemoveRequest, context: grpc.aio.ServicerContext
    ) -> pb.MemberRemoveResponse:
        try:
            change = await self._backend.member_remove(request.ID)
        except Exception as exc:
            await abort_with(context, exc)
            raise
        return pb.MemberRemoveResponse(
            header=self._header(), members=[member_pb(m) for m in change.members]
        )

    async def MemberUpdate(
        self, request: pb.MemberUpdateRequest, context: grpc.aio.ServicerContext
    ) -> pb.MemberUpdateResponse:
        try:
            change = await self._backend.member_update(request.ID, tuple(request.peerURLs))
        except Exception as exc:
            await abort_with(context, exc)
            raise
        return pb.MemberUpdateResponse(
            header=self._header(), members=[member_pb(m) for m in change.members]
        )

    async def MemberList(
        self, request: pb.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> pb.MemberListResponse:
        try:
            members = await self._backend.member_list()
        except Exception as exc:
            await abort_with(context, exc)
            raise
        return pb.MemberListResponse(header=self._header(), members=[member_pb(m) for m in members])

    async def MemberPromote(
        self, request: pb.MemberPromoteRequest, context: grpc.aio.ServicerContext
    ) -> pb.MemberPromoteResponse:
        try:
            change = await self._backend.member_promote(request.ID)
        except Exception as exc:
            await abort_with(context, exc)
            raise
        return pb.MemberPromoteResponse(
            header=self._header(), members=[member_pb(m) for m in change.members]
        )


class MaintenanceServicer(rpc.MaintenanceServicer):
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def _header(self) -> pb.ResponseHeader:
        return convert.header_pb(self._backend.header())

    async def Alarm(self, request: pb.AlarmRequest, context: grpc.aio.ServicerContext) -> pb.AlarmResponse:
        try:
            alarms = await self._backend.alarms(
                AlarmAction(request.action), request.memberID, AlarmType(request.alarm)
            )
        except Exception as exc:
            await abort_with(context, exc)
            raise
        return pb.AlarmResponse(
            header=self._header(),
            alarms=[pb.AlarmMember(memberID=a.member_id, alarm=int(a.alarm)) for a in alarms],  # type: ignore[arg-type]
        )

    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusResponse:
        try:
            st = await self._backend.status()
        except Exception as exc:
            await abort_with(context, exc)
            raise
        return pb.StatusResponse(
            header=self._header(), version=ETCD_API_VERSION, dbSize=st.db_size_bytes,
            leader=st.leader, raftIndex=st.raft_index, raftTerm=st.raft_term,
            raftAppliedIndex=st.raft_applied_index, errors=list(st.errors),
            dbSizeInUse=st.db_size_in_use_bytes or st.db_size_bytes, isLearner=st.is_learner,
        )

    async def Defragment(
        self, request: pb.DefragmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.DefragmentResponse:
        try:
            await self._backend.defragment()
        except Exception as exc:
            await abort_with(context, exc)
            raise
        return pb.DefragmentResponse(header=self._header())

    async def Hash(self, request: pb.HashRequest, context: grpc.aio.ServicerContext) -> pb.HashResponse:
        try:
            digest = await self._backend.hash()
        except Exception as exc:
            await abort_with(context, exc)
            raise
        return pb.HashResponse(header=self._header(), hash=digest & 0xFFFFFFFF)

    async def HashKV(self, request: pb.HashKVRequest, context: grpc.aio.ServicerContext) -> pb.HashKVResponse:
        try:
            h = await self._backend.hash_kv(request.revision)
            if 0 < request.revision <= h.compact_revision:
                # etcd refuses the compact revision itself too (quorum's own hash_kv, used
                # by the replica checks, answers it: reads there are still exact)
                raise RevisionCompacted(h.compact_revision)
        except Exception as exc:
            await abort_with(context, exc)
            raise
        # etcd reports -1 for a store never compacted; quorum's store says 0 (no write is
        # ever at revision 0, so a compaction at 0 removes nothing)
        return pb.HashKVResponse(
            header=convert.header_pb(self._backend.header(), h.revision),
            hash=h.hash & 0xFFFFFFFF, compact_revision=h.compact_revision or -1,
        )

    async def Snapshot(
        self, request: pb.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SnapshotResponse]:
        """Stream the backend's snapshot, wrapped in the etcd file shape (see snapshot_file).
        The wrapped size is only known at the end, so the data is gathered first: the
        ``remaining_bytes`` of each message must count down to 0 on the last one."""
        header = self._header()  # the first header marks the snapshot's point in time
        try:
            chunks = [c async for c in self._backend.snapshot()]
        except Exception as exc:
            await abort_with(context, exc)
            raise
        data = snapshot_file.wrap(b"".join(chunks))
        offset = 0
        while True:
            piece = data[offset : offset + SNAPSHOT_CHUNK_BYTES]
            offset += len(piece)
            yield pb.SnapshotResponse(header=header, remaining_bytes=len(data) - offset, blob=piece)
            if offset >= len(data):
                return

    async def MoveLeader(
        self, request: pb.MoveLeaderRequest, context: grpc.aio.ServicerContext
    ) -> pb.MoveLeaderResponse:
        try:
            await self._backend.move_leader(request.targetID)
        except Exception as exc:
            await abort_with(context, exc)
            raise
        return pb.MoveLeaderResponse(header=self._header())
