"""``ulvs top``: the frame rendered from two canned status replies, and the loop around it."""

from __future__ import annotations

import argparse
import io
import json
from ipaddress import IPv4Address
from typing import Any

import pytest

from tests.vectors.core import C1, IF_C, IF_S, build_core, nat_flow
from ulvs.cli import top
from ulvs.cli.main import build_parser
from ulvs.cli.top import render_plain, si, top_view
from ulvs.cli.ulvsadm import ControlClient, ControlError
from ulvs.runtime.control import build_status

VIP = "10.77.1.100"


def counters(conns: int = 0, inpkts: int = 0, outpkts: int = 0, inbytes: int = 0,
             outbytes: int = 0) -> dict[str, int]:
    return {"conns": conns, "inpkts": inpkts, "outpkts": outpkts, "inbytes": inbytes, "outbytes": outbytes,
            "syns": 0, "synacks": 0, "rsts": 0}


def dest(daddr: str, weight: int, active: int, inactive: int, c: dict[str, int],
         method: str = "masq") -> dict[str, Any]:
    return {"dest": {"daddr": daddr, "dport": 80, "weight": weight, "method": method, "u_threshold": 0,
                     "l_threshold": 0},
            "weight": weight, "activeconns": active, "inactconns": inactive, "persistconns": 0,
            "overloaded": False, "counters": c, "rates": {}}


def status(uptime: float, rs1: dict[str, int], rs2: dict[str, int], *, active: tuple[int, int] = (0, 0),
           extra: dict[str, Any] | None = None, count: int = 250) -> dict[str, Any]:
    svc_counters = {k: rs1[k] + rs2[k] for k in rs1}
    return {
        "snapshot": {"services": [{
            "service": {"proto": "tcp", "vaddr": VIP, "vport": 80, "sched": "wrr", "flags": [],
                        "persistent": None, "netmask": "255.255.255.255", "ops": False},
            "counters": svc_counters, "rates": {},
            "dests": [dest("10.77.2.11", 3, active[0], 2, rs1), dest("10.77.2.12", 1, active[1], 0, rs2)],
        }], "timeouts": {"tcp": 900, "tcpfin": 120, "udp": 300}, "conn_count": count, "size": 1000},
        "conn_table": {"count": count, "limit": 1000, "states": {"ESTABLISHED": 240, "TIME_WAIT": 10}},
        "drops": {"no_dest": 4, "malformed": 0},
        "daemon": {"pid": 4242, "version": "0.1.0", "uptime": uptime, "backend": "afpacket", "workers": 1},
        "vrrp": None, "sync": None, **(extra or {}),
    }


PREV = status(100.0, counters(10, 1000, 900, 100_000, 1_000_000), counters(0, 0, 0, 0, 0), active=(7, 0))
CUR = status(102.0, counters(20, 3000, 2900, 400_000, 4_000_000), counters(2, 10, 8, 1_000, 25_000),
             active=(8, 1), extra={
                 "drops": {"no_dest": 10, "malformed": 0},
                 "vrrp": [{"iname": "VI_1", "intf": "cli0", "vrid": 51, "state": 2, "state_name": "MASTER",
                           "priority": 150},
                          {"iname": "VI_2", "intf": "srv0", "vrid": 52, "state": 1, "state_name": "BACKUP"}],
                 "sync": {"role": "backup", "interface": "srv0", "lag_seconds": 0.02, "ready": True}})


def row(text: str, start: str) -> list[str]:
    (line,) = [x for x in text.splitlines() if x.strip().startswith(start)]
    return line.split()


def test_the_frame_shows_services_dests_and_rates_over_the_daemons_clock() -> None:
    text = render_plain(top_view(PREV, CUR, 5.0))     # 5 s by the client, 2 s by the daemon: 2 s
    assert "\x1b" not in text
    #                              weight act inact conn/s pkt/s in/out  B/s in  B/s out
    assert row(text, "TCP 10.77.1.100:80") == ["TCP", "10.77.1.100:80", "wrr", "9", "2", "6",
                                               "1,005", "1,004", "150k", "1.5M"]
    assert row(text, "-> 10.77.2.11:80") == ["->", "10.77.2.11:80", "Masq", "3", "8", "2", "5",
                                             "1,000", "1,000", "150k", "1.5M"]
    assert row(text, "-> 10.77.2.12:80") == ["->", "10.77.2.12:80", "Masq", "1", "1", "0", "1",
                                             "5", "4", "500", "12.5k"]
    assert "conn table 250 of 1,000 (25.0%): ESTABLISHED 240, TIME_WAIT 10" in text
    assert "drops 10 (3/s)" in text
    assert "VRRP VI_1 on cli0 vrid 51: MASTER, priority 150" in text
    assert "VRRP VI_2 on srv0 vrid 52: BACKUP" in text
    assert "sync backup on srv0, lag 0.020 s" in text
    assert "ulvs 0.1.0, pid 4242, up 1m42s, afpacket backend, 1 worker" in text
    assert "rates over 2.0 s" in text


