"""Replay or sweep harness seeds: ``python -m quorum.raft.harness --seed 1234 [--bugs ...]``."""

from __future__ import annotations

import argparse

from quorum.raft.harness.scenario import PROFILES, run_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quorum.raft.harness")
    parser.add_argument("--seed", type=int, default=0, help="the (first) seed to run")
    parser.add_argument("--count", type=int, default=1, help="run this many seeds from --seed")
    parser.add_argument("--profile", default="mixed", choices=sorted(PROFILES))
    parser.add_argument("--bugs", default="", help="comma-separated planted bugs to switch on")
    parser.add_argument("--safety-ticks", type=int, default=0, help="override the profile")
    parser.add_argument("--verbose", action="store_true", help="print passing seeds too")
    args = parser.parse_args(argv)
    bugs = frozenset(b for b in args.bugs.split(",") if b)
    overrides: dict[str, object] = {}
    if args.safety_ticks:
        overrides["safety_ticks"] = args.safety_ticks
    failed = 0
    for seed in range(args.seed, args.seed + args.count):
        result = run_seed(seed, args.profile, bugs, report=print, **overrides)
        failed += not result.ok
        if result.ok and (args.verbose or args.count == 1):
            print(result.summary())
    if args.count > 1:
        print(f"{args.count - failed}/{args.count} seeds passed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
