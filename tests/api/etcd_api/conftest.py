"""Fixtures for the etcd API tests (helpers in servers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .servers import (
    ETCDCTL,
    ETCDCTL_MISSING,
    Etcdctl,
    EtcdServer,
    make_etcdctl,
    start_server,
    stop_server,
)


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = start_server(tmp_path_factory.mktemp("etcd"))
    yield server
    stop_server(server)
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture
def etcdctl(etcd_server: EtcdServer) -> Etcdctl:
    """Run etcdctl against the module's server: etcdctl("get", "k", input=None, check=True)."""
    if ETCDCTL is None:
        pytest.skip(ETCDCTL_MISSING)
    return make_etcdctl(etcd_server.endpoint)


