"""Destination hashing (ip_vs_dh.c): a 256-bucket table maps the packet's destination address.

Rule: buckets are filled walking the dest list, one bucket per dest in turn (weights ignored),
cycling until all 256 are set.  Key = the destination address the client asked for (vaddr; for a
transparent cache cluster behind a firewall-mark service, the origin server's address), bucket =
(key * 2654435761 mod 2**32) >> 24.  A dest with weight 0 or overloaded gives no dest (no flags,
no fallback).  The table only changes when dests are added or deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ulvs.sched.base import Scheduler, register
from ulvs.sched.sh import GOLDEN, TAB_SIZE

if TYPE_CHECKING:
    from ulvs.core.model import Dest

_M32 = 0xFFFFFFFF


class DestinationHashing(Scheduler):
    name = "dh"

    def __init__(self, flags: frozenset[str] = frozenset()) -> None:
        super().__init__(flags)
        self._buckets: list[Dest | None] = [None] * TAB_SIZE

    def rebuild(self, dests: Sequence[Dest]) -> None:
        self.dests = dests
        n = len(dests)
        self._buckets = [dests[b % n] for b in range(TAB_SIZE)] if n else [None] * TAB_SIZE

    def upd_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.dests = dests          # weights do not shape the table; availability is read live

    def schedule(self, caddr: int, cport: int, vaddr: int, vport: int) -> Dest | None:
        d = self._buckets[((vaddr * GOLDEN) & _M32) >> 24]
        if d is None or d.weight <= 0 or d.overloaded:
            return None
        return d


register("dh", DestinationHashing)
