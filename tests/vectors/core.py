"""Packet vectors for the forwarding core, as data (after Katran's KatranBaseTestFixtures.h).

Each ``Case`` is numbered and described, names the topology it runs on (``TOPOLOGIES``) and lists
ordered ``Step``s: a frame, the interface it arrives on and the time ``now``, and what the core
must answer -- verdict, egress, drop reason, the frame as sent (byte for byte), the ICMP errors
it originates and the connection table afterwards.  A step may first make control-plane calls
(``Ctl``), e.g. delete a dest.

Every frame, input and expected output alike, is built with scapy, the independent oracle:
checksums in expected frames are scapy's full recomputations, never the core's incremental
updates.  The core's own ``ulvs.packet.builder`` is not used here.

The lab (one director, two interfaces; clients and real servers each on their own segment)::

    clients 10.77.1.0/24 --- if 1 [director 10.77.1.1 | 10.77.2.1] if 2 --- real servers 10.77.2.0/24

    TCP 10.77.1.100:80  rr  masq    -> 10.77.2.11:8080  10.77.2.12:8080  10.77.2.13:8080
    UDP 10.77.1.100:53  rr  masq    -> 10.77.2.21:5353
    TCP 10.77.1.101:80  rr  droute  -> 10.77.2.31:80    10.77.2.32:80
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_EOL, IPOption_NOP, IPOption_RR
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Padding, Raw

from ulvs.core import ConnInfo, Core, DestConfig, DropReason, FwdMethod, Proto, ServiceConfig, Verdict
from ulvs.sync.proto import ConnRecord

# ---------------------------------------------------------------------------------------------
# The lab
# ---------------------------------------------------------------------------------------------
IF_C, IF_S = 1, 2                     # client side, server side
DIR_CMAC, DIR_SMAC = "02:00:00:00:01:fe", "02:00:00:00:02:fe"
DIR_CADDR, DIR_SADDR = "10.77.1.1", "10.77.2.1"

VIP, VIP_DR = "10.77.1.100", "10.77.1.101"
RS1, RS2, RS3 = "10.77.2.11", "10.77.2.12", "10.77.2.13"   # TCP masq :8080
DNS1 = "10.77.2.21"                                          # UDP masq :5353
DR1, DR2 = "10.77.2.31", "10.77.2.32"                        # TCP droute :80
ROUTER_S = "10.77.2.254"                                     # a router on the server side

C1, C2, C3, C4 = "10.77.1.10", "10.77.1.11", "10.77.1.12", "10.77.1.13"
MACS = {
    C1: "02:00:00:00:01:10", C2: "02:00:00:00:01:11", C3: "02:00:00:00:01:12",
    C4: "02:00:00:00:01:13",
    RS1: "02:00:00:00:02:11", RS2: "02:00:00:00:02:12", RS3: "02:00:00:00:02:13",
    DNS1: "02:00:00:00:02:21", DR1: "02:00:00:00:02:31", DR2: "02:00:00:00:02:32",
    ROUTER_S: "02:00:00:00:02:54",
}

TCP_SVC = (Proto.TCP, IPv4Address(VIP), 80)
UDP_SVC = (Proto.UDP, IPv4Address(VIP), 53)
DR_SVC = (Proto.TCP, IPv4Address(VIP_DR), 80)


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


@dataclass(frozen=True, slots=True)
class Topology:
    """A named setup of the lab: which core options and which neighbours."""

    name: str
    description: str
    conn_limit: int = 1_000_000
    expire_nodest_conn: bool = False
    masq_weight: int = 1          # weight of the TCP masq dests
    resolved: bool = True         # neighbours (next-hop MACs) of the dests known


TOPOLOGIES = {t.name: t for t in (
    Topology("lab", "the lab, every neighbour resolved"),
    Topology("lab-quiesced", "the lab with the TCP masq dests at weight 0", masq_weight=0),
    Topology("lab-limit1", "the lab with a connection table of one entry", conn_limit=1),
    Topology("lab-unresolved", "the lab with no neighbour known yet", resolved=False),
    Topology("lab-expire-nodest", "the lab with expire_nodest_conn on", expire_nodest_conn=True),
)}


def build_core(name: str, **overrides: Any) -> Core:
    """A fresh core set up as topology ``name`` (``overrides`` replace Topology fields)."""
    topo = replace(TOPOLOGIES[name], **overrides)
    core = Core(conn_limit=topo.conn_limit, expire_nodest_conn=topo.expire_nodest_conn)
    core.set_interface(IF_C, mac(DIR_CMAC), IPv4Address(DIR_CADDR))
    core.set_interface(IF_S, mac(DIR_SMAC), IPv4Address(DIR_SADDR))
    services = (
        (TCP_SVC, ((RS1, 8080), (RS2, 8080), (RS3, 8080)), FwdMethod.MASQ, topo.masq_weight),
        (UDP_SVC, ((DNS1, 5353),), FwdMethod.MASQ, 1),
        (DR_SVC, ((DR1, 80), (DR2, 80)), FwdMethod.DROUTE, 1),
    )
    for key, dests, method, weight in services:
        core.add_service(ServiceConfig(key[0], key[1], key[2], sched="rr"))
        for daddr, dport in dests:
            core.add_dest(key, DestConfig(IPv4Address(daddr), dport, weight=weight, method=method))
            if topo.resolved:
                core.set_neighbor(IPv4Address(daddr), IF_S, mac(MACS[daddr]), mac(DIR_SMAC))
    return core


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ctl:
    """A control-plane call made before a step's frame: ``getattr(core, method)(*args)``."""

    method: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Step:
    input: bytes
    ifin: int
    now: float
    verdict: Verdict
    egress: int | None = None                 # FORWARD only
    reason: DropReason | None = None          # DROP only
    output: bytes | None = None               # FORWARD: the frame as sent; else it is left unchanged
    emitted: tuple[tuple[bytes, int], ...] = ()   # frames the core originates, with their egress
    conns: tuple[str, ...] | None = None      # the connection table afterwards (``conn_line``)
    ctl: tuple[Ctl, ...] = ()                 # control-plane calls before the frame
    fast: bool = False                        # the batch loop must decide it without the slow path
    note: str = ""


@dataclass(frozen=True, slots=True)
class Case:
    num: int
    description: str
    topology: str
    steps: tuple[Step, ...]

    @property
    def id(self) -> str:
        return f"{self.num:02d}-{self.description}"


def conn_line(c: ConnInfo) -> str:
    """How a connection is written in ``Step.conns``."""
    return f"{c.proto.name} {c.caddr}:{c.cport} {c.vaddr}:{c.vport} {c.daddr}:{c.dport} {c.state}"


# ---------------------------------------------------------------------------------------------
# Frame builders (scapy)
# ---------------------------------------------------------------------------------------------
def _l2(src: str, dst: str, vlan: int | None) -> Packet:
    e = Ether(src=src, dst=dst)
    return e / Dot1Q(vlan=vlan) if vlan is not None else e


