"""Embedded mode: run your own StateMachine as a replicated Raft node inside your process.

The same parts a quorum server uses, without the key-value service or any client port:

    DurableStorage (WAL + snapshots) ─┐
    your StateMachine                 ├─ NodeCore ── RaftServer (asyncio) ── EmbeddedNode
    PeerTransport (TCP, peers only)   ─┘

Usage (one node per process, or several in one event loop on different ports)::

    peers = {1: "127.0.0.1:24001", 2: "127.0.0.1:24002", 3: "127.0.0.1:24003"}
    node = await start_embedded(1, peers, "data/node1", CounterStateMachine())
    await node.wait_for_leader()
    new_value = await node.propose((1).to_bytes(8, "big", signed=True))
    value = await node.read(lambda sm: sm.value)      # linearizable (ReadIndex)
    node.submit(command, lambda result, error: ...)   # many in flight: no future each
    await node.stop()

``propose`` suits a task per command; ``submit`` suits many commands in flight from one
caller (no future and no task per command); commands submitted in one loop turn go to Raft
as one batch. A caller submitting thousands in a row should yield to the loop now and then
(``await asyncio.sleep(0)``): the node answers heartbeats only while the loop runs.

Guarantees (see quorum.node.statemachine): ``propose`` returns the state machine's result for
that command once it is committed and applied on this node; ``read`` runs the function on
local state only after it reflects every write committed before the call (ReadIndex, Raft
thesis §6.4), so it is linearizable on any member. Proposals and reads work on followers too
(Raft forwards proposals to the leader; ReadIndex asks the leader for its commit index).

A failed ``propose`` with LeaderChanged or RequestTimeout has an unknown outcome: the command
may still commit. Only retry commands that are idempotent (or carry their own de-duplication).

The state machine passed in must be freshly constructed: on start it is restored from the
newest snapshot on disk (or the bootstrap snapshot of a new cluster) and the committed log
after it is applied again, so its in-memory state is rebuilt from durable state only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

import msgspec

from quorum.errors import (
    ConfigError,
    LeaderChanged,
    NodeStopped,
    NoLeader,
    ProposalDropped,
    RequestTimeout,
)
from quorum.node import datadir
from quorum.node.clock import SystemClock
from quorum.node.config import raft_config, split_addr
from quorum.node.core import NodeCore, bootstrap_data
from quorum.node.envelope import MemberInfo
from quorum.node.peers import PeerLink, peer_addresses
from quorum.node.server import RaftServer
from quorum.node.statemachine import StateMachine
from quorum.node.storage import DurableNodeStorage, NodeStorage, bootstrap
from quorum.raft import Config
from quorum.raft.types import StateRole
from quorum.storage.durable import StorageOptions
from quorum.storage.fs import OsFileSystem
from quorum.transport.tcp import PeerTransport

log = logging.getLogger("quorum.embedded")

S = TypeVar("S", bound=StateMachine)
T = TypeVar("T")

# submit's completion: (result, None) once applied, or (None, error)
Callback = Callable[[Any, BaseException | None], None]

DEFAULT_CLUSTER_ID = 0x51_45_4D_42  # "QEMB": peers of different clusters refuse each other


class EmbeddedOptions(msgspec.Struct, kw_only=True, frozen=True):
    """Tuning of an embedded node; the defaults suit a LAN or loopback cluster."""

    cluster_id: int = DEFAULT_CLUSTER_ID
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    request_timeout_s: float = 5.0
    # fsync=False is UNSAFE (a power loss can lose acknowledged commands); benchmarks only.
    fsync: bool = True
    snapshot_entries: int = 10_000
    snapshot_catchup_entries: int = 5_000
    snapshot_log_ratio: float = 1.0  # see NodeConfig.snapshot_log_ratio
    snapshot_ratio_floor: int = 4 << 20  # bytes; see NodeConfig.snapshot_ratio_floor
    wal_reserve_bytes: int = 4 << 20  # see NodeConfig.wal_reserve_bytes
    pre_vote: bool = True
    check_quorum: bool = True
    lease_reads: bool = False

    def validate(self) -> EmbeddedOptions:
        rules: list[tuple[bool, str]] = [
            (self.cluster_id > 0, "cluster_id must be a positive integer."),
            (self.tick_ms >= 1, "tick_ms must be at least 1."),
            (self.heartbeat_ticks >= 1, "heartbeat_ticks must be at least 1."),
            # Raft §5.2 / §9.3: elections need a timeout well above the heartbeat interval
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
        ]
        for ok, rule in rules:
            if not ok:
                raise ConfigError(rule)
        return self


def _check_peers(node_id: int, peers: Mapping[int, str]) -> None:
    if node_id <= 0:
        raise ConfigError("node_id must be a positive integer.")
    if node_id not in peers:
        raise ConfigError("peers must contain this node's own id and peer address.")
    for pid, addr in peers.items():
        host, sep, port = addr.rpartition(":")
        if pid <= 0 or not sep or not host or not port.isdigit():
            raise ConfigError(f"peer {pid}: address {addr!r} must be host:port.")


class EmbeddedNode(Generic[S]):
    """One member of a replicated state machine, run on the current asyncio event loop.

    ``peers`` maps every initial member's id to its peer address (host:port), this node's
    included; every member of a new cluster must be given the same map.
    """

    def __init__(self, node_id: int, peers: Mapping[int, str], data_dir: str,
                 state_machine: S, options: EmbeddedOptions | None = None) -> None:
        _check_peers(node_id, peers)
        self.id = node_id
        self.peers = dict(peers)
        self.data_dir = data_dir
        self.state_machine = state_machine
        self.options = (options or EmbeddedOptions()).validate()
        self._started = False

    # --- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open (or bootstrap) the storage, restore the state machine, join the peers."""
        opts = self.options
        durable = datadir.open_storage(
            OsFileSystem(), self.data_dir, StorageOptions(preallocate_ahead=opts.wal_reserve_bytes))
        self.storage: NodeStorage = DurableNodeStorage(durable)
        members = tuple(MemberInfo(pid, f"node{pid}", addr) for pid, addr in self.peers.items())
        if self.storage.is_empty():
            # Every initial member writes the same bootstrap snapshot (index 1, term 1), so
            # they agree on the first configuration without an election (storage.bootstrap).
            voters = tuple(sorted(self.peers))
            bootstrap(self.storage, voters, bootstrap_data(members, self.state_machine))
        self.core = NodeCore(
            self._raft_config(), self.storage, self.state_machine, random.Random(),
            lambda msgs: self.link.send(msgs),
            snapshot_entries=opts.snapshot_entries,
            snapshot_catchup_entries=opts.snapshot_catchup_entries,
            snapshot_log_ratio=opts.snapshot_log_ratio,
            snapshot_ratio_floor=opts.snapshot_ratio_floor,
            request_timeout_ticks=max(1, round(opts.request_timeout_s * 1000 / opts.tick_ms)),
            members=members,
            # request ids embed it: a restarted node never claims its previous life's entries
            incarnation=secrets.randbits(31),
        )
        self.core.fsync = opts.fsync
        self.server = RaftServer(self.core, tick_s=opts.tick_ms / 1000, clock=SystemClock())
        self.link = PeerLink(self.server)
        self.transport = PeerTransport(
            opts.cluster_id, self.id, split_addr(self.peers[self.id]),
            peer_addresses(self.core.members),
            on_messages=self.server.receive,
            on_unreachable=self.link.on_unreachable,
            on_snapshot_chunk=self.link.on_snapshot_chunk,
        )
        self.link.transport = self.transport
        self.core.on_members_changed = self.link.update_peers
        try:
            await self.transport.start()  # OSError if the peer address is taken
        except BaseException:
            self.storage.close()  # a failed start leaves no open WAL or snapshot files
            raise
        await self.server.start()
        self._started = True

    async def stop(self) -> None:
        """Stop serving: pending calls fail with NodeStopped; the storage is closed."""
        if not self._started:
            return
        self._started = False
        await self.server.stop()
        await self.transport.close()
        await self.link.close()
        self.storage.close()

    def _raft_config(self) -> Config:
        return raft_config(self.id, self.options)

    # --- the application's API -------------------------------------------------------------

    async def propose(self, command: bytes) -> Any:
        """Replicate ``command``; return ``state_machine.apply``'s result once applied here.

        Raises ProposalDropped (no leader known: nothing was proposed, safe to retry),
        LeaderChanged / RequestTimeout (outcome unknown), NodeStopped, or the QuorumError the
        state machine raised for this command."""
        return await self.server.propose(command)

    def submit(self, command: bytes, callback: Callback) -> None:
        """Replicate ``command`` without a future: ``callback(result, None)`` once it is
        applied here, or ``callback(None, error)`` with the error ``propose`` would raise.

        For callers with many commands in flight (no task or future per command). Call it
        from the event loop's thread; the callback runs there too, exactly once, possibly
        before ``submit`` returns (a stopped node fails it at once). Commands submitted in
        one loop turn go to Raft as one batch (one Ready, one fsync: group commit)."""
        waiter = _CallbackWaiter(callback)
        if not self._started:
            waiter.fail(NodeStopped("node is not running"))
            return
        self.core.propose(command, waiter)
        self.server.wake()

    async def read(self, query: Callable[[S], T]) -> T:
        """Run ``query(state_machine)`` linearizably: after a ReadIndex barrier (thesis §6.4)
        guaranteeing local state includes every write committed before this call."""
        await self.server.read_barrier()
        return query(self.state_machine)

    async def read_barrier(self) -> int:
        """Wait for the ReadIndex barrier alone; returns the applied index it was met at."""
        return await self.server.read_barrier()

    async def wait_for_leader(self, timeout_s: float = 10.0) -> int:
        """Wait until a leader is known and a ReadIndex barrier through it succeeds (so the
        leader has committed an entry of its term, thesis §6.4, and this node has applied
        up to it); returns the leader id. Raises NoLeader after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if self.core.leader_id:
                try:
                    await asyncio.wait_for(self.server.read_barrier(),
                                           max(0.01, deadline - loop.time()))
                except (ProposalDropped, LeaderChanged, RequestTimeout, TimeoutError):
                    pass
                else:
                    if self.core.leader_id:
                        return self.core.leader_id
            await asyncio.sleep(self.options.tick_ms / 1000)
        raise NoLeader(f"node {self.id}: no leader after {timeout_s} s")

    def transfer_leadership(self, target: int) -> None:
        """Ask this node (if leader) to hand leadership to ``target`` (thesis §3.10)."""
        self.core.transfer_leader(target)
        self.server.wake()

    @property
    def leader_id(self) -> int:
        """The leader this node currently follows (0 = none known)."""
        return self.core.leader_id

    @property
    def is_leader(self) -> bool:
        return self.core.role == StateRole.LEADER

    @property
    def applied_index(self) -> int:
        return self.core.applied

    @property
    def fatal_error(self) -> BaseException | None:
        """Set when a storage failure stopped the node (it then serves nothing)."""
        return self.server.fatal_error


class _CallbackWaiter:
    """NodeCore's Waiter for ``submit``: the first outcome calls back, later ones are ignored
    (the Waiter contract is one outcome, but a callback must never run twice). An exception
    raised by the callback is logged, never let into the Ready loop (it would stop the node)."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callback) -> None:
        self.callback: Callback | None = callback

    def resolve(self, value: Any) -> None:
        self._call(value, None)

    def fail(self, exc: BaseException) -> None:
        self._call(None, exc)

    def _call(self, value: Any, exc: BaseException | None) -> None:
        callback, self.callback = self.callback, None
        if callback is None:
            return
        try:
            callback(value, exc)
        except Exception:
            log.exception("submit callback raised; ignored")


