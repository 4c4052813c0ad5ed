"""The control plane's data: JSON codec, applying requests to a Core, and listing snapshots.

The daemon serves a unix stream socket carrying newline-delimited JSON: each request line gets
exactly one reply line.  This module holds everything but the socket (STYLE rules 1 and 10): the
daemon's server reads a line and writes back ``handle_line(core, line, now)``; ``ulvsadm`` (and
the config reload) send the same request objects.  Nothing here reads a clock or does I/O.

Wire shapes (``svc`` = a service key, ``SVC`` = a full service config, ``DST`` = a dest config):

  svc  {"proto": "tcp"|"udp", "vaddr": "10.0.0.1", "vport": 80}  |  {"proto": "fwm", "fwmark": 1}
  SVC  svc + {"sched": "wlc", "flags": ["sh-port"], "persistent": 300|null,
              "netmask": "255.255.255.255", "ops": false}
       (fwm adds "members": [{"proto": "tcp", "vaddr": ..., "vport": ...}, ...])
  DST  {"daddr": "192.168.1.1", "dport": 80, "weight": 1, "method": "masq"|"droute"|"tunnel",
        "u_threshold": 0, "l_threshold": 0}

  {"cmd": "add_service", "service": SVC}            {"cmd": "edit_service", "service": SVC}
  {"cmd": "del_service", "service": svc}            {"cmd": "clear"}
  {"cmd": "add_dest", "service": svc, "dest": DST}  {"cmd": "edit_dest", "service": svc, "dest": DST}
  {"cmd": "del_dest", "service": svc, "dest": {"daddr": ..., "dport": ...}}
  {"cmd": "set_timeouts", "tcp": 900, "tcpfin": 120, "udp": 300}     (0 = keep)
  {"cmd": "get_timeouts"}  -> {"ok": true, "timeouts": {"tcp": .., "tcpfin": .., "udp": ..}}
  {"cmd": "zero"} | {"cmd": "zero", "service": svc}
  {"cmd": "snapshot", "conns": true}  -> {"ok": true, "snapshot": <snapshot_to_json>}
  {"cmd": "batch", "requests": [...]} -> {"ok": true, "replies": [...]}
                                       | {"ok": false, "error": "request 2 of 5 (add_dest): ...",
                                          "index": 1, "reply": <the failing request's own reply>}

Every other reply is {"ok": true} or {"ok": false, "error": "message"}.  Optional fields of SVC
and DST default as in ``ServiceConfig``/``DestConfig``; ``edit_service`` of a service group may
omit "members" (the group keeps its own).  A failed batch is rolled back (see ``_restore``).

Also here: ``diff_requests`` (reload = the requests from the running config to a wanted one) and
``RateEstimator`` (``--rate``: the daemon ticks it every 2 s and passes it to ``apply_request``).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ulvs.core.engine import Core, CoreError, ServiceKey
from ulvs.core.model import DestConfig, FwdMethod, GroupMember, Proto, Service, ServiceConfig
from ulvs.core.proto_tcp import UDP_STATE, TcpState
from ulvs.core.stats import Counters

IPVS_VERSION = "1.2.1"          # the IPVS version ipvsadm's banner shows (IP_VS_VERSION_CODE)
MAX_TIMEOUT = 86400 * 31        # ipvsadm.c MAX_TIMEOUT: 31 days
MAX_FWMARK = 2**32 - 1

JsonObj = dict[str, Any]
DestKey = tuple[ServiceKey, ipaddress.IPv4Address, int]

_PROTO_BY_NAME = {"tcp": Proto.TCP, "udp": Proto.UDP, "fwm": Proto.FWM}
_PROTO_NAME = {v: k for k, v in _PROTO_BY_NAME.items()}
_METHOD_BY_NAME = {m.value: m for m in FwdMethod}
_ANY = ipaddress.IPv4Address(0)
_HOST_MASK = ipaddress.IPv4Address("255.255.255.255")
_COUNTER_FIELDS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
_RATE_FIELDS = ("cps", "inpps", "outpps", "inbps", "outbps")


class RequestError(ValueError):
    """A malformed request or reply: wrong JSON type, missing field, unknown name."""


# ==========================================================================================
# Typed field access (JSON gives us Any; everything is checked before use)
# ==========================================================================================
_MISSING: Any = object()


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise RequestError(f"{what} must be a JSON object, not {_type_name(value)}")
    return value


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _field(d: Mapping[str, Any], name: str, default: Any) -> Any:
    if name in d:
        return d[name]
    if default is _MISSING:
        raise RequestError(f"missing field {name!r}")
    return default


def _int(d: Mapping[str, Any], name: str, default: Any = _MISSING) -> int:
    v = _field(d, name, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise RequestError(f"field {name!r} must be a whole number, not {_type_name(v)}")
    return v


def _opt_int(d: Mapping[str, Any], name: str) -> int | None:
    if d.get(name) is None:
        return None
    return _int(d, name)


def _str(d: Mapping[str, Any], name: str, default: Any = _MISSING) -> str:
    v = _field(d, name, default)
    if not isinstance(v, str):
        raise RequestError(f"field {name!r} must be a string, not {_type_name(v)}")
    return v


def _bool(d: Mapping[str, Any], name: str, default: Any = _MISSING) -> bool:
    v = _field(d, name, default)
    if not isinstance(v, bool):
        raise RequestError(f"field {name!r} must be true or false, not {_type_name(v)}")
    return v


def _list(d: Mapping[str, Any], name: str, default: Any = _MISSING) -> list[Any]:
    v = _field(d, name, default)
    if not isinstance(v, list):
        raise RequestError(f"field {name!r} must be a list, not {_type_name(v)}")
    return v


def _addr(d: Mapping[str, Any], name: str, default: Any = _MISSING) -> ipaddress.IPv4Address:
    text = _str(d, name, default)
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise RequestError(f"field {name!r}: {text!r} is not an IPv4 address") from None


def _port(d: Mapping[str, Any], name: str, default: Any = _MISSING) -> int:
    port = _int(d, name, default)
    if not 0 <= port <= 65535:
        raise RequestError(f"field {name!r}: port {port} out of range 0..65535")
    return port


def _proto(d: Mapping[str, Any], allowed: tuple[Proto, ...] = (Proto.TCP, Proto.UDP, Proto.FWM)) -> Proto:
    name = _str(d, "proto")
    proto = _PROTO_BY_NAME.get(name)
    if proto is None or proto not in allowed:
        names = "/".join(_PROTO_NAME[p] for p in allowed)
        raise RequestError(f"field 'proto' must be {names}, not {name!r}")
    return proto


# ==========================================================================================
# Codec: service keys, service and dest configs
# ==========================================================================================
def key_name(key: ServiceKey) -> str:
    """A service as ipvsadm names it: ``TCP 10.0.0.1:80`` or ``FWM 1``."""
    proto, vaddr, vport = key
    if proto == Proto.FWM:
        return f"FWM {vport}"
    return f"{proto.name} {vaddr}:{vport}"


def service_key_to_json(key: ServiceKey) -> JsonObj:
    proto, vaddr, vport = key
    if proto == Proto.FWM:
        return {"proto": "fwm", "fwmark": vport}
    return {"proto": _PROTO_NAME[proto], "vaddr": str(vaddr), "vport": vport}


def service_key_from_json(value: Any) -> ServiceKey:
    d = _obj(value, "service")
    proto = _proto(d)
    if proto == Proto.FWM:
        return (Proto.FWM, _ANY, _fwmark(d))
    return (proto, _addr(d, "vaddr"), _port(d, "vport"))


def _fwmark(d: Mapping[str, Any]) -> int:
    mark = _int(d, "fwmark")
    if not 1 <= mark <= MAX_FWMARK:
        raise RequestError(f"field 'fwmark': {mark} out of range 1..{MAX_FWMARK}")
    return mark


def member_to_json(m: GroupMember) -> JsonObj:
    return {"proto": _PROTO_NAME[m[0]], "vaddr": str(m[1]), "vport": m[2]}


def member_from_json(value: Any) -> GroupMember:
    d = _obj(value, "service group member")
    return (_proto(d, (Proto.TCP, Proto.UDP)), _addr(d, "vaddr"), _port(d, "vport"))


def service_to_json(cfg: ServiceConfig) -> JsonObj:
    out = service_key_to_json(cfg.key)
    if cfg.proto == Proto.FWM:
        out["members"] = [member_to_json(m) for m in cfg.members]
    out.update(sched=cfg.sched, flags=sorted(cfg.flags), persistent=cfg.persistent,
               netmask=str(cfg.netmask), ops=cfg.ops)
    return out


def service_from_json(value: Any, *, members: tuple[GroupMember, ...] | None = None) -> ServiceConfig:
    """A ``ServiceConfig``; ``members`` is used for a service group whose JSON has none."""
    d = _obj(value, "service")
    proto = _proto(d)
    flags = _list(d, "flags", [])
    if not all(isinstance(f, str) for f in flags):
        raise RequestError("field 'flags' must be a list of strings")
    common: dict[str, Any] = dict(
        sched=_str(d, "sched", "wlc"), flags=frozenset(flags), persistent=_opt_int(d, "persistent"),
        netmask=_addr(d, "netmask", str(_HOST_MASK)), ops=_bool(d, "ops", False))
    if proto == Proto.FWM:
        mark = _fwmark(d)
        if "members" in d:
            members = tuple(member_from_json(m) for m in _list(d, "members"))
        if not members:
            raise RequestError(
                f"service group {mark} has no members: service groups are defined in the config file "
                "(or given with ulvsadm --group-member proto:addr:port)")
        return ServiceConfig(Proto.FWM, _ANY, 0, fwmark=mark, members=members, **common)
    return ServiceConfig(proto, _addr(d, "vaddr"), _port(d, "vport"), **common)


def dest_to_json(cfg: DestConfig) -> JsonObj:
    return {"daddr": str(cfg.daddr), "dport": cfg.dport, "weight": cfg.weight, "method": cfg.method.value,
            "u_threshold": cfg.u_threshold, "l_threshold": cfg.l_threshold}


def dest_from_json(value: Any) -> DestConfig:
    d = _obj(value, "dest")
    name = _str(d, "method", FwdMethod.DROUTE.value)
    method = _METHOD_BY_NAME.get(name)
    if method is None:
        raise RequestError(f"field 'method' must be masq/droute/tunnel, not {name!r}")
    return DestConfig(_addr(d, "daddr"), _port(d, "dport"), weight=_int(d, "weight", 1), method=method,
                      u_threshold=_int(d, "u_threshold", 0), l_threshold=_int(d, "l_threshold", 0))


def _dest_addr_from_json(value: Any) -> tuple[ipaddress.IPv4Address, int]:
    d = _obj(value, "dest")
    return _addr(d, "daddr"), _port(d, "dport")


def counters_to_json(c: Counters) -> JsonObj:
    return {f: getattr(c, f) for f in _COUNTER_FIELDS}


def counters_from_json(value: Any) -> Counters:
    d = _obj(value, "counters")
    return Counters(*(_count(d, f) for f in _COUNTER_FIELDS))


def _count(d: Mapping[str, Any], name: str) -> int:
    v = _int(d, name, 0)
    if v < 0:
        raise RequestError(f"field {name!r} must not be negative")
    return v


# ==========================================================================================
# Rates (ip_vs_est.c)
# ==========================================================================================
@dataclass(frozen=True, slots=True)
class Rates:
    """Per-second rates as ``ipvsadm --rate`` lists them."""

    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


def rates_to_json(r: Rates) -> JsonObj:
    return {f: getattr(r, f) for f in _RATE_FIELDS}


def rates_from_json(value: Any) -> Rates:
    d = _obj(value, "rates")
    return Rates(*(_count(d, f) for f in _RATE_FIELDS))


class RateEstimator:
    """Rate estimates the way IPVS makes them (ip_vs_est.c): every 2 seconds the change of each
    counter becomes a rate that is folded into an average with weight 1/4.

    Integer arithmetic as in the kernel: conns and packets are kept scaled by 2^10 per second
    (a 2 s delta shifted left by 9), bytes by 2^5 (delta << 4); reading rounds and unscales.
    The daemon calls ``tick(core)`` every ``INTERVAL`` seconds; without it all rates stay 0."""

    INTERVAL = 2.0
    _SHIFT = (9, 9, 9, 4, 4)

    def __init__(self) -> None:
        self._last: dict[Hashable, tuple[int, ...]] = {}
        self._avg: dict[Hashable, list[int]] = {}

    def tick(self, core: Core) -> None:
        seen: set[Hashable] = set()
        for svc in core.services.values():
            key = svc.config.key
            self._update(key, core.service_counters(svc))
            seen.add(key)
            for d in svc.dests:
                dkey = (key, d.config.daddr, d.config.dport)
                self._update(dkey, core.dest_counters(d))
                seen.add(dkey)
        for gone in [k for k in self._last if k not in seen]:
            self.reset(gone)

    def _update(self, key: Hashable, c: Counters) -> None:
        values = (c.conns, c.inpkts, c.outpkts, c.inbytes, c.outbytes)
        last = self._last.get(key)
        self._last[key] = values
        if last is None or any(v < lv for v, lv in zip(values, last, strict=True)):
            self._avg[key] = [0] * 5          # new, or its counters were zeroed: start afresh
            return
        avg = self._avg[key]
        for i, shift in enumerate(self._SHIFT):
            avg[i] += (((values[i] - last[i]) << shift) - avg[i]) >> 2

    def rates(self, key: Hashable) -> Rates:
        a = self._avg.get(key)
        if a is None:
            return Rates()
        return Rates((a[0] + 0x1FF) >> 10, (a[1] + 0x1FF) >> 10, (a[2] + 0x1FF) >> 10,
                     (a[3] + 0xF) >> 5, (a[4] + 0xF) >> 5)

    def reset(self, key: Hashable) -> None:
        """Forget a service's or dest's estimate (its counters were zeroed or it is gone)."""
        self._last.pop(key, None)
        self._avg.pop(key, None)


# ==========================================================================================
# Snapshot: everything a listing shows
# ==========================================================================================
@dataclass(frozen=True, slots=True)
class Timeouts:
    tcp: int = 900
    tcpfin: int = 120
    udp: int = 300


@dataclass(frozen=True, slots=True)
class DestView:
    config: DestConfig
    weight: int = 1
    activeconns: int = 0
    inactconns: int = 0
    persistconns: int = 0
    overloaded: bool = False
    counters: Counters = Counters()
    rates: Rates = Rates()


@dataclass(frozen=True, slots=True)
class ServiceView:
    config: ServiceConfig
    dests: tuple[DestView, ...] = ()      # insertion order
    counters: Counters = Counters()
    rates: Rates = Rates()


@dataclass(frozen=True, slots=True)
class ConnView:
    """One entry of ``ipvsadm -L -c``; a persistence template has ``template`` set, cport 0 and
    state NONE; a service group's template has proto FWM and the mark in ``vaddr``."""

    proto: Proto
    caddr: ipaddress.IPv4Address
    cport: int
    vaddr: ipaddress.IPv4Address
    vport: int
    daddr: ipaddress.IPv4Address
    dport: int
    state: str
    expires: int                          # whole seconds left
    method: FwdMethod = FwdMethod.DROUTE
    template: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    size: int                             # the banner's "size=" (conn table capacity)
    services: tuple[ServiceView, ...] = ()   # insertion order; renderers sort
    timeouts: Timeouts = Timeouts()
    conns: tuple[ConnView, ...] | None = None   # None: not requested
    conn_count: int = 0
    version: str = IPVS_VERSION
    rates_estimated: bool = False         # False: no estimator ran, every rate is 0

    def service(self, key: ServiceKey) -> ServiceView | None:
        for s in self.services:
            if s.config.key == key:
                return s
        return None


