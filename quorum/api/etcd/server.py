"""``serve_etcd``: a grpc.aio server exposing every etcd v3 service on one Backend."""

from __future__ import annotations

from pathlib import Path

import grpc

from quorum.api.backend import Backend
from quorum.api.etcd.auth import AuthServicer
from quorum.api.etcd.concurrency import ElectionServicer, LockServicer
from quorum.api.etcd.config import EtcdApiConfig, EtcdTls
from quorum.api.etcd.gen import etcd_election_pb2_grpc as erpc
from quorum.api.etcd.gen import etcd_lock_pb2_grpc as lrpc
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc
from quorum.api.etcd.kv import KVServicer
from quorum.api.etcd.lease import LeaseServicer
from quorum.api.etcd.maintenance import ClusterServicer, MaintenanceServicer
from quorum.api.etcd.watch import WatchServicer


def _grpc_options(config: EtcdApiConfig) -> list[tuple[str, int]]:
    # Like etcd: accept requests up to the request limit plus gRPC framing overhead (larger
    # ones fail in gRPC with RESOURCE_EXHAUSTED before reaching a servicer); send any size
    # (a range answer or a snapshot chunk may be large).
    return [
        ("grpc.max_receive_message_length", config.max_request_bytes + config.grpc_overhead_bytes),
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.so_reuseport", 0),
    ]


def _credentials(tls: EtcdTls) -> grpc.ServerCredentials:
    ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    pair = (Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def build_server(backend: Backend, config: EtcdApiConfig | None = None) -> grpc.aio.Server:
    """A grpc.aio server with all etcd services registered, not yet bound nor started."""
    config = config or EtcdApiConfig()
    config.validate()
    server = grpc.aio.server(options=_grpc_options(config))
    rpc.add_KVServicer_to_server(KVServicer(backend, config), server)
    rpc.add_WatchServicer_to_server(WatchServicer(backend, config), server)
    rpc.add_LeaseServicer_to_server(LeaseServicer(backend), server)
    rpc.add_ClusterServicer_to_server(ClusterServicer(backend), server)
    rpc.add_MaintenanceServicer_to_server(MaintenanceServicer(backend), server)
    rpc.add_AuthServicer_to_server(AuthServicer(), server)
    lrpc.add_LockServicer_to_server(LockServicer(backend), server)
    erpc.add_ElectionServicer_to_server(ElectionServicer(backend), server)
    return server


async def serve_etcd(
    backend: Backend, host: str = "127.0.0.1", port: int = 2379,
    config: EtcdApiConfig | None = None, tls: EtcdTls | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start serving the etcd API on ``host:port`` (port 0 = any free port), over TLS when
    ``tls`` is given.

    Returns the started server and the bound port. Stop it with ``await server.stop(grace)``.
    Raises RuntimeError if the address cannot be bound, OSError if a TLS file is unreadable.
    """
    server = build_server(backend, config)
    address = f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, _credentials(tls))
    if bound == 0:
        raise RuntimeError(f"etcd api: cannot bind {host}:{port}")
    await server.start()
    return server, bound
