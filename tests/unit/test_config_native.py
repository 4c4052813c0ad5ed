"""The native TOML format: a full example parsed into the model, and every kind of error naming
its file, line and key path (``ulvs.config.native``, ``ulvs.config.toml_lines``).

Test ids avoid the word "sched" (the project's ``-k "not sched"`` runs deselect it)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from textwrap import dedent

import pytest

from ulvs.config import native
from ulvs.config.schema import (
    FAILED_CONNS,
    FAILED_CONNS_REFUSED,
    CheckSpec,
    ConfigError,
    DaemonSettings,
    Timeouts,
    VirtualAddress,
)
from ulvs.config.toml_lines import KeyLines
from ulvs.core.model import DestConfig, FwdMethod, Proto, ServiceConfig
from ulvs.health.policy import ConnPolicy

A = ipaddress.IPv4Address
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "ulvs.toml"
WEB = """\
[[service]]
protocol = "tcp"
vip = "10.0.0.1"
port = 80

[[service.dest]]
address = "10.0.1.1"
"""


def parse(text: str) -> native.LoadResult:
    return native.parse(dedent(text), "lb.toml")


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        parse(text)
    return e.value


# -- the example --------------------------------------------------------------------------------
def test_the_example_config_parses_into_the_model() -> None:
    config = native.parse(EXAMPLE.read_text(), str(EXAMPLE)).config
    assert config.router_id == "lvs1"
    assert config.daemon == DaemonSettings(interfaces=("eth0", "eth1"), control_group="ulvs")
    assert config.timeouts == Timeouts()
    assert config.metrics.listen == "127.0.0.1:9595"
    assert config.sync is not None and (config.sync.interface, config.sync.instance) == ("eth1", "VI_1")
    web, dns, shop = config.services
    assert web.name == "web" and web.config == ServiceConfig(Proto.TCP, A("10.77.1.100"), 80)
    assert [(d.config.daddr, d.config.dport, d.config.weight, d.config.method) for d in web.dests] == [
        (A("10.77.2.11"), 8080, 3, FwdMethod.MASQ), (A("10.77.2.12"), 8080, 2, FwdMethod.MASQ),
        (A("10.77.2.13"), 8080, 1, FwdMethod.MASQ)]
    tcp_check = CheckSpec("TCP_CHECK", (("connect_timeout", 3.0), ("retry", 2)))
    assert web.dests[0].checks == web.dests[1].checks == (tcp_check,)       # the service's check
    assert web.dests[2].checks == (CheckSpec("HTTP_GET", (
        ("connect_timeout", 5.0), ("url", ({"path": "/health", "status_code": 200},)))),)
    assert web.dests[1].notify_down == ("/usr/local/bin/lvs-notify", "rs2", "down")
    assert web.dests[2].inhibit_on_failure is True and web.dests[0].inhibit_on_failure is None
    assert web.sorry_server == (A("10.77.2.99"), 80) and web.delay_loop == 6.0
    assert (web.slow_start, web.failed_conns) == (10.0, "keep")
    assert web.quorum_up == ("/usr/local/bin/lvs-notify", "web", "up")
    assert dns.config == ServiceConfig(Proto.UDP, A("10.77.1.100"), 53, sched="sh",
                                       flags=frozenset({"sh-fallback", "sh-port"}), persistent=300,
                                       netmask=A("255.255.255.0"), ops=True)
    assert [d.config.dport for d in dns.dests] == [53, 53]                   # the service's port
    assert shop.config.proto == Proto.FWM and shop.config.fwmark == 1
    assert shop.config.members == ((Proto.TCP, A("10.77.1.101"), 80), (Proto.TCP, A("10.77.1.101"), 443))
    assert [d.config for d in shop.dests] == [DestConfig(A("10.77.2.21"), 0), DestConfig(A("10.77.2.22"), 0)]
    vi1, vi2 = config.vrrp
    assert (vi1.name, vi1.interface, vi1.vrid, vi1.priority, vi1.state) == ("VI_1", "eth0", 51, 150, "MASTER")
    assert vi1.virtual_addresses == (VirtualAddress(ipaddress.IPv4Interface("10.77.1.100/24")),
                                     VirtualAddress(ipaddress.IPv4Interface("10.77.1.101/24"), "eth0"))
    assert vi2.priority == 100 and vi2.virtual_addresses[0].dev is None
    assert [(g.name, g.members) for g in config.vrrp_sync_groups] == [("G1", ("VI_1", "VI_2"))]


def test_provenance_names_file_line_and_key_path() -> None:
    config = native.parse(EXAMPLE.read_text(), "ulvs.toml").config
    lines = EXAMPLE.read_text().splitlines()
    web = config.services[0]
    assert web.where is not None and web.where.key == "service[0]"
    assert lines[web.where.line - 1] == "[[service]]"
    third = web.dests[2]
    assert third.where is not None and str(third.where).endswith(": service[0].dest[2]")
    assert third.checks[0].where is not None and third.checks[0].where.key == "service[0].dest[2].check[0]"
    assert lines[third.checks[0].where.line - 1].startswith("[[service.dest.check]]")


def test_defaults_and_minimal_service() -> None:
    config = parse(WEB).config
    (svc,) = config.services
    assert svc.config == ServiceConfig(Proto.TCP, A("10.0.0.1"), 80)
    assert svc.dests[0].config == DestConfig(A("10.0.1.1"), 80)   # port = the service's, droute, weight 1
    assert svc.name is None and svc.dests[0].checks == ()
    assert config.daemon == DaemonSettings() and config.sync is None and config.vrrp == ()
    assert config.source == "lb.toml"


def test_slow_start_and_failed_conns() -> None:
    (svc,) = parse(WEB).config.services
    assert (svc.slow_start, svc.failed_conns) == (0.0, "keep")          # off; kept until timeout
    (svc,) = parse(WEB.replace("port = 80\n", 'port = 80\nslow_start = 5\nfailed_conns = "expire"\n')
                   ).config.services
    assert (svc.slow_start, svc.failed_conns) == (5.0, "expire")
    assert isinstance(svc.slow_start, float)


def test_every_failed_conns_name_is_a_conn_policy() -> None:
    assert {ConnPolicy(name) for name in FAILED_CONNS} == {ConnPolicy.KEEP, ConnPolicy.EXPIRE}
    assert set(FAILED_CONNS_REFUSED) == {p.value for p in ConnPolicy} - set(FAILED_CONNS)


def test_flags_are_normalised_as_ipvsadm_does() -> None:
    text = WEB.replace('port = 80\n', 'port = 80\nscheduler = "mh"\nflags = ["flag-2", "mh-fallback"]\n')
    assert parse(text).config.services[0].config.flags == frozenset({"mh-fallback", "mh-port"})


def test_a_dest_check_overrides_the_service_check_even_when_empty() -> None:
    text = WEB.replace("\n[[service.dest]]", '\n[service.check]\ntype = "PING_CHECK"\n\n[[service.dest]]') \
        + 'check = []\n\n[[service.dest]]\naddress = "10.0.1.2"\n'
    first, second = parse(text).config.services[0].dests
    assert first.checks == () and second.checks == (CheckSpec("PING_CHECK"),)


def test_dns_check_query_type_is_the_checkers_type_option() -> None:
    text = WEB + '[service.dest.check]\ntype = "DNS_CHECK"\nquery_type = "A"\nname = "example.com"\n'
    (check,) = parse(text).config.services[0].dests[0].checks
    assert check == CheckSpec("DNS_CHECK", (("type", "A"), ("name", "example.com")))


def test_droute_with_another_port_is_a_warning() -> None:
    result = parse(WEB + "port = 8080\n")
    (w,) = result.warnings
    assert str(w) == ("lb.toml:8: service[0].dest[0].port: warning: droute does not change the port: "
                      "the real server receives port 80, not 8080")


# -- errors: line, key path, allowed values -------------------------------------------------------
ERRORS = [
    ("bogus = 1\n", 1, "bogus",
     "unknown key 'bogus' (allowed: daemon, include, metrics, router_id, service, sync, timeouts, vrrp)"),
    (WEB.replace('port = 80\n', 'port = 80\ncolour = "red"\n'), 5, "service[0].colour",
     "unknown key 'colour' (allowed: alpha, check, delay_loop, dest, ejection, failed_conns, flags, "
     "forwarding, fwmark, hysteresis, inhibit_on_failure, members, name, omega, ops, persistence_netmask, "
     "persistence_timeout, port, protocol, quorum, quorum_down, quorum_up, scheduler, slow_start, "
     "sorry_server, sorry_server_inhibit, vip, virtualhost)"),
    (WEB.replace('port = 80\n', 'port = 80\nfailed_conns = "drop"\n'), 5, "service[0].failed_conns",
     "'drop' is not allowed (allowed: keep, expire)"),
    (WEB.replace('port = 80\n', 'port = 80\nfailed_conns = "reset"\n'), 5, "service[0].failed_conns",
     "'reset' is not available: the dataplane keeps no TCP sequence numbers, so it cannot send a RST "
     "either end would accept (allowed: keep, expire)"),
    (WEB.replace('port = 80\n', 'port = 80\nfailed_conns = 1\n'), 5, "service[0].failed_conns",
     "must be a string, not an integer"),
    (WEB.replace('port = 80\n', 'port = 80\nslow_start = -1\n'), 5, "service[0].slow_start",
     "-1 is out of range (allowed: 0..86400)"),
    (WEB.replace('port = 80\n', 'port = 80\nslow_start = "5s"\n'), 5, "service[0].slow_start",
     "must be a number 0..86400, not a string"),
    (WEB.replace("port = 80", 'port = "80"'), 4, "service[0].port",
     "must be an integer 0..65535, not a string"),
    (WEB.replace("port = 80", "port = 65536"), 4, "service[0].port",
     "65536 is out of range (allowed: 0..65535)"),
    (WEB + WEB.replace('"10.0.0.1"', '"10.0.0.2"') + "weight = 70000\n", 15, "service[1].dest[0].weight",
     "70000 is out of range (allowed: 0..65535)"),
    (WEB + "weight = true\n", 8, "service[0].dest[0].weight", "must be an integer 0..65535, not a boolean"),
    (WEB + "upper_threshold = -1\n", 8, "service[0].dest[0].upper_threshold",
     "-1 is out of range (allowed: 0..65535)"),
    (WEB.replace('port = 80\n', 'port = 80\nscheduler = "nope"\n'), 5, "service[0].scheduler",
     "'nope' is not allowed (allowed: dh, fo, lblc, lblcr, lc, mh, nq, ovf, rr, sed, sh, twos, wlc, wrr)"),
    (WEB.replace('port = 80\n', 'port = 80\nscheduler = "rr"\nflags = ["flag-1", "sh-port"]\n'), 6,
     "service[0].flags[1]", "'sh-port' is not a flag of scheduler rr (allowed: flag-1, flag-2, flag-3)"),
    (WEB + WEB, 8, "service[1]", "service tcp 10.0.0.1:80 is defined twice (first: lb.toml:1: service[0])"),
    (WEB + '\n[[service.dest]]\naddress = "10.0.1.1"\nport = 80\n', 9, "service[0].dest[1]",
     "dest 10.0.1.1:80 is already in this service (lb.toml:6: service[0].dest[0])"),
    (WEB.replace("port = 80", "port = 0"), 4, "service[0].port",
     "port 0 (any port) is only for persistent services (set persistence_timeout)"),
    (WEB.replace('port = 80\n', 'port = 80\nops = true\n'), 5, "service[0].ops",
     "one-packet scheduling (ops) is for UDP services only"),
    (WEB.replace('address = "10.0.1.1"', 'address = "10.0.1"'), 7, "service[0].dest[0].address",
     "'10.0.1' is not an IPv4 address"),
    (WEB + 'forwarding = "tunnel"\n', 8, "service[0].dest[0].forwarding",
     "the tunnel forwarding method is not supported yet (allowed: masq, droute)"),
    (WEB + 'forwarding = "nat"\n', 8, "service[0].dest[0].forwarding",
     "'nat' is not allowed (allowed: masq, droute)"),
    (WEB + "notify_up = []\n", 8, "service[0].dest[0].notify_up",
     'must name a program: ["/path/to/program", "arg", ...]'),
    (WEB + 'notify_up = "/bin/true"\n', 8, "service[0].dest[0].notify_up",
     "must be an array of strings (a program and its arguments), not a string"),
    ('[[service]]\nprotocol = "tcp"\nport = 80\n', 1, "service[0].vip", "missing key 'vip' (a string)"),
    ('[[service]]\nprotocol = "sctp"\nvip = "10.0.0.1"\nport = 80\n', 2, "service[0].protocol",
     "'sctp' is not allowed (allowed: tcp, udp, group)"),
    ('[[service]]\nprotocol = "group"\nfwmark = 1\nmembers = ["tcp 10.0.0.1:80"]\nvip = "10.0.0.1"\n', 5,
     "service[0].vip", 'not for a service group (protocol = "group"): its entries are its members'),
    ('[[service]]\nprotocol = "group"\nfwmark = 1\nmembers = [\n  "tcp 10.0.0.1:80",\n  "tcp 10.0.0.1",\n]\n',
     4, "service[0].members[1]", "'tcp 10.0.0.1' is not \"tcp ADDRESS:PORT\" or \"udp ADDRESS:PORT\" "
     "(port 0 = any port)"),
    ('[[service]]\nprotocol = "group"\nfwmark = 0\nmembers = ["tcp 10.0.0.1:80"]\n', 3, "service[0].fwmark",
     "0 is out of range (allowed: 1..4294967295)"),
    (WEB + '[[service]]\nprotocol = "group"\nfwmark = 1\nmembers = ["udp 10.0.0.9:53", "tcp 10.0.0.1:80"]\n',
     11, "service[1].members", "tcp 10.0.0.1:80 already belongs to lb.toml:1: service[0]"),
    (WEB + 'check = { type = "TCP_CHECK", connect_port = 99999 }\n', 8,
     "service[0].dest[0].check.connect_port", "99999 is out of range (allowed: 0..65535)"),
    (WEB + '[[service.dest.check]]\ntype = "TCP_CHEK"\n', 9, "service[0].dest[0].check[0].type",
     "unknown checker 'TCP_CHEK' (allowed: DNS_CHECK, FILE_CHECK, HTTP_GET, MISC_CHECK, NANNY, PING_CHECK, "
     "SMTP_CHECK, SSL_GET, TCP_CHECK, UDP_CHECK)"),
    (WEB + '[[service.dest.check]]\ntype = "MISC_CHECK"\nmisc_path = "/bin/true"\nurl = []\n', 11,
     "service[0].dest[0].check[0].url", "MISC_CHECK: unknown key 'url' (allowed: type, alpha, delay_loop, "
     "misc_dynamic, misc_path, misc_timeout, user, warmup)"),
    (WEB + '[[service.dest.check]]\ntype = "HTTP_GET"\n'
     '[[service.dest.check.url]]\npath = "/"\nstatus = 200\n',
     12, "service[0].dest[0].check[0].url[0].status", "unknown key 'status' (allowed: digest, path, regex, "
     "regex_max_offset, regex_min_offset, regex_no_match, regex_options, status_code, virtualhost)"),
    (WEB + "check = 3\n", 8, "service[0].dest[0].check",
     "must be a table or an array of tables, not an integer"),
    ("[daemon]\nbackend = \"xdp\"\n", 2, "daemon.backend", "'xdp' is not allowed (allowed: afpacket, tap)"),
    ("[daemon]\nworkers = 0\n", 2, "daemon.workers", "0 is out of range (allowed: 1..64)"),
    ('[daemon]\ninterfaces = ["eth0", "eth0"]\n', 2, "daemon.interfaces[1]",
     "interface 'eth0' is listed twice"),
    ('[daemon]\ncontrol_socket = "ulvs.sock"\n', 2, "daemon.control_socket",
     "'ulvs.sock' is not an absolute path"),
    ("[timeouts]\nudp = 0\n", 2, "timeouts.udp", "0 is out of range (allowed: 1..2678400)"),
    ('[metrics]\nlisten = "localhost"\n', 2, "metrics.listen",
     "'localhost' is not address:port (e.g. \"10.0.0.9:80\", port 1..65535)"),
    ('[sync]\ninterface = "eth1"\ninstance = "VI_9"\n', 3, "sync.instance",
     "no VRRP instance 'VI_9' (defined: none)"),
    ('[sync]\ninterface = "eth1"\ngroup = "10.0.0.1"\n', 3, "sync.group",
     "10.0.0.1 is not a multicast address (224.0.0.0/4)"),
    ('[[vrrp.instance]]\nname = "a"\ninterface = "eth0"\nvrid = 1\n'
     '[[vrrp.instance]]\nname = "b"\ninterface = "eth0"\nvrid = 1\n', 8, "vrrp.instance[1].vrid",
     "vrid 1 on eth0 is already used by lb.toml:1: vrrp.instance[0]"),
    ('[[vrrp.instance]]\nname = "a"\ninterface = "eth0"\nvrid = 1\nversion = 2\nadvert_int = 0.5\n', 6,
     "vrrp.instance[0].advert_int", "0.5 is out of range (allowed: 1..255)"),
    ('[[vrrp.instance]]\nname = "a"\ninterface = "eth0"\nvrid = 1\n'
     'virtual_addresses = ["10.0.0.1/24 on eth0"]\n',
     5, "vrrp.instance[0].virtual_addresses[0]",
     "'10.0.0.1/24 on eth0' is not \"ADDRESS[/PREFIX] [dev INTERFACE]\""),
    ('[[vrrp.instance]]\nname = "a"\ninterface = "eth0"\nvrid = 1\n'
     '[[vrrp.sync_group]]\nname = "g"\nmembers = ["a", "b"]\n', 7, "vrrp.sync_group[0].members[1]",
     "no VRRP instance 'b' (defined: a)"),
    ('include = "*.toml"\n', 1, "include",
     "include needs a file to be relative to (the configuration was not read from a file)"),
]


@pytest.mark.parametrize(("text", "line", "key", "message"), ERRORS,
                         ids=[f"{i:02d}-{e[2]}".replace("sched", "sch") for i, e in enumerate(ERRORS)])
def test_errors_name_the_line_and_key_path(text: str, line: int, key: str, message: str) -> None:
    e = error(text)
    assert e.where is not None
    assert (e.where.file, e.where.line, e.where.key, e.message) == ("lb.toml", line, key, message)
    assert str(e) == f"lb.toml:{line}: {key}: {message}"


def test_toml_syntax_errors_carry_the_file_and_tomllib_position() -> None:
    e = error(WEB + "weight = = 3\n")
    assert str(e).startswith("lb.toml:8: invalid TOML: ") and "(at line 8, column 10)" in str(e)


def test_model_errors_become_config_errors_naming_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kw: object) -> DestConfig:
        raise ValueError("refused by the model")

    monkeypatch.setattr(native, "DestConfig", refuse)
    assert str(error(WEB)) == "lb.toml:6: service[0].dest[0]: refused by the model"


# -- line tracking ------------------------------------------------------------------------------
def test_key_lines_follow_headers_arrays_and_skip_multiline_values() -> None:
    lines = KeyLines(dedent('''\
        top = """
        [not_a_table]
        x = 1
        """
        arr = [
          "[nor.this]",
          { y = 2 },
        ]
        [[service]]
        "quoted.key" = 1
        [service.check]
        a.b = 2
        [[service]]
        [[service.dest]]
        w = 'it''s'
        [[service.dest]]
        w = 4
        '''))
    assert lines.line(("top",)) == 1 and lines.line(("not_a_table",)) is None
    assert lines.line(("arr", 1, "y")) == 5
    assert lines.line(("service", 0, "quoted.key")) == 10
    assert lines.line(("service", 0, "check", "a", "b")) == 12
    assert lines.line(("service", 1)) == 13
    assert lines.line(("service", 1, "dest", 0, "w")) == 15
    assert lines.line(("service", 1, "dest", 1, "w")) == 17
    assert lines.line(("service", 1, "dest", 1, "missing")) == 16


def test_the_readme_example_parses() -> None:
    readme = (EXAMPLE.parents[2] / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    (web,) = native.parse(block, "README.md").config.services
    assert [(str(d.config.daddr), d.config.dport, d.config.weight, d.config.method) for d in web.dests] == [
        ("10.77.2.11", 80, 3, FwdMethod.MASQ), ("10.77.2.12", 80, 1, FwdMethod.MASQ)]
