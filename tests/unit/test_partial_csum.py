"""CHECKSUM_PARTIAL (virtio_net_hdr NEEDS_CSUM) frames: NAT moves the seed by the address delta.

A partial frame's TCP/UDP checksum field holds the uncomplemented pseudo-header sum (the seed);
the device (or the kernel, segmenting a GSO frame) later sums the L4 bytes onto it. After NAT
the seed must be exactly the seed of the rewritten addresses, whatever length convention the
sender used. Once the checksum is completed in software, it must match a full recompute.
"""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from ulvs.core import Core, DestConfig, FwdMethod, Proto, ServiceConfig, Verdict
from ulvs.packet import builder
from ulvs.packet.checksum import checksum, fold, pseudo_header_sum

A = ipaddress.IPv4Address
CMAC, DMAC, RMAC, LMAC = "02:00:00:00:01:01", "02:00:00:00:01:fe", "02:00:00:00:02:01", "02:00:00:00:02:fe"
VIP = "10.77.1.100"


def make_core(proto: Proto, daddr: str, dport: int, vport: int) -> Core:
    core = Core()
    svc = core.add_service(ServiceConfig(proto, A(VIP), vport, sched="rr"))
    core.add_dest(svc.config.key, DestConfig(A(daddr), dport, method=FwdMethod.MASQ))
    core.set_neighbor(A(daddr), 2, builder.mac(RMAC), builder.mac(LMAC))
    return core


def to_partial(frame: bytes, proto: int, full_length: bool) -> bytearray:
    """The frame as a stack using checksum offload hands it over: field = seed."""
    f = bytearray(frame)
    tot = struct.unpack_from("!H", f, 16)[0]
    l4len = tot - 20
    coff = 34 + (16 if proto == 6 else 6)
    seed = fold(pseudo_header_sum(bytes(f[26:30]), bytes(f[30:34]), proto, l4len if full_length else 0))
    struct.pack_into("!H", f, coff, seed)
    return f


def check(f: bytearray, proto: int, full_length: bool) -> None:
    tot = struct.unpack_from("!H", f, 16)[0]
    coff = 34 + (16 if proto == 6 else 6)
    want_seed = fold(pseudo_header_sum(bytes(f[26:30]), bytes(f[30:34]), proto,
                                       tot - 20 if full_length else 0))
    assert struct.unpack_from("!H", f, coff)[0] == want_seed
    if full_length:
        # complete it as the device would: ~(seed + sum of the L4 bytes with the field as is)
        done = bytearray(f)
        seed = struct.unpack_from("!H", done, coff)[0]
        struct.pack_into("!H", done, coff, 0)
        c = checksum(done, 34, 14 + tot, seed)
        struct.pack_into("!H", done, coff, c or (0xFFFF if proto == 17 else 0))
        pkt = Ether(bytes(done))
        layer = pkt[TCP] if proto == 6 else pkt[UDP]
        got = layer.chksum
        del layer.chksum
        del pkt[IP].chksum
        assert Ether(bytes(pkt))[TCP if proto == 6 else UDP].chksum == got
        assert Ether(bytes(pkt))[IP].chksum == Ether(bytes(done))[IP].chksum


addr = st.integers(0x0A4D0001, 0x0A4DFFFE).map(lambda i: str(A(i)))
port = st.integers(1, 65535)


@settings(max_examples=150, deadline=None)
@given(caddr=addr, cport=port, daddr=addr, dport=port, vport=port,
       payload=st.binary(min_size=0, max_size=600), full_length=st.booleans())
def test_tcp_partial_seed_follows_nat_both_paths(caddr: str, cport: int, daddr: str, dport: int, vport: int,
                                                 payload: bytes, full_length: bool) -> None:
    if caddr in (daddr, VIP) or daddr == VIP:
        return
    core = make_core(Proto.TCP, daddr, dport, vport)
    one = bytes([1])
    # SYN (new-flow path), SYN-ACK back (slow path, out), ACK (slow path: state change)
    syn = to_partial(builder.tcp_frame(CMAC, DMAC, caddr, VIP, cport, vport, 0x02), 6, full_length)
    core.process_batch([syn], [0], [len(syn)], [1], 1, 0.0, one)
    assert core.verdicts[0] == Verdict.FORWARD
    check(syn, 6, full_length)
    sa = to_partial(builder.tcp_frame(RMAC, LMAC, daddr, caddr, dport, cport, 0x12), 6, full_length)
    core.process_batch([sa], [0], [len(sa)], [2], 1, 0.0, one)
    check(sa, 6, full_length)
    ack = to_partial(builder.tcp_frame(CMAC, DMAC, caddr, VIP, cport, vport, 0x10), 6, full_length)
    core.process_batch([ack], [0], [len(ack)], [1], 1, 0.0, one)
    # established data both ways: the fast path
    for frame, ifin in ((builder.tcp_frame(CMAC, DMAC, caddr, VIP, cport, vport, 0x18, payload), 1),
                        (builder.tcp_frame(RMAC, LMAC, daddr, caddr, dport, cport, 0x18, payload), 2)):
        f = to_partial(frame, 6, full_length)
        core.process_batch([f], [0], [len(f)], [ifin], 1, 0.0, one)
        assert core.verdicts[0] == Verdict.FORWARD
        check(f, 6, full_length)


@settings(max_examples=100, deadline=None)
@given(caddr=addr, cport=port, daddr=addr, dport=port, payload=st.binary(min_size=0, max_size=600),
       full_length=st.booleans())
def test_udp_partial_seed_follows_nat(caddr: str, cport: int, daddr: str, dport: int, payload: bytes,
                                      full_length: bool) -> None:
    if caddr in (daddr, VIP) or daddr == VIP:
        return
    core = make_core(Proto.UDP, daddr, dport, 53)
    one = bytes([1])
    for _ in range(2):   # first datagram: new-flow path; second: fast path
        f = to_partial(builder.udp_frame(CMAC, DMAC, caddr, VIP, cport, 53, payload), 17, full_length)
        core.process_batch([f], [0], [len(f)], [1], 1, 0.0, one)
        assert core.verdicts[0] == Verdict.FORWARD
        check(f, 17, full_length)
    r = to_partial(builder.udp_frame(RMAC, LMAC, daddr, caddr, dport, cport, payload), 17, full_length)
    core.process_batch([r], [0], [len(r)], [2], 1, 0.0, one)
    assert core.verdicts[0] == Verdict.FORWARD
    check(r, 17, full_length)
