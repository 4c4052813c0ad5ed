"""sh, dh, mh: table layout, stability, fallback, Maglev balance and disruption."""

from __future__ import annotations

import ipaddress
import random
from math import gcd

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ulvs.core.model import Dest, DestConfig, Proto, Service, ServiceConfig
from ulvs.sched import SchedulerError, create
from ulvs.sched.base import Scheduler
from ulvs.sched.mh import DEFAULT_TABLE_SIZE, PRIMES, MaglevHashing, dest_hashes, lookup_hash
from ulvs.sched.sh import bucket_of

M32 = 0xFFFFFFFF


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

    def add(self, w: int, n: int | None = None) -> Dest:
        self.n += 1
        addr = ipaddress.IPv4Address(0x0A4D0000 + (self.n if n is None else n))
        d = Dest(DestConfig(addr, 80, weight=w), self.svc, weight=w, last_weight=w or 1)
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


def available(d: Dest | None) -> bool:
    return d is not None and d.weight > 0 and not d.overloaded


def addr_in_bucket(b: int, start: int = 0x0B000000) -> int:
    a = start
    while bucket_of(a) != b:
        a += 1
    return a


# -- sh -----------------------------------------------------------------------------------------
def sh_layout(dests: list[Dest]) -> list[Dest]:
    """Each dest takes max(weight, 1) consecutive buckets, cycling through the list."""
    seq: list[Dest] = []
    while len(seq) < 256:
        for d in dests:
            seq.extend([d] * max(d.weight, 1))
    return seq[:256]


def test_sh_buckets_follow_weights_in_list_order() -> None:
    h = Harness(create("sh"))
    h.add(2), h.add(1), h.add(3), h.add(0)
    layout = sh_layout(h.dests)
    for b in range(256):
        d = h.sched.schedule(addr_in_bucket(b), 999, 0, 80)
        assert d is (layout[b] if available(layout[b]) else None), b


def test_sh_same_client_same_dest_whatever_the_load() -> None:
    h = Harness(create("sh"))
    for w in (1, 2, 3, 1):
        h.add(w)
    rng = random.Random(5)
    clients = [rng.getrandbits(32) for _ in range(500)]
    first = [h.sched.schedule(c, rng.randrange(65536), 0, 80) for c in clients]
    for d in h.dests:
        d.activeconns = rng.randrange(1000)
        h.sched.conn_changed(d)
    assert [h.sched.schedule(c, rng.randrange(65536), 0, 80) for c in clients] == first
    assert len({id(d) for d in first}) == 4


def test_sh_port_flag_mixes_the_port_in() -> None:
    plain = Harness(create("sh"))
    ported = Harness(create("sh", frozenset({"sh-port"})))
    for h in (plain, ported):
        for _ in range(8):
            h.add(1)
    c = 0x0B0C0D0E
    assert len({id(plain.sched.schedule(c, p, 0, 80)) for p in range(1000, 1100)}) == 1
    assert len({id(ported.sched.schedule(c, p, 0, 80)) for p in range(1000, 1100)}) > 4
    # The key is (caddr + cport) mod 2**32.
    b = bucket_of((c + 1234) & M32)
    assert ported.sched.schedule(c, 1234, 0, 80) is sh_layout(ported.dests)[b]


def ref_sh_fallback(layout: list[Dest], ihash: int) -> Dest | None:
    if available(layout[ihash]):
        return layout[ihash]
    for i in range(256):
        d = layout[(ihash + (ihash + i) % 256) % 256]
        if available(d):
            return d
    return None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=12))
def test_sh_fallback_probe_order(spec: list[tuple[int, bool]]) -> None:
    h = Harness(create("sh", frozenset({"sh-fallback"})))
    plain = Harness(create("sh"))
    for w, over in spec:
        for hh in (h, plain):
            d = hh.add(w)
            hh.overload(d, over)
    layout = sh_layout(h.dests)
    for b in range(256):
        a = addr_in_bucket(b)
        assert h.sched.schedule(a, 1, 0, 80) is ref_sh_fallback(layout, b)
        expect = layout[b] if available(layout[b]) else None
        got = plain.sched.schedule(a, 1, 0, 80)
        assert (got.index if got else None) == (expect.index if expect else None)


def test_sh_overload_flip_keeps_table_weight_change_rebuilds() -> None:
    h = Harness(create("sh"))
    a, b, _c = h.add(1), h.add(1), h.add(1)
    clients = [0x0B000000 + 7 * k for k in range(300)]
    before = [h.sched.schedule(x, 0, 0, 80) for x in clients]
    h.overload(b, True)
    during = [h.sched.schedule(x, 0, 0, 80) for x in clients]
    assert all(d2 is (None if d1 is b else d1) for d1, d2 in zip(before, during, strict=True))
    h.overload(b, False)
    assert [h.sched.schedule(x, 0, 0, 80) for x in clients] == before
    h.weight(a, 3)
    layout = sh_layout(h.dests)
    assert [h.sched.schedule(x, 0, 0, 80) for x in clients] == [layout[bucket_of(x)] for x in clients]


