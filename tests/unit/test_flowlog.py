"""The flow log: the core's per-connection counters and open/close records (ulvs.core.flows),
and the shell that rate-limits and writes them as JSON lines (ulvs.runtime.flowlog).

The expected packet and byte counts are read from the frames the tests send (the IPv4 Total
Length field of each frame as built by scapy), never from the core.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_vectors import check_step, run_step
from tests.vectors.core import (
    C1,
    C2,
    CASES,
    DNS1,
    DR1,
    IF_C,
    IF_S,
    RS1,
    TCP_SVC,
    UDP_SVC,
    VIP,
    Case,
    Flow,
    build_core,
    dr_flow,
    nat_flow,
    udp_flow,
)
from ulvs.cli.main import main
from ulvs.config import native
from ulvs.config.render import render
from ulvs.config.schema import Config, DaemonSettings
from ulvs.core import Core, DestConfig, FwdMethod, Proto, ServiceConfig, Verdict
from ulvs.core.flows import CloseReason, FlowEvent, FlowRecord, flow_event
from ulvs.runtime import cli as run_cli
from ulvs.runtime.daemon import Daemon, DaemonError, Options
from ulvs.runtime.flowlog import FlowLog, RateLimit, event_line, suppressed_line


# ---- helpers -------------------------------------------------------------------------------------
def tot_len(frame: bytes) -> int:
    """The IPv4 Total Length of an untagged Ethernet frame."""
    return int.from_bytes(frame[16:18], "big")


class Tally:
    """What the test sent and the core forwarded, per direction: the oracle."""

    def __init__(self) -> None:
        self.inpkts = self.inbytes = self.outpkts = self.outbytes = 0

    def add(self, frame: bytes, out: bool) -> None:
        if out:
            self.outpkts += 1
            self.outbytes += tot_len(frame)
        else:
            self.inpkts += 1
            self.inbytes += tot_len(frame)


def send(core: Core, frame: bytes, ifin: int, now: float) -> Verdict:
    v, _eg, _r = core.process(bytearray(frame), ifin, now)
    return v


def _through(core: Core, frame: bytes, out: bool, now: float, tally: Tally | None) -> Verdict:
    v = send(core, frame, IF_S if out else IF_C, now)
    if tally is not None and v == Verdict.FORWARD:
        tally.add(frame, out=out)
    return v


def client(core: Core, f: Flow, now: float, tally: Tally | None = None, **seg: Any) -> Verdict:
    return _through(core, f.client_in(**seg), False, now, tally)


def server(core: Core, f: Flow, now: float, tally: Tally | None = None, **seg: Any) -> Verdict:
    return _through(core, f.server_in(**seg), True, now, tally)


def bound(core: Core, f: Flow, now: float) -> Flow:
    (info,) = [i for i in core.conns(now)
               if str(i.caddr) == f.caddr and i.cport == f.cport and not i.template]
    return replace(f, daddr=str(info.daddr))


def handshake(core: Core, f: Flow, now: float, tally: Tally | None = None) -> Flow:
    assert client(core, f, now, tally, flags="S", seq=100) == Verdict.FORWARD
    f = bound(core, f, now)
    if f.masq:
        assert server(core, f, now, tally, flags="SA", seq=900, ack=101) == Verdict.FORWARD
    assert client(core, f, now, tally, flags="A", seq=101, ack=901) == Verdict.FORWARD
    return f


def events(core: Core) -> list[FlowEvent]:
    return [flow_event(r) for r in core.drain_flows()]


def closes(core: Core) -> list[FlowEvent]:
    return [e for e in events(core) if e.event == "close"]


class SlowCalls:
    """Counts the frames the batch loop hands to the slow path (``calls``) and the TCP segments
    it hands to the state machine (``changes``: ``Core._tcp_change``)."""

    def __init__(self, core: Core) -> None:
        self.calls = self.changes = 0
        real, change = core._slow, core._tcp_change

        def counting(*args: Any) -> None:
            self.calls += 1
            real(*args)

        def counting_changes(*args: Any) -> None:
            self.changes += 1
            change(*args)

        core._slow = counting  # type: ignore[method-assign,assignment]
        core._tcp_change = counting_changes  # type: ignore[method-assign,assignment]


def flowlog_core(name: str = "lab", **overrides: Any) -> Core:
    core = build_core(name, **overrides)
    core.enable_flow_log()
    return core


# ---- counters ------------------------------------------------------------------------------------
def test_a_nat_tcp_connection_counts_exact_packets_and_bytes_each_way() -> None:
    core = flowlog_core()
    tally = Tally()
    f = handshake(core, nat_flow(C1, 40000), 10.0, tally)
    slow = SlowCalls(core)
    seq_c, seq_s = 101, 901
    for i, (up, down) in enumerate(((18, 1460), (0, 1460), (7, 300), (0, 1))):
        now = 10.5 + i
        if up:
            assert client(core, f, now, tally, flags="PA", seq=seq_c, ack=seq_s, load=b"q" * up) \
                == Verdict.FORWARD
            seq_c += up
        assert server(core, f, now, tally, flags="PA", seq=seq_s, ack=seq_c, load=b"r" * down) \
            == Verdict.FORWARD
        seq_s += down
        assert client(core, f, now, tally, flags="A", seq=seq_c, ack=seq_s) == Verdict.FORWARD
    assert (slow.calls, slow.changes) == (0, 0), "the established segments were meant to take the fast path"
    assert server(core, f, 14.0, tally, flags="FA", seq=seq_s, ack=seq_c) == Verdict.FORWARD
    assert client(core, f, 14.0, tally, flags="FA", seq=seq_c, ack=seq_s + 1) == Verdict.FORWARD
    assert server(core, f, 14.5, tally, flags="A", seq=seq_s + 1, ack=seq_c + 1) == Verdict.FORWARD
    assert (slow.calls, slow.changes) == (0, 3)   # the closing segments move the state
    (opened,) = events(core)
    assert (opened.event, opened.caddr, opened.cport, opened.vaddr, opened.vport) == (
        "open", IPv4Address(C1), 40000, IPv4Address(VIP), 80)
    assert (opened.daddr, opened.dport, opened.method, opened.start) == (IPv4Address(f.daddr), 8080,
                                                                        FwdMethod.MASQ, 10.0)
    assert core.handle_timer(14.5 + 121) == 1                # TIME_WAIT's 120 s
    (closed,) = closes(core)
    assert (closed.inpkts, closed.inbytes, closed.outpkts, closed.outbytes) == (
        tally.inpkts, tally.inbytes, tally.outpkts, tally.outbytes)
    assert (tally.inpkts, tally.outpkts) == (9, 7)
    assert (closed.state, closed.reason, closed.start, closed.duration) == ("TIME_WAIT", CloseReason.FIN,
                                                                           10.0, 4.5)
    # the same traffic the dest's statistics row counted
    c = core.dest_counters(core.services[TCP_SVC].find(IPv4Address(f.daddr), 8080))  # type: ignore[arg-type]
    assert (c.inpkts, c.inbytes, c.outpkts, c.outbytes) == (tally.inpkts, tally.inbytes, tally.outpkts,
                                                             tally.outbytes)


def test_direct_routing_counts_only_the_client_side() -> None:
    core = flowlog_core()
    tally = Tally()
    f = handshake(core, dr_flow(C1, 40001), 1.0, tally)
    for k in range(5):
        assert client(core, f, 2.0, tally, flags="PA", seq=101 + k, ack=901, load=b"x" * k) == Verdict.FORWARD
    (rec,) = core.open_flows()
    got = flow_event(rec)
    assert (got.inpkts, got.inbytes, got.outpkts, got.outbytes) == (7, tally.inbytes, 0, 0)
    assert (got.method, got.reason, got.state, got.daddr) == (FwdMethod.DROUTE, CloseReason.SHUTDOWN,
                                                             "ESTABLISHED", IPv4Address(DR1))
    assert core.conn_count() == 1, "open_flows removes nothing"


def test_udp_counts_both_ways_and_expires() -> None:
    core = flowlog_core()
    tally = Tally()
    f = udp_flow(C1, 5000)
    for k in range(3):
        assert client(core, f, 1.0 + k, tally, load=b"?" * (10 + k)) == Verdict.FORWARD
        assert server(core, f, 1.0 + k, tally, load=b"!" * 100) == Verdict.FORWARD
    assert core.handle_timer(3.0 + 301) == 1
    (got,) = closes(core)
    assert (got.proto, got.daddr, got.dport, got.state, got.reason) == (Proto.UDP, IPv4Address(DNS1), 5353,
                                                                      "UDP", CloseReason.EXPIRED)
    assert (got.inpkts, got.inbytes, got.outpkts, got.outbytes) == (3, tally.inbytes, 3, tally.outbytes)
    assert got.duration == 2.0


def test_icmp_errors_about_a_connection_count_with_it() -> None:
    from tests.vectors.core import DIR_SMAC, MACS, icmp_frame, ip_of

    core = flowlog_core()
    f = handshake(core, nat_flow(C1, 40002), 1.0)
    quote = ip_of(f.client_out(flags="PA", seq=101, ack=901))[:28]
    err = icmp_frame(MACS[f.daddr], DIR_SMAC, f.daddr, f.caddr, 3, 4, quote, mtu=1400)
    assert send(core, err, IF_S, 2.0) == Verdict.FORWARD
    (got,) = [flow_event(r) for r in core.open_flows()]
    assert (got.outpkts, got.outbytes) == (2, 40 + tot_len(err))     # the SYN-ACK and the error


# ---- close reasons -------------------------------------------------------------------------------
def test_a_rst_closes_with_reason_rst() -> None:
    core = flowlog_core()
    f = handshake(core, nat_flow(C1, 40010), 1.0)
    assert server(core, f, 2.0, flags="FA", seq=901, ack=101) == Verdict.FORWARD
    assert client(core, f, 2.0, flags="R", seq=101) == Verdict.FORWARD    # a RST after a FIN: rst
    assert core.handle_timer(2.0 + 11) == 1                                # CLOSE's 10 s
    (got,) = closes(core)
    assert (got.state, got.reason) == ("CLOSE", CloseReason.RST)


def test_an_idle_connection_expires_and_a_closed_one_says_fin() -> None:
    core = flowlog_core()
    idle = handshake(core, nat_flow(C1, 40011), 1.0)
    done = handshake(core, nat_flow(C2, 40012), 1.0)
    assert client(core, done, 2.0, flags="FA", seq=101, ack=901) == Verdict.FORWARD
    assert server(core, done, 2.0, flags="FA", seq=901, ack=102) == Verdict.FORWARD
    assert core.handle_timer(2.0 + 121) == 1
    assert [(e.cport, e.reason) for e in closes(core)] == [(40012, CloseReason.FIN)]
    assert core.handle_timer(1.0 + 901) == 1
    assert [(e.cport, e.state, e.reason) for e in closes(core)] == [(idle.cport, "ESTABLISHED",
                                                                     CloseReason.EXPIRED)]


def test_a_removed_dest_closes_its_connections_with_reason_dest_removed() -> None:
    core = flowlog_core("lab-expire-nodest")
    f = handshake(core, nat_flow(C1, 40020), 1.0)
    core.del_dest(TCP_SVC, IPv4Address(f.daddr), 8080)
    assert client(core, f, 2.0, flags="PA", seq=101, ack=901, load=b"x") == Verdict.DROP
    assert [(e.cport, e.reason) for e in closes(core)] == [(40020, CloseReason.DEST_REMOVED)]
    # without expire_nodest_conn a connection of a removed dest times out, and says why
    core2 = flowlog_core()
    g = handshake(core2, nat_flow(C2, 40021), 1.0)
    core2.del_dest(TCP_SVC, IPv4Address(g.daddr), 8080)
    core2.handle_timer(1.0 + 901)
    assert [(e.cport, e.reason) for e in closes(core2)] == [(40021, CloseReason.DEST_REMOVED)]


def test_flushed_evicted_reused_changed_and_ops() -> None:
    core = flowlog_core()
    udp = udp_flow(C1, 5001)
    assert client(core, udp, 1.0, load=b"a") == Verdict.FORWARD
    assert core.expire_dest_conns(UDP_SVC, IPv4Address(DNS1), 5353, Proto.UDP, 2.0) == 1
    assert [e.reason for e in closes(core)] == [CloseReason.FLUSHED]

    small = flowlog_core("lab-limit1")
    assert client(small, nat_flow(C1, 40030), 1.0, flags="S", seq=1) == Verdict.FORWARD
    assert client(small, nat_flow(C2, 40031), 1.0, flags="S", seq=1) == Verdict.FORWARD
    assert [(e.cport, e.reason, e.state) for e in closes(small)] == [(40030, CloseReason.EVICTED, "SYN_RECV")]

    f = handshake(core, nat_flow(C1, 40032), 3.0)
    assert client(core, f, 3.0, flags="R", seq=101) == Verdict.FORWARD     # CLOSE
    assert client(core, f, 3.5, flags="S", seq=5000) == Verdict.FORWARD    # conn_reuse_mode
    assert [(e.cport, e.reason) for e in closes(core)] == [(40032, CloseReason.REUSED)]

    g = bound(core, f, 3.5)
    core.edit_dest(TCP_SVC, DestConfig(IPv4Address(g.daddr), 8080, method=FwdMethod.DROUTE))
    assert [(e.cport, e.reason) for e in closes(core)] == [(40032, CloseReason.DEST_CHANGED)]

    core.edit_service(ServiceConfig(Proto.UDP, IPv4Address(VIP), 53, sched="rr", ops=True))
    ops = udp_flow(C2, 5002)
    assert client(core, ops, 4.0, load=b"1") == Verdict.FORWARD
    assert client(core, ops, 4.1, load=b"2") == Verdict.FORWARD      # one-packet: a new connection
    got = closes(core)
    assert [(e.cport, e.reason, e.inpkts) for e in got] == [(5002, CloseReason.OPS, 1)]


def test_sync_opens_on_the_backup_and_closes_with_the_peer() -> None:
    a, b = build_core("lab"), flowlog_core()
    a.enable_sync()
    f = handshake(a, nat_flow(C1, 40040), 1.0)
    b.apply_sync(a.drain_sync(1.0), 1.0)
    (opened,) = events(b)
    assert (opened.event, opened.synced, opened.cport) == ("open", True, 40040)
    assert client(a, f, 2.0, flags="R", seq=101) == Verdict.FORWARD
    a.handle_timer(2.0 + 11)
    b.apply_sync(a.drain_sync(13.0), 13.0)
    (closed,) = closes(b)
    assert (closed.reason, closed.synced, closed.inpkts) == (CloseReason.SYNC, True, 0)
    line = json.loads(event_line(closed, 0.0, 13.0))
    assert line["synced"] is True and line["reason"] == "sync"


def test_templates_are_not_flows() -> None:
    core = flowlog_core()
    core.edit_service(ServiceConfig(Proto.TCP, IPv4Address(VIP), 80, sched="rr", persistent=60))
    f = handshake(core, nat_flow(C1, 40050), 1.0)
    assert client(core, f, 1.0, flags="R", seq=101) == Verdict.FORWARD
    assert [e.event for e in events(core)] == ["open"]
    core.handle_timer(1000.0)                       # the connection, then its template
    assert core.conn_count() == 0
    assert [(e.event, e.cport) for e in events(core)] == [("close", 40050)]
    assert core.open_flows() == []


def test_off_by_default_no_counters_no_records() -> None:
    core = build_core("lab")
    assert not core.flow_log_enabled and core.table.fpkts is None and core.table.fstart is None
    f = handshake(core, nat_flow(C1, 40060), 1.0)
    assert client(core, f, 1.0, flags="PA", seq=101, ack=901, load=b"x") == Verdict.FORWARD
    assert core.drain_flows() == [] and core.open_flows() == []
    core.enable_flow_log()                          # a connection already open counts from here
    assert client(core, f, 2.0, flags="PA", seq=102, ack=901, load=b"yy") == Verdict.FORWARD
    (got,) = [flow_event(r) for r in core.open_flows()]
    assert (got.inpkts, got.inbytes, got.outpkts, got.start) == (1, 42, 0, 1.0)
    core.disable_flow_log()
    assert core.table.fpkts is None and core.drain_flows() == []


def test_the_flow_arrays_grow_with_the_table() -> None:
    core = flowlog_core()
    for k in range(200):                            # past the first 64 slots
        assert client(core, nat_flow(C1, 41000 + k), 1.0, flags="S", seq=1) == Verdict.FORWARD
    t = core.table
    assert t.fpkts is not None and t.fbytes is not None and t.fstart is not None and t.fclose is not None
    assert len(t.fpkts) == len(t.fbytes) == 2 * len(t.state)
    assert len(t.fstart) == len(t.fclose) == len(t.state)
    assert sorted(flow_event(r).inpkts for r in core.open_flows()) == [1] * 200


# ---- the vectors with the flow log on ----------------------------------------------------------
def _stats_totals(core: Core) -> tuple[int, int, int, int]:
    p, b = core.stats.pkts, core.stats.bytes
    return sum(p[0::2]), sum(b[0::2]), sum(p[1::2]), sum(b[1::2])


def _flow_totals(records: list[FlowRecord]) -> tuple[int, int, int, int]:
    evs = [flow_event(r) for r in records]
    return (sum(e.inpkts for e in evs), sum(e.inbytes for e in evs), sum(e.outpkts for e in evs),
            sum(e.outbytes for e in evs))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_vectors_with_the_flow_log_on(case: Case) -> None:
    """Every vector's frames come out byte for byte the same with the flow log on, and every
    packet a dest's statistics row counts is counted by exactly one connection."""
    core = flowlog_core(case.topology)
    released = [0, 0, 0, 0]                         # rows a forgotten dest took with it (zeroed)
    release = core.stats.release

    def keep_released(sid: int) -> None:
        row = core.stats.row(sid)
        for k, v in enumerate((row.inpkts, row.inbytes, row.outpkts, row.outbytes)):
            released[k] += v
        release(sid)

    core.stats.release = keep_released  # type: ignore[method-assign]

    def stats_totals() -> tuple[int, ...]:
        return tuple(x + y for x, y in zip(_stats_totals(core), released, strict=True))

    closed: list[FlowRecord] = []
    opened = 0
    for i, step in enumerate(case.steps):
        for ctl in step.ctl:                        # run_step would apply them: do it here, to
            getattr(core, ctl.method)(*ctl.args)    # measure from after them (del_dest zeroes rows)
        step_only = replace(step, ctl=())
        before = tuple(x - y for x, y in zip(stats_totals(), _flow_totals(closed + core.open_flows()),
                                             strict=True))
        got = run_step(core, step_only, slow_only=False)
        check_step(case, i, step, got, batch=True)
        for r in core.drain_flows():
            if flow_event(r).event == "close":
                closed.append(r)
            else:
                opened += 1
        after = tuple(x - y for x, y in zip(stats_totals(), _flow_totals(closed + core.open_flows()),
                                            strict=True))
        assert before == after, f"case {case.num} step {i + 1}"
    live = sum(1 for s in core.table.slots() if not core.table.flags[s] & 0x02)   # F_TEMPLATE
    assert opened == len(closed) + live


