"""``Config`` -> native TOML (``ulvs.config.render``): deterministic, defaults omitted, and
``native.parse(render(c)) == c`` for arbitrary configurations (hypothesis).

Test ids avoid the word "sched" (the project's ``-k "not sched"`` runs deselect it)."""

from __future__ import annotations

import ipaddress
import string
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ulvs.config import ipvsadm_rules, native
from ulvs.config.ipvsadm import allowed_sched_flags, sched_flags
from ulvs.config.render import render
from ulvs.config.requests import MAX_TIMEOUT
from ulvs.config.schema import (
    FAILED_CONNS,
    CheckSpec,
    Config,
    DaemonSettings,
    EjectionSettings,
    MetricsSettings,
    RealServer,
    SyncSettings,
    Timeouts,
    VirtualAddress,
    VirtualService,
    VrrpInstance,
    VrrpSyncGroup,
)
from ulvs.core.model import DestConfig, FwdMethod, Proto, ServiceConfig
from ulvs.sched.base import names as registered

A = ipaddress.IPv4Address
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOURCE = "lb.toml"

texts = st.text(alphabet=string.ascii_letters + string.digits + " -_.'\"\\#=[]{}é\t", min_size=1, max_size=12)
addrs = st.integers(1, 2**32 - 2).map(A)
ifnames = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
argvs = st.none() | st.lists(texts, min_size=1, max_size=3).map(tuple)
seconds = st.floats(0.001, 86400, allow_nan=False)


def _checks_from(text: str) -> tuple[CheckSpec, ...]:
    cfg = native.parse('[[service]]\nprotocol = "tcp"\nvip = "10.0.0.1"\nport = 80\n[[service.dest]]\n'
                       'address = "10.0.0.2"\n' + text, SOURCE).config
    return cfg.services[0].dests[0].checks


CHECKS = [_checks_from(t) for t in (
    '[[service.dest.check]]\ntype = "TCP_CHECK"\nconnect_timeout = 3\nretry = 2\nconnect_port = 8080\n',
    '[[service.dest.check]]\ntype = "HTTP_GET"\n'
    'url = [{ path = "/a b", status_code = 200 }, { digest = "x" }]\n'
    '[[service.dest.check]]\ntype = "PING_CHECK"\n',
    '[[service.dest.check]]\ntype = "DNS_CHECK"\nquery_type = "AAAA"\nname = "example.com"\n',
    '[[service.dest.check]]\ntype = "MISC_CHECK"\nmisc_path = "/bin/check \\"quoted\\""\n'
    'misc_dynamic = true\n',
)]


@st.composite
def real_servers(draw: Any, vport: int) -> RealServer:
    cfg = DestConfig(draw(addrs), draw(st.integers(0, 65535)) if vport else 0,
                     weight=draw(st.integers(0, 65535)), method=draw(st.sampled_from([FwdMethod.MASQ,
                                                                                      FwdMethod.DROUTE])),
                     u_threshold=draw(st.integers(0, 65535)), l_threshold=draw(st.integers(0, 65535)))
    return RealServer(cfg, draw(st.sampled_from([(), *CHECKS])),
                      inhibit_on_failure=draw(st.none() | st.booleans()),
                      notify_up=draw(argvs), notify_down=draw(argvs))


@st.composite
def service_configs(draw: Any) -> ServiceConfig:
    kind = draw(st.sampled_from(["tcp", "udp", "group"]))
    sched = draw(st.sampled_from(registered()))
    flags = draw(st.sets(st.sampled_from(allowed_sched_flags(sched))))
    common: dict[str, Any] = dict(
        sched=sched, flags=frozenset(sched_flags(sched, flags)),
        persistent=draw(st.none() | st.integers(1, 2**31 - 1)),
        netmask=draw(st.sampled_from([A("255.255.255.255"), A("255.255.255.0"), A("255.255.0.0")])))
    if kind == "group":
        members = tuple(draw(st.lists(st.tuples(st.sampled_from([Proto.TCP, Proto.UDP]), addrs,
                                                st.integers(0, 65535)), min_size=1, max_size=3, unique=True)))
        ops = all(m[0] == Proto.UDP for m in members) and draw(st.booleans())
        return ServiceConfig(Proto.FWM, A(0), 0, fwmark=draw(st.integers(1, 2**32 - 1)), members=members,
                             ops=ops, **common)
    port = draw(st.integers(0 if common["persistent"] else 1, 65535))
    proto = Proto.TCP if kind == "tcp" else Proto.UDP
    return ServiceConfig(proto, draw(addrs), port, ops=proto == Proto.UDP and draw(st.booleans()), **common)


