"""Connection sync in the core: two directors of a pair (two ``Core``s of the same lab, see
tests/vectors/core.py), the master's ``drain_sync``/``sync_refresh``/``sync_dump`` records
applied on the backup with ``apply_sync``, and the backup taking over: the client's next packet
leaves it byte for byte as it would have left the master, and the real server's replies do
once the backup has learned the way back to the client (dropped as ``sync_unlearned`` before).
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
    DIR_CMAC,
    DR_SVC,
    IF_C,
    IF_S,
    MACS,
    ROUTER_S,
    RS1,
    RS2,
    TCP_SVC,
    UDP_SVC,
    Flow,
    build_core,
    conn_line,
    dr_flow,
    icmp_frame,
    ip_of,
    mac,
    nat_flow,
    udp_flow,
)
from ulvs.core import Core, DestConfig, DropReason, FwdMethod, Proto, ServiceConfig, TcpState, Verdict
from ulvs.core.conntab import F_SYNC
from ulvs.packet import builder
from ulvs.sync.proto import IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_MASQ, ConnRecord, Decoder, Encoder, Message

GET = b"GET / HTTP/1.0\r\n\r\n"
OK = b"HTTP/1.0 200 OK\r\n\r\nhello"
PVIP = "10.77.1.102"                       # a persistent service, added to both directors
P_SVC = (Proto.TCP, IPv4Address(PVIP), 443)


# ---- helpers -------------------------------------------------------------------------------------
def pair() -> tuple[Core, Core]:
    """Master A (capturing) and backup B, configured alike."""
    a, b = build_core("lab"), build_core("lab")
    a.enable_sync()
    return a, b


def send(core: Core, frame: bytes, ifin: int, now: float) -> tuple[Verdict, DropReason | None, bytes]:
    buf = bytearray(frame)
    v, _eg, r = core.process(buf, ifin, now)
    return v, r, bytes(buf)


def c(core: Core, f: Flow, now: float, **seg: Any) -> tuple[Verdict, DropReason | None, bytes]:
    return send(core, f.client_in(**seg), IF_C, now)


def s(core: Core, f: Flow, now: float, **seg: Any) -> tuple[Verdict, DropReason | None, bytes]:
    return send(core, f.server_in(**seg), IF_S, now)


def bound(core: Core, f: Flow, now: float) -> Flow:
    (info,) = [i for i in core.conns(now)
               if str(i.caddr) == f.caddr and i.cport == f.cport and not i.template]
    return replace(f, daddr=str(info.daddr))


def open_tcp(core: Core, f: Flow, now: float) -> Flow:
    assert c(core, f, now, flags="S", seq=100)[0] == Verdict.FORWARD
    f = bound(core, f, now)
    assert s(core, f, now, flags="SA", seq=900, ack=101)[0] == Verdict.FORWARD
    assert c(core, f, now, flags="A", seq=101, ack=901)[0] == Verdict.FORWARD
    return f


def conns(core: Core, now: float) -> set[str]:
    return {conn_line(i) + (" template" if i.template else "") for i in core.conns(now)}


def counters(core: Core) -> dict[tuple[str, int], tuple[int, int, int]]:
    return {(str(d.daddr), d.dport): (d.activeconns, d.inactconns, d.persistconns)
            for svc in core.services.values() for d in svc.dests}


def sync(a: Core, b: Core, now: float) -> list[ConnRecord]:
    recs = a.drain_sync(now)
    b.apply_sync(recs, now)
    return recs


def timer(core: Core, until: float) -> None:
    while (d := core.next_deadline()) is not None and d <= until:
        core.handle_timer(d)


def counting_slow(core: Core) -> list[int]:
    calls: list[int] = []
    real = core._slow

    def slow(*args: Any) -> None:
        calls.append(args[0])
        real(*args)
    core._slow = slow  # type: ignore[method-assign, assignment]
    return calls


def add_persistent(core: Core) -> None:
    core.add_service(ServiceConfig(Proto.TCP, IPv4Address(PVIP), 443, sched="rr", persistent=300))
    for d in (RS1, RS2):
        core.add_dest(P_SVC, DestConfig(IPv4Address(d), 443, method=FwdMethod.MASQ))


# ---- what is captured ----------------------------------------------------------------------------
def test_disabled_sync_captures_nothing() -> None:
    a = build_core("lab")
    assert not a.sync_enabled and a._sync_log is None
    open_tcp(a, nat_flow(C1, 41001), 0.0)
    assert a._sync_log is None and a.drain_sync(1.0) == []
    a.enable_sync()
    a.disable_sync()
    open_tcp(a, nat_flow(C1, 41002), 1.0)
    assert a.drain_sync(2.0) == []


def test_a_new_nat_connection_shows_up_on_the_backup() -> None:
    a, b = pair()
    f = nat_flow(C1, 41101)
    assert c(a, f, 0.0, flags="S", seq=100)[0] == Verdict.FORWARD
    f = bound(a, f, 0.0)
    (r,) = a.drain_sync(0.5)
    assert r == ConnRecord(proto=6, fwd=IP_VS_CONN_F_MASQ, state=TcpState.SYN_RECV,
                           caddr=IPv4Address(C1).packed, cport=41101, vaddr=IPv4Address(f.vaddr).packed,
                           vport=80, daddr=IPv4Address(f.daddr).packed, dport=8080, fwmark=0, timeout=60)
    assert a.drain_sync(0.6) == [], "drained"
    assert b.apply_sync([r], 0.5) == 1
    assert conns(b, 0.5) == conns(a, 0.5) == {f.conn("SYN_RECV")}
    assert counters(b) == counters(a)
    (slot,) = b.table.slots()
    assert b.table.flags[slot] & F_SYNC


def test_state_changes_are_coalesced_per_drain_and_propagate() -> None:
    a, b = pair()
    f = open_tcp(a, nat_flow(C1, 41201), 0.0)
    recs = sync(a, b, 0.0)
    assert [(r.state, r.timeout) for r in recs] == [(TcpState.ESTABLISHED, 900)], "SYN, SYN-ACK, ACK: one"
    assert conns(b, 0.0) == {f.conn("ESTABLISHED")} and counters(b) == counters(a)
    assert counters(b)[(f.daddr, 8080)] == (1, 0, 0)
    assert c(a, f, 1.0, flags="FA", seq=101, ack=901)[0] == Verdict.FORWARD
    assert [r.state for r in sync(a, b, 1.0)] == [TcpState.CLOSE_WAIT]
    assert conns(b, 1.0) == {f.conn("CLOSE_WAIT")} and counters(b)[(f.daddr, 8080)] == (0, 1, 0)
    assert s(a, f, 2.0, flags="FA", seq=901, ack=102)[0] == Verdict.FORWARD
    assert [r.state for r in sync(a, b, 2.0)] == [TcpState.TIME_WAIT]
    timer(a, 200.0)                                    # TIME_WAIT, 120 s
    (gone,) = sync(a, b, 200.0)
    assert gone.delete and (gone.daddr, gone.dport) == (IPv4Address(f.daddr).packed, 8080)
    assert conns(a, 200.0) == conns(b, 200.0) == set()
    assert counters(b) == counters(a) and all(v == (0, 0, 0) for v in counters(b).values())


def test_rst_close_and_dest_removal_send_deletions() -> None:
    a, b = build_core("lab-expire-nodest"), build_core("lab-expire-nodest")
    a.enable_sync()
    f, g = open_tcp(a, nat_flow(C1, 41301), 0.0), open_tcp(a, nat_flow(C2, 41302), 0.0)
    sync(a, b, 0.0)
    assert c(a, f, 1.0, flags="R", seq=101)[0] == Verdict.FORWARD
    assert [r.state for r in sync(a, b, 1.0)] == [TcpState.CLOSE]
    timer(a, 12.0)                                     # CLOSE, 10 s
    assert [r.delete for r in sync(a, b, 12.0)] == [True]
    a.del_dest(TCP_SVC, IPv4Address(g.daddr), 8080)   # expire_nodest_conn: the next packet ends it
    assert c(a, g, 13.0, flags="PA", seq=101, ack=901, load=GET)[1] == DropReason.DEST_GONE
    (r,) = sync(a, b, 13.0)
    assert r.delete and r.cport == 41302
    assert conns(b, 13.0) == set()


def test_a_connection_born_and_gone_between_drains_is_not_sent() -> None:
    a, b = pair()
    f = nat_flow(C1, 41401)
    assert c(a, f, 0.0, flags="S", seq=100)[0] == Verdict.FORWARD
    timer(a, 61.0)                                     # SYN_RECV, 60 s
    assert a.drain_sync(61.0) == []
    g = open_tcp(a, nat_flow(C1, 41402), 62.0)
    sync(a, b, 62.0)
    assert c(a, g, 63.0, flags="R", seq=101)[0] == Verdict.FORWARD
    timer(a, 80.0)
    assert [r.delete for r in a.drain_sync(80.0)] == [True], "known to the peer: its deletion is sent"


def test_a_slot_reused_before_the_drain_yields_the_deletion_then_the_new_connection() -> None:
    a, b = pair()
    f = open_tcp(a, nat_flow(C1, 41501), 0.0)
    sync(a, b, 0.0)
    (slot,) = a.table.slots()
    assert c(a, f, 1.0, flags="R", seq=101)[0] == Verdict.FORWARD
    timer(a, 12.0)
    g = open_tcp(a, nat_flow(C2, 41502), 12.0)
    assert list(a.table.slots()) == [slot], "the new connection took the freed slot"
    recs = a.drain_sync(12.0)
    assert [(r.cport, r.delete, r.state) for r in recs] == [(41501, True, TcpState.CLOSE),
                                                            (41502, False, TcpState.ESTABLISHED)]
    b.apply_sync(recs, 12.0)
    assert conns(b, 12.0) == conns(a, 12.0) == {g.conn("ESTABLISHED")}
    assert counters(b) == counters(a)


def test_one_packet_connections_are_not_synced() -> None:
    a = build_core("lab")
    a.edit_service(ServiceConfig(Proto.UDP, IPv4Address("10.77.1.100"), 53, sched="rr", ops=True))
    a.enable_sync()
    assert c(a, udp_flow(C1, 41601), 0.0, load=b"q")[0] == Verdict.FORWARD
    assert a.conn_count() == 1 and a.drain_sync(0.0) == []
    assert list(a.sync_dump(0.0)) == [] and a.sync_refresh(1000.0, 1.0) == []


# ---- applying ------------------------------------------------------------------------------------
def test_takeover_forwards_byte_identically_and_learns_the_way_back() -> None:
    a, b = pair()
    f = open_tcp(a, nat_flow(C1, 41701), 0.0)
    assert c(a, f, 0.1, flags="PA", seq=101, ack=901, load=GET)[0] == Verdict.FORWARD
    sync(a, b, 0.1)
    reply: dict[str, Any] = dict(flags="PA", seq=901, ack=101 + len(GET), load=OK)
    # Before the client's first packet, B does not know the way back: the reply is dropped.
    v, r, _ = s(b, f, 0.2, **reply)
    assert (v, r) == (Verdict.DROP, DropReason.SYNC_UNLEARNED)
    assert b.drop_counts()["sync_unlearned"] == 1
    # A "fails"; the client's next segment reaches B and leaves exactly as A would send it.
    nxt: dict[str, Any] = dict(flags="PA", seq=101 + len(GET), ack=901, load=GET)
    want = c(a, f, 0.3, **nxt)
    slow = counting_slow(b)
    got = c(b, f, 0.3, **nxt)
    assert got == want and got[0] == Verdict.FORWARD and got[2] == f.client_out(**nxt)
    assert len(slow) == 1, "the first packet on B takes the slow path (and learns)"
    assert s(b, f, 0.4, **reply) == s(a, f, 0.4, **reply)
    assert s(b, f, 0.4, **reply)[2] == f.server_out(**reply)
    assert c(b, f, 0.5, **nxt)[0] == Verdict.FORWARD
    assert len(slow) == 1, "learned: both directions take the fast path"
    assert counters(b) == counters(a)


def test_the_way_back_may_come_from_a_known_next_hop_of_the_client() -> None:
    a, b = pair()
    f = open_tcp(a, nat_flow(C1, 41801), 0.0)
    sync(a, b, 0.0)
    b.set_neighbor(IPv4Address(C1), IF_C, mac(MACS[C1]), mac(DIR_CMAC))
    reply: dict[str, Any] = dict(flags="PA", seq=901, ack=101, load=OK)
    got = s(b, f, 0.1, **reply)
    assert got == s(a, f, 0.1, **reply) and got[2] == f.server_out(**reply)


def test_a_dest_revived_under_an_unlearned_connection_still_learns() -> None:
    a, b = pair()
    f = open_tcp(a, nat_flow(C1, 41901), 0.0)
    sync(a, b, 0.0)
    rs = IPv4Address(f.daddr)
    b.del_dest(TCP_SVC, rs, 8080)
    b.add_dest(TCP_SVC, DestConfig(rs, 8080, method=FwdMethod.MASQ))
    b.set_neighbor(rs, IF_S, mac(MACS[f.daddr]), mac("02:00:00:00:02:fe"))
    assert s(b, f, 0.1, flags="A", seq=901, ack=101)[1] == DropReason.SYNC_UNLEARNED
    nxt: dict[str, Any] = dict(flags="PA", seq=101, ack=901, load=GET)
    assert c(b, f, 0.2, **nxt)[2] == f.client_out(**nxt)
    assert s(b, f, 0.3, flags="A", seq=901, ack=101 + len(GET))[0] == Verdict.FORWARD


def test_icmp_errors_of_an_unlearned_connection() -> None:
    """Towards the client an ICMP error waits for the way back like a reply; from the client's
    side it shows the way back, as the client's own packets do."""
    a, b = pair()
    f = open_tcp(a, nat_flow(C1, 41951), 0.0)
    sync(a, b, 0.0)
    seg: dict[str, Any] = dict(flags="PA", seq=101, ack=901, load=GET, ip_id=77)
    to_client = icmp_frame(MACS[ROUTER_S], "02:00:00:00:02:fe", ROUTER_S, C1, 11, 0,
                           ip_of(f.client_out(**seg))[:28], ip_id=5)
    assert send(b, to_client, IF_S, 0.1)[:2] == (Verdict.DROP, DropReason.SYNC_UNLEARNED)
    reply: dict[str, Any] = dict(flags="PA", seq=901, ack=101, load=OK, ip_id=78)
    from_client = icmp_frame(MACS[C1], DIR_CMAC, C1, f.vaddr, 3, 4, ip_of(f.server_out(**reply))[:28],
                             mtu=1400, ip_id=6)
    got = send(b, from_client, IF_C, 0.2)
    assert got == send(a, from_client, IF_C, 0.2) and got[0] == Verdict.FORWARD
    assert send(b, to_client, IF_S, 0.3) == send(a, to_client, IF_S, 0.3)
    assert s(b, f, 0.4, **reply) == s(a, f, 0.4, **reply)
    assert s(b, f, 0.4, **reply)[0] == Verdict.FORWARD


