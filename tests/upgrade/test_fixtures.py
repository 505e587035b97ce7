"""The stored releases are what docs/upgrade.md says they are, and the servers the upgrade
tests start really run them (not the checkout, which is also importable from the venv)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from .cluster import CURRENT, DATA, FORMAT1_COMMIT, PREBATCH_COMMIT, Code, code_env

# What each tree speaks: (state snapshot format, peer protocol version, ProposalBatch entries)
EXPECTED = {
    FORMAT1_COMMIT: (1, 1, False),
    PREBATCH_COMMIT: (2, 1, False),
    "current": (2, 3, True),
}

PROBE = """
import json, quorum, quorum.node.envelope as e, quorum.state.snapshot as s
import quorum.transport.codec as c
print(json.dumps([quorum.__file__, s.SNAPSHOT_VERSION, c.PROTOCOL_VERSION,
                  hasattr(e, "ProposalBatch")]))
"""

# every flag UpgradeCluster.start passes; each must exist in every release
FLAGS = ("--id", "--data-dir", "--peer-listen", "--client-listen", "--etcd-listen",
         "--initial-cluster", "--tick-ms", "--election-ticks", "--snapshot-entries",
         "--no-fsync", "--log-level")


def trees(releases: dict[str, Code]) -> list[Code]:
    return [releases[FORMAT1_COMMIT], releases[PREBATCH_COMMIT], CURRENT]


def test_stored_fixtures_hold_the_package_only() -> None:
    stored = sorted(p.name for p in DATA.glob("quorum-*.tar.gz"))
    assert stored == sorted(f"quorum-{c}.tar.gz" for c in (FORMAT1_COMMIT, PREBATCH_COMMIT))
    for name in stored:
        with tarfile.open(DATA / name) as tar:
            names = tar.getnames()
        assert "quorum/__init__.py" in names
        assert all(n == "quorum" or n.startswith("quorum/") for n in names), name


@pytest.mark.parametrize("which", list(EXPECTED))
def test_servers_import_the_tree_they_are_given(which: str, releases: dict[str, Code],
                                                tmp_path: Path) -> None:
    """From a scratch working directory with PYTHONPATH at the tree (what UpgradeCluster
    does), ``import quorum`` resolves to that tree and it speaks what EXPECTED says."""
    code = CURRENT if which == "current" else releases[which]
    out = subprocess.run([sys.executable, "-c", PROBE], env=code_env(code), cwd=tmp_path,
                         check=True, capture_output=True, text=True).stdout
    path, snapshot_format, protocol, batches = json.loads(out)
    assert Path(path).resolve().is_relative_to(code.root.resolve())
    assert (snapshot_format, protocol, batches) == EXPECTED[which]


@pytest.mark.parametrize("which", list(EXPECTED))
def test_serve_takes_the_flags_the_tests_pass(which: str, releases: dict[str, Code],
                                              tmp_path: Path) -> None:
    code = CURRENT if which == "current" else releases[which]
    out = subprocess.run([sys.executable, "-m", "quorum.cli.main", "serve", "--help"],
                         env=code_env(code), cwd=tmp_path, check=True, capture_output=True,
                         text=True).stdout
    missing = [flag for flag in FLAGS if flag not in out.split()]
    assert not missing, f"{which} serve lacks {missing}"
