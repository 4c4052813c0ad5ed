"""The TPACKET_V3 reader (the default receive ring) against a ring laid out in plain memory.

The kernel side is played by the test: it fills a block as ``prb_fill_curr_block`` and
``prb_close_block`` do -- a ``tpacket_block_desc``, then ``tpacket3_hdr`` + vnet header + frame
per packet, the block's sequence number and last-packet time -- and flips the block's status to
TP_STATUS_USER.  The reader must hand blocks over in ring order, give a block back only when the
consumer moves on, wrap, resync an out-of-step cursor to the oldest ready block (by sequence
number), and give back unread a block whose last frame is stale by a plausible clock.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence
from typing import Any

import pytest

from ulvs.io import afpacket
from ulvs.io.afpacket import (
    PACKET_STATISTICS,
    SOL_PACKET,
    TP_STATUS_KERNEL,
    TP_STATUS_USER,
    VNET,
    VNET_F_NEEDS_CSUM,
    VNET_LEN,
    PacketRing,
    RingConfig,
)
from ulvs.io.base import Batch

BLOCK = 4096
BLOCKS = 6
BLOCK_HDR = 48                 # sizeof(struct tpacket_block_desc): the first frame follows it
MAC_OFF = 92                   # TPACKET_ALIGN(TPACKET3_HDRLEN + 16) + vnet header - ETH_HLEN
TP_STATUS_BLK_TMO = 1 << 5     # the kernel retired the block on its timeout
VNET_F_DATA_VALID = 2
NOW = 1_700_000_000.25         # the test's CLOCK_REALTIME
DESC = struct.Struct("=IIIIIIQIIII")   # tpacket_block_desc with hdr.bh1, up to ts_last_pkt
PKT3 = struct.Struct("=IIIIIIHH")


def make_ring(blocks: int = BLOCKS, stale_after: float = 0.1) -> PacketRing:
    """The state ``__init__`` leaves that the V3 reader uses, over plain memory."""
    ring = PacketRing.__new__(PacketRing)       # no socket: only the reader's state
    ring.cfg = RingConfig(mode="v3", block_size=BLOCK, block_count=blocks, stale_after=stale_after)
    ring.lanes = False
    ring.map = bytearray(BLOCK * blocks)        # type: ignore[assignment]
    ring.batch = Batch()
    ring.ifindex = 7
    ring.ifname = "fake0"
    ring._next_block = 0
    ring.rx_resyncs = 0
    ring.rx_stale = 0
    ring.rx_other_host = ring.rx_outgoing = 0
    return ring


def align16(n: int) -> int:
    return (n + 15) & ~15


def fill_block(ring: PacketRing, k: int, frames: Sequence[bytes], seq: int, *,
               vnet_flags: Sequence[int] | None = None, cut: dict[int, int] | None = None,
               ts_last: float = NOW - 0.001, ts_first: float | None = None, priv: int = 0,
               status: int = TP_STATUS_USER) -> list[int]:
    """What the kernel does for one block: write ``frames`` (frame ``j`` cut to ``cut[j]``
    bytes), close the block and hand it over.  Returns where each frame's MAC header is."""
    m = ring.map
    boff = k * BLOCK
    first = align16(BLOCK_HDR + priv)
    pos = boff + first
    macs = []
    sec, nsec = stamp(ts_last)
    for j, frame in enumerate(frames):
        snaplen = (cut or {}).get(j, len(frame))
        start = pos + MAC_OFF
        flags = (vnet_flags or [0] * len(frames))[j]
        VNET.pack_into(m, start - VNET_LEN, flags, 0, 0, 0, 34 if flags else 0, 16 if flags else 0)
        m[start:start + snaplen] = frame[:snaplen]
        last = j == len(frames) - 1
        nxt = 0 if last else align16(MAC_OFF + snaplen)      # prb_close_block zeroes the last one
        PKT3.pack_into(m, pos, nxt, sec, nsec, snaplen, len(frame), TP_STATUS_USER, MAC_OFF, MAC_OFF + 14)
        macs.append(start)
        pos += align16(MAC_OFF + snaplen)
    DESC.pack_into(m, boff, 1, BLOCK_HDR, TP_STATUS_KERNEL, len(frames), first, pos - boff, seq,
                   *stamp(ts_last if ts_first is None else ts_first), sec, nsec)
    struct.pack_into("=I", m, boff + 8, status)                 # last: the block is handed over
    return macs


def stamp(t: float) -> tuple[int, int]:
    return int(t), int(round((t - int(t)) * 1e9))


def block_status(ring: PacketRing, k: int) -> int:
    return int(struct.unpack_from("=I", ring.map, k * BLOCK + 8)[0])


