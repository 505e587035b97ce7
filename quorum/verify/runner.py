"""``quorum verify``: attack a local cluster of real processes and check what clients saw.

A run starts N ``quorum serve`` processes (peers talk through a PartitionProxy when
partitions or membership changes are on), runs one or more workloads while a nemesis
injects faults, then heals everything, waits for the replicas to converge and checks each
workload's history with its checker, every replica has the same state hash, and writes
succeed again after healing. The report is ``<report_dir>/verify.html`` (verdicts, faults
timeline, links to one page per workload) and ``verify.json``; the exit code follows the
overall verdict.

Workloads (``quorum.verify.workloads_*``): ``register`` (read / write / cas, linearizability),
``append`` (list-append transactions, Elle), ``lock`` (lock + fenced resource, fencing
check), ``watch`` (watch guarantees against the committed history, revision monotonicity),
``lease`` (keys of stopped leases vanish not before the TTL, and not later than the leaders
seen leading meanwhile can account for: every node's status is sampled through a lease run).

Nemeses: ``kill`` (SIGKILL, restart later), ``pause`` (SIGSTOP / SIGCONT), ``partition``
(isolate a node or split the cluster through the proxy), ``clock`` (restart a node with its
clock running 10-30% fast or slow), ``member`` (remove a follower, wipe it, add it back as a
learner under a new id, wait for it to catch up, promote it: the size stays constant).
Faults are applied one at a time; each heals itself before the next starts.
"""

from __future__ import annotations

import asyncio
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from quorum.client.aio import AsyncClient
from quorum.errors import QuorumError
from quorum.verify.history import Operation
from quorum.verify.leaders import LeaderMonitor
from quorum.verify.procs import ProcCluster, free_ports
from quorum.verify.proxy import PartitionProxy
from quorum.verify.workloads_append import AppendWorkload
from quorum.verify.workloads_base import FaultSpan, RunContext, Workload, WorkloadVerdict
from quorum.verify.workloads_html import esc, page, table
from quorum.verify.workloads_lease import LeaseWorkload
from quorum.verify.workloads_lock import LockWorkload
from quorum.verify.workloads_register import RegisterWorkload
from quorum.verify.workloads_watch import WatchWorkload

NEMESES = ("kill", "pause", "partition", "clock", "member")
WORKLOADS = ("register", "append", "lock", "watch", "lease")
CLOCK_RATES = (0.7, 0.8, 1.2, 1.3)
# With the member nemesis the servers snapshot often, so that joins early in a run replay the
# log from its first entry and later ones install a snapshot: both paths get exercised.
MEMBER_SNAPSHOT_ENTRIES = 1000


class VerifyOptions(msgspec.Struct, kw_only=True):
    nodes: int = 3
    duration_s: float = 60.0
    nemesis: tuple[str, ...] = ("kill", "pause", "partition")
    clients: int = 5
    keys: int = 4
    fault_interval_s: tuple[float, float] = (1.0, 4.0)
    fault_length_s: tuple[float, float] = (0.5, 3.0)
    tick_ms: int = 50
    election_ticks: int = 10
    report_dir: str = "verify-report"
    data_dir: str = ""  # empty = a temporary directory, removed after a passing run
    seed: int = 0
    planted_bugs: tuple[str, ...] = ()  # passed to the servers (tests of the checkers)
    workloads: tuple[str, ...] = ("register",)
    lock_fencing: bool = True  # False: the lock's resource ignores tokens (a planted bug)
    lock_pause_probability: float = 0.25  # a holder stops renewing and sleeps past its TTL
    lock_ttl_s: int = 2
    lease_ttl_s: int = 2
    # > 0: every lease is renewed that much longer by renewals the lease workload does not
    # record (a planted bug: its late-expiry check must catch it)
    lease_hidden_renewal_s: float = 0.0
    # Raft log entries between snapshots (0: the server's default). With the member nemesis
    # it defaults to MEMBER_SNAPSHOT_ENTRIES, so that a fresh node joins by snapshot.
    snapshot_entries: int = 0
    # None: the servers' default snapshot_log_ratio; a value R: that ratio with no size
    # floor, so the ratio rule governs snapshots of the small states a run builds
    snapshot_log_ratio: float | None = None


