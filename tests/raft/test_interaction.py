"""Runs every interaction script in tests/raft/testdata (QUORUM_REWRITE=1 regenerates)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .interaction import Interaction, parse_script, run_file

TESTDATA = Path(__file__).parent / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script(path: Path) -> None:
    failures = run_file(path, rewrite=os.environ.get("QUORUM_REWRITE") == "1")
    assert not failures, "\n\n".join(failures)


def test_runner_detects_a_wrong_expectation(tmp_path: Path) -> None:
    script = tmp_path / "wrong.txt"
    script.write_text("add-nodes 1\n----\n1: voters=(7) log=[2,1]\n")
    failures = run_file(script, rewrite=False)
    assert len(failures) == 1 and "voters=(1)" in failures[0]


def test_parse_rejects_missing_separator() -> None:
    with pytest.raises(ValueError):
        parse_script("campaign 1\nnot a separator\n")


def test_unknown_error_is_reported_as_text() -> None:
    env = Interaction()
    env.run("add-nodes 2")
    assert env.run("propose 2 x").startswith("error: NoLeader")
