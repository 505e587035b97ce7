"""Dev entry: serve the etcd v3 API on an in-process LocalBackend (no consensus, not durable).

    python -m quorum.api.etcd --port 2379
    ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:2379 put foo bar
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from quorum.api.etcd.config import EtcdTls
from quorum.api.etcd.server import serve_etcd
from quorum.api.local import LocalBackend


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m quorum.api.etcd", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2379, help="0 = any free port")
    p.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    p.add_argument("--lease-check-interval", type=float, default=0.5, help="seconds")
    p.add_argument("--progress-notify-interval", type=float, default=600.0, help="seconds")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop (must be installed)")
    p.add_argument("--engine", choices=("h2", "grpcio"), default="h2",
                   help="gRPC server: quorum's own (h2) or grpcio's grpc.aio")
    p.add_argument("--cert-file", help="serve TLS with this certificate (PEM)")
    p.add_argument("--key-file", help="the certificate's private key (PEM)")
    p.add_argument("--trusted-ca-file", default="",
                   help="require client certificates signed by this CA (mutual TLS)")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    backend = LocalBackend(
        lease_check_interval_s=args.lease_check_interval,
        progress_notify_interval_s=args.progress_notify_interval,
    )
    await backend.start()
    tls = None
    if args.cert_file or args.key_file:
        tls = EtcdTls(args.cert_file or "", args.key_file or "", args.trusted_ca_file)
    server, port = await serve_etcd(backend, args.host, args.port, tls=tls,
                                      engine=args.engine)
    scheme = "https" if tls else "http"
    backend.advertise_client_urls((f"{scheme}://{args.host}:{port}",))
    logging.getLogger("quorum.api.etcd").info("serving the etcd API on %s:%d", args.host, port)
    if args.port_file is not None:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(args.port_file)  # atomic: a reader never sees a half-written port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)
    await backend.close()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = _parse(argv)
    if args.uvloop:
        import uvloop

        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
