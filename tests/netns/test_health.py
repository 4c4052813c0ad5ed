"""Health checks keep the cluster serving, end to end in the lab.

The real daemon runs a native TOML configuration with short timings (delay_loop 1,
connect_timeout 1, retry 1, delay_before_retry 0.5); its health monitor child probes the lab's
real servers.  Real servers are stopped and started with ``Lab.stop_server``/``restart_server``,
and every wait is a bounded poll of ``ulvs status --json`` (or ``ulvsadm -L -n``): no sleep with
a fixed expectation, and no timing threshold in any assertion.  Detection times are printed
(``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ulvs.lab import Lab
from ulvs.lab.director import PY, Director, director

pytestmark = pytest.mark.netns
VIP = "10.77.1.100"
RS = {"rs1": "10.77.2.11", "rs2": "10.77.2.12", "rs3": "10.77.2.13"}
WAIT = 30.0          # s: the bound of every poll (detection takes about 2 s)

TIMING = """connect_timeout = 1
retry = 1
delay_before_retry = 0.5
"""


def service(proto: str, port: int, check: str, extra: str = "", dests: str | None = None) -> str:
    if dests is None:
        dests = "".join(f'\n[[service.dest]]\naddress = "{a}"\n' for a in RS.values())
    return (f'[[service]]\nprotocol = "{proto}"\nvip = "{VIP}"\nport = {port}\nscheduler = "rr"\n'
            f'forwarding = "masq"\ndelay_loop = 1\n{extra}\n{check}{dests}')


HTTP_CHECK = f'[service.check]\ntype = "HTTP_GET"\n{TIMING}url = [{{ path = "/", status_code = 200 }}]\n'
UDP_CHECK = f'[service.check]\ntype = "UDP_CHECK"\n{TIMING}require_reply = true\npayload = "6869"\n'


# -- helpers ------------------------------------------------------------------------------------

def ulvs(d: Director, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [PY, "-m", "ulvs", *args, "--socket", d.sock]
    out: subprocess.CompletedProcess[str] = d.lab.run("director", argv, timeout=60)
    return out


def status(d: Director) -> dict[str, Any]:
    out = ulvs(d, "status", "--json")
    assert out.returncode == 0, out.stderr
    st: dict[str, Any] = json.loads(out.stdout)
    return st


def health(d: Director, daddr: str, dport: int = 80, proto: str = "tcp") -> dict[str, Any] | None:
    for x in status(d)["health"]["dests"]:
        if x["daddr"] == daddr and x["dport"] == dport and x["service"]["proto"] == proto:
            return dict(x)
    return None


def wait_for(d: Director, what: str, done: Callable[[], bool]) -> float:
    """Poll ``done`` until it holds (at most WAIT seconds); returns how long it took."""
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > WAIT:
            raise AssertionError(f"{what}: not within {WAIT:g} s\n--- daemon log ---\n{d.log_text()[-6000:]}")
        time.sleep(0.1)
    return time.monotonic() - start


def is_up(d: Director, daddr: str, dport: int = 80, proto: str = "tcp") -> Callable[[], bool]:
    def check() -> bool:
        h = health(d, daddr, dport, proto)
        return h is not None and h["up"]
    return check


def is_down(d: Director, daddr: str, dport: int = 80, proto: str = "tcp") -> Callable[[], bool]:
    def check() -> bool:
        h = health(d, daddr, dport, proto)
        return h is not None and not h["up"]
    return check


def monitor_ready(d: Director, count: int) -> Callable[[], bool]:
    """The monitor runs and has reported ``count`` dests (its first report says all of them)."""
    def check() -> bool:
        h = status(d)["health"]
        return bool(h["monitor"] and h["monitor"]["running"]) and len(h["dests"]) >= count
    return check


def pool(d: Director, header: str = f"TCP  {VIP}:80") -> dict[str, int]:
    """``ulvsadm -L -n``: the dests listed under one service, with their weights."""
    out: dict[str, int] = {}
    inside = False
    for line in d.listing().splitlines():
        if line.startswith(("TCP", "UDP", "FWM")):
            inside = line.startswith(header)
        elif inside and line.strip().startswith("->") and not line.strip().startswith("-> RemoteAddress"):
            fields = line.split()
            out[fields[1]] = int(fields[3])
    return out


def served_by(lab: Lab, count: int, port: int = 80) -> list[str | None]:
    results = lab.http_get("client", VIP, port=port, count=count)
    assert all(r.error is None and r.status == 200 for r in results), results
    return [r.server for r in results]


@contextmanager
def running(lab: Lab, cfg: str, backend: str = "afpacket", extra: tuple[str, ...] = ()) -> Iterator[Director]:
    """The daemon with ``cfg`` (native TOML); afterwards its log (the monitor's too) must show no
    traceback and no report the daemon refused."""
    with director(lab, cfg, backend, extra=extra, config_name="ulvs.toml") as d:
        yield d
    log = d.log_text()
    assert "Traceback" not in log and "daemon refused" not in log, log[-6000:]


@contextmanager
def extra_server(lab: Lab, role: str, name: str, http_port: int, udp_port: int) -> Iterator[None]:
    """One more lab HTTP/UDP server (``ulvs.lab.servers``) in ``role``'s namespace, stopped by PID."""
    proc = lab.popen(role, [PY, "-m", "ulvs.lab.servers", "--name", name, "--http-port", str(http_port),
                            "--udp-port", str(udp_port)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready and proc.stdout.readline().strip() == b"ready", f"{name} did not start"
        yield
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)


# -- (a) a failed real server leaves the pool and comes back ------------------------------------

@pytest.mark.parametrize("backend,extra", [("afpacket", ()), ("tap", ()), ("afpacket", ("--workers", "2"))],
                         ids=["afpacket", "tap", "afpacket-2-workers"])
def test_a_stopped_server_is_taken_out_and_returns(backend: str, extra: tuple[str, ...]) -> None:
    cfg = service("tcp", 80, HTTP_CHECK)
    with Lab() as lab, running(lab, cfg, backend, extra) as d:
        wait_for(d, "monitor running", monitor_ready(d, 3))
        assert pool(d) == {f"{a}:80": 1 for a in RS.values()}
        lab.stop_server("rs2")
        took = wait_for(d, "rs2 reported down", is_down(d, RS["rs2"]))
        how = " ".join((backend, *extra))
        print(f"\nHTTP_GET ({how}): rs2 stopped -> reported down in {took:.2f} s (detail: "
              f"{health(d, RS['rs2'])['detail']!r})")        # type: ignore[index]
        assert f"{RS['rs2']}:80" not in pool(d)           # ulvsadm shows the effective pool
        got = served_by(lab, 12)
        assert "rs2" not in got and set(got) == {"rs1", "rs3"}
        lab.restart_server("rs2")
        took = wait_for(d, "rs2 reported up", is_up(d, RS["rs2"]))
        print(f"HTTP_GET ({how}): rs2 restarted -> reported up in {took:.2f} s")
        assert pool(d) == {f"{a}:80": 1 for a in RS.values()}
        assert "rs2" in served_by(lab, 12)
        log = d.log_text()
        assert "health monitor started" in log and "dest 10.77.2.12:80 down" in log
        assert "health checks" not in log               # no "not run" warning any more


# -- (b) the sorry server ------------------------------------------------------------------------

def test_b_the_sorry_server_serves_while_every_server_is_down() -> None:
    cfg = service("tcp", 80, HTTP_CHECK, extra=f'sorry_server = "{RS["rs1"]}:8080"')
    with Lab() as lab, extra_server(lab, "rs1", "sorry", 8080, 5354), \
            running(lab, cfg) as d:
        wait_for(d, "monitor running", monitor_ready(d, 3))
        assert set(served_by(lab, 3)) == {"rs1", "rs2", "rs3"}
        for rs in RS:
            lab.stop_server(rs)
        took = wait_for(d, "sorry server on", lambda: bool(status(d)["health"]["sorry"]))
        print(f"\nsorry server: all three stopped -> sorry server on in {took:.2f} s")
        assert pool(d) == {f"{RS['rs1']}:8080": 1}
        assert served_by(lab, 4) == ["sorry"] * 4
        lab.restart_server("rs3")
        took = wait_for(d, "sorry server off", lambda: not status(d)["health"]["sorry"])
        print(f"sorry server: rs3 restarted -> sorry server off in {took:.2f} s")
        assert pool(d) == {f"{RS['rs3']}:80": 1}
        assert served_by(lab, 4) == ["rs3"] * 4


# -- (c) MISC_CHECK misc_dynamic sets the weight -------------------------------------------------

def test_c_misc_dynamic_exit_code_sets_the_weight() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ulvs-misc-"))
    code = tmp / "exit"
    code.write_text("0\n")
    script = f"/bin/sh -c 'exit $(cat {code})'"
    dests = (f'\n[[service.dest]]\naddress = "{RS["rs1"]}"\nweight = 3\n'
             f'\n[[service.dest]]\naddress = "{RS["rs2"]}"\nweight = 3\n'
             f'\n[[service.dest.check]]\ntype = "MISC_CHECK"\nmisc_path = "{script}"\nmisc_dynamic = true\n'
             'misc_timeout = 2\n')
    cfg = service("tcp", 80, "", dests=dests)
    with Lab() as lab, running(lab, cfg) as d:
        wait_for(d, "monitor running", monitor_ready(d, 2))
        assert pool(d) == {f"{RS['rs1']}:80": 3, f"{RS['rs2']}:80": 3}       # exit 0: configured weight
        code.write_text("7\n")                                               # 7 - 2 = weight 5
        took = wait_for(d, "weight 5", lambda: pool(d).get(f"{RS['rs2']}:80") == 5)
        print(f"\nMISC_CHECK: exit 7 -> weight 5 in ulvsadm -L -n after {took:.2f} s")
        assert health(d, RS["rs2"]) == {**health(d, RS["rs2"]), "up": True, "weight": 5}  # type: ignore[dict-item]
        code.write_text("1\n")                                               # down
        took = wait_for(d, "rs2 removed", lambda: f"{RS['rs2']}:80" not in pool(d))
        print(f"MISC_CHECK: exit 1 -> removed after {took:.2f} s")
        assert served_by(lab, 3) == ["rs1"] * 3
        code.write_text("0\n")
        wait_for(d, "configured weight again", lambda: pool(d).get(f"{RS['rs2']}:80") == 3)


# -- (d) a UDP flow on a failed dest is rescheduled on its next datagram -------------------------

UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[3])))
s.settimeout(2.0)
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b"pinned")
try:
    print(s.recv(1000).decode())
