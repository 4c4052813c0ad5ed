"""Weighted overflow (ip_vs_ovf.c): the heaviest dest that still has room.

Rule: among dests with weight > 0, not overloaded and activeconns <= weight, take the highest
weight; ties go to the first in list order.  When the heaviest dest fills up (activeconns >
weight) new connections overflow to the next heaviest.  Unsuitable for UDP (no active conns).
Kept as a lazy heap keyed by (-weight, position); eligibility changes in ``conn_changed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ulvs.sched._least import IndexedScheduler
from ulvs.sched.base import register

if TYPE_CHECKING:
    from ulvs.core.model import Dest


class WeightedOverflow(IndexedScheduler):
    name = "ovf"

    def key(self, dest: Dest) -> float | None:
        w = dest.weight
        if w <= 0 or dest.overloaded or dest.activeconns > w:
            return None
        return -w

    def scan(self) -> Dest | None:
        h: Dest | None = None
        for d in self.dests:
            w = d.weight
            if d.overloaded or d.activeconns > w or w == 0:
                continue
            if h is None or w > h.weight:                 # strict: ties stay with the first
                h = d
        return h

    def conn_changed(self, dest: Dest) -> None:
        i = dest.index
        dests = self.dests
        if i < len(dests) and dests[i] is dest:
            w = dest.weight
            self._idx.set(i, None if w <= 0 or dest.overloaded or dest.activeconns > w else -w)

    def schedule(self, caddr: int, cport: int, vaddr: int, vport: int) -> Dest | None:
        i = self._idx.top()
        return self.dests[i] if i >= 0 else None


register("ovf", WeightedOverflow)
