#!/usr/bin/env python3
"""Store the ``quorum`` package of an older commit as an upgrade-test fixture.

The upgrade tests (tests/upgrade/) start real servers on code written by earlier releases and
then move their data directories to the current code. CI runs on a clean clone whose history
may be shallow, so the old code cannot be taken from git at test time: it is stored as
``tests/upgrade/data/quorum-<commit>.tar.gz``, the output of
``git archive <commit> quorum | gzip -9 -n`` (``-n``: no name or time stamp in the gzip header,
so regenerating from the same commit gives the same bytes).

Usage (from the repository root, with the full history available)::

    python scripts/make_upgrade_fixture.py ec25af5 dedeab2   # write or refresh those two
    python scripts/make_upgrade_fixture.py --all             # every fixture already stored
    python scripts/make_upgrade_fixture.py --check           # stored fixtures match git

docs/upgrade.md says which fixtures exist and what each one stands for.
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "upgrade" / "data"
PREFIX = "quorum-"
SUFFIX = ".tar.gz"


def fixture_path(commit: str) -> Path:
    return DATA / f"{PREFIX}{commit}{SUFFIX}"


def stored_commits() -> list[str]:
    """Commits of the fixtures already in tests/upgrade/data, sorted."""
    names = sorted(p.name for p in DATA.glob(f"{PREFIX}*{SUFFIX}"))
    return [name[len(PREFIX):-len(SUFFIX)] for name in names]


def short_commit(commit: str) -> str:
    """The 7-digit abbreviation of ``commit``; fails if git does not know it."""
    out = subprocess.run(["git", "rev-parse", "--short=7", "--verify", f"{commit}^{{commit}}"],
                         cwd=ROOT, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def archive(commit: str) -> bytes:
    """``git archive <commit> quorum | gzip -9 -n``: the package only, no tests or docs."""
    tar = subprocess.run(["git", "archive", "--format=tar", commit, "quorum"], cwd=ROOT,
                         check=True, capture_output=True).stdout
    return gzip.compress(tar, compresslevel=9, mtime=0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commits", nargs="*", help="commits to store (any git revision)")
    parser.add_argument("--all", action="store_true", help="regenerate every stored fixture")
    parser.add_argument("--check", action="store_true",
                        help="only compare stored fixtures with git; exit 1 on a difference")
    args = parser.parse_args(argv)
    commits = [short_commit(c) for c in args.commits]
    if args.all or args.check:
        commits += [c for c in stored_commits() if c not in commits]
    if not commits:
        parser.error("name at least one commit, or --all / --check")
    DATA.mkdir(parents=True, exist_ok=True)
    stale = 0
    for commit in commits:
        data, path = archive(commit), fixture_path(commit)
        if args.check:
            same = path.exists() and path.read_bytes() == data
            stale += not same
            print(f"{path.relative_to(ROOT)}: {'ok' if same else 'DIFFERS from git'}")
            continue
        path.write_bytes(data)
        print(f"{path.relative_to(ROOT)}: {len(data):,} bytes")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
