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
  counters (of a service and of each dest, in snapshots): {"conns", "inpkts", "outpkts",
        "inbytes", "outbytes", "syns", "synacks", "rsts"}: cumulative; "syns" counts the new TCP
        connections sent to a masq dest, "synacks"/"rsts" those it answered with a SYN-ACK/RST
        (passive health; the health monitor polls them for ejection)

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

  {"cmd": "status"}  -> {"ok": true, "status": {"snapshot": <snapshot, no conns>, "conn_table":
                         {"count": .., "limit": .., "states": {"ESTABLISHED": .., ...}},
                         "drops": {"no_dest": .., ...}, "daemon": {...}}}   ("daemon": added by
                         the daemon: pid, version, uptime, backend, workers, interfaces, socket,
                         config file and the last reload)
  {"cmd": "metrics"} -> {"ok": true, "metrics": <status, cut down by ``metrics_view``>}  (the
                         daemon's own, read-only: what the Prometheus exporter reads at each
                         scrape, added up over the workers like status)
  {"cmd": "explain", "proto": "tcp"|"udp", "caddr": .., "cport": .., "vaddr": .., "vport": ..}
                     -> {"ok": true, "explanation": <explanation_to_json>}   (changes nothing)
  {"cmd": "reload"}  -> {"ok": true, "changes": 3, "config": "/etc/ulvs/rules"}  (the daemon's
                         own: re-read the config file
                         and apply the differences, as SIGHUP does; on error the old config
                         stays and the reply names the error)
  {"cmd": "expire_dest_conns", "service": svc, "dest": {"daddr": ..., "dport": ...},
   "proto": "udp"|"tcp"}  -> {"ok": true, "expired": 2}   (drop that dest's connections of
                         that protocol and its persistence templates, so their next packet is
                         scheduled afresh; a dest gone with no connection left has 0)

  The health monitor's reports (the daemon's own commands; ``ulvs.config.overlay``):
  {"cmd": "health", "service": svc, "dest": {"daddr": ..., "dport": ...}, "up": true|false,
   "weight": 3|null, "detail": "connect refused"}  -> {"ok": true, "changes": 1}
                         (a dest of the configuration is in or out of service; "weight", when
                         up, replaces the configured weight, null keeps it; "detail" is the
                         last probe's outcome, shown by status.  The daemon applies its
                         configuration with the overlay, ``diff_requests(core, wanted)``)
  {"cmd": "sorry", "service": svc, "on": true|false}  -> {"ok": true, "changes": 2}
                         (the service's configured sorry server serves, the real dests
                         withdrawn, or stops)
  {"cmd": "probe_stats", "probes": {kind: {"buckets": [[le, n], ...], "sum", "count", "success",
   "failure"}}}  -> {"ok": true}   (the probes' durations and outcomes per checker kind,
                         cumulative, ``ulvs.health.stats``; the daemon keeps the latest)
  The daemon's status adds "health": {"dests": [{"service": svc, "daddr", "dport", "up",
  "weight", "detail", "since": unix time of the last up/down change}], "sorry": [svc, ...],
  "monitor": {"pid", "running", "started", "restarts"} | null, "probes": {...} as above}.

Every other reply is {"ok": true} or {"ok": false, "error": "message"}.  Optional fields of SVC
and DST default as in ``ServiceConfig``/``DestConfig``; ``edit_service`` of a service group may
omit "members" (the group keeps its own).  Every change is atomic: a request is applied whole or
not at all, and a failed batch is rolled back (see ``_restore``).

Versions: a request may carry ``"v": 1``, the protocol version it speaks (``PROTOCOL_VERSION``;
``ulvsadm`` and ``ulvs`` always send it; a request without one is taken as version 1).  A request
with any other version gets {"ok": false, "error": "unsupported protocol version N (this daemon
speaks 1)"} and changes nothing.  Every top-level reply carries ``"v": 1``; the replies inside a
batch reply do not.

