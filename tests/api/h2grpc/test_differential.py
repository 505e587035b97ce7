"""The same servicers on grpc.aio's server and on quorum.api.h2grpc, the same calls from
grpcio's client: the outcomes (answer, status code, details) must match, so a servicer
written against grpc.aio behaves the same on quorum's server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory

from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc

from .support import (
    STEP_S,
    KVServicer,
    LeaseServicer,
    MaintenanceServicer,
    Probe,
    WatchServicer,
    build_server,
    channel,
    run,
    serving,
)


def _grpcio_handlers(service: Any, servicer: object) -> grpc.GenericRpcHandler:
    """grpc.aio handlers for the methods ``servicer`` defines (others: UNIMPLEMENTED)."""
    handlers = {}
    for m in service.methods:
        fn = getattr(servicer, m.name, None)
        if fn is None:
            continue
        parse = message_factory.GetMessageClass(m.input_type).FromString
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[m.client_streaming, m.server_streaming]
        handlers[m.name] = make(fn, request_deserializer=parse,
                                response_serializer=lambda r: r.SerializeToString())
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


@contextlib.asynccontextmanager
async def grpcio_serving(probe: Probe | None = None, **options: Any) -> AsyncIterator[str]:
    probe = probe or Probe()
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", options.get("max_receive_message_length", 4 << 20)),
    ])
    services = pb.DESCRIPTOR.services_by_name
    server.add_generic_rpc_handlers((
        _grpcio_handlers(services["KV"], KVServicer(probe)),
        _grpcio_handlers(services["Watch"], WatchServicer(probe)),
        _grpcio_handlers(services["Maintenance"], MaintenanceServicer(probe, 3)),
        _grpcio_handlers(services["Lease"], LeaseServicer(probe)),
    ))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@contextlib.asynccontextmanager
async def quorum_serving(**options: Any) -> AsyncIterator[str]:
    async with serving(snapshot_chunks=3, **options) as s:
        yield s.target


# (kind, answer or code, details, (initial metadata, trailing metadata) of the caller's own
# "x-" keys: transport headers differ between servers)
Outcome = tuple[str, Any, str, Any]
Scenario = Callable[[grpc.aio.Channel], Awaitable[Any]]


# grpcio's client refuses a received header block over its soft limit (8 KiB) at random,
# more often the nearer it is to the hard one: grpc.aio's server sends the "abort long"
# details whole (9 KiB), so both limits are raised past anything the scenarios send
_CLIENT_OPTIONS = (("grpc.max_metadata_size", 64 * 1024),
                   ("grpc.absolute_max_metadata_size", 64 * 1024))


async def outcome(scenario: Scenario, target: str) -> Outcome:
    async with channel(target, *_CLIENT_OPTIONS) as ch:
        try:
            answer = await asyncio.wait_for(scenario(ch), STEP_S)
        except grpc.aio.AioRpcError as err:
            metadata = (_own(err.initial_metadata()), _own(err.trailing_metadata()))
            return ("error", err.code(), err.details() or "", metadata)
    if isinstance(answer, WithMetadata):
        return ("ok", answer.answer, "", answer.metadata)
    return ("ok", answer, "", None)


def _own(metadata: Any) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in metadata or () if k.startswith("x-")]


@dataclass
class WithMetadata:
    answer: Any
    metadata: tuple[list[tuple[str, Any]], list[tuple[str, Any]]]


async def _answer_and_metadata(call: Any) -> WithMetadata:
    if hasattr(call, "__aiter__"):
        answer: Any = [str(r).replace("\n", " ") async for r in call]
    else:
        answer = await call
    return WithMetadata(answer, (_own(await call.initial_metadata()),
                                 _own(await call.trailing_metadata())))


def _context(key: str, **kw: Any) -> Scenario:
    async def call(ch: grpc.aio.Channel) -> Any:
        return await _answer_and_metadata(
            rpc.KVStub(ch).Range(pb.RangeRequest(key=key.encode()), **kw))
    return call


def _keepalive(*ids: int) -> Scenario:
    async def call(ch: grpc.aio.Channel) -> Any:
        call = rpc.LeaseStub(ch).LeaseKeepAlive()
        got = []
        for lease in ids:
            await call.write(pb.LeaseKeepAliveRequest(ID=lease))
            got.append(await call.read())
        await call.done_writing()
        while (last := await call.read()) is not grpc.aio.EOF:
            got.append(last)
        return [(r.ID, r.TTL) for r in got]
    return call


async def _watch_with_metadata(ch: grpc.aio.Channel) -> Any:
    call = rpc.WatchStub(ch).Watch(metadata=(("x-md", "1"),))
    for rev in (4, 5):
        await call.write(pb.WatchRequest(
            create_request=pb.WatchCreateRequest(key=b"a", start_revision=rev)))
    await call.done_writing()
    return await _answer_and_metadata(call)


def _range(key: bytes, range_end: bytes = b"", **kw: Any) -> Scenario:
    async def call(ch: grpc.aio.Channel) -> Any:
        return await rpc.KVStub(ch).Range(pb.RangeRequest(key=key, range_end=range_end), **kw)
    return call


def _abort(text: str) -> Scenario:
    return _range(b"abort", text.encode())


async def _put_echo(ch: grpc.aio.Channel) -> Any:
    return await rpc.KVStub(ch).Put(pb.PutRequest(key=b"k", value=bytes(range(256))))


async def _txn(ch: grpc.aio.Channel) -> Any:
    return await rpc.KVStub(ch).Txn(pb.TxnRequest())


async def _unknown_service(ch: grpc.aio.Channel) -> Any:
    return await rpc.ClusterStub(ch).MemberList(pb.MemberListRequest())


async def _too_big(ch: grpc.aio.Channel) -> Any:
    return await rpc.KVStub(ch).Put(pb.PutRequest(key=b"k", value=bytes(5 << 20)))


async def _metadata(ch: grpc.aio.Channel) -> Any:
    got = await rpc.KVStub(ch).Range(pb.RangeRequest(key=b"meta"),
                                     metadata=(("x-a", "1"), ("x-b", "two words")))
    # transport headers differ between servers (user-agent, te...): compare the caller's own
    return sorted((kv.key, kv.value) for kv in got.kvs if kv.key.startswith(b"x-"))


async def _binary_metadata(ch: grpc.aio.Channel) -> Any:
    got = await rpc.KVStub(ch).Range(pb.RangeRequest(key=b"meta"), metadata=(
        ("x-id-bin", bytes(range(256))), ("x-one-bin", b"\x00"), ("x-text", "plain")))
    return sorted((kv.key, kv.value) for kv in got.kvs if kv.key.startswith(b"x-"))


async def _snapshot(ch: grpc.aio.Channel) -> Any:
    return [r.blob[:8] async for r in rpc.MaintenanceStub(ch).Snapshot(pb.SnapshotRequest())]


async def _watch_then_raise(ch: grpc.aio.Channel) -> Any:
    call = rpc.WatchStub(ch).Watch()
    await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"a")))
    await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"raise")))
    return [r.cancel_reason async for r in call]


_SCENARIOS: dict[str, tuple[Scenario, bool | str]] = {
    # name: (scenario, whether the details text must match too; "prefix": quorum's may be
    # cut (it keeps a status message under 4 KiB) but must be the start of grpc's, whole
    # characters only)
    "unary echo": (_put_echo, True),
    "abort ascii": (_abort("key not found"), True),
    "abort percent": (_abort("100% done, 50%% left, %41"), True),
    "abort unicode": (_abort("ключ ✓ 日本"), True),
    "abort controls": (_abort("line1\nline2\ttab\x01"), True),
    "abort empty": (_abort(""), True),
    "abort long": (_abort("x" * 3001 + "é" * 1000), "prefix"),
    "set_code": (_range(b"setcode", b"gone"), True),
    "handler raises": (_range(b"raise"), True),
    "method not served": (_txn, False),
    "service not served": (_unknown_service, False),
    "request too large": (_too_big, False),
    "deadline": (_range(b"sleep", timeout=0.1), True),
    "metadata": (_metadata, True),
    "binary metadata": (_binary_metadata, True),
    "server stream": (_snapshot, True),
    "bidi then raise": (_watch_then_raise, False),
    "initial and trailing metadata": (_context("md-both"), True),
    "initial metadata twice": (_context("md-twice"), True),
    "abort with its own trailing metadata": (_context("md-abort-own"), True),
    "abort with set trailing metadata": (_context("md-abort-set"), True),
    "set_code with trailing metadata": (_context("md-setcode"), True),
    "raise with trailing metadata": (_context("md-raise"), False),
    "headers then abort": (_context("md-headers-then-abort"), True),
    "invalid initial metadata": (_context("md-bad-initial"), True),
    "invalid trailing metadata": (_context("md-bad-trailing"), True),
    "context state": (_context("md-state"), True),
    "context state with a deadline": (_context("md-state", timeout=30), True),
    "bidi with metadata": (_watch_with_metadata, True),
    "auth context": (_context("md-auth"), True),
    "context.read and context.write": (_keepalive(7, 8, 9), True),
    "context.read then abort": (_keepalive(7, -1), True),
}


@pytest.mark.parametrize("name", list(_SCENARIOS))
def test_same_outcome_as_grpcio_server(name: str) -> None:
    scenario, details_too = _SCENARIOS[name]

    async def body() -> None:
        async with grpcio_serving() as reference:
            want = await outcome(scenario, reference)
        async with quorum_serving() as target:
            got = await outcome(scenario, target)
        assert got[:2] == want[:2], (got, want)
        assert got[3] == want[3], (got, want)
        if details_too == "prefix":
            assert got[2] and want[2].startswith(got[2]), (got, want)
        elif details_too:
            assert got[2] == want[2], (got, want)

    run(body)


def test_done_callbacks_see_the_same_state() -> None:
    """add_done_callback runs once the call has ended, on both servers, with the same view
    of cancelled() and done() (the normal end of a call)."""

    async def seen(serve: Any) -> list[tuple[bool, bool]]:
        probe = Probe()
        async with serve(probe) as target:
            got = await outcome(_context("md-done-callback"), target)
            assert got[0] == "ok"
            for _ in range(int(STEP_S / 0.01)):
                if probe.done:
                    break
                await asyncio.sleep(0.01)
        return probe.done

    def ours(probe: Probe) -> Any:
        return _quorum_with(probe)

    async def body() -> None:
        want = await seen(grpcio_serving)
        assert want == [(False, True)]
        assert await seen(ours) == want

    run(body)


@contextlib.asynccontextmanager
async def _quorum_with(probe: Probe) -> AsyncIterator[str]:
    server = build_server(probe, 3)
    port = await server.start("127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