def core_timeouts(core: Core) -> Timeouts:
    t = core.timeouts
    return Timeouts(int(t[TcpState.ESTABLISHED]), int(t[TcpState.FIN_WAIT]), int(t[UDP_STATE]))


def build_snapshot(core: Core, now: float, *, conns: bool = True,
                   estimator: RateEstimator | None = None) -> Snapshot:
    """What ``ulvsadm -L`` needs from ``core`` at time ``now``.  Connections (only when ``conns``)
    are sorted by protocol, client, virtual and real address so the listing is deterministic."""
    est = estimator.rates if estimator is not None else (lambda _key: Rates())
    services = []
    for svc in core.services.values():
        key = svc.config.key
        dests = tuple(
            DestView(d.config, d.weight, d.activeconns, d.inactconns, d.persistconns, d.overloaded,
                     core.dest_counters(d), est((key, d.config.daddr, d.config.dport)))
            for d in svc.dests)
        services.append(ServiceView(svc.config, dests, core.service_counters(svc), est(key)))
    conn_views: tuple[ConnView, ...] | None = None
    if conns:
        conn_views = tuple(sorted(
            (ConnView(c.proto, c.caddr, c.cport, c.vaddr, c.vport, c.daddr, c.dport, c.state,
                      int(c.expires), c.method, c.template) for c in core.conns(now)),
            key=lambda c: (c.proto, c.caddr, c.cport, c.vaddr, c.vport, c.daddr, c.dport)))
    return Snapshot(size=core.table.limit, services=tuple(services), timeouts=core_timeouts(core),
                    conns=conn_views, conn_count=core.conn_count(), rates_estimated=estimator is not None)