Also here: ``diff_requests`` (reload = the requests from the running config to a wanted one) and
``RateEstimator`` (``--rate``: the daemon ticks it every 2 s and passes it to ``apply_request``).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The request codec lives in L2 (ulvs.config.requests); its names stay importable from here.
from ulvs.config.requests import MAX_FWMARK as MAX_FWMARK
from ulvs.config.requests import MAX_TIMEOUT as MAX_TIMEOUT
from ulvs.config.requests import METHOD_BY_NAME as _METHOD_BY_NAME
from ulvs.config.requests import MISSING as _MISSING
from ulvs.config.requests import PROTO_NAME as _PROTO_NAME
from ulvs.config.requests import JsonObj as JsonObj
from ulvs.config.requests import RequestError as RequestError
from ulvs.config.requests import addr_field as _addr
from ulvs.config.requests import as_object as _obj
from ulvs.config.requests import bool_field as _bool
from ulvs.config.requests import count_field as _count
from ulvs.config.requests import dest_addr_from_json as _dest_addr_from_json
from ulvs.config.requests import dest_from_json as dest_from_json
from ulvs.config.requests import dest_to_json as dest_to_json
from ulvs.config.requests import get_field as _field
from ulvs.config.requests import int_field as _int
from ulvs.config.requests import key_name as key_name
from ulvs.config.requests import list_field as _list
from ulvs.config.requests import member_from_json as member_from_json
from ulvs.config.requests import member_to_json as member_to_json
from ulvs.config.requests import port_field as _port
from ulvs.config.requests import proto_field as _proto
from ulvs.config.requests import service_from_json as service_from_json
from ulvs.config.requests import service_key_from_json as service_key_from_json
from ulvs.config.requests import service_key_to_json as service_key_to_json
from ulvs.config.requests import service_to_json as service_to_json
from ulvs.config.requests import str_field as _str
from ulvs.core.engine import Core, CoreError, Explanation, ServiceKey
from ulvs.core.model import DestConfig, FwdMethod, Proto, Service, ServiceConfig
from ulvs.core.proto_tcp import UDP_STATE, TcpState
from ulvs.core.stats import Counters

IPVS_VERSION = "1.2.1"          # the IPVS version ipvsadm's banner shows (IP_VS_VERSION_CODE)
PROTOCOL_VERSION = 1            # the control protocol's version ("v" of requests and replies)

DestKey = tuple[ServiceKey, ipaddress.IPv4Address, int]

_COUNTER_FIELDS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes", "syns", "synacks", "rsts")
_RATE_FIELDS = ("cps", "inpps", "outpps", "inbps", "outbps")


def counters_to_json(c: Counters) -> JsonObj:
    return {f: getattr(c, f) for f in _COUNTER_FIELDS}


def counters_from_json(value: Any) -> Counters:
    d = _obj(value, "counters")
    return Counters(*(_count(d, f) for f in _COUNTER_FIELDS))



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
# Status and explain: the runtime state, and the decision for one flow
# ==========================================================================================
def build_status(core: Core, now: float, *, estimator: RateEstimator | None = None) -> JsonObj:
    """The core's part of ``ulvs status``: services with dests (no connections), the conn
    table's size, limit and states, the timeouts and the drop counters by reason."""
    snap = build_snapshot(core, now, conns=False, estimator=estimator)
    return {
        "snapshot": snapshot_to_json(snap),
        "conn_table": {"count": core.conn_count(), "limit": core.table.limit,
                       "states": core.state_counts()},
        "drops": core.drop_counts(),
    }


def metrics_view(status: Mapping[str, Any]) -> JsonObj:
    """The part of a daemon status (``build_status`` plus the daemon's sections) that the
    Prometheus exporter reads (``ulvs.runtime.metrics``), in the same layout, so the exporter
    reads either: per service its key and counters, per dest its address, weight and connection
    counts; the conn table's limit and states; drops; the version and the rings' drop counters;
    the dests' health and the probe statistics; and the optional "vrrp" and "sync" sections
    as they are."""
    keys = ("proto", "vaddr", "vport", "fwmark")
    counters = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
    ring = ("rx_ring_drops", "rx_stale")
    daemon = status.get("daemon") or {}
    health = status.get("health") or {}
    table = status.get("conn_table") or {}
    out: JsonObj = {
        "snapshot": {"services": [{
            "service": {k: s["service"][k] for k in keys if k in s["service"]},
            "counters": {k: s["counters"].get(k, 0) for k in counters},
            "dests": [{"dest": {"daddr": d["dest"]["daddr"], "dport": d["dest"]["dport"]},
                       "weight": d["weight"], "activeconns": d["activeconns"], "inactconns": d["inactconns"]}
                      for d in s["dests"]],
        } for s in status["snapshot"]["services"]]},
        "conn_table": {k: table[k] for k in ("count", "limit", "states") if k in table},
        "drops": dict(status.get("drops") or {}),
        "daemon": {"version": daemon.get("version"),
                   "ports": {name: {k: c[k] for k in ring if k in c}
                             for name, c in (daemon.get("ports") or {}).items()}},
        "health": {"dests": [{k: d[k] for k in ("service", "daddr", "dport", "up")}
                             for d in health.get("dests") or ()],
                   "probes": health.get("probes") or {}},
    }
    for optional in ("vrrp", "sync"):
        if status.get(optional) is not None:
            out[optional] = status[optional]
    return out


