"""Automatic MVCC compaction (quorum.api.compactor): the pure planner, the runner, and a
three-node in-process cluster whose history below the retained point becomes compacted while
the retention window stays readable, and where only the leader ever proposes a compaction."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from inproc_cluster import cluster, leader_of

import quorum.cli.serve as serve_module
from quorum.api import compaction
from quorum.api.compactor import (
    PERIODIC_INTERVAL_MAX_S,
    PLANTED_COMPACT_AT_CURRENT,
    AutoCompactor,
    CompactionPlanner,
    CompactionPolicy,
    parse_duration_s,
    policy_from_config,
)
from quorum.api.process import QuorumProcess
from quorum.cli.serve import cluster_up, serve
from quorum.errors import ConfigError, LeaderChanged, RevisionCompacted
from quorum.node.config import NodeConfig, load_config
from quorum.state import commands as sc


class FakeClock:
    """The node Clock protocol on a hand-moved time; sleep() moves time itself (no waiting)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.now += seconds


def periodic(retention_s: float) -> CompactionPolicy:
    return CompactionPolicy(mode="periodic", retention_s=retention_s)


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("1h", 3600.0), ("30m", 1800.0), ("90s", 90.0), ("1h30m", 5400.0), ("500ms", 0.5),
    ("2", 7200.0), ("0.5", 1800.0), ("0", 0.0),
])
def test_durations_parse_like_etcd(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1d", "h", "-1h", "1h-", "ten", "1.h"])
def test_bad_durations_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration_s(text)


def test_policy_from_config() -> None:
    assert policy_from_config("periodic", "0") is None  # the default: off
    assert policy_from_config("revision", 0) is None
    assert policy_from_config("periodic", "1h") == periodic(3600.0)
    assert policy_from_config("revision", 1000) == CompactionPolicy(
        mode="revision", retention_revisions=1000)
    assert policy_from_config("revision", "25") == CompactionPolicy(
        mode="revision", retention_revisions=25)
    assert policy_from_config("periodic", "1s") == periodic(1.0)
    for mode, retention in [("hourly", "1h"), ("revision", "1h"), ("revision", "-5"),
                            ("periodic", "soon"), ("periodic", "500ms")]:
        with pytest.raises(ConfigError):
            policy_from_config(mode, retention)


def test_config_defaults_are_off_and_file_keys_work(tmp_path: Path) -> None:
    cfg = NodeConfig()
    assert policy_from_config(cfg.auto_compaction_mode, cfg.auto_compaction_retention) is None
    path = tmp_path / "node.toml"
    path.write_text('auto_compaction_mode = "revision"\nauto_compaction_retention = 1000\n')
    cfg = load_config(path)
    assert policy_from_config(cfg.auto_compaction_mode, cfg.auto_compaction_retention) == (
        CompactionPolicy(mode="revision", retention_revisions=1000))
    path.write_text('auto_compaction_retention = "72h"\n')
    cfg = load_config(path)
    policy = policy_from_config(cfg.auto_compaction_mode, cfg.auto_compaction_retention)
    assert policy == periodic(72 * 3600.0)
    assert policy.interval_s == PERIODIC_INTERVAL_MAX_S  # compacted hourly, as etcd does


def test_serve_refuses_bad_auto_compaction_flags(tmp_path: Path) -> None:
    runner = CliRunner()
    for flags in (["--auto-compaction-mode", "hourly"],
                  ["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1h"],
                  ["--auto-compaction-retention", "soon"]):
        result = runner.invoke(serve, ["--data-dir", str(tmp_path / "d"), *flags])
        assert result.exit_code == 2, result.output  # a usage error: the server never started
        assert "auto_compaction" in result.output
    assert not (tmp_path / "d").exists()


def test_cluster_up_refuses_bad_flags_and_passes_good_ones_to_every_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(cluster_up, ["--data-dir", str(tmp_path / "d"),
                                             "--auto-compaction-retention", "soon"])
    assert result.exit_code == 2, result.output
    assert "auto_compaction" in result.output
    assert not (tmp_path / "d").exists()  # refused before any server was started

    started: list[list[str]] = []

    class _Child:
        pid = 0

        def __init__(self, argv: list[str], **_: object) -> None:
            started.append(argv)

    monkeypatch.setattr(serve_module.subprocess, "Popen", _Child)
    monkeypatch.setattr(serve_module, "_supervise", lambda procs: None)
    result = CliRunner().invoke(cluster_up, [
        "--data-dir", str(tmp_path / "d"), "--auto-compaction-mode", "revision",
        "--auto-compaction-retention", "500"])
    assert result.exit_code == 0, result.output
    assert len(started) == 3
    for argv in started:
        params = serve.make_context("serve", argv[argv.index("serve") + 1:]).params
        assert params["auto_compaction_mode"] == "revision"
        assert params["auto_compaction_retention"] == "500"


def test_quorum_process_refuses_a_bad_policy() -> None:
    with pytest.raises(ConfigError):
        QuorumProcess(NodeConfig(auto_compaction_mode="revision", auto_compaction_retention="x"))


# --- the planner (pure) -------------------------------------------------------------------------


def test_revision_mode_keeps_the_last_n_revisions_every_check() -> None:
    policy = CompactionPolicy(mode="revision", retention_revisions=1000, revision_check_s=300.0)
    planner = CompactionPlanner(policy, start_s=0.0)
    assert planner.decide(299.0, 30_000, 0) is None  # not due before the first check
    assert planner.decide(300.0, 30_000, 0) == 29_000
    assert planner.decide(400.0, 31_000, 29_000) is None  # due again only at 600
    assert planner.wait_s(400.0) == pytest.approx(200.0)
    assert planner.decide(600.0, 29_500, 29_000) is None  # nothing new beyond the window
    assert planner.decide(900.0, 30_500, 29_000) == 29_500
    assert planner.decide(1200.0, 500, 0) is None  # fewer revisions than the retention


def test_periodic_mode_waits_for_one_full_window() -> None:
    planner = CompactionPlanner(periodic(10.0), start_s=0.0)  # samples every 1 s
    for t in range(1, 11):
        assert planner.decide(float(t), 100 * t, 0) is None, t
        assert planner.wait_s(float(t)) == pytest.approx(1.0)  # sleeps until the next sample
    # at t=11 the sample of t=1 is exactly one window old: everything after it is retained
    assert planner.decide(11.0, 1100, 0) == 100


def test_periodic_mode_retains_between_retention_and_one_sample_more() -> None:
    """Feed an irregular write rate; every decision keeps every revision written during the
    last ``retention`` seconds and at most one sample interval more, once per interval."""
    retention, sample = 60.0, 6.0
    planner = CompactionPlanner(periodic(retention), start_s=0.0)
    times: list[float] = []
    history: list[tuple[float, int]] = []  # (time, current revision then), every second
    compacted, revision = 0, 0
    decisions = 0
    for t in range(1, 600):
        revision += (t * 7919) % 13  # irregular, sometimes idle
        history.append((float(t), revision))
        target = planner.decide(float(t), revision, compacted)
        if target is None:
            continue
        decisions += 1
        times.append(float(t))
        newest_outside = max(r for s, r in history if s <= t - retention)
        oldest_kept_s = min(s for s, r in history if r >= target)
        assert target <= newest_outside, "a revision of the retention window was compacted"
        assert t - oldest_kept_s <= retention + sample + 1, "more than one sample more was kept"
        compacted = target
    assert all(b - a >= retention for a, b in itertools.pairwise(times))  # once per interval
    assert decisions >= (600 - retention) / retention - 1


def test_the_planted_bug_compacts_at_the_current_revision() -> None:
    planner = CompactionPlanner(periodic(10.0), 0.0, frozenset({PLANTED_COMPACT_AT_CURRENT}))
    assert planner.decide(10.0, 100, 0) == 100  # at the first interval, no window kept


def test_intervals_follow_etcd() -> None:
    """Periodic: compact every min(retention, 1 h), sampling ten times per interval."""
    def intervals(policy: CompactionPolicy) -> tuple[float, float]:
        return policy.interval_s, policy.sample_s

    assert intervals(periodic(30 * 60.0)) == (1800.0, 180.0)
    assert intervals(periodic(10 * 3600.0)) == (3600.0, 360.0)
    assert intervals(periodic(72 * 3600.0)) == (3600.0, 360.0)
    assert intervals(CompactionPolicy(mode="periodic", retention_s=60.0,
                                      compact_every_s=6.0)) == (6.0, 0.6)
    assert intervals(CompactionPolicy(mode="revision", retention_revisions=5)) == (300.0, 300.0)


def test_a_failure_is_retried_at_the_next_sample() -> None:
    planner = CompactionPlanner(periodic(10.0), start_s=0.0)
    for t in range(1, 11):
        planner.decide(float(t), 100 * t, 0)
    assert planner.decide(11.0, 1100, 0) == 100
    assert planner.wait_s(11.0) == pytest.approx(1.0)  # the next sample; compaction at 21
    planner.decide(12.0, 1200, 0)
    assert planner.decide(13.0, 1300, 0) is None  # not due: compaction interval is 10 s
    planner.retry_soon(13.0)
    assert planner.decide(14.0, 1400, 0) == 400


# --- the runner ----------------------------------------------------------------------------------


@dataclass
class FakeNode:
    revision: int = 0
    compacted: int = 0
    leader: bool = True
    fail_with: Exception | None = None
    proposed: list[int] = field(default_factory=list)

    async def compact(self, revision: int) -> None:
        self.proposed.append(revision)
        if self.fail_with is not None:
            raise self.fail_with
        self.compacted = revision

    def compactor(self, policy: CompactionPolicy, clock: FakeClock) -> AutoCompactor:
        return AutoCompactor(policy, clock, revisions=lambda: (self.revision, self.compacted),
                             is_leader=lambda: self.leader, compact=self.compact)


def _run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(bounded())


def test_a_follower_samples_but_never_proposes_and_takes_over_as_leader() -> None:
    async def body() -> None:
        clock = FakeClock(0.0)
        node = FakeNode(leader=False)
        compactor = node.compactor(periodic(10.0), clock)
        for _ in range(30):
            clock.advance(1.0)
            node.revision += 10
            assert await compactor.check() is None
        assert node.proposed == []
        node.leader = True  # elected: the samples it took as a follower serve at once
        for _ in range(10):  # within one interval
            clock.advance(1.0)
            node.revision += 10
            if await compactor.check() is not None:
                break
        assert node.proposed == [node.revision - 100]  # the revision current 10 s ago
        assert compactor.compactions == 1

    _run(body())


@pytest.mark.parametrize("failure", [RevisionCompacted(5), LeaderChanged("moved"),
                                     RuntimeError("disk")])
def test_a_failed_compaction_is_logged_and_retried_next_period(
    failure: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        clock = FakeClock(0.0)
        node = FakeNode(revision=5000, fail_with=failure)
        compactor = node.compactor(CompactionPolicy(mode="revision", retention_revisions=1000),
                                   clock)
        clock.advance(300.0)
        assert await compactor.check() is None  # failed, did not raise
        assert compactor.failures == 1 and node.proposed == [4000]
        assert "retrying soon" in caplog.text
        clock.advance(100.0)
        assert await compactor.check() is None and node.proposed == [4000]  # not yet due
        node.fail_with = None
        clock.advance(200.0)
        assert await compactor.check() == 4000  # retried at the next period
        assert node.compacted == 4000

    _run(body())


def test_run_loop_wakes_once_per_sample_before_the_first_window() -> None:
    async def body() -> None:
        clock = FakeClock(0.0)
        calls = 0

        def revisions() -> tuple[int, int]:
            nonlocal calls
            calls += 1
            return 10 * calls, 0

        compactor = AutoCompactor(periodic(100.0), clock, revisions=revisions,
                                  is_leader=lambda: False, compact=FakeNode().compact)
        task = asyncio.create_task(compactor.run())
        for _ in range(10_000):  # a loop that stopped sleeping would spin here, time frozen
            if clock.now >= 300.0:
                break
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert clock.now >= 300.0, "the run loop spun without sleeping"
        assert calls <= 31  # one check per 10 s sample

    _run(body())


def test_run_loop_survives_errors_and_compacts_every_step() -> None:
    async def body() -> None:
        clock = FakeClock(0.0)
        node = FakeNode(revision=2000)
        calls = 0

        def revisions() -> tuple[int, int]:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise RuntimeError("a bug in the store")
            node.revision += 100
            return node.revision, node.compacted

        times: list[float] = []

        async def compact(revision: int) -> None:
            times.append(clock.now)
            await node.compact(revision)

        compactor = AutoCompactor(CompactionPolicy(mode="revision", retention_revisions=1000),
                                  clock, revisions=revisions, is_leader=lambda: True,
                                  compact=compact)
        task = asyncio.create_task(compactor.run())
        while compactor.compactions < 3:
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # checks at 300, 600 (raised: the loop slept one step), 900 and 1200 s
        assert node.proposed == [1100, 1200, 1300]
        assert times == [300.0, 900.0, 1200.0]

    _run(body())


# --- a three-node cluster -------------------------------------------------------------------------


async def caught_up(procs: list[QuorumProcess]) -> None:
    """Wait until every node applied what the leader applied."""
    leader = await leader_of(procs)
    for _ in range(1000):
        if all(p.core.applied >= leader.core.applied for p in procs):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("followers did not catch up")


def record_compaction_proposals(proc: QuorumProcess) -> list[int]:
    """Every compaction this node proposes (any path through RaftServer.propose)."""
    seen: list[int] = []
    original = proc.server.propose

    async def propose(payload: bytes, *, leader_only: bool = False) -> Any:
        request = sc.decode_command(payload).request
        if isinstance(request, sc.CompactionRequest):
            seen.append(request.revision)
        return await original(payload, leader_only=leader_only)

    proc.server.propose = propose  # type: ignore[method-assign]
    return seen


@dataclass
class Scenario:
    procs: list[QuorumProcess]
    clock: FakeClock
    compactors: list[AutoCompactor]
    proposals: list[list[int]]
    written: list[tuple[float, int]] = field(default_factory=list)  # (fake time, revision)

    async def step(self, writes: int = 3) -> None:
        """One second of fake time: a few writes through the leader, then every node's check."""
        leader = await leader_of(self.procs)
        for i in range(writes):
            result = await leader.backend.write(sc.PutRequest(b"k%d" % (i % 2), b"v"))
            assert isinstance(result, sc.PutResponse)
            self.written.append((self.clock.now, result.revision))
        self.clock.advance(1.0)
        for compactor in self.compactors:
            await compactor.check()
        await caught_up(self.procs)

    def compact_revisions(self) -> set[int]:
        return {p.backend.state_machine.compact_revision for p in self.procs}


RETENTION_S = 8.0


async def scenario(procs: list[QuorumProcess], planted: frozenset[str]) -> Scenario:
    clock = FakeClock()
    compactors = [p.backend.make_compactor(periodic(RETENTION_S), clock, planted) for p in procs]
    proposals = [record_compaction_proposals(p) for p in procs]
    return Scenario(procs, clock, compactors, proposals)


async def check_retention(sc_: Scenario) -> int:
    """History below the compact revision is gone on every node; every revision written in
    the last RETENTION_S seconds still reads. Returns the compact revision."""
    (compact,) = sc_.compact_revisions()  # every node applied the same compaction
    assert compact > 0, "nothing was compacted"
    for p in sc_.procs:
        with pytest.raises(RevisionCompacted):
            await p.backend.read(sc.RangeRequest(b"k0", revision=compact - 1))
    window = [r for t, r in sc_.written if t > sc_.clock.now - RETENTION_S]
    assert window
    for p in sc_.procs:
        for revision in window:
            try:
                await p.backend.read(sc.RangeRequest(b"k", b"k\xff", revision=revision))
            except RevisionCompacted:
                raise AssertionError(f"revision {revision} of the retention window was "
                                     f"compacted on node {p.config.id}") from None
    return compact


def _proposers(sc_: Scenario) -> list[int]:
    return [p.config.id for p, seen in zip(sc_.procs, sc_.proposals) if seen]


def test_the_leader_compacts_below_the_window_and_a_new_leader_takes_over() -> None:
    async def body() -> None:
        async with cluster() as procs:
            sc_ = await scenario(procs, frozenset())
            first = await leader_of(procs)
            for _ in range(14):
                await sc_.step()
            compact = await check_retention(sc_)
            assert _proposers(sc_) == [first.config.id]  # followers never proposed
            follower_compactors = [c for p, c in zip(procs, sc_.compactors) if p is not first]
            assert all(c.compactions == c.failures == 0 for c in follower_compactors)

            target = next(p for p in procs if p is not first)
            await first.backend.move_leader(target.config.id)
            assert await leader_of(procs) is target
            before = {p.config.id: len(seen) for p, seen in zip(procs, sc_.proposals)}
            for _ in range(6):
                await sc_.step()
            assert await check_retention(sc_) > compact  # the new leader kept compacting
            after = {p.config.id: len(seen) for p, seen in zip(procs, sc_.proposals)}
            grew = [i for i in after if after[i] > before[i]]
            assert grew == [target.config.id]

    _run(body())


def test_planted_compaction_at_the_current_revision_breaks_the_retention_check() -> None:
    async def body() -> None:
        async with cluster() as procs:
            sc_ = await scenario(procs, frozenset({PLANTED_COMPACT_AT_CURRENT}))
            for _ in range(int(RETENTION_S) + 1):
                await sc_.step()
            with pytest.raises(AssertionError, match="of the retention window was compacted"):
                await check_retention(sc_)

    _run(body())


def test_a_deposed_leaders_compaction_is_refused_not_forwarded() -> None:
    """The leader-only proposal is the second line of defence: a compactor that still
    believes it leads gets NotLeader (logged, counted, the node keeps running)."""

    async def body() -> None:
        async with cluster() as procs:
            leader = await leader_of(procs)
            follower = next(p for p in procs if p is not leader)
            for i in range(20):
                await leader.backend.write(sc.PutRequest(b"k%d" % i, b"v"))
            await caught_up(procs)
            clock = FakeClock()
            stale = follower.backend.make_compactor(
                CompactionPolicy(mode="revision", retention_revisions=5), clock)
            stale._is_leader = lambda: True  # a stale belief that it still leads
            clock.advance(300.0)
            assert await stale.check() is None
            assert stale.failures == 1
            await caught_up(procs)
            assert {p.backend.state_machine.compact_revision for p in procs} == {0}

    _run(body())


def test_serve_config_turns_on_compaction_with_the_system_clock() -> None:
    """The ClusterBackend hook: a node configured with a 1 s periodic retention compacts by
    itself on its real clock (steps of 0.1 s)."""

    async def body() -> None:
        async with cluster(auto_compaction_retention="1s") as procs:
            leader = await leader_of(procs)
            assert all(p.backend.compactor is not None for p in procs)
            first = await leader.backend.write(sc.PutRequest(b"a", b"1"))
            assert isinstance(first, sc.PutResponse)
            for _ in range(400):
                await leader.backend.write(sc.PutRequest(b"a", b"2"))
                if leader.backend.state_machine.compact_revision > first.revision:
                    break
                await asyncio.sleep(0.01)
            await caught_up(procs)
            revisions = {p.backend.state_machine.compact_revision for p in procs}
            assert len(revisions) == 1 and revisions.pop() > first.revision

    _run(body())


def test_compaction_is_off_by_default() -> None:
    async def body() -> None:
        async with cluster() as procs:
            assert all(p.backend.compactor is None for p in procs)

    _run(body())


def test_check_helpers_can_fail() -> None:
    """The scenario's retention check fails on an uncompacted store (it is not vacuous)."""

    async def body() -> None:
        async with cluster() as procs:
            sc_ = await scenario(procs, frozenset())
            await sc_.step()
            with pytest.raises(AssertionError, match="nothing was compacted"):
                await check_retention(sc_)

    _run(body())


# --- compactions in steps (quorum.api.compaction) ---------------------------------------


def test_a_compaction_is_proposed_in_steps_and_replicas_agree(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compaction, "STEP_KEYS", 4)

    async def main() -> None:
        async with cluster() as procs:
            leader = await leader_of(procs)
            for round_ in range(3):
                for k in range(30):
                    await leader.backend.write(sc.PutRequest(b"key%02d" % k, b"v%d" % round_))
            steps: list[Any] = []
            original = leader.server.propose

            async def propose(payload: bytes, *, leader_only: bool = False) -> Any:
                request = sc.decode_command(payload).request
                if isinstance(request, sc.CompactionRequest):
                    steps.append(request)
                return await original(payload, leader_only=leader_only)

            leader.server.propose = propose  # type: ignore[method-assign]
            revision = leader.backend.header().revision - 10
            res = await leader.backend.write(sc.CompactionRequest(revision))
            assert isinstance(res, sc.CompactionResponse)
            assert len(steps) == 30 // 4 + 1  # 30 keys, 4 per step
            assert [s.start for s in steps[:2]] == [b"", b"key04"]
            assert all(s.revision == revision and s.limit == 4 for s in steps)
            await caught_up(procs)
            hashes = {p.backend._sm.state_hash() for p in procs}
            assert len(hashes) == 1
            kv_hashes = {await p.backend.hash_kv(revision) for p in procs}
            assert len(kv_hashes) == 1
            for p in procs:
                assert p.backend._sm.compact_revision == revision
                with pytest.raises(RevisionCompacted):
                    await p.backend.read(sc.RangeRequest(b"key00", revision=revision - 1),
                                         serializable=True)

    asyncio.run(main())
