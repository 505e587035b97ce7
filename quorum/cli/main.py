"""The ``quorum`` command: servers, a local cluster, and every client operation.

Client commands talk to ``--endpoints`` (or ``$QUORUM_ENDPOINTS``; by default the native ports
of ``quorum cluster up``) and print tables for people or JSON with ``-w json``.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from quorum.cli.bench_cmd import bench
from quorum.cli.output import emit_json, fail, table, text
from quorum.cli.serve import cluster, serve
from quorum.cli.sim_cmd import sim
from quorum.cli.verify_cmd import verify
from quorum.errors import QuorumError

T = TypeVar("T")

DEFAULT_ENDPOINTS = "127.0.0.1:23101,127.0.0.1:23102,127.0.0.1:23103"


class TlsFlags:
    """The client TLS flags (etcdctl's names), as given."""

    def __init__(self, cacert: str | None, cert: str | None, key: str | None,
                 insecure_skip_verify: bool, server_name: str | None) -> None:
        self.cacert, self.cert, self.key = cacert or "", cert or "", key or ""
        self.insecure_skip_verify = insecure_skip_verify
        self.server_name = server_name or ""

    @property
    def wanted(self) -> bool:
        return bool(self.cacert or self.cert or self.key or self.insecure_skip_verify
                    or self.server_name)


class Ctx:
    def __init__(self, endpoints: str, write_out: str, timeout_s: float,
                 tls: TlsFlags | None = None) -> None:
        self.endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
        self.write_out = write_out
        self.timeout_s = timeout_s
        self._tls_flags = tls or TlsFlags(None, None, None, False, None)
        self._tls: Any = None  # a ClientTls once TLS is known to be on

    @property
    def json(self) -> bool:
        return self.write_out == "json"

    def tls(self) -> Any:
        """The ClientTls every client of this command uses (None: plain TCP), checked once.
        Any TLS flag, or an ``https://`` endpoint, turns TLS on; a file that cannot be used
        ends the command with its name."""
        flags = self._tls_flags
        if self._tls is None and (flags.wanted or self.uses_https):
            from quorum.client.tls import ClientTls

            tls = ClientTls(ca_file=flags.cacert, cert_file=flags.cert, key_file=flags.key,
                            server_name=flags.server_name,
                            verify=not flags.insecure_skip_verify)
            try:
                tls.context()
            except QuorumError as exc:
                fail(f"{type(exc).__name__}: {exc}")
            self._tls = tls
        return self._tls

    @property
    def uses_https(self) -> bool:
        return any(e.startswith("https://") for e in self.endpoints)

    def client(self, endpoints: list[str]) -> Any:
        """An AsyncClient of ``endpoints`` with this command's timeout and TLS settings."""
        from quorum.client.aio import AsyncClient

        return AsyncClient(endpoints, timeout_s=self.timeout_s, tls=self.tls())

    def shown(self, endpoint: str) -> str:
        """An endpoint as printed: with https:// when the command speaks TLS."""
        bare = endpoint.split("://", 1)[-1]
        return f"https://{bare}" if self.tls() is not None else bare

    def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(client)`` with a connected AsyncClient; typed errors become messages."""
        self.tls()  # a bad TLS file fails here, before any connection

        async def go() -> T:
            async with self.client(self.endpoints) as client:
                return await fn(client)

        try:
            return asyncio.run(go())
        except QuorumError as exc:
            fail(f"{type(exc).__name__}: {exc}")
        except KeyboardInterrupt:
            sys.exit(130)
        raise AssertionError("unreachable")


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoints", envvar="QUORUM_ENDPOINTS", default=DEFAULT_ENDPOINTS,
              show_default=True,
              help="Comma-separated host:port of native client ports (https://host:port: TLS).")
@click.option("-w", "--write-out", type=click.Choice(["table", "json", "simple"]),
              default="table", show_default=True)
@click.option("--timeout", "timeout_s", default=5.0, show_default=True, help="Seconds per request.")
@click.option("--cacert", envvar="QUORUM_CACERT",
              help="TLS: CA bundle (PEM) that signs the servers' certificates. Any TLS option "
                   "(or an https:// endpoint) turns TLS on; without --cacert the system's "
                   "trust store is used.")
@click.option("--cert", envvar="QUORUM_CERT",
              help="TLS: this client's certificate (PEM), for servers run with "
                   "--client-cert-auth.")
@click.option("--key", envvar="QUORUM_KEY", help="TLS: the key (PEM) of --cert.")
@click.option("--insecure-skip-tls-verify", is_flag=True, default=False,
              help="TLS without checking the server's certificate (encrypted, but anyone on "
                   "the path can pose as the server). Tests only.")
@click.option("--tls-server-name", envvar="QUORUM_TLS_SERVER_NAME",
              help="TLS: the name the servers' certificates must carry, instead of the "
                   "endpoint's host.")
@click.version_option(package_name="quorum")
@click.pass_context
def cli(ctx: click.Context, endpoints: str, write_out: str, timeout_s: float,
        cacert: str | None, cert: str | None, key: str | None, insecure_skip_tls_verify: bool,
        tls_server_name: str | None) -> None:
    """quorum: a Raft-replicated coordination service."""
    tls = TlsFlags(cacert, cert, key, insecure_skip_tls_verify, tls_server_name)
    ctx.obj = Ctx(endpoints, write_out, timeout_s, tls)


cli.add_command(serve)
cli.add_command(cluster)
cli.add_command(sim)
cli.add_command(bench)
cli.add_command(verify)


def _b(value: str) -> bytes:
    return value.encode()


def _kv_rows(kvs: Any) -> list[tuple[Any, ...]]:
    return [(text(kv.key), text(kv.value), kv.create_revision, kv.mod_revision, kv.version,
             kv.lease or "") for kv in kvs]


KV_COLUMNS = ("key", "value", "create_rev", "mod_rev", "version", "lease")


# --- key-value -----------------------------------------------------------------------------------


@cli.command()
@click.argument("key")
@click.argument("value")
@click.option("--lease", default="0", help="Attach to this lease id (hex).")
@click.option("--prev-kv", is_flag=True, help="Print the previous value.")
@pass_ctx
def put(c: Ctx, key: str, value: str, lease: str, prev_kv: bool) -> None:
    """Set KEY to VALUE."""
    lease_id = _lease_id(lease)
    resp = c.run(lambda cl: cl.put(_b(key), _b(value), lease=lease_id, prev_kv=prev_kv))
    if c.json:
        emit_json(resp)
        return
    click.echo(f"OK (revision {resp.revision})")
    if prev_kv and resp.prev_kv is not None:
        click.echo(f"previous: {text(resp.prev_kv.value)}")


@cli.command()
@click.argument("key")
@click.argument("range_end", required=False, default="")
@click.option("--prefix", is_flag=True, help="Every key starting with KEY.")
@click.option("--rev", type=int, default=0, help="Read at this revision.")
@click.option("--limit", type=int, default=0)
@click.option("--sort-by", type=click.Choice(["key", "version", "create", "modify", "value"]))
@click.option("--order", type=click.Choice(["ascend", "descend"]))
@click.option("--keys-only", is_flag=True)
@click.option("--count-only", is_flag=True)
@click.option("--serializable", is_flag=True, help="Answer from the local replica (may be stale).")
@pass_ctx
def get(c: Ctx, key: str, range_end: str, prefix: bool, rev: int, limit: int,
        sort_by: str | None, order: str | None, keys_only: bool, count_only: bool,
        serializable: bool) -> None:
    """Read KEY (or [KEY, RANGE_END), or a prefix)."""
    from quorum.state.commands import SortOrder, SortTarget

    target = {"key": SortTarget.KEY, "version": SortTarget.VERSION, "create": SortTarget.CREATE,
              "modify": SortTarget.MOD, "value": SortTarget.VALUE}[sort_by or "key"]
    sort_order = {None: SortOrder.NONE, "ascend": SortOrder.ASCEND,
                  "descend": SortOrder.DESCEND}[order]
    if sort_by and order is None:
        sort_order = SortOrder.ASCEND
    start, end = _b(key), _b(range_end)
    if prefix and not start:  # the empty prefix means every key, as in etcdctl
        start, end, prefix = b"\0", b"\0", False
    resp = c.run(lambda cl: cl.range(
        start, end, prefix=prefix, revision=rev, limit=limit, sort_order=sort_order,
        sort_target=target, keys_only=keys_only, count_only=count_only,
        serializable=serializable))
    if c.json:
        emit_json(resp)
    elif count_only:
        click.echo(resp.count)
    elif c.write_out == "simple":
        for kv in resp.kvs:
            click.echo(text(kv.key))
            if not keys_only:
                click.echo(text(kv.value))
    else:
        table(f"revision {resp.revision}, {resp.count} key(s){' (more)' if resp.more else ''}",
              KV_COLUMNS, _kv_rows(resp.kvs))


@cli.command("del")
@click.argument("key")
@click.argument("range_end", required=False, default="")
@click.option("--prefix", is_flag=True)
@click.option("--prev-kv", is_flag=True)
@pass_ctx
def delete(c: Ctx, key: str, range_end: str, prefix: bool, prev_kv: bool) -> None:
    """Delete KEY (or a range, or a prefix); prints how many keys were deleted."""
    resp = c.run(lambda cl: cl.delete(_b(key), _b(range_end), prefix=prefix, prev_kv=prev_kv))
    if c.json:
        emit_json(resp)
        return
    click.echo(resp.deleted)
    for kv in resp.prev_kvs:
        click.echo(f"{text(kv.key)} = {text(kv.value)}")


def _parse_compare(spec: str) -> Any:
    """``value(k) = v`` | ``version(k) > 3`` | ``create(k) = 0`` | ``mod(k) < 9`` | ``lease(k)``."""
    from quorum.client import txn as t

    tokens = shlex.split(spec)
    if len(tokens) != 3 or "(" not in tokens[0] or not tokens[0].endswith(")"):
        raise click.BadParameter(f"compare {spec!r}: expected e.g. 'value(key) = v'")
    fn, _, key = tokens[0][:-1].partition("(")
    sides = {"value": t.value, "version": t.version, "create": t.create_revision,
             "mod": t.mod_revision, "lease": t.lease}
    if fn not in sides:
        raise click.BadParameter(f"compare target {fn!r}: one of {', '.join(sides)}")
    side = sides[fn](_b(key))
    operand: Any = _b(tokens[2]) if fn == "value" else int(tokens[2])
    ops = {"=": side.__eq__, "!=": side.__ne__, ">": side.__gt__, "<": side.__lt__}
    if tokens[1] not in ops:
        raise click.BadParameter(f"compare operator {tokens[1]!r}: one of = != > <")
    return ops[tokens[1]](operand)


def _parse_op(spec: str) -> Any:
    """``put k v`` | ``get k [end]`` | ``del k [end]``."""
    from quorum.client import txn as t

    tokens = shlex.split(spec)
    if tokens and tokens[0] == "put" and len(tokens) == 3:
        return t.put(_b(tokens[1]), _b(tokens[2]))
    if tokens and tokens[0] == "get" and len(tokens) in (2, 3):
        return t.get(_b(tokens[1]), _b(tokens[2]) if len(tokens) == 3 else b"")
    if tokens and tokens[0] == "del" and len(tokens) in (2, 3):
        return t.delete(_b(tokens[1]), _b(tokens[2]) if len(tokens) == 3 else b"")
    raise click.BadParameter(f"operation {spec!r}: expected 'put k v', 'get k' or 'del k'")


@cli.command()
@click.option("--if", "compares", multiple=True, help="Compare, e.g. \"value(k) = v\".")
@click.option("--then", "success", multiple=True, help="Op if all compares hold: 'put k v'.")
@click.option("--else", "failure", multiple=True, help="Op otherwise.")
@pass_ctx
def txn(c: Ctx, compares: tuple[str, ...], success: tuple[str, ...],
        failure: tuple[str, ...]) -> None:
    """Atomic compare-and-swap transaction (one revision)."""
    cmp = [_parse_compare(s) for s in compares]
    ok_ops = [_parse_op(s) for s in success]
    else_ops = [_parse_op(s) for s in failure]
    resp = c.run(lambda cl: cl.txn(cmp, ok_ops, else_ops))
    if c.json:
        emit_json(resp)
        return
    click.echo("SUCCESS" if resp.succeeded else "FAILURE")
    for r in resp.responses:
        kvs = getattr(r, "kvs", None)
        if kvs:
            for kv in kvs:
                click.echo(f"{text(kv.key)} = {text(kv.value)}")
        elif hasattr(r, "deleted"):
            click.echo(f"deleted {r.deleted}")
        else:
            click.echo("OK")


@cli.command()
@click.argument("key")
@click.argument("range_end", required=False, default="")
@click.option("--prefix", is_flag=True)
@click.option("--rev", type=int, default=0, help="Start at this revision (history replay).")
@click.option("--prev-kv", is_flag=True)
@click.option("--count", type=int, default=0, help="Exit after this many events (0 = never).")
@pass_ctx
def watch(c: Ctx, key: str, range_end: str, prefix: bool, rev: int, prev_kv: bool,
          count: int) -> None:
    """Print changes to KEY (or a range or prefix) as they happen."""

    async def go(cl: Any) -> None:
        seen = 0
        watcher = cl.watch(_b(key), _b(range_end), prefix=prefix, start_revision=rev,
                           prev_kv=prev_kv)
        async for batch in watcher:
            for ev in batch.events:
                _print_event(c, ev)
                seen += 1
                if count and seen >= count:
                    await watcher.cancel()
                    return

    c.run(go)


def _print_event(c: Ctx, ev: Any) -> None:
    if c.json:
        emit_json(ev)
        return
    kind = "PUT" if int(ev.type) == 0 else "DELETE"
    line = f"{kind} {text(ev.kv.key)}"
    if kind == "PUT":
        line += f" = {text(ev.kv.value)}"
    line += f"  (rev {ev.kv.mod_revision})"
    if ev.prev_kv is not None:
        line += f"  prev {text(ev.prev_kv.value)}"
    click.echo(line, nl=True)
    sys.stdout.flush()


@cli.command()
@click.argument("revision", type=int)
@pass_ctx
def compact(c: Ctx, revision: int) -> None:
    """Discard key history before REVISION."""
    rev = c.run(lambda cl: cl.compact(revision))
    click.echo(f"compacted at {revision} (revision {rev})")


# --- leases ----------------------------------------------------------------------------------


@cli.group()
def lease() -> None:
    """Grant, renew, inspect and revoke TTL leases."""


@lease.command("grant")
@click.argument("ttl", type=int)
@pass_ctx
def lease_grant(c: Ctx, ttl: int) -> None:
    resp = c.run(lambda cl: cl.lease_grant(ttl))
    if c.json:
        emit_json(resp)
    else:
        click.echo(f"lease {resp.id:x} granted with TTL {resp.ttl}s")


def _lease_id(value: str) -> int:
    """Lease ids are hex everywhere in the CLI, as `lease grant`/`lease list` print them (and as
    etcdctl reads them): "10" is lease 0x10, never lease ten."""
    try:
        return int(value.removeprefix("0x"), 16)
    except ValueError:
        raise click.BadParameter(f"lease id {value!r} must be hex (as lease list shows)") from None


@lease.command("revoke")
@click.argument("lease_id")
@pass_ctx
def lease_revoke(c: Ctx, lease_id: str) -> None:
    ident = _lease_id(lease_id)
    c.run(lambda cl: cl.lease_revoke(ident))
    click.echo(f"lease {ident:x} revoked")


@lease.command("ttl")
@click.argument("lease_id")
@click.option("--keys", is_flag=True)
@pass_ctx
def lease_ttl(c: Ctx, lease_id: str, keys: bool) -> None:
    ident = _lease_id(lease_id)
    resp = c.run(lambda cl: cl.lease_time_to_live(ident, keys=keys))
    if c.json:
        emit_json(resp)
    elif resp.ttl_s < 0:
        click.echo(f"lease {ident:x} already expired")
    else:
        click.echo(f"lease {ident:x} granted with TTL({resp.granted_ttl_s}s), "
                   f"remaining({resp.ttl_s}s)"
                   + (f", attached keys({', '.join(text(k) for k in resp.keys)})" if keys else ""))


@lease.command("list")
@pass_ctx
def lease_list(c: Ctx) -> None:
    ids = c.run(lambda cl: cl.lease_list())
    if c.json:
        emit_json({"leases": list(ids)})
    else:
        click.echo(f"found {len(ids)} leases")
        for i in ids:
            click.echo(f"{i:x}")


@lease.command("keep-alive")
@click.argument("lease_id")
@click.option("--once", is_flag=True)
@pass_ctx
def lease_keep_alive(c: Ctx, lease_id: str, once: bool) -> None:
    ident = _lease_id(lease_id)

    async def go(cl: Any) -> None:
        while True:
            ttl = await cl.lease_keepalive_once(ident)
            click.echo(f"lease {ident:x} keepalived with TTL({ttl})")
            if once:
                return
            await asyncio.sleep(max(0.5, ttl / 3))

    c.run(go)


# --- recipes ---------------------------------------------------------------------------------


@cli.command()
@click.argument("name")
@click.argument("command", nargs=-1)
@click.option("--ttl", default=10, show_default=True, help="Lease TTL of the lock.")
@pass_ctx
def lock(c: Ctx, name: str, command: tuple[str, ...], ttl: int) -> None:
    """Take lock NAME, print its fencing token, then run COMMAND (or hold until Ctrl-C).

    COMMAND sees the token in $QUORUM_FENCING_TOKEN; protected resources must reject writes
    carrying a token lower than one they have already seen."""
    from quorum.client.recipes.lock import Lock

    async def go(cl: Any) -> int:
        lk = Lock(cl, name, ttl_s=ttl)
        token = await lk.acquire()
        click.echo(f"{lk.key.decode(errors='replace')}\nfencing token: {token}")
        sys.stdout.flush()
        try:
            if command:
                env = dict(os.environ, QUORUM_FENCING_TOKEN=str(token))
                proc = await asyncio.create_subprocess_exec(*command, env=env)
                return await proc.wait()
            await asyncio.Event().wait()
            return 0
        finally:
            await lk.release()

    code = c.run(go)
    sys.exit(code)


@cli.command()
@click.argument("name")
@click.argument("proposal", required=False)
@click.option("--listen", is_flag=True, help="Only observe and print leaders.")
@click.option("--ttl", default=10, show_default=True)
@pass_ctx
def elect(c: Ctx, name: str, proposal: str | None, listen: bool, ttl: int) -> None:
    """Campaign in election NAME with PROPOSAL (hold until Ctrl-C), or --listen to observe."""
    from quorum.client.recipes.election import Election

    async def go(cl: Any) -> None:
        election = Election(cl, name, ttl_s=ttl)
        if listen or proposal is None:
            async for kv in election.observe():
                click.echo("(no leader)" if kv is None else text(kv.value))
                sys.stdout.flush()
            return
        token = await election.campaign(_b(proposal))
        click.echo(f"elected: {proposal} (leadership token {token})")
        sys.stdout.flush()
        try:
            await asyncio.Event().wait()
        finally:
            await election.resign()

    c.run(go)


# --- cluster and maintenance -----------------------------------------------------------------


@cli.group()
def member() -> None:
    """List, add, remove and promote cluster members."""


def _member_rows(members: Any) -> list[tuple[Any, ...]]:
    return [(f"{m.member_id:x}", m.name, ",".join(m.peer_urls), ",".join(m.client_urls),
             "learner" if m.is_learner else "voter") for m in members]


MEMBER_COLUMNS = ("id", "name", "peer urls", "client urls", "role")


@member.command("list")
@pass_ctx
def member_list(c: Ctx) -> None:
    members = c.run(lambda cl: cl.member_list())
    if c.json:
        emit_json(members)
    else:
        table(None, MEMBER_COLUMNS, _member_rows(members))


def _member_id(value: str) -> int:
    try:
        return int(value, 16)
    except ValueError:
        raise click.BadParameter(f"member id {value!r} must be hex (as member list shows)") from None


@member.command("add")
@click.argument("peer_url")
@click.option("--learner", is_flag=True, help="Add as a non-voting learner.")
@pass_ctx
def member_add(c: Ctx, peer_url: str, learner: bool) -> None:
    """Add a member reachable at PEER_URL (then start it with `quorum serve --join`)."""
    resp = c.run(lambda cl: cl.member_add([peer_url], is_learner=learner))
    if c.json:
        emit_json(resp)
        return
    new = resp.member
    click.echo(f"added member {new.member_id:x} ({new.member_id})" if new else "added")
    table(None, MEMBER_COLUMNS, _member_rows(resp.members))
    cluster_id = c.run(lambda cl: cl.status()).cluster_id
    if new and cluster_id:
        click.echo(f"start it with: quorum serve --id {new.member_id} --join "
                   f"--cluster-id {cluster_id:#x} --peer-listen {peer_url.split('://')[-1]} "
                   "--initial-cluster <every member, itself included> ...")


@member.command("remove")
@click.argument("member_id")
@pass_ctx
def member_remove(c: Ctx, member_id: str) -> None:
    ident = _member_id(member_id)
    c.run(lambda cl: cl.member_remove(ident))
    click.echo(f"member {ident:x} removed")


@member.command("promote")
@click.argument("member_id")
@pass_ctx
def member_promote(c: Ctx, member_id: str) -> None:
    ident = _member_id(member_id)
    c.run(lambda cl: cl.member_promote(ident))
    click.echo(f"member {ident:x} promoted to voter")


@cli.command()
@pass_ctx
def status(c: Ctx) -> None:
    """Status of every endpoint: leader, term, indexes, size."""
    c.tls()  # a bad TLS file fails here, once, not once per endpoint

    async def one(endpoint: str) -> Any:
        try:
            async with c.client([endpoint]) as cl:
                return await cl.status()
        except QuorumError as exc:
            return exc

    async def go() -> list[Any]:
        return list(await asyncio.gather(*(one(e) for e in c.endpoints)))

    results = asyncio.run(go())
    if c.json:
        emit_json([{"endpoint": c.shown(e),
                    **({"error": str(r)} if isinstance(r, Exception) else {"status": r})}
                   for e, r in zip(c.endpoints, results)])
        return
    rows = []
    for e, r in zip(map(c.shown, c.endpoints), results):
        if isinstance(r, Exception):
            rows.append((e, "-", "-", "-", "-", "-", "-", f"unreachable: {r}"))
        else:
            rows.append((e, f"{r.member_id:x}", f"{r.leader_id:x}",
                         "yes" if r.leader_id == r.member_id else "no", r.raft_term,
                         r.raft_index, r.raft_applied_index, f"{r.db_size_bytes} B"))
    table(None, ("endpoint", "id", "leader", "is leader", "term", "raft index", "applied",
                 "db size"), rows)


@cli.command("move-leader")
@click.argument("member_id")
@pass_ctx
def move_leader(c: Ctx, member_id: str) -> None:
    """Hand leadership to MEMBER_ID (hex)."""
    ident = _member_id(member_id)
    c.run(lambda cl: cl.move_leader(ident))
    click.echo(f"leadership transferred to {ident:x}")


@cli.group()
def snapshot() -> None:
    """Save a snapshot of the key-value state."""


@snapshot.command("save")
@click.argument("path", type=click.Path(dir_okay=False))
@pass_ctx
def snapshot_save(c: Ctx, path: str) -> None:
    data = c.run(lambda cl: cl.snapshot())
    with open(path, "wb") as f:
        f.write(data)
    click.echo(f"snapshot saved to {path} ({len(data)} bytes)")


@cli.command("hash")
@click.option("--rev", type=int, default=0)
@pass_ctx
def hash_kv(c: Ctx, rev: int) -> None:
    """HashKV of every endpoint (equal hashes = equal history)."""
    c.tls()  # a bad TLS file fails here

    async def go() -> list[Any]:
        out = []
        for e in c.endpoints:
            async with c.client([e]) as cl:
                out.append(await cl.hash_kv(rev))
        return out

    try:
        results = asyncio.run(go())
    except QuorumError as exc:  # e.g. TlsHandshakeFailed: a message, not a traceback
        fail(f"{type(exc).__name__}: {exc}")
    if c.json:
        emit_json(results)
    else:
        table(None, ("endpoint", "hash", "compact revision", "revision"),
              [(c.shown(e), r.hash, r.compact_revision, r.revision)
               for e, r in zip(c.endpoints, results)])


# --- storage tools -----------------------------------------------------------------------------


@cli.group()
def wal() -> None:
    """Inspect or verify a node's data directory (offline)."""


@wal.command("inspect")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.pass_obj
def wal_inspect(c: Ctx, data_dir: str) -> None:
    from quorum.storage.inspect import inspect, render

    report = inspect(data_dir)
    if c.json:
        emit_json(report)
    else:
        click.echo(render(report))


@wal.command("verify")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.pass_obj
def wal_verify(c: Ctx, data_dir: str) -> None:
    """Exit 0 if the directory passes every check, 1 otherwise."""
    from quorum.storage.inspect import render, verify

    report = verify(data_dir)
    if c.json:
        emit_json(report)
    else:
        click.echo(render(report))
    sys.exit(0 if report.ok else 1)


def main() -> None:
    cli(prog_name="quorum")


if __name__ == "__main__":
    main()
