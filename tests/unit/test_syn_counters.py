"""Passive health counters: per masq dest, new TCP connections (syns) and their answers (synacks,
rsts), counted by the core on the new-flow and slow paths; merged across workers; in snapshots."""

from __future__ import annotations

import json
from ipaddress import IPv4Address

from tests.vectors.core import (
    C1,
    DIR_CMAC,
    DIR_SMAC,
    DR1,
    DR_SVC,
    IF_C,
    IF_S,
    MACS,
    RS1,
    TCP_SVC,
    UDP_SVC,
    VIP,
    VIP_DR,
    build_core,
)
from ulvs.core import Core, DropReason, Proto, Verdict
from ulvs.core.stats import Counters
from ulvs.packet import builder
from ulvs.runtime.control import apply_request, counters_from_json, counters_to_json
from ulvs.runtime.pool import merge_snapshots

SYN, ACK, RST, FIN = 0x02, 0x10, 0x04, 0x01


def to_vip(core: Core, cport: int, flags: int, now: float = 1.0, vip: str = VIP) -> Verdict:
    frame = bytearray(builder.tcp_frame(MACS[C1], DIR_CMAC, C1, vip, cport, 80, flags, seq=100))
    return core.process(frame, IF_C, now)[0]


def from_dest(core: Core, daddr: str, cport: int, flags: int, now: float = 1.0) -> Verdict:
    frame = bytearray(builder.tcp_frame(MACS[daddr], DIR_SMAC, daddr, C1, 8080, cport, flags, seq=500,
                                        ack=101))
    return core.process(frame, IF_S, now)[0]


def counters(core: Core, key: object, daddr: str, dport: int = 8080) -> Counters:
    svc = core.services[key]  # type: ignore[index]
    dest = svc.find(IPv4Address(daddr), dport)
    assert dest is not None
    return core.dest_counters(dest)


def test_a_syn_to_a_masq_dest_is_counted_when_its_connection_is_bound() -> None:
    core = build_core("lab")
    assert to_vip(core, 40000, SYN) == Verdict.FORWARD          # rr: RS1 first
    assert counters(core, TCP_SVC, RS1) == Counters(conns=1, inpkts=1, inbytes=40, syns=1)
    assert to_vip(core, 40000, SYN) == Verdict.FORWARD          # a retransmitted SYN: same conn
    assert counters(core, TCP_SVC, RS1).syns == 1


def test_the_first_syn_ack_is_counted_once_and_the_fast_path_counts_nothing() -> None:
    core = build_core("lab")
    to_vip(core, 40000, SYN)
    assert from_dest(core, RS1, 40000, SYN | ACK) == Verdict.FORWARD
    assert from_dest(core, RS1, 40000, SYN | ACK) == Verdict.FORWARD   # retransmitted SYN-ACK
    c = counters(core, TCP_SVC, RS1)
    assert (c.syns, c.synacks, c.rsts) == (1, 1, 0)
    to_vip(core, 40000, ACK)                                    # ESTABLISHED
    for _ in range(3):                                           # fast path both ways
        assert to_vip(core, 40000, ACK) == Verdict.FORWARD
        assert from_dest(core, RS1, 40000, ACK) == Verdict.FORWARD
    assert from_dest(core, RS1, 40000, RST) == Verdict.FORWARD  # a RST after the answer: not counted
    c = counters(core, TCP_SVC, RS1)
    assert (c.syns, c.synacks, c.rsts) == (1, 1, 0)


def test_a_rst_answering_the_syn_is_counted_as_refused() -> None:
    core = build_core("lab")
    to_vip(core, 40000, SYN)
    assert from_dest(core, RS1, 40000, RST | ACK) == Verdict.FORWARD
    assert from_dest(core, RS1, 40000, RST | ACK) == Verdict.FORWARD   # once per connection
    c = counters(core, TCP_SVC, RS1)
    assert (c.syns, c.synacks, c.rsts) == (1, 0, 1)


def test_an_unanswered_syn_and_other_segments_from_the_dest_count_no_answer() -> None:
    core = build_core("lab")
    to_vip(core, 40000, SYN)
    from_dest(core, RS1, 40000, ACK)           # not a SYN-ACK
    from_dest(core, RS1, 40000, FIN | ACK)
    c = counters(core, TCP_SVC, RS1)
    assert (c.syns, c.synacks, c.rsts) == (1, 0, 0)


def test_each_new_connection_counts_and_rr_spreads_them() -> None:
    core = build_core("lab")
    for cport in range(41000, 41006):
        to_vip(core, cport, SYN)
    for daddr in ("10.77.2.11", "10.77.2.12", "10.77.2.13"):
        assert counters(core, TCP_SVC, daddr).syns == 2
    assert core.service_counters(core.services[TCP_SVC]).syns == 6


def test_udp_and_droute_dests_count_no_syns() -> None:
    core = build_core("lab")
    frame = bytearray(builder.udp_frame(MACS[C1], DIR_CMAC, C1, VIP, 5000, 53, b"q"))
    assert core.process(frame, IF_C, 1.0)[0] == Verdict.FORWARD
    assert counters(core, UDP_SVC, "10.77.2.21", 5353).syns == 0
    assert to_vip(core, 40000, SYN, vip=VIP_DR) == Verdict.FORWARD
    assert counters(core, DR_SVC, DR1, 80).syns == 0


