"""The control plane's pure half: JSON codec, apply_request on a real Core, batch atomicity,
rate estimation, reload diffs."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from ulvs.core import Core, DestConfig, FwdMethod, Proto, ServiceConfig, Verdict
from ulvs.core.stats import Counters
from ulvs.packet import builder
from ulvs.runtime.control import (
    RateEstimator,
    Rates,
    apply_request,
    build_snapshot,
    dest_from_json,
    dest_to_json,
    diff_requests,
    handle_line,
    service_from_json,
    service_key_from_json,
    service_key_to_json,
    service_to_json,
    snapshot_to_json,
)

A = ipaddress.IPv4Address
CMAC, DMAC, SMAC = "02:00:00:00:01:01", "02:00:00:00:01:fe", "02:00:00:00:02:fe"
WEB = {"proto": "tcp", "vaddr": "10.0.0.100", "vport": 80}
DNS = {"proto": "udp", "vaddr": "10.0.0.102", "vport": 53}
GROUP = {"proto": "fwm", "fwmark": 7}
MEMBERS = [{"proto": "tcp", "vaddr": "10.0.0.103", "vport": 80},
           {"proto": "udp", "vaddr": "10.0.0.103", "vport": 53}]


def ok(core: Core, req: Any, now: float = 0.0) -> dict[str, Any]:
    reply = apply_request(core, req, now)
    assert reply["ok"], reply
    return reply


def err(core: Core, req: Any) -> str:
    reply = apply_request(core, req, 0.0)
    assert reply["ok"] is False, reply
    assert set(reply) >= {"ok", "error"}
    assert isinstance(reply["error"], str) and reply["error"]
    return str(reply["error"])


def dest(addr: str, port: int = 80, **kw: Any) -> dict[str, Any]:
    return {"daddr": addr, "dport": port, **kw}


def web_core() -> Core:
    """TCP 10.0.0.100:80 wlc, NAT to two dests with neighbours, so traffic can flow."""
    core = Core(conn_limit=1024)
    ok(core, {"cmd": "add_service", "service": WEB})
    for i, addr in enumerate(("192.168.10.1", "192.168.10.2")):
        ok(core, {"cmd": "add_dest", "service": WEB, "dest": dest(addr, method="masq")})
        core.set_neighbor(A(addr), 2, bytes([2, 0, 0, 0, 2, i + 1]), builder.mac(SMAC))
    return core


def syn(core: Core, caddr: str, cport: int, now: float = 0.0, flags: int = 0x02) -> None:
    v, _eg, reason = core.process(bytearray(builder.tcp_frame(CMAC, DMAC, caddr, "10.0.0.100", cport, 80,
                                                              flags)), 1, now)
    assert v == Verdict.FORWARD, reason


def state(core: Core, now: float = 5.0) -> dict[str, Any]:
    return snapshot_to_json(build_snapshot(core, now))


# ---------------------------------------------------------------------------------------------
# Codec
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [
    ServiceConfig(Proto.TCP, A("10.0.0.1"), 80),
    ServiceConfig(Proto.UDP, A("10.0.0.1"), 53, sched="sh", flags=frozenset({"sh-port"}), ops=True),
    ServiceConfig(Proto.TCP, A("10.0.0.1"), 0, persistent=600, netmask=A("255.255.0.0")),
    ServiceConfig(Proto.FWM, A(0), 0, fwmark=9, members=((Proto.TCP, A("10.0.0.2"), 0),)),
], ids=["tcp", "udp-ops", "port0-persistent", "fwm"])
def test_service_json_round_trip(cfg: ServiceConfig) -> None:
    js = service_to_json(cfg)
    assert json.loads(json.dumps(js)) == js
    assert service_from_json(js) == cfg
    assert service_key_from_json(service_key_to_json(cfg.key)) == cfg.key


def test_service_json_defaults_and_shape() -> None:
    cfg = service_from_json({"proto": "tcp", "vaddr": "10.0.0.1", "vport": 80})
    assert cfg == ServiceConfig(Proto.TCP, A("10.0.0.1"), 80)
    assert service_to_json(cfg) == {"proto": "tcp", "vaddr": "10.0.0.1", "vport": 80, "sched": "wlc",
                                    "flags": [], "persistent": None, "netmask": "255.255.255.255",
                                    "ops": False}
    assert service_key_to_json(ServiceConfig(Proto.FWM, A(0), 0, fwmark=3,
                                             members=((Proto.UDP, A("1.2.3.4"), 53),)).key) == \
        {"proto": "fwm", "fwmark": 3}


def test_dest_json_round_trip() -> None:
    d = DestConfig(A("192.168.1.1"), 8080, weight=7, method=FwdMethod.MASQ, u_threshold=10, l_threshold=5)
    assert dest_to_json(d) == {"daddr": "192.168.1.1", "dport": 8080, "weight": 7, "method": "masq",
                               "u_threshold": 10, "l_threshold": 5}
    assert dest_from_json(dest_to_json(d)) == d
    assert dest_from_json({"daddr": "1.2.3.4", "dport": 80}) == DestConfig(A("1.2.3.4"), 80)


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------
def test_add_edit_del_service() -> None:
    core = Core()
    ok(core, {"cmd": "add_service", "service": {**WEB, "sched": "rr", "persistent": 300,
                                                "netmask": "255.255.255.0"}})
    svc = core.services[(Proto.TCP, A("10.0.0.100"), 80)]
    assert (svc.config.sched, svc.config.persistent, svc.config.netmask) == ("rr", 300, A("255.255.255.0"))
    ok(core, {"cmd": "edit_service", "service": {**WEB, "sched": "wrr"}})
    assert svc.config.sched == "wrr" and svc.config.persistent is None
    ok(core, {"cmd": "del_service", "service": WEB})
    assert core.services == {}


def test_service_group_add_and_edit_keeps_members() -> None:
    core = Core()
    ok(core, {"cmd": "add_service", "service": {**GROUP, "members": MEMBERS}})
    ok(core, {"cmd": "edit_service", "service": {**GROUP, "sched": "rr"}})
    cfg = core.services[(Proto.FWM, A(0), 7)].config
    assert cfg.sched == "rr" and len(cfg.members) == 2
    assert "defined in the config file" in err(core, {"cmd": "add_service", "service": {"proto": "fwm",
                                                                                         "fwmark": 8}})


def test_dests() -> None:
    core = Core()
    ok(core, {"cmd": "add_service", "service": WEB})
    ok(core, {"cmd": "add_dest", "service": WEB, "dest": dest("192.168.10.1", 8080, method="masq",
                                                               weight=3)})
    ok(core, {"cmd": "add_dest", "service": WEB, "dest": dest("192.168.10.2")})
    svc = core.services[(Proto.TCP, A("10.0.0.100"), 80)]
    assert [(str(d.daddr), d.dport, d.weight, d.method) for d in svc.dests] == [
        ("192.168.10.1", 8080, 3, FwdMethod.MASQ), ("192.168.10.2", 80, 1, FwdMethod.DROUTE)]
    ok(core, {"cmd": "edit_dest", "service": WEB, "dest": dest("192.168.10.2", weight=0, u_threshold=9)})
    assert svc.dests[1].weight == 0 and svc.dests[1].config.u_threshold == 9
    ok(core, {"cmd": "del_dest", "service": WEB, "dest": {"daddr": "192.168.10.1", "dport": 8080}})
    assert [str(d.daddr) for d in svc.dests] == ["192.168.10.2"]


def test_clear() -> None:
    core = web_core()
    ok(core, {"cmd": "add_service", "service": DNS})
    ok(core, {"cmd": "clear"})
    assert core.services == {}


def test_timeouts() -> None:
    core = Core()
    assert ok(core, {"cmd": "get_timeouts"})["timeouts"] == {"tcp": 900, "tcpfin": 120, "udp": 300}
    ok(core, {"cmd": "set_timeouts", "tcp": 1800, "tcpfin": 0, "udp": 60})
    assert ok(core, {"cmd": "get_timeouts"})["timeouts"] == {"tcp": 1800, "tcpfin": 120, "udp": 60}
    assert "out of range" in err(core, {"cmd": "set_timeouts", "tcp": 86400 * 31 + 1})
    assert "out of range" in err(core, {"cmd": "set_timeouts", "udp": -1})


def test_zero_one_service_or_all() -> None:
    core = web_core()
    ok(core, {"cmd": "add_service", "service": DNS})
    ok(core, {"cmd": "add_dest", "service": DNS, "dest": dest("192.168.30.1", 53)})
    syn(core, "203.0.113.1", 1000)
    dns = core.services[(Proto.UDP, A("10.0.0.102"), 53)]
    core.stats.conns[dns.dests[0].sid] = 5
    web = core.services[(Proto.TCP, A("10.0.0.100"), 80)]
    assert core.service_counters(web).conns == 1
    ok(core, {"cmd": "zero", "service": WEB})
    assert core.service_counters(web) == Counters()
    assert core.service_counters(dns).conns == 5
    ok(core, {"cmd": "zero"})
    assert core.service_counters(dns) == Counters()
    assert "no such service UDP 10.9.9.9:53" in err(core, {"cmd": "zero", "service": {**DNS,
                                                                                        "vaddr": "10.9.9.9"}})


def test_snapshot() -> None:
    core = web_core()
    syn(core, "203.0.113.1", 1000, now=1.0)
    snap = ok(core, {"cmd": "snapshot"}, now=11.0)["snapshot"]
    assert json.loads(json.dumps(snap)) == snap
    assert snap["size"] == 1024 and snap["conn_count"] == 1 and snap["rates_estimated"] is False
    assert snap["timeouts"] == {"tcp": 900, "tcpfin": 120, "udp": 300}
    (svc,) = snap["services"]
    assert svc["service"]["vaddr"] == "10.0.0.100" and svc["counters"]["conns"] == 1
    assert [d["dest"]["daddr"] for d in svc["dests"]] == ["192.168.10.1", "192.168.10.2"]
    assert sum(d["inactconns"] for d in svc["dests"]) == 1
    (conn,) = snap["conns"]
    assert conn | {"daddr": "x"} == {"proto": "tcp", "caddr": "203.0.113.1", "cport": 1000,
                                     "vaddr": "10.0.0.100", "vport": 80, "daddr": "x", "dport": 80,
                                     "state": "SYN_RECV", "expires": 50, "method": "masq", "template": False}
    assert ok(core, {"cmd": "snapshot", "conns": False})["snapshot"]["conns"] is None


# ---------------------------------------------------------------------------------------------
# Bad input never raises
# ---------------------------------------------------------------------------------------------
BAD: list[tuple[Any, str]] = [
    ([], "a request must be a JSON object"),
    ("add_service", "a request must be a JSON object"),
    (None, "a request must be a JSON object"),
    ({}, "missing field 'cmd'"),
    ({"cmd": 5}, "field 'cmd' must be a string"),
    ({"cmd": "frobnicate"}, "unknown command 'frobnicate'"),
    ({"cmd": "add_service"}, "missing field 'service'"),
    ({"cmd": "add_service", "service": []}, "service must be a JSON object"),
    ({"cmd": "add_service", "service": {**WEB, "vport": "80"}}, "field 'vport' must be a whole number"),
    ({"cmd": "add_service", "service": {**WEB, "vport": True}}, "field 'vport' must be a whole number"),
    ({"cmd": "add_service", "service": {**WEB, "vport": 70000}}, "out of range"),
    ({"cmd": "add_service", "service": {**WEB, "proto": "icmp"}}, "field 'proto' must be tcp/udp/fwm"),
    ({"cmd": "add_service", "service": {**WEB, "vaddr": "10.0.0"}}, "is not an IPv4 address"),
    ({"cmd": "add_service", "service": {**WEB, "vaddr": "2001:db8::1"}}, "is not an IPv4 address"),
    ({"cmd": "add_service", "service": {**WEB, "flags": "sh-port"}}, "field 'flags' must be a list"),
    ({"cmd": "add_service", "service": {**WEB, "flags": [1]}}, "list of strings"),
    ({"cmd": "add_service", "service": {**WEB, "persistent": "300"}}, "field 'persistent'"),
    ({"cmd": "add_service", "service": {**WEB, "ops": 1}}, "field 'ops' must be true or false"),
    ({"cmd": "add_service", "service": {**DNS, "sched": "nope"}}, "unknown scheduler 'nope'"),
    ({"cmd": "add_service", "service": {**DNS, "flags": ["bogus"]}}, "unknown scheduler flag"),
    ({"cmd": "add_service", "service": {**WEB, "vport": 0}}, "port 0 is only allowed for persistent"),
    ({"cmd": "add_service", "service": {**WEB, "ops": True}}, "UDP services only"),
    ({"cmd": "add_service", "service": {**GROUP, "fwmark": 0, "members": MEMBERS}}, "out of range"),
    ({"cmd": "add_service", "service": {**GROUP, "members": [{"proto": "fwm", "vaddr": "1.2.3.4",
                                                              "vport": 1}]}}, "must be tcp/udp"),
    ({"cmd": "add_service", "service": WEB}, "already exists"),
    ({"cmd": "edit_service", "service": DNS}, "no such service UDP 10.0.0.102:53"),
    ({"cmd": "del_service", "service": GROUP}, "no such service FWM 7"),
    ({"cmd": "add_dest", "service": WEB, "dest": dest("192.168.10.1")}, "already exists"),
    ({"cmd": "add_dest", "service": WEB, "dest": dest("192.168.10.9", method="tunnel")}, "tunnel"),
    ({"cmd": "add_dest", "service": WEB, "dest": dest("192.168.10.9", method="nat")}, "masq/droute/tunnel"),
    ({"cmd": "add_dest", "service": WEB, "dest": dest("192.168.10.9", weight=65536)}, "weight 65536"),
    ({"cmd": "add_dest", "service": WEB, "dest": dest("192.168.10.9", u_threshold=-1)}, "threshold"),
    ({"cmd": "add_dest", "service": DNS, "dest": dest("192.168.10.9")}, "no such service"),
    ({"cmd": "edit_dest", "service": WEB, "dest": dest("192.168.10.9")}, "no dest 192.168.10.9:80"),
    ({"cmd": "del_dest", "service": WEB, "dest": {"daddr": "192.168.10.9"}}, "missing field 'dport'"),
    ({"cmd": "set_timeouts", "tcp": 1.5}, "field 'tcp' must be a whole number"),
    ({"cmd": "snapshot", "conns": "yes"}, "field 'conns' must be true or false"),
    ({"cmd": "batch"}, "missing field 'requests'"),
    ({"cmd": "batch", "requests": {}}, "field 'requests' must be a list"),
    ({"cmd": "batch", "requests": [{"cmd": "batch", "requests": []}]}, "cannot contain a batch"),
]


# Ids by number: the needles name schedulers, and ids containing "sched" are deselected by the
# project's ``-k "not sched"`` runs.
@pytest.mark.parametrize(("req", "needle"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_requests_get_error_replies(req: Any, needle: str) -> None:
    core = web_core()
    before = state(core)
    assert needle in err(core, req)
    assert state(core) == before


def test_handle_line() -> None:
    core = web_core()
    reply = json.loads(handle_line(core, b"{not json", 0.0))
    assert reply["ok"] is False and reply["error"].startswith("bad request: not JSON (")
    assert json.loads(handle_line(core, "[" * 100000, 0.0))["ok"] is False
    out = handle_line(core, json.dumps({"cmd": "get_timeouts"}).encode() + b"\n", 0.0)
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    assert json.loads(out) == {"ok": True, "v": 1, "timeouts": {"tcp": 900, "tcpfin": 120, "udp": 300}}


# ---------------------------------------------------------------------------------------------
# Batches are atomic
# ---------------------------------------------------------------------------------------------
def test_batch_applies_everything() -> None:
    core = Core()
    reply = ok(core, {"cmd": "batch", "requests": [
        {"cmd": "add_service", "service": WEB},
        {"cmd": "add_dest", "service": WEB, "dest": dest("192.168.10.1")},
        {"cmd": "get_timeouts"},
    ]})
    assert [r["ok"] for r in reply["replies"]] == [True, True, True]
    assert len(core.services[(Proto.TCP, A("10.0.0.100"), 80)].dests) == 1
    assert ok(core, {"cmd": "batch", "requests": []})["replies"] == []


def test_failed_batch_changes_nothing() -> None:
    core = web_core()
    ok(core, {"cmd": "add_service", "service": {**DNS, "sched": "rr"}})
    ok(core, {"cmd": "add_dest", "service": DNS, "dest": dest("192.168.30.1", 53, weight=4)})
    ok(core, {"cmd": "add_dest", "service": DNS, "dest": dest("192.168.30.2", 53, weight=5)})
    ok(core, {"cmd": "add_dest", "service": DNS, "dest": dest("192.168.30.3", 53, weight=6)})
    ok(core, {"cmd": "set_timeouts", "tcp": 1000})
    syn(core, "203.0.113.1", 1000, now=1.0)
    syn(core, "203.0.113.1", 1000, now=2.0, flags=0x10)            # established
    syn(core, "203.0.113.2", 2000, now=2.0)
    dns = core.services[(Proto.UDP, A("10.0.0.102"), 53)]
    core.stats.pkts[dns.dests[1].sid * 2] = 77                    # counters of a dest without conns
    before = state(core)
    web_dests = list(core.services[(Proto.TCP, A("10.0.0.100"), 80)].dests)
    reply = apply_request(core, {"cmd": "batch", "requests": [
        {"cmd": "del_dest", "service": DNS, "dest": {"daddr": "192.168.30.1", "dport": 53}},
        {"cmd": "add_dest", "service": DNS, "dest": dest("192.168.30.1", 53, weight=9)},   # reordered
        {"cmd": "edit_dest", "service": DNS, "dest": dest("192.168.30.3", 53, weight=1)},
        {"cmd": "del_dest", "service": DNS, "dest": {"daddr": "192.168.30.2", "dport": 53}},
        {"cmd": "edit_service", "service": {**DNS, "sched": "wlc"}},
        {"cmd": "del_service", "service": WEB},                                              # has conns
        {"cmd": "add_service", "service": {**WEB, "vaddr": "10.0.0.200"}},
        {"cmd": "add_service", "service": {**GROUP, "members": MEMBERS}},
        {"cmd": "set_timeouts", "tcp": 5, "tcpfin": 5, "udp": 5},
        {"cmd": "zero"},
        {"cmd": "clear"},
        {"cmd": "add_dest", "service": WEB, "dest": dest("192.168.10.7")},                  # fails
        {"cmd": "clear"},
    ]}, 5.0)
    assert reply["ok"] is False
    assert reply["index"] == 11
    assert reply["error"] == "request 12 of 13 (add_dest): no such service TCP 10.0.0.100:80"
    assert reply["reply"] == {"ok": False, "error": "no such service TCP 10.0.0.100:80"}
    assert state(core) == before
    # The dests that had connections are the very same objects, revived with their connections,
    # which keep flowing.
    assert core.services[(Proto.TCP, A("10.0.0.100"), 80)].dests == web_dests
    syn(core, "203.0.113.1", 1000, now=6.0, flags=0x10)
    assert core.conn_count() == 2


def test_failed_batch_restores_moved_group_entries() -> None:
    core = Core()
    ok(core, {"cmd": "add_service", "service": {**GROUP, "members": MEMBERS}})
    ok(core, {"cmd": "add_dest", "service": GROUP, "dest": dest("192.168.40.1", 0)})
    before = state(core)
    reply = apply_request(core, {"cmd": "batch", "requests": [
        {"cmd": "del_service", "service": GROUP},
        {"cmd": "add_service", "service": {"proto": "tcp", "vaddr": "10.0.0.103", "vport": 80}},
        {"cmd": "add_service", "service": {**GROUP, "members": MEMBERS[1:]}},
        {"cmd": "add_service", "service": {"proto": "tcp", "vaddr": "10.0.0.103", "vport": 80}},
    ]}, 0.0)
    assert reply["index"] == 3 and "already exists" in reply["error"]
    assert state(core) == before


def test_failed_batch_keeps_estimates() -> None:
    core = web_core()
    est = RateEstimator()
    web = core.services[(Proto.TCP, A("10.0.0.100"), 80)]
    est.tick(core)
    core.stats.conns[web.dests[0].sid] += 400
    est.tick(core)
    rates = est.rates(web.config.key)
    assert rates.cps > 0
    reply = apply_request(core, {"cmd": "batch", "requests": [{"cmd": "zero"}, {"cmd": "nope"}]}, 0.0,
                          estimator=est)
    assert not reply["ok"] and est.rates(web.config.key) == rates
    assert apply_request(core, {"cmd": "zero"}, 0.0, estimator=est)["ok"]
    assert est.rates(web.config.key) == Rates()


# ---------------------------------------------------------------------------------------------
# Rates
# ---------------------------------------------------------------------------------------------
def test_rate_estimator_follows_ip_vs_est() -> None:
    core = web_core()
    web = core.services[(Proto.TCP, A("10.0.0.100"), 80)]
    d = web.dests[0]
    est = RateEstimator()
    est.tick(core)
    assert est.rates(web.config.key) == Rates()
    # 200 conns, 2000/1000 packets and 1 MB/0.5 MB per 2 s interval: 100 cps, 1000/500 pps, 500/250 kB/s
    for _ in range(60):
        core.stats.conns[d.sid] += 200
        core.stats.pkts[d.sid * 2] += 2000
        core.stats.pkts[d.sid * 2 + 1] += 1000
        core.stats.bytes[d.sid * 2] += 1_000_000
        core.stats.bytes[d.sid * 2 + 1] += 500_000
        est.tick(core)
    assert est.rates(web.config.key) == Rates(100, 1000, 500, 500_000, 250_000)
    assert est.rates((web.config.key, d.config.daddr, d.config.dport)) == Rates(100, 1000, 500, 500_000,
                                                                                  250_000)
    snap = build_snapshot(core, 0.0, estimator=est)
    assert snap.rates_estimated and snap.services[0].rates.cps == 100


def test_rate_estimator_first_interval() -> None:
    core = web_core()
    web = core.services[(Proto.TCP, A("10.0.0.100"), 80)]
    est = RateEstimator()
    est.tick(core)
    core.stats.conns[web.dests[0].sid] += 200
    est.tick(core)
    # avg = (200 << 9) >> 2 = 25600; cps = (25600 + 0x1FF) >> 10 = 25
    assert est.rates(web.config.key).cps == 25


# ---------------------------------------------------------------------------------------------
# Reload diff
# ---------------------------------------------------------------------------------------------
def test_diff_requests() -> None:
    core = web_core()
    ok(core, {"cmd": "add_service", "service": DNS})
    kept = core.services[(Proto.TCP, A("10.0.0.100"), 80)].dests[1]
    wanted = [
        {"cmd": "add_service", "service": {**WEB, "sched": "rr"}},
        {"cmd": "add_dest", "service": WEB, "dest": dest("192.168.10.2", method="masq")},
        {"cmd": "add_dest", "service": WEB, "dest": dest("192.168.10.3", method="masq", weight=2)},
        {"cmd": "add_service", "service": {**GROUP, "members": MEMBERS}},
        {"cmd": "add_dest", "service": GROUP, "dest": dest("192.168.40.1", 0)},
        {"cmd": "set_timeouts", "tcp": 0, "tcpfin": 0, "udp": 30},
    ]
    changes = diff_requests(core, wanted)
    assert [c["cmd"] for c in changes] == ["del_service", "edit_service", "del_dest", "add_dest",
                                           "add_service", "add_dest", "set_timeouts"]
    assert ok(core, {"cmd": "batch", "requests": changes})
    scratch = Core(conn_limit=1024)
    ok(scratch, {"cmd": "batch", "requests": wanted})
    assert state(core, 0.0)["services"] == state(scratch, 0.0)["services"]
    assert core.services[(Proto.TCP, A("10.0.0.100"), 80)].dests[0] is kept
    assert diff_requests(core, wanted) == []
    with pytest.raises(ValueError, match="configuration rejected"):
        diff_requests(core, [{"cmd": "add_dest", "service": WEB, "dest": dest("1.2.3.4")}])
