"""Deterministic simulation of whole clusters built from the production classes.

Runs hundreds of seeds (safety phase with faults, liveness phase after healing), checks that a
run replays bit-identically from its seed, and that each planted bug is caught.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator

import pytest

from quorum.sim.run import SimOptions, profile_options, run_seed

SEEDS = int(os.environ.get("QUORUM_SIM_SEEDS", "500"))
BATCH = 25


@pytest.fixture(autouse=True)
def quiet_and_fast() -> Iterator[None]:
    """Storage recovery logs every torn tail it cuts: expected here, so keep it quiet. The
    simulator allocates many short-lived objects; a larger GC threshold halves run time."""
    logging.disable(logging.WARNING)
    old = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    yield
    gc.set_threshold(*old)
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("first", range(0, SEEDS, BATCH))
def test_seeds_hold_every_invariant(first: int) -> None:
    failures = []
    for seed in range(first, min(first + BATCH, SEEDS)):
        result = run_seed(seed, SimOptions())
        if not result.ok:
            failures.append(f"seed {seed}: {result.violation}: {result.detail}\n"
                            f"  replay: {result.replay}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("profile", ["churn", "figure8", "vote_crash", "reconfig", "lease"])
def test_fault_profiles_hold_every_invariant(profile: str) -> None:
    for seed in range(4):
        result = run_seed(seed, profile_options(profile))
        assert result.ok, f"{result.violation}: {result.detail}\nreplay: {result.replay}"


def test_a_run_replays_bit_identically_from_its_seed() -> None:
    traces: list[list[str]] = [[], []]
    results = [run_seed(11, SimOptions(), trace=t.append) for t in traces]
    assert traces[0] == traces[1]
    assert len(traces[0]) > 10
    assert results[0].history == results[1].history
    assert results[0].messages == results[1].messages
    other: list[str] = []
    run_seed(12, SimOptions(), trace=other.append)
    assert other != traces[0]


def test_runs_do_work_under_faults() -> None:
    results = [run_seed(seed, SimOptions()) for seed in range(3)]
    assert all(r.ok for r in results)
    assert all(r.faults >= 3 for r in results)
    assert sum(r.completed for r in results) > 300
    assert all(r.lin_verdict == "OK" for r in results)
    assert all(r.watch_responses > 50 for r in results)


# bug -> (profile, seed budget). Each must break an invariant or linearizability within the
# budget, and the same seed without the bug must pass (the violation is the bug's doing).
PLANTED = {
    "stale_read": ("default", 10),
    "read_index_no_quorum": ("churn", 40),
    "ack_before_fsync": ("default", 40),
    "skip_vote_log_check": ("churn", 30),
    "forget_vote": ("vote_crash", 60),
    "split_txn_events": ("default", 3),
    "commit_old_term": ("figure8", 20),
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_bug_is_caught(bug: str) -> None:
    profile, budget = PLANTED[bug]
    for seed in range(budget):
        result = run_seed(seed, profile_options(profile, bugs=frozenset({bug})))
        if not result.ok:
            break
    else:
        pytest.fail(f"{bug}: no violation in {budget} seeds of profile {profile}")
    assert f"--bugs {bug}" in result.replay
    clean = run_seed(seed, profile_options(profile))
    assert clean.ok, f"seed {seed} fails without the bug too: {clean.violation} {clean.detail}"


def test_unknown_bug_is_refused() -> None:
    with pytest.raises(ValueError):
        run_seed(1, SimOptions(bugs=frozenset({"no-such-bug"})))
