"""Rewrite plans and transmit functions (after ip_vs_xmit.c and ip_vs_bind_xmit).

A *plan* is everything a packet of one connection direction needs, computed once when the
connection is bound and shared by every connection with the same (dest, vaddr, vport) -- and, for
NAT replies, the same return path.  Plans are plain lists so the fast path can unpack them in one
step and the control plane can patch the L2 fields in place when a neighbour changes.

Plan fields (indices ``P_*``):

  KIND   DR (only MACs change) or NAT (addresses, ports and checksums too)
  EG     egress interface index, -1 while the next hop is unresolved
  L2     12 bytes: new destination MAC + new source MAC
  AOFF   offset of the address to replace, from the IPv4 header (16 = daddr, 12 = saddr)
  A4     the new address (4 bytes)
  POFF   offset of the port to replace, from the L4 header (2 = dport, 0 = sport)
  PORT   the new port
  DIP    RFC 1624 delta for the IP checksum: address words + TTL decrement
  DL4    delta for the TCP/UDP checksum: pseudo-header address words + port word
  DPART  delta for a CHECKSUM_PARTIAL seed: address words only (the port lies in the range the
         device sums itself, so it must not be added; see REFERENCE "CHECKSUM_PARTIAL")
  SI     statistics row: dest stats index * 2 + direction (0 in, 1 out)
  DEST   the dest (ulvs.core.model.Dest) this plan forwards to or from
  OKA    in plans of NAT dests: daddr bytes, the head of the connection's out key
  OKP    in plans of NAT dests: dport bytes, the third field of the out key
  EIP    ~DIP: the same change as a one's complement *subtraction* from the field itself
  EL4    ~DL4 (see ``next_sum`` for why the fast path prefers these)

A NAT rewrite of a plain frame (untagged IPv4, no options) writes the first 52 (TCP) or 42
(UDP) bytes with ONE ``pack_into``: the bytes it keeps (the Ethernet type to the IP fragment
field, the address and port that do not change, TCP's sequence numbers to its window) are first
read with one ``unpack_from`` as byte strings (``TCP_IN_KEEP`` ... ``UDP_OUT_KEEP``), then
written back with the new ones around them (``TCP_IN_WRITE`` ...).  Two struct calls instead of
five: each call costs more than the arguments it carries.
"""

from __future__ import annotations

import struct
from typing import Any

from ulvs.packet.checksum import TTL_DEC_DELTA, apply_delta, delta, words
from ulvs.packet.layouts import IPPROTO_TCP, IPPROTO_UDP

(P_KIND, P_EG, P_L2, P_AOFF, P_A4, P_POFF, P_PORT, P_DIP, P_DL4, P_DPART, P_SI, P_DEST, P_OKA,
 P_OKP, P_EIP, P_EL4) = range(16)
KIND_DR = 0
KIND_NAT = 1
NO_L2 = bytes(12)

_U16 = struct.Struct("!H")
_BBH = struct.Struct("!BBH")
_S4 = struct.Struct("4s")
_S12 = struct.Struct("12s")

# The one-call NAT rewrite (module docstring).  Both are read and written at the frame (KEEP
# skips the MACs).  In: daddr (IP offset 16) and dport change; out: saddr
# (IP offset 12) and sport.  WRITE fields: MACs, kept, ttl, proto, IP sum, the addresses and
# ports (capitals: new), kept (TCP) or the UDP length, the L4 sum.
TCP_IN_KEEP = struct.Struct("!12x10s4x4s4x2s2x12s")        # eth type..frag, saddr, sport, seq..window
TCP_IN_WRITE = struct.Struct("!12s10sBBH4s4s2sH12sH")   # sa, DA, sp, DP
TCP_OUT_KEEP = struct.Struct("!12x10s8x4s2x2s12s")         # eth type..frag, daddr, dport, seq..window
TCP_OUT_WRITE = struct.Struct("!12s10sBBH4s4sH2s12sH")  # SA, da, SP, dp
UDP_IN_KEEP = struct.Struct("!12x10s4x4s4x2s")
UDP_IN_WRITE = struct.Struct("!12s10sBBH4s4s2sHHH")     # sa, DA, sp, DP
UDP_OUT_KEEP = struct.Struct("!12x10s8x4s2x2s")
UDP_OUT_WRITE = struct.Struct("!12s10sBBH4s4sH2sHH")    # SA, da, SP, dp
TCP_IN_KEEP_FROM, TCP_IN_WRITE_INTO = TCP_IN_KEEP.unpack_from, TCP_IN_WRITE.pack_into
TCP_OUT_KEEP_FROM, TCP_OUT_WRITE_INTO = TCP_OUT_KEEP.unpack_from, TCP_OUT_WRITE.pack_into
UDP_IN_KEEP_FROM, UDP_IN_WRITE_INTO = UDP_IN_KEEP.unpack_from, UDP_IN_WRITE.pack_into
UDP_OUT_KEEP_FROM, UDP_OUT_WRITE_INTO = UDP_OUT_KEEP.unpack_from, UDP_OUT_WRITE.pack_into


def next_sum(field: int, e: int) -> int:
    """A checksum field moved by a stored change, given as ``e = ~D`` (RFC 1624 eqn. 3,
    HC' = ~(~HC + D), rewritten in one's complement arithmetic as HC' = HC + ~D: two operations
    fewer per packet).  The two forms differ only where the result is zero: eqn. 3 gives 0x0000,
    as a checksum computed afresh would, and the sum 0xFFFF, which is mapped back.  (They would
    also differ for D = 0, an empty change, which no plan has: DIP includes the TTL decrement,
    and DL4 would need vaddr 255.255.255.255 port 65535 to become 0.0.0.0 port 0.)"""
    c = field + e
    c = (c & 0xFFFF) + (c >> 16)
    return 0 if c == 0xFFFF else c


