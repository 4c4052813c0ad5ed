"""The small receive lane's reader (TPACKET_V2 slots) against a ring laid out in plain memory.

The kernel side is played by the test: it writes a ``tpacket2_hdr`` and a frame into a slot
and flips the slot's status to TP_STATUS_USER, exactly as ``tpacket_rcv`` does.  The reader
must hand slots over in ring order, stop at the first slot still owned by the kernel, give
slots back only after the consumer is done with them, split batches at ``batch_max``, wrap, and
step over a hole (a kernel-owned slot followed by ``HOLE_SPAN`` filled ones).
"""

from __future__ import annotations

import struct
import time

import pytest

from ulvs.io import afpacket
from ulvs.io.afpacket import HOLE_SPAN, TP_STATUS_KERNEL, TP_STATUS_USER, VNET_LEN, PacketRing, RingConfig
from ulvs.io.base import Batch

SLOT = 2048
MAC_OFF = 96          # where the frame starts in a slot (after the header and the vnet header)
HDR = struct.Struct("=IIIHHII")


def make_ring(slots: int = 64, batch_max: int = 16) -> PacketRing:
    ring = PacketRing.__new__(PacketRing)       # no socket: only the reader's state
    ring.cfg = RingConfig(slot_size=SLOT, slot_count=slots, batch_max=batch_max)
    ring.map = bytearray(SLOT * slots)          # type: ignore[assignment]
    ring.batch = Batch()
    ring.ifindex = 7
    ring.ifname = "fake0"
    ring.lanes = True
    ring._next_slot = 0
    ring.holes = ring.rx_stale = ring.rx_other_host = ring.rx_outgoing = 0
    ring._hole_at = -1
    ring._hole_since = 0.0
    return ring


def fill(ring: PacketRing, slot: int, payload: bytes, needs_csum: bool = False, age: float = 0.0,
         pkttype: int = 0) -> None:
    """What the kernel does for one frame (stamped ``age`` seconds ago, CLOCK_REALTIME)."""
    m = ring.map
    base = slot * SLOT
    m[base + MAC_OFF - VNET_LEN] = 1 if needs_csum else 0
    m[base + MAC_OFF:base + MAC_OFF + len(payload)] = payload
    m[base + afpacket.PKTTYPE_V2] = pkttype
    stamp = time.time() - age
    HDR.pack_into(m, base, TP_STATUS_USER, len(payload), len(payload), MAC_OFF, MAC_OFF + 14,
                  int(stamp), int(stamp % 1 * 1e9))


def status(ring: PacketRing, slot: int) -> int:
    return int(struct.unpack_from("=I", ring.map, slot * SLOT)[0])


def frames(b: Batch) -> list[bytes]:
    return [bytes(b.bufs[j][b.offs[j]:b.offs[j] + b.lens[j]]) for j in range(b.count)]


def test_slots_are_read_in_order_and_given_back_after_the_batch() -> None:
    ring = make_ring()
    for i in range(5):
        fill(ring, i, bytes([i]) * 60, needs_csum=i == 3)
    gen = ring._slot_batches()
    b = next(gen)
    assert frames(b) == [bytes([i]) * 60 for i in range(5)]
    assert list(b.partial) == [0, 0, 0, 1, 0]
    assert b.ifins == [7] * 5
    assert all(status(ring, i) == TP_STATUS_USER for i in range(5))   # still the consumer's
    assert list(gen) == []
    assert all(status(ring, i) == TP_STATUS_KERNEL for i in range(5))
    assert ring._next_slot == 5


def test_reader_stops_at_a_slot_the_kernel_is_still_writing() -> None:
    ring = make_ring()
    fill(ring, 0, b"a" * 60)
    fill(ring, 2, b"c" * 60)                  # slot 1 not finished yet
    assert [frames(b) for b in ring._slot_batches()] == [[b"a" * 60]]
    assert ring._next_slot == 1 and ring.holes == 0
    fill(ring, 1, b"b" * 60)
    assert [frames(b) for b in ring._slot_batches()] == [[b"b" * 60, b"c" * 60]]


