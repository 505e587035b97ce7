"""Commit rate of a replicated counter: quorum's embedded mode against PySyncObj.

Two ways of driving both systems (``--mode``):

closed (default): three nodes in this one process on loopback (one interpreter and one GIL
for all three, for both systems), N concurrent proposers on the leader, each with one
increment in flight (a proposer issues its next increment from the completion callback of
the previous one). The figure is increments completed per second over the measured window,
after a warm-up.

rate: PySyncObj's own method (its repository's benchmarks/benchmarks.py and testobj.py).
One process per node; every node (followers too) issues its share of an offered rate as a
burst once a second for ``--seconds`` (PySyncObj: 25), each request with a completion
callback and none awaited, then waits ``--drain`` seconds (4). A run passes when completed /
issued, averaged over the nodes, is at least 90% and every burst was issued within its
second; ``--rates`` measures given rates, otherwise the highest passing rate is bisected
(PySyncObj's detectMaxRps). The state machine counts commands (PySyncObj's TestObj);
requests carry ``--size`` random bytes (200: its cluster-size chart, 15K/s for 3 nodes).

- quorum: ``quorum.node.embedded`` (``submit`` with a callback), durable WAL, fsync on (one
  fdatasync per group-committed batch on every node) unless ``--no-fsync-too``'s variant.
  On uvloop when installed, as ``quorum serve``.
- PySyncObj: a ``SyncObj`` with a ``@replicated`` method. Closed mode gives it a file journal
  (``journalFile``: an mmap'd file, never fsynced before an acknowledgement); rate mode uses
  ``SyncObjConf()`` as its benchmark does (log in memory). Default timing, and with
  ``--pysyncobj-tick`` both tick periods set shorter (its leader commits and answers only on a
  tick). ``pip install pysyncobj`` first; without it that part is skipped with a message.

Runs of the systems are interleaved; the tables show medians over ``--runs``.

    .venv/bin/python bench/embedded_bench.py --proposers 1 32 256 --seconds 5 --runs 3
    .venv/bin/python bench/embedded_bench.py --mode rate --seconds 25 --runs 3 \
        --pysyncobj-tick 0.005
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any

import msgspec

from quorum.node.embedded import EmbeddedOptions, loopback_peers, start_embedded
from quorum.node.statemachine import CounterStateMachine

ONE = (1).to_bytes(8, "big", signed=True)


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class Sample:
    def __init__(self, rate: float, cpu_us: float, value_ok: bool) -> None:
        self.rate = rate
        self.cpu_us = cpu_us  # process CPU (all three nodes) per increment
        self.value_ok = value_ok


# --- quorum ------------------------------------------------------------------------------------


async def quorum_run(proposers: int, seconds: float, warmup: float, fsync: bool,
                     root: str, futures: bool = False) -> Sample:
    """``futures``: each proposer is a task awaiting ``propose`` (a future per increment);
    else each proposer is a ``submit`` callback that submits its next increment, as the
    PySyncObj proposers below are."""
    peers = loopback_peers((1, 2, 3))
    opts = EmbeddedOptions(fsync=fsync)
    nodes = [await start_embedded(i, peers, f"{root}/q{i}", CounterStateMachine(), opts)
             for i in peers]
    try:
        leader_id = await nodes[0].wait_for_leader()
        leader = nodes[leader_id - 1]
        done = errors = 0
        stop = False
        in_flight = 0
        drained = asyncio.Event()

        async def proposer() -> None:
            nonlocal done
            while not stop:
                await leader.propose(ONE)
                done += 1

        def callback(result: Any, error: BaseException | None) -> None:
            nonlocal done, errors, in_flight
            if error is None:
                done += 1
            else:
                errors += 1
            if stop:
                in_flight -= 1
                if in_flight == 0:
                    drained.set()
            else:
                leader.submit(ONE, callback)

        tasks = []
        if futures:
            tasks = [asyncio.create_task(proposer()) for _ in range(proposers)]
        else:
            in_flight = proposers
            for _ in range(proposers):
                leader.submit(ONE, callback)
        await asyncio.sleep(warmup)
        n0, c0, t0 = done, cpu_s(), time.perf_counter()
        await asyncio.sleep(seconds)
        n1, c1, t1 = done, cpu_s(), time.perf_counter()
        stop = True
        await asyncio.gather(*tasks)
        if not futures:
            await asyncio.wait_for(drained.wait(), 30)
        # sanity: every returned increment is in the counter on every node
        values = [await n.read(lambda sm: sm.value) for n in nodes]
        ok = errors == 0 and len(set(values)) == 1 and values[0] == done
        return Sample((n1 - n0) / (t1 - t0), (c1 - c0) / max(1, n1 - n0) * 1e6, ok)
    finally:
        for n in nodes:
            await n.stop()


# --- PySyncObj ---------------------------------------------------------------------------------


def pysyncobj_run(proposers: int, seconds: float, warmup: float, root: str,
                  tick_s: float | None = None) -> Sample:
    """``tick_s`` None = PySyncObj's default timing (autoTickPeriod 0.05 s, appendEntriesPeriod
    0.1 s); else both periods are set to it (the leader advances its commit index and
    resolves callbacks only on a tick)."""
    from pysyncobj import SyncObj, SyncObjConf, replicated  # type: ignore[import-untyped]

    class Counter(SyncObj):  # type: ignore[misc]
        def __init__(self, me: str, others: list[str], conf: Any) -> None:
            super().__init__(me, others, conf)
            self.value = 0

        @replicated  # type: ignore[untyped-decorator]
        def incr(self) -> int:
            self.value += 1
            return self.value

    addrs = list(loopback_peers((1, 2, 3)).values())
    timing = {} if tick_s is None else {"autoTickPeriod": tick_s, "appendEntriesPeriod": tick_s}
    nodes = [
        Counter(a, [b for b in addrs if b != a],
                SyncObjConf(journalFile=f"{root}/p{i}.journal", **timing))
        for i, a in enumerate(addrs)
    ]
    try:
        deadline = time.time() + 20
        leader = None
        while leader is None and time.time() < deadline:
            time.sleep(0.05)
            leader = next((n for n in nodes if n._isLeader() and n._isReady()), None)
        if leader is None:
            raise RuntimeError("PySyncObj elected no leader in 20 s")
        done = 0
        errors = 0
        stop = threading.Event()

        def make_callback() -> Callable[[Any, Any], None]:
            def callback(result: Any, error: Any) -> None:
                nonlocal done, errors
                if error == 0:  # FAIL_REASON.SUCCESS
                    done += 1
                else:
                    errors += 1
                if not stop.is_set():
                    leader.incr(callback=callback)

            return callback

        for _ in range(proposers):
            leader.incr(callback=make_callback())
        time.sleep(warmup)
        n0, c0, t0 = done, cpu_s(), time.perf_counter()
        time.sleep(seconds)
        n1, c1, t1 = done, cpu_s(), time.perf_counter()
        stop.set()
        time.sleep(0.5)  # in-flight increments land on the leader
        # sanity: every returned increment is in the leader's counter, and the followers
        # converge to the same value (they apply on the next append carrying the commit)
        ok = errors == 0 and leader.value == done
        deadline = time.time() + 3
        while time.time() < deadline and any(n.value != leader.value for n in nodes):
            time.sleep(0.05)
        ok = ok and all(n.value == leader.value for n in nodes)
        return Sample((n1 - n0) / (t1 - t0), (c1 - c0) / max(1, n1 - n0) * 1e6, ok)
    finally:
        for n in nodes:
            n.destroy()
        time.sleep(0.5)


def run_loop(coro: Coroutine[Any, Any, Sample]) -> Sample:
    """On uvloop when it is installed, as ``quorum serve`` runs."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def have_pysyncobj() -> bool:
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        return False
    return True


