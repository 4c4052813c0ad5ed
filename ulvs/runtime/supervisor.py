"""The daemon's supervision of its children: the health monitor and the VRRP speaker (STYLE rule 12).

The monitor (``python -m ulvs.health.monitor``) runs in a process of its own so that probes,
scripts and their timeouts can never delay the dataplane's loop.  ``MonitorProcess`` starts it
(its own child, tracked by PID), forwards reloads to it as SIGHUP, restarts it with a doubling
back-off when it dies (reset once it has run for ``STABLE`` seconds), and stops it with SIGTERM,
then SIGKILL after ``STOP_GRACE`` seconds.  Everything it does is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

log = logging.getLogger("ulvs")

STOP_GRACE = 5.0        # s between SIGTERM and SIGKILL
BACKOFF_FIRST = 1.0     # s before the first restart
BACKOFF_MAX = 30.0
STABLE = 60.0           # s of running that resets the back-off


class MonitorProcess:
    """One child (``module``: the health monitor by default, or the VRRP speaker) for the
    configuration ``config`` (read as ``fmt``), reporting to the control socket ``socket``."""

    def __init__(self, config: Path, socket: Path, fmt: str | None = None, *,
                 module: str = "ulvs.health.monitor", name: str = "health monitor",
                 extra: tuple[str, ...] = ()) -> None:
        self.config, self.socket, self.fmt = config, socket, fmt
        self.module, self.name, self.extra = module, name, extra
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at: float | None = None      # wall clock, for ulvs status
        self.restarts = 0
        self._backoff = BACKOFF_FIRST
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", self.module, "--config", str(self.config),
                "--socket", str(self.socket), *self.extra]
        if self.fmt is not None:
            argv += ["--format", self.fmt]
        return argv

    async def start(self) -> None:
        """Start the child and watch it; a start that fails is retried like a death."""
        self._stopping = False
        await self._spawn()
        if self._watch is None or self._watch.done():
            self._watch = asyncio.ensure_future(self._supervise())

    async def _spawn(self) -> None:
        try:
            self.proc = await asyncio.create_subprocess_exec(*self.argv(), stdin=asyncio.subprocess.DEVNULL)
        except OSError as e:
            log.error("%s: cannot start %s: %s", self.name, self.argv()[0], e)
            self.proc = None
            return
        self.started_at = time.time()
        log.info("%s started (pid %d)", self.name, self.proc.pid)

    async def _supervise(self) -> None:
        while not self._stopping:
            began = time.monotonic()
            if self.proc is not None:
                code = await self.proc.wait()
                if self._stopping:
                    return
                if time.monotonic() - began >= STABLE:
                    self._backoff = BACKOFF_FIRST
                log.error("%s (pid %d) exited with %s; restarting in %g s", self.name, self.proc.pid,
                          _status(code), self._backoff)
            else:
                log.error("%s not running; retrying in %g s", self.name, self._backoff)
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            if self._stopping:
                return
            self.restarts += 1
            await self._spawn()

    def reload(self) -> None:
        """Forward a reload (the daemon's own reload succeeded): SIGHUP to the child."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)
            log.info("%s (pid %d): reload forwarded", self.name, pid)

    async def stop(self) -> None:
        """SIGTERM, wait up to STOP_GRACE, then SIGKILL; stops the supervision too."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_GRACE):
                code = await proc.wait()
            log.info("%s (pid %d) stopped (%s)", self.name, proc.pid, _status(code))
        except TimeoutError:
            log.warning("%s (pid %d) did not stop on SIGTERM within %g s: killed", self.name, proc.pid,
                        STOP_GRACE)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def kill_now(self) -> None:
        """Last resort when the loop is gone (daemon shutdown after a crash): SIGKILL by PID."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def info(self) -> dict[str, object]:
        return {"pid": self.pid, "running": self.pid is not None, "started": self.started_at,
                "restarts": self.restarts}


def _status(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"status {code}"


class ExporterProcess(MonitorProcess):
    """The Prometheus exporter (``python -m ulvs.runtime.metrics``), serving on ``listen``
    (HOST:PORT) what the daemon's status says over the control socket ``socket``: a child of its
    own, so a scrape never runs Python on the dataplane's GIL.  It reads no configuration."""

    def __init__(self, listen: str, socket: Path) -> None:
        super().__init__(Path(os.devnull), socket, module="ulvs.runtime.metrics", name="metrics exporter")
        self.listen = listen

    def argv(self) -> list[str]:
        return [sys.executable, "-m", self.module, "--listen", self.listen, "--socket", str(self.socket)]
