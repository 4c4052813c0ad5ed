"""Locality-based least-connection with replication (ip_vs_lblcr.c): a dest *set* per address.

Rule: a cache maps the packet's destination address (vaddr) to a set of dests.  The candidate is
the wlc minimum inside the set (skipping overloaded, weight-0 and deleted dests; ties to the
first in set order, newest member first).  If the set has more than one member and was not
modified for ``expiration`` (24 h, lblcr_expiration), its most loaded member (max
overhead/weight) is dropped.  If there is no candidate or it is "overloaded" (activeconns >
weight while some dest has activeconns*2 < weight), wlc over all dests picks one, which joins
the set (at the front, as list_add does).  Unused entries expire in ``handle_timer(now)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ulvs.sched.base import register
from ulvs.sched.lblc import (
    CHECK_EXPIRE_INTERVAL,
    DEFAULT_EXPIRATION,
    DEFAULT_MAX_SIZE,
    ENTRY_TIMEOUT,
    LocalityBase,
)

if TYPE_CHECKING:
    from ulvs.core.model import Dest


class _SetEntry:
    __slots__ = ("members", "lastmod", "lastuse")

    def __init__(self, dest: Dest, now: float) -> None:
        self.members = [dest]
        self.lastmod = now
        self.lastuse = now


class LocalityLeastConnectionReplicated(LocalityBase):
    name = "lblcr"

    def __init__(self, flags: frozenset[str] = frozenset(), expiration: float = DEFAULT_EXPIRATION,
                 max_size: int = DEFAULT_MAX_SIZE) -> None:
        super().__init__(flags, expiration, max_size)
        self._cache: dict[int, _SetEntry] = {}

    def set_min(self, members: list[Dest]) -> Dest | None:
        """ip_vs_dest_set_min: weighted least-connection inside the set."""
        least: Dest | None = None
        loh = 0
        for d in members:
            if d.overloaded:
                continue
            doh = (d.activeconns << 8) + d.inactconns
            if least is None:
                if d.weight > 0 and self.in_service(d):
                    least, loh = d, doh
            elif loh * d.weight > doh * least.weight and self.in_service(d):
                least, loh = d, doh
        return least

    @staticmethod
    def set_max(members: list[Dest]) -> Dest | None:
        """ip_vs_dest_set_max: the most loaded member by overhead/weight (weight > 0)."""
        most: Dest | None = None
        moh = 0
        for d in members:
            doh = (d.activeconns << 8) + d.inactconns
            if most is None:
                if d.weight > 0:
                    most, moh = d, doh
            elif moh * d.weight < doh * most.weight and d.weight > 0:
                most, moh = d, doh
        return most

    def schedule(self, caddr: int, cport: int, vaddr: int, vport: int) -> Dest | None:
        now = self.now
        en = self._cache.get(vaddr)
        if en is not None:
            en.lastuse = now
            members = en.members
            d = self.set_min(members)
            if len(members) > 1 and now > en.lastmod + self.expiration:
                m = self.set_max(members)
                if m is not None:
                    members.remove(m)
                    en.lastmod = now
            if d is not None and not self.is_overloaded(d):
                return d
            d = self.pick()                     # wlc over all dests
            if d is None:
                return None
            if d not in members:
                members.insert(0, d)
                en.lastmod = now
            return d
        d = self.pick()
        if d is None:
            return None
        self._cache[vaddr] = _SetEntry(d, now)
        return d

    def members(self, vaddr: int) -> list[Dest]:
        en = self._cache.get(vaddr)
        return list(en.members) if en is not None else []

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


register("lblcr", LocalityLeastConnectionReplicated)
