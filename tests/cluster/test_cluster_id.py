"""Where a node's cluster id comes from (docs/node.md, "Cluster id"): stored in the data
directory at the first start; derived from the initial members for a new cluster; learned
from a member by a joiner; the old fixed id for a directory from before ids were stored."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from quorum.api.process import QuorumProcess
from quorum.errors import ConfigError, CorruptionError
from quorum.node import datadir
from quorum.node.config import NodeConfig, PeerSpec
from quorum.storage.fs import OsFileSystem
from quorum.verify.procs import ProcCluster

pytestmark = [pytest.mark.timeout(120), pytest.mark.xdist_group("procs")]

THREE = (PeerSpec(1, "10.0.0.1:2380", "10.0.0.1:7379"), PeerSpec(2, "10.0.0.2:2380"),
         PeerSpec(3, "10.0.0.3:2380"))


def resolve(data_dir: Path, initial: tuple[PeerSpec, ...] = THREE, *, cluster_id: int = 0,
            join: bool = False, bootstrap: bool = True) -> int:
    """Open the node's storage as a start does and resolve its cluster id."""
    proc = QuorumProcess(NodeConfig(id=1, data_dir=str(data_dir), initial_cluster=initial,
                                    cluster_id=cluster_id, join=join))
    proc._relay_ssl = None
    proc.storage = proc._open_storage()
    try:
        chosen = asyncio.run(proc._cluster_id(proc._members()))
        if bootstrap and proc.storage.is_empty() and not join:
            from quorum.node.core import bootstrap_data
            from quorum.node.kv import KvStateMachine
            from quorum.node.storage import bootstrap

            members = proc._members()
            bootstrap(proc.storage, tuple(m.id for m in members),
                      bootstrap_data(members, KvStateMachine()))
        return chosen
    finally:
        proc.storage.close()


def test_derived_ids_agree_whatever_the_order_and_differ_with_any_address() -> None:
    pairs = [(1, "10.0.0.1:2380"), (2, "10.0.0.2:2380"), (3, "10.0.0.3:2380")]
    ident = datadir.derive_cluster_id(pairs)
    assert ident == datadir.derive_cluster_id(list(reversed(pairs)))
    assert 0 < ident < 1 << 63
    assert ident != datadir.derive_cluster_id([*pairs[:2], (3, "10.0.0.3:2381")])
    assert ident != datadir.derive_cluster_id([*pairs[:2], (4, "10.0.0.3:2380")])


def test_a_new_cluster_derives_its_id_and_keeps_it_across_restarts(tmp_path: Path) -> None:
    first = resolve(tmp_path / "n1")
    assert first == datadir.derive_cluster_id([(p.id, p.peer_url) for p in THREE])
    assert datadir.read_cluster_id(OsFileSystem(), str(tmp_path / "n1")) == first
    # a later --initial-cluster (say, after membership changes) does not change it
    moved = (*THREE[:2], PeerSpec(3, "10.0.0.9:2380"))
    assert resolve(tmp_path / "n1", moved) == first


def test_a_given_id_is_used_and_one_contradicting_the_stored_id_is_refused(tmp_path: Path) -> None:
    assert resolve(tmp_path / "n1", cluster_id=77) == 77
    assert resolve(tmp_path / "n1", cluster_id=77) == 77
    assert resolve(tmp_path / "n1") == 77
    with pytest.raises(ConfigError, match="belongs to cluster 0x4d, not 0x4e"):
        resolve(tmp_path / "n1", cluster_id=78)


def test_a_directory_from_before_stored_ids_keeps_the_old_fixed_id(tmp_path: Path) -> None:
    resolve(tmp_path / "n1")  # a started node: bootstrapped storage
    os.remove(tmp_path / "n1" / datadir.CLUSTER_FILE)  # as a release before ids left it
    assert resolve(tmp_path / "n1") == datadir.LEGACY_CLUSTER_ID
    assert datadir.read_cluster_id(OsFileSystem(), str(tmp_path / "n1")) == \
        datadir.LEGACY_CLUSTER_ID


def test_an_unreadable_cluster_file_is_reported_not_replaced(tmp_path: Path) -> None:
    resolve(tmp_path / "n1")
    (tmp_path / "n1" / datadir.CLUSTER_FILE).write_text("{not json")
    with pytest.raises(CorruptionError, match="cluster-id file"):
        resolve(tmp_path / "n1")


def test_a_joiner_learns_the_id_from_a_member_and_refuses_to_guess(tmp_path: Path) -> None:
    with ProcCluster(3, tmp_path / "c") as cluster:
        members = tuple(PeerSpec(n.id, n.peer_url, n.client_url)
                        for n in cluster.nodes.values())
        joiner = (*members, PeerSpec(9, "127.0.0.1:1"))
        learned = resolve(tmp_path / "j", joiner, join=True)
        assert learned == cluster.cluster_id
    # no member reachable and no --cluster-id: refuse rather than guess
    with pytest.raises(ConfigError, match="needs its cluster's id"):
        resolve(tmp_path / "k", joiner, join=True)
