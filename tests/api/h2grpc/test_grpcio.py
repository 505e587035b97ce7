"""quorum.api.h2grpc driven by grpcio's own client (grpc.aio channels and generated stubs):
status codes and messages, limits, deadlines, cancellation, streaming in both directions
across flow-control windows, compression, metadata, concurrency and graceful stop."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc

from .support import SNAPSHOT_CHUNK, STEP_S, blob, channel, run, serving, still_serving


async def _error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(call, STEP_S)  # type: ignore[arg-type]
    return err.value


def test_unary_ok() -> None:
    async def body() -> None:
        async with serving() as s, channel(s.target) as ch:
            got = await rpc.KVStub(ch).Put(pb.PutRequest(key=b"k", value=b"value"))
            assert (got.prev_kv.key, got.prev_kv.value, got.header.revision) == (b"k", b"value", 5)
            got = await rpc.KVStub(ch).Range(pb.RangeRequest(key=b"x"))
            assert got.count == 1 and got.kvs[0].value == b"x"

    run(body)


@pytest.mark.parametrize("message", [
    "plain text", "100% sure", "ключ не найден: ✓", "tab\tand\nnewline", "",
])
def test_abort_code_and_message(message: str) -> None:
    """The abort's code arrives, and its text survives percent-encoding (non-ASCII too)."""

    async def body() -> None:
        async with serving() as s, channel(s.target) as ch:
            err = await _error(rpc.KVStub(ch).Range(
                pb.RangeRequest(key=b"abort", range_end=message.encode())))
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert (err.details() or "") == message
            await still_serving(s.target)

    run(body)


def test_unexpected_exception_is_unknown() -> None:
    async def body() -> None:
        async with serving() as s, channel(s.target) as ch:
            err = await _error(rpc.KVStub(ch).Range(pb.RangeRequest(key=b"raise")))
            assert err.code() == grpc.StatusCode.UNKNOWN
            assert "planted failure" in (err.details() or "")
            await still_serving(s.target)

    run(body)


def test_unknown_method_is_unimplemented() -> None:
    async def body() -> None:
        async with serving() as s, channel(s.target) as ch:
            # a method of a served service that the servicer does not define
            err = await _error(rpc.KVStub(ch).Txn(pb.TxnRequest()))
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED
            # a service that is not registered at all
            err = await _error(rpc.LeaseStub(ch).LeaseGrant(pb.LeaseGrantRequest(TTL=5)))
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED
            # a path no descriptor has
            call = ch.unary_unary("/no.Such/Method", request_serializer=None,
                                  response_deserializer=None)
            err = await _error(call(b""))
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED
            await still_serving(s.target)

    run(body)


def test_request_over_max_receive_length_is_resource_exhausted() -> None:
    async def body() -> None:
        async with serving(max_receive_message_length=64 * 1024) as s, channel(s.target) as ch:
            kv = rpc.KVStub(ch)
            err = await _error(kv.Put(pb.PutRequest(key=b"k", value=b"x" * 100_000)))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # the same connection goes on serving
            got = await kv.Put(pb.PutRequest(key=b"k", value=b"x" * 60_000))
            assert got.header.revision == 60_000
            assert s.probe.calls == ["Put"]

    run(body)


def test_deadline_exceeded_cancels_the_handler() -> None:
    async def body() -> None:
        async with serving() as s, channel(s.target) as ch:
            err = await _error(rpc.KVStub(ch).Range(pb.RangeRequest(key=b"sleep"), timeout=0.2))
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.wait_for(s.probe.cancelled.wait(), STEP_S)
            await still_serving(s.target)

    run(body)


def test_client_cancel_cancels_the_handler() -> None:
    async def body() -> None:
        async with serving() as s, channel(s.target) as ch:
            call = rpc.KVStub(ch).Range(pb.RangeRequest(key=b"sleep"))
            await asyncio.wait_for(s.probe.started.wait(), STEP_S)
            assert call.cancel()
            await asyncio.wait_for(s.probe.cancelled.wait(), STEP_S)
            got = await rpc.KVStub(ch).Range(pb.RangeRequest(key=b"after"))
            assert got.kvs[0].key == b"after"

    run(body)


def test_bidi_stream_many_messages_both_ways() -> None:
    async def body() -> None:
        n = 2000
        async with serving() as s, channel(s.target) as ch:
            call = rpc.WatchStub(ch).Watch()
            got: list[pb.WatchResponse] = []

            async def reader() -> None:
                async for resp in call:
                    got.append(resp)

            task = asyncio.create_task(reader())
            for i in range(n):
                await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(
                    key=b"k%d" % i + bytes(i % 300), start_revision=i)))
            await call.done_writing()
            await asyncio.wait_for(task, STEP_S * 3)
            assert [r.watch_id for r in got] == list(range(n))
            assert all(r.cancel_reason == f"k{i}" + "\0" * (i % 300)
                       for i, r in enumerate(got))
            assert await call.code() == grpc.StatusCode.OK

    run(body)