def explanation_to_json(e: Explanation) -> JsonObj:
    def opt(v: object) -> str | None:
        return None if v is None else str(v)

    return {
        "kind": e.kind, "proto": _PROTO_NAME[e.proto], "caddr": str(e.caddr), "cport": e.cport,
        "vaddr": str(e.vaddr), "vport": e.vport, "reason": e.reason,
        "service": None if e.service is None else service_key_to_json(e.service), "sched": e.sched,
        "daddr": opt(e.daddr), "dport": e.dport, "method": None if e.method is None else e.method.value,
        "state": e.state, "expires": None if e.expires is None else int(e.expires),
        "client": opt(e.client), "netmask": opt(e.netmask), "removed": e.removed, "replaces": e.replaces,
    }


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


def _expire_dest_conns(core: Core, req: Mapping[str, Any], ctx: _Ctx) -> JsonObj:
    key = service_key_from_json(_field(req, "service", _MISSING))
    daddr, dport = _dest_addr_from_json(_field(req, "dest", _MISSING))
    proto = _proto(req, (Proto.TCP, Proto.UDP))
    _service(core, key)
    return {"ok": True, "expired": core.expire_dest_conns(key, daddr, dport, proto, ctx.now)}


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


def _status(core: Core, req: Mapping[str, Any], ctx: _Ctx) -> JsonObj:
    return {"ok": True, "status": build_status(core, ctx.now, estimator=ctx.estimator)}


def _explain(core: Core, req: Mapping[str, Any], ctx: _Ctx) -> JsonObj:
    e = core.explain(_proto(req, (Proto.TCP, Proto.UDP)), _addr(req, "caddr"), _port(req, "cport"),
                     _addr(req, "vaddr"), _port(req, "vport"), ctx.now)
    return {"ok": True, "explanation": explanation_to_json(e)}


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
    st.syns[sid], st.synacks[sid], st.rsts[sid] = c.syns, c.synacks, c.rsts


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
    "expire_dest_conns": _expire_dest_conns,
    "set_timeouts": _set_timeouts,
    "get_timeouts": _get_timeouts,
    "zero": _zero,
    "snapshot": _snapshot,
    "status": _status,
    "explain": _explain,
    "batch": _batch,
}
# Commands that only read: the daemon need not bring the kernel in line after them.
READ_ONLY = frozenset({"get_timeouts", "snapshot", "status", "explain"})
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


def version_error(req: Any) -> JsonObj | None:
    """The reply refusing ``req`` for its protocol version, or None when it speaks ours."""
    if not isinstance(req, dict) or "v" not in req:
        return None
    v = req["v"]
    if type(v) is int and v == PROTOCOL_VERSION:
        return None
    shown = json.dumps(v) if not isinstance(v, str) else v
    return {"ok": False, "v": PROTOCOL_VERSION,
            "error": f"unsupported protocol version {shown} (this daemon speaks {PROTOCOL_VERSION})"}


def apply_request(core: Core, req: Any, now: float, *, estimator: RateEstimator | None = None) -> JsonObj:
    """Validate and apply one request; returns the reply (with ``"v"``).  Never raises on bad
    input; a request of another protocol version is refused unapplied."""
    refused = version_error(req)
    if refused is not None:
        return refused
    ctx = _Ctx(now, estimator)
    reply = _apply(core, req, ctx)
    if reply["ok"] and estimator is not None:
        for key in ctx.resets:
            estimator.reset(key)
    reply["v"] = PROTOCOL_VERSION
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
        reply: JsonObj = {"ok": False, "v": PROTOCOL_VERSION, "error": f"bad request: not JSON ({e})"}
    else:
        reply = apply_request(core, req, now, estimator=estimator)
    return (json.dumps(reply, separators=(",", ":")) + "\n").encode()
