"""ipvsadm's grammar (ipvsadm 1.31), pure: argument vectors and ``-R``/rules text to requests.

``parse_args(argv)`` turns an argument vector into an ``Invocation`` -- the control requests to
send (the JSON objects of ``ulvs.config.requests``, applied by ``ulvs.runtime.control``) plus
what to list -- and ``parse_restore(text)`` does the same for the lines of ``-R`` input and of
rules files (``ulvs.config.ipvsadm_rules``).  ``ulvsadm`` (``ulvs.cli.ulvsadm``) is the
transport around it.

The grammar and every message are ipvsadm 1.31's (``ipvsadm.c``, REFERENCE (f)): the same long
and short options, the same command/option legality table, the same defaults (scheduler wlc,
weight 1, gatewaying, persistence 300 s, real-server port = service port and forced to it for
-g/-i).  Differences: addresses are numeric IPv4 only (``-n`` is implied); ``--socket PATH``
picks the daemon; and ``--group-member proto:addr:port`` gives a service group (``-f N``) its
members.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ulvs.config.requests import MAX_FWMARK, MAX_TIMEOUT, JsonObj, service_key_to_json
from ulvs.core.engine import ServiceKey
from ulvs.core.model import MAX_THRESHOLD, MAX_WEIGHT, Proto

PROG = "ulvsadm"
DEFAULT_PERSISTENT = 300      # IPVS_SVC_PERSISTENT_TIMEOUT
DEFAULT_SCHED = "wlc"
TRY_HELP = f"Try `{PROG} -h' or '{PROG} --help' for more information."


class UsageError(Exception):
    """A command line (or ``-R`` line) ipvsadm would refuse; exit status 2."""


@dataclass(frozen=True, slots=True)
class ListFormat:
    """The ``-L`` format options (ipvsadm's FMT_* bits)."""

    stats: bool = False
    rate: bool = False
    thresholds: bool = False
    persistent_conn: bool = False
    exact: bool = False
    nosort: bool = False


# ==========================================================================================
# Grammar tables (ipvsadm.c: cmdnames, optnames, commands_v_options)
# ==========================================================================================
CMD_NAMES = ("add-service", "edit-service", "delete-service", "flush", "list", "add-server",
             "delete-server", "edit-server", "set", "start-daemon", "stop-daemon", "restore", "save",
             "zero")
OPT_NAMES = ("numeric", "connection", "service-address", "scheduler", "persistent", "netmask",
             "real-server", "forwarding-method", "weight", "u-threshold", "l-threshold",
             "mcast-interface", "timeout", "daemon", "stats", "rate", "thresholds", "persistent-conn",
             "nosort", "syncid", "exact", "ops", "pe", "sched-flags", "mcast-group", "mcast-port",
             "mcast-ttl", "sync-maxlen",
             "group-member")                     # ulvs extension (last column)

# Legal options per command: '+' compulsory, 'x' illegal, '1' at most one of the '1's, ' ' optional.
# fmt: off
LEGAL = {
    # columns in OPT_NAMES order: -n -c svc -s -p -M -r fwd -w -x -y mcast-if timeout daemon stats
    # rate thresholds persistent-conn nosort syncid exact ops pe -b mcast-group/port/ttl sync-maxlen, gm
    "add-service":    "xx+   xxxxxxxxxxxxxxx   xxxx ",
    "edit-service":   "xx+   xxxxxxxxxxxxxxx   xxxx ",
    "delete-service": "xx+xxxxxxxxxxxxxxxxxxxxxxxxxx",
    "flush":          "xxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "list":           " 11xxxxxxxxx11       xxxxxxxx",
    "add-server":     "xx+xxx+    xxxxxxxxxxxxxxxxxx",
    "delete-server":  "xx+xxx+xxxxxxxxxxxxxxxxxxxxxx",
    "edit-server":    "xx+xxx+    xxxxxxxxxxxxxxxxxx",
    "set":            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "start-daemon":   "xxxxxxxxxxx xxxxxxx xxxx    x",
    "stop-daemon":    "xxxxxxxxxxxxxxxxxxx xxxxxxxxx",
    "restore":        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "save":           " xxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "zero":           "xx xxxxxxxxxxxxxxxxxxxxxxxxxx",
}
# fmt: on
assert all(len(row) == len(OPT_NAMES) for row in LEGAL.values()) and set(LEGAL) == set(CMD_NAMES)

# Commands a -R line may carry (they become one atomic batch).
RESTORABLE = frozenset({"add-service", "edit-service", "delete-service", "flush", "add-server",
                        "edit-server", "delete-server", "set", "zero"})

NONE, REQUIRED, OPTIONAL = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Opt:
    long: str
    short: str | None
    arg: int          # NONE, REQUIRED or OPTIONAL (-p: popt's POPT_ARGFLAG_OPTIONAL)
    action: str       # "cmd:<command>", "opt:<optname>", or a special word


OPTIONS = (
    # commands
    Opt("add-service", "A", NONE, "cmd:add-service"),
    Opt("edit-service", "E", NONE, "cmd:edit-service"),
    Opt("delete-service", "D", NONE, "cmd:delete-service"),
    Opt("clear", "C", NONE, "cmd:flush"),
    Opt("list", "L", NONE, "cmd:list"),
    Opt("list", "l", NONE, "cmd:list"),
    Opt("zero", "Z", NONE, "cmd:zero"),
    Opt("add-server", "a", NONE, "cmd:add-server"),
    Opt("edit-server", "e", NONE, "cmd:edit-server"),
    Opt("delete-server", "d", NONE, "cmd:delete-server"),
    Opt("set", None, NONE, "cmd:set"),
    Opt("restore", "R", NONE, "cmd:restore"),
    Opt("save", "S", NONE, "cmd:save"),
    Opt("start-daemon", None, REQUIRED, "cmd:start-daemon"),
    Opt("stop-daemon", None, REQUIRED, "cmd:stop-daemon"),
    Opt("help", "h", NONE, "help"),
    Opt("version", "v", NONE, "version"),
    # virtual service
    Opt("tcp-service", "t", REQUIRED, "tcp"),
    Opt("udp-service", "u", REQUIRED, "udp"),
    Opt("sctp-service", None, REQUIRED, "sctp"),
    Opt("fwmark-service", "f", REQUIRED, "fwmark"),
    Opt("ipv6", "6", NONE, "ipv6"),
    # service options
    Opt("scheduler", "s", REQUIRED, "opt:scheduler"),
    Opt("persistent", "p", OPTIONAL, "opt:persistent"),
    Opt("netmask", "M", REQUIRED, "opt:netmask"),
    Opt("pe", None, REQUIRED, "opt:pe"),
    Opt("sched-flags", "b", REQUIRED, "opt:sched-flags"),
    Opt("ops", "o", NONE, "opt:ops"),
    Opt("group-member", None, REQUIRED, "opt:group-member"),
    # real server options
    Opt("real-server", "r", REQUIRED, "opt:real-server"),
    Opt("gatewaying", "g", NONE, "fwd:droute"),
    Opt("masquerading", "m", NONE, "fwd:masq"),
    Opt("ipip", "i", NONE, "fwd:tunnel"),
    Opt("weight", "w", REQUIRED, "opt:weight"),
    Opt("u-threshold", "x", REQUIRED, "opt:u-threshold"),
    Opt("l-threshold", "y", REQUIRED, "opt:l-threshold"),
    Opt("tun-type", None, REQUIRED, "tun"),
    Opt("tun-port", None, REQUIRED, "tun"),
    Opt("tun-nocsum", None, NONE, "tun"),
    Opt("tun-csum", None, NONE, "tun"),
    Opt("tun-remcsum", None, NONE, "tun"),
    # listing options
    Opt("numeric", "n", NONE, "opt:numeric"),
    Opt("connection", "c", NONE, "opt:connection"),
    Opt("timeout", None, NONE, "opt:timeout"),
    Opt("daemon", None, NONE, "opt:daemon"),
    Opt("stats", None, NONE, "opt:stats"),
    Opt("rate", None, NONE, "opt:rate"),
    Opt("thresholds", None, NONE, "opt:thresholds"),
    Opt("persistent-conn", None, NONE, "opt:persistent-conn"),
    Opt("tun-info", None, NONE, "tun"),
    Opt("nosort", None, NONE, "opt:nosort"),
    Opt("sort", None, NONE, "sort"),
    Opt("exact", "X", NONE, "opt:exact"),
    # sync daemon options
    Opt("mcast-interface", None, REQUIRED, "opt:mcast-interface"),
    Opt("syncid", None, REQUIRED, "opt:syncid"),
    Opt("mcast-group", None, REQUIRED, "opt:mcast-group"),
    Opt("mcast-port", None, REQUIRED, "opt:mcast-port"),
    Opt("mcast-ttl", None, REQUIRED, "opt:mcast-ttl"),
    Opt("sync-maxlen", None, REQUIRED, "opt:sync-maxlen"),
    # ulvs
    Opt("socket", None, REQUIRED, "socket"),
)
LONG = {o.long: o for o in OPTIONS}
SHORT = {o.short: o for o in OPTIONS if o.short}

# Scheduler flags: three bits, named after the scheduler (ipvsadm.c parse_sched_flags).
_FLAG_BITS = {"flag-1": (1, None), "flag-2": (2, None), "flag-3": (3, None),
              "sh-fallback": (1, "sh"), "sh-port": (2, "sh"),
              "mh-fallback": (1, "mh"), "mh-port": (2, "mh")}
_FLAG_NAMES = {"sh": ("sh-fallback", "sh-port", "flag-3"), "mh": ("mh-fallback", "mh-port", "flag-3")}
_GENERIC_FLAGS = ("flag-1", "flag-2", "flag-3")
_NUMBER = re.compile(r"\s*[+-]?[0-9]+")
_VALUE_NAMES = {"weight": "weight", "u-threshold": "u_threshold", "l-threshold": "l_threshold"}


# ==========================================================================================
# Result of parsing
# ==========================================================================================
@dataclass(frozen=True, slots=True)
class Invocation:
    """What one command line asks for.

    ``command`` is ipvsadm's command name (``CMD_NAMES``) or ``help``/``version``.  ``requests``
    holds the control request of a changing command.  For ``list``, ``view`` says which listing
    (``table``, ``connections``, ``timeout`` or ``daemon``), ``service`` restricts the table to one
    service, and ``fmt`` carries the format options."""

    command: str
    requests: tuple[JsonObj, ...] = ()
    view: str = "table"
    service: ServiceKey | None = None
    fmt: ListFormat = ListFormat()
    persistent_conn: bool = False
    socket: str | None = None


@dataclass(slots=True)
class _Parsed:
    """Everything collected from the options, before the checks."""

    command: str | None = None
    options: set[str] = field(default_factory=set)
    positional: list[str] = field(default_factory=list)
    special: str | None = None           # help / version
    socket: str | None = None
    service: ServiceKey | None = None
    sched: str | None = None
    persistent: int | None = None
    netmask: str = "255.255.255.255"
    flags_arg: str | None = None
    ops: bool = False
    members: list[JsonObj] = field(default_factory=list)
    server: tuple[ipaddress.IPv4Address, int | None] | None = None
    method: str = "droute"
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0


# ==========================================================================================
# Tokens
# ==========================================================================================
def _tokens(argv: Sequence[str]) -> list[tuple[Opt | None, str | None]]:
    """(option, value) pairs; positional arguments come as (None, text)."""
    out: list[tuple[Opt | None, str | None]] = []
    i, n = 0, len(argv)
    while i < n:
        tok = argv[i]
        i += 1
        if tok == "--":
            out.extend((None, rest) for rest in argv[i:])
            break
        if tok.startswith("--"):
            name, eq, value = tok[2:].partition("=")
            opt = LONG.get(name)
            if opt is None:
                raise UsageError(f"invalid option `{tok}'")
            if opt.arg == NONE:
                if eq:
                    raise UsageError(f"option `--{name}' does not take a value")
                out.append((opt, None))
            elif eq:
                out.append((opt, value))
            elif opt.arg == REQUIRED:
                if i >= n:
                    raise UsageError(f"option `--{name}' requires an argument")
                out.append((opt, argv[i]))
                i += 1
            elif i < n and not argv[i].startswith("-"):
                out.append((opt, argv[i]))
                i += 1
            else:
                out.append((opt, None))
            continue
        if tok.startswith("-") and len(tok) > 1:
            j = 1
            while j < len(tok):
                opt = SHORT.get(tok[j])
                if opt is None:
                    raise UsageError(f"invalid option `-{tok[j]}'")
                rest = tok[j + 1:]
                if opt.arg == NONE:
                    out.append((opt, None))
                    j += 1
                    continue
                if rest:
                    out.append((opt, rest))
                elif opt.arg == REQUIRED:
                    if i >= n:
                        raise UsageError(f"option `-{tok[j]}' requires an argument")
                    out.append((opt, argv[i]))
                    i += 1
                elif i < n and not argv[i].startswith("-"):
                    out.append((opt, argv[i]))
                    i += 1
                else:
                    out.append((opt, None))
                break
            continue
        out.append((None, tok))
    return out


# ==========================================================================================
# Values
# ==========================================================================================
def _number(text: str, lo: int, hi: int) -> int | None:
    """ipvsadm string_to_number: a whole decimal number in [lo, hi], else None."""
    if not _NUMBER.fullmatch(text):
        return None
    value = int(text)
    return value if lo <= value <= hi else None


def _hostport(text: str, what: str) -> tuple[ipaddress.IPv4Address, int | None]:
    """``addr[:port]`` (numeric IPv4 only); port None when not given."""
    if text.startswith("[") or text.count(":") > 1:
        raise UsageError(f"illegal {what} address[:port] specified (IPv6 is not supported by ulvs)")
    host, sep, port_text = text.partition(":")
    try:
        addr = ipaddress.IPv4Address(host)
    except ValueError:
        hint = " (ulvsadm takes numeric IPv4 addresses only)" if any(c.isalpha() for c in host) else ""
        raise UsageError(f"illegal {what} address[:port] specified{hint}") from None
    if not sep:
        return addr, None
    port = _number(port_text, 0, 65535)
    if port is None:
        hint = " (ulvsadm takes numeric ports only)" if any(c.isalpha() for c in port_text) else ""
        raise UsageError(f"illegal {what} address[:port] specified{hint}")
    return addr, port


def _timeout(text: str | None, lo: int) -> int:
    if text is None:
        return DEFAULT_PERSISTENT
    value = _number(text, lo, MAX_TIMEOUT)
    if value is None:
        raise UsageError(f"invalid timeout value `{text}' specified")
    return value


def _sched_flags(sched: str, text: str) -> list[str]:
    """ipvsadm parse_sched_flags: ``-b`` takes comma-separated names."""
    return sched_flags(sched, (f for f in text.split(",") if f))


def sched_flags(sched: str, flags: Iterable[str]) -> list[str]:
    """Scheduler flags checked against the scheduler and returned under the scheduler's own
    names, sorted by bit (``-s sh -b flag-1`` is sh-fallback).  Raises ``UsageError``."""
    bits = set()
    for flag in flags:
        bit = _FLAG_BITS.get(flag)
        if bit is None:
            raise UsageError(f"invalid scheduler flag `{flag}'")
        if bit[1] is not None and bit[1] != sched:
            raise UsageError(f"incompatible scheduler flag `{flag}'")
        bits.add(bit[0])
    names = _FLAG_NAMES.get(sched, _GENERIC_FLAGS)
    return [names[b - 1] for b in sorted(bits)]


def allowed_sched_flags(sched: str) -> list[str]:
    """The flag names ``sched_flags`` accepts for ``sched``."""
    return [f for f, (_bit, only) in _FLAG_BITS.items() if only in (None, sched)]


def _member(text: str) -> JsonObj:
    proto, sep, rest = text.partition(":")
    if not sep or proto.lower() not in ("tcp", "udp"):
        raise UsageError(f"illegal service group member `{text}' (expected tcp:addr:port or udp:addr:port)")
    addr, port = _hostport(rest, "service group member")
    if port is None:
        raise UsageError(f"illegal service group member `{text}' (a port is needed; 0 = any port)")
    return {"proto": proto.lower(), "vaddr": str(addr), "vport": port}


# ==========================================================================================
# Parsing
# ==========================================================================================
def _set_option(p: _Parsed, name: str) -> None:
    if name in p.options and name != "group-member":
        raise UsageError(f"multiple '{name}' options specified")
    p.options.add(name)


def _set_command(p: _Parsed, name: str) -> None:
    if p.command is not None:
        raise UsageError("multiple commands specified")
    p.command = name


def _collect(argv: Sequence[str]) -> _Parsed:
    p = _Parsed()
    for opt, value in _tokens(argv):
        if opt is None:
            assert value is not None
            p.positional.append(value)
            continue
        kind, _, name = opt.action.partition(":")
        if kind == "cmd":
            _set_command(p, name)
            if name in ("start-daemon", "stop-daemon") and value not in ("master", "backup"):
                raise UsageError(f"illegal {name} parameter specified")
        elif opt.action in ("help", "version"):
            p.special = p.special or opt.action
        elif opt.action in ("tcp", "udp"):
            _set_option(p, "service-address")
            assert value is not None
            addr, port = _hostport(value, "virtual server")
            p.service = (Proto.TCP if opt.action == "tcp" else Proto.UDP, addr, port or 0)
        elif opt.action == "fwmark":
            _set_option(p, "service-address")
            assert value is not None
            mark = _number(value, 1, MAX_FWMARK)
            if mark is None:
                raise UsageError(f"invalid fwmark value `{value}' specified")
            p.service = (Proto.FWM, ipaddress.IPv4Address(0), mark)
        elif opt.action == "sctp":
            raise UsageError("SCTP services are not supported by ulvs")
        elif opt.action == "ipv6":
            if p.service is None or p.service[0] != Proto.FWM:
                raise UsageError("-6 used before -f")
            raise UsageError("IPv6 is not supported by ulvs")
        elif opt.action == "tun":
            raise UsageError(f"--{opt.long}: tunnel options are not supported by ulvs "
                             "(the tunnel forwarding method is not supported yet)")
        elif opt.action == "sort":
            pass                                   # the default; accepted for compatibility
        elif opt.action == "socket":
            if p.socket is not None:
                raise UsageError("multiple 'socket' options specified")
            p.socket = value
        elif kind == "fwd":
            _set_option(p, "forwarding-method")
            p.method = name
        else:
            _set_option(p, name)
            _option_value(p, name, value)
    return p


def _option_value(p: _Parsed, name: str, value: str | None) -> None:
    if name == "scheduler":
        assert value is not None
        p.sched = value
    elif name == "persistent":
        p.persistent = _timeout(value, 1)
    elif name == "netmask":
        assert value is not None
        try:
            p.netmask = str(ipaddress.IPv4Address(value))
        except ValueError:
            raise UsageError("illegal virtual server persistent mask specified") from None
    elif name == "sched-flags":
        p.flags_arg = value
    elif name == "ops":
        p.ops = True
    elif name == "group-member":
        assert value is not None
        p.members.append(_member(value))
    elif name == "real-server":
        assert value is not None
        p.server = _hostport(value, "real server")
    elif name in ("weight", "u-threshold", "l-threshold"):
        assert value is not None
        hi = MAX_WEIGHT if name == "weight" else MAX_THRESHOLD
        number = _number(value, 0, hi)
        if number is None:
            raise UsageError(f"illegal {_VALUE_NAMES[name]} specified")
        if name == "weight":
            p.weight = number
        elif name == "u-threshold":
            p.u_threshold = number
        else:
            p.l_threshold = number
    elif name == "syncid" and value is not None and _number(value, 0, 255) is None:
        raise UsageError("illegal syncid specified")


def _check_legal(command: str, options: set[str]) -> None:
    """ipvsadm generic_opt_check."""
    row = LEGAL[command]
    first = None
    for j, name in enumerate(OPT_NAMES):
        rule = row[j]
        if name not in options:
            if rule == "+":
                raise UsageError(f"You need to supply the '{name}' option for the '{command}' command")
            continue
        if rule == "x":
            raise UsageError(f"Illegal '{name}' option with the '{command}' command")
        if rule == "1":
            if first is not None:
                raise UsageError(f"The option '{name}' conflicts with the '{first}' option "
                                 f"in the '{command}' command")
            first = name


def parse_args(argv: Sequence[str]) -> Invocation:
    """An ``Invocation`` from an ipvsadm-style argument vector (without the program name).
    Raises ``UsageError`` with ipvsadm's message for anything ipvsadm would refuse."""
    if not argv:
        return Invocation("list")                 # bare ipvsadm lists the table
    p = _collect(argv)
    if p.special is not None:
        return Invocation(p.special)
    if p.command is None and not p.options and not p.positional and p.service is None:
        return Invocation("list", socket=p.socket)    # only --socket: list, as bare ipvsadm does
    if p.command is None:
        raise UsageError(f"no command given (one of -A -E -D -C -R -S -a -e -d -L -Z --set)\n{TRY_HELP}")
    cmd = p.command
    _check_legal(cmd, p.options)
    if cmd == "set":
        if len(p.positional) < 3:
            raise UsageError("--set option requires 3 timeout values")
        tcp, tcpfin, udp = (_timeout(v, 0) for v in p.positional[:3])
        p.positional = p.positional[3:]
    if p.positional:
        raise UsageError(f"unexpected argument {p.positional[0]}")
    if "pe" in p.options:
        raise UsageError("persistence engines (--pe) are not supported by ulvs")
    if p.members and (p.service is None or p.service[0] != Proto.FWM):
        raise UsageError("--group-member is only for service groups (-f)")
    sock = p.socket

    if cmd in ("add-service", "edit-service"):
        return Invocation(cmd, (_service_request(p, cmd),), socket=sock)
    if cmd in ("add-server", "edit-server", "delete-server"):
        return Invocation(cmd, (_dest_request(p, cmd),), socket=sock)
    if cmd == "delete-service":
        assert p.service is not None
        return Invocation(cmd, ({"cmd": "del_service", "service": service_key_to_json(p.service)},),
                          socket=sock)
    if cmd == "flush":
        return Invocation(cmd, ({"cmd": "clear"},), socket=sock)
    if cmd == "zero":
        req: JsonObj = {"cmd": "zero"}
        if p.service is not None:
            req["service"] = service_key_to_json(p.service)
        return Invocation(cmd, (req,), socket=sock)
    if cmd == "set":
        return Invocation(cmd, ({"cmd": "set_timeouts", "tcp": tcp, "tcpfin": tcpfin, "udp": udp},),
                          socket=sock)
    if cmd == "list":
        return _list_invocation(p)
    return Invocation(cmd, socket=sock)           # save, restore, start-daemon, stop-daemon


def _service_request(p: _Parsed, cmd: str) -> JsonObj:
    assert p.service is not None
    proto, _, port = p.service
    fwm = proto == Proto.FWM
    # ipvsadm process_options: checks for -A/-E, then the default scheduler.
    if not fwm and port == 0 and p.persistent is None:
        raise UsageError("Zero port specified for non-persistent service")
    if p.ops and not fwm and proto != Proto.UDP:
        raise UsageError("One-Packet Scheduling is only for UDP virtual services")
    sched = p.sched or DEFAULT_SCHED
    flags = _sched_flags(sched, p.flags_arg) if p.flags_arg else []
    svc = service_key_to_json(p.service)
    if fwm:
        if p.members:
            svc["members"] = p.members
        elif cmd == "add-service":
            raise UsageError(f"service group {port} has no members: service groups are defined in the "
                             "config file (or given with --group-member proto:addr:port)")
    svc.update(sched=sched, flags=flags, persistent=p.persistent, netmask=p.netmask, ops=p.ops)
    return {"cmd": "add_service" if cmd == "add-service" else "edit_service", "service": svc}


def _dest_request(p: _Parsed, cmd: str) -> JsonObj:
    assert p.service is not None and p.server is not None
    proto, _, vport = p.service
    if proto == Proto.FWM:
        vport = 0                                  # a group's key carries the mark, not a port
    daddr, dport = p.server
    if dport is None:
        dport = vport                              # the real server port defaults to the service's
    if cmd != "delete-server" and proto != Proto.FWM and p.method in ("droute", "tunnel"):
        dport = vport                              # and is forced to it for -g/-i
    key = service_key_to_json(p.service)
    if cmd == "delete-server":
        return {"cmd": "del_dest", "service": key, "dest": {"daddr": str(daddr), "dport": dport}}
    return {"cmd": "add_dest" if cmd == "add-server" else "edit_dest", "service": key,
            "dest": {"daddr": str(daddr), "dport": dport, "weight": p.weight, "method": p.method,
                     "u_threshold": p.u_threshold, "l_threshold": p.l_threshold}}


def _list_invocation(p: _Parsed) -> Invocation:
    o = p.options
    if (o & {"connection", "timeout", "daemon"} and o & {"stats", "rate", "thresholds"}) or \
            (o & {"timeout", "daemon"} and "persistent-conn" in o):
        raise UsageError("options conflicts in the list command")
    fmt = ListFormat(stats="stats" in o, rate="rate" in o, thresholds="thresholds" in o,
                            persistent_conn="persistent-conn" in o, exact="exact" in o,
                            nosort="nosort" in o)
    if "connection" in o:
        view = "connections"
    elif p.service is not None:
        view = "table"
    elif "timeout" in o:
        view = "timeout"
    elif "daemon" in o:
        view = "daemon"
    else:
        view = "table"
    return Invocation("list", view=view, service=p.service, fmt=fmt,
                      persistent_conn="persistent-conn" in o, socket=p.socket)


def parse_restore(text: str) -> list[tuple[int, JsonObj]]:
    """The requests of ``-R`` input, each with its line number.  One command per line, an
    optional leading ``ipvsadm``/``ulvsadm``; blank lines and ``#`` comments are skipped."""
    out: list[tuple[int, JsonObj]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            raise UsageError(f"line {lineno}: {e}") from None
        if words and words[0].rsplit("/", 1)[-1] in ("ipvsadm", "ulvsadm"):
            words = words[1:]
        if not words:
            continue
        try:
            inv = parse_args(words)
        except UsageError as e:
            raise UsageError(f"line {lineno}: {e}") from None
        if inv.command not in RESTORABLE:
            raise UsageError(f"line {lineno}: the '{inv.command}' command cannot be restored")
        if inv.socket is not None:
            raise UsageError(f"line {lineno}: --socket is not allowed in restore input")
        out.extend((lineno, req) for req in inv.requests)
    return out
