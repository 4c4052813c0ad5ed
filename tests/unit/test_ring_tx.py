"""The TPACKET_V2 transmit ring against slots laid out in plain memory, with fake sockets.

The kernel side is played by the test: a slot is the kernel's while its ``tp_status`` is
SEND_REQUEST or SENDING, and free again (AVAILABLE) once the test says the frame has left.
``transmit`` must copy vnet header + frame to offset 32 of the next free slot and mark it
SEND_REQUEST with ``tp_len`` covering both; ``flush`` must hand the queued slots over with one
``send()`` on the ring socket; a frame too long for a slot, or one meeting a slot still in
flight, goes out by a plain ``send()`` on the other socket -- after a flush, so order is kept.
"""

from __future__ import annotations

import socket
import struct
from array import array
from collections.abc import Sequence

import pytest

from ulvs.io.afpacket import (
    TP_STATUS_AVAILABLE,
    TP_STATUS_SEND_REQUEST,
    TX_DATA,
    VNET,
    VNET_F_NEEDS_CSUM,
    VNET_LEN,
    PacketRing,
    RingConfig,
)
from ulvs.io.base import Batch

SLOT = 256
SLOTS = 4
ROOM = SLOT - TX_DATA             # vnet header + frame that fit a slot
TP_STATUS_SENDING = 2
TP_STATUS_TS_SOFTWARE = 1 << 29   # a timestamp flag the kernel may leave on a freed slot
LEAD = 20                         # bytes in front of the vnet header in a receive buffer
HDR2 = struct.Struct("=IIIHH")    # tpacket2_hdr: status, len, snaplen, mac, net


