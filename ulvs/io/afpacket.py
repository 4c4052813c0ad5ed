"""AF_PACKET dataplane backend: a TPACKET_V3 receive ring and a transmit socket per interface.

Receive: an ``ETH_P_ALL`` packet socket with ``PACKET_VNET_HDR`` and a TPACKET_V3 ring
(``Documentation/networking/packet_mmap.rst``).  The kernel fills fixed-size *blocks* with
variable-size frames and hands a block to userspace when it is full or when the block timeout
(1 ms) expires; we walk the block, hand its frames to the core as one batch (offsets into the
mmap, no copies), transmit the forwarded ones straight out of the ring, and give the block back.
Our own transmissions are not looped back (``PACKET_IGNORE_OUTGOING``).

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
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ulvs.io import fanout
from ulvs.io.base import Batch

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_VERSION = 10
PACKET_VNET_HDR = 15
PACKET_FANOUT = 18
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
ETH_P_ALL = 0x0003
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1

# struct tpacket_req3: block size, block count, frame size, frame count, retire timeout (ms),
# private area size, feature request word.
_REQ3 = struct.Struct("=IIIIIII")
# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status,
# num_pkts, offset_to_first_pkt, blk_len, seq_num, ts_first, ts_last.
_BLOCK = struct.Struct("=IIIII")
# struct tpacket3_hdr: next_offset, sec, nsec, snaplen, len, status, mac, net.
_PKT = struct.Struct("=IIIIIIHH")
_STATUS = struct.Struct("=I")
# struct virtio_net_hdr (host order): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET = struct.Struct("=BBHHHH")
VNET_LEN = VNET.size
VNET_F_NEEDS_CSUM = 1
VNET_GSO_NONE = 0
_U16 = struct.Struct("!H")


class RingError(OSError):
    """The ring could not be set up (missing capability, interface gone, ...)."""


@dataclass(frozen=True, slots=True)
class RingConfig:
    block_size: int = 1 << 20      # 1 MiB: room for GSO super-packets (64 KiB)
    block_count: int = 16
    frame_size: int = 1 << 16      # only used to size tp_frame_nr
    retire_ms: int = 1             # hand over a partly filled block after 1 ms


def _ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError as e:
        raise RingError(e.errno, f"no interface {name!r}") from None


class PacketRing:
    """The receive ring and transmit socket of one interface."""

    def __init__(self, ifname: str, cfg: RingConfig = RingConfig(), fanout_group: int | None = None) -> None:
        self.ifname = ifname
        self.ifindex = _ifindex(ifname)
        self.cfg = cfg
        self.rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            self.rx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            self.rx.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            self.rx.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            req = _REQ3.pack(cfg.block_size, cfg.block_count, cfg.frame_size,
                             cfg.block_size // cfg.frame_size * cfg.block_count, cfg.retire_ms, 0, 0)
            self.rx.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.rx.bind((ifname, ETH_P_ALL))
            if fanout_group is not None:
                fanout.join(self.rx, fanout_group)
            self.map = mmap.mmap(self.rx.fileno(), cfg.block_size * cfg.block_count,
                                 mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self.tx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            self.tx.bind((ifname, 0))
        except OSError:
            self.rx.close()
            raise
        self.view = memoryview(self.map)
        self._next_block = 0
        self.mac = bytes.fromhex(_read_sys(ifname, "address").replace(":", ""))
        self.mtu = int(_read_sys(ifname, "mtu"))
        self.handles_pass = False   # a tap: what ulvs does not take, the kernel already has
        self.batch = Batch()        # reused for every block

    def fileno(self) -> int:
        fd: int = self.rx.fileno()
        return fd

    # -- receive --------------------------------------------------------------------------------
    def ready_blocks(self) -> Iterator[int]:
        """Offsets of blocks handed to userspace, in ring order."""
        bs, n, m = self.cfg.block_size, self.cfg.block_count, self.map
        while True:
            boff = self._next_block * bs
            (status,) = _STATUS.unpack_from(m, boff + 8)
            if not status & TP_STATUS_USER:
                return
            yield boff
            self._next_block = (self._next_block + 1) % n

    def batches(self) -> Iterator[Batch]:
        """Each ready block as a batch; the block goes back to the kernel when the consumer
        asks for the next one."""
        for boff in self.ready_blocks():
            self.frames(boff)
            yield self.batch
            self.release(boff)

    def frames(self, boff: int) -> int:
        """Fill ``batch`` with the frames of the block at ``boff``; returns the count."""
        m = self.map
        num: int
        first: int
        _v, _p, _status, num, first = _BLOCK.unpack_from(m, boff)
        b = self.batch
        b.clear()
        offs, lens, vnet, partial = b.offs, b.lens, b.vnet, b.partial
        pos = boff + first
        unpack = _PKT.unpack_from
        for _ in range(num):
            nxt, _s, _ns, snaplen, length, _st, mac, _net = unpack(m, pos)
            start = pos + mac
            offs.append(start)
            # A frame cut short by the ring (snaplen < len) is handed over as it is: the core
            # sees the truncated bytes and drops it by reason.
            lens.append(snaplen)
            vnet.append(start - VNET_LEN)
            partial.append(m[start - VNET_LEN] & VNET_F_NEEDS_CSUM)
            pos += nxt
        b.bufs.extend([m] * num)
        b.ifins.extend([self.ifindex] * num)
        b.count = num
        return num

    def release(self, boff: int) -> None:
        _STATUS.pack_into(self.map, boff + 8, TP_STATUS_KERNEL)

    # -- transmit -------------------------------------------------------------------------------
    def transmit(self, buf: Any, vnet_off: int, off: int, length: int) -> None:
        """Send a (rewritten) frame with its vnet header, straight out of its buffer."""
        try:
            self.tx.send(memoryview(buf)[vnet_off:off + length])
        except OSError:
            pass  # a full queue or a vanished peer loses this frame, as a NIC would

    def send_frame(self, frame: bytes) -> None:
        """Send a frame the core originated (no offloads)."""
        try:
            self.tx.send(bytes(VNET_LEN) + frame)
        except OSError:
            pass

    def close(self) -> None:
        self.view.release()
        self.map.close()
        self.rx.close()
        self.tx.close()


def _read_sys(ifname: str, attr: str) -> str:
    with open(f"/sys/class/net/{ifname}/{attr}") as f:
        return f.read().strip()


def set_fanout(sock: socket.socket, group: int, mode: int) -> None:
    """Join a PACKET_FANOUT group (multi-worker, later)."""
    sock.setsockopt(SOL_PACKET, PACKET_FANOUT, group | (mode << 16))


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

