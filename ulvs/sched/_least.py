"""Shared index for the least-connection family: an argmin over dests kept up to date by the hooks.

IPVS scans every dest on every new connection (ip_vs_lc.c, ip_vs_wlc.c, ...).  A scan over 512
dests costs ~30 µs in CPython, so the schedulers here keep the scan's *answer* instead: each dest
has a key (e.g. overhead/weight) that only changes in ``conn_changed``/``upd_dest``, and a heap
returns the smallest ``(key, position)``.  Ordering by position breaks ties towards the first dest
in list order, which is what the strict ``<``/``>`` comparisons of the IPVS loops do.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from heapq import heapify, heappop, heappush, heapreplace
from typing import TYPE_CHECKING

from ulvs.sched.base import Scheduler

if TYPE_CHECKING:
    from ulvs.core.model import Dest

# Float keys h/w order exactly like the integer test h1*w2 > h2*w1 while h*w stays below 2**52:
# distinct ratios then differ by at least 1/(w1*w2), more than one ulp, and equal ratios round to
# the same double (division is correctly rounded and rounding is monotonic).  Weights are at most
# 65535 < 2**16, so overheads below 2**36 are safe; beyond that schedulers fall back to the scan.
EXACT_OVERHEAD_LIMIT = 1 << 36


class LazyArgmin:
    """Smallest ``(key, position)`` among positions whose key is not None.

    Keys change on every connection event and are read on every schedule, so a changed key is
    pushed as a new heap entry and the old entry is left in place: an entry ``(k, i)`` is valid
    while ``keys[i] == k``, and invalid entries are discarded when they reach the top.  The heap
    is rebuilt when stale entries outnumber live ones, which keeps every operation amortised
    O(log n).
    """

    __slots__ = ("keys", "heap")

    def __init__(self) -> None:
        self.keys: list[float | None] = []
        self.heap: list[tuple[float, int]] = []

    def reset(self, keys: list[float | None]) -> None:
        self.keys = keys
        heap = [(k, i) for i, k in enumerate(keys) if k is not None]
        heapify(heap)
        self.heap = heap

    def append(self, key: float | None) -> None:
        i = len(self.keys)
        self.keys.append(key)
        if key is not None:
            heappush(self.heap, (key, i))

    def set(self, i: int, key: float | None) -> None:
        keys = self.keys
        if keys[i] == key:
            return
        keys[i] = key
        if key is None:
            return
        heap = self.heap
        if heap and heap[0][1] == i:
            # The top entry belongs to this position and is now stale: replace it in one step
            # (the common case: the dest just chosen got one more connection).
            heapreplace(heap, (key, i))
        else:
            heappush(heap, (key, i))
            if len(heap) > 2 * len(keys) + 64:
                self.reset(keys)

    def top(self) -> int:
        """Position of the smallest key (lowest position on ties), or -1 if every key is None."""
        heap = self.heap
        keys = self.keys
        while heap:
            k, i = heap[0]
            if keys[i] == k:
                return i
            heappop(heap)
        return -1


class IndexedScheduler(Scheduler):
    """A scheduler whose answer is the argmin of ``key(dest)`` over the service's dests.

    ``key`` returns None for dests that can never be chosen (weight 0, overloaded, ...).  Dest
    hooks and ``conn_changed`` recompute one key; deleting a dest renumbers the list, so it
    rebuilds the index (O(n), control plane only).
    """

    def __init__(self, flags: frozenset[str] = frozenset()) -> None:
        super().__init__(flags)
        self._idx = LazyArgmin()
        self._exact = False        # an overhead passed EXACT_OVERHEAD_LIMIT: use the IPVS scan

    @abstractmethod
    def key(self, dest: Dest) -> float | None:
        """The dest's sort key (smaller wins), or None if it cannot be chosen."""

    @abstractmethod
    def scan(self) -> Dest | None:
        """The IPVS selection loop itself: the reference answer, used when keys are not exact."""

    def rebuild(self, dests: Sequence[Dest]) -> None:
        self.dests = dests
        self._exact = False
        self._idx.reset([self.key(d) for d in dests])

    def add_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.dests = dests
        n = len(dests)
        if n and dests[n - 1] is dest and len(self._idx.keys) == n - 1:
            self._idx.append(self.key(dest))
        else:
            self.rebuild(dests)

    def del_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.rebuild(dests)

    def upd_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.dests = dests
        self._update(dest)

    def conn_changed(self, dest: Dest) -> None:
        self._update(dest)

    def _update(self, dest: Dest) -> None:
        i = dest.index
        dests = self.dests
        # A dest deleted from the service keeps its old index; its conns may still close.
        if i < len(dests) and dests[i] is dest:
            self._idx.set(i, self.key(dest))

    def pick(self) -> Dest | None:
        """The current argmin (the scheduling decision of the plain variant)."""
        if self._exact:
            return self.scan()
        i = self._idx.top()
        return self.dests[i] if i >= 0 else None
