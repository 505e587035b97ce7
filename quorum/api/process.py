"""``QuorumProcess``: one quorum server, assembled from its parts.

    durable storage (WAL + snapshots)  ─┐
    KV state machine (quorum.state)     ├─ NodeCore ── RaftServer (asyncio) ── ClusterBackend
    peer transport (TCP)               ─┘                                      ├─ native port
                                                                               └─ etcd gRPC port

``quorum serve`` runs one; ``quorum cluster up`` runs several as separate processes; tests use
it in-process too.
"""

from __future__ import annotations

import asyncio
import logging
import random
import resource
import secrets
import ssl
from collections.abc import Callable
from typing import Any

from quorum.api.cluster import ClusterBackend
from quorum.api.compactor import policy_from_config
from quorum.api.etcd.config import EtcdApiConfig, EtcdTls, check_tls_files
from quorum.api.tlsreload import BUILD_ERRORS, ReloadingTls, listening_context
from quorum.errors import ConfigError, QuorumError
from quorum.node import datadir
from quorum.node.clock import SystemClock
from quorum.node.config import NodeConfig, raft_config, split_addr
from quorum.node.core import NodeCore, bootstrap_data
from quorum.node.envelope import MemberInfo
from quorum.node.kv import KvStateMachine
from quorum.node.peers import PeerLink, peer_addresses
from quorum.node.server import RaftServer
from quorum.node.storage import DurableNodeStorage, NodeStorage, bootstrap
from quorum.raft import PLANTED_BUGS, Config
from quorum.state import StateConfig
from quorum.storage.durable import StorageOptions
from quorum.storage.fs import OsFileSystem
from quorum.transport.tcp import PeerTransport

OWN_DESCRIPTORS = 256  # kept for the node's own files, peer links and event loop
MAX_AUTO_CONNECTIONS = 10_000  # per client port, when the cap is derived

log = logging.getLogger("quorum.server")



