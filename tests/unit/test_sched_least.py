"""lc, wlc, sed, nq, ovf, fo, twos: the indexed schedulers give exactly the IPVS answer.

Each reference below states the IPVS rule as plainly as possible (exact fractions, list index
for ties) and is compared with the scheduler after every step of random hook sequences.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ulvs.core.model import Dest, DestConfig, Proto, Service, ServiceConfig
from ulvs.sched import create
from ulvs.sched.base import Scheduler
from ulvs.sched.twos import TwoRandomChoices


class Harness:
    """Drives a scheduler the way the core does (see ulvs.core.engine)."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.svc = Service(ServiceConfig(Proto.TCP, ipaddress.IPv4Address("10.77.1.1"), 80,
                                         sched=sched.name), sched)
        self.n = 0
        self.removed: list[Dest] = []

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
        self.removed.append(d)
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

    def conns(self, d: Dest, active: int, inactive: int) -> None:
        d.activeconns, d.inactconns = active, inactive
        if not d.removed:
            self.sched.conn_changed(d)

    def pick(self) -> Dest | None:
        return self.sched.schedule(0x0B000001, 1234, 0x0A4D0101, 80)


def overhead(d: Dest) -> int:
    return d.activeconns * 256 + d.inactconns


def ref_lc(dests: list[Dest]) -> Dest | None:
    ok = [d for d in dests if d.weight != 0 and not d.overloaded]
    return min(ok, key=lambda d: (overhead(d), dests.index(d)), default=None)


def ref_wlc(dests: list[Dest]) -> Dest | None:
    ok = [d for d in dests if d.weight > 0 and not d.overloaded]
    return min(ok, key=lambda d: (Fraction(overhead(d), d.weight), dests.index(d)), default=None)


def ref_sed(dests: list[Dest]) -> Dest | None:
    ok = [d for d in dests if d.weight > 0 and not d.overloaded]
    return min(ok, key=lambda d: (Fraction(d.activeconns + 1, d.weight), dests.index(d)), default=None)


def ref_nq(dests: list[Dest]) -> Dest | None:
    idle = [d for d in dests if d.weight > 0 and not d.overloaded and d.activeconns == 0]
    return idle[0] if idle else ref_sed(dests)


def ref_ovf(dests: list[Dest]) -> Dest | None:
    ok = [d for d in dests if d.weight > 0 and not d.overloaded and d.activeconns <= d.weight]
    return max(ok, key=lambda d: (d.weight, -dests.index(d)), default=None)


def ref_fo(dests: list[Dest]) -> Dest | None:
    ok = [d for d in dests if d.weight > 0 and not d.overloaded]
    return max(ok, key=lambda d: (d.weight, -dests.index(d)), default=None)


REFS: dict[str, Callable[[list[Dest]], Dest | None]] = {
    "lc": ref_lc, "wlc": ref_wlc, "sed": ref_sed, "nq": ref_nq, "ovf": ref_ovf, "fo": ref_fo,
}

counts = st.one_of(st.integers(0, 6), st.integers(0, 300), st.integers(2**35, 2**40))
ops = st.lists(
    st.one_of(
        st.tuples(st.just("pick")),
        st.tuples(st.just("bind")),
        st.tuples(st.just("add"), st.integers(0, 8)),
        st.tuples(st.just("del"), st.integers(0, 30)),
        st.tuples(st.just("weight"), st.integers(0, 30), st.integers(0, 8)),
        st.tuples(st.just("overload"), st.integers(0, 30), st.booleans()),
        st.tuples(st.just("conns"), st.integers(0, 30), counts, counts),
        st.tuples(st.just("conns-removed"), st.integers(0, 30), counts, counts),
    ),
    max_size=60,
)


