"""``quorum verify``: attack a local cluster of real processes and check what clients saw.

A run starts N ``quorum serve`` processes (peers talk through a PartitionProxy), runs a
register workload (read / write / compare-and-set from several clients, each sequential)
while a nemesis injects faults, then heals everything, waits for the replicas to converge and
checks: the client history is linearizable (per key), every replica has the same state hash,
and writes succeed again after healing. The verdict goes to ``<report_dir>/verify.json`` and
``verify.html`` (the history check) and the exit code.

Nemeses: ``kill`` (SIGKILL, restart later), ``pause`` (SIGSTOP / SIGCONT), ``partition``
(isolate a node or split the cluster through the proxy), ``clock`` (restart a node with its
clock running 10-30% fast or slow).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from quorum.client import txn as t
from quorum.client.aio import AsyncClient
from quorum.errors import NoEndpointAvailable, NoLeader, NotLeader, QuorumError
from quorum.verify.history import Operation, Recorder
from quorum.verify.linearizability import Verdict, check
from quorum.verify.models import RegisterModel
from quorum.verify.procs import ProcCluster
from quorum.verify.proxy import PartitionProxy
from quorum.verify.report import write_report

NEMESES = ("kill", "pause", "partition", "clock")
_NOT_APPLIED = (NoLeader, NotLeader, NoEndpointAvailable)


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


class VerifyReport(msgspec.Struct, kw_only=True):
    ok: bool
    verdict: str
    linearizability: str
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


class _Nemesis:
    def __init__(self, cluster: ProcCluster, proxy: PartitionProxy | None,
                 opts: VerifyOptions, rng: random.Random, log: Callable[[str], None]) -> None:
        self.cluster = cluster
        self.proxy = proxy
        self.opts = opts
        self.rng = rng
        self.log = log
        self.applied: list[str] = []

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            await asyncio.sleep(self.rng.uniform(*self.opts.fault_interval_s))
            if time.monotonic() >= until:
                break
            kind = self.rng.choice(self.opts.nemesis)
            await getattr(self, f"_{kind}")()

    def _node(self) -> int:
        return self.rng.choice(list(self.cluster.nodes))

    def _note(self, text: str) -> None:
        self.applied.append(f"{time.strftime('%H:%M:%S')} {text}")
        self.log(text)

    async def _hold(self) -> None:
        await asyncio.sleep(self.rng.uniform(*self.opts.fault_length_s))

    async def _kill(self) -> None:
        node = self._node()
        self._note(f"kill n{node}")
        self.cluster.kill(node)
        await self._hold()
        self.cluster.start_node(node)
        self._note(f"restart n{node}")

    async def _pause(self) -> None:
        node = self._node()
        self._note(f"pause n{node}")
        self.cluster.pause(node)
        await self._hold()
        self.cluster.resume(node)
        self._note(f"resume n{node}")

    async def _partition(self) -> None:
        if self.proxy is None:
            return
        ids = list(self.cluster.nodes)
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) // 2)
        minority, majority = tuple(sorted(ids[:cut])), tuple(sorted(ids[cut:]))
        self._note(f"partition {minority} | {majority}")
        self.proxy.partition(minority, majority)
        await self._hold()
        self.proxy.heal()
        self._note("heal")

    async def _clock(self) -> None:
        node = self._node()
        rate = self.rng.choice([0.7, 0.8, 1.2, 1.3])
        self._note(f"restart n{node} with clock rate {rate}")
        self.cluster.kill(node)
        self.cluster.node_env[node] = {"QUORUM_CLOCK_RATE": str(rate)}
        self.cluster.start_node(node)
        await self._hold()

    def heal_all(self) -> None:
        if self.proxy is not None:
            self.proxy.heal()
        for node_id, node in self.cluster.nodes.items():
            self.cluster.resume(node_id)
            if not node.alive:
                self.cluster.start_node(node_id)


class _RegisterClient:
    """One sequential client: random read / write / cas on a few keys."""

    def __init__(self, cid: int, client: AsyncClient, recorder: Recorder, keys: list[str],
                 rng: random.Random) -> None:
        self.cid = cid
        self.client = client
        self.recorder = recorder
        self.keys = keys
        self.rng = rng
        self.n = 0
        self.last: dict[str, int | None] = {}  # last value this client read per key

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            await self.one()

    async def one(self) -> None:
        key = self.rng.choice(self.keys)
        self.n += 1
        value = self.cid * 1_000_000 + self.n
        roll = self.rng.random()
        if roll < 0.4:
            await self._op("read", key, None, lambda: self._read(key))
        elif roll < 0.8:
            await self._op("write", key, value,
                           lambda: self.client.put(key.encode(), str(value).encode()))
        else:
            expected = self.last.get(key)
            await self._op("cas", key, [expected, value], lambda: self._cas(key, expected, value))

    async def _read(self, key: str) -> int | None:
        kv = await self.client.get(key.encode())
        value = int(kv.value) if kv is not None else None
        self.last[key] = value
        return value

    async def _cas(self, key: str, expected: int | None, new: int) -> bool:
        k = key.encode()
        cmp = t.version(k) == 0 if expected is None else t.value(k) == str(expected).encode()
        resp = await self.client.txn([cmp], [t.put(k, str(new).encode())], [])
        return bool(resp.succeeded)

    async def _op(self, kind: str, key: str, arg: Any, call: Callable[[], Any]) -> None:
        op_id = self.recorder.invoke(self.cid, kind, key, arg)
        try:
            out = await asyncio.wait_for(call(), 5.0)
        except (TimeoutError, QuorumError, OSError) as exc:
            if kind == "read" or isinstance(exc, _NOT_APPLIED):
                self.recorder.fail(op_id, repr(exc))
            else:
                self.recorder.timeout(op_id)  # may or may not have taken effect
            await asyncio.sleep(0.05)
            return
        self.recorder.complete(op_id, out if kind != "write" else None)


async def run_verify(opts: VerifyOptions, log: Callable[[str], None] = print) -> VerifyReport:
    unknown = set(opts.nemesis) - set(NEMESES)
    if unknown:
        raise ValueError(f"unknown nemesis {sorted(unknown)}: choose from {', '.join(NEMESES)}")
    base = Path(opts.data_dir or tempfile.mkdtemp(prefix="quorum-verify-"))
    rng = random.Random(opts.seed)
    extra = ("--planted-bugs", ",".join(opts.planted_bugs)) if opts.planted_bugs else ()
    cluster = ProcCluster(opts.nodes, base, tick_ms=opts.tick_ms,
                          election_ticks=opts.election_ticks, extra_args=extra,
                          proxied="partition" in opts.nemesis)
    proxy = None
    if "partition" in opts.nemesis:
        proxy = PartitionProxy(cluster.real_peer_addresses())
        await proxy.start(cluster.proxy_ports())
    started = time.monotonic()
    await asyncio.to_thread(cluster.start)
    recorder = Recorder(clock=time.monotonic)
    nemesis = _Nemesis(cluster, proxy, opts, random.Random(rng.getrandbits(32)), log)
    report: VerifyReport | None = None
    try:
        report = await _workload_and_checks(cluster, nemesis, recorder, opts, rng, log, started)
        return report
    finally:
        await asyncio.to_thread(cluster.stop)
        if proxy is not None:
            await proxy.close()
        if report is not None and report.ok and not opts.data_dir:
            shutil.rmtree(base, ignore_errors=True)


async def _workload_and_checks(cluster: ProcCluster, nemesis: _Nemesis, recorder: Recorder,
                               opts: VerifyOptions, rng: random.Random,
                               log: Callable[[str], None], started: float) -> VerifyReport:
    keys = [f"reg/{i}" for i in range(opts.keys)]
    endpoints = [n.client_url for n in cluster.nodes.values()]
    # each client starts on a different node, as real clients spread over a cluster
    clients = [AsyncClient(endpoints[i % len(endpoints):] + endpoints[:i % len(endpoints)],
                           timeout_s=3.0) for i in range(opts.clients)]
    until = time.monotonic() + opts.duration_s
    workers = [_RegisterClient(i, c, recorder, keys, random.Random(rng.getrandbits(32)))
               for i, c in enumerate(clients)]
    log(f"running {opts.clients} clients for {opts.duration_s:.0f}s with nemesis "
        f"{','.join(opts.nemesis)}")
    await asyncio.gather(nemesis.run(until), *(w.run(until) for w in workers))
    log("healing")
    nemesis.heal_all()
    await asyncio.to_thread(cluster.wait_ports)
    recovered = await _recovers(clients[0], log)
    hashes = await _converged_hashes(cluster)
    for c in clients:
        await c.close()
    history = recorder.history()
    result = check(RegisterModel(), history, max_steps=5_000_000)
    report_dir = Path(opts.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = write_report(report_dir / "verify", result, history, RegisterModel(),
                                        "quorum verify: register workload")
    converged = len(set(hashes.values())) == 1 and len(hashes) == len(cluster.nodes)
    problems = []
    if result.verdict == Verdict.ILLEGAL:
        problems.append("the client history is not linearizable")
    if not converged:
        problems.append(f"replicas did not converge: {hashes}")
    if not recovered:
        problems.append("writes did not succeed again after healing")
    ok = not problems and result.verdict == Verdict.OK
    return VerifyReport(
        ok=ok, verdict="PASS" if ok else ("UNKNOWN" if not problems else "FAIL"),
        linearizability=result.verdict.name, converged=converged, recovered=recovered,
        operations=len(history), ok_operations=sum(op.status.name == "OK" for op in history),
        indeterminate=sum(op.indeterminate for op in history), faults=nemesis.applied,
        hashes={k: str(v) for k, v in hashes.items()}, duration_s=time.monotonic() - started,
        report_html=str(html_path), report_json=str(json_path), problems=problems,
    )


async def _recovers(client: AsyncClient, log: Callable[[str], None]) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            await client.put(b"verify/after-heal", b"ok")
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


__all__ = ["NEMESES", "Operation", "VerifyOptions", "VerifyReport", "run_verify"]