# ---- the shell: lines and the rate limit -------------------------------------------------------
OPEN_EV = FlowEvent("open", Proto.TCP, IPv4Address(C1), 40512, IPv4Address(VIP), 80, IPv4Address(RS1), 8080,
                    FwdMethod.MASQ, start=100.25)
CLOSE_EV = replace(OPEN_EV, event="close", duration=1.5, inpkts=6, inbytes=412, outpkts=9, outbytes=10732,
                   state="TIME_WAIT", reason=CloseReason.FIN)


def test_the_line_format() -> None:
    assert event_line(OPEN_EV, 1_765_400_000.0, 300.0) == (
        '{"ts": 1765400100.25, "event": "open", "proto": "tcp", "caddr": "10.77.1.10", "cport": 40512, '
        '"vaddr": "10.77.1.100", "vport": 80, "daddr": "10.77.2.11", "dport": 8080, "method": "masq"}')
    assert event_line(CLOSE_EV, 1_765_400_000.0, 300.0) == (
        '{"ts": 1765400300.0, "event": "close", "proto": "tcp", "caddr": "10.77.1.10", "cport": 40512, '
        '"vaddr": "10.77.1.100", "vport": 80, "daddr": "10.77.2.11", "dport": 8080, "method": "masq", '
        '"start": 1765400100.25, "duration": 1.5, "inpkts": 6, "inbytes": 412, "outpkts": 9, '
        '"outbytes": 10732, "state": "TIME_WAIT", "reason": "fin"}')
    assert json.loads(suppressed_line(7, 5.0)) == {"ts": 5.0, "event": "suppressed", "count": 7}
    assert {r.label for r in CloseReason} == {"expired", "fin", "rst", "dest_removed", "dest_changed",
                                              "flushed", "evicted", "reused", "ops", "sync", "shutdown"}