def frames_of(b: Batch) -> list[bytes]:
    return [bytes(b.bufs[j][b.offs[j]:b.offs[j] + b.lens[j]]) for j in range(b.count)]


def payload(k: int, j: int, size: int = 60) -> bytes:
    return bytes([k * 16 + j]) * size


def delivered(ring: PacketRing) -> list[list[bytes]]:
    return [frames_of(b) for b in ring.batches()]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [NOW]
    monkeypatch.setattr(afpacket.time, "time", lambda: now[0])
    return now


def test_blocks_are_handed_over_in_order_and_released_when_the_consumer_moves_on(
        clock: list[float]) -> None:
    ring = make_ring()
    for k in range(3):
        fill_block(ring, k, [payload(k, j) for j in range(k + 1)], seq=k + 1)
    gen = ring.batches()
    for k in range(3):
        b = next(gen)
        assert frames_of(b) == [payload(k, j) for j in range(k + 1)]
        assert block_status(ring, k) == TP_STATUS_USER          # the consumer's until it moves on
        assert all(block_status(ring, i) == TP_STATUS_KERNEL for i in range(k))
    assert next(gen, None) is None
    assert all(block_status(ring, i) == TP_STATUS_KERNEL for i in range(BLOCKS))
    assert ring._next_block == 3 and ring.rx_resyncs == 0 and ring.rx_stale == 0


def test_frames_lengths_vnet_offsets_and_partial_flags(clock: list[float]) -> None:
    ring = make_ring()
    sizes = [60, 1514, 97, 200]
    data = [bytes([0x40 + j]) * n for j, n in enumerate(sizes)]
    flags = [0, VNET_F_NEEDS_CSUM, VNET_F_DATA_VALID, VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID]
    macs = fill_block(ring, 1, data, seq=5, vnet_flags=flags, cut={3: 128}, priv=16)
    ring._next_block = 1
    (b,) = ring.batches()
    assert b.count == 4
    assert b.offs == macs
    assert b.lens == [60, 1514, 97, 128]                        # the cut frame: its snaplen
    assert frames_of(b) == data[:3] + [data[3][:128]]
    assert b.offs == macs
    assert [VNET.unpack_from(ring.map, o - VNET_LEN)[0] for o in b.offs] == flags
    assert list(b.partial) == [0, 1, 0, 1]
    assert b.ifins == [7] * 4 and all(buf is ring.map for buf in b.bufs)


def test_a_block_retired_by_its_timeout_is_read_too(clock: list[float]) -> None:
    ring = make_ring()
    fill_block(ring, 0, [payload(0, 0)], seq=1, status=TP_STATUS_USER | TP_STATUS_BLK_TMO)
    assert delivered(ring) == [[payload(0, 0)]]
    assert block_status(ring, 0) == TP_STATUS_KERNEL


def test_the_cursor_wraps_around(clock: list[float]) -> None:
    ring = make_ring()
    ring._next_block = BLOCKS - 2
    order = [BLOCKS - 2, BLOCKS - 1, 0, 1]
    for n, k in enumerate(order):
        fill_block(ring, k, [payload(k, 0), payload(k, 1)], seq=100 + n)
    assert delivered(ring) == [[payload(k, 0), payload(k, 1)] for k in order]
    assert ring._next_block == 2 and ring.rx_resyncs == 0
    assert all(block_status(ring, i) == TP_STATUS_KERNEL for i in range(BLOCKS))


def test_a_block_the_kernel_still_fills_stops_the_reader(clock: list[float]) -> None:
    ring = make_ring()
    fill_block(ring, 0, [payload(0, 0)], seq=1)
    assert delivered(ring) == [[payload(0, 0)]]
    assert ring._next_block == 1
    assert delivered(ring) == []                                # block 1: still the kernel's
    fill_block(ring, 1, [payload(1, 0)], seq=2)
    assert delivered(ring) == [[payload(1, 0)]]
    assert ring._next_block == 2 and ring.rx_resyncs == 0


@pytest.mark.parametrize("cursor", [0, 3])
def test_nothing_ready_gives_no_batch_and_no_resync(clock: list[float], cursor: int) -> None:
    ring = make_ring()
    ring._next_block = cursor
    assert delivered(ring) == []
    assert ring._next_block == cursor and ring.rx_resyncs == 0


def test_an_out_of_step_cursor_is_resynced_to_the_oldest_ready_block(clock: list[float]) -> None:
    ring = make_ring()
    ring._next_block = 2                     # the kernel's: the reader lost step
    # Ready: 4 (oldest), 5, then 0 after the wrap.  Block 0 comes first by index, not by age.
    for k, seq in ((4, 30), (5, 31), (0, 32)):
        fill_block(ring, k, [payload(k, 0)], seq=seq)
    assert delivered(ring) == [[payload(4, 0)], [payload(5, 0)], [payload(0, 0)]]
    assert ring.rx_resyncs == 1
    assert ring._next_block == 1
    assert all(block_status(ring, i) == TP_STATUS_KERNEL for i in range(BLOCKS))
    assert delivered(ring) == [] and ring.rx_resyncs == 1     # nothing ready: no new resync