class VerifyReport(msgspec.Struct, kw_only=True):
    ok: bool
    verdict: str
    linearizability: str  # the register workload's verdict ("" when it did not run)
    converged: bool
    recovered: bool
    operations: int
    ok_operations: int
    indeterminate: int
    faults: list[str]
    hashes: dict[int, str]
    duration_s: float
    report_html: str = ""
    report_json: str = ""
    problems: list[str] = msgspec.field(default_factory=list)
    workloads: list[WorkloadVerdict] = msgspec.field(default_factory=list)
    # time.monotonic() at which the faults timeline starts: workloads' own JSON files carry
    # raw monotonic times, this lines them up with the faults
    faults_t0: float = 0.0
    # client endpoint -> node id, for every node the run had (members replaced included)
    endpoints: dict[str, int] = msgspec.field(default_factory=dict)
    # the faults as spans of monotonic time (same clock as faults_t0)
    fault_spans: list[FaultSpan] = msgspec.field(default_factory=list)


class _Nemesis:
    def __init__(self, cluster: ProcCluster, proxy: PartitionProxy | None,
                 opts: VerifyOptions, rng: random.Random, log: Callable[[str], None],
                 ctx: RunContext | None = None) -> None:
        self.cluster = cluster
        self.proxy = proxy
        self.opts = opts
        self.rng = rng
        self.log = log
        self.ctx = ctx  # told about nodes that join, so clients can reach them
        self.applied: list[str] = []
        # the same faults as spans of time, for the checks that must allow for them
        self.spans: list[FaultSpan] = ctx.faults if ctx is not None else []
        self.started = time.monotonic()
        self.endpoints = {n.client_url: i for i, n in cluster.nodes.items()}

    async def run(self, until: float) -> None:
        if not self.opts.nemesis:  # a run without faults (a baseline, or workload-only bugs)
            return
        while time.monotonic() < until:
            await asyncio.sleep(self.rng.uniform(*self.opts.fault_interval_s))
            if time.monotonic() >= until:
                break
            kind = self.rng.choice(self.opts.nemesis)
            await getattr(self, f"_{kind}")()

    def _node(self) -> int:
        return self.rng.choice(list(self.cluster.nodes))

    def _note(self, text: str) -> None:
        self.applied.append(f"{time.monotonic() - self.started:7.2f}s {text}")
        self.log(text)

    async def _hold(self) -> None:
        await asyncio.sleep(self.rng.uniform(*self.opts.fault_length_s))

    def _begin(self, kind: str, nodes: tuple[int, ...]) -> int:
        """A fault starts now; returns its index in ``spans`` (its end is open until
        :meth:`_end`, or until :meth:`heal_all`)."""
        self.spans.append(FaultSpan(kind=kind, nodes=nodes, start=time.monotonic(),
                                    end=math.inf))
        return len(self.spans) - 1

    def _end(self, index: int) -> None:
        self.spans[index] = msgspec.structs.replace(self.spans[index], end=time.monotonic())

    async def _kill(self) -> None:
        node = self._node()
        self._note(f"kill n{node}")
        span = self._begin("kill", (node,))
        self.cluster.kill(node)
        await self._hold()
        self.cluster.start_node(node)
        self._end(span)
        self._note(f"restart n{node}")

    async def _pause(self) -> None:
        node = self._node()
        self._note(f"pause n{node}")
        span = self._begin("pause", (node,))
        self.cluster.pause(node)
        await self._hold()
        self.cluster.resume(node)
        self._end(span)
        self._note(f"resume n{node}")

    async def _partition(self) -> None:
        if self.proxy is None:
            return
        ids = list(self.cluster.nodes)
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) // 2)
        minority, majority = tuple(sorted(ids[:cut])), tuple(sorted(ids[cut:]))
        self._note(f"partition {minority} | {majority}")
        span = self._begin("partition", minority)
        self.proxy.partition(minority, majority)
        await self._hold()
        self.proxy.heal()
        self._end(span)
        self._note("heal")

    async def _clock(self) -> None:
        node = self._node()
        rate = self.rng.choice(CLOCK_RATES)
        self._note(f"restart n{node} with clock rate {rate}")
        span = self._begin("clock", (node,))
        self.cluster.kill(node)
        self.cluster.node_env[node] = {"QUORUM_CLOCK_RATE": str(rate)}
        self.cluster.start_node(node)
        await self._hold()
        self._end(span)

    async def _member(self) -> None:
        """Replace a follower by a fresh node: remove it, wipe its data, add it back as a
        learner under the id ``member add`` returns, wait until it caught up (promotion is
        refused until then), promote it. One change at a time keeps a majority of the old
        configuration in every new one (Raft thesis 4.1, single-server changes)."""
        async with AsyncClient(self.cluster.endpoints(), timeout_s=5.0) as client:
            try:
                leader = (await client.status()).leader_id
            except QuorumError as exc:
                self._note(f"member change skipped: no status ({exc})")
                return
            followers = [n for n in self.cluster.nodes if n != leader]
            if not leader or not followers:
                self._note("member change skipped: no leader")
                return
            old = self.rng.choice(followers)
            span = self._begin("member", (old,))
            try:
                if not await self._remove(client, old):
                    return
                self._note(f"member remove n{old}")
                await self._replace(client, old)
            finally:
                self._end(span)

    async def _remove(self, client: AsyncClient, old: int) -> bool:
        """Remove ``old``; an answer lost to a leader change is resolved by reading the member
        list (the removal may have committed)."""
        for _ in range(20):
            try:
                await client.member_remove(old)
                return True
            except QuorumError as exc:
                error = exc
            try:
                if old not in {mb.member_id for mb in await client.member_list(True)}:
                    return True
            except QuorumError:
                pass
            await asyncio.sleep(0.2)
        self._note(f"member remove n{old} failed: {error}")
        return False

    async def _replace(self, client: AsyncClient, old: int) -> None:
        gone = self.cluster.remove_node(old)
        if self.ctx is not None:
            self.ctx.remove_endpoint(gone.client_url)
        shutil.rmtree(self.cluster.base_dir / f"node{old}", ignore_errors=True)
        if self.proxy is not None:
            await self.proxy.remove_target(old)
        peer, native, etcd, listen = free_ports(4)
        new = await self._add_learner(client, f"http://127.0.0.1:{peer}")
        if new is None:
            self._note("member add failed: the cluster is one node short until healing")
            return
        proxied = self.proxy is not None
        joined = self.cluster.add_node(new, (peer, native, etcd),
                                       listen=listen if proxied else None)
        if self.proxy is not None:
            await self.proxy.add_target(new, ("127.0.0.1", listen), peer)
        self.cluster.start_node(new)
        self.endpoints[joined.client_url] = new
        if self.ctx is not None:
            self.ctx.add_endpoint(joined.client_url)
        self._note(f"member add n{new} as a learner (replaces n{old})")
        await self._promote(client, new)

    async def _add_learner(self, client: AsyncClient, peer_url: str) -> int | None:
        """``member add`` a learner at ``peer_url``; returns its id. An add whose answer was
        lost may have committed: the member list then has a member at that URL, which is
        the one to use (adding again would leave a second, ghost member at the same URL)."""
        for _ in range(50):  # the removal must commit before another change is accepted
            try:
                added = await client.member_add([peer_url], is_learner=True)
                if added.member is not None:
                    return added.member.member_id
            except QuorumError:
                pass
            try:
                for mb in await client.member_list(True):
                    if peer_url in mb.peer_urls:
                        return mb.member_id
            except QuorumError:
                pass
            await asyncio.sleep(0.2)
        return None

    async def _promote(self, client: AsyncClient, new: int) -> None:
        error: QuorumError | None = None
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            try:
                await client.member_promote(new)
                self._note(f"member promote n{new}")
                return
            except QuorumError as exc:  # LearnerNotReady until it caught up with the leader
                error = exc
                await asyncio.sleep(0.2)
        self._note(f"member promote n{new} did not succeed in 30s: {error!r}")

    def heal_all(self) -> None:
        for i, span in enumerate(self.spans):
            if span.end == math.inf:
                self._end(i)
        if self.proxy is not None:
            self.proxy.heal()
        for node_id, node in self.cluster.nodes.items():
            self.cluster.resume(node_id)
            if not node.alive:
                self.cluster.start_node(node_id)

    async def settle_members(self) -> None:
        """After healing: a learner the nemesis could not promote is promoted now, so the
        cluster ends with as many voters as it started with."""
        async with AsyncClient(self.cluster.endpoints(), timeout_s=5.0) as client:
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline:
                try:
                    learners = [mb.member_id for mb in await client.member_list(True)
                                if mb.is_learner]
                    if not learners:
                        return
                    if learners[0] not in self.cluster.nodes:  # added, never started
                        await client.member_remove(learners[0])
                        self._note(f"member remove n{learners[0]} (never started)")
                        continue
                    await client.member_promote(learners[0])
                    self._note(f"member promote n{learners[0]} (after healing)")
                except QuorumError:
                    await asyncio.sleep(0.3)