def snapshot_to_json(s: Snapshot) -> JsonObj:
    return {
        "version": s.version,
        "size": s.size,
        "conn_count": s.conn_count,
        "rates_estimated": s.rates_estimated,
        "timeouts": {"tcp": s.timeouts.tcp, "tcpfin": s.timeouts.tcpfin, "udp": s.timeouts.udp},
        "services": [{
            "service": service_to_json(v.config),
            "counters": counters_to_json(v.counters),
            "rates": rates_to_json(v.rates),
            "dests": [{
                "dest": dest_to_json(d.config), "weight": d.weight, "activeconns": d.activeconns,
                "inactconns": d.inactconns, "persistconns": d.persistconns, "overloaded": d.overloaded,
                "counters": counters_to_json(d.counters), "rates": rates_to_json(d.rates),
            } for d in v.dests],
        } for v in s.services],
        "conns": None if s.conns is None else [{
            "proto": _PROTO_NAME[c.proto], "caddr": str(c.caddr), "cport": c.cport,
            "vaddr": str(c.vaddr), "vport": c.vport, "daddr": str(c.daddr), "dport": c.dport,
            "state": c.state, "expires": c.expires, "method": c.method.value, "template": c.template,
        } for c in s.conns],
    }


def snapshot_from_json(value: Any) -> Snapshot:
    """The ``Snapshot`` in a snapshot reply; raises ``RequestError`` (a ValueError) if malformed."""
    d = _obj(value, "snapshot")
    t = _obj(_field(d, "timeouts", {}), "timeouts")
    services = []
    for sv in _list(d, "services"):
        sd = _obj(sv, "service entry")
        dests = []
        for dv in _list(sd, "dests", []):
            dd = _obj(dv, "dest entry")
            dests.append(DestView(
                dest_from_json(_field(dd, "dest", _MISSING)), _int(dd, "weight", 1),
                _count(dd, "activeconns"), _count(dd, "inactconns"), _count(dd, "persistconns"),
                _bool(dd, "overloaded", False),
                counters_from_json(_field(dd, "counters", {})), rates_from_json(_field(dd, "rates", {}))))
        services.append(ServiceView(
            service_from_json(_field(sd, "service", _MISSING)), tuple(dests),
            counters_from_json(_field(sd, "counters", {})), rates_from_json(_field(sd, "rates", {}))))
    conns: tuple[ConnView, ...] | None = None
    if d.get("conns") is not None:
        items = []
        for cv in _list(d, "conns"):
            cd = _obj(cv, "connection entry")
            name = _str(cd, "method", FwdMethod.DROUTE.value)
            method = _METHOD_BY_NAME.get(name)
            if method is None:
                raise RequestError(f"field 'method' must be masq/droute/tunnel, not {name!r}")
            items.append(ConnView(
                _proto(cd), _addr(cd, "caddr"), _port(cd, "cport"), _addr(cd, "vaddr"), _port(cd, "vport"),
                _addr(cd, "daddr"), _port(cd, "dport"), _str(cd, "state"), _count(cd, "expires"), method,
                _bool(cd, "template", False)))
        conns = tuple(items)
    return Snapshot(
        size=_int(d, "size"), services=tuple(services),
        timeouts=Timeouts(_count(t, "tcp"), _count(t, "tcpfin"), _count(t, "udp")),
        conns=conns, conn_count=_count(d, "conn_count"), version=_str(d, "version", IPVS_VERSION),
        rates_estimated=_bool(d, "rates_estimated", False))


