"""Three quorum nodes in this process over loopback TCP: memory storage, no client ports.

Shared by tests that drive QuorumProcess directly (tests/api)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

from quorum.api.process import QuorumProcess
from quorum.node.config import NodeConfig, PeerSpec
from quorum.node.storage import MemoryNodeStorage


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def cluster(**config: Any) -> AsyncIterator[list[QuorumProcess]]:
    """The three nodes, started; ``config`` overrides NodeConfig fields. A test that stops a
    node itself removes it from the yielded list, so it is not stopped twice."""
    specs = tuple(PeerSpec(i, f"127.0.0.1:{_free_port()}") for i in (1, 2, 3))
    procs = [
        QuorumProcess(NodeConfig(id=s.id, peer_listen=s.peer_url, client_listen="",
                                 etcd_listen="", initial_cluster=specs, tick_ms=10,
                                 fsync=False, **config),
                      storage=MemoryNodeStorage())
        for s in specs
    ]
    running: list[QuorumProcess] = []
    try:
        for p in procs:
            await p.start()
            running.append(p)
        yield running
    finally:
        for p in running:
            await p.stop()


async def leader_of(procs: list[QuorumProcess]) -> QuorumProcess:
    """The node every node agrees leads (waits up to about 10 s)."""
    for _ in range(1000):
        leaders = [p for p in procs if p.core.is_leader]
        if len(leaders) == 1 and all(p.core.leader_id == leaders[0].config.id for p in procs):
            return leaders[0]
        await asyncio.sleep(0.01)
    raise AssertionError("no leader elected")
