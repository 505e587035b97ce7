"""Single-thread benchmarks of quorum.state (see docs/benchmarks.md).

    .venv/bin/python bench/state_bench.py [--keys 1000000] [--runs 3] [--profile]

``--runs N`` repeats the whole measurement in N fresh processes and prints each figure's
median and range. Before/after comparisons: run the same script with ``PYTHONPATH`` set to a
checkout of the other version (``git archive <commit> quorum | tar -x -C /tmp/old``),
alternating the two, in one sitting.

Times are process CPU time (time.process_time): the VM is shared, wall time is noisy.
Measures: puts/s applied (100-byte values, distinct 16-byte keys) through
``StateMachine.apply`` from encoded bytes (what the runtime does) and from Structs; a
1,000-key range; memory per key with history compacted; snapshot write and restore MB/s.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import subprocess
import sys
import time
import tracemalloc

from quorum.state import (
    CompactionRequest,
    PutRequest,
    RangeRequest,
    StateMachine,
    encode_command,
)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def key(i: int) -> bytes:
    return b"key/%012d" % i  # 16 bytes


VALUE = b"v" * 100


def bench_apply_bytes(n: int) -> tuple[float, StateMachine]:
    sm = StateMachine()
    batch = 100_000
    elapsed = 0.0
    for lo in range(0, n, batch):
        cmds = [encode_command(PutRequest(key(i), VALUE)) for i in range(lo, min(n, lo + batch))]
        apply = sm.apply
        t0 = time.process_time()
        for j, cmd in enumerate(cmds, start=lo + 1):
            apply(j, cmd)
        elapsed += time.process_time() - t0
    return n / elapsed, sm


def bench_apply_structs(n: int) -> float:
    sm = StateMachine()
    batch = 100_000
    elapsed = 0.0
    for lo in range(0, n, batch):
        reqs = [PutRequest(key(i), VALUE) for i in range(lo, min(n, lo + batch))]
        apply = sm.apply
        t0 = time.process_time()
        for j, req in enumerate(reqs, start=lo + 1):
            apply(j, req)
        elapsed += time.process_time() - t0
    return n / elapsed


def bench_range(sm: StateMachine, n: int, rounds: int = 300) -> tuple[float, float, float]:
    """(first ms, median ms, p99 ms) of ranges returning 1,000 keys at spread positions. The
    first range after bulk loading pays for merging the new keys into the sorted index."""
    step = max(1, (n - 1000) // rounds)
    times = []
    for r in range(rounds):
        lo = (r * step) % max(1, n - 1000)
        req = RangeRequest(key(lo), key(lo + 1000))
        t0 = time.process_time()
        resp = sm.range(req)
        times.append(time.process_time() - t0)
        assert len(resp.kvs) == 1000
    first, rest = times[0], sorted(times[1:])
    return first * 1e3, rest[len(rest) // 2] * 1e3, rest[int(len(rest) * 0.99)] * 1e3


def bench_memory(n: int, rounds: int = 2, live: bool = False) -> float:
    """Bytes per key: n keys written ``rounds`` times, history compacted. Resident memory
    growth (includes the allocator's free space left by compacted versions), or with
    ``live`` the bytes of live Python objects (tracemalloc; slow)."""
    gc.collect()
    if live:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] if live else rss_bytes()
    sm = StateMachine()
    index = 0
    for rnd in range(rounds):
        for i in range(n):
            index += 1
            # through encoded commands, as the runtime applies them: every key and value is
            # its own object, decoded from the log entry
            sm.apply(index, encode_command(PutRequest(key(i), b"%099d%d" % (i, rnd))))
    index += 1
    sm.apply(index, CompactionRequest(sm.revision))
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if live else rss_bytes()
    del sm
    return (after - before) / n


def bench_hot_history(n: int = 200_000, keys: int = 10) -> float:
    """Live bytes per retained write when ``n`` puts of 100-byte values go to a few hot keys
    and nothing is compacted (tracemalloc): what history costs until the next compaction."""
    cmds = [encode_command(PutRequest(b"lock/%011d" % (i % keys), b"%0100d" % i))
            for i in range(n)]
    sm = StateMachine()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for index, cmd in enumerate(cmds, start=1):
        sm.apply(index, cmd)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return grown / n


def bench_capture_ms(sm: StateMachine) -> float:
    """How long applying stalls to take a snapshot: the point-in-time capture only."""
    t0 = time.process_time()
    stream = sm.snapshot()
    elapsed = time.process_time() - t0
    del stream
    return elapsed * 1e3


def bench_snapshot(sm: StateMachine) -> tuple[float, float, int]:
    """(write seconds, restore seconds, stream bytes)."""
    t0 = time.process_time()
    chunks = list(sm.snapshot())
    write_s = time.process_time() - t0
    size = sum(len(c) for c in chunks)
    t0 = time.process_time()
    restored = StateMachine.from_snapshot(chunks)
    restore_s = time.process_time() - t0
    assert restored.state_hash() == sm.state_hash()
    return write_s, restore_s, size


def measure(n: int) -> dict[str, float]:
    """Every figure once, printed as it is measured; returned by name."""
    out: dict[str, float] = {}
    rate_bytes, sm = bench_apply_bytes(n)
    out["puts_bytes"] = rate_bytes
    print(f"put apply (encoded bytes): {rate_bytes:,.0f} puts/s over {n:,} distinct keys")
    out["puts_structs"] = bench_apply_structs(n)
    print(f"put apply (Structs):       {out['puts_structs']:,.0f} puts/s")
    first_ms, median_ms, p99_ms = bench_range(sm, n)
    out.update(range_ms=median_ms, range_p99_ms=p99_ms, range_first_ms=first_ms)
    print(f"range of 1,000 keys:       {median_ms:.2f} ms median, {p99_ms:.2f} ms p99 "
          f"(first after the bulk load: {first_ms:.0f} ms, merges the sorted key index)")
    out["capture_ms"] = bench_capture_ms(sm)
    print(f"snapshot capture (apply stalls): {out['capture_ms']:.0f} ms")
    write_s, restore_s, size = bench_snapshot(sm)
    out.update(snapshot_mb=size / 1e6, write_s=write_s, restore_s=restore_s,
               write_mbs=size / write_s / 1e6, restore_mbs=size / restore_s / 1e6)
    print(f"snapshot of {n:,} keys:  {size / 1e6:.0f} MB; write {out['write_mbs']:.0f} MB/s "
          f"({write_s:.2f} s), restore {out['restore_mbs']:.0f} MB/s ({restore_s:.2f} s) "
          "(default gc)")
    gc.freeze()  # what a runtime can do after loading: long-lived objects leave the gc's scans
    write_s, restore_s, size = bench_snapshot(sm)
    out.update(write_mbs_frozen=size / write_s / 1e6, restore_mbs_frozen=size / restore_s / 1e6)
    print(f"snapshot, after gc.freeze(): write {out['write_mbs_frozen']:.0f} MB/s, "
          f"restore {out['restore_mbs_frozen']:.0f} MB/s")
    gc.unfreeze()
    del sm
    for rounds in (1, 2):  # a fresh process each: freed memory of earlier steps would hide costs
        rss = float(_run_self("--keys", str(n), "--memory", str(rounds)))
        out[f"rss_{rounds}"] = rss
        print(f"memory per key, {rounds} version(s) each, compacted: {rss:.0f} bytes (RSS growth)")
    n_live = min(n, 200_000)
    for rounds in (1, 2):
        live = float(_run_self("--keys", str(n_live), "--memory", str(rounds), "--live"))
        out[f"live_{rounds}"] = live
        print(f"live bytes per key ({n_live:,} keys), {rounds} version(s), compacted: {live:.0f}")
    return out


def _run_self(*args: str) -> str:
    return subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=1, help="fresh-process runs; medians")
    parser.add_argument("--json", action="store_true", help="one run, figures as JSON last")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--memory", type=int, default=0, help="only measure memory (rounds)")
    parser.add_argument("--live", action="store_true", help="--memory: live bytes, tracemalloc")
    parser.add_argument("--hot", action="store_true", help="only: history bytes per hot write")
    args = parser.parse_args()
    n = args.keys
    if args.hot:
        print(f"{bench_hot_history():.0f} live bytes per retained write (200,000 puts, 10 keys)")
        return
    if args.memory:
        print(f"{bench_memory(n, args.memory, args.live):.0f}")
        return
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        bench_apply_bytes(min(n, 200_000))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
        return
    if args.runs <= 1:
        figures = measure(n)
        if args.json:
            print(json.dumps(figures))
        return
    runs = []
    for i in range(args.runs):
        print(f"--- run {i + 1} of {args.runs}", flush=True)
        out = _run_self("--keys", str(n), "--json")
        print(out.rsplit("\n", 1)[0], flush=True)
        runs.append(json.loads(out.rsplit("\n", 1)[1]))
    print(f"--- medians of {args.runs} runs [min-max]")
    for name in runs[0]:
        values = sorted(r[name] for r in runs)
        print(f"{name:20s} {values[len(values) // 2]:12,.2f}  [{values[0]:,.2f} - {values[-1]:,.2f}]")


if __name__ == "__main__":
    main()