# ==========================================================================================
# Applying requests
# ==========================================================================================
@dataclass(slots=True)
class _Ctx:
    now: float
    estimator: RateEstimator | None
    resets: list[Hashable] = field(default_factory=list)   # estimates to forget once applied


def _service(core: Core, key: ServiceKey) -> Service:
    svc = core.services.get(key)
    if svc is None:
        raise CoreError(f"no such service {key_name(key)}")
    return svc


def _add_service(core: Core, req: Mapping[str, Any], ctx: _Ctx) -> JsonObj:
    core.add_service(service_from_json(_field(req, "service", _MISSING)))
    return {"ok": True}


def _edit_service(core: Core, req: Mapping[str, Any], ctx: _Ctx) -> JsonObj:
    key = service_key_from_json(_field(req, "service", _MISSING))
    svc = _service(core, key)
    core.edit_service(service_from_json(req["service"], members=svc.config.members))
    return {"ok": True}


def _del_service(core: Core, req: Mapping[str, Any], ctx: _Ctx) -> JsonObj:
    key = service_key_from_json(_field(req, "service", _MISSING))
    _service(core, key)
    core.del_service(key)
    return {"ok": True}


def _clear(core: Core, req: Mapping[str, Any], ctx: _Ctx) -> JsonObj:
    core.clear()
    return {"ok": True}