def _check_options(opts: VerifyOptions) -> None:
    unknown = set(opts.nemesis) - set(NEMESES)
    if unknown:
        raise ValueError(f"unknown nemesis {sorted(unknown)}: choose from {', '.join(NEMESES)}")
    unknown = set(opts.workloads) - set(WORKLOADS)
    if unknown or not opts.workloads:
        raise ValueError(f"unknown workload {sorted(unknown)}: choose from "
                         f"{', '.join(WORKLOADS)}")
    if opts.snapshot_entries < 0:
        raise ValueError("snapshot_entries must be >= 0")
    if opts.snapshot_log_ratio is not None and opts.snapshot_log_ratio < 0:
        raise ValueError("snapshot_log_ratio must be >= 0")


def _make_workloads(opts: VerifyOptions, ctx: RunContext) -> list[Workload]:
    """The selected workloads, each with its own clients (``opts.clients`` per workload for
    register and append; the others need fewer to make their point)."""
    made: dict[str, Callable[[], Workload]] = {
        "register": lambda: RegisterWorkload(ctx, opts.clients, opts.keys),
        "append": lambda: AppendWorkload(ctx, opts.clients, opts.keys),
        "lock": lambda: LockWorkload(ctx, 3, ttl_s=opts.lock_ttl_s, fencing=opts.lock_fencing,
                                     pause_probability=opts.lock_pause_probability),
        "watch": lambda: WatchWorkload(ctx, watchers=2),
        "lease": lambda: LeaseWorkload(ctx, 3, ttl_s=opts.lease_ttl_s,
                                       election_s=opts.election_ticks * opts.tick_ms / 1000,
                                       hidden_renewal_s=opts.lease_hidden_renewal_s),
    }
    return [made[name]() for name in dict.fromkeys(opts.workloads)]


