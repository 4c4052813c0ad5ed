"""The batch loop: established IPv4 TCP/UDP flows, rewritten in place (per-packet speed code).

For each frame the loop reads the Ethernet type, the IPv4 header, the connection key and the
L4 fields it needs with ONE precompiled ``unpack_from`` at a fixed offset, finds the connection
by the packet's own 12 key bytes, and applies the connection's precomputed plan: new MACs, the
new address and port, and both checksums moved by stored RFC 1624 deltas (TTL decrement folded
in).  No objects are created per packet beyond the unpacked tuple and key; counters are array
slots; verdicts go into a preallocated bytearray.  With the flow log on, the connection's own
packet and byte counters are added to as well (``count_flows``, read once per batch: while off,
that test is the whole cost).

Anything unusual -- not untagged IPv4, IP options, fragments, a header that does not add up,
TTL about to expire, a TCP segment with SYN/FIN/RST or a connection not yet ESTABLISHED (both
change state), a miss, an unresolved next hop -- is handed to the slow path (``Core._slow``),
which makes the same decisions slowly and completely.  Tests require byte-identical output from
both paths.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ulvs.core.engine import Core

# At the Ethernet type (frame offset 12): ethertype (as two bytes), ver/ihl, total length, flags
# + fragment offset (as two bytes), ttl, protocol, IP checksum, key = saddr|daddr|sport|dport,
# UDP length, UDP checksum, TCP data offset, TCP flags, TCP checksum.  40 bytes, so frames
# shorter than 52 bytes go slow.  Single bytes come back as cached small ints (no allocation).
_FAST = struct.Struct("!BBBxHxxBBBBH12sHHxxxxBBxxH")
_MIN = 12 + _FAST.size
_BBH = struct.Struct("!BBH")
_U16 = struct.Struct("!H")
_S4 = struct.Struct("4s")
_S12 = struct.Struct("12s")


def process_batch(self: Core, bufs: Any, offs: Any, lens: Any, ifins: Any, count: int,
                  now: float, partial: Any) -> None:
    """The body of ``Core.process_batch`` (see there); ``self`` is the Core."""
    t = self.table
    tcp_in, tcp_out, udp_in, udp_out = t.tcp_in, t.tcp_out, t.udp_in, t.udp_out
    state, last, iplan, oplan = t.state, t.last, t.iplan, t.oplan
    spk, sby = self.stats.pkts, self.stats.bytes
    count_flows, fpk, fby = self._count_flows, t.fpkts, t.fbytes   # flow log: per-conn counters
    verdicts, egress = self.verdicts, self.egress
    vips, masq_addrs = self.vips, self.masq_addrs
    unpack = _FAST.unpack_from
    pack_bbh, pack_u16, pack4, pack12 = _BBH.pack_into, _U16.pack_into, _S4.pack_into, _S12.pack_into
    slow = self._slow
    new_flow = self._new_flow
    stamp = t.ticks(now)
    minlen = _MIN
    for j, buf, off, n in zip(range(count), bufs, offs, lens, strict=False):
        if n < minlen:
            slow(j, buf, off, n, ifins[j], now)
            continue
        e1, e2, vi, tl, f1, f2, ttl, pr, ipc, key, ulen, uc, doff, fl, tc = unpack(buf, off + 12)
        if e1 != 8 or e2 or vi != 0x45 or f1 & 0x3F or f2 or tl > n - 14:  # IPv4, IHL 5, no MF/offset
            slow(j, buf, off, n, ifins[j], now)
            continue
        if pr == 6:
            i = tcp_in.get(key)
            if i is None:
                i = tcp_out.get(key)
                if i is None:
                    if key[4:8] in vips:
                        if fl & 0x17 == 2 and tl >= 40 and doff >= 0x50 and (doff >> 2) + 20 <= tl:
                            self._len = n
                            self._tl = tl
                            new_flow(j, buf, off, key, 6, ttl, ipc, tc, ifins[j], now)  # pure SYN
                        else:
                            slow(j, buf, off, n, ifins[j], now)
                    elif key[0:4] in masq_addrs:
                        slow(j, buf, off, n, ifins[j], now)
                    else:
                        verdicts[j] = 2  # PASS: not ours
                    continue
                pl = oplan[i]
            else:
                pl = iplan[i]
            if state[i] != 1 or fl & 7 or doff < 0x50 or (doff >> 2) + 20 > tl:  # implies tl >= 40
                slow(j, buf, off, n, ifins[j], now)
                continue
            kind, eg, l2, ao, a4, po, port, dip, dl4, _dp, si, _d, _oa, _op = pl
            if eg < 0 or (kind and ttl <= 1):
                slow(j, buf, off, n, ifins[j], now)
                continue
            if kind:
                c = (ipc ^ 0xFFFF) + dip
                pack_bbh(buf, off + 22, ttl - 1, 6, ((c & 0xFFFF) + (c >> 16)) ^ 0xFFFF)
                pack4(buf, off + 14 + ao, a4)
                pack_u16(buf, off + 34 + po, port)
                if partial[j]:   # CHECKSUM_PARTIAL seed: add the address words only
                    c = tc + _dp
                    pack_u16(buf, off + 50, (c & 0xFFFF) + (c >> 16))
                else:
                    c = (tc ^ 0xFFFF) + dl4
                    pack_u16(buf, off + 50, ((c & 0xFFFF) + (c >> 16)) ^ 0xFFFF)
        elif pr == 17:
            i = udp_in.get(key)
            if i is None:
                i = udp_out.get(key)
                if i is None:
                    if key[4:8] in vips:
                        if 8 <= ulen <= tl - 20:
                            self._len = n
                            self._tl = tl
                            new_flow(j, buf, off, key, 17, ttl, ipc, uc, ifins[j], now)
                        else:
                            slow(j, buf, off, n, ifins[j], now)
                    elif key[0:4] in masq_addrs:
                        slow(j, buf, off, n, ifins[j], now)
                    else:
                        verdicts[j] = 2
                    continue
                pl = oplan[i]
            else:
                pl = iplan[i]
            kind, eg, l2, ao, a4, po, port, dip, dl4, _dp, si, _d, _oa, _op = pl
            if eg < 0 or (kind and ttl <= 1) or ulen < 8 or ulen > tl - 20:
                slow(j, buf, off, n, ifins[j], now)
                continue
            if kind:
                c = (ipc ^ 0xFFFF) + dip
                pack_bbh(buf, off + 22, ttl - 1, 17, ((c & 0xFFFF) + (c >> 16)) ^ 0xFFFF)
                pack4(buf, off + 14 + ao, a4)
                pack_u16(buf, off + 34 + po, port)
                if partial[j]:
                    c = uc + _dp
                    pack_u16(buf, off + 40, (c & 0xFFFF) + (c >> 16))
                elif uc:
                    c = (uc ^ 0xFFFF) + dl4
                    c = ((c & 0xFFFF) + (c >> 16)) ^ 0xFFFF
                    pack_u16(buf, off + 40, c or 0xFFFF)
        else:
            slow(j, buf, off, n, ifins[j], now)
            continue
        pack12(buf, off, l2)
        last[i] = stamp
        spk[si] += 1
        sby[si] += tl
        if count_flows:    # the flow log's one test per packet; its rows: slot*2 + direction
            k = i + i + (si & 1)
            fpk[k] += 1  # type: ignore[index]
            fby[k] += tl  # type: ignore[index]
        verdicts[j] = 1
        egress[j] = eg