class FakeSocket:
    """Records every ``send()`` (with a copy of the bytes: the buffer may change after)."""

    def __init__(self, name: str, log: list[tuple[str, bytes, int]], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    def send(self, data: bytes | memoryview, flags: int = 0) -> int:
        self.log.append((self.name, bytes(data), flags))
        if self.fail:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return len(data)


def make_ring(slots: int = SLOTS, ring: bool = True, fail: bool = False) -> tuple[PacketRing, list[
        tuple[str, bytes, int]]]:
    """The state ``__init__`` leaves that transmit/flush/send_frame use."""
    log: list[tuple[str, bytes, int]] = []
    r = PacketRing.__new__(PacketRing)          # no socket: only the sender's state
    r.cfg = RingConfig(tx_slot_size=SLOT, tx_slot_count=slots)
    r.tx = FakeSocket("tx", log, fail)          # type: ignore[assignment]
    if ring:
        r.txr = FakeSocket("txr", log, fail)    # type: ignore[assignment]
        r.txmap = bytearray(SLOT * slots)       # type: ignore[assignment]
        r.txview = memoryview(r.txmap)          # type: ignore[arg-type]
    else:
        r.txr = None
        r.txmap = None
        r.txview = None
    r._tx_slot = 0
    r._tx_pending = 0
    r.tx_fallback = 0
    r.tx_ring_frames = 0
    return r, log


def rx_frame(frame: bytes, flags: int = 0) -> tuple[bytearray, int, int, int]:
    """A received frame as the core hands it on: a buffer, the vnet header's offset, the
    frame's offset and length (with bytes around them that must not be sent)."""
    buf = bytearray(b"\xee" * LEAD)
    buf += VNET.pack(flags, 0, 0, 0, 34 if flags else 0, 16 if flags else 0)
    buf += frame + b"\xdd" * 8
    return buf, LEAD, LEAD + VNET_LEN, len(frame)


def wire(frame: bytes, flags: int = 0) -> bytes:
    """What must leave: the vnet header, then the frame."""
    buf, vnet_off, off, n = rx_frame(frame, flags)
    return bytes(buf[vnet_off:off + n])


def send(r: PacketRing, frame: bytes, flags: int = 0) -> None:
    r.transmit(*rx_frame(frame, flags))


def mem(r: PacketRing) -> bytearray:
    """The transmit slots (plain memory here)."""
    m = r.txmap
    assert isinstance(m, bytearray)
    return m


def slot_status(r: PacketRing, k: int) -> int:
    return int(struct.unpack_from("=I", mem(r), k * SLOT)[0])


def slot_len(r: PacketRing, k: int) -> int:
    return int(struct.unpack_from("=I", mem(r), k * SLOT + 4)[0])


def slot_data(r: PacketRing, k: int) -> bytes:
    base = k * SLOT + TX_DATA
    return bytes(mem(r)[base:base + slot_len(r, k)])


def kernel_sent(r: PacketRing, *slots: int) -> None:
    """The kernel is done with these slots."""
    for k in slots:
        struct.pack_into("=I", mem(r), k * SLOT, TP_STATUS_AVAILABLE)


def frame(i: int, n: int = 60) -> bytes:
    return bytes([i]) * n


def test_a_frame_is_copied_into_the_next_slot_with_its_vnet_header() -> None:
    r, log = make_ring()
    send(r, frame(0xa1), VNET_F_NEEDS_CSUM)
    assert slot_status(r, 0) == TP_STATUS_SEND_REQUEST
    assert slot_len(r, 0) == VNET_LEN + 60                    # tp_len counts the vnet header
    assert slot_data(r, 0) == wire(frame(0xa1), VNET_F_NEEDS_CSUM)
    assert VNET.unpack_from(mem(r), TX_DATA)[0] == VNET_F_NEEDS_CSUM
    assert mem(r)[TX_DATA + VNET_LEN + 60:SLOT] == bytes(SLOT - TX_DATA - VNET_LEN - 60)
    assert HDR2.unpack_from(mem(r), 0)[2:] == (0, 0, 0)  # the rest of the header: untouched
    assert all(slot_status(r, k) == TP_STATUS_AVAILABLE for k in range(1, SLOTS))
    assert log == []                                          # queued, not sent yet
    assert (r._tx_slot, r._tx_pending, r.tx_ring_frames, r.tx_fallback) == (1, 1, 1, 0)


def test_one_send_on_the_ring_socket_per_flush_and_none_when_nothing_is_queued() -> None:
    r, log = make_ring()
    r.flush()
    assert log == []
    for i in range(3):
        send(r, frame(i, 60 + i))
    assert [slot_data(r, k) for k in range(3)] == [wire(frame(i, 60 + i)) for i in range(3)]
    r.flush()
    assert log == [("txr", b"", socket.MSG_DONTWAIT)]
    assert r._tx_pending == 0
    r.flush()
    assert len(log) == 1
    send(r, frame(9))
    r.flush()
    assert log == [("txr", b"", socket.MSG_DONTWAIT)] * 2
    assert r.tx_ring_frames == 4 and r.tx_fallback == 0


def test_the_slot_cursor_wraps_around() -> None:
    r, log = make_ring()
    for i in range(SLOTS):
        send(r, frame(i))
    r.flush()
    assert r._tx_slot == 0
    kernel_sent(r, 0, 1)
    send(r, frame(0x50, 80))
    send(r, frame(0x51, 90))
    assert r._tx_slot == 2
    assert slot_data(r, 0) == wire(frame(0x50, 80)) and slot_len(r, 0) == VNET_LEN + 80
    assert slot_data(r, 1) == wire(frame(0x51, 90))
    assert slot_data(r, 2) == wire(frame(2))                 # still the first lap's
    assert [n for n, _, _ in log] == ["txr"]
    assert r.tx_ring_frames == SLOTS + 2 and r.tx_fallback == 0


def test_a_slot_freed_with_timestamp_flags_is_free() -> None:
    r, log = make_ring()
    struct.pack_into("=I", mem(r), 0, TP_STATUS_AVAILABLE | TP_STATUS_TS_SOFTWARE)
    send(r, frame(3))
    assert slot_status(r, 0) == TP_STATUS_SEND_REQUEST and slot_data(r, 0) == wire(frame(3))
    assert r.tx_fallback == 0 and log == []


@pytest.mark.parametrize(("size", "in_ring"), [(ROOM - VNET_LEN, True), (ROOM - VNET_LEN + 1, False)])
def test_a_frame_too_long_for_a_slot_is_sent_on_the_plain_socket(size: int, in_ring: bool) -> None:
    r, log = make_ring()
    send(r, frame(7, size))
    if in_ring:
        assert slot_data(r, 0) == wire(frame(7, size)) and log == []
        assert (r.tx_ring_frames, r.tx_fallback, r._tx_slot) == (1, 0, 1)
    else:
        assert log == [("tx", wire(frame(7, size)), 0)]       # nothing queued: no flush
        assert slot_status(r, 0) == TP_STATUS_AVAILABLE
        assert (r.tx_ring_frames, r.tx_fallback, r._tx_slot, r._tx_pending) == (0, 1, 0, 0)


def test_a_long_frame_goes_out_after_the_queued_ones() -> None:
    r, log = make_ring()
    send(r, frame(1))
    send(r, frame(2))
    big = frame(3, 64000)                                     # a GSO super-packet
    send(r, big, VNET_F_NEEDS_CSUM)
    assert log == [("txr", b"", socket.MSG_DONTWAIT), ("tx", wire(big, VNET_F_NEEDS_CSUM), 0)]
    send(r, frame(4))                                         # the ring again, next slot
    r.flush()
    assert slot_data(r, 2) == wire(frame(4))
    assert [n for n, _, _ in log] == ["txr", "tx", "txr"]
    assert (r.tx_ring_frames, r.tx_fallback) == (3, 1)


@pytest.mark.parametrize("busy", [TP_STATUS_SEND_REQUEST, TP_STATUS_SENDING])
def test_a_slot_still_in_flight_sends_the_frame_on_the_plain_socket_after_a_flush(busy: int) -> None:
    r, log = make_ring()
    send(r, frame(1))
    send(r, frame(2))
    struct.pack_into("=II", mem(r), 2 * SLOT, busy, 99)
    mem(r)[2 * SLOT + TX_DATA:2 * SLOT + TX_DATA + 4] = b"LIVE"
    send(r, frame(3))
    assert log == [("txr", b"", socket.MSG_DONTWAIT), ("tx", wire(frame(3)), 0)]
    assert slot_status(r, 2) == busy and slot_len(r, 2) == 99  # the kernel's slot: untouched
    assert mem(r)[2 * SLOT + TX_DATA:2 * SLOT + TX_DATA + 4] == b"LIVE"
    assert (r._tx_slot, r._tx_pending, r.tx_ring_frames, r.tx_fallback) == (2, 0, 2, 1)
    send(r, frame(4))                                         # still busy: no flush, nothing queued
    assert log[2:] == [("tx", wire(frame(4)), 0)]
    kernel_sent(r, 2)
    send(r, frame(5))                                         # freed: the ring again, same slot
    assert slot_status(r, 2) == TP_STATUS_SEND_REQUEST and slot_data(r, 2) == wire(frame(5))
    assert r._tx_slot == 3 and len(log) == 3
    assert (r.tx_ring_frames, r.tx_fallback) == (3, 2)


def test_a_full_ring_lapping_unflushed_slots_flushes_before_the_fallback() -> None:
    r, log = make_ring()
    for i in range(SLOTS):
        send(r, frame(i))
    assert log == []
    send(r, frame(0x77))                                      # slot 0 is queued, not yet sent
    assert log == [("txr", b"", socket.MSG_DONTWAIT), ("tx", wire(frame(0x77)), 0)]
    assert slot_data(r, 0) == wire(frame(0))                  # the queued frame is kept
    assert (r.tx_ring_frames, r.tx_fallback) == (SLOTS, 1)


def test_send_frame_flushes_the_queued_frames_first() -> None:
    r, log = make_ring()
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\x00" * 28
    r.send_frame(arp)
    assert log == [("tx", bytes(VNET_LEN) + arp, 0)]          # nothing queued: no flush
    send(r, frame(1))
    r.send_frame(arp)
    assert log[1:] == [("txr", b"", socket.MSG_DONTWAIT), ("tx", bytes(VNET_LEN) + arp, 0)]
    assert r._tx_pending == 0
    r.flush()
    assert len(log) == 3
    assert (r.tx_ring_frames, r.tx_fallback) == (1, 0)       # send_frame is neither


def test_without_a_ring_every_frame_is_a_send() -> None:
    r, log = make_ring(ring=False)
    send(r, frame(1))
    send(r, frame(2, 3000))
    r.flush()
    assert log == [("tx", wire(frame(1)), 0), ("tx", wire(frame(2, 3000)), 0)]
    assert (r.tx_ring_frames, r.tx_fallback, r._tx_pending) == (0, 2, 0)


def test_send_errors_lose_the_frame_quietly() -> None:
    r, log = make_ring(fail=True)
    send(r, frame(1))
    send(r, frame(2, 1000))                                   # flush fails, then the send fails
    r.send_frame(b"x" * 60)
    assert [n for n, _, _ in log] == ["txr", "tx", "tx"]
    assert r._tx_pending == 0 and (r.tx_ring_frames, r.tx_fallback) == (1, 1)


def test_counters_report_the_transmit_paths() -> None:
    r, _log = make_ring()
    for i in range(3):
        send(r, frame(i))
    send(r, frame(9, 1000))
    r.flush()

    class Rx:
        def getsockopt(self, level: int, opt: int, buflen: int) -> bytes:
            return bytes(buflen)

    r.lanes = False
    r.rx = Rx()                                               # type: ignore[assignment]
    r._rx_stats = [0, 0, 0]
    r.rx_stale = r.rx_resyncs = r.holes = r.rx_other_host = r.rx_outgoing = 0
    r.map = bytearray(r.cfg.block_size * r.cfg.block_count)  # type: ignore[assignment]
    r.map[2 * r.cfg.block_size + 8] = 1                       # block 2 handed over, unread
    got = r.counters()
    assert (got["tx_ring"], got["tx_send"]) == (3, 1)
    assert got["rx_ready"] == 1


def forwarded_batch(sizes: list[int], verdicts: list[int], egress: list[int]) -> Batch:
    """Received frames one after another in one buffer, as a batch the core has decided."""
    b = Batch()
    for i, size in enumerate(sizes):
        buf, vnet_off, off, n = rx_frame(frame(i + 1, size), VNET_F_NEEDS_CSUM if i % 3 else 0)
        b.bufs.append(buf)
        assert vnet_off == off - VNET_LEN
        b.offs.append(off)
        b.lens.append(n)
    b.count = len(sizes)
    return b


@pytest.mark.parametrize("ring", [True, False])
@pytest.mark.parametrize("busy_slot", [None, 1, 3])
def test_transmit_forwarded_sends_what_transmit_would_frame_by_frame(ring: bool,
                                                                     busy_slot: int | None) -> None:
    # verdict 1 and egress 5: ours; other egress: another port's; verdict 0/2: dropped, passed
    check_transmit_forwarded(ring, busy_slot, [1, 1, 1, 0, 1, 2, 1, 1, 1], [5, 5, 5, 5, 9, 5, 5, 5, 5])


@pytest.mark.parametrize("ring", [True, False])
@pytest.mark.parametrize(("verdicts", "egress"), [
    ([1, 1, 1, 1, 1, 1, 1, 1, 1], [9, 9, 9, 9, 9, 9, 9, 9, 9]),   # none of the batch leaves here
    ([1, 0, 1, 1, 2, 1, 1, 1, 1], [9, 5, 9, 5, 5, 9, 5, 9, 5]),   # ours only from the 4th on
    ([0, 2, 1, 1, 1, 1, 1, 1, 1], [5, 5, 9, 9, 9, 9, 9, 9, 9]),   # an old egress of ours, not forwarded
])
def test_transmit_forwarded_skips_the_frames_of_other_ports(ring: bool, verdicts: list[int],
                                                            egress: list[int]) -> None:
    check_transmit_forwarded(ring, None, verdicts, array("l", egress))   # the core's egress type


def check_transmit_forwarded(ring: bool, busy_slot: int | None, verdict_list: list[int],
                             egress: Sequence[int]) -> None:
    sizes = [60, 70, 64000, 80, 90, 100, 1500, 61, 62]
    verdicts = bytearray(verdict_list)
    got = {}
    for how in ("each", "batch"):
        r, log = make_ring(slots=SLOTS, ring=ring)
        r.ifindex = 5
        if ring and busy_slot is not None:
            struct.pack_into("=II", mem(r), busy_slot * SLOT, TP_STATUS_SENDING, 99)
        b = forwarded_batch(sizes, verdicts, egress)
        if how == "each":
            for j in range(b.count):
                if verdicts[j] == 1 and egress[j] == 5:
                    r.transmit(b.bufs[j], b.offs[j] - VNET_LEN, b.offs[j], b.lens[j])
        else:
            r.transmit_forwarded(b, verdicts, egress, b.count)
        r.flush()
        got[how] = (log, bytes(mem(r)) if ring else None, r._tx_slot, r._tx_pending,
                    r.tx_ring_frames, r.tx_fallback)
    assert got["batch"] == got["each"]
    log = got["batch"][0]
    sent = [data for name, data, _ in log if name == "tx"]
    ours = [j for j in range(len(sizes)) if verdicts[j] == 1 and egress[j] == 5]
    if not ring:    # every frame of ours, in batch order, on the plain socket
        assert sent == [wire(frame(j + 1, sizes[j]), VNET_F_NEEDS_CSUM if j % 3 else 0) for j in ours]
    else:           # the super-packet and the 1,500-byte frame never fit a 256-byte slot
        assert [d for d in sent if len(d) > 256] == [
            wire(frame(j + 1, sizes[j]), VNET_F_NEEDS_CSUM if j % 3 else 0) for j in ours if sizes[j] > 200]
        if busy_slot is None:   # the rest through the ring
            assert r.tx_ring_frames == sum(1 for j in ours if sizes[j] <= 200)
