"""The batch loop: established IPv4 TCP/UDP flows, rewritten in place (per-packet speed code).

For each frame the loop reads the Ethernet type, the IPv4 header, the connection key and the
L4 fields it needs with ONE precompiled ``unpack_from`` at a fixed offset, finds the connection
by the packet's own 12 key bytes, and applies the connection's precomputed plan: new MACs (DR:
that is all), and for NAT the new address and port and both checksums moved by stored RFC 1624
changes (TTL decrement folded in), written with one ``pack_into`` after one ``unpack_from`` of
the bytes kept around them (``ulvs.core.xmit``, TCP_IN_KEEP ...).  No objects are created per
packet beyond the unpacked tuples, the key and the kept byte strings; counters are list slots;
verdicts go into a preallocated bytearray.  With the flow log on, the connection's own packet
and byte counters are added to as well (``count_flows``, read once per batch: while off, that
test is the whole cost).

A TCP segment that may move its connection's state (SYN, FIN, RST, or a connection not yet
ESTABLISHED) goes to ``Core._tcp_change`` with the fields read here: the state machine, then the
same rewrite.  A pure SYN that misses the table goes to ``Core._new_flow``.  Anything unusual --
not untagged IPv4, IP options, fragments, a header that does not add up, TTL about to expire, a
miss, an unresolved next hop -- is handed to the slow path (``Core._slow``), which parses the
frame and makes the same decisions slowly and completely.  Tests require byte-identical output
from both paths.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from ulvs.core.xmit import (
    TCP_IN_KEEP_FROM,
    TCP_IN_WRITE_INTO,
    TCP_OUT_KEEP_FROM,
    TCP_OUT_WRITE_INTO,
    UDP_IN_KEEP_FROM,
    UDP_IN_WRITE_INTO,
    UDP_OUT_KEEP_FROM,
    UDP_OUT_WRITE_INTO,
)

if TYPE_CHECKING:
    from ulvs.core.engine import Core

# Read at the frame (the MACs skipped, so no "off + 12" per packet): ethertype (as two bytes),
# ver/ihl, total length, flags + fragment offset (as two bytes), ttl, protocol, IP checksum,
# key = saddr|daddr|sport|dport, UDP length, UDP checksum, TCP data offset, TCP flags, TCP
# checksum.  52 bytes, so shorter frames go slow.  Single bytes come back as cached small ints.
_FAST = struct.Struct("!12xBBBxHxxBBBBH12sHHxxxxBBxxH")
_MIN = _FAST.size
# TCP header length + 20 by the data offset byte, or more than any IP total length when the
# offset is below 5 words: "tl < _TCP_END[doff]" is "doff < 0x50 or (doff >> 2) + 20 > tl" in
# one lookup (the low bits of (doff >> 2) are reserved bits: set, they only send the frame slow).
_TCP_END = tuple((d >> 2) + 20 if d >= 0x50 else 0x10000 for d in range(256))
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
    pack12 = _S12.pack_into
    tcp_in_keep, tcp_in_write = TCP_IN_KEEP_FROM, TCP_IN_WRITE_INTO
    tcp_out_keep, tcp_out_write = TCP_OUT_KEEP_FROM, TCP_OUT_WRITE_INTO
    udp_in_keep, udp_in_write = UDP_IN_KEEP_FROM, UDP_IN_WRITE_INTO
    udp_out_keep, udp_out_write = UDP_OUT_KEEP_FROM, UDP_OUT_WRITE_INTO
    slow = self._slow
    new_flow = self._new_flow
    tcp_change = self._tcp_change
    stamp = t.ticks(now)
    minlen = _MIN
    tcp_end = _TCP_END
    any_partial = partial[:count].count(0) != count   # mostly none: one test a packet, not a lookup
    for j, buf, off, n in zip(range(count), bufs, offs, lens, strict=False):
        if n < minlen:
            slow(j, buf, off, n, ifins[j], now)
            continue
        e1, e2, vi, tl, f1, f2, ttl, pr, ipc, key, ulen, uc, doff, fl, tc = unpack(buf, off)
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
            kind, eg, l2, ao, a4, _po, port, _di, _dl, dp, si, _d, _oa, _op, eip, el4 = pl
            if tl < tcp_end[doff] or eg < 0 or (kind and ttl <= 1):  # the first implies tl >= 40
                slow(j, buf, off, n, ifins[j], now)
                continue
            if state[i] != 1 or fl & 7:   # SYN, FIN, RST, or not ESTABLISHED: the state moves
                self._len = n
                self._ifin = ifins[j]
                tcp_change(j, buf, off, i, pl, fl, ttl, ipc, tc, tl, now)
                continue
            if kind:     # NAT; the sums are ulvs.core.xmit.next_sum, inlined
                c = ipc + eip
                c = (c & 0xFFFF) + (c >> 16)
                if c == 0xFFFF:
                    c = 0
                if any_partial and partial[j]:   # CHECKSUM_PARTIAL seed: add the address words only
                    d = tc + dp
                    d = (d & 0xFFFF) + (d >> 16)
                else:
                    d = tc + el4
                    d = (d & 0xFFFF) + (d >> 16)
                    if d == 0xFFFF:
                        d = 0
                if ao == 16:   # to the dest: daddr and dport change (ka, kp: the saddr and sport kept)
                    m10, ka, kp, mid = tcp_in_keep(buf, off)
                    tcp_in_write(buf, off, l2, m10, ttl - 1, 6, c, ka, a4, kp, port, mid, d)
                else:          # from the dest: saddr and sport change
                    m10, ka, kp, mid = tcp_out_keep(buf, off)
                    tcp_out_write(buf, off, l2, m10, ttl - 1, 6, c, a4, ka, port, kp, mid, d)
            else:
                pack12(buf, off, l2)
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
            kind, eg, l2, ao, a4, _po, port, _di, _dl, dp, si, _d, _oa, _op, eip, el4 = pl
            if eg < 0 or (kind and ttl <= 1) or ulen < 8 or ulen > tl - 20:
                slow(j, buf, off, n, ifins[j], now)
                continue
            if kind:
                c = ipc + eip
                c = (c & 0xFFFF) + (c >> 16)
                if c == 0xFFFF:
                    c = 0
                if any_partial and partial[j]:
                    d = uc + dp
                    d = (d & 0xFFFF) + (d >> 16)
                elif uc:    # a zero result goes out as 0xFFFF (RFC 768), which is what the sum is
                    d = uc + el4
                    d = (d & 0xFFFF) + (d >> 16)
                else:       # no checksum: stays so
                    d = 0
                if ao == 16:
                    m10, ka, kp = udp_in_keep(buf, off)
                    udp_in_write(buf, off, l2, m10, ttl - 1, 17, c, ka, a4, kp, port, ulen, d)
                else:
                    m10, ka, kp = udp_out_keep(buf, off)
                    udp_out_write(buf, off, l2, m10, ttl - 1, 17, c, a4, ka, port, kp, ulen, d)
            else:
                pack12(buf, off, l2)
        else:
            slow(j, buf, off, n, ifins[j], now)
            continue
        last[i] = stamp
        spk[si] += 1
        sby[si] += tl
        if count_flows:    # the flow log's one test per packet; its rows: slot*2 + direction
            k = i + i + (si & 1)
            fpk[k] += 1  # type: ignore[index]
            fby[k] += tl  # type: ignore[index]
        verdicts[j] = 1
        egress[j] = eg
