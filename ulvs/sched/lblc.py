"""Locality-based least-connection (ip_vs_lblc.c): stick each destination address to one dest.

Rule: a cache maps the packet's destination address (vaddr; the origin server for a cache
cluster) to a dest.  The cached dest is used unless it was deleted, has weight 0, or is
"overloaded" in the lblc sense: activeconns > weight while some dest of the service has
activeconns*2 < weight.  (As in the kernel, the threshold overload flag does not invalidate the
cached dest; it only excludes dests from the wlc pass.)  Otherwise wlc over all dests picks a
new dest and the entry is replaced.  Entries unused for ``expiration`` (24 h,
lblc_expiration) are dropped by ``handle_timer``; when the cache exceeds ``max_size`` entries
unused for ENTRY_TIMEOUT are dropped first.

No clock is read here: time enters through ``handle_timer(now)`` (which also sets ``now``, the
time stamped on entries by ``schedule``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ulvs.sched.base import register
from ulvs.sched.wlc import WeightedLeastConnection

if TYPE_CHECKING:
    from ulvs.core.model import Dest

DEFAULT_EXPIRATION = 24 * 60 * 60.0     # sysctl lblc_expiration / lblcr_expiration
ENTRY_TIMEOUT = 6 * 60.0                # IPVS ENTRY_TIMEOUT: idle entries dropped when oversized
CHECK_EXPIRE_INTERVAL = 60.0            # IPVS CHECK_EXPIRE_INTERVAL
DEFAULT_MAX_SIZE = 16 * 1024            # tbl->max_size = 16 * IP_VS_LBLC_TAB_SIZE


class LocalityBase(WeightedLeastConnection):
    """wlc index, the lblc overload rule and the entry clock shared by lblc and lblcr."""

    def __init__(self, flags: frozenset[str] = frozenset(), expiration: float = DEFAULT_EXPIRATION,
                 max_size: int = DEFAULT_MAX_SIZE) -> None:
        super().__init__(flags)
        self.expiration = expiration
        self.max_size = max_size
        self.now = 0.0
        self._under: list[bool] = []    # per position: activeconns*2 < weight
        self._n_under = 0

    # -- dest hooks: keep the wlc index and the count of under-half-loaded dests ---------------
    def rebuild(self, dests: Sequence[Dest]) -> None:
        super().rebuild(dests)
        self._under = [d.activeconns * 2 < d.weight for d in dests]
        self._n_under = sum(self._under)

    def add_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        super().add_dest(dests, dest)           # appends, or rebuilds (which recounts)
        if len(self._under) < len(dests):
            u = dest.activeconns * 2 < dest.weight
            self._under.append(u)
            self._n_under += u

    def _update(self, dest: Dest) -> None:
        super()._update(dest)
        self._set_under(dest)

    def conn_changed(self, dest: Dest) -> None:
        super().conn_changed(dest)
        self._set_under(dest)

    def _set_under(self, dest: Dest) -> None:
        i = dest.index
        dests = self.dests
        if i < len(dests) and dests[i] is dest:
            u = dest.activeconns * 2 < dest.weight
            if u != self._under[i]:
                self._under[i] = u
                self._n_under += 1 if u else -1

    def in_service(self, dest: Dest) -> bool:
        i = dest.index
        dests = self.dests
        return i < len(dests) and dests[i] is dest

    def is_overloaded(self, dest: Dest) -> bool:
        """lblc/lblcr is_overloaded(): more active conns than weight while a dest is under half."""
        return dest.activeconns > dest.weight and self._n_under > 0


class _Entry:
    __slots__ = ("dest", "lastuse")

    def __init__(self, dest: Dest, lastuse: float) -> None:
        self.dest = dest
        self.lastuse = lastuse


class LocalityLeastConnection(LocalityBase):
    name = "lblc"

    def __init__(self, flags: frozenset[str] = frozenset(), expiration: float = DEFAULT_EXPIRATION,
                 max_size: int = DEFAULT_MAX_SIZE) -> None:
        super().__init__(flags, expiration, max_size)
        self._cache: dict[int, _Entry] = {}

    def schedule(self, caddr: int, cport: int, vaddr: int, vport: int) -> Dest | None:
        en = self._cache.get(vaddr)
        if en is not None:
            en.lastuse = self.now
            cd = en.dest
            if self.in_service(cd) and cd.weight > 0 and not self.is_overloaded(cd):
                return cd
        d = self.pick()                         # wlc over all dests
        if d is None:
            return None
        if en is not None:
            en.dest = d
        else:
            self._cache[vaddr] = _Entry(d, self.now)
        return d

    def cached(self, vaddr: int) -> Dest | None:
        en = self._cache.get(vaddr)
        return en.dest if en is not None else None

    def __len__(self) -> int:
        return len(self._cache)

    # -- time --------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        if not self._cache:
            return None
        if len(self._cache) > self.max_size:
            return self.now + CHECK_EXPIRE_INTERVAL
        return min(e.lastuse for e in self._cache.values()) + self.expiration

    def handle_timer(self, now: float) -> None:
        self.now = now
        cache = self._cache
        for k in [k for k, e in cache.items() if e.lastuse + self.expiration <= now]:
            del cache[k]
        if len(cache) > self.max_size:
            old = sorted((e.lastuse, k) for k, e in cache.items() if e.lastuse + ENTRY_TIMEOUT <= now)
            for _, k in old[: len(cache) - self.max_size]:
                del cache[k]


register("lblc", LocalityLeastConnection)
