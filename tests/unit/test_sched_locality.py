"""lblc and lblcr: per-destination-address affinity with the IPVS overload and expiry rules."""

from __future__ import annotations

import ipaddress
import random
from fractions import Fraction

from ulvs.core.model import Dest, DestConfig, Proto, Service, ServiceConfig
from ulvs.sched import create
from ulvs.sched.base import Scheduler
from ulvs.sched.lblc import LocalityLeastConnection
from ulvs.sched.lblcr import LocalityLeastConnectionReplicated

V1, V2 = 0xC6336401, 0xC6336402          # two origin addresses (the packets' daddr)


class Harness:
    """Drives a scheduler the way the core does (see ulvs.core.engine)."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.svc = Service(ServiceConfig(Proto.TCP, ipaddress.IPv4Address("10.77.1.1"), 80,
                                         sched=sched.name), sched)
        self.n = 0

    @property
    def dests(self) -> list[Dest]:
        return self.svc.dests

    def add(self, w: int) -> Dest:
        self.n += 1
        d = Dest(DestConfig(ipaddress.IPv4Address(0x0A4D0000 + self.n), 80, weight=w), self.svc,
                 weight=w, last_weight=w or 1)
        d.index = len(self.dests)
        self.dests.append(d)
        self.sched.add_dest(self.dests, d)
        return d

    def remove(self, d: Dest) -> None:
        self.dests.remove(d)
        for i, x in enumerate(self.dests):
            x.index = i
        d.removed = True
        self.sched.del_dest(self.dests, d)

    def weight(self, d: Dest, w: int) -> None:
        d.weight = w
        if w:
            d.last_weight = w
        self.sched.upd_dest(self.dests, d)

    def overload(self, d: Dest, flag: bool) -> None:
        if d.overloaded != flag:
            d.overloaded = flag
            self.sched.upd_dest(self.dests, d)

    def conns(self, d: Dest, active: int, inactive: int = 0) -> None:
        d.activeconns, d.inactconns = active, inactive
        self.sched.conn_changed(d)

    def pick(self, vaddr: int) -> Dest | None:
        return self.sched.schedule(0x0B000001, 1234, vaddr, 80)


def wlc_min(dests: list[Dest]) -> Dest | None:
    ok = [d for d in dests if d.weight > 0 and not d.overloaded]
    return min(ok, key=lambda d: (Fraction(d.activeconns * 256 + d.inactconns, d.weight),
                                  dests.index(d)), default=None)


# -- lblc ---------------------------------------------------------------------------------------
def test_lblc_sticks_to_the_cached_dest() -> None:
    h = Harness(create("lblc"))
    a, b, _c = h.add(10), h.add(10), h.add(10)
    assert h.pick(V1) is a
    h.conns(a, 5)
    assert h.pick(V1) is a             # a is no longer the wlc choice, but it is cached
    assert h.pick(V2) is b             # a new address gets the wlc choice
    assert h.pick(V1) is a


def test_lblc_reschedules_when_overloaded_in_the_lblc_sense() -> None:
    h = Harness(create("lblc"))
    a, b = h.add(2), h.add(4)
    assert h.pick(V1) is a
    h.conns(a, 3)                      # active > weight ...
    h.conns(b, 2)                      # ... but no dest has active*2 < weight: keep a
    assert h.pick(V1) is a
    h.conns(b, 1)                      # b is under half load now: a counts as overloaded
    assert h.pick(V1) is b
    assert h.pick(V1) is b             # and the entry now points at b


def test_lblc_reschedules_on_weight_zero_and_delete() -> None:
    h = Harness(create("lblc"))
    a, b, c = h.add(1), h.add(1), h.add(1)
    assert h.pick(V1) is a
    h.weight(a, 0)
    assert h.pick(V1) is b
    h.remove(b)
    assert h.pick(V1) is c


def test_lblc_cached_dest_survives_threshold_overload_flag() -> None:
    # ip_vs_lblc.c checks only availability, weight and its own overload rule on the cached
    # dest; the threshold flag only keeps the dest out of the wlc pass.
    h = Harness(create("lblc"))
    a, b = h.add(1), h.add(1)
    assert h.pick(V1) is a
    h.overload(a, True)
    assert h.pick(V1) is a
    assert h.pick(V2) is b


def test_lblc_entries_expire() -> None:
    s = LocalityLeastConnection(expiration=100.0)
    h = Harness(s)
    a, b = h.add(1), h.add(1)
    s.handle_timer(0.0)
    assert h.pick(V1) is a and len(s) == 1
    h.conns(a, 1)
    s.handle_timer(50.0)
    assert h.pick(V1) is a             # used at t=50
    assert s.next_deadline() == 150.0
    s.handle_timer(149.0)
    assert len(s) == 1
    s.handle_timer(150.0)
    assert len(s) == 0 and s.next_deadline() is None
    assert h.pick(V1) is b             # fresh wlc choice


def test_lblc_random_against_reference() -> None:
    rng = random.Random(2)
    h = Harness(create("lblc"))
    for _ in range(12):
        h.add(rng.randint(1, 6))
    cache: dict[int, Dest] = {}
    for step in range(4000):
        ds = h.dests
        v = rng.randrange(20)
        # Reference: ip_vs_lblc_schedule.
        expect = cache.get(v)
        under = any(d.activeconns * 2 < d.weight for d in ds)
        if expect is None or expect not in ds or expect.weight <= 0 or \
                (expect.activeconns > expect.weight and under):
            expect = wlc_min(ds)
            if expect is not None:
                cache[v] = expect
        got = h.pick(v)
        assert got is expect, step
        r = rng.random()
        if got is not None and r < 0.5:
            h.conns(got, got.activeconns + 1, got.inactconns)
        d = ds[rng.randrange(len(ds))]
        if r < 0.45 and d.activeconns:
            h.conns(d, d.activeconns - 1, d.inactconns + 1)
        elif r < 0.5:
            h.overload(d, not d.overloaded)
        elif r < 0.53:
            h.weight(d, rng.randint(0, 6))


# -- lblcr --------------------------------------------------------------------------------------
def test_lblcr_grows_the_set_when_overloaded() -> None:
    s = LocalityLeastConnectionReplicated()
    h = Harness(s)
    a, b, c = h.add(2), h.add(2), h.add(4)
    assert h.pick(V1) is a and s.members(V1) == [a]
    h.conns(b, 1)
    h.conns(a, 3)                      # a overloaded (3 > 2) while c has 0*2 < 4
    assert h.pick(V1) is c             # wlc over all picks c, which joins the set at the front
    assert s.members(V1) == [c, a]
    h.conns(c, 1)
    assert h.pick(V1) is c             # wlc inside the set: c (256/4) beats a (768/2)
    h.conns(a, 0)
    assert h.pick(V1) is a             # a idle now: 0/2 < 256/4


def test_lblcr_drops_most_loaded_member_after_expiration() -> None:
    s = LocalityLeastConnectionReplicated(expiration=10.0)
    h = Harness(s)
    a, b = h.add(2), h.add(4)
    s.handle_timer(0.0)
    assert h.pick(V1) is a
    h.conns(a, 3)
    assert h.pick(V1) is b             # set = [b, a], lastmod = 0
    h.conns(b, 1)
    s.now = 5.0
    assert h.pick(V1) is b and len(s.members(V1)) == 2
    s.now = 10.5                       # unchanged for > 10 s: drop the most loaded (a: 768/2)
    assert h.pick(V1) is b
    assert s.members(V1) == [b]


def test_lblcr_skips_deleted_and_quiesced_members() -> None:
    s = LocalityLeastConnectionReplicated()
    h = Harness(s)
    a, b, c = h.add(1), h.add(1), h.add(1)
    assert h.pick(V1) is a
    h.conns(a, 2)
    h.conns(b, 0)
    assert h.pick(V1) is b             # a overloaded (2 > 1, b under half): b joins
    h.remove(b)
    h.conns(a, 0)
    assert h.pick(V1) is a             # b is gone; a is the set minimum again
    h.weight(a, 0)
    assert h.pick(V1) is c
    assert s.members(V1)[0] is c


def test_lblcr_entries_expire() -> None:
    s = LocalityLeastConnectionReplicated(expiration=60.0)
    h = Harness(s)
    h.add(1)
    s.handle_timer(1.0)
    h.pick(V1)
    h.pick(V2)
    assert len(s) == 2 and s.next_deadline() == 61.0
    s.handle_timer(61.0)
    assert len(s) == 0
