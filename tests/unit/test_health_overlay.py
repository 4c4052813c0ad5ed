"""The health overlay (``ulvs.config.overlay``): compiled requests + overlay -> the wanted
requests; the ``health``/``sorry`` commands as the daemon applies them (one diff path with
reload); ``expire_dest_conns`` in the core and over the control protocol."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

import pytest

from ulvs.config.overlay import (
    DestHealth,
    ServicePolicy,
    apply_overlay,
    configured_dests,
    health_from_json,
    health_request,
    needs_monitor,
    overlay_to_json,
    policies,
    sorry_from_json,
)
from ulvs.config.requests import RequestError, compile_requests
from ulvs.config.schema import CheckSpec, Config, RealServer, VirtualService
from ulvs.core import Core, DestConfig, FwdMethod, Proto, ServiceConfig
from ulvs.packet import builder
from ulvs.runtime.configfile import DaemonConfig
from ulvs.runtime.control import apply_request, build_snapshot
from ulvs.runtime.daemon import Daemon, Options

A = ipaddress.IPv4Address
WEB = (Proto.TCP, A("10.0.0.100"), 80)
DNS = (Proto.UDP, A("10.0.0.100"), 53)
SORRY = (A("10.0.1.99"), 80)
TCP_CHECK = CheckSpec("TCP_CHECK", (("connect_timeout", 1),))


def rs(last: int, weight: int = 1, *, inhibit: bool | None = None, checks: bool = True) -> RealServer:
    return RealServer(DestConfig(A(f"10.0.1.{last}"), 80, weight=weight, method=FwdMethod.MASQ),
                      checks=(TCP_CHECK,) if checks else (), inhibit_on_failure=inhibit)


def config(*, inhibit: bool = False, sorry: bool = True, sorry_inhibit: bool = False) -> Config:
    web = VirtualService(ServiceConfig(Proto.TCP, A("10.0.0.100"), 80, sched="rr"),
                         (rs(11, 3), rs(12, 2, inhibit=not inhibit), rs(13, 1)),
                         sorry_server=SORRY if sorry else None, sorry_server_inhibit=sorry_inhibit,
                         inhibit_on_failure=inhibit)
    dns = VirtualService(ServiceConfig(Proto.UDP, A("10.0.0.100"), 53, sched="rr"),
                         (rs(11), rs(12)))
    return Config(services=(web, dns))


def weights(requests: list[dict[str, Any]], key: tuple[Proto, ipaddress.IPv4Address, int] = WEB
            ) -> dict[str, int]:
    """The pool the requests build for one service: 'daddr:dport' -> weight."""
    core = Core(conn_limit=16)
    reply = apply_request(core, {"cmd": "batch", "requests": requests}, 0.0)
    assert reply["ok"], reply
    svc = core.services[key]
    return {f"{d.config.daddr}:{d.config.dport}": d.weight for d in svc.dests}


def dest_of(last: int) -> tuple[Any, ...]:
    return (WEB, A(f"10.0.1.{last}"), 80)


# -- the pure function ------------------------------------------------------------------------

def test_no_overlay_is_the_configuration() -> None:
    cfg = config()
    compiled = compile_requests(cfg)
    assert apply_overlay(compiled, {}, set(), policies(cfg)) == compiled
    assert weights(compiled) == {"10.0.1.11:80": 3, "10.0.1.12:80": 2, "10.0.1.13:80": 1}


def test_down_dest_is_removed_or_inhibited_and_weights_are_overridden() -> None:
    cfg = config()          # the service removes failed dests; 10.0.1.12 has inhibit_on_failure
    compiled = compile_requests(cfg)
    overlay = {dest_of(11): DestHealth(False), dest_of(12): DestHealth(False),
               dest_of(13): DestHealth(True, 7)}
    wanted = apply_overlay(compiled, overlay, set(), policies(cfg))
    assert weights(wanted) == {"10.0.1.12:80": 0, "10.0.1.13:80": 7}
    assert weights(wanted, DNS) == {"10.0.1.11:80": 1, "10.0.1.12:80": 1}   # other service untouched
    assert compiled == compile_requests(cfg)                                # input not modified


def test_service_wide_inhibit_and_real_server_override() -> None:
    cfg = config(inhibit=True)   # the service inhibits; 10.0.1.12 says it does not
    overlay = {dest_of(11): DestHealth(False), dest_of(12): DestHealth(False)}
    wanted = apply_overlay(compile_requests(cfg), overlay, set(), policies(cfg))
    assert weights(wanted) == {"10.0.1.11:80": 0, "10.0.1.13:80": 1}


def test_a_weight_of_a_down_dest_is_ignored() -> None:
    cfg = config()
    health = DestHealth(False, 9)
    assert health.effect == (False, None)
    wanted = apply_overlay(compile_requests(cfg), {dest_of(13): health}, set(), policies(cfg))
    assert "10.0.1.13:80" not in weights(wanted)


def test_sorry_server_on_withdraws_the_real_dests() -> None:
    cfg = config()
    wanted = apply_overlay(compile_requests(cfg), {}, {WEB}, policies(cfg))
    assert weights(wanted) == {"10.0.1.12:80": 0, "10.0.1.99:80": 1}      # .12 inhibits: weight 0
    sorry = [r for r in wanted if r["cmd"] == "add_dest" and r["dest"]["daddr"] == "10.0.1.99"]
    assert sorry[0]["dest"]["method"] == "masq"
    # the sorry dest follows its own service's dests, before the next service
    cmds = [(r["cmd"], r.get("service", {}).get("vport")) for r in wanted]
    assert cmds.index(("add_dest", 80)) < cmds.index(("add_service", 53))
    assert wanted.index(sorry[0]) == cmds.index(("add_service", 53)) - 1


def test_sorry_server_inhibit_keeps_it_at_weight_zero_while_off() -> None:
    cfg = config(sorry_inhibit=True)
    off = apply_overlay(compile_requests(cfg), {}, set(), policies(cfg))
    assert weights(off)["10.0.1.99:80"] == 0
    on = apply_overlay(compile_requests(cfg), {}, {WEB}, policies(cfg))
    assert weights(on)["10.0.1.99:80"] == 1


def test_a_sorry_server_that_is_a_configured_dest_is_that_dest() -> None:
    cfg = config()
    pol = {WEB: ServicePolicy(sorry=(A("10.0.1.13"), 80))}
    wanted = apply_overlay(compile_requests(cfg), {dest_of(13): DestHealth(False)}, {WEB}, pol)
    assert weights(wanted) == {"10.0.1.13:80": 1}


def test_policies_and_needs_monitor() -> None:
    cfg = config()
    pol = policies(cfg)
    assert pol[WEB].inhibit == frozenset({(A("10.0.1.12"), 80)})
    assert pol[WEB].sorry == SORRY and pol[DNS].sorry is None
    assert needs_monitor(cfg)
    bare = Config(services=(VirtualService(ServiceConfig(Proto.TCP, A("10.0.0.1"), 80),
                                           (rs(11, checks=False),)),))
    assert not needs_monitor(bare)
    assert needs_monitor(Config(services=(VirtualService(bare.services[0].config, bare.services[0].dests,
                                                         quorum_down=("/bin/true",)),)))
    assert configured_dests(compile_requests(bare)) == {((Proto.TCP, A("10.0.0.1"), 80), A("10.0.1.11"), 80)}


def test_health_and_sorry_command_codec() -> None:
    req = health_request(dest_of(12), False, None, "refused")
    upd = health_from_json(req)
    assert (upd.key, upd.up, upd.weight, upd.detail) == (dest_of(12), False, None, "refused")
    assert health_from_json({**req, "weight": 5, "up": True}).weight == 5
    no_dest = {k: v for k, v in req.items() if k != "dest"}
    for bad, needle in [({**req, "weight": 70000}, "out of range"), ({**req, "weight": True}, "whole number"),
                        ({**req, "up": "yes"}, "'up'"), (no_dest, "'dest'")]:
        with pytest.raises(RequestError, match=needle):
            health_from_json(bad)
    assert health_from_json({**req, "detail": "x" * 5000}).detail == "x" * 512
    assert sorry_from_json({"cmd": "sorry", "service": req["service"], "on": True}) == (WEB, True)
    shown = overlay_to_json({dest_of(12): DestHealth(False, None, "refused", 12.5)}, {WEB})
    assert shown == {"dests": [{"service": {"proto": "tcp", "vaddr": "10.0.0.100", "vport": 80},
                                "daddr": "10.0.1.12", "dport": 80, "up": False, "weight": None,
                                "detail": "refused", "since": 12.5}],
                     "sorry": [{"proto": "tcp", "vaddr": "10.0.0.100", "vport": 80}]}


# -- the daemon's commands (its control handling alone: no dataplane) ------------------------

TOML = """
[[service]]
protocol = "tcp"
vip = "10.0.0.100"
port = 80
scheduler = "rr"
forwarding = "masq"
sorry_server = "10.0.1.99:80"
delay_loop = 1

