"""Source hashing (ip_vs_sh.c): a 256-bucket table maps the client address to a dest.

Rule: buckets are filled walking the dest list, each dest taking max(weight, 1) consecutive
buckets, cycling until all 256 are set (the kernel moves on once ++count >= weight).  Key =
caddr (+ cport with ``sh-port``), bucket = (key * 2654435761 mod 2**32) >> 24.  An unavailable
dest (weight 0 or overloaded) gives no dest, unless ``sh-fallback``: then buckets
(ihash + (ihash + i) mod 256) mod 256, i = 0..255, are probed in turn for an available dest.

The table depends on weights only, so it is rebuilt when a weight changes; overload flips just
refresh the precomputed fallback answer per probe start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ulvs.sched.base import Scheduler, register

if TYPE_CHECKING:
    from ulvs.core.model import Dest

TAB_BITS = 8
TAB_SIZE = 1 << TAB_BITS
_M32 = 0xFFFFFFFF
GOLDEN = 2654435761          # Knuth's multiplicative constant, as IPVS uses


def bucket_of(key: int) -> int:
    """Multiplicative hash of a 32-bit key into the 256 buckets (top bits of key*GOLDEN)."""
    return ((key * GOLDEN) & _M32) >> (32 - TAB_BITS)


def next_available(buckets: Sequence[Dest | None]) -> list[int]:
    """For each start s, the first bucket s, s+1, ... (cyclic) whose dest is available, or -1."""
    n = len(buckets)
    out = [-1] * n
    nxt = -1
    for b in range(2 * n - 1, -1, -1):          # two passes backwards cover the wrap-around
        d = buckets[b % n]
        if d is not None and d.weight > 0 and not d.overloaded:
            nxt = b % n
        if b < n:
            out[b] = nxt
    return out


class SourceHashing(Scheduler):
    name = "sh"

    def __init__(self, flags: frozenset[str] = frozenset()) -> None:
        super().__init__(flags)
        self._port = "sh-port" in flags
        self._fallback = "sh-fallback" in flags
        self._buckets: list[Dest | None] = [None] * TAB_SIZE
        self._weights: list[int] = []
        self._next: list[int] = [-1] * TAB_SIZE

    def rebuild(self, dests: Sequence[Dest]) -> None:
        self.dests = dests
        buckets: list[Dest | None] = [None] * TAB_SIZE
        n = len(dests)
        if n:
            p = count = 0
            for b in range(TAB_SIZE):
                d = dests[p]
                buckets[b] = d
                count += 1
                if count >= d.weight:       # weight 0 still takes one bucket, as in IPVS
                    p = (p + 1) % n
                    count = 0
        self._buckets = buckets
        self._weights = [d.weight for d in dests]
        self._next = next_available(buckets)

    def add_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.rebuild(dests)

    def del_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.rebuild(dests)

    def upd_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        i = dest.index
        if i < len(self._weights) and i < len(dests) and dests[i] is dest and self._weights[i] == dest.weight:
            self.dests = dests
            self._next = next_available(self._buckets)     # only availability changed
        else:
            self.rebuild(dests)

    def schedule(self, caddr: int, cport: int, vaddr: int, vport: int) -> Dest | None:
        key = (caddr + cport) & _M32 if self._port else caddr
        ihash = ((key * GOLDEN) & _M32) >> 24
        d = self._buckets[ihash]
        if d is None:
            return None
        if d.weight > 0 and not d.overloaded:
            return d
        if not self._fallback:
            return None
        # Probe i hits bucket (ihash + (ihash + i) % 256) % 256 = (2*ihash + i) % 256, so the
        # answer is the first available bucket cyclically from 2*ihash.
        start = (ihash << 1) & (TAB_SIZE - 1)
        b = self._next[start]
        if b >= 0:
            d = self._buckets[b]
            if d is not None and d.weight > 0 and not d.overloaded:
                return d
        return self._probe(start)

    def _probe(self, start: int) -> Dest | None:
        """The probe loop itself (used if the precomputed answer is stale)."""
        buckets = self._buckets
        for i in range(TAB_SIZE):
            d = buckets[(start + i) & (TAB_SIZE - 1)]
            if d is not None and d.weight > 0 and not d.overloaded:
                return d
        return None


register("sh", SourceHashing)
