"""An ``auto`` ring: the TPACKET_V3 ring and the quick socket, one of them open at a time.

The ring is laid out in plain memory as in test_ring_v3 (the kernel played by the test); the quick
socket is a queue of frames; the moves (swaps of the fanout group's program) are recorded.  The
reader must read the lane it has just left first (its frames are older), wait for the ring's
block that was still being filled at a move (for a bounded time), and move as ``LanePick``
decides: quick frames wait on a busy port, the ring holds them back on an idle one.
"""

from __future__ import annotations

import collections
import struct
from typing import Any

import pytest

from tests.unit.test_ring_lanes import run_filter
from tests.unit.test_ring_v3 import (
    BLOCK,
    BLOCKS,
    NOW,
    FakeStatsSocket,
    fill_block,
    frames_of,
    make_ring,
    payload,
)
from ulvs.io import afpacket
from ulvs.io.afpacket import (
    PACKET_OTHERHOST,
    RING_WAIT,
    TP_STATUS_KERNEL,
    VNET_LEN,
    PacketRing,
    RingConfig,
)
from ulvs.io.lanepick import WINDOW, LanePick

POOL = 4                        # quick-socket buffers (big_count): frames a batch
ROUNDS = 2                      # batches a read takes from it (quick_batches)


class FakeQuick:
    """A packet socket's receive queue: (frame, sll_pkttype) in arrival order."""

    def __init__(self) -> None:
        self.queue: collections.deque[tuple[bytes, int]] = collections.deque()
        self.reads = 0

    def put(self, *frames: bytes, pkttype: int = 0) -> None:
        self.queue.extend((f, pkttype) for f in frames)

    def recv_into(self, buf: bytearray) -> int:
        """What the kernel hands over through the quick socket's own filter."""
        self.reads += 1
        if not self.queue:
            raise BlockingIOError
        frame, pkttype = self.queue.popleft()
        data = bytes(VNET_LEN) + frame[:run_filter(afpacket._KEEP_ALL, len(frame), pkttype)]
        buf[:len(data)] = data
        return len(data)


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    now = {"real": NOW, "mono": 100.0}
    monkeypatch.setattr(afpacket.time, "time", lambda: now["real"])
    monkeypatch.setattr(afpacket.time, "monotonic", lambda: now["mono"])
    return now


class FakeSteer:
    """The fanout group's program: which lane each swap opened; ``in_flight``: the last swap is
    not over yet (the kernel may still steer by the program before it)."""

    failed = 0

    def __init__(self) -> None:
        self.moves: list[str] = []
        self.in_flight = False

    def set_quick(self, quick: bool) -> None:
        self.moves.append("quick" if quick else "ring")

    def quick_closed(self) -> bool:
        return not self.in_flight and (not self.moves or self.moves[-1] == "ring")


