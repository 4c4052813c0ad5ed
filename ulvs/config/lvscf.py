"""Red Hat Piranha's ``/etc/sysconfig/ha/lvs.cf`` parsed into the configuration model.

Grammar (lvs.cf(5)): ``key = value`` lines, ``virtual NAME {`` ... ``}`` blocks holding
``server NAME {`` ... ``}`` blocks, ``#`` comments, values optionally in double quotes.  Piranha's
``lvs`` daemon turned each active virtual into an ipvsadm service and ran one ``nanny`` per
virtual x server; ``pulse`` moved the VIPs between the primary and the backup with its own
heartbeat.  The mapping, and what a Piranha user should expect:

* ``active = 0`` virtuals and servers are left out, as ``lvs`` leaves them out of IPVS (one
  warning each, so ``check-config`` shows them).  A missing ``active`` means active.
* ``network = nat|direct|tunnel`` is the forwarding method of every server (masq, droute,
  tunnel); without it ulvs assumes nat (Piranha's default) and warns.  Direct routing and
  tunnelling keep the destination port, so a server ``port`` differing from the virtual's is an
  error (ipvsadm would silently force it).
* Each server gets a ``NANNY`` health check from its virtual's ``send``, ``expect``,
  ``use_regex``, ``send_program``, ``timeout`` and ``reentry`` (only the keys given; none = TCP
  connect only).  ``send`` and ``expect`` are stored with nanny's ``\\n \\r \\t`` escapes decoded.
* ``fwmark = N``: ulvs cannot see netfilter marks, so every virtual carrying mark N becomes a
  member (protocol, address, port) of one service group N -- the entries the marking rules
  usually select.  Scheduler and persistence come from the first such virtual; its servers are
  merged, each with one nanny check per virtual (``connect_port`` = that virtual's port).
* The director pair (``primary``, ``backup``, ``heartbeat``, ``keepalive``, ``deadtime`` ...) is
  not converted: ulvs fails over with VRRP, and which of the two hosts reads this file cannot be
  told from the file.  Each such key is a warning; the ``primary`` warning lists the addresses a
  vrrp_instance has to carry (each virtual's VIP and ``nat_router``).
* ``syncdaemon = 1`` with ``syncd_iface``/``syncd_id`` becomes connection sync settings;
  ``tcp_timeout``, ``tcpfin_timeout`` and ``udp_timeout`` become the ipvsadm timeouts.
* ``service = fos`` (failover services) cannot run on ulvs and is an error; ``failover`` blocks
  are skipped with a warning.  ``load_monitor rup|ruptime`` and ``quiesce_server = 1`` are
  warnings (not supported).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ulvs.config.schema import (
    CheckSpec,
    Config,
    ConfigError,
    ConfigWarning,
    Includer,
    LoadResult,
    RealServer,
    SyncSettings,
    Timeouts,
    VirtualService,
    Where,
    check_tables,
)
from ulvs.core.model import MAX_WEIGHT, DestConfig, FwdMethod, GroupMember, Proto, ServiceConfig
from ulvs.sched import base as sched_base

NETWORKS = {"nat": FwdMethod.MASQ, "direct": FwdMethod.DROUTE, "tunnel": FwdMethod.TUNNEL}
PROTOCOLS = {"tcp": Proto.TCP, "udp": Proto.UDP}
DEFAULT_NETWORK = "nat"
MAX_PERSISTENCE = 2**31 - 1
_ESCAPES = {"\\n": "\n", "\\r": "\r", "\\t": "\t"}
_ESCAPE = re.compile(r"\\[nrt]")
_ASSIGN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)\Z")
_OPEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\s+([^\s{=]+)\s*(\{)?|\s*(\{))\Z")
_INT = re.compile(r"[+-]?[0-9]+\Z")

# ==========================================================================================
# Lines and blocks
# ==========================================================================================


@dataclass(slots=True)
class Entry:
    """``key = value`` (``block`` None) or ``key NAME { ... }`` (value = NAME)."""

    key: str
    value: str
    line: int
    block: list[Entry] | None = None


def _strip_comment(line: str) -> str:
    quoted = False
    for i, c in enumerate(line):
        if c == '"':
            quoted = not quoted
        elif c == "#" and not quoted:
            return line[:i]
    return line


def _unquote(value: str, where: Where) -> str:
    value = value.strip()
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            raise ConfigError("unterminated quoted value", where)
        return value[1:-1]
    return value


def read_entries(text: str, source: str) -> list[Entry]:
    """The file as a tree of entries; braces must balance."""
    root: list[Entry] = []
    stack: list[tuple[Entry, list[Entry]]] = []      # (open block, enclosing list)
    current = root
    pending: Entry | None = None                      # "virtual NAME" waiting for its "{"
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).strip()
        if not line:
            continue
        where = Where(source, lineno)
        if pending is not None:
            if line != "{":
                raise ConfigError(f"expected '{{' after {pending.key} {pending.value} (or KEY = VALUE)",
                                  Where(source, pending.line))
            stack.append((pending, current))
            current = pending.block = []
            pending = None
            continue
        if line == "}":
            if not stack:
                raise ConfigError("unexpected '}' (no block is open)", where)
            _, current = stack.pop()
            continue
        opened = _OPEN.match(line)
        if opened:
            entry = Entry(opened.group(1), opened.group(2) or "", lineno)
            current.append(entry)
            if opened.group(3) or opened.group(4):
                stack.append((entry, current))
                current = entry.block = []
            else:
                pending = entry
            continue
        assign = _ASSIGN.match(line)
        if assign is None:
            raise ConfigError(f"cannot read {line!r} (expected KEY = VALUE, 'virtual NAME {{', "
                              "'server NAME {' or '}')", where)
        current.append(Entry(assign.group(1), _unquote(assign.group(2), where), lineno))
    if pending is not None:
        raise ConfigError(f"expected '{{' after {pending.key} {pending.value} (or KEY = VALUE)",
                          Where(source, pending.line))
    if stack:
        opened_entry, _ = stack[-1]
        raise ConfigError(f"missing '}}' closing {opened_entry.key} {opened_entry.value} opened here",
                          Where(source, opened_entry.line, opened_entry.key))
    return root


# ==========================================================================================
# Values
# ==========================================================================================


class _Ctx:
    def __init__(self, source: str) -> None:
        self.source = source
        self.warnings: list[ConfigWarning] = []

    def where(self, e: Entry) -> Where:
        return Where(self.source, e.line, e.key)

    def error(self, e: Entry, message: str) -> ConfigError:
        return ConfigError(message, self.where(e))

    def warn(self, e: Entry, message: str) -> None:
        self.warnings.append(ConfigWarning(self.where(e), message))


def _int(ctx: _Ctx, e: Entry, lo: int, hi: int) -> int:
    if not _INT.match(e.value):
        raise ctx.error(e, f"{e.value!r} is not a whole number (allowed: {lo}..{hi})")
    value = int(e.value)
    if not lo <= value <= hi:
        raise ctx.error(e, f"{value} out of range (allowed: {lo}..{hi})")
    return value


def _bool(ctx: _Ctx, e: Entry) -> bool:
    if e.value not in ("0", "1"):
        raise ctx.error(e, f"{e.value!r} is not allowed (allowed: 0, 1)")
    return e.value == "1"


def _addr(ctx: _Ctx, e: Entry, text: str | None = None) -> ipaddress.IPv4Address:
    text = e.value if text is None else text
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise ctx.error(e, f"{text!r} is not an IPv4 address (ulvs takes numeric IPv4 addresses)") from None


def _netmask(ctx: _Ctx, e: Entry) -> ipaddress.IPv4Address:
    mask = _addr(ctx, e)
    bits = int(mask)
    if bits and (bits | (bits - 1)) & 0xFFFFFFFF != 0xFFFFFFFF:
        raise ctx.error(e, f"{mask} is not a netmask (contiguous ones, e.g. 255.255.255.0)")
    return mask


def _choice(ctx: _Ctx, e: Entry, choices: dict[str, Any]) -> Any:
    try:
        return choices[e.value.lower()]
    except KeyError:
        raise ctx.error(e, f"{e.value!r} is not allowed (allowed: {', '.join(choices)})") from None


def _address_dev(ctx: _Ctx, e: Entry) -> tuple[ipaddress.IPv4Address, str | None]:
    """``VIP [dev:alias]``."""
    words = e.value.split()
    if not 1 <= len(words) <= 2:
        raise ctx.error(e, "expected an address and optionally a device (e.g. 10.0.0.1 eth0:1)")
    return _addr(ctx, e, words[0]), (words[1] if len(words) == 2 else None)


def _decode(value: str) -> str:
    """nanny's escapes in send/expect: ``\\n``, ``\\r``, ``\\t``."""
    return _ESCAPE.sub(lambda m: _ESCAPES[m.group(0)], value)


