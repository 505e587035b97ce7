"""Real server processes on loopback under faults (SIGKILL, SIGSTOP, restarts, membership).

Timing: tick 50 ms, election timeout 10 ticks (0.5 s), so failovers take about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from quorum.client.aio import AsyncClient
from quorum.errors import QuorumError
from quorum.node.core import SNAPSHOT_RATIO_FLOOR
from quorum.verify.procs import ProcCluster, free_ports

pytestmark = [pytest.mark.timeout(180), pytest.mark.xdist_group("procs")]


async def leader_of(cluster: ProcCluster, timeout_s: float = 10.0, not_: int = 0) -> int:
    """The member id every live node agrees is the leader (other than ``not_``)."""
    return await cluster.agreed_leader(timeout_s, not_)


async def hashes(cluster: ProcCluster) -> dict[int, tuple[int, int]]:
    """(revision, hash) per live node, once all have applied the same revision."""
    out: dict[int, tuple[int, int]] = {}
    for node_id, node in cluster.nodes.items():
        if not node.alive:
            continue
        async with AsyncClient([node.client_url], timeout_s=2) as c:
            kv = await c.hash_kv()
            out[node_id] = (kv.revision, kv.hash)
    return out


async def converged_hashes(cluster: ProcCluster, timeout_s: float = 15.0) -> dict[int, tuple[int, int]]:
    deadline = time.monotonic() + timeout_s
    while True:
        h = await hashes(cluster)
        if len(set(h.values())) == 1 or time.monotonic() > deadline:
            return h
        await asyncio.sleep(0.2)


class Writer:
    """Writes load/<n> = n continuously; remembers what was acknowledged."""

    def __init__(self, client: AsyncClient, prefix: str = "load/") -> None:
        self.client = client
        self.prefix = prefix
        self.acked: list[int] = []
        self.failed = 0
        self._n = 0
        self._stop = False
        self.last_ack_time = 0.0

    async def run(self, concurrency: int = 8) -> None:
        await asyncio.gather(*(self._one() for _ in range(concurrency)))

    async def _one(self) -> None:
        while not self._stop:
            self._n += 1
            n = self._n
            try:
                await self.client.put(f"{self.prefix}{n:08d}".encode(), str(n).encode())
                self.acked.append(n)
                self.last_ack_time = time.monotonic()
            except QuorumError:
                self.failed += 1
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._stop = True


async def all_present(cluster: ProcCluster, prefix: str, numbers: list[int]) -> list[int]:
    """Acknowledged numbers missing from a linearizable read."""
    async with AsyncClient(cluster.endpoints(), timeout_s=5) as c:
        resp = await c.range(prefix.encode(), prefix=True, keys_only=True)
    present = {int(kv.key.decode().rsplit("/", 1)[1]) for kv in resp.kvs}
    return [n for n in numbers if n not in present]


def test_sigkill_leader_loses_no_acknowledged_write_and_writes_resume(tmp_path: Path) -> None:
    async def scenario() -> None:
        with ProcCluster(3, tmp_path) as cluster:
            leader = await leader_of(cluster)
            async with AsyncClient(cluster.endpoints(), timeout_s=3) as client:
                writer = Writer(client)
                task = asyncio.create_task(writer.run())
                await asyncio.sleep(1.5)
                acked_before_kill = len(writer.acked)
                cluster.kill(leader)
                killed_at = time.monotonic()
                # failover takes about an election timeout; allow for a loaded machine
                deadline = killed_at + 15.0
                while writer.last_ack_time <= killed_at + 0.5 and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)
                writer.stop()
                await task
            assert acked_before_kill > 0
            assert writer.last_ack_time > killed_at, "no write succeeded after the kill"
            assert len(writer.acked) > acked_before_kill
            new_leader = await leader_of(cluster, not_=leader)
            assert new_leader != leader
            assert await all_present(cluster, "load/", writer.acked) == []
            cluster.start_node(leader)
            cluster.wait_ports()
            h = await converged_hashes(cluster)
            assert len(set(h.values())) == 1, h

    asyncio.run(scenario())


def test_restart_every_node_keeps_identical_state(tmp_path: Path) -> None:
    async def scenario() -> None:
        with ProcCluster(3, tmp_path, snapshot_entries=150) as cluster:
            await leader_of(cluster)
            async with AsyncClient(cluster.endpoints(), timeout_s=3) as client:
                for i in range(400):
                    await client.put(b"k%03d" % (i % 50), b"v%d" % i)
                await client.delete(b"k01", prefix=True)
            before = await converged_hashes(cluster)
            assert len(set(before.values())) == 1
            for node_id in list(cluster.nodes):
                cluster.kill(node_id)
            for node_id in list(cluster.nodes):
                cluster.start_node(node_id)
            cluster.wait_ports()
            await leader_of(cluster)
            after = await converged_hashes(cluster)
            assert after == before

    asyncio.run(scenario())


def test_learner_joins_by_snapshot_under_load_then_is_promoted(tmp_path: Path) -> None:
    async def scenario() -> None:
        with ProcCluster(3, tmp_path, snapshot_entries=100) as cluster:
            await leader_of(cluster)
            async with AsyncClient(cluster.endpoints(), timeout_s=5) as client:
                for i in range(300):
                    await client.put(b"pre/%04d" % i, b"x" * 50)
                writer = Writer(client, "during/")
                task = asyncio.create_task(writer.run(4))
                ports = tuple(free_ports(3))
                resp = await client.member_add([f"http://127.0.0.1:{ports[0]}"], is_learner=True)
                assert resp.member is not None and resp.member.is_learner
                new_id = resp.member.member_id
                cluster.add_node(new_id, ports)  # type: ignore[arg-type]
                cluster.start_node(new_id)
                cluster.wait_ports()
                await asyncio.sleep(2.0)
                writer.stop()
                await task
                promoted = None
                for _ in range(50):
                    try:
                        promoted = await client.member_promote(new_id)
                        break
                    except QuorumError:
                        await asyncio.sleep(0.2)
                assert promoted is not None, "learner never became ready for promotion"
                members = {m.member_id: m for m in await client.member_list(linearizable=True)}
                assert not members[new_id].is_learner
            h = await converged_hashes(cluster)
            assert len(set(h.values())) == 1, h
            assert new_id in h
            log = cluster.log_text(new_id)
            assert "Traceback" not in log, log[-2000:]

    asyncio.run(scenario())


def test_removing_the_leader_elects_another(tmp_path: Path) -> None:
    async def scenario() -> None:
        with ProcCluster(3, tmp_path) as cluster:
            leader = await leader_of(cluster)
            async with AsyncClient(cluster.endpoints(), timeout_s=5) as client:
                await client.put(b"before", b"1")
                await client.member_remove(leader)
                cluster.kill(leader)
                new_leader = await leader_of(cluster, not_=leader)
                assert new_leader != leader
                await client.put(b"after", b"2")
                members = {m.member_id for m in await client.member_list(linearizable=True)}
                assert leader not in members and len(members) == 2
                assert (await client.get(b"before")) is not None

    asyncio.run(scenario())


def test_watch_resumes_across_a_node_kill_without_gaps(tmp_path: Path) -> None:
    async def scenario() -> None:
        with ProcCluster(3, tmp_path) as cluster:
            leader = await leader_of(cluster)
            follower = next(i for i in cluster.nodes if i != leader)
            order = [cluster.nodes[follower].client_url] + [
                cluster.nodes[i].client_url for i in cluster.nodes if i != follower]
            async with AsyncClient(order, timeout_s=3) as watch_client, \
                    AsyncClient(cluster.endpoints(), timeout_s=3) as writer:
                watcher = watch_client.watch(b"w/", prefix=True)
                await watcher.start()
                got: list[int] = []

                async def consume() -> None:
                    async for batch in watcher:
                        for ev in batch.events:
                            got.append(int(ev.kv.value))
                        if len(got) >= 60:
                            return

                consumer = asyncio.create_task(consume())
                for i in range(30):
                    await writer.put(b"w/%d" % (i % 5), b"%d" % i)
                cluster.kill(follower)
                for i in range(30, 60):
                    await writer.put(b"w/%d" % (i % 5), b"%d" % i)
                await asyncio.wait_for(consumer, 20)
                await watcher.cancel()
            assert got == list(range(60))

    asyncio.run(scenario())


HOLDER = """
import asyncio, sys
from quorum.client.aio import AsyncClient
from quorum.client.recipes.lock import Lock