def test_rate_limit_is_a_token_bucket_of_one_second() -> None:
    lim = RateLimit(4)
    assert [lim.take(10.0) for _ in range(5)] == [True] * 4 + [False]
    assert lim.take(10.125) is False                # half a token
    assert lim.take(10.25) is True                  # one
    assert [lim.take(20.0) for _ in range(5)] == [True] * 4 + [False]   # never more than one second's
    with pytest.raises(ValueError):
        RateLimit(0)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _records(n: int, first_port: int = 1000) -> tuple[Core, list[FlowRecord]]:
    core = flowlog_core()
    for k in range(n):
        client(core, nat_flow(C1, first_port + k), 1.0, flags="S", seq=1)
    return core, core.drain_flows()


def test_lines_over_the_rate_are_counted_and_summed_up_when_it_allows_again() -> None:
    out = io.StringIO()
    clock = FakeClock(50.0)
    log = FlowLog("-", 3, clock=clock, wall=lambda: clock.now + 1000.0)
    log._out = out
    _core, recs = _records(9)
    log.write(recs[:5])                                  # 3 written, 2 suppressed
    log.write([])                                        # no token yet: nothing
    clock.now = 50.5                                     # 1.5 tokens: the summary, not a line more
    log.write(recs[5:6])
    clock.now = 51.5                                     # 3.5: the summary, two lines, one suppressed
    log.write(recs[6:9])
    clock.now = 52.0                                     # 2: the summary (count 1)
    log.write([])
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(x["event"], x.get("cport", x.get("count"))) for x in lines] == [
        ("open", 1000), ("open", 1001), ("open", 1002), ("suppressed", 2), ("suppressed", 1),
        ("open", 1006), ("open", 1007), ("suppressed", 1)]
    assert lines[3]["ts"] == 1050.5 and lines[0]["ts"] == 1001.0
    assert log.info() == {"path": "-", "rate": 3, "written": 8, "suppressed": 4}
    clock.now = 53.0                                     # 3 tokens: 3 lines, 2 suppressed
    log.write(recs[:1] * 5)
    log.close()                                          # the summary is written whatever the rate
    tail = [json.loads(x) for x in out.getvalue().splitlines()][-4:]
    assert [x["event"] for x in tail] == ["open", "open", "open", "suppressed"] and tail[-1]["count"] == 2