@pytest.fixture
def moves(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    steer = FakeSteer()
    monkeypatch.setattr(afpacket.PacketRing, "steer", steer)
    return steer.moves


def make_auto(quick: bool = False) -> PacketRing:
    ring = make_ring()
    ring.cfg = RingConfig(mode="auto", block_size=BLOCK, block_count=BLOCKS, big_size=2048,
                          big_count=POOL, quick_batches=ROUNDS)
    ring.quick = FakeQuick()                                   # type: ignore[assignment]
    ring.quick.name = "quick"                                  # type: ignore[union-attr]
    ring.rx = type("Rx", (), {"name": "ring"})()               # type: ignore[assignment]
    ring.pick = LanePick(quick=quick)
    ring._big_bufs = [bytearray(2048) for _ in range(POOL)]
    ring.rx_quick = ring.rx_ring_waits = 0
    ring._ring_wait_since = -1.0
    ring._leaving = quick                                      # just moved to the quick socket
    return ring


def read(ring: PacketRing) -> list[bytes]:
    return [f for b in ring.batches() for f in frames_of(b)]


def q(j: int) -> bytes:
    return bytes([0xA0 + j]) * 60


def filling(ring: PacketRing, k: int, frames: int) -> None:
    """The kernel's current block ``k``: ``frames`` written, not handed over."""
    struct.pack_into("=II", ring.map, k * BLOCK + 8, TP_STATUS_KERNEL, frames)


def test_a_quiet_ring_moves_the_port_to_the_quick_socket_in_one_swap(
        clocks: dict[str, float], moves: list[str]) -> None:
    ring = make_auto()
    fill_block(ring, 0, [payload(0, 0)], seq=1)
    assert read(ring) == [payload(0, 0)]
    assert moves == [] and not ring.pick.quick               # type: ignore[union-attr]
    clocks["mono"] += 2 * WINDOW
    fill_block(ring, 1, [payload(1, 0)], seq=2)
    assert read(ring) == [payload(1, 0)]
    assert ring.pick.quick                                     # type: ignore[union-attr]
    assert moves == ["quick"]
    c = ring._auto_counters()
    assert (c["rx_quick_now"], c["rx_to_quick"], c["rx_to_ring"]) == (1, 1, 0)


def test_on_the_quick_socket_the_rings_ready_blocks_come_first(
        clocks: dict[str, float], moves: list[str]) -> None:
    ring = make_auto(quick=True)
    fill_block(ring, 0, [payload(0, 0), payload(0, 1)], seq=1)
    ring.quick.put(q(0), q(1), q(2))                           # type: ignore[union-attr]
    assert read(ring) == [payload(0, 0), payload(0, 1), q(0), q(1), q(2)]
    assert ring.rx_quick == 3 and not ring.backlog and moves == []
    assert read(ring) == []


def test_frames_for_another_host_on_the_quick_socket_are_counted_not_handed_over(
        clocks: dict[str, float], moves: list[str]) -> None:
    ring = make_auto(quick=True)
    ring.quick.put(q(0))                                       # type: ignore[union-attr]
    ring.quick.put(q(1), pkttype=PACKET_OTHERHOST)             # type: ignore[union-attr]
    ring.quick.put(q(2))                                       # type: ignore[union-attr]
    ring.quick.put(q(3), pkttype=4)                            # type: ignore[union-attr]  # sent here
    assert read(ring) == [q(0), q(2)] and ring.rx_other_host == 1 and ring.rx_outgoing == 1


def test_the_block_being_filled_at_a_move_is_waited_for(
        clocks: dict[str, float], moves: list[str]) -> None:
    ring = make_auto(quick=True)
    filling(ring, 0, 2)
    ring.quick.put(q(0))                                       # type: ignore[union-attr]
    assert read(ring) == [] and ring.backlog and ring.rx_ring_waits == 1
    clocks["mono"] += RING_WAIT / 2
    assert read(ring) == [] and ring.backlog and ring.rx_ring_waits == 2
    fill_block(ring, 0, [payload(0, 0), payload(0, 1)], seq=1)   # handed over
    assert read(ring) == [payload(0, 0), payload(0, 1), q(0)]
    assert not ring.backlog


def test_once_the_ring_is_read_out_it_is_only_glanced_at(
        clocks: dict[str, float], moves: list[str]) -> None:
    """After the move's leftovers, a read of the quick socket looks at the ring's cursor block
    only (a stray frame that met the old filter), not for resyncs or blocks being filled."""
    ring = make_auto(quick=True)
    ring.quick.put(q(0))                                       # type: ignore[union-attr]
    assert read(ring) == [q(0)] and not ring._leaving
    fill_block(ring, 3, [payload(3, 0)], seq=9)                # not at the cursor: not looked for
    filling(ring, 0, 1)
    ring.quick.put(q(1))                                       # type: ignore[union-attr]
    assert read(ring) == [q(1)] and ring.rx_ring_waits == 0 and ring.rx_resyncs == 0
    fill_block(ring, 0, [payload(0, 0)], seq=10)               # at the cursor: read first
    ring.quick.put(q(2))                                       # type: ignore[union-attr]
    assert read(ring) == [payload(0, 0), payload(3, 0), q(2)]  # the cursor moved on: a resync


def test_the_wait_for_the_rings_block_is_bounded(clocks: dict[str, float],
                                                 moves: list[str]) -> None:
    ring = make_auto(quick=True)
    filling(ring, 0, 1)
    ring.quick.put(q(0))                                       # type: ignore[union-attr]
    assert read(ring) == [] and ring.backlog
    clocks["mono"] += RING_WAIT * 1.5
    assert read(ring) == [q(0)] and not ring.backlog


def test_a_released_block_reads_as_empty(clocks: dict[str, float],
                                         moves: list[str]) -> None:
    """A block given back keeps its frame count until the kernel opens it again; the reader
    zeroes it, so the wait above cannot mistake an old count for a block being filled."""
    ring = make_auto(quick=True)
    for k in range(BLOCKS):
        fill_block(ring, k, [payload(k, 0), payload(k, 1)], seq=k + 1)
    assert len(read(ring)) == 2 * BLOCKS                        # wrapped: cursor back on block 0
    ring.quick.put(q(0))                                       # type: ignore[union-attr]
    assert read(ring) == [q(0)] and ring.rx_ring_waits == 0
    assert all(struct.unpack_from("=II", ring.map, k * BLOCK + 8) == (TP_STATUS_KERNEL, 0)
               for k in range(BLOCKS))


def test_a_full_quick_read_moves_back_to_the_ring_whose_frames_wait_for_the_queue(
        clocks: dict[str, float], moves: list[str]) -> None:
    ring = make_auto(quick=True)
    queued = [q(j) for j in range(POOL * ROUNDS + 3)]
    ring.quick.put(*queued)                                    # type: ignore[union-attr]
    assert read(ring) == queued[:POOL * ROUNDS]                # its whole budget: falling behind
    assert not ring.pick.quick and ring.backlog                # type: ignore[union-attr]
    assert moves == ["ring"]
    fill_block(ring, 0, [payload(0, 0)], seq=1)                # newer than the queue's rest
    assert read(ring) == queued[POOL * ROUNDS:] + [payload(0, 0)]
    assert not ring.backlog and ring._auto_counters()["rx_to_ring"] == 1


def test_leftovers_of_the_quick_socket_hold_the_ring_back(clocks: dict[str, float],
                                                           moves: list[str]) -> None:
    ring = make_auto(quick=False)
    queued = [q(j) for j in range(POOL * ROUNDS)]
    ring.quick.put(*queued)                                    # type: ignore[union-attr]
    fill_block(ring, 0, [payload(0, 0)], seq=1)
    assert read(ring) == queued and ring.backlog               # the ring's block waits
    assert read(ring) == [payload(0, 0)] and not ring.backlog


def test_counters_add_the_quick_sockets_statistics() -> None:
    ring = make_auto()
    ring.rx = FakeStatsSocket([(10, 2, 1)], "=III")            # type: ignore[assignment]
    ring.quick = FakeStatsSocket([(7, 3)], "=II")              # type: ignore[assignment]
    ring._rx_stats = [0, 0, 0]
    ring.rx_resyncs = ring.holes = ring.tx_ring_frames = ring.tx_fallback = 0
    ring.rx_quick = 4
    got = ring.counters()
    assert (got["rx_packets"], got["rx_ring_drops"], got["rx_freezes"]) == (17 - 5, 5, 1)
    assert got["rx_quick"] == 4 and got["rx_quick_now"] == 0 and got["rx_ring_waits"] == 0


def test_on_the_ring_a_closed_quick_socket_is_not_read(clocks: dict[str, float],
                                                       moves: list[str]) -> None:
    """Once the program steers to the ring, with no swap under way, a read that empties the
    quick socket is its last: later ring reads make no system call on it."""
    ring = make_auto(quick=False)
    quick: Any = ring.quick
    fill_block(ring, 0, [payload(0, 0)], seq=1)
    assert read(ring) == [payload(0, 0)] and quick.reads == 1     # emptied once: closed
    for k in (1, 2):
        fill_block(ring, k, [payload(k, 0)], seq=k + 1)
        assert read(ring) == [payload(k, 0)]
    assert quick.reads == 1


def test_a_move_to_the_ring_reads_the_quick_socket_until_the_swap_is_over(
        clocks: dict[str, float], moves: list[str]) -> None:
    """While a swap to the ring is under way, another CPU may still steer frames to the quick
    socket by the old program: those come before the ring's, on every read, until the swap is
    over and a read has found the queue empty."""
    ring = make_auto(quick=True)
    quick: Any = ring.quick
    steer: Any = afpacket.PacketRing.steer
    queued = [q(j) for j in range(POOL * ROUNDS)]
    quick.put(*queued)
    steer.in_flight = True
    assert read(ring) == queued and moves == ["ring"] and ring.backlog   # full: to the ring
    fill_block(ring, 0, [payload(0, 0)], seq=1)
    quick.put(q(20))                                              # the old program, meanwhile
    assert read(ring) == [q(20), payload(0, 0)]
    fill_block(ring, 1, [payload(1, 0)], seq=2)
    assert read(ring) == [payload(1, 0)]                          # empty, but the swap is not over
    steer.in_flight = False
    quick.put(q(21))                                              # steered just before it ended
    fill_block(ring, 2, [payload(2, 0)], seq=3)
    assert read(ring) == [q(21), payload(2, 0)]                   # asked before this read: closed
    reads = quick.reads
    fill_block(ring, 3, [payload(3, 0)], seq=4)
    assert read(ring) == [payload(3, 0)] and quick.reads == reads


def test_a_refused_move_to_the_ring_keeps_reading_the_quick_socket(
        clocks: dict[str, float], moves: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    ring = make_auto(quick=False)
    quick: Any = ring.quick
    monkeypatch.setattr(FakeSteer, "quick_closed", lambda self: False)   # still steering to quick
    for k in range(3):
        quick.put(q(k))
        fill_block(ring, k, [payload(k, 0)], seq=k + 1)
        assert read(ring) == [q(k), payload(k, 0)]