# ==========================================================================================
# Globals
# ==========================================================================================


@dataclass(slots=True)
class _Globals:
    method: FwdMethod | None = None
    primary: Entry | None = None
    nat_router: tuple[ipaddress.IPv4Address, str | None] | None = None
    nat_nmask: ipaddress.IPv4Address | None = None
    syncdaemon: Entry | None = None                # the "syncdaemon = 1" entry
    syncd_iface: str | None = None
    syncd_id: int = 0
    timeouts: dict[str, int] = field(default_factory=dict)


def _serial_no(ctx: _Ctx, g: _Globals, e: Entry) -> None:
    _int(ctx, e, 0, 2**63 - 1)                     # the GUI's revision counter: nothing to do


def _service_kind(ctx: _Ctx, g: _Globals, e: Entry) -> None:
    if _choice(ctx, e, {"lvs": "lvs", "fos": "fos"}) == "fos":
        raise ctx.error(e, "failover services (service = fos) are not supported by ulvs; only "
                           "virtual servers (service = lvs)")


def _network(ctx: _Ctx, g: _Globals, e: Entry) -> None:
    g.method = _choice(ctx, e, NETWORKS)


def _nat_router(ctx: _Ctx, g: _Globals, e: Entry) -> None:
    g.nat_router = _address_dev(ctx, e)
    ctx.warn(e, "nat_router (the real servers' floating gateway) is moved by pulse; ulvs moves it "
                "with VRRP: put it in a vrrp_instance's virtual addresses")