def test_direct_routing_connections_go_fast_at_once() -> None:
    a, b = pair()
    f = dr_flow(C1, 42001)
    assert c(a, f, 0.0, flags="S", seq=100)[0] == Verdict.FORWARD
    assert c(a, f, 0.0, flags="A", seq=101, ack=901)[0] == Verdict.FORWARD
    f = bound(a, f, 0.0)
    (r,) = sync(a, b, 0.0)
    assert (r.fwd, r.state) == (IP_VS_CONN_F_DROUTE, TcpState.ESTABLISHED)
    slow = counting_slow(b)
    seg: dict[str, Any] = dict(flags="PA", seq=101, ack=901, load=GET)
    assert c(b, f, 0.1, **seg) == c(a, f, 0.1, **seg)
    assert slow == []


def test_udp_connections() -> None:
    a, b = pair()
    u = udp_flow(C1, 42101)
    assert c(a, u, 0.0, load=b"query")[0] == Verdict.FORWARD
    (r,) = sync(a, b, 0.0)
    assert (r.proto, r.state, r.timeout) == (17, 0, 300)
    assert conns(b, 0.0) == {u.conn("UDP")} and counters(b) == counters(a)
    q, ans = b"query, long enough for the fast path", b"answer, long enough for the fast path"
    assert s(b, u, 0.1, load=ans)[1] == DropReason.SYNC_UNLEARNED
    slow = counting_slow(b)
    assert c(b, u, 0.2, load=q) == c(a, u, 0.2, load=q)
    assert len(slow) == 1, "the first datagram on B takes the slow path (and learns)"
    assert s(b, u, 0.3, load=ans) == s(a, u, 0.3, load=ans)
    assert s(b, u, 0.3, load=ans)[2] == u.server_out(load=ans)
    assert len(slow) == 1


