"""``quorum sim`` sweeps: what the summary counts."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import quorum.sim.run as sim_run
from quorum.cli.main import cli
from quorum.sim.run import SimOptions, SimResult


def _fake_run_seed(seed: int, options: SimOptions, trace: object = None) -> SimResult:
    """Seed 1 exhausts the linearizability search budget; the others are decided OK."""
    return SimResult(seed=seed, ok=True, lin_verdict="UNKNOWN" if seed == 1 else "OK")


def test_a_sweep_names_seeds_whose_linearizability_was_not_decided(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A seed whose search ran out of budget is not a failure, but neither is it a pass of
    the linearizability check: the sweep must say which seeds went unchecked."""
    monkeypatch.setattr(sim_run, "run_seed", _fake_run_seed)
    result = CliRunner().invoke(cli, ["sim", "--seeds", "3"])
    assert result.exit_code == 0, result.output
    assert "linearizability not decided (search budget exhausted) for seed(s) 1\n" in \
        result.output


def test_a_sweep_whose_seeds_were_all_decided_names_none(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim_run, "run_seed", _fake_run_seed)
    result = CliRunner().invoke(cli, ["sim", "--seeds", "1", "--first-seed", "5"])
    assert result.exit_code == 0, result.output
    assert "not decided" not in result.output