def _add_dest(core: Core, req: Mapping[str, Any], ctx: _Ctx) -> JsonObj:
    key = service_key_from_json(_field(req, "service", _MISSING))
    cfg = dest_from_json(_field(req, "dest", _MISSING))
    _service(core, key)
    core.add_dest(key, cfg)
    return {"ok": True}


def _edit_dest(core: Core, req: Mapping[str, Any], ctx: _Ctx) -> JsonObj:
    key = service_key_from_json(_field(req, "service", _MISSING))
    cfg = dest_from_json(_field(req, "dest", _MISSING))
    _service(core, key)
    core.edit_dest(key, cfg)
    return {"ok": True}


def _del_dest(core: Core, req: Mapping[str, Any], ctx: _Ctx) -> JsonObj:
    key = service_key_from_json(_field(req, "service", _MISSING))
    daddr, dport = _dest_addr_from_json(_field(req, "dest", _MISSING))
    _service(core, key)
    core.del_dest(key, daddr, dport)
    return {"ok": True}


def _set_timeouts(core: Core, req: Mapping[str, Any], ctx: _Ctx) -> JsonObj:
    values = []
    for name in ("tcp", "tcpfin", "udp"):
        v = _int(req, name, 0)
        if not 0 <= v <= MAX_TIMEOUT:
            raise RequestError(f"{name} timeout {v} out of range 0..{MAX_TIMEOUT}")
        values.append(v)
    core.set_timeouts(*values)
    return {"ok": True}


