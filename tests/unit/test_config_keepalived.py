"""keepalived.conf -> configuration model: tokenizer, includes, blocks, every mapped key, errors.

Test ids avoid the word "sched" (the project's ``-k "not sched"`` runs deselect it)."""

from __future__ import annotations

import fnmatch
import ipaddress
import posixpath
from pathlib import Path
from typing import Any

import pytest

from ulvs.config import parse as parse_format
from ulvs.config.keepalived import (
    CHECK_CONVERTERS,
    URL_CONVERTERS,
    Stmt,
    build_tree,
    load_tokens,
    parse,
    tokenize,
)
from ulvs.config.schema import (
    CHECK_KEYS,
    URL_KEYS,
    CheckSpec,
    ConfigError,
    LoadResult,
    SyncSettings,
    Timeouts,
    VirtualAddress,
    VirtualService,
    VrrpInstance,
    Where,
)
from ulvs.core.model import FwdMethod, Proto

A = ipaddress.IPv4Address
ROOT = Path(__file__).resolve().parents[2]


def load(text: str, include: Any = None, source: str = "k.conf") -> LoadResult:
    return parse(text, source, include)


def error(text: str, include: Any = None) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        parse(text, "k.conf", include)
    return e.value


def messages(result: LoadResult) -> list[str]:
    return [str(w) for w in result.warnings]


def vs(body: str, header: str = "10.0.0.1 80", rs: str = "") -> str:
    return f"virtual_server {header} {{\n{body}\n{rs}}}\n"


def service(body: str, header: str = "10.0.0.1 80", rs: str = "") -> VirtualService:
    result = load(vs(body, header, rs))
    assert len(result.config.services) == 1
    return result.config.services[0]


def rs_block(body: str, addr: str = "10.0.1.1 80") -> str:
    return f"real_server {addr} {{\n{body}\n}}\n"


def checker(text: str) -> CheckSpec:
    svc = service("", rs=rs_block(text))
    (check,) = svc.dests[0].checks
    return check


VRRP_MIN = "interface eth0\nvirtual_router_id 51\n"


def instance(body: str, extra: str = "") -> VrrpInstance:
    result = load(f"{extra}vrrp_instance VI_1 {{\n{VRRP_MIN}{body}\n}}\n")
    (inst,) = result.config.vrrp
    return inst


# ==========================================================================================
# Tokenizer and blocks
# ==========================================================================================


def words(text: str) -> list[str]:
    return [t.text for t in tokenize(text, "f")]


@pytest.mark.parametrize("text, expected", [
    pytest.param("a{b}c", ["a", "{", "b", "}", "c"], id="glued-braces"),
    pytest.param("virtual_ipaddress {10.0.0.1}", ["virtual_ipaddress", "{", "10.0.0.1", "}"],
                 id="glued-inner"),
    pytest.param("a # comment { }", ["a"], id="hash-comment"),
    pytest.param("a ! comment", ["a"], id="bang-comment"),
    pytest.param("a#b", ["a"], id="comment-glued"),
    pytest.param("! whole line\n# another", [], id="comment-lines"),
    pytest.param('x "a { # ! } b" y', ["x", "a { # ! } b", "y"], id="quoted-literal"),
    pytest.param('x ""', ["x", ""], id="empty-quoted"),
    pytest.param("\t a \t b  ", ["a", "b"], id="whitespace"),
])
def test_tokenize(text: str, expected: list[str]) -> None:
    assert words(text) == expected


def test_tokens_carry_file_line_and_quoting() -> None:
    toks = tokenize('a\n\n  "b c" {', "x.conf")
    assert [(t.text, t.file, t.line, t.quoted) for t in toks] == [
        ("a", "x.conf", 1, False), ("b c", "x.conf", 3, True), ("{", "x.conf", 3, False)]
    assert toks[2].is_open and not toks[1].is_brace


def test_quoted_brace_is_not_a_brace() -> None:
    (tok,) = tokenize('"{"', "f")
    assert tok.quoted and not tok.is_open


def test_unterminated_quote_names_the_line() -> None:
    with pytest.raises(ConfigError) as e:
        tokenize('a\nb "open', "x.conf")
    assert e.value.where == Where("x.conf", 2)
    assert str(e.value).startswith("x.conf:2: unterminated quoted string")


def tree(text: str) -> tuple[Stmt, ...]:
    return build_tree(tokenize(text, "f"))


def shape(stmts: tuple[Stmt, ...] | None) -> Any:
    if stmts is None:
        return None
    return [([t.text for t in s.words], shape(s.block)) for s in stmts]


@pytest.mark.parametrize("text, expected", [
    pytest.param("a 1\nb 2", [(["a", "1"], None), (["b", "2"], None)], id="one-statement-per-line"),
    pytest.param("a {\n b 1\n c\n}", [(["a"], [(["b", "1"], None), (["c"], None)])], id="block"),
    pytest.param("a\n{\n b\n}", [(["a"], [(["b"], None)])], id="brace-on-next-line"),
    pytest.param("a { b { c } }", [(["a"], [(["b"], [(["c"], None)])])], id="nested-one-line"),
    pytest.param("a {}", [(["a"], [])], id="empty-block"),
    pytest.param("a { b } c", [(["a"], [(["b"], None)]), (["c"], None)], id="words-after-close"),
])
def test_build_tree(text: str, expected: Any) -> None:
    assert shape(tree(text)) == expected


def test_missing_close_brace_names_the_opening_line() -> None:
    e = error("global_defs {\n router_id x\n}\nvirtual_server 10.0.0.1 80 {\n delay_loop 3\n")
    assert e.where == Where("k.conf", 4, "virtual_server")
    assert "missing '}'" in str(e)


def test_unexpected_close_brace() -> None:
    e = error("global_defs {\n}\n}\n")
    assert e.where == Where("k.conf", 3) and "unexpected '}'" in str(e)


def test_open_brace_without_keyword() -> None:
    assert "'{' without a keyword" in str(error("{\n}\n"))
    assert "'{' without a keyword" in str(error("a {\n}\n{\n}\n"))


# ==========================================================================================
# Includes
# ==========================================================================================