def test_the_sequence_number_is_read_as_64_bits(clock: list[float]) -> None:
    ring = make_ring()
    ring._next_block = 3
    fill_block(ring, 1, [payload(1, 0)], seq=1 << 32)         # newer, low word 0
    fill_block(ring, 5, [payload(5, 0)], seq=(1 << 32) - 1)   # older
    assert delivered(ring) == [[payload(5, 0)], [payload(1, 0)]]
    assert ring.rx_resyncs == 2     # 5 -> 0 is the kernel's, block 1 is the only one left


def test_a_stale_block_is_dropped_unread_and_a_fresh_one_after_it_delivered(
        clock: list[float]) -> None:
    ring = make_ring()
    read: list[int] = []
    real_frames = ring.frames

    def spy(boff: int) -> int:
        read.append(boff)
        return real_frames(boff)

    ring.frames = spy                                          # type: ignore[method-assign]
    fill_block(ring, 0, [payload(0, j) for j in range(3)], seq=1, ts_last=NOW - 0.5)
    fill_block(ring, 1, [payload(1, 0)], seq=2, ts_last=NOW - 0.01)
    gen = ring.batches()
    b = next(gen)
    assert frames_of(b) == [payload(1, 0)]
    assert block_status(ring, 0) == TP_STATUS_KERNEL           # given back at once, unread
    assert block_status(ring, 1) == TP_STATUS_USER
    assert read == [1 * BLOCK]
    assert ring.rx_stale == 3
    assert next(gen, None) is None
    assert block_status(ring, 1) == TP_STATUS_KERNEL and ring._next_block == 2


@pytest.mark.parametrize(("age", "stale_after", "dropped"), [
    (0.05, 0.1, False),         # young enough
    (0.5, 0.1, True),
    (0.5, 1.0, False),          # the threshold is the config's
    (3000.0, 0.1, True),        # old, but still a plausible clock
    (7200.0, 0.1, False),       # two hours: stamped by another clock, never dropped
    (-5.0, 0.1, False),         # from the future
])
def test_staleness_follows_a_plausible_clock_only(clock: list[float], age: float, stale_after: float,
                                                  dropped: bool) -> None:
    ring = make_ring(stale_after=stale_after)
    fill_block(ring, 0, [payload(0, 0), payload(0, 1)], seq=1, ts_last=NOW - age)
    assert delivered(ring) == ([] if dropped else [[payload(0, 0), payload(0, 1)]])
    assert ring.rx_stale == (2 if dropped else 0)
    assert block_status(ring, 0) == TP_STATUS_KERNEL and ring._next_block == 1


def test_a_block_is_as_old_as_its_last_frame(clock: list[float]) -> None:
    ring = make_ring()
    fill_block(ring, 0, [payload(0, 0)], seq=1, ts_first=NOW - 0.5, ts_last=NOW - 0.01)
    fill_block(ring, 1, [payload(1, 0)], seq=2, ts_first=NOW - 0.01, ts_last=NOW - 0.5)
    assert delivered(ring) == [[payload(0, 0)]] and ring.rx_stale == 1


def test_the_clock_is_read_when_the_batches_start(clock: list[float]) -> None:
    ring = make_ring()
    fill_block(ring, 0, [payload(0, 0)], seq=1, ts_last=NOW - 0.01)
    clock[0] = NOW + 10.0          # the same block, ten seconds later: stale
    assert delivered(ring) == [] and ring.rx_stale == 1


class FakeStatsSocket:
    """The receive socket, for ``getsockopt(PACKET_STATISTICS)`` only (the kernel resets the
    counters on every read)."""

    def __init__(self, reads: list[tuple[int, ...]], fmt: str) -> None:
        self.reads, self.fmt = list(reads), fmt
        self.calls: list[tuple[int, int, int]] = []

    def getsockopt(self, level: int, opt: int, buflen: int) -> bytes:
        self.calls.append((level, opt, buflen))
        return struct.pack(self.fmt, *self.reads.pop(0))


def counters_ring(lanes: bool, rx: Any) -> PacketRing:
    ring = PacketRing.__new__(PacketRing)
    ring.lanes = lanes
    ring.rx = rx
    ring._rx_stats = [0, 0, 0]
    ring.rx_stale = 4
    ring.rx_resyncs = 2
    ring.rx_other_host = 5
    ring.rx_outgoing = 6
    ring.holes = 1
    ring.tx_ring_frames = 9
    ring.tx_fallback = 3
    ring.cfg = RingConfig(block_size=4096, block_count=4, slot_size=2048, slot_count=8)
    ring.map = bytearray(4096 * 4)                 # type: ignore[assignment]
    if lanes:
        for slot in (1, 2, 6):                     # three slots handed over, unread
            ring.map[slot * 2048] = 1
    else:
        ring.map[3 * 4096 + 8] = 5                 # block 3: TP_STATUS_USER | LOSING
    return ring


