"""The Prometheus exporter end to end: a director under traffic in the lab, scraped at
``http://127.0.0.1:9595/metrics`` from inside its namespace.

Every family is checked against what the daemon itself says: held connections against
``ulvsadm -L -n``, the counters against ``ulvsadm -L -n --stats --exact``, drops and the
connection table against ``ulvs status --json``, a stopped real server against its health check,
and the dashboard's metric names against the live scrape.  Also: the exporter is the daemon's
child, holds no capability and the director's only inet listener, is restarted when it dies,
stopped with the daemon and gone when the daemon is killed; ``--metrics-listen`` and
``[metrics] listen`` choose its address.  Every wait is a bounded poll; no timing threshold.
"""

from __future__ import annotations

import os
import platform
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_packaging import dashboard_exprs
from ulvs import __version__
from ulvs.core.proto_tcp import STATE_NAMES
from ulvs.lab import Lab
from ulvs.lab.director import PY, Director, director
from ulvs.runtime import caps
from ulvs.runtime.metrics import OPTIONAL, sample_names

pytestmark = pytest.mark.netns
VIP = "10.77.1.100"
RS = ("10.77.2.11", "10.77.2.12", "10.77.2.13")
URL = "http://127.0.0.1:9595/metrics"
WAIT = 30.0          # s: the bound of every poll
CONN_LIMIT = 5000

CHECK = '[service.check]\ntype = "TCP_CHECK"\nconnect_timeout = 1\nretry = 1\ndelay_before_retry = 0.5\n'
CONFIG = (
    f'[[service]]\nprotocol = "tcp"\nvip = "{VIP}"\nport = 80\nscheduler = "rr"\nforwarding = "masq"\n'
    f'delay_loop = 1\n{CHECK}' + "".join(f'\n[[service.dest]]\naddress = "{a}"\n' for a in RS)
    + f'\n[[service]]\nprotocol = "udp"\nvip = "{VIP}"\nport = 5353\nscheduler = "rr"\nforwarding = "masq"\n'
    + "".join(f'\n[[service.dest]]\naddress = "{a}"\n' for a in RS)
    + f'\n[[service]]\nprotocol = "group"\nfwmark = 7\nmembers = ["tcp {VIP}:8080"]\nscheduler = "rr"\n'
      f'forwarding = "masq"\n\n[[service.dest]]\naddress = "{RS[0]}"\nport = 80\n')

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- helpers ----------------------------------------------------------------------------------------
def scrape(lab: Lab, url: str = URL) -> Samples:
    """One scrape from inside the director's namespace (retried until the exporter listens)."""
    deadline = time.monotonic() + WAIT
    while True:
        out = lab.run("director", ["curl", "-sSf", "--max-time", "10", url])
        if out.returncode == 0:
            return {(s.name, frozenset(s.labels.items())): s.value
                    for fam in text_string_to_metric_families(out.stdout) for s in fam.samples}
        if time.monotonic() > deadline:
            raise AssertionError(f"no scrape from {url}: {out.stderr}")
        time.sleep(0.1)


def pick(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == name and want <= lab}