def test_frames_from_the_packet_builder_take_over_too() -> None:
    """The same takeover with ulvs's own frame builder (the bench's frames)."""
    a, b = pair()
    cmac, dmac = MACS[C3], DIR_CMAC
    syn = builder.tcp_frame(cmac, dmac, C3, "10.77.1.100", 42201, 80, 0x02)
    assert send(a, syn, IF_C, 0.0)[0] == Verdict.FORWARD
    sync(a, b, 0.0)
    ack = builder.tcp_frame(cmac, dmac, C3, "10.77.1.100", 42201, 80, 0x10, b"data")
    assert send(b, ack, IF_C, 0.1) == send(a, ack, IF_C, 0.1)


def test_records_for_unknown_services_or_dests_are_skipped_and_counted() -> None:
    a, b = pair()
    f = open_tcp(a, nat_flow(C1, 42301), 0.0)
    (r,) = a.drain_sync(0.0)
    bad = [replace(r, vport=81), replace(r, vaddr=IPv4Address("10.77.1.199").packed),
           replace(r, daddr=IPv4Address("10.77.2.99").packed), replace(r, dport=8081),
           replace(r, fwd=IP_VS_CONN_F_DROUTE), replace(r, proto=17, state=0, vport=80),
           replace(r, state=11)]
    assert b.apply_sync(bad, 0.0) == 0
    assert b.sync_skipped == len(bad) and b.conn_count() == 0
    assert b.apply_sync([replace(r, delete=True)], 0.0) == 0, "deleting what is not here: nothing"
    assert b.sync_skipped == len(bad)
    assert b.apply_sync([r], 0.0) == 1 and conns(b, 0.0) == {f.conn("ESTABLISHED")}


