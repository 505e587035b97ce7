"""The runner's contamination check: member ids a run never created come from outside."""

from __future__ import annotations

from quorum.verify.runner import foreign_members


def test_members_the_run_created_are_not_foreign() -> None:
    # the initial nodes, a learner added and started, a removed node no longer listed
    assert foreign_members({1, 2, 4711}, {1, 2, 3, 4711}) == []


def test_a_member_no_step_of_the_run_created_is_reported() -> None:
    # seed 1220: two nodes listed a member a concurrent run on the host had added
    assert foreign_members({1, 2, 3, 882847279766511095}, {1, 2, 3}) == [882847279766511095]
