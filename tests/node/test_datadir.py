"""The data-format marker: a directory written by a newer quorum is refused before recovery
touches it; older directories (no marker) are accepted and marked."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from quorum.errors import CorruptionError, DataFormatTooNew
from quorum.node import datadir
from quorum.node.datadir import DATA_FORMAT, DataFormat, check_format, mark_format, read_format
from quorum.node.embedded import EmbeddedNode, EmbeddedOptions
from quorum.node.statemachine import CounterStateMachine
from quorum.storage.fs import OsFileSystem
from quorum.verify.procs import free_ports

FS = OsFileSystem()


def _write_marker(data_dir: Path, body: bytes) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / datadir.FORMAT_FILE).write_bytes(body)


def test_a_new_directory_is_marked_with_this_format(tmp_path: Path) -> None:
    check_format(FS, str(tmp_path / "absent"))  # nothing there yet: nothing to refuse
    mark_format(FS, str(tmp_path))
    marker = read_format(FS, str(tmp_path))
    assert marker is not None and marker.format == DATA_FORMAT
    assert not (tmp_path / (datadir.FORMAT_FILE + ".tmp")).exists()


def test_an_older_marker_is_accepted_and_raised(tmp_path: Path) -> None:
    _write_marker(tmp_path, msgspec.json.encode(DataFormat(DATA_FORMAT - 1, "0.0.1")))
    check_format(FS, str(tmp_path))
    mark_format(FS, str(tmp_path))
    assert read_format(FS, str(tmp_path)) == DataFormat(DATA_FORMAT, datadir.quorum.__version__)


def test_a_newer_marker_is_refused_with_both_formats_named(tmp_path: Path) -> None:
    _write_marker(tmp_path, msgspec.json.encode(DataFormat(DATA_FORMAT + 1, "9.9.9")))
    with pytest.raises(DataFormatTooNew) as err:
        check_format(FS, str(tmp_path))
    assert f"format {DATA_FORMAT + 1}" in str(err.value)
    assert f"up to {DATA_FORMAT}" in str(err.value) and "9.9.9" in str(err.value)


@pytest.mark.parametrize("body", [b"", b"{", b"[1]", b'{"format": "3"}', b'{"format": 0}'])
def test_a_damaged_marker_is_reported_as_corruption(tmp_path: Path, body: bytes) -> None:
    _write_marker(tmp_path, body)
    with pytest.raises(CorruptionError):
        check_format(FS, str(tmp_path))


def _serve(data_dir: Path) -> subprocess.CompletedProcess[str]:
    peer, client, etcd = free_ports(3)
    cmd = [sys.executable, "-m", "quorum.cli.main", "serve", "--id", "1",
           "--data-dir", str(data_dir), "--peer-listen", f"127.0.0.1:{peer}",
           "--client-listen", f"127.0.0.1:{client}", "--etcd-listen", f"127.0.0.1:{etcd}",
           "--initial-cluster", f"1=127.0.0.1:{peer}/{client}/{etcd}", "--log-level", "warning"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_serve_refuses_a_newer_directory_and_leaves_it_untouched(tmp_path: Path) -> None:
    data_dir = tmp_path / "node1"
    _write_marker(data_dir, msgspec.json.encode(DataFormat(DATA_FORMAT + 1, "9.9.9")))
    before = sorted(os.listdir(data_dir))
    result = _serve(data_dir)
    assert result.returncode != 0
    assert "DataFormatTooNew" in result.stderr, result.stderr
    assert sorted(os.listdir(data_dir)) == before  # no wal/ or snap/ created: refused first


def test_embedded_node_refuses_a_newer_directory(tmp_path: Path) -> None:
    _write_marker(tmp_path, msgspec.json.encode(DataFormat(DATA_FORMAT + 1)))
    (port,) = free_ports(1)
    node = EmbeddedNode(1, {1: f"127.0.0.1:{port}"}, str(tmp_path), CounterStateMachine(),
                        EmbeddedOptions())

    async def start() -> None:
        await node.start()

    with pytest.raises(DataFormatTooNew):
        asyncio.run(start())