def test_zero_clears_them_and_a_failed_batch_restores_them() -> None:
    core = build_core("lab")
    to_vip(core, 40000, SYN)
    from_dest(core, RS1, 40000, SYN | ACK)
    bad = {"cmd": "batch", "requests": [{"cmd": "zero"}, {"cmd": "no_such_command"}]}
    assert not apply_request(core, bad, 2.0)["ok"]
    assert counters(core, TCP_SVC, RS1).synacks == 1
    assert apply_request(core, {"cmd": "zero"}, 2.0)["ok"]
    assert counters(core, TCP_SVC, RS1) == Counters()


def test_the_snapshot_carries_them_and_workers_snapshots_add_up() -> None:
    core = build_core("lab")
    to_vip(core, 40000, SYN)
    from_dest(core, RS1, 40000, RST)
    reply = apply_request(core, {"cmd": "snapshot", "conns": False}, 2.0)
    snap = reply["snapshot"]
    tcp = next(s for s in snap["services"] if s["service"].get("vport") == 80
               and s["service"]["vaddr"] == VIP)
    rs1 = next(d for d in tcp["dests"] if d["dest"]["daddr"] == RS1)
    assert (rs1["counters"]["syns"], rs1["counters"]["synacks"], rs1["counters"]["rsts"]) == (1, 0, 1)
    merged = merge_snapshots(snap, [json.loads(json.dumps(snap)), json.loads(json.dumps(snap))])
    tcp = next(s for s in merged["services"] if s["service"] == tcp["service"])
    rs1 = next(d for d in tcp["dests"] if d["dest"]["daddr"] == RS1)
    assert (rs1["counters"]["syns"], rs1["counters"]["rsts"]) == (2, 2)
    assert tcp["counters"]["syns"] == 2


def test_counters_json_round_trips_and_older_replies_without_them_read_as_zero() -> None:
    c = Counters(1, 2, 3, 4, 5, 6, 7, 8)
    assert counters_from_json(counters_to_json(c)) == c
    assert counters_from_json({"conns": 1}) == Counters(conns=1)


def test_the_answer_is_counted_even_when_the_connection_was_rebound_after_close() -> None:
    core = build_core("lab")
    to_vip(core, 40000, SYN)
    from_dest(core, RS1, 40000, RST)            # CLOSE
    assert to_vip(core, 40000, SYN, now=2.0) == Verdict.FORWARD   # conn_reuse_mode: a new conn
    total = Counters()
    for daddr in ("10.77.2.11", "10.77.2.12", "10.77.2.13"):
        total = total + counters(core, TCP_SVC, daddr)
    assert (total.syns, total.rsts) == (2, 1)


def test_a_retransmitted_syn_of_an_unanswered_conn_whose_dest_was_removed_is_rescheduled() -> None:
    core = build_core("lab")
    frame = bytearray(builder.tcp_frame(MACS[C1], DIR_CMAC, C1, VIP, 40000, 80, SYN, seq=100))
    assert core.process(frame, IF_C, 1.0)[0] == Verdict.FORWARD
    assert bytes(frame[30:34]) == IPv4Address(RS1).packed
    core.del_dest(TCP_SVC, IPv4Address(RS1), 8080)             # e.g. ejected: it never answered
    e = core.explain(Proto.TCP, IPv4Address(C1), 40000, IPv4Address(VIP), 80, 2.0)
    assert (e.kind, e.replaces) == ("scheduled", "SYN_RECV")
    again = bytearray(builder.tcp_frame(MACS[C1], DIR_CMAC, C1, VIP, 40000, 80, SYN, seq=100))
    assert core.process(again, IF_C, 2.0)[0] == Verdict.FORWARD     # not dropped as dest_gone
    assert bytes(again[30:34]) != IPv4Address(RS1).packed
    moved = IPv4Address(bytes(again[30:34]))
    assert counters(core, TCP_SVC, str(moved)).syns == 1
    # Only a new SYN moves: any other segment of the old flow would still have been dest_gone.
    core2 = build_core("lab")
    to_vip(core2, 40001, SYN)
    core2.del_dest(TCP_SVC, IPv4Address(RS1), 8080)
    v, _eg, reason = core2.process(
        bytearray(builder.tcp_frame(MACS[C1], DIR_CMAC, C1, VIP, 40001, 80, ACK, seq=101)), IF_C, 2.0)
    assert (v, reason) == (Verdict.DROP, DropReason.DEST_GONE)


def test_an_established_conn_of_a_removed_dest_does_not_move_on_a_syn() -> None:
    core = build_core("lab")
    to_vip(core, 40000, SYN)
    from_dest(core, RS1, 40000, SYN | ACK)
    to_vip(core, 40000, ACK)                                    # ESTABLISHED
    core.del_dest(TCP_SVC, IPv4Address(RS1), 8080)
    v, _eg, reason = core.process(
        bytearray(builder.tcp_frame(MACS[C1], DIR_CMAC, C1, VIP, 40000, 80, SYN, seq=100)), IF_C, 2.0)
    assert (v, reason) == (Verdict.DROP, DropReason.DEST_GONE)
