"""The connection table: storage, lookup keys, lazy expiry and eviction.

Layout (chosen for speed and memory, see docs/ARCHITECTURE.md): a connection is a *slot*, an int
index into parallel arrays (state, last-seen time, plans, dest, key).  Lookup dicts map the
packet's own 12 contiguous header bytes ``saddr|daddr|sport|dport`` to the slot, so the fast path
builds no key: it slices one ``12s`` field out of its single ``struct.unpack_from``.  There is one
dict per protocol and direction:

* ``in``  key = caddr|vaddr|cport|vport   (client -> director)
* ``out`` key = daddr|caddr|dport|cport   (real server -> client, NAT only)

Expiry is lazy (like a timer wheel with re-check): packets only stamp ``last``; each slot sits in
one bucket of a coarse wheel at its last computed deadline; when the bucket is due the deadline is
recomputed from ``last`` and the state's timeout, and the slot either moves to a later bucket or
expires.  The table never reads a clock: ``now`` is always passed in.
"""

from __future__ import annotations

import heapq
from array import array
from collections import deque
from collections.abc import Iterator
from typing import Any

from ulvs.core.proto_tcp import TcpState

TCP, UDP = 6, 17

# Slot flags
F_NAT = 0x01        # has an out key (masq)
F_TEMPLATE = 0x02   # persistence template, not a real connection
F_INACTIVE = 0x04   # counted in the dest's inactconns (else activeconns)
F_SYNC = 0x08       # created from a sync message
F_UDP = 0x10        # protocol is UDP (else TCP)
F_OPS = 0x20        # one-packet scheduling: not found by the in key, rescheduled per datagram
F_DEAD = 0x40       # template unlinked (its dest became invalid); freed with its last conn
F_ANSWERED = 0x80   # the dest answered the connection's SYN (SYN-ACK or RST): counted once

# ``last`` holds 32-bit ticks of 1/16 s since the table's epoch (its first ``now``): 4 bytes per
# connection instead of 8, 62.5 ms resolution, 8.5 years of range.  The epoch lies EPOCH_LEAD
# seconds before the first ``now``, so a slot can be dated back (a connection synced from the
# peer director arrives with part of its timeout used up: ulvs.sync).
TICKS_PER_SECOND = 16
EPOCH_LEAD = 86400.0
# Eviction candidates are remembered in a bounded FIFO; the newest are kept.
EVICTABLE_QUEUE = 65536

# States whose connections may be evicted when the table is full: embryonic or already closed,
# never established.
EVICTABLE = frozenset({TcpState.SYN_RECV, TcpState.SYNACK, TcpState.CLOSE, TcpState.TIME_WAIT})


