"""Property tests (hypothesis) for the packet layer and the core.

* NAT round trip: for arbitrary client, service and dest addresses and ports and payloads, the
  client's packet reaches the real server rewritten, and the real server's answer reaches the
  client with exactly the addresses and ports it expects, with valid checksums (scapy checks).
  The batch path's output is also compared byte for byte with the slow path's.
* Checksums: the RFC 1624 incremental update equals a full recompute; ``apply_delta`` edges; the
  fast path's form of it (``next_sum``) agrees with ``apply_delta``.
* Robustness: arbitrary bytes, mutated and truncated frames never raise in ``Core.process`` and
  always get a verdict; ``parse_frame`` raises nothing but ``Malformed``.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from tests.vectors.core import CASES, IF_C, IF_S, Case, apply_ctl, build_core
from tests.vectors.oracle import checksum_errors
from ulvs.core import Core, DestConfig, DropReason, FwdMethod, Proto, ServiceConfig, Verdict
from ulvs.core.xmit import next_sum
from ulvs.packet.checksum import TTL_DEC_DELTA, add_to_partial, apply_delta, checksum, delta, fold, words
from ulvs.packet.layouts import ETH_P_IP
from ulvs.packet.parse import REASONS, Malformed, parse_frame

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CMAC, DIR_C, DIR_S, RSMAC = "02:00:00:00:01:10", "02:00:00:00:01:fe", "02:00:00:00:02:fe", "02:00:00:00:02:11"

addrs = st.integers(1, 2**32 - 2).map(lambda i: str(IPv4Address(i)))
ports = st.integers(0, 65535)
u16 = st.integers(0, 0xFFFF)


def _frame(smac: str, dmac: str, src: str, dst: str, sport: int, dport: int, proto: str, load: bytes,
           ttl: int, flags: str = "", udp_chksum: int | None = None) -> bytes:
    l4 = TCP(sport=sport, dport=dport, flags=flags, seq=1, ack=1) if proto == "TCP" \
        else UDP(sport=sport, dport=dport, chksum=udp_chksum)
    return bytes(Ether(src=smac, dst=dmac) / IP(src=src, dst=dst, ttl=ttl, id=7) / l4 / Raw(load))


def _ends(frame: bytes) -> tuple[str, str, int, int]:
    ip = Ether(frame)[IP]
    return ip.src, ip.dst, ip.payload.sport, ip.payload.dport


def _forward(core: Core, frame: bytes, ifin: int, now: float) -> bytes:
    """Run ``frame`` through the batch path and, on a copy, through the slow path alone; both
    must forward it identically.  Returns the frame as sent."""
    fast = bytearray(frame)
    slow = bytearray(frame)
    core._slow(0, slow, 0, len(slow), ifin, now)
    slow_result = (core.verdicts[0], core.egress[0])
    verdict, egress, reason = core.process(fast, ifin, now)
    assert (verdict, reason) == (Verdict.FORWARD, None)
    assert slow_result == (Verdict.FORWARD, egress)
    assert fast.hex() == slow.hex()
    assert checksum_errors(bytes(fast)) == []
    return bytes(fast)


@SETTINGS
@given(cvd=st.lists(addrs, min_size=3, max_size=3, unique=True), cport=ports, vport=st.integers(1, 65535),
       dport=ports, size=st.integers(0, 1400), proto=st.sampled_from(["TCP", "UDP"]),
       udp_nocsum=st.booleans(), data=st.data())
def test_nat_round_trip(cvd: list[str], cport: int, vport: int, dport: int, size: int, proto: str,
                        udp_nocsum: bool, data: Any) -> None:
    caddr, vaddr, daddr = cvd
    load = data.draw(st.binary(min_size=size, max_size=size))
    rport = dport or vport          # dest port 0 keeps the service port
    core = Core()
    key = (Proto[proto], IPv4Address(vaddr), vport)
    core.add_service(ServiceConfig(*key, sched="rr"))
    core.add_dest(key, DestConfig(IPv4Address(daddr), dport, method=FwdMethod.MASQ))
    core.set_neighbor(IPv4Address(daddr), IF_S, bytes.fromhex(RSMAC.replace(":", "")),
                      bytes.fromhex(DIR_S.replace(":", "")))
    ck = 0 if udp_nocsum and proto == "UDP" else None

    def c2s(flags: str, payload: bytes, now: float) -> None:
        got = _forward(core, _frame(CMAC, DIR_C, caddr, vaddr, cport, vport, proto, payload, 64, flags, ck),
                       IF_C, now)
        assert got == _frame(DIR_S, RSMAC, caddr, daddr, cport, rport, proto, payload, 63, flags, ck)
        assert _ends(got) == (caddr, daddr, cport, rport)

    def s2c(flags: str, payload: bytes, now: float) -> None:
        got = _forward(core, _frame(RSMAC, DIR_S, daddr, caddr, rport, cport, proto, payload, 64, flags, ck),
                       IF_S, now)
        assert got == _frame(DIR_C, CMAC, vaddr, caddr, vport, cport, proto, payload, 63, flags, ck)
        # The client sees its peer as exactly the address and port it sent to.
        assert _ends(got) == (vaddr, caddr, vport, cport)
        assert Ether(got).dst == CMAC

    if proto == "TCP":
        c2s("S", b"", 0.0)
        s2c("SA", b"", 0.1)
        c2s("A", b"", 0.2)
        c2s("PA", load, 0.3)        # established: the fast path
        s2c("PA", load, 0.4)
    else:
        c2s("", load, 0.0)
        s2c("", load, 0.1)
        c2s("", load[::-1], 0.2)


# ---- checksums ------------------------------------------------------------------------------------
@SETTINGS
@given(data=st.binary(min_size=2, max_size=300), changes=st.lists(st.tuples(st.integers(0, 149), u16),
                                                                   min_size=1, max_size=6))
def test_incremental_checksum_equals_full_recompute(data: bytes, changes: list[tuple[int, int]]) -> None:
    buf = bytearray(data)
    nwords = len(buf) // 2
    old, new = [], []
    for index, value in changes:
        pos = (index % nwords) * 2
        old.append(int.from_bytes(buf[pos:pos + 2], "big"))
        new.append(value)
        buf[pos:pos + 2] = value.to_bytes(2, "big")
    got = apply_delta(checksum(data), delta(old, new))
    if any(buf):
        assert got == checksum(buf)
    else:
        assert got in (0x0000, 0xFFFF)   # both are zero in one's complement


@SETTINGS
@given(head=st.binary(max_size=40).filter(lambda b: len(b) % 2 == 0), ttl=st.integers(1, 255),
       proto=st.integers(0, 255), tail=st.binary(min_size=1, max_size=40))
def test_ttl_decrement_delta_equals_full_recompute(head: bytes, ttl: int, proto: int, tail: bytes) -> None:
    before = head + bytes([ttl, proto]) + tail
    after = head + bytes([ttl - 1, proto]) + tail
    assume(any(after))
    assert apply_delta(checksum(before), TTL_DEC_DELTA) == checksum(after)
    assert TTL_DEC_DELTA == delta([0x0100], [0])


@SETTINGS
@given(hc=u16, d=u16)
def test_apply_delta_is_rfc1624_eqn3_with_one_fold(hc: int, d: int) -> None:
    want = ~fold((~hc & 0xFFFF) + d) & 0xFFFF
    assert apply_delta(hc, d) == want
    assert 0 <= apply_delta(hc, d) <= 0xFFFF


@SETTINGS
@given(hc=u16, old=st.lists(u16, min_size=1, max_size=8), data=st.data())
def test_apply_delta_round_trip(hc: int, old: list[int], data: Any) -> None:
    new = data.draw(st.lists(u16, min_size=len(old), max_size=len(old)))
    there = apply_delta(hc, delta(old, new))
    back = apply_delta(there, delta(new, old))
    if hc != 0xFFFF:
        assert back == hc
    else:
        assert back in (0x0000, 0xFFFF)


@SETTINGS
@given(hc=u16, d=st.integers(1, 0xFFFF))
def test_next_sum_is_apply_delta(hc: int, d: int) -> None:
    # D = 0 (an empty change) is the one value where the two differ; no plan has it.
    assert next_sum(hc, d ^ 0xFFFF) == apply_delta(hc, d)


def test_next_sum_at_every_field_value_for_edge_changes() -> None:
    for d in (0x0001, 0x0100, 0x7FFF, 0x8000, 0xFEFF, 0xFFFE, 0xFFFF):
        assert [next_sum(hc, d ^ 0xFFFF) for hc in range(0x10000)] == \
            [apply_delta(hc, d) for hc in range(0x10000)]


def test_apply_delta_edges() -> None:
    assert apply_delta(0x0000, 0x0000) == 0x0000
    assert apply_delta(0xFFFF, 0x0000) == 0xFFFF       # adding +0 changes nothing
    assert apply_delta(0xFFFF, 0xFFFF) == 0x0000       # -0 + -0: the sum is zero
    assert apply_delta(0x0000, 0xFFFF) == 0x0000       # adding -0 changes nothing
    assert apply_delta(0x1234, 0xFFFF) == 0x1234
    assert apply_delta(0x0001, 0x0001) == 0x0000       # ~1 + 1 = 0xFFFF -> 0
    assert apply_delta(0x0000, 0x0001) == 0xFFFE       # 0xFFFF + 1 wraps with end-around carry
    assert apply_delta(0x8000, 0x8000) == 0x0000       # ~0x8000 + 0x8000 = 0xFFFF
    assert delta([0xFFFF], [0x0000]) in (0x0000, 0xFFFF)
    assert delta([0x1234], [0x1234]) == 0xFFFF         # no change is -0, which apply_delta ignores
    assert apply_delta(0xABCD, delta([0x1234], [0x1234])) == 0xABCD
    for hc in (0x0000, 0x0001, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF):
        for d in (0x0000, 0x0001, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF):
            assert apply_delta(hc, d) == ~fold((hc ^ 0xFFFF) + d) & 0xFFFF


@SETTINGS
@given(field=u16, d=u16)
def test_add_to_partial_is_ones_complement_addition(field: int, d: int) -> None:
    got = add_to_partial(field, d)
    assert 0 <= got <= 0xFFFF
    assert got % 0xFFFF == (field + d) % 0xFFFF


@SETTINGS
@given(data=st.binary(max_size=200))
def test_words_and_checksum_agree(data: bytes) -> None:
    padded = data + b"\0" * (len(data) % 2)
    assert checksum(data) == ~fold(sum(words(padded))) & 0xFFFF


# ---- robustness -----------------------------------------------------------------------------------
def _lab_with_connections() -> Core:
    """The lab with the connections of the first few vector cases established."""
    core = build_core("lab")
    for case in CASES[:3]:
        for step in case.steps:
            for ctl in step.ctl:
                apply_ctl(core, ctl)
            core.process(bytearray(step.input), step.ifin, step.now)
    return core


def _check_verdict(core: Core, frame: bytes, ifin: int = IF_C, now: float = 1.0) -> tuple[Verdict, Any]:
    verdict, egress, reason = core.process(bytearray(frame), ifin, now)
    assert verdict in (Verdict.FORWARD, Verdict.DROP, Verdict.PASS)
    if verdict == Verdict.DROP:
        assert isinstance(reason, DropReason)
    else:
        assert reason is None
    if verdict == Verdict.FORWARD:
        assert egress in (IF_C, IF_S)
    return verdict, reason


INPUTS = [s.input for c in CASES for s in c.steps]


@SETTINGS
@given(frame=st.binary(max_size=200), ifin=st.sampled_from([IF_C, IF_S]))
def test_arbitrary_bytes_get_a_verdict(frame: bytes, ifin: int) -> None:
    _check_verdict(_lab_with_connections(), frame, ifin)


@SETTINGS
@given(base=st.sampled_from(INPUTS), edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)),
                                                     max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 2000)), ifin=st.sampled_from([IF_C, IF_S]))
def test_mutated_vector_frames_get_a_verdict(base: bytes, edits: list[tuple[int, int]], cut: int | None,
                                             ifin: int) -> None:
    frame = bytearray(base)
    for pos, value in edits:
        if frame:
            frame[pos % len(frame)] = value
    if cut is not None:
        del frame[cut % (len(frame) + 1):]
    _check_verdict(_lab_with_connections(), bytes(frame), ifin)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_truncation_of_every_vector_input(case: Case) -> None:
    """h11-style: each input cut at every length, fed to a core that has run the case.  Cutting
    into an IPv4 packet must be a counted 'truncated' or 'bad_total_length' drop, never a forward."""
    core = build_core(case.topology)
    for step in case.steps:
        for ctl in step.ctl:
            apply_ctl(core, ctl)
        core.process(bytearray(step.input), step.ifin, step.now)
    for step in case.steps:
        try:
            f = parse_frame(step.input)
            ip_end = f.l3 + f.tot_len if f.ethertype == ETH_P_IP else None
        except Malformed:
            ip_end = None
        for n in range(len(step.input)):
            verdict, reason = _check_verdict(core, step.input[:n], step.ifin, step.now)
            if n < 14 or (ip_end is not None and n < ip_end):
                assert verdict == Verdict.DROP, n
                assert reason in (DropReason.TRUNCATED, DropReason.BAD_TOTAL_LENGTH), n


@SETTINGS
@given(data=st.binary(max_size=200), off=st.integers(0, 210),
       length=st.one_of(st.none(), st.integers(0, 210)))
def test_parse_frame_raises_only_malformed(data: bytes, off: int, length: int | None) -> None:
    off = min(off, len(data))
    try:
        f = parse_frame(data, off, length)
    except Malformed as e:
        assert e.reason in REASONS
        return
    assert off <= f.l3 <= f.end <= len(data)
    if f.ethertype == ETH_P_IP:
        assert f.l3 + 20 <= f.l4 <= f.l4_end <= f.end


@SETTINGS
@given(base=st.sampled_from(INPUTS), edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)),
                                                     min_size=1, max_size=4))
def test_parse_frame_on_mutated_frames_raises_only_malformed(base: bytes,
                                                             edits: list[tuple[int, int]]) -> None:
    frame = bytearray(base)
    for pos, value in edits:
        if frame:
            frame[pos % len(frame)] = value
    try:
        parse_frame(frame)
    except Malformed as e:
        assert e.reason in REASONS

