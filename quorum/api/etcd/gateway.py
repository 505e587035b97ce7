"""HTTP/1.1 next to gRPC on the etcd port, as etcd serves it: the JSON gateway (``POST
/v3/kv/put`` with a JSON body, answers in JSON), ``/health``, ``/version`` and ``/metrics``.

The gateway calls the same servicers as gRPC. JSON follows protobuf's JSON mapping with the
proto field names, as etcd's gateway writes it: bytes as base64, 64-bit integers as strings,
fields at their default value left out. A failed call answers
``{"error": text, "code": grpc code, "message": text}`` with the HTTP status grpc-gateway
uses for that gRPC code. Streaming methods (watch, lease keep-alive, snapshot, observe,
campaign's peers) answer one ``{"result": ...}`` JSON object per line, chunked; their request
body may hold several JSON objects one after another (each is one request message).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import json_format  # type: ignore[import-untyped]

from quorum.api.backend import Backend
from quorum.api.etcd.maintenance import ETCD_API_VERSION
from quorum.api.etcd.status import status_of
from quorum.api.h2grpc.http1 import Request, Response
from quorum.api.h2grpc.server import Method
from quorum.api.h2grpc.status import AbortError, code_number
from quorum.state import commands as sc

log = logging.getLogger(__name__)

PREFIXES = ("/v3/", "/v3beta/")
HEALTH_TIMEOUT_S = 1.0

# gateway path (after the version prefix) -> (service, method)
ROUTES: dict[str, tuple[str, str]] = {
    "kv/range": ("KV", "Range"), "kv/put": ("KV", "Put"),
    "kv/deleterange": ("KV", "DeleteRange"), "kv/txn": ("KV", "Txn"),
    "kv/compaction": ("KV", "Compact"),
    "watch": ("Watch", "Watch"),
    "lease/grant": ("Lease", "LeaseGrant"), "lease/revoke": ("Lease", "LeaseRevoke"),
    "kv/lease/revoke": ("Lease", "LeaseRevoke"), "lease/keepalive": ("Lease", "LeaseKeepAlive"),
    "lease/timetolive": ("Lease", "LeaseTimeToLive"),
    "kv/lease/timetolive": ("Lease", "LeaseTimeToLive"),
    "lease/leases": ("Lease", "LeaseLeases"), "kv/lease/leases": ("Lease", "LeaseLeases"),
    "cluster/member/add": ("Cluster", "MemberAdd"),
    "cluster/member/remove": ("Cluster", "MemberRemove"),
    "cluster/member/update": ("Cluster", "MemberUpdate"),
    "cluster/member/list": ("Cluster", "MemberList"),
    "cluster/member/promote": ("Cluster", "MemberPromote"),
    "maintenance/alarm": ("Maintenance", "Alarm"), "maintenance/status": ("Maintenance", "Status"),
    "maintenance/defragment": ("Maintenance", "Defragment"),
    "maintenance/hash": ("Maintenance", "Hash"), "maintenance/hashkv": ("Maintenance", "HashKV"),
    "maintenance/snapshot": ("Maintenance", "Snapshot"),
    "maintenance/transfer-leadership": ("Maintenance", "MoveLeader"),
    "auth/enable": ("Auth", "AuthEnable"), "auth/disable": ("Auth", "AuthDisable"),
    "auth/authenticate": ("Auth", "Authenticate"),
    "auth/user/add": ("Auth", "UserAdd"), "auth/user/get": ("Auth", "UserGet"),
    "auth/user/list": ("Auth", "UserList"), "auth/user/delete": ("Auth", "UserDelete"),
    "auth/user/changepw": ("Auth", "UserChangePassword"),
    "auth/user/grant": ("Auth", "UserGrantRole"), "auth/user/revoke": ("Auth", "UserRevokeRole"),
    "auth/role/add": ("Auth", "RoleAdd"), "auth/role/get": ("Auth", "RoleGet"),
    "auth/role/list": ("Auth", "RoleList"), "auth/role/delete": ("Auth", "RoleDelete"),
    "auth/role/grant": ("Auth", "RoleGrantPermission"),
    "auth/role/revoke": ("Auth", "RoleRevokePermission"),
    "election/campaign": ("Election", "Campaign"), "election/proclaim": ("Election", "Proclaim"),
    "election/leader": ("Election", "Leader"), "election/observe": ("Election", "Observe"),
    "election/resign": ("Election", "Resign"),
    "lock/lock": ("Lock", "Lock"), "lock/unlock": ("Lock", "Unlock"),
}

_PACKAGES = {"Lock": "v3lockpb", "Election": "v3electionpb"}  # the rest: etcdserverpb

# grpc-gateway's HTTP status for each gRPC code (its v1 table, which etcd 3.4 uses)
HTTP_STATUS = {0: 200, 1: 408, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
               9: 412, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401}


class _Context:
    """The servicer context of a gateway call (what quorum's servicers use of it)."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    async def abort(self, code: Any, details: str = "") -> None:
        raise AbortError(code, details)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def peer(self) -> str:
        return self._peer

    def set_code(self, code: Any) -> None:
        pass

    def set_details(self, details: str) -> None:
        pass

    def time_remaining(self) -> float | None:
        return None


def _to_json(message: Any) -> bytes:
    body = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return json.dumps(body, separators=(",", ":")).encode()


def _error_body(code: int, message: str) -> bytes:
    return json.dumps({"error": message, "code": code, "message": message},
                      separators=(",", ":")).encode()


def _json_objects(body: bytes) -> list[Any]:
    """The JSON objects of a request body, one after another (an empty body is one {})."""
    text = body.decode("utf-8").strip()
    if not text:
        return [{}]
    decoder = json.JSONDecoder()
    out, pos = [], 0
    while pos < len(text):
        obj, end = decoder.raw_decode(text, pos)
        out.append(obj)
        pos = end
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
    return out


class Gateway:
    """The HTTP/1 handler of the etcd port (``GrpcServer(http1_handler=gateway.handle)``)."""

    def __init__(self, backend: Backend, methods: dict[bytes, Method]) -> None:
        """``methods``: the gRPC server's method table (``GrpcServer.methods``); the gateway
        calls the same handlers."""
        self._backend = backend
        self._methods: dict[str, Method] = {}
        for path, (service, method) in ROUTES.items():
            package = _PACKAGES.get(service, "etcdserverpb")
            self._methods[path] = methods[f"/{package}.{service}/{method}".encode()]

    async def handle(self, req: Request) -> Response:
        if req.path == "/health":
            return await self._health()
        if req.path == "/version":
            body = {"etcdserver": ETCD_API_VERSION, "etcdcluster": ETCD_API_VERSION}
            return Response(200, json.dumps(body, separators=(",", ":")).encode())
        if req.path == "/metrics":
            return Response(200, await self._metrics(), "text/plain; version=0.0.4")
        for prefix in PREFIXES:
            if req.path.startswith(prefix):
                method = self._methods.get(req.path[len(prefix):])
                if method is not None:
                    if req.method != "POST":
                        return Response(405, _error_body(12, "method not allowed: use POST"),
                                        headers={"Allow": "POST"})
                    return await self._call(method, req)
        return Response(404, _error_body(5, f"no such path {req.path}"))

    # --- gRPC methods over JSON ------------------------------------------------------------

    def _parse(self, method: Method, body: bytes) -> list[Any]:
        messages = []
        for obj in _json_objects(body):
            message = method.request_class()
            json_format.ParseDict(obj, message)
            messages.append(message)
        return messages

    async def _call(self, method: Method, req: Request) -> Response:
        try:
            requests = self._parse(method, req.body)
            if len(requests) != 1 and not method.client_streaming:
                raise ValueError("one JSON object expected")
        except Exception as exc:  # not JSON, not an object, unknown field, wrong type...
            return Response(400, _error_body(3, f"bad request body: {exc}"))
        ctx = _Context(req.headers.get("x-forwarded-for", "http"))
        if method.client_streaming:
            argument: Any = _iterate(requests)
        else:
            argument = requests[0]
        if method.server_streaming:
            return Response(200, stream=_stream(method.handler(argument, ctx)))
        try:
            response = await method.handler(argument, ctx)
        except AbortError as exc:
            return Response(HTTP_STATUS.get(exc.code, 500), _error_body(exc.code, exc.details))
        return Response(200, _to_json(response))

    # --- /health and /metrics --------------------------------------------------------------

    async def _health(self) -> Response:
        """Healthy as etcd 3.4 means it: a leader is known, no alarm is raised, and a
        linearizable read completes within a second."""
        try:
            status = await self._backend.status()
            if not status.leader or status.errors:
                raise RuntimeError("no leader" if not status.leader else status.errors[0])
            await asyncio.wait_for(
                self._backend.read(sc.RangeRequest(b"health")), HEALTH_TIMEOUT_S)
        except Exception as exc:
            log.info("health check failed: %s", exc)
            return Response(503, b'{"health":"false"}')
        return Response(200, b'{"health":"true"}')

    async def _metrics(self) -> bytes:
        """A few gauges in Prometheus' text format, under etcd's metric names."""
        status = await self._backend.status()
        header = self._backend.header()
        rows = [
            ("etcd_server_has_leader", "gauge", "1 if a leader is known, 0 if not.",
             int(bool(status.leader))),
            ("etcd_server_is_leader", "gauge", "1 if this member is the leader.",
             int(status.leader == header.member_id)),
            ("etcd_server_is_learner", "gauge", "1 if this member is a learner.",
             int(status.is_learner)),
            ("etcd_server_proposals_committed_total", "gauge",
             "Raft log index of this member (committed proposals).", status.raft_index),
            ("etcd_server_proposals_applied_total", "gauge",
             "Raft log index applied to the state machine.", status.raft_applied_index),
            ("etcd_mvcc_db_total_size_in_bytes", "gauge",
             "Estimated size of the state in a snapshot, in bytes.", status.db_size_bytes),
            ("etcd_debugging_mvcc_current_revision", "gauge",
             "Current MVCC revision.", header.revision),
            ("quorum_raft_term", "gauge", "Current Raft term.", status.raft_term),
        ]
        lines = []
        for name, kind, text, value in rows:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        lines += ["# HELP etcd_server_version Which etcd API version is served.",
                  "# TYPE etcd_server_version gauge",
                  f'etcd_server_version{{server_version="{ETCD_API_VERSION}"}} 1']
        return ("\n".join(lines) + "\n").encode()


async def _iterate(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def _stream(responses: Any) -> AsyncIterator[bytes]:
    """Each answer of a streaming method as one ``{"result": ...}`` line; an error ends the
    stream with an ``{"error": ...}`` line (grpc-gateway's framing)."""
    try:
        async for response in responses:
            yield b'{"result":' + _to_json(response) + b"}\n"
    except AbortError as exc:
        yield _stream_error(exc.code, exc.details)
    except Exception as exc:  # a servicer bug: reported on the stream, logged
        code, message = status_of(exc)
        yield _stream_error(code_number(code), message)
    finally:
        await responses.aclose()


def _stream_error(code: int, message: str) -> bytes:
    status = HTTP_STATUS.get(code, 500)
    body = {"error": {"grpc_code": code, "http_code": status, "message": message}}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"