def _nat_nmask(ctx: _Ctx, g: _Globals, e: Entry) -> None:
    g.nat_nmask = _netmask(ctx, e)


def _syncdaemon(ctx: _Ctx, g: _Globals, e: Entry) -> None:
    g.syncdaemon = e if _bool(ctx, e) else None


def _syncd_iface(ctx: _Ctx, g: _Globals, e: Entry) -> None:
    g.syncd_iface = e.value


def _syncd_id(ctx: _Ctx, g: _Globals, e: Entry) -> None:
    g.syncd_id = _int(ctx, e, 0, 255)


def _timeout(ctx: _Ctx, g: _Globals, e: Entry) -> None:
    if e.value:                                    # the GUI writes an empty value for "unchanged"
        g.timeouts[TIMEOUT_KEYS[e.key]] = _int(ctx, e, 1, 2**31 - 1)


def _pulse(conv: Callable[[_Ctx, Entry], Any]) -> Callable[[_Ctx, _Globals, Entry], None]:
    """A pulse (heartbeat) setting: validated, then a warning; ``primary`` warns at the end with
    the list of addresses a vrrp_instance has to carry."""
    def handler(ctx: _Ctx, g: _Globals, e: Entry) -> None:
        conv(ctx, e)
        if e.key == "primary":
            g.primary = e
        else:
            ctx.warn(e, f"{e.key}: pulse's heartbeat is not used; ulvs runs the director pair with VRRP; "
                        "ignored")
    return handler


