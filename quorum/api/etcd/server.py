"""``serve_etcd``: every etcd v3 service on one Backend, over quorum's own gRPC server
(``quorum.api.h2grpc``, the default) or grpcio's grpc.aio server (``engine="grpcio"``).

Both engines run the same servicers; the tests run the etcd API suite against both.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import grpc

from quorum.api.backend import Backend
from quorum.api.etcd.auth import AuthServicer
from quorum.api.etcd.concurrency import ElectionServicer, LockServicer
from quorum.api.etcd.config import EtcdApiConfig, EtcdTls, server_ssl_context, tls_files
from quorum.api.etcd.gateway import Gateway
from quorum.api.etcd.gen import etcd_election_pb2 as election_pb2
from quorum.api.etcd.gen import etcd_election_pb2_grpc as erpc
from quorum.api.etcd.gen import etcd_lock_pb2 as lock_pb2
from quorum.api.etcd.gen import etcd_lock_pb2_grpc as lrpc
from quorum.api.etcd.gen import etcd_rpc_pb2 as rpc_pb2
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc
from quorum.api.etcd.gen import grpc_health_pb2 as health_pb2
from quorum.api.etcd.gen import grpc_health_pb2_grpc as hrpc
from quorum.api.etcd.health import HealthServicer
from quorum.api.etcd.kv import KVServicer
from quorum.api.etcd.lease import LeaseServicer
from quorum.api.etcd.maintenance import ClusterServicer, MaintenanceServicer
from quorum.api.etcd.watch import WatchServicer
from quorum.api.h2grpc import GrpcServer
from quorum.api.tlsreload import ReloadingTls, listening_context

ENGINES = ("h2", "grpcio")


def _grpc_options(config: EtcdApiConfig) -> list[tuple[str, int]]:
    # Like etcd: accept requests up to the request limit plus gRPC framing overhead (larger
    # ones fail in gRPC with RESOURCE_EXHAUSTED before reaching a servicer); send any size
    # (a range answer or a snapshot chunk may be large).
    options = [
        ("grpc.max_receive_message_length", config.max_request_bytes + config.grpc_overhead_bytes),
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.so_reuseport", 0),
    ]
    if config.max_connections > 0:
        # gRPC core's connection quota: a connection beyond it is closed as soon as it is
        # accepted, before any handshake; closing one frees its slot. (Not
        # maximum_concurrent_rpcs: that counts calls, long-lived Watch and LeaseKeepAlive
        # streams included, and bounds no connection, so it would fail watchers and still
        # let idle connections pile up.)
        options.append(("grpc.max_allowed_incoming_connections", config.max_connections))
    return options


def _certificate_configuration(tls: EtcdTls) -> Any:
    """grpcio's certificate configuration from the files, checked first the way the h2
    engine loads them (grpcio itself would only fail the handshakes)."""
    server_ssl_context(tls)  # OSError / ssl.SSLError: a file that cannot be used
    ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    pair = (Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())
    return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)


def _credentials(tls: EtcdTls) -> grpc.ServerCredentials:
    """Credentials that follow the files: grpcio asks the fetcher before every new
    connection's handshake; it answers with a configuration only when the files changed
    (None: keep the current one)."""
    source = ReloadingTls("the etcd port", tls_files(tls),
                          lambda: _certificate_configuration(tls))
    handed = [source.current()]

    def fetch() -> Any:
        config = source.current()
        if config is handed[0]:
            return None
        handed[0] = config
        return config

    return grpc.dynamic_ssl_server_credentials(
        handed[0], fetch, require_client_authentication=bool(tls.client_ca_file))


def _listening_context(tls: EtcdTls) -> ssl.SSLContext:
    """The h2 engine's listening context: every handshake uses the files as they are now
    (quorum.api.tlsreload)."""

    def build() -> ssl.SSLContext:
        return server_ssl_context(tls)

    return listening_context(ReloadingTls("the etcd port", tls_files(tls), build), build)


def build_server(backend: Backend, config: EtcdApiConfig | None = None) -> grpc.aio.Server:
    """A grpc.aio server with all etcd services registered, not yet bound nor started."""
    config = config or EtcdApiConfig()
    config.validate_for_grpcio()
    server = grpc.aio.server(options=_grpc_options(config))
    for name, module, servicer in _servicers(backend, config):
        getattr(module, f"add_{name}Servicer_to_server")(servicer, server)
    return server


def _servicers(backend: Backend, config: EtcdApiConfig) -> list[tuple[str, Any, object]]:
    """(service name, generated module, servicer) for every service served."""
    return [
        ("KV", rpc, KVServicer(backend, config)),
        ("Watch", rpc, WatchServicer(backend, config)),
        ("Lease", rpc, LeaseServicer(backend)),
        ("Cluster", rpc, ClusterServicer(backend)),
        ("Maintenance", rpc, MaintenanceServicer(backend)),
        ("Auth", rpc, AuthServicer()),
        ("Lock", lrpc, LockServicer(backend)),
        ("Election", erpc, ElectionServicer(backend)),
        ("Health", hrpc, HealthServicer(backend)),
    ]


def build_h2_server(backend: Backend, config: EtcdApiConfig | None = None) -> GrpcServer:
    """quorum's own gRPC server with all etcd services registered, not yet started. HTTP/1
    requests on the same port go to the JSON gateway (/v3/..., /health, /version, /metrics)."""
    config = config or EtcdApiConfig()
    config.validate()
    pb2 = {rpc: rpc_pb2, lrpc: lock_pb2, erpc: election_pb2, hrpc: health_pb2}
    services = [(pb2[module].DESCRIPTOR.services_by_name[name], servicer)
                for name, module, servicer in _servicers(backend, config)]
    server = GrpcServer(
        max_receive_message_length=config.max_request_bytes + config.grpc_overhead_bytes,
        max_connections=config.max_connections,
        max_connections_per_ip=config.max_connections_per_ip,
    )
    for descriptor, servicer in services:
        server.add_service(descriptor, servicer)
    server.http1_handler = Gateway(backend, server.methods).handle
    return server


async def serve_etcd(
    backend: Backend, host: str = "127.0.0.1", port: int = 2379,
    config: EtcdApiConfig | None = None, tls: EtcdTls | None = None, engine: str = "h2",
) -> tuple[Any, int]:
    """Start serving the etcd API on ``host:port`` (port 0 = any free port), over TLS when
    ``tls`` is given, with the gRPC ``engine`` ("h2": quorum's server; "grpcio": grpc.aio).

    Returns the started server and the bound port. Stop it with ``await server.stop(grace)``.
    Raises RuntimeError if the address cannot be bound, OSError or ssl.SSLError if a TLS
    file cannot be used, ValueError for an unknown engine. The TLS files are watched: new
    connections use them as they are when they arrive (quorum.api.tlsreload).
    """
    if engine == "h2":
        h2 = build_h2_server(backend, config)
        context = _listening_context(tls) if tls is not None else None  # OSError: bad file
        try:
            bound = await h2.start(host, port, context)
        except OSError as exc:
            raise RuntimeError(f"etcd api: cannot bind {host}:{port}: {exc}") from exc
        return h2, bound
    if engine != "grpcio":
        raise ValueError(f"unknown gRPC engine {engine!r} (expected one of {ENGINES})")
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
