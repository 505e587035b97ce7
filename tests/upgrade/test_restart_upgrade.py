"""Restart upgrade: a 3-node cluster written by an older release, stopped, started on the
current code on the same data directories.

The old cluster snapshots every 25 entries, so each node restarts from a snapshot the old code
wrote (state format 1 for ec25af5, format 2 for dedeab2) plus WAL entries the old code wrote
(plain Proposal envelopes). The check is equality of everything a client can observe, read
from each node alone: keys, values, create/mod revisions, versions, leases, history above the
compaction, the compact revision, and HashKV. The format 1 digest bug (d3df6f3: a format 1
snapshot was checked against the format 2 digest, 'snapshot record digest mismatch', and no
node started) fails the first of these tests; test_planted_format1_digest_bug shows it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from quorum.client.aio import AsyncClient
from quorum.node.datadir import DATA_FORMAT, read_format
from quorum.storage.fs import OsFileSystem
from quorum.storage.inspect import inspect
from quorum.storage.snapshot import load_snapshot, open_snapshot

from .cluster import (
    CURRENT,
    FORMAT1_COMMIT,
    PREBATCH_COMMIT,
    Code,
    UpgradeCluster,
    patched_current,
)
from .workload import NodeState, Written, converged, write_after, write_history

pytestmark = [pytest.mark.timeout(240), pytest.mark.xdist_group("upgrade")]


def snapshot_files(data_dir: Path) -> list[Path]:
    return sorted(data_dir.rglob("*.snap"))


def snapshot_index(path: Path) -> int:
    """The log index a snapshot file covers: its name is <index>-<term>.snap, in hex."""
    return int(path.name.split("-", 1)[0], 16)


def one_state(states: dict[str, NodeState]) -> NodeState:
    """The state every node holds; fails naming the nodes that differ."""
    distinct = set(states.values())
    assert len(distinct) == 1, f"nodes diverge: {states}"
    return distinct.pop()


async def wal_tails(cluster: UpgradeCluster) -> dict[int, int]:
    """Per node, how many applied entries lie past its newest snapshot (live)."""
    tails = {}
    for node_id, node in cluster.nodes.items():
        async with AsyncClient([node.client_url], timeout_s=5) as c:
            applied = (await c.status()).raft_applied_index
        snaps = snapshot_files(cluster.data_dir(node_id))
        tails[node_id] = applied - (snapshot_index(snaps[-1]) if snaps else 0)
    return tails


async def leave_wal_tail(cluster: UpgradeCluster, client: AsyncClient, head: int) -> int:
    """Put a pad key until every node is 5..15 entries past its newest snapshot (interval
    25), so that stopping (which may add an election's no-op or two) cannot end on a snapshot
    boundary: the new code must restore an old snapshot and replay old WAL entries after
    it. Returns the head revision."""
    tails: dict[int, int] = {}
    for _ in range(3 * cluster.snapshot_entries):
        tails = await wal_tails(cluster)
        if all(5 <= tail <= 15 for tail in tails.values()):
            return head
        head = (await client.put(b"pad", b"%d" % head)).revision
        await asyncio.sleep(0.05)
    raise AssertionError(f"no moment with a WAL tail on every node: {tails}")


async def run_old(cluster: UpgradeCluster, old: Code) -> tuple[Written, NodeState]:
    """Start the cluster on ``old``, write the history, read every node, stop them cleanly."""
    cluster.start_all(old)
    await cluster.leader_among(set(cluster.nodes))
    async with AsyncClient(cluster.endpoints(), timeout_s=10) as client:
        written = await write_history(client)
        head = await leave_wal_tail(cluster, client, written.head)
    before = one_state(await converged(cluster.endpoints(), written))
    assert before.revision == head
    assert before.compact_revision == written.compacted_at
    assert before.compacted_refused
    assert len(before.events) >= 40 and before.events[-1].kv.mod_revision == head
    assert before.lease[1] == tuple(f"lease/keep/{i}".encode() for i in range(5))
    assert cluster.stop_all() == {1: 0, 2: 0, 3: 0}, "old nodes did not stop cleanly"
    for node_id in cluster.nodes:
        # what the new code will find: a snapshot the old code wrote, and committed WAL
        # entries the old code wrote after it (read offline with the storage inspector)
        report = inspect(str(cluster.data_dir(node_id)))
        assert report.ok, report.problems
        assert report.snapshots, f"node {node_id} wrote no snapshot"
        assert report.hard_state is not None
        newest = max(snap.index for snap in report.snapshots)
        assert newest < report.hard_state.commit <= report.log_last_index, (
            f"node {node_id}: no committed WAL tail after snapshot {newest}: {report}")
    return written, before


async def check_new(cluster: UpgradeCluster, new: Code, written: Written,
                    before: NodeState) -> NodeState:
    """Start every node on ``new``; the state must be ``before`` exactly, on every node."""
    cluster.start_all(new)
    await cluster.leader_among(set(cluster.nodes))
    after = one_state(await converged(cluster.endpoints(), written))
    assert after == before
    return after


async def upgrade_and_check(tmp_path: Path, subnet: int, old: Code, new: Code) -> None:
    with UpgradeCluster(tmp_path, subnet) as cluster:
        written, before = await run_old(cluster, old)
        old_snaps = {i: set(snapshot_files(cluster.data_dir(i))) for i in cluster.nodes}
        for node_id in cluster.nodes:  # old releases wrote no data-format marker
            assert read_format(OsFileSystem(), str(cluster.data_dir(node_id))) is None
        await check_new(cluster, new, written, before)
        for node_id in cluster.nodes:  # the new code marked what it now writes
            marker = read_format(OsFileSystem(), str(cluster.data_dir(node_id)))
            assert marker is not None and marker.format == DATA_FORMAT
        async with AsyncClient(cluster.endpoints(), timeout_s=10) as client:
            last = await write_after(client, "new")
        grown = one_state(await converged(cluster.endpoints(), written))
        assert grown.revision == last > before.revision
        assert grown.hash != before.hash
        assert grown.probe == before.probe  # old history is untouched by new writes
        assert cluster.stop_all() == {1: 0, 2: 0, 3: 0}
        for node_id in cluster.nodes:  # the second restart starts from a new-code snapshot
            assert set(snapshot_files(cluster.data_dir(node_id))) - old_snaps[node_id]
        # a second restart reads what the new code wrote (format 2 snapshots, new WAL) on
        # top of what the old code wrote
        again = await check_new(cluster, new, written, grown)
        assert again == grown
        assert cluster.stop_all() == {1: 0, 2: 0, 3: 0}


def test_restart_upgrade_from_format1_release(tmp_path: Path, releases: dict[str, Code]) -> None:
    """ec25af5 (state format 1 snapshots, peer protocol 1) -> current."""
    asyncio.run(upgrade_and_check(tmp_path, 11, releases[FORMAT1_COMMIT], CURRENT))


def test_restart_upgrade_from_prebatch_release(tmp_path: Path,
                                               releases: dict[str, Code]) -> None:
    """dedeab2 (format 2 snapshots, protocol 1, one command per entry) -> current."""
    asyncio.run(upgrade_and_check(tmp_path, 12, releases[PREBATCH_COMMIT], CURRENT))


# --- the same check against the bug it exists for ------------------------------------------

FIX_LINE = "    expected = image.digest_v1 if header.version == 1 else store.digest\n"


def code_with_format1_digest_bug(dest: Path) -> Code:
    """The current code with d3df6f3 undone: format 1 snapshots checked against the current
    digest."""
    return patched_current(dest, "current-with-format1-digest-bug", "state/snapshot.py",
                           FIX_LINE, "    expected = store.digest\n")


def test_planted_format1_digest_bug(tmp_path: Path, releases: dict[str, Code]) -> None:
    """The restart upgrade catches the bug that was found by hand: with the fix undone, the
    nodes refuse the snapshot the old release wrote and the upgrade fails."""
    buggy = code_with_format1_digest_bug(tmp_path / "buggy")

    async def run() -> None:
        with UpgradeCluster(tmp_path / "cluster", 13) as cluster:
            written, before = await run_old(cluster, releases[FORMAT1_COMMIT])
            with pytest.raises(RuntimeError, match="exited"):
                await check_new(cluster, buggy, written, before)
            logs = "".join(cluster.log_text(i) for i in cluster.nodes)
            assert "snapshot record digest mismatch" in logs

    asyncio.run(run())


# --- a snapshot the old code wrote, shipped by the new code ---------------------------------


def snapshot_data(path: Path) -> bytes:
    """The data of one snapshot file (the runtime's envelope around the state image)."""
    fs = OsFileSystem()
    return load_snapshot(fs, open_snapshot(fs, str(path))).data


async def lagging_node(cluster: UpgradeCluster, old: Code) -> None:
    cluster.start_all(old)
    await cluster.leader_among(set(cluster.nodes))
    async with AsyncClient(cluster.endpoints(), timeout_s=10) as client:
        await client.put(b"early", b"before node 3 stopped")
    assert cluster.stop(3) == 0
    async with AsyncClient(cluster.endpoints(), timeout_s=10) as client:
        written = await write_history(client)  # nodes 1 and 2 snapshot and compact without 3
    before = one_state(await converged(cluster.endpoints(), written))
    assert cluster.stop_all() == {1: 0, 2: 0, 3: 0}
    old_snaps = {i: snapshot_files(cluster.data_dir(i)) for i in (1, 2)}
    lag = inspect(str(cluster.data_dir(3))).log_last_index
    assert all(snapshot_index(snaps[-1]) > lag for snaps in old_snaps.values())

    cluster.start_all(CURRENT)
    leader = await cluster.leader_among({1, 2, 3})
    after = one_state(await converged(cluster.endpoints(), written))
    assert after == before  # node 3 included: it caught up to the very same state
    assert cluster.stop_all() == {1: 0, 2: 0, 3: 0}
    # Node 3 was behind the others' snapshots (their logs compacted past its last entry), so
    # it caught up by the leader's newest snapshot: still the one the old code wrote, and
    # node 3 keeps it byte for byte.
    shipped = old_snaps[leader][-1]
    received = cluster.data_dir(3) / "snap" / shipped.name
    assert received.exists(), f"node 3 holds no copy of {shipped.name}"
    assert snapshot_data(received) == snapshot_data(shipped)


def test_old_snapshot_shipped_to_lagging_node(tmp_path: Path, releases: dict[str, Code]) -> None:
    """ec25af5 data, node 3 stopped early: after the upgrade the new leader sends node 3 the
    format 1 snapshot the old code wrote (over protocol 2), and node 3 restores it."""
    with UpgradeCluster(tmp_path, 14) as cluster:
        asyncio.run(lagging_node(cluster, releases[FORMAT1_COMMIT]))
