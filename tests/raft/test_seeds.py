"""Randomized harness runs: CI seeds across every profile, planted bugs that must be caught,
and a torture campaign (``make torture``; ``QUORUM_SEEDS=N`` sets its size).

A failing seed's message carries the one-line replay command.
"""

from __future__ import annotations

import os

import pytest

from quorum.errors import InvalidConfChange
from quorum.raft import ConfChange, ConfState, RawNode
from quorum.raft.harness.invariants import (
    ELECTION_SAFETY,
    LEADER_COMPLETENESS,
    STALE_READ,
    STATE_MACHINE_SAFETY,
)
from quorum.raft.harness.scenario import PROFILES, Result, run_seed

# seeds per profile in `make test` (300 in all), run in batches so xdist can spread them
CI_SEEDS = {
    "mixed": 60,
    "churn": 45,
    "divergent": 45,
    "snapshots": 40,
    "figure8": 30,
    "vote_crash": 30,
    "reads": 30,
    "lease_reads": 20,
}
BATCH = 5
BATCHES = [
    (profile, start) for profile, count in CI_SEEDS.items() for start in range(0, count, BATCH)
]


def failures(results: list[Result]) -> str:
    return "\n".join(f"{r.summary()}\n  replay: {r.replay()}" for r in results if not r.ok)


def test_ci_budget_covers_every_profile_and_300_seeds() -> None:
    assert set(CI_SEEDS) == set(PROFILES)
    assert sum(CI_SEEDS.values()) >= 300


@pytest.mark.parametrize(("profile", "start"), BATCHES, ids=[f"{p}-{s}" for p, s in BATCHES])
def test_seeds_pass(profile: str, start: int) -> None:
    results = [run_seed(seed, profile) for seed in range(start, start + BATCH)]
    assert all(r.ok for r in results), failures(results)
    assert sum(r.committed for r in results) > 0  # the runs did replicate something
    if profile in ("reads", "lease_reads"):
        assert sum(r.reads for r in results) > 0  # and checked reads


# --- planted bugs: each must be reported as a safety violation within the CI budget --------

PLANTED = {
    # bug: (profile biased to provoke it, invariants it may break, seed budget)
    "commit_old_term": ("figure8", {LEADER_COMPLETENESS, STATE_MACHINE_SAFETY}, 40),
    "skip_vote_log_check": ("divergent", {LEADER_COMPLETENESS, STATE_MACHINE_SAFETY}, 40),
    "forget_vote": ("vote_crash", {ELECTION_SAFETY}, 40),
    "read_index_no_quorum": ("reads", {STALE_READ}, 40),
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_bug_is_caught(bug: str) -> None:
    profile, invariants, budget = PLANTED[bug]
    for seed in range(budget):
        result = run_seed(seed, profile, {bug})
        if not result.ok:
            break
    else:
        pytest.fail(f"{bug}: no violation in {budget} seeds of profile {profile}")
    assert result.kind == "safety", result.summary()
    assert result.violation is not None and result.violation.invariant in invariants
    assert f"--bugs {bug}" in result.replay()
    # the very same run without the bug is clean: the violation is the bug's doing
    clean = run_seed(seed, profile)
    assert clean.ok, clean.summary()


def test_planted_runtime_bug_send_before_persist_is_caught() -> None:
    # The Ready rule of the runtime, not the core, is broken: answers (vote grants, append
    # acknowledgements) leave before the Ready is persisted, and a crash forgets them.
    unsafe = {"unsafe_send_before_persist": True}
    for seed in range(40):
        result = run_seed(seed, "vote_crash", cluster_options=unsafe)
        if not result.ok:
            break
    else:
        pytest.fail("sending before persisting went unnoticed in 40 seeds")
    assert result.kind == "safety", result.summary()
    assert run_seed(seed, "vote_crash").ok


def test_profiles_exercise_what_they_claim() -> None:
    # transfers are rare (about one seed in three carries one out): eight seeds
    mixed = [run_seed(seed, "mixed") for seed in range(8)]
    assert sum(r.conf_changes for r in mixed) > 0
    assert sum(r.transfers for r in mixed) > 0
    assert sum(r.crashes for r in mixed) > 0
    assert sum(r.reads for r in mixed) > 0
    snapshots = [run_seed(seed, "snapshots") for seed in range(4)]
    assert sum(r.snapshots for r in snapshots) > 0
    figure8 = run_seed(0, "figure8")
    assert figure8.leaders > 5  # many terms with a leader


def test_core_error_is_reported_as_a_failing_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: RawNode, cc: ConfChange) -> ConfState:
        raise InvalidConfChange("planted: refuse every committed conf change")

    monkeypatch.setattr(RawNode, "apply_conf_change", refuse)
    for seed in range(5):
        result = run_seed(seed, "mixed")
        if not result.ok:
            break
    assert result.kind == "error", result.summary()
    assert "InvalidConfChange" in str(result.violation)


def test_liveness_violation_is_reported() -> None:
    # no node can time out within the liveness bound, so no leader is ever elected
    result = run_seed(0, "mixed", config={"election_ticks": 5000}, liveness_ticks=100)
    assert result.kind == "liveness", result.summary()
    assert "leader=None" in str(result.violation)


def test_a_run_is_a_function_of_its_seed() -> None:
    first, again = run_seed(7, "churn"), run_seed(7, "churn")
    assert (first.ticks, first.messages, first.committed, first.leaders) == (
        again.ticks,
        again.messages,
        again.committed,
        again.leaders,
    )
    other = run_seed(8, "churn")
    assert (first.messages, first.committed) != (other.messages, other.committed)


# --- torture ----------------------------------------------------------------------------

TORTURE_SEEDS = int(os.environ.get("QUORUM_SEEDS", "2000"))
TORTURE_BATCH = 50


@pytest.mark.torture
@pytest.mark.parametrize("start", range(0, TORTURE_SEEDS, TORTURE_BATCH))
def test_torture_seeds(start: int) -> None:
    profiles = sorted(PROFILES)
    seeds = range(100_000 + start, 100_000 + min(start + TORTURE_BATCH, TORTURE_SEEDS))
    results = [run_seed(seed, profiles[seed % len(profiles)]) for seed in seeds]
    assert all(r.ok for r in results), failures(results)
