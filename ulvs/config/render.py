"""``Config`` -> native TOML text (``ulvs import``): deterministic, defaults omitted.

``native.parse(render(c), c.source) == c`` for every configuration the native format can
express (the round-trip tests hold it to that).  Dests sharing one non-default forwarding
method get it once, as the service's ``forwarding``; dests sharing the same checks get them
once, as the service's ``check``.  Pure.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

from ulvs.config.native import DNS_QUERY_TYPE
from ulvs.config.requests import HOST_MASK
from ulvs.config.schema import (
    CheckSpec,
    Config,
    DaemonSettings,
    EjectionSettings,
    MetricsSettings,
    RealServer,
    SyncSettings,
    Timeouts,
    VirtualService,
    VrrpInstance,
    VrrpSyncGroup,
)
from ulvs.core.model import FwdMethod, Proto, ServiceConfig

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_DEFAULT_SERVICE = VirtualService(ServiceConfig(Proto.TCP, HOST_MASK, 1))
_DEFAULT_INSTANCE = VrrpInstance("", "", 1)


# -- TOML values ----------------------------------------------------------------------------------
def key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def value(v: Any) -> str:
    """A TOML value: booleans, integers, floats, strings, arrays and (inline) tables."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)   # JSON's escapes are TOML basic-string escapes
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + " }" if v else "{}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    return value(str(v))                           # addresses, interfaces


def _lines(pairs: Iterable[tuple[str, Any]]) -> list[str]:
    return [f"{key(k)} = {value(v)}" for k, v in pairs]


def _changed(obj: Any, default: Any, names: Iterable[str] | None = None) -> list[tuple[str, Any]]:
    """(field, value) of a dataclass's fields that differ from ``default``'s."""
    wanted = [f.name for f in fields(obj) if f.name != "where"] if names is None else list(names)
    return [(n, getattr(obj, n)) for n in wanted if getattr(obj, n) != getattr(default, n)]


# -- sections -------------------------------------------------------------------------------------
def _table(header: str, pairs: list[tuple[str, Any]]) -> list[str]:
    return ["", f"[{header}]", *_lines(pairs)] if pairs else []


def _daemon(d: DaemonSettings) -> list[str]:
    return _table("daemon", _changed(d, DaemonSettings()))


def _timeouts(t: Timeouts) -> list[str]:
    return _table("timeouts", _changed(t, Timeouts()))


def _metrics(m: MetricsSettings) -> list[str]:
    return _table("metrics", _changed(m, MetricsSettings()))


def _sync(s: SyncSettings | None) -> list[str]:
    if s is None:
        return []
    keys = ("instance", "syncid", "port", "group", "peers", "key", "key_file")
    return _table("sync", [("interface", s.interface)] + _changed(s, SyncSettings(s.interface), keys))


def _check(header: str, c: CheckSpec) -> list[str]:
    out = ["", f"[[{header}]]", f"type = {value(c.kind)}"]
    for k, v in c.options:
        name = DNS_QUERY_TYPE if c.kind == "DNS_CHECK" and k == "type" else k
        if k == "url":
            v = [u if isinstance(u, Mapping) else dict(u) for u in v]
        out.append(f"{key(name)} = {value(v)}")
    return out


def _service_keys(vs: VirtualService, forwarding: FwdMethod) -> list[tuple[str, Any]]:
    cfg = vs.config
    pairs: list[tuple[str, Any]] = []
    if vs.name is not None:
        pairs.append(("name", vs.name))
    if cfg.proto == Proto.FWM:
        pairs += [("protocol", "group"), ("fwmark", cfg.fwmark),
                  ("members", [f"{p.name.lower()} {a}:{port}" for p, a, port in cfg.members])]
    else:
        pairs += [("protocol", cfg.proto.name.lower()), ("vip", cfg.vaddr), ("port", cfg.vport)]
    if cfg.sched != "wlc":
        pairs.append(("scheduler", cfg.sched))
    if cfg.flags:
        pairs.append(("flags", sorted(cfg.flags)))
    if cfg.persistent is not None:
        pairs.append(("persistence_timeout", cfg.persistent))
    if cfg.netmask != HOST_MASK:
        pairs.append(("persistence_netmask", cfg.netmask))
    if cfg.ops:
        pairs.append(("ops", True))
    if forwarding != FwdMethod.DROUTE:
        pairs.append(("forwarding", forwarding.value))
    for name, v in _changed(vs, _DEFAULT_SERVICE, (
            "delay_loop", "sorry_server", "sorry_server_inhibit", "quorum", "hysteresis", "quorum_up",
            "quorum_down", "alpha", "omega", "inhibit_on_failure", "virtualhost", "slow_start",
            "failed_conns")):
        pairs.append((name, f"{v[0]}:{v[1]}" if name == "sorry_server" else v))
    return pairs


