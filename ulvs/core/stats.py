"""Counters: per-dest traffic rows, per-service totals, drops by reason.

The packet path increments preallocated slots (plain lists: an int in a list is incremented
about twice as fast as one in an ``array``).  Row ``sid`` of a dest holds its in (index sid*2)
and out (sid*2+1) packets and bytes plus its connection count.

Passive health (ulvs): per masq dest, the new TCP connections sent to it (``syns``, counted
when the core binds one) and how many the dest answered, with a SYN-ACK (``synacks``) or a RST
(``rsts``), counted once per connection by ``Core._count_answer`` (from ``_tcp_change`` or the
slow path), which sees every segment of a connection that is not yet ESTABLISHED.  The
established fast path never touches them.  The health monitor turns their deltas into ejection
samples (``ulvs.health.policy.Sample``).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from ulvs.core.verdict import NUM_DROP_REASONS, DropReason


@dataclass(frozen=True, slots=True)
class Counters:
    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    syns: int = 0         # new TCP connections sent to a masq dest
    synacks: int = 0      # of those, answered by the dest with a SYN-ACK
    rsts: int = 0         # of those, answered by the dest with a RST

    def __add__(self, o: Counters) -> Counters:
        return Counters(self.conns + o.conns, self.inpkts + o.inpkts, self.outpkts + o.outpkts,
                        self.inbytes + o.inbytes, self.outbytes + o.outbytes, self.syns + o.syns,
                        self.synacks + o.synacks, self.rsts + o.rsts)


class StatsTable:
    """Rows of traffic counters handed out to dests; freed rows are zeroed and reused."""

    def __init__(self) -> None:
        self.pkts: list[int] = []    # [sid*2 + dir]
        self.bytes: list[int] = []   # [sid*2 + dir]
        self.conns: list[int] = []   # [sid]
        self.syns: list[int] = []    # [sid]
        self.synacks: list[int] = []  # [sid]
        self.rsts: list[int] = []    # [sid]
        self.drops = array("Q", bytes(8 * NUM_DROP_REASONS))
        self._free: list[int] = []

    def alloc(self) -> int:
        if self._free:
            return self._free.pop()
        sid = len(self.conns)
        self.pkts.extend((0, 0))
        self.bytes.extend((0, 0))
        self.conns.append(0)
        self.syns.append(0)
        self.synacks.append(0)
        self.rsts.append(0)
        return sid

    def release(self, sid: int) -> None:
        self.zero(sid)
        self._free.append(sid)

    def zero(self, sid: int) -> None:
        self.pkts[sid * 2] = self.pkts[sid * 2 + 1] = 0
        self.bytes[sid * 2] = self.bytes[sid * 2 + 1] = 0
        self.conns[sid] = 0
        self.syns[sid] = self.synacks[sid] = self.rsts[sid] = 0

    def row(self, sid: int) -> Counters:
        return Counters(self.conns[sid], self.pkts[sid * 2], self.pkts[sid * 2 + 1],
                        self.bytes[sid * 2], self.bytes[sid * 2 + 1], self.syns[sid],
                        self.synacks[sid], self.rsts[sid])

    def drop_counts(self) -> dict[str, int]:
        return {r.label: self.drops[r] for r in DropReason}