class ConnTable:
    """Slot storage and lookup for up to ``limit`` connections."""

    def __init__(self, limit: int = 1_000_000, tick: float = 1.0) -> None:
        if limit < 1:
            raise ValueError("connection limit must be at least 1")
        if tick <= 0:
            raise ValueError("timer tick must be positive")
        self.limit = limit
        self.tick = tick
        self.tabs: dict[tuple[int, int], dict[bytes, int]] = {
            (TCP, 0): {}, (TCP, 1): {}, (UDP, 0): {}, (UDP, 1): {},
        }
        self.tcp_in = self.tabs[(TCP, 0)]
        self.tcp_out = self.tabs[(TCP, 1)]
        self.udp_in = self.tabs[(UDP, 0)]
        self.udp_out = self.tabs[(UDP, 1)]
        self.in_tab = {TCP: self.tcp_in, UDP: self.udp_in}
        self.out_tab = {TCP: self.tcp_out, UDP: self.udp_out}
        self.templates: dict[Any, int] = {}   # persistence templates by (service key, masked caddr)
        # per-slot arrays
        self.state = bytearray()
        self.flags = bytearray()
        self.last = array("I")                 # ticks (see TICKS_PER_SECOND) of the last packet
        self.epoch: float | None = None
        self.due = array("i")                  # wheel bucket the slot is filed under, -1 = none
        self.key: list[Any] = []               # in key (bytes) or template key; None when free
        self.iplan: list[Any] = []             # in-direction rewrite plan (its P_DEST is the dest)
        self.oplan: list[Any] = []             # out-direction plan (NAT) or None
        self.control: dict[int, int] = {}      # slot -> slot of its persistence template
        # Flow log counters (``enable_flow_counters``): None while it is off, so a connection
        # costs nothing more then.  [slot*2 + dir] with dir 0 in, 1 out (a plan's SI & 1).
        self.fpkts: array[int] | None = None
        self.fbytes: array[int] | None = None    # IP total lengths (ulvs.core.flows)
        self.fstart: array[float] | None = None  # [slot] now of the first packet
        self.fclose: bytearray | None = None     # [slot] CLOSED_BY_FIN / _RST (ulvs.core.flows)
        self._free: list[int] = []
        self.count = 0
        # wheel
        self._buckets: dict[int, array[int]] = {}
        self._heap: list[int] = []
        self._evictable: deque[int] = deque(maxlen=EVICTABLE_QUEUE)

    # -- storage ----------------------------------------------------------------------------
    def _grow(self) -> None:
        old = len(self.state)
        new = min(self.limit, max(64, old * 2))
        add = new - old
        self.state.extend(bytes(add))
        self.flags.extend(bytes(add))
        self.last.extend(array("I", bytes(4 * add)))
        self.due.extend(array("i", [-1]) * add)
        self.key.extend([None] * add)
        self.iplan.extend([None] * add)
        self.oplan.extend([None] * add)
        if self.fpkts is not None:
            self._grow_flows(add)
        self._free.extend(range(new - 1, old - 1, -1))

    def enable_flow_counters(self) -> None:
        """Allocate the per-slot flow counters (zero; live slots start counting now)."""
        if self.fpkts is None:
            self.fpkts, self.fbytes = array("Q"), array("Q")
            self.fstart, self.fclose = array("d"), bytearray()
            self._grow_flows(len(self.state))

    def disable_flow_counters(self) -> None:
        self.fpkts = self.fbytes = self.fstart = self.fclose = None

    def _grow_flows(self, add: int) -> None:
        assert self.fpkts is not None and self.fbytes is not None
        assert self.fstart is not None and self.fclose is not None
        self.fpkts.extend(array("Q", bytes(16 * add)))
        self.fbytes.extend(array("Q", bytes(16 * add)))
        self.fstart.extend(array("d", bytes(8 * add)))
        self.fclose.extend(bytes(add))

    @property
    def full(self) -> bool:
        return self.count >= self.limit

    def ticks(self, now: float) -> int:
        """``now`` as a ``last`` stamp (rounded up, so nothing expires early)."""
        if self.epoch is None:
            self.epoch = now - EPOCH_LEAD
        return -int((self.epoch - now) * TICKS_PER_SECOND // 1)

    def seen(self, slot: int) -> float:
        """Time of the slot's last packet."""
        return (self.epoch or 0.0) + self.last[slot] / TICKS_PER_SECOND

    def proto(self, slot: int) -> int:
        return UDP if self.flags[slot] & F_UDP else TCP

    def alloc(self, proto: int, state: int, flags: int, now: float) -> int:
        """Take a free slot (the caller checked ``full``) and initialise its scalar fields."""
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self.count += 1
        self.state[slot] = state
        self.flags[slot] = flags | (F_UDP if proto == UDP else 0)
        epoch = self.epoch
        if epoch is None:
            epoch = self.epoch = now - EPOCH_LEAD
        self.last[slot] = -int((epoch - now) * TICKS_PER_SECOND // 1)
        fpkts = self.fpkts
        if fpkts is not None:
            assert self.fbytes is not None and self.fstart is not None and self.fclose is not None
            k = slot * 2
            fpkts[k] = fpkts[k + 1] = self.fbytes[k] = self.fbytes[k + 1] = 0
            self.fstart[slot] = now
            self.fclose[slot] = 0
        return slot

    def release(self, slot: int) -> None:
        """Forget a slot whose keys were already unlinked."""
        self.key[slot] = None
        self.iplan[slot] = None
        self.oplan[slot] = None
        self.control.pop(slot, None)
        self.due[slot] = -1
        self.flags[slot] = 0
        self.count -= 1
        self._free.append(slot)

    def dest(self, slot: int) -> Any:
        """The dest of a live slot (kept in its in plan)."""
        return self.iplan[slot][11]

    def live(self, slot: int) -> bool:
        return self.key[slot] is not None

    def slots(self) -> Iterator[int]:
        """Every live slot (for listings and bulk operations; not for the packet path)."""
        key = self.key
        return (i for i in range(len(key)) if key[i] is not None)

    # -- wheel ------------------------------------------------------------------------------
    def schedule(self, slot: int, deadline: float, earlier_only: bool = False) -> None:
        """File ``slot`` under the bucket that covers ``deadline`` (at or after it).

        With ``earlier_only`` a slot already filed earlier stays where it is: the lazy re-check
        at that bucket will move it on, so a growing timeout costs no second entry."""
        b = -int(-deadline // self.tick)  # ceil
        cur = self.due[slot]
        if cur == b or (earlier_only and 0 <= cur < b):
            return
        self.due[slot] = b
        lst = self._buckets.get(b)
        if lst is None:
            self._buckets[b] = array("i", (slot,))
            heapq.heappush(self._heap, b)
        else:
            lst.append(slot)

    def next_deadline(self) -> float | None:
        return self._heap[0] * self.tick if self._heap else None

    def due_slots(self, now: float) -> Iterator[int]:
        """Pop every bucket due at ``now`` and yield the slots still filed under it."""
        heap, buckets, due, tick = self._heap, self._buckets, self.due, self.tick
        while heap and heap[0] * tick <= now:
            b = heapq.heappop(heap)
            for slot in buckets.pop(b, ()):
                if due[slot] == b:
                    due[slot] = -1
                    yield slot

    # -- eviction ---------------------------------------------------------------------------
    def mark_evictable(self, slot: int) -> None:
        self._evictable.append(slot)

    def evictable_count(self) -> int:
        """How many slots ``pop_evictable`` could hand out now (without consuming the queue)."""
        state, key, flags = self.state, self.key, self.flags
        return len({s for s in self._evictable
                    if key[s] is not None and not flags[s] & (F_TEMPLATE | F_UDP) and state[s] in EVICTABLE})

    def pop_evictable(self) -> int:
        """A live, non-template slot in an evictable state, or -1."""
        q, state, key, flags = self._evictable, self.state, self.key, self.flags
        while q:
            slot = q.popleft()
            if key[slot] is not None and not flags[slot] & (F_TEMPLATE | F_UDP) and state[slot] in EVICTABLE:
                return slot
        return -1
