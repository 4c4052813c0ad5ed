"""The native configuration format: TOML (stdlib ``tomllib``), strict, one-to-one with ``Config``.

Layout (``docs/examples/ulvs.toml`` shows every key)::

  router_id = "lvs1"                       # optional, top level
  include = ["services.d/*.toml"]          # optional: more [[service]] / [vrrp] files
  [daemon]    interfaces backend workers conn_limit gro control_socket control_group
              flow_log flow_log_rate
  [timeouts]  tcp tcpfin udp
  [metrics]   listen = "127.0.0.1:9595"   (or "off")
  [sync]      interface instance syncid port group
  [[service]] name protocol ("tcp" | "udp" | "group") vip port | fwmark members,
              scheduler flags persistence_timeout persistence_netmask ops forwarding
              delay_loop sorry_server sorry_server_inhibit quorum hysteresis quorum_up
              quorum_down alpha omega inhibit_on_failure virtualhost slow_start
              failed_conns, check, ejection
  [service.ejection] threshold min_syns backoff backoff_max max_fraction (ulvs: passive
                     ejection of masq dests, off unless the table is there)
  [[service.dest]]  address port weight forwarding upper_threshold lower_threshold
                    inhibit_on_failure notify_up notify_down, check
  [[vrrp.instance]] [[vrrp.sync_group]]

A ``check`` is a table or an array of tables with ``type`` (a ``schema.CHECK_KEYS`` name) and
that checker's keys (DNS_CHECK's query type is spelled ``query_type``, as ``type`` names the
checker); a service's ``check`` applies to every dest that has no ``check`` of its own.
A dest's ``port`` defaults to the service's, its ``forwarding`` to the service's (``droute``
unless set).  Included files may hold only ``include``, ``service`` and ``vrrp``; their
services follow the including file's, in the order the includes are resolved.

Every unknown key, wrong type, out-of-range value and duplicate is a ``ConfigError`` naming
the file, the line and the key path (``service[1].dest[0].weight``), with the allowed values.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any, TypeVar

from ulvs.config.ipvsadm import UsageError, allowed_sched_flags, sched_flags
from ulvs.config.requests import ANY_ADDR, HOST_MASK, MAX_FWMARK, MAX_TIMEOUT
from ulvs.config.schema import (
    BACKENDS,
    CHECK_KEYS,
    FAILED_CONNS,
    FAILED_CONNS_REFUSED,
    MAX_EJECTION_BACKOFF,
    MAX_EJECTION_SYNS,
    MAX_SLOW_START,
    URL_KEYS,
    Argv,
    CheckSpec,
    Config,
    ConfigError,
    ConfigWarning,
    DaemonSettings,
    EjectionSettings,
    Endpoint,
    Includer,
    LoadResult,
    MetricsSettings,
    RealServer,
    SyncSettings,
    Timeouts,
    VirtualAddress,
    VirtualService,
    VrrpInstance,
    VrrpSyncGroup,
    Where,
    check_tables,
)
from ulvs.config.toml_lines import KeyLines, KeyPath
from ulvs.core.model import (
    MAX_THRESHOLD,
    MAX_WEIGHT,
    DestConfig,
    FwdMethod,
    GroupMember,
    Proto,
    ServiceConfig,
)
from ulvs.sched.base import names as scheduler_names

MAX_INT32 = 2**31 - 1
FORWARDING = {"masq": FwdMethod.MASQ, "droute": FwdMethod.DROUTE}
PROTOCOLS = ("tcp", "udp", "group")
DNS_QUERY_TYPE = "query_type"        # DNS_CHECK's "type" key (``type`` names the checker)

TOP_KEYS = frozenset({"router_id", "include", "daemon", "timeouts", "metrics", "sync", "service", "vrrp"})
INCLUDED_KEYS = frozenset({"include", "service", "vrrp"})
DAEMON_KEYS = frozenset({"interfaces", "backend", "workers", "conn_limit", "gro", "control_socket",
                         "control_group", "flow_log", "flow_log_rate"})
TIMEOUT_KEYS = frozenset({"tcp", "tcpfin", "udp"})
METRICS_KEYS = frozenset({"listen"})
SYNC_KEYS = frozenset({"interface", "instance", "syncid", "port", "group", "peers", "key", "key_file"})
SERVICE_KEYS = frozenset({
    "name", "protocol", "vip", "port", "scheduler", "flags", "persistence_timeout",
    "persistence_netmask", "ops", "fwmark", "members", "forwarding", "delay_loop", "sorry_server",
    "sorry_server_inhibit", "quorum", "hysteresis", "quorum_up", "quorum_down", "alpha", "omega",
    "inhibit_on_failure", "virtualhost", "slow_start", "failed_conns", "check", "dest", "ejection",
})
EJECTION_KEYS = frozenset({"threshold", "min_syns", "backoff", "backoff_max", "max_fraction"})
DEST_KEYS = frozenset({"address", "port", "weight", "forwarding", "upper_threshold", "lower_threshold",
                       "inhibit_on_failure", "notify_up", "notify_down", "check"})
VRRP_KEYS = frozenset({"instance", "sync_group"})
INSTANCE_KEYS = frozenset({
    "name", "interface", "vrid", "priority", "advert_int", "state", "version", "preempt",
    "preempt_delay", "virtual_addresses", "unicast_src_ip", "unicast_peers", "track_interfaces",
    "notify_master", "notify_backup", "notify_fault", "garp_master_delay", "garp_master_repeat",
    "min_garp", "lower_prio_no_advert", "higher_prio_send_advert", "checksum_as_v2", "auth_key",
})
SYNC_GROUP_KEYS = frozenset({"name", "members"})

# Value kinds of checker options (keys not listed take any scalar).
_CHECK_VALUE_KINDS: dict[str, str] = {
    **dict.fromkeys(("connect_port", "bind_port"), "port"),
    **dict.fromkeys(("connect_ip", "bindto"), "address"),
    **dict.fromkeys(("connect_timeout", "delay_before_retry", "warmup", "delay_loop", "misc_timeout",
                     "timeout", "reentry"), "seconds"),
    **dict.fromkeys(("retry", "min_reply_length", "max_reply_length"), "count"),
    **dict.fromkeys(("alpha", "log_all_failures", "fast_recovery", "enable_sni", "tls_compliant",
                     "misc_dynamic", "dynamic", "require_reply", "use_regex"), "bool"),
    "fwmark": "fwmark",
    "weight": "integer",
    "url": "url",
}
_URL_VALUE_KINDS: dict[str, str] = {
    **dict.fromkeys(("path", "digest", "virtualhost", "regex", "regex_options"), "string"),
    **dict.fromkeys(("regex_min_offset", "regex_max_offset"), "count"),
    "regex_no_match": "bool",
    "status_code": "status",
}
_IFNAME = re.compile(r"[^\s/:]{1,15}")
_REQUIRED: Any = object()
_T = TypeVar("_T")


# -- where things are ---------------------------------------------------------------------------
def key_path_name(path: KeyPath) -> str:
    """``("service", 1, "dest", 0, "weight")`` -> ``service[1].dest[0].weight``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@dataclass(frozen=True, slots=True)
class _Doc:
    """One parsed file: its name, its data and where its keys are."""

    source: str
    data: dict[str, Any]
    lines: KeyLines

    def where(self, path: KeyPath) -> Where:
        return Where(self.source, self.lines.line(path), key_path_name(path) or None)

    def error(self, path: KeyPath, message: str) -> ConfigError:
        return ConfigError(message, self.where(path))


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (datetime, date, time)):
        return "a date/time"
    return {int: "an integer", float: "a float", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _allowed(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


# -- typed access to one table --------------------------------------------------------------------
class _Table:
    """A TOML table being read: unknown keys are refused up front, getters check types and
    ranges, and every error names this table's file, line and key path."""

    def __init__(self, doc: _Doc, data: Mapping[str, Any], path: KeyPath, allowed: frozenset[str]) -> None:
        self.doc, self.data, self.path = doc, data, path
        for key in data:
            if key not in allowed:
                raise self.error(key, f"unknown key {key!r} (allowed: {_allowed(allowed)})")

    def error(self, key: str | None, message: str) -> ConfigError:
        return self.doc.error(self.path if key is None else self.path + (key,), message)

    def where(self, key: str | None = None) -> Where:
        return self.doc.where(self.path if key is None else self.path + (key,))

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, default: Any, kinds: tuple[type, ...], what: str) -> Any:
        if key not in self.data:
            if default is _REQUIRED:
                raise self.error(key, f"missing key {key!r} ({what})")
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise self.error(key, f"must be {what}, not {_type_name(value)}")
        return value

    def string(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self._get(key, default, (str,), "a string")
        if isinstance(value, str) and not value:
            raise self.error(key, "must not be empty")
        return value

    def integer(self, key: str, default: Any, lo: int, hi: int) -> Any:
        value = self._get(key, default, (int,), f"an integer {lo}..{hi}")
        if key in self.data and not lo <= value <= hi:
            raise self.error(key, f"{value} is out of range (allowed: {lo}..{hi})")
        return value

    def number(self, key: str, default: Any, lo: float, hi: float) -> Any:
        value = self._get(key, default, (int, float), f"a number {lo:g}..{hi:g}")
        if key not in self.data:
            return value
        if not lo <= value <= hi:
            raise self.error(key, f"{value:g} is out of range (allowed: {lo:g}..{hi:g})")
        return float(value)

    def boolean(self, key: str, default: Any) -> Any:
        return self._get(key, default, (bool,), "true or false")

    def choice(self, key: str, allowed: Sequence[str], default: Any = _REQUIRED) -> Any:
        value = self._get(key, default, (str,), f"one of {', '.join(allowed)}")
        if key in self.data and value not in allowed:
            raise self.error(key, f"{value!r} is not allowed (allowed: {', '.join(allowed)})")
        return value

    def strings(self, key: str, what: str = "a string") -> list[str]:
        """An array of strings (empty when absent)."""
        value = self._get(key, [], (list,), f"an array of strings ({what})")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.doc.error(self.path + (key, i), f"must be {what}, not {_type_name(item)}"
                                     if not isinstance(item, str) else "must not be empty")
        return list(value)

    def argv(self, key: str) -> Argv | None:
        """A program and its arguments, run without a shell: a non-empty array of strings."""
        if key not in self.data:
            return None
        value = self.strings(key, "a program and its arguments")
        if not value:
            raise self.error(key, "must name a program: [\"/path/to/program\", \"arg\", ...]")
        return tuple(value)

    def address(self, key: str, default: Any = _REQUIRED) -> Any:
        text = self.string(key, default)
        if key not in self.data:
            return default
        try:
            return ipaddress.IPv4Address(text)
        except ValueError:
            raise self.error(key, f"{text!r} is not an IPv4 address") from None

    def endpoint(self, key: str, lo_port: int = 0) -> Endpoint | None:
        text = self.string(key, None)
        if text is None:
            return None
        found = _endpoint(text, lo_port)
        if found is None:
            raise self.error(key, f"{text!r} is not address:port (e.g. \"10.0.0.9:80\", port "
                                  f"{lo_port}..65535)")
        return found

    def ifname(self, key: str, default: Any = _REQUIRED) -> Any:
        name = self.string(key, default)
        if key in self.data and not _IFNAME.fullmatch(name):
            raise self.error(key, f"{name!r} is not an interface name (1..15 characters, no spaces, '/' "
                                  "or ':')")
        return name

    def table(self, key: str, allowed: frozenset[str]) -> _Table:
        """A sub-table (empty when absent)."""
        value = self._get(key, {}, (dict,), "a table")
        return _Table(self.doc, value, self.path + (key,), allowed)

    def tables(self, key: str, allowed: frozenset[str], *, single: bool = False) -> list[_Table]:
        """An array of tables (``[[key]]``); with ``single``, one table (``[key]``) is accepted too."""
        value = self._get(key, [], (list, dict) if single else (list,),
                          "a table or an array of tables" if single else "an array of tables")
        if isinstance(value, dict):
            return [_Table(self.doc, value, self.path + (key,), allowed)]
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.doc.error(self.path + (key, i), f"must be a table, not {_type_name(item)}")
            out.append(_Table(self.doc, item, self.path + (key, i), allowed))
        return out


def _endpoint(text: str, lo_port: int) -> Endpoint | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not lo_port <= int(port) <= 65535:
        return None
    try:
        return ipaddress.IPv4Address(host), int(port)
    except ValueError:
        return None


# -- documents and includes -----------------------------------------------------------------------
def _read(text: str, source: str) -> _Doc:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        raise ConfigError(f"invalid TOML: {e}", Where(source, int(m.group(1)) if m else None)) from None
    return _Doc(source, data, KeyLines(text))


def _documents(text: str, source: str, include: Includer | None) -> list[_Doc]:
    """The file and, depth first, every file it includes."""
    docs: list[_Doc] = []
    pending = [(text, source, TOP_KEYS)]
    while pending:
        text, source, allowed = pending.pop(0)
        doc = _read(text, source)
        top = _Table(doc, doc.data, (), allowed)
        docs.append(doc)
        included: list[tuple[str, str, frozenset[str]]] = []
        for pattern in _include_patterns(top):
            if include is None:
                raise top.error("include", "include needs a file to be relative to (the configuration "
                                           "was not read from a file)")
            try:
                found = include(pattern, source)
            except ConfigError as e:
                if e.where is not None:
                    raise
                raise top.error("include", e.message) from None
            included.extend((t, name, INCLUDED_KEYS) for name, t in found)
        pending[:0] = included
    return docs


def _include_patterns(top: _Table) -> list[str]:
    if isinstance(top.data.get("include"), str):
        return [top.string("include")]
    return top.strings("include", "a file name or glob pattern")


# -- daemon, timeouts, metrics ------------------------------------------------------------------
def _daemon(t: _Table) -> DaemonSettings:
    d = DaemonSettings()
    interfaces = t.strings("interfaces", "an interface name")
    for i, name in enumerate(interfaces):
        if not _IFNAME.fullmatch(name):
            raise t.doc.error(t.path + ("interfaces", i), f"{name!r} is not an interface name")
        if name in interfaces[:i]:
            raise t.doc.error(t.path + ("interfaces", i), f"interface {name!r} is listed twice")
    socket_path = t.string("control_socket", d.control_socket)
    if not socket_path.startswith("/"):
        raise t.error("control_socket", f"{socket_path!r} is not an absolute path")
    flow_log = t.string("flow_log", None)
    if flow_log is not None and flow_log != "-" and not flow_log.startswith("/"):
        raise t.error("flow_log", f"{flow_log!r} is neither an absolute path nor \"-\" (stdout)")
    return DaemonSettings(
        interfaces=tuple(interfaces),
        backend=t.choice("backend", BACKENDS, d.backend),
        workers=t.integer("workers", d.workers, 1, 64),
        conn_limit=t.integer("conn_limit", d.conn_limit, 1, MAX_INT32),
        gro=t.boolean("gro", d.gro),
        control_socket=socket_path,
        control_group=t.string("control_group", None),
        flow_log=flow_log,
        flow_log_rate=t.integer("flow_log_rate", d.flow_log_rate, 1, MAX_INT32),
    )


def _timeouts(t: _Table) -> Timeouts:
    d = Timeouts()
    return Timeouts(tcp=t.integer("tcp", d.tcp, 1, MAX_TIMEOUT),
                    tcpfin=t.integer("tcpfin", d.tcpfin, 1, MAX_TIMEOUT),
                    udp=t.integer("udp", d.udp, 1, MAX_TIMEOUT))


def _metrics(t: _Table) -> MetricsSettings:
    if t.data.get("listen") == "off":
        return MetricsSettings(listen="off")
    listen = t.endpoint("listen", lo_port=1)
    return MetricsSettings(listen=None if listen is None else t.data["listen"])


# -- health checks --------------------------------------------------------------------------------
def _checks(t: _Table) -> tuple[CheckSpec, ...] | None:
    """The ``check`` table(s) of a service or dest; None when it has no ``check`` key."""
    if not t.has("check"):
        return None
    value = t.data["check"]
    if isinstance(value, dict):
        found = [(t.path + ("check",), value)]
    elif isinstance(value, list):
        found = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise t.doc.error(t.path + ("check", i), f"must be a table, not {_type_name(item)}")
            found.append((t.path + ("check", i), item))
    else:
        raise t.error("check", f"must be a table or an array of tables, not {_type_name(value)}")
    # The checker's own keys are checked against its kind in _check.
    return tuple(_check(_Table(t.doc, data, path, frozenset(data))) for path, data in found)


def _check(t: _Table) -> CheckSpec:
    kind = t.string("type")
    if kind not in CHECK_KEYS:
        check_tables({}, kind, t.where("type"))
    allowed = CHECK_KEYS[kind]
    options: list[tuple[str, Any]] = []
    for key, value in t.data.items():
        if key == "type":
            continue
        option = "type" if kind == "DNS_CHECK" and key == DNS_QUERY_TYPE else key
        if option not in allowed:
            names = sorted(DNS_QUERY_TYPE if k == "type" else k for k in allowed)
            raise t.error(key, f"{kind}: unknown key {key!r} (allowed: type, {', '.join(names)})")
        options.append((option, _check_value(t, key, value, _CHECK_VALUE_KINDS.get(option, "scalar"))))
    check_tables(dict(options), kind, t.where())
    return CheckSpec(kind, tuple(options), where=t.where())


def _check_value(t: _Table, key: str, value: Any, kind: str) -> Any:
    if kind == "url":
        return tuple(_url(u) for u in t.tables(key, URL_KEYS))
    return _typed(t, key, value, kind)


def _url(t: _Table) -> dict[str, Any]:
    return {k: _typed(t, k, v, _URL_VALUE_KINDS.get(k, "scalar")) for k, v in t.data.items()}


def _typed(t: _Table, key: str, value: Any, kind: str) -> Any:
    """A checker option of the given kind, checked."""
    if kind == "port":
        return t.integer(key, _REQUIRED, 0, 65535)
    if kind == "fwmark":
        return t.integer(key, _REQUIRED, 0, MAX_FWMARK)
    if kind == "count":
        return t.integer(key, _REQUIRED, 0, MAX_INT32)
    if kind == "integer":
        return t.integer(key, _REQUIRED, -MAX_INT32, MAX_INT32)
    if kind == "seconds":
        return t.number(key, _REQUIRED, 0, 86400 * 365)
    if kind == "bool":
        return t.boolean(key, _REQUIRED)
    if kind == "address":
        return str(t.address(key))
    if kind == "string":
        return t.string(key)
    if kind == "status":
        if isinstance(value, str):
            return t.string(key)
        return t.integer(key, _REQUIRED, 100, 599)
    if isinstance(value, (dict, list)) or isinstance(value, (datetime, date, time)):
        raise t.error(key, f"must be a string, number or boolean, not {_type_name(value)}")
    return value


# -- services -------------------------------------------------------------------------------------
def _flags(t: _Table, sched: str) -> frozenset[str]:
    given = t.strings("flags", "a scheduler flag")
    try:
        return frozenset(sched_flags(sched, given))
    except UsageError:
        allowed = allowed_sched_flags(sched)
        bad = next(f for f in given if f not in allowed)
        raise t.doc.error(t.path + ("flags", given.index(bad)),
                          f"{bad!r} is not a flag of scheduler {sched} (allowed: {', '.join(allowed)})") \
            from None


def _members(t: _Table) -> tuple[GroupMember, ...]:
    texts = t.strings("members", "\"tcp ADDRESS:PORT\" or \"udp ADDRESS:PORT\"")
    if not texts:
        raise t.error("members", "a service group needs members: [\"tcp 10.0.0.1:80\", ...]")
    members: list[GroupMember] = []
    for i, text in enumerate(texts):
        proto, _, rest = text.strip().partition(" ")
        found = _endpoint(rest.strip(), 0) if proto.lower() in ("tcp", "udp") else None
        if found is None:
            raise t.doc.error(t.path + ("members", i), f"{text!r} is not \"tcp ADDRESS:PORT\" or "
                                                       "\"udp ADDRESS:PORT\" (port 0 = any port)")
        member = (Proto.TCP if proto.lower() == "tcp" else Proto.UDP, found[0], found[1])
        if member in members:
            raise t.doc.error(t.path + ("members", i), f"{text!r} is listed twice")
        members.append(member)
    return tuple(members)


def _forwarding(t: _Table, default: FwdMethod) -> FwdMethod:
    if t.data.get("forwarding") == "tunnel":
        raise t.error("forwarding", "the tunnel forwarding method is not supported yet "
                                    "(allowed: masq, droute)")
    return FORWARDING[t.choice("forwarding", tuple(FORWARDING), default.value)]


def _service_config(t: _Table) -> ServiceConfig:
    protocol = t.choice("protocol", PROTOCOLS)
    sched = t.choice("scheduler", scheduler_names(), "wlc")
    common: dict[str, Any] = dict(
        sched=sched, flags=_flags(t, sched),
        persistent=t.integer("persistence_timeout", None, 1, MAX_INT32),
        netmask=t.address("persistence_netmask", HOST_MASK),
        ops=t.boolean("ops", False))
    if protocol == "group":
        for key in ("vip", "port"):
            if t.has(key):
                raise t.error(key, "not for a service group (protocol = \"group\"): its entries are "
                                   "its members")
        fwmark = t.integer("fwmark", _REQUIRED, 1, MAX_FWMARK)
        members = _members(t)
        if common["ops"] and any(m[0] != Proto.UDP for m in members):
            raise t.error("ops", "one-packet scheduling (ops) is for UDP services only")
        return _build(t, lambda: ServiceConfig(Proto.FWM, ANY_ADDR, 0, fwmark=fwmark, members=members,
                                               **common))
    for key in ("fwmark", "members"):
        if t.has(key):
            raise t.error(key, "only for service groups (protocol = \"group\")")
    vip = t.address("vip")
    port = t.integer("port", _REQUIRED, 0, 65535)
    if port == 0 and common["persistent"] is None:
        raise t.error("port", "port 0 (any port) is only for persistent services (set persistence_timeout)")
    if common["ops"] and protocol != "udp":
        raise t.error("ops", "one-packet scheduling (ops) is for UDP services only")
    proto = Proto.TCP if protocol == "tcp" else Proto.UDP
    return _build(t, lambda: ServiceConfig(proto, vip, port, **common))


def _build(t: _Table, make: Callable[[], _T]) -> _T:
    """Run a model constructor; its own checks (ValueError) become errors naming the table."""
    try:
        return make()
    except ConfigError:
        raise
    except ValueError as e:
        raise t.error(None, str(e)) from None


def _dest(t: _Table, svc: ServiceConfig, method: FwdMethod, inherited: tuple[CheckSpec, ...],
          warnings: list[ConfigWarning]) -> RealServer:
    address = t.address("address")
    port = t.integer("port", svc.vport, 0, 65535)
    forwarding = _forwarding(t, method)
    weight = t.integer("weight", 1, 0, MAX_WEIGHT)
    upper = t.integer("upper_threshold", 0, 0, MAX_THRESHOLD)
    lower = t.integer("lower_threshold", 0, 0, MAX_THRESHOLD)
    cfg = _build(t, lambda: DestConfig(address, port, weight=weight, method=forwarding, u_threshold=upper,
                                       l_threshold=lower))
    if forwarding == FwdMethod.DROUTE and svc.proto != Proto.FWM and port != svc.vport:
        warnings.append(ConfigWarning(t.where("port"), f"droute does not change the port: the real server "
                                                       f"receives port {svc.vport}, not {port}"))
    own = _checks(t)
    return RealServer(cfg, inherited if own is None else own,
                      inhibit_on_failure=t.boolean("inhibit_on_failure", None),
                      notify_up=t.argv("notify_up"), notify_down=t.argv("notify_down"), where=t.where())


def _service(t: _Table, warnings: list[ConfigWarning]) -> VirtualService:
    cfg = _service_config(t)
    method = _forwarding(t, FwdMethod.DROUTE)
    inherited = _checks(t) or ()
    dests: list[RealServer] = []
    seen: dict[tuple[ipaddress.IPv4Address, int], str] = {}
    for d in t.tables("dest", DEST_KEYS):
        rs = _dest(d, cfg, method, inherited, warnings)
        key = (rs.config.daddr, rs.config.dport)
        if key in seen:
            raise d.error(None, f"dest {key[0]}:{key[1]} is already in this service ({seen[key]})")
        seen[key] = str(d.where())
        dests.append(rs)
    dv = _DEFAULT_SERVICE
    return VirtualService(
        cfg, tuple(dests), name=t.string("name", None),
        delay_loop=t.number("delay_loop", dv.delay_loop, 0.001, 86400),
        sorry_server=t.endpoint("sorry_server"),
        sorry_server_inhibit=t.boolean("sorry_server_inhibit", dv.sorry_server_inhibit),
        quorum=t.integer("quorum", dv.quorum, 0, MAX_INT32),
        hysteresis=t.integer("hysteresis", dv.hysteresis, 0, MAX_INT32),
        quorum_up=t.argv("quorum_up"), quorum_down=t.argv("quorum_down"),
        alpha=t.boolean("alpha", dv.alpha), omega=t.boolean("omega", dv.omega),
        inhibit_on_failure=t.boolean("inhibit_on_failure", dv.inhibit_on_failure),
        virtualhost=t.string("virtualhost", None),
        slow_start=t.number("slow_start", dv.slow_start, 0, MAX_SLOW_START),
        failed_conns=_failed_conns(t, dv.failed_conns), ejection=_ejection(t, cfg, dests, warnings),
        where=t.where())


def _ejection(t: _Table, cfg: ServiceConfig, dests: Sequence[RealServer],
              warnings: list[ConfigWarning]) -> EjectionSettings | None:
    """``[service.ejection]``: passive ejection, on when the table is there (even empty)."""
    if not t.has("ejection"):
        return None
    e = t.table("ejection", EJECTION_KEYS)
    d = EjectionSettings()
    threshold = e.number("threshold", d.threshold, 0, 1)
    if threshold >= 1:
        raise e.error("threshold", f"{threshold:g} is out of range (allowed: 0 <= threshold < 1: the "
                                   "fraction of SYNs left unanswered that ejects a dest)")
    backoff = e.number("backoff", d.backoff, 0.001, MAX_EJECTION_BACKOFF)
    backoff_max = e.number("backoff_max", max(d.backoff_max, backoff), backoff, MAX_EJECTION_BACKOFF)
    settings = _build(e, lambda: EjectionSettings(
        threshold=threshold, min_syns=e.integer("min_syns", d.min_syns, 1, MAX_EJECTION_SYNS),
        backoff=backoff, backoff_max=backoff_max,
        max_fraction=e.number("max_fraction", d.max_fraction, 0, 1)))
    entries = cfg.entries()
    if not any(proto == Proto.TCP for proto, _vaddr, _vport in entries):
        raise t.error("ejection", "passive ejection judges TCP connections: this service has no "
                                  "TCP entry")
    if dests and not any(rs.config.method == FwdMethod.MASQ for rs in dests):
        warnings.append(ConfigWarning(t.where("ejection"), "passive ejection sees only masq dests' "
                                      "answers (droute replies bypass the director): nothing is judged"))
    return settings


def _failed_conns(t: _Table, default: str) -> str:
    """``failed_conns``: a ``FAILED_CONNS`` name; a refused ``ConnPolicy`` name says why."""
    value = t.string("failed_conns", default)
    if value in FAILED_CONNS_REFUSED:
        raise t.error("failed_conns", f"{FAILED_CONNS_REFUSED[value]} (allowed: {', '.join(FAILED_CONNS)})")
    return str(t.choice("failed_conns", FAILED_CONNS, default))


_DEFAULT_SERVICE = VirtualService(ServiceConfig(Proto.TCP, ANY_ADDR, 1))


def _entry_name(entry: GroupMember) -> str:
    return f"{entry[0].name.lower()} {entry[1]}:{entry[2]}"


@dataclass(slots=True)
class _Services:
    """Services so far, for the checks across services (and across files)."""

    items: list[VirtualService] = field(default_factory=list)
    keys: dict[Any, str] = field(default_factory=dict)
    entries: dict[GroupMember, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)

    def add(self, t: _Table, vs: VirtualService) -> None:
        cfg = vs.config
        if cfg.key in self.keys:
            what = f"fwmark {cfg.fwmark}" if cfg.proto == Proto.FWM else _entry_name(cfg.key)
            raise t.error(None, f"service {what} is defined twice (first: {self.keys[cfg.key]})")
        for entry in cfg.entries():
            if entry in self.entries:
                raise t.error("members" if cfg.proto == Proto.FWM else None,
                              f"{_entry_name(entry)} already belongs to {self.entries[entry]}")
        if vs.name is not None and vs.name in self.names:
            raise t.error("name", f"service name {vs.name!r} is used twice (first: {self.names[vs.name]})")
        first = str(t.where())
        self.keys[cfg.key] = first
        self.entries.update(dict.fromkeys(cfg.entries(), first))
        if vs.name is not None:
            self.names[vs.name] = first
        self.items.append(vs)


# -- VRRP and sync ------------------------------------------------------------------------------
def _virtual_address(t: _Table, i: int, text: str) -> VirtualAddress:
    words = text.split()
    try:
        address = ipaddress.IPv4Interface(words[0]) if words else None
    except ValueError:
        address = None
    if address is None or len(words) not in (1, 3) or len(words) == 3 and (
            words[1] != "dev" or not _IFNAME.fullmatch(words[2])):
        raise t.doc.error(t.path + ("virtual_addresses", i),
                          f"{text!r} is not \"ADDRESS[/PREFIX] [dev INTERFACE]\"")
    return VirtualAddress(address, words[2] if len(words) == 3 else None)


def _addresses(t: _Table, key: str) -> tuple[ipaddress.IPv4Address, ...]:
    out = []
    for i, text in enumerate(t.strings(key, "an IPv4 address")):
        try:
            out.append(ipaddress.IPv4Address(text))
        except ValueError:
            raise t.doc.error(t.path + (key, i), f"{text!r} is not an IPv4 address") from None
    return tuple(out)


def _instance(t: _Table) -> VrrpInstance:
    d = VrrpInstance("", "", 1)
    version = t.integer("version", d.version, 2, 3)
    lo, hi = (1.0, 255.0) if version == 2 else (0.01, 40.95)   # v2: whole seconds; v3: centiseconds
    tracked = t.strings("track_interfaces", "an interface name")
    for i, name in enumerate(tracked):
        if not _IFNAME.fullmatch(name):
            raise t.doc.error(t.path + ("track_interfaces", i), f"{name!r} is not an interface name")
    return VrrpInstance(
        name=t.string("name"), interface=t.ifname("interface"), vrid=t.integer("vrid", _REQUIRED, 1, 255),
        priority=t.integer("priority", d.priority, 1, 255),
        advert_int=t.number("advert_int", d.advert_int, lo, hi),
        state=t.choice("state", ("MASTER", "BACKUP"), d.state), version=version,
        preempt=t.boolean("preempt", d.preempt),
        preempt_delay=t.number("preempt_delay", d.preempt_delay, 0, 1000),
        virtual_addresses=tuple(_virtual_address(t, i, s)
                                for i, s in enumerate(t.strings("virtual_addresses", "an address"))),
        unicast_src_ip=t.address("unicast_src_ip", None), unicast_peers=_addresses(t, "unicast_peers"),
        track_interfaces=tuple(tracked),
        notify_master=t.argv("notify_master"), notify_backup=t.argv("notify_backup"),
        notify_fault=t.argv("notify_fault"),
        garp_master_delay=t.number("garp_master_delay", d.garp_master_delay, 0, 3600),
        garp_master_repeat=t.integer("garp_master_repeat", d.garp_master_repeat, 1, 255),
        min_garp=t.boolean("min_garp", d.min_garp),
        lower_prio_no_advert=t.boolean("lower_prio_no_advert", d.lower_prio_no_advert),
        higher_prio_send_advert=t.boolean("higher_prio_send_advert", d.higher_prio_send_advert),
        checksum_as_v2=t.boolean("checksum_as_v2", d.checksum_as_v2),
        auth_key=t.string("auth_key", None),
        where=t.where())


@dataclass(slots=True)
class _Vrrp:
    instances: list[VrrpInstance] = field(default_factory=list)
    groups: list[VrrpSyncGroup] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    vrids: dict[tuple[str, int], str] = field(default_factory=dict)
    grouped: dict[str, str] = field(default_factory=dict)
    group_tables: list[_Table] = field(default_factory=list)

    def add_instance(self, t: _Table) -> None:
        inst = _instance(t)
        here = str(t.where())
        if inst.name in self.names:
            raise t.error("name", f"VRRP instance {inst.name!r} is defined twice "
                                  f"(first: {self.names[inst.name]})")
        vrid = (inst.interface, inst.vrid)
        if vrid in self.vrids:
            raise t.error("vrid", f"vrid {inst.vrid} on {inst.interface} is already used by "
                                  f"{self.vrids[vrid]}")
        self.names[inst.name] = here
        self.vrids[vrid] = here
        self.instances.append(inst)

    def add_group(self, t: _Table) -> None:
        """Sync groups are checked once every instance (in every file) is known."""
        self.group_tables.append(t)

    def finish(self) -> None:
        seen: dict[str, str] = {}
        for t in self.group_tables:
            name = t.string("name")
            if name in seen:
                raise t.error("name", f"VRRP sync group {name!r} is defined twice (first: {seen[name]})")
            seen[name] = str(t.where())
            members = t.strings("members", "a VRRP instance name")
            if not members:
                raise t.error("members", "a sync group needs members (VRRP instance names)")
            for i, member in enumerate(members):
                path = t.path + ("members", i)
                if member not in self.names:
                    raise t.doc.error(path, f"no VRRP instance {member!r} (defined: "
                                            f"{_allowed(self.names) or 'none'})")
                if member in self.grouped:
                    raise t.doc.error(path, f"VRRP instance {member!r} is already in sync group "
                                            f"{self.grouped[member]!r}")
                self.grouped[member] = name
            self.groups.append(VrrpSyncGroup(name, tuple(members), where=t.where()))


def _sync(t: _Table, vrrp: _Vrrp) -> SyncSettings:
    d = SyncSettings("")
    instance = t.string("instance", None)
    if instance is not None and instance not in vrrp.names:
        raise t.error("instance", f"no VRRP instance {instance!r} "
                                  f"(defined: {_allowed(vrrp.names) or 'none'})")
    group = t.address("group", d.group)
    if not group.is_multicast:
        raise t.error("group", f"{group} is not a multicast address (224.0.0.0/4)")
    key = t.string("key", None)
    key_file = t.string("key_file", None)
    if key is not None and key_file is not None:
        raise t.error("key_file", "give key or key_file, not both")
    return SyncSettings(interface=t.ifname("interface"), instance=instance,
                        syncid=t.integer("syncid", d.syncid, 0, 255),
                        port=t.integer("port", d.port, 1, 65535),
                        group=group, peers=_addresses(t, "peers"), key=key, key_file=key_file)


# -- the whole file -------------------------------------------------------------------------------
def parse(text: str, source: str, include: Includer | None = None) -> LoadResult:
    """A native (TOML) configuration.  Raises ``ConfigError`` naming file, line and key."""
    docs = _documents(text, source, include)
    warnings: list[ConfigWarning] = []
    services, vrrp = _Services(), _Vrrp()
    for doc in docs:
        top = _Table(doc, doc.data, (), TOP_KEYS)
        for t in top.tables("service", SERVICE_KEYS):
            services.add(t, _service(t, warnings))
        v = top.table("vrrp", VRRP_KEYS)
        for t in v.tables("instance", INSTANCE_KEYS):
            vrrp.add_instance(t)
        for t in v.tables("sync_group", SYNC_GROUP_KEYS):
            vrrp.add_group(t)
    vrrp.finish()
    top = _Table(docs[0], docs[0].data, (), TOP_KEYS)
    sync = top.table("sync", SYNC_KEYS)
    config = Config(
        daemon=_daemon(top.table("daemon", DAEMON_KEYS)),
        timeouts=_timeouts(top.table("timeouts", TIMEOUT_KEYS)),
        services=tuple(services.items), vrrp=tuple(vrrp.instances), vrrp_sync_groups=tuple(vrrp.groups),
        sync=_sync(sync, vrrp) if sync.data else None,
        metrics=_metrics(top.table("metrics", METRICS_KEYS)),
        router_id=top.string("router_id", None), source=source)
    return LoadResult(config, tuple(warnings))
