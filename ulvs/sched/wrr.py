"""Weighted round-robin (ip_vs_wrr.c): a cursor and a current weight ``cw`` walk the dest list.

Rule: di = gcd of the positive weights (1 if none), mw = max weight - (di - 1), cw starts at mw.
From the cursor, take the next dest that is not overloaded with weight >= cw; on wrapping past
the head cw -= di, and when cw <= 0 it restarts at mw.  A cycle gives each dest weight/di picks,
heaviest first (weights 4,3,2 -> A A B A B C A B C).  On any dest change the cursor returns to
the head and cw is clamped (cw > mw or cw == 0 -> mw; else with di > 1, cw := (cw/di)*di + 1).
When every dest is overloaded the kernel gives up after one pass with cw <= di over all dests;
that bookkeeping (``last_pass``/``restarted``/``stop``) is reproduced exactly because it decides
where the cursor is left.

The kernel finds "the next dest after p with weight >= cw" by walking the list.  Here that
query is answered by bisection: for every distinct weight v the sorted positions of dests with
weight >= v are precomputed, so a step costs two bisections instead of a walk, and runs of
passes that cannot find anything (cw above every available weight) are skipped arithmetically.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from math import gcd
from typing import TYPE_CHECKING

from ulvs.sched.base import Scheduler, register

if TYPE_CHECKING:
    from ulvs.core.model import Dest

_HEAD = -1      # cursor value for the list head (before the first dest)
_NONE = -2      # no stop dest


class WeightedRoundRobin(Scheduler):
    name = "wrr"

    def __init__(self, flags: frozenset[str] = frozenset()) -> None:
        super().__init__(flags)
        self._cl = _HEAD          # position of the last chosen dest (ip_vs_wrr_mark.cl)
        self._cw = 0              # current weight
        self._mw = 0              # max weight - (di - 1)
        self._di = 1              # gcd of the positive weights
        self._levels: list[int] = []          # distinct positive weights, ascending
        self._members: list[list[int]] = []   # positions with weight >= _levels[k], ascending
        self._weights: list[int] = []         # weights the levels were built from
        self._overloaded: list[bool] = []     # overload flags seen by the last hook
        self._dirty = True                    # levels need rebuilding
        self._max_avail = -1                  # max weight among available dests, -1 = unknown

    # -- dest hooks ---------------------------------------------------------------------------
    def rebuild(self, dests: Sequence[Dest]) -> None:
        """init_service: cursor at the head, cw = mw."""
        self._dest_changed(dests)
        self._cw = self._mw

    def add_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self._dest_changed(dests)

    def del_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self._dest_changed(dests)

    def upd_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        i = dest.index
        if (i < len(self._weights) and i < len(dests) and dests[i] is dest
                and self._weights[i] == dest.weight and self._overloaded[i] != dest.overloaded):
            # Only the overload flag flipped.  IPVS sets that flag without calling the
            # scheduler, so the cursor must not move; the level lists check it live.
            self._overloaded[i] = dest.overloaded
            self._max_avail = -1
            return
        self._dest_changed(dests)

    def _dest_changed(self, dests: Sequence[Dest]) -> None:
        self.dests = dests
        self._cl = _HEAD
        g = 0
        mx = 0
        for d in dests:
            w = d.weight
            if w > 0:
                g = gcd(g, w)
            if w > mx:
                mx = w
        di = g or 1
        self._di = di
        self._mw = mw = mx - (di - 1)
        cw = self._cw
        if cw > mw or cw == 0:
            self._cw = mw
        elif di > 1:
            self._cw = (cw // di) * di + 1
        self._weights = [d.weight for d in dests]
        self._overloaded = [d.overloaded for d in dests]
        self._dirty = True
        self._max_avail = -1

    def _build_levels(self) -> None:
        weights = self._weights
        levels = sorted({w for w in weights if w > 0})
        by_weight = sorted(range(len(weights)), key=weights.__getitem__, reverse=True)
        members: list[list[int]] = []
        # Walk levels from the heaviest down, growing the member set; each list is sorted.
        acc: list[int] = []
        j = 0
        for v in reversed(levels):
            while j < len(by_weight) and weights[by_weight[j]] >= v:
                acc.append(by_weight[j])
                j += 1
            acc.sort()
            members.append(list(acc))
        members.reverse()
        self._levels = levels
        self._members = members
        self._dirty = False

    def _avail_max(self) -> int:
        m = self._max_avail
        if m < 0:
            m = 0
            for d in self.dests:
                if not d.overloaded and d.weight > m:
                    m = d.weight
            self._max_avail = m
        return m

    def _next(self, pos: int, cw: int) -> int:
        """First position after ``pos`` whose dest has weight >= cw and is not overloaded."""
        levels = self._levels
        k = bisect_left(levels, cw)
        if k == len(levels):
            return -1
        lst = self._members[k]
        j = bisect_right(lst, pos)
        dests = self.dests
        n = len(lst)
        while j < n:
            i = lst[j]
            if not dests[i].overloaded:
                return i
            j += 1
        return -1

    # -- scheduling ---------------------------------------------------------------------------
    def schedule(self, caddr: int, cport: int, vaddr: int, vport: int) -> Dest | None:
        if self._dirty:
            self._build_levels()
        mw = self._mw
        if mw <= 0:
            return None                                    # no dest with weight > 0
        di = self._di
        cw = self._cw
        last = pos = self._cl
        stop = _NONE
        last_pass = restarted = False
        nxt = self._next
        while True:
            q = nxt(pos, cw)
            if stop != _NONE and pos < stop and (q < 0 or q > stop):
                self._cl, self._cw = stop, cw              # walked back to 'last': give up
                return None
            if q >= 0:
                self._cl, self._cw = q, cw
                return self.dests[q]
            # Wrapped past the head.
            cw -= di
            if cw <= 0:
                cw = mw
                if last_pass or last == _HEAD:
                    self._cl, self._cw = _HEAD, cw         # every dest checked for weight >= 1
                    return None
                restarted = True
            last_pass = cw <= di
            if last_pass and restarted and last != _HEAD:
                stop = last
            pos = _HEAD
            if stop == _NONE:
                # Whole-list passes with cw above every available weight find nothing: skip
                # them, stopping while cw is still above max(avail, di) so that the last_pass /
                # restart bookkeeping of the remaining passes runs as in the kernel.
                floor = max(self._avail_max(), di)
                if cw - di > floor:
                    cw -= ((cw - floor - 1) // di) * di
                    last_pass = False


register("wrr", WeightedRoundRobin)
