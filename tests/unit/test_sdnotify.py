"""sd_notify without libsystemd (``ulvs.runtime.sdnotify``): datagrams to a socket the test binds
as ``$NOTIFY_SOCKET`` (a path and an abstract name), the variables taken out of the environment,
the watchdog interval, a keep-alive driven only by the event loop, and the unit file checked by
``systemd-analyze verify`` where it is installed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ulvs.runtime.sdnotify import Notifier, socket_address, watchdog_interval

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "docs" / "systemd" / "ulvs.service"


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    s.bind(path)
    s.settimeout(5)
    yield s, path
    s.close()


def received(s: socket.socket) -> list[str]:
    return s.recv(4096).decode().split("\n")


def test_states_reach_the_notify_socket(listener: tuple[socket.socket, str]) -> None:
    s, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000", "OTHER": "x"}
    n = Notifier.from_env(env)
    assert env == {"OTHER": "x"}                         # the children will not see them
    assert n.enabled and n.watchdog_interval == 1.5
    assert n.ready()
    assert received(s) == ["READY=1", "STATUS=serving"]
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading = received(s)
    assert reloading[0] == "RELOADING=1" and reloading[2] == "STATUS=reloading"
    key, _, usec = reloading[1].partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(usec) <= after
    assert n.watchdog() and received(s) == ["WATCHDOG=1"]
    assert n.stopping() and received(s) == ["STOPPING=1", "STATUS=stopping"]
    n.close()


def test_an_abstract_socket_name(listener: tuple[socket.socket, str]) -> None:
    name = f"ulvs-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(b"\0" + name.encode())
    s.settimeout(5)
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.address == b"\0" + name.encode()
        assert n.ready() and received(s)[0] == "READY=1"
    finally:
        s.close()


def test_without_a_socket_nothing_is_sent_and_nothing_breaks(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    quiet = Notifier.from_env({})
    assert not quiet.enabled and quiet.watchdog_interval is None
    assert not quiet.ready() and not quiet.stopping()
    gone = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert not gone.ready() and not gone.ready()
    assert len([r for r in caplog.records if "cannot notify systemd" in r.getMessage()]) == 1   # said once
    assert socket_address("vsock:2:1234") is None and socket_address("@") is None
    assert not Notifier.from_env({"NOTIFY_SOCKET": "relative/path"}).enabled


def test_the_watchdog_interval_is_half_of_watchdog_usec_for_this_pid() -> None:
    me = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}, me) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(me)}, me) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(me + 1)}, me) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, me) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, me) is None
    assert watchdog_interval({}, me) is None
    assert Notifier.from_env({"WATCHDOG_USEC": "1000000"}).watchdog_interval is None   # no socket


class FakeLoop:
    """Records ``call_later``: the watchdog runs only when the loop runs its callbacks."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Any, tuple[Any, ...]]] = []

    def call_later(self, delay: float, cb: Any, *args: Any) -> Any:
        self.calls.append((delay, cb, args))

        class Handle:
            cancelled = False

            def cancel(self) -> None:
                self.cancelled = True
        return Handle()


def test_the_keepalive_is_fed_only_by_the_event_loop(listener: tuple[socket.socket, str]) -> None:
    s, path = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    loop = FakeLoop()
    n.start_watchdog(loop)  # type: ignore[arg-type]
    assert received(s) == ["WATCHDOG=1"]
    assert [(d, args) for d, _, args in loop.calls] == [(0.2, (loop,))]
    s.settimeout(0.2)
    with pytest.raises(TimeoutError):
        s.recv(4096)                      # a loop that does not run sends nothing more
    for i in range(3):                    # each turn of the loop feeds it once and re-arms
        _, cb, args = loop.calls[-1]
        cb(*args)
        assert s.recv(4096) == b"WATCHDOG=1" and len(loop.calls) == i + 2
    n.stopping()
    assert s.recv(4096).startswith(b"STOPPING=1")
    assert n._timer is None


def test_the_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    text = UNIT.read_text()
    for key in ("Type=notify", "NotifyAccess=main", "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec=",
                "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW",
                "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW",
                "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "RuntimeDirectory=ulvs",
                "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET", "Restart=always"):
        assert f"\n{key}" in text, key
    # verify wants the executables to exist: point them at this checkout's ulvs
    ulvs = Path(sys.executable).with_name("ulvs")
    assert ulvs.exists(), ulvs
    unit = tmp_path / "ulvs.service"
    unit.write_text(text.replace("/opt/ulvs/bin/ulvs", str(ulvs)))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr          # unknown keys are only warnings: none allowed
