"""The simulated network: faults are seeded, partitions and cuts drop what they should."""

from __future__ import annotations

import random

from quorum.raft.harness.network import Faults, Network
from quorum.raft.types import Message, MessageType


def msg(frm: int, to: int, index: int = 0) -> Message:
    return Message(type=MessageType.APP, from_=frm, to=to, index=index)


def drain(net: Network, ticks: int) -> list[Message]:
    out = net.due()
    for _ in range(ticks):
        net.advance()
        out += net.due()
    return out


def test_reliable_network_delivers_in_order_at_once() -> None:
    net = Network(random.Random(1))
    for i in range(5):
        assert net.send(msg(1, 2, i))
    assert [m.index for m in net.due()] == [0, 1, 2, 3, 4]
    assert net.in_flight() == 0


def test_partition_isolate_and_heal() -> None:
    net = Network(random.Random(1))
    net.partition({1, 2}, {3})
    assert net.connected(1, 2) and not net.connected(1, 3) and not net.connected(3, 2)
    assert not net.send(msg(1, 3))
    net.heal()
    net.isolate(2)
    assert net.connected(1, 3) and not net.connected(1, 2) and not net.connected(2, 3)
    net.heal()
    assert net.connected(2, 3) and not net.is_partitioned()


def test_one_way_cut() -> None:
    net = Network(random.Random(1))
    net.cut(1, 2)
    assert not net.send(msg(1, 2)) and net.send(msg(2, 1))
    net.restore(1, 2)
    assert net.send(msg(1, 2))


def test_messages_in_flight_are_lost_when_a_partition_starts() -> None:
    net = Network(random.Random(1), Faults(min_delay_ticks=2, max_delay_ticks=2))
    net.send(msg(1, 2, 7))
    net.isolate(2)
    assert drain(net, 3) == []
    assert [m.index for m in net.take_lost()] == [7]


def test_drop_dup_and_delay_rates_follow_the_seed() -> None:
    faults = Faults(drop_rate=0.2, dup_rate=0.1, min_delay_ticks=0, max_delay_ticks=3)

    def run(seed: int) -> list[int]:
        net = Network(random.Random(seed), faults)
        for i in range(2000):
            net.send(msg(1, 2, i))
        return [m.index for m in drain(net, 4)]

    got = run(9)
    assert got == run(9)  # a pure function of the seed
    assert got != run(10)
    assert 1500 < len(got) < 1900  # ~80 % survive, ~10 % of those doubled
    assert len(got) > len(set(got))  # duplicates happened
    assert got != sorted(got)  # random delays reordered messages


def test_crashed_node_inbox_is_dropped() -> None:
    net = Network(random.Random(1), Faults(min_delay_ticks=1, max_delay_ticks=1))
    net.send(msg(1, 2))
    net.send(msg(2, 1))
    net.drop_to(2)
    assert [m.to for m in drain(net, 1)] == [1]
