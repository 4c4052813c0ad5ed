"""Weighted Maglev hashing (ip_vs_mh.c): a prime-sized lookup table maps the client to a dest.

Algorithm (Maglev, NSDI'16 §3.4, https://www.usenix.org/conference/nsdi16/technical-sessions/
presentation/eisenbud): every dest gets a permutation of the M table slots, offset = h1(daddr,
dport) mod M, skip = h2(daddr, dport) mod (M - 1) + 1, slot j = (offset + j*skip) mod M.  The
table is filled round-robin in list order; on its turn a dest claims its next ``turns`` free
slots of its permutation, turns = (last_weight / gcd) >> rshift (at least 1 if last_weight != 0),
rshift = max(0, fls(max_weight / gcd) - tab_bits), tab_bits = (8 + index of M in PRIMES) // 2 as
CONFIG_IP_VS_MH_TAB_INDEX/2 does (6 for the kernel default 4093).  last_weight is the latest
non-zero weight, so quiescing a dest (weight 0) keeps its slots and only makes it unavailable.
Lookup: slot = h(caddr [+ cport with ``mh-port``]) mod M; an unavailable dest (weight 0 or
overloaded) gives no dest, unless ``mh-fallback``: then slots h(key + (ihash + i) mod M) mod M,
i = 0..M-1, are probed until an available dest (or an empty slot) is found.

Permutations only depend on (daddr, dport) and the hashes are fixed-key (blake2b for h1/h2 at
build time, a murmur3 finaliser for lookups), so the same dest list gives the same table on
every director.  Each rebuild records which slots changed owner (``last_changed_slots``,
``changed_slots()``) so the control plane can report the delta.  Building is deferred to the
next lookup or delta query, so loading N dests one hook at a time builds the table once.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b
from math import gcd
from typing import TYPE_CHECKING

from ulvs.sched.base import Scheduler, SchedulerError, register

if TYPE_CHECKING:
    from ulvs.core.model import Dest

PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
# > 100 x dests (the Maglev paper's bound for <= 1% imbalance) for up to 655 dests.
DEFAULT_TABLE_SIZE = 65521

_M32 = 0xFFFFFFFF
_LOOKUP_SEED = 0x2545F491
_KEY1 = b"ulvs-mh-offset"
_KEY2 = b"ulvs-mh-skip"


def lookup_hash(v: int) -> int:
    """Deterministic 32-bit mix of a lookup key (murmur3 fmix32 of key ^ seed)."""
    h = (v ^ _LOOKUP_SEED) & _M32
    h = ((h ^ (h >> 16)) * 0x85EBCA6B) & _M32
    h = ((h ^ (h >> 13)) * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def dest_hashes(dest: Dest) -> tuple[int, int]:
    """(h1, h2) of the dest's (daddr, dport) with two fixed keys."""
    data = dest.config.daddr.packed + dest.config.dport.to_bytes(2, "big")
    h1 = int.from_bytes(blake2b(data, digest_size=8, key=_KEY1).digest(), "big")
    h2 = int.from_bytes(blake2b(data, digest_size=8, key=_KEY2).digest(), "big")
    return h1, h2


