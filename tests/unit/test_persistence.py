"""Persistence templates, service groups, one-packet scheduling (IPVS semantics)."""

from __future__ import annotations

import ipaddress

import pytest

from ulvs.core import Core, CoreError, DestConfig, FwdMethod, Proto, ServiceConfig, Verdict
from ulvs.packet import builder

A = ipaddress.IPv4Address
CMAC, DMAC, LMAC = "02:00:00:00:01:01", "02:00:00:00:01:fe", "02:00:00:00:02:fe"
VIP = "10.77.1.100"
DESTS = ["10.77.2.11", "10.77.2.12", "10.77.2.13"]


def core_with(cfg: ServiceConfig, method: FwdMethod = FwdMethod.MASQ, **kw: object) -> Core:
    core = Core(**kw)  # type: ignore[arg-type]
    core.add_service(cfg)
    for i, d in enumerate(DESTS):
        core.add_dest(cfg.key, DestConfig(A(d), 0 if cfg.proto == Proto.FWM else cfg.vport, method=method))
        core.set_neighbor(A(d), 2, bytes([2, 0, 0, 0, 2, i + 1]), builder.mac(LMAC))
    return core


def server_of(frame: bytearray) -> str:
    """The real server a forwarded frame is addressed to, by its destination MAC (NAT and DR)."""
    assert frame[0:5] == bytes([2, 0, 0, 0, 2]), frame[0:6].hex()
    return DESTS[frame[5] - 1]


def syn(core: Core, caddr: str, cport: int, vaddr: str = VIP, vport: int = 80, now: float = 0.0) -> str:
    """Send a SYN; return the real server it was forwarded to."""
    f = bytearray(builder.tcp_frame(CMAC, DMAC, caddr, vaddr, cport, vport, 0x02))
    v, _eg, reason = core.process(f, 1, now)
    assert v == Verdict.FORWARD, reason
    return server_of(f)


def udp(core: Core, caddr: str, cport: int, vport: int = 53, now: float = 0.0) -> str:
    f = bytearray(builder.udp_frame(CMAC, DMAC, caddr, VIP, cport, vport, b"query"))
    v, _eg, reason = core.process(f, 1, now)
    assert v == Verdict.FORWARD, reason
    return server_of(f)


def test_without_persistence_rr_rotates() -> None:
    core = core_with(ServiceConfig(Proto.TCP, A(VIP), 80, sched="rr"))
    assert [syn(core, "10.77.0.10", 1000 + i) for i in range(6)] == DESTS * 2


def test_persistence_sticks_a_client_and_its_network() -> None:
    cfg = ServiceConfig(Proto.TCP, A(VIP), 80, sched="rr", persistent=300, netmask=A("255.255.255.0"))
    core = core_with(cfg)
    first = syn(core, "10.77.0.10", 1000)
    # same client, new ports: same dest; a neighbour in the same /24 too
    assert {syn(core, "10.77.0.10", 1001 + i) for i in range(5)} == {first}
    assert syn(core, "10.77.0.99", 2000) == first
    # another /24 is scheduled (rr moves on)
    assert syn(core, "10.77.5.1", 3000) != first
    templates = [c for c in core.conns(0.0) if c.template]
    assert len(templates) == 2
    t = next(c for c in templates if str(c.caddr) == "10.77.0.0")
    assert (t.cport, t.state, str(t.daddr)) == (0, "NONE", first)
    dest = next(d for d in core.services[cfg.key].dests if str(d.config.daddr) == first)
    assert dest.persistconns == 1


def test_template_outlives_connections_then_expires() -> None:
    cfg = ServiceConfig(Proto.TCP, A(VIP), 80, sched="rr", persistent=300)
    core = core_with(cfg)
    first = syn(core, "10.77.0.10", 1000, now=0.0)
    # the SYN_RECV connection expires at 60 s; the template is held while it controls it
    core.handle_timer(61.0)
    assert [c.template for c in core.conns(61.0)] == [True]
    # the template was last restarted at 0 s; it lives for 300 s after that
    core.handle_timer(299.0)
    assert syn(core, "10.77.0.10", 1001, now=299.0) == first   # restarts the template
    # the new connection (SYN_RECV) expires at 359 s; the template, restarted at 299 s,
    # lives until 599 s
    core.handle_timer(360.0)
    assert [c.template for c in core.conns(360.0)] == [True]
    core.handle_timer(598.0)
    assert core.conn_count() == 1
    core.handle_timer(600.0)
    assert not list(core.conns(600.0))
    assert core.conn_count() == 0


def test_template_held_by_a_live_connection_is_rearmed_from_its_expiry() -> None:
    cfg = ServiceConfig(Proto.TCP, A(VIP), 80, sched="rr", persistent=100)
    core = core_with(cfg)
    caddr, first = "10.77.0.10", ""
    first = syn(core, caddr, 1000, now=0.0)
    # complete the handshake so the connection lives 900 s (ESTABLISHED)
    i = DESTS.index(first)
    core.process(bytearray(builder.tcp_frame(bytes([2, 0, 0, 0, 2, i + 1]), LMAC, first, caddr, 80, 1000,
                                             0x12)), 2, 0.0)
    core.process(bytearray(builder.tcp_frame(CMAC, DMAC, caddr, VIP, 1000, 80, 0x10)), 1, 0.0)
    # the template fires at 100, 200, ... and is re-armed each time while the conn lives
    core.handle_timer(250.0)
    tmpl = next(c for c in core.conns(250.0) if c.template)
    assert tmpl.expires == 100
    core.handle_timer(901.0)   # the connection expires at 900; the template at 1000
    assert [c.template for c in core.conns(901.0)] == [True]
    core.handle_timer(1000.0)
    assert core.conn_count() == 0