async def run_verify(opts: VerifyOptions, log: Callable[[str], None] = print) -> VerifyReport:
    _check_options(opts)
    base = Path(opts.data_dir or tempfile.mkdtemp(prefix="quorum-verify-"))
    rng = random.Random(opts.seed)
    extra: tuple[str, ...] = (
        ("--planted-bugs", ",".join(opts.planted_bugs)) if opts.planted_bugs else ())
    if opts.snapshot_log_ratio is not None:
        extra += ("--snapshot-log-ratio", str(opts.snapshot_log_ratio),
                  "--snapshot-ratio-floor", "0")
    proxied = bool({"partition", "member"} & set(opts.nemesis))
    snapshot_entries = opts.snapshot_entries or (
        MEMBER_SNAPSHOT_ENTRIES if "member" in opts.nemesis else 10_000)
    cluster = ProcCluster(opts.nodes, base, tick_ms=opts.tick_ms,
                          election_ticks=opts.election_ticks, extra_args=extra,
                          proxied=proxied, snapshot_entries=snapshot_entries)
    proxy = None
    if proxied:
        proxy = PartitionProxy(cluster.real_peer_addresses())
        await proxy.start(cluster.proxy_ports())
    started = time.monotonic()
    await asyncio.to_thread(cluster.start)
    report_dir = Path(opts.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext([n.client_url for n in cluster.nodes.values()], report_dir,
                     random.Random(rng.getrandbits(32)), log,
                     clock_rate_bound=max(CLOCK_RATES) if "clock" in opts.nemesis else 1.0,
                     clock_rate_min=min(CLOCK_RATES) if "clock" in opts.nemesis else 1.0)
    nemesis = _Nemesis(cluster, proxy, opts, random.Random(rng.getrandbits(32)), log, ctx)
    report: VerifyReport | None = None
    try:
        report = await _workload_and_checks(cluster, nemesis, ctx, opts, log, started)
        return report
    finally:
        await ctx.close()
        await asyncio.to_thread(cluster.stop)
        if proxy is not None:
            await proxy.close()
        if report is not None and report.ok and not opts.data_dir:
            shutil.rmtree(base, ignore_errors=True)


async def _workload_and_checks(cluster: ProcCluster, nemesis: _Nemesis, ctx: RunContext,
                               opts: VerifyOptions, log: Callable[[str], None],
                               started: float) -> VerifyReport:
    workloads = _make_workloads(opts, ctx)
    if not await _recovers(ctx.client(), log, b"verify/ready"):
        raise QuorumError("the cluster elected no leader within 30 s of starting")
    until = time.monotonic() + opts.duration_s
    nemesis.started = time.monotonic()
    log(f"running {', '.join(w.name for w in workloads)} for {opts.duration_s:.0f}s with "
        f"nemesis {','.join(opts.nemesis)}")
    await _run_workloads(cluster, nemesis, ctx, workloads, until)
    log("healing")
    nemesis.heal_all()
    await asyncio.to_thread(cluster.wait_ports)
    if "member" in opts.nemesis:
        await nemesis.settle_members()
    recovered = await _recovers(ctx.client(), log)
    verdicts = [await _check(w, log) for w in workloads]
    hashes = await _converged_hashes(cluster)
    converged = len(set(hashes.values())) == 1 and len(hashes) == len(cluster.nodes)
    problems = [f"{v.name}: {p}" for v in verdicts for p in v.problems]
    foreign = foreign_members(await _member_ids(cluster), set(nemesis.endpoints.values()))
    if foreign:
        problems.append(
            f"members this run never created: {', '.join(f'n{i}' for i in foreign)}; another "
            "cluster on this host reached this one (an environment fault: nothing this run "
            "observed can be trusted)")
    if not converged:
        problems.append(f"replicas did not converge: {hashes}")
    if not recovered:
        problems.append("writes did not succeed again after healing")
    unknown = any(v.verdict == "UNKNOWN" for v in verdicts)
    ok = not problems and not unknown
    register = next((v for v in verdicts if v.name == "register"), None)
    report = VerifyReport(
        ok=ok, verdict="PASS" if ok else ("UNKNOWN" if not problems else "FAIL"),
        linearizability=str(register.details["linearizability"]) if register else "",
        converged=converged, recovered=recovered,
        operations=sum(v.operations for v in verdicts),
        ok_operations=sum(v.ok_operations for v in verdicts),
        indeterminate=sum(int(v.details.get("indeterminate", 0)) for v in verdicts),
        faults=nemesis.applied, hashes={k: str(v) for k, v in hashes.items()},
        duration_s=time.monotonic() - started, problems=problems, workloads=verdicts,
        faults_t0=nemesis.started, endpoints=nemesis.endpoints, fault_spans=nemesis.spans,
    )
    report.report_json = str(ctx.report_dir / "verify.json")
    report.report_html = str(ctx.report_dir / "verify.html")
    Path(report.report_json).write_bytes(msgspec.json.encode(report))
    Path(report.report_html).write_text(_index_page(report, opts), encoding="utf-8")
    return report


async def _run_workloads(cluster: ProcCluster, nemesis: _Nemesis, ctx: RunContext,
                         workloads: list[Workload], until: float) -> None:
    """The nemesis and the workloads until ``until`` (workloads may finish what they are
    doing after it). With the lease workload, every node's view of the leader is sampled
    meanwhile (its late-expiry check counts the time leaders were seen leading)."""
    stop = asyncio.Event()
    monitor = None
    if any(w.name == "lease" for w in workloads):
        def nodes() -> dict[int, str]:  # members come and go
            return {i: n.client_url for i, n in cluster.nodes.items()}

        monitor = LeaderMonitor(nodes)
        ctx.leader_samples = monitor.samples
    sampling = asyncio.create_task(monitor.run(stop)) if monitor is not None else None
    try:
        await asyncio.gather(nemesis.run(until), *(w.run(until) for w in workloads))
    finally:
        stop.set()
        if sampling is not None:
            await sampling


async def _check(w: Workload, log: Callable[[str], None]) -> WorkloadVerdict:
    """Run one workload's check. A check that cannot finish (e.g. the cluster does not answer
    its reads) decides nothing: the workload is UNKNOWN, with the error in its details."""
    log(f"checking {w.name}")
    try:
        return await w.check()
    except (TimeoutError, QuorumError, OSError) as exc:
        log(f"{w.name}: the check could not finish: {exc!r}")
        return WorkloadVerdict(name=w.name, verdict="UNKNOWN",
                               details={"error": f"the check could not finish: {exc!r}"})


def _index_page(report: VerifyReport, opts: VerifyOptions) -> str:
    """The run's front page: overall verdict, one row per workload (linking its own page),
    the cluster checks and the faults timeline."""
    rows = [(f"<a href='{esc(Path(v.report_html).name)}'>{esc(v.name)}</a>",
             f"<span class='{v.verdict.lower()}'>{esc(v.verdict)}</span>", v.operations,
             v.ok_operations, esc("; ".join(v.problems[:3]) or "-"))
            for v in report.workloads]
    head = "".join(f"<th>{h}</th>" for h in ("workload", "verdict", "ops", "ok ops",
                                               "problems"))
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    cluster = table(("check", "result"), [
        ("replicas converged", report.converged), ("writes after healing", report.recovered),
        ("state hashes", report.hashes), ("seconds", f"{report.duration_s:.1f}"),
        ("nemesis", ",".join(opts.nemesis)), ("seed", opts.seed),
        ("planted bugs", ",".join(opts.planted_bugs) or "-")])
    faults = "".join(f"<li>{esc(f)}</li>" for f in report.faults) or "<li>none</li>"
    problems = "".join(f"<li>{esc(p)}</li>" for p in report.problems) or "<li>none</li>"
    return page("quorum verify", report.verdict, [
        f"<h2>workloads</h2><table><tr>{head}</tr>{body}</table>",
        f"<h2>problems</h2><ul>{problems}</ul>", "<h2>cluster</h2>" + cluster,
        f"<h2>faults timeline</h2><ol>{faults}</ol>"])


def foreign_members(seen: set[int], created: set[int]) -> list[int]:
    """Member ids the cluster's nodes list that this run never created. A run knows every
    id it made (the initial nodes and each learner it added); any other id came from outside,
    e.g. a concurrent run on the same host whose clients or peers reached these nodes (ports
    are picked free and bound later, see procs.free_ports)."""
    return sorted(seen - created)


async def _member_ids(cluster: ProcCluster) -> set[int]:
    """Every member id some node lists (the union: a contaminated node may be the only one
    that shows it)."""
    seen: set[int] = set()
    for node in cluster.nodes.values():
        try:
            async with AsyncClient([node.client_url], timeout_s=2) as c:
                seen |= {mb.member_id for mb in await c.member_list()}
        except QuorumError:
            pass
    return seen


async def _recovers(client: AsyncClient, log: Callable[[str], None],
                    key: bytes = b"verify/after-heal") -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            await client.put(key, b"ok")
            return True
        except QuorumError as exc:
            log(f"waiting for recovery: {exc}")
            await asyncio.sleep(0.5)
    return False


async def _converged_hashes(cluster: ProcCluster) -> dict[int, tuple[int, int]]:
    deadline = time.monotonic() + 30
    hashes: dict[int, tuple[int, int]] = {}
    while time.monotonic() < deadline:
        hashes = {}
        for node_id, node in cluster.nodes.items():
            try:
                async with AsyncClient([node.client_url], timeout_s=2) as c:
                    kv = await c.hash_kv()
                    hashes[node_id] = (kv.revision, kv.hash)
            except QuorumError:
                pass
        if len(hashes) == len(cluster.nodes) and len(set(hashes.values())) == 1:
            break
        await asyncio.sleep(0.5)
    return hashes


__all__ = ["NEMESES", "WORKLOADS", "Operation", "VerifyOptions", "VerifyReport", "foreign_members",
           "run_verify"]
