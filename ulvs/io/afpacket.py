"""AF_PACKET dataplane backend: packet rings and a transmit socket per interface.

Receive uses ``ETH_P_ALL`` packet sockets with ``PACKET_VNET_HDR``
(``Documentation/networking/packet_mmap.rst``), in one of three layouts (``RingConfig.mode``):

* ``auto`` (the default): the ``v3`` ring below and a *quick socket*, a plain packet
  socket read one ``recv_into`` a frame, both bound to the interface and both members of one
  PACKET_FANOUT group, whose classic-BPF program picks the member that takes each frame
  (``ulvs.io.fanout.LaneGroup``; with several workers, member ``2w`` is worker ``w``'s ring and
  ``2w + 1`` its quick socket).  ``ulvs.io.lanepick.LanePick`` moves the port between them: to
  the quick socket when the ring has averaged under 30 kpps over 20 ms, back to the ring at once
  when a read of the quick socket finds its whole budget waiting, and then for at least a
  second.  Under load the port is the V3 ring; at light load a frame is forwarded when it
  arrives, not when its block is handed over.  A move is one program swap, which the kernel
  makes in one store (and waits out the frames still running the old one before it returns), so
  every frame reaches exactly one of the two; the lane left is read out first (with the ring,
  its last block too, once the kernel hands it over), so no frame is lost, doubled or overtaken.
  (Two socket filters, one opened before the other shut, were not atomic: a frame arriving in
  between came twice, one ACK counted twice in tests/netns/test_flowlog.py.)
* ``v3``: one TPACKET_V3 ring.  The kernel fills 1 MiB *blocks* with
  variable-size frames and hands a block over when it is full or when its timeout (1 ms, the
  smallest there is) expires.  Few wakeups under load, but at light load every frame waits up to
  that 1 ms: a request/response crosses the director twice, so keep-alive transactions were
  capped near 16 connections / 2 ms = 8,000/s in bench/bench_netns.py.
* ``lanes`` (experimental, ``--rx-ring lanes``): two receive lanes split by a socket filter on
  the frame length.  Frames up to ``small_max`` bytes (all but GSO super-packets and jumbo
  frames) land in a TPACKET_V2 ring of fixed 2 KiB slots; the kernel marks each slot ready as it
  fills it and wakes us at once.  Longer frames (64 KiB GSO super-packets) go to a plain packet
  socket read into a pool of large buffers, one ``recv_into`` each: few frames, many bytes.  Both
  sockets sit in one epoll set whose descriptor is the port's ``fileno()``.  Measured: a 92 us
  UDP round trip through the director against 1,001 us with ``v3``.  Not the default: once
  overrun (every slot full, the kernel dropping), this kernel's V2 ring is no longer filled in
  ring order -- a bare in-order reader with no ulvs code meets old frames between fresh ones and
  an unfilled slot at its cursor with filled ones further on.  The reader therefore looks past
  such gaps (``_skip_hole``) and gives back frames older than ``slot_stale_after``; with that it
  no longer stalls after an overload, but at the generator's full speed it forwards far less
  than ``v3`` and its loss under overload is erratic.

Every ``batches()`` call hands over about ``rx_budget`` frames at most, then returns to the
event loop (the socket stays readable): a flood must not keep control requests, timers, health
checks or VRRP and sync traffic waiting.

Either way the frames are handed to the core as one batch (offsets into the mmap, no copies),
the forwarded ones are transmitted straight out of the ring, and the slots go back to the
kernel when the consumer moves on.  Our own transmissions are not looped back
(``PACKET_IGNORE_OUTGOING``).

Offloads: with ``PACKET_VNET_HDR`` every frame is preceded by a ``virtio_net_hdr`` (10 bytes,
just before the MAC header).  A frame whose L4 checksum is only partial (``NEEDS_CSUM``: the
field holds the pseudo-header seed), GSO super-packets included, is flagged to the core, which
moves the seed by the address delta only; the frame is then sent with its vnet header unchanged,
so the kernel completes the checksum or segments the super-packet itself (REFERENCE
"CHECKSUM_PARTIAL / vnet_hdr").

This is a thin shell: it never decides anything about a packet.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from ulvs.io import fanout
from ulvs.io.base import VNET_LEN, Batch, transmit_each
from ulvs.io.lanepick import LanePick

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_LOSS = 14
PACKET_TX_RING = 13
PACKET_VERSION = 10
PACKET_VNET_HDR = 15
PACKET_FANOUT = 18
PACKET_IGNORE_OUTGOING = 23
SO_ATTACH_FILTER = 26
TPACKET_V2 = 1
TPACKET_V3 = 2
ETH_P_ALL = 0x0003
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_AVAILABLE = 0         # transmit ring: slot free
TP_STATUS_SEND_REQUEST = 1      # transmit ring: filled, for the kernel to send
TX_SNDBUF = 1 << 22             # send() socket: room for 64 GSO super-packets in flight
TX_DATA = 32                    # TPACKET2_HDRLEN - sizeof(sockaddr_ll): where a slot's frame starts

# struct tpacket_req3: block size, block count, frame size, frame count, retire timeout (ms),
# private area size, feature request word.
_REQ3 = struct.Struct("=IIIIIII")
# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status,
# num_pkts, offset_to_first_pkt, blk_len, seq_num, ts_first, ts_last.
_BLOCK = struct.Struct("=IIIII")
# ... and at offset 40 the block's ts_last_pkt: seconds, nanoseconds.
_BLOCK_TS = struct.Struct("=II")
_RELEASE = struct.Struct("=II")   # block_status, num_pkts
_SEQ = struct.Struct("=Q")      # tpacket_hdr_v1.seq_num, at offset 24
# What the reader takes of a struct tpacket3_hdr (next_offset, sec, nsec, snaplen, len, status,
# mac, net, ...): next_offset, snaplen and mac, then the sll_pkttype of the sockaddr_ll after it
# (PKTTYPE_V3) -- no timestamps, so no large ints to allocate.
_PKT_READ = struct.Struct("=I8xI8xH32xB")
# struct tpacket_req (V2): block size, block count, frame size, frame count.
_REQ = struct.Struct("=IIII")
# struct tpacket2_hdr: status, len, snaplen, mac, net, sec, nsec (then vlan fields, unread).
_PKT2 = struct.Struct("=IIIHHII")
_STATUS = struct.Struct("=I")
_TXHDR = struct.Struct("=II")   # tpacket2_hdr.tp_status, tp_len
# struct sockaddr_ll follows tpacket3_hdr (48 bytes, TPACKET_ALIGNed); sll_pkttype is its byte 10.
PKTTYPE_V3 = 48 + 10
PKTTYPE_V2 = 32 + 10            # ... and tpacket2_hdr (32 bytes)
PACKET_OTHERHOST = 3             # sll_pkttype; 4 and up: outgoing, loopback, user, kernel
_LOW = 0 if sys.byteorder == "little" else 3  # the byte of tp_status that holds the flags
# struct virtio_net_hdr (host order): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET = struct.Struct("=BBHHHH")
assert VNET.size == VNET_LEN
VNET_F_NEEDS_CSUM = 1
VNET_GSO_NONE = 0
_U16 = struct.Struct("!H")
_USER_BIT = bytes(i & TP_STATUS_USER for i in range(256))  # status low byte -> 1: the user's


class RingError(OSError):
    """The ring could not be set up (missing capability, interface gone, ...)."""


RING_MODES = ("auto", "lanes", "v3")
HOLE_SPAN = 32          # filled slots after an unfilled one that make it a hole
BIG_BATCHES = 4         # big-lane batches a batches() call hands over at most
HOLE_WAIT = 0.001       # s an unfilled slot may trail a filled one before it is a hole
BIG_GROUP = 0x8000      # a lanes ring's big lanes: fanout group ^ this
QUICK_RCVBUF = 1 << 21  # the quick socket queue: ~2,500 small frames or 30 GSO super-packets
RING_WAIT = 0.005       # s: the longest an auto ring waits for its last block after a move


@dataclass(frozen=True, slots=True)
class RingConfig:
    mode: str = "auto"             # see the module docstring
    # v3
    block_size: int = 1 << 20      # 1 MiB: room for GSO super-packets (64 KiB)
    block_count: int = 16
    frame_size: int = 1 << 16      # only used to size tp_frame_nr
    retire_ms: int = 1             # hand over a partly filled block after 1 ms
    stale_after: float = 0.1       # s: a block whose last frame is older is dropped unread
    rx_budget: int = 4096          # frames a batches() call hands over at most (about: whole blocks)
    # auto: the V3 ring above, and a quick socket read into big_count buffers of big_size
    quick_batches: int = 4         # batches of big_count frames a call takes from it at most
    # lanes
    slot_size: int = 2048          # TPACKET_V2 slot: header, vnet header, frame up to small_max
    slot_count: int = 8192         # 16 MiB of slots
    small_max: int = 1600          # longer frames take the big lane
    big_size: int = 1 << 17        # a GSO super-packet (64 KiB + headers) fits
    big_count: int = 32
    batch_max: int = 512           # frames per batch from the small lane
    slot_stale_after: float = 0.05 # s: an older frame is given back unread
    # transmit ring (TPACKET_V2, both modes); 0 slots: one send() per frame
    tx_slot_size: int = 2048       # header (32) + vnet header + frame up to 2,006 bytes
    tx_slot_count: int = 4096      # 8 MiB: room for the frames still in flight


# A plain packet socket's frames are read with ``recv_into``: ``recvfrom_into`` would also
# build the sender's address, and CPython looks up the interface's name for it with an ioctl,
# one more system call a frame.  What the address would tell -- the frame was for another host
# or is one this host sent (sll_pkttype) -- the socket's filter tells instead: such a frame is
# cut to MARK_OTHER_HOST or MARK_OUTGOING bytes (no real frame is that short).
MARK_OTHER_HOST = 1
MARK_OUTGOING = 2
_SKF_AD_PKTTYPE = (-0x1000 + 4) & 0xFFFFFFFF   # SKF_AD_OFF + SKF_AD_PKTTYPE: A = skb->pkt_type
_MARK = [(0x20, 0, 0, _SKF_AD_PKTTYPE),                     # ld pkttype
         (0x15, 0, 1, PACKET_OTHERHOST),                    # jeq #3 ? next : skip 1
         (0x06, 0, 0, MARK_OTHER_HOST),                     # ret #1
         (0x35, 0, 1, PACKET_OTHERHOST + 1),                # jge #4 (outgoing, loopback) ? next : skip 1
         (0x06, 0, 0, MARK_OUTGOING)]                       # ret #2
_KEEP = 0x40000


def _code(prog: list[tuple[int, int, int, int]]) -> bytes:
    return b"".join(struct.pack("=HBBI", *i) for i in prog)


def _length_filter(small_max: int, small: bool) -> bytes:
    """A classic-BPF socket filter keeping frames of at most (``small``) or more than
    ``small_max`` bytes: ld len; jgt #small_max; ret #0 / ret #0x40000.  The long frames' filter
    (the big lane, a plain socket) marks those not to forward (``_MARK``)."""
    if small:
        return _code([(0x80, 0, 0, 0),                       # A = skb->len
                      (0x25, 0, 1, small_max),               # A > small_max ? next : skip 1
                      (0x06, 0, 0, 0),                       # long frame: not this socket's
                      (0x06, 0, 0, _KEEP)])                  # short frame
    return _code([(0x80, 0, 0, 0),
                  (0x25, 1, 0, small_max),                   # A > small_max ? skip 1 : next
                  (0x06, 0, 0, 0),                           # short frame: not this socket's
                  *_MARK,
                  (0x06, 0, 0, _KEEP)])


_KEEP_ALL = _code([*_MARK, (0x06, 0, 0, _KEEP)])           # the quick socket: every frame, marked
_KEEP_NONE = _code([(0x06, 0, 0, 0)])                      # ret #0: not this socket's
SO_RCVBUFFORCE = 33


def _attach_filter(sock: socket.socket, code: bytes) -> None:
    import ctypes

    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _plain_socket(ifname: str, code: bytes, rcvbuf: int) -> socket.socket:
    """A non-blocking packet socket on ``ifname`` with vnet headers, without our own frames,
    filtered by ``code`` from the start, with a receive queue of ``rcvbuf`` bytes (above
    net.core.rmem_max when we may)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        _attach_filter(sock, code)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((ifname, ETH_P_ALL))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError as e:
        raise RingError(e.errno, f"no interface {name!r}") from None


