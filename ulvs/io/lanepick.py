"""Which receive lane an ``auto`` ring reads: the TPACKET_V3 ring or the quick socket.

A TPACKET_V3 ring is the cheap way to take a flood (the kernel hands over a block of frames per
wakeup) and the slow way to take a trickle: a frame waits for its block to be handed over, up to
the 1 ms retire timeout.  At 16 HTTP connections that timeout, not the CPU, set the rate (each
request and each reply crossed the director once: up to 2 ms a transaction, and a connection per
request needs three such round trips).  A plain packet socket is the other way round: it wakes
the reader for every frame, microseconds after it came, and at a flood spends a wakeup and a
system call on each.

An ``auto`` ring has both on its interface, in one fanout group whose program hands each frame
to exactly one of them (``ulvs.io.afpacket``, ``ulvs.io.fanout.LaneGroup``).  ``LanePick`` is
the policy, pure and given ``now``:

* On the ring, it counts the frames of each read over a window of ``window`` seconds; a window
  that averaged fewer than ``quick_below_pps`` frames a second (a trickle, or the first frames
  after an idle spell) moves the port to the quick socket.
* On the quick socket, a read that found its whole budget waiting (``full``: frames arrive faster
  than one at a time is served) moves it back to the ring at once, and the ring is kept for at
  least ``hold`` seconds before a quiet window may move it again, so a load near the threshold
  does not make the port flap.

Frames are not lost or doubled in a move: it is one swap of the group's program, and the lane
being left keeps what it already holds and is read out first (see ``PacketRing``), so a
connection's frames stay in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

QUICK_BELOW_PPS = 30_000.0   # a ring window under this rate moves the port to the quick socket
WINDOW = 0.02                # s: the ring's rate is judged over windows this long
HOLD = 1.0                   # s: the ring is kept this long after the quick socket fell behind


@dataclass
class LanePick:
    quick_below_pps: float = QUICK_BELOW_PPS
    window: float = WINDOW
    hold: float = HOLD
    quick: bool = False          # reading the quick socket (False: the ring)
    since: float = -math.inf     # start of the ring's current rate window
    frames: int = 0              # frames read from the ring in that window
    hold_until: float = -math.inf
    to_quick: int = 0            # moves, for the counters
    to_ring: int = 0

    def step(self, now: float, frames: int, full: bool) -> bool:
        """A read handed over ``frames`` (``full``: the quick socket had at least its budget
        waiting).  Returns True when the port changes lane (``quick`` tells which)."""
        if self.quick:
            if not full:
                return False
            self.quick = False
            self.to_ring += 1
            self.hold_until = now + self.hold
            self.since, self.frames = now, 0
            return True
        if self.since == -math.inf:
            self.since = now
        self.frames += frames
        span = now - self.since
        if span < self.window:
            return False
        rate = self.frames / span
        self.since, self.frames = now, 0
        if rate >= self.quick_below_pps or now < self.hold_until:
            return False
        self.quick = True
        self.to_quick += 1
        return True
