"""TLS settings of a native-protocol client (etcdctl's --cacert/--cert/--key and friends).

One ``ClientTls`` serves every endpoint of a client: the ones it was given, the leader it
discovers, and every reconnect. A cluster has one TLS setting (docs/node.md), so a member's
certificate is checked the same way whichever member answers.
"""

from __future__ import annotations

import ssl

import msgspec

from quorum.errors import ConfigError


class ClientTls(msgspec.Struct, frozen=True, kw_only=True):
    """``ca_file``: PEM bundle of the CAs that sign the members' certificates ("" = the
    system's trust store). ``cert_file``/``key_file``: this client's certificate, for servers
    that demand one (``quorum serve --client-cert-auth``). ``server_name``: the name every
    member's certificate must carry instead of the endpoint's host (certificates issued for a
    DNS name, reached by IP). ``verify=False`` skips checking the server's certificate
    (etcdctl's --insecure-skip-tls-verify): the traffic is encrypted but anyone on the path
    can pose as the server; for tests and first steps only."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""
    verify: bool = True

    def context(self) -> ssl.SSLContext:
        """The client side's SSLContext. Raises ConfigError naming a file that cannot be
        used (missing, not PEM, a key that does not match its certificate)."""
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("a client certificate needs its key (cert_file with key_file)")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            if self.ca_file:
                ctx.load_verify_locations(self.ca_file)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot use the client TLS files (ca_file {self.ca_file!r}, cert_file "
                f"{self.cert_file!r}, key_file {self.key_file!r}): {exc}") from None
        if not self.verify:
            # check_hostname must go first: CERT_NONE is refused while it is on
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx
