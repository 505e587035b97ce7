"""Rolling upgrade: three nodes on an older release (peer protocol 1) are moved to the current
code (protocol 2) one at a time while a client writes throughout.

What docs/transport.md "Versions" claims, checked step by step:

* version 1 and version 2 nodes refuse each other at the first frame, with a logged reason
  (each side's log names the other's version);
* the side with a majority keeps serving writes: the two old nodes after the first step, the
  two new nodes after the second, all three after the third;
* the minority node learns nothing from the other version (its revision does not move), so no
  node is ever sent an entry it cannot apply;
* no node diverges: at every step all nodes hash the same history up to the lowest revision
  any of them has (HashKV at that revision), and after the last step all hold the same keys
  and the same hash;
* no acknowledged write is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from quorum.client.aio import AsyncClient
from quorum.errors import QuorumError
from quorum.transport.codec import PROTOCOL_VERSION

from .cluster import (
    CURRENT,
    FORMAT1_COMMIT,
    PREBATCH_COMMIT,
    Code,
    UpgradeCluster,
    patched_current,
)
from .workload import ALL, NodeState, Written, converged, write_history

pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("upgrade")]

PREFIX = b"roll/"


class Writer:
    """Puts roll/<n> = n from several tasks until stopped; remembers what was acknowledged.
    A failed put (no leader yet, node stopping) is retried as a new key after a pause."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.acked: list[int] = []
        self.failed = 0
        self._next = 0
        self._stop = False

    async def run(self, tasks: int = 4) -> None:
        await asyncio.gather(*(self._one() for _ in range(tasks)))

    async def _one(self) -> None:
        while not self._stop:
            self._next += 1
            n = self._next
            try:
                await self.client.put(PREFIX + b"%08d" % n, b"%d" % n, timeout_s=3)
                self.acked.append(n)
            except QuorumError:
                self.failed += 1
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        self._stop = True

    async def progress(self, count: int, timeout_s: float = 30.0) -> None:
        """Wait for ``count`` more acknowledgements: the cluster serves writes."""
        target = len(self.acked) + count
        deadline = time.monotonic() + timeout_s
        while len(self.acked) < target:
            assert time.monotonic() < deadline, (
                f"writes stalled: {len(self.acked)} acked, {self.failed} failed")
            await asyncio.sleep(0.05)


async def revision_of(cluster: UpgradeCluster, node_id: int) -> int:
    async with AsyncClient([cluster.nodes[node_id].client_url], timeout_s=3) as c:
        return (await c.range(ALL, ALL, count_only=True, serializable=True)).revision


async def no_divergence(cluster: UpgradeCluster) -> dict[int, int]:
    """HashKV of every node at the lowest revision any node has: replicas of one log agree on
    every prefix of it, whichever version applied it. Returns each node's revision."""
    revisions = {i: await revision_of(cluster, i) for i in cluster.nodes}
    common = min(revisions.values())
    hashes = {}
    for i, node in cluster.nodes.items():
        async with AsyncClient([node.client_url], timeout_s=3) as c:
            hashes[i] = (await c.hash_kv(common)).hash
    assert len(set(hashes.values())) == 1, f"diverged at revision {common}: {hashes}"
    return revisions


async def settled(cluster: UpgradeCluster, timeout_s: float = 10.0) -> None:
    """Once writes stop, every node reaches the same revision (and, by no_divergence, the
    same HashKV there)."""
    deadline = time.monotonic() + timeout_s
    while True:
        revisions = await no_divergence(cluster)
        if len(set(revisions.values())) == 1:
            return
        assert time.monotonic() < deadline, f"nodes diverge: revisions {revisions} never meet"
        await asyncio.sleep(0.2)


async def refused_each_other(cluster: UpgradeCluster, new: set[int], old: set[int],
                             timeout_s: float = 15.0) -> None:
    """Each new node logged refusing protocol 1 and each old node refusing the current
    protocol (every node dials every other, so each side sees the other's first frame)."""
    wanted = {i: "unsupported protocol version 1" for i in new}
    wanted |= {i: f"unsupported protocol version {PROTOCOL_VERSION}" for i in old}
    deadline = time.monotonic() + timeout_s
    while True:
        missing = {i: text for i, text in wanted.items() if text not in cluster.log_text(i)}
        if not missing:
            return
        assert time.monotonic() < deadline, f"no logged refusal: {missing}"
        await asyncio.sleep(0.2)