def test_a_file_is_appended_to_and_reopened_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "flows.jsonl"
    path.write_text('{"event": "earlier"}\n')
    core, recs = _records(2)
    log = FlowLog(str(path), 100)
    log.write(recs[:1])
    path.rename(tmp_path / "flows.jsonl.1")
    log.reopen()
    log.close([*recs[1:], *core.open_flows()])
    old = (tmp_path / "flows.jsonl.1").read_text().splitlines()
    new = [json.loads(x) for x in path.read_text().splitlines()]
    assert old[0] == '{"event": "earlier"}' and json.loads(old[1])["cport"] == 1000
    assert [(x["event"], x["cport"], x.get("reason")) for x in new] == [
        ("open", 1001, None), ("close", 1000, "shutdown"), ("close", 1001, "shutdown")]
    assert all(x["inpkts"] == 1 and x["inbytes"] == 40 for x in new[1:])


# ---- configuration and command line ----------------------------------------------------------------
def test_the_daemon_section_takes_flow_log_and_its_rate() -> None:
    cfg = native.parse('[daemon]\nflow_log = "/var/log/ulvs/flows.jsonl"\nflow_log_rate = 50\n', "x").config
    assert (cfg.daemon.flow_log, cfg.daemon.flow_log_rate) == ("/var/log/ulvs/flows.jsonl", 50)
    assert native.parse('[daemon]\nflow_log = "-"\n', "x").config.daemon.flow_log == "-"
    assert native.parse("", "x").config.daemon == DaemonSettings()
    for bad, what in (('flow_log = "flows.jsonl"', "neither an absolute path"),
                      ("flow_log_rate = 0", "out of range"), ('flow_log = ""', "must not be empty")):
        with pytest.raises(ValueError, match=what):
            native.parse(f"[daemon]\n{bad}\n", "x")
    config = Config(daemon=DaemonSettings(flow_log="-", flow_log_rate=7))
    assert native.parse(render(config), "x").config.daemon == config.daemon


