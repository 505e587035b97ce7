"""``quorum serve`` (one server) and ``quorum cluster up`` (a local N-node cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from quorum.api.compactor import CompactionPolicy, policy_from_config
from quorum.errors import ConfigError, QuorumError
from quorum.node.config import NodeConfig, PeerSpec, load_config

log = logging.getLogger("quorum.serve")


def parse_initial_cluster(spec: str) -> tuple[PeerSpec, ...]:
    """``1=host:peerport[/clientport[/etcdport]],2=...`` -> PeerSpecs."""
    peers = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        ident, _, addrs = part.partition("=")
        fields = addrs.split("/")
        host = fields[0].rpartition(":")[0]
        client = f"{host}:{fields[1]}" if len(fields) > 1 and fields[1] else ""
        etcd = f"{host}:{fields[2]}" if len(fields) > 2 and fields[2] else ""
        try:
            peers.append(PeerSpec(int(ident), fields[0], client, etcd))
        except ValueError:
            raise ConfigError(f"bad --initial-cluster entry {part!r}") from None
    return tuple(peers)


def parse_cluster_id(text: str) -> int:
    """``--cluster-id``: a positive integer, decimal or 0x hex."""
    try:
        value = int(text, 0)
    except ValueError:
        raise ConfigError(f"bad --cluster-id {text!r}: expected a positive integer "
                          "(decimal or 0x hex)") from None
    if value <= 0:
        raise ConfigError(f"bad --cluster-id {text!r}: must be positive")
    return value


def compaction_policy(cfg: NodeConfig) -> CompactionPolicy | None:
    """Check the auto-compaction settings (ConfigError naming the broken rule); the policy
    they give, or None when auto-compaction is off."""
    return policy_from_config(cfg.auto_compaction_mode, cfg.auto_compaction_retention)


def raise_open_file_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit; return (before,
    after). Every client connection, watch stream, peer link and WAL segment holds a
    descriptor, and the usual default soft limit (1,024) runs out long before the CPU or
    memory does; a server that hits it refuses new connections. Only the soft limit moves
    (no privilege needed); a limit that cannot be raised is left as it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or (hard != resource.RLIM_INFINITY and soft >= hard):
        return soft, soft
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, target


def _use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(config: NodeConfig, planted_bugs: frozenset[str] = frozenset()) -> None:
    from quorum.api.process import QuorumProcess

    rate = float(os.environ.get("QUORUM_CLOCK_RATE", "1"))  # clock-skew testing (verify)
    proc = QuorumProcess(config, planted_bugs=planted_bugs, clock_rate=rate)
    await proc.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(stop.wait())
    fatal = asyncio.create_task(_watch_fatal(proc))
    await asyncio.wait({waiter, fatal}, return_when=asyncio.FIRST_COMPLETED)
    await proc.stop()
    if proc.server.fatal_error is not None:
        raise SystemExit(f"stopped after a fatal error: {proc.server.fatal_error!r}")


async def _watch_fatal(proc: object) -> None:
    server = proc.server  # type: ignore[attr-defined]
    while server.fatal_error is None:
        await asyncio.sleep(0.2)


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--id", "node_id", type=int, help="This node's id (positive integer).")
@click.option("--name", help="Human-readable member name.")
@click.option("--data-dir", help="Where the WAL and snapshots live.")
@click.option("--peer-listen", help="host:port for peer traffic.")
@click.option("--client-listen", help="host:port for the native client protocol ('' = off).")
@click.option("--etcd-listen", help="host:port for the etcd v3 gRPC API ('' = off).")
@click.option("--etcd-engine", type=click.Choice(["h2", "grpcio"]),
              help="gRPC server of the etcd port: quorum's own (h2, default) or grpcio's.")
@click.option("--initial-cluster", help="1=host:peer[/client[/etcd]],2=... (new clusters).")
@click.option("--cluster-id", help="This cluster's id in peer handshakes (decimal or 0x hex), "
                                   "the same on every member: a member of another cluster is "
                                   "refused. Default: the id stored in --data-dir; for a new "
                                   "cluster derived from --initial-cluster; for a joiner "
                                   "asked of a member.")
@click.option("--join", is_flag=True, default=None,
              help="Start empty and wait to be added (quorum member add) by a running cluster.")
@click.option("--tick-ms", type=int, help="Raft tick length in milliseconds (default 100).")
@click.option("--election-ticks", type=int, help="Election timeout in ticks (default 10).")
@click.option("--no-fsync", is_flag=True, default=False,
              help="UNSAFE: skip fsync (a power loss can lose acknowledged writes).")
@click.option("--snapshot-entries", type=int,
              help="Snapshot every N applied commands (default 10000).")
@click.option("--snapshot-log-ratio", type=float,
              help="Once the state is over 4 MiB, also wait until the log since the last "
                   "snapshot is RATIO times its size (default 1.0; 0 = every N commands).")
@click.option("--snapshot-ratio-floor", type=int,
              help="Snapshots smaller than this many bytes ignore --snapshot-log-ratio "
                   "(default 4194304).")
@click.option("--lease-reads", is_flag=True, default=None,
              help="Serve linearizable reads from the leader lease (assumes bounded clock drift).")
@click.option("--auto-compaction-mode", type=str,
              help="'periodic' (default) or 'revision': how --auto-compaction-retention is read.")
@click.option("--auto-compaction-retention", type=str,
              help="History to keep: a duration in periodic mode (1h, 30m, 90s; a bare number "
                   "is hours), a revision count in revision mode; 0 = off (the default).")
@click.option("--max-client-connections", type=int,
              help="Open connections each client port serves at once; more are refused "
                   "and logged (default 0: derived from the open-file limit).")
@click.option("--max-client-connections-per-ip", type=int,
              help="Open connections each client port serves at once from one client IP; "
                   "more are refused and logged (default 0: no per-IP limit; not with "
                   "--etcd-engine grpcio).")
@click.option("--wal-reserve-bytes", type=int,
              help="WAL space reserved ahead of the writes (default 4194304; 0 = off).")
@click.option("--cert-file", type=str,
              help="TLS on the client ports (etcd and native): certificate (PEM).")
@click.option("--key-file", type=str,
              help="TLS on the client ports: the certificate's key (PEM).")
@click.option("--trusted-ca-file", type=str,
              help="CA (PEM) that signs client certificates (with --client-cert-auth).")
@click.option("--client-cert-auth", is_flag=True, default=None,
              help="Require a client certificate signed by --trusted-ca-file on the client "
                   "ports.")
@click.option("--peer-cert-file", type=str, help="TLS between members: certificate (PEM).")
@click.option("--peer-key-file", type=str, help="TLS between members: its key (PEM).")
@click.option("--peer-trusted-ca-file", type=str,
              help="TLS between members: CA (PEM) that signs every member's certificate.")
@click.option("--peer-client-cert-auth", is_flag=True, default=None,
              help="Members also demand a certificate from the member dialing them.")
@click.option("--log-level", default="info", show_default=True)
@click.option("--planted-bugs", default="", hidden=True,
              help="TESTS ONLY: break safety rules on purpose (see docs/verify.md).")
def serve(config_path: str | None, node_id: int | None, name: str | None, data_dir: str | None,
          peer_listen: str | None, client_listen: str | None, etcd_listen: str | None,
          etcd_engine: str | None, initial_cluster: str | None, cluster_id: str | None,
          join: bool | None, tick_ms: int | None,
          election_ticks: int | None, no_fsync: bool, snapshot_entries: int | None,
          snapshot_log_ratio: float | None, snapshot_ratio_floor: int | None,
          lease_reads: bool | None, auto_compaction_mode: str | None,
          auto_compaction_retention: str | None, max_client_connections: int | None,
          max_client_connections_per_ip: int | None, wal_reserve_bytes: int | None,
          cert_file: str | None, key_file: str | None,
          trusted_ca_file: str | None, client_cert_auth: bool | None,
          peer_cert_file: str | None, peer_key_file: str | None,
          peer_trusted_ca_file: str | None, peer_client_cert_auth: bool | None, log_level: str,
          planted_bugs: str) -> None:
    """Run one quorum server."""
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, object] = {
        "id": node_id, "name": name, "data_dir": data_dir, "peer_listen": peer_listen,
        "client_listen": client_listen, "etcd_listen": etcd_listen, "etcd_engine": etcd_engine,
        "join": join, "tick_ms": tick_ms, "election_ticks": election_ticks,
        "snapshot_entries": snapshot_entries, "snapshot_log_ratio": snapshot_log_ratio,
        "snapshot_ratio_floor": snapshot_ratio_floor,
        "lease_reads": lease_reads,
        "auto_compaction_mode": auto_compaction_mode,
        "auto_compaction_retention": auto_compaction_retention,
        "wal_reserve_bytes": wal_reserve_bytes,
        "max_client_connections": max_client_connections,
        "max_client_connections_per_ip": max_client_connections_per_ip,
        "cert_file": cert_file, "key_file": key_file, "trusted_ca_file": trusted_ca_file,
        "client_cert_auth": client_cert_auth, "peer_cert_file": peer_cert_file,
        "peer_key_file": peer_key_file, "peer_trusted_ca_file": peer_trusted_ca_file,
        "peer_client_cert_auth": peer_client_cert_auth,
    }
    if no_fsync:
        overrides["fsync"] = False
    try:
        if initial_cluster:
            overrides["initial_cluster"] = parse_initial_cluster(initial_cluster)
        if cluster_id is not None:
            overrides["cluster_id"] = parse_cluster_id(cluster_id)
        if config_path:
            cfg = load_config(config_path, **overrides)
        else:
            import msgspec

            cfg = msgspec.structs.replace(
                NodeConfig(), **{k: v for k, v in overrides.items() if v is not None}
            ).validate()
        compaction_policy(cfg)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    _use_uvloop()
    before, after = raise_open_file_limit()
    if after != before:
        log.info("open file limit raised from %d to %d", before, after)
    bugs = frozenset(b for b in planted_bugs.split(",") if b)
    try:
        asyncio.run(_serve(cfg, bugs))
    except QuorumError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    except OSError as exc:  # e.g. a listen address already in use: say so, no traceback
        raise click.ClickException(f"cannot serve: {exc}") from None


# --- cluster up ---------------------------------------------------------------------------------


def cluster_specs(nodes: int, base_port: int, host: str = "127.0.0.1") -> tuple[PeerSpec, ...]:
    """Node i gets peer port base+i, native port base+100+i and etcd port base+200+i."""
    return tuple(
        PeerSpec(i, f"{host}:{base_port + i}", f"{host}:{base_port + 100 + i}",
                 f"{host}:{base_port + 200 + i}", f"node{i}")
        for i in range(1, nodes + 1)
    )


def spec_string(specs: tuple[PeerSpec, ...]) -> str:
    return ",".join(
        f"{p.id}={p.peer_url}/{p.client_url.rpartition(':')[2]}/{p.etcd_url.rpartition(':')[2]}"
        for p in specs
    )


def node_command(spec: PeerSpec, specs: tuple[PeerSpec, ...], data_dir: Path,
                 extra: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable, "-m", "quorum.cli.main", "serve",
        "--id", str(spec.id), "--name", spec.name, "--data-dir", str(data_dir / f"node{spec.id}"),
        "--peer-listen", spec.peer_url, "--client-listen", spec.client_url,
        "--etcd-listen", spec.etcd_url, "--initial-cluster", spec_string(specs), *extra,
    ]


class LocalTls:
    """Throwaway certificates for a local cluster (``quorum cluster up --tls``), made by the
    openssl command under ``folder``: a CA, one certificate every node uses for its peer
    and client ports (naming ``host``), and a client certificate, all signed by the CA."""

    DAYS = "30"

    def __init__(self, folder: Path, host: str = "127.0.0.1") -> None:
        self.folder = folder
        self.host = host
        self.ca, self.ca_key = folder / "ca.pem", folder / "ca-key.pem"
        self.node, self.node_key = folder / "node.pem", folder / "node-key.pem"
        self.client, self.client_key = folder / "client.pem", folder / "client-key.pem"

    def ensure(self) -> LocalTls:
        """Make the files unless a previous run left them all. Raises UsageError without
        the openssl command, ConfigError when it fails."""
        files = (self.ca, self.ca_key, self.node, self.node_key, self.client, self.client_key)
        if all(f.exists() for f in files):
            return self  # the cluster's data is kept between runs: so are its certificates
        if shutil.which("openssl") is None:
            raise click.UsageError("--tls needs the openssl command to make certificates")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._openssl("req", "-x509", *self._new_key(self.ca_key), "-out", str(self.ca),
                      "-days", self.DAYS, "-subj", "/CN=quorum local CA",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self._issue(self.node, self.node_key, "quorum node",
                    f"subjectAltName=IP:{self.host}\nextendedKeyUsage=serverAuth,clientAuth")
        self._issue(self.client, self.client_key, "quorum client",
                    "extendedKeyUsage=clientAuth")
        return self

    @staticmethod
    def _new_key(key: Path) -> tuple[str, ...]:
        return ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(key))

    def _issue(self, cert: Path, key: Path, name: str, extensions: str) -> None:
        csr, ext = cert.with_suffix(".csr"), cert.with_suffix(".ext")
        ext.write_text(extensions + "\nbasicConstraints=CA:FALSE\n"
                       "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
        self._openssl("req", "-new", *self._new_key(key), "-out", str(csr), "-subj", f"/CN={name}")
        self._openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey",
                      str(self.ca_key), "-CAcreateserial", "-out", str(cert), "-days", self.DAYS,
                      "-extfile", str(ext))
        csr.unlink()
        ext.unlink()

    @staticmethod
    def _openssl(*args: str) -> None:
        res = subprocess.run(["openssl", *args], capture_output=True, text=True)
        if res.returncode != 0:
            raise ConfigError(f"openssl {args[0]} failed: {res.stderr.strip()}")

    def serve_args(self) -> tuple[str, ...]:
        """Mutual TLS between members and on both client ports."""
        node, key, ca = str(self.node), str(self.node_key), str(self.ca)
        return ("--peer-cert-file", node, "--peer-key-file", key, "--peer-trusted-ca-file", ca,
                "--peer-client-cert-auth", "--cert-file", node, "--key-file", key,
                "--trusted-ca-file", ca, "--client-cert-auth")


@click.group()
def cluster() -> None:
    """Run a local cluster of separate server processes."""


@cluster.command("up")
@click.option("--nodes", default=3, show_default=True, help="Number of servers.")
@click.option("--data-dir", default=".quorum-data", show_default=True, type=click.Path())
@click.option("--base-port", default=23000, show_default=True,
              help="Node i: peer base+i, native base+100+i, etcd base+200+i.")
@click.option("--tick-ms", default=100, show_default=True)
@click.option("--no-fsync", is_flag=True, help="UNSAFE: skip fsync.")
@click.option("--auto-compaction-mode", default="periodic", show_default=True,
              help="Passed to every server (see quorum serve).")
@click.option("--auto-compaction-retention", default="0", show_default=True,
              help="Passed to every server; 0 = off (see quorum serve).")
@click.option("--tls", is_flag=True,
              help="Mutual TLS everywhere, with a throwaway CA and certificates made by the "
                   "openssl command under DATA_DIR/tls (kept for later runs).")
def cluster_up(nodes: int, data_dir: str, base_port: int, tick_ms: int, no_fsync: bool,
               auto_compaction_mode: str, auto_compaction_retention: str, tls: bool) -> None:
    """Start NODES servers on this machine; Ctrl-C stops them all cleanly."""
    root = Path(data_dir)
    try:  # checked here so a bad value is one clear error, not N servers exiting at start
        policy_from_config(auto_compaction_mode, auto_compaction_retention)
        certs = LocalTls(root / "tls").ensure() if tls else None
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    root.mkdir(parents=True, exist_ok=True)
    specs = cluster_specs(nodes, base_port)
    extra = ("--tick-ms", str(tick_ms), *(("--no-fsync",) if no_fsync else ()),
             "--auto-compaction-mode", auto_compaction_mode,
             "--auto-compaction-retention", auto_compaction_retention,
             *(certs.serve_args() if certs else ()))
    procs = []
    for spec in specs:
        log = open(root / f"node{spec.id}.log", "ab")  # noqa: SIM115 - lives as long as the child
        procs.append(subprocess.Popen(node_command(spec, specs, root, extra), stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))
    endpoints = ",".join(p.client_url for p in specs)
    etcd = ",".join(p.etcd_url for p in specs)
    click.echo(f"quorum: {nodes}-node cluster starting (data and logs in {root}/)")
    for spec, proc in zip(specs, procs):
        click.echo(f"  node{spec.id}  pid {proc.pid}  native {spec.client_url}  "
                   f"etcd {spec.etcd_url}  peer {spec.peer_url}")
    click.echo("\nTry it (in another terminal):")
    click.echo(f"  export QUORUM_ENDPOINTS={endpoints}")
    etcdctl_tls = ""
    if certs is not None:
        click.echo(f"  export QUORUM_CACERT={certs.ca} QUORUM_CERT={certs.client} "
                   f"QUORUM_KEY={certs.client_key}")
        etcdctl_tls = (f" --cacert={certs.ca} --cert={certs.client} --key={certs.client_key}")
    click.echo("  .venv/bin/quorum put greeting hello")
    click.echo("  .venv/bin/quorum get greeting")
    click.echo("  .venv/bin/quorum status")
    click.echo(f"  ETCDCTL_API=3 etcdctl --endpoints={etcd}{etcdctl_tls} get greeting")
    click.echo("\nCtrl-C stops the cluster.")
    _supervise(procs)


def _supervise(procs: list[subprocess.Popen[bytes]]) -> None:
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    while not stopping:
        time.sleep(0.2)
        dead = [p for p in procs if p.poll() is not None]
        if len(dead) == len(procs):
            click.echo("every server exited; see the logs", err=True)
            break
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.time() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
    click.echo("cluster stopped")