except OSError as e:
    print("ERROR", e)
"""


def udp_from(lab: Lab, cport: int) -> str:
    out = lab.python("client", UDP_CLIENT, VIP, "5353", str(cport))
    assert out.returncode == 0, out.stderr
    return str(out.stdout).strip()


def test_d_a_udp_flow_of_a_failed_dest_moves_on_its_next_datagram() -> None:
    cfg = service("udp", 5353, UDP_CHECK) + "\n[timeouts]\nudp = 300\n"
    with Lab() as lab, running(lab, cfg) as d:
        wait_for(d, "monitor running", monitor_ready(d, 3))
        first = udp_from(lab, 40053)
        assert first.endswith(":pinned"), first
        owner = first.split(":")[0]
        assert udp_from(lab, 40053) == first                 # the flow is pinned to its dest
        conns = d.listing("-c")
        assert "10.77.0.10:40053" in conns, conns
        lab.stop_server(owner)
        took = wait_for(d, f"{owner} reported down", is_down(d, RS[owner], 5353, "udp"))
        print(f"\nUDP_CHECK: {owner} stopped -> reported down in {took:.2f} s")
        # its flow expired with it, so the same flow's next datagram is scheduled afresh
        wait_for(d, "the flow expired", lambda: f"{RS[owner]}:5353" not in d.listing("-c"))
        again = udp_from(lab, 40053)
        assert again.endswith(":pinned") and not again.startswith(owner), again
        assert "1 UDP connection(s) expired" in d.log_text()


# -- (e) a reload does not flap health -----------------------------------------------------------

def test_e_reload_with_an_unchanged_config_keeps_health() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ulvs-notify-"))
    notes = tmp / "notes"
    notify = f'["/bin/sh", "-c", "echo $0 >> {notes}", "rs2-down"]'
    notify_up = f'["/bin/sh", "-c", "echo $0 >> {notes}", "rs2-up"]'
    dests = "".join(f'\n[[service.dest]]\naddress = "{a}"\n'
                    + (f"notify_down = {notify}\nnotify_up = {notify_up}\n" if rs == "rs2" else "")
                    for rs, a in RS.items())
    cfg = service("tcp", 80, HTTP_CHECK, dests=dests)
    with Lab() as lab, running(lab, cfg) as d:
        wait_for(d, "monitor running", monitor_ready(d, 3))
        lab.stop_server("rs2")
        wait_for(d, "rs2 reported down", is_down(d, RS["rs2"]))
        wait_for(d, "notify_down ran", lambda: notes.exists() and "rs2-down" in notes.read_text())
        since = health(d, RS["rs2"])["since"]          # type: ignore[index]
        out = ulvs(d, "reload")
        assert out.returncode == 0, out.stderr
        wait_for(d, "the monitor reloaded", lambda: "health monitor reloaded" in d.log_text())
        assert f"{RS['rs2']}:80" not in pool(d)          # still out after the reload
        # Let the reloaded monitor run many probes: stop rs3 and wait until it is down, then
        # bring it back.  A reset health state would have brought rs2 back in between.
        lab.stop_server("rs3")
        wait_for(d, "rs3 reported down", is_down(d, RS["rs3"]))
        lab.restart_server("rs3")
        wait_for(d, "rs3 reported up", is_up(d, RS["rs3"]))
        h = health(d, RS["rs2"])
        assert h is not None and not h["up"] and h["since"] == since
        assert notes.read_text().split() == ["rs2-down"]          # ran once, not again on reload
        assert d.log_text().count("dest 10.77.2.12:80 down") == 2  # the monitor's line + the daemon's
        lab.restart_server("rs2")
        wait_for(d, "rs2 reported up", is_up(d, RS["rs2"]))
        wait_for(d, "notify_up ran", lambda: "rs2-up" in notes.read_text())
        assert notes.read_text().split() == ["rs2-down", "rs2-up"]


# -- the daemon supervises its monitor ---------------------------------------------------------

def test_a_killed_monitor_is_restarted_without_bringing_a_failed_dest_back() -> None:
    cfg = service("tcp", 80, HTTP_CHECK)
    with Lab() as lab, running(lab, cfg) as d:
        wait_for(d, "monitor running", monitor_ready(d, 3))
        lab.stop_server("rs1")
        wait_for(d, "rs1 reported down", is_down(d, RS["rs1"]))
        pid = status(d)["health"]["monitor"]["pid"]
        os.kill(pid, signal.SIGKILL)

        def restarted() -> bool:
            mon = status(d)["health"]["monitor"]
            return bool(mon["running"] and mon["pid"] != pid and mon["restarts"] == 1)
        took = wait_for(d, "monitor restarted", restarted)
        pid = status(d)["health"]["monitor"]["pid"]
        print(f"\nmonitor killed -> restarted (pid {pid}) in {took:.2f} s")
        # The new monitor judges rs1 itself before saying anything about it ...
        wait_for(d, "the new monitor's verdict on rs1",
                 lambda: f"ulvs-health[{pid}] INFO TCP {VIP}:80 dest {RS['rs1']}:80 down" in d.log_text())
        # ... so rs1 was never put back in between.
        assert f"dest {RS['rs1']}:80 up" not in d.log_text()
        assert f"{RS['rs1']}:80" not in pool(d) and set(served_by(lab, 4)) == {"rs2", "rs3"}
    assert "exited with signal 9" in d.log_text()
    assert f"health monitor (pid {pid}) stopped" in d.log_text()