def test_run_takes_the_flow_log_from_the_command_line_over_the_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Options] = []

    def fake_run(opts: Options, load: Any) -> int:
        started.append(opts)
        return 0

    monkeypatch.setattr(run_cli, "run", fake_run)
    conf = tmp_path / "lb.toml"
    conf.write_text('[daemon]\nflow_log = "/tmp/from-config.jsonl"\nflow_log_rate = 20\n')
    assert main(["run", "--config", str(conf)]) == 0
    assert (started[-1].flow_log, started[-1].flow_log_rate) == ("/tmp/from-config.jsonl", 20)
    assert main(["run", "--config", str(conf), "--flow-log", "-", "--flow-log-rate", "5"]) == 0
    assert (started[-1].flow_log, started[-1].flow_log_rate) == ("-", 5)
    assert main(["run", "--config", str(conf), "--flow-log", "off"]) == 0
    assert started[-1].flow_log is None
    assert main(["run"]) == 0
    assert (started[-1].flow_log, started[-1].flow_log_rate) == (None, 1000)
    assert main(["run", "--flow-log-rate", "0"]) == 2


def test_the_daemon_opens_the_flow_log_and_refuses_it_with_workers(tmp_path: Path) -> None:
    d = Daemon(Options(flow_log=str(tmp_path / "no" / "such" / "dir.jsonl")), lambda _p: [])
    with pytest.raises(DaemonError, match="cannot open the flow log"):
        d._start_flowlog()
    d = Daemon(Options(flow_log="-", workers=2), lambda _p: [])
    with pytest.raises(DaemonError, match="one dataplane process"):
        d._start_flowlog()
    path = tmp_path / "flows.jsonl"
    d = Daemon(Options(flow_log=str(path)), lambda _p: [])
    d._start_flowlog()
    assert d.core.flow_log_enabled
    d.shutdown()                                    # closes the log: nothing was open
    assert d.flowlog is None and path.read_text() == ""


def test_status_shows_the_flow_log() -> None:
    from ulvs.cli.daemonctl import render_status
    from ulvs.runtime.control import build_status

    st = build_status(build_core("lab"), 1.0)
    st["daemon"] = {"pid": 1, "version": "0.1.0", "uptime": 5.0, "backend": "afpacket", "workers": 1,
                    "interfaces": ["cli0"], "control_socket": "/run/ulvs/ulvs.sock", "protocol": 1,
                    "flow_log": {"path": "/var/log/ulvs/flows.jsonl", "rate": 1000, "written": 12345,
                                 "suppressed": 7}}
    text = render_status(st)
    assert "flow log     /var/log/ulvs/flows.jsonl: 12,345 line(s), 7 suppressed (at most 1,000/s)" in text
    st["daemon"]["flow_log"] = None
    assert "flow log" not in render_status(st)