def test_the_peers_dest_wins_and_counters_follow() -> None:
    a, b = pair()
    f = open_tcp(a, nat_flow(C1, 42401), 0.0)
    (r,) = a.drain_sync(0.0)
    other = RS2 if f.daddr == RS1 else RS1
    b.apply_sync([replace(r, daddr=IPv4Address(other).packed)], 0.0)
    assert counters(b)[(other, 8080)] == (1, 0, 0)
    b.apply_sync([r], 1.0)
    assert conns(b, 1.0) == {f.conn("ESTABLISHED")}
    assert counters(b)[(other, 8080)] == (0, 0, 0) and counters(b) == counters(a)
    assert b.apply_sync([replace(r, daddr=IPv4Address(other).packed, delete=True)], 1.0) == 0
    assert b.sync_skipped == 1 and b.conn_count() == 1, "a deletion for another dest is not ours"


def test_applying_does_not_echo() -> None:
    a, b = pair()
    b.enable_sync()
    open_tcp(a, nat_flow(C1, 42501), 0.0)
    recs = sync(a, b, 0.0)
    b.apply_sync([replace(recs[0], delete=True)], 1.0)
    assert b.drain_sync(1.0) == []


def test_the_remaining_timeout_is_honoured_but_never_shortened() -> None:
    a, b = pair()
    open_tcp(a, nat_flow(C1, 42601), 0.0)
    (r,) = a.drain_sync(0.0)
    b.apply_sync([replace(r, timeout=100)], 0.0)
    (info,) = b.conns(0.0)
    assert info.expires == pytest.approx(100, abs=0.1)
    b.apply_sync([replace(r, timeout=50)], 10.0)      # later and shorter: kept at 100 from t=0
    (info,) = b.conns(10.0)
    assert info.expires == pytest.approx(90, abs=0.1)
    b.apply_sync([replace(r, timeout=400)], 10.0)
    (info,) = b.conns(10.0)
    assert info.expires == pytest.approx(400, abs=0.1)
    timer(b, 409.0)
    assert b.conn_count() == 1
    timer(b, 411.0)
    assert b.conn_count() == 0


