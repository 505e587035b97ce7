"""`quorum wal inspect` / `wal verify` on a real data directory, healthy and corrupted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from quorum.raft.types import Entry, HardState
from quorum.storage.durable import DurableStorage
from quorum.storage.fs import OsFileSystem


def _quorum(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quorum.cli.main", *args],
                          capture_output=True, text=True, timeout=60)


def _write_log(data_dir: Path) -> None:
    storage = DurableStorage.open(OsFileSystem(), str(data_dir))
    for batch in range(20):
        entries = [Entry(term=1, index=batch * 10 + k + 1, data=b"payload-%d" % k * 20)
                   for k in range(10)]
        storage.save(HardState(term=1, vote=1, commit=batch * 10), entries, True)
    storage.close()


def test_wal_verify_passes_a_healthy_directory_and_fails_a_corrupted_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    _write_log(data_dir)
    ok = _quorum("wal", "verify", str(data_dir))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    inspect = _quorum("-w", "json", "wal", "inspect", str(data_dir))
    assert inspect.returncode == 0 and "segments" in inspect.stdout
    segment = sorted((data_dir / "wal").glob("*.wal"))[0]
    raw = bytearray(segment.read_bytes())
    middle = len(raw) // 2
    raw[middle] ^= 0xFF  # a bit flip in the middle of the log: not a torn tail
    segment.write_bytes(bytes(raw))
    bad = _quorum("wal", "verify", str(data_dir))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert segment.name in bad.stdout
