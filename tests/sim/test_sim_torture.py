"""Torture campaign (``make torture``): thousands of simulator seeds across every profile.

QUORUM_SIM_SEEDS sets the seeds per profile (default 2000). The seeds of each profile are
split into chunks that pytest-xdist spreads over the cores (``make torture`` runs ``-n 2``).
Any violation fails its chunk with one replay command per failing seed; lease_skew is left
out because it is expected to violate (see docs/sim.md).
"""

from __future__ import annotations

import gc
import logging
import os
import warnings

import pytest

from quorum.sim.run import PROFILES, profile_options, run_seed

SEEDS = int(os.environ.get("QUORUM_SIM_SEEDS", "2000"))
CHUNK = 250
# Start past the seeds make test runs, so the campaign covers new ground.
FIRST = int(os.environ.get("QUORUM_SIM_FIRST_SEED", "100000"))
CAMPAIGN = [p for p in PROFILES if p != "lease_skew"]
# At most one seed in UNDECIDED_SHARE_MAX may end without a linearizability verdict (figure8,
# the hardest, left 30 of 400 undecided at the default budget: docs/verify.md).
UNDECIDED_SHARE_MAX = 4


# A chunk of 250 seeds takes a few minutes; figure8's, whose linearizability search is the
# slowest (up to ~20 CPU-s for one seed), went past pytest's 300 s default under load.
@pytest.mark.torture
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("profile", CAMPAIGN)
@pytest.mark.parametrize("chunk", range(0, SEEDS, CHUNK))
def test_torture_seeds_hold_every_invariant(profile: str, chunk: int) -> None:
    logging.disable(logging.WARNING)
    gc.set_threshold(100_000, 50, 100)
    failures, undecided = [], []
    options = profile_options(profile)
    seeds = range(FIRST + chunk, FIRST + min(chunk + CHUNK, SEEDS))
    for seed in seeds:
        result = run_seed(seed, options)
        if not result.ok:
            failures.append(f"seed {seed}: {result.violation}: {result.detail}\n"
                            f"  replay: {result.replay}")
        elif result.lin_verdict == "UNKNOWN":
            undecided.append(seed)
    assert not failures, "\n".join(failures)
    # A seed whose linearizability search ran out of budget was not checked: say which (in
    # pytest's warnings summary), and fail a chunk where so many were that it checked little.
    if undecided:
        warnings.warn(f"{profile}: {len(undecided)} of {len(seeds)} seeds not checked for "
                      f"linearizability (search budget exhausted): {undecided}", stacklevel=1)
    assert len(undecided) * UNDECIDED_SHARE_MAX <= len(seeds), \
        f"{profile}: {len(undecided)} of {len(seeds)} seeds undecided: {undecided}"
