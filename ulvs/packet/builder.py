"""Frame builder for the demo, benchmarks and ICMP errors the core emits.

Builds Ethernet/IPv4/TCP|UDP|ICMP frames with correct checksums.  Tests use scapy as an
independent oracle rather than this module.
"""

import ipaddress
import struct

from ulvs.packet.checksum import checksum, pseudo_header_sum
from ulvs.packet.layouts import (
    ETH,
    ETH_P_8021Q,
    ETH_P_IP,
    ICMP,
    IP4,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    TCP,
    UDP,
)


def ip4(addr: str | bytes | int) -> bytes:
    """4 network-order bytes for an IPv4 address given as text, bytes or int."""
    if isinstance(addr, bytes):
        if len(addr) != 4:
            raise ValueError(f"IPv4 address must be 4 bytes, got {len(addr)}")
        return addr
    return ipaddress.IPv4Address(addr).packed


def mac(addr: str | bytes) -> bytes:
    """6 bytes for a MAC given as 'aa:bb:cc:dd:ee:ff' or bytes."""
    if isinstance(addr, bytes):
        if len(addr) != 6:
            raise ValueError(f"MAC address must be 6 bytes, got {len(addr)}")
        return addr
    b = bytes.fromhex(addr.replace(":", "").replace("-", ""))
    if len(b) != 6:
        raise ValueError(f"bad MAC address {addr!r}")
    return b


def eth(dst: str | bytes, src: str | bytes, ethertype: int = ETH_P_IP, vlan: int | None = None) -> bytes:
    if vlan is None:
        return ETH.pack(mac(dst), mac(src), ethertype)
    return ETH.pack(mac(dst), mac(src), ETH_P_8021Q) + struct.pack("!HH", vlan, ethertype)


def ipv4(src: str | bytes, dst: str | bytes, proto: int, payload: bytes, ttl: int = 64,
         ident: int = 0, frag: int = 0, options: bytes = b"", tos: int = 0) -> bytes:
    if len(options) % 4:
        raise ValueError("IPv4 options must be padded to 32 bits")
    ihl = 5 + len(options) // 4
    hdr = bytearray(IP4.pack(0x40 | ihl, tos, ihl * 4 + len(payload), ident, frag, ttl, proto, 0,
                             ip4(src), ip4(dst)) + options)
    struct.pack_into("!H", hdr, 10, checksum(hdr))
    return bytes(hdr) + payload


def tcp(src: str | bytes, dst: str | bytes, sport: int, dport: int, flags: int, payload: bytes = b"",
        seq: int = 0, ack: int = 0, window: int = 65535) -> bytes:
    """A TCP segment (header + payload) with its checksum over the IPv4 pseudo-header."""
    seg = bytearray(TCP.pack(sport, dport, seq, ack, 5 << 4, flags, window, 0, 0) + payload)
    c = checksum(seg, initial=pseudo_header_sum(ip4(src), ip4(dst), IPPROTO_TCP, len(seg)))
    struct.pack_into("!H", seg, 16, c)
    return bytes(seg)


def udp(src: str | bytes, dst: str | bytes, sport: int, dport: int, payload: bytes = b"",
        with_checksum: bool = True) -> bytes:
    dg = bytearray(UDP.pack(sport, dport, 8 + len(payload), 0) + payload)
    if with_checksum:
        c = checksum(dg, initial=pseudo_header_sum(ip4(src), ip4(dst), IPPROTO_UDP, len(dg)))
        struct.pack_into("!H", dg, 6, c or 0xFFFF)  # RFC 768: a computed 0 is sent as all ones
    return bytes(dg)


def icmp(itype: int, code: int, body: bytes, rest: bytes = b"\0\0\0\0") -> bytes:
    msg = bytearray(ICMP.pack(itype, code, 0, rest) + body)
    struct.pack_into("!H", msg, 2, checksum(msg))
    return bytes(msg)


def tcp_frame(smac: str | bytes, dmac: str | bytes, src: str | bytes, dst: str | bytes, sport: int,
              dport: int, flags: int, payload: bytes = b"", ttl: int = 64, seq: int = 0, ack: int = 0,
              vlan: int | None = None) -> bytes:
    seg = tcp(src, dst, sport, dport, flags, payload, seq=seq, ack=ack)
    return eth(dmac, smac, vlan=vlan) + ipv4(src, dst, IPPROTO_TCP, seg, ttl=ttl)


def udp_frame(smac: str | bytes, dmac: str | bytes, src: str | bytes, dst: str | bytes, sport: int,
              dport: int, payload: bytes = b"", ttl: int = 64, with_checksum: bool = True) -> bytes:
    dg = udp(src, dst, sport, dport, payload, with_checksum)
    return eth(dmac, smac) + ipv4(src, dst, IPPROTO_UDP, dg, ttl=ttl)


def icmp_error_frame(smac: str | bytes, dmac: str | bytes, src: str | bytes, dst: str | bytes,
                     itype: int, code: int, quoted_ip: bytes, rest: bytes = b"\0\0\0\0",
                     ttl: int = 64) -> bytes:
    """An ICMP error quoting ``quoted_ip`` (an IP packet; its header + 8 bytes are kept)."""
    ihl = (quoted_ip[0] & 0x0F) * 4
    body = quoted_ip[: ihl + 8]
    return eth(dmac, smac) + ipv4(src, dst, IPPROTO_ICMP, icmp(itype, code, body, rest), ttl=ttl)