# --- offered-rate mode: PySyncObj's own method (its benchmarks/benchmarks.py, testobj.py) ------
#
# One process per node. Every node (followers too: they forward to the leader) issues its share
# of the offered rate as a burst once a second, each request with a completion callback and
# none awaited, for ``seconds``; then it waits ``drain`` seconds for the last completions. A
# run passes when the success ratio (completed requests / issued, averaged over the nodes) is
# at least 0.9 and every burst was issued within its second; the commit rate of a system is
# the highest offered rate that passes (binary search, as PySyncObj's detectMaxRps).


class NodeReport(msgspec.Struct):
    sent: int
    ok: int
    failed: int
    overruns: int  # seconds whose burst took longer than the second
    cpu_s: float  # this process's CPU from the first burst to the end of the drain
    latencies_ms: list[float]  # a sorted, evenly thinned sample of completed requests
    errors: dict[str, int]  # failed requests by reason


class CountingStateMachine:
    """PySyncObj's benchmark object as a quorum StateMachine: counts applied commands (the
    payload is carried and ignored); the result is the count."""

    def __init__(self) -> None:
        self.count = 0

    def apply(self, index: int, data: bytes) -> int:
        self.count += 1
        return self.count

    def snapshot(self) -> Iterator[bytes]:
        yield self.count.to_bytes(8, "big")

    def restore(self, chunks: Iterable[bytes]) -> None:
        self.count = int.from_bytes(b"".join(chunks), "big")