def test_template_to_removed_dest_is_invalid() -> None:
    cfg = ServiceConfig(Proto.TCP, A(VIP), 80, sched="rr", persistent=300)
    core = core_with(cfg)
    first = syn(core, "10.77.0.10", 1000)
    core.del_dest(cfg.key, A(first), 80)
    again = syn(core, "10.77.0.10", 1001)
    assert again != first


def test_quiescent_dest_keeps_persistent_clients_unless_told() -> None:
    for expire, expect_same in ((False, True), (True, False)):
        cfg = ServiceConfig(Proto.TCP, A(VIP), 80, sched="rr", persistent=300)
        core = core_with(cfg, expire_quiescent_template=expire)
        first = syn(core, "10.77.0.10", 1000)
        core.edit_dest(cfg.key, DestConfig(A(first), 80, weight=0, method=FwdMethod.MASQ))
        assert (syn(core, "10.77.0.10", 1001) == first) is expect_same


def test_port_zero_service_sticks_across_ports() -> None:
    cfg = ServiceConfig(Proto.TCP, A(VIP), 0, sched="rr", persistent=300)
    core = core_with(cfg, method=FwdMethod.DROUTE)
    first = syn(core, "10.77.0.10", 1000, vport=80)
    assert syn(core, "10.77.0.10", 1001, vport=443) == first
    assert syn(core, "10.77.0.11", 1002, vport=22) != first


def test_service_group_shares_persistence_with_netmask() -> None:
    cfg = ServiceConfig(Proto.FWM, A(0), 0, sched="rr", persistent=600, netmask=A("255.255.0.0"),
                        fwmark=7, members=((Proto.TCP, A(VIP), 80), (Proto.TCP, A("10.77.1.101"), 443),
                                           (Proto.UDP, A(VIP), 0)))
    core = core_with(cfg)
    first = syn(core, "10.77.0.10", 1000, vaddr=VIP, vport=80)
    assert syn(core, "10.77.3.4", 1001, vaddr="10.77.1.101", vport=443) == first   # same /16
    assert udp(core, "10.77.200.1", 5353, vport=5353) == first
    assert syn(core, "10.78.0.1", 1000, vaddr=VIP, vport=80) != first             # other /16
    # the dest port 0 keeps each packet's port (NAT rewrote only the address)
    f = bytearray(builder.tcp_frame(CMAC, DMAC, "10.77.0.10", "10.77.1.101", 1005, 443, 0x02))
    core.process(f, 1, 0.0)
    assert int.from_bytes(f[36:38], "big") == 443
    tmpl = [c for c in core.conns(0.0) if c.template]
    assert {(c.proto, int(c.vaddr)) for c in tmpl} == {(Proto.FWM, 7)}


def test_group_member_conflicts_are_rejected_whole() -> None:
    core = Core()
    core.add_service(ServiceConfig(Proto.TCP, A(VIP), 80))
    with pytest.raises(CoreError, match="already belongs"):
        core.add_service(ServiceConfig(Proto.FWM, A(0), 0, fwmark=1,
                                       members=((Proto.TCP, A("10.77.1.200"), 80), (Proto.TCP, A(VIP), 80))))
    assert len(core.services) == 1
    assert A("10.77.1.200").packed not in core.vips


def test_ops_schedules_every_datagram_and_translates_replies() -> None:
    cfg = ServiceConfig(Proto.UDP, A(VIP), 53, sched="rr", ops=True)
    core = core_with(cfg)
    got = [udp(core, "10.77.0.10", 5000) for _ in range(3)]
    assert got == DESTS   # the same flow, a different dest per datagram
    # a reply from each real server is rewritten to come from the VIP
    for i, d in enumerate(DESTS):
        r = bytearray(builder.udp_frame(bytes([2, 0, 0, 0, 2, i + 1]), LMAC, d, "10.77.0.10", 53, 5000, b"a"))
        v, eg, reason = core.process(r, 2, 0.1)
        assert v == Verdict.FORWARD, reason
        assert (str(A(bytes(r[26:30]))), int.from_bytes(r[34:36], "big"), eg) == (VIP, 53, 1)
    # repeating the rotation replaces each dest's entry for the flow instead of piling up
    for _ in range(3):
        udp(core, "10.77.0.10", 5000)
    assert core.conn_count() == 3


def test_ops_droute_keeps_no_connection() -> None:
    cfg = ServiceConfig(Proto.UDP, A(VIP), 53, sched="rr", ops=True)
    core = core_with(cfg, method=FwdMethod.DROUTE)
    assert [udp(core, "10.77.0.10", 5000) for _ in range(3)] == DESTS
    assert core.conn_count() == 0
    dests = core.services[cfg.key].dests
    assert [core.dest_counters(d).conns for d in dests] == [1, 1, 1]
    assert all(d.inactconns == 0 for d in dests)


def test_ops_is_for_udp_only() -> None:
    with pytest.raises(ValueError, match="UDP"):
        ServiceConfig(Proto.TCP, A(VIP), 80, ops=True)
