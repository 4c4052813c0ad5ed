"""ulvsadm's grammar (ipvsadm 1.31): argv -> control requests, without a socket.

Test ids avoid the word "sched" (the project's ``-k "not sched"`` runs deselect it)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from ulvs.cli.render import ListFormat
from ulvs.cli.ulvsadm import (
    LEGAL,
    OPT_NAMES,
    OPTIONS,
    Invocation,
    UsageError,
    parse_args,
    parse_restore,
)
from ulvs.core import Proto

A = ipaddress.IPv4Address
SVC = {"proto": "tcp", "vaddr": "10.0.0.1", "vport": 80}
USVC = {"proto": "udp", "vaddr": "10.0.0.1", "vport": 53}
FWM = {"proto": "fwm", "fwmark": 7}
SVC_DEFAULTS: dict[str, Any] = {"sched": "wlc", "flags": [], "persistent": None,
                                "netmask": "255.255.255.255", "ops": False}
DEST_DEFAULTS: dict[str, Any] = {"weight": 1, "method": "droute", "u_threshold": 0, "l_threshold": 0}


def req(argv: list[str]) -> dict[str, Any]:
    inv = parse_args(argv)
    assert len(inv.requests) == 1, inv
    return inv.requests[0]


def usage_error(argv: list[str]) -> str:
    with pytest.raises(UsageError) as e:
        parse_args(argv)
    return str(e.value)


def add_service(**kw: Any) -> dict[str, Any]:
    return {"cmd": "add_service", "service": {**SVC, **SVC_DEFAULTS, **kw}}


def add_dest(**kw: Any) -> dict[str, Any]:
    return {"cmd": "add_dest", "service": SVC, "dest": {"daddr": "192.168.1.1", "dport": 80,
                                                        **DEST_DEFAULTS, **kw}}


# ---------------------------------------------------------------------------------------------
# Every option, short and long
# ---------------------------------------------------------------------------------------------
EQUIVALENT = [
    (["-A", "-t", "10.0.0.1:80"], ["--add-service", "--tcp-service", "10.0.0.1:80"]),
    (["-E", "-t", "10.0.0.1:80"], ["--edit-service", "--tcp-service=10.0.0.1:80"]),
    (["-D", "-u", "10.0.0.1:53"], ["--delete-service", "--udp-service", "10.0.0.1:53"]),
    (["-C"], ["--clear"]),
    (["-Z"], ["--zero"]),
    (["-Z", "-f", "7"], ["--zero", "--fwmark-service", "7"]),
    (["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.1"],
     ["--add-server", "--tcp-service", "10.0.0.1:80", "--real-server", "192.168.1.1"]),
    (["-e", "-t", "10.0.0.1:80", "-r", "192.168.1.1"],
     ["--edit-server", "--tcp-service", "10.0.0.1:80", "--real-server=192.168.1.1"]),
    (["-d", "-t", "10.0.0.1:80", "-r", "192.168.1.1"],
     ["--delete-server", "--tcp-service", "10.0.0.1:80", "--real-server", "192.168.1.1"]),
    (["-A", "-t", "10.0.0.1:80", "-s", "rr"], ["-A", "-t", "10.0.0.1:80", "--scheduler", "rr"]),
    (["-A", "-t", "10.0.0.1:80", "-p"], ["-A", "-t", "10.0.0.1:80", "--persistent"]),
    (["-A", "-t", "10.0.0.1:80", "-p", "60"], ["-A", "-t", "10.0.0.1:80", "--persistent", "60"]),
    (["-A", "-t", "10.0.0.1:80", "-p60"], ["-A", "-t", "10.0.0.1:80", "--persistent=60"]),
    (["-A", "-t", "10.0.0.1:80", "-p", "-M", "255.255.0.0"],
     ["-A", "-t", "10.0.0.1:80", "--persistent", "--netmask", "255.255.0.0"]),
    (["-A", "-t", "10.0.0.1:80", "-s", "mh", "-b", "flag-1"],
     ["-A", "-t", "10.0.0.1:80", "-s", "mh", "--sched-flags", "mh-fallback"]),
    (["-A", "-u", "10.0.0.1:53", "-o"], ["-A", "-u", "10.0.0.1:53", "--ops"]),
    (["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.1:8080", "-m"],
     ["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.1:8080", "--masquerading"]),
    (["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.1", "-g"],
     ["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.1", "--gatewaying"]),
    (["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.1", "-i"],
     ["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.1", "--ipip"]),
    (["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.1", "-w", "5", "-x", "100", "-y", "50"],
     ["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.1", "--weight", "5", "--u-threshold", "100",
      "--l-threshold=50"]),
    (["--set", "1", "2", "3"], ["--set", "1", "2", "3"]),
    (["-R"], ["--restore"]),
    (["-S", "-n"], ["--save", "--numeric"]),
    (["-L"], ["--list"]),
    (["-l"], ["--list"]),
    (["-L", "-n", "-c"], ["--list", "--numeric", "--connection"]),
    (["-L", "-t", "10.0.0.1:80"], ["--list", "--tcp-service", "10.0.0.1:80"]),
    (["-L", "--exact", "--stats"], ["-L", "-X", "--stats"]),
    (["-L", "--sort"], ["-L"]),
    (["-Ln"], ["-L", "-n"]),
    (["-At10.0.0.1:80", "-srr"], ["-A", "-t", "10.0.0.1:80", "-s", "rr"]),
    (["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.1", "-mw", "3"],
     ["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.1", "-m", "-w3"]),
]


@pytest.mark.parametrize(("short", "long"), EQUIVALENT, ids=[f"pair{i}" for i in range(len(EQUIVALENT))])
def test_short_and_long_options_mean_the_same(short: list[str], long: list[str]) -> None:
    assert parse_args(short) == parse_args(long)


def test_every_option_is_covered() -> None:
    # Each ipvsadm option has a long form; the legality table has one column per option name.
    assert len({o.long for o in OPTIONS}) >= 55
    assert all(len(row) == len(OPT_NAMES) for row in LEGAL.values())
    covered = {w.lstrip("-").split("=")[0] for pair in EQUIVALENT for argv in pair for w in argv
               if w.startswith("--")}
    commands_and_common = {"add-service", "edit-service", "delete-service", "clear", "zero", "add-server",
                           "edit-server", "delete-server", "set", "restore", "save", "list",
                           "tcp-service", "udp-service", "fwmark-service", "persistent", "netmask",
                           "sched-flags", "ops", "masquerading", "gatewaying", "ipip", "weight",
                           "u-threshold", "l-threshold", "numeric", "connection", "real-server", "exact",
                           "stats", "sort"}
    assert commands_and_common <= covered


# ---------------------------------------------------------------------------------------------
# Requests and defaults
# ---------------------------------------------------------------------------------------------
def test_add_service_defaults() -> None:
    assert req(["-A", "-t", "10.0.0.1:80"]) == add_service()


def test_add_service_all_options() -> None:
    assert req(["-A", "-u", "10.0.0.1:53", "-s", "sh", "-p", "600", "-M", "255.255.255.0", "-b",
                "sh-port,sh-fallback", "-o"]) == {
        "cmd": "add_service", "service": {**USVC, "sched": "sh", "flags": ["sh-fallback", "sh-port"],
                                          "persistent": 600, "netmask": "255.255.255.0", "ops": True}}


def test_persistent_default_is_300() -> None:
    assert req(["-A", "-t", "10.0.0.1:80", "-p"])["service"]["persistent"] == 300
    assert req(["-A", "-t", "10.0.0.1:80", "-p", "-s", "rr"])["service"] == {
        **SVC, **SVC_DEFAULTS, "sched": "rr", "persistent": 300}


def test_edit_service_resets_to_defaults() -> None:
    # ipvsadm -E sends a whole service: options not given fall back to their defaults.
    assert req(["-E", "-t", "10.0.0.1:80"]) == {"cmd": "edit_service", "service": {**SVC, **SVC_DEFAULTS}}


def test_port_zero_needs_persistence() -> None:
    assert usage_error(["-A", "-t", "10.0.0.1"]) == "Zero port specified for non-persistent service"
    assert req(["-A", "-t", "10.0.0.1", "-p"])["service"]["vport"] == 0


def test_ops_only_for_udp() -> None:
    assert usage_error(["-A", "-t", "10.0.0.1:80", "-o"]) == \
        "One-Packet Scheduling is only for UDP virtual services"


@pytest.mark.parametrize(("algo", "given", "flags"), [
    ("sh", "flag-1,flag-2", ["sh-fallback", "sh-port"]),
    ("sh", "sh-port", ["sh-port"]),
    ("mh", "mh-port,flag-3", ["mh-port", "flag-3"]),
    ("wlc", "flag-2,,flag-1", ["flag-1", "flag-2"]),
], ids=["sh-generic", "sh", "mh", "generic"])
def test_flags_take_the_algorithm_names(algo: str, given: str, flags: list[str]) -> None:
    assert req(["-A", "-t", "10.0.0.1:80", "-s", algo, "-b", given])["service"]["flags"] == flags


def test_flag_errors() -> None:
    assert usage_error(["-A", "-t", "10.0.0.1:80", "-b", "sh-port"]) == \
        "incompatible scheduler flag `sh-port'"
    assert usage_error(["-A", "-t", "10.0.0.1:80", "-s", "sh", "-b", "mh-port"]) == \
        "incompatible scheduler flag `mh-port'"
    assert usage_error(["-A", "-t", "10.0.0.1:80", "-b", "fast"]) == "invalid scheduler flag `fast'"


def test_add_dest_defaults() -> None:
    assert req(["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.1"]) == add_dest()


def test_dest_port_is_forced_for_droute_and_tunnel() -> None:
    assert req(["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.1:8080"])["dest"]["dport"] == 80
    assert req(["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.1:8080", "-i"])["dest"] == {
        "daddr": "192.168.1.1", "dport": 80, **DEST_DEFAULTS, "method": "tunnel"}
    assert req(["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.1:8080", "-m"])["dest"]["dport"] == 8080
    assert req(["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.1", "-m"])["dest"]["dport"] == 80


def test_fwmark_dest_keeps_its_port() -> None:
    assert req(["-a", "-f", "7", "-r", "192.168.1.1"]) == {
        "cmd": "add_dest", "service": FWM, "dest": {"daddr": "192.168.1.1", "dport": 0, **DEST_DEFAULTS}}
    assert req(["-a", "-f", "7", "-r", "192.168.1.1:8080", "-g"])["dest"]["dport"] == 8080


def test_edit_and_delete_dest() -> None:
    assert req(["-e", "-t", "10.0.0.1:80", "-r", "192.168.1.1", "-w", "0", "-x", "9", "-y", "3"]) == {
        **add_dest(weight=0, u_threshold=9, l_threshold=3), "cmd": "edit_dest"}
    assert req(["-d", "-t", "10.0.0.1:80", "-r", "192.168.1.1:8080"]) == {
        "cmd": "del_dest", "service": SVC, "dest": {"daddr": "192.168.1.1", "dport": 8080}}
    assert req(["-d", "-t", "10.0.0.1:80", "-r", "192.168.1.1"])["dest"]["dport"] == 80


def test_other_commands() -> None:
    assert req(["-D", "-t", "10.0.0.1:80"]) == {"cmd": "del_service", "service": SVC}
    assert req(["-D", "-f", "7"]) == {"cmd": "del_service", "service": FWM}
    assert req(["-C"]) == {"cmd": "clear"}
    assert req(["-Z"]) == {"cmd": "zero"}
    assert req(["-Z", "-u", "10.0.0.1:53"]) == {"cmd": "zero", "service": USVC}
    assert req(["--set", "900", "0", "60"]) == {"cmd": "set_timeouts", "tcp": 900, "tcpfin": 0, "udp": 60}


def test_service_groups() -> None:
    assert req(["-A", "-f", "7", "--group-member", "tcp:10.0.0.3:80", "--group-member", "UDP:10.0.0.3:0",
                "-p"]) == {"cmd": "add_service", "service": {
                    **FWM, "members": [{"proto": "tcp", "vaddr": "10.0.0.3", "vport": 80},
                                       {"proto": "udp", "vaddr": "10.0.0.3", "vport": 0}],
                    **SVC_DEFAULTS, "persistent": 300}}
    assert "defined in the config file" in usage_error(["-A", "-f", "7"])
    assert req(["-E", "-f", "7", "-s", "rr"]) == {"cmd": "edit_service",
                                                  "service": {**FWM, **SVC_DEFAULTS, "sched": "rr"}}
    assert req(["-A", "-f", "7", "--group-member", "tcp:10.0.0.3:80", "-o"])["service"]["ops"] is True
    assert usage_error(["-A", "-t", "10.0.0.1:80", "--group-member", "tcp:10.0.0.3:80"]) == \
        "--group-member is only for service groups (-f)"
    assert "illegal service group member" in usage_error(["-A", "-f", "7", "--group-member", "10.0.0.3:80"])
    assert "a port is needed" in usage_error(["-A", "-f", "7", "--group-member", "tcp:10.0.0.3"])
    assert usage_error(["-a", "-f", "7", "--group-member", "tcp:10.0.0.3:80", "-r", "1.2.3.4"]) == \
        "Illegal 'group-member' option with the 'add-server' command"


# ---------------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------------
def test_list_views() -> None:
    assert parse_args([]) == Invocation("list")
    assert parse_args(["--socket", "/x"]) == Invocation("list", socket="/x")
    assert parse_args(["-L", "-n"]) == Invocation("list")
    assert parse_args(["-L", "-n", "-c"]).view == "connections"
    assert parse_args(["-L", "-c", "--persistent-conn"]).persistent_conn is True
    assert parse_args(["-L", "--timeout"]).view == "timeout"
    assert parse_args(["-L", "--daemon"]).view == "daemon"
    inv = parse_args(["-L", "-n", "-t", "10.0.0.1:80", "--stats"])
    assert (inv.view, inv.service, inv.fmt) == \
        ("table", (Proto.TCP, A("10.0.0.1"), 80), ListFormat(stats=True))
    assert parse_args(["-L", "--rate", "--thresholds", "--persistent-conn", "--exact", "--nosort"]).fmt == \
        ListFormat(rate=True, thresholds=True, persistent_conn=True, exact=True, nosort=True)
    assert parse_args(["-S", "-n"]) == Invocation("save")
    assert parse_args(["-S"]) == Invocation("save")
    assert parse_args(["-R"]) == Invocation("restore")


def test_list_conflicts() -> None:
    assert usage_error(["-L", "-c", "--stats"]) == "options conflicts in the list command"
    assert usage_error(["-L", "--timeout", "--rate"]) == "options conflicts in the list command"
    assert usage_error(["-L", "--daemon", "--persistent-conn"]) == "options conflicts in the list command"
    assert usage_error(["-L", "-c", "--timeout"]) == \
        "The option 'timeout' conflicts with the 'connection' option in the 'list' command"
    assert usage_error(["-L", "-c", "-t", "10.0.0.1:80"]) == \
        "The option 'service-address' conflicts with the 'connection' option in the 'list' command"


def test_socket_option() -> None:
    assert parse_args(["-L", "--socket", "/tmp/x.sock"]).socket == "/tmp/x.sock"
    assert parse_args(["--socket=/tmp/x.sock", "-C"]).socket == "/tmp/x.sock"
    assert usage_error(["-C", "--socket", "a", "--socket", "b"]) == "multiple 'socket' options specified"


def test_help_and_version() -> None:
    assert parse_args(["-h"]).command == "help"
    assert parse_args(["--help"]).command == "help"
    assert parse_args(["-v"]).command == "version"
    assert parse_args(["--version"]).command == "version"


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
ERRORS = [
    (["-n"], "no command given"),
    (["-A", "-D", "-t", "10.0.0.1:80"], "multiple commands specified"),
    (["-A", "-t", "10.0.0.1:80", "-u", "10.0.0.1:53"], "multiple 'service-address' options specified"),
    (["-a", "-t", "10.0.0.1:80", "-r", "1.2.3.4", "-m", "-g"],
     "multiple 'forwarding-method' options specified"),
    (["-A", "-s", "rr"], "You need to supply the 'service-address' option for the 'add-service' command"),
    (["-a", "-t", "10.0.0.1:80"], "You need to supply the 'real-server' option for the 'add-server' command"),
    (["-A", "-t", "10.0.0.1:80", "-w", "2"], "Illegal 'weight' option with the 'add-service' command"),
    (["-A", "-t", "10.0.0.1:80", "-n"], "Illegal 'numeric' option with the 'add-service' command"),
    (["-D", "-t", "10.0.0.1:80", "-s", "rr"], "Illegal 'scheduler' option with the 'delete-service' command"),
    (["-d", "-t", "10.0.0.1:80", "-r", "1.2.3.4", "-w", "1"],
     "Illegal 'weight' option with the 'delete-server' command"),
    (["-C", "-t", "10.0.0.1:80"], "Illegal 'service-address' option with the 'flush' command"),
    (["-S", "-c"], "Illegal 'connection' option with the 'save' command"),
    (["-S", "--nosort"], "Illegal 'nosort' option with the 'save' command"),
    (["-R", "-n"], "Illegal 'numeric' option with the 'restore' command"),
    (["-L", "-s", "rr"], "Illegal 'scheduler' option with the 'list' command"),
    (["--set", "1", "2"], "--set option requires 3 timeout values"),
    (["--set", "1", "2", "3", "4"], "unexpected argument 4"),
    (["--set", "1", "x", "3"], "invalid timeout value `x' specified"),
    (["--set", "1", "2", str(86400 * 31 + 1)], "invalid timeout value"),
    (["-C", "extra"], "unexpected argument extra"),
    (["-A", "-t", "10.0.0.1:80", "-p", "0"], "invalid timeout value `0' specified"),
    (["-A", "-t", "10.0.0.1:80", "-p", "x"], "invalid timeout value `x' specified"),
    (["-A", "-t", "10.0.0.1:80", "-M", "255.255.0"], "illegal virtual server persistent mask specified"),
    (["-A", "-t", "10.0.0.1:x"], "numeric ports only"),
    (["-A", "-t", "10.0.0.1:70000"], "illegal virtual server address[:port] specified"),
    (["-A", "-t", "www.example.com:80"], "numeric IPv4 addresses only"),
    (["-A", "-t", "80"], "illegal virtual server address[:port] specified"),
    (["-A", "-t", "10.0.0.256:80"], "illegal virtual server address[:port] specified"),
    (["-A", "-t", "[2001:db8::1]:80"], "IPv6 is not supported"),
    (["-A", "-f", "0"], "invalid fwmark value `0' specified"),
    (["-A", "-f", "4294967296"], "invalid fwmark value"),
    (["-A", "-f", "x"], "invalid fwmark value `x' specified"),
    (["-A", "-f", "7", "-6"], "IPv6 is not supported by ulvs"),
    (["-A", "-6", "-f", "7"], "-6 used before -f"),
    (["-A", "--sctp-service", "10.0.0.1:80"], "SCTP services are not supported"),
    (["-A", "-t", "10.0.0.1:80", "--pe", "sip"], "persistence engines (--pe) are not supported"),
    (["-a", "-t", "10.0.0.1:80", "-r", "1.2.3.4", "--tun-type", "gue"], "tunnel options are not supported"),
    (["-a", "-t", "10.0.0.1:80", "-r", "1.2.3.4", "-w", "65536"], "illegal weight specified"),
    (["-a", "-t", "10.0.0.1:80", "-r", "1.2.3.4", "-w", "-1"], "illegal weight specified"),
    (["-a", "-t", "10.0.0.1:80", "-r", "1.2.3.4", "-x", "y"], "illegal u_threshold specified"),
    (["-a", "-t", "10.0.0.1:80", "-r", "1.2.3.4", "-y", "70000"], "illegal l_threshold specified"),
    (["-a", "-t", "10.0.0.1:80", "-r", "host"], "illegal real server address[:port] specified"),
    (["-a", "-t", "10.0.0.1:80", "-r"], "option `-r' requires an argument"),
    (["-a", "-t", "10.0.0.1:80", "--real-server"], "option `--real-server' requires an argument"),
    (["-L", "--bogus"], "invalid option `--bogus'"),
    (["-L", "-q"], "invalid option `-q'"),
    (["-C", "--clear=1"], "does not take a value"),
    (["--start-daemon", "primary"], "illegal start-daemon parameter specified"),
    (["--start-daemon", "master", "--syncid", "300"], "illegal syncid specified"),
    (["--stop-daemon", "master", "--mcast-interface", "eth0"],
     "Illegal 'mcast-interface' option with the 'stop-daemon' command"),
]


@pytest.mark.parametrize(("argv", "needle"), ERRORS, ids=[f"err{i}" for i in range(len(ERRORS))])
def test_usage_errors(argv: list[str], needle: str) -> None:
    assert needle in usage_error(argv)


def test_daemon_commands_parse() -> None:
    assert parse_args(["--start-daemon", "master", "--mcast-interface", "eth0", "--syncid", "5"]).command == \
        "start-daemon"
    assert parse_args(["--stop-daemon", "backup"]).command == "stop-daemon"


# ---------------------------------------------------------------------------------------------
# -R input
# ---------------------------------------------------------------------------------------------
def test_restore_lines() -> None:
    text = ("# saved by ulvsadm\n"
            "\n"
            "-A -t 10.0.0.1:80 -s wlc\n"
            "ipvsadm -a -t 10.0.0.1:80 -r 192.168.1.1:80 -m -w 1   # web 1\n"
            "   /sbin/ulvsadm --set 900 120 300\n")
    assert parse_restore(text) == [
        (3, add_service()),
        (4, add_dest(method="masq")),
        (5, {"cmd": "set_timeouts", "tcp": 900, "tcpfin": 120, "udp": 300}),
    ]
    assert parse_restore("") == []


@pytest.mark.parametrize(("text", "message"), [
    ("-C\n-A -t 10.0.0.1\n", "line 2: Zero port specified for non-persistent service"),
    ("-C\n\n-L -n\n", "line 3: the 'list' command cannot be restored"),
    ("-S\n", "line 1: the 'save' command cannot be restored"),
    ("-R\n", "line 1: the 'restore' command cannot be restored"),
    ("-C --socket /x\n", "line 1: --socket is not allowed in restore input"),
    ("-A -t '10.0.0.1:80\n", "line 1: No closing quotation"),
], ids=["usage", "list", "save", "restore", "socket", "quote"])
def test_restore_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_restore(text)
    assert str(e.value) == message
