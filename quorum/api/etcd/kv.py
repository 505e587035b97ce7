"""The KV service: Range, Put, DeleteRange, Txn, Compact onto ``Backend.read``/``write``."""

from __future__ import annotations

import grpc

from quorum.api.backend import Backend
from quorum.api.etcd import convert
from quorum.api.etcd.config import EtcdApiConfig
from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc
from quorum.api.etcd.status import abort_with
from quorum.errors import RequestTooLarge
from quorum.state import commands as sc


class KVServicer(rpc.KVServicer):
    def __init__(self, backend: Backend, config: EtcdApiConfig) -> None:
        self._backend = backend
        self._max_request_bytes = config.max_request_bytes

    def _check_size(self, request: object) -> None:
        # etcd refuses a write whose encoded request exceeds --max-request-bytes before
        # proposing it; the same bound keeps one log entry from carrying megabytes.
        size = request.ByteSize()  # type: ignore[attr-defined]
        if size > self._max_request_bytes:
            raise RequestTooLarge()

    async def Range(
        self, request: pb.RangeRequest, context: grpc.aio.ServicerContext
    ) -> pb.RangeResponse:
        try:
            res = await self._backend.read(
                convert.range_from_pb(request), serializable=request.serializable
            )
        except Exception as exc:
            await abort_with(context, exc)
            raise
        assert isinstance(res, sc.RangeResponse)
        return convert.range_pb(res, self._backend.header())

    async def Put(self, request: pb.PutRequest, context: grpc.aio.ServicerContext) -> pb.PutResponse:
        try:
            self._check_size(request)
            res = await self._backend.write(convert.put_from_pb(request))
        except Exception as exc:
            await abort_with(context, exc)
            raise
        assert isinstance(res, sc.PutResponse)
        return convert.put_pb(res, self._backend.header())

    async def DeleteRange(
        self, request: pb.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteRangeResponse:
        try:
            res = await self._backend.write(convert.delete_from_pb(request))
        except Exception as exc:
            await abort_with(context, exc)
            raise
        assert isinstance(res, sc.DeleteRangeResponse)
        return convert.delete_pb(res, self._backend.header())

    async def Txn(self, request: pb.TxnRequest, context: grpc.aio.ServicerContext) -> pb.TxnResponse:
        try:
            self._check_size(request)
            txn = convert.txn_from_pb(request)
            # A txn whose operations only read needs no log entry: serve it like a range,
            # after the linearizable read barrier (etcd does the same).
            res: sc.Response
            if convert.txn_is_read_only(txn):
                res = await self._backend.read(txn)
            else:
                res = await self._backend.write(txn)
        except Exception as exc:
            await abort_with(context, exc)
            raise
        assert isinstance(res, sc.TxnResponse)
        return convert.txn_pb(res, self._backend.header())

    async def Compact(
        self, request: pb.CompactionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompactionResponse:
        try:
            res = await self._backend.write(
                sc.CompactionRequest(revision=request.revision, physical=request.physical)
            )
        except Exception as exc:
            await abort_with(context, exc)
            raise
        return pb.CompactionResponse(header=convert.header_pb(self._backend.header(), res.revision))
