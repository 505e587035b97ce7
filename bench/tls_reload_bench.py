"""What certificate reload costs on the native port: a server with one fixed TLS context
against one whose listening context switches every handshake to the current files
(quorum.api.tlsreload), same certificates, rounds interleaved.

    .venv/bin/python bench/tls_reload_bench.py [--rounds 3] [--seconds 2] [--uvloop]

Both servers run a LocalBackend in a child process each; the load comes from this process
(bench/native_tls_bench.py's rounds: pipelined and sequential requests on one connection,
then connections opened, handshaken and closed). The handshake path is where the reload
works (a stat of the files at most once a second, a context switch per handshake); requests
on an open connection should not see it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from native_tls_bench import make_certs, one_round, start_server

from quorum.client import ClientTls

SERVER = """
import asyncio, sys
from quorum.api.local import LocalBackend
from quorum.api.native.server import serve_native, server_tls_context
from quorum.api.tlsreload import ReloadingTls, listening_context
if sys.argv[1] == "1":
    import uvloop; uvloop.install()
cert, key = sys.argv[3], sys.argv[4]
build = lambda: server_tls_context(cert, key, cert)
if sys.argv[2] == "reload":
    tls = listening_context(ReloadingTls("bench", {"cert_file": cert, "key_file": key}, build),
                            build)
else:
    tls = build()
async def main():
    server = await serve_native(LocalBackend(), "127.0.0.1", 0, tls=tls)
    print(server.port, flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--inflight", type=int, default=256)
    parser.add_argument("--uvloop", action="store_true", help="uvloop in client and servers")
    args = parser.parse_args()
    loop_flag = "1" if args.uvloop else "0"
    results: dict[str, list[dict[str, float]]] = {"fixed": [], "reload": []}
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = make_certs(Path(tmp))
        ctx = ClientTls(ca_file=str(cert), cert_file=str(cert), key_file=str(key)).context()
        servers = {mode: start_server([loop_flag, mode, str(cert), str(key)], SERVER)
                   for mode in results}
        try:
            if args.uvloop:
                import uvloop

                uvloop.install()
            for r in range(args.rounds):
                for mode, (_, endpoint) in servers.items():
                    res = asyncio.run(one_round(endpoint, ctx, args.seconds, args.inflight))
                    results[mode].append(res)
                    print(f"round {r + 1} {mode:6s} " + "  ".join(
                        f"{k} {v:8.0f}/s" for k, v in res.items()), flush=True)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait()
    print(f"\nmedians of {args.rounds} rounds ({args.seconds:g} s each, "
          f"{'uvloop' if args.uvloop else 'asyncio'}; load average {os.getloadavg()[0]:.1f})")
    for key in results["fixed"][0]:
        fixed = statistics.median(r[key] for r in results["fixed"])
        reload = statistics.median(r[key] for r in results["reload"])
        print(f"{key:16s} fixed {fixed:8.0f}/s  reload {reload:8.0f}/s  "
              f"reload/fixed {reload / fixed:5.2f}")


if __name__ == "__main__":
    main()
