"""Bounded slow-path parser: Ethernet (+802.1Q) / IPv4 (options via IHL) / TCP, UDP, ICMP.

Every read is length-checked first.  Anything wrong with the input raises one exception,
``Malformed(reason)``, whose reason is a drop-reason label (``ulvs.core.verdict.DropReason``);
the caller turns it into a counted drop.  Only the slow path uses this parser: the fast path
reads established flows with one precompiled struct (``layouts.FAST4``).
"""

from dataclasses import dataclass

from ulvs.packet.layouts import (
    ETH_LEN,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_IP,
    ETHERTYPE,
    ICMP,
    ICMP_LEN,
    ICMP_RELATED,
    IP4,
    IP4_LEN,
    IP_MF,
    IP_OFFMASK,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    TCP,
    TCP_LEN,
    UDP,
    UDP_LEN,
    VLAN_LEN,
)

# Reason labels raised by this parser (each is a DropReason label).
TRUNCATED = "truncated"
BAD_VERSION = "bad_version"
BAD_IHL = "bad_ihl"
BAD_TOTAL_LENGTH = "bad_total_length"
BAD_L4_HEADER = "bad_l4_header"
BAD_ICMP = "bad_icmp"
REASONS = (TRUNCATED, BAD_VERSION, BAD_IHL, BAD_TOTAL_LENGTH, BAD_L4_HEADER, BAD_ICMP)


class Malformed(Exception):
    """The frame cannot be parsed; ``reason`` names the drop reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Inner:
    """The IP header + 8 bytes quoted by an ICMP error (RFC 792), read in its own direction."""

    l3: int          # offset of the quoted IP header in the frame
    ihl: int         # bytes
    proto: int
    saddr: bytes
    daddr: bytes
    sport: int       # 0 when the protocol has no ports
    dport: int
    l4: int          # offset of the quoted transport header


@dataclass(slots=True)
class Frame:
    """What the slow path needs to know about one frame.  Offsets are absolute in the buffer."""

    off: int                 # start of the Ethernet header
    end: int                 # end of the frame (off + captured length)
    ethertype: int           # after any VLAN tags
    l3: int                  # start of the L3 header (off + 14, or + 18 with one VLAN tag)
    vlan_tci: int | None = None
    # IPv4 (ethertype 0x0800 only)
    ihl: int = 0
    tot_len: int = 0
    frag: int = 0            # flags + fragment offset field
    ttl: int = 0
    proto: int = 0
    saddr: bytes = b""
    daddr: bytes = b""
    l4: int = 0              # start of the transport header
    l4_end: int = 0          # l3 + tot_len (padding after it is ignored)
    # TCP / UDP
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    csum_off: int = 0        # absolute offset of the L4 checksum field
    # ICMP
    icmp_type: int = -1
    icmp_code: int = 0
    inner: Inner | None = None

    @property
    def is_fragment(self) -> bool:
        return bool(self.frag & (IP_MF | IP_OFFMASK))


def _need(end: int, pos: int, n: int) -> None:
    if pos + n > end:
        raise Malformed(TRUNCATED)


def parse_frame(buf: bytes | bytearray | memoryview, off: int = 0, length: int | None = None) -> Frame:
    """Parse one Ethernet frame held in buf[off:off+length]; raise Malformed on bad input."""
    end = len(buf) if length is None else off + length
    if end > len(buf):
        raise Malformed(TRUNCATED)
    _need(end, off, ETH_LEN)
    (etype,) = ETHERTYPE.unpack_from(buf, off + 12)
    l3 = off + ETH_LEN
    tci = None
    if etype in (ETH_P_8021Q, ETH_P_8021AD):
        _need(end, l3, VLAN_LEN)
        tci, etype = ETHERTYPE.unpack_from(buf, l3)[0], ETHERTYPE.unpack_from(buf, l3 + 2)[0]
        l3 += VLAN_LEN
    f = Frame(off=off, end=end, ethertype=etype, l3=l3, vlan_tci=tci)
    if etype == ETH_P_IP:
        _parse_ip4(buf, f)
    return f


def _parse_ip4(buf: bytes | bytearray | memoryview, f: Frame) -> None:
    l3, end = f.l3, f.end
    _need(end, l3, IP4_LEN)
    vi, _tos, tot_len, _id, frag, ttl, proto, _csum, saddr, daddr = IP4.unpack_from(buf, l3)
    if vi >> 4 != 4:
        raise Malformed(BAD_VERSION)
    ihl = (vi & 0x0F) * 4
    if ihl < IP4_LEN:
        raise Malformed(BAD_IHL)
    _need(end, l3, ihl)
    if tot_len < ihl or l3 + tot_len > end:
        raise Malformed(BAD_TOTAL_LENGTH)
    f.ihl, f.tot_len, f.frag, f.ttl, f.proto = ihl, tot_len, frag, ttl, proto
    f.saddr, f.daddr = saddr, daddr
    f.l4 = l3 + ihl
    f.l4_end = l3 + tot_len
    if f.is_fragment:
        return  # ports are only in the first fragment; the caller drops fragments
    _parse_l4(buf, f)


def _parse_l4(buf: bytes | bytearray | memoryview, f: Frame) -> None:
    l4, end = f.l4, f.l4_end
    if f.proto == IPPROTO_TCP:
        _need(end, l4, TCP_LEN)
        sport, dport, _seq, _ack, doff, flags, _win, _csum, _urg = TCP.unpack_from(buf, l4)
        hl = (doff >> 4) * 4
        if hl < TCP_LEN or l4 + hl > end:
            raise Malformed(BAD_L4_HEADER)
        f.sport, f.dport, f.tcp_flags, f.csum_off = sport, dport, flags, l4 + 16
    elif f.proto == IPPROTO_UDP:
        _need(end, l4, UDP_LEN)
        sport, dport, ulen, _csum = UDP.unpack_from(buf, l4)
        if ulen < UDP_LEN or l4 + ulen > end:
            raise Malformed(BAD_L4_HEADER)
        f.sport, f.dport, f.csum_off = sport, dport, l4 + 6
    elif f.proto == IPPROTO_ICMP:
        _need(end, l4, ICMP_LEN)
        itype, code, _csum, _rest = ICMP.unpack_from(buf, l4)
        f.icmp_type, f.icmp_code, f.csum_off = itype, code, l4 + 2
        if itype in ICMP_RELATED:
            f.inner = _parse_inner(buf, l4 + ICMP_LEN, end)


def _parse_inner(buf: bytes | bytearray | memoryview, l3: int, end: int) -> Inner:
    """Read the quoted header of an ICMP error: IPv4 header + at least 8 bytes (RFC 792)."""
    if l3 + IP4_LEN > end:
        raise Malformed(BAD_ICMP)
    vi, _tos, _tl, _id, frag, _ttl, proto, _c, saddr, daddr = IP4.unpack_from(buf, l3)
    ihl = (vi & 0x0F) * 4
    if vi >> 4 != 4 or ihl < IP4_LEN or l3 + ihl + 8 > end:
        raise Malformed(BAD_ICMP)
    sport = dport = 0
    l4 = l3 + ihl
    if proto in (IPPROTO_TCP, IPPROTO_UDP) and not (frag & IP_OFFMASK):
        sport, dport = int.from_bytes(buf[l4:l4 + 2], "big"), int.from_bytes(buf[l4 + 2:l4 + 4], "big")
    return Inner(l3=l3, ihl=ihl, proto=proto, saddr=bytes(saddr), daddr=bytes(daddr),
                 sport=sport, dport=dport, l4=l4)