# -- dh -----------------------------------------------------------------------------------------
def test_dh_one_bucket_per_dest_keyed_by_vaddr() -> None:
    h = Harness(create("dh"))
    a, b, c = h.add(5), h.add(1), h.add(0)
    for bkt in range(256):
        v = addr_in_bucket(bkt, 0x0A000000)
        expect = h.dests[bkt % 3]
        for caddr in (1, 0x0B000001, 0xC0A80001):
            got = h.sched.schedule(caddr, 1000, v, 80)
            assert got is (expect if available(expect) else None)
    h.overload(a, True)
    assert h.sched.schedule(1, 1, addr_in_bucket(0, 0x0A000000), 80) is None
    h.remove(c)
    v = addr_in_bucket(1, 0x0A000000)
    assert h.sched.schedule(1, 1, v, 80) is b


# -- mh -----------------------------------------------------------------------------------------
def is_prime(n: int) -> bool:
    return n > 1 and all(n % p for p in range(2, int(n**0.5) + 1))


def test_mh_table_sizes_are_the_ipvs_primes() -> None:
    assert all(is_prime(p) for p in PRIMES)
    assert DEFAULT_TABLE_SIZE in PRIMES and DEFAULT_TABLE_SIZE > 100 * 655
    assert create("mh").table_size == DEFAULT_TABLE_SIZE      # type: ignore[attr-defined]
    for m in PRIMES[:5]:
        assert MaglevHashing(table_size=m).table_size == m
    for bad in (0, 256, 4096, 65537):
        with pytest.raises(SchedulerError):
            MaglevHashing(table_size=bad)