def test_batches_split_at_batch_max_and_wrap_around() -> None:
    ring = make_ring(slots=64, batch_max=16)
    ring._next_slot = 50
    for k in range(40):                        # slots 50..63, then 0..25
        fill(ring, (50 + k) % 64, k.to_bytes(2, "big") * 30)
    sizes, got = [], []
    for b in ring._slot_batches():
        sizes.append(b.count)
        got += frames(b)
    assert sizes == [16, 16, 8]
    assert got == [k.to_bytes(2, "big") * 30 for k in range(40)]
    assert ring._next_slot == 26
    assert all(status(ring, s) == TP_STATUS_KERNEL for s in range(64))


def test_a_hole_is_stepped_over_and_counted() -> None:
    ring = make_ring(slots=128, batch_max=64)
    for s in range(1, 1 + HOLE_SPAN + 3):      # slot 0 never filled, the ones after it are
        fill(ring, s, s.to_bytes(1, "big") * 60)
    got = [f for b in ring._slot_batches() for f in frames(b)]
    assert got == [s.to_bytes(1, "big") * 60 for s in range(1, 1 + HOLE_SPAN + 3)]
    assert ring.holes == 1


@pytest.mark.parametrize("filled_after", [1, HOLE_SPAN - 1])
def test_a_late_slot_is_not_mistaken_for_a_hole(filled_after: int) -> None:
    ring = make_ring(slots=128, batch_max=64)
    for s in range(1, 1 + filled_after):
        fill(ring, s, b"x" * 60)
    assert list(ring._slot_batches()) == []
    assert ring._next_slot == 0 and ring.holes == 0
    fill(ring, 0, b"w" * 60)                   # the kernel finishes it: read in order
    got = [f for b in ring._slot_batches() for f in frames(b)]
    assert got == [b"w" * 60] + [b"x" * 60] * filled_after and ring.holes == 0


