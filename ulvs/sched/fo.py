"""Weighted failover (ip_vs_fo.c): every new connection goes to the heaviest available dest.

Rule: the dest with the highest weight among those not overloaded (weight > 0); a later dest
wins only with a strictly greater weight, so ties go to the first in list order.  The choice
only depends on weights and overload flags, so it is cached and recomputed in the dest hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ulvs.sched.base import Scheduler, register

if TYPE_CHECKING:
    from ulvs.core.model import Dest


class WeightedFailover(Scheduler):
    name = "fo"

    def __init__(self, flags: frozenset[str] = frozenset()) -> None:
        super().__init__(flags)
        self._best: Dest | None = None

    def rebuild(self, dests: Sequence[Dest]) -> None:
        self.dests = dests
        self._best = fo_scan(dests)

    def add_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.dests = dests
        best = self._best
        if dests and dests[-1] is dest:
            # Appended last: it wins only with a strictly greater weight.
            if not dest.overloaded and dest.weight > (best.weight if best is not None else 0):
                self._best = dest
        else:
            self.rebuild(dests)

    def del_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.dests = dests
        if dest is self._best:
            self._best = fo_scan(dests)

    def upd_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.rebuild(dests)

    def schedule(self, caddr: int, cport: int, vaddr: int, vport: int) -> Dest | None:
        return self._best


def fo_scan(dests: Sequence[Dest]) -> Dest | None:
    """The IPVS fo loop: highest weight, strictly greater replaces."""
    best: Dest | None = None
    hw = 0
    for d in dests:
        if not d.overloaded and d.weight > hw:
            best, hw = d, d.weight
    return best


register("fo", WeightedFailover)