def _unused(ctx: _Ctx, g: _Globals, e: Entry) -> None:
    ctx.warn(e, f"{e.key}: accepted but not used by ulvs; ignored")


TIMEOUT_KEYS = {"tcp_timeout": "tcp", "tcpfin_timeout": "tcpfin", "udp_timeout": "udp"}
GLOBAL_KEYS: dict[str, Callable[[_Ctx, _Globals, Entry], None]] = {
    "serial_no": _serial_no,
    "service": _service_kind,
    "network": _network,
    "nat_router": _nat_router,
    "nat_nmask": _nat_nmask,
    "syncdaemon": _syncdaemon,
    "syncd_iface": _syncd_iface,
    "syncd_id": _syncd_id,
    **{k: _timeout for k in TIMEOUT_KEYS},
    **{k: _pulse(_addr) for k in ("primary", "primary_private", "backup", "backup_private")},
    **{k: _pulse(_bool) for k in ("backup_active", "heartbeat", "monitor_links")},
    **{k: _pulse(lambda ctx, e: _int(ctx, e, 0, 65535)) for k in ("heartbeat_port", "keepalive", "deadtime")},
    **{k: _unused for k in ("debug_level", "rsh_command", "hard_shutdown")},
}


def _global(ctx: _Ctx, g: _Globals, e: Entry) -> None:
    handler = GLOBAL_KEYS.get(e.key)
    if handler is None:
        ctx.warn(e, f"unknown key {e.key!r}; ignored")
    else:
        handler(ctx, g, e)


# ==========================================================================================
# Virtuals and servers
# ==========================================================================================


@dataclass(slots=True)
class _Server:
    name: str
    where: Where
    address: ipaddress.IPv4Address | None = None
    port: int | None = None
    weight: int = 1
    active: bool = True


@dataclass(slots=True)
class _Virtual:
    name: str
    where: Where
    active: bool = True
    address: ipaddress.IPv4Address | None = None
    dev: str | None = None
    nmask: ipaddress.IPv4Address | None = None
    port: int | None = None
    fwmark: int = 0
    persistent: int | None = None
    pmask: ipaddress.IPv4Address = ipaddress.IPv4Address("255.255.255.255")
    sched: str = "wlc"
    proto: Proto = Proto.TCP
    nanny: dict[str, Any] = field(default_factory=dict)
    servers: list[_Server] = field(default_factory=list)


def _persistent(ctx: _Ctx, e: Entry) -> int | None:
    value = _int(ctx, e, 0, MAX_PERSISTENCE)
    return value or None


def _load_monitor(ctx: _Ctx, e: Entry) -> None:
    if _choice(ctx, e, {"none": "none", "rup": "rup", "ruptime": "ruptime"}) != "none":
        ctx.warn(e, f"load_monitor {e.value}: weights from rup/ruptime load are not supported by ulvs; "
                    "ignored (the configured weights apply)")


def _quiesce(ctx: _Ctx, e: Entry) -> None:
    if _bool(ctx, e):
        ctx.warn(e, "quiesce_server = 1 (reset connection counters when a server returns) is not "
                    "supported by ulvs; ignored")


def _set(attr: str, conv: Callable[[_Ctx, Entry], Any]) -> Callable[[_Ctx, Any, Entry], None]:
    def handler(ctx: _Ctx, obj: Any, e: Entry) -> None:
        setattr(obj, attr, conv(ctx, e))
    return handler


def _nanny(key: str, conv: Callable[[_Ctx, Entry], Any]) -> Callable[[_Ctx, _Virtual, Entry], None]:
    def handler(ctx: _Ctx, v: _Virtual, e: Entry) -> None:
        v.nanny[key] = conv(ctx, e)
    return handler


def _address(ctx: _Ctx, v: _Virtual, e: Entry) -> None:
    v.address, v.dev = _address_dev(ctx, e)


