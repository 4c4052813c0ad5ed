"""rr and wrr: exact IPVS sequences, including after dest changes, against a literal reference."""

from __future__ import annotations

import ipaddress
from math import gcd

from hypothesis import given, settings
from hypothesis import strategies as st

from ulvs.core.model import Dest, DestConfig, Proto, Service, ServiceConfig
from ulvs.sched import create


class Harness:
    """Drives a scheduler the way the core does (see ulvs.core.engine)."""

    def __init__(self, name: str) -> None:
        self.sched = create(name)
        self.svc = Service(ServiceConfig(Proto.TCP, ipaddress.IPv4Address("10.77.1.1"), 80, sched=name),
                           self.sched)
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

    def init(self, weights: list[int]) -> list[Dest]:
        """Dests present when the scheduler is bound to the service (init_service/rebuild)."""
        for w in weights:
            self.n += 1
            d = Dest(DestConfig(ipaddress.IPv4Address(0x0A4D0000 + self.n), 80, weight=w), self.svc,
                     weight=w, last_weight=w or 1)
            d.index = len(self.dests)
            self.dests.append(d)
        self.sched.rebuild(self.dests)
        return list(self.dests)

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

    def pick(self) -> Dest | None:
        return self.sched.schedule(0x0B000001, 1234, 0x0A4D0101, 80)

    def names(self, k: int) -> str:
        out = []
        for _ in range(k):
            d = self.pick()
            out.append("-" if d is None else "ABCDEFGHIJ"[self.dests.index(d)])
        return "".join(out)


# -- rr -----------------------------------------------------------------------------------------
def test_rr_cycles_in_list_order_skipping_unavailable() -> None:
    h = Harness("rr")
    a, b, _c = h.add(1), h.add(5), h.add(1)
    assert h.names(6) == "ABCABC"
    h.weight(b, 0)
    assert h.names(4) == "ACAC"
    h.overload(a, True)
    assert h.names(3) == "CCC"


def test_rr_delete_cursor_moves_to_predecessor() -> None:
    h = Harness("rr")
    _a, b, _c, _d = h.add(1), h.add(1), h.add(1), h.add(1)
    assert h.names(2) == "AB"          # cursor on B
    h.remove(b)                        # cursor -> A, so C is next
    assert h.names(3) == "BCA"         # letters are positions: C is now "B"


