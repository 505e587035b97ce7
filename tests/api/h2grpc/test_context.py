"""Context.cancelled(), done() and done callbacks when a call is cancelled, on quorum's
server only: grpc.aio 1.85 reports cancelled() False and done() False even for a call its
client cancelled (inside the handler and in its done callback), so there is nothing to
compare with; quorum's answers follow grpc's documented meaning."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc

from .support import STEP_S, channel, run, serving


async def _until_two(done: list[tuple[bool, bool]], n: int = 2) -> None:
    for _ in range(int(STEP_S / 0.01)):
        if len(done) >= n:
            return
        await asyncio.sleep(0.01)


async def _until_one(done: list[tuple[bool, bool]]) -> None:
    await _until_two(done, 1)


@pytest.mark.parametrize("how", ["client cancel", "deadline", "connection closed"])
def test_cancelled_call_reports_cancelled_and_done(how: str) -> None:
    async def main() -> None:
        async with serving() as s:
            ch = grpc.aio.insecure_channel(s.target)
            try:
                call = rpc.KVStub(ch).Range(pb.RangeRequest(key=b"md-sleep"),
                                            timeout=0.2 if how == "deadline" else None)
                await asyncio.wait_for(s.probe.started.wait(), STEP_S)
                if how == "client cancel":
                    call.cancel()
                elif how == "connection closed":
                    await ch.close()
                else:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await asyncio.wait_for(call, STEP_S)
                    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                await _until_two(s.probe.done)
            finally:
                await ch.close()
            # the handler's view when cancelled, then its done callback's
            assert s.probe.done == [(True, True), (True, True)]

    run(main)


def test_a_call_that_ends_normally_is_done_not_cancelled() -> None:
    async def main() -> None:
        async with serving() as s, channel(s.target) as ch:
            await asyncio.wait_for(
                rpc.KVStub(ch).Range(pb.RangeRequest(key=b"md-done-callback")), STEP_S)
            await _until_one(s.probe.done)
            await asyncio.sleep(0.1)  # a second, wrong, callback would come within turns
            assert s.probe.done == [(False, True)]

    run(main)