def run_script(name: str, initial: list[tuple[int, int, int]], script: list[tuple]) -> None:  # type: ignore[type-arg]
    h = Harness(create(name))
    ref = REFS[name]
    for w, a, i in initial:
        d = h.add(w)
        h.conns(d, a, i)
    assert h.pick() is ref(h.dests)
    for op in script:
        kind = op[0]
        n = len(h.dests)
        if kind == "add":
            h.add(op[1])
        elif kind == "bind":
            chosen = h.pick()
            assert chosen is ref(h.dests)
            if chosen is not None:
                h.conns(chosen, chosen.activeconns + 1, chosen.inactconns)
        elif kind == "del" and n:
            h.remove(h.dests[op[1] % n])
        elif kind == "weight" and n:
            h.weight(h.dests[op[1] % n], op[2])
        elif kind == "overload" and n:
            h.overload(h.dests[op[1] % n], op[2])
        elif kind == "conns" and n:
            h.conns(h.dests[op[1] % n], op[2], op[3])
        elif kind == "conns-removed" and h.removed:
            h.conns(h.removed[op[1] % len(h.removed)], op[2], op[3])
        assert h.pick() is ref(h.dests), (name, op)


initial_dests = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 20), st.integers(0, 40)), max_size=10)


@pytest.mark.parametrize("name", sorted(REFS))
@settings(max_examples=150, deadline=None)
@given(initial=initial_dests, script=ops)
def test_matches_ipvs_rule(name: str, initial: list[tuple[int, int, int]], script: list[tuple]) -> None:  # type: ignore[type-arg]
    run_script(name, initial, script)


@pytest.mark.parametrize("name", sorted(REFS))
def test_many_dests_random_churn(name: str) -> None:
    rng = random.Random(7)
    h = Harness(create(name))
    ref = REFS[name]
    for _ in range(200):
        d = h.add(rng.randint(1, 5))
        h.conns(d, rng.randint(0, 4), rng.randint(0, 20))
    for step in range(3000):
        r = rng.random()
        d = h.dests[rng.randrange(len(h.dests))]
        if r < 0.4:
            chosen = h.pick()
            assert chosen is ref(h.dests), step
            if chosen is not None:
                h.conns(chosen, chosen.activeconns + 1, chosen.inactconns)
        elif r < 0.8:
            if d.activeconns:
                h.conns(d, d.activeconns - 1, d.inactconns + 1)
            elif d.inactconns:
                h.conns(d, d.activeconns, d.inactconns - 1)
        elif r < 0.9:
            h.overload(d, not d.overloaded)
        elif r < 0.97:
            h.weight(d, rng.randint(0, 5))
        elif r < 0.985:
            h.remove(d)
        else:
            h.add(rng.randint(0, 5))
        assert h.pick() is ref(h.dests), step


def test_wlc_ties_go_to_first_in_list_order() -> None:
    h = Harness(create("wlc"))
    a, b, c = h.add(2), h.add(4), h.add(1)
    h.conns(a, 2, 0)
    h.conns(b, 4, 0)            # 512/2 == 1024/4
    h.conns(c, 1, 10)           # 266/1 > 256
    assert h.pick() is a
    h.remove(a)
    assert h.pick() is b
    h.conns(c, 1, 0)            # 256/1 == 1024/4: b stays first
    assert h.pick() is b


def test_wlc_huge_overheads_are_exact() -> None:
    # Ratios that are equal or one ulp apart as doubles: the answer must still be exact.
    h = Harness(create("wlc"))
    a, b = h.add(65535), h.add(65534)
    big = 2**40
    h.conns(a, 0, big * 65535 + 1)
    h.conns(b, 0, big * 65534)
    assert ref_wlc(h.dests) is b
    assert h.pick() is b


def test_sed_ignores_inactive_and_counts_active_plus_one() -> None:
    h = Harness(create("sed"))
    a, b = h.add(1), h.add(3)
    h.conns(a, 0, 1000)         # (0+1)/1 = 1
    h.conns(b, 2, 0)            # (2+1)/3 = 1 -> tie, a first
    assert h.pick() is a
    h.conns(a, 1, 0)            # 2/1 > 1
    assert h.pick() is b


def test_nq_takes_first_idle_even_if_heavier_is_better() -> None:
    h = Harness(create("nq"))
    a, b, c = h.add(1), h.add(100), h.add(1)
    h.conns(a, 3, 0)
    h.conns(b, 1, 0)
    assert h.pick() is c        # idle wins over b's better ratio
    h.conns(c, 1, 0)
    assert h.pick() is b


def test_ovf_overflows_to_next_heaviest() -> None:
    h = Harness(create("ovf"))
    a, b, c = h.add(2), h.add(5), h.add(5)
    assert h.pick() is b
    h.conns(b, 5, 0)
    assert h.pick() is b        # activeconns <= weight still fits
    h.conns(b, 6, 0)
    assert h.pick() is c
    h.conns(c, 6, 0)
    assert h.pick() is a
    h.conns(a, 3, 0)
    assert h.pick() is None