def _scheduler(ctx: _Ctx, e: Entry) -> str:
    result: str = _choice(ctx, e, {n: n for n in sched_base.names()})
    return result


VIRTUAL_KEYS: dict[str, Callable[[_Ctx, _Virtual, Entry], None]] = {
    "active": _set("active", _bool),
    "address": _address,
    "vip_nmask": _set("nmask", _netmask),
    "port": _set("port", lambda ctx, e: _int(ctx, e, 0, 65535)),
    "fwmark": _set("fwmark", lambda ctx, e: _int(ctx, e, 1, 2**32 - 1)),
    "persistent": _set("persistent", _persistent),
    "pmask": _set("pmask", _netmask),
    "scheduler": _set("sched", _scheduler),
    "protocol": _set("proto", lambda ctx, e: _choice(ctx, e, PROTOCOLS)),
    "send": _nanny("send", lambda ctx, e: _decode(e.value)),
    "expect": _nanny("expect", lambda ctx, e: _decode(e.value)),
    "use_regex": _nanny("use_regex", _bool),
    "send_program": _nanny("send_program", lambda ctx, e: e.value),
    "timeout": _nanny("timeout", lambda ctx, e: _int(ctx, e, 1, 2**31 - 1)),
    "reentry": _nanny("reentry", lambda ctx, e: _int(ctx, e, 0, 2**31 - 1)),
    "load_monitor": lambda ctx, v, e: _load_monitor(ctx, e),
    "quiesce_server": lambda ctx, v, e: _quiesce(ctx, e),
}
SERVER_KEYS: dict[str, Callable[[_Ctx, _Server, Entry], None]] = {
    "address": _set("address", _addr),
    "active": _set("active", _bool),
    "weight": _set("weight", lambda ctx, e: _int(ctx, e, 0, MAX_WEIGHT)),
    "port": _set("port", lambda ctx, e: _int(ctx, e, 0, 65535)),
}


def _skipped(e: Entry) -> str:
    return "; block skipped" if e.block is not None else "; ignored"


def _server(ctx: _Ctx, e: Entry) -> _Server:
    s = _Server(e.value, ctx.where(e))
    for item in e.block or ():
        handler = SERVER_KEYS.get(item.key)
        if handler is None or item.block is not None:
            ctx.warn(item, f"unknown key {item.key!r} in server {s.name}{_skipped(item)}")
            continue
        handler(ctx, s, item)
    if s.address is None:
        raise ctx.error(e, f"server {s.name} needs an address")
    return s


def _virtual(ctx: _Ctx, e: Entry) -> _Virtual:
    v = _Virtual(e.value, ctx.where(e))
    for item in e.block or ():
        if item.key == "server" and item.block is not None:
            v.servers.append(_server(ctx, item))
            continue
        handler = VIRTUAL_KEYS.get(item.key)
        if handler is None or item.block is not None:
            ctx.warn(item, f"unknown key {item.key!r} in virtual {v.name}{_skipped(item)}")
            continue
        handler(ctx, v, item)
    if v.address is None:
        raise ctx.error(e, f"virtual {v.name} needs an address")
    if v.port is None and not v.fwmark and v.persistent is None:
        raise ctx.error(e, f"virtual {v.name} needs a port (0 = any port is only for persistent services)")
    return v


# ==========================================================================================
# Building the model
# ==========================================================================================


def _nanny_check(v: _Virtual, connect_port: int | None) -> CheckSpec:
    options = dict(v.nanny)
    if connect_port is not None:
        options["connect_port"] = connect_port
    check_tables(options, "NANNY", v.where)
    return CheckSpec("NANNY", tuple(sorted(options.items())), v.where)


def _dest(v: _Virtual, s: _Server, method: FwdMethod, fwm: bool) -> DestConfig:
    assert s.address is not None
    vport = v.port or 0
    if fwm:
        dport = s.port if s.port is not None else 0
    else:
        dport = vport if s.port is None else s.port
        if method is not FwdMethod.MASQ and dport != vport:
            raise ConfigError(f"server {s.name} port {dport} differs from the virtual's port {vport}: "
                              "direct routing and tunnelling keep the destination port (ipvsadm "
                              "forces it to the service port)", s.where)
    try:
        return DestConfig(s.address, dport, weight=s.weight, method=method)
    except ValueError as e:
        raise ConfigError(str(e), s.where) from None


