"""When the event loop reads a port: its socket turning readable, a backlog, or a pacing tick.

A port that hands frames over one at a time (a ``lanes`` ring, the TAP) wakes the loop for every
frame.  At a light load that is what we want: a frame is forwarded microseconds after it
arrived.  At a moderate load it is the most expensive way to work: on this 2-core VM a wakeup
costs about 20 us of CPU (the scheduler, the idle exit, the loop's own round), several times
what forwarding the frame costs, so a ``lanes`` ring spends ~23 us of CPU per packet at 20 kpps
where TPACKET_V3 spends ~5.  ``Pacing`` (``ulvs run --rx-pace USEC``, off by default) is the
interrupt moderation of a network card, or the kernel's NAPI deferral, done in the event loop:
when the socket wakes us again sooner than ``interval`` after the last time, we stop listening
to it and read it on a periodic timer (a ``timerfd``) instead, every ``interval``, for as long
as each tick finds at least two frames; a tick that finds fewer hands the port back to its
socket.  Wakeups stay below about one per ``interval``, a frame waits at most about ``interval``
longer than it would have, and an idle port costs nothing.  It is a trade, measured in
docs/BENCHMARKS.md: CPU per packet at 20 kpps 23 us unpaced, 12 us at 300 us, 6 us at 1,000 us;
but keep-alive HTTP through 16 connections, bound by latency, falls from 35k to 27k (300 us) and
14k (1,000 us) requests/s.  A TPACKET_V3 ring needs none of this: the kernel hands over whole
blocks (its own moderation, at a millisecond).

A read that stopped at its budget (``port.backlog``) is continued with ``call_soon`` whatever
the port's mode: the loop runs its other callbacks first, and a V3 ring whose poll would stay
quiet is not left with blocks unread (see ``PacketRing.batches``).

The policy (``Pacing``) is pure and takes ``now``; ``RxWatch`` is its thin shell on the loop.
"""

from __future__ import annotations

import asyncio
import ctypes
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CLOCK_MONOTONIC = 1
DEFAULT_INTERVAL = 0.0        # s: off (latency first); --rx-pace sets it


@dataclass
class Pacing:
    """Whether a port is read on its socket (``polling`` False) or on the timer.

    ``step`` is called after every read with the frames it handed over and how it was woken;
    it returns the mode for the next read."""

    interval: float
    polling: bool = False
    last: float = -math.inf      # when the last read started
    ticks: int = 0               # reads on the timer (for the counters)
    wakeups: int = 0             # reads on the socket

    def step(self, now: float, frames: int, by_timer: bool) -> bool:
        if by_timer:
            self.ticks += 1
            # Polling pays only while a tick finds more than the one frame a wakeup would bring.
            self.polling = frames >= 2
        else:
            self.wakeups += 1
            # The socket woke us again within one interval: from now on, read on the timer.
            self.polling = frames > 0 and now - self.last < self.interval
        self.last = now
        return self.polling


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("interval_sec", ctypes.c_long), ("interval_nsec", ctypes.c_long),
                ("value_sec", ctypes.c_long), ("value_nsec", ctypes.c_long)]


_libc: Any = None


def _lib() -> Any:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_ITimerSpec),
                                        ctypes.c_void_p]
        _libc = lib
    return _libc


class Timerfd:
    """A periodic CLOCK_MONOTONIC ``timerfd`` (Python 3.11 has no ``os.timerfd_create``)."""

    def __init__(self) -> None:
        lib = _lib()
        fd = lib.timerfd_create(CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self.fd: int = fd
        self._spec = _ITimerSpec()
        self._ref = ctypes.byref(self._spec)

    def start(self, period: float) -> None:
        sec, nsec = divmod(max(1, round(period * 1e9)), 1_000_000_000)
        s = self._spec
        s.interval_sec = s.value_sec = sec
        s.interval_nsec = s.value_nsec = nsec
        self._set()

    def stop(self) -> None:
        s = self._spec
        s.interval_sec = s.value_sec = s.interval_nsec = s.value_nsec = 0
        self._set()
        self.clear()

    def clear(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass

    def _set(self) -> None:
        if _lib().timerfd_settime(self.fd, 0, self._ref, None) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class _Watch:
    port: Any
    read: Callable[[Any], int]
    pacing: Pacing | None = None
    timer: Timerfd | None = None
    by_timer: bool = False
    listening: bool = True        # the port's socket is in the loop
    again: bool = False           # a call_soon for a backlog is pending


class RxWatch:
    """Calls ``read(port)`` -- which returns the frames it handed over -- whenever the port has
    something: its socket is readable, its pacing timer ticked, or its last read left a backlog."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.loop = loop
        self.interval = interval
        self.clock = clock
        self._watches: dict[int, _Watch] = {}

    def watch(self, port: Any, read: Callable[[Any], int]) -> None:
        w = _Watch(port, read)
        if self.interval > 0 and getattr(port, "paced", False):
            w.pacing = Pacing(self.interval)
            w.timer = Timerfd()
            self.loop.add_reader(w.timer.fd, self._on_tick, w)
        self.loop.add_reader(port.fileno(), self._on_socket, w)
        self._watches[id(port)] = w

    def unwatch(self, port: Any) -> None:
        w = self._watches.pop(id(port), None)
        if w is None:
            return
        if w.listening:
            self.loop.remove_reader(port.fileno())
        if w.timer is not None:
            self.loop.remove_reader(w.timer.fd)
            w.timer.close()

    def close(self) -> None:
        for w in list(self._watches.values()):
            self.unwatch(w.port)

    def pacing(self, port: Any) -> Pacing | None:
        w = self._watches.get(id(port))
        return None if w is None else w.pacing

    def counters(self, port: Any) -> dict[str, int]:
        """A paced port's reads on its socket and on the timer (none for an unpaced one)."""
        p = self.pacing(port)
        return {} if p is None else {"rx_wakeups": p.wakeups, "rx_ticks": p.ticks}

    # -- the loop's callbacks ------------------------------------------------------------------
    def _on_socket(self, w: _Watch) -> None:
        w.by_timer = False
        self._read(w)

    def _on_tick(self, w: _Watch) -> None:
        assert w.timer is not None
        w.timer.clear()
        w.by_timer = True
        self._read(w)

    def _again(self, w: _Watch) -> None:
        w.again = False
        if self._watches.get(id(w.port)) is w:      # still watched
            self._read(w)

    def _read(self, w: _Watch) -> None:
        frames = w.read(w.port)
        if w.port.backlog:
            # Stopped at its budget: back after the loop's other callbacks, in the same mode.
            if not w.again:
                w.again = True
                self.loop.call_soon(self._again, w)
            return
        p = w.pacing
        if p is None:
            return
        was = p.polling
        polling = p.step(self.clock(), frames, w.by_timer)
        if polling == was:
            return
        assert w.timer is not None
        if polling:              # to the timer
            self.loop.remove_reader(w.port.fileno())
            w.listening = False
            w.timer.start(p.interval)
        else:                    # back to the socket
            w.timer.stop()
            self.loop.add_reader(w.port.fileno(), self._on_socket, w)
            w.listening = True