class Tally:
    """Completion bookkeeping shared by both systems' callbacks (same cost for both)."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.latencies: list[float] = []
        self.errors: collections.Counter[str] = collections.Counter()

    def done(self, t0: float, error: str | None) -> None:
        if error is not None:
            self.failed += 1
            self.errors[error] += 1
        else:
            self.ok += 1
            self.latencies.append(time.perf_counter() - t0)

    def report(self, sent: int, overruns: int, cpu: float) -> NodeReport:
        lat = sorted(self.latencies)
        step = max(1, len(lat) // 2000)
        return NodeReport(sent, self.ok, self.failed, overruns, cpu,
                          [x * 1000 for x in lat[::step]], dict(self.errors))


class ChildArgs(msgspec.Struct):
    system: str  # "quorum", "quorum-nofsync", "pysyncobj", "pysyncobj-tick"
    rate: int  # requests/s issued by this node
    size: int
    seconds: int
    settle: float
    drain: float
    me: str
    partners: list[str]
    data_dir: str
    tick_s: float
    yield_every: int = 0  # quorum: submits between yields to the event loop (0 = never)


async def quorum_child(a: ChildArgs) -> None:
    addrs = sorted([a.me, *a.partners])
    peers = {i + 1: addr for i, addr in enumerate(addrs)}
    me = addrs.index(a.me) + 1
    node = await start_embedded(me, peers, a.data_dir, CountingStateMachine(),
                                EmbeddedOptions(fsync=a.system == "quorum"))
    try:
        await node.wait_for_leader(timeout_s=30)
        await asyncio.sleep(a.settle)
        tally, sent, overruns = Tally(), 0, 0
        c0 = cpu_s()
        for _ in range(a.seconds):
            st = time.perf_counter()
            for i in range(a.rate):
                node.submit(random.randbytes(a.size),
                            functools.partial(quorum_done, tally, time.perf_counter()))
                sent += 1
                if a.yield_every and i % a.yield_every == a.yield_every - 1:
                    # let the node's loop run, as PySyncObj's I/O thread runs while the
                    # issuing thread loops (the interpreter switches threads every 5 ms)
                    await asyncio.sleep(0)
            delta = time.perf_counter() - st
            overruns += delta > 1.0
            await asyncio.sleep(max(0.0, 1.0 - delta))
        await asyncio.sleep(a.drain)
        print(msgspec.json.encode(tally.report(sent, overruns, cpu_s() - c0)).decode(),
              flush=True)
        # keep serving until the driver has every node's report (the others need a majority)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await node.stop()


def quorum_done(tally: Tally, t0: float, result: Any, error: BaseException | None) -> None:
    tally.done(t0, None if error is None else type(error).__name__)


def pysyncobj_child(a: ChildArgs) -> None:
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    class TestObj(SyncObj):  # type: ignore[misc]
        def __init__(self, me: str, partners: list[str], conf: Any) -> None:
            super().__init__(me, partners, conf)
            self.count = 0

        @replicated  # type: ignore[untyped-decorator]
        def count_one(self, value: bytes) -> int:
            self.count += 1
            return self.count

    timing = ({"autoTickPeriod": a.tick_s, "appendEntriesPeriod": a.tick_s}
              if a.system == "pysyncobj-tick" else {})
    obj = TestObj(a.me, a.partners, SyncObjConf(**timing))
    try:
        while obj._getLeader() is None:
            time.sleep(0.5)
        time.sleep(a.settle)
        tally, sent, overruns = Tally(), 0, 0
        reasons = {v: k for k, v in vars(FAIL_REASON).items() if k.isupper()}

        def done(t0: float, result: Any, error: Any) -> None:
            tally.done(t0, None if error == FAIL_REASON.SUCCESS else reasons.get(error, str(error)))

        c0 = cpu_s()
        for _ in range(a.seconds):
            st = time.perf_counter()
            for _ in range(a.rate):
                obj.count_one(random.randbytes(a.size),
                          callback=functools.partial(done, time.perf_counter()))
                sent += 1
            delta = time.perf_counter() - st
            overruns += delta > 1.0
            time.sleep(max(0.0, 1.0 - delta))
        time.sleep(a.drain)
        print(msgspec.json.encode(tally.report(sent, overruns, cpu_s() - c0)).decode(),
              flush=True)
        sys.stdin.read()
    finally:
        obj.destroy()


def child_main(encoded: str) -> None:
    a = msgspec.json.decode(encoded, type=ChildArgs)
    logging.basicConfig(level=logging.CRITICAL)  # links dropping at shutdown are expected
    if a.system.startswith("quorum"):
        try:
            import uvloop  # as `quorum serve` does when it is installed
        except ImportError:
            asyncio.run(quorum_child(a))
        else:
            uvloop.run(quorum_child(a))
    else:
        pysyncobj_child(a)


class RatePoint(msgspec.Struct):
    system: str
    rate: int  # offered, all nodes together
    success: float  # mean over nodes of ok / sent
    passed: bool
    commits_s: float  # completed requests / issuing seconds
    p50_ms: float
    p99_ms: float
    cpu_us: float  # CPU of all node processes per completed request
    errors: dict[str, int] = {}


def rate_point(system: str, rate: int, args: argparse.Namespace, root: str) -> RatePoint:
    """One run at an offered rate: three node processes, each issuing rate / 3 per second."""
    addrs = list(loopback_peers((1, 2, 3)).values())
    children = []
    for i, me in enumerate(addrs):
        ca = ChildArgs(system, rate // len(addrs), args.size, args.seconds, args.settle,
                       args.drain, me, [x for x in addrs if x != me], f"{root}/n{i}",
                       args.pysyncobj_tick or 0.005, args.yield_every)
        children.append(subprocess.Popen(
            [sys.executable, __file__, "--child", msgspec.json.encode(ca).decode()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    reports: list[NodeReport | None] = []
    try:
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            reports.append(msgspec.json.decode(line, type=NodeReport) if line else None)
    finally:
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    got = [r for r in reports if r is not None]
    if len(got) < len(children):  # a node crashed: the run fails (as an assert in testobj)
        return RatePoint(system, rate, 0.0, False, 0.0, 0.0, 0.0, 0.0)
    success = statistics.fmean(r.ok / max(1, r.sent) for r in got)
    ok = sum(r.ok for r in got)
    lat = sorted(x for r in got for x in r.latencies_ms) or [0.0]
    return RatePoint(
        system, rate, success,
        success >= 0.9 and not any(r.overruns for r in got),
        ok / args.seconds,
        lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        sum(r.cpu_s for r in got) / max(1, ok) * 1e6,
        dict(sum((collections.Counter(r.errors) for r in got), collections.Counter())),
    )


def print_point(run: int, p: RatePoint) -> None:
    print(f"run {run} {p.system:16s} offered {p.rate:6d}/s: success {p.success:6.1%} "
          f"{'pass' if p.passed else 'FAIL'}  completed {p.commits_s:8.0f}/s  "
          f"p50 {p.p50_ms:7.1f} ms  p99 {p.p99_ms:7.1f} ms  cpu {p.cpu_us:5.0f} us/req"
          f"{'  errors ' + str(p.errors) if p.errors else ''}",
          flush=True)


def find_max(system: str, run: int, args: argparse.Namespace) -> tuple[int, RatePoint | None]:
    """PySyncObj's doDetectMaxRps: bisect the offered rate on pass/fail."""
    lo, hi = args.min_rate, args.max_rate
    best: RatePoint | None = None
    while hi - lo > args.resolution:
        mid = lo + (hi - lo) // 2
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="ebench-") as tmp:
            p = rate_point(system, mid, args, tmp)
        print_point(run, p)
        if p.passed:
            lo, best = mid, p
        else:
            hi = mid
    return lo, best


