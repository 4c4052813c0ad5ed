"""Piranha lvs.cf -> configuration model: syntax, every mapped key, warnings and errors.

Test ids avoid the word "sched" (the project's ``-k "not sched"`` runs deselect it)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from ulvs.config import parse as parse_format
from ulvs.config.lvscf import parse, read_entries
from ulvs.config.schema import (
    CHECK_KEYS,
    CheckSpec,
    ConfigError,
    LoadResult,
    SyncSettings,
    Timeouts,
    VirtualService,
    Where,
)
from ulvs.core.model import FwdMethod, Proto

A = ipaddress.IPv4Address
ROOT = Path(__file__).resolve().parents[2]


def load(text: str) -> LoadResult:
    return parse(text, "lvs.cf", None)


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        parse(text, "lvs.cf", None)
    return e.value


def messages(result: LoadResult) -> list[str]:
    return [str(w) for w in result.warnings]


SERVER = "server rs1 {\naddress = 10.0.1.1\nactive = 1\nweight = 1\n}\n"


def virtual(body: str, servers: str = SERVER, name: str = "WEB", head: str = "network = nat\n") -> str:
    return f"{head}virtual {name} {{\naddress = 10.0.0.1 eth0:1\nport = 80\n{body}\n{servers}}}\n"


def service(body: str, servers: str = SERVER, head: str = "network = nat\n") -> VirtualService:
    result = load(virtual(body, servers, head=head))
    (svc,) = result.config.services
    return svc


# ==========================================================================================
# Syntax
# ==========================================================================================


def test_read_entries_tree() -> None:
    entries = read_entries('a = 1\n# comment\nvirtual V {\n  b = "x # y"  # trailing\n  server S {\n'
                           "    c = 2\n  }\n}\n", "f")
    assert [(e.key, e.value, e.line) for e in entries] == [("a", "1", 1), ("virtual", "V", 3)]
    v = entries[1]
    assert v.block is not None
    assert [(e.key, e.value, e.line) for e in v.block] == [("b", "x # y", 4), ("server", "S", 5)]
    assert v.block[1].block is not None and v.block[1].block[0].value == "2"


def test_brace_on_the_next_line() -> None:
    entries = read_entries("virtual V\n{\nport = 1\n}\n", "f")
    assert entries[0].block is not None and entries[0].block[0].key == "port"


@pytest.mark.parametrize("text, line, fragment", [
    pytest.param("virtual V {\nport = 80\n", 1, "missing '}' closing virtual V", id="unclosed"),
    pytest.param("}\n", 1, "unexpected '}'", id="stray-close"),
    pytest.param("serial_no 5\n", 1, "expected '{' after serial_no 5 (or KEY = VALUE)", id="no-equals"),
    pytest.param("a b c\n", 1, "cannot read 'a b c'", id="unreadable"),
    pytest.param("virtual V\nport = 1\n", 1, "expected '{' after virtual V", id="no-brace"),
    pytest.param("virtual V\n", 1, "expected '{' after virtual V", id="eof-no-brace"),
    pytest.param('send = "GET /\n', 1, "unterminated quoted value", id="quote"),
])
def test_syntax_errors(text: str, line: int, fragment: str) -> None:
    e = error(text)
    assert e.where is not None and (e.where.file, e.where.line) == ("lvs.cf", line)
    assert fragment in e.message


# ==========================================================================================
# Virtual servers
# ==========================================================================================


def test_defaults() -> None:
    svc = service("")
    assert svc.config.key == (Proto.TCP, A("10.0.0.1"), 80)
    assert (svc.config.sched, svc.config.persistent, svc.name) == ("wlc", None, "WEB")
    (dest,) = svc.dests
    assert (dest.config.daddr, dest.config.dport, dest.config.weight, dest.config.method) == (
        A("10.0.1.1"), 80, 1, FwdMethod.MASQ)
    assert dest.checks == (CheckSpec("NANNY", ()),)            # nanny with nothing to send: connect only
    assert svc.where == Where("lvs.cf", 2, "virtual") and dest.where == Where("lvs.cf", 6, "server")


@pytest.mark.parametrize("body, get, expected", [
    pytest.param("scheduler = rr", lambda s: s.config.sched, "rr", id="algorithm"),
    pytest.param("scheduler = LC", lambda s: s.config.sched, "lc", id="algorithm-case"),
    pytest.param("protocol = udp", lambda s: s.config.proto, Proto.UDP, id="udp"),
    pytest.param("persistent = 300", lambda s: s.config.persistent, 300, id="persistent"),
    pytest.param("persistent = 0", lambda s: s.config.persistent, None, id="persistent-off"),
    pytest.param("persistent = 60\npmask = 255.255.255.0", lambda s: s.config.netmask, A("255.255.255.0"),
                 id="pmask"),
    pytest.param("vip_nmask = 255.255.255.0", lambda s: s.config.vaddr, A("10.0.0.1"), id="vip_nmask"),
    pytest.param("active = 1", lambda s: len(s.dests), 1, id="active"),
    pytest.param("load_monitor = none", lambda s: len(s.dests), 1, id="load-monitor-none"),
    pytest.param("quiesce_server = 0", lambda s: len(s.dests), 1, id="quiesce-off"),
])
def test_virtual_keys(body: str, get: Any, expected: Any) -> None:
    result = load(virtual(body))
    assert result.warnings == ()
    assert get(result.config.services[0]) == expected


def test_nanny_keys_become_the_check() -> None:
    svc = service('send = "GET / HTTP/1.0\\r\\n\\r\\n"\nexpect = "HTTP\\t200"\nuse_regex = 1\n'
                  'send_program = "/usr/bin/check %h"\ntimeout = 6\nreentry = 15')
    (check,) = svc.dests[0].checks
    assert check.kind == "NANNY"
    assert check.as_dict() == {"send": "GET / HTTP/1.0\r\n\r\n", "expect": "HTTP\t200", "use_regex": True,
                               "send_program": "/usr/bin/check %h", "timeout": 6, "reentry": 15}
    assert set(check.as_dict()) <= CHECK_KEYS["NANNY"]
    assert [k for k, _ in check.options] == sorted(check.as_dict())


@pytest.mark.parametrize("network, method", [
    pytest.param("nat", FwdMethod.MASQ, id="nat"),
    pytest.param("direct", FwdMethod.DROUTE, id="direct"),
    pytest.param("tunnel", FwdMethod.TUNNEL, id="tunnel"),
])
def test_network_is_the_forwarding_method(network: str, method: FwdMethod) -> None:
    svc = service("", head=f"network = {network}\n")
    assert svc.dests[0].config.method == method


def test_missing_network_assumes_nat_with_a_warning() -> None:
    result = load(virtual("", head=""))
    assert result.config.services[0].dests[0].config.method == FwdMethod.MASQ
    assert messages(result) == ["lvs.cf: network: warning: network not given: assuming nat"]


def test_server_keys() -> None:
    svc = service("", servers="server a {\naddress = 10.0.1.1\nweight = 5\nport = 8080\n}\n"
                              "server b {\naddress = 10.0.1.2\n}\n")
    assert [(str(d.config.daddr), d.config.dport, d.config.weight) for d in svc.dests] == [
        ("10.0.1.1", 8080, 5), ("10.0.1.2", 80, 1)]


def test_direct_routing_server_port_must_equal_the_virtual_s() -> None:
    e = error(virtual("", servers="server a {\naddress = 10.0.1.1\nport = 8080\n}\n",
                      head="network = direct\n"))
    assert e.where == Where("lvs.cf", 6, "server")
    assert "port 8080 differs from the virtual's port 80" in str(e)
    svc = service("", servers="server a {\naddress = 10.0.1.1\nport = 80\n}\n", head="network = direct\n")
    assert svc.dests[0].config.dport == 80


def test_inactive_virtuals_and_servers_are_left_out_with_a_warning() -> None:
    text = virtual("", servers=SERVER + "server rs2 {\naddress = 10.0.1.2\nactive = 0\n}\n")
    text += virtual("active = 0", name="OFF").replace("network = nat\n", "").replace("port = 80", "port = 81")
    result = load(text)
    (svc,) = result.config.services
    assert [str(d.config.daddr) for d in svc.dests] == ["10.0.1.1"]
    assert messages(result) == [
        "lvs.cf:11: server: warning: server rs2 is inactive (active = 0): not configured",
        "lvs.cf:16: virtual: warning: virtual OFF is inactive (active = 0): not configured",
    ]


def test_unsupported_and_unknown_virtual_keys_warn() -> None:
    result = load(virtual("load_monitor = ruptime\nquiesce_server = 1\nsorry_server = 10.0.9.9\nwidget {\n}",
                          servers="server a {\naddress = 10.0.1.1\ncolour = red\n}\n"))
    assert messages(result) == [
        "lvs.cf:5: load_monitor: warning: load_monitor ruptime: weights from rup/ruptime load are not "
        "supported by ulvs; ignored (the configured weights apply)",
        "lvs.cf:6: quiesce_server: warning: quiesce_server = 1 (reset connection counters when a server "
        "returns) is not supported by ulvs; ignored",
        "lvs.cf:7: sorry_server: warning: unknown key 'sorry_server' in virtual WEB; ignored",
        "lvs.cf:8: widget: warning: unknown key 'widget' in virtual WEB; block skipped",
        "lvs.cf:12: colour: warning: unknown key 'colour' in server a; ignored",
    ]


@pytest.mark.parametrize("body, line, key, fragment", [
    pytest.param("scheduler = fastest", 5, "scheduler", "'fastest' is not allowed (allowed: dh, fo",
                 id="algorithm"),
    pytest.param("protocol = sctp", 5, "protocol", "allowed: tcp, udp", id="protocol"),
    pytest.param("port = 70000", 5, "port", "allowed: 0..65535", id="port"),
    pytest.param("persistent = -1", 5, "persistent", "out of range", id="persistent"),
    pytest.param("persistent = 5\npmask = 255.0.255.0", 6, "pmask", "not a netmask", id="pmask"),
    pytest.param("vip_nmask = 255.255.255.1", 5, "vip_nmask", "not a netmask", id="vip-nmask"),
    pytest.param("active = yes", 5, "active", "allowed: 0, 1", id="active"),
    pytest.param("use_regex = 2", 5, "use_regex", "allowed: 0, 1", id="use-regex"),
    pytest.param("timeout = 0", 5, "timeout", "allowed: 1..", id="timeout"),
    pytest.param("reentry = soon", 5, "reentry", "not a whole number", id="reentry"),
    pytest.param("load_monitor = snmp", 5, "load_monitor", "allowed: none, rup, ruptime", id="load-monitor"),
    pytest.param("fwmark = 0", 5, "fwmark", "allowed: 1..4294967295", id="fwmark"),
])
def test_virtual_errors(body: str, line: int, key: str, fragment: str) -> None:
    e = error(virtual(body))
    assert e.where == Where("lvs.cf", line, key)
    assert fragment in e.message
    assert str(e).startswith(f"lvs.cf:{line}: {key}: ")


@pytest.mark.parametrize("servers, line, key, fragment", [
    pytest.param("server a {\naddress = 10.0.1.x\n}\n", 7, "address", "not an IPv4 address", id="address"),
    pytest.param("server a {\naddress = 10.0.1.1\nweight = 65536\n}\n", 8, "weight",
                 "out of range (allowed: 0..65535)", id="weight"),
    pytest.param("server a {\nweight = 1\n}\n", 6, "server", "server a needs an address", id="no-address"),
    pytest.param("server a {\naddress = 10.0.1.1\n}\nserver b {\naddress = 10.0.1.1\n}\n", 9, "server",
                 "listed twice", id="duplicate"),
])
def test_server_errors(servers: str, line: int, key: str, fragment: str) -> None:
    e = error(virtual("", servers=servers))
    assert e.where == Where("lvs.cf", line, key) and fragment in e.message


@pytest.mark.parametrize("text, line, key, fragment", [
    pytest.param("virtual V {\nport = 80\n}\n", 1, "virtual", "needs an address", id="no-address"),
    pytest.param("virtual V {\naddress = 10.0.0.1\n}\n", 1, "virtual", "needs a port", id="no-port"),
    pytest.param("virtual V {\naddress = 10.0.0.1 eth0:1 extra\nport = 1\n}\n", 2, "address",
                 "expected an address", id="address-words"),
    pytest.param(virtual("") + virtual(""), 13, "virtual", "virtual WEB is already defined at lvs.cf:2",
                 id="duplicate-name"),
    pytest.param(virtual("") + virtual("", name="WEB2"), 13, "virtual", "already defined at lvs.cf:2",
                 id="duplicate-service"),
    pytest.param("service = fos\n", 1, "service", "failover services (service = fos) are not supported",
                 id="fos"),
    pytest.param("service = both\n", 1, "service", "allowed: lvs, fos", id="service"),
    pytest.param("network = bridge\n", 1, "network", "allowed: nat, direct, tunnel", id="network"),
    pytest.param("primary = host.example.com\n", 1, "primary", "not an IPv4 address", id="primary"),
    pytest.param("heartbeat_port = 70000\n", 1, "heartbeat_port", "out of range", id="heartbeat-port"),
    pytest.param("serial_no = x\n", 1, "serial_no", "not a whole number", id="serial"),
    pytest.param("syncdaemon = 1\n", 1, "syncdaemon", "needs syncd_iface", id="sync-iface"),
    pytest.param("syncd_id = 300\n", 1, "syncd_id", "allowed: 0..255", id="sync-id"),
    pytest.param("tcp_timeout = 0\n", 1, "tcp_timeout", "allowed: 1..", id="tcp-timeout"),
    pytest.param("nat_router = 10.0.2.x eth1:1\n", 1, "nat_router", "not an IPv4", id="nat-router"),
])
def test_document_errors(text: str, line: int, key: str, fragment: str) -> None:
    e = error(text)
    assert e.where == Where("lvs.cf", line, key) and fragment in e.message


def test_port_zero_needs_persistence() -> None:
    e = error("virtual V {\naddress = 10.0.0.1\nport = 0\n}\n")
    assert e.where == Where("lvs.cf", 1, "virtual") and "port 0" in str(e)
    text = "network = nat\nvirtual V {\naddress = 10.0.0.1\npersistent = 60\n" + SERVER + "}\n"
    (svc,) = load(text).config.services
    assert (svc.config.vport, svc.config.persistent, svc.dests[0].config.dport) == (0, 60, 0)


# ==========================================================================================
# fwmark
# ==========================================================================================

FWM_DOC = """network = nat
virtual HTTP {
    address = 10.0.0.1 eth0:1
    port = 80
    fwmark = 80
    persistent = 300
    send = "GET / HTTP/1.0\\r\\n\\r\\n"
    expect = "HTTP"
    server a {
        address = 10.0.1.1
        weight = 2
    }
    server b {
        address = 10.0.1.2
    }
}
virtual HTTPS {
    address = 10.0.0.1 eth0:1
    port = 443
    fwmark = 80
    persistent = 300
    server a {
        address = 10.0.1.1
        weight = 2
    }
}
"""


def test_virtuals_sharing_a_fwmark_become_one_service_group() -> None:
    result = load(FWM_DOC)
    (svc,) = result.config.services
    cfg = svc.config
    assert (cfg.proto, cfg.fwmark, cfg.persistent, svc.name) == (Proto.FWM, 80, 300, "HTTP")
    assert cfg.members == ((Proto.TCP, A("10.0.0.1"), 80), (Proto.TCP, A("10.0.0.1"), 443))
    a, b = svc.dests
    assert (a.config.daddr, a.config.dport, a.config.weight) == (A("10.0.1.1"), 0, 2)
    assert [c.as_dict() for c in a.checks] == [
        {"send": "GET / HTTP/1.0\r\n\r\n", "expect": "HTTP", "connect_port": 80}, {"connect_port": 443}]
    assert [c.as_dict() for c in b.checks] == [{"send": "GET / HTTP/1.0\r\n\r\n", "expect": "HTTP",
                                                "connect_port": 80}]
    assert messages(result) == ["lvs.cf:2: virtual: warning: fwmark 80: ulvs does not match netfilter marks; "
                                "service group 80 answers TCP 10.0.0.1:80, TCP 10.0.0.1:443"]


def test_fwmark_group_disagreements_warn() -> None:
    text = FWM_DOC.replace("port = 443\n    fwmark = 80\n    persistent = 300",
                           "port = 443\n    fwmark = 80\n    persistent = 60")
    text = text.replace("server a {\n        address = 10.0.1.1\n        weight = 2\n    }\n}\n",
                        "server a {\n        address = 10.0.1.1\n        weight = 9\n    }\n}\n", 1)
    text = text[:text.index("virtual HTTPS")] + text[text.index("virtual HTTPS"):].replace("weight = 2",
                                                                                           "weight = 9")
    result = load(text)
    assert result.config.services[0].config.persistent == 300
    assert result.config.services[0].dests[0].config.weight == 2
    assert [w.message for w in result.warnings][1:] == [
        "virtual HTTPS: scheduler/persistence differ from virtual HTTP with the same fwmark 80; HTTP's apply",
        "server a differs from its entry in another virtual with fwmark 80; the first one applies",
    ]


def test_fwmark_group_takes_the_place_of_its_first_virtual() -> None:
    text = (virtual("", name="A") + FWM_DOC.replace("network = nat\n", "")
            + virtual("", name="B").replace("network = nat\n", "").replace("port = 80", "port = 8080"))
    keys = [s.config.key for s in load(text).config.services]
    assert keys == [(Proto.TCP, A("10.0.0.1"), 80), (Proto.FWM, A("0.0.0.0"), 80),
                    (Proto.TCP, A("10.0.0.1"), 8080)]


def test_fwmark_member_listed_twice_is_an_error() -> None:
    text = FWM_DOC.replace("port = 443", "port = 80")
    e = error(text)
    assert e.where == Where("lvs.cf", 17, "virtual") and "already a member of service group 80" in str(e)


# ==========================================================================================
# Globals and the director pair
# ==========================================================================================


def test_director_pair_keys_warn_and_the_hint_lists_the_vips() -> None:
    text = """serial_no = 7
