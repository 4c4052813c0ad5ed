"""A worker's ``fanout`` message programs every fanout group its ports joined: the ring's and,
for an ``auto`` ring, the quick sockets' (``lanes``: the big lanes') -- a group without the
program hands every frame to its first member, worker 0."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from ulvs.io import afpacket, fanout
from ulvs.runtime.worker import Worker


class Port:
    def __init__(self, socks: list[str]) -> None:
        self.socks = socks

    def fanout_sockets(self) -> list[Any]:
        return list(self.socks)


def test_the_fanout_message_programs_every_group(monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[tuple[Any, list[fanout.Insn]]] = []
    monkeypatch.setattr(fanout, "set_program", lambda sock, prog: got.append((sock, prog)))
    w = Worker.__new__(Worker)
    w.core = None                                             # type: ignore[assignment]
    w.ports = {2: Port(["ring2", "quick2"]), 3: Port(["ring3", "quick3"])}  # type: ignore[dict-item]
    masq = [socket.inet_aton("10.77.1.11"), socket.inet_aton("10.77.1.12")]
    assert w.handle({"op": "fanout", "masq": [a.hex() for a in masq]}) == {"ok": True}
    want = fanout.client_key_program(masq)
    assert [s for s, _ in got] == ["ring2", "quick2", "ring3", "quick3"]
    assert all(prog == want for _, prog in got)


@pytest.mark.parametrize(("attrs", "want"), [
    ({}, ["rx"]),
    ({"quick": "q"}, ["rx", "q"]),
    ({"big": "b"}, ["rx", "b"]),
])
def test_a_ring_lists_the_sockets_of_its_groups(attrs: dict[str, str], want: list[str]) -> None:
    ring = afpacket.PacketRing.__new__(afpacket.PacketRing)
    ring.rx = "rx"                                            # type: ignore[assignment]
    for k, v in attrs.items():
        setattr(ring, k, v)
    assert ring.fanout_sockets() == want