class PacketRing:
    """The receive ring and transmit socket of one interface."""

    backlog = False     # the last batches() call stopped at its budget (see batches)
    big: socket.socket | None = None      # lanes: the big lane
    quick: socket.socket | None = None    # auto: the quick socket
    pick: LanePick | None = None          # auto: which of the two takes frames
    _leaving = False
    _quick_open = True

    steer: fanout.LaneGroup | None = None    # auto: the program choosing between ring and quick

    def __init__(self, ifname: str, cfg: RingConfig = RingConfig(), fanout_group: int | None = None,
                 seat: fanout.LaneSeat | None = None) -> None:
        """``fanout_group``: join this interface's group of workers (``seat``: this worker's
        place in it, for an auto ring)."""
        if cfg.mode not in RING_MODES:
            raise ValueError(f"unknown ring mode {cfg.mode!r} (allowed: {', '.join(RING_MODES)})")
        self.ifname = ifname
        self.ifindex = _ifindex(ifname)
        self.cfg = cfg
        self.lanes = cfg.mode == "lanes"
        self.paced = self.lanes     # frames handed over one at a time (ulvs.runtime.rxwatch)
        self.pick = LanePick() if cfg.mode == "auto" else None
        self.fanout_ignores_outgoing = True   # without fanout the socket's own option does it
        self.epoll: select.epoll | None = None
        # Protocol 0 until bind: a socket opened with ETH_P_ALL would start queueing frames of
        # every interface before it is bound to this one.
        self.rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.rx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            if self.lanes:
                self.rx.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
                per_block = (1 << 20) // cfg.slot_size
                req = _REQ.pack(per_block * cfg.slot_size, cfg.slot_count // per_block, cfg.slot_size,
                                cfg.slot_count)
                size = cfg.slot_count * cfg.slot_size
                _attach_filter(self.rx, _length_filter(cfg.small_max, small=True))
            else:
                self.rx.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
                req = _REQ3.pack(cfg.block_size, cfg.block_count, cfg.frame_size,
                                 cfg.block_size // cfg.frame_size * cfg.block_count, cfg.retire_ms, 0, 0)
                size = cfg.block_size * cfg.block_count
            self.rx.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self.rx.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.rx.bind((ifname, ETH_P_ALL))
            if self.lanes:
                self.big = self._open_big_lane(ifname)
            if self.pick is not None:
                self.quick = self._open_quick(ifname)
            if self.quick is not None:
                self._join_lanes(fanout_group, seat or fanout.LaneSeat())
            elif fanout_group is not None:
                # Workers join in index order (the daemon starts them one at a time), so member
                # k of the ring group and of the big-lane group is the same worker.
                self.fanout_ignores_outgoing = fanout.join(self.rx, fanout_group)
                if self.big is not None:
                    fanout.join(self.big, fanout_group ^ BIG_GROUP)
            self.map = mmap.mmap(self.rx.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self.tx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            # Never block the dataplane on a full send buffer: the frame is lost, as on a wire.
            self.tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, TX_SNDBUF)
            self.tx.setblocking(False)
            self.tx.bind((ifname, 0))
            # Once a socket has a transmit ring, send() only flushes the ring: frames that do
            # not go through the ring need a socket of their own.
            self.txr: socket.socket | None = None
            self.txmap: mmap.mmap | None = None
            if cfg.tx_slot_count:
                self.txr = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
                self.txr.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
                # Malformed frames are skipped rather than stopping the ring (PACKET_LOSS).
                self.txr.setsockopt(SOL_PACKET, PACKET_LOSS, 1)
                self.txr.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
                per_block = (1 << 20) // cfg.tx_slot_size
                self.txr.setsockopt(SOL_PACKET, PACKET_TX_RING, _REQ.pack(
                    per_block * cfg.tx_slot_size, cfg.tx_slot_count // per_block, cfg.tx_slot_size,
                    cfg.tx_slot_count))
                self.txmap = mmap.mmap(self.txr.fileno(), cfg.tx_slot_count * cfg.tx_slot_size,
                                       mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                self.txr.bind((ifname, 0))
            second = self.big or self.quick
            if second is not None:
                self.epoll = select.epoll()
                self.epoll.register(self.rx.fileno(), select.EPOLLIN)
                self.epoll.register(second.fileno(), select.EPOLLIN)
        except OSError:
            self.rx.close()
            for extra in (self.big, self.quick):
                if extra is not None:
                    extra.close()
            for name in ("tx", "txr"):
                sock = getattr(self, name, None)
                if sock is not None:
                    sock.close()
            raise
        self.view = memoryview(self.map)
        self.txview = memoryview(self.txmap) if self.txmap is not None else None
        self._tx_slot = 0           # next transmit slot, in step with the kernel's head
        self._tx_pending = 0        # slots filled since the last flush
        self.tx_fallback = 0        # frames sent with send() because the ring was full or they were long
        self.tx_ring_frames = 0     # frames sent through the transmit ring
        self.rx_other_host = 0      # frames for another host's MAC, not forwarded
        self.rx_outgoing = 0        # frames this host sent, handed back by a fanout group
        self.rx_resyncs = 0         # times the block cursor was found out of step (see _resync)
        self.rx_stale = 0           # frames of stale blocks dropped unread (see _drop_block)
        self._rx_stats = [0, 0, 0]  # PACKET_STATISTICS, accumulated (the kernel resets them on read)
        self._next_block = 0
        self._next_slot = 0
        self.holes = 0              # small-lane slots stepped over (see _skip_hole)
        self._hole_at = -1
        self._hole_since = 0.0
        self._big_bufs = ([bytearray(cfg.big_size) for _ in range(cfg.big_count)]
                          if self.lanes or self.pick is not None else [])
        self.rx_quick = 0           # frames read from the quick socket (auto)
        self.rx_ring_waits = 0      # reads that waited for the ring's last block after a move
        self._ring_wait_since = -1.0
        self._leaving = False       # auto: moved to the quick socket, the ring not yet read out
        self._quick_open = True     # auto, on the ring: the quick socket may still hold frames
        self.mac = bytes.fromhex(_read_sys(ifname, "address").replace(":", ""))
        self.mtu = int(_read_sys(ifname, "mtu"))
        self.handles_pass = False   # a tap: what ulvs does not take, the kernel already has
        self.batch = Batch()        # reused for every block

    def _open_big_lane(self, ifname: str) -> socket.socket:
        """A lanes ring's big lane: frames longer than ``small_max``."""
        return _plain_socket(ifname, _length_filter(self.cfg.small_max, small=False), 1 << 22)

    def _open_quick(self, ifname: str) -> socket.socket:
        """An auto ring's quick socket: every frame, one ``recv`` each, once its filter lets
        frames in (it starts shut: the ring takes them first)."""
        return _plain_socket(ifname, _KEEP_NONE, QUICK_RCVBUF)

    def _join_lanes(self, group: int | None, seat: fanout.LaneSeat) -> None:
        """An auto ring: the ring, then the quick socket, join one group (a new one of the
        kernel's numbering without ``group``).  The quick socket is shut until it has joined:
        before, its own hook would hand it a copy of every frame."""
        assert self.quick is not None
        if group is None:
            self.fanout_ignores_outgoing = fanout.join(self.rx, 0, unique=True)
            group = fanout.group_id(self.rx)
        else:
            self.fanout_ignores_outgoing = fanout.join(self.rx, group)
        fanout.join(self.quick, group)
        _attach_filter(self.quick, _KEEP_ALL)
        self.steer = fanout.LaneGroup(self.rx, seat, background=True)

    def fanout_sockets(self) -> list[socket.socket]:
        """One socket of each fanout group this port joined (each group needs the program)."""
        return [s for s in (self.rx, self.big) if s is not None]

    def set_masq(self, masq: list[bytes]) -> None:
        """Steer the replies of these masq dest addresses to the worker owning their client
        (a port in a fanout group of workers)."""
        if self.steer is not None:
            self.steer.set_masq(masq)
            return
        program = fanout.client_key_program(masq)
        for sock in self.fanout_sockets():
            fanout.set_program(sock, program)

    def fileno(self) -> int:
        fd: int = self.epoll.fileno() if self.epoll is not None else self.rx.fileno()
        return fd

    # -- receive --------------------------------------------------------------------------------
    def ready_blocks(self) -> Iterator[int]:
        """Offsets of blocks handed to userspace, in the order the kernel filled them."""
        bs, n, m = self.cfg.block_size, self.cfg.block_count, self.map
        while True:
            boff = self._next_block * bs
            (status,) = _STATUS.unpack_from(m, boff + 8)
            if not status & TP_STATUS_USER:
                if not self._resync():
                    return
                continue
            # Moved on before the yield: a consumer that stops early (batches() at its budget)
            # closes this generator at the yield, and the cursor must not stay on a block it
            # has given back (the kernel refills it first, and the older ones are never read).
            self._next_block = (self._next_block + 1) % n
            yield boff

    def _resync(self) -> bool:
        """Our next block is still the kernel's: if another block is ready, the cursor has
        fallen out of step with the kernel's (the socket then stays readable and the loop would
        spin); move it to the oldest ready block, by the blocks' sequence numbers."""
        bs, n, m = self.cfg.block_size, self.cfg.block_count, self.map
        best, best_seq = -1, 0
        for k in range(n):
            if _STATUS.unpack_from(m, k * bs + 8)[0] & TP_STATUS_USER:
                (seq,) = _SEQ.unpack_from(m, k * bs + 24)
                if best < 0 or seq < best_seq:
                    best, best_seq = k, seq
        if best < 0:
            return False
        self._next_block = best
        self.rx_resyncs += 1
        return True

    def batches(self) -> Iterator[Batch]:
        """The frames received so far, a batch at a time, up to about ``rx_budget`` frames a
        call; a batch's slots go back to the kernel when the consumer asks for the next one.

        The budget keeps a flood from holding the event loop: the loop runs its other callbacks
        (control requests, timers, health checks, VRRP and sync messages) before it comes back.
        A call that stops at the budget sets ``backlog``, and the caller must come back on its
        own (``call_soon``), not wait for the socket to be readable: TPACKET_V3's poll reports
        only the block before the one the kernel fills next, so a ring the kernel has frozen on
        an unread block, with the block before it already given back, never turns readable
        again -- seen once after an overload, 15 of 16 blocks filled and unread, every new frame
        dropped and HTTP no longer served."""
        budget = self.cfg.rx_budget
        self.backlog = False
        if self.lanes:
            yield from self._slot_batches(budget)
            assert self.big is not None
            yield from self._sock_batches(self.big, BIG_BATCHES)
            return
        if self.pick is not None:
            yield from self._auto_batches(budget)
            return
        yield from self._ring_batches(budget)

    def _ring_batches(self, budget: int) -> Generator[Batch, None, int]:
        """The V3 ring's ready blocks, a block a batch, until about ``budget`` frames (then
        ``backlog``); returns the frames handed over."""
        now = time.time()      # the kernel stamps frames with CLOCK_REALTIME
        stale = self.cfg.stale_after
        handed = 0
        for boff in self.ready_blocks():
            if 3600 > now - _block_time(self.map, boff) > stale:  # an hour: another clock
                self._drop_block(boff)
                continue
            handed += self.frames(boff)
            yield self.batch
            self.release(boff)
            if handed >= budget:
                self.backlog = True
                break
        return handed

    def _auto_batches(self, budget: int) -> Iterator[Batch]:
        """An auto ring: the lane ``pick`` chose, after what the other one still holds.

        Whichever lane the port has just left holds older frames than the lane it moved to, so
        it is read out first: on the ring, the quick socket's queue; on the quick socket, the
        ring's ready blocks and, when its block was still being filled at the move, that block
        once the kernel hands it over (within its 1 ms retire timeout; the read comes back for
        it as a backlog, for at most ``RING_WAIT``).  On the ring, the quick socket is read
        only until it can get nothing more (``LaneGroup.quick_closed``).  Then ``pick`` judges
        the read."""
        pick = self.pick
        assert pick is not None and self.quick is not None
        quick, full = 0, False
        if pick.quick:
            got = 0
            if self._leaving:        # just moved: the ring's frames first, all of them
                got = yield from self._ring_batches(budget)
                if self.backlog:
                    return
                if self._ring_filling():
                    self.rx_ring_waits += 1
                    self.backlog = True
                    return
                self._leaving = False
            elif self.map[self._next_block * self.cfg.block_size + 8 + _LOW] & TP_STATUS_USER:
                # a frame that met the old filter still running on another CPU during the move
                got = yield from self._ring_batches(budget)
            quick, full = yield from self._sock_batches(self.quick, self.cfg.quick_batches)
            self.backlog = full          # more waiting (and the port is moving to the ring)
        else:
            if self._quick_open:
                # Asked before the read: once nothing more can reach the queue, a read that
                # empties it is the last one needed (a system call saved on every later read).
                closed = self.steer.quick_closed()  # type: ignore[union-attr]  # auto: a group
                quick, full = yield from self._sock_batches(self.quick, self.cfg.quick_batches)
                if full:
                    self.backlog = True  # the queue of before the move first; the ring waits
                    return
                self._quick_open = not closed
            got = yield from self._ring_batches(budget)
        self.rx_quick += quick
        if pick.step(time.monotonic(), got + quick, full):
            self._switch(pick.quick)

    def _ring_filling(self) -> bool:
        """Whether the block at the cursor is the kernel's and holds frames (it has not handed
        it over yet): after a move to the quick socket those frames are older than the
        socket's.  Gives up after ``RING_WAIT``."""
        (num,) = _STATUS.unpack_from(self.map, self._next_block * self.cfg.block_size + 12)
        if not num:
            self._ring_wait_since = -1.0
            return False
        now = time.monotonic()
        if self._ring_wait_since < 0:
            self._ring_wait_since = now
        if now - self._ring_wait_since > RING_WAIT:
            self._ring_wait_since = -1.0
            return False
        return True

    def _switch(self, quick: bool) -> None:
        """Let the other lane take frames: one swap of the group's program."""
        assert self.steer is not None
        self._leaving = True
        self._quick_open = True
        self.steer.set_quick(quick)

    def _drop_block(self, boff: int) -> None:
        """Receive livelock guard: in an overload the ring fills with frames that take the core
        far longer to forward than they took to arrive (16 blocks of up to a millisecond's
        frames each).  Forwarding them late helps no one and keeps fresh frames waiting, so a
        block whose last frame arrived more than ``stale_after`` ago is given back unread; its
        frames are counted as dropped (``rx_stale``)."""
        self.rx_stale += _BLOCK.unpack_from(self.map, boff)[3]
        self.release(boff)

    def _slot_batches(self, budget: int = 1 << 62) -> Iterator[Batch]:
        """The small lane: ready TPACKET_V2 slots in ring order, up to ``batch_max`` a batch,
        until about ``budget`` slots have been taken."""
        self.backlog = False
        m, cfg, b = self.map, self.cfg, self.batch
        size, count, most = cfg.slot_size, cfg.slot_count, cfg.batch_max
        unpack, release = _PKT2.unpack_from, _STATUS.pack_into
        # Frames older than slot_stale_after are given back unread (rx_stale), as v3 does with
        # whole blocks: after an overrun they are a lap old, and forwarding them helps no one.
        cut = time.time() - cfg.slot_stale_after      # the kernel stamps with CLOCK_REALTIME
        cut_sec = int(cut)
        cut_nsec = int((cut - cut_sec) * 1e9)
        while True:
            b.clear()
            offs, lens, partial = b.offs, b.lens, b.partial
            first = slot = self._next_slot
            taken = n = 0
            while taken < most:
                soff = slot * size
                status, _len, snaplen, mac, _net, sec, nsec = unpack(m, soff)
                if not status & TP_STATUS_USER:
                    break
                taken += 1
                slot += 1
                if slot == count:
                    slot = 0
                if sec <= cut_sec and (sec < cut_sec or nsec < cut_nsec):
                    self.rx_stale += 1
                    continue
                if m[soff + PKTTYPE_V2] >= PACKET_OTHERHOST:
                    self._not_ours(m[soff + PKTTYPE_V2])
                    continue
                start = soff + mac
                offs.append(start)
                lens.append(snaplen)     # cut short by the slot: the core drops it by reason
                partial.append(m[start - VNET_LEN] & VNET_F_NEEDS_CSUM)
                n += 1
            if not taken:
                if self._skip_hole(slot):
                    continue
                return
            self._next_slot = slot
            if n:
                b.bufs.extend([m] * n)
                b.ifins.extend([self.ifindex] * n)
                b.count = n
                yield b
            slot = first
            for _ in range(taken):
                release(m, slot * size, TP_STATUS_KERNEL)
                slot += 1
                if slot == count:
                    slot = 0
            budget -= taken
            if taken < most:
                return
            if budget <= 0:
                self.backlog = True
                return

    def _skip_hole(self, slot: int) -> bool:
        """Step over ``slot`` (and the unfilled slots after it) when it is a hole: still the
        kernel's while a later slot is filled.

        On this machine's kernel a small lane that has been overrun (the kernel dropping frames
        because every slot was full) comes out of it with its slots no longer filled in ring
        order: reading strictly in order, a reader meets old frames between fresh ones and,
        worse, an unfilled slot at its cursor with filled ones further on and none right after
        it -- and then waits for ever (reproduced with a bare in-order reader and no ulvs code;
        see docs/BENCHMARKS.md).  So when the cursor's slot is unfilled the reader looks for the
        next filled slot anywhere in the ring (one strided copy of the status bytes, no Python
        loop) and moves there.  A slot the kernel is still writing is finished within
        microseconds, so the move waits for one of: the ``HOLE_SPAN`` slots from the filled one
        on are all filled, or the gap has stayed ``HOLE_WAIT`` seconds.  Frames of slots stepped
        over are read when the reader comes round to them, a lap late."""
        m, size, count = self.map, self.cfg.slot_size, self.cfg.slot_count
        with memoryview(m) as mv:
            flags = bytes(mv[_LOW::size]).translate(_USER_BIT)
        nxt = flags.find(1, slot + 1)
        if nxt < 0:
            nxt = flags.find(1, 0, slot)
        if nxt < 0:
            self._hole_at = -1
            return False          # nothing filled anywhere: the lane is simply empty
        span = (flags + flags)[nxt:nxt + HOLE_SPAN]
        if span.count(1) < min(HOLE_SPAN, count - 1):
            now = time.monotonic()
            if self._hole_at != slot:
                self._hole_at, self._hole_since = slot, now
                return False
            if now - self._hole_since < HOLE_WAIT:
                return False
        self._hole_at = -1
        self._next_slot = nxt
        self.holes += 1
        return True

    def _sock_batches(self, sock: socket.socket, rounds: int) -> Generator[Batch, None, tuple[int, bool]]:
        """A plain packet socket (the big lane, the quick socket): one ``recv_into`` per
        frame, into the buffer pool, a batch per pool, ``rounds`` batches at most.  Returns
        (frames handed over, whether every round filled the pool: more may be waiting)."""
        bufs, b = self._big_bufs, self.batch
        handed = 0
        for _ in range(rounds):
            b.clear()
            n = 0
            for buf in bufs:
                try:
                    got = sock.recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break        # e.g. the interface went away: the daemon notices on its own
                if got <= VNET_LEN + MARK_OUTGOING:
                    if got > VNET_LEN:               # marked by the filter (_MARK)
                        self._not_ours(PACKET_OTHERHOST if got == VNET_LEN + MARK_OTHER_HOST
                                       else PACKET_OTHERHOST + 1)
                    continue
                b.bufs.append(buf)
                b.offs.append(VNET_LEN)
                b.lens.append(got - VNET_LEN)
                b.partial.append(buf[0] & VNET_F_NEEDS_CSUM)
                n += 1
            if not n:
                return handed, False
            b.ifins.extend([self.ifindex] * n)
            b.count = n
            handed += n
            yield b
            if n < len(bufs):
                return handed, False
        return handed, True

    def frames(self, boff: int) -> int:
        """Fill ``batch`` with the frames of the block at ``boff``; returns the count."""
        m = self.map
        num: int
        first: int
        _v, _p, _status, num, first = _BLOCK.unpack_from(m, boff)
        b = self.batch
        b.clear()
        add_off, add_len, add_partial = b.offs.append, b.lens.append, b.partial.append
        pos = boff + first
        unpack = _PKT_READ.unpack_from
        for _ in range(num):
            nxt, snaplen, mac, pkttype = unpack(m, pos)    # small ints: nothing allocated
            if pkttype >= PACKET_OTHERHOST:
                self._not_ours(pkttype)
                pos += nxt
                continue
            start = pos + mac
            add_off(start)
            # A frame cut short by the ring (snaplen < len) is handed over as it is: the core
            # sees the truncated bytes and drops it by reason.
            add_len(snaplen)
            add_partial(m[start - VNET_LEN] & VNET_F_NEEDS_CSUM)
            pos += nxt
        n = len(b.offs)
        b.bufs.extend([m] * n)
        b.ifins.extend([self.ifindex] * n)
        b.count = n
        return n

    def _not_ours(self, pkttype: int) -> None:
        """Count a frame the readers skip by its ``sll_pkttype``: one flooded to us (a bridge
        that has not learnt the MAC, a promiscuous port) for another host -- forwarding it too
        would duplicate traffic, e.g. a pair's backup copying what the master forwards -- or one
        this host sent, which a fanout group without IGNORE_OUTGOING hands back."""
        if pkttype == PACKET_OTHERHOST:
            self.rx_other_host += 1
        else:
            self.rx_outgoing += 1

    def release(self, boff: int) -> None:
        # num_pkts to 0 first: the kernel sets it only when it opens the block again, and an
        # auto ring reads it to tell whether the kernel is filling the block (_ring_filling).
        _RELEASE.pack_into(self.map, boff + 8, TP_STATUS_KERNEL, 0)

    # -- transmit -------------------------------------------------------------------------------
    def transmit(self, buf: Any, vnet_off: int, off: int, length: int) -> None:
        """Queue a (rewritten) frame with its vnet header; ``flush`` sends what is queued.

        The frame is copied into the next slot of the TPACKET_V2 transmit ring and marked
        SEND_REQUEST; the kernel sends every marked slot, in ring order, on one ``send()``.
        A frame too long for a slot (a GSO super-packet), or one that finds its slot still in
        flight, goes out by a plain ``send()`` after the queued ones, so order is kept."""
        tv = self.txview
        total = off + length - vnet_off
        if tv is not None and total <= self.cfg.tx_slot_size - TX_DATA:
            soff = self._tx_slot * self.cfg.tx_slot_size
            if not self.txmap[soff + _LOW]:  # type: ignore[index]  # tp_status is AVAILABLE
                tv[soff + TX_DATA:soff + TX_DATA + total] = memoryview(buf)[vnet_off:off + length]
                _TXHDR.pack_into(tv, soff, TP_STATUS_SEND_REQUEST, total)
                self._tx_slot = (self._tx_slot + 1) % self.cfg.tx_slot_count
                self._tx_pending += 1
                self.tx_ring_frames += 1
                return
        if self._tx_pending:
            self.flush()
        self.tx_fallback += 1
        try:
            self.tx.send(memoryview(buf)[vnet_off:off + length])
        except OSError:
            pass  # a full queue or a vanished peer loses this frame, as a NIC would

    def transmit_forwarded(self, b: Batch, verdicts: Any, egress: Any, n: int) -> None:
        """``transmit`` every frame of ``b`` that the core forwarded (verdict 1) out of this
        port, in batch order: the per-packet loop, with the ring's state held in locals."""
        tv = self.txview
        if tv is None:
            transmit_each(self, b, verdicts, egress, n)
            return
        me = self.ifindex
        try:
            # A batch's frames mostly leave by one port (a flow's both directions come in on
            # different ones): a C-level search finds where this port's first one can be, and
            # skips a batch with none at a fifth of a Python loop's cost.  (An entry of a frame
            # not forwarded may still hold an old egress: then the loop runs and skips it.)
            first = egress.index(me, 0, n)
        except ValueError:
            return
        bufs, offs, lens = b.bufs, b.offs, b.lens
        m = self.txmap
        size, count = self.cfg.tx_slot_size, self.cfg.tx_slot_count
        room = size - TX_DATA
        pack = _TXHDR.pack_into
        slot = self._tx_slot
        queued = 0
        for j in range(first, n):
            if verdicts[j] != 1 or egress[j] != me:
                continue
            off = offs[j]
            vo = off - VNET_LEN
            end = off + lens[j]
            total = end - vo
            soff = slot * size
            if total > room or m[soff + _LOW]:  # type: ignore[index]  # long, or in flight
                self._tx_slot = slot
                self._tx_pending += queued
                self.tx_ring_frames += queued
                queued = 0
                self.transmit(bufs[j], vo, off, lens[j])          # flushes, then send()
                slot = self._tx_slot
                continue
            d = soff + TX_DATA
            tv[d:d + total] = bufs[j][vo:end]
            pack(tv, soff, TP_STATUS_SEND_REQUEST, total)
            slot += 1
            if slot == count:
                slot = 0
            queued += 1
        self._tx_slot = slot
        self._tx_pending += queued
        self.tx_ring_frames += queued

    def flush(self) -> None:
        """Hand the queued transmit slots to the kernel (one system call)."""
        if not self._tx_pending:
            return
        self._tx_pending = 0
        try:
            self.txr.send(b"", socket.MSG_DONTWAIT)  # type: ignore[union-attr]  # pending: a ring
        except OSError:
            pass  # e.g. the interface went away: the frames are lost, as on a wire

    def send_frame(self, frame: bytes) -> None:
        """Send a frame the core originated (no offloads)."""
        if self._tx_pending:
            self.flush()
        try:
            self.tx.send(bytes(VNET_LEN) + frame)
        except OSError:
            pass

    def counters(self) -> dict[str, int]:
        """What this port's rings saw: frames the kernel offered the receive ring and those it
        dropped for want of a free block or slot (PACKET_STATISTICS), how often the receive
        queue froze (TPACKET_V3), blocks or slots handed over and not yet read, frames sent
        through the transmit ring and by plain send().  An auto ring adds its quick socket's
        frames and drops to the ring's, and counts its moves between the two."""
        v3 = not self.lanes
        raw = self.rx.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12 if v3 else 8)
        got = struct.unpack("=III" if v3 else "=II", raw)
        for i, n in enumerate(got):
            self._rx_stats[i] += n
        if self.quick is not None:
            raw = self.quick.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
            for i, n in enumerate(struct.unpack("=II", raw)):
                self._rx_stats[i] += n
        packets, drops, freezes = self._rx_stats
        step = self.cfg.block_size if v3 else self.cfg.slot_size
        with memoryview(self.map) as mv:   # blocks or slots the kernel has handed over, unread
            ready = bytes(mv[8 * v3 + _LOW::step]).translate(_USER_BIT).count(1)
        return {"rx_packets": packets - drops, "rx_ring_drops": drops, "rx_freezes": freezes,
                "rx_ready": ready,
                "rx_stale": self.rx_stale, "rx_resyncs": self.rx_resyncs,
                "rx_other_host": self.rx_other_host, "rx_outgoing": self.rx_outgoing,
                "rx_holes": self.holes,
                "tx_ring": self.tx_ring_frames, "tx_send": self.tx_fallback,
                **self._auto_counters()}

    def _auto_counters(self) -> dict[str, int]:
        pick = self.pick
        if pick is None:
            return {}
        return {"rx_quick": self.rx_quick, "rx_quick_now": int(pick.quick),
                "rx_to_quick": pick.to_quick, "rx_to_ring": pick.to_ring,
                "rx_ring_waits": self.rx_ring_waits,
                "rx_lane_refused": self.steer.failed if self.steer is not None else 0}

    def close(self) -> None:
        if self.steer is not None:
            self.steer.close()
        self.view.release()
        self.map.close()
        if self.txview is not None:
            self.txview.release()
        if self.txmap is not None:
            self.txmap.close()
        if self.txr is not None:
            self.txr.close()
        if self.epoll is not None:
            self.epoll.close()
        for extra in (self.big, self.quick):
            if extra is not None:
                extra.close()
        self.rx.close()
        self.tx.close()


def _block_time(m: Any, boff: int) -> float:
    sec: int
    nsec: int
    sec, nsec = _BLOCK_TS.unpack_from(m, boff + 40)
    return sec + nsec * 1e-9


def _read_sys(ifname: str, attr: str) -> str:
    with open(f"/sys/class/net/{ifname}/{attr}") as f:
        return f.read().strip()


def has_capability(cap: int) -> bool:
    """Whether the effective capability set holds ``cap`` (12 NET_ADMIN, 13 NET_RAW)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except OSError:
        pass
    return os.geteuid() == 0