def _get_timeouts(core: Core, req: Mapping[str, Any], ctx: _Ctx) -> JsonObj:
    t = core_timeouts(core)
    return {"ok": True, "timeouts": {"tcp": t.tcp, "tcpfin": t.tcpfin, "udp": t.udp}}


def _zero(core: Core, req: Mapping[str, Any], ctx: _Ctx) -> JsonObj:
    """ipvsadm -Z: zero the counters of one service (its dests) or of all services."""
    if req.get("service") is None:
        services = list(core.services.values())
    else:
        services = [_service(core, service_key_from_json(req["service"]))]
    for svc in services:
        key = svc.config.key
        ctx.resets.append(key)
        for d in svc.dests:
            core.stats.zero(d.sid)
            ctx.resets.append((key, d.config.daddr, d.config.dport))
    return {"ok": True}


def _snapshot(core: Core, req: Mapping[str, Any], ctx: _Ctx) -> JsonObj:
    snap = build_snapshot(core, ctx.now, conns=_bool(req, "conns", True), estimator=ctx.estimator)
    return {"ok": True, "snapshot": snapshot_to_json(snap)}


@dataclass(frozen=True, slots=True)
class _Saved:
    """The configuration a failed batch is rolled back to."""

    services: tuple[tuple[ServiceConfig, tuple[DestConfig, ...]], ...]
    counters: dict[DestKey, Counters]
    timeouts: tuple[float, ...]