def _active_servers(ctx: _Ctx, v: _Virtual) -> list[_Server]:
    out = []
    for s in v.servers:
        if s.active:
            out.append(s)
        else:
            ctx.warnings.append(ConfigWarning(s.where, f"server {s.name} is inactive (active = 0): "
                                                       "not configured"))
    return out


def _service(ctx: _Ctx, v: _Virtual, method: FwdMethod) -> VirtualService:
    assert v.address is not None
    try:
        config = ServiceConfig(v.proto, v.address, v.port or 0, sched=v.sched, persistent=v.persistent,
                               netmask=v.pmask)
    except ValueError as e:
        raise ConfigError(str(e), v.where) from None
    dests: list[RealServer] = []
    seen: set[tuple[ipaddress.IPv4Address, int]] = set()
    for s in _active_servers(ctx, v):
        d = _dest(v, s, method, fwm=False)
        if (d.daddr, d.dport) in seen:
            raise ConfigError(f"server {d.daddr}:{d.dport} is listed twice in virtual {v.name}", s.where)
        seen.add((d.daddr, d.dport))
        dests.append(RealServer(d, (_nanny_check(v, None),), where=s.where))
    return VirtualService(config, tuple(dests), name=v.name, where=v.where)


def _group_service(ctx: _Ctx, virtuals: list[_Virtual], method: FwdMethod) -> VirtualService:
    """Every active virtual with one fwmark, as one service group."""
    first = virtuals[0]
    members: list[GroupMember] = []
    for v in virtuals:
        assert v.address is not None
        member = (v.proto, v.address, v.port or 0)
        if member in members:
            raise ConfigError(f"{v.proto.name} {v.address}:{v.port or 0} is already a member of service "
                              f"group {first.fwmark} (virtual {first.name})", v.where)
        members.append(member)
        if (v.sched, v.persistent, v.pmask) != (first.sched, first.persistent, first.pmask):
            ctx.warnings.append(ConfigWarning(v.where, f"virtual {v.name}: scheduler/persistence differ from "
                                                       f"virtual {first.name} with the same fwmark "
                                                       f"{first.fwmark}; {first.name}'s apply"))
    try:
        config = ServiceConfig(Proto.FWM, ipaddress.IPv4Address(0), 0, sched=first.sched,
                               persistent=first.persistent, netmask=first.pmask, fwmark=first.fwmark,
                               members=tuple(members))
    except ValueError as e:
        raise ConfigError(str(e), first.where) from None
    dests: dict[tuple[ipaddress.IPv4Address, int], tuple[DestConfig, list[CheckSpec], Where]] = {}
    for v in virtuals:
        for s in _active_servers(ctx, v):
            d = _dest(v, s, method, fwm=True)
            key = (d.daddr, d.dport)
            if key not in dests:
                dests[key] = (d, [], s.where)
            elif dests[key][0] != d:
                ctx.warnings.append(ConfigWarning(s.where, f"server {s.name} differs from its entry in "
                                                           f"another virtual with fwmark {first.fwmark}; "
                                                           "the first one applies"))
            dests[key][1].append(_nanny_check(v, v.port))
    answered = ", ".join(f"{p.name} {a}:{port}" for p, a, port in members)
    ctx.warnings.append(ConfigWarning(first.where, f"fwmark {first.fwmark}: ulvs does not match netfilter "
                                                   f"marks; service group {first.fwmark} answers {answered}"))
    real = tuple(RealServer(d, tuple(checks), where=w) for d, checks, w in dests.values())
    return VirtualService(config, real, name=first.name, where=first.where)


