"""The Prometheus exporter (``ulvs.runtime.metrics``): families from a canned status -- names,
labels and values, node_exporter's fwmark label rules, the optional VRRP/sync sections -- the
daemon's cut-down ``metrics`` view, a registry of its own, and the exporter process serving a
scrape from a fake control socket, with no capability, and going when its parent goes."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ulvs import __version__
from ulvs.config.schema import parse_listen
from ulvs.core import Core
from ulvs.core.proto_tcp import STATE_NAMES
from ulvs.core.verdict import DropReason
from ulvs.health.stats import ProbeStats
from ulvs.runtime import caps
from ulvs.runtime.control import apply_request, build_status, metrics_view
from ulvs.runtime.metrics import METRICS, OPTIONAL, UlvsCollector, registry_for, sample_names

BOUND = 20.0      # s: every wait below is a bounded poll

TCP = {"proto": "tcp", "vaddr": "10.77.1.100", "vport": 80}
FWM = {"proto": "fwm", "fwmark": 7}


def dest(daddr: str, dport: int, weight: int, active: int, inactive: int) -> dict[str, Any]:
    return {"dest": {"daddr": daddr, "dport": dport, "weight": weight, "method": "masq"}, "weight": weight,
            "activeconns": active, "inactconns": inactive, "persistconns": 0, "overloaded": False,
            "counters": {"conns": active + inactive}}


def probe_table() -> dict[str, Any]:
    stats = ProbeStats()
    for seconds in (0.002, 0.004, 0.03, 0.2):
        stats.observe("TCP_CHECK", True, seconds)
    stats.observe("TCP_CHECK", False, 3.0)
    stats.observe("HTTP_GET", False, 40.0)
    return stats.to_json()


def canned() -> dict[str, Any]:
    """A daemon status as ``ulvs status --json`` has it: a TCP service with three dests (one
    down and kept at weight 0, one down and out of the pool), a service group, two workers'
    rings, health with probe statistics, VRRP and sync."""
    return {
        "snapshot": {"version": "1.2.1", "size": 4000, "conn_count": 9, "services": [
            {"service": {**TCP, "sched": "wlc", "flags": [], "persistent": None},
             "counters": {"conns": 100, "inpkts": 1000, "outpkts": 900, "inbytes": 64000, "outbytes": 880000,
                          "syns": 5, "synacks": 5, "rsts": 0},
             "rates": {"cps": 1},
             "dests": [dest("10.77.2.11", 80, 3, 4, 1), dest("10.77.2.12", 80, 0, 0, 2)]},
            {"service": {**FWM, "sched": "rr", "members": [TCP]},
             "counters": {"conns": 10, "inpkts": 20, "outpkts": 30, "inbytes": 40, "outbytes": 50},
             "dests": [dest("10.77.2.11", 80, 1, 2, 0)]},
        ]},
        "conn_table": {"count": 9, "limit": 4000, "states": {"ESTABLISHED": 6, "TIME_WAIT": 2, "UDP": 1},
                       "workers": 2},
        "drops": {**{r.label: 0 for r in DropReason}, "no_conn": 4, "fragment": 2},
        "daemon": {"version": "9.9.9", "pid": 1, "ports": {
            "eth0": {"rx_packets": 10, "rx_ring_drops": 3, "rx_stale": 1, "tx_ring": 5},
            "eth1": {"rx_packets": 10, "rx_ring_drops": 2, "rx_stale": 0}}},
        "health": {
            "dests": [{"service": TCP, "daddr": "10.77.2.11", "dport": 80, "up": True, "weight": None,
                       "detail": "ok", "since": 1.0},
                      {"service": TCP, "daddr": "10.77.2.12", "dport": 80, "up": False, "weight": None,
                       "detail": "connection refused", "since": 2.0},
                      {"service": TCP, "daddr": "10.77.2.13", "dport": 80, "up": False, "weight": None,
                       "detail": "timeout", "since": 3.0}],
            "sorry": [], "monitor": {"pid": 2, "running": True}, "probes": probe_table()},
        "vrrp": [{"iname": "VI_1", "intf": "eth0", "vrid": 51, "state": 2, "state_name": "MASTER",
                  "become_master": 2, "release_master": 1,
                  "transitions": {"BACKUP": 2, "MASTER": 2, "FAULT": 0}},
                 {"iname": "VI_2", "intf": "eth1", "vrid": 52, "state": "BACKUP", "become_master": 3}],
        "sync": {"role": "backup", "lag_seconds": 0.25},
    }


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_text(status: dict[str, Any]) -> str:
    return prometheus_client.generate_latest(registry_for(lambda: status)).decode()


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def scrape(status: dict[str, Any]) -> Samples:
    return parse(scrape_text(status))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def backend(laddr: str, lport: str, raddr: str, rport: str, proto: str, mark: str) -> dict[str, str]:
    return {"local_address": laddr, "local_port": lport, "remote_address": raddr, "remote_port": rport,
            "proto": proto, "local_mark": mark}


# -- names ----------------------------------------------------------------------------------------
def test_a_full_status_yields_exactly_the_declared_families() -> None:
    got = {name for name, _ in scrape(canned())}
    assert got == set(sample_names())
    assert all(n.startswith("ulvs_") for n in METRICS)
    assert all(n.endswith("_total") for n, (kind, _, _) in METRICS.items() if kind == "counter")
    text = scrape_text(canned())
    for name, (kind, _, _) in METRICS.items():
        assert f"# TYPE {name} {kind}\n" in text


def test_without_vrrp_and_sync_their_families_are_absent() -> None:
    st = canned()
    del st["vrrp"]
    st["sync"] = None
    names = {name for name, _ in scrape(st)}
    assert names == {s for s, fam in sample_names().items() if fam not in OPTIONAL}
    st["vrrp"], st["sync"] = [], {"role": "master", "lag_seconds": None}
    assert {name for name, _ in scrape(st)} == names


# -- values ---------------------------------------------------------------------------------------
def test_totals_are_summed_over_services() -> None:
    s = scrape(canned())
    assert value(s, "ulvs_connections_total") == 110
    assert value(s, "ulvs_incoming_packets_total") == 1020
    assert value(s, "ulvs_outgoing_packets_total") == 930
    assert value(s, "ulvs_incoming_bytes_total") == 64040
    assert value(s, "ulvs_outgoing_bytes_total") == 880050


def test_backend_gauges_carry_node_exporters_labels() -> None:
    s = scrape(canned())
    rs1 = backend("10.77.1.100", "80", "10.77.2.11", "80", "TCP", "")
    rs2 = backend("10.77.1.100", "80", "10.77.2.12", "80", "TCP", "")
    for labels, want in ((rs1, (4, 1, 3)), (rs2, (0, 2, 0))):
        assert (value(s, "ulvs_backend_connections_active", **labels),
                value(s, "ulvs_backend_connections_inactive", **labels),
                value(s, "ulvs_backend_weight", **labels)) == want


def test_a_service_group_has_an_empty_address_port_0_proto_fwm_and_its_mark() -> None:
    s = scrape(canned())
    fwm = backend("", "0", "10.77.2.11", "80", "FWM", "00000007")      # /proc/net/ip_vs prints %08X
    assert value(s, "ulvs_backend_connections_active", **fwm) == 2
    assert value(s, "ulvs_backend_weight", **fwm) == 1
    assert value(s, "ulvs_backend_up", **fwm) == 1                       # no health entry: up
    st = canned()
    st["snapshot"]["services"][1]["service"]["fwmark"] = 0xABC
    assert value(scrape(st), "ulvs_backend_weight", **{**fwm, "local_mark": "00000ABC"}) == 1
    marks = {dict(labels)["local_mark"] for name, labels in s if name == "ulvs_backend_weight"}
    assert marks == {"", "00000007"}


def test_backend_up_follows_the_health_state_also_for_a_dest_out_of_the_pool() -> None:
    s = scrape(canned())
    up = {dict(labels)["remote_address"]: v for (name, labels), v in s.items()
          if name == "ulvs_backend_up" and dict(labels)["proto"] == "TCP"}
    assert up == {"10.77.2.11": 1, "10.77.2.12": 0, "10.77.2.13": 0}
    # the removed dest has only its up gauge: ulvsadm -L -n does not list it either
    assert not any(dict(labels).get("remote_address") == "10.77.2.13"
                   for (name, labels) in s if name == "ulvs_backend_weight")


def test_drops_by_reason_include_the_rings() -> None:
    s = scrape(canned())
    reasons = {dict(labels)["reason"]: v for (name, labels), v in s.items()
               if name == "ulvs_packets_dropped_total"}
    assert reasons == {**{r.label: 0 for r in DropReason}, "no_conn": 4, "fragment": 2,
                       "ring_full": 5, "ring_stale": 1}
    st = canned()
    del st["drops"]["fragment"]
    st["daemon"]["ports"] = {}                                  # tap: no ring, reasons still listed
    again = {dict(labels)["reason"]: v for (name, labels), v in scrape(st).items()
             if name == "ulvs_packets_dropped_total"}
    assert again["fragment"] == 0 and again["ring_full"] == again["ring_stale"] == 0


def test_conn_table_entries_by_every_state_and_the_limit() -> None:
    s = scrape(canned())
    states = {dict(labels)["state"]: v for (name, labels), v in s.items()
              if name == "ulvs_conn_table_entries"}
    assert states == {**dict.fromkeys(STATE_NAMES, 0), "ESTABLISHED": 6, "TIME_WAIT": 2, "UDP": 1}
    assert value(s, "ulvs_conn_table_limit") == 4000


def test_health_check_histogram_and_results() -> None:
    s = scrape(canned())
    buckets = {dict(labels)["le"]: v for (name, labels), v in s.items()
               if name == "ulvs_healthcheck_duration_seconds_bucket" and dict(labels)["kind"] == "TCP_CHECK"}
    assert buckets["0.005"] == 2 and buckets["0.05"] == 3 and buckets["0.25"] == 4
    assert buckets["2.5"] == 4 and buckets["5.0"] == 5 and buckets["+Inf"] == 5
    assert value(s, "ulvs_healthcheck_duration_seconds_count", kind="TCP_CHECK") == 5
    assert value(s, "ulvs_healthcheck_duration_seconds_sum", kind="TCP_CHECK") == pytest.approx(3.236)
    assert value(s, "ulvs_healthcheck_results_total", kind="TCP_CHECK", result="success") == 4
    assert value(s, "ulvs_healthcheck_results_total", kind="TCP_CHECK", result="failure") == 1
    assert value(s, "ulvs_healthcheck_duration_seconds_bucket", kind="HTTP_GET", le="30.0") == 0
    assert value(s, "ulvs_healthcheck_duration_seconds_bucket", kind="HTTP_GET", le="+Inf") == 1


def test_vrrp_state_numbers_and_transitions() -> None:
    s = scrape(canned())
    vi1 = {"iname": "VI_1", "intf": "eth0", "vrid": "51"}
    vi2 = {"iname": "VI_2", "intf": "eth1", "vrid": "52"}
    assert value(s, "ulvs_vrrp_state", **vi1) == 2                     # MASTER
    assert value(s, "ulvs_vrrp_state", **vi2) == 1                     # "BACKUP" by name
    assert value(s, "ulvs_vrrp_transitions_total", **vi1, to="BACKUP") == 2
    assert value(s, "ulvs_vrrp_transitions_total", **vi1, to="MASTER") == 2
    assert value(s, "ulvs_vrrp_transitions_total", **vi1, to="FAULT") == 0
    # without a "transitions" table only the entries into MASTER are known (become_master)
    assert [dict(labels)["to"] for (name, labels) in s
            if name == "ulvs_vrrp_transitions_total" and dict(labels)["iname"] == "VI_2"] == ["MASTER"]
    assert value(s, "ulvs_vrrp_transitions_total", **vi2, to="MASTER") == 3
    assert value(s, "ulvs_sync_lag_seconds") == 0.25


def test_build_info_and_up() -> None:
    s = scrape(canned())
    assert value(s, "ulvs_build_info", version="9.9.9", python=platform.python_version()) == 1
    assert value(s, "ulvs_up") == 1


def test_a_daemon_that_does_not_answer_leaves_up_0_and_build_info() -> None:
    def broken() -> dict[str, Any]:
        raise ConnectionRefusedError(111, "Connection refused")

    s = parse(prometheus_client.generate_latest(registry_for(broken)).decode())
    info = frozenset({("version", __version__), ("python", platform.python_version())})
    assert s == {("ulvs_up", frozenset()): 0, ("ulvs_build_info", info): 1}
    garbage = UlvsCollector(lambda: {"snapshot": {"services": [{"service": {}}]}})
    assert [f.name for f in garbage.collect()] == ["ulvs_up", "ulvs_build_info"]


# -- the daemon's view, a real core's status, the registry ------------------------------------------
def test_the_metrics_view_scrapes_like_the_full_status() -> None:
    full = canned()
    view = metrics_view(full)
    assert scrape(view) == scrape(full)
    assert "rates" not in json.dumps(view) and "state_name" in json.dumps(view)   # vrrp as it is
    small = copy.deepcopy(full)
    del small["vrrp"], small["sync"]
    assert "vrrp" not in metrics_view(small) and "sync" not in metrics_view(small)


def test_a_real_cores_status_scrapes() -> None:
    core = Core(conn_limit=1000)
    reply = apply_request(core, {"cmd": "batch", "requests": [
        {"cmd": "add_service", "service": {
            "proto": "fwm", "fwmark": 3, "sched": "rr",
            "members": [{"proto": "tcp", "vaddr": "10.77.1.100", "vport": 443}]}},
        {"cmd": "add_dest", "service": {"proto": "fwm", "fwmark": 3},
         "dest": {"daddr": "10.77.2.11", "dport": 443, "weight": 5, "method": "masq"}},
        {"cmd": "add_service", "service": {**TCP, "sched": "wlc"}},
        {"cmd": "add_dest", "service": TCP, "dest": {"daddr": "10.77.2.12", "dport": 80, "weight": 2,
                                                     "method": "masq"}}]}, 0.0)
    assert reply["ok"], reply
    status = {**build_status(core, 0.0), "daemon": {"version": __version__, "ports": {}},
              "health": {"dests": [], "sorry": [], "monitor": None, "probes": {}}, "vrrp": None, "sync": None}
    s = scrape(metrics_view(status))
    assert value(s, "ulvs_backend_weight", **backend("", "0", "10.77.2.11", "443", "FWM", "00000003")) == 5
    assert value(s, "ulvs_backend_weight", **backend("10.77.1.100", "80", "10.77.2.12", "80", "TCP", "")) == 2
    assert value(s, "ulvs_conn_table_limit") == 1000 and value(s, "ulvs_connections_total") == 0


def test_the_global_registry_is_left_alone() -> None:
    before = prometheus_client.generate_latest(prometheus_client.REGISTRY)
    registry_for(canned)
    after = prometheus_client.generate_latest(prometheus_client.REGISTRY)
    assert b"ulvs_" not in after and before.count(b"\n# HELP") == after.count(b"\n# HELP")


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9595") == ("127.0.0.1", 9595)
    assert parse_listen("[::1]:9595") == ("::1", 9595)
    assert parse_listen("0.0.0.0:1") == ("0.0.0.0", 1)
    assert parse_listen("off") is None
    for bad in ("localhost:9595", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "::1:9595", "[1.2.3.4]:80",
                "127.0.0.1:x"):
        with pytest.raises(ValueError, match="is not HOST:PORT"):
            parse_listen(bad)


def test_the_daemon_keeps_probe_stats_and_answers_metrics() -> None:
    from ulvs.runtime.daemon import Daemon, Options

    d = Daemon(Options(), lambda path: [])

    async def ask(req: dict[str, Any]) -> dict[str, Any]:
        return await d._handle({"v": 1, **req})

    async def scenario() -> None:
        table = probe_table()
        assert await ask({"cmd": "probe_stats", "probes": table}) == {"ok": True, "v": 1}
        bad = await ask({"cmd": "probe_stats", "probes": {"TCP_CHECK": {"buckets": 3}}})
        assert not bad["ok"] and "buckets must be a list" in bad["error"]
        reply = await ask({"cmd": "metrics"})
        assert reply["ok"] and reply["v"] == 1
        assert reply["metrics"]["health"]["probes"] == table                 # the bad one changed nothing
        assert reply["metrics"]["daemon"]["version"] == __version__
        assert reply["metrics"]["conn_table"]["limit"] == Options().conn_limit
        full = await ask({"cmd": "status"})
        assert full["status"]["health"]["probes"] == table and full["status"]["daemon"]["metrics"] is None
        assert metrics_view(full["status"]) == reply["metrics"]
        s = scrape(reply["metrics"])
        assert value(s, "ulvs_healthcheck_duration_seconds_count", kind="TCP_CHECK") == 5
        refused = await ask({"cmd": "metrics", "v": 2})
        assert not refused["ok"] and "unsupported protocol version" in refused["error"]

    try:
        asyncio.run(scenario())
    finally:
        d.shutdown()


# -- the exporter process ---------------------------------------------------------------------------
class FakeDaemon:
    """A control socket answering ``metrics`` with ``canned()``; records each request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[dict[str, Any]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                line = conn.makefile("rb").readline()
                req = json.loads(line)
                self.requests.append(req)
                if req.get("cmd") == "metrics":
                    reply = {"ok": True, "v": 1, "metrics": metrics_view(canned())}
                else:
                    reply = {"ok": False, "v": 1, "error": "unknown"}
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)       # wakes the accept()
        self.sock.close()
        self.path.unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(url: str) -> str:
    """GET ``url``, retried until the exporter listens (a bounded poll)."""
    deadline = time.monotonic() + BOUND
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                body: str = r.read().decode()
                return body
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    d = FakeDaemon(tmp_path / "ulvs.sock")
    yield d
    d.close()


