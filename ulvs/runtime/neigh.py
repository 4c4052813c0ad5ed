"""Next hops for dests: egress interface and MAC, from the kernel's routes and neighbours.

For each dest address: ``RTM_GETROUTE`` gives the egress interface and gateway (pyroute2), and
the kernel's neighbour table gives the next hop's MAC when it has one. A missing MAC is
resolved by our own ARP request, sent from the egress interface's packet socket. The reply is
learned from the receive ring (``learn``), so ulvs adds no state to the kernel for it. Results
go to the core with ``Core.set_neighbor``, which patches every rewrite plan of that address.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ulvs.packet.layouts import ARP, ETH, ETH_P_ARP

log = logging.getLogger("ulvs.neigh")

NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80   # REACHABLE STALE DELAY PROBE NOARP PERMANENT
ARP_REQUEST, ARP_REPLY = 1, 2
BROADCAST = b"\xff" * 6


@dataclass
class Egress:
    ifindex: int
    mac: bytes
    addr: bytes | None
    send: Callable[[bytes], None]


@dataclass
class Resolver:
    """Keeps the core's neighbour entries for dest addresses up to date."""

    egress: dict[int, Egress]
    set_neighbor: Callable[[bytes, int, bytes, bytes], None]
    pending: dict[bytes, tuple[int, set[bytes]]] = field(default_factory=dict)  # next hop -> (oif, addrs)
    known: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)          # addr -> (oif, mac)
    # resolve() runs on the daemon's netlink thread, learn()/retry() on the loop's thread
    lock: threading.Lock = field(default_factory=threading.Lock)

    def forget(self) -> None:
        """Drop what is known so the next resolve() reads everything again."""
        with self.lock:
            self.known.clear()

    def resolve(self, addrs: Iterable[bytes]) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for addr in addrs:
                self._resolve_one(ipr, addr)

    def _resolve_one(self, ipr: object, addr: bytes) -> None:
        dst = str(ipaddress.IPv4Address(addr))
        try:
            routes = ipr.route("get", dst=dst)  # type: ignore[attr-defined]
        except Exception as e:  # noqa: BLE001 - netlink reports unreachable destinations this way
            log.warning("no route to dest %s: %s", dst, e)
            return
        if not routes:
            return
        r = routes[0]
        oif = r.get_attr("RTA_OIF")
        gw = r.get_attr("RTA_GATEWAY")
        hop = ipaddress.IPv4Address(gw or dst).packed
        eg = self.egress.get(oif)
        if eg is None:
            log.warning("dest %s is reached through interface %s, which ulvs is not attached to", dst, oif)
            return
        for n in ipr.get_neighbours(dst=str(ipaddress.IPv4Address(hop)), ifindex=oif):  # type: ignore[attr-defined]
            mac = n.get_attr("NDA_LLADDR")
            if mac and n["state"] & NUD_USABLE:
                self._found(addr, oif, bytes.fromhex(mac.replace(":", "")))
                return
        with self.lock:
            self.pending.setdefault(hop, (oif, set()))[1].add(addr)
        self._arp_request(eg, hop)

    def _found(self, addr: bytes, oif: int, mac: bytes) -> None:
        with self.lock:
            if self.known.get(addr) == (oif, mac):
                return
            self.known[addr] = (oif, mac)
        eg = self.egress.get(oif)
        if eg is not None:
            self.set_neighbor(addr, oif, mac, eg.mac)
            log.info("next hop for %s: %s on ifindex %d", ipaddress.IPv4Address(addr), mac.hex(":"), oif)

    def _arp_request(self, eg: Egress, target: bytes) -> None:
        if eg.addr is None:
            log.warning("interface %d has no IPv4 address to ARP from", eg.ifindex)
            return
        frame = ETH.pack(BROADCAST, eg.mac, ETH_P_ARP) + ARP.pack(1, 0x0800, 6, 4, ARP_REQUEST, eg.mac,
                                                                  eg.addr, bytes(6), target)
        eg.send(frame)

    def learn(self, frame: bytes | memoryview, ifindex: int) -> None:
        """Look at an ARP frame seen on ``ifindex``; complete pending resolutions it answers."""
        if len(frame) < 42 or not self.pending:
            return
        (_h, _p, _hl, _pl, op, sha, spa, _tha, _tpa) = ARP.unpack_from(frame, 14)
        if op not in (ARP_REPLY, ARP_REQUEST):
            return
        with self.lock:
            entry = self.pending.get(bytes(spa))
            if entry is None or entry[0] != ifindex:
                return
            del self.pending[bytes(spa)]
        for addr in entry[1]:
            self._found(addr, ifindex, bytes(sha))

    def retry(self) -> None:
        """Ask again for next hops still unanswered."""
        with self.lock:
            waiting = list(self.pending.items())
        for hop, (oif, _addrs) in waiting:
            eg = self.egress.get(oif)
            if eg is not None:
                self._arp_request(eg, hop)

