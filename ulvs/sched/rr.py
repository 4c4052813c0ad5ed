"""Round-robin (ip_vs_rr.c).

A cursor walks the circular dest list; each new connection goes to the first available dest
after the cursor, which then becomes the cursor.  Deleting the cursor dest moves the cursor to
its predecessor so the rotation continues where it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ulvs.sched.base import Scheduler, register

if TYPE_CHECKING:
    from ulvs.core.model import Dest


class RoundRobin(Scheduler):
    name = "rr"

    def __init__(self, flags: frozenset[str] = frozenset()) -> None:
        super().__init__(flags)
        self._cursor = -1          # index of the last chosen dest, -1 = before the head

    def del_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        # dest.index is its position before removal.
        if dest.index <= self._cursor:
            self._cursor -= 1
        self.dests = dests

    def add_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.dests = dests

    def upd_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.dests = dests

    def schedule(self, caddr: int, cport: int, vaddr: int, vport: int) -> Dest | None:
        dests = self.dests
        n = len(dests)
        if not n:
            return None
        start = self._cursor
        for step in range(1, n + 1):
            i = (start + step) % n
            d = dests[i]
            if d.weight > 0 and not d.overloaded:
                self._cursor = i
                return d
        return None


register("rr", RoundRobin)