# -- wrr: literal reference of ip_vs_wrr.c ------------------------------------------------------
class RefWRR:
    """A line-by-line model of the kernel loop, scanning the list like the kernel does."""

    def __init__(self, dests: list[Dest]) -> None:
        self.dests = dests
        self.cw = 0
        self.changed()
        self.cw = self.mw

    def changed(self) -> None:
        self.cl = -1
        g = 0
        for d in self.dests:
            if d.weight > 0:
                g = gcd(g, d.weight) if g else d.weight
        self.di = g or 1
        self.mw = max([d.weight for d in self.dests], default=0) - (self.di - 1)
        if self.cw > self.mw or self.cw == 0:
            self.cw = self.mw
        elif self.di > 1:
            self.cw = (self.cw // self.di) * self.di + 1

    def schedule(self) -> Dest | None:
        dests = self.dests
        if self.mw == 0:
            return None
        last = self.cl
        i = last
        stop = None
        last_pass = restarted = False
        while True:
            i += 1
            while i < len(dests):
                d = dests[i]
                if not d.overloaded and d.weight >= self.cw:
                    self.cl = i
                    return d
                if i == stop:
                    self.cl = stop
                    return None
                i += 1
            self.cw -= self.di
            if self.cw <= 0:
                self.cw = self.mw
                if last_pass or last == -1:
                    self.cl = -1
                    return None
                restarted = True
            last_pass = self.cw <= self.di
            if last_pass and restarted and last != -1:
                stop = last
            i = -1


def test_wrr_ipvs_sequence_4_3_2() -> None:
    h = Harness("wrr")
    h.init([4, 3, 2])
    assert h.names(18) == "AABABCABC" * 2


def test_wrr_dests_added_one_by_one() -> None:
    # Adding A(4) alone gives di=4, mw=1, cw=1; later adds keep cw=1 (IPVS clamps, it does not
    # reset), so the first pass is at cw=1 before the regular cycle starts.
    h = Harness("wrr")
    h.add(4), h.add(3), h.add(2)
    assert h.names(21) == "ABC" + "AABABCABC" * 2


def test_wrr_gcd_cycle() -> None:
    h = Harness("wrr")
    h.init([2, 4])
    # di = 2, mw = 4 - 1 = 3: B at cw=3, then A B at cw=1.
    assert h.names(9) == "BAB" * 3


def test_wrr_after_weight_change_cursor_to_head_cw_kept() -> None:
    h = Harness("wrr")
    a, b, c = h.init([4, 3, 2])
    assert h.names(3) == "AAB"          # cw is now 3, cursor on B
    h.weight(c, 4)                      # di=1, mw=4, cw stays 3, cursor to the head
    assert h.names(14) == "ABCABCABCACABC"


def test_wrr_after_add_and_delete() -> None:
    h = Harness("wrr")
    a, b = h.init([2, 1])
    assert h.names(2) == "AA"           # cw=2: A; wrap cw=1: A
    h.add(2)                            # cursor to head, cw=1 stays
    assert h.names(5) == "ABCAC"
    h.remove(a)                         # dests B(1), C(2) are now "A", "B"; cursor head, cw=2
    assert h.names(6) == "BABBAB"


def test_wrr_overload_flip_keeps_cursor() -> None:
    h = Harness("wrr")
    a, b, c = h.init([1, 1, 1])
    assert h.names(2) == "AB"
    h.overload(a, True)                 # IPVS does not call the scheduler: cursor stays on B
    assert h.names(3) == "CBC"
    h.overload(a, False)
    assert h.names(3) == "ABC"


def test_wrr_all_overloaded_then_recovers() -> None:
    h = Harness("wrr")
    a, b = h.init([3, 1])
    h.overload(a, True)
    assert h.names(3) == "BBB"
    h.overload(b, True)
    assert h.names(2) == "--"
    h.overload(a, False)
    assert h.names(1) == "A"


ops = st.lists(
    st.one_of(
        st.tuples(st.just("pick"), st.integers(1, 12)),
        st.tuples(st.just("add"), st.integers(0, 6)),
        st.tuples(st.just("del"), st.integers(0, 20)),
        st.tuples(st.just("weight"), st.integers(0, 20), st.integers(0, 6)),
        st.tuples(st.just("overload"), st.integers(0, 20), st.booleans()),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=6), st.sampled_from([1, 2, 3]), ops)
def test_wrr_matches_kernel_loop(initial: list[int], scale: int, script: list[tuple]) -> None:  # type: ignore[type-arg]
    h = Harness("wrr")
    ref = RefWRR(h.dests)            # shares the dest list; bound while it is empty
    for w in initial:
        h.add(w * scale)
        ref.changed()
    for op in script:
        kind = op[0]
        if kind == "pick":
            for _ in range(op[1]):
                assert h.pick() is ref.schedule()
        elif kind == "add":
            h.add(op[1] * scale)
            ref.changed()
        elif kind == "del" and h.dests:
            h.remove(h.dests[op[1] % len(h.dests)])
            ref.changed()
        elif kind == "weight" and h.dests:
            h.weight(h.dests[op[1] % len(h.dests)], op[2] * scale)
            ref.changed()
        elif kind == "overload" and h.dests:
            h.overload(h.dests[op[1] % len(h.dests)], op[2])   # no scheduler call in the kernel


def test_wrr_large_weights_with_heavy_dest_overloaded() -> None:
    # cw has to fall from 65535 to 1 before the light dest qualifies: the skip must be exact.
    h = Harness("wrr")
    heavy, light, mid = h.init([65535, 1, 300])
    ref = RefWRR(h.dests)
    h.overload(heavy, True)
    for _ in range(700):
        assert h.pick() is ref.schedule()
    h.overload(mid, True)
    for _ in range(50):
        assert h.pick() is ref.schedule()
    h.overload(light, True)
    for _ in range(5):
        assert h.pick() is ref.schedule()


def test_wrr_last_pass_without_restart_scans_past_the_cursor() -> None:
    # Cursor on B (cw=2); A and B then overload.  The pass after the wrap runs at cw=1 <= di but
    # has not restarted, so the kernel scans the whole list (past B) and finds C.
    h = Harness("wrr")
    a, b, c = h.init([1, 2, 1])
    ref = RefWRR(h.dests)
    assert h.pick() is b and ref.schedule() is b
    h.overload(a, True)
    h.overload(b, True)
    assert h.pick() is c
    assert ref.schedule() is c
    for _ in range(5):
        assert h.pick() is ref.schedule()


def test_wrr_gcd_grows_cw_is_realigned() -> None:
    # Deleting the weight-1 dest raises di from 1 to 2: cw=2 becomes (2/2)*2 + 1 = 3.
    h = Harness("wrr")
    a, b, c = h.init([2, 4, 1])
    assert h.names(4) == "BBAB"         # cw 4: B; 3: B; 2: A B
    h.remove(c)
    assert h.names(6) == "BABBAB"       # cw 3: B; 1: A B; restart at mw=3: B; ...
