"""The Auth service: quorum has no authentication, so every call answers UNIMPLEMENTED with a
message that says so (rather than the generic "Method not implemented!")."""

from __future__ import annotations

from typing import Any

import grpc

from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc

AUTH_UNSUPPORTED = "quorum: authentication is not supported (the Auth service is not implemented)"


async def _unimplemented(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, AUTH_UNSUPPORTED)


def _build() -> type:
    # One handler per method of the service as declared in the .proto, so a method added there
    # is covered without touching this file.
    methods = {m.name: _unimplemented for m in pb.DESCRIPTOR.services_by_name["Auth"].methods}
    return type("AuthServicer", (rpc.AuthServicer,), methods)


AuthServicer = _build()