def _ip(src: str, dst: str, *, ttl: int = 64, ip_id: int = 1, df: bool = False,
        options: tuple[Any, ...] = (), ip_chksum: int | None = None, frag: int = 0,
        mf: bool = False, **_: Any) -> Packet:
    flags = (2 if df else 0) | (1 if mf else 0)
    return IP(src=src, dst=dst, ttl=ttl, id=ip_id, flags=flags, frag=frag, options=list(options),
              chksum=ip_chksum)


def ip_of(frame: bytes) -> bytes:
    """The IP packet inside an Ethernet frame (one optional 802.1Q tag)."""
    return frame[18:] if frame[12:14] == b"\x81\x00" else frame[14:]


@dataclass(frozen=True)
class Flow:
    """One client <-> service <-> real server conversation.  Makes the four views of a segment:
    as the client sends it, as the director passes it to the real server, as the real server
    answers, and as the director passes the answer to the client (masq; droute replies bypass
    the director)."""

    proto: str                  # "TCP" | "UDP"
    caddr: str
    cport: int
    vaddr: str
    vport: int
    daddr: str
    dport: int
    masq: bool = True

    def _l4(self, sport: int, dport: int, *, flags: str = "", seq: int = 0, ack: int = 0,
            window: int = 8192, load: bytes = b"", udp_chksum: int | None = None,
            pad: bytes = b"", **_: Any) -> Packet:
        if self.proto == "TCP":
            seg = TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=window)
        else:
            seg = UDP(sport=sport, dport=dport, chksum=udp_chksum)
        if load:
            seg = seg / Raw(load)
        if pad:
            seg = seg / Padding(pad)
        return seg

    def client_in(self, ttl: int = 64, vlan: int | None = None, **kw: Any) -> bytes:
        return bytes(_l2(MACS[self.caddr], DIR_CMAC, vlan) / _ip(self.caddr, self.vaddr, ttl=ttl, **kw)
                     / self._l4(self.cport, self.vport, **kw))

    def client_out(self, ttl: int = 64, vlan: int | None = None, **kw: Any) -> bytes:
        if not self.masq:   # droute: the IP packet is untouched, only the MACs change
            return bytes(_l2(DIR_SMAC, MACS[self.daddr], vlan) / _ip(self.caddr, self.vaddr, ttl=ttl, **kw)
                         / self._l4(self.cport, self.vport, **kw))
        return bytes(_l2(DIR_SMAC, MACS[self.daddr], vlan) / _ip(self.caddr, self.daddr, ttl=ttl - 1, **kw)
                     / self._l4(self.cport, self.dport, **kw))

    def server_in(self, ttl: int = 64, vlan: int | None = None, **kw: Any) -> bytes:
        return bytes(_l2(MACS[self.daddr], DIR_SMAC, vlan) / _ip(self.daddr, self.caddr, ttl=ttl, **kw)
                     / self._l4(self.dport, self.cport, **kw))

    def server_out(self, ttl: int = 64, vlan: int | None = None, **kw: Any) -> bytes:
        return bytes(_l2(DIR_CMAC, MACS[self.caddr], vlan) / _ip(self.vaddr, self.caddr, ttl=ttl - 1, **kw)
                     / self._l4(self.vport, self.cport, **kw))

    def conn(self, state: str) -> str:
        return (f"{self.proto} {self.caddr}:{self.cport} {self.vaddr}:{self.vport} "
                f"{self.daddr}:{self.dport} {state}")

    def _conns(self, state: str | None, conns: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if conns is not None:
            return conns
        return None if state is None else (self.conn(state),)

    # -- steps --------------------------------------------------------------------------------
    def c2s(self, now: float, state: str | None = None, *, conns: tuple[str, ...] | None = None,
            fast: bool = False, note: str = "", ctl: tuple[Ctl, ...] = (), **seg: Any) -> Step:
        """The client's segment is forwarded to the real server."""
        return Step(self.client_in(**seg), IF_C, now, Verdict.FORWARD, IF_S, output=self.client_out(**seg),
                    conns=self._conns(state, conns), fast=fast, note=note, ctl=ctl)

    def s2c(self, now: float, state: str | None = None, *, conns: tuple[str, ...] | None = None,
            fast: bool = False, note: str = "", ctl: tuple[Ctl, ...] = (), **seg: Any) -> Step:
        """The real server's answer is forwarded to the client."""
        return Step(self.server_in(**seg), IF_S, now, Verdict.FORWARD, IF_C, output=self.server_out(**seg),
                    conns=self._conns(state, conns), fast=fast, note=note, ctl=ctl)

    def c_drop(self, now: float, reason: DropReason, state: str | None = None, *,
               conns: tuple[str, ...] | None = None, note: str = "", ctl: tuple[Ctl, ...] = (),
               emitted: tuple[tuple[bytes, int], ...] = (), **seg: Any) -> Step:
        return Step(self.client_in(**seg), IF_C, now, Verdict.DROP, reason=reason, emitted=emitted,
                    conns=self._conns(state, conns), note=note, ctl=ctl)

    def s_drop(self, now: float, reason: DropReason, state: str | None = None, *,
               conns: tuple[str, ...] | None = None, note: str = "", ctl: tuple[Ctl, ...] = (),
               emitted: tuple[tuple[bytes, int], ...] = (), **seg: Any) -> Step:
        return Step(self.server_in(**seg), IF_S, now, Verdict.DROP, reason=reason, emitted=emitted,
                    conns=self._conns(state, conns), note=note, ctl=ctl)

    def handshake(self, t0: float = 0.0, seq: int = 1000, rseq: int = 5000) -> tuple[Step, ...]:
        """SYN, SYN+ACK, ACK at t0, t0 + 0.1, t0 + 0.2 (TCP masq)."""
        return (
            self.c2s(t0, "SYN_RECV", flags="S", seq=seq),
            self.s2c(t0 + 0.1, "SYN_RECV", flags="SA", seq=rseq, ack=seq + 1),
            self.c2s(t0 + 0.2, "ESTABLISHED", flags="A", seq=seq + 1, ack=rseq + 1),
        )


def nat_flow(caddr: str, cport: int, daddr: str = RS1) -> Flow:
    return Flow("TCP", caddr, cport, VIP, 80, daddr, 8080)


def udp_flow(caddr: str, cport: int) -> Flow:
    return Flow("UDP", caddr, cport, VIP, 53, DNS1, 5353)


def dr_flow(caddr: str, cport: int, daddr: str = DR1) -> Flow:
    return Flow("TCP", caddr, cport, VIP_DR, 80, daddr, 80, masq=False)


def pass_step(frame: bytes, ifin: int = IF_C, now: float = 0.0, note: str = "") -> Step:
    return Step(frame, ifin, now, Verdict.PASS, note=note)


def drop_step(frame: bytes, reason: DropReason, ifin: int = IF_C, now: float = 0.0, note: str = "",
              conns: tuple[str, ...] | None = None) -> Step:
    return Step(frame, ifin, now, Verdict.DROP, reason=reason, note=note, conns=conns)


def icmp_frame(smac: str, dmac: str, src: str, dst: str, itype: int, code: int, quote: bytes, *,
               ttl: int = 64, ip_id: int = 1, mtu: int | None = None, chksum: int | None = None) -> bytes:
    """An ICMP error (RFC 792) quoting ``quote`` (an IP header and the start of its payload)."""
    icmp = ICMP(type=itype, code=code, chksum=chksum)
    if mtu is not None:
        icmp.nexthopmtu = mtu
    return bytes(Ether(src=smac, dst=dmac) / IP(src=src, dst=dst, ttl=ttl, id=ip_id) / icmp / Raw(quote))


def time_exceeded(frame: bytes, src: str, ifindex: int) -> tuple[bytes, int]:
    """The ICMP time exceeded the director answers to ``frame`` (RFC 792: IP header + 8 bytes),
    sent back out of the interface the frame came in on, from that interface's address."""
    ip = ip_of(frame)
    ihl = (ip[0] & 0x0F) * 4
    p = Ether(frame)
    return icmp_frame(p.dst, p.src, src, p[IP].src, 11, 0, ip[:ihl + 8], ip_id=0), ifindex


# -- crafted checksum edges -------------------------------------------------------------------
def _l4_layer(frame: bytes) -> Packet:
    p = Ether(frame)
    return p[TCP] if TCP in p else p[UDP]


def zero_sum_load(build: Callable[[bytes], bytes], size: int = 16) -> bytes:
    """A payload for which scapy gives the L4 checksum of ``build(load)`` as 0x0000 (TCP), or
    0xFFFF (UDP: a computed zero is sent as all ones, RFC 768).  The first payload word is set to
    the checksum found with that word zero, which makes the one's complement sum 0xFFFF."""
    filler = (b"ulvs-checksum-edge-" * (size // 19 + 1))[:size]
    load0 = b"\0\0" + filler[2:]
    c0 = _l4_layer(build(load0)).chksum
    load = c0.to_bytes(2, "big") + load0[2:]
    got = _l4_layer(build(load)).chksum
    if got not in (0x0000, 0xFFFF) or (got == 0xFFFF and TCP in Ether(build(load))):
        raise RuntimeError(f"checksum edge not reached: {got:#06x}")
    return load


def zero_sum_ip_id(build: Callable[[int], bytes]) -> int:
    """An IP id for which the IP header checksum of ``build(ip_id)`` is 0x0000."""
    c0 = Ether(build(0))[IP].chksum
    if Ether(build(c0))[IP].chksum != 0:
        raise RuntimeError("IP checksum edge not reached")
    return int(c0)


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------
GET = b"GET / HTTP/1.0\r\nHost: ulvs\r\n\r\n"
OK = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"
QUERY = bytes.fromhex("1d2b01000001000000000000") + b"\x04ulvs\x04test\x00\x00\x01\x00\x01"
ANSWER = bytes.fromhex("1d2b81800001000100000000") + b"\x04ulvs\x04test\x00\x00\x01\x00\x01" \
    + bytes.fromhex("c00c000100010000003c00040a4d0164")


def _cases() -> list[Case]:
    cases: list[Case] = []

    def case(description: str, topology: str, *steps: Step | tuple[Step, ...]) -> None:
        flat: list[Step] = []
        for s in steps:
            flat.extend(s if isinstance(s, tuple) else (s,))
        cases.append(Case(len(cases) + 1, description, topology, tuple(flat)))

    # ---- TCP through NAT: handshake, data, teardown --------------------------------------
    f = nat_flow(C1, 40001)
    case("tcp nat handshake, data both ways, client closes first", "lab",
         f.handshake(0.0),
         f.c2s(0.3, "ESTABLISHED", flags="PA", seq=1001, ack=5001, load=GET, df=True, fast=True),
         f.s2c(0.4, "ESTABLISHED", flags="PA", seq=5001, ack=1001 + len(GET), load=OK, df=True, fast=True),
         f.c2s(0.5, "CLOSE_WAIT", flags="FA", seq=1001 + len(GET), ack=5001 + len(OK),
               note="INPUT FIN on ESTABLISHED: CLOSE_WAIT"),
         f.s2c(0.6, "CLOSE_WAIT", flags="A", seq=5001 + len(OK), ack=1002 + len(GET)),
         f.s2c(0.7, "TIME_WAIT", flags="FA", seq=5001 + len(OK), ack=1002 + len(GET)),
         f.c2s(0.8, "TIME_WAIT", flags="A", seq=1002 + len(GET), ack=5002 + len(OK)))

    f = nat_flow(C1, 40002)
    case("tcp nat server closes first: FIN_WAIT then TIME_WAIT", "lab",
         f.handshake(1.0),
         f.s2c(1.3, "FIN_WAIT", flags="FA", seq=5001, ack=1001),
         f.c2s(1.4, "FIN_WAIT", flags="A", seq=1001, ack=5002),
         f.c2s(1.5, "TIME_WAIT", flags="FA", seq=1001, ack=5002),
         f.s2c(1.6, "TIME_WAIT", flags="A", seq=5002, ack=1002))

    f = nat_flow(C1, 40003)
    case("tcp nat client reset closes the connection", "lab",
         f.handshake(0.0),
         f.c2s(0.3, "ESTABLISHED", flags="PA", seq=1001, ack=5001, load=GET, fast=True),
         f.c2s(0.4, "CLOSE", flags="R", seq=1001 + len(GET)))

    f = nat_flow(C1, 40004)
    case("tcp nat server reset closes the connection; later segments still follow it", "lab",
         f.handshake(0.0),
         f.s2c(0.3, "CLOSE", flags="RA", seq=5001, ack=1001),
         f.c2s(0.4, "CLOSE", flags="A", seq=1001, ack=5001,
               note="CLOSE is not ESTABLISHED: slow path, state unchanged"))

    fs = [nat_flow(C1, 41001, RS1), nat_flow(C2, 41002, RS2), nat_flow(C3, 41003, RS3),
          nat_flow(C4, 41004, RS1)]
    case("tcp nat round robin over three dests, then around again", "lab",
         fs[0].c2s(0.0, flags="S", seq=1, conns=(fs[0].conn("SYN_RECV"),)),
         fs[1].c2s(0.1, flags="S", seq=2, conns=tuple(f.conn("SYN_RECV") for f in fs[:2])),
         fs[2].c2s(0.2, flags="S", seq=3, conns=tuple(f.conn("SYN_RECV") for f in fs[:3])),
         fs[3].c2s(0.3, flags="S", seq=4, conns=tuple(f.conn("SYN_RECV") for f in fs)),
         fs[3].s2c(0.4, flags="SA", seq=9, ack=5, conns=tuple(f.conn("SYN_RECV") for f in fs)),
         fs[1].s2c(0.5, flags="SA", seq=8, ack=3, conns=tuple(f.conn("SYN_RECV") for f in fs)))

    f, g = nat_flow(C1, 41101, RS1), nat_flow(C2, 41102, RS2)
    case("tcp nat retransmitted SYN stays with its dest and does not advance round robin", "lab",
         f.c2s(0.0, "SYN_RECV", flags="S", seq=77),
         f.c2s(1.0, "SYN_RECV", flags="S", seq=77, note="retransmission"),
         g.c2s(1.1, flags="S", seq=88, conns=(f.conn("SYN_RECV"), g.conn("SYN_RECV"))))

    f, f2 = nat_flow(C1, 41201, RS1), nat_flow(C1, 41201, RS2)
    case("tcp nat conn reuse: a new SYN on a TIME_WAIT entry gets a new dest", "lab",
         f.handshake(0.0),
         f.c2s(0.3, "CLOSE_WAIT", flags="FA", seq=1001, ack=5001),
         f.s2c(0.4, "TIME_WAIT", flags="FA", seq=5001, ack=1002),
         f.c2s(0.5, "TIME_WAIT", flags="A", seq=1002, ack=5002),
         f2.c2s(2.0, "SYN_RECV", flags="S", seq=9000, note="a new connection: the next dest in turn"),
         f2.s2c(2.1, "SYN_RECV", flags="SA", seq=7000, ack=9001))

    f = nat_flow(C1, 41301)
    case("tcp nat segments without a connection", "lab",
         f.c_drop(0.0, DropReason.NO_CONN, conns=(), flags="A", seq=5, ack=6,
                  note="only a pure SYN creates a connection"),
         f.c_drop(0.1, DropReason.NO_CONN, conns=(), flags="SA", seq=5, ack=6),
         f.s_drop(0.2, DropReason.NO_CONN, conns=(), flags="SA", seq=5, ack=6,
                  note="a reply from a masq dest's service port without a connection"),
         pass_step(bytes(Ether(src=MACS[RS1], dst=DIR_SMAC) / IP(src=RS1, dst=C1)
                         / TCP(sport=22, dport=41301, flags="PA")), IF_S, 0.3,
                   note="the same real server's other traffic is not ours"))

    f = nat_flow(C2, 41401)
    big_c, big_s = bytes(range(256)) * 5 + bytes(120), bytes(reversed(range(256))) * 5 + b"z" * 120
    case("tcp nat full-size 1400-byte segments both ways on the fast path", "lab",
         f.handshake(0.0),
         f.c2s(0.3, "ESTABLISHED", flags="A", seq=1001, ack=5001, load=big_c, df=True, fast=True),
         f.s2c(0.4, "ESTABLISHED", flags="A", seq=5001, ack=2401, load=big_s, df=True, fast=True),
         f.c2s(0.5, "ESTABLISHED", flags="PA", seq=2401, ack=6401, load=big_c[:1], fast=True,
               note="odd length: the checksum covers a padded last byte"))

    f = nat_flow(C2, 41501)
    case("tcp nat Ethernet padding of short frames is preserved and ignored", "lab",
         f.handshake(0.0),
         f.c2s(0.3, "ESTABLISHED", flags="A", seq=1001, ack=5001, pad=bytes(6), fast=True),
         f.s2c(0.4, "ESTABLISHED", flags="A", seq=5001, ack=1001, pad=b"\xaa" * 6, fast=True),
         f.c2s(0.5, "CLOSE_WAIT", flags="FA", seq=1001, ack=5001, pad=b"\x55" * 6))

    f = nat_flow(C2, 41601)
    c_load = zero_sum_load(lambda ld: f.client_out(flags="PA", seq=1001, ack=5001, load=ld))
    c_id = zero_sum_ip_id(lambda i: f.client_out(flags="PA", seq=1001, ack=5001, load=c_load, ip_id=i))
    s_load = zero_sum_load(lambda ld: f.server_out(flags="PA", seq=5001, ack=1017, load=ld))
    s_id = zero_sum_ip_id(lambda i: f.server_out(flags="PA", seq=5001, ack=1017, load=s_load, ip_id=i))
    case("tcp nat rewritten IP and TCP checksums come out as 0x0000 (RFC 1624 edge)", "lab",
         f.handshake(0.0),
         f.c2s(0.3, "ESTABLISHED", flags="PA", seq=1001, ack=5001, load=c_load, ip_id=c_id, fast=True),
         f.s2c(0.4, "ESTABLISHED", flags="PA", seq=5001, ack=1017, load=s_load, ip_id=s_id, fast=True))

    f = nat_flow(C2, 41701)
    c_load = zero_sum_load(lambda ld: f.client_in(flags="PA", seq=1001, ack=5001, load=ld))
    c_id = zero_sum_ip_id(lambda i: f.client_in(flags="PA", seq=1001, ack=5001, load=c_load, ip_id=i))
    s_load = zero_sum_load(lambda ld: f.server_in(flags="PA", seq=5001, ack=1017, load=ld))
    s_id = zero_sum_ip_id(lambda i: f.server_in(flags="PA", seq=5001, ack=1017, load=s_load, ip_id=i))
    case("tcp nat received IP and TCP checksums of 0x0000 are updated correctly", "lab",
         f.handshake(0.0),
         f.c2s(0.3, "ESTABLISHED", flags="PA", seq=1001, ack=5001, load=c_load, ip_id=c_id, fast=True),
         f.s2c(0.4, "ESTABLISHED", flags="PA", seq=5001, ack=1017, load=s_load, ip_id=s_id, fast=True))

    f = nat_flow(C3, 41801)
    case("tcp nat 802.1Q-tagged client frames: the tag is carried through unchanged", "lab",
         f.c2s(0.0, "SYN_RECV", flags="S", seq=1000, vlan=10),
         f.s2c(0.1, "SYN_RECV", flags="SA", seq=5000, ack=1001),
         f.c2s(0.2, "ESTABLISHED", flags="A", seq=1001, ack=5001, vlan=10),
         f.c2s(0.3, "ESTABLISHED", flags="PA", seq=1001, ack=5001, load=GET, vlan=10,
               note="tagged frames always take the slow path"),
         f.s2c(0.4, "ESTABLISHED", flags="PA", seq=5001, ack=1001 + len(GET), load=OK, fast=True))

    f = nat_flow(C3, 41901)
    nops = (IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_EOL())
    rr = (IPOption_RR(routers=["0.0.0.0"] * 3),)
    case("tcp nat IPv4 options (IHL > 5) are honoured and kept", "lab",
         f.c2s(0.0, "SYN_RECV", flags="S", seq=1000, options=nops),
         f.s2c(0.1, "SYN_RECV", flags="SA", seq=5000, ack=1001, options=rr),
         f.c2s(0.2, "ESTABLISHED", flags="A", seq=1001, ack=5001),
         f.c2s(0.3, "ESTABLISHED", flags="PA", seq=1001, ack=5001, load=GET, options=rr,
               note="IHL 9: the slow path rewrites at the right offsets"),
         f.s2c(0.4, "ESTABLISHED", flags="PA", seq=5001, ack=1001 + len(GET), load=OK, options=nops))

    f = nat_flow(C3, 42001)
    syn1 = f.client_in(flags="S", seq=1000, ttl=1)
    case("tcp nat SYN with TTL 1 is dropped with an ICMP time exceeded; TTL 2 passes as TTL 1", "lab",
         Step(syn1, IF_C, 0.0, Verdict.DROP, reason=DropReason.TTL_EXCEEDED,
              emitted=(time_exceeded(syn1, DIR_CADDR, IF_C),)),
         f.c2s(0.1, flags="S", seq=1000, ttl=2))

    f = nat_flow(C3, 42101)
    data1 = f.client_in(flags="PA", seq=1001, ack=5001, load=GET, ttl=1)
    case("tcp nat established segment with TTL 1: time exceeded from the ingress address", "lab",
         f.handshake(0.0),
         Step(data1, IF_C, 0.3, Verdict.DROP, reason=DropReason.TTL_EXCEEDED,
              emitted=(time_exceeded(data1, DIR_CADDR, IF_C),), conns=(f.conn("ESTABLISHED"),)),
         f.c2s(0.4, "ESTABLISHED", flags="PA", seq=1001, ack=5001, load=GET, ttl=2, fast=True))

    f = nat_flow(C3, 42201)
    reply1 = f.server_in(flags="PA", seq=5001, ack=1001, load=OK, ttl=1)
    case("tcp nat real server reply with TTL 1: time exceeded back to the real server", "lab",
         f.handshake(0.0),
         Step(reply1, IF_S, 0.3, Verdict.DROP, reason=DropReason.TTL_EXCEEDED,
              emitted=(time_exceeded(reply1, DIR_SADDR, IF_S),), conns=(f.conn("ESTABLISHED"),)))

    # ---- UDP through NAT --------------------------------------------------------------------
    u = udp_flow(C1, 53001)
    case("udp nat query and answer, then more of the same flow on the fast path", "lab",
         u.c2s(0.0, "UDP", load=QUERY),
         u.s2c(0.1, "UDP", load=ANSWER, fast=True),
         u.c2s(0.2, "UDP", load=QUERY[:-1] + b"\x1c", fast=True),
         u.s2c(0.3, "UDP", load=b"", note="empty datagram, 42-byte frame: too short for the fast read"),
         u.s2c(0.4, "UDP", load=b"", pad=bytes(18), fast=True, note="the same padded to 60 bytes"))

    u = udp_flow(C1, 53002)
    case("udp nat checksum 0 (none) is left 0 both ways", "lab",
         u.c2s(0.0, "UDP", load=QUERY, udp_chksum=0),
         u.s2c(0.1, "UDP", load=ANSWER, udp_chksum=0, fast=True),
         u.c2s(0.2, "UDP", load=QUERY, udp_chksum=0, fast=True))

    u = udp_flow(C1, 53003)
    q_load = zero_sum_load(lambda ld: u.client_out(load=ld), 24)
    a_load = zero_sum_load(lambda ld: u.server_out(load=ld), 40)
    case("udp nat a rewritten checksum that computes to 0 is sent as 0xFFFF (RFC 768)", "lab",
         u.c2s(0.0, "UDP", load=q_load, note="new flow"),
         u.s2c(0.1, "UDP", load=a_load, fast=True),
         u.c2s(0.2, "UDP", load=q_load, fast=True))

    u = udp_flow(C1, 53004)
    q_load = zero_sum_load(lambda ld: u.client_in(load=ld), 24)
    a_load = zero_sum_load(lambda ld: u.server_in(load=ld), 40)
    case("udp nat received checksum 0xFFFF (a computed zero) is updated correctly", "lab",
         u.c2s(0.0, "UDP", load=q_load),
         u.s2c(0.1, "UDP", load=a_load, fast=True),
         u.c2s(0.2, "UDP", load=q_load, fast=True))

    u = udp_flow(C1, 53010)
    q_id = zero_sum_ip_id(lambda i: u.client_out(load=QUERY, ip_id=i))
    a_id = zero_sum_ip_id(lambda i: u.server_out(load=ANSWER, ip_id=i))
    case("udp nat rewritten IP checksums come out as 0x0000 (RFC 1624 edge)", "lab",
         u.c2s(0.0, "UDP", load=QUERY, ip_id=q_id, note="new flow"),
         u.s2c(0.1, "UDP", load=ANSWER, ip_id=a_id, fast=True),
         u.c2s(0.2, "UDP", load=QUERY, ip_id=q_id, fast=True))

    case("traffic to the VIP on a port without a service is passed to the host", "lab",
         pass_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=VIP) / UDP(sport=5, dport=54)
                         / Raw(b"x"))),
         pass_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=VIP)
                         / TCP(sport=5, dport=443, flags="S"))),
         pass_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=VIP) / TCP(sport=5, dport=22,
                                                                                       flags="A"))))

    # ---- ICMP errors about connections --------------------------------------------------------
    f = nat_flow(C4, 43001)
    seen = f.server_out(flags="PA", seq=5001, ack=1001, load=OK, ttl=64, ip_id=900)   # ttl 63 at C4
    orig = f.server_in(flags="PA", seq=5001, ack=1001, load=OK, ttl=63, ip_id=900)
    n = 20 + 20 + 16
    case("icmp frag-needed from the client about a VIP reply goes to the real server", "lab",
         f.handshake(0.0),
         f.s2c(0.3, "ESTABLISHED", flags="PA", seq=5001, ack=1001, load=OK, ip_id=900, fast=True),
         Step(icmp_frame(MACS[C4], DIR_CMAC, C4, VIP, 3, 4, ip_of(seen)[:n], mtu=1400, ip_id=7),
              IF_C, 0.4, Verdict.FORWARD, IF_S,
              output=icmp_frame(DIR_SMAC, MACS[RS1], C4, RS1, 3, 4, ip_of(orig)[:n], mtu=1400, ip_id=7,
                                ttl=63),
              conns=(f.conn("ESTABLISHED"),),
              note="outer dst VIP->RS; quoted src VIP:80->RS:8080 with its IP and TCP checksums"))

    u = udp_flow(C4, 53005)
    seen = u.server_out(load=ANSWER, ip_id=901)
    orig = u.server_in(load=ANSWER, ip_id=901, ttl=63)
    case("icmp port-unreachable from the client about a UDP reply (8-byte quote) goes to the "
         "real server", "lab",
         u.c2s(0.0, "UDP", load=QUERY),
         u.s2c(0.1, "UDP", load=ANSWER, ip_id=901),
         Step(icmp_frame(MACS[C4], DIR_CMAC, C4, VIP, 3, 3, ip_of(seen)[:28], ip_id=8),
              IF_C, 0.2, Verdict.FORWARD, IF_S,
              output=icmp_frame(DIR_SMAC, MACS[DNS1], C4, DNS1, 3, 3, ip_of(orig)[:28], ip_id=8, ttl=63),
              note="the quoted UDP checksum is within the 8 bytes and is updated too"))

    u = udp_flow(C4, 53006)
    seen = u.client_out(load=QUERY, ip_id=902)
    orig = u.client_in(load=QUERY, ip_id=902, ttl=63)
    case("icmp port-unreachable from the real server about a client datagram goes to the client "
         "from the VIP", "lab",
         u.c2s(0.0, "UDP", load=QUERY, ip_id=902),
         Step(icmp_frame(MACS[DNS1], DIR_SMAC, DNS1, C4, 3, 3, ip_of(seen)[:28], ip_id=9),
              IF_S, 0.1, Verdict.FORWARD, IF_C,
              output=icmp_frame(DIR_CMAC, MACS[C4], VIP, C4, 3, 3, ip_of(orig)[:28], ip_id=9, ttl=63),
              conns=(u.conn("UDP"),)))

    u = udp_flow(C4, 53009)
    seen = u.server_out(load=ANSWER, ip_id=904, udp_chksum=0)
    orig = u.server_in(load=ANSWER, ip_id=904, ttl=63, udp_chksum=0)
    case("icmp error quoting a UDP datagram sent without checksum leaves the quoted checksum 0", "lab",
         u.c2s(0.0, "UDP", load=QUERY, udp_chksum=0),
         u.s2c(0.1, "UDP", load=ANSWER, ip_id=904, udp_chksum=0, fast=True),
         Step(icmp_frame(MACS[C4], DIR_CMAC, C4, VIP, 3, 3, ip_of(seen)[:28], ip_id=12),
              IF_C, 0.2, Verdict.FORWARD, IF_S,
              output=icmp_frame(DIR_SMAC, MACS[DNS1], C4, DNS1, 3, 3, ip_of(orig)[:28], ip_id=12, ttl=63)))

    f = nat_flow(C4, 43002)
    seen = f.client_out(flags="PA", seq=1001, ack=5001, load=GET, ip_id=903, ttl=2)    # ttl 1 at router
    orig = f.client_in(flags="PA", seq=1001, ack=5001, load=GET, ip_id=903, ttl=1)
    case("icmp time-exceeded from a server-side router about a client segment goes to the client "
         "from the VIP", "lab",
         f.handshake(0.0),
         f.c2s(0.3, "ESTABLISHED", flags="PA", seq=1001, ack=5001, load=GET, ip_id=903, ttl=2, fast=True),
         Step(icmp_frame(MACS[ROUTER_S], DIR_SMAC, ROUTER_S, C4, 11, 0, ip_of(seen)[:28], ip_id=10),
              IF_S, 0.4, Verdict.FORWARD, IF_C,
              output=icmp_frame(DIR_CMAC, MACS[C4], VIP, C4, 11, 0, ip_of(orig)[:28], ip_id=10, ttl=63),
              note="as IPVS does, the outer source becomes the VIP whoever sent the error"))

    stray = bytes(IP(src=VIP, dst=C1, ttl=63) / TCP(sport=80, dport=9, flags="SA"))[:28]
    case("icmp errors about unknown flows: to a VIP dropped, to anyone else passed", "lab",
         drop_step(icmp_frame(MACS[C1], DIR_CMAC, C1, VIP, 3, 3, stray), DropReason.NO_CONN),
         pass_step(icmp_frame(MACS[C1], DIR_CMAC, C1, DIR_CADDR, 3, 3, stray)))

    f = nat_flow(C4, 43003)
    seen = f.server_out(flags="SA", seq=5000, ack=1001)
    case("icmp error with a bad checksum is dropped", "lab",
         f.handshake(0.0),
         drop_step(icmp_frame(MACS[C4], DIR_CMAC, C4, VIP, 3, 4, ip_of(seen)[:28], mtu=1400, chksum=0x1234),
                   DropReason.BAD_ICMP_CHECKSUM, now=0.3, conns=(f.conn("ESTABLISHED"),)))

    bad_inner = bytearray(ip_of(f.server_out(flags="SA", seq=5000, ack=1001))[:28])
    bad_inner[0] = 0x65
    case("icmp error quoting less than an IP header + 8 bytes, or not IPv4, is dropped", "lab",
         drop_step(icmp_frame(MACS[C4], DIR_CMAC, C4, VIP, 3, 4, seen[14:14 + 24]), DropReason.BAD_ICMP),
         drop_step(icmp_frame(MACS[C4], DIR_CMAC, C4, VIP, 3, 4, seen[14:14 + 12]), DropReason.BAD_ICMP),
         drop_step(icmp_frame(MACS[C4], DIR_CMAC, C4, VIP, 3, 4, bytes(bad_inner)), DropReason.BAD_ICMP))

    case("icmp echo to a VIP is not an error about a connection: passed", "lab",
         pass_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=VIP) / ICMP(type=8, id=1, seq=1)
                         / Raw(b"ping"))))

    f = nat_flow(C4, 43004)
    seen = f.server_out(flags="PA", seq=5001, ack=1001, load=OK)
    case("icmp error with TTL 1 is dropped without an ICMP error about it (RFC 1122 3.2.2)", "lab",
         f.handshake(0.0),
         drop_step(icmp_frame(MACS[C4], DIR_CMAC, C4, VIP, 3, 4, ip_of(seen)[:28], mtu=1400, ttl=1),
                   DropReason.TTL_EXCEEDED, now=0.3, conns=(f.conn("ESTABLISHED"),)))

    # ---- direct routing -------------------------------------------------------------------------
    d = dr_flow(C1, 44001)
    case("tcp droute handshake, data, FIN: only the MACs change, INPUT_ONLY states", "lab",
         d.c2s(0.0, "SYN_RECV", flags="S", seq=1000),
         d.c2s(0.2, "ESTABLISHED", flags="A", seq=1001, ack=5001),
         d.c2s(0.3, "ESTABLISHED", flags="PA", seq=1001, ack=5001, load=GET, df=True, fast=True),
         d.c2s(0.5, "FIN_WAIT", flags="FA", seq=1001 + len(GET), ack=5026),
         d.c2s(0.6, "FIN_WAIT", flags="A", seq=1002 + len(GET), ack=5027,
               note="INPUT_ONLY: the server's FIN is never seen, FIN_WAIT holds until expiry"))

    d1, d2 = dr_flow(C1, 44101, DR1), dr_flow(C2, 44102, DR2)
    case("tcp droute round robin over two dests", "lab",
         d1.c2s(0.0, flags="S", seq=1, conns=(d1.conn("SYN_RECV"),)),
         d2.c2s(0.1, flags="S", seq=2, conns=(d1.conn("SYN_RECV"), d2.conn("SYN_RECV"))))

    d = dr_flow(C2, 44201)
    reply = bytes(Ether(src=DIR_CMAC, dst=MACS[C2]) / IP(src=VIP_DR, dst=C2, ttl=64)
                  / TCP(sport=80, dport=44201, flags="PA", seq=5001, ack=1001) / Raw(OK))
    err = icmp_frame(MACS[C2], DIR_CMAC, C2, VIP_DR, 3, 4, ip_of(reply)[:48], mtu=1400, ip_id=11)
    case("icmp frag-needed to a droute VIP follows the connection to its real server, unchanged", "lab",
         d.c2s(0.0, flags="S", seq=1000),
         d.c2s(0.1, "ESTABLISHED", flags="A", seq=1001, ack=5001),
         Step(err, IF_C, 0.2, Verdict.FORWARD, IF_S,
              output=bytes(Ether(src=DIR_SMAC, dst=MACS[DR1], type=0x0800)) + err[14:],
              conns=(d.conn("ESTABLISHED"),)))

    # ---- not ours ---------------------------------------------------------------------------------
    case("non-IP frames are passed: ARP, tagged ARP, IPv6", "lab",
         pass_step(bytes(Ether(src=MACS[C1], dst="ff:ff:ff:ff:ff:ff")
                         / ARP(op=1, hwsrc=MACS[C1], psrc=C1, pdst=VIP))),
         pass_step(bytes(Ether(src=MACS[C1], dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=10)
                         / ARP(op=1, hwsrc=MACS[C1], psrc=C1, pdst=VIP))),
         pass_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IPv6(src="fd00::1", dst="fd00::2")
                         / UDP(sport=1, dport=53))))

    case("IPv4 not for a VIP, or not TCP/UDP/ICMP, is passed", "lab",
         pass_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst="10.77.1.50")
                         / TCP(sport=1234, dport=80, flags="S"))),
         pass_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst="10.77.1.50")
                         / UDP(sport=1234, dport=53) / Raw(QUERY))),
         pass_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=VIP, proto=47)
                         / Raw(b"\x00\x00\x08\x00gre"))),
         pass_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=DIR_CADDR)
                         / TCP(sport=1234, dport=22, flags="S"))))

    # ---- fragments and malformed input ----------------------------------------------------------
    f = nat_flow(C1, 45001)
    first = bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=VIP, flags="MF", id=77)
                  / TCP(sport=45001, dport=80, flags="S") / Raw(b"x" * 24))
    later = bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=VIP, frag=6, id=77, proto=6)
                  / Raw(b"y" * 24))
    from_rs = bytes(Ether(src=MACS[RS1], dst=DIR_SMAC) / IP(src=RS1, dst=C1, frag=100, proto=6)
                    / Raw(b"z" * 16))
    other = bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst="10.77.1.50", flags="MF")
                  / UDP(sport=1, dport=2) / Raw(b"w" * 16))
    case("fragments are not reassembled: dropped when ours, passed otherwise", "lab",
         drop_step(first, DropReason.FRAGMENT, conns=()),
         drop_step(later, DropReason.FRAGMENT, now=0.1),
         drop_step(from_rs, DropReason.FRAGMENT, IF_S, 0.2, note="from a masq dest"),
         pass_step(other, now=0.3))

    syn = f.client_in(flags="S", seq=1)
    ip = ip_of(syn)
    opts6 = bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=VIP, options=list(nops))
                  / TCP(sport=45001, dport=80, flags="S"))
    case("truncated frames are dropped", "lab",
         drop_step(b"", DropReason.TRUNCATED),
         drop_step(syn[:10], DropReason.TRUNCATED),
         drop_step(syn[:14], DropReason.TRUNCATED, note="Ethernet header only"),
         drop_step(syn[:14 + 19], DropReason.TRUNCATED, note="IPv4 header cut"),
         drop_step(opts6[:14 + 22], DropReason.TRUNCATED, note="IPv4 options cut"),
         drop_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC, type=0x8100)) + b"\x00", DropReason.TRUNCATED,
                   note="802.1Q tag cut"))

    case("IPv4 with a version other than 4 is dropped", "lab",
         drop_step(syn[:14] + bytes([0x65]) + ip[1:], DropReason.BAD_VERSION),
         drop_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC, type=0x0800) / IPv6(src="fd00::1", dst="fd00::2")
                         / UDP(sport=1, dport=2)), DropReason.BAD_VERSION, note="IPv6 sent as 0x0800"))

    case("IPv4 with IHL < 5 is dropped", "lab",
         drop_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=VIP, ihl=4)
                         / TCP(sport=45001, dport=80, flags="S")), DropReason.BAD_IHL),
         drop_step(syn[:14] + bytes([0x40]) + ip[1:], DropReason.BAD_IHL))

    case("IPv4 whose total length disagrees with the frame is dropped", "lab",
         drop_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=VIP, len=41)
                         / TCP(sport=45001, dport=80, flags="S")), DropReason.BAD_TOTAL_LENGTH,
                   note="one byte longer than captured (the fast path's check)"),
         drop_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=VIP, len=19)
                         / TCP(sport=45001, dport=80, flags="S")), DropReason.BAD_TOTAL_LENGTH,
                   note="shorter than its own header"),
         drop_step(syn[:-1], DropReason.BAD_TOTAL_LENGTH, note="TCP header cut by capture"))

    u = udp_flow(C1, 53007)
    case("bad TCP data offset or UDP length is dropped", "lab",
         drop_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=VIP)
                         / TCP(sport=45001, dport=80, flags="S", dataofs=4)), DropReason.BAD_L4_HEADER),
         drop_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=VIP)
                         / TCP(sport=45001, dport=80, flags="S", dataofs=6)), DropReason.BAD_L4_HEADER,
                   note="options run past the end of the packet"),
         drop_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=VIP)
                         / TCP(sport=45001, dport=80, flags="S"))[:14 + 30], DropReason.BAD_TOTAL_LENGTH,
                   note="(cut by capture: total length first)"),
         drop_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=VIP)
                         / UDP(sport=1, dport=53, len=4) / Raw(b"abcd")), DropReason.BAD_L4_HEADER),
         drop_step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=VIP)
                         / UDP(sport=1, dport=53, len=40) / Raw(b"abcd")), DropReason.BAD_L4_HEADER),
         u.c2s(0.1, "UDP", load=QUERY),
         Step(bytes(Ether(src=MACS[C1], dst=DIR_CMAC) / IP(src=C1, dst=VIP)
                    / UDP(sport=53007, dport=53, len=7) / Raw(b"abcd")), IF_C, 0.2, Verdict.DROP,
              reason=DropReason.BAD_L4_HEADER, conns=(u.conn("UDP"),),
              note="established flow: the fast path refers it to the slow path"))

    # ---- policy drops -------------------------------------------------------------------------------
    f = nat_flow(C1, 46001)
    case("no dest available (all weight 0): dropped", "lab-quiesced",
         f.c_drop(0.0, DropReason.NO_DEST, conns=(), flags="S", seq=1))

    f, g = nat_flow(C1, 46101, RS1), nat_flow(C2, 46102, RS2)
    case("connection table full of established connections: new flows dropped", "lab-limit1",
         f.handshake(0.0),
         g.c_drop(0.3, DropReason.CONN_TABLE_FULL, conns=(f.conn("ESTABLISHED"),), flags="S", seq=1),
         udp_flow(C2, 46103).c_drop(0.4, DropReason.CONN_TABLE_FULL, conns=(f.conn("ESTABLISHED"),),
                                    load=QUERY),
         f.c2s(0.5, "ESTABLISHED", flags="PA", seq=1001, ack=5001, load=GET, fast=True))

    f, g = nat_flow(C1, 46201, RS1), nat_flow(C2, 46202, RS2)
    case("connection table full: an embryonic (SYN_RECV) entry is evicted for a new flow", "lab-limit1",
         f.c2s(0.0, "SYN_RECV", flags="S", seq=1),
         g.c2s(0.1, "SYN_RECV", flags="S", seq=2, conns=(g.conn("SYN_RECV"),)),
         f.c_drop(0.2, DropReason.NO_CONN, conns=(g.conn("SYN_RECV"),), flags="A", seq=2, ack=6))

    f, f2, g = nat_flow(C1, 46301, RS1), nat_flow(C1, 46301, RS2), nat_flow(C2, 46302, RS2)
    rs1 = (TCP_SVC, IPv4Address(RS1), 8080)
    case("dest deleted under a connection: dest_gone drops both ways; re-adding it revives the "
         "connection", "lab",
         f.handshake(0.0),
         f.c_drop(0.3, DropReason.DEST_GONE, "ESTABLISHED", flags="PA", seq=1001, ack=5001, load=GET,
                  ctl=(Ctl("del_dest", rs1),)),
         f.s_drop(0.4, DropReason.DEST_GONE, "ESTABLISHED", flags="PA", seq=5001, ack=1001, load=OK),
         g.c2s(0.5, flags="S", seq=1, conns=(f.conn("ESTABLISHED"), g.conn("SYN_RECV")),
               note="new flows go to the remaining dests"),
         f.c2s(0.6, "ESTABLISHED", flags="PA", seq=1001, ack=5001, load=GET, fast=True,
               conns=(f.conn("ESTABLISHED"), g.conn("SYN_RECV")),
               ctl=(Ctl("add_dest", (TCP_SVC, DestConfig(IPv4Address(RS1), 8080, method=FwdMethod.MASQ))),)),
         f.s2c(0.7, flags="PA", seq=5001, ack=1001 + len(GET), load=OK, fast=True,
               conns=(f.conn("ESTABLISHED"), g.conn("SYN_RECV")),
               note="replies flow again too"))

    case("dest deleted with expire_nodest_conn: the next packet expires the connection", "lab-expire-nodest",
         f.handshake(0.0),
         f.c_drop(0.3, DropReason.DEST_GONE, conns=(), flags="PA", seq=1001, ack=5001, load=GET,
                  ctl=(Ctl("del_dest", rs1),)),
         f.c_drop(0.4, DropReason.NO_CONN, conns=(), flags="PA", seq=1001, ack=5001, load=GET),
         f2.c2s(0.5, "SYN_RECV", flags="S", seq=3000,
                note="the client retries: rr continues after the deleted dest"))

    f = nat_flow(C1, 46401)
    d = dr_flow(C2, 46402)
    case("dest without a known next hop: neigh_unresolved until set_neighbor", "lab-unresolved",
         f.c_drop(0.0, DropReason.NEIGH_UNRESOLVED, "SYN_RECV", flags="S", seq=1),
         f.c2s(1.0, "SYN_RECV", flags="S", seq=1, note="the retransmitted SYN goes out",
               ctl=(Ctl("set_neighbor", (IPv4Address(RS1), IF_S, mac(MACS[RS1]), mac(DIR_SMAC))),)),
         d.c_drop(1.1, DropReason.NEIGH_UNRESOLVED, conns=(f.conn("SYN_RECV"), d.conn("SYN_RECV")),
                  flags="S", seq=2))

    u = udp_flow(C3, 53008)
    case("udp nat flow idle for just under the 300 s timeout is still forwarded", "lab",
         u.c2s(10.0, "UDP", load=QUERY),
         u.s2c(10.5, "UDP", load=ANSWER, fast=True),
         u.c2s(310.0, "UDP", load=QUERY, fast=True, note="299.5 s after the answer"))

    f = nat_flow(C4, 46501)
    synced = ConnRecord(proto=6, fwd=0, state=1, caddr=IPv4Address(C4).packed, cport=46501,
                        vaddr=IPv4Address(VIP).packed, vport=80, daddr=IPv4Address(RS1).packed, dport=8080,
                        fwmark=0, timeout=900)
    case("a NAT connection synced from the peer director: replies are dropped (sync_unlearned) until "
         "the client's first packet shows the way back", "lab",
         f.s_drop(0.0, DropReason.SYNC_UNLEARNED, "ESTABLISHED", flags="PA", seq=5001, ack=1001, load=OK,
                  ctl=(Ctl("apply_sync", ((synced,), 0.0)),)),
         f.c2s(0.1, "ESTABLISHED", flags="PA", seq=1001, ack=5001, load=GET,
               note="the slow path learns the client's interface and MACs"),
         f.s2c(0.2, "ESTABLISHED", flags="PA", seq=5001, ack=1001 + len(GET), load=OK, fast=True),
         f.c2s(0.3, "ESTABLISHED", flags="A", seq=1001 + len(GET), ack=5001 + len(OK), fast=True))

    return cases


CASES: tuple[Case, ...] = tuple(_cases())


def case_by_num(num: int) -> Case:
    return CASES[num - 1]


def drop_reasons_covered() -> set[DropReason]:
    return {s.reason for c in CASES for s in c.steps if s.reason is not None}


def apply_ctl(core: Core, ctl: Ctl) -> None:
    getattr(core, ctl.method)(*ctl.args)


__all__ = [
    "CASES", "TOPOLOGIES", "Case", "Ctl", "Flow", "Step", "Topology", "apply_ctl", "build_core",
    "case_by_num", "conn_line", "drop_reasons_covered",
]
