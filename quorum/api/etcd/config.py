"""Settings of the etcd gRPC surface, with the same defaults as etcd 3.4."""

from __future__ import annotations

import ssl

import msgspec

from quorum.errors import ConfigError

MIB = 1024 * 1024


class EtcdTls(msgspec.Struct, frozen=True):
    """TLS for the etcd port (etcd's --cert-file/--key-file/--trusted-ca-file). With a
    ``client_ca_file`` every client must present a certificate signed by it (mutual TLS)."""

    cert_file: str
    key_file: str
    client_ca_file: str = ""


def server_ssl_context(tls: EtcdTls) -> ssl.SSLContext:
    """The etcd port's TLS context (h2 engine). Raises OSError / ssl.SSLError on a file that
    cannot be used."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    ctx.set_alpn_protocols(["h2"])  # gRPC clients require HTTP/2 by ALPN
    if tls.client_ca_file:
        ctx.load_verify_locations(tls.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def tls_files(tls: EtcdTls) -> dict[str, str]:
    """The files behind ``tls`` by their flag names, for the reload watcher."""
    return {"cert_file": tls.cert_file, "key_file": tls.key_file,
            "trusted_ca_file": tls.client_ca_file}


def check_tls_files(tls: EtcdTls) -> None:
    """Load the files as the server will, so that a missing file, a bad PEM or a key that
    does not match its certificate stop the start with a ConfigError naming the files."""
    try:
        server_ssl_context(tls)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use cert_file {tls.cert_file!r}, key_file "
                          f"{tls.key_file!r}, trusted_ca_file {tls.client_ca_file!r}: "
                          f"{exc}") from None


class EtcdApiConfig(msgspec.Struct, frozen=True):
    # Largest request accepted (etcd's --max-request-bytes). Larger writes fail with
    # "etcdserver: request is too large"; gRPC itself refuses messages above this plus
    # grpc_overhead_bytes (as etcd does), with RESOURCE_EXHAUSTED.
    max_request_bytes: int = 3 * MIB // 2
    grpc_overhead_bytes: int = 512 * 1024
    # A watch response of a watcher created with fragment=true is split into pieces no larger
    # than this (etcd uses max_request_bytes).
    watch_fragment_bytes: int = 3 * MIB // 2
    # Outbound watch responses buffered per stream before the stream waits for the client.
    watch_send_queue: int = 1024
    # Open connections the port serves at once (0 = no cap): beyond it a new client is closed
    # at once; the h2 engine logs the refusal (quorum.api.conncap), grpcio's does not
    # (grpc.max_allowed_incoming_connections, enforced by gRPC core before any handshake).
    max_connections: int = 0
    # Open connections from one client address (0 = no limit; the h2 engine only: grpcio has
    # no hook that sees a connection's peer before serving it, so it refuses to start with one).
    max_connections_per_ip: int = 0

    def validate(self) -> None:
        """Raises ConfigError naming the first rule broken."""
        if self.max_request_bytes <= 0:
            raise ConfigError("max_request_bytes must be positive")
        if self.grpc_overhead_bytes < 0:
            raise ConfigError("grpc_overhead_bytes must not be negative")
        if self.watch_fragment_bytes <= 0:
            raise ConfigError("watch_fragment_bytes must be positive")
        if self.watch_send_queue <= 0:
            raise ConfigError("watch_send_queue must be positive")
        if self.max_connections < 0:
            raise ConfigError("max_connections must not be negative (0 = no cap)")
        if self.max_connections_per_ip < 0:
            raise ConfigError("max_connections_per_ip must not be negative (0 = no limit)")

    def validate_for_grpcio(self) -> None:
        """validate(), and what the grpcio engine cannot enforce: a per-address limit."""
        self.validate()
        if self.max_connections_per_ip > 0:
            raise ConfigError("the grpcio engine cannot enforce max_connections_per_ip: "
                              "grpc.aio offers no hook that sees a connection's peer before "
                              "serving it; use the h2 engine, or 0 (no per-address limit)")
