"""`quorum serve --auto-compaction-retention` on three real server processes: the history
older than the retention becomes compacted on every node, by itself, while recent revisions
stay readable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from quorum.client import AsyncClient
from quorum.errors import RevisionCompacted
from quorum.verify.procs import ProcCluster

pytestmark = [pytest.mark.timeout(120), pytest.mark.xdist_group("procs")]

RETENTION = "3s"  # periodic mode: the leader compacts every 3 s, keeping at least 3 s


async def _compact_revisions(endpoints: list[str]) -> list[int]:
    out = []
    for endpoint in endpoints:
        async with AsyncClient([endpoint], timeout_s=5) as one:
            out.append((await one.hash_kv(0)).compact_revision)
    return out


async def _exercise(cluster: ProcCluster) -> None:
    async with AsyncClient(cluster.endpoints(), timeout_s=10) as client:
        first = (await client.put(b"k", b"first")).revision
        loop = asyncio.get_running_loop()
        written: list[tuple[float, int]] = []
        deadline = loop.time() + 60
        while True:  # a write every 50 ms until the first one is compacted everywhere
            written.append((loop.time(), (await client.put(b"k", b"v")).revision))
            if min(await _compact_revisions(cluster.endpoints())) > first:
                break
            assert loop.time() < deadline, "nothing was compacted within 60 s"
            await asyncio.sleep(0.05)
        with pytest.raises(RevisionCompacted):
            await client.get(b"k", revision=first)
        now = loop.time()
        recent = [rev for t, rev in written if t > now - 1.0]  # well inside the 3 s window
        assert recent
        for rev in recent:
            kv = await client.get(b"k", revision=rev)
            assert kv is not None and kv.mod_revision == rev


def test_serve_compacts_history_older_than_the_retention(tmp_path: Path) -> None:
    with ProcCluster(3, tmp_path, extra_args=("--auto-compaction-retention", RETENTION)) as c:
        c.wait_ports()
        asyncio.run(asyncio.wait_for(_exercise(c), 90))