@st.composite
def services(draw: Any) -> VirtualService:
    cfg = draw(service_configs())
    dests = draw(st.lists(real_servers(cfg.vport), max_size=4,
                          unique_by=lambda rs: (rs.config.daddr, rs.config.dport)))
    if dests and draw(st.booleans()):          # the same checks everywhere: rendered once
        shared = draw(st.sampled_from(CHECKS))
        dests = [RealServer(rs.config, shared, rs.inhibit_on_failure, rs.notify_up, rs.notify_down)
                 for rs in dests]
    return VirtualService(
        cfg, tuple(dests), name=draw(st.none() | texts), delay_loop=draw(seconds),
        sorry_server=draw(st.none() | st.tuples(addrs, st.integers(0, 65535))),
        sorry_server_inhibit=draw(st.booleans()), quorum=draw(st.integers(0, 2**31 - 1)),
        hysteresis=draw(st.integers(0, 100)), quorum_up=draw(argvs), quorum_down=draw(argvs),
        alpha=draw(st.booleans()), omega=draw(st.booleans()), inhibit_on_failure=draw(st.booleans()),
        virtualhost=draw(st.none() | texts),
        slow_start=draw(st.just(0.0) | st.floats(0, 86400, allow_nan=False)),
        failed_conns=draw(st.sampled_from(FAILED_CONNS)),
        ejection=draw(st.none() | ejections()) if any(e[0] == Proto.TCP for e in cfg.entries()) else None)


@st.composite
def ejections(draw: Any) -> EjectionSettings:
    backoff = draw(st.floats(0.001, 86400))
    return EjectionSettings(
        threshold=draw(st.floats(0, 1, exclude_max=True)), min_syns=draw(st.integers(1, 1_000_000)),
        backoff=backoff, backoff_max=draw(st.floats(backoff, 86400)),
        max_fraction=draw(st.floats(0, 1)))


@st.composite
def instances(draw: Any, name: str) -> VrrpInstance:
    version = draw(st.sampled_from([2, 3]))
    advert = float(draw(st.integers(1, 255))) if version == 2 else draw(st.integers(1, 4095)) / 100
    vaddrs = draw(st.lists(st.tuples(st.integers(1, 2**32 - 2), st.integers(0, 32), st.none() | ifnames),
                           max_size=3))
    return VrrpInstance(
        name, draw(ifnames), draw(st.integers(1, 255)), priority=draw(st.integers(1, 255)), advert_int=advert,
        state=draw(st.sampled_from(["MASTER", "BACKUP"])), version=version, preempt=draw(st.booleans()),
        preempt_delay=draw(st.floats(0, 1000)),
        virtual_addresses=tuple(VirtualAddress(ipaddress.IPv4Interface((a, p)), dev) for a, p, dev in vaddrs),
        unicast_src_ip=draw(st.none() | addrs), unicast_peers=tuple(draw(st.lists(addrs, max_size=2))),
        track_interfaces=tuple(draw(st.lists(ifnames, max_size=2))), notify_master=draw(argvs),
        notify_backup=draw(argvs), notify_fault=draw(argvs), garp_master_delay=draw(st.floats(0, 3600)))