def nat_in_plan(vaddr: bytes, vport: int, daddr: bytes, dport: int, si: int, dest: Any) -> list[Any]:
    """Client -> real server: destination vaddr:vport becomes daddr:dport."""
    va, da = words(vaddr), words(daddr)
    dip, dl4 = delta(va, da, TTL_DEC_DELTA), delta(va + [vport], da + [dport])
    return [KIND_NAT, -1, NO_L2, 16, daddr, 2, dport, dip, dl4, delta(va, da), si * 2,
            dest, daddr, _U16.pack(dport), dip ^ 0xFFFF, dl4 ^ 0xFFFF]


def nat_out_plan(vaddr: bytes, vport: int, daddr: bytes, dport: int, si: int, dest: Any,
                 egress: int, l2: bytes) -> list[Any]:
    """Real server -> client: source daddr:dport becomes vaddr:vport, back the way it came."""
    va, da = words(vaddr), words(daddr)
    dip, dl4 = delta(da, va, TTL_DEC_DELTA), delta(da + [dport], va + [vport])
    return [KIND_NAT, egress, l2, 12, vaddr, 0, vport, dip, dl4, delta(da, va), si * 2 + 1,
            dest, b"", b"", dip ^ 0xFFFF, dl4 ^ 0xFFFF]


def dr_plan(si: int, dest: Any) -> list[Any]:
    """Direct routing: the IP packet is untouched, only the MACs change."""
    return [KIND_DR, -1, NO_L2, 0, b"", 0, 0, 0, 0, 0, si * 2, dest, b"", b"", 0, 0]


def set_l2(plan: list[Any], egress: int, dst_mac: bytes, src_mac: bytes) -> None:
    plan[P_EG] = egress
    plan[P_L2] = dst_mac + src_mac


def rewrite_plain(buf: Any, off: int, proto: int, plan: list[Any], ttl: int, ipc: int, l4c: int,
                  partial: bool = False) -> None:
    """``rewrite`` for an untagged IPv4 frame without options whose TTL, IP checksum and L4
    checksum the caller already read (the new-flow entry from the fast path); the same writes as
    the established fast path (``ulvs.core.fastpath``)."""
    if plan[P_KIND] != KIND_NAT:
        _S12.pack_into(buf, off, plan[P_L2])
        return
    l2, a4, port = plan[P_L2], plan[P_A4], plan[P_PORT]
    ip = next_sum(ipc, plan[P_EIP])
    if partial:
        s = l4c + plan[P_DPART]
        l4 = (s & 0xFFFF) + (s >> 16)
    elif proto == IPPROTO_TCP:
        l4 = next_sum(l4c, plan[P_EL4])
    elif l4c:  # UDP with a checksum: a zero result is sent as 0xFFFF, which is what the sum is
        s = l4c + plan[P_EL4]
        l4 = (s & 0xFFFF) + (s >> 16)
    else:
        l4 = 0
    if proto == IPPROTO_TCP:
        if plan[P_AOFF] == 16:
            m10, sa, sp, mid = TCP_IN_KEEP_FROM(buf, off)
            TCP_IN_WRITE_INTO(buf, off, l2, m10, ttl - 1, proto, ip, sa, a4, sp, port, mid, l4)
        else:
            m10, da, dp, mid = TCP_OUT_KEEP_FROM(buf, off)
            TCP_OUT_WRITE_INTO(buf, off, l2, m10, ttl - 1, proto, ip, a4, da, port, dp, mid, l4)
    else:
        (ulen,) = _U16.unpack_from(buf, off + 38)
        if plan[P_AOFF] == 16:
            m10, sa, sp = UDP_IN_KEEP_FROM(buf, off)
            UDP_IN_WRITE_INTO(buf, off, l2, m10, ttl - 1, proto, ip, sa, a4, sp, port, ulen, l4)
        else:
            m10, da, dp = UDP_OUT_KEEP_FROM(buf, off)
            UDP_OUT_WRITE_INTO(buf, off, l2, m10, ttl - 1, proto, ip, a4, da, port, dp, ulen, l4)


def rewrite(buf: Any, off: int, l3: int, l4: int, proto: int, plan: list[Any],
            partial: bool = False) -> None:
    """Apply ``plan`` to the frame at ``off`` (slow path; any L3/L4 offsets, VLAN, IP options).

    The caller has checked that the frame is long enough and, for NAT, that TTL > 1.
    ``partial``: the L4 checksum field holds a CHECKSUM_PARTIAL seed (vnet_hdr NEEDS_CSUM).
    """
    buf[off:off + 12] = plan[P_L2]
    if plan[P_KIND] == KIND_DR:
        return
    ttl, pr, ipc = _BBH.unpack_from(buf, l3 + 8)
    _BBH.pack_into(buf, l3 + 8, ttl - 1, pr, apply_delta(ipc, plan[P_DIP]))
    aoff = l3 + plan[P_AOFF]
    buf[aoff:aoff + 4] = plan[P_A4]
    _U16.pack_into(buf, l4 + plan[P_POFF], plan[P_PORT])
    if proto == IPPROTO_TCP:
        coff = l4 + 16
    elif proto == IPPROTO_UDP:
        coff = l4 + 6
    else:
        return
    (c,) = _U16.unpack_from(buf, coff)
    if partial:
        s = c + plan[P_DPART]
        _U16.pack_into(buf, coff, (s & 0xFFFF) + (s >> 16))
        return
    if proto == IPPROTO_UDP and c == 0:
        return  # RFC 768: no checksum; leave it so
    c = apply_delta(c, plan[P_DL4])
    if proto == IPPROTO_UDP and c == 0:
        c = 0xFFFF
    _U16.pack_into(buf, coff, c)
