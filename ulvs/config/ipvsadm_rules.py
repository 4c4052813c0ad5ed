"""ipvsadm rules files (``ipvsadm-save``, ``ulvsadm -S``): one ipvsadm command per line -> ``Config``.

Each line is read with ipvsadm's own grammar (``ulvs.config.ipvsadm.parse_restore``) and its
request is played, in order, onto the configuration being built -- so ``-C``, ``-E``, ``-D``,
``-e``, ``-d`` and ``--set`` mean what they mean to ``ipvsadm -R`` starting from an empty table.
Everything the daemon would refuse (unknown scheduler, a service or dest defined twice, a group
entry that belongs to another service, tunnel forwarding) is refused here with the line.
``include`` does not exist in this format.  Pure.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from ulvs.config.ipvsadm import UsageError, parse_restore
from ulvs.config.requests import (
    JsonObj,
    dest_addr_from_json,
    dest_from_json,
    key_name,
    service_from_json,
    service_key_from_json,
)
from ulvs.config.schema import (
    Config,
    ConfigError,
    Includer,
    LoadResult,
    RealServer,
    Timeouts,
    VirtualService,
    Where,
)
from ulvs.core.engine import ServiceKey
from ulvs.core.model import DestConfig, FwdMethod, GroupMember, ServiceConfig
from ulvs.sched.base import names as scheduler_names

_LINE = re.compile(r"line (\d+): (.*)", re.S)
DestAddr = tuple[ipaddress.IPv4Address, int]


@dataclass(slots=True)
class _Service:
    config: ServiceConfig
    where: Where
    dests: dict[DestAddr, tuple[DestConfig, Where]] = field(default_factory=dict)


@dataclass(slots=True)
class _Table:
    """The IPVS table as ``ipvsadm -R`` would leave it, line by line."""

    source: str
    services: dict[ServiceKey, _Service] = field(default_factory=dict)
    timeouts: list[int] = field(default_factory=lambda: [900, 120, 300])

    def apply(self, req: JsonObj, where: Where) -> None:
        handler = getattr(self, f"_{req['cmd']}", None)
        if handler is None:
            raise ConfigError(f"the {req['cmd']!r} request has no place in a configuration", where)
        handler(req, where)

    def _service(self, value: Any, where: Where) -> _Service:
        key = service_key_from_json(value)
        svc = self.services.get(key)
        if svc is None:
            raise ConfigError(f"no such service {key_name(key)}", where)
        return svc

    def _check_scheduler(self, cfg: ServiceConfig, where: Where) -> None:
        if cfg.sched not in scheduler_names():
            raise ConfigError(f"unknown scheduler {cfg.sched!r} (allowed: {', '.join(scheduler_names())})",
                              where)

    def _add_service(self, req: JsonObj, where: Where) -> None:
        cfg = service_from_json(req["service"])
        self._check_scheduler(cfg, where)
        if cfg.key in self.services:
            raise ConfigError(f"service {key_name(cfg.key)} already exists", where)
        owners = {e: s for s in self.services.values() for e in s.config.entries()}
        for entry in cfg.entries():
            if entry in owners:
                raise ConfigError(f"{_entry(entry)} already belongs to {key_name(owners[entry].config.key)}",
                                  where)
        self.services[cfg.key] = _Service(cfg, where)

    def _edit_service(self, req: JsonObj, where: Where) -> None:
        svc = self._service(req["service"], where)
        cfg = service_from_json(req["service"], members=svc.config.members)
        self._check_scheduler(cfg, where)
        if cfg.entries() != svc.config.entries():
            raise ConfigError("a service's group members cannot be edited; delete and add it", where)
        svc.config = cfg

    def _del_service(self, req: JsonObj, where: Where) -> None:
        del self.services[self._service(req["service"], where).config.key]

    def _clear(self, req: JsonObj, where: Where) -> None:
        self.services.clear()

    def _add_dest(self, req: JsonObj, where: Where) -> None:
        svc = self._service(req["service"], where)
        cfg = _dest(req, where)
        if (cfg.daddr, cfg.dport) in svc.dests:
            raise ConfigError(f"dest {cfg.daddr}:{cfg.dport} already exists in {key_name(svc.config.key)}",
                              where)
        svc.dests[(cfg.daddr, cfg.dport)] = (cfg, where)

    def _edit_dest(self, req: JsonObj, where: Where) -> None:
        svc = self._service(req["service"], where)
        cfg = _dest(req, where)
        found = svc.dests.get((cfg.daddr, cfg.dport))
        if found is None:
            raise ConfigError(f"no dest {cfg.daddr}:{cfg.dport} in {key_name(svc.config.key)}", where)
        svc.dests[(cfg.daddr, cfg.dport)] = (cfg, found[1])

    def _del_dest(self, req: JsonObj, where: Where) -> None:
        svc = self._service(req["service"], where)
        daddr, dport = dest_addr_from_json(req["dest"])
        if svc.dests.pop((daddr, dport), None) is None:
            raise ConfigError(f"no dest {daddr}:{dport} in {key_name(svc.config.key)}", where)

    def _set_timeouts(self, req: JsonObj, where: Where) -> None:
        for i, name in enumerate(("tcp", "tcpfin", "udp")):
            if req[name]:                       # 0 keeps the current value
                self.timeouts[i] = req[name]

    def _zero(self, req: JsonObj, where: Where) -> None:
        if req.get("service") is not None:      # counters only: nothing to configure
            self._service(req["service"], where)

    def config(self) -> Config:
        services = tuple(
            VirtualService(s.config, tuple(RealServer(cfg, where=w) for cfg, w in s.dests.values()),
                           where=s.where)
            for s in self.services.values())
        return Config(services=tuple(services), timeouts=Timeouts(*self.timeouts), source=self.source)


def _dest(req: JsonObj, where: Where) -> DestConfig:
    cfg = dest_from_json(req["dest"])
    if cfg.method == FwdMethod.TUNNEL:
        raise ConfigError("the tunnel forwarding method (-i) is not supported yet; use -m or -g", where)
    return cfg


def _entry(entry: GroupMember) -> str:
    return f"{entry[0].name} {entry[1]}:{entry[2]}"


def parse(text: str, source: str, include: Includer | None = None) -> LoadResult:
    """A rules file.  Raises ``ConfigError`` naming the file and line."""
    try:
        numbered = parse_restore(text)
    except UsageError as e:
        m = _LINE.fullmatch(str(e))
        if m is None:
            raise ConfigError(str(e), Where(source)) from None
        raise ConfigError(m.group(2), Where(source, int(m.group(1)))) from None
    table = _Table(source)
    for lineno, req in numbered:
        where = Where(source, lineno)
        try:
            table.apply(req, where)
        except ConfigError:
            raise
        except ValueError as e:                 # RequestError, model checks
            raise ConfigError(str(e), where) from None
    return LoadResult(table.config())
