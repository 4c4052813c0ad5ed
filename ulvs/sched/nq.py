"""Never queue (ip_vs_nq.c): an idle dest if there is one, else shortest expected delay.

Rule: scanning in list order over dests with weight > 0 that are not overloaded, the first with
activeconns == 0 wins at once; otherwise minimise (activeconns + 1)/weight as sed does, ties to
the first.  Two lazy heaps: idle dests keyed by position, and the sed ratio.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ulvs.sched._least import LazyArgmin
from ulvs.sched.base import register
from ulvs.sched.sed import ShortestExpectedDelay

if TYPE_CHECKING:
    from ulvs.core.model import Dest


class NeverQueue(ShortestExpectedDelay):
    name = "nq"

    def __init__(self, flags: frozenset[str] = frozenset()) -> None:
        super().__init__(flags)
        self._idle = LazyArgmin()            # key = position for idle available dests

    @staticmethod
    def _idle_key(i: int, dest: Dest) -> float | None:
        if dest.activeconns == 0 and dest.weight > 0 and not dest.overloaded:
            return i
        return None

    def scan(self) -> Dest | None:
        return nq_scan(self.dests)

    def rebuild(self, dests: Sequence[Dest]) -> None:
        super().rebuild(dests)
        self._idle.reset([self._idle_key(i, d) for i, d in enumerate(dests)])

    def add_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        super().add_dest(dests, dest)           # appends, or rebuilds (which resets _idle too)
        n = len(dests)
        if len(self._idle.keys) == n - 1 and dests[n - 1] is dest:
            self._idle.append(self._idle_key(n - 1, dest))
        elif len(self._idle.keys) != n:
            self.rebuild(dests)

    def _update(self, dest: Dest) -> None:
        i = dest.index
        dests = self.dests
        if i < len(dests) and dests[i] is dest:
            self._idx.set(i, self.key(dest))
            self._idle.set(i, self._idle_key(i, dest))

    def conn_changed(self, dest: Dest) -> None:
        self._update(dest)

    def schedule(self, caddr: int, cport: int, vaddr: int, vport: int) -> Dest | None:
        i = self._idle.top()
        if i >= 0:
            return self.dests[i]
        if self._exact:
            return nq_scan(self.dests)
        i = self._idx.top()
        return self.dests[i] if i >= 0 else None


def nq_scan(dests: Iterable[Dest]) -> Dest | None:
    """The IPVS nq loop (reference and overflow fallback)."""
    least: Dest | None = None
    loh = 0
    for d in dests:
        if d.overloaded or d.weight == 0:
            continue
        doh = d.activeconns + 1
        if d.activeconns == 0:
            return d
        if least is None or loh * d.weight > doh * least.weight:
            least, loh = d, doh
    return least


register("nq", NeverQueue)
