"""sd_notify(3) without libsystemd: state datagrams to ``$NOTIFY_SOCKET`` for ``Type=notify``.

The protocol is one datagram of newline-separated ``KEY=VALUE`` lines on a unix datagram
socket whose path systemd puts in ``$NOTIFY_SOCKET``; a leading ``@`` names a socket in the
abstract namespace (the ``@`` becomes a NUL byte).  What the daemon says and when:

* ``READY=1`` once it serves (rings attached, configuration applied, control socket open);
* ``RELOADING=1`` with ``MONOTONIC_USEC=`` (CLOCK_MONOTONIC, µs: systemd 253+ matches it to its
  ``ExecReload``) when a reload starts, and ``READY=1`` when it is done, applied or refused;
* ``STOPPING=1`` when shutdown begins;
* ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2`` while ``$WATCHDOG_USEC`` is set (``WatchdogSec=``)
  and ``$WATCHDOG_PID``, if set, is this process.  The keep-alive is a timer on the daemon's
  own event loop, so a loop that hangs stops feeding the watchdog and systemd restarts it.

Without ``$NOTIFY_SOCKET`` every call does nothing.  ``from_env`` removes the variables, so the
daemon's children (workers, health monitor, exporter) do not talk to systemd in its name.
A failed send is logged once and never raises: systemd's absence must not stop the director.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import MutableMapping

log = logging.getLogger("ulvs")

_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str) -> str | bytes | None:
    """The ``sendto`` address of a ``$NOTIFY_SOCKET`` value: a path, or the abstract name of
    ``@name`` (with its leading NUL).  None for anything else (systemd also knows vsock, which
    a director never gets)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


def watchdog_interval(environ: MutableMapping[str, str], pid: int) -> float | None:
    """Seconds between two ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``, when it is set (and
    ``$WATCHDOG_PID`` is unset or ``pid``)."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner is not None and owner != str(pid):
        return None
    return int(usec) / 2e6


class Notifier:
    """Sends daemon states to systemd; every method is a no-op without a notify socket."""

    def __init__(self, address: str | bytes | None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog if address is not None else None
        self._sock: socket.socket | None = None
        self._warned = False
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True) -> Notifier:
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        address = socket_address(value) if value else None
        if value and address is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket path or @name: not notifying systemd", value)
        interval = watchdog_interval(env, os.getpid())
        if unset:
            for name in _VARS:
                env.pop(name, None)
        return cls(address, interval)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """One datagram of ``lines``; True if it was sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)      # never stall the loop on a full queue
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd (%s): %s", lines[0] if lines else "", e)
            return False
        return True

    def ready(self) -> bool:
        return self.send("READY=1", "STATUS=serving")

    def reloading(self, monotonic_usec: int | None = None) -> bool:
        usec = monotonic_usec
        if usec is None:
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> bool:
        self.stop_watchdog()
        return self.send("STOPPING=1", "STATUS=stopping")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def start_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        """Feed the watchdog now and every ``watchdog_interval`` from ``loop``."""
        if self.watchdog_interval is None:
            return
        self.watchdog()
        self._timer = loop.call_later(self.watchdog_interval, self.start_watchdog, loop)

    def stop_watchdog(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.stop_watchdog()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
