"""Least-connection (ip_vs_lc.c): the dest with the smallest overhead wins.

Rule: among dests with weight != 0 that are not overloaded, minimise overhead =
activeconns*256 + inactconns; ties go to the first dest in list order.  The scan's answer is kept
in a heap keyed by (overhead, position) and updated from ``conn_changed``/``upd_dest``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ulvs.sched._least import IndexedScheduler
from ulvs.sched.base import register

if TYPE_CHECKING:
    from ulvs.core.model import Dest


class LeastConnection(IndexedScheduler):
    name = "lc"

    def key(self, dest: Dest) -> float | None:
        if dest.weight == 0 or dest.overloaded:
            return None
        return (dest.activeconns << 8) + dest.inactconns      # exact integer key

    def scan(self) -> Dest | None:
        least: Dest | None = None
        loh = 0
        for d in self.dests:
            if d.overloaded or d.weight == 0:
                continue
            doh = (d.activeconns << 8) + d.inactconns
            if least is None or doh < loh:                      # strict: ties stay with the first
                least, loh = d, doh
        return least

    def conn_changed(self, dest: Dest) -> None:
        i = dest.index
        dests = self.dests
        if i < len(dests) and dests[i] is dest:
            self._idx.set(i, None if dest.weight == 0 or dest.overloaded
                          else (dest.activeconns << 8) + dest.inactconns)

    def schedule(self, caddr: int, cport: int, vaddr: int, vport: int) -> Dest | None:
        i = self._idx.top()
        return self.dests[i] if i >= 0 else None


register("lc", LeastConnection)