primary = 10.0.0.2
service = lvs
backup_active = 1
backup = 10.0.0.3
heartbeat = 1
heartbeat_port = 539
keepalive = 6
deadtime = 18
nat_router = 10.0.2.254 eth1:1
nat_nmask = 255.255.255.0
""" + virtual("vip_nmask = 255.255.255.0")
    result = load(text)
    pulse = "pulse's heartbeat is not used; ulvs runs the director pair with VRRP; ignored"
    assert messages(result) == [
        "lvs.cf:2: primary: warning: primary/backup: pulse's director pair is not converted; ulvs runs the "
        "pair with VRRP: define a vrrp_instance (or a sync group of them) carrying 10.0.0.1/24 dev eth0, "
        "10.0.2.254/24 dev eth1",
        f"lvs.cf:4: backup_active: warning: backup_active: {pulse}",
        f"lvs.cf:5: backup: warning: backup: {pulse}",
        f"lvs.cf:6: heartbeat: warning: heartbeat: {pulse}",
        f"lvs.cf:7: heartbeat_port: warning: heartbeat_port: {pulse}",
        f"lvs.cf:8: keepalive: warning: keepalive: {pulse}",
        f"lvs.cf:9: deadtime: warning: deadtime: {pulse}",
        "lvs.cf:10: nat_router: warning: nat_router (the real servers' floating gateway) is moved by pulse; "
        "ulvs moves it with VRRP: put it in a vrrp_instance's virtual addresses",
    ]
    assert result.config.vrrp == () and result.config.sync is None


def test_sync_daemon_and_timeouts() -> None:
    result = load("syncdaemon = 1\nsyncd_iface = eth2\nsyncd_id = 9\ntcp_timeout = 3600\ntcpfin_timeout = \n"
                  "udp_timeout = 30\n")
    assert result.config.sync == SyncSettings("eth2", None, 9)
    assert result.config.timeouts == Timeouts(tcp=3600, tcpfin=120, udp=30)
    assert load("syncdaemon = 0\nsyncd_iface = eth2\n").config.sync is None


def test_unused_unknown_and_failover_entries_warn() -> None:
    result = load("debug_level = NONE\nrsh_command = ssh\nmystery = 1\nfailover ftp {\n active = 1\n}\n"
                  "gizmo G {\n}\n")
    assert messages(result) == [
        "lvs.cf:1: debug_level: warning: debug_level: accepted but not used by ulvs; ignored",
        "lvs.cf:2: rsh_command: warning: rsh_command: accepted but not used by ulvs; ignored",
        "lvs.cf:3: mystery: warning: unknown key 'mystery'; ignored",
        "lvs.cf:4: failover: warning: failover ftp: failover services are not supported by ulvs; "
        "block skipped",
        "lvs.cf:7: gizmo: warning: unknown block 'gizmo' at the top level; block skipped",
    ]
    assert result.config.services == ()


def test_docs_example() -> None:
    path = ROOT / "docs/examples/lvs.cf"
    result = parse_format("lvs.cf", path.read_text(), str(path))
    cfg = result.config
    assert [(s.name, s.config.key) for s in cfg.services] == [
        ("HTTP", (Proto.TCP, A("10.77.1.100"), 80)), ("HTTPS", (Proto.TCP, A("10.77.1.100"), 443)),
        ("DNS", (Proto.UDP, A("10.77.1.100"), 53))]
    http, https, dns = cfg.services
    assert [(str(d.config.daddr), d.config.weight, d.config.method) for d in http.dests] == [
        ("10.77.2.11", 3, FwdMethod.MASQ), ("10.77.2.12", 2, FwdMethod.MASQ),
        ("10.77.2.13", 1, FwdMethod.MASQ)]
    assert http.dests[0].checks[0].as_dict() == {"send": "GET /healthz HTTP/1.0\r\n\r\n",
                                                 "expect": "HTTP/1.1 200", "use_regex": False, "timeout": 6,
                                                 "reentry": 15}
    assert (https.config.persistent, https.config.netmask) == (300, A("255.255.255.0"))
    assert [str(d.config.daddr) for d in https.dests] == ["10.77.2.11"]          # web2 is inactive there
    assert dns.config.sched == "rr" and len(dns.dests) == 2
    warned = {(w.where.line, w.where.key) for w in result.warnings}
    assert (8, "primary") in warned and (17, "nat_router") in warned
    assert any("inactive" in w.message and w.where.key == "server" for w in result.warnings)
    assert "10.77.1.100/24 dev eth0, 10.77.2.254/24 dev eth1" in result.warnings[0].message


def test_docs_example_is_detected_as_lvs_cf() -> None:
    from ulvs.config import detect
    path = ROOT / "docs/examples/lvs.cf"
    assert detect(str(path), path.read_text()) == "lvs.cf"
