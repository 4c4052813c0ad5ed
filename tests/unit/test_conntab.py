"""Connection table behaviour, stepping a fake ``now``: per-state IPVS timeouts, lazy expiry driven
by ``next_deadline()``/``handle_timer(now)``, eviction when full, conn reuse, dest thresholds,
and dest removal (dest_gone, revival, expire_nodest_conn).

The timer is driven the way the shell does it (STYLE rule 2): arm one timer at
``next_deadline()`` and call ``handle_timer`` with that time, repeatedly.
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any

import pytest

from tests.vectors.core import (
    C1,
    C2,
    C3,
    C4,
    DR1,
    IF_C,
    IF_S,
    RS1,
    RS2,
    RS3,
    TCP_SVC,
    Flow,
    build_core,
    conn_line,
    dr_flow,
    nat_flow,
    udp_flow,
)
from ulvs.core import Core, CoreError, Dest, DestConfig, DropReason, FwdMethod, Proto, Verdict

# ---- helpers -------------------------------------------------------------------------------------


def send_c(core: Core, flow: Flow, now: float, **seg: Any) -> tuple[Verdict, DropReason | None]:
    v, _eg, r = core.process(bytearray(flow.client_in(**seg)), IF_C, now)
    return v, r


def send_s(core: Core, flow: Flow, now: float, **seg: Any) -> tuple[Verdict, DropReason | None]:
    v, _eg, r = core.process(bytearray(flow.server_in(**seg)), IF_S, now)
    return v, r


FWD = (Verdict.FORWARD, None)


def bound(core: Core, f: Flow, now: float) -> Flow:
    """``f`` with the dest its connection was given."""
    (c,) = [c for c in core.conns(now) if str(c.caddr) == f.caddr and c.cport == f.cport]
    return replace(f, daddr=str(c.daddr))


def handshake(core: Core, f: Flow, now: float) -> Flow:
    assert send_c(core, f, now, flags="S", seq=100) == FWD
    f = bound(core, f, now)
    assert send_s(core, f, now, flags="SA", seq=900, ack=101) == FWD
    assert send_c(core, f, now, flags="A", seq=101, ack=901) == FWD
    return f


def conns(core: Core, now: float) -> set[str]:
    return {conn_line(c) for c in core.conns(now)}


def shell_timer(core: Core, until: float) -> int:
    """Fire the timer at every deadline up to ``until``, as the I/O shell would."""
    expired = 0
    while (d := core.next_deadline()) is not None and d <= until:
        expired += core.handle_timer(d)
    return expired


def dest(core: Core, daddr: str, dport: int = 8080, key: Any = TCP_SVC) -> Dest:
    d = core.get_service(key).find(IPv4Address(daddr), dport)
    assert d is not None
    return d


# ---- per-state timeouts ---------------------------------------------------------------------------
def _to_syn_recv(core: Core, f: Flow) -> Flow:
    assert send_c(core, f, 0.0, flags="S", seq=100) == FWD
    return bound(core, f, 0.0)


def _to_established(core: Core, f: Flow) -> Flow:
    return handshake(core, f, 0.0)


def _to_fin_wait(core: Core, f: Flow) -> Flow:
    f = handshake(core, f, 0.0)
    assert send_s(core, f, 0.0, flags="FA", seq=901, ack=101) == FWD
    return f


def _to_close_wait(core: Core, f: Flow) -> Flow:
    f = handshake(core, f, 0.0)
    assert send_c(core, f, 0.0, flags="FA", seq=101, ack=901) == FWD
    return f


def _to_time_wait(core: Core, f: Flow) -> Flow:
    f = _to_close_wait(core, f)
    assert send_s(core, f, 0.0, flags="FA", seq=901, ack=102) == FWD
    return f


def _to_close(core: Core, f: Flow) -> Flow:
    f = handshake(core, f, 0.0)
    assert send_c(core, f, 0.0, flags="R", seq=101) == FWD
    return f


def _dr_fin_wait(core: Core, f: Flow) -> Flow:
    assert send_c(core, f, 0.0, flags="S", seq=100) == FWD
    assert send_c(core, f, 0.0, flags="A", seq=101, ack=901) == FWD
    assert send_c(core, f, 0.0, flags="FA", seq=101, ack=901) == FWD
    return bound(core, f, 0.0)


def _udp(core: Core, f: Flow) -> Flow:
    assert send_c(core, f, 0.0, load=b"q") == FWD
    return bound(core, f, 0.0)


STATE_CASES = [
    ("SYN_RECV", 60, nat_flow(C1, 50001), _to_syn_recv),
    ("ESTABLISHED", 900, nat_flow(C1, 50002), _to_established),
    ("FIN_WAIT", 120, nat_flow(C1, 50003), _to_fin_wait),
    ("CLOSE_WAIT", 60, nat_flow(C1, 50004), _to_close_wait),
    ("TIME_WAIT", 120, nat_flow(C1, 50005), _to_time_wait),
    ("CLOSE", 10, nat_flow(C1, 50006), _to_close),
    ("FIN_WAIT", 120, dr_flow(C1, 50007), _dr_fin_wait),
    ("UDP", 300, udp_flow(C1, 50008), _udp),
]


@pytest.mark.parametrize("state,timeout,flow,setup", STATE_CASES,
                         ids=[f"{s}-{t}s-{'masq' if f.masq else 'droute'}" for s, t, f, _ in STATE_CASES])
def test_state_timeout(state: str, timeout: int, flow: Flow, setup: Any) -> None:
    core = build_core("lab")
    flow = setup(core, flow)
    d = dest(core, flow.daddr, flow.dport, (Proto[flow.proto], IPv4Address(flow.vaddr), flow.vport))
    assert conns(core, 0.0) == {flow.conn(state)}
    (info,) = core.conns(0.0)
    assert info.expires == timeout
    assert d.activeconns + d.inactconns == 1
    assert core.next_deadline() is not None and core.next_deadline() <= timeout
    assert shell_timer(core, timeout - 1) == 0
    assert conns(core, timeout - 1) == {flow.conn(state)}
    assert shell_timer(core, timeout) == 1
    assert conns(core, timeout) == set()
    assert (d.activeconns, d.inactconns) == (0, 0)
    assert core.conn_count() == 0
    assert core.next_deadline() is None or core.next_deadline() > timeout


def test_active_and_inactive_counters_follow_the_state() -> None:
    core = build_core("lab")
    f = nat_flow(C1, 50101)
    d = dest(core, RS1)
    send_c(core, f, 0.0, flags="S", seq=1)
    assert (d.activeconns, d.inactconns) == (0, 1)
    send_s(core, f, 0.0, flags="SA", seq=9, ack=2)
    send_c(core, f, 0.0, flags="A", seq=2, ack=10)
    assert (d.activeconns, d.inactconns) == (1, 0)
    send_c(core, f, 0.0, flags="FA", seq=2, ack=10)
    assert (d.activeconns, d.inactconns) == (0, 1)
    shell_timer(core, 1000)
    assert (d.activeconns, d.inactconns) == (0, 0)


# ---- activity and lazy expiry ---------------------------------------------------------------------
def test_activity_postpones_expiry() -> None:
    core = build_core("lab")
    f = nat_flow(C1, 50201)
    handshake(core, f, 0.0)
    assert send_c(core, f, 500.0, flags="PA", seq=101, ack=901, load=b"x") == FWD   # fast path
    assert shell_timer(core, 900) == 0              # the 900 s bucket re-checks and moves it on
    assert core.next_deadline() == 1400
    assert shell_timer(core, 1399) == 0
    assert conns(core, 1399) == {f.conn("ESTABLISHED")}
    (info,) = core.conns(1399)
    assert info.expires == 1
    assert shell_timer(core, 1400) == 1
    assert conns(core, 1400) == set()


def test_replies_count_as_activity_too() -> None:
    core = build_core("lab")
    u = udp_flow(C1, 50202)
    assert send_c(core, u, 0.0, load=b"q") == FWD
    assert send_s(core, u, 200.0, load=b"a") == FWD
    assert shell_timer(core, 499) == 0
    assert shell_timer(core, 500) == 1


def test_a_state_change_moves_the_deadline_to_the_new_timeout() -> None:
    core = build_core("lab")
    f = nat_flow(C1, 50203)
    send_c(core, f, 0.0, flags="S", seq=1)              # SYN_RECV: 60 s
    assert core.next_deadline() == 60
    send_s(core, f, 10.0, flags="SA", seq=9, ack=2)
    send_c(core, f, 10.0, flags="A", seq=2, ack=10)     # ESTABLISHED at 10: 900 s
    assert shell_timer(core, 909) == 0
    assert conns(core, 909) == {f.conn("ESTABLISHED")}
    send_c(core, f, 909.0, flags="R", seq=2)            # CLOSE at 909: 10 s, earlier than 910
    assert core.next_deadline() is not None and core.next_deadline() <= 919
    assert shell_timer(core, 918) == 0
    assert shell_timer(core, 919) == 1


def test_next_deadline_and_handle_timer() -> None:
    core = build_core("lab")
    assert core.next_deadline() is None
    assert core.handle_timer(10_000.0) == 0
    a, b = nat_flow(C1, 50301), nat_flow(C2, 50302)
    send_c(core, a, 0.0, flags="S", seq=1)
    send_c(core, b, 5.0, flags="S", seq=1)
    assert core.next_deadline() == 60
    assert core.handle_timer(59.0) == 0
    assert core.handle_timer(60.0) == 1
    assert core.next_deadline() == 65
    assert core.handle_timer(1000.0) == 1        # a late timer expires everything due
    assert core.next_deadline() is None
    assert core.conn_count() == 0


def test_set_timeouts_changes_tcp_tcpfin_udp() -> None:
    core = build_core("lab")
    core.set_timeouts(tcp=100, tcpfin=20, udp=30)
    est = handshake(core, nat_flow(C1, 50401), 0.0)
    fin = _to_fin_wait(core, nat_flow(C2, 50402))
    udp = _udp(core, udp_flow(C3, 50403))
    expiry = {conn_line(c): c.expires for c in core.conns(0.0)}
    assert expiry == {est.conn("ESTABLISHED"): 100, fin.conn("FIN_WAIT"): 20, udp.conn("UDP"): 30}
    assert shell_timer(core, 19) == 0
    assert shell_timer(core, 20) == 1
    assert shell_timer(core, 30) == 1
    assert shell_timer(core, 99) == 0
    assert shell_timer(core, 100) == 1
    # 0 keeps a value (ipvsadm --set 0 0 0); the others are untouched.
    core.set_timeouts(tcp=0, tcpfin=0, udp=0)
    core.set_timeouts(udp=45)
    u2 = udp_flow(C4, 50404)
    send_c(core, u2, 200.0, load=b"q")
    (info,) = core.conns(200.0)
    assert info.expires == 45
    handshake(core, nat_flow(C1, 50405), 200.0)
    assert {c.expires for c in core.conns(200.0) if c.state == "ESTABLISHED"} == {100}
    with pytest.raises(CoreError):
        core.set_timeouts(tcp=-1)


# ---- table full ----------------------------------------------------------------------------------
def test_full_table_evicts_embryonic_then_closed_never_established() -> None:
    core = build_core("lab", conn_limit=3)
    est = handshake(core, nat_flow(C1, 50501), 0.0)
    send_c(core, nat_flow(C2, 50502), 0.0, flags="S", seq=1)
    _to_time_wait(core, nat_flow(C3, 50503))
    assert core.conn_count() == 3
    new1 = nat_flow(C4, 50504)
    assert send_c(core, new1, 1.0, flags="S", seq=1) == FWD
    states = {c.cport: c.state for c in core.conns(1.0)}
    assert states == {50501: "ESTABLISHED", 50503: "TIME_WAIT", 50504: "SYN_RECV"}
    new2 = nat_flow(C4, 50505)
    assert send_c(core, new2, 2.0, flags="S", seq=1) == FWD
    states = {c.cport: c.state for c in core.conns(2.0)}
    assert states == {50501: "ESTABLISHED", 50504: "SYN_RECV", 50505: "SYN_RECV"}
    for port in range(50506, 50520):
        assert send_c(core, nat_flow(C4, port), 3.0, flags="S", seq=1) == FWD
        assert core.conn_count() == 3
        assert est.conn("ESTABLISHED") in conns(core, 3.0)
    # the established one still works
    assert send_c(core, est, 4.0, flags="PA", seq=101, ack=901, load=b"x") == FWD


def test_close_entries_are_evictable() -> None:
    core = build_core("lab", conn_limit=1)
    g = nat_flow(C2, 50602)
    _to_close(core, nat_flow(C1, 50601))
    assert send_c(core, g, 1.0, flags="S", seq=1) == FWD
    assert {c.cport for c in core.conns(1.0)} == {50602}


def test_full_table_of_established_or_udp_drops_new_flows() -> None:
    core = build_core("lab", conn_limit=2)
    a = handshake(core, nat_flow(C1, 50701), 0.0)
    _udp(core, udp_flow(C2, 50702))
    before = conns(core, 0.0)
    assert send_c(core, nat_flow(C3, 50703), 1.0, flags="S", seq=1) == (Verdict.DROP,
                                                                         DropReason.CONN_TABLE_FULL)
    assert send_c(core, udp_flow(C3, 50704), 1.0, load=b"q") == (Verdict.DROP, DropReason.CONN_TABLE_FULL)
    assert conns(core, 1.0) == before
    assert core.drop_counts()["conn_table_full"] == 2
    # expiry frees room
    shell_timer(core, 300)
    assert conns(core, 300) == {a.conn("ESTABLISHED")}
    assert send_c(core, nat_flow(C3, 50705), 301.0, flags="S", seq=1) == FWD


# ---- conn reuse -------------------------------------------------------------------------------------
@pytest.mark.parametrize("closing", [_to_time_wait, _to_close], ids=["TIME_WAIT", "CLOSE"])
def test_new_syn_on_a_closed_entry_starts_over_on_the_next_dest(closing: Any) -> None:
    core = build_core("lab")
    f = closing(core, nat_flow(C1, 50801))
    old = dest(core, RS1)
    assert old.conns == 1
    assert send_c(core, f, 5.0, flags="S", seq=7000) == FWD
    assert conns(core, 5.0) == {nat_flow(C1, 50801, RS2).conn("SYN_RECV")}
    assert old.conns == 0
    assert dest(core, RS2).conns == 1


@pytest.mark.parametrize("setup,state", [(_to_established, "ESTABLISHED"), (_to_fin_wait, "SYN_RECV")],
                         ids=["ESTABLISHED", "FIN_WAIT"])
def test_new_syn_on_a_live_entry_keeps_its_dest(setup: Any, state: str) -> None:
    core = build_core("lab")
    f = setup(core, nat_flow(C1, 50901))
    assert send_c(core, f, 5.0, flags="S", seq=7000) == FWD
    assert conns(core, 5.0) == {f.conn(state)}


# ---- thresholds --------------------------------------------------------------------------------------
def _one_dest_core(u: int, lo: int) -> tuple[Core, Dest]:
    core = build_core("lab")
    for daddr in (RS2, RS3):
        core.del_dest(TCP_SVC, IPv4Address(daddr), 8080)
    core.edit_dest(TCP_SVC, DestConfig(IPv4Address(RS1), 8080, method=FwdMethod.MASQ,
                                       u_threshold=u, l_threshold=lo))
    return core, dest(core, RS1)


def test_upper_threshold_without_lower_clears_below_three_quarters() -> None:
    core, d = _one_dest_core(4, 0)
    for i in range(4):     # SYN_RECV conns expiring at 60, 61, 62, 63
        assert send_c(core, nat_flow(C1, 51000 + i), float(i), flags="S", seq=1) == FWD
        assert d.overloaded == (i == 3)
    assert send_c(core, nat_flow(C2, 51010), 4.0, flags="S", seq=1) == (Verdict.DROP, DropReason.NO_DEST)
    shell_timer(core, 60)                  # 3 left: 3 * 4 >= 4 * 3, still overloaded
    assert (d.conns, d.overloaded) == (3, True)
    assert send_c(core, nat_flow(C2, 51011), 60.5, flags="S", seq=1) == (Verdict.DROP, DropReason.NO_DEST)
    shell_timer(core, 61)                  # 2 left: below 3/4 of 4
    assert (d.conns, d.overloaded) == (2, False)
    assert send_c(core, nat_flow(C2, 51012), 61.5, flags="S", seq=1) == FWD


def test_lower_threshold_clears_below_it() -> None:
    core, d = _one_dest_core(4, 2)
    for i in range(4):
        send_c(core, nat_flow(C1, 52000 + i), float(i), flags="S", seq=1)
    assert d.overloaded
    shell_timer(core, 61)
    assert (d.conns, d.overloaded) == (2, True)    # 2 is not below 2
    shell_timer(core, 62)
    assert (d.conns, d.overloaded) == (1, False)


def test_threshold_counts_active_and_inactive() -> None:
    core, d = _one_dest_core(2, 0)
    handshake(core, nat_flow(C1, 53001), 0.0)
    assert not d.overloaded
    send_c(core, nat_flow(C1, 53002), 0.0, flags="S", seq=1)
    assert (d.activeconns, d.inactconns, d.overloaded) == (1, 1, True)


def test_raising_or_removing_the_upper_threshold_lifts_the_overload() -> None:
    core, d = _one_dest_core(2, 0)
    send_c(core, nat_flow(C1, 54001), 0.0, flags="S", seq=1)
    send_c(core, nat_flow(C1, 54002), 0.0, flags="S", seq=1)
    assert d.overloaded
    core.edit_dest(TCP_SVC, DestConfig(IPv4Address(RS1), 8080, method=FwdMethod.MASQ, u_threshold=100))
    assert not d.overloaded
    core.edit_dest(TCP_SVC, DestConfig(IPv4Address(RS1), 8080, method=FwdMethod.MASQ, u_threshold=2))
    core.edit_dest(TCP_SVC, DestConfig(IPv4Address(RS1), 8080, method=FwdMethod.MASQ, u_threshold=0))
    assert not d.overloaded
    assert send_c(core, nat_flow(C1, 54003), 0.0, flags="S", seq=1) == FWD


# ---- dest removal ----------------------------------------------------------------------------------
def test_deleted_dest_drops_until_readded_then_revives() -> None:
    core = build_core("lab")
    f = nat_flow(C1, 55001)
    handshake(core, f, 0.0)
    core.del_dest(TCP_SVC, IPv4Address(RS1), 8080)
    assert send_c(core, f, 1.0, flags="PA", seq=101, ack=901, load=b"x") == (Verdict.DROP,
                                                                              DropReason.DEST_GONE)
    assert send_s(core, f, 1.0, flags="PA", seq=901, ack=102, load=b"y") == (Verdict.DROP,
                                                                              DropReason.DEST_GONE)
    assert conns(core, 1.0) == {f.conn("ESTABLISHED")}
    revived = core.add_dest(TCP_SVC, DestConfig(IPv4Address(RS1), 8080, method=FwdMethod.MASQ))
    assert (revived.activeconns, revived.inactconns) == (1, 0)
    assert send_c(core, f, 2.0, flags="PA", seq=101, ack=901, load=b"x") == FWD
    assert send_s(core, f, 2.0, flags="PA", seq=901, ack=102, load=b"y") == FWD
    assert core.dest_counters(revived).inpkts >= 3


def test_deleted_dest_conns_expire_by_timer_and_the_dest_is_forgotten() -> None:
    core = build_core("lab")
    f = nat_flow(C1, 55101)
    send_c(core, f, 0.0, flags="S", seq=1)
    old = dest(core, RS1)
    core.del_dest(TCP_SVC, IPv4Address(RS1), 8080)
    assert shell_timer(core, 60) == 1
    assert (old.activeconns, old.inactconns) == (0, 0)
    fresh = core.add_dest(TCP_SVC, DestConfig(IPv4Address(RS1), 8080, method=FwdMethod.MASQ))
    assert fresh is not old
    assert core.dest_counters(fresh).conns == 0


def test_expire_nodest_conn_expires_on_the_next_packet() -> None:
    core = build_core("lab", expire_nodest_conn=True)
    f = nat_flow(C1, 55201)
    handshake(core, f, 0.0)
    d = dest(core, RS1)
    core.del_dest(TCP_SVC, IPv4Address(RS1), 8080)
    assert send_c(core, f, 1.0, flags="PA", seq=101, ack=901, load=b"x") == (Verdict.DROP,
                                                                              DropReason.DEST_GONE)
    assert conns(core, 1.0) == set()
    assert (d.activeconns, d.inactconns) == (0, 0)
    assert core.next_deadline() is None or shell_timer(core, 10_000) == 0


def test_droute_conn_survives_dest_edit_of_weight() -> None:
    core = build_core("lab")
    d = _dr_fin_wait(core, dr_flow(C1, 55301))
    key = (Proto.TCP, IPv4Address("10.77.1.101"), 80)
    core.edit_dest(key, DestConfig(IPv4Address(DR1), 80, weight=0, method=FwdMethod.DROUTE))
    assert send_c(core, d, 1.0, flags="A", seq=102, ack=901) == FWD
    assert conns(core, 1.0) == {d.conn("FIN_WAIT")}