async def stays_put(cluster: UpgradeCluster, node_id: int, writer: Writer) -> None:
    """The minority node's revision does not move while the majority commits writes: it is
    sent nothing by the other version (and applies nothing on its own)."""
    before = await revision_of(cluster, node_id)
    await writer.progress(40)
    assert await revision_of(cluster, node_id) == before


async def upgrade(cluster: UpgradeCluster, node_id: int, new: Code, crash: bool) -> None:
    """Stop ``node_id`` (SIGTERM, or SIGKILL if ``crash``) and start it on ``new``."""
    if crash:
        cluster.kill(node_id)
    else:
        assert cluster.stop(node_id) == 0, f"node {node_id} did not stop cleanly"
    cluster.start(node_id, new)
    cluster.wait_ports(only=node_id)


async def missing_acked(endpoints: list[str], acked: list[int]) -> list[int]:
    async with AsyncClient(endpoints, timeout_s=10) as c:
        present = {int(kv.value) for kv in (await c.get_prefix(PREFIX)).kvs}
    return sorted(set(acked) - present)


async def next_to_upgrade(cluster: UpgradeCluster, old: set[int], leader_first: bool) -> int:
    """The old node that leads the old nodes (``leader_first``), or one that does not. While
    the old nodes are the majority one of them leads; afterwards the choice is arbitrary."""
    if len(old) * 2 <= len(cluster.nodes):
        return min(old)
    leader = await cluster.leader_among(old)
    return leader if leader_first else min(old - {leader})


async def rolling(cluster: UpgradeCluster, old_code: Code, new_code: Code,
                  leader_first: bool, refusal_wait_s: float = 15.0,
                  crash: bool = False) -> None:
    cluster.start_all(old_code)
    await cluster.leader_among({1, 2, 3})
    async with AsyncClient(cluster.endpoints(), timeout_s=10) as client:
        written: Written = await write_history(client, rounds=1)
    states = await converged(cluster.endpoints(), written)
    assert len(set(states.values())) == 1, f"old nodes diverge: {states}"
    history: NodeState = next(iter(states.values()))

    old, new = set(cluster.nodes), set()
    async with AsyncClient(cluster.endpoints(), timeout_s=10) as client:
        writer = Writer(client)
        load = asyncio.create_task(writer.run())
        try:
            await writer.progress(50)
            await no_divergence(cluster)
            while old:
                node_id = await next_to_upgrade(cluster, old, leader_first)
                await upgrade(cluster, node_id, new_code, crash)
                old.remove(node_id)
                new.add(node_id)
                majority = new if len(new) > len(old) else old
                minority = set(cluster.nodes) - majority
                await cluster.leader_among(majority)
                await writer.progress(40)  # the majority's version serves writes
                if minority:
                    await refused_each_other(cluster, new, old, refusal_wait_s)
                    for m in minority:
                        await stays_put(cluster, m, writer)
                await no_divergence(cluster)
        finally:
            writer.stop()
            with contextlib.suppress(QuorumError, TimeoutError):
                await asyncio.wait_for(load, 15)

    assert await missing_acked(cluster.endpoints(), writer.acked) == []
    await settled(cluster)
    states = await converged(cluster.endpoints(), written)
    assert len(set(states.values())) == 1, f"nodes diverge after the upgrade: {states}"
    final = next(iter(states.values()))
    # what the old code wrote before the upgrade began is still there as it was
    assert final.probe == history.probe
    assert final.lease == history.lease
    assert final.compact_revision == history.compact_revision
    assert final.events[:len(history.events)] == history.events


LEADER_FIRST, FOLLOWERS_FIRST = True, False


def test_rolling_upgrade_from_protocol1_leader_first(tmp_path: Path,
                                                     releases: dict[str, Code]) -> None:
    """dedeab2 -> current, the protocol change alone (format 2 snapshots on both sides); each
    step upgrades the node leading the old ones, so every step forces an election."""
    with UpgradeCluster(tmp_path, 21) as cluster:
        asyncio.run(rolling(cluster, releases[PREBATCH_COMMIT], CURRENT, LEADER_FIRST))


