"""Configuration of one quorum server process, with ``validate()``.

A config can come from flags or a TOML file (``quorum serve --config node.toml``); every field
has a sane default so ``quorum serve --id 1`` runs a single-node cluster.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Protocol

import msgspec

from quorum.errors import ConfigError
from quorum.raft.config import Config, ReadOnlyOption


class PeerSpec(msgspec.Struct, frozen=True):
    """A member of the initial cluster: its id and addresses (host:port)."""

    id: int
    peer_url: str
    client_url: str = ""
    etcd_url: str = ""
    name: str = ""


class NodeConfig(msgspec.Struct, kw_only=True):
    id: int = 1
    name: str = ""
    # identifies the cluster in peer handshakes; 0 = the one stored in data_dir, else for a new
    # cluster derived from initial_cluster, for a joiner learned from a member (quorum.node.datadir)
    cluster_id: int = 0
    data_dir: str = "quorum-data"
    # addresses (host:port); empty client/etcd address = that API is off
    peer_listen: str = "127.0.0.1:2380"
    client_listen: str = "127.0.0.1:7379"
    etcd_listen: str = "127.0.0.1:2379"
    # the initial cluster (bootstrap); empty = a single-node cluster of this node
    initial_cluster: tuple[PeerSpec, ...] = ()
    join: bool = False  # start empty and wait to be added by an existing cluster
    # timing
    tick_ms: int = 100
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    request_timeout_s: float = 5.0
    # durability and snapshots
    fsync: bool = True
    snapshot_entries: int = 10_000
    snapshot_catchup_entries: int = 5_000
    # and, once the state is over 4 MiB, not before the log since the previous snapshot holds
    # this many times its size (Raft thesis 5.1.1; 0 = the plain interval; see NodeCore)
    snapshot_log_ratio: float = 1.0
    snapshot_ratio_floor: int = 4 << 20  # bytes; smaller snapshots ignore the ratio
    # WAL space reserved ahead of the writes (quorum.storage.wal.WalOptions.preallocate_ahead):
    # appends then land in reserved blocks, whose fdatasync skips growing the file; 0 = off
    wal_reserve_bytes: int = 4 << 20
    # raft knobs
    pre_vote: bool = True
    check_quorum: bool = True
    lease_reads: bool = False
    max_inflight_msgs: int = 256
    max_size_per_msg: int = 1 << 20
    # limits
    max_request_bytes: int = (3 << 20) // 2
    max_txn_ops: int = 128
    # open connections each client port (native, etcd) serves at once; beyond it a new client
    # is closed at once, logged. 0 = derived at startup from the open-file limit: what is
    # left after 256 descriptors for the node's own use, split between the two ports,
    # at most 10,000 each (quorum.api.process.client_connection_cap)
    max_client_connections: int = 0
    # open connections each client port serves at once from one client IP (ZooKeeper's
    # maxClientCnxns; an IPv4-mapped IPv6 address counts as its IPv4 address); beyond it a
    # new client from that IP is closed at once, logged. 0 = no per-IP limit, the default:
    # clients behind a NAT, a proxy or a sidecar share one address, and the cap above
    # already keeps the node's descriptors (docs/node.md). Not with etcd_engine "grpcio".
    max_client_connections_per_ip: int = 0
    # automatic MVCC compaction (etcd's --auto-compaction-*; quorum.api.compactor checks the
    # values): mode "periodic" (retention = a duration, e.g. "1h"; a bare number = hours) or
    # "revision" (retention = revisions to keep); retention 0 = off, the default
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: str | int = "0"
    # the etcd port's gRPC server: "h2" (quorum.api.h2grpc, the default) or "grpcio"
    etcd_engine: str = "h2"
    # TLS on the client ports (the etcd port and the native port alike), with etcd's flag
    # names: a certificate and its key (PEM) turn it on; client_cert_auth also requires every
    # client to present a certificate signed by trusted_ca_file (mutual TLS). Empty = plain
    # TCP. A follower relaying to the leader's native port presents cert_file as its client
    # certificate and trusts trusted_ca_file / peer_trusted_ca_file (docs/node.md).
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    # TLS between members (etcd's --peer-* flags): every member presents peer_cert_file and
    # verifies the others' certificates against peer_trusted_ca_file (which TLS needs here:
    # a member dials the others); peer_client_cert_auth also makes the listening side demand
    # a certificate from the dialer (mutual TLS). Certificates must name the peer address's
    # IP or host (subjectAltName). Every member of a cluster needs the same setting.
    peer_cert_file: str = ""
    peer_key_file: str = ""
    peer_trusted_ca_file: str = ""
    peer_client_cert_auth: bool = False

    def validate(self) -> NodeConfig:
        """Check every rule; raise ConfigError naming the first broken one. Returns self."""
        rules: list[tuple[bool, str]] = [
            (self.id > 0, "id must be a positive integer."),
            (self.cluster_id >= 0,
             "cluster_id must be a positive integer (0 = stored, derived or learned)."),
            (bool(self.data_dir), "data_dir must not be empty."),
            (_is_addr(self.peer_listen), "peer_listen must be host:port."),
            (not self.client_listen or _is_addr(self.client_listen),
             "client_listen must be host:port or empty."),
            (not self.etcd_listen or _is_addr(self.etcd_listen),
             "etcd_listen must be host:port or empty."),
            (self.etcd_engine in ("h2", "grpcio"), "etcd_engine must be 'h2' or 'grpcio'."),
            (bool(self.cert_file) == bool(self.key_file),
             "cert_file and key_file go together (TLS needs both)."),
            (not self.client_cert_auth or (bool(self.trusted_ca_file) and bool(self.cert_file)),
             "client_cert_auth needs trusted_ca_file, cert_file and key_file."),
            (bool(self.peer_cert_file) == bool(self.peer_key_file) == bool(
                self.peer_trusted_ca_file),
             "peer_cert_file, peer_key_file and peer_trusted_ca_file go together."),
            (not self.peer_client_cert_auth or bool(self.peer_cert_file),
             "peer_client_cert_auth needs peer_cert_file, peer_key_file and "
             "peer_trusted_ca_file."),
            (self.tick_ms >= 1, "tick_ms must be at least 1."),
            (self.heartbeat_ticks >= 1, "heartbeat_ticks must be at least 1."),
            (self.election_ticks > self.heartbeat_ticks,
             "election_ticks must be greater than heartbeat_ticks."),
            (self.request_timeout_s > 0, "request_timeout_s must be positive."),
            (self.snapshot_entries >= 0, "snapshot_entries must be >= 0 (0 = never)."),
            (self.snapshot_catchup_entries >= 0, "snapshot_catchup_entries must be >= 0."),
            (self.snapshot_log_ratio >= 0, "snapshot_log_ratio must be >= 0 (0 = off)."),
            (self.snapshot_ratio_floor >= 0, "snapshot_ratio_floor must be >= 0."),
            (self.wal_reserve_bytes >= 0, "wal_reserve_bytes must be >= 0 (0 = off)."),
            (not self.lease_reads or self.check_quorum,
             "lease_reads requires check_quorum (a leader must know when it lost its quorum)."),
            (self.max_request_bytes > 0, "max_request_bytes must be positive."),
            (self.max_txn_ops > 0, "max_txn_ops must be positive."),
            (self.max_client_connections >= 0,
             "max_client_connections must be >= 0 (0 = derived from the open-file limit)."),
            (self.max_client_connections_per_ip >= 0,
             "max_client_connections_per_ip must be >= 0 (0 = no per-IP limit)."),
            (not (self.etcd_listen and self.etcd_engine == "grpcio"
                  and self.max_client_connections_per_ip > 0),
             "max_client_connections_per_ip cannot be enforced on the etcd port by the "
             "grpcio engine (grpc.aio has no hook that sees a connection's peer before "
             "serving it): use etcd_engine 'h2' (the default) or no per-IP limit."),
            (len({p.id for p in self.initial_cluster}) == len(self.initial_cluster),
             "initial_cluster ids must be unique."),
            (not self.initial_cluster or self.join
             or any(p.id == self.id for p in self.initial_cluster),
             "initial_cluster must contain this node's id (or set join)."),
        ]
        for ok, rule in rules:
            if not ok:
                raise ConfigError(rule)
        return self

    @property
    def request_timeout_ticks(self) -> int:
        return max(1, round(self.request_timeout_s * 1000 / self.tick_ms))

    def cluster(self) -> tuple[PeerSpec, ...]:
        """The initial cluster, defaulting to this node alone."""
        if self.initial_cluster:
            return self.initial_cluster
        return (PeerSpec(self.id, self.peer_listen, self.client_listen, self.etcd_listen,
                         self.name),)


class RaftOptions(Protocol):
    """The Raft settings a runtime's options carry (NodeConfig, EmbeddedOptions)."""

    @property
    def election_ticks(self) -> int: ...
    @property
    def heartbeat_ticks(self) -> int: ...
    @property
    def pre_vote(self) -> bool: ...
    @property
    def check_quorum(self) -> bool: ...
    @property
    def lease_reads(self) -> bool: ...


def raft_config(node_id: int, opts: RaftOptions, **extra: Any) -> Config:
    """The core's Config for a runtime's options; ``extra`` sets further Config fields."""
    return Config(
        id=node_id,
        election_ticks=opts.election_ticks,
        heartbeat_ticks=opts.heartbeat_ticks,
        pre_vote=opts.pre_vote,
        check_quorum=opts.check_quorum,
        read_only_option=ReadOnlyOption.LEASE_BASED if opts.lease_reads else ReadOnlyOption.SAFE,
        **extra,
    )


def _is_addr(addr: str) -> bool:
    host, sep, port = addr.rpartition(":")
    return bool(sep) and bool(host) and port.isdigit() and 0 <= int(port) < 65536


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def load_config(path: str | Path, **overrides: Any) -> NodeConfig:
    """Read a TOML config file; keyword overrides (e.g. from flags) win. Raises ConfigError."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(raw, NodeConfig).validate()
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config {path}: {exc}") from None
