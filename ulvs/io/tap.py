"""TAP dataplane backend: the kernel routes ulvs's traffic into a TAP device, ulvs writes it back.

The TAP (python-pytun) is opened with ``IFF_VNET_HDR``, and ``TUNSETOFFLOAD`` accepts checksum
offload and TSO. The kernel then hands over 64 KiB GSO super-packets unsegmented, each behind a
``virtio_net_hdr``. The core rewrites them (a CHECKSUM_PARTIAL seed moves by the address delta
only), and they are written back with the same header, so the kernel segments them only where
an egress device needs it.

Steering: policy rules that ulvs installs and removes (``ulvs.runtime.kernel.TapSteering``)
route packets for a VIP, and NAT replies from masq dests, into the TAP. What ulvs writes back
is addressed to the kernel side's MAC, so the kernel routes the rewritten packet on by its new
addresses. The kernel resolves next hops on the TAP by ARP, and this shell answers every ARP
request on it with the userspace MAC.

Unlike AF_PACKET, the kernel *hands over* frames here: nothing is processed twice.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from typing import Any

from ulvs.io.base import VNET_LEN, Batch, transmit_each
from ulvs.packet.layouts import ARP, ETH, ETH_P_ARP

TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
VNET_F_NEEDS_CSUM = 1
FRAME_ROOM = VNET_LEN + 14 + 65535
USER_MAC = bytes.fromhex("02756c767301")   # "ulvs" + 01: the userspace end of the TAP


class TapError(OSError):
    """The TAP device could not be created or configured."""


class TapPort:
    """ulvs's TAP device: read batches of frames, write frames back."""

    backlog = False     # batches() reads until the device is empty
    paced = True        # a wakeup per frame: read on a timer when busy (ulvs.runtime.rxwatch)

    def __init__(self, name: str, batch_size: int = 64) -> None:
        import pytun

        try:
            self.dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TAP | pytun.IFF_NO_PI
                                          | pytun.IFF_VNET_HDR)
        except pytun.Error as e:
            raise TapError(errno.EPERM, f"cannot create TAP {name}: {e}") from None
        fd = self.dev.fileno()
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
            os.set_blocking(fd, False)
            self.dev.up()
        except OSError as e:
            self.dev.close()
            raise TapError(e.errno, f"cannot configure TAP {name}: {e.strerror}") from None
        self.ifname = self.dev.name
        with open(f"/sys/class/net/{self.ifname}/ifindex") as f:
            self.ifindex = int(f.read())
        with open(f"/sys/class/net/{self.ifname}/address") as f:
            self.kernel_mac = bytes.fromhex(f.read().strip().replace(":", ""))
        self.mac = USER_MAC
        self.handles_pass = True
        self._fd = fd
        self._bufs = [bytearray(FRAME_ROOM) for _ in range(batch_size)]
        self._views = [memoryview(b) for b in self._bufs]
        self.batch = Batch()

    def fileno(self) -> int:
        fd: int = self._fd
        return fd

    def batches(self) -> Iterator[Batch]:
        """Read what is waiting (up to the batch size at a time)."""
        readv = os.readv
        while True:
            b = self.batch
            b.clear()
            for buf in self._bufs:
                try:
                    n = readv(self._fd, [buf])
                except BlockingIOError:
                    break
                except OSError:
                    break   # the device went away; the daemon notices and detaches
                if n <= VNET_LEN:
                    continue
                b.bufs.append(buf)
                b.offs.append(VNET_LEN)
                b.lens.append(n - VNET_LEN)
                b.partial.append(buf[0] & VNET_F_NEEDS_CSUM)
                b.ifins.append(self.ifindex)
            b.count = len(b.offs)
            if not b.count:
                return
            yield b
            if b.count < len(self._bufs):
                return

    def transmit(self, buf: Any, vnet_off: int, off: int, length: int) -> None:
        try:
            os.write(self._fd, memoryview(buf)[vnet_off:off + length])
        except OSError:
            pass  # the kernel refused or the queue is full: the frame is lost, as on a wire

    def transmit_forwarded(self, b: Batch, verdicts: Any, egress: Any, n: int) -> None:
        transmit_each(self, b, verdicts, egress, n)

    def flush(self) -> None:
        pass  # every frame is written at once

    def send_frame(self, frame: bytes) -> None:
        self.transmit(bytes(VNET_LEN) + frame, 0, VNET_LEN, len(frame))

    def answer_arp(self, buf: Any, off: int, length: int) -> bool:
        """Answer an ARP request that the kernel sent on the TAP; True if it was one."""
        if length < 42 or buf[off + 12] != 0x08 or buf[off + 13] != 0x06:
            return False
        _h, _p, _hl, _pl, op, sha, spa, _tha, tpa = ARP.unpack_from(buf, off + 14)
        if op != 1:
            return True
        reply = ETH.pack(bytes(sha), self.mac, ETH_P_ARP) + ARP.pack(
            1, 0x0800, 6, 4, 2, self.mac, bytes(tpa), bytes(sha), bytes(spa))
        self.send_frame(reply)
        return True

    def close(self) -> None:
        for v in self._views:
            v.release()
        self.dev.close()