class FakeFiles:
    """An Includer over a dict of files: glob patterns relative to the including file's dir."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files
        self.calls: list[tuple[str, str]] = []

    def __call__(self, pattern: str, including: str) -> list[tuple[str, str]]:
        self.calls.append((pattern, including))
        base = including.rsplit("/", 1)[0] if "/" in including else ""
        full = pattern if pattern.startswith("/") or not base else posixpath.normpath(f"{base}/{pattern}")
        return [(name, self.files[name]) for name in sorted(self.files) if fnmatch.fnmatch(name, full)]


def test_include_glob_splices_files_in_order() -> None:
    files = FakeFiles({
        "/etc/k/conf.d/b.conf": vs("lvs_sched rr", "10.0.0.2 80"),
        "/etc/k/conf.d/a.conf": vs("lvs_sched lc", "10.0.0.1 80"),
        "/etc/k/other.txt": "garbage {",
    })
    result = parse("include conf.d/*.conf\n", "/etc/k/keepalived.conf", files)
    assert [(s.config.vaddr, s.config.sched) for s in result.config.services] == [
        (A("10.0.0.1"), "lc"), (A("10.0.0.2"), "rr")]
    assert files.calls == [("conf.d/*.conf", "/etc/k/keepalived.conf")]
    assert result.config.services[1].where == Where("/etc/k/conf.d/b.conf", 1, "virtual_server")


def test_nested_include_inside_a_block_resolves_against_the_including_file() -> None:
    files = FakeFiles({
        "/etc/k/vs/web.conf": "lvs_sched rr\ninclude ../rs/*.conf\n",
        "/etc/k/rs/one.conf": rs_block("weight 7", "10.0.1.1 80"),
    })
    text = "virtual_server 10.0.0.1 80 {\n include vs/web.conf\n}\n"
    result = parse(text, "/etc/k/keepalived.conf", files)
    (svc,) = result.config.services
    assert svc.config.sched == "rr"
    assert svc.dests[0].config.weight == 7
    assert files.calls[1] == ("../rs/*.conf", "/etc/k/vs/web.conf")


def test_include_errors_and_warnings_name_the_included_file() -> None:
    files = FakeFiles({"/k/bad.conf": "\n\nvirtual_server 10.0.0.1 80 {\n weight_x 1\n lvs_sched nope\n}\n"})
    e = error("include bad.conf\n", lambda p, f: files(p, "/k/main.conf"))
    assert e.where == Where("/k/bad.conf", 5, "lvs_sched")


def test_include_loop_is_an_error() -> None:
    files = FakeFiles({"/k/a.conf": "include b.conf\n", "/k/b.conf": "include a.conf\n"})
    with pytest.raises(ConfigError) as e:
        parse("include a.conf\n", "/k/main.conf", files)
    assert "include loop: /k/main.conf -> /k/a.conf -> /k/b.conf -> /k/a.conf" in str(e.value)
    assert e.value.where == Where("/k/b.conf", 1, "include")


def test_include_of_itself_is_a_loop() -> None:
    files = FakeFiles({"/k/main.conf": "include main.conf\n"})
    with pytest.raises(ConfigError, match="include loop"):
        parse("include main.conf\n", "/k/main.conf", files)


def test_include_without_includer_is_an_error() -> None:
    e = error("global_defs {\n}\ninclude /etc/x.conf\n")
    assert e.where == Where("k.conf", 3, "include")
    assert "includes are not available" in str(e)


def test_include_needs_exactly_one_pattern() -> None:
    assert "one file name" in str(error("include\n", FakeFiles({})))
    assert "one file name" in str(error("include a b\n", FakeFiles({})))


def test_include_matching_nothing_is_a_warning() -> None:
    result = load("include /none/*.conf\n", FakeFiles({}))
    assert messages(result) == ["k.conf:1: include: warning: include '/none/*.conf' matched no files"]


def test_include_word_not_starting_a_statement_is_a_value() -> None:
    files = FakeFiles({})
    result = load("global_defs {\n router_id include\n}\n", files)
    assert result.config.router_id == "include" and files.calls == []


def test_load_tokens_splices_tokens_with_their_origin() -> None:
    from ulvs.config.keepalived import _Ctx
    toks = load_tokens("a\ninclude x\nb", "m", lambda p, f: [("x", "c d")], _Ctx())
    assert [(t.text, t.file, t.line) for t in toks] == [
        ("a", "m", 1), ("c", "x", 1), ("d", "x", 1), ("b", "m", 3)]


# ==========================================================================================
# virtual_server
# ==========================================================================================


def test_defaults_are_keepalived_s() -> None:
    svc = service("", rs=rs_block(""))
    assert svc.config.proto == Proto.TCP and svc.config.sched == "wlc"
    assert svc.config.persistent is None and svc.config.flags == frozenset()
    assert svc.dests[0].config.method == FwdMethod.MASQ          # keepalived's default lvs_method is NAT
    assert svc.dests[0].config.weight == 1 and svc.dests[0].config.dport == 80
    assert (svc.delay_loop, svc.quorum, svc.hysteresis, svc.sorry_server) == (60.0, 1, 0, None)
    assert svc.where == Where("k.conf", 1, "virtual_server")


@pytest.mark.parametrize("body, get, expected", [
    pytest.param("lvs_sched rr", lambda s: s.config.sched, "rr", id="lvs-algorithm"),
    pytest.param("lb_algo wrr", lambda s: s.config.sched, "wrr", id="lb_algo"),
    pytest.param("lvs_sched twos", lambda s: s.config.sched, "twos", id="twos"),
    pytest.param("protocol UDP", lambda s: s.config.proto, Proto.UDP, id="protocol-udp"),
    pytest.param("protocol tcp", lambda s: s.config.proto, Proto.TCP, id="protocol-case"),
    pytest.param("persistence_timeout 600", lambda s: s.config.persistent, 600, id="persistence"),
    pytest.param("persistence_timeout", lambda s: s.config.persistent, 360, id="persistence-no-value"),
    pytest.param("persistence_granularity 255.255.255.0",
                 lambda s: (s.config.netmask, s.config.persistent), (A("255.255.255.0"), 360),
                 id="granularity-implies-persistence"),
    pytest.param("persistence_timeout 50\npersistence_granularity 255.255.0.0",
                 lambda s: (s.config.netmask, s.config.persistent), (A("255.255.0.0"), 50), id="granularity"),
    pytest.param("delay_loop 6", lambda s: s.delay_loop, 6.0, id="delay_loop"),
    pytest.param("delay_loop 2.5", lambda s: s.delay_loop, 2.5, id="delay_loop-fraction"),
    pytest.param("sorry_server 10.0.9.9 8080", lambda s: s.sorry_server, (A("10.0.9.9"), 8080), id="sorry"),
    pytest.param("sorry_server 10.0.9.9", lambda s: s.sorry_server, (A("10.0.9.9"), 80), id="sorry-port"),
    pytest.param("sorry_server 10.0.9.9 80\nsorry_server_inhibit", lambda s: s.sorry_server_inhibit, True,
                 id="sorry-inhibit"),
    pytest.param("quorum 3", lambda s: s.quorum, 3, id="quorum"),
    pytest.param("hysteresis 2", lambda s: s.hysteresis, 2, id="hysteresis"),
    pytest.param('quorum_up "/bin/up.sh \'a b\' c"', lambda s: s.quorum_up, ("/bin/up.sh", "a b", "c"),
                 id="quorum_up-quoted"),
    pytest.param("quorum_down /bin/down.sh x", lambda s: s.quorum_down, ("/bin/down.sh", "x"),
                 id="quorum_down-words"),
    pytest.param("alpha", lambda s: s.alpha, True, id="alpha"),
    pytest.param("omega", lambda s: s.omega, True, id="omega"),
    pytest.param("inhibit_on_failure", lambda s: s.inhibit_on_failure, True, id="inhibit"),
    pytest.param("inhibit_on_failure false", lambda s: s.inhibit_on_failure, False, id="inhibit-false"),
    pytest.param("virtualhost www.example.com", lambda s: s.virtualhost, "www.example.com", id="virtualhost"),
    pytest.param("ip_family inet", lambda s: s.config.proto, Proto.TCP, id="ip_family"),
    pytest.param("slow_start 8", lambda s: s.slow_start, 8.0, id="ulvs-slow_start"),
    pytest.param("slow_start 2.5", lambda s: s.slow_start, 2.5, id="ulvs-slow_start-fraction"),
    pytest.param("failed_conns expire", lambda s: s.failed_conns, "expire", id="ulvs-failed_conns"),
    pytest.param("", lambda s: (s.slow_start, s.failed_conns), (0.0, "keep"), id="ulvs-defaults"),
    pytest.param("lvs_sched sh\nsh-port\nsh-fallback", lambda s: s.config.flags,
                 frozenset({"sh-port", "sh-fallback"}), id="sh-flags"),
    pytest.param("lvs_sched mh\nmh-port\nmh-fallback", lambda s: s.config.flags,
                 frozenset({"mh-port", "mh-fallback"}), id="mh-flags"),
    pytest.param("mh-port\nlvs_sched mh", lambda s: s.config.flags, frozenset({"mh-port"}),
                 id="flag-before-algorithm"),
    pytest.param("flag-1\nflag-3", lambda s: s.config.flags, frozenset({"flag-1", "flag-3"}), id="flag-n"),
    pytest.param("protocol UDP\nops", lambda s: s.config.ops, True, id="ops"),
])
def test_virtual_server_keys(body: str, get: Any, expected: Any) -> None:
    result = load(vs(body, rs=rs_block("")))
    assert result.warnings == ()
    assert get(result.config.services[0]) == expected


@pytest.mark.parametrize("method, expected", [
    pytest.param("NAT", FwdMethod.MASQ, id="nat"),
    pytest.param("DR", FwdMethod.DROUTE, id="dr"),
    pytest.param("TUN", FwdMethod.TUNNEL, id="tun"),
])
@pytest.mark.parametrize("key", ["lvs_method", "lb_kind"])
def test_forwarding_method(key: str, method: str, expected: FwdMethod) -> None:
    svc = service(f"{key} {method}", rs=rs_block(""))
    assert svc.dests[0].config.method == expected


def test_real_server_method_overrides_the_service_s() -> None:
    svc = service("lvs_method DR", rs=rs_block("lvs_method NAT", "10.0.1.1 8080") + rs_block("", "10.0.1.2"))
    assert [(d.config.method, d.config.dport) for d in svc.dests] == [
        (FwdMethod.MASQ, 8080), (FwdMethod.DROUTE, 80)]


def test_tunnel_options_are_a_warning() -> None:
    result = load(vs("lvs_method TUN type gue port 6080", rs=rs_block("")))
    assert result.config.services[0].dests[0].config.method == FwdMethod.TUNNEL
    assert "tunnel options" in messages(result)[0] and messages(result)[0].startswith("k.conf:2: lvs_method")
    assert load(vs("lvs_method TUN type ipip", rs=rs_block(""))).warnings == ()


def test_dr_real_server_port_must_equal_the_service_port() -> None:
    e = error(vs("lvs_method DR", rs=rs_block("weight 1", "10.0.1.1 8080")))
    assert e.where == Where("k.conf", 3, "real_server")
    assert "port 8080 differs from the service port 80" in str(e)


def test_dr_sorry_server_port_must_equal_the_service_port() -> None:
    e = error(vs("lvs_method DR\nsorry_server 10.0.9.9 81"))
    assert e.where == Where("k.conf", 3, "sorry_server") and "sorry server port 81" in str(e)


def test_nat_real_server_may_change_the_port() -> None:
    svc = service("", rs=rs_block("", "10.0.1.1 8080"))
    assert svc.dests[0].config.dport == 8080


def test_port_zero_needs_persistence() -> None:
    e = error(vs("", header="10.0.0.1"))
    assert e.where == Where("k.conf", 1, "virtual_server") and "port 0" in str(e)
    assert service("persistence_timeout 100", header="10.0.0.1").config.vport == 0


def test_ops_on_tcp_is_an_error() -> None:
    assert "ops" in str(error(vs("ops")))


@pytest.mark.parametrize("body, line, key, fragment", [
    pytest.param("lvs_sched nope", 2, "lvs_sched", "'nope' is not allowed (allowed: dh, fo, lblc",
                 id="bad-algo"),
    pytest.param("lvs_method FNAT", 2, "lvs_method", "allowed: NAT, DR, TUN", id="bad-method"),
    pytest.param("lvs_method NAT type ipip", 2, "lvs_method", "takes no options", id="nat-options"),
    pytest.param("lvs_method TUN bogus", 2, "lvs_method", "unknown tunnel option 'bogus'", id="bad-tunnel"),
    pytest.param("protocol SCTP", 2, "protocol", "SCTP services are not supported", id="sctp"),
    pytest.param("protocol ICMP", 2, "protocol", "allowed: TCP, UDP", id="bad-protocol"),
    pytest.param("ip_family inet6", 2, "ip_family", "IPv6", id="inet6"),
    pytest.param("persistence_timeout 0", 2, "persistence_timeout", "out of range (allowed: 1..",
                 id="pto-zero"),
    pytest.param("persistence_timeout x", 2, "persistence_timeout", "not a whole number", id="pto-text"),
    pytest.param("persistence_granularity 300.0.0.0", 2, "persistence_granularity", "not an IPv4",
                 id="bad-granularity"),
    pytest.param("delay_loop 0", 2, "delay_loop", "out of range", id="delay-zero"),
    pytest.param("delay_loop soon", 2, "delay_loop", "not a number of seconds", id="delay-text"),
    pytest.param("quorum 0", 2, "quorum", "out of range (allowed: 1..", id="quorum-zero"),
    pytest.param("hysteresis -1", 2, "hysteresis", "out of range (allowed: 0..", id="hysteresis-negative"),
    pytest.param("sorry_server_inhibit", 2, "sorry_server_inhibit", "without) sorry_server",
                 id="inhibit-first"),
    pytest.param("sorry_server 10.0.0.300 80", 2, "sorry_server", "not an IPv4 address", id="sorry-addr"),
    pytest.param("sorry_server 10.0.0.3 80 90", 2, "sorry_server", "expects 1 to 2 values", id="sorry-arity"),
    pytest.param("alpha maybe", 2, "alpha", "not a boolean", id="flag-value"),
    pytest.param("quorum_up \"\"", 2, "quorum_up", "empty script line", id="empty-script"),
    pytest.param("quorum_up \"/bin/x 'unbalanced\"", 2, "quorum_up", "cannot split", id="bad-script"),
    pytest.param("delay_loop 3 {\n}", 2, "delay_loop", "takes no { ... } block", id="stray-block"),
    pytest.param("flag-1 x", 2, "flag-1", "expects 0 values", id="flag-arity"),
    pytest.param("slow_start -1", 2, "slow_start", "out of range (allowed: >= 0 and <= 86400)",
                 id="slow_start-negative"),
    pytest.param("slow_start soon", 2, "slow_start", "not a number of seconds", id="slow_start-text"),
    pytest.param("failed_conns drop", 2, "failed_conns", "'drop' is not allowed (allowed: keep, expire)",
                 id="failed_conns-bad"),
    pytest.param("failed_conns reset", 2, "failed_conns", "'reset' is not available: the dataplane keeps "
                 "no TCP sequence numbers", id="failed_conns-reset"),
    pytest.param("failed_conns", 2, "failed_conns", "expects 1 value", id="failed_conns-arity"),
])
def test_virtual_server_errors(body: str, line: int, key: str, fragment: str) -> None:
    e = error(vs(body))
    assert e.where == Where("k.conf", line, key)
    assert fragment in e.message
    assert str(e).startswith(f"k.conf:{line}: {key}: ")


@pytest.mark.parametrize("header, fragment", [
    pytest.param("10.0.0.1 80 90", "expects 1 to 2 values", id="arity"),
    pytest.param("10.0.0.256 80", "not an IPv4 address", id="address"),
    pytest.param("fe80::1 80", "IPv6 is not supported", id="ipv6"),
    pytest.param("10.0.0.1 65536", "out of range (allowed: 0..65535)", id="port"),
    pytest.param("10.0.0.1 http", "not a whole number", id="port-name"),
    pytest.param("fwmark", "fwmark needs a number", id="fwmark-arity"),
    pytest.param("group", "group needs a name", id="group-arity"),
])
def test_virtual_server_header_errors(header: str, fragment: str) -> None:
    e = error(f"virtual_server {header} {{\n}}\n")
    assert e.where == Where("k.conf", 1, "virtual_server") and fragment in e.message


def test_virtual_server_needs_a_block() -> None:
    assert "expects a { ... } block" in str(error("virtual_server 10.0.0.1 80\n"))


def test_duplicate_service_is_an_error() -> None:
    e = error(vs("") + vs(""))
    assert e.where == Where("k.conf", 4, "virtual_server") and "already defined at k.conf:1" in str(e)


def test_same_address_port_different_protocol_is_two_services() -> None:
    result = load(vs("protocol TCP") + vs("protocol UDP"))
    assert [s.config.proto for s in result.config.services] == [Proto.TCP, Proto.UDP]


@pytest.mark.parametrize("flag, algo", [
    pytest.param("sh-port", "wlc", id="sh-on-wlc"),
    pytest.param("mh-fallback", "sh", id="mh-on-sh"),
])
def test_flag_for_another_algorithm_is_a_warning(flag: str, algo: str) -> None:
    result = load(vs(f"lvs_sched {algo}\n{flag}"))
    assert result.config.services[0].config.flags == frozenset()
    (w,) = messages(result)
    assert w.startswith(f"k.conf:3: {flag}: warning: {flag} only applies to the")


@pytest.mark.parametrize("keyword", ["ha_suspend", "smtp_alert", "hashed", "persistence_engine sip",
                                     "sorry_server_lvs_method DR", "weight 5", "snmp_name x"])
def test_unsupported_virtual_server_keys_warn(keyword: str) -> None:
    result = load(vs(keyword))
    key = keyword.split()[0]
    assert messages(result) == [f"k.conf:2: {key}: warning: {key}: not supported by ulvs; ignored"]


def test_unknown_keyword_warns_with_its_line_and_block_is_skipped() -> None:
    result = load(vs("frobnicate 1\nwidget {\n  a 1\n  b { c }\n}\nlvs_sched rr"))
    assert result.config.services[0].config.sched == "rr"
    assert messages(result) == [
        "k.conf:2: frobnicate: warning: unknown keyword 'frobnicate' in virtual_server; ignored",
        "k.conf:3: widget: warning: unknown keyword 'widget' in virtual_server; block skipped",
    ]


# ==========================================================================================
# real_server
# ==========================================================================================


@pytest.mark.parametrize("body, get, expected", [
    pytest.param("weight 0", lambda d: d.config.weight, 0, id="weight-zero"),
    pytest.param("weight 65535", lambda d: d.config.weight, 65535, id="weight-max"),
    pytest.param("uthreshold 100", lambda d: d.config.u_threshold, 100, id="uthreshold"),
    pytest.param("lthreshold 10", lambda d: d.config.l_threshold, 10, id="lthreshold"),
    pytest.param("inhibit_on_failure", lambda d: d.inhibit_on_failure, True, id="inhibit"),
    pytest.param("inhibit_on_failure off", lambda d: d.inhibit_on_failure, False, id="inhibit-off"),
    pytest.param("", lambda d: d.inhibit_on_failure, None, id="inhibit-unset"),
    pytest.param('notify_up "/usr/bin/up.sh $ARG"', lambda d: d.notify_up, ("/usr/bin/up.sh", "$ARG"),
                 id="notify_up"),
    pytest.param("notify_down /usr/bin/down.sh", lambda d: d.notify_down, ("/usr/bin/down.sh",),
                 id="notify_down"),
])
def test_real_server_keys(body: str, get: Any, expected: Any) -> None:
    result = load(vs("", rs=rs_block(body)))
    assert result.warnings == ()
    dest = result.config.services[0].dests[0]
    assert get(dest) == expected
    assert dest.where == Where("k.conf", 3, "real_server")


@pytest.mark.parametrize("body, key, fragment", [
    pytest.param("weight 65536", "weight", "out of range (allowed: 0..65535)", id="weight-high"),
    pytest.param("weight -1", "weight", "out of range (allowed: 0..65535)", id="weight-negative"),
    pytest.param("uthreshold 70000", "uthreshold", "out of range (allowed: 0..65535)", id="uthreshold"),
    pytest.param("lvs_method XX", "lvs_method", "allowed: NAT, DR, TUN", id="method"),
])
def test_real_server_errors(body: str, key: str, fragment: str) -> None:
    e = error(vs("", rs=rs_block(body)))
    assert e.where == Where("k.conf", 4, key) and fragment in e.message


def test_real_server_without_port_uses_the_service_port_and_block_is_optional() -> None:
    svc = service("", header="10.0.0.1 443", rs="real_server 10.0.1.1\n")
    assert (svc.dests[0].config.daddr, svc.dests[0].config.dport) == (A("10.0.1.1"), 443)


def test_duplicate_real_server_is_an_error() -> None:
    e = error(vs("", rs=rs_block("") + rs_block("")))
    assert e.where == Where("k.conf", 6, "real_server") and "already defined at k.conf:3" in str(e)


def test_real_server_unsupported_and_unknown_keys_warn() -> None:
    result = load(vs("", rs=rs_block("smtp_alert\nBFD_CHECK {\n name x\n}\nbogus 1")))
    assert messages(result) == [
        "k.conf:4: smtp_alert: warning: smtp_alert: not supported by ulvs; ignored",
        "k.conf:5: BFD_CHECK: warning: BFD_CHECK: not supported by ulvs; block skipped",
        "k.conf:8: bogus: warning: unknown keyword 'bogus' in real_server; ignored",
    ]


def test_dest_order_is_the_file_order() -> None:
    rs = "".join(rs_block("", f"10.0.1.{i} 80") for i in (3, 1, 2))
    assert [str(d.config.daddr) for d in service("", rs=rs).dests] == ["10.0.1.3", "10.0.1.1", "10.0.1.2"]


# ==========================================================================================
# Checkers
# ==========================================================================================


def test_every_checker_key_has_a_converter() -> None:
    nanny_only = CHECK_KEYS["NANNY"] - CHECK_KEYS["TCP_CHECK"]
    keys = set().union(*(v for k, v in CHECK_KEYS.items() if k != "NANNY")) - {"url"}
    assert keys <= set(CHECK_CONVERTERS)
    assert not nanny_only & set(CHECK_CONVERTERS)
    assert set(URL_CONVERTERS) == URL_KEYS


COMMON = """connect_ip 10.0.2.1
connect_port 8080
bindto 10.0.0.5
bind_port 5000
bind_if eth1
fwmark 7
connect_timeout 2.5
retry 4
delay_before_retry 1
warmup 5
delay_loop 10
alpha
log_all_failures"""
COMMON_OPTIONS = {"connect_ip": "10.0.2.1", "connect_port": 8080, "bindto": "10.0.0.5", "bind_port": 5000,
                  "bind_if": "eth1", "fwmark": 7, "connect_timeout": 2.5, "retry": 4,
                  "delay_before_retry": 1, "warmup": 5, "delay_loop": 10, "alpha": True,
                  "log_all_failures": True}


@pytest.mark.parametrize("kind", ["TCP_CHECK", "SMTP_CHECK", "DNS_CHECK", "UDP_CHECK", "PING_CHECK"])
def test_common_checker_keys_are_typed(kind: str) -> None:
    check = checker(f"{kind} {{\n{COMMON}\n}}")
    assert check.kind == kind
    assert check.as_dict() == COMMON_OPTIONS
    assert [k for k, _ in check.options] == sorted(COMMON_OPTIONS)
    assert check.where == Where("k.conf", 4, kind)


def test_http_get_with_repeated_urls() -> None:
    check = checker("""HTTP_GET {
    url {
        path /healthz
        digest 9B3A0C85A887A256D6939DA88AABD8CD
        status_code 200
    }
    url {
        path "/a b"
        status_code 200-299,301
        virtualhost www.example.com
        regex "^OK"
        regex_no_match
        regex_options caseless multiline
        regex_min_offset 0
        regex_max_offset 100
    }
    http_protocol 1.1
    virtualhost example.com
    fast_recovery
}""")
    assert check.kind == "HTTP_GET"
    assert check.as_dict() == {
        "url": ({"path": "/healthz", "digest": "9b3a0c85a887a256d6939da88aabd8cd", "status_code": 200},
                {"path": "/a b", "status_code": "200-299,301", "virtualhost": "www.example.com",
                 "regex": "^OK", "regex_no_match": True, "regex_options": "caseless multiline",
                 "regex_min_offset": 0, "regex_max_offset": 100}),
        "http_protocol": "1.1", "virtualhost": "example.com", "fast_recovery": True,
    }


def test_ssl_get_keys() -> None:
    check = checker("SSL_GET {\nurl {\npath /\n}\nenable_sni\nsni_name api.example.com\ntls_compliant\n"
                    "http_protocol 1.0C\n}")
    assert check.as_dict() == {"url": ({"path": "/"},), "enable_sni": True, "sni_name": "api.example.com",
                               "tls_compliant": True, "http_protocol": "1.0C"}


@pytest.mark.parametrize("body, expected", [
    pytest.param("SMTP_CHECK {\nhelo_name mail.example.com\n}", {"helo_name": "mail.example.com"}, id="smtp"),
    pytest.param("DNS_CHECK {\ntype MX\nname example.com.\n}", {"type": "MX", "name": "example.com."},
                 id="dns"),
    pytest.param("UDP_CHECK {\npayload 00FF10\nrequire_reply 0a0b\nmin_reply_length 2\n"
                 "max_reply_length 100\n}",
                 {"payload": "00ff10", "require_reply": "0a0b", "min_reply_length": 2,
                  "max_reply_length": 100},
                 id="udp"),
    pytest.param("UDP_CHECK {\nrequire_reply\n}", {"require_reply": True}, id="udp-any-reply"),
    pytest.param("PING_CHECK {\n}", {}, id="ping"),
    pytest.param('MISC_CHECK {\nmisc_path "/usr/bin/check.sh 10.0.1.1 \'x y\'"\n'
                 'misc_timeout 5\nmisc_dynamic\n'
                 "user nobody nogroup\nwarmup 2\n}",
                 {"misc_path": "/usr/bin/check.sh 10.0.1.1 'x y'", "misc_timeout": 5, "misc_dynamic": True,
                  "user": "nobody nogroup", "warmup": 2}, id="misc"),
    pytest.param("MISC_CHECK {\nmisc_path /usr/bin/check.sh \"a b\"\n}",
                 {"misc_path": "/usr/bin/check.sh 'a b'"}, id="misc-words"),
    pytest.param("FILE_CHECK {\ntrack_file health\ndynamic\nweight -10\n}",
                 {"track_file": "health", "dynamic": True, "weight": -10}, id="file"),
])
def test_checker_kinds(body: str, expected: dict[str, Any]) -> None:
    assert checker(body).as_dict() == expected


@pytest.mark.parametrize("body, line, key, fragment", [
    pytest.param("TCP_CHECK {\nhelo_name x\n}", 5, "helo_name",
                 "TCP_CHECK: unknown key (allowed: alpha, bind_if",
                 id="key-of-another-kind"),
    pytest.param("TCP_CHECK {\nconect_timeout 3\n}", 5, "conect_timeout", "unknown key", id="misspelt"),
    pytest.param("TCP_CHECK {\nconnect_port 70000\n}", 5, "connect_port", "allowed: 0..65535", id="port"),
    pytest.param("TCP_CHECK {\nconnect_ip 10.1\n}", 5, "connect_ip", "not an IPv4", id="connect-ip"),
    pytest.param("TCP_CHECK {\nconnect_timeout 0\n}", 5, "connect_timeout", "out of range",
                 id="timeout-zero"),
    pytest.param("TCP_CHECK {\nretry many\n}", 5, "retry", "not a whole number", id="retry"),
    pytest.param("DNS_CHECK {\ntype PTR\n}", 5, "type", "allowed: A, NS, CNAME, SOA, MX, TXT, AAAA",
                 id="dns-type"),
    pytest.param("UDP_CHECK {\npayload xyz\n}", 5, "payload", "not hex bytes", id="payload"),
    pytest.param("HTTP_GET {\nhttp_protocol 2\nurl {\npath /\n}\n}", 5, "http_protocol",
                 "allowed: 1.0, 1.0C, 1.1",
                 id="http-protocol"),
    pytest.param("HTTP_GET {\nconnect_timeout 3\n}", 4, "HTTP_GET", "needs at least one url", id="no-url"),
    pytest.param("HTTP_GET {\nurl {\nstatus_code 200\n}\n}", 5, "url", "needs a path", id="url-path"),
    pytest.param("HTTP_GET {\nurl {\npath /\nstatus_code ok\n}\n}", 7, "status_code", "not an HTTP status",
                 id="status"),
    pytest.param("HTTP_GET {\nurl {\npath /\nbody x\n}\n}", 7, "body", "unknown url key (allowed: digest",
                 id="url-key"),
    pytest.param("MISC_CHECK {\nmisc_timeout 3\n}", 4, "MISC_CHECK", "needs misc_path", id="misc-path"),
    pytest.param("FILE_CHECK {\ndynamic\n}", 4, "FILE_CHECK", "needs track_file", id="file-name"),
    pytest.param("TCP_CHECK x {\n}", 4, "TCP_CHECK", "expects 0 values", id="checker-arity"),
])
def test_checker_errors(body: str, line: int, key: str, fragment: str) -> None:
    e = error(vs("", rs=rs_block(body)))
    assert e.where == Where("k.conf", line, key) and fragment in e.message


def test_checker_alias_and_unsupported_keys_warn() -> None:
    result = load(vs("", rs=rs_block("TCP_CHECK {\nnb_get_retry 2\nsmtp_alert\n}\n"
                                     "HTTP_GET {\nurl {\npath /\nregex_stack\n}\n}")))
    checks = result.config.services[0].dests[0].checks
    assert checks[0].as_dict() == {"retry": 2}
    assert messages(result) == [
        "k.conf:5: nb_get_retry: warning: nb_get_retry is an old name of retry; read as retry",
        "k.conf:6: smtp_alert: warning: smtp_alert: not supported by ulvs; ignored",
        "k.conf:11: regex_stack: warning: regex_stack: not supported by ulvs; ignored",
    ]


def test_several_checkers_per_real_server_keep_their_order() -> None:
    svc = service("", rs=rs_block("TCP_CHECK {\n}\nPING_CHECK {\n}\nTCP_CHECK {\nconnect_port 81\n}"))
    assert [(c.kind, c.as_dict()) for c in svc.dests[0].checks] == [
        ("TCP_CHECK", {}), ("PING_CHECK", {}), ("TCP_CHECK", {"connect_port": 81})]


def test_timing_cascades_into_checkers_that_accept_it_and_do_not_set_it() -> None:
    svc = service("connect_timeout 7\nretry 2\ndelay_before_retry 4\nwarmup 1",
                  rs=rs_block("retry 5\ndelay_loop 30\nalpha\nvirtualhost rs.example.com\n"
                              "TCP_CHECK {\nconnect_timeout 1\n}\n"
                              "HTTP_GET {\nurl {\npath /\n}\n}\n"
                              "MISC_CHECK {\nmisc_path /bin/true\n}\n"))
    tcp, http, misc = svc.dests[0].checks
    assert tcp.as_dict() == {"connect_timeout": 1, "retry": 5, "delay_before_retry": 4, "warmup": 1,
                             "delay_loop": 30, "alpha": True}
    assert http.as_dict() == {"url": ({"path": "/"},), "connect_timeout": 7, "retry": 5,
                              "delay_before_retry": 4, "warmup": 1, "delay_loop": 30, "alpha": True,
                              "virtualhost": "rs.example.com"}
    assert misc.as_dict() == {"misc_path": "/bin/true", "warmup": 1, "delay_loop": 30, "alpha": True}
    assert svc.delay_loop == 60.0


# ==========================================================================================
# virtual_server_group and fwmark
# ==========================================================================================


def test_group_becomes_a_service_group_with_expanded_members() -> None:
    text = """virtual_server_group WEB {
    10.0.0.1 80
    10.0.0.1 443
    10.0.0.10-12 80
    10.0.0.20-10.0.0.21 8080
    10.0.1.0/31 80
}
virtual_server group WEB {
    lvs_sched rr
    real_server 10.0.9.1 {
    }
}
"""
    result = load(text)
    assert result.warnings == ()
    (svc,) = result.config.services
    cfg = svc.config
    assert (cfg.proto, cfg.fwmark, cfg.sched, svc.name) == (Proto.FWM, 1, "rr", "WEB")
    assert [(m[0], str(m[1]), m[2]) for m in cfg.members] == [
        (Proto.TCP, "10.0.0.1", 80), (Proto.TCP, "10.0.0.1", 443), (Proto.TCP, "10.0.0.10", 80),
        (Proto.TCP, "10.0.0.11", 80), (Proto.TCP, "10.0.0.12", 80), (Proto.TCP, "10.0.0.20", 8080),
        (Proto.TCP, "10.0.0.21", 8080), (Proto.TCP, "10.0.1.0", 80), (Proto.TCP, "10.0.1.1", 80)]
    assert svc.dests[0].config.dport == 0


def test_group_members_take_the_virtual_server_s_protocol() -> None:
    text = "virtual_server_group G {\n10.0.0.1 53\n}\nvirtual_server group G {\nprotocol UDP\nops\n}\n"
    (svc,) = load(text).config.services
    assert svc.config.members == ((Proto.UDP, A("10.0.0.1"), 53),) and svc.config.ops


def test_group_fwmark_entry_numbers_the_group_and_warns() -> None:
    text = "virtual_server_group G {\n10.0.0.1 80\nfwmark 42\n}\nvirtual_server group G {\n}\n"
    result = load(text)
    assert result.config.services[0].config.fwmark == 42
    assert messages(result) == ["k.conf:3: fwmark: warning: fwmark 42: ulvs does not match netfilter marks; "
                                "the group's address entries are served as service group 42"]


def test_groups_are_numbered_in_order_skipping_explicit_numbers() -> None:
    text = ("virtual_server_group A {\n10.0.0.1 80\n}\n"
            "virtual_server_group B {\n10.0.0.2 80\nfwmark 2\n}\n"
            "virtual_server_group C {\n10.0.0.3 80\n}\n"
            "virtual_server group A {\n}\nvirtual_server group B {\n}\nvirtual_server group C {\n}\n"
            "virtual_server group A {\nprotocol UDP\n}\n")
    marks = [(s.name, s.config.fwmark) for s in load(text).config.services]
    assert marks == [("A", 1), ("B", 2), ("C", 3), ("A", 4)]


def test_group_may_be_defined_after_its_virtual_server() -> None:
    text = "virtual_server group G {\n}\nvirtual_server_group G {\n10.0.0.1 80\n}\n"
    assert load(text).config.services[0].config.members == ((Proto.TCP, A("10.0.0.1"), 80),)


@pytest.mark.parametrize("text, line, key, fragment", [
    pytest.param("virtual_server fwmark 5 {\n}\n", 1, "virtual_server", "does not see netfilter marks",
                 id="bare-fwmark"),
    pytest.param("virtual_server group NOPE {\n}\n", 1, "virtual_server", "'NOPE' is not defined",
                 id="undefined"),
    pytest.param("virtual_server_group G {\nfwmark 1\n}\n", 1, "virtual_server_group",
                 "needs IP PORT entries",
                 id="only-fwmark"),
    pytest.param("virtual_server_group G {\n10.0.0.1 80\nfwmark 1\nfwmark 2\n}\n", 4, "fwmark",
                 "at most one fwmark", id="two-fwmarks"),
    pytest.param("virtual_server_group G {\n10.0.0.1 80\nfwmark 1 inet6\n}\n", 3, "fwmark", "only inet",
                 id="fwmark-family"),
    pytest.param("virtual_server_group G {\n10.0.0.5-4 80\n}\n", 2, "10.0.0.5-4", "not above its start",
                 id="range-backwards"),
    pytest.param("virtual_server_group G {\n10.0.0.1/24 80\n}\n", 2, "10.0.0.1/24", "host bits zero",
                 id="cidr"),
    pytest.param("virtual_server_group G {\n10.0.0.0/16 80\n}\n", 2, "10.0.0.0/16", "expands to 65536",
                 id="too-many"),
    pytest.param("virtual_server_group G {\n10.0.0.1 80 90\n}\n", 2, "10.0.0.1", "expects 0 to 1",
                 id="arity"),
    pytest.param("virtual_server_group G {\n10.0.0.1 80\n}\nvirtual_server_group G {\n10.0.0.2 80\n}\n", 4,
                 "virtual_server_group", "already defined at k.conf:1", id="duplicate"),
    pytest.param("virtual_server_group G {\n10.0.0.1 80\n10.0.0.1 80\n}\nvirtual_server group G {\n}\n", 3,
                 "10.0.0.1", "listed twice", id="duplicate-member"),
    pytest.param("virtual_server_group G {\n10.0.0.1 80\nfwmark 3\n}\nvirtual_server group G {\n}\n"
                 "virtual_server group G {\nprotocol UDP\n}\n", 7, "virtual_server", "already used",
                 id="mark-reuse"),
])
def test_group_errors(text: str, line: int, key: str, fragment: str) -> None:
    e = error(text)
    assert e.where == Where("k.conf", line, key) and fragment in e.message


# ==========================================================================================
# VRRP
# ==========================================================================================


def test_vrrp_instance_keys() -> None:
    inst = instance("""state MASTER