def test_rolling_upgrade_from_format1_followers_first(tmp_path: Path,
                                                      releases: dict[str, Code]) -> None:
    """ec25af5 -> current, format 1 snapshots on the old nodes too; the old leader goes
    last, so the new majority forms while it still believes it leads."""
    with UpgradeCluster(tmp_path, 22) as cluster:
        asyncio.run(rolling(cluster, releases[FORMAT1_COMMIT], CURRENT, FOLLOWERS_FIRST))


@pytest.mark.torture
@pytest.mark.parametrize("attempt", range(3))
@pytest.mark.parametrize("commit", [FORMAT1_COMMIT, PREBATCH_COMMIT])
@pytest.mark.parametrize("leader_first", [LEADER_FIRST, FOLLOWERS_FIRST],
                         ids=["leader-first", "followers-first"])
@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "sigkill"])
def test_rolling_upgrade_campaign(tmp_path: Path, releases: dict[str, Code], commit: str,
                                  leader_first: bool, crash: bool, attempt: int) -> None:
    """Every release and order, each node stopped cleanly or killed (fsync on then),
    repeated: elections and link timing differ each run."""
    subnet = 100 + 40 * crash + 20 * leader_first + 10 * (commit == FORMAT1_COMMIT) + attempt
    with UpgradeCluster(tmp_path, subnet, fsync=crash) as cluster:
        asyncio.run(rolling(cluster, releases[commit], CURRENT, leader_first, crash=crash))


# --- the same checks against the bug they exist for -----------------------------------------

VERSION_LINE = "PROTOCOL_VERSION: Final = 3\n"


def code_speaking_protocol1(dest: Path) -> Code:
    """The current code with the version bump undone: it writes batched entries and talks to
    version 1 nodes."""
    return patched_current(dest, "current-speaking-protocol-1", "transport/codec.py",
                           VERSION_LINE, "PROTOCOL_VERSION: Final = 1\n")


def test_planted_no_version_bump_fails_the_rolling_upgrade(tmp_path: Path,
                                                           releases: dict[str, Code]) -> None:
    """Without the bump, nothing refuses anything: the first step's check fails."""
    buggy = code_speaking_protocol1(tmp_path / "buggy")
    with UpgradeCluster(tmp_path / "cluster", 25) as cluster, \
            pytest.raises(AssertionError, match="no logged refusal"):
        # Followers first: a buggy node talks to the old ones, so had it been the old
        # leader it could win the next election and fail the leader check before the one
        # this test is about. The refusals appear within a second when they happen.
        asyncio.run(rolling(cluster, releases[PREBATCH_COMMIT], buggy, FOLLOWERS_FIRST, 3.0))


async def lead_from(cluster: UpgradeCluster, members: set[int]) -> int:
    """Make a node of ``members`` the leader (moving leadership if needed); return it."""
    for _ in range(5):
        leader = await cluster.leader_among(set(cluster.nodes))
        if leader in members:
            return leader
        async with AsyncClient([cluster.nodes[leader].client_url], timeout_s=5) as c:
            with contextlib.suppress(QuorumError):
                await c.move_leader(min(members))
    raise AssertionError(f"leadership did not move to {sorted(members)}")


async def mixed_cluster(cluster: UpgradeCluster, old_code: Code, buggy: Code) -> None:
    for node_id, code in ((1, buggy), (2, buggy), (3, old_code)):
        cluster.start(node_id, code)
    cluster.wait_ports()
    await lead_from(cluster, {1, 2})
    async with AsyncClient(cluster.endpoints(), timeout_s=10) as client:
        writer = Writer(client)
        load = asyncio.create_task(writer.run(tasks=8))
        try:
            await writer.progress(300)
        finally:
            writer.stop()
            with contextlib.suppress(QuorumError, TimeoutError):
                await asyncio.wait_for(load, 15)
    assert "undecodable entry" in cluster.log_text(3), "the old node skipped nothing"
    with pytest.raises(AssertionError, match="diverge"):
        await settled(cluster)


def test_planted_mixed_versions_diverge(tmp_path: Path, releases: dict[str, Code]) -> None:
    """What the refusal prevents, and that the divergence checks see it: an old follower of
    a leader that batches (here allowed to talk to it) skips the batched entries."""
    buggy = code_speaking_protocol1(tmp_path / "buggy")
    with UpgradeCluster(tmp_path / "cluster", 26) as cluster:
        asyncio.run(mixed_cluster(cluster, releases[PREBATCH_COMMIT], buggy))
