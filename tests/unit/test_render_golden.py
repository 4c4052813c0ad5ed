"""ipvsadm's listing layouts, byte for byte, against golden files (tests/golden/*.txt).

The ``reference_*`` goldens are the example of REFERENCE (f) "Rendered (byte-exact ...)", copied
verbatim (trailing spaces included); the others come from a deterministic Core.  After an
intended layout change, regenerate with ``ULVS_UPDATE_GOLDEN=1 pytest tests/unit/test_render_golden.py``
and review the diff.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path

import pytest

from ulvs.cli import render
from ulvs.cli.render import ListFormat
from ulvs.core import Core, DestConfig, FwdMethod, Proto, ServiceConfig, Verdict
from ulvs.core.stats import Counters
from ulvs.packet import builder
from ulvs.runtime.control import (
    ConnView,
    DestView,
    Rates,
    ServiceView,
    Snapshot,
    Timeouts,
    build_snapshot,
    snapshot_from_json,
    snapshot_to_json,
)

A = ipaddress.IPv4Address
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE = os.environ.get("ULVS_UPDATE_GOLDEN") == "1"


def check(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file"


# ---------------------------------------------------------------------------------------------
# REFERENCE (f): the rendered example
# ---------------------------------------------------------------------------------------------
def _svc(proto: Proto, vaddr: str, vport: int, **kw: object) -> ServiceConfig:
    return ServiceConfig(proto, A(vaddr), vport, **kw)  # type: ignore[arg-type]


NO_COUNTERS = Counters()


def _dest(daddr: str, dport: int, method: FwdMethod, weight: int, active: int, inactive: int,
          counters: Counters = NO_COUNTERS) -> DestView:
    return DestView(DestConfig(A(daddr), dport, weight=weight, method=method), weight, active, inactive,
                    counters=counters)


def reference_snapshot() -> Snapshot:
    masq, route = FwdMethod.MASQ, FwdMethod.DROUTE
    return Snapshot(size=4096, services=(
        ServiceView(_svc(Proto.TCP, "10.0.0.100", 80), (
            _dest("192.168.10.1", 80, masq, 1, 12, 40), _dest("192.168.10.2", 80, masq, 1, 11, 38))),
        ServiceView(_svc(Proto.TCP, "10.0.0.101", 443, sched="rr", persistent=300,
                         netmask=A("255.255.255.0")),
                    (_dest("192.168.20.1", 443, route, 100, 5, 0),)),
        ServiceView(_svc(Proto.UDP, "10.0.0.102", 53, sched="sh", flags=frozenset({"sh-port", "sh-fallback"}),
                         ops=True),
                    (_dest("192.168.30.1", 53, masq, 1, 0, 211),)),
    ), conns=(
        ConnView(Proto.TCP, A("203.0.113.7"), 51514, A("10.0.0.100"), 80, A("192.168.10.1"), 80,
                 "ESTABLISHED", 14 * 60 + 58, masq),
        ConnView(Proto.TCP, A("203.0.113.9"), 40211, A("10.0.0.100"), 80, A("192.168.10.2"), 80,
                 "SYN_RECV", 58, masq),
        ConnView(Proto.TCP, A("203.0.113.0"), 0, A("10.0.0.101"), 443, A("192.168.20.1"), 443,
                 "NONE", 4 * 60 + 51, route, template=True),
        ConnView(Proto.UDP, A("198.51.100.4"), 33012, A("10.0.0.102"), 53, A("192.168.30.1"), 53,
                 "UDP", 4 * 60 + 59, masq),
    ))


def test_reference_list() -> None:
    assert render.table(reference_snapshot()) == (GOLDEN / "reference_list.txt").read_text()


def test_reference_list_has_trailing_padding() -> None:
    rows = render.table(reference_snapshot()).splitlines()
    assert rows[4] == "  -> 192.168.10.1:80              Masq    1      12         40        "


def test_reference_stats() -> None:
    # The example lists one service and one of its dests, with these counters.
    snap = Snapshot(size=4096, services=(ServiceView(
        _svc(Proto.TCP, "10.0.0.100", 80),
        (_dest("192.168.10.1", 80, FwdMethod.MASQ, 1, 0, 0, Counters(617, 28400, 25600, 1728000, 61728000)),),
        Counters(1234, 56789, 51234, 3456789, 123456789)),))
    assert render.table(snap, ListFormat(stats=True)) == (GOLDEN / "reference_stats.txt").read_text()


def test_reference_conns() -> None:
    assert render.connections(reference_snapshot()) == (GOLDEN / "reference_conns.txt").read_text()


def test_reference_save() -> None:
    assert render.save(reference_snapshot()) == (GOLDEN / "reference_save.txt").read_text()


def test_reference_snapshot_survives_json() -> None:
    snap = reference_snapshot()
    assert snapshot_from_json(snapshot_to_json(snap)) == snap


# ---------------------------------------------------------------------------------------------
# A deterministic core: every kind of service, inserted out of order
# ---------------------------------------------------------------------------------------------
WEB = _svc(Proto.TCP, "10.0.0.100", 80)
DNS = _svc(Proto.UDP, "10.0.0.102", 53, sched="sh", flags=frozenset({"sh-fallback", "sh-port"}), ops=True)
TLS = _svc(Proto.TCP, "10.0.0.101", 443, sched="rr", persistent=300, netmask=A("255.255.255.0"))
ANY = _svc(Proto.TCP, "10.0.0.9", 0, sched="lc", persistent=3600)
GROUP = ServiceConfig(Proto.FWM, A(0), 0, fwmark=7, persistent=600, sched="wrr",
                      members=((Proto.TCP, A("10.0.0.103"), 80), (Proto.TCP, A("10.0.0.103"), 443)))
MASQ, ROUTE = FwdMethod.MASQ, FwdMethod.DROUTE
CMAC, DMAC, SMAC = "02:00:00:00:01:01", "02:00:00:00:01:fe", "02:00:00:00:02:fe"


def deterministic_core() -> Core:
    core = Core(conn_limit=4096)
    for cfg in (DNS, GROUP, WEB, ANY, TLS):
        core.add_service(cfg)
    dests = [
        (WEB, DestConfig(A("192.168.10.2"), 80, method=MASQ)),
        (WEB, DestConfig(A("192.168.10.10"), 8080, weight=0, method=MASQ, u_threshold=100, l_threshold=50)),
        (WEB, DestConfig(A("192.168.10.1"), 80, method=MASQ, u_threshold=2000)),
        (DNS, DestConfig(A("192.168.30.1"), 53, method=MASQ)),
        (TLS, DestConfig(A("192.168.20.1"), 443, weight=100, method=ROUTE)),
        (GROUP, DestConfig(A("192.168.40.1"), 0, weight=3, method=ROUTE)),
        (GROUP, DestConfig(A("192.168.40.2"), 0, weight=2, method=ROUTE)),
        (ANY, DestConfig(A("192.168.50.1"), 0, method=ROUTE)),
    ]
    for i, (svc, d) in enumerate(dests):
        core.add_dest(svc.key, d)
        core.set_neighbor(d.daddr, 2, bytes([2, 0, 0, 0, 2, i + 1]), builder.mac(SMAC))
    core.set_timeouts(1800, 60, 120)
    return core


def drive(core: Core) -> None:
    """A few flows at t = 0..3: TCP SYNs, an established flow, persistent clients, UDP."""
    def send(frame: bytes, now: float) -> None:
        v, _eg, reason = core.process(bytearray(frame), 1, now)
        assert v == Verdict.FORWARD, reason

    send(builder.tcp_frame(CMAC, DMAC, "203.0.113.7", "10.0.0.100", 51514, 80, 0x02), 0.0)
    send(builder.tcp_frame(CMAC, DMAC, "203.0.113.7", "10.0.0.100", 51514, 80, 0x10), 1.0)
    send(builder.tcp_frame(CMAC, DMAC, "203.0.113.9", "10.0.0.100", 40211, 80, 0x02), 2.0)
    send(builder.tcp_frame(CMAC, DMAC, "198.51.100.20", "10.0.0.101", 1025, 443, 0x02), 2.0)
    send(builder.tcp_frame(CMAC, DMAC, "198.51.100.21", "10.0.0.101", 1026, 443, 0x02), 3.0)
    send(builder.tcp_frame(CMAC, DMAC, "198.51.100.30", "10.0.0.103", 3000, 443, 0x02), 3.0)
    send(builder.tcp_frame(CMAC, DMAC, "198.51.100.40", "10.0.0.9", 22, 22, 0x02), 3.0)
    send(builder.udp_frame(CMAC, DMAC, "198.51.100.4", "10.0.0.102", 33012, 53, b"query"), 3.0)


def core_snapshot(now: float = 10.0) -> Snapshot:
    core = deterministic_core()
    drive(core)
    return build_snapshot(core, now)


def with_counters(snap: Snapshot) -> Snapshot:
    """The core's snapshot with large counters and rates patched in (K, M, G and T ranges)."""
    big = [Counters(5, 99_999_999, 100_000_000, 999_999_999_999, 123_456_789_012_345),
           Counters(1, 1_000_000_000, 99_999_999_999, 100_000_000_000_000, 12),
           Counters(0, 0, 0, 0, 0)]
    services = []
    for i, s in enumerate(snap.services):
        dests = tuple(dataclasses.replace(d, counters=big[(i + j) % 3],
                                          rates=Rates(i + j, 1000 * j, 999, 123_456_789, 10 * i))
                      for j, d in enumerate(s.dests))
        total = Counters()
        for d in dests:
            total = total + d.counters
        services.append(dataclasses.replace(s, dests=dests, counters=total,
                                            rates=Rates(i, 99_999_999, 100_000_000, 2**40, 0)))
    return dataclasses.replace(snap, services=tuple(services))


