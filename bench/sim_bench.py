"""Simulator throughput: seeds per second for each profile (CPU time of this process).

Usage: .venv/bin/python bench/sim_bench.py [SEEDS_PER_PROFILE] [PROFILE ...]

CPU time is reported next to wall time because the benchmark machine is shared: wall-clock
seeds/s moves with other work, CPU seeds/s much less. ``make test`` runs 500 default seeds.
"""

from __future__ import annotations

import gc
import logging
import sys
import time

from quorum.sim.run import PROFILES, profile_options, run_seed


def bench(profile: str, seeds: int) -> tuple[float, float, int, int]:
    options = profile_options(profile)
    wall, cpu = time.perf_counter(), time.process_time()
    failed = ops = 0
    for seed in range(seeds):
        result = run_seed(seed, options)
        failed += not result.ok
        ops += result.operations
    return time.perf_counter() - wall, time.process_time() - cpu, failed, ops


def main() -> None:
    logging.disable(logging.WARNING)
    gc.set_threshold(100_000, 50, 100)
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    profiles = sys.argv[2:] or list(PROFILES)
    print("| profile | seeds | failed | client ops/seed | CPU s/seed | seeds/CPU-s | "
          "seeds/s wall |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for profile in profiles:
        wall, cpu, failed, ops = bench(profile, seeds)
        print(f"| {profile} | {seeds} | {failed} | {ops // seeds} | {cpu / seeds:.3f} | "
              f"{seeds / cpu:.2f} | {seeds / wall:.2f} |", flush=True)


if __name__ == "__main__":
    main()