async def start_embedded(node_id: int, peers: Mapping[int, str], data_dir: str,
                         state_machine: S,
                         options: EmbeddedOptions | None = None) -> EmbeddedNode[S]:
    """Construct and start an EmbeddedNode (see the module docstring)."""
    node = EmbeddedNode(node_id, peers, data_dir, state_machine, options)
    await node.start()
    return node


async def propose_with_retry(node: EmbeddedNode[Any], command: bytes, *,
                             attempts: int = 50, backoff_s: float = 0.05) -> Any:
    """Propose, retrying only while no leader is known (ProposalDropped before the entry
    was appended: nothing happened, so a retry cannot apply the command twice)."""
    for _ in range(attempts - 1):
        try:
            return await node.propose(command)
        except NoLeader:
            await asyncio.sleep(backoff_s)
    try:
        return await node.propose(command)
    except NoLeader as exc:
        raise RequestTimeout(f"no leader after {attempts} attempts") from exc


def loopback_peers(ids: Iterable[int]) -> dict[int, str]:
    """Peer addresses on 127.0.0.1 at ports the kernel reports free right now (bound, then
    released: another process may take one before the node binds it; tests and examples)."""
    socks: list[socket.socket] = []
    peers: dict[int, str] = {}
    try:
        for node_id in ids:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
            peers[node_id] = f"127.0.0.1:{s.getsockname()[1]}"
    finally:
        for s in socks:
            s.close()
    return peers