def test_core_list() -> None:
    check("list.txt", render.table(core_snapshot()))


def test_core_list_nosort_keeps_insertion_order() -> None:
    text = render.table(core_snapshot(), ListFormat(nosort=True))
    check("list_nosort.txt", text)
    assert text.splitlines()[3].startswith("UDP  10.0.0.102:53")


def test_core_list_one_service_has_no_banner() -> None:
    snap = core_snapshot()
    svc = snap.service(WEB.key)
    assert svc is not None
    text = render.table(snap, ListFormat(), svc)
    check("list_service.txt", text)
    assert text.startswith("Prot LocalAddress:Port")


def test_stats_suffixes() -> None:
    check("stats.txt", render.table(with_counters(core_snapshot()), ListFormat(stats=True)))


def test_stats_exact() -> None:
    check("stats_exact.txt", render.table(with_counters(core_snapshot()), ListFormat(stats=True, exact=True)))


def test_rate() -> None:
    check("rate.txt", render.table(with_counters(core_snapshot()), ListFormat(rate=True)))


def test_rate_without_estimator_is_zero() -> None:
    snap = core_snapshot()
    assert not snap.rates_estimated
    assert all(s.rates == Rates() and all(d.rates == Rates() for d in s.dests) for s in snap.services)


def test_stats_wins_over_rate() -> None:
    snap = with_counters(core_snapshot())
    assert render.table(snap, ListFormat(stats=True, rate=True)) == render.table(snap, ListFormat(stats=True))