def test_counters_accumulate_packet_statistics_v3() -> None:
    rx = FakeStatsSocket([(10, 2, 1), (5, 1, 0)], "=III")   # tp_packets counts the drops too
    ring = counters_ring(False, rx)
    first = ring.counters()
    assert first["rx_packets"] == 8 and first["rx_ring_drops"] == 2 and first["rx_freezes"] == 1
    assert ring.counters() == {"rx_packets": 12, "rx_ring_drops": 3, "rx_freezes": 1, "rx_ready": 1,
                               "rx_stale": 4, "rx_resyncs": 2, "rx_other_host": 5, "rx_outgoing": 6,
                               "rx_holes": 1, "tx_ring": 9, "tx_send": 3}
    assert rx.calls == [(SOL_PACKET, PACKET_STATISTICS, 12)] * 2


def test_counters_read_the_v2_statistics_for_lanes() -> None:
    rx = FakeStatsSocket([(7, 3), (1, 0)], "=II")           # struct tpacket_stats: no freeze count
    ring = counters_ring(True, rx)
    ring.counters()
    got = ring.counters()
    assert (got["rx_packets"], got["rx_ring_drops"], got["rx_freezes"]) == (5, 3, 0)
    assert got["rx_ready"] == 3
    assert rx.calls == [(SOL_PACKET, PACKET_STATISTICS, 8)] * 2


def test_frames_for_another_host_are_counted_and_not_handed_over() -> None:
    ring = make_ring()
    fill_block(ring, 0, [payload(0, 0), payload(0, 1), payload(0, 2)], seq=1)
    # the kernel's sockaddr_ll after frame 1's tpacket3_hdr says PACKET_OTHERHOST
    first = align16(BLOCK_HDR)
    second = first + align16(MAC_OFF + 60)
    ring.map[second + afpacket.PKTTYPE_V3] = afpacket.PACKET_OTHERHOST
    assert delivered(ring) == [[payload(0, 0), payload(0, 2)]]
    assert ring.rx_other_host == 1


def test_a_call_hands_over_whole_blocks_up_to_its_budget(clock: list[float]) -> None:
    ring = make_ring()
    ring.cfg = dataclasses.replace(ring.cfg, rx_budget=3)
    for k in range(4):
        fill_block(ring, k, [payload(k, j) for j in range(2)], seq=k + 1)
    assert delivered(ring) == [[payload(0, 0), payload(0, 1)], [payload(1, 0), payload(1, 1)]]
    assert block_status(ring, 2) == TP_STATUS_USER                # left for the next call
    assert ring.backlog          # ... which the caller makes itself: poll may never say so
    assert delivered(ring) == [[payload(2, 0), payload(2, 1)], [payload(3, 0), payload(3, 1)]]
    assert ring.backlog                          # the budget again: one more call, to be sure
    assert delivered(ring) == [] and not ring.backlog


def test_after_a_budget_stop_the_next_call_goes_on_from_the_next_block(clock: list[float]) -> None:
    # A full ring: the block given back is the only one the kernel can fill, and it does at
    # once.  The next call must read the older blocks first (a cursor left on the block given
    # back read only that block from then on, and the rest were never given back).
    ring = make_ring(blocks=4)
    ring.cfg = dataclasses.replace(ring.cfg, rx_budget=1)
    for k in range(4):
        fill_block(ring, k, [payload(k, 0)], seq=k + 1)
    assert delivered(ring) == [[payload(0, 0)]]
    fill_block(ring, 0, [payload(4, 0)], seq=5)
    assert [delivered(ring) for _ in range(4)] == [[[payload(k, 0)]] for k in (1, 2, 3, 4)]
    assert ring.rx_resyncs == 0


@pytest.mark.parametrize(("pkttype", "counter"), [(afpacket.PACKET_OTHERHOST, "rx_other_host"),
                                                  (4, "rx_outgoing"), (5, "rx_outgoing")])
def test_frames_not_for_us_are_skipped_by_their_packet_type(
        clock: list[float], pkttype: int, counter: str) -> None:
    ring = make_ring()
    fill_block(ring, 0, [payload(0, 0), payload(0, 1)], seq=1)
    ring.map[align16(BLOCK_HDR) + afpacket.PKTTYPE_V3] = pkttype
    assert delivered(ring) == [[payload(0, 1)]]
    assert getattr(ring, counter) == 1
