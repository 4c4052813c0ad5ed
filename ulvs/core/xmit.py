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
"""

from __future__ import annotations

import struct
from typing import Any

from ulvs.packet.checksum import TTL_DEC_DELTA, apply_delta, delta, words
from ulvs.packet.layouts import IPPROTO_TCP, IPPROTO_UDP

(P_KIND, P_EG, P_L2, P_AOFF, P_A4, P_POFF, P_PORT, P_DIP, P_DL4, P_DPART, P_SI, P_DEST, P_OKA,
 P_OKP) = range(14)
KIND_DR = 0
KIND_NAT = 1
NO_L2 = bytes(12)

_U16 = struct.Struct("!H")
_BBH = struct.Struct("!BBH")
_S4 = struct.Struct("4s")
_S12 = struct.Struct("12s")


def nat_in_plan(vaddr: bytes, vport: int, daddr: bytes, dport: int, si: int, dest: Any) -> list[Any]:
    """Client -> real server: destination vaddr:vport becomes daddr:dport."""
    va, da = words(vaddr), words(daddr)
    return [KIND_NAT, -1, NO_L2, 16, daddr, 2, dport,
            delta(va, da, TTL_DEC_DELTA), delta(va + [vport], da + [dport]), delta(va, da), si * 2,
            dest, daddr, _U16.pack(dport)]


def nat_out_plan(vaddr: bytes, vport: int, daddr: bytes, dport: int, si: int, dest: Any,
                 egress: int, l2: bytes) -> list[Any]:
    """Real server -> client: source daddr:dport becomes vaddr:vport, back the way it came."""
    va, da = words(vaddr), words(daddr)
    return [KIND_NAT, egress, l2, 12, vaddr, 0, vport,
            delta(da, va, TTL_DEC_DELTA), delta(da + [dport], va + [vport]), delta(da, va), si * 2 + 1,
            dest, b"", b""]


def dr_plan(si: int, dest: Any) -> list[Any]:
    """Direct routing: the IP packet is untouched, only the MACs change."""
    return [KIND_DR, -1, NO_L2, 0, b"", 0, 0, 0, 0, 0, si * 2, dest, b"", b""]


def set_l2(plan: list[Any], egress: int, dst_mac: bytes, src_mac: bytes) -> None:
    plan[P_EG] = egress
    plan[P_L2] = dst_mac + src_mac


def rewrite_plain(buf: Any, off: int, proto: int, plan: list[Any], ttl: int, ipc: int, l4c: int,
                  partial: bool = False) -> None:
    """``rewrite`` for an untagged IPv4 frame without options whose TTL, IP checksum and L4
    checksum the caller already read (the new-flow entry from the fast path)."""
    kind, _eg, l2, aoff, a4, poff, port, dip, dl4, dpart = plan[:10]
    if kind == KIND_NAT:
        c = (ipc ^ 0xFFFF) + dip
        _BBH.pack_into(buf, off + 22, ttl - 1, proto, ((c & 0xFFFF) + (c >> 16)) ^ 0xFFFF)
        _S4.pack_into(buf, off + 14 + aoff, a4)
        _U16.pack_into(buf, off + 34 + poff, port)
        if partial:
            s = l4c + dpart
            _U16.pack_into(buf, off + (50 if proto == IPPROTO_TCP else 40), (s & 0xFFFF) + (s >> 16))
        elif proto == IPPROTO_TCP:
            c = (l4c ^ 0xFFFF) + dl4
            _U16.pack_into(buf, off + 50, ((c & 0xFFFF) + (c >> 16)) ^ 0xFFFF)
        elif l4c:  # UDP with a checksum
            c = (l4c ^ 0xFFFF) + dl4
            _U16.pack_into(buf, off + 40, (((c & 0xFFFF) + (c >> 16)) ^ 0xFFFF) or 0xFFFF)
    _S12.pack_into(buf, off, l2)


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
