"""Weighted least-connection, the default scheduler (ip_vs_wlc.c): minimise overhead/weight.

Rule: least := the first dest with weight > 0 that is not overloaded; every later dest d that is
not overloaded replaces it when overhead(least)*w(d) > overhead(d)*w(least), with overhead =
activeconns*256 + inactconns.  So the winner is the argmin of overhead/weight, ties to the first
in list order, and weight 0 never wins.  The argmin is kept in a heap keyed by (ratio, position)
(see ``_least`` for why float ratios are exact here) and updated from the hooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ulvs.sched._least import EXACT_OVERHEAD_LIMIT, IndexedScheduler
from ulvs.sched.base import register

if TYPE_CHECKING:
    from ulvs.core.model import Dest


class WeightedLeastConnection(IndexedScheduler):
    name = "wlc"

    def key(self, dest: Dest) -> float | None:
        w = dest.weight
        if w <= 0 or dest.overloaded:
            return None
        oh = (dest.activeconns << 8) + dest.inactconns
        if oh >= EXACT_OVERHEAD_LIMIT:
            self._exact = True
        return oh / w

    def scan(self) -> Dest | None:
        return wlc_scan(self.dests)

    def conn_changed(self, dest: Dest) -> None:
        i = dest.index
        dests = self.dests
        if i < len(dests) and dests[i] is dest:
            w = dest.weight
            if w <= 0 or dest.overloaded:
                self._idx.set(i, None)
                return
            oh = (dest.activeconns << 8) + dest.inactconns
            if oh >= EXACT_OVERHEAD_LIMIT:
                self._exact = True
            self._idx.set(i, oh / w)

    def schedule(self, caddr: int, cport: int, vaddr: int, vport: int) -> Dest | None:
        if self._exact:
            return wlc_scan(self.dests)
        i = self._idx.top()
        return self.dests[i] if i >= 0 else None


def wlc_scan(dests: Iterable[Dest]) -> Dest | None:
    """The IPVS wlc loop, with integer cross-multiplication (reference and overflow fallback)."""
    least: Dest | None = None
    loh = 0
    for d in dests:
        if d.overloaded:
            continue
        doh = (d.activeconns << 8) + d.inactconns
        if least is None:
            if d.weight > 0:
                least, loh = d, doh
        elif loh * d.weight > doh * least.weight:   # h1/w1 > h2/w2 without division
            least, loh = d, doh
    return least


register("wlc", WeightedLeastConnection)