def client_connection_cap(configured: int, open_file_limit: int | None = None) -> int:
    """The cap on each client port's open connections: ``configured`` when set (> 0), else
    what the open-file limit leaves after ``OWN_DESCRIPTORS`` for the node itself (WAL,
    snapshots, peer links, the event loop), split between the native and etcd ports and
    at most ``MAX_AUTO_CONNECTIONS`` each."""
    if configured > 0:
        return configured
    if open_file_limit is None:
        open_file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if open_file_limit == resource.RLIM_INFINITY:
        return MAX_AUTO_CONNECTIONS
    return max(16, min(MAX_AUTO_CONNECTIONS, (open_file_limit - OWN_DESCRIPTORS) // 2))


class QuorumProcess:
    """A running quorum server. ``await start()``, then ``await stop()``."""

    def __init__(self, config: NodeConfig, *, raft_overrides: dict[str, Any] | None = None,
                 storage: NodeStorage | None = None,
                 planted_bugs: frozenset[str] = frozenset(), clock_rate: float = 1.0) -> None:
        """``planted_bugs`` (tests only) break rules on purpose: Raft's (see
        quorum.raft.config.PLANTED_BUGS), "stale_read" (reads skip ReadIndex) and
        "ack_before_fsync" (the WAL never fsyncs). ``clock_rate`` skews this node's clock."""
        self.config = config.validate()
        self.compaction = policy_from_config(config.auto_compaction_mode,
                                             config.auto_compaction_retention)
        self.planted_bugs = planted_bugs
        self.clock_rate = clock_rate
        # read when the ports start: `quorum serve` raises the open-file limit before that
        self.connection_cap = 0
        self.raft_overrides = raft_overrides or {}
        self._storage_override = storage
        self.native: Any = None
        self.etcd: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._forward_clients: dict[int, Any] = {}

    # --- assembly -------------------------------------------------------------------------

    def _open_storage(self) -> NodeStorage:
        if self._storage_override is not None:
            return self._storage_override
        options = StorageOptions(planted_skip_fsync="ack_before_fsync" in self.planted_bugs,
                                 preallocate_ahead=self.config.wal_reserve_bytes)
        return DurableNodeStorage(datadir.open_storage(OsFileSystem(), self.config.data_dir,
                                                       options))

    def _members(self) -> tuple[MemberInfo, ...]:
        return tuple(
            MemberInfo(p.id, p.name, p.peer_url, p.client_url, p.etcd_url)
            for p in self.config.cluster()
        )

    def _raft_config(self) -> Config:
        cfg = self.config
        return raft_config(
            cfg.id, cfg,
            max_inflight_msgs=cfg.max_inflight_msgs,
            max_size_per_msg=cfg.max_size_per_msg,
            planted_bugs=self.planted_bugs & PLANTED_BUGS,
            **self.raft_overrides,
        )

    async def start(self) -> None:
        cfg = self.config
        # TLS files first: a bad one stops the start before the data directory is touched
        peer_server_ssl, peer_client_ssl = self._peer_tls()
        etcd_tls = self._etcd_tls()
        self._native_ssl = self._native_tls()
        self._relay_ssl = self._relay_tls()
        self._check_relay_tls()
        self.storage = self._open_storage()
        self.kv = KvStateMachine(
            StateConfig(max_request_bytes=cfg.max_request_bytes, max_txn_ops=cfg.max_txn_ops)
        )
        members = self._members()
        self.cluster_id = await self._cluster_id(members)
        if self.storage.is_empty() and not cfg.join:
            voters = tuple(sorted(m.id for m in members))
            bootstrap(self.storage, voters, bootstrap_data(members, KvStateMachine()))
        self.core = NodeCore(
            self._raft_config(), self.storage, self.kv, random.Random(),
            lambda msgs: self.link.send(msgs),
            snapshot_entries=cfg.snapshot_entries,
            snapshot_catchup_entries=cfg.snapshot_catchup_entries,
            snapshot_log_ratio=cfg.snapshot_log_ratio,
            snapshot_ratio_floor=cfg.snapshot_ratio_floor,
            request_timeout_ticks=cfg.request_timeout_ticks,
            members=members,
            incarnation=secrets.randbits(31),
            planted_bugs=self.planted_bugs,
        )
        self.core.fsync = cfg.fsync
        self.server = RaftServer(self.core, tick_s=cfg.tick_ms / 1000,
                                 clock=SystemClock(rate=self.clock_rate))
        self.link = PeerLink(self.server)
        self.transport = PeerTransport(
            self.cluster_id, cfg.id, split_addr(cfg.peer_listen),
            peer_addresses(self.core.members),
            on_messages=self.server.receive,
            on_unreachable=self.link.on_unreachable,
            on_snapshot_chunk=self.link.on_snapshot_chunk,
            server_ssl=peer_server_ssl, client_ssl=peer_client_ssl,
        )
        self.link.transport = self.transport
        self.core.on_members_changed = self.link.update_peers
        self.backend = ClusterBackend(
            self.server, self.kv, cluster_id=self.cluster_id,
            clock=self.server.clock.monotonic,  # lease time on the node's (maybe skewed) clock
            etcd_scheme="https" if cfg.cert_file else "http",
            client_scheme="https" if cfg.cert_file else "http",
            peer_scheme="https" if cfg.peer_cert_file else "http",
            max_request_bytes=cfg.max_request_bytes,
            leader_client=self._leader_client,
            compaction=self.compaction,
        )
        await self.transport.start()
        await self.server.start()
        await self.backend.start()
        await self._start_apis(etcd_tls)
        self._spawn(self._publish_addresses())
        per_ip = cfg.max_client_connections_per_ip
        log.info("node %d serving: peers %s, client %s, etcd %s (at most %d connections "
                 "each, %s)", cfg.id, cfg.peer_listen, cfg.client_listen or "-",
                 cfg.etcd_listen or "-", self.connection_cap,
                 f"{per_ip} per client IP" if per_ip else "no per-IP limit")

    async def _start_apis(self, etcd_tls: EtcdTls | None) -> None:
        cfg = self.config
        self.connection_cap = client_connection_cap(cfg.max_client_connections)
        if cfg.client_listen:
            from quorum.api.native.server import serve_native

            host, port = split_addr(cfg.client_listen)
            self.native = await serve_native(
                self.backend, host, port, tls=self._native_ssl,
                max_connections=self.connection_cap,
                max_connections_per_ip=cfg.max_client_connections_per_ip)
        if cfg.etcd_listen:
            from quorum.api.etcd.server import serve_etcd

            host, port = split_addr(cfg.etcd_listen)
            self.etcd, _port = await serve_etcd(
                self.backend, host, port, tls=etcd_tls, engine=cfg.etcd_engine,
                config=EtcdApiConfig(
                    max_request_bytes=cfg.max_request_bytes,
                    max_connections=self.connection_cap,
                    max_connections_per_ip=cfg.max_client_connections_per_ip))

    def _peer_tls(self) -> tuple[ssl.SSLContext | None, Callable[[], ssl.SSLContext] | None]:
        """PeerTransport's server_ssl (a listening context that switches every handshake to
        the current files, see quorum.api.tlsreload) and client_ssl (the current outbound
        context, asked for each new connection); (None, None): plain TCP. Raises
        ConfigError naming a file that cannot be used."""
        cfg = self.config
        if not cfg.peer_cert_file:
            return None, None
        files = {"peer_cert_file": cfg.peer_cert_file, "peer_key_file": cfg.peer_key_file,
                 "peer_trusted_ca_file": cfg.peer_trusted_ca_file}
        try:
            server = ReloadingTls("the peer port", files, self._peer_server_context)
            client = ReloadingTls("the outbound peer links", files, self._peer_client_context)
            listening = listening_context(server, self._peer_server_context)
        except BUILD_ERRORS as exc:
            raise ConfigError(
                f"cannot use the peer TLS files (peer_cert_file {cfg.peer_cert_file!r}, "
                f"peer_key_file {cfg.peer_key_file!r}, peer_trusted_ca_file "
                f"{cfg.peer_trusted_ca_file!r}): {exc}") from None
        return listening, client.current

    def _peer_server_context(self) -> ssl.SSLContext:
        cfg = self.config
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.minimum_version = ssl.TLSVersion.TLSv1_2
        server.load_cert_chain(cfg.peer_cert_file, cfg.peer_key_file)
        server.load_verify_locations(cfg.peer_trusted_ca_file)
        server.verify_mode = (ssl.CERT_REQUIRED if cfg.peer_client_cert_auth
                              else ssl.CERT_OPTIONAL)
        return server

    def _peer_client_context(self) -> ssl.SSLContext:
        cfg = self.config
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the listener's name
        client.minimum_version = ssl.TLSVersion.TLSv1_2
        client.load_verify_locations(cfg.peer_trusted_ca_file)
        client.load_cert_chain(cfg.peer_cert_file, cfg.peer_key_file)
        return client

    def _etcd_tls(self) -> EtcdTls | None:
        """The etcd port's TLS settings; unreadable files or a key that does not match the
        certificate are a ConfigError at startup, naming the file."""
        cfg = self.config
        if not cfg.cert_file:
            return None
        tls = EtcdTls(cfg.cert_file, cfg.key_file,
                      cfg.trusted_ca_file if cfg.client_cert_auth else "")
        check_tls_files(tls)
        return tls

    def _native_tls(self) -> ssl.SSLContext | None:
        """The native port's listening TLS context (it switches every handshake to the
        current files, see quorum.api.tlsreload). The native port is a client port like the
        etcd port, so it takes the same settings (cert_file, key_file, and trusted_ca_file
        with client_cert_auth): one switch secures every way in to the data (docs/node.md)."""
        cfg = self.config
        if not cfg.cert_file or not cfg.client_listen:
            return None
        from quorum.api.native.server import server_tls_context

        client_ca = cfg.trusted_ca_file if cfg.client_cert_auth else ""

        def build() -> ssl.SSLContext:
            return server_tls_context(cfg.cert_file, cfg.key_file, client_ca)

        try:
            source = ReloadingTls("the native port", {
                "cert_file": cfg.cert_file, "key_file": cfg.key_file,
                "trusted_ca_file": client_ca}, build)
            listening = listening_context(source, build)
        except BUILD_ERRORS as exc:
            raise ConfigError(f"cannot use cert_file {cfg.cert_file!r}, key_file "
                              f"{cfg.key_file!r}, trusted_ca_file {cfg.trusted_ca_file!r} "
                              f"for the native port: {exc}") from None
        return listening

    def _relay_tls(self) -> ReloadingTls[ssl.SSLContext] | None:
        """The context of the native client a follower uses to relay to the leader (lease
        keepalives), which is another member's TLS native port; each new relay connection
        takes the current one (quorum.api.tlsreload). It presents this member's cert_file
        as its client certificate (accepted where client_cert_auth is on when
        trusted_ca_file signed it) and trusts trusted_ca_file and peer_trusted_ca_file (the
        system's store when neither is set) plus this member's own certificate (members
        sharing one self-signed certificate)."""
        cfg = self.config
        if not cfg.cert_file:
            return None
        cas = [f for f in (cfg.trusted_ca_file, cfg.peer_trusted_ca_file) if f]
        files = {"cert_file": cfg.cert_file, "key_file": cfg.key_file,
                 **{f"trusted_ca_file_{i}": ca for i, ca in enumerate(cas)}}
        return ReloadingTls("the leader relay client", files,
                            lambda: self._relay_context(cas))

    def _relay_context(self, cas: list[str]) -> ssl.SSLContext:
        from quorum.client.tls import ClientTls

        cfg = self.config
        ctx = ClientTls(ca_file=cas[0] if cas else "", cert_file=cfg.cert_file,
                        key_file=cfg.key_file).context()
        try:
            for extra in (*cas[1:], cfg.cert_file):
                ctx.load_verify_locations(extra)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use {extra!r} as a trusted CA: {exc}") from None
        return ctx

    async def _relay_connect(self, endpoint: str, timeout_s: float,
                             max_frame_bytes: int) -> Any:
        """The relay client's connector: the current context for each new connection."""
        from quorum.client.connection import open_connection

        assert self._relay_ssl is not None
        return await open_connection(endpoint, timeout_s, max_frame_bytes,
                                     tls=self._relay_ssl.current())

    def _check_relay_tls(self) -> None:
        """Warn at startup when this member's relay could not open a TLS session with a
        member configured like itself: the leader's certificate not trusted or not naming
        the client address, or (with client_cert_auth) this member's certificate not
        trusted by trusted_ca_file. Not fatal: only lease keepalives and learner promotions
        sent to a follower need the relay, and they would fail with a timeout, far from
        their cause."""
        cfg = self.config
        if self._native_ssl is None or self._relay_ssl is None:
            return
        host, _ = split_addr(cfg.client_listen)
        if host in ("", "0.0.0.0", "::"):
            return  # members advertise this address; a wildcard names no certificate
        problem = tls_handshake_problem(self._native_ssl, self._relay_ssl.current(), host)
        if problem:
            log.warning("followers will fail to relay lease keepalives and learner promotions "
                        "to the leader over TLS: a member like this one refuses a member like "
                        "this one (%s); see docs/node.md, TLS", problem)

    async def _publish_addresses(self) -> None:
        """Make the cluster's member list carry this node's client addresses (a node added by
        ``member add`` is known only by its peer address until it says more)."""
        cfg = self.config
        while True:
            await asyncio.sleep(cfg.tick_ms / 1000 * cfg.election_ticks)
            me = self.core.members.get(cfg.id)
            if me is None or not self.core.leader_id:
                continue
            # The peer address stays as the cluster knows it (given to `member add` or in
            # the initial cluster): it may be an advertised address (a proxy, a NAT) that
            # differs from where this process listens.
            if (me.client_url, me.etcd_url) == (cfg.client_listen, cfg.etcd_listen):
                return
            try:
                await self.backend.publish_member(
                    MemberInfo(cfg.id, cfg.name or me.name, me.peer_url, cfg.client_listen,
                               cfg.etcd_listen, me.is_learner)
                )
            except Exception as exc:  # retried until it lands
                log.info("publishing member addresses failed (%s); retrying", exc)

    async def stop(self) -> None:
        if self.native is not None:
            await self.native.close()
        if self.etcd is not None:
            await self.etcd.stop(grace=0.5)
        await self.backend.close()
        await self.server.stop()
        await self.transport.close()
        await self.link.close()
        for client in self._forward_clients.values():
            await client.close()
        for t in list(self._tasks):
            t.cancel()
        self.storage.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cluster_id(self, members: tuple[MemberInfo, ...]) -> int:
        """This node's cluster id (docs/node.md, "Cluster id"), stored in the data directory
        the first time: the stored one; else a given one (``--cluster-id``); else, for a new
        cluster, derived from the initial members; for a joiner, learned from a member; for a
        directory from before ids were stored, the id every cluster had then. A given id that
        contradicts the stored one is refused: the node would be taken for a stranger."""
        cfg, fs = self.config, OsFileSystem()
        if self._storage_override is not None:  # tests with in-memory storage: nothing stored
            return cfg.cluster_id or datadir.derive_cluster_id(_peer_pairs(members))
        stored = datadir.read_cluster_id(fs, cfg.data_dir)
        if stored is not None:
            if cfg.cluster_id and cfg.cluster_id != stored:
                raise ConfigError(
                    f"{cfg.data_dir} belongs to cluster {stored:#x}, not {cfg.cluster_id:#x} "
                    "(--cluster-id): a member keeps its cluster's id for good")
            return stored
        if cfg.cluster_id:
            chosen = cfg.cluster_id
        elif not self.storage.is_empty():
            chosen = datadir.LEGACY_CLUSTER_ID
        elif cfg.join:
            chosen = await self._learn_cluster_id(members)
        else:
            chosen = datadir.derive_cluster_id(_peer_pairs(members))
        datadir.store_cluster_id(fs, cfg.data_dir, chosen)
        return chosen

    async def _learn_cluster_id(self, members: tuple[MemberInfo, ...]) -> int:
        """A joiner asks the members it was given (their client ports) for the cluster id."""
        from quorum.client.aio import AsyncClient

        problems = []
        for member in members:
            if member.id == self.config.id or not member.client_url:
                continue
            client = (AsyncClient([member.client_url], timeout_s=5) if self._relay_ssl is None
                      else AsyncClient([member.client_url], timeout_s=5,
                                       connector=self._relay_connect))
            try:
                status = await client.status()
            except QuorumError as exc:
                problems.append(f"{member.client_url}: {exc}")
                continue
            finally:
                await client.close()
            return status.cluster_id or datadir.LEGACY_CLUSTER_ID
        raise ConfigError(
            "a joining member needs its cluster's id: give --cluster-id (`quorum member add` "
            "and `quorum -w json status` show it), or list a running member with its client port in --initial-cluster"
            + (f" (asked: {'; '.join(problems)})" if problems else ""))

    async def _leader_client(self, leader: int) -> Any:
        """A native-protocol client of the leader, for calls a follower relays."""
        from quorum.client.aio import AsyncClient
        from quorum.errors import NotLeader

        member = self.core.members.get(leader)
        if member is None or not member.client_url:
            raise NotLeader("leader address unknown", leader_id=leader)
        client = self._forward_clients.get(leader)
        if client is None or client.endpoints != [member.client_url]:
            client = (AsyncClient([member.client_url]) if self._relay_ssl is None else
                      AsyncClient([member.client_url], connector=self._relay_connect))
            self._forward_clients[leader] = client
        return client


def tls_handshake_problem(server: ssl.SSLContext, client: ssl.SSLContext,
                          server_name: str) -> str | None:
    """Run a TLS handshake between ``client`` (checking that the certificate names
    ``server_name``) and ``server`` in memory; None if it succeeds, else why it failed."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    sides = [
        (client.wrap_bio(to_client, to_server, server_hostname=server_name), "client"),
        (server.wrap_bio(to_server, to_client, server_side=True), "server"),
    ]
    done: set[str] = set()
    for _ in range(8):  # a TLS 1.2 or 1.3 handshake needs at most 3 flights
        for obj, side in sides:
            if side in done:
                continue
            try:
                obj.do_handshake()
                done.add(side)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError as exc:
                return f"the {side} side: certificate verify failed: {exc.verify_message}"
            except ssl.SSLError as exc:
                return f"the {side} side: {exc.reason or exc}"
        if len(done) == 2:
            return None
    return "the handshake did not complete"


def _peer_pairs(members: tuple[MemberInfo, ...]) -> list[tuple[int, str]]:
    return [(m.id, m.peer_url) for m in members]
