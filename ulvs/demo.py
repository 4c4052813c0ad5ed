"""``ulvs demo`` (in-process): the real core between simulated clients and real servers.

A NAT service 10.77.1.100:80 (wlc) over three real servers with weights 3, 2 and 1.  Clients
open TCP connections; every frame goes through ``Core.process_batch``; the simulated real servers
answer whatever the core delivered to them (SYN-ACK, a reply to the request, FIN) and their
frames go back through the core, which must rewrite them to come from the VIP.  Some clients
hang up, the rest stay connected, so the listing shows active and inactive connections.
Everything printed is read back from the core.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from dataclasses import dataclass

from ulvs.cli import render
from ulvs.core import Core, DestConfig, FwdMethod, Proto, ServiceConfig, Verdict
from ulvs.packet import builder
from ulvs.packet.layouts import TH_ACK, TH_FIN, TH_PSH, TH_SYN

VIP, VPORT = "10.77.1.100", 80
SERVERS = [("10.77.2.11", 3), ("10.77.2.12", 2), ("10.77.2.13", 1)]
CLIENT_IF, SERVER_IF = 1, 2
ROUTER_MAC, DIRECTOR_CMAC = "02:00:00:00:01:01", "02:00:00:00:01:fe"
DIRECTOR_SMAC = "02:00:00:00:02:fe"


def server_mac(i: int) -> bytes:
    return bytes.fromhex(f"0200000002{i + 1:02x}")


@dataclass
class Flow:
    caddr: str
    cport: int
    seq: int = 1000
    server: str = ""


class Demo:
    def __init__(self, clients: int, seed: int) -> None:
        self.core = Core(conn_limit=65536)
        self.rng = random.Random(seed)
        self.nclients = clients
        self.now = 0.0
        self.served: Counter[str] = Counter()
        svc = self.core.add_service(ServiceConfig(Proto.TCP, ipaddress.IPv4Address(VIP), VPORT))
        for i, (addr, weight) in enumerate(SERVERS):
            a = ipaddress.IPv4Address(addr)
            self.core.add_dest(svc.config.key, DestConfig(a, 8080, weight=weight, method=FwdMethod.MASQ))
            self.core.set_neighbor(a, SERVER_IF, server_mac(i), builder.mac(DIRECTOR_SMAC))

    # -- one frame through the core -----------------------------------------------------------
    def send(self, frame: bytes, ifin: int) -> bytes:
        buf = bytearray(frame)
        self.core.process_batch([buf], [0], [len(buf)], [ifin], 1, self.now)
        if self.core.verdicts[0] != Verdict.FORWARD:
            raise RuntimeError(f"core did not forward a demo frame: verdict {self.core.verdicts[0]}")
        return bytes(buf)

    def client_to_vip(self, f: Flow, flags: int, payload: bytes = b"") -> tuple[str, int]:
        out = self.send(builder.tcp_frame(ROUTER_MAC, DIRECTOR_CMAC, f.caddr, VIP, f.cport, VPORT, flags,
                                          payload, seq=f.seq), CLIENT_IF)
        f.seq += len(payload) + (1 if flags & (TH_SYN | TH_FIN) else 0)
        daddr = str(ipaddress.IPv4Address(out[30:34]))
        dport = int.from_bytes(out[36:38], "big")
        return daddr, dport

    def server_to_client(self, f: Flow, flags: int, payload: bytes = b"") -> None:
        i = [s for s, _ in SERVERS].index(f.server)
        out = self.send(builder.tcp_frame(server_mac(i), DIRECTOR_SMAC, f.server, f.caddr, 8080, f.cport,
                                          flags, payload), SERVER_IF)
        src = str(ipaddress.IPv4Address(out[26:30]))
        sport = int.from_bytes(out[34:36], "big")
        if (src, sport) != (VIP, VPORT):
            raise RuntimeError(f"reply left the director from {src}:{sport}, not the VIP")

    # -- a client's life ----------------------------------------------------------------------
    def run(self) -> None:
        flows: list[Flow] = []
        for n in range(self.nclients):
            self.now += self.rng.expovariate(50.0)
            f = Flow(caddr=f"10.77.0.{10 + n % 200}", cport=20000 + n)
            f.server, _ = self.client_to_vip(f, TH_SYN)
            self.served[f.server] += 1
            self.server_to_client(f, TH_SYN | TH_ACK)
            self.client_to_vip(f, TH_ACK)
            self.client_to_vip(f, TH_PSH | TH_ACK, b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n")
            self.server_to_client(f, TH_PSH | TH_ACK, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            flows.append(f)
        # Two clients in three hang up; the others keep their connections open.
        for f in flows:
            if self.rng.random() < 2 / 3:
                self.client_to_vip(f, TH_FIN | TH_ACK)
                self.server_to_client(f, TH_FIN | TH_ACK)
                self.client_to_vip(f, TH_ACK)
        self.now += 1.0
        self.core.handle_timer(self.now)

    def report(self) -> str:
        core = self.core
        out = ["$ ulvsadm -L -n", render.list_services(core).rstrip("\n"), ""]
        conns = render.list_conns(core, self.now).splitlines()
        out.append(f"$ ulvsadm -L -n -c   (first 12 of {len(conns) - 2})")
        out.extend(conns[:14])
        out.append("")
        out.append("Per real server (read from the core's counters):")
        out.append(f"  {'server':<16} {'weight':>6} {'conns':>6} {'share':>6} {'in pkts':>8} {'out pkts':>8} "
                   f"{'in bytes':>9} {'out bytes':>9}")
        svc = next(iter(core.services.values()))
        total = sum(core.dest_counters(d).conns for d in svc.dests) or 1
        for d in svc.dests:
            c = core.dest_counters(d)
            out.append(f"  {str(d.config.daddr) + ':' + str(d.config.dport):<16} {d.weight:>6} {c.conns:>6} "
                       f"{c.conns / total:>6.0%} {c.inpkts:>8} {c.outpkts:>8} {c.inbytes:>9} {c.outbytes:>9}")
        drops = {k: v for k, v in core.drop_counts().items() if v}
        out.append(f"Drops: {drops or 'none'}")
        out.append(f"Connection states: {core.state_counts()}")
        return "\n".join(out) + "\n"


def run_demo(clients: int = 60, seed: int = 1) -> str:
    demo = Demo(clients, seed)
    demo.run()
    return demo.report()
