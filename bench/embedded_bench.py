"""Commit rate of a replicated counter: quorum's embedded mode against PySyncObj.

Both systems run three nodes in this one process on loopback (so they share one interpreter
and one GIL the same way) and are driven the same way: N concurrent proposers on the leader,
each with one increment in flight (closed loop: a proposer issues its next increment when the
previous one was applied on the leader and its result returned). The figure is increments
returned per second over the measured window, after a warm-up.

- quorum: ``quorum.node.embedded`` + ``CounterStateMachine``, durable WAL, fsync on (one
  fdatasync per group-committed batch on every node) unless ``--no-fsync``.
- PySyncObj: a ``SyncObj`` subclass with a ``@replicated`` increment, default ``SyncObjConf``
  plus a file journal (``journalFile``); optionally (``--pysyncobj-tick``) with shorter tick
  periods, since its leader commits and answers only on a tick. PySyncObj's journal is an mmap'd file that is never
  fsynced before an entry is acknowledged, so it is compared with quorum both ways.
  ``pip install pysyncobj`` first; without it that part is skipped with a message.

Runs of the systems are interleaved; the table shows medians over ``--runs``.

    .venv/bin/python bench/embedded_bench.py --proposers 1 32 --seconds 5 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

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
                     root: str) -> Sample:
    peers = loopback_peers((1, 2, 3))
    opts = EmbeddedOptions(fsync=fsync)
    nodes = [await start_embedded(i, peers, f"{root}/q{i}", CounterStateMachine(), opts)
             for i in peers]
    try:
        leader_id = await nodes[0].wait_for_leader()
        leader = nodes[leader_id - 1]
        done = 0
        stop = False

        async def proposer() -> None:
            nonlocal done
            while not stop:
                await leader.propose(ONE)
                done += 1

        tasks = [asyncio.create_task(proposer()) for _ in range(proposers)]
        await asyncio.sleep(warmup)
        n0, c0, t0 = done, cpu_s(), time.perf_counter()
        await asyncio.sleep(seconds)
        n1, c1, t1 = done, cpu_s(), time.perf_counter()
        stop = True
        await asyncio.gather(*tasks)
        # sanity: every returned increment is in the counter on every node
        values = [await n.read(lambda sm: sm.value) for n in nodes]
        ok = len(set(values)) == 1 and values[0] == done
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


def have_pysyncobj() -> bool:
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        return False
    return True


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
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    systems: list[str] = ["quorum fsync"]
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
                        s = asyncio.run(quorum_run(n, args.seconds, args.warmup,
                                                   system == "quorum fsync", tmp))
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