def ref_maglev(dests: list[Dest], m: int) -> list[Dest | None]:
    """Maglev population as in ip_vs_mh.c, written out plainly."""
    tab_bits = (8 + PRIMES.index(m)) // 2
    lws = [d.last_weight for d in dests]
    g = 0
    for w in lws:
        if w > 0:
            g = gcd(g, w)
    table: list[Dest | None] = [None] * m
    if g == 0:
        return table
    shift = max(0, (max(lws) // g).bit_length() - tab_bits)
    turns = [max((w // g) >> shift, 1) if w else 0 for w in lws]
    perms = []
    for d in dests:
        h1, h2 = dest_hashes(d)
        offset, skip = h1 % m, h2 % (m - 1) + 1
        perms.append(iter([(offset + j * skip) % m for j in range(m)]))
    filled = 0
    while filled < m:
        for k, d in enumerate(dests):
            for _ in range(turns[k]):
                slot = next(perms[k])
                while table[slot] is not None:
                    slot = next(perms[k])
                table[slot] = d
                filled += 1
                if filled == m:
                    return table
    return table


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=12), st.sampled_from(PRIMES[:3]))
def test_mh_table_matches_reference(weights: list[int], m: int) -> None:
    h = Harness(MaglevHashing(table_size=m))
    for w in weights:
        h.add(w)
    mh = h.sched
    assert isinstance(mh, MaglevHashing)
    assert mh.table() == ref_maglev(h.dests, m)


def slot_shares(mh: MaglevHashing, dests: list[Dest]) -> list[float]:
    tab = mh.table()
    return [sum(1 for x in tab if x is d) / len(tab) for d in dests]


@pytest.mark.parametrize("weights,m", [
    ([1] * 10, 1021),
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 65521),
    ([100, 100, 200, 300, 50, 50], 65521),
    ([3] * 50, 8191),
])
def test_mh_share_within_one_percent_of_weight_share(weights: list[int], m: int) -> None:
    assert m > 100 * len(weights)
    h = Harness(MaglevHashing(table_size=m))
    for w in weights:
        h.add(w)
    assert isinstance(h.sched, MaglevHashing)
    total = sum(weights)
    for share, w in zip(slot_shares(h.sched, h.dests), weights, strict=True):
        assert abs(share - w / total) <= 0.01 * (w / total), (share, w / total)
    # Flows follow the table: 200k random clients, within 1 percentage point.
    rng = random.Random(11)
    counts = {id(d): 0 for d in h.dests}
    n = 200_000
    for _ in range(n):
        d = h.sched.schedule(rng.getrandbits(32), 0, 0, 80)
        assert d is not None
        counts[id(d)] += 1
    for d, w in zip(h.dests, weights, strict=True):
        assert abs(counts[id(d)] / n - w / total) < 0.01


def test_mh_remove_or_add_one_of_ten_remaps_little() -> None:
    h = Harness(create("mh"))
    for _ in range(10):
        h.add(1)
    mh = h.sched
    assert isinstance(mh, MaglevHashing)
    rng = random.Random(3)
    clients = [rng.getrandbits(32) for _ in range(50_000)]
    before = [mh.schedule(c, 0, 0, 80) for c in clients]
    gone = h.dests[4]
    h.remove(gone)
    assert mh.last_changed_slots <= (1 / 10 + 0.01) * mh.table_size
    after = [mh.schedule(c, 0, 0, 80) for c in clients]
    moved = sum(1 for x, y in zip(before, after, strict=True) if x is not y)
    assert moved / len(clients) <= 1 / 10 + 0.01
    kept = sum(1 for x, y in zip(before, after, strict=True) if x is not gone and x is y)
    assert kept / sum(1 for x in before if x is not gone) > 0.98
    h.add(1, n=99)
    again = [mh.schedule(c, 0, 0, 80) for c in clients]
    moved = sum(1 for x, y in zip(after, again, strict=True) if x is not y)
    assert moved / len(clients) <= 1 / 10 + 0.01
    assert 0 < mh.last_changed_slots <= (1 / 10 + 0.01) * mh.table_size


def test_mh_changed_slots_are_the_table_delta() -> None:
    h = Harness(MaglevHashing(table_size=4093))
    for w in (1, 2, 3, 1, 1):
        h.add(w)
    mh = h.sched
    assert isinstance(mh, MaglevHashing)
    old = mh.table()
    h.weight(h.dests[1], 5)
    new = mh.table()
    delta = [i for i in range(4093) if old[i] is not new[i]]
    assert delta and mh.changed_slots() == delta and mh.last_changed_slots == len(delta)
    h.overload(h.dests[0], True)                  # the table does not depend on overload
    assert mh.changed_slots() == [] and mh.last_changed_slots == 0
    assert mh.table() == new


def test_mh_quiesced_dest_keeps_slots_fallback_moves_only_its_flows() -> None:
    plain = Harness(MaglevHashing(table_size=4093))
    fb = Harness(MaglevHashing(frozenset({"mh-fallback"}), table_size=4093))
    for h in (plain, fb):
        for _ in range(5):
            h.add(2)
    rng = random.Random(9)
    clients = [rng.getrandbits(32) for _ in range(5000)]
    before = [plain.sched.schedule(c, 0, 0, 80) for c in clients]
    assert [fb.sched.schedule(c, 0, 0, 80) for c in clients] == [
        fb.dests[d.index] if d else None for d in before]
    for h in (plain, fb):
        h.weight(h.dests[2], 0)                      # quiesce: last_weight stays 2
        assert isinstance(h.sched, MaglevHashing)
        assert h.sched.last_changed_slots == 0
    q = plain.dests[2]
    after = [plain.sched.schedule(c, 0, 0, 80) for c in clients]
    assert all(y is (None if x is q else x) for x, y in zip(before, after, strict=True))
    after_fb = [fb.sched.schedule(c, 0, 0, 80) for c in clients]
    for x, y in zip(before, after_fb, strict=True):
        assert x is not None and y is not None
        assert y is not fb.dests[2]
        if x is not q:
            assert y.index == x.index
    for h in (plain, fb):
        h.weight(h.dests[2], 2)
    assert [plain.sched.schedule(c, 0, 0, 80) for c in clients] == before


def test_mh_fallback_probe_matches_reference() -> None:
    h = Harness(MaglevHashing(frozenset({"mh-fallback", "mh-port"}), table_size=509))
    for w in (1, 1, 2, 1):
        h.add(w)
    h.overload(h.dests[0], True)
    h.weight(h.dests[2], 0)
    mh = h.sched
    assert isinstance(mh, MaglevHashing)
    tab = mh.table()
    m = 509
    for k in range(2000):
        c, p = 0x0B000000 + 31 * k, 1000 + k
        v = (c + p) & M32
        ihash = lookup_hash(v) % m
        expect = tab[ihash]
        if not available(expect):
            expect = None
            for i in range(m):
                d = tab[lookup_hash((v + (ihash + i) % m) & M32) % m]
                if available(d):
                    expect = d
                    break
        assert mh.schedule(c, p, 0, 80) is expect


def test_mh_port_flag_and_determinism() -> None:
    a = Harness(MaglevHashing(frozenset({"mh-port"}), table_size=2039))
    b = Harness(MaglevHashing(frozenset({"mh-port"}), table_size=2039))
    for w in (1, 2, 3):
        a.add(w)
    for w in (1, 2, 3):          # same dests, same order, built in one go
        b.n += 1
        addr = ipaddress.IPv4Address(0x0A4D0000 + b.n)
        d = Dest(DestConfig(addr, 80, weight=w), b.svc, weight=w, last_weight=w)
        d.index = len(b.dests)
        b.dests.append(d)
    b.sched.rebuild(b.dests)
    assert isinstance(a.sched, MaglevHashing) and isinstance(b.sched, MaglevHashing)
    assert [x.index if x else -1 for x in a.sched.table()] == [x.index if x else -1 for x in b.sched.table()]
    c = 0x0B0C0D0E
    assert len({id(a.sched.schedule(c, p, 0, 80)) for p in range(100)}) == 3
    plain = Harness(MaglevHashing(table_size=2039))
    for w in (1, 2, 3):
        plain.add(w)
    assert len({id(plain.sched.schedule(c, p, 0, 80)) for p in range(100)}) == 1