def test_an_unfilled_slot_trailing_a_filled_one_becomes_a_hole_after_the_wait(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(afpacket.time, "monotonic", lambda: clock[0])
    ring = make_ring(slots=128, batch_max=64)
    fill(ring, 1, b"y" * 60)                   # slot 0 stays the kernel's: little traffic follows
    assert list(ring._slot_batches()) == []
    clock[0] += afpacket.HOLE_WAIT / 2
    assert list(ring._slot_batches()) == [] and ring.holes == 0
    clock[0] += afpacket.HOLE_WAIT
    assert [f for b in ring._slot_batches() for f in frames(b)] == [b"y" * 60]
    assert ring.holes == 1 and ring._next_slot == 2


def run_filter(code: bytes, length: int, pkttype: int = 0) -> int:
    """What a socket filter of these programs' shape keeps of a frame (0: drops it): a classic
    BPF interpreter for skb->len, skb->pkt_type, jgt/jeq/jge #k and ret #k."""
    insns = [struct.unpack("=HBBI", code[i:i + 8]) for i in range(0, len(code), 8)]
    pc, acc = 0, 0
    while True:
        op, jt, jf, k = insns[pc]
        if op == 0x80:                                          # ld len
            acc, pc = length, pc + 1
        elif op == 0x20 and k == (-0x1000 + 4) & 0xFFFFFFFF:    # ld pkttype (SKF_AD_PKTTYPE)
            acc, pc = pkttype, pc + 1
        elif op in (0x25, 0x15, 0x35):                          # jgt, jeq, jge #k
            hit = acc > k if op == 0x25 else acc == k if op == 0x15 else acc >= k
            pc = pc + 1 + (jt if hit else jf)
        elif op == 0x06:
            return min(k, length)
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")


def test_length_filters_split_at_small_max() -> None:
    small = afpacket._length_filter(1600, small=True)
    big = afpacket._length_filter(1600, small=False)
    for length, is_small in ((60, True), (1514, True), (1600, True), (1601, False), (65000, False)):
        assert run_filter(small, length) == (length if is_small else 0)
        assert run_filter(big, length) == (0 if is_small else length)


@pytest.mark.parametrize(("pkttype", "kept"), [(0, None), (1, None), (2, None),
                                               (afpacket.PACKET_OTHERHOST, afpacket.MARK_OTHER_HOST),
                                               (4, afpacket.MARK_OUTGOING), (5, afpacket.MARK_OUTGOING)])
def test_plain_sockets_filters_mark_the_frames_not_to_forward(pkttype: int, kept: int | None) -> None:
    """The quick socket and the big lane are read without the sender's address (no ioctl a
    frame): a frame for another host, or one this host sent, reaches them cut to a marker length
    no real frame has; host, broadcast and multicast frames whole.  The small lane's ring keeps
    sll_pkttype in its slot headers and needs no marks."""
    assert run_filter(afpacket._KEEP_ALL, 60, pkttype) == (kept or 60)
    assert run_filter(afpacket._length_filter(1600, small=False), 64000, pkttype) == (kept or 64000)
    assert run_filter(afpacket._length_filter(1600, small=False), 60, pkttype) == 0
    assert run_filter(afpacket._length_filter(1600, small=True), 60, pkttype) == 60


def test_the_reader_finds_filled_slots_beyond_a_gap_of_unfilled_ones() -> None:
    # What an overrun lane was seen to leave behind: the cursor's slot and the next few are the
    # kernel's, filled slots follow further on (and wrap round) -- the reader must not wait.
    ring = make_ring(slots=128, batch_max=64)
    ring._next_slot = 100
    filled = [(100 + 5 + k) % 128 for k in range(HOLE_SPAN + 10)]     # 105..127, then 0..18
    for s in filled:
        fill(ring, s, s.to_bytes(1, "big") * 60)
    got = [f for b in ring._slot_batches() for f in frames(b)]
    assert got == [s.to_bytes(1, "big") * 60 for s in filled]
    assert ring.holes == 1 and ring._next_slot == 19
    assert all(status(ring, s) == TP_STATUS_KERNEL for s in range(128))


def test_an_empty_lane_is_not_a_hole() -> None:
    ring = make_ring(slots=128, batch_max=64)
    ring._next_slot = 40
    assert list(ring._slot_batches()) == []
    assert ring._next_slot == 40 and ring.holes == 0


def test_stale_and_other_host_frames_are_given_back_unread_and_counted() -> None:
    ring = make_ring(slots=64, batch_max=16)
    fill(ring, 0, b"a" * 60)
    fill(ring, 1, b"b" * 60, age=ring.cfg.slot_stale_after * 4)   # a lap old after an overrun
    fill(ring, 2, b"c" * 60, pkttype=afpacket.PACKET_OTHERHOST)   # flooded: another host's
    fill(ring, 3, b"d" * 60)
    got = [f for b in ring._slot_batches() for f in frames(b)]
    assert got == [b"a" * 60, b"d" * 60]
    assert ring.rx_stale == 1 and ring.rx_other_host == 1
    assert ring._next_slot == 4 and all(status(ring, s) == TP_STATUS_KERNEL for s in range(4))


def test_a_batch_of_only_stale_frames_is_not_handed_over() -> None:
    ring = make_ring(slots=64, batch_max=16)
    for s in range(3):
        fill(ring, s, b"z" * 60, age=1.0)
    assert list(ring._slot_batches()) == []
    assert ring.rx_stale == 3 and ring._next_slot == 3
    assert all(status(ring, s) == TP_STATUS_KERNEL for s in range(3))


def test_a_call_stops_after_its_budget_and_the_next_one_goes_on() -> None:
    ring = make_ring(slots=64, batch_max=8)
    for s in range(40):
        fill(ring, s, s.to_bytes(1, "big") * 60)
    first = [f for b in ring._slot_batches(16) for f in frames(b)]
    assert first == [s.to_bytes(1, "big") * 60 for s in range(16)]
    assert status(ring, 16) == TP_STATUS_USER          # left for the next call
    assert ring.backlog
    rest = [f for b in ring._slot_batches(1000) for f in frames(b)]
    assert rest == [s.to_bytes(1, "big") * 60 for s in range(16, 40)]
    assert not ring.backlog


def test_frames_this_host_sent_are_given_back_unread_and_counted() -> None:
    ring = make_ring(slots=64, batch_max=16)
    fill(ring, 0, b"a" * 60)
    fill(ring, 1, b"o" * 60, pkttype=4)         # PACKET_OUTGOING: a fanout group's echo
    fill(ring, 2, b"c" * 60)
    assert [f for b in ring._slot_batches() for f in frames(b)] == [b"a" * 60, b"c" * 60]
    assert ring.rx_outgoing == 1 and ring.rx_other_host == 0