def one(samples: Samples, name: str, **labels: str) -> float:
    found = pick(samples, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return next(iter(found.values()))


def backend(proto: str, laddr: str, lport: int, raddr: str, rport: int = 80,
            mark: str = "") -> dict[str, str]:
    return {"proto": proto, "local_address": laddr, "local_port": str(lport), "remote_address": raddr,
            "remote_port": str(rport), "local_mark": mark}


def wait_for(d: Director, what: str, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT:g} s\n--- daemon log ---\n{d.log_text()[-6000:]}")
        time.sleep(0.1)


def listing(d: Director, *args: str) -> dict[str, dict[str, list[int]]]:
    """``ulvsadm -L -n [args]``: per service line, per dest the numbers of its row."""
    out: dict[str, dict[str, list[int]]] = {}
    current = ""
    for line in d.listing(*args).splitlines():
        f = line.split()
        if line.startswith(("TCP ", "UDP ", "FWM ")):
            current = f"{f[0]} {f[1]}"
            out[current] = {"": [int(x) for x in f[2:] if x.isdigit()]}
        elif current and line.strip().startswith("->") and f[1] != "RemoteAddress:Port":
            out[current][f[1]] = [int(x) for x in f[2:] if x.isdigit()]
    return out


HOLD = r"""
import socket, sys
socks = []
args = sys.argv[1:]
for host, port, n in zip(args[::3], args[1::3], args[2::3]):
    for _ in range(int(n)):
        socks.append(socket.create_connection((host, int(port)), timeout=10))
print("held", len(socks), flush=True)
sys.stdin.readline()
"""

STRAY_ACKS = r"""
import sys
from scapy.all import IP, TCP, send
vip, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    ack = TCP(sport=42000 + i, dport=80, flags="A", seq=1, ack=1)
    send(IP(src="10.77.0.10", dst=vip) / ack, verbose=False)
"""


@contextmanager
def holding(lab: Lab, *targets: tuple[str, int, int]) -> Iterator[int]:
    """Hold TCP connections open from the client: (host, port, count) each."""
    argv = [PY, "-c", HOLD, *(str(x) for t in targets for x in t)]
    proc = lab.popen("client", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline().decode()
    assert line.startswith("held "), line
    try:
        yield int(line.split()[1])
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def stats_totals(d: Director) -> list[int]:
    """Conns, InPkts, OutPkts, InBytes, OutBytes summed over the services of ``--stats --exact``."""
    rows = [svc[""] for svc in listing(d, "--stats", "--exact").values()]
    return [sum(r[i] for r in rows) for i in range(5)]


def exporter_pid(d: Director) -> int:
    m = d.status()["daemon"]["metrics"]
    assert m is not None and m["running"], m
    return int(m["pid"])


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


# -- the scrape -------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [(), ("--workers", "2")], ids=["one-process", "2-workers"])
def test_every_metric_matches_the_daemons_own_numbers(extra: tuple[str, ...]) -> None:
    workers = 2 if extra else 1
    with Lab() as lab, director(lab, CONFIG, extra=(*extra, "--conn-limit", str(CONN_LIMIT)),
                                config_name="lb.toml") as d:
        wait_for(d, "health monitor judged every dest",                    # 3 + 3 + 1
                 lambda: len(d.status()["health"]["dests"]) == 7)
        assert all(r.error is None for r in lab.http_get("client", VIP, count=6))
        group = lab.http_get("client", VIP, port=8080, count=2)
        assert all(r.error is None and r.server == "rs1" for r in group)
        # (each worker schedules its own flows: which dest answers depends on the fanout)
        assert all(r in ("rs1:m", "rs2:m", "rs3:m") for r in lab.udp_echo("client", VIP, "m", count=3))

        with holding(lab, (VIP, 8080, 4), (VIP, 80, 3)) as held:
            assert held == 7
            wait_for(d, "7 established connections",
                     lambda: sum(row[1] for svc in listing(d).values() for k, row in svc.items() if k) == 7)
            s = scrape(lab)
            ls = listing(d)
            # a service group: local_address "", local_port "0", proto FWM, its mark as %08X
            fwm = backend("FWM", "", 0, RS[0], mark="00000007")
            assert one(s, "ulvs_backend_connections_active", **fwm) == 4
            assert one(s, "ulvs_backend_weight", **fwm) == 1
            for svc, proto, port in ((f"TCP {VIP}:80", "TCP", 80), (f"UDP {VIP}:5353", "UDP", 5353)):
                for rs in RS:
                    labels = backend(proto, VIP, port, rs, port)
                    weight, active, inactive = ls[svc][f"{rs}:{port}"][:3]
                    assert one(s, "ulvs_backend_weight", **labels) == weight
                    assert one(s, "ulvs_backend_connections_active", **labels) == active
                    assert one(s, "ulvs_backend_connections_inactive", **labels) == inactive
                    assert one(s, "ulvs_backend_up", **labels) == 1
            assert sum(pick(s, "ulvs_backend_connections_active", proto="TCP", local_port="80").values()) == 3
            assert len(pick(s, "ulvs_backend_weight")) == 7                 # 3 + 3 + 1 dests
            st = d.status()
            states = {**dict.fromkeys(STATE_NAMES, 0), **st["conn_table"]["states"]}
            assert {dict(k)["state"]: v for k, v in pick(s, "ulvs_conn_table_entries").items()} == states
            assert states["ESTABLISHED"] == 7
        assert one(s, "ulvs_conn_table_limit") == CONN_LIMIT * workers == st["conn_table"]["limit"]

        # counters: the totals of ulvsadm --stats (read around the scrape, until the lab is quiet)
        deadline = time.monotonic() + WAIT
        while True:
            before, s, after = stats_totals(d), scrape(lab), stats_totals(d)
            if before == after or time.monotonic() > deadline:
                break
        assert before == after
        names = ("ulvs_connections_total", "ulvs_incoming_packets_total", "ulvs_outgoing_packets_total",
                 "ulvs_incoming_bytes_total", "ulvs_outgoing_bytes_total")
        assert [one(s, n) for n in names] == after
        assert after[0] == 6 + 2 + 3 + 7                                    # every connection made

        # drops: four stray ACKs to the VIP are four no_conn drops
        dropped = one(s, "ulvs_packets_dropped_total", reason="no_conn")
        out = lab.python("client", STRAY_ACKS, VIP, "4")
        assert out.returncode == 0, out.stderr
        wait_for(d, "the stray ACKs counted",
                 lambda: one(scrape(lab), "ulvs_packets_dropped_total", reason="no_conn") >= dropped + 4)
        s, st = scrape(lab), d.status()
        assert one(s, "ulvs_packets_dropped_total", reason="no_conn") == dropped + 4 == st["drops"]["no_conn"]
        reasons = {dict(k)["reason"]: v for k, v in pick(s, "ulvs_packets_dropped_total").items()}
        assert {r: reasons[r] for r in st["drops"]} == st["drops"]
        ports = st["daemon"]["ports"]
        assert sorted(ports) == sorted((lab.director_if_client, lab.director_if_server))
        assert reasons["ring_full"] == sum(p["rx_ring_drops"] for p in ports.values())
        assert reasons["ring_stale"] == sum(p["rx_stale"] for p in ports.values())

        # health checks: the histogram agrees with the results; a stopped server is down
        probes = one(s, "ulvs_healthcheck_duration_seconds_count", kind="TCP_CHECK")
        assert probes > 0
        assert probes == sum(pick(s, "ulvs_healthcheck_results_total", kind="TCP_CHECK").values())
        assert one(s, "ulvs_healthcheck_duration_seconds_bucket", kind="TCP_CHECK", le="+Inf") == probes
        assert one(s, "ulvs_healthcheck_duration_seconds_sum", kind="TCP_CHECK") > 0
        failures = one(s, "ulvs_healthcheck_results_total", kind="TCP_CHECK", result="failure")
        rs3 = backend("TCP", VIP, 80, RS[2])
        lab.stop_server("rs3")
        wait_for(d, "rs3 down in the scrape", lambda: one(scrape(lab), "ulvs_backend_up", **rs3) == 0)
        s = scrape(lab)
        assert one(s, "ulvs_backend_up", **backend("TCP", VIP, 80, RS[0])) == 1
        assert one(s, "ulvs_backend_up", **backend("UDP", VIP, 5353, RS[2], 5353)) == 1   # no check there
        assert pick(s, "ulvs_backend_weight", **rs3) == {}                  # out of the pool ...
        assert f"{RS[2]}:80" not in listing(d)[f"TCP {VIP}:80"]             # ... as ulvsadm says
        wait_for(d, "the failed probes reported (the monitor sends its statistics every second)",
                 lambda: one(scrape(lab), "ulvs_healthcheck_results_total", kind="TCP_CHECK",
                             result="failure") > failures)
        lab.restart_server("rs3")
        wait_for(d, "rs3 back", lambda: one(scrape(lab), "ulvs_backend_up", **rs3) == 1)

        # build info, no VRRP or sync here, and every name the dashboard uses
        s = scrape(lab)
        assert one(s, "ulvs_build_info") == 1
        assert dict(next(iter(pick(s, "ulvs_build_info")))) == {"version": __version__,
                                                                 "python": platform.python_version()}
        assert one(s, "ulvs_up") == 1
        st = d.status()
        assert st.get("vrrp") is None and st.get("sync") is None
        live = {name for name, _ in s}
        assert not any(sample_names()[n] in OPTIONAL for n in live)
        assert live == {n for n, fam in sample_names().items() if fam not in OPTIONAL}
        used = {n for e in dashboard_exprs() for n in re.findall(r"\b(ulvs_[A-Za-z0-9_:]*)", e)}
        assert {n for n in used if sample_names()[n] not in OPTIONAL} <= live


def test_the_exporter_is_a_capability_less_child_and_the_only_listener() -> None:
    with Lab() as lab, director(lab, CONFIG, config_name="lb.toml") as d:
        scrape(lab)
        pid = exporter_pid(d)
        assert Path(f"/proc/{pid}/stat").read_text().split()[3] == str(d.proc.pid)    # its parent
        held = caps.current(pid)
        assert (held.effective, held.permitted, held.ambient) == (0, 0, 0)
        out = lab.run("director", ["ss", "-ltnuwpH"]).stdout.strip().splitlines()
        assert len(out) == 1 and "127.0.0.1:9595" in out[0] and f"pid={pid}," in out[0], out
        assert f"pid={d.proc.pid}," not in out[0]
        # a dead exporter is restarted; the next scrape works
        os.kill(pid, signal.SIGKILL)
        wait_for(d, "a new exporter", lambda: d.status()["daemon"]["metrics"]["pid"] not in (None, pid))
        assert one(scrape(lab), "ulvs_up") == 1
        new = exporter_pid(d)
    assert not alive(new)                                           # stopped with the daemon, by PID
    assert f"metrics exporter (pid {new}) stopped" in d.log_text()


def test_the_exporter_goes_when_the_daemon_is_killed() -> None:
    with Lab() as lab, director(lab, CONFIG, config_name="lb.toml") as d:
        scrape(lab)
        pid = exporter_pid(d)
        d.killed = True                                            # the test kills it: no clean exit
        os.kill(d.proc.pid, signal.SIGKILL)                        # the daemon alone, not its group
        d.proc.wait()
        deadline = time.monotonic() + WAIT
        while alive(pid):
            assert time.monotonic() < deadline, "the exporter outlived the daemon"
            time.sleep(0.1)


def listeners(lab: Lab) -> list[str]:
    return [line.split()[3] for line in lab.run("director", ["ss", "-ltnH"]).stdout.splitlines()]


@pytest.mark.parametrize(("config", "extra", "where"), [
    ("", ("--metrics-listen", "off"), None),
    ("", ("--metrics-listen", "127.0.0.1:9601"), "127.0.0.1:9601"),
    ('[metrics]\nlisten = "127.0.0.1:9700"\n', (), "127.0.0.1:9700"),
    ('[metrics]\nlisten = "127.0.0.1:9700"\n', ("--metrics-listen", "127.0.0.1:9701"), "127.0.0.1:9701"),
    ('[metrics]\nlisten = "off"\n', (), None),
], ids=["cli-off", "cli", "config", "cli-wins", "config-off"])
def test_the_listen_address_comes_from_the_command_line_else_the_config(
        config: str, extra: tuple[str, ...], where: str | None) -> None:
    with Lab() as lab, director(lab, config + CONFIG, extra=extra, config_name="lb.toml") as d:
        if where is None:
            assert d.status()["daemon"]["metrics"] is None
            assert listeners(lab) == []
        else:
            assert one(scrape(lab, f"http://{where}/metrics"), "ulvs_up") == 1
            assert listeners(lab) == [where]
            assert d.status()["daemon"]["metrics"]["listen"] == where


def test_a_bad_listen_address_is_refused_at_start() -> None:
    with Lab() as lab:
        out = lab.run("director", [PY, "-m", "ulvs", "run", "--metrics-listen", "localhost:9595",
                                   "-i", lab.director_if_client])
        assert out.returncode == 2
        assert out.stderr.strip() == ("ulvs run: --metrics-listen: 'localhost:9595' is not HOST:PORT "
                                      "(e.g. 127.0.0.1:9595 or [::1]:9595, port 1..65535) or off")