def _save(core: Core) -> _Saved:
    return _Saved(
        services=tuple((s.config, tuple(d.config for d in s.dests)) for s in core.services.values()),
        counters={(s.config.key, d.config.daddr, d.config.dport): core.dest_counters(d)
                  for s in core.services.values() for d in s.dests},
        timeouts=tuple(core.timeouts))


def _restore(core: Core, saved: _Saved) -> None:
    """Bring services, dests (in their order), their counters and the timeouts back to ``saved``.

    Done with the ordinary control calls, so connections are never touched: a dest the batch
    deleted while it had connections sits in the core's trash and is revived with them.  What
    is *not* restored: the order of services re-created here (they move to the end, which only
    ``--nosort`` listings show) and schedulers' internal state (round-robin cursors and the like
    restart, as after any change of the dest list)."""
    wanted = {cfg.key: (cfg, dests) for cfg, dests in saved.services}
    for key, current in list(core.services.items()):   # first free every entry the batch took
        if key not in wanted or current.config.entries() != wanted[key][0].entries():
            core.del_service(key)
    for key, (cfg, dests) in wanted.items():
        found = core.services.get(key)
        if found is None:
            svc = core.add_service(cfg)
        elif found.config != cfg:
            svc = core.edit_service(cfg)
        else:
            svc = found
        want = [(d.daddr, d.dport) for d in dests]
        have = [(d.config.daddr, d.config.dport) for d in svc.dests]
        same = 0
        while same < min(len(want), len(have)) and want[same] == have[same]:
            same += 1
        for daddr, dport in reversed(have[same:]):     # wrong or out of place: remove, re-add below
            core.del_dest(key, daddr, dport)
        for dcfg in dests:
            dest = svc.find(dcfg.daddr, dcfg.dport)
            if dest is None:
                core.add_dest(key, dcfg)
            elif dest.config != dcfg:
                core.edit_dest(key, dcfg)
        for d in svc.dests:
            c = saved.counters.get((key, d.config.daddr, d.config.dport))
            if c is not None and core.dest_counters(d) != c:
                _set_counters(core, d.sid, c)
    for i, value in enumerate(saved.timeouts):
        core.timeouts[i] = value


def _set_counters(core: Core, sid: int, c: Counters) -> None:
    st = core.stats
    st.conns[sid] = c.conns
    st.pkts[sid * 2], st.pkts[sid * 2 + 1] = c.inpkts, c.outpkts
    st.bytes[sid * 2], st.bytes[sid * 2 + 1] = c.inbytes, c.outbytes


def _batch(core: Core, req: Mapping[str, Any], ctx: _Ctx) -> JsonObj:
    """Apply a list of requests atomically: all of them, or (after a failure) none."""
    reqs = _list(req, "requests")
    for i, r in enumerate(reqs):
        if isinstance(r, dict) and r.get("cmd") == "batch":
            raise RequestError(f"request {i + 1} of {len(reqs)}: a batch cannot contain a batch")
    saved = _save(core)
    replies: list[JsonObj] = []
    for i, r in enumerate(reqs):
        reply = _apply(core, r, ctx)
        if not reply["ok"]:
            cmd = r.get("cmd") if isinstance(r, dict) else None
            where = f"request {i + 1} of {len(reqs)}" + (f" ({cmd})" if isinstance(cmd, str) else "")
            try:
                _restore(core, saved)
            except Exception as e:     # a bug: say so rather than pretend nothing happened
                return {"ok": False, "index": i, "reply": reply,
                        "error": f"{where}: {reply['error']}; rolling back the batch failed too: {e!r}"}
            ctx.resets.clear()
            return {"ok": False, "index": i, "error": f"{where}: {reply['error']}", "reply": reply}
        replies.append(reply)
    return {"ok": True, "replies": replies}


_Handler = Callable[[Core, Mapping[str, Any], _Ctx], JsonObj]
_HANDLERS: dict[str, _Handler] = {
    "add_service": _add_service,
    "edit_service": _edit_service,
    "del_service": _del_service,
    "clear": _clear,
    "add_dest": _add_dest,
    "edit_dest": _edit_dest,
    "del_dest": _del_dest,
    "set_timeouts": _set_timeouts,
    "get_timeouts": _get_timeouts,
    "zero": _zero,
    "snapshot": _snapshot,
    "batch": _batch,
}
COMMANDS = tuple(_HANDLERS)