def test_without_daemon_uptimes_the_measured_interval_counts_and_resets_give_zero() -> None:
    prev = {**PREV, "daemon": {}}
    zeroed = status(0.0, counters(), counters(5, 10, 10, 2_000, 2_000))    # rs1 zeroed (ipvsadm -Z)
    text = render_plain(top_view(prev, {**zeroed, "daemon": {}}, 4.0))
    assert row(text, "-> 10.77.2.11:80")[6:] == ["0"] * 5
    assert row(text, "-> 10.77.2.12:80")[6:] == ["1", "2", "2", "500", "500"]
    assert "VRRP" not in text and "sync" not in text and "pid" not in text


def test_a_dest_or_service_new_since_the_last_snapshot_has_no_rates_yet() -> None:
    prev = {**PREV, "snapshot": {**PREV["snapshot"], "services": []}}
    text = render_plain(top_view(prev, CUR, 2.0))
    assert row(text, "TCP 10.77.1.100:80")[5:] == ["0"] * 5
    empty = {**CUR, "snapshot": {**CUR["snapshot"], "services": []}}
    assert "no services" in render_plain(top_view(empty, empty, 1.0))


def test_a_status_built_by_the_core_renders() -> None:
    """The rendering reads the layout ``build_status`` makes (plus the daemon's sections)."""
    core = build_core("lab")
    before = build_status(core, 1.0)
    f = nat_flow(C1, 40000)
    core.process(bytearray(f.client_in(flags="S", seq=1)), IF_C, 1.0)
    (info,) = core.conns(1.0)
    f = nat_flow(C1, 40000, daddr=str(info.daddr))
    core.process(bytearray(f.server_in(flags="SA", seq=9, ack=2)), IF_S, 1.0)
    core.process(bytearray(f.client_in(flags="A", seq=2, ack=10)), IF_C, 1.0)
    after = json.loads(json.dumps(build_status(core, 2.0)))
    text = render_plain(top_view(json.loads(json.dumps(before)), after, 1.0))
    assert row(text, "TCP 10.77.1.100:80")[3:] == ["1", "0", "1", "2", "1", "80", "40"]
    assert row(text, f"-> {info.daddr}:8080")[3:] == ["1", "1", "0", "1", "2", "1", "80", "40"]
    assert "conn table 1 of 1,000,000 (0.0%): ESTABLISHED 1" in text
    assert IPv4Address(info.daddr) in {IPv4Address(a) for a in ("10.77.2.11", "10.77.2.12", "10.77.2.13")}


@pytest.mark.parametrize(("value", "shown"), [(0, "0"), (2.4, "2"), (9_999, "9,999"), (10_000, "10.0k"),
                                              (150_000, "150k"), (1_500_000, "1.5M"), (999_999_999, "1000M"),
                                              (2.5e9, "2.5G"), (3e12, "3000G")])
def test_rates_are_shown_in_three_digits(value: float, shown: str) -> None:
    assert si(value) == shown


# ---- the loop ----------------------------------------------------------------------------------
class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["top", "--socket", "/nonexistent/ulvs.sock", *argv])


def canned(monkeypatch: pytest.MonkeyPatch, replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    asked: list[dict[str, Any]] = []

    def request(self: ControlClient, req: dict[str, Any]) -> dict[str, Any]:
        asked.append(req)
        if not replies:
            raise ControlError("the daemon went away")
        return {"ok": True, "v": 1, "status": replies.pop(0)}

    monkeypatch.setattr(ControlClient, "request", request)
    return asked


def test_once_prints_one_plain_frame_after_one_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = canned(monkeypatch, [PREV, CUR])
    slept: list[float] = []
    out = io.StringIO()
    assert top.run(args("--once", "--interval", "0.5"), stdout=out, sleep=slept.append) == 0
    assert slept == [0.5] and asked == [{"cmd": "status"}] * 2
    assert out.getvalue() == render_plain(top_view(PREV, CUR, 2.0))


def test_not_a_terminal_prints_a_plain_frame_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    canned(monkeypatch, [PREV, CUR, CUR])
    out, err = io.StringIO(), io.StringIO()
    assert top.run(args(), stdout=out, stderr=err, sleep=lambda _s: None) == 1   # the third request fails
    frames = out.getvalue().rstrip("\n").split("\n\n")     # a blank line between two frames
    assert len(frames) == 2 and "\x1b" not in out.getvalue()
    assert row(frames[1], "-> 10.77.2.11:80")[6:] == ["0"] * 5          # CUR twice: nothing moved
    assert err.getvalue() == "ulvs top: the daemon went away\n"


def test_on_a_terminal_once_is_drawn_with_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    canned(monkeypatch, [PREV, CUR])
    out = Tty()
    assert top.run(args("--once"), stdout=out, sleep=lambda _s: None) == 0
    assert "\x1b[" in out.getvalue() and "10.77.2.12:80" in out.getvalue()


def test_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    assert top.run(args("--once"), stdout=io.StringIO(), stderr=err) == 1
    assert err.getvalue().startswith("ulvs top: cannot connect to ulvs daemon at /nonexistent/ulvs.sock")
    err = io.StringIO()
    assert top.run(args("--interval", "0"), stderr=err) == 2
    canned(monkeypatch, [PREV, {"snapshot": {}}])
    err = io.StringIO()
    assert top.run(args("--once"), stdout=io.StringIO(), stderr=err, sleep=lambda _s: None) == 1
    assert "malformed status" in err.getvalue()
