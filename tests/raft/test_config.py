"""Config.validate: one sentence per rule."""

from __future__ import annotations

import dataclasses

import pytest

from quorum.errors import ConfigError
from quorum.raft import Config, ReadOnlyOption


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"id": 0}, "id must be"),
        ({"heartbeat_ticks": 0}, "heartbeat_ticks"),
        ({"election_ticks": 1}, "election_ticks must be greater"),
        ({"applied": -1}, "applied"),
        ({"max_size_per_msg": 0}, "max_size_per_msg"),
        ({"max_entries_per_msg": 0}, "max_entries_per_msg"),
        ({"max_inflight_msgs": 0}, "max_inflight_msgs"),
        ({"max_inflight_bytes": -1}, "max_inflight_bytes"),
        ({"max_uncommitted_entries_size": -1}, "max_uncommitted"),
        ({"max_committed_size_per_ready": 0}, "max_committed_size_per_ready"),
        ({"read_only_option": ReadOnlyOption.LEASE_BASED, "check_quorum": False}, "LEASE_BASED"),
        ({"planted_bugs": frozenset({"x"})}, "planted_bugs"),
    ],
)
def test_each_rule(change: dict[str, object], fragment: str) -> None:
    config = dataclasses.replace(Config(id=1), **change)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=fragment):
        config.validate()


def test_defaults_are_valid() -> None:
    Config(id=1).validate()
    Config(id=1, read_only_option=ReadOnlyOption.LEASE_BASED).validate()
    assert Config(id=1).pre_vote and Config(id=1).check_quorum
