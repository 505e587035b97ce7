"""Certificate reload without a restart: ``ReloadingTls`` owns "the current TLS settings built
from these files" and rebuilds them when the files change.

What is watched: each file's (inode, size, mtime) by ``os.stat``, at most once per
``interval_s`` (one second), checked when a new connection asks for the current settings; an
idle server does no I/O for this. A change (a file rewritten in place, or replaced by a rename
as cert-manager and most tools do) builds NEW settings from the files. Settings already handed
out are never touched, so connections that are open keep the certificate they started with.

A change whose files cannot be used (a half-written file, a key that does not match its
certificate, bad PEM, a missing CA) keeps the previous settings, logs ONE error naming the
file and the reason (one per process and change, however many watchers share the file), and
is tried again only when the files change again (a rotation that
writes the certificate and then the key passes through such a state; it heals with the
second write). Nothing here raises after the first build: a bad file never stops a server.

Servers take a listening context from ``listening_context``: its ``sni_callback`` runs during
every handshake, after the ClientHello, and switches the connection to the current context
(``SSLObject.context = current``, the ssl module's documented way to choose a context per
handshake). OpenSSL calls it whether or not the client sent a server name (then the name is
None): clients that connect by IP address send none. It works the same on asyncio's and
uvloop's TLS (both drive an ``SSLObject``). What is decided before the callback (the protocol
version, whether a client certificate is requested) comes from the listening context, which
is built by the same function, so it agrees with every later context; the certificate, its
key and the CAs that verify a client's certificate come from the switched-to context.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from quorum.errors import ConfigError

T = TypeVar("T")
CHECK_INTERVAL_S = 1.0

log = logging.getLogger("quorum.tls")

# errors a build may raise on a file that cannot be used
BUILD_ERRORS = (OSError, ssl.SSLError, ConfigError, ValueError)

Stamp = tuple[int, int, int] | str  # (inode, size, mtime_ns), or why stat failed


def _stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ReloadingTls(Generic[T]):
    """The current value built by ``build`` from ``files`` (role -> path, e.g. ``{"cert_file":
    ...}``; empty paths are ignored), rebuilt when a file changes. ``label`` names the user in
    log lines ("the native port"). The first build happens here and its error propagates
    (a server refuses to start on bad files); later builds never raise. Thread-safe (grpcio
    asks from its own threads)."""

    def __init__(self, label: str, files: Mapping[str, str], build: Callable[[], T], *,
                 interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.files = {role: path for role, path in files.items() if path}
        self._build = build
        # read here, not bound as a default: tests shorten the module's interval
        self._interval_s = CHECK_INTERVAL_S if interval_s is None else interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stamps = self._stat()
        self._value = build()
        self._checked = clock()
        self._failed: dict[str, Stamp] | None = None  # the file states last refused
        self.reloads = 0  # successful rebuilds (for tests and logs)
        self.failures = 0  # refused changes, each logged once

    def _stat(self) -> dict[str, Stamp]:
        return {role: _stamp(path) for role, path in self.files.items()}

    def current(self) -> T:
        """The value built from the files as they were at the last successful check; the
        files are stat'ed at most once per interval."""
        with self._lock:
            now = self._clock()
            if now - self._checked >= self._interval_s:
                self._checked = now
                self._check()
            return self._value

    def _check(self) -> None:
        # stat before build: a change landing during the build is seen by the next check
        stamps = self._stat()
        if stamps == self._stamps or stamps == self._failed:
            return  # unchanged, or this very change was already refused and logged
        try:
            value = self._build()
        except BUILD_ERRORS as exc:
            self._failed = stamps
            self.failures += 1
            why = self.diagnose(exc)
            named = tuple(stamp for role, stamp in stamps.items() if self.files[role] in why)
            log.log(logging.ERROR if _first_report(why, named) else logging.DEBUG,
                    "TLS files of %s changed but cannot be used (%s); it keeps the "
                    "certificate loaded before (as does any other port using these files) "
                    "and retries when the files change again", self.label, why)
            return
        self._value, self._stamps, self._failed = value, stamps, None
        self.reloads += 1
        log.info("TLS files of %s reloaded (%s); new connections use them, open ones "
                 "keep theirs", self.label,
                 ", ".join(f"{role} {path}" for role, path in self.files.items()))

    def diagnose(self, exc: BaseException) -> str:
        """Which file is at fault and why, as far as can be told: a file that cannot be
        stat'ed, a certificate or CA bundle that does not parse, else the build's error
        (a key that does not parse, or does not match the certificate)."""
        for role, path in self.files.items():
            stamp = _stamp(path)
            if isinstance(stamp, str):
                return f"{role} {path}: {stamp}"
        for role, path in self.files.items():
            if role == "key_file" or role.endswith("_key_file"):
                continue
            problem = _certificate_problem(path)
            if problem:
                return f"{role} {path}: {problem}"
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        keys = [f"{role} {path}" for role, path in self.files.items()
                if role == "key_file" or role.endswith("_key_file")]
        if reason == "KEY_VALUES_MISMATCH":
            return f"{', '.join(keys)}: the key does not match the certificate"
        return f"{', '.join(keys) or self.label}: {reason}"


_reported: dict[tuple[str, tuple[Stamp, ...]], None] = {}
_reported_lock = threading.Lock()


def _first_report(diagnosis: str, stamps: tuple[Stamp, ...]) -> bool:
    """True the first time this process makes ``diagnosis`` of files in these states.
    Several watchers share files (a member's native and etcd ports and its relay to the
    leader use one certificate): one bad change is one ERROR line, not one per watcher."""
    key = (diagnosis, stamps)
    with _reported_lock:
        if key in _reported:
            return False
        if len(_reported) >= 256:  # bounded; forgetting only risks a repeated line
            _reported.clear()
        _reported[key] = None
        return True


def _certificate_problem(path: str) -> str:
    """Why ``path`` is not a usable PEM certificate bundle ("" if it is)."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(path)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        return f"not a PEM certificate ({reason})"
    return ""


def listening_context(source: ReloadingTls[ssl.SSLContext],
                      build: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """A server-side context for ``create_server``/``start_tls`` whose every handshake uses
    ``source.current()``. ``build`` is the function ``source`` builds with (called once
    more here, so the listening context's own settings match the reloaded ones)."""
    ctx = build()

    def switch(conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
               _listening: ssl.SSLContext) -> None:
        # Runs inside OpenSSL's ClientHello processing: an exception here would abort the
        # handshake with an internal error, so nothing may escape (current() never raises).
        conn.context = source.current()

    ctx.sni_callback = switch
    # No TLS 1.3 session tickets (TLS 1.3 is what clients negotiate here): a resumed session
    # skips certificate checks, so a client could resume a session of before a rotation and
    # never meet the new CA. A TLS 1.2 client can still resume by session id for the
    # session cache's lifetime; the ssl module has no switch for that cache (docs/node.md).
    ctx.num_tickets = 0
    return ctx
