"""The HTTP/1 side of the etcd port: the JSON gateway (/v3/...), /health, /version, /metrics.

A gateway answer must equal, field for field, what gRPC answers for the same request (both run
the same servicers), written in protobuf's JSON mapping with proto field names."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format

from quorum.api.backend import Status
from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc
from quorum.api.etcd.server import serve_etcd
from quorum.api.local import LocalBackend
from quorum.state import RangeRequest

STEP_S = 10.0


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class Http:
    """A minimal HTTP/1.1 client on one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def __aenter__(self) -> Http:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: q\r\nContent-Length: {len(raw)}"
                          f"\r\n\r\n".encode() + raw)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), STEP_S)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        length = int(fields["content-length"])
        return status, await asyncio.wait_for(self.reader.readexactly(length), STEP_S)

    async def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        status, raw = await self.request("POST", path, body if body is not None else {})
        return status, json.loads(raw)


@contextlib.asynccontextmanager
async def served(backend: LocalBackend | None = None) -> AsyncIterator[tuple[int, rpc.KVStub, LocalBackend]]:
    backend = backend or LocalBackend()
    server, port = await serve_etcd(backend, "127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield port, rpc.KVStub(channel), backend
    finally:
        await channel.close()
        await server.stop(None)
        await backend.close()


def run(body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(body(), 60)

    asyncio.run(main())


def as_json(message: Any) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def test_kv_calls_answer_what_grpc_answers() -> None:
    async def body() -> None:
        async with served() as (port, kv, _), Http(port) as http:
            status, put = await http.post("/v3/kv/put", {"key": b64(b"foo"), "value": b64(b"bar")})
            assert status == 200 and put["header"]["revision"] == "2"  # the empty store's + 1
            await kv.Put(pb.PutRequest(key=b"foo2", value=b"x" * 300))
            for request in (pb.RangeRequest(key=b"foo", range_end=b"fop"),
                            pb.RangeRequest(key=b"f", range_end=b"g", keys_only=True, limit=1),
                            pb.RangeRequest(key=b"foo", revision=2)):
                status, got = await http.post("/v3/kv/range", as_json(request))
                assert status == 200
                assert got == as_json(await kv.Range(request))
            txn = {"compare": [{"key": b64(b"foo"), "target": "VALUE", "result": "EQUAL",
                                "value": b64(b"bar")}],
                   "success": [{"request_put": {"key": b64(b"foo"), "value": b64(b"baz")}}]}
            status, got = await http.post("/v3beta/kv/txn", txn)
            assert status == 200 and got["succeeded"] is True
            status, got = await http.post("/v3/kv/deleterange",
                                          {"key": b64(b"foo"), "prev_kv": True})
            assert status == 200 and got["deleted"] == "1"
            assert got["prev_kvs"][0]["value"] == b64(b"baz")

    run(body)


def test_errors_carry_etcd_texts_codes_and_http_statuses() -> None:
    async def body() -> None:
        async with served() as (port, kv, _), Http(port) as http:
            status, got = await http.post("/v3/kv/put", {"key": "", "value": b64(b"v")})
            assert status == 400 and got == {"error": "etcdserver: key is not provided",
                                             "code": 3, "message": "etcdserver: key is not provided"}
            status, got = await http.post("/v3/lease/revoke", {"ID": "99"})
            assert (status, got["code"]) == (404, 5)
            assert got["error"] == "etcdserver: requested lease not found"
            for _ in range(3):
                await kv.Put(pb.PutRequest(key=b"k", value=b"v"))
            await http.post("/v3/kv/compaction", {"revision": "3"})
            status, got = await http.post("/v3/kv/range", {"key": b64(b"k"), "revision": "1"})
            assert (status, got["code"]) == (400, 11) and "compacted" in got["error"]
            for bad in (b"{bad", b"[1, 2]", b'{"no_such_field": 1}', b'{"key": 5}',
                        b'{"key": "a"} {"key": "b"}'):
                status, raw = await http.request("POST", "/v3/kv/range", bad)
                assert status == 400 and json.loads(raw)["code"] == 3, bad
            status, _ = await http.request("GET", "/v3/kv/range")
            assert status == 405
            status, _ = await http.request("POST", "/v3/kv/nothing", b"{}")
            assert status == 404
            # the connection and the server keep serving
            status, got = await http.post("/v3/kv/range", {"key": b64(b"k")})
            assert status == 200 and got["count"] == "1"

    run(body)


async def stream_lines(port: int, path: str, body: bytes,
                       until: Callable[[list[Any]], bool]) -> tuple[list[Any], asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {path} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_S)
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head
    lines: list[Any] = []
    while not until(lines):
        size = int(await asyncio.wait_for(reader.readuntil(b"\r\n"), STEP_S), 16)
        if size == 0:
            break
        chunk = await reader.readexactly(size + 2)
        lines.append(json.loads(chunk[:-2]))
    return lines, writer


def test_watch_streams_results_and_a_vanished_client_leaves_no_watcher() -> None:
    async def body() -> None:
        async with served() as (port, kv, backend):
            create = json.dumps({"create_request": {"key": b64(b"w"), "prev_kv": True}}).encode()
            task = asyncio.ensure_future(stream_lines(
                port, "/v3/watch", create, lambda lines: len(lines) >= 3))
            while not backend._watches:
                await asyncio.sleep(0.01)
            await kv.Put(pb.PutRequest(key=b"w", value=b"1"))
            await kv.Put(pb.PutRequest(key=b"w", value=b"2"))
            lines, writer = await task
            assert lines[0]["result"]["created"] is True
            events = [line["result"]["events"][0] for line in lines[1:]]
            assert [e["kv"]["value"] for e in events] == [b64(b"1"), b64(b"2")]
            assert events[1]["prev_kv"]["value"] == b64(b"1")
            writer.close()
            for _ in range(500):  # the gateway cancels the watch once the client is gone
                if not backend._watches and not backend._sm.watches.watcher_ids():
                    break
                await asyncio.sleep(0.01)
            assert not backend._sm.watches.watcher_ids()
            assert not backend._watches

    run(body)


def test_lease_keepalive_stream_ends_after_its_requests() -> None:
    async def body() -> None:
        async with served() as (port, _, _), Http(port) as http:
            _, grant = await http.post("/v3/lease/grant", {"TTL": "60"})
            lease = grant["ID"]
            twice = json.dumps({"ID": lease}).encode() * 2  # two requests in one body
            lines, writer = await stream_lines(port, "/v3/lease/keepalive", twice,
                                               lambda lines: False)
            writer.close()
            assert [line["result"]["ID"] for line in lines] == [lease, lease]
            assert all(line["result"]["TTL"] == "60" for line in lines)

    run(body)


def test_health_version_and_metrics() -> None:
    class NoLeader(LocalBackend):
        async def status(self) -> Status:
            st = await super().status()
            return Status(st.version, st.db_size_bytes, 0, st.raft_index, st.raft_term,
                          st.raft_applied_index)

    class StuckReads(LocalBackend):
        async def read(self, request: Any, serializable: bool = False) -> Any:
            if isinstance(request, RangeRequest) and request.key == b"health":
                await asyncio.sleep(30)
            return await super().read(request, serializable)

    async def body() -> None:
        async with served() as (port, kv, _), Http(port) as http:
            assert await http.request("GET", "/health") == (200, b'{"health":"true"}')
            assert await http.request("GET", "/version") == (
                200, b'{"etcdserver":"3.4.0","etcdcluster":"3.4.0"}')
            for _ in range(4):
                await kv.Put(pb.PutRequest(key=b"m", value=b"v"))
            status, raw = await http.request("GET", "/metrics")
            metrics = dict(line.rsplit(" ", 1) for line in raw.decode().splitlines()
                           if line and not line.startswith("#"))
            assert status == 200
            assert metrics["etcd_server_has_leader"] == "1"
            assert metrics["etcd_server_is_leader"] == "1"
            assert metrics["etcd_debugging_mvcc_current_revision"] == "5"  # 1 + four puts
            assert metrics['etcd_server_version{server_version="3.4.0"}'] == "1"
        for broken in (NoLeader(), StuckReads()):
            async with served(broken) as (port, _, _), Http(port) as http:
                assert await http.request("GET", "/health") == (503, b'{"health":"false"}')

    run(body)
