"""A worker's ``fanout`` message programs every fanout group its ports joined: the ring's and,
for a ``lanes`` ring, the big lanes' -- a group without the program hands every frame to its
first member, worker 0.  An ``auto`` ring's one group gets the program with its lane tail."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from ulvs.io import afpacket, fanout
from ulvs.runtime.worker import Worker


class Socks:
    def __init__(self, socks: list[str]) -> None:
        self.socks = socks

    def fanout_sockets(self) -> list[Any]:
        return list(self.socks)


def test_the_fanout_message_programs_every_group(monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[tuple[Any, list[fanout.Insn]]] = []
    monkeypatch.setattr(fanout, "set_program", lambda sock, prog: got.append((sock, prog)))
    w = Worker.__new__(Worker)
    w.core = None                                             # type: ignore[assignment]
    lanes = afpacket.PacketRing.__new__(afpacket.PacketRing)
    lanes.rx, lanes.big = "ring2", "big2"                     # type: ignore[assignment]
    auto = afpacket.PacketRing.__new__(afpacket.PacketRing)
    auto.rx, auto.quick = "ring3", "quick3"                   # type: ignore[assignment]
    auto.steer = fanout.LaneGroup("ring3", fanout.LaneSeat(workers=2, index=1))  # type: ignore[arg-type]
    w.ports = {2: lanes, 3: auto}
    masq = [socket.inet_aton("10.77.1.11"), socket.inet_aton("10.77.1.12")]
    assert w.handle({"op": "fanout", "masq": [a.hex() for a in masq]}) == {"ok": True}
    assert got == [("ring2", fanout.client_key_program(masq)), ("big2", fanout.client_key_program(masq)),
                   ("ring3", fanout.client_key_program(masq, tail=fanout.lane_tail(2, 0)))]


@pytest.mark.parametrize(("attrs", "want"), [
    ({}, ["rx"]),
    ({"quick": "q"}, ["rx"]),             # one group: ring and quick socket
    ({"big": "b"}, ["rx", "b"]),
])
def test_a_ring_lists_the_sockets_of_its_groups(attrs: dict[str, str], want: list[str]) -> None:
    ring = afpacket.PacketRing.__new__(afpacket.PacketRing)
    ring.rx = "rx"                                            # type: ignore[assignment]
    for k, v in attrs.items():
        setattr(ring, k, v)
    assert ring.fanout_sockets() == want