def test_thresholds() -> None:
    check("thresholds.txt", render.table(core_snapshot(), ListFormat(thresholds=True)))


def test_persistent_conn() -> None:
    check("persistent_conn.txt", render.table(core_snapshot(), ListFormat(persistent_conn=True)))


def test_conns() -> None:
    text = render.connections(core_snapshot())
    check("conns.txt", text)
    assert "IP  " in text                       # a service group's template is listed as proto IP
    assert "NONE        198.51.100.0:0" in text  # a /24 template: cport 0, state NONE


def test_conns_persistent_header() -> None:
    check("conns_persistent.txt", render.connections(core_snapshot(), persistent_conn=True))


def test_timeout() -> None:
    check("timeout.txt", render.timeouts(core_snapshot().timeouts))
    assert render.timeouts(Timeouts()) == "Timeout (tcp tcpfin udp): 900 120 300\n"


def test_save() -> None:
    check("save.txt", render.save(core_snapshot()))


def test_core_snapshot_survives_json() -> None:
    snap = with_counters(core_snapshot())
    assert snapshot_from_json(snapshot_to_json(snap)) == snap


# ---------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "text"), [
    (0, "        0"),
    (99_999_999, " 99999999"),
    (100_000_000, "  100000K"),
    (999_999_999, "  999999K"),
    (1_000_000_000, "    1000M"),
    (99_999_999_999, "   99999M"),
    (100_000_000_000, "     100G"),
    (99_999_999_999_999, "   99999G"),
    (100_000_000_000_000, "     100T"),
])
def test_largenum(n: int, text: str) -> None:
    assert render.largenum(n) == text


@pytest.mark.parametrize(("n", "text"), [
    (0, "        0"), (12_345_678, " 12345678"), (123_456_789, " 123456789"),
    (12_345_678_901_234, " 12345678901234"),
])
def test_largenum_exact(n: int, text: str) -> None:
    assert render.largenum(n, exact=True) == text


@pytest.mark.parametrize(("algo", "flags", "text"), [
    ("sh", {"flag-1", "flag-2"}, "sh-fallback,sh-port"),
    ("sh", {"sh-port", "flag-3"}, "sh-port,flag-3"),
    ("mh", {"mh-port", "mh-fallback"}, "mh-fallback,mh-port"),
    ("wlc", {"flag-2", "flag-1"}, "flag-1,flag-2"),
    ("rr", set(), ""),
], ids=["sh-generic", "sh-named", "mh", "generic", "none"])
def test_flag_names_follow_the_algorithm(algo: str, flags: set[str], text: str) -> None:
    assert render.sched_flags(_svc(Proto.TCP, "10.0.0.1", 80, sched=algo, flags=frozenset(flags))) == text


def test_long_minutes_widen_the_expire_column() -> None:
    c = ConnView(Proto.TCP, A("1.2.3.4"), 0, A("10.0.0.1"), 80, A("10.1.0.1"), 80, "NONE", 86400,
                 template=True)
    assert render.conn_row(c) == "TCP 1440:00 NONE        1.2.3.4:0          10.0.0.1:80        10.1.0.1:80"


def test_list_services_from_a_core_still_works() -> None:
    core = deterministic_core()
    assert render.list_services(core) == render.table(build_snapshot(core, 0.0))
    drive(core)
    assert render.list_conns(core, 10.0) == render.connections(build_snapshot(core, 10.0))
