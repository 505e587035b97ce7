"""Helpers for the etcd API tests: a dev server process (``python -m quorum.api.etcd`` on a
LocalBackend) and an etcdctl runner.

The server runs in its own process: etcd client libraries (aetcd) register the same protobuf
message names (etcdserverpb.*) as quorum's generated stubs, and one process cannot hold both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ETCDCTL = shutil.which("etcdctl")
ETCDCTL_MISSING = (
    "etcdctl not found on PATH: install it with `apt-get install -y etcd-client` (etcd 3.4's "
    "etcdctl) to run the etcdctl interoperability tests"
)
SERVER_START_TIMEOUT_S = 30.0


@dataclass
class EtcdServer:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(workdir: Path, *extra_args: str) -> EtcdServer:
    """Start a dev server on a free port; wait until it writes its port file."""
    port_file = workdir / "port"
    log_path = workdir / "server.log"
    cmd = [
        sys.executable, "-m", "quorum.api.etcd", "--port", "0", "--port-file", str(port_file),
        "--lease-check-interval", "0.1", "--progress-notify-interval", "0.5", *extra_args,
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("etcd dev server did not start:\n" + log_path.read_text())
        time.sleep(0.05)
    return EtcdServer(int(port_file.read_text()), proc, log_path)


def stop_server(server: EtcdServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(10)


Etcdctl = Callable[..., subprocess.CompletedProcess[str]]


def make_etcdctl(endpoint: str) -> Etcdctl:
    assert ETCDCTL is not None
    env = {**os.environ, "ETCDCTL_API": "3"}

    def run(
        *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        # generous timeouts: the suite shares 2 cores with everything else
        cmd = [ETCDCTL, f"--endpoints={endpoint}", "--dial-timeout=10s", "--command-timeout=20s", *args]
        res = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and res.returncode != 0:
            raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    return run