def _dest(rs: RealServer, vport: int, forwarding: FwdMethod) -> list[str]:
    d = rs.config
    pairs: list[tuple[str, Any]] = [("address", d.daddr)]
    if d.dport != vport:
        pairs.append(("port", d.dport))
    if d.weight != 1:
        pairs.append(("weight", d.weight))
    if d.method != forwarding:
        pairs.append(("forwarding", d.method.value))
    if d.u_threshold:
        pairs.append(("upper_threshold", d.u_threshold))
    if d.l_threshold:
        pairs.append(("lower_threshold", d.l_threshold))
    pairs += [(n, getattr(rs, n)) for n in ("inhibit_on_failure", "notify_up", "notify_down")
              if getattr(rs, n) is not None]
    return ["", "[[service.dest]]", *_lines(pairs)]


def _service(vs: VirtualService) -> list[str]:
    methods = {rs.config.method for rs in vs.dests}
    forwarding = methods.pop() if len(methods) == 1 else FwdMethod.DROUTE
    first = vs.dests[0].checks if vs.dests else ()
    shared = first if all(rs.checks == first for rs in vs.dests) else ()
    out = ["", "[[service]]", *_lines(_service_keys(vs, forwarding))]
    if vs.ejection is not None:         # the table switches ejection on, even with no keys
        out += ["", "[service.ejection]", *_lines(_changed(vs.ejection, EjectionSettings()))]
    for c in shared:
        out += _check("service.check", c)
    for rs in vs.dests:
        out += _dest(rs, vs.config.vport, forwarding)
        if not shared:                  # else every dest has exactly the service's checks
            for c in rs.checks:
                out += _check("service.dest.check", c)
    return out


def _instance(inst: VrrpInstance) -> list[str]:
    pairs: list[tuple[str, Any]] = [("name", inst.name), ("interface", inst.interface), ("vrid", inst.vrid)]
    for name, v in _changed(inst, _DEFAULT_INSTANCE, (
            "priority", "advert_int", "state", "version", "preempt", "preempt_delay", "virtual_addresses",
            "unicast_src_ip", "unicast_peers", "track_interfaces", "notify_master", "notify_backup",
            "notify_fault", "garp_master_delay", "garp_master_repeat", "min_garp", "lower_prio_no_advert",
            "higher_prio_send_advert", "checksum_as_v2", "auth_key")):
        if name == "virtual_addresses":
            v = [f"{a.address}" + (f" dev {a.dev}" if a.dev else "") for a in v]
        pairs.append((name, v))
    return ["", "[[vrrp.instance]]", *_lines(pairs)]


def _sync_group(g: VrrpSyncGroup) -> list[str]:
    return ["", "[[vrrp.sync_group]]", *_lines([("name", g.name), ("members", list(g.members))])]


def render(config: Config, *, comment: str | None = None) -> str:
    """The native TOML text of ``config``; ``comment`` becomes a leading ``#`` line."""
    out: list[str] = [f"# {line}" for line in (comment or "").splitlines()]
    if config.router_id is not None:
        out.append(f"router_id = {value(config.router_id)}")
    out += _daemon(config.daemon) + _timeouts(config.timeouts) + _metrics(config.metrics) + _sync(config.sync)
    for vs in config.services:
        out += _service(vs)
    for inst in config.vrrp:
        out += _instance(inst)
    for g in config.vrrp_sync_groups:
        out += _sync_group(g)
    while out and out[0] == "":
        out.pop(0)
    return "\n".join(out) + "\n"
