"""``ulvs run`` under systemd's Type=notify protocol, without systemd: the test binds the
``$NOTIFY_SOCKET`` and reads what the daemon in the lab says -- READY=1 once it serves, WATCHDOG=1
while ``$WATCHDOG_USEC`` is set, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around every
reload (SIGHUP, ``ulvs reload``, and a refused one), STOPPING=1 on SIGTERM -- and that its
children do not inherit the socket."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ulvs.lab import Lab
from ulvs.lab.director import PY, Director, director, nat_rules

pytestmark = pytest.mark.netns
WAIT = 30.0


class Listener:
    """The notify socket: every datagram, in order, as a tuple of lines."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.got: list[tuple[str, ...]] = []
        self._stop = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                self.got.append(tuple(self.sock.recv(4096).decode().split("\n")))
            except TimeoutError:
                continue
            except OSError:
                return

    def states(self) -> list[str]:
        """The messages but the watchdog's, by their first line."""
        return [m[0] for m in list(self.got) if m != ("WATCHDOG=1",)]

    def close(self) -> None:
        self._stop = True
        self.thread.join()
        self.sock.close()


@pytest.fixture
def notify(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    tmp = Path(tempfile.mkdtemp(prefix="ulvs-notify-"))
    listener = Listener(tmp / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")           # WATCHDOG=1 every 0.2 s
    yield listener
    listener.close()
    (tmp / "notify").unlink()
    tmp.rmdir()


def until(d: Director, what: str, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, f"{what}\n{d.log_text()[-4000:]}"
        time.sleep(0.05)


def test_the_daemon_tells_systemd_its_state(notify: Listener) -> None:
    with Lab() as lab, director(lab, nat_rules("rr")) as d:
        until(d, "READY=1", lambda: "READY=1" in notify.states())
        assert notify.states() == ["READY=1"]
        assert ("READY=1", "STATUS=serving") in notify.got
        until(d, "three keep-alives", lambda: notify.got.count(("WATCHDOG=1",)) >= 3)
        # the children (the exporter here) do not talk to systemd in the daemon's name
        exporter = d.status()["daemon"]["metrics"]["pid"]
        environ = Path(f"/proc/{exporter}/environ").read_bytes().split(b"\0")
        assert not any(v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_USEC=")) for v in environ)

        os.kill(d.proc.pid, signal.SIGHUP)
        until(d, "SIGHUP reload", lambda: notify.states() == ["READY=1", "RELOADING=1", "READY=1"])
        reloading = next(m for m in notify.got if m[0] == "RELOADING=1")
        key, _, usec = reloading[1].partition("=")
        assert key == "MONOTONIC_USEC" and int(usec) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        out = lab.run("director", [PY, "-m", "ulvs", "reload", "--socket", d.sock])
        assert out.returncode == 0, out.stderr
        until(d, "ulvs reload", lambda: notify.states().count("RELOADING=1") == 2)
        Path(d.log).with_name("rules").write_text("-A -t 10.77.1.100:80 -s nosuchsched\n")   # refused
        out = lab.run("director", [PY, "-m", "ulvs", "reload", "--socket", d.sock])
        assert out.returncode != 0
        until(d, "refused reload", lambda: notify.states() == ["READY=1"] + ["RELOADING=1", "READY=1"] * 3)
        assert [r.server for r in lab.http_get("client", lab.vip, count=3)] == ["rs1", "rs2", "rs3"]
    deadline = time.monotonic() + WAIT
    while "STOPPING=1" not in notify.states():
        assert time.monotonic() < deadline, notify.got
        time.sleep(0.05)
    assert notify.states()[-1] == "STOPPING=1"
    stopping = notify.got.index(("STOPPING=1", "STATUS=stopping"))
    assert ("WATCHDOG=1",) not in notify.got[stopping + 1:]                # no keep-alive after it