def exporter_argv(listen: str, sock: Path) -> list[str]:
    return [sys.executable, "-m", "ulvs.runtime.metrics", "--listen", listen, "--socket", str(sock)]


def test_the_exporter_serves_a_scrape_from_the_control_socket(fake_daemon: FakeDaemon) -> None:
    port = free_port()
    proc = subprocess.Popen(exporter_argv(f"127.0.0.1:{port}", fake_daemon.path), stderr=subprocess.PIPE)
    try:
        s = parse(get(f"http://127.0.0.1:{port}/metrics"))
        assert value(s, "ulvs_up") == 1 and value(s, "ulvs_connections_total") == 110
        assert fake_daemon.requests[-1] == {"cmd": "metrics", "v": 1}
        assert not any(name.startswith(("process_", "python_gc")) for name, _ in s)   # its own registry
        held = caps.current(proc.pid)
        assert (held.effective, held.permitted, held.ambient) == (0, 0, 0)           # gave up everything
        fake_daemon.close()                                                          # the daemon goes away
        assert value(parse(get(f"http://127.0.0.1:{port}/metrics")), "ulvs_up") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=BOUND)
    assert proc.returncode == 0, err
    assert b"serving http://127.0.0.1:" in err


def test_the_exporter_refuses_a_bad_or_busy_address(fake_daemon: FakeDaemon) -> None:
    bad = subprocess.run(exporter_argv("localhost:1", fake_daemon.path), capture_output=True, text=True,
                         timeout=BOUND)
    assert bad.returncode == 2 and "is not HOST:PORT" in bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = subprocess.run(exporter_argv(f"127.0.0.1:{port}", fake_daemon.path), capture_output=True,
                             text=True, timeout=BOUND)
    assert out.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in out.stderr


PARENT = r"""
import subprocess, sys
child = subprocess.Popen(sys.argv[1:])
print(child.pid, flush=True)
sys.stdin.readline()          # the test says when to die: at once, without stopping the child
"""


def test_the_exporter_goes_when_its_parent_dies(fake_daemon: FakeDaemon) -> None:
    port = free_port()
    argv = [sys.executable, "-c", PARENT, *exporter_argv(f"127.0.0.1:{port}", fake_daemon.path)]
    parent = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None and parent.stdin is not None
    pid = int(parent.stdout.readline())
    get(f"http://127.0.0.1:{port}/metrics")                  # up and serving
    parent.kill()
    parent.wait()

    def alive() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + BOUND
    while alive():
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("the exporter outlived its parent")
        time.sleep(0.05)