RATE_SYSTEMS = {"quorum fsync": "quorum", "quorum no-fsync": "quorum-nofsync",
                "pysyncobj": "pysyncobj", "pysyncobj tick": "pysyncobj-tick"}


def rate_main(args: argparse.Namespace) -> None:
    systems = ["quorum fsync"] + (["quorum no-fsync"] if args.no_fsync_too else [])
    if have_pysyncobj():
        systems.append("pysyncobj")
        if args.pysyncobj_tick:
            systems.append("pysyncobj tick")
    else:
        print("PySyncObj is not installed (pip install pysyncobj): skipping it")
    if args.only:
        systems = [s for s in systems if s in args.only]
    label = {s: (f"pysyncobj tick {args.pysyncobj_tick:g}s" if s == "pysyncobj tick" else s)
             for s in systems}
    print(f"load average at start: {os.getloadavg()}", flush=True)
    if args.rates:
        points: dict[tuple[str, int], list[RatePoint]] = {}
        for run in range(1, args.runs + 1):
            for rate in args.rates:
                for s in systems:
                    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ebench-") as tmp:
                        p = rate_point(RATE_SYSTEMS[s], rate, args, tmp)
                    print_point(run, p)
                    points.setdefault((s, rate), []).append(p)
        print(f"\nload average at end: {os.getloadavg()}\n")
        print(f"| system | offered/s | success (median of {args.runs}) | runs passed | "
              "completed/s | p50 ms | p99 ms | CPU µs/request (3 nodes) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for rate in args.rates:
            for s in systems:
                ps = points[(s, rate)]
                med = statistics.median
                print(f"| {label[s]} | {rate:,} | {med(p.success for p in ps):.1%} | "
                      f"{sum(p.passed for p in ps)}/{len(ps)} | "
                      f"{med(p.commits_s for p in ps):,.0f} | {med(p.p50_ms for p in ps):.1f} | "
                      f"{med(p.p99_ms for p in ps):.1f} | {med(p.cpu_us for p in ps):,.0f} |")
        return
    maxima: dict[str, list[int]] = {}
    tops: dict[str, list[RatePoint]] = {}
    for run in range(1, args.runs + 1):
        for s in systems:
            top, best = find_max(RATE_SYSTEMS[s], run, args)
            print(f"run {run} {label[s]}: max passing rate {top}/s", flush=True)
            maxima.setdefault(s, []).append(top)
            tops.setdefault(s, []).extend([best] if best else [])
    print(f"\nload average at end: {os.getloadavg()}\n")
    print(f"| system | max rate at >= 90% success (median of {args.runs}) | runs | "
          "p50 / p99 ms at that rate (medians) | CPU µs/request (3 nodes) |")
    print("| --- | ---: | --- | ---: | ---: |")
    for s in systems:
        ps = tops[s]
        lat = (f"{statistics.median(p.p50_ms for p in ps):,.0f} / "
               f"{statistics.median(p.p99_ms for p in ps):,.0f}" if ps else "-")
        cpu = f"{statistics.median(p.cpu_us for p in ps):,.0f}" if ps else "-"
        print(f"| {label[s]} | {statistics.median(maxima[s]):,.0f} | "
              f"{', '.join(f'{m:,}' for m in maxima[s])} | {lat} | {cpu} |")


# --- driver ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description="replicated counter: quorum embedded vs PySyncObj")
    ap.add_argument("--proposers", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where WALs and journals go (default: a temp dir)")
    ap.add_argument("--pysyncobj-tick", type=float, default=0.0,
                    help="also measure PySyncObj with both tick periods set to this (seconds)")
    ap.add_argument("--no-fsync-too", action="store_true",
                    help="also measure quorum with fsync off (unsafe mode, like PySyncObj's)")
    ap.add_argument("--futures-too", action="store_true",
                    help="closed mode: also measure quorum proposers awaiting propose() "
                         "(a future per increment) instead of submit callbacks")
    ap.add_argument("--mode", choices=("closed", "rate"), default="closed",
                    help="closed: N proposers with one increment each in flight; rate: "
                         "PySyncObj's method (offered rate, callbacks, success ratio)")
    ap.add_argument("--rates", type=int, nargs="*", default=[],
                    help="rate mode: measure these offered rates (all nodes together); "
                         "without it, bisect for the highest passing rate")
    ap.add_argument("--min-rate", type=int, default=1_000)
    ap.add_argument("--max-rate", type=int, default=65_000)
    ap.add_argument("--resolution", type=int, default=1_000)
    ap.add_argument("--size", type=int, default=200, help="rate mode: request bytes")
    ap.add_argument("--settle", type=float, default=4.0,
                    help="rate mode: wait after a leader is known (PySyncObj's 4 s)")
    ap.add_argument("--drain", type=float, default=4.0,
                    help="rate mode: wait for completions after the last burst (4 s)")
    ap.add_argument("--yield-every", type=int, default=1000,
                    help="rate mode, quorum: yield to the event loop every N submits of a "
                         "burst (0 = issue the whole burst in one loop turn)")
    ap.add_argument("--only", nargs="*", default=[], choices=sorted(RATE_SYSTEMS),
                    help="rate mode: measure only these systems")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child)
        return
    if args.mode == "rate":
        args.seconds = int(args.seconds)
        rate_main(args)
        return
    logging.basicConfig(level=logging.ERROR)
    systems: list[str] = ["quorum fsync"]
    if args.futures_too:
        systems.append("quorum fsync futures")
    if args.no_fsync_too:
        systems.append("quorum no-fsync")
    if have_pysyncobj():
        systems.append("pysyncobj")
        if args.pysyncobj_tick:
            systems.append(f"pysyncobj tick {args.pysyncobj_tick:g}s")
    else:
        print("PySyncObj is not installed (pip install pysyncobj): skipping it")
    results: dict[tuple[str, int], list[Sample]] = {}
    for run in range(args.runs):
        for n in args.proposers:
            for system in systems:
                with tempfile.TemporaryDirectory(dir=args.dir, prefix="ebench-") as tmp:
                    if system == "pysyncobj":
                        s = pysyncobj_run(n, args.seconds, args.warmup, tmp)
                    elif system.startswith("pysyncobj"):
                        s = pysyncobj_run(n, args.seconds, args.warmup, tmp, args.pysyncobj_tick)
                    else:
                        s = run_loop(quorum_run(n, args.seconds, args.warmup,
                                                   "no-fsync" not in system, tmp,
                                                   futures="futures" in system))
                results.setdefault((system, n), []).append(s)
                print(f"run {run + 1} {system:16s} proposers {n:4d}: {s.rate:8.0f}/s "
                      f"cpu {s.cpu_us:6.0f} us/op {'ok' if s.value_ok else 'VALUE MISMATCH'}",
                      flush=True)
    print()
    print(f"| system | proposers | increments/s (median of {args.runs}) | runs | "
          "CPU µs/increment (3 nodes) |")
    print("| --- | ---: | ---: | --- | ---: |")
    for n in args.proposers:
        for system in systems:
            samples = results[(system, n)]
            rates = [s.rate for s in samples]
            print(f"| {system} | {n} | {statistics.median(rates):,.0f} | "
                  f"{', '.join(f'{r:,.0f}' for r in rates)} | "
                  f"{statistics.median(s.cpu_us for s in samples):,.0f} |")


if __name__ == "__main__":
    main()