def test_server_stream_far_above_the_client_window() -> None:
    """8 MB of answers against grpcio's 64 KiB stream window (BDP probing off): the server
    must wait for window updates many times, and every byte arrives in order."""

    async def body() -> None:
        chunks = 128
        async with serving(snapshot_chunks=chunks) as s, \
                channel(s.target, ("grpc.http2.bdp_probe", 0)) as ch:
            call = rpc.MaintenanceStub(ch).Snapshot(pb.SnapshotRequest())
            got = [resp async for resp in call]
            assert len(got) == chunks
            for i, resp in enumerate(got):
                assert resp.blob == blob(i, SNAPSHOT_CHUNK), f"chunk {i} differs"
                assert resp.remaining_bytes == (chunks - i - 1) * SNAPSHOT_CHUNK
            assert await call.code() == grpc.StatusCode.OK

    run(body)


def test_large_unary_answer_under_a_small_window() -> None:
    """A unary answer larger than the client's window takes the flow-controlled path."""

    async def body() -> None:
        async with serving() as s, channel(s.target, ("grpc.http2.bdp_probe", 0)) as ch:
            got = await rpc.KVStub(ch).Range(pb.RangeRequest(key=b"big", limit=3_000_000))
            assert got.kvs[0].value == blob(0, 3_000_000)

    run(body)


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_compressed_requests(compression: grpc.Compression) -> None:
    async def body() -> None:
        async with serving() as s, channel(s.target) as ch:
            kv = rpc.KVStub(ch)
            value = b"compressible " * 10_000
            got = await kv.Put(pb.PutRequest(key=b"z", value=value), compression=compression)
            assert got.prev_kv.value == value
            call = rpc.WatchStub(ch).Watch(compression=compression)
            for i in range(5):
                await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(
                    key=b"g" * 1000, start_revision=i)))
            await call.done_writing()
            assert [r.watch_id async for r in call] == list(range(5))

    run(body)


def test_metadata_reaches_the_handler() -> None:
    async def body() -> None:
        async with serving() as s, channel(s.target) as ch:
            md = (("x-token", "secret"), ("x-trace", "a,b"))
            got = await rpc.KVStub(ch).Range(pb.RangeRequest(key=b"meta"), metadata=md)
            seen = dict(s.probe.metadata[-1])
            assert seen["x-token"] == "secret"
            assert seen["x-trace"] == "a,b"
            # transport headers are not metadata
            assert not {":path", "content-type", "te", "grpc-timeout"} & set(seen)
            assert {kv.key.decode(): kv.value.decode() for kv in got.kvs} == seen

    run(body)


def test_many_concurrent_calls_on_one_channel() -> None:
    async def body() -> None:
        async with serving() as s, channel(s.target) as ch:
            kv = rpc.KVStub(ch)
            n = 300
            answers = await asyncio.wait_for(asyncio.gather(*(
                kv.Put(pb.PutRequest(key=b"c%d" % i, value=b"v" * i)) for i in range(n)
            )), STEP_S * 3)
            assert [a.prev_kv.key for a in answers] == [b"c%d" % i for i in range(n)]
            assert [a.header.revision for a in answers] == list(range(n))
            assert len(s.server.connections) == 1

    run(body)


def test_stop_with_grace_finishes_in_flight_and_refuses_new() -> None:
    async def body() -> None:
        async with serving() as s, channel(s.target) as ch:
            kv = rpc.KVStub(ch)
            await kv.Put(pb.PutRequest(key=b"warm"))  # the connection is up
            in_flight = asyncio.ensure_future(kv.Range(pb.RangeRequest(key=b"slow")))
            await asyncio.wait_for(s.probe.started.wait(), STEP_S)
            stopping = asyncio.create_task(s.server.stop(grace=30))
            await asyncio.sleep(0)  # stop() has sent GOAWAY and closed the listener
            # a new call is refused: the open connection is going away, new ones are refused
            err = await _error(kv.Put(pb.PutRequest(key=b"late"), wait_for_ready=False))
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert not stopping.done()
            s.probe.release.set()
            got = await asyncio.wait_for(in_flight, STEP_S)
            assert got.kvs[0].key == b"slow"
            await asyncio.wait_for(stopping, STEP_S)
            assert not s.probe.cancelled.is_set()
            assert "Put" not in s.probe.calls[1:]

    run(body)