priority 200
advert_int 2
version 3
nopreempt
preempt_delay 30
virtual_ipaddress {
    10.0.0.100/24 dev eth0
    10.0.0.101
}
unicast_src_ip 10.0.0.2
unicast_peer {
    10.0.0.3
    10.0.0.4
}
track_interface {
    eth1
    eth2
}
notify_master "/bin/notify.sh master"
notify_backup /bin/notify.sh backup
notify_fault "/bin/notify.sh fault"
garp_master_delay 10
garp_master_repeat 3
lower_prio_no_advert
higher_prio_send_advert true""")
    assert inst == VrrpInstance(
        "VI_1", "eth0", 51, priority=200, advert_int=2.0, state="MASTER", version=3, preempt=False,
        preempt_delay=30.0,
        virtual_addresses=(VirtualAddress(ipaddress.IPv4Interface("10.0.0.100/24"), "eth0"),
                           VirtualAddress(ipaddress.IPv4Interface("10.0.0.101/32"), None)),
        unicast_src_ip=A("10.0.0.2"), unicast_peers=(A("10.0.0.3"), A("10.0.0.4")),
        track_interfaces=("eth1", "eth2"), notify_master=("/bin/notify.sh", "master"),
        notify_backup=("/bin/notify.sh", "backup"), notify_fault=("/bin/notify.sh", "fault"),
        garp_master_delay=10.0, garp_master_repeat=3, lower_prio_no_advert=True,
        higher_prio_send_advert=True)
    assert inst.where == Where("k.conf", 1, "vrrp_instance")


def test_vrrp_defaults_follow_keepalived() -> None:
    inst = instance("")
    assert (inst.priority, inst.advert_int, inst.state, inst.version, inst.preempt) == (
        100, 1.0, "BACKUP", 2, True)
    assert inst.garp_master_delay == 5.0
    assert (inst.garp_master_repeat, inst.min_garp, inst.lower_prio_no_advert,
            inst.higher_prio_send_advert) == (5, False, False, False)


def test_vrrp_global_defaults() -> None:
    inst = instance("advert_int 0.5", extra="global_defs {\nvrrp_version 3\nvrrp_garp_master_delay 1\n}\n")
    assert (inst.version, inst.advert_int, inst.garp_master_delay) == (3, 0.5, 1.0)
    assert instance("version 2", extra="global_defs {\nvrrp_version 3\n}\n").version == 2


@pytest.mark.parametrize("body, line, key, fragment", [
    pytest.param("virtual_router_id 0", 4, "virtual_router_id", "allowed: 1..255", id="vrid-zero"),
    pytest.param("virtual_router_id 256", 4, "virtual_router_id", "allowed: 1..255", id="vrid-high"),
    pytest.param("priority 0", 4, "priority", "allowed: 1..255", id="priority-zero"),
    pytest.param("priority 256", 4, "priority", "allowed: 1..255", id="priority-high"),
    pytest.param("advert_int 0", 4, "advert_int", "out of range", id="advert-zero"),
    pytest.param("version 3\nadvert_int 41", 5, "advert_int", "VRRPv3 (allowed: > 0 and <= 40.95)",
                 id="v3-advert"),
    pytest.param("advert_int 1.5", 4, "advert_int", "VRRPv2 (allowed: whole seconds 1..255)",
                 id="v2-fraction"),
    pytest.param("advert_int 256", 4, "advert_int", "VRRPv2", id="v2-high"),
    pytest.param("version 4", 4, "version", "allowed: 2..3", id="version"),
    pytest.param("state ACTIVE", 4, "state", "allowed: MASTER, BACKUP", id="state"),
    pytest.param("preempt_delay 1001", 4, "preempt_delay", "out of range", id="preempt-delay"),
    pytest.param("unicast_src_ip 10.0.0", 4, "unicast_src_ip", "not an IPv4", id="src-ip"),
    pytest.param("unicast_peer {\n10.0.0.x\n}", 5, "10.0.0.x", "not an IPv4", id="peer"),
    pytest.param("virtual_ipaddress {\n10.0.0.1/33\n}", 5, "10.0.0.1/33", "not an IPv4 address[/prefix",
                 id="vip"),
    pytest.param("virtual_ipaddress {\nfe80::1/64\n}", 5, "fe80::1/64", "IPv6", id="vip-v6"),
    pytest.param("virtual_ipaddress {\n10.0.0.1 dev\n}", 5, "10.0.0.1", "dev needs an interface",
                 id="vip-dev"),
    pytest.param("virtual_ipaddress 10.0.0.1", 4, "virtual_ipaddress", "expects 0 values", id="vip-inline"),
    pytest.param("nopreempt yes", 4, "nopreempt", "expects 0 values", id="nopreempt-arity"),
])
def test_vrrp_errors(body: str, line: int, key: str, fragment: str) -> None:
    e = error(f"vrrp_instance VI_1 {{\n{VRRP_MIN}{body}\n}}\n")
    assert e.where == Where("k.conf", line, key) and fragment in e.message


@pytest.mark.parametrize("body, fragment", [
    pytest.param("virtual_router_id 5", "needs an interface", id="no-interface"),
    pytest.param("interface eth0", "needs a virtual_router_id", id="no-vrid"),
])
def test_vrrp_required_keys(body: str, fragment: str) -> None:
    e = error(f"vrrp_instance VI_1 {{\n{body}\n}}\n")
    assert e.where == Where("k.conf", 1, "vrrp_instance") and fragment in e.message


def test_vrrp_duplicates() -> None:
    one = f"vrrp_instance VI_1 {{\n{VRRP_MIN}}}\n"
    e = error(one + one)
    assert e.where == Where("k.conf", 5, "vrrp_instance") and "already defined at k.conf:1" in str(e)
    e = error(one + one.replace("VI_1", "VI_2"))
    assert "virtual_router_id 51 on eth0 is already used" in str(e)
    other_if = one.replace("VI_1", "VI_2").replace("eth0", "eth1")
    assert len(load(one + other_if).config.vrrp) == 2


def test_vrrp_warnings() -> None:
    result = load(f"""vrrp_instance VI_1 {{
{VRRP_MIN}state MASTER
nopreempt
authentication {{
    auth_type PASS
    auth_pass secret
}}
virtual_ipaddress {{
    10.0.0.1/24 dev eth0 label eth0:1 no_track
}}
virtual_ipaddress_excluded {{
    10.0.0.2
}}
unicast_peer {{
    10.0.0.3 min_ttl 250
}}
track_interface {{
    eth1 weight -20
}}
track_script {{
    chk
}}
foo_bar 1
}}
""")
    assert messages(result) == [
        "k.conf:6: authentication: warning: authentication: not supported by ulvs; block skipped",
        "k.conf:11: 10.0.0.1/24: warning: 10.0.0.1/24: address option 'label' is not supported by ulvs; "
        "ignored",
        "k.conf:11: 10.0.0.1/24: warning: 10.0.0.1/24: address option 'no_track' is not supported by ulvs; "
        "ignored",
        "k.conf:13: virtual_ipaddress_excluded: warning: virtual_ipaddress_excluded: not supported by ulvs; "
        "block skipped",
        "k.conf:17: 10.0.0.3: warning: unicast_peer 10.0.0.3: options 'min_ttl 250' are not supported by "
        "ulvs; ignored",
        "k.conf:20: eth1: warning: track_interface eth1: weights are not supported by ulvs (a tracked "
        "interface going down means FAULT); ignored",
        "k.conf:22: track_script: warning: track_script: not supported by ulvs; block skipped",
        "k.conf:25: foo_bar: warning: unknown keyword 'foo_bar' in vrrp_instance; ignored",
        "k.conf:5: nopreempt: warning: vrrp_instance VI_1: nopreempt/preempt_delay only work with state "
        "BACKUP",
    ]
    (inst,) = result.config.vrrp
    assert [str(a.address) for a in inst.virtual_addresses] == ["10.0.0.1/24"]
    assert inst.unicast_peers == (A("10.0.0.3"),) and inst.track_interfaces == ("eth1",)


SYNC = f"""vrrp_instance VI_1 {{
{VRRP_MIN}}}
vrrp_instance VI_2 {{
interface eth1
virtual_router_id 52
}}
"""


def test_vrrp_sync_group() -> None:
    result = load(SYNC + "vrrp_sync_group VG {\n group {\n  VI_1\n  VI_2\n }\n notify_master /bin/x\n}\n")
    (group,) = result.config.vrrp_sync_groups
    assert (group.name, group.members) == ("VG", ("VI_1", "VI_2"))
    assert group.where == Where("k.conf", 9, "vrrp_sync_group")
    assert messages(result) == [
        "k.conf:14: notify_master: warning: notify_master: not supported by ulvs; ignored"]


def test_vrrp_sync_group_may_come_first_and_list_several_per_line() -> None:
    result = load("vrrp_sync_group VG {\n group { VI_1 VI_2 }\n}\n" + SYNC)
    assert result.config.vrrp_sync_groups[0].members == ("VI_1", "VI_2")


@pytest.mark.parametrize("text, line, key, fragment", [
    pytest.param("vrrp_sync_group VG {\n group {\n  VI_1\n  VI_9\n }\n}\n", 4, "group",
                 "no vrrp_instance named 'VI_9' (defined: VI_1, VI_2)", id="undefined-member"),
    pytest.param("vrrp_sync_group VG {\n group {\n  VI_1\n  VI_1\n }\n}\n", 4, "VI_1", "listed twice",
                 id="twice"),
    pytest.param("vrrp_sync_group VG {\n}\n", 1, "vrrp_sync_group", "needs a group", id="empty"),
    pytest.param("vrrp_sync_group A {\n group {\n VI_1\n VI_2\n }\n}\n"
                 "vrrp_sync_group B {\n group {\n VI_1\n }\n}\n",
                 9, "group", "already in vrrp_sync_group A", id="two-groups"),
])
def test_vrrp_sync_group_errors(text: str, line: int, key: str, fragment: str) -> None:
    e = error(SYNC + text)
    assert e.where == Where("k.conf", line + 8, key) and fragment in e.message


def test_single_member_sync_group_warns() -> None:
    result = load(SYNC + "vrrp_sync_group VG {\n group {\n  VI_1\n }\n}\n")
    assert messages(result) == [
        "k.conf:9: vrrp_sync_group: warning: vrrp_sync_group VG has only one instance"]


# ==========================================================================================
# global_defs
# ==========================================================================================


def globals_(body: str, extra: str = SYNC) -> LoadResult:
    return load(f"global_defs {{\n{body}\n}}\n{extra}")


@pytest.mark.parametrize("line, expected", [
    pytest.param("lvs_sync_daemon eth1", SyncSettings("eth1", None, 0), id="interface-only"),
    pytest.param("lvs_sync_daemon eth1 VI_2", SyncSettings("eth1", "VI_2", 52), id="id-is-the-vrid"),
    pytest.param("lvs_sync_daemon eth1 inst VI_1 id 7", SyncSettings("eth1", "VI_1", 7), id="inst-keyword"),
    pytest.param("lvs_sync_daemon eth1 VI_1 id 9 port 9000 group 239.1.1.1",
                 SyncSettings("eth1", "VI_1", 9, 9000, A("239.1.1.1")), id="all-options"),
    pytest.param("lvs_sync_daemon eth1 id 3", SyncSettings("eth1", None, 3), id="id-without-instance"),
])
def test_lvs_sync_daemon(line: str, expected: SyncSettings) -> None:
    result = globals_(line)
    assert result.config.sync == expected and result.warnings == ()


def test_lvs_sync_daemon_unsupported_options_warn() -> None:
    result = globals_("lvs_sync_daemon eth1 VI_1 maxlen 1500 ttl 2")
    assert result.config.sync == SyncSettings("eth1", "VI_1", 51)
    assert [w.message for w in result.warnings] == [
        "lvs_sync_daemon maxlen is not supported by ulvs; ignored",
        "lvs_sync_daemon ttl is not supported by ulvs; ignored"]


@pytest.mark.parametrize("line, fragment", [
    pytest.param("lvs_sync_daemon eth1 VI_7", "no vrrp_instance named 'VI_7'", id="undefined-instance"),
    pytest.param("lvs_sync_daemon eth1 VI_1 id 256", "allowed: 0..255", id="id-range"),
    pytest.param("lvs_sync_daemon eth1 VI_1 port", "port needs a value", id="missing-value"),
    pytest.param("lvs_sync_daemon eth1 VI_1 group 239.1.1.1 weird 1", "unknown option 'weird'", id="unknown"),
    pytest.param("lvs_sync_daemon eth1 inst", "inst needs", id="inst-alone"),
    pytest.param("lvs_sync_daemon eth1 group 10.0.0.1", "not a multicast address", id="group-unicast"),
])
def test_lvs_sync_daemon_errors(line: str, fragment: str) -> None:
    e = error(f"global_defs {{\n{line}\n}}\n{SYNC}")
    assert e.where == Where("k.conf", 2, "lvs_sync_daemon") and fragment in e.message


def test_legacy_instance_sync_interface() -> None:
    result = load(f"vrrp_instance VI_1 {{\n{VRRP_MIN}lvs_sync_daemon_interface eth9\n}}\n")
    assert result.config.sync == SyncSettings("eth9", "VI_1", 51)
    legacy = f"vrrp_instance VI_1 {{\n{VRRP_MIN}lvs_sync_daemon_interface eth9\n}}\n"
    result = globals_("lvs_sync_daemon eth1", legacy)
    assert result.config.sync == SyncSettings("eth1", None, 0)
    assert "overridden by global_defs lvs_sync_daemon" in result.warnings[0].message


def test_global_defs_keys_and_warnings() -> None:
    result = globals_("""router_id LVS_A
