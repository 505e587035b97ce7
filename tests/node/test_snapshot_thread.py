"""Automatic snapshots in the asyncio runtime: captured on the event loop, encoded in a thread,
written between Readies. Writes keep flowing meanwhile, and a crash halfway leaves the previous
snapshot and the WAL intact."""

from __future__ import annotations

import asyncio
import random
import sys
import threading
from collections.abc import Iterator

import pytest

from quorum.errors import NodeStopped
from quorum.node.core import NodeCore, bootstrap_data
from quorum.node.envelope import MemberInfo
from quorum.node.kv import KvStateMachine
from quorum.node.server import ENCODE_SWITCH_INTERVAL_S, RaftServer
from quorum.node.statemachine import CounterStateMachine, StateMachine
from quorum.node.storage import DurableNodeStorage, MemoryNodeStorage, NodeStorage, bootstrap
from quorum.raft import Config
from quorum.state import commands as sc
from quorum.storage.durable import DurableStorage, StorageOptions
from quorum.storage.simfs import SimFileSystem, SimulatedCrash

MEMBERS = (MemberInfo(1, peer_url="127.0.0.1:1"),)


class GatedCounter(CounterStateMachine):
    """A counter whose snapshot encoding waits for a gate (at most ``gate_timeout_s``), and
    which counts the entries applied while an encode is under way."""

    snapshot_captures_state = True

    def __init__(self, gate_timeout_s: float) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate_timeout_s = gate_timeout_s
        self.encoding = False
        self.encodes = 0
        self.applied_during_encode = 0
        self.switch_interval_s = 0.0  # as seen by the encode

    def apply(self, index: int, data: bytes) -> int:
        if self.encoding:
            self.applied_during_encode += 1
        return super().apply(index, data)

    def snapshot(self) -> Iterator[bytes]:
        image = b"".join(super().snapshot())  # captured now, as the flag promises

        def encode() -> Iterator[bytes]:
            self.encoding = True
            self.encodes += 1
            self.switch_interval_s = sys.getswitchinterval()
            self.gate.wait(self.gate_timeout_s)
            self.encoding = False
            yield image

        return encode()


async def _single_node(storage: NodeStorage, sm: StateMachine, *, snapshot_entries: int,
                       background: bool = True) -> tuple[NodeCore, RaftServer]:
    core = NodeCore(Config(id=1), storage, sm, random.Random(1), lambda _m: None,
                    members=MEMBERS, snapshot_entries=snapshot_entries,
                    snapshot_catchup_entries=2, request_timeout_ticks=10_000)
    server = RaftServer(core, tick_s=0.01, background_snapshots=background)
    await server.start()
    core.campaign()
    server.wake()
    while not core.is_leader:
        await asyncio.sleep(0.005)
    return core, server


def _add(n: int) -> bytes:
    return n.to_bytes(8, "big", signed=True)


@pytest.mark.parametrize("background", [True, False])
def test_a_put_commits_while_the_snapshot_is_encoded(background: bool) -> None:
    """In the background the encode waits for the gate while a later put is applied; with
    the synchronous path (background off) the encode blocks the loop until its timeout, so
    nothing is applied meanwhile: the test tells the two apart."""

    async def scenario() -> None:
        default_switch_s = sys.getswitchinterval()
        storage = MemoryNodeStorage()
        bootstrap(storage, (1,), bootstrap_data(MEMBERS, CounterStateMachine()))
        sm = GatedCounter(gate_timeout_s=10 if background else 0.3)
        core, server = await _single_node(storage, sm, snapshot_entries=5,
                                          background=background)
        while sm.encodes == 0:
            await asyncio.wait_for(server.propose(_add(1)), 5)
        before = sm.applied_during_encode
        # another put while the snapshot is (in the background) still being encoded
        await asyncio.wait_for(server.propose(_add(10)), 5)
        if background:
            assert sm.encoding and sm.applied_during_encode == before + 1
            assert core.snapshot_in_flight is not None
            # the loop gets the GIL back quickly while the encode runs, and only then
            assert sm.switch_interval_s == ENCODE_SWITCH_INTERVAL_S
            sm.gate.set()
            while core.snapshot_in_flight is not None:
                await asyncio.sleep(0.005)
            assert sys.getswitchinterval() == default_switch_s
        else:
            assert sm.applied_during_encode == 0
        snap_index = core.snapshot_index
        assert 5 <= snap_index < core.applied
        assert storage.log.snapshot().metadata.index == snap_index
        assert storage.log.first_index() == snap_index - 2 + 1  # compacted, catch-up tail kept
        await server.stop()

    asyncio.run(scenario())