@st.composite
def configs(draw: Any) -> Config:
    svcs = draw(st.lists(services(), max_size=4, unique_by=lambda vs: vs.config.key))
    entries = [e for vs in svcs for e in vs.config.entries()]
    assume(len(entries) == len(set(entries)))
    named = [vs.name for vs in svcs if vs.name is not None]
    assume(len(named) == len(set(named)))
    names = draw(st.lists(ifnames, max_size=3, unique=True))
    vrrp = [draw(instances(n)) for n in names]
    assume(len({(i.interface, i.vrid) for i in vrrp}) == len(vrrp))
    groups = (VrrpSyncGroup("G1", tuple(names)),) if names and draw(st.booleans()) else ()
    instance = st.none() | st.sampled_from(names) if names else st.none()
    mcast = st.sampled_from([A("224.0.0.81"), A("239.1.2.3")])
    sync = draw(st.none() | st.builds(SyncSettings, ifnames, instance, st.integers(0, 255),
                                      st.integers(1, 65535), mcast))
    daemon = DaemonSettings(
        interfaces=tuple(draw(st.lists(ifnames, max_size=3, unique=True))),
        backend=draw(st.sampled_from(["afpacket", "tap"])), workers=draw(st.integers(1, 64)),
        conn_limit=draw(st.integers(1, 2**31 - 1)), gro=draw(st.booleans()),
        control_socket=draw(st.sampled_from(["/run/ulvs/ulvs.sock", "/tmp/x y.sock"])),
        control_group=draw(st.none() | texts),
        flow_log=draw(st.none() | st.sampled_from(["-", "/var/log/ulvs/flows.jsonl"])),
        flow_log_rate=draw(st.integers(1, 2**31 - 1)))
    return Config(
        daemon=daemon, timeouts=Timeouts(*draw(st.tuples(*[st.integers(1, MAX_TIMEOUT)] * 3))),
        services=tuple(svcs), vrrp=tuple(vrrp), vrrp_sync_groups=groups, sync=sync,
        metrics=MetricsSettings(draw(st.none() | st.just("off")
                                     | st.builds("{}:{}".format, addrs, st.integers(1, 65535)))),
        router_id=draw(st.none() | texts), source=SOURCE)


@SETTINGS
@given(configs())
def test_parse_of_render_is_the_identity(config: Config) -> None:
    text = render(config)
    assert native.parse(text, SOURCE).config == config
    assert render(config) == text                                  # deterministic


def test_defaults_are_omitted() -> None:
    assert render(Config()) == "\n"
    svc = VirtualService(ServiceConfig(Proto.TCP, A("10.0.0.1"), 80),
                         (RealServer(DestConfig(A("10.0.1.1"), 80)),))
    assert render(Config(services=(svc,)), comment="made by a test") == (
        '# made by a test\n\n[[service]]\nprotocol = "tcp"\nvip = "10.0.0.1"\nport = 80\n\n'
        '[[service.dest]]\naddress = "10.0.1.1"\n')


def test_slow_start_and_failed_conns_are_rendered_when_set() -> None:
    svc = VirtualService(ServiceConfig(Proto.TCP, A("10.0.0.1"), 80), slow_start=7.5, failed_conns="expire")
    text = render(Config(services=(svc,)))
    assert 'slow_start = 7.5\nfailed_conns = "expire"\n' in text
    assert native.parse(text, SOURCE).config.services == (svc,)


def test_shared_forwarding_and_checks_are_written_once() -> None:
    dests = tuple(RealServer(DestConfig(A(f"10.0.1.{i}"), 80, method=FwdMethod.MASQ), CHECKS[0])
                  for i in (1, 2))
    text = render(Config(services=(VirtualService(ServiceConfig(Proto.TCP, A("10.0.0.1"), 80), dests),)))
    assert text.count('forwarding = "masq"') == 1 and text.count("[[service.check]]") == 1
    assert "[[service.dest.check]]" not in text


def test_ipvsadm_rules_import_round_trips_through_toml() -> None:
    rules = ("-A -t 10.0.0.1:80 -s sh -b flag-1,flag-2 -p 60 -M 255.255.255.0\n"
             "-a -t 10.0.0.1:80 -r 10.0.1.1:8080 -m -w 3 -x 100 -y 50\n"
             "-A -f 9 -s rr --group-member udp:10.0.0.2:0 --group-member udp:10.0.0.2:53 -o\n"
             "-a -f 9 -r 10.0.1.2:0 -g -w 0\n--set 10 20 30\n")
    config = ipvsadm_rules.parse(rules, SOURCE).config
    assert native.parse(render(config), SOURCE).config == config
