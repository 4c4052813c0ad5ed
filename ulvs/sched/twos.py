"""Power of two choices (ip_vs_twos.c, Linux 5.12): two weighted random picks, the less loaded wins.

Rule: over dests with weight > 0 that are not overloaded, total = sum of weights; r1, r2 are
uniform in [0, total]; walking the list subtracting weights, choice k is the first dest where
rk <= 0 (the first whose running weight sum reaches rk).  choice2 wins if
w2*overhead1 > w1*overhead2 (overhead = activeconns*256 + inactconns), else choice1.
The running sums are precomputed in the dest hooks; a pick is a bisection.  The random source is
injected (``random.Random``) so tests and simulations are reproducible.
"""

from __future__ import annotations

import copy
import random
from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from ulvs.sched.base import Scheduler, register

if TYPE_CHECKING:
    from ulvs.core.model import Dest


class TwoRandomChoices(Scheduler):
    name = "twos"

    def __init__(self, flags: frozenset[str] = frozenset(), rng: random.Random | None = None) -> None:
        super().__init__(flags)
        self._rng = rng if rng is not None else random.Random()
        self._random = self._rng.random        # bound once: a C method, called twice a pick
        self._eligible: list[Dest] = []
        self._cum: list[int] = []

    def __deepcopy__(self, memo: dict[int, Any]) -> TwoRandomChoices:
        # copy.deepcopy treats a C method such as Random.random as atomic, so a plain deep copy
        # would keep drawing from *this* generator (Scheduler.peek would advance it).  Copy
        # the generator and bind the copy's method to it.
        clone = copy.copy(self)
        memo[id(self)] = clone
        for name, value in vars(self).items():
            if name != "_random":
                setattr(clone, name, copy.deepcopy(value, memo))
        clone._random = clone._rng.random
        return clone

    def rebuild(self, dests: Sequence[Dest]) -> None:
        self.dests = dests
        self._eligible = [d for d in dests if d.weight > 0 and not d.overloaded]
        self._cum = list(accumulate(d.weight for d in self._eligible))

    def add_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.rebuild(dests)

    def del_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.rebuild(dests)

    def upd_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.rebuild(dests)

    def schedule(self, caddr: int, cport: int, vaddr: int, vport: int) -> Dest | None:
        cum = self._cum
        if not cum:
            return None
        total1 = cum[-1] + 1
        rnd = self._random
        eligible = self._eligible
        d1 = eligible[bisect_left(cum, int(rnd() * total1))]
        d2 = eligible[bisect_left(cum, int(rnd() * total1))]
        if d2.weight * ((d1.activeconns << 8) + d1.inactconns) > \
                d1.weight * ((d2.activeconns << 8) + d2.inactconns):
            return d2
        return d1


register("twos", TwoRandomChoices)