def test_stream_window_credit_after_small_messages() -> None:
    """A small message, then one of the largest allowed size, on a bidi stream whose window
    barely holds the largest: the small one's bytes must be credited back once the handler
    has read it, or the large one waits forever for window."""

    async def body() -> None:
        async with serving(max_receive_message_length=1000, stream_window=1000) as s, \
                channel(s.target) as ch:
            call = rpc.WatchStub(ch).Watch()
            for i, size in enumerate((10, 900, 50, 950, 1, 990)):
                req = pb.WatchRequest(create_request=pb.WatchCreateRequest(
                    key=b"k" * size, start_revision=i))
                assert req.ByteSize() <= 1000
                await asyncio.wait_for(call.write(req), STEP_S)
                got = await asyncio.wait_for(call.read(), STEP_S)
                assert got.watch_id == i
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK

    run(body)


def test_client_cancel_stops_a_server_stream_waiting_for_window() -> None:
    """The client reads one chunk of a large snapshot and cancels: the server's generator,
    blocked on the client's window, is stopped and its stream released."""

    async def body() -> None:
        async with serving(snapshot_chunks=128) as s, \
                channel(s.target, ("grpc.http2.bdp_probe", 0)) as ch:
            call = rpc.MaintenanceStub(ch).Snapshot(pb.SnapshotRequest())
            first = await asyncio.wait_for(call.read(), STEP_S)
            assert first.blob == blob(0, SNAPSHOT_CHUNK)
            assert call.cancel()
            await asyncio.wait_for(s.probe.cancelled.wait(), STEP_S)
            got = await rpc.KVStub(ch).Range(pb.RangeRequest(key=b"after"))
            assert got.kvs[0].key == b"after"
            (conn,) = s.server.connections
            assert conn.streams == {}

    run(body)


def test_stop_after_grace_ends_a_call_that_does_not_finish() -> None:
    """A bidi call that never ends: stop(grace) waits, then cancels the handler and closes;
    the client sees the call fail rather than hang."""

    async def body() -> None:
        async with serving() as s, channel(s.target) as ch:
            call = rpc.WatchStub(ch).Watch()
            await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"a")))
            assert (await asyncio.wait_for(call.read(), STEP_S)).cancel_reason == "a"
            await asyncio.wait_for(s.server.stop(grace=0.2), STEP_S)
            await asyncio.wait_for(s.probe.cancelled.wait(), STEP_S)
            assert not s.server.connections
            code = await asyncio.wait_for(call.code(), STEP_S)
            assert code == grpc.StatusCode.UNAVAILABLE  # the connection went away

    run(body)


def test_set_code_without_raising() -> None:
    """A unary handler that sets a code and details and returns: the call ends with that
    status, as with grpc.aio."""

    async def body() -> None:
        async with serving() as s, channel(s.target) as ch:
            err = await _error(rpc.KVStub(ch).Range(
                pb.RangeRequest(key=b"setcode", range_end=b"no such key")))
            assert err.code() == grpc.StatusCode.NOT_FOUND
            assert err.details() == "no such key"

    run(body)


@pytest.mark.parametrize(("key", "code", "text"), [
    (b"abort", grpc.StatusCode.OUT_OF_RANGE, "stream aborted"),
    (b"raise", grpc.StatusCode.UNKNOWN, "stream failed"),
])
def test_stream_ends_with_status_after_messages(key: bytes, code: grpc.StatusCode,
                                               text: str) -> None:
    """Answers already sent arrive, then the status of the failure, in the trailers."""

    async def body() -> None:
        async with serving() as s, channel(s.target) as ch:
            call = rpc.WatchStub(ch).Watch()
            for i in range(3):
                await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(
                    key=b"ok", start_revision=i)))
            got = [await asyncio.wait_for(call.read(), STEP_S) for _ in range(3)]
            assert [r.watch_id for r in got] == [0, 1, 2]
            await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key)))
            err = await _error(call.read())
            assert err.code() == code
            assert text in (err.details() or "")
            await still_serving(s.target)

    run(body)


def test_oversized_message_inside_a_stream_is_resource_exhausted() -> None:
    async def body() -> None:
        async with serving(max_receive_message_length=64 * 1024) as s, channel(s.target) as ch:
            call = rpc.WatchStub(ch).Watch()
            await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"a")))
            assert (await asyncio.wait_for(call.read(), STEP_S)).cancel_reason == "a"
            await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(
                key=b"b" * 100_000)))
            err = await _error(call.read())
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.wait_for(s.probe.cancelled.wait(), STEP_S)
            await still_serving(s.target)

    run(body)