async def main():
    async with AsyncClient(sys.argv[1].split(","), timeout_s=3) as c:
        lock = Lock(c, "res", ttl_s=2)
        token = await lock.acquire(timeout_s=10)
        print("token", token, flush=True)
        while True:                       # the holder keeps 'writing' with its token
            await asyncio.sleep(0.3)
            print("write", token, flush=True)

asyncio.run(main())
"""


class FencedResource:
    """A protected resource: rejects writes whose fencing token is below one already seen."""

    def __init__(self) -> None:
        self.highest = 0
        self.accepted: list[int] = []
        self.rejected: list[int] = []

    def write(self, token: int) -> bool:
        if token < self.highest:
            self.rejected.append(token)
            return False
        self.highest = token
        self.accepted.append(token)
        return True


def test_lock_fencing_rejects_a_holder_paused_past_its_ttl(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from quorum.client.recipes.lock import Lock

    async def scenario() -> None:
        with ProcCluster(3, tmp_path) as cluster:
            await leader_of(cluster)
            holder = subprocess.Popen(
                [sys.executable, "-c", HOLDER, ",".join(cluster.endpoints())],
                stdout=subprocess.PIPE, text=True)
            try:
                assert holder.stdout is not None
                first = holder.stdout.readline().split()
                assert first[0] == "token", first
                token1 = int(first[1])
                resource = FencedResource()
                assert resource.write(token1)
                os.kill(holder.pid, signal.SIGSTOP)  # paused past its 2 s TTL
                async with AsyncClient(cluster.endpoints(), timeout_s=3) as b:
                    second = Lock(b, "res", ttl_s=5)
                    token2 = await second.acquire(timeout_s=20)
                    assert token2 > token1
                    assert resource.write(token2)
                    os.kill(holder.pid, signal.SIGCONT)  # the old holder wakes up and writes
                    line = ""
                    while not line.startswith("write"):
                        line = await asyncio.to_thread(holder.stdout.readline)
                    assert not resource.write(int(line.split()[1]))
                    await second.release()
                assert resource.rejected == [token1]
                assert resource.accepted == [token1, token2]
            finally:
                holder.kill()
                holder.wait()

    asyncio.run(scenario())


def test_paused_leader_is_replaced_and_serves_no_stale_reads(tmp_path: Path) -> None:
    async def scenario() -> None:
        with ProcCluster(3, tmp_path) as cluster:
            leader = await leader_of(cluster)
            async with AsyncClient(cluster.endpoints(), timeout_s=3) as client:
                await client.put(b"x", b"1")
                cluster.pause(leader)
                new_leader = await leader_of(cluster, not_=leader)
                assert new_leader != leader
                await client.put(b"x", b"2")
                cluster.resume(leader)
                # the old leader must not answer a linearizable read with the old value
                async with AsyncClient([cluster.nodes[leader].client_url], timeout_s=5) as old:
                    with contextlib.suppress(QuorumError):
                        kv = await old.get(b"x")
                        assert kv is not None and kv.value == b"2"

    asyncio.run(scenario())


def test_retried_write_with_a_lost_answer_is_applied_once(tmp_path: Path) -> None:
    """A client that lost the answer to a write resends it with the same session and
    sequence number, possibly to another node: the cluster applies it once. Without the
    session (the control) the same resend is applied twice."""
    from quorum.state.commands import PutRequest, SessionOpenRequest, SessionOpenResponse

    async def scenario() -> None:
        with ProcCluster(3, tmp_path) as cluster:
            await leader_of(cluster)
            eps = cluster.endpoints()
            async with AsyncClient(eps[:1], timeout_s=3) as first, \
                    AsyncClient(eps[1:2], timeout_s=3) as second:
                deadline = asyncio.get_running_loop().time() + 5
                opened = await first._attempts(SessionOpenRequest(), 0, 0, False, deadline)
                assert isinstance(opened, SessionOpenResponse)
                sid = opened.session_id
                put = PutRequest(b"once", b"x")
                r1 = await first._attempts(put, sid, 1, False, deadline)
                r2 = await second._attempts(put, sid, 1, False, deadline)  # the retry
                assert r1 == r2  # the recorded answer, not a second application
                kv = await first.get(b"once")
                assert kv is not None and kv.version == 1
                # control: without a session the resend is a second write
                await first._attempts(PutRequest(b"twice", b"x"), 0, 0, False, deadline)
                await second._attempts(PutRequest(b"twice", b"x"), 0, 0, False, deadline)
                kv2 = await first.get(b"twice")
                assert kv2 is not None and kv2.version == 2

    asyncio.run(scenario())


def test_large_state_spaced_snapshots_survive_kills_and_restarts(tmp_path: Path) -> None:
    """Past 4 MiB of state, snapshots wait for the log to grow as large as the last one
    (snapshot_log_ratio 1.0), so nodes replay and send long logs: a follower killed while
    the state grows past the floor, then every node restarted, ends identical."""
    value = b"v" * 1024

    async def write(client: AsyncClient, first: int, count: int) -> None:
        async def one(start: int) -> None:
            for n in range(first + start, first + count, 32):
                await client.put(b"big/%06d" % n, value)
        await asyncio.gather(*(one(s) for s in range(32)))

    async def scenario() -> None:
        with ProcCluster(3, tmp_path, snapshot_entries=500) as cluster:
            leader = await leader_of(cluster)
            follower = next(i for i in cluster.nodes if i != leader)
            async with AsyncClient(cluster.endpoints(), timeout_s=10) as client:
                await write(client, 0, 3000)  # about 3 MiB
                cluster.kill(follower)
                await write(client, 3000, 4000)  # about 7 MiB in all: past the floor
                cluster.start_node(follower)
                cluster.wait_ports()
                await write(client, 7000, 1000)
            before = await converged_hashes(cluster, timeout_s=30)
            assert len(set(before.values())) == 1, before
            for node_id in list(cluster.nodes):
                cluster.kill(node_id)
            for node_id in list(cluster.nodes):
                cluster.start_node(node_id)
            cluster.wait_ports()
            await leader_of(cluster)
            after = await converged_hashes(cluster, timeout_s=30)
            assert after == before
            async with AsyncClient(cluster.endpoints(), timeout_s=5) as c:
                resp = await c.range(b"big/", prefix=True, count_only=True)
            assert resp.count == 8000
        # the run reached the regime it is about: every node's newest snapshot is past the floor
        for node_id in cluster.nodes:
            sizes = [f.stat().st_size for f in (tmp_path / f"node{node_id}" / "snap").glob("*.snap")]
            assert max(sizes) >= SNAPSHOT_RATIO_FLOOR, (node_id, sizes)

    asyncio.run(scenario())