def _sync(ctx: _Ctx, g: _Globals) -> SyncSettings | None:
    if g.syncdaemon is None:
        return None
    if g.syncd_iface is None:
        raise ctx.error(g.syncdaemon, "syncdaemon = 1 needs syncd_iface (the interface to sync "
                                      "connections on)")
    return SyncSettings(g.syncd_iface, None, syncid=g.syncd_id)


def _vip_text(addr: ipaddress.IPv4Address, mask: ipaddress.IPv4Address | None, dev: str | None) -> str:
    """``ADDR/LEN dev IF`` as a vrrp_instance's virtual_ipaddress would say it (eth0:1 -> eth0)."""
    text = str(addr) if mask is None else str(ipaddress.IPv4Interface(f"{addr}/{mask}"))
    return text + (f" dev {dev.split(':')[0]}" if dev else "")


def _pair_hint(ctx: _Ctx, g: _Globals, virtuals: list[_Virtual]) -> None:
    if g.primary is None:
        return
    vips: list[str] = []
    for v in virtuals:
        assert v.address is not None
        text = _vip_text(v.address, v.nmask, v.dev)
        if text not in vips:
            vips.append(text)
    if g.nat_router:
        vips.append(_vip_text(g.nat_router[0], g.nat_nmask, g.nat_router[1]))
    ctx.warn(g.primary, "primary/backup: pulse's director pair is not converted; ulvs runs the pair with "
                        "VRRP: define a vrrp_instance (or a sync group of them) carrying "
                        + (", ".join(vips) if vips else "the VIPs"))


def parse(text: str, source: str, include: Includer | None = None) -> LoadResult:
    """Parse lvs.cf ``text`` (named ``source`` in messages) into a Config.  lvs.cf has no
    includes; ``include`` is accepted for the common parser signature and not used."""
    ctx = _Ctx(source)
    entries = read_entries(text, source)
    g = _Globals()
    virtuals: list[_Virtual] = []
    names: dict[str, Where] = {}
    for e in entries:
        if e.block is None:
            _global(ctx, g, e)
        elif e.key == "virtual":
            v = _virtual(ctx, e)
            if v.name in names:
                raise ctx.error(e, f"virtual {v.name} is already defined at {names[v.name]}")
            names[v.name] = v.where
            if v.active:
                virtuals.append(v)
            else:
                ctx.warn(e, f"virtual {v.name} is inactive (active = 0): not configured")
        elif e.key == "failover":
            ctx.warn(e, f"failover {e.value}: failover services are not supported by ulvs; block skipped")
        else:
            ctx.warn(e, f"unknown block {e.key!r} at the top level; block skipped")
    method = g.method
    if method is None:
        method = NETWORKS[DEFAULT_NETWORK]
        if virtuals:
            ctx.warnings.append(ConfigWarning(Where(source, None, "network"),
                                              f"network not given: assuming {DEFAULT_NETWORK}"))
    # A service group takes the place of its first virtual.
    order: list[_Virtual | int] = []
    groups: dict[int, list[_Virtual]] = {}
    for v in virtuals:
        if v.fwmark:
            if v.fwmark not in groups:
                groups[v.fwmark] = []
                order.append(v.fwmark)
            groups[v.fwmark].append(v)
        else:
            order.append(v)
    built = [_group_service(ctx, groups[slot], method) if isinstance(slot, int)
             else _service(ctx, slot, method) for slot in order]
    seen: dict[Any, Where | None] = {}
    for svc in built:
        if svc.config.key in seen:
            raise ConfigError(f"this service is already defined at {seen[svc.config.key]}", svc.where)
        seen[svc.config.key] = svc.where
    _pair_hint(ctx, g, virtuals)
    config = Config(timeouts=Timeouts(**g.timeouts), services=tuple(built), sync=_sync(ctx, g),
                    source=source)
    warnings = sorted(ctx.warnings, key=lambda w: w.where.line or 0)
    return LoadResult(config, tuple(warnings))


__all__ = ["Entry", "parse", "read_entries"]