class MaglevHashing(Scheduler):
    name = "mh"

    def __init__(self, flags: frozenset[str] = frozenset(), table_size: int = DEFAULT_TABLE_SIZE) -> None:
        super().__init__(flags)
        if table_size not in PRIMES:
            raise SchedulerError(f"mh table size {table_size} is not one of {PRIMES}")
        self.table_size = table_size
        self.tab_bits = (8 + PRIMES.index(table_size)) // 2
        self._port = "mh-port" in flags
        self._fallback = "mh-fallback" in flags
        self._table: list[Dest | None] = [None] * table_size
        self._inputs: list[tuple[Dest, int]] = []    # (dest, last_weight) the table was built from
        self._any_available = False
        self._changed: list[int] = []
        self._dirty = False
        self.gcd = 0
        self.rshift = 0

    # -- table building (control plane) -----------------------------------------------------
    def turns(self, dests: Sequence[Dest]) -> list[int]:
        """Slots each dest claims per round; also sets ``gcd`` and ``rshift``."""
        g = 0
        mx = 0
        for d in dests:
            lw = d.last_weight
            if lw > 0:
                g = gcd(g, lw)
                mx = max(mx, lw)
        self.gcd = g
        if g < 1:
            self.rshift = 0
            return [0] * len(dests)
        self.rshift = rshift = max(0, (mx // g).bit_length() - self.tab_bits)
        return [((d.last_weight // g) >> rshift) or (1 if d.last_weight > 0 else 0) for d in dests]

    def populate(self, dests: Sequence[Dest]) -> list[Dest | None]:
        m = self.table_size
        if len(dests) > m:
            raise SchedulerError(f"mh: {len(dests)} dests do not fit a table of {m} slots")
        turns = self.turns(dests)
        table: list[Dest | None] = [None] * m
        claimers = [k for k, t in enumerate(turns) if t > 0]
        if not claimers:
            return table
        perm = [0] * len(dests)
        skip = [0] * len(dests)
        for k in claimers:
            h1, h2 = dest_hashes(dests[k])
            perm[k] = h1 % m
            skip[k] = h2 % (m - 1) + 1
        n = 0
        work = [(k, dests[k], skip[k], turns[k]) for k in claimers]
        while True:
            for k, d, s, t in work:
                p = perm[k]
                while t:
                    while table[p] is not None:      # next free slot of this dest's permutation
                        p += s
                        if p >= m:
                            p -= m
                    table[p] = d
                    n += 1
                    if n == m:
                        return table
                    t -= 1
                perm[k] = p

    def rebuild(self, dests: Sequence[Dest]) -> None:
        """Mark the table for rebuilding; it is built on the next lookup or delta query, so a
        burst of dest changes (a service loaded dest by dest) costs one build, not one each."""
        self.dests = dests
        self._dirty = True

    def _build(self) -> None:
        dests = self.dests
        old = self._table
        new = self.populate(dests)
        self._table = new
        self._inputs = [(d, d.last_weight) for d in dests]
        self._changed = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a is not b]
        self._dirty = False
        self._refresh_available()

    def _refresh_available(self) -> None:
        # Dests with last_weight > 0 own slots; is any of them available now?
        self._any_available = any(d.last_weight > 0 and d.weight > 0 and not d.overloaded
                                   for d, _ in self._inputs)

    def add_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.rebuild(dests)

    def del_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        self.rebuild(dests)

    def upd_dest(self, dests: Sequence[Dest], dest: Dest) -> None:
        # The table is a function of the (dest, last_weight) list only: quiescing a dest or
        # flipping its overload flag leaves it unchanged (the kernel rebuilds the same table).
        if not self._dirty and len(dests) == len(self._inputs) and all(
                d is d0 and d.last_weight == lw0 for d, (d0, lw0) in zip(dests, self._inputs, strict=True)):
            self.dests = dests
            self._changed = []
            self._refresh_available()
        else:
            self.rebuild(dests)

    @property
    def last_changed_slots(self) -> int:
        """How many slots changed owner in the last rebuild (0 if the last hook kept the table)."""
        if self._dirty:
            self._build()
        return len(self._changed)

    def changed_slots(self) -> list[int]:
        """The slots whose dest changed in the last rebuild, ascending."""
        if self._dirty:
            self._build()
        return list(self._changed)

    def table(self) -> list[Dest | None]:
        """A copy of the lookup table (slot -> dest)."""
        if self._dirty:
            self._build()
        return list(self._table)

    # -- scheduling ---------------------------------------------------------------------------
    def schedule(self, caddr: int, cport: int, vaddr: int, vport: int) -> Dest | None:
        if self._dirty:
            self._build()
        v = (caddr + cport) & _M32 if self._port else caddr
        h = (v ^ _LOOKUP_SEED) & _M32
        h = ((h ^ (h >> 16)) * 0x85EBCA6B) & _M32
        h = ((h ^ (h >> 13)) * 0xC2B2AE35) & _M32
        ihash = (h ^ (h >> 16)) % self.table_size
        d = self._table[ihash]
        if d is None:
            return None
        if d.weight > 0 and not d.overloaded:
            return d
        if not self._fallback or not self._any_available:
            return None
        return self._probe(v, ihash)

    def _probe(self, v: int, ihash: int) -> Dest | None:
        m = self.table_size
        table = self._table
        for i in range(m):
            d = table[lookup_hash((v + (ihash + i) % m) & _M32) % m]
            if d is None:
                return None
            if d.weight > 0 and not d.overloaded:
                return d
        return None


register("mh", MaglevHashing)