def _apply(core: Core, req: Any, ctx: _Ctx) -> JsonObj:
    try:
        d = _obj(req, "a request")
        cmd = _str(d, "cmd")
        handler = _HANDLERS.get(cmd)
        if handler is None:
            raise RequestError(f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}")
        return handler(core, d, ctx)
    except ValueError as e:            # CoreError, RequestError, SchedulerError, bad addresses
        return {"ok": False, "error": str(e)}
    except Exception as e:             # a bug in ulvs: still answer, never take the daemon down
        return {"ok": False, "error": f"internal error: {e!r}"}


def apply_request(core: Core, req: Any, now: float, *, estimator: RateEstimator | None = None) -> JsonObj:
    """Validate and apply one request; returns the reply.  Never raises on bad input."""
    ctx = _Ctx(now, estimator)
    reply = _apply(core, req, ctx)
    if reply["ok"] and estimator is not None:
        for key in ctx.resets:
            estimator.reset(key)
    return reply


def diff_requests(core: Core, wanted: Sequence[Any]) -> list[JsonObj]:
    """The requests that turn ``core``'s configuration into the one ``wanted`` (a list of
    requests, e.g. a config file's) builds from nothing -- reload as a diff (STYLE rule 10).

    Unchanged services and dests get no request, so their connections, counters and scheduler
    state carry over; new dests are appended after the surviving ones.  Deletions come first so
    an entry can move between services.  Timeouts change only where ``wanted`` sets them.
    Raises ``RequestError`` (a ValueError) when ``wanted`` is itself invalid."""
    scratch = Core(conn_limit=1)
    reply = apply_request(scratch, {"cmd": "batch", "requests": list(wanted)}, 0.0)
    if not reply["ok"]:
        raise RequestError(f"configuration rejected: {reply['error']}")
    deletions: list[JsonObj] = []
    changes: list[JsonObj] = []
    for key, old in core.services.items():
        new = scratch.services.get(key)
        if new is None or new.config.entries() != old.config.entries():
            deletions.append({"cmd": "del_service", "service": service_key_to_json(key)})
    for key, new in scratch.services.items():
        skey = service_key_to_json(key)
        old_svc = core.services.get(key)
        if old_svc is None or old_svc.config.entries() != new.config.entries():
            changes.append({"cmd": "add_service", "service": service_to_json(new.config)})
            changes.extend({"cmd": "add_dest", "service": skey, "dest": dest_to_json(d.config)}
                           for d in new.dests)
            continue
        if old_svc.config != new.config:
            changes.append({"cmd": "edit_service", "service": service_to_json(new.config)})
        keep = {(d.config.daddr, d.config.dport) for d in new.dests}
        changes.extend({"cmd": "del_dest", "service": skey,
                        "dest": {"daddr": str(d.config.daddr), "dport": d.config.dport}}
                       for d in old_svc.dests if (d.config.daddr, d.config.dport) not in keep)
        for d in new.dests:
            od = old_svc.find(d.config.daddr, d.config.dport)
            if od is None:
                changes.append({"cmd": "add_dest", "service": skey, "dest": dest_to_json(d.config)})
            elif od.config != d.config:
                changes.append({"cmd": "edit_dest", "service": skey, "dest": dest_to_json(d.config)})
    current = core_timeouts(core)
    timeouts = {"tcp": 0, "tcpfin": 0, "udp": 0}
    for r in wanted:
        if isinstance(r, dict) and r.get("cmd") == "set_timeouts":
            timeouts.update({k: r[k] for k in timeouts if r.get(k)})
    if any(v and v != getattr(current, k) for k, v in timeouts.items()):
        changes.append({"cmd": "set_timeouts", **timeouts})
    return deletions + changes


def handle_line(core: Core, line: bytes | str, now: float, *,
                estimator: RateEstimator | None = None) -> bytes:
    """One request line in, one reply line (ending in a newline) out."""
    try:
        req = json.loads(line)
    except (ValueError, RecursionError) as e:
        reply: JsonObj = {"ok": False, "error": f"bad request: not JSON ({e})"}
    else:
        reply = apply_request(core, req, now, estimator=estimator)
    return (json.dumps(reply, separators=(",", ":")) + "\n").encode()
