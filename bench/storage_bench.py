"""Storage benchmark: WAL append throughput with one fsync per batch, against raw
``write + fdatasync`` of the same bytes, and recovery (replay) read throughput.

    .venv/bin/python bench/storage_bench.py [--dir /tmp] [--profile]

Results go to docs/benchmarks.md by hand, with the machine and the file system of --dir.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import statistics
import subprocess
import tempfile
import time

from quorum.raft.types import Entry, HardState
from quorum.storage import DurableStorage, OsFileSystem, StorageOptions

ENTRY_BYTES = 100
BATCHES = {1: 1000, 16: 600, 256: 300, 1000: 150}  # batch size -> number of batches


def make_batches(batch: int, count: int) -> list[list[Entry]]:
    payload = b"v" * ENTRY_BYTES
    return [
        [Entry(1, b * batch + i + 1, data=payload) for i in range(batch)] for b in range(count)
    ]


def bench_wal(
    directory: str, batch: int, count: int, preallocate: bool
) -> tuple[float, float, int]:
    """(seconds, CPU seconds, bytes written) for ``count`` fsynced saves of ``batch`` entries."""
    batches = make_batches(batch, count)
    options = StorageOptions(preallocate=preallocate)
    storage = DurableStorage.open(OsFileSystem(), directory, options)
    hs = HardState(1, 1, 0)
    start, cpu_start = time.perf_counter(), time.process_time()
    for entries in batches:
        storage.save(hs, entries, must_sync=True)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    written = storage.wal.bytes_written
    storage.close()
    return elapsed, cpu, written


def bench_raw(directory: str, chunk: int, count: int, preallocate: bool) -> tuple[float, float]:
    """``count`` appends of ``chunk`` bytes, each followed by fdatasync."""
    path = os.path.join(directory, "raw.bin")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    if preallocate:
        os.posix_fallocate(fd, 0, chunk * count + 4096)
        os.fsync(fd)
    data = b"r" * chunk
    start, cpu_start = time.perf_counter(), time.process_time()
    offset = 0
    for _ in range(count):
        os.pwrite(fd, data, offset)
        offset += chunk
        os.fdatasync(fd)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    os.close(fd)
    return elapsed, cpu


def bench_append_cpu(directory: str, batch: int, count: int) -> float:
    """CPU microseconds per save without fsync: the WAL's own cost, independent of the disk."""
    batches = make_batches(batch, count)
    storage = DurableStorage.open(OsFileSystem(), directory)
    hs = HardState(1, 1, 0)
    start = time.process_time()
    for entries in batches:
        storage.save(hs, entries, must_sync=False)
    cpu = time.process_time() - start
    storage.close()
    return cpu / count * 1e6


def bench_recovery(directory: str, total_entries: int) -> tuple[float, float, int]:
    """Write a log without fsyncs, then time DurableStorage.open (warm page cache)."""
    storage = DurableStorage.open(OsFileSystem(), directory)
    payload = b"v" * ENTRY_BYTES
    for first in range(1, total_entries + 1, 1000):
        entries = [Entry(1, first + i, data=payload) for i in range(1000)]
        storage.save(HardState(1, 1, 0), entries, must_sync=False)
    storage.wal.sync()
    log_bytes = storage.wal.bytes_written
    storage.close()
    del storage
    start, cpu_start = time.perf_counter(), time.process_time()
    reopened = DurableStorage.open(OsFileSystem(), directory)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    assert reopened.last_index() == total_entries
    reopened.close()
    return elapsed, cpu, log_bytes


def filesystem_of(directory: str) -> str:
    out = subprocess.run(["df", "-T", directory], capture_output=True, text=True, check=False)
    lines = out.stdout.strip().splitlines()
    return lines[-1].split()[1] if len(lines) > 1 else "unknown"


def one_round(
    base: str, batch: int, count: int, preallocate: bool
) -> tuple[float, float, float, float]:
    """One WAL run and one raw run of the same bytes: (wal s, wal CPU s, raw s, raw CPU s)."""
    wal_dir, raw_dir = tempfile.mkdtemp(dir=base), tempfile.mkdtemp(dir=base)
    try:
        seconds, cpu, written = bench_wal(wal_dir, batch, count, preallocate)
        raw_seconds, raw_cpu = bench_raw(raw_dir, written // count, count, preallocate)
    finally:
        shutil.rmtree(wal_dir)
        shutil.rmtree(raw_dir)
    return seconds, cpu, raw_seconds, raw_cpu


def run(base: str, profile: bool, rounds: int) -> None:
    print(f"directory {base} (file system: {filesystem_of(base)}), {ENTRY_BYTES}-byte entries")
    print(f"WAL and raw runs interleaved, median of {rounds} rounds; CPU = process time per batch")
    print(
        "batch  prealloc  entries/s  fsyncs/s  raw fsyncs/s  raw entries/s  wal/raw  "
        "CPU us/batch  raw CPU us/batch"
    )
    for preallocate in (False, True):
        for batch, count in BATCHES.items():
            results = [one_round(base, batch, count, preallocate) for _ in range(rounds)]
            wal_s, wal_cpu, raw_s, raw_cpu = (
                statistics.median(r[i] for r in results) for i in range(4)
            )
            print(
                f"{batch:5d}  {preallocate!s:8s}  {batch * count / wal_s:9.0f}  "
                f"{count / wal_s:8.0f}  {count / raw_s:12.0f}  {batch * count / raw_s:13.0f}  "
                f"{wal_s / raw_s:6.2f}x  {wal_cpu / count * 1e6:12.0f}  {raw_cpu / count * 1e6:16.0f}"
            )
    for batch, count in ((1, 20000), (256, 400), (1000, 150)):
        cpu_dir = tempfile.mkdtemp(dir=base)
        try:
            per_save = min(bench_append_cpu(cpu_dir, batch, count) for _ in range(rounds))
        finally:
            shutil.rmtree(cpu_dir)
        print(
            f"append CPU without fsync, batch {batch}: {per_save:.1f} us/save = "
            f"{batch / per_save * 1e6:,.0f} entries/s of WAL CPU capacity (best of {rounds})"
        )
    recoveries = []
    for _ in range(rounds):
        rec_dir = tempfile.mkdtemp(dir=base)
        try:
            recoveries.append(bench_recovery(rec_dir, 1_000_000))
        finally:
            shutil.rmtree(rec_dir)
    seconds, cpu, log_bytes = min(recoveries)
    print(
        f"recovery (best of {rounds}): {log_bytes / 1e6:.0f} MB of log, 1,000,000 entries: "
        f"wall {seconds:.2f} s = {log_bytes / 1e6 / seconds:.0f} MB/s, CPU {cpu:.2f} s = "
        f"{log_bytes / 1e6 / cpu:.0f} MB/s (warm page cache)"
    )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if profile:
        run_profiles(base)


def run_profiles(base: str) -> None:
    for title, action in (
        ("append batch=256", lambda d: bench_wal(d, 256, 400, False)),
        ("recovery of 300,000 entries", lambda d: bench_recovery(d, 300_000)),
    ):
        directory = tempfile.mkdtemp(dir=base)
        profiler = cProfile.Profile()
        try:
            profiler.runcall(action, directory)
        finally:
            shutil.rmtree(directory)
        print(f"\nprofile: {title}")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to write")
    parser.add_argument("--profile", action="store_true", help="also print cProfile summaries")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per setting")
    args = parser.parse_args()
    run(args.dir, args.profile, args.rounds)


if __name__ == "__main__":
    main()