def test_fo_highest_weight_first_on_ties() -> None:
    h = Harness(create("fo"))
    a, b, c = h.add(3), h.add(7), h.add(7)
    assert h.pick() is b
    h.overload(b, True)
    assert h.pick() is c
    h.weight(c, 0)
    assert h.pick() is a
    h.overload(b, False)
    assert h.pick() is b
    h.remove(b)
    assert h.pick() is a


# -- twos ---------------------------------------------------------------------------------------
def ref_twos(dests: list[Dest], rnd: Callable[[], float]) -> Dest | None:
    ok = [d for d in dests if d.weight > 0 and not d.overloaded]
    if not ok:
        return None
    total = sum(d.weight for d in ok)
    r1 = int(rnd() * (total + 1))       # uniform in [0, total], as random % (total + 1)
    r2 = int(rnd() * (total + 1))
    c1 = c2 = None
    for d in ok:
        r1 -= d.weight
        r2 -= d.weight
        if r1 <= 0 and c1 is None:
            c1 = d
        if r2 <= 0 and c2 is None:
            c2 = d
    assert c1 is not None and c2 is not None
    if c2.weight * overhead(c1) > c1.weight * overhead(c2):
        return c2
    return c1


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), initial=initial_dests, script=ops)
def test_twos_matches_ipvs_rule(seed: int, initial: list[tuple[int, int, int]], script: list[tuple]) -> None:  # type: ignore[type-arg]
    h = Harness(TwoRandomChoices(rng=random.Random(seed)))
    mirror = random.Random(seed).random
    for w, a, i in initial:
        h.conns(h.add(w), a, i)
    for op in script:
        kind = op[0]
        n = len(h.dests)
        if kind in ("pick", "bind"):
            d = h.pick()
            assert d is ref_twos(h.dests, mirror)
            if d is not None and kind == "bind":
                h.conns(d, d.activeconns + 1, d.inactconns)
        elif kind == "add":
            h.add(op[1])
        elif kind == "del" and n:
            h.remove(h.dests[op[1] % n])
        elif kind == "weight" and n:
            h.weight(h.dests[op[1] % n], op[2])
        elif kind == "overload" and n:
            h.overload(h.dests[op[1] % n], op[2])
        elif kind == "conns" and n:
            h.conns(h.dests[op[1] % n], op[2], op[3])


def test_twos_prefers_less_loaded_and_follows_weights() -> None:
    h = Harness(TwoRandomChoices(rng=random.Random(1)))
    a, b, c = h.add(1), h.add(1), h.add(2)
    seen = {id(a): 0, id(b): 0, id(c): 0}
    for _ in range(4000):
        d = h.pick()
        assert d is not None
        seen[id(d)] += 1
    # Idle dests: choice1 always wins.  r is uniform over the 5 values 0..4 (the kernel's
    # random % (total + 1)): 0,1 -> a; 2 -> b; 3,4 -> c, so a gets the extra share.
    assert abs(seen[id(a)] / 4000 - 0.4) < 0.04
    assert abs(seen[id(b)] / 4000 - 0.2) < 0.04
    assert abs(seen[id(c)] / 4000 - 0.4) < 0.04
    h.conns(c, 100, 0)
    picks = [h.pick() for _ in range(2000)]
    assert sum(p is c for p in picks) < 0.3 * 2000      # c only when both draws hit c


@pytest.mark.parametrize("name", sorted(REFS))
def test_conn_events_of_a_deleted_dest_are_ignored(name: str) -> None:
    # The deleted dest keeps its old index, which now belongs to another dest.
    h = Harness(create(name))
    a, b, c = h.add(3), h.add(3), h.add(3)
    h.conns(a, 2, 5)
    h.conns(b, 9, 9)                 # b is the worst choice for every rule here...
    h.conns(c, 2, 5)
    h.remove(a)                      # ...and now sits at a's old index 0
    a.activeconns, a.inactconns = 0, 0
    h.sched.conn_changed(a)          # a late close on the deleted dest must not touch index 0
    assert h.pick() is REFS[name](h.dests)
    assert h.pick() is not a
