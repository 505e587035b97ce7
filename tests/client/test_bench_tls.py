"""``quorum bench``'s TLS options: what the etcd target cannot do is refused with a reason
(the runs against a TLS cluster are in tests/cluster/test_certreload.py)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from quorum.bench.load import BenchConfig, _grpc_channel
from quorum.cli.main import cli
from quorum.client.tls import ClientTls
from quorum.errors import ConfigError, UsageError


def test_skipping_verification_is_refused_for_the_etcd_target() -> None:
    cfg = BenchConfig(target="etcd", tls=ClientTls(verify=False))
    with pytest.raises(UsageError, match="--insecure-skip-tls-verify"):
        _grpc_channel(cfg, "127.0.0.1:1")


def test_an_unusable_ca_file_is_a_config_error_naming_it() -> None:
    cfg = BenchConfig(target="etcd", tls=ClientTls(ca_file="/nonexistent/ca.pem"))
    with pytest.raises(ConfigError, match=r"/nonexistent/ca\.pem"):
        _grpc_channel(cfg, "127.0.0.1:1")


def test_the_cli_reports_the_refusal_and_unusable_files() -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["--insecure-skip-tls-verify", "bench", "--target", "etcd",
                              "--bench-endpoints", "127.0.0.1:1", "--duration", "0.1"])
    assert out.exit_code != 0 and "UsageError" in out.output, out.output
    out = runner.invoke(cli, ["--cacert", "/nonexistent/ca.pem", "bench", "--target", "etcd",
                              "--bench-endpoints", "127.0.0.1:1", "--duration", "0.1"])
    assert out.exit_code != 0 and "/nonexistent/ca.pem" in out.output, out.output