# ---- refresh and dump ----------------------------------------------------------------------------
def test_a_long_lived_connection_does_not_expire_on_the_backup() -> None:
    """The master's connection sees a packet every 100 s (fast path: no sync event) for 2000 s;
    the backup only hears of it through ``sync_refresh``, which keeps it there."""
    a, b = pair()
    f = open_tcp(a, nat_flow(C1, 42701), 0.0)
    ref = build_core("lab")                            # a backup without refresh, for contrast
    recs = a.drain_sync(0.0)
    b.apply_sync(recs, 0.0)
    ref.apply_sync(recs, 0.0)
    now = 0.0
    while now < 2000.0:
        now += 10.0
        if now % 100 == 0:
            assert c(a, f, now, flags="PA", seq=101, ack=901, load=GET)[0] == Verdict.FORWARD
        b.apply_sync(a.drain_sync(now) + a.sync_refresh(now, max_age=60.0), now)
        for core in (a, b, ref):
            timer(core, now)
    assert conns(b, now) == conns(a, now) == {f.conn("ESTABLISHED")}
    assert ref.conn_count() == 0, "without refreshes the backup expires it after 900 s"


def test_sync_refresh_round_robins_over_a_bounded_scan() -> None:
    a, b = pair()
    flows = [open_tcp(a, nat_flow(C1, 42800 + i), 0.0) for i in range(10)]
    sync(a, b, 0.0)
    n = len(a.table.key)
    assert a.sync_refresh(30.0, max_age=60.0, scan=n) == [], "sent 30 s ago: not due"
    seen: list[int] = []
    calls = 0
    while len(seen) < len(flows):
        got = a.sync_refresh(100.0, max_age=60.0, scan=8)
        calls += 1
        assert len(got) <= 8
        seen += [r.cport for r in got]
        assert calls <= -(-n // 8), "every slot is visited within ceil(slots / scan) calls"
    assert sorted(seen) == [f.cport for f in flows], "each connection once"
    assert a.sync_refresh(100.0, max_age=60.0, scan=n) == [], "all stamped"
    again = a.sync_refresh(200.0, max_age=60.0, scan=n)
    assert len(again) == 10 and all(r.timeout == 900 - 200 for r in again), "last packet at 0"


def test_sync_dump_is_the_live_set_and_rebuilds_a_backup() -> None:
    a, b = pair()
    add_persistent(a)
    add_persistent(b)
    open_tcp(a, nat_flow(C1, 42901), 0.0)
    assert c(a, nat_flow(C2, 42902), 0.0, flags="S", seq=1)[0] == Verdict.FORWARD
    assert c(a, udp_flow(C1, 42903), 0.0, load=b"q")[0] == Verdict.FORWARD
    assert c(a, dr_flow(C3, 42904), 0.0, flags="S", seq=1)[0] == Verdict.FORWARD
    assert c(a, Flow("TCP", C3, 42905, PVIP, 443, RS1, 443), 0.0, flags="S", seq=1)[0] == Verdict.FORWARD
    a.drain_sync(0.0)                                  # a backup that missed all of it
    dump = list(a.sync_dump(5.0))
    assert len(dump) == a.conn_count() == 6
    assert dump[0].template and not any(r.template for r in dump[1:]), "templates first"
    assert b.apply_sync(dump, 5.0) == 6
    assert conns(b, 5.0) == conns(a, 5.0)
    assert counters(b) == counters(a)
    for x, y in zip(sorted(a.conns(5.0), key=conn_line), sorted(b.conns(5.0), key=conn_line), strict=True):
        assert x.expires == pytest.approx(y.expires, abs=1.0)


# ---- persistence templates -----------------------------------------------------------------------
def test_persistence_templates_are_synced_and_keep_clients_on_their_dest() -> None:
    a, b = pair()
    add_persistent(a)
    add_persistent(b)
    f = Flow("TCP", C1, 43001, PVIP, 443, RS1, 443)
    f = open_tcp(a, f, 0.0)
    recs = sync(a, b, 0.0)
    assert [r.template for r in recs] == [True, False]
    t = recs[0]
    assert (t.caddr, t.cport, t.vport, t.dport, t.timeout) == (IPv4Address(C1).packed, 0, 443, 443, 300)
    assert conns(b, 0.0) == conns(a, 0.0)
    assert counters(b) == counters(a)
    (tslot,) = [sl for sl in b.table.slots() if sl in b._tmpl]
    assert b._tmpl[tslot][1] == 1, "the synced connection is controlled by the synced template"
    # B takes over: the client's next connection follows the template, whatever rr says.
    for port in range(43002, 43006):
        g = Flow("TCP", C1, port, PVIP, 443, f.daddr, 443)
        assert c(b, g, 1.0, flags="S", seq=1)[2] == g.client_out(flags="S", seq=1)
    timer(b, 100.0)                                    # B's own SYN_RECV connections time out
    assert b._tmpl[tslot][1] == 1
    # The connection closes on A; its template outlives it by the persistence timeout.
    assert c(a, f, 2.0, flags="R", seq=101)[0] == Verdict.FORWARD
    timer(a, 20.0)
    assert [(r.template, r.delete) for r in sync(a, b, 20.0)] == [(False, True)]
    assert b._tmpl[tslot][1] == 0 and b.conn_count() == 1, "the template stays"
    timer(a, 400.0)
    assert [(r.template, r.delete) for r in sync(a, b, 400.0)] == [(True, True)]
    assert conns(b, 400.0) == conns(a, 400.0) == set()
    assert counters(b) == counters(a)


def test_a_template_deleted_while_it_controls_connections_goes_with_the_last() -> None:
    a, b = pair()
    add_persistent(a)
    add_persistent(b)
    open_tcp(a, Flow("TCP", C1, 43101, PVIP, 443, RS1, 443), 0.0)
    tmpl, conn = sync(a, b, 0.0)
    assert b.apply_sync([replace(tmpl, delete=True)], 1.0) == 1
    assert b.conn_count() == 2, "dead, but kept while it controls the connection"
    assert b.apply_sync([replace(conn, delete=True)], 2.0) == 1
    assert b.conn_count() == 0 and counters(b)[(RS1, 443)] == (0, 0, 0)


# ---- through the wire ----------------------------------------------------------------------------
def test_records_survive_the_wire_codec() -> None:
    a, b = pair()
    add_persistent(a)
    add_persistent(b)
    open_tcp(a, nat_flow(C1, 43201), 0.0)
    open_tcp(a, Flow("TCP", C2, 43202, PVIP, 443, RS1, 443), 0.0)
    assert c(a, udp_flow(C1, 43203), 0.0, load=b"q")[0] == Verdict.FORWARD
    enc, dec = Encoder(5, b"k" * 32, 42, mtu=200), Decoder(5, b"k" * 32)
    msgs = enc.messages(a.drain_sync(0.0))
    assert len(msgs) == 2
    for m in msgs:
        msg = dec.feed(m)
        assert isinstance(msg, Message)
        b.apply_sync(msg.records, 0.0)
    assert conns(b, 0.0) == conns(a, 0.0) and counters(b) == counters(a)


def test_group_services_sync_by_member() -> None:
    a, b = pair()
    for core in (a, b):
        core.add_service(ServiceConfig(Proto.FWM, IPv4Address(0), 0, sched="rr", fwmark=7, persistent=60,
                                       members=((Proto.TCP, IPv4Address("10.77.1.103"), 80),
                                                (Proto.UDP, IPv4Address("10.77.1.103"), 53))))
        core.add_dest((Proto.FWM, IPv4Address(0), 7), DestConfig(IPv4Address(RS2), 0, method=FwdMethod.MASQ))
    f = Flow("TCP", C1, 43301, "10.77.1.103", 80, RS2, 80)
    open_tcp(a, f, 0.0)
    recs = sync(a, b, 0.0)
    assert [(r.template, r.proto, r.fwmark) for r in recs] == [(True, 0, 7), (False, 6, 7)]
    assert conns(b, 0.0) == conns(a, 0.0)
    seg: dict[str, Any] = dict(flags="PA", seq=101, ack=901, load=GET)
    assert c(b, f, 0.1, **seg) == c(a, f, 0.1, **seg)
    assert c(b, f, 0.1, **seg)[2] == f.client_out(**seg)


def test_services_kept_apart() -> None:
    """UDP_SVC and DR_SVC records land in their own services."""
    a, b = pair()
    assert c(a, udp_flow(C1, 43401), 0.0, load=b"q")[0] == Verdict.FORWARD
    assert c(a, dr_flow(C1, 43402), 0.0, flags="S", seq=1)[0] == Verdict.FORWARD
    sync(a, b, 0.0)
    assert {i.vport for i in b.conns(0.0)} == {53, 80}
    assert sum(d.conns for d in b.get_service(UDP_SVC).dests) == 1
    assert sum(d.conns for d in b.get_service(DR_SVC).dests) == 1
