"""Shortest expected delay (ip_vs_sed.c): wlc with overhead = activeconns + 1.

Rule: minimise (activeconns + 1)/weight over dests with weight > 0 that are not overloaded,
compared as (Ca+1)*Wb > (Cb+1)*Wa; ties go to the first dest in list order.  Inactive conns do
not count.  Kept as a heap keyed by (ratio, position), updated from the hooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ulvs.sched._least import EXACT_OVERHEAD_LIMIT, IndexedScheduler
from ulvs.sched.base import register

if TYPE_CHECKING:
    from ulvs.core.model import Dest


class ShortestExpectedDelay(IndexedScheduler):
    name = "sed"

    def key(self, dest: Dest) -> float | None:
        w = dest.weight
        if w <= 0 or dest.overloaded:
            return None
        oh = dest.activeconns + 1
        if oh >= EXACT_OVERHEAD_LIMIT:
            self._exact = True
        return oh / w

    def scan(self) -> Dest | None:
        return sed_scan(self.dests)

    def conn_changed(self, dest: Dest) -> None:
        i = dest.index
        dests = self.dests
        if i < len(dests) and dests[i] is dest:
            w = dest.weight
            if w <= 0 or dest.overloaded:
                self._idx.set(i, None)
                return
            oh = dest.activeconns + 1
            if oh >= EXACT_OVERHEAD_LIMIT:
                self._exact = True
            self._idx.set(i, oh / w)

    def schedule(self, caddr: int, cport: int, vaddr: int, vport: int) -> Dest | None:
        if self._exact:
            return sed_scan(self.dests)
        i = self._idx.top()
        return self.dests[i] if i >= 0 else None


def sed_scan(dests: Iterable[Dest]) -> Dest | None:
    """The IPVS sed loop (reference and overflow fallback)."""
    least: Dest | None = None
    loh = 0
    for d in dests:
        if d.overloaded:
            continue
        doh = d.activeconns + 1
        if least is None:
            if d.weight > 0:
                least, loh = d, doh
        elif loh * d.weight > doh * least.weight:
            least, loh = d, doh
    return least


register("sed", ShortestExpectedDelay)
