"""ulvsadm end to end over a real unix socket, without root: a small threaded server in the test
answers with ``handle_line`` on an in-process Core, and ``ulvsadm.main`` talks to it."""

from __future__ import annotations

import io
import ipaddress
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ulvs.cli import ulvsadm
from ulvs.core import Core, Verdict
from ulvs.packet import builder
from ulvs.runtime.control import handle_line

A = ipaddress.IPv4Address


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _Server)
        for line in self.rfile:
            with server.lock:
                self.wfile.write(handle_line(server.core, line, server.now))


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, core: Core) -> None:
        super().__init__(path, _Handler)
        self.core = core
        self.now = 100.0
        self.lock = threading.Lock()


@dataclass
class Daemon:
    path: str
    server: _Server

    @property
    def core(self) -> Core:
        return self.server.core

    def run(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        rc = ulvsadm.main(["--socket", self.path, *argv], stdin=io.StringIO(stdin), stdout=out, stderr=err)
        return rc, out.getvalue(), err.getvalue()

    def ok(self, *argv: str, stdin: str = "") -> str:
        rc, out, err = self.run(*argv, stdin=stdin)
        assert (rc, err) == (0, ""), (argv, err)
        return out


def _start(tmp_path: Path, name: str) -> Iterator[Daemon]:
    path = str(tmp_path / name)
    server = _Server(path, Core(conn_limit=4096))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Daemon(path, server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from _start(tmp_path, "ulvs.sock")


@pytest.fixture
def other(tmp_path: Path) -> Iterator[Daemon]:
    yield from _start(tmp_path, "other.sock")


SETUP = [
    ["-A", "-t", "10.0.0.100:80"],
    ["-a", "-t", "10.0.0.100:80", "-r", "192.168.10.2:80", "-m"],
    ["-a", "-t", "10.0.0.100:80", "-r", "192.168.10.1", "-m", "-w", "1"],
    ["-A", "-t", "10.0.0.101:443", "-s", "rr", "-p", "-M", "255.255.255.0"],
    ["-a", "-t", "10.0.0.101:443", "-r", "192.168.20.1:8443", "-w", "100"],
    ["-A", "-u", "10.0.0.102:53", "-s", "sh", "-b", "flag-1,flag-2", "-o"],
    ["-a", "-u", "10.0.0.102:53", "-r", "192.168.30.1", "-m", "-x", "1000", "-y", "10"],
    ["-A", "-f", "7", "-s", "wrr", "--group-member", "tcp:10.0.0.103:80", "--group-member",
     "udp:10.0.0.103:0", "-p", "600"],
    ["-a", "-f", "7", "-r", "192.168.40.1", "-w", "3"],
]

LISTING = (Path(__file__).resolve().parents[1] / "golden" / "socket_list.txt").read_text()

SAVED = """\
-A -t 10.0.0.100:80 -s wlc
-a -t 10.0.0.100:80 -r 192.168.10.1:80 -m -w 1
-a -t 10.0.0.100:80 -r 192.168.10.2:80 -m -w 1
-A -t 10.0.0.101:443 -s rr -p 300 -M 255.255.255.0
-a -t 10.0.0.101:443 -r 192.168.20.1:443 -g -w 100
-A -u 10.0.0.102:53 -s sh -o -b sh-fallback,sh-port
-a -u 10.0.0.102:53 -r 192.168.30.1:53 -m -w 1 -x 1000 -y 10
-A -f 7 -s wrr -p 600 --group-member tcp:10.0.0.103:80 --group-member udp:10.0.0.103:0
-a -f 7 -r 192.168.40.1:0 -g -w 3
"""


def setup(d: Daemon) -> None:
    for argv in SETUP:
        d.ok(*argv)


def test_add_list_save(daemon: Daemon) -> None:
    setup(daemon)
    assert daemon.ok("-L", "-n") == LISTING
    assert daemon.ok("-L") == LISTING
    assert daemon.ok("-S", "-n") == SAVED
    assert daemon.ok("-L", "-n", "-t", "10.0.0.101:443") == (
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "TCP  10.0.0.101:443 rr persistent 300 mask 255.255.255.0\n"
        "  -> 192.168.20.1:443             Route   100    0          0         \n")


def test_save_restore_round_trip(daemon: Daemon, other: Daemon) -> None:
    setup(daemon)
    saved = daemon.ok("-S", "-n")
    assert other.ok("-R", stdin=saved) == ""
    assert other.ok("-S", "-n") == saved
    assert other.ok("-L", "-n") == LISTING
    # and back through a clear
    daemon.ok("-C")
    assert daemon.ok("-S", "-n") == ""
    daemon.ok("-R", stdin="# restored\nipvsadm " + saved.replace("\n", "\nulvsadm ", 1))
    assert daemon.ok("-S", "-n") == saved


def test_restore_is_atomic(daemon: Daemon) -> None:
    setup(daemon)
    before = daemon.ok("-S", "-n")
    rc, out, err = daemon.run("-R", stdin="-C\n-A -t 10.9.9.9:80\n\n-a -t 10.0.0.100:80 -r 1.2.3.4 -m\n")
    assert (rc, out) == (1, "")
    assert err == "line 4: no such service TCP 10.0.0.100:80 (nothing was restored)\n"
    assert daemon.ok("-S", "-n") == before
    rc, out, err = daemon.run("-R", stdin="-C\n-A -t 10.9.9.9\n")
    assert (rc, err) == (2, "line 2: Zero port specified for non-persistent service\n")
    assert daemon.ok("-S", "-n") == before


def test_edit_delete_and_errors(daemon: Daemon) -> None:
    setup(daemon)
    daemon.ok("-E", "-t", "10.0.0.100:80", "-s", "lc")
    daemon.ok("-e", "-t", "10.0.0.100:80", "-r", "192.168.10.1", "-m", "-w", "5")
    daemon.ok("-d", "-t", "10.0.0.100:80", "-r", "192.168.10.2")
    daemon.ok("-D", "-u", "10.0.0.102:53")
    daemon.ok("-E", "-f", "7", "-s", "rr")
    assert daemon.ok("-S") == (
        "-A -t 10.0.0.100:80 -s lc\n"
        "-a -t 10.0.0.100:80 -r 192.168.10.1:80 -m -w 5\n"
        "-A -t 10.0.0.101:443 -s rr -p 300 -M 255.255.255.0\n"
        "-a -t 10.0.0.101:443 -r 192.168.20.1:443 -g -w 100\n"
        "-A -f 7 -s rr --group-member tcp:10.0.0.103:80 --group-member udp:10.0.0.103:0\n"
        "-a -f 7 -r 192.168.40.1:0 -g -w 3\n")
    assert daemon.run("-A", "-t", "10.0.0.100:80") == (1, "", "service TCP 10.0.0.100:80 already exists\n")
    rc, _, err = daemon.run("-a", "-t", "10.0.0.100:80", "-r", "192.168.10.9", "-i")
    assert rc == 1 and "tunnel forwarding method is not supported" in err
    assert daemon.run("-A", "-t", "10.0.0.1:80", "-s", "nope")[0] == 1
    assert daemon.run("-L", "-t", "10.0.0.9:80") == (1, "", "no such service TCP 10.0.0.9:80\n")
    assert daemon.run("-A", "-t", "10.0.0.1:80", "-w", "3") == (
        2, "", "Illegal 'weight' option with the 'add-service' command\n")
    daemon.ok("-C")
    assert daemon.ok("-L", "-n") == "\n".join(LISTING.splitlines()[:3]) + "\n"


def test_zero_stats_and_timeouts(daemon: Daemon) -> None:
    setup(daemon)
    core = daemon.core
    with daemon.server.lock:
        for i, addr in enumerate(("192.168.10.1", "192.168.10.2")):
            core.set_neighbor(A(addr), 2, bytes([2, 0, 0, 0, 2, i + 1]), builder.mac("02:00:00:00:02:fe"))
        for cport in range(1000, 1004):
            frame = bytearray(builder.tcp_frame("02:00:00:00:01:01", "02:00:00:00:01:fe", "203.0.113.7",
                                                "10.0.0.100", cport, 80, 0x02))
            assert core.process(frame, 1, 95.0)[0] == Verdict.FORWARD
    stats = daemon.ok("-L", "-n", "--stats")
    assert "TCP  10.0.0.100:80                       4        4        0      160        0\n" in stats
    conns = daemon.ok("-L", "-n", "-c")
    assert conns.startswith("IPVS connection entries\npro expire state")
    assert conns.count("SYN_RECV") == 4 and "TCP 00:55  SYN_RECV    203.0.113.7:1000   10.0.0.100:80" in conns
    daemon.ok("-Z", "-t", "10.0.0.101:443")
    assert daemon.ok("-L", "-n", "--stats") == stats
    daemon.ok("-Z")
    assert "TCP  10.0.0.100:80                       0        0        0        0        0\n" in \
        daemon.ok("-L", "-n", "--stats", "--exact")
    assert daemon.ok("-L", "-n", "--rate").count("        0" * 5 + "\n") == 9    # no estimator: all 0
    assert daemon.ok("-L", "--timeout") == "Timeout (tcp tcpfin udp): 900 120 300\n"
    daemon.ok("--set", "1800", "0", "60")
    assert daemon.ok("-L", "--timeout") == "Timeout (tcp tcpfin udp): 1800 120 60\n"


def test_socket_from_environment_and_missing_daemon(daemon: Daemon, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ULVS_SOCKET", daemon.path)
    out, err = io.StringIO(), io.StringIO()
    assert ulvsadm.main(["-A", "-t", "10.0.0.1:80"], stdout=out, stderr=err) == 0
    assert ulvsadm.main([], stdout=out, stderr=err) == 0
    assert "TCP  10.0.0.1:80 wlc\n" in out.getvalue()
    missing = str(tmp_path / "nothing.sock")
    out, err = io.StringIO(), io.StringIO()
    assert ulvsadm.main(["--socket", missing, "-L", "-n"], stdout=out, stderr=err) == 1
    assert err.getvalue() == f"cannot connect to ulvs daemon at {missing}: No such file or directory\n"


def test_commands_without_the_daemon() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert ulvsadm.main(["--socket", "/nonexistent", "-L", "--daemon"], stdout=out, stderr=err) == 1
    assert out.getvalue() == "" and "cannot connect to ulvs daemon at /nonexistent" in err.getvalue()
    assert ulvsadm.main(["--start-daemon", "master"], stdout=out, stderr=err) == 2
    assert "runs connection sync from its configuration" in err.getvalue()
    out = io.StringIO()
    assert ulvsadm.main(["-h"], stdout=out, stderr=err) == 0
    assert "Usage:\n  ulvsadm -A|E virtual-service" in out.getvalue()
    out = io.StringIO()
    assert ulvsadm.main(["-v"], stdout=out, stderr=err) == 0
    assert out.getvalue().startswith("ulvsadm v")


def test_daemon_view_lines() -> None:
    assert ulvsadm.daemon_lines(None, None) == ""          # neither runs: nothing, as ipvsadm
    sync = {"role": "master", "interface": "eth1", "syncid": 7, "destinations": ["224.0.0.81:8848"],
            "ready": True, "lag_seconds": None, "records_sent": 12, "records_applied": 0,
            "lost_messages": 1, "authenticated": True}
    vrrp = [{"iname": "VI_1", "vrid": 51, "intf": "eth0", "state": 2, "state_name": "MASTER",
             "priority": 150, "address": "10.0.0.1"}]
    assert ulvsadm.daemon_lines(sync, vrrp).splitlines() == [
        "master sync daemon (mcast=eth1, syncid=7, dest=224.0.0.81:8848)",
        "  sync: ready, lag - , sent 12, applied 0, lost messages 1, authenticated yes".replace("- ,", "-,"),
        "VRRP VI_1 vrid 51 on eth0: MASTER (priority 150, address 10.0.0.1)"]
    lines = ulvsadm.daemon_lines(dict(sync, role="backup", lag_seconds=0.25, ready=False), None)
    assert lines.splitlines()[1].startswith("  sync: bulk resync pending, lag 0.250 s,")


def test_console_script(daemon: Daemon) -> None:
    script = Path(sys.executable).with_name("ulvsadm")
    if not script.exists():
        pytest.skip("the ulvsadm console script is not installed (pip install -e .)")
    setup(daemon)
    result = subprocess.run([str(script), "--socket", daemon.path, "-S", "-n"], capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, SAVED, "")
