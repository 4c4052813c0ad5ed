"""The batch interface every dataplane backend offers the daemon.

A *port* is one attachment point: an interface with its AF_PACKET ring, or ulvs's TAP device.
``batches()`` yields the frames received so far, a batch at a time, in the shape
``Core.process_batch`` takes. The daemon decides the batch, then hands each forwarded frame to
the egress port's ``transmit``, then ``flush``es the ports.  A batch's buffers stay valid until
the generator moves on (for a ring: until the block is given back to the kernel).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

VNET_LEN = 10   # sizeof(struct virtio_net_hdr): PACKET_VNET_HDR and IFF_VNET_HDR put it first


@dataclass
class Batch:
    """Frames ``bufs[j][offs[j]:offs[j]+lens[j]]``, each right after its virtio_net_hdr (the
    ``VNET_LEN`` bytes before ``offs[j]``; a port without vnet headers ignores them);
    ``partial[j]`` is 1 when its L4 checksum is a CHECKSUM_PARTIAL seed."""

    bufs: list[Any] = field(default_factory=list)
    offs: list[int] = field(default_factory=list)
    lens: list[int] = field(default_factory=list)
    partial: bytearray = field(default_factory=bytearray)
    ifins: list[int] = field(default_factory=list)
    count: int = 0

    def clear(self) -> None:
        self.bufs.clear()
        self.offs.clear()
        self.lens.clear()
        self.partial.clear()
        self.ifins.clear()
        self.count = 0


class Port(Protocol):
    ifindex: int
    ifname: str
    mac: bytes
    handles_pass: bool   # True: frames the core passes must be handed back by the daemon (TAP)
    backlog: bool        # True: the last batches() stopped at a budget; call it again soon
    paced: bool          # True: frames are handed over (and wake the loop) one at a time

    def fileno(self) -> int: ...

    def batches(self) -> Iterator[Batch]: ...

    def transmit(self, buf: Any, vnet_off: int, off: int, length: int) -> None:
        """Send a frame (with the virtio_net_hdr in front of it at ``vnet_off``)."""

    def transmit_forwarded(self, b: Batch, verdicts: Any, egress: Any, n: int) -> None:
        """``transmit`` each frame of ``b`` with verdict 1 and egress this port, in order."""

    def flush(self) -> None:
        """Send what ``transmit`` queued (a backend may queue frames until a batch ends)."""

    def send_frame(self, frame: bytes) -> None:
        """Send a frame the daemon built (no offloads)."""

    def close(self) -> None: ...


def transmit_each(port: Port, b: Batch, verdicts: Any, egress: Any, n: int) -> None:
    """``Port.transmit_forwarded`` by one ``transmit`` call per frame."""
    me = port.ifindex
    for j in range(n):
        if verdicts[j] == 1 and egress[j] == me:
            port.transmit(b.bufs[j], b.offs[j] - VNET_LEN, b.offs[j], b.lens[j])