[service.check]
type = "TCP_CHECK"

[[service.dest]]
address = "10.0.1.11"
weight = 3

[[service.dest]]
address = "10.0.1.12"
weight = 2
inhibit_on_failure = true
"""


class _Daemon(Daemon):
    async def _after_change(self) -> None:      # no kernel in a unit test
        pass


def make_daemon(tmp_path: Path, text: str = TOML) -> tuple[_Daemon, Path]:
    path = tmp_path / "lb.toml"
    path.write_text(text)
    d = _Daemon(Options(config=path, control_socket=tmp_path / "s.sock"), DaemonConfig(path))
    d._apply_requests(d._load_initial(), "configuration")
    return d, path


def pool(d: Daemon) -> dict[str, int]:
    snap = build_snapshot(d.core, 0.0, conns=False)
    return {f"{x.config.daddr}:{x.config.dport}": x.weight for s in snap.services for x in s.dests}


def ask(d: Daemon, req: dict[str, Any]) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        d._change_lock = asyncio.Lock()
        return await d._handle(req)
    return asyncio.run(go())


def test_daemon_health_commands_change_the_pool_and_survive_reload(tmp_path: Path) -> None:
    d, path = make_daemon(tmp_path)
    assert pool(d) == {"10.0.1.11:80": 3, "10.0.1.12:80": 2}
    down = health_request(((Proto.TCP, A("10.0.0.100"), 80), A("10.0.1.11"), 80), False, None, "refused")
    assert ask(d, down) == {"ok": True, "v": 1, "changes": 1}
    assert pool(d) == {"10.0.1.12:80": 2}
    assert ask(d, {**down, "detail": "refused again"})["changes"] == 0        # detail only: no diff
    inhibited = health_request(((Proto.TCP, A("10.0.0.100"), 80), A("10.0.1.12"), 80), False, None)
    ask(d, inhibited)
    assert pool(d) == {"10.0.1.12:80": 0}
    svc = down["service"]
    assert ask(d, {"cmd": "sorry", "service": svc, "on": True})["changes"] == 1
    assert pool(d) == {"10.0.1.12:80": 0, "10.0.1.99:80": 1}
    status = ask(d, {"cmd": "status"})["status"]["health"]
    assert [(x["daddr"], x["up"], x["detail"]) for x in status["dests"]] == [
        ("10.0.1.11", False, "refused again"), ("10.0.1.12", False, "")]
    assert status["sorry"] == [svc] and status["monitor"] is None
    # a reload of the same file keeps all of it ...
    assert ask(d, {"cmd": "reload"})["changes"] == 0
    assert pool(d) == {"10.0.1.12:80": 0, "10.0.1.99:80": 1}
    # ... and a changed weight is the configuration's, under the same health
    path.write_text(TOML.replace("weight = 2", "weight = 5"))
    assert ask(d, {"cmd": "reload"})["ok"]
    ask(d, {"cmd": "sorry", "service": svc, "on": False})
    ask(d, {**inhibited, "up": True})
    assert pool(d) == {"10.0.1.12:80": 5}
    ask(d, {**down, "up": True, "weight": 1})                                    # a dynamic weight
    assert pool(d) == {"10.0.1.12:80": 5, "10.0.1.11:80": 1}


def test_daemon_health_commands_are_checked(tmp_path: Path) -> None:
    d, _ = make_daemon(tmp_path)
    unknown = health_request(((Proto.TCP, A("10.0.0.100"), 80), A("10.0.1.77"), 80), False, None)
    assert "no dest 10.0.1.77:80 of TCP 10.0.0.100:80 in the configuration" in ask(d, unknown)["error"]
    no_sorry = {"cmd": "sorry", "service": {"proto": "udp", "vaddr": "10.0.0.1", "vport": 53}, "on": True}
    assert "has no sorry server" in ask(d, no_sorry)["error"]
    assert "'up'" in ask(d, {**unknown, "up": 1})["error"]
    assert pool(d) == {"10.0.1.11:80": 3, "10.0.1.12:80": 2}


def test_reload_dropping_a_dest_forgets_its_health(tmp_path: Path) -> None:
    d, path = make_daemon(tmp_path)
    key = ((Proto.TCP, A("10.0.0.100"), 80), A("10.0.1.11"), 80)
    ask(d, health_request(key, False, None))
    path.write_text(TOML.replace('address = "10.0.1.11"', 'address = "10.0.1.13"'))
    assert ask(d, {"cmd": "reload"})["ok"]
    assert key not in d._overlay
    path.write_text(TOML)
    ask(d, {"cmd": "reload"})
    assert pool(d) == {"10.0.1.12:80": 2, "10.0.1.11:80": 3}       # back, and up until told otherwise


# -- expire_dest_conns --------------------------------------------------------------------------

CMAC, DMAC, SMAC = "02:00:00:00:01:01", "02:00:00:00:01:fe", "02:00:00:00:02:fe"


def udp_core() -> Core:
    core = Core(conn_limit=64)
    core.set_interface(1, bytes.fromhex(DMAC.replace(":", "")), A("10.0.0.1"))
    core.set_interface(2, bytes.fromhex(SMAC.replace(":", "")), A("10.0.1.1"))
    core.add_service(ServiceConfig(Proto.UDP, A("10.0.0.100"), 53, sched="rr"))
    core.add_service(ServiceConfig(Proto.TCP, A("10.0.0.100"), 80, sched="rr"))
    for key in (DNS, WEB):
        for last in (11, 12):
            core.add_dest(key, DestConfig(A(f"10.0.1.{last}"), key[2], method=FwdMethod.MASQ))
    for last in (11, 12):
        core.set_neighbor(A(f"10.0.1.{last}"), 2, bytes.fromhex(f"0200000003{last:02x}"),
                          bytes.fromhex(SMAC.replace(":", "")))
    return core


def send(core: Core, frame: bytes, now: float) -> str:
    verdict, _egress, _reason = core.process(bytearray(frame), 1, now)
    return verdict.name


def udp(cport: int) -> bytes:
    return builder.udp_frame(CMAC, DMAC, "10.0.0.10", "10.0.0.100", cport, 53, b"q")


def tcp_syn(cport: int) -> bytes:
    return builder.tcp_frame(CMAC, DMAC, "10.0.0.10", "10.0.0.100", cport, 80, 0x02)


def daddr_of(core: Core, proto: Proto, cport: int) -> str:
    return next(str(c.daddr) for c in core.conns(0.0) if c.proto == proto and c.cport == cport)


def test_expire_dest_conns_reschedules_the_next_datagram() -> None:
    core = udp_core()
    for cport in (5000, 5001, 5002, 5003):
        send(core, udp(cport), 1.0)
        send(core, tcp_syn(cport), 1.0)
    on_11 = [c for c in (5000, 5001, 5002, 5003) if daddr_of(core, Proto.UDP, c) == "10.0.1.11"]
    assert len(on_11) == 2
    core.del_dest(DNS, A("10.0.1.11"), 53)           # the health change takes it out ...
    assert core.expire_dest_conns(DNS, A("10.0.1.11"), 53, Proto.UDP, 2.0) == 2   # ... and its flows
    assert core.expire_dest_conns(DNS, A("10.0.1.11"), 53, Proto.UDP, 2.0) == 0
    assert core.conn_count() == 6
    for cport in on_11:
        assert send(core, udp(cport), 3.0) == "FORWARD"
        assert daddr_of(core, Proto.UDP, cport) == "10.0.1.12"
    tcp_on_11 = [c for c in (5000, 5001, 5002, 5003) if daddr_of(core, Proto.TCP, c) == "10.0.1.11"]
    assert len(tcp_on_11) == 2                       # TCP kept: the default keeps connections
    web = {"proto": "tcp", "vaddr": "10.0.0.100", "vport": 80}
    reply = apply_request(core, {"cmd": "expire_dest_conns", "service": web,
                                 "dest": {"daddr": "10.0.1.11", "dport": 80}, "proto": "tcp"}, 4.0)
    assert reply == {"ok": True, "expired": 2, "v": 1}
    gone = {"cmd": "expire_dest_conns", "service": {"proto": "udp", "vaddr": "10.0.0.100", "vport": 53},
            "dest": {"daddr": "10.0.1.77", "dport": 53}, "proto": "udp"}
    assert apply_request(core, gone, 4.0) == {"ok": True, "expired": 0, "v": 1}   # no such dest: no conns
    bad = apply_request(core, {**gone, "service": {"proto": "udp", "vaddr": "10.0.0.1", "vport": 53}}, 4.0)
    assert bad["ok"] is False and "no such service" in bad["error"]
    assert "must be tcp/udp" in apply_request(core, {**gone, "proto": "fwm"}, 4.0)["error"]


def test_expire_dest_conns_kills_persistence_templates() -> None:
    core = Core(conn_limit=64)
    core.set_interface(1, bytes.fromhex(DMAC.replace(":", "")), A("10.0.0.1"))
    core.set_interface(2, bytes.fromhex(SMAC.replace(":", "")), A("10.0.1.1"))
    core.add_service(ServiceConfig(Proto.UDP, A("10.0.0.100"), 53, sched="rr", persistent=300))
    for last in (11, 12):
        core.add_dest(DNS, DestConfig(A(f"10.0.1.{last}"), 53, method=FwdMethod.MASQ))
        core.set_neighbor(A(f"10.0.1.{last}"), 2, bytes.fromhex(f"0200000003{last:02x}"),
                          bytes.fromhex(SMAC.replace(":", "")))
    send(core, udp(6000), 1.0)
    first = daddr_of(core, Proto.UDP, 6000)
    core.edit_dest(DNS, DestConfig(A(first), 53, weight=0, method=FwdMethod.MASQ))   # inhibited
    assert core.expire_dest_conns(DNS, A(first), 53, Proto.UDP, 2.0) == 1
    assert core.conn_count() == 0                    # the template went with its last conn
    send(core, udp(6000), 3.0)
    assert daddr_of(core, Proto.UDP, 6000) != first
