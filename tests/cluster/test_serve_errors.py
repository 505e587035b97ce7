"""``quorum serve`` that cannot start says why in one line, with no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from quorum.verify.procs import free_ports

pytestmark = [pytest.mark.timeout(60), pytest.mark.xdist_group("procs")]


def test_a_client_port_in_use_is_reported_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (peer,) = free_ports(1)
        run = subprocess.run(
            [sys.executable, "-m", "quorum.cli.main", "serve", "--id", "1",
             "--data-dir", str(tmp_path / "d"), "--peer-listen", f"127.0.0.1:{peer}",
             "--client-listen", f"127.0.0.1:{port}", "--etcd-listen", "",
             "--initial-cluster", f"1=127.0.0.1:{peer}/{port}"],
            capture_output=True, text=True, timeout=50)
    assert run.returncode == 1
    assert "cannot serve:" in run.stderr and "address already in use" in run.stderr
    assert "Traceback" not in run.stderr
