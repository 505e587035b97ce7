"""The replay CLI: ``python -m quorum.raft.harness --seed N [--bugs ...]``."""

from __future__ import annotations

import pytest

from quorum.raft.harness.__main__ import main


def test_passing_seed_prints_its_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seed", "3", "--profile", "snapshots", "--safety-ticks", "100"]) == 0
    assert "seed 3 [snapshots] ok" in capsys.readouterr().out


def test_failing_seed_prints_the_replay_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--seed", "0", "--count", "2", "--profile", "figure8", "--bugs", "commit_old_term"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED (safety)" in out
    assert "replay: python -m quorum.raft.harness --seed 0 --profile figure8 --bugs commit_old_term" in out