lvs_timeouts tcp 7200 udp 60
notification_email {
    ops@example.com
}
smtp_server 127.0.0.1
vrrp_strict
mystery_key 1""", extra="")
    assert result.config.router_id == "LVS_A"
    assert result.config.timeouts == Timeouts(tcp=7200, tcpfin=120, udp=60)
    assert messages(result) == [
        "k.conf:4: notification_email: warning: notification_email: accepted but not used by ulvs; "
        "block skipped",
        "k.conf:7: smtp_server: warning: smtp_server: accepted but not used by ulvs; ignored",
        "k.conf:8: vrrp_strict: warning: vrrp_strict: accepted but not used by ulvs; ignored",
        "k.conf:9: mystery_key: warning: unknown keyword 'mystery_key' in global_defs; ignored",
    ]
    assert globals_("lvs_id OLD", extra="").config.router_id == "OLD"


@pytest.mark.parametrize("line, key, fragment", [
    pytest.param("lvs_timeouts tcp", "lvs_timeouts", "expects 2 to 6 values", id="timeouts-arity"),
    pytest.param("lvs_timeouts tcp 0", "lvs_timeouts", "allowed: 1..", id="timeouts-zero"),
    pytest.param("lvs_timeouts sctp 10", "lvs_timeouts", "pairs NAME SECONDS", id="timeouts-name"),
    pytest.param("vrrp_version 1", "vrrp_version", "allowed: 2..3", id="version"),
    pytest.param("router_id", "router_id", "expects 1 value", id="router-id"),
])
def test_global_defs_errors(line: str, key: str, fragment: str) -> None:
    e = error(f"global_defs {{\n{line}\n}}\n")
    assert e.where == Where("k.conf", 2, key) and fragment in e.message


def test_top_level_unsupported_and_unknown() -> None:
    result = load("""static_ipaddress {
    10.9.9.9/24 dev eth0
}
vrrp_script chk {
    script "/bin/true"
}
@LVS_B router_id X
frob {
}
""")
    assert messages(result) == [
        "k.conf:1: static_ipaddress: warning: static_ipaddress: not supported by ulvs; block skipped",
        "k.conf:4: vrrp_script: warning: vrrp_script: not supported by ulvs; block skipped",
        "k.conf:7: @LVS_B: warning: @LVS_B: conditional configuration and parameter definitions are not "
        "supported by ulvs; ignored",
        "k.conf:8: frob: warning: unknown keyword 'frob' in the top level; block skipped",
    ]


# ==========================================================================================
# Whole documents
# ==========================================================================================

# REFERENCE.md (g), verbatim.
REFERENCE_EXAMPLE = """\
global_defs {
    router_id LVS_A
    lvs_sync_daemon eth1 VI_1 id 51
}
vrrp_instance VI_1 {
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority 150
    advert_int 1
    unicast_src_ip 192.168.200.2
    unicast_peer {
        192.168.200.3
    }
    virtual_ipaddress {
        192.168.200.16/24 dev eth0
    }
}
# NAT: add a second instance holding the RS default gateway (e.g. 192.168.201.254 on eth1, VRID 52)
# and put both in one vrrp_sync_group so they fail over together.
virtual_server 192.168.200.16 80 {
    delay_loop 6
    lvs_sched wlc
    lvs_method NAT
    protocol TCP
    sorry_server 192.168.201.200 80
    real_server 192.168.201.100 80 {
        weight 1
        inhibit_on_failure
        HTTP_GET {
            url {
                path /healthz
                status_code 200
            }
            connect_timeout 3
            retry 3
            delay_before_retry 3
        }
    }
    real_server 192.168.201.101 80 {
        weight 1
        TCP_CHECK {
            connect_timeout 3
        }
    }
}
"""


def test_reference_example() -> None:
    result = parse_format("keepalived", REFERENCE_EXAMPLE, "keepalived.conf")
    assert result.warnings == ()
    cfg = result.config
    assert cfg.router_id == "LVS_A" and cfg.source == "keepalived.conf"
    assert cfg.sync == SyncSettings("eth1", "VI_1", 51)
    (inst,) = cfg.vrrp
    assert (inst.name, inst.interface, inst.vrid, inst.priority, inst.state) == (
        "VI_1", "eth0", 51, 150, "BACKUP")
    assert inst.unicast_src_ip == A("192.168.200.2") and inst.unicast_peers == (A("192.168.200.3"),)
    assert [(str(a.address), a.dev) for a in inst.virtual_addresses] == [("192.168.200.16/24", "eth0")]
    (svc,) = cfg.services
    assert svc.config.key == (Proto.TCP, A("192.168.200.16"), 80) and svc.config.sched == "wlc"
    assert svc.delay_loop == 6.0 and svc.sorry_server == (A("192.168.201.200"), 80)
    first, second = svc.dests
    assert (first.config.daddr, first.config.dport, first.config.method) == (
        A("192.168.201.100"), 80, FwdMethod.MASQ)
    assert first.inhibit_on_failure is True
    assert first.checks == (CheckSpec("HTTP_GET", (
        ("connect_timeout", 3), ("delay_before_retry", 3), ("retry", 3),
        ("url", ({"path": "/healthz", "status_code": 200},)))),)
    assert second.checks == (CheckSpec("TCP_CHECK", (("connect_timeout", 3),)),)
    assert first.checks[0].where == Where("keepalived.conf", 30, "HTTP_GET")


def test_docs_example_parses_without_warnings() -> None:
    path = ROOT / "docs/examples/keepalived.conf"
    result = parse_format("keepalived", path.read_text(), str(path))
    assert result.warnings == ()
    cfg = result.config
    assert [v.name for v in cfg.vrrp] == ["VI_VIP", "VI_GW"]
    assert cfg.vrrp_sync_groups[0].members == ("VI_VIP", "VI_GW")
    assert [str(a.address) for v in cfg.vrrp for a in v.virtual_addresses] == [
        "10.77.1.100/24", "10.77.2.254/24"]
    assert cfg.vrrp[0].notify_master == ("/usr/local/sbin/ulvs-notify", "master", "VI_VIP")
    assert [s.config.key for s in cfg.services] == [(Proto.TCP, A("10.77.1.100"), 80),
                                                   (Proto.UDP, A("10.77.1.100"), 53)]
    web, dns = cfg.services
    assert [d.config.weight for d in web.dests] == [3, 2, 1]
    assert all(str(d.config.daddr).startswith("10.77.2.") for s in cfg.services for d in s.dests)
    assert dns.config.flags == frozenset({"sh-port"}) and dns.config.sched == "sh"
    assert cfg.sync == SyncSettings("eth1", "VI_VIP", 51)


def test_warnings_and_errors_render_file_line_and_key() -> None:
    result = load(vs("ha_suspend"), source="/etc/keepalived/keepalived.conf")
    assert str(result.warnings[0]) == ("/etc/keepalived/keepalived.conf:2: ha_suspend: warning: ha_suspend: "
                                       "not supported by ulvs; ignored")
    e = error(vs("", rs=rs_block("weight 100000")))
    assert str(e) == "k.conf:4: weight: 100000 out of range (allowed: 0..65535)"


def test_empty_document() -> None:
    result = load("! nothing here\n")
    assert result.config.services == () and result.config.vrrp == () and result.config.sync is None


def test_docs_example_is_detected_as_keepalived() -> None:
    from ulvs.config import detect
    path = ROOT / "docs/examples/keepalived.conf"
    assert detect(str(path), path.read_text()) == "keepalived"


def test_udp_check_hex_is_free_format_and_require_reply_takes_wildcards() -> None:
    text = """virtual_server 10.77.1.100 53 {
    protocol UDP
    real_server 10.77.2.11 53 {
        UDP_CHECK {
            payload Ab12f 3
            require_reply 00xX 12
        }
    }
}
"""
    from ulvs.config import keepalived

    result = keepalived.parse(text, "k.conf", None)
    spec = result.config.services[0].dests[0].checks[0]
    assert spec.get("payload") == "ab12f3"
    assert spec.get("require_reply") == "00xx12"
    bad = text.replace("payload Ab12f 3", "payload Ab12f")
    with pytest.raises(ConfigError, match=r"k\.conf:5: .*not hex bytes"):
        keepalived.parse(bad, "k.conf", None)
