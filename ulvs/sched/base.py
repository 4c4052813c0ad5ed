"""Scheduler interface and registry (after IPVS ip_vs_sched.c).

A scheduler is created per service.  The core calls the dest hooks whenever the service's dest
list or a dest's weight changes, ``conn_changed`` whenever a dest's connection counters change,
and ``schedule`` for every new connection.  Schedulers keep their state in the instance and in
``Dest.sched_data``; the core never branches on a scheduler's name.

Rules shared by every scheduler (ipvsadm.8): dests are considered in insertion order; a dest
that is not ``available`` (weight 0 = quiescent, or overloaded) gets no new connections.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ulvs.core.model import Dest

KNOWN_FLAGS = frozenset({"flag-1", "flag-2", "flag-3", "sh-fallback", "sh-port", "mh-fallback", "mh-port"})


class SchedulerError(ValueError):
    """Bad scheduler name or flags (a configuration error)."""


class Scheduler(ABC):
    name: ClassVar[str]

    def __init__(self, flags: frozenset[str] = frozenset()) -> None:
        self.flags = flags
        self.dests: Sequence[Dest] = ()
        self.now = 0.0   # set by the core before every schedule() call
        # The core calls conn_changed only for schedulers that react to it (saves a call per
        # new connection for rr, wrr, sh, dh, mh ...).
        self.tracks_conns = type(self).conn_changed is not Scheduler.conn_changed

    # -- time (schedulers with state that ages, e.g. lblc's cache) -----------------------------
    def next_deadline(self) -> float | None:
        """When ``handle_timer`` next has work, or None."""
        return None

    def handle_timer(self, now: float) -> None:
        self.now = now

    # -- dest hooks (ip_vs_scheduler add_dest / del_dest / upd_dest) --------------------------
    def add_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.rebuild(dests)

    def del_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.rebuild(dests)

    def upd_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        """Weight or overload state of ``dest`` changed."""
        self.rebuild(dests)

    def rebuild(self, dests: Sequence[Dest]) -> None:
        """Recompute all scheduler state from the ordered dest list."""
        self.dests = dests

    def conn_changed(self, dest: Dest) -> None:
        """``dest.activeconns`` / ``inactconns`` changed."""

    @abstractmethod
    def schedule(self, caddr: int, cport: int, vaddr: int, vport: int) -> Dest | None:
        """Pick a dest for a new connection, or None: "no destination available"."""

    def peek(self, caddr: int, cport: int, vaddr: int, vport: int, now: float) -> Dest | None:
        """The dest ``schedule`` would pick for this flow at ``now``, changing no state at all.

        ``schedule`` runs on a throwaway deep copy of this scheduler.  The copy shares the Dest
        records (``Dest.__deepcopy__`` returns the dest itself), so identity checks and the dest
        returned are the real ones, while everything the scheduler owns -- cursors, heaps,
        caches, random generators -- is copied.  Each dest's ``sched_data`` is copied with the
        same memo (so the copy's references into it stay consistent), swapped in for the call
        and restored afterwards.  A scheduler may override this with a cheaper exact answer."""
        dests = list(self.dests)
        originals = [d.sched_data for d in dests]
        memo: dict[int, Any] = {}
        scratch = copy.deepcopy(originals, memo)
        clone = copy.deepcopy(self, memo)
        clone.now = now
        try:
            for d, data in zip(dests, scratch, strict=True):
                d.sched_data = data
            return clone.schedule(caddr, cport, vaddr, vport)
        finally:
            for d, data in zip(dests, originals, strict=True):
                d.sched_data = data


_REGISTRY: dict[str, Callable[[frozenset[str]], Scheduler]] = {}


def register(name: str, factory: Callable[[frozenset[str]], Scheduler]) -> None:
    if name in _REGISTRY:
        raise SchedulerError(f"scheduler {name!r} registered twice")
    _REGISTRY[name] = factory


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def create(name: str, flags: frozenset[str] = frozenset()) -> Scheduler:
    """Instantiate a scheduler by name; unknown names and flags are configuration errors."""
    _load_all()
    unknown = set(flags) - KNOWN_FLAGS
    if unknown:
        raise SchedulerError(f"unknown scheduler flag(s) {', '.join(sorted(unknown))}; "
                             f"allowed: {', '.join(sorted(KNOWN_FLAGS))}")
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise SchedulerError(f"unknown scheduler {name!r}; available: {', '.join(sorted(_REGISTRY))}") \
            from None
    return factory(flags)


def _load_all() -> None:
    # Importing the package imports every scheduler module, each of which registers itself.
    import ulvs.sched  # noqa: F401