def test_a_snapshot_installed_meanwhile_makes_the_background_one_stale() -> None:
    """A newer snapshot reaching storage while one is being encoded (as one from the leader
    would): the encoded one is dropped, the node keeps serving and snapshots again later."""

    async def scenario() -> None:
        storage = MemoryNodeStorage()
        bootstrap(storage, (1,), bootstrap_data(MEMBERS, CounterStateMachine()))
        sm = GatedCounter(gate_timeout_s=10)
        core, server = await _single_node(storage, sm, snapshot_entries=5)
        for _ in range(8):
            await server.propose(_add(1))
        job = core.snapshot_in_flight
        assert job is not None and job.index == 6
        # a newer snapshot lands first (written synchronously here, between Readies)
        sm.gate_timeout_s = 0
        core.take_snapshot()
        newer = core.snapshot_index
        assert newer > job.index
        sm.gate.set()
        while core.snapshot_in_flight is not None:
            await asyncio.sleep(0.005)
        assert core.snapshot_index == newer
        assert storage.log.snapshot().metadata.index == newer
        for _ in range(6):
            await server.propose(_add(1))
        while core.snapshot_in_flight is not None or core.snapshot_index == newer:
            await asyncio.sleep(0.005)
        assert storage.log.snapshot().metadata.index == core.snapshot_index > newer
        await server.stop()

    asyncio.run(scenario())


def _put(i: int) -> bytes:
    return sc.encode_command(sc.PutRequest(b"k%04d" % i, b"v%d" % i))


def _open(fs: SimFileSystem) -> DurableNodeStorage:
    return DurableNodeStorage(DurableStorage.open(fs, "/data",
                                                  StorageOptions(segment_bytes=16 * 1024)))


def test_a_crash_while_writing_a_background_snapshot_keeps_the_previous_one_and_the_wal() -> None:
    async def scenario() -> tuple[SimFileSystem, list[int], int]:
        fs = SimFileSystem(random.Random(7))
        storage = _open(fs)
        bootstrap(storage, (1,), bootstrap_data(MEMBERS, KvStateMachine()))
        kv = KvStateMachine()
        core, server = await _single_node(storage, kv, snapshot_entries=40)
        for i in range(45):  # the first snapshot (at 40) is written and installed
            await server.propose(_put(i))
        while core.snapshot_in_flight is not None or core.snapshot_index < 40:
            await asyncio.sleep(0.005)
        first = core.snapshot_index

        def crash_in_snapshot_file(path: str) -> None:
            if "/snap/" in path:
                raise SimulatedCrash(f"power lost while syncing {path}")

        fs.on_sync = crash_in_snapshot_file
        acked = list(range(45))
        for i in range(45, 200):
            try:
                await asyncio.wait_for(server.propose(_put(i)), 5)
            except NodeStopped:
                break
            acked.append(i)
        assert isinstance(server.fatal_error, SimulatedCrash), server.fatal_error
        await server.stop()
        return fs, acked, first

    fs, acked, first = asyncio.run(scenario())
    assert len(acked) < 200, "the second snapshot was never written"
    fs.on_sync = None
    fs.crash()
    storage = _open(fs)
    assert storage.log.snapshot().metadata.index == first  # the previous snapshot survives
    kv = KvStateMachine()
    core = NodeCore(Config(id=1), storage, kv, random.Random(2), lambda _m: None,
                    members=MEMBERS, snapshot_entries=0)
    core.campaign()  # the WAL replays everything acknowledged once it leads and commits
    from quorum.node.ready import process_ready, run_sync

    async def persist_now(rd: object) -> None:
        core.persist(rd)  # type: ignore[arg-type]

    for _ in range(20):
        core.drain()
        while core.has_ready():
            run_sync(process_ready(core, core.ready(), persist_now))
            core.drain()
    present = {kv_.key for kv_ in kv.store.range(sc.RangeRequest(b"k", b"l")).kvs}
    assert {b"k%04d" % i for i in acked} <= present
