"""The flow log (``ulvs run --flow-log PATH|-``): a JSON line per connection open and close.

A thin shell around the core's capture (``ulvs.core.flows``): the daemon hands the records
``Core.drain_flows`` returned to ``FlowLog.write`` every ``DRAIN_INTERVAL`` seconds on its loop,
and at shutdown a close line, reason ``shutdown``, for every connection still open.  Lines::

  {"ts": 1765400000.123, "event": "open", "proto": "tcp", "caddr": "10.77.0.10", "cport": 40512,
   "vaddr": "10.77.1.100", "vport": 80, "daddr": "10.77.2.11", "dport": 80, "method": "masq"}
  {"ts": ..., "event": "close", <the same 5-tuple, dest and method>, "start": 1765400000.123,
   "duration": 1.25, "inpkts": 6, "inbytes": 412, "outpkts": 9, "outbytes": 10732,
   "state": "TIME_WAIT", "reason": "fin"}
  {"ts": ..., "event": "suppressed", "count": 1234}

``ts`` is Unix time: of the first packet for an open, of the write for a close (within
``DRAIN_INTERVAL`` of the connection leaving the table; ``start`` and ``duration``, first to last
packet, say when it ran).  ``in`` is client -> real server, ``out`` real server -> client;
bytes are IP total lengths, as IPVS counts them.  ``"synced": true`` marks a connection made
from the peer director's sync records.  ``reason`` is a ``CloseReason`` label: expired, fin,
rst, dest_removed, dest_changed, flushed, evicted, reused, ops, sync, shutdown.

At most ``rate`` lines a second are written (a token bucket holding one second's worth); the
lines over that are counted, and when the rate allows again a ``suppressed`` line says how many
were left out.  Records are decoded only for the lines written, so a flood of connections costs
a counter, not a formatted line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

from ulvs.core.flows import FlowEvent, FlowRecord, flow_event

DRAIN_INTERVAL = 0.1      # seconds between drains of the core's records
DEFAULT_RATE = 1000       # lines per second


class FlowLogError(Exception):
    """The flow log's file cannot be opened."""


class RateLimit:
    """At most ``rate`` lines per second: a token bucket of ``rate`` tokens refilled at ``rate``
    per second, so a burst of one second's worth passes at once.  Time is an argument."""

    def __init__(self, rate: int) -> None:
        if rate < 1:
            raise ValueError("the flow log rate must be at least 1 line per second")
        self.rate = rate
        self.tokens = float(rate)
        self._stamp: float | None = None
        self.pending = 0            # lines refused since the last suppressed line
        self.suppressed = 0         # lines refused in all

    def take(self, now: float) -> bool:
        """Whether one more line may go out at ``now`` (and it takes its token)."""
        if self._stamp is not None and now > self._stamp:
            self.tokens = min(float(self.rate), self.tokens + (now - self._stamp) * self.rate)
        if self._stamp is None or now > self._stamp:
            self._stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def refuse(self) -> None:
        self.pending += 1
        self.suppressed += 1


def _addr_fields(ev: FlowEvent) -> dict[str, Any]:
    return {"proto": ev.proto.name.lower(), "caddr": str(ev.caddr), "cport": ev.cport,
            "vaddr": str(ev.vaddr), "vport": ev.vport, "daddr": str(ev.daddr), "dport": ev.dport,
            "method": ev.method.value}


def event_line(ev: FlowEvent, offset: float, now: float) -> str:
    """The JSON line of ``ev``; ``offset`` turns the core's clock into Unix time, ``now`` (the
    core's clock) is the time of writing, a close line's ``ts``."""
    line: dict[str, Any]
    if ev.event == "open":
        line = {"ts": round(ev.start + offset, 3), "event": "open", **_addr_fields(ev)}
    else:
        assert ev.reason is not None
        line = {"ts": round(now + offset, 3), "event": "close", **_addr_fields(ev),
                "start": round(ev.start + offset, 3), "duration": round(ev.duration, 3),
                "inpkts": ev.inpkts, "inbytes": ev.inbytes, "outpkts": ev.outpkts, "outbytes": ev.outbytes,
                "state": ev.state, "reason": ev.reason.label}
    if ev.synced:
        line["synced"] = True
    return json.dumps(line)


def suppressed_line(count: int, wall: float) -> str:
    return json.dumps({"ts": round(wall, 3), "event": "suppressed", "count": count})


class FlowLog:
    """Writes the core's flow records to a file (appended to) or stdout, ``rate`` lines a second
    at most.  ``clock`` is the core's clock (the daemon's ``now``), ``wall`` Unix time."""

    def __init__(self, path: str, rate: int = DEFAULT_RATE, *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.path = path
        self.limit = RateLimit(rate)
        self.clock, self.wall = clock, wall
        self.written = 0
        self._out: IO[str] = self._open()

    def _open(self) -> IO[str]:
        if self.path == "-":
            return sys.stdout
        try:
            return open(self.path, "a", encoding="utf-8")   # noqa: SIM115 - kept open, closed by close()
        except OSError as e:
            raise FlowLogError(f"cannot open the flow log {self.path}: {e.strerror}") from None

    def reopen(self) -> None:
        """Open the file afresh (after logrotate moved it: SIGHUP)."""
        if self.path != "-":
            new = self._open()
            self._out.close()
            self._out = new

    def write(self, records: Iterable[FlowRecord]) -> None:
        """Write what the rate allows of ``records`` (the core's, in order), then flush."""
        now = self.clock()
        offset = self.wall() - now
        limit, out = self.limit, self._out
        self._summary(now, offset)
        for rec in records:
            if limit.pending or not limit.take(now):
                limit.refuse()
                continue
            out.write(event_line(flow_event(rec), offset, now) + "\n")
            self.written += 1
        self._summary(now, offset)
        out.flush()

    def _summary(self, now: float, offset: float, force: bool = False) -> None:
        """The suppressed line, when lines were left out and the rate allows one more."""
        limit = self.limit
        if limit.pending and (force or limit.take(now)):
            self._out.write(suppressed_line(limit.pending, now + offset) + "\n")
            self.written += 1
            limit.pending = 0

    def close(self, records: Iterable[FlowRecord] = ()) -> None:
        """The last ``records`` (the final drain, then the shutdown lines), a suppressed line
        for whatever the rate left out, whatever the rate; then close the file."""
        self.write(records)
        now = self.clock()
        self._summary(now, self.wall() - now, force=True)
        self._out.flush()
        if self.path != "-":
            self._out.close()

    def info(self) -> dict[str, Any]:
        """For ``ulvs status``: where it goes and what it wrote."""
        return {"path": self.path, "rate": self.limit.rate, "written": self.written,
                "suppressed": self.limit.suppressed}
