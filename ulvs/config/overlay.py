"""The health overlay: what the daemon serves is its configuration as the health checks left it.

The daemon owns the effective configuration (STYLE rule 10): the requests its configuration file
compiles to (``requests.compile_requests``), with a *health overlay* laid over them.  The health
monitor (``ulvs.health.monitor``, a process of its own) only reports: this dest is up or down,
this is the weight it should have, this service's sorry server is on or off.  Every time the
overlay changes, and on every reload, the daemon computes ``apply_overlay(compiled, overlay,
sorry, policies)`` and applies ``control.diff_requests(core, wanted)``: one code path, so a
reload never resets health and a health change never loses a reload.

The overlay, per dest of a service (absent = up at the configured weight):

* down: the dest is removed from the pool, or kept at weight 0 when ``inhibit_on_failure``
  applies (the real_server's setting, else the virtual_server's);
* up with a weight: that weight replaces the configured one (dynamic checkers, slow start);
* the service's sorry server on: every real dest is withdrawn (removed, or weight 0 with
  inhibit) and the sorry server is added as a masq dest of weight 1; off, it is absent, or at
  weight 0 with ``sorry_server_inhibit``.

Also here: the codec of the daemon commands that change the overlay (``health``, ``sorry``;
their wire shapes are in ``ulvs.runtime.control``'s docstring) and its JSON view for
``ulvs status``.  Pure: no I/O, no clock (times are arguments).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ulvs.config.requests import (
    MISSING,
    JsonObj,
    RequestError,
    bool_field,
    dest_addr_from_json,
    get_field,
    service_key_from_json,
    service_key_to_json,
    str_field,
)
from ulvs.config.schema import Config, Endpoint
from ulvs.core.engine import ServiceKey
from ulvs.core.model import MAX_WEIGHT, FwdMethod

DestAddr = tuple[ipaddress.IPv4Address, int]
OverlayKey = tuple[ServiceKey, ipaddress.IPv4Address, int]
MAX_DETAIL = 512      # characters of probe detail kept per dest


@dataclass(frozen=True, slots=True)
class DestHealth:
    """What the health monitor last said of one dest.  ``weight`` None: the configured weight.
    ``detail`` (the last probe's outcome) and ``since`` (when ``up`` last changed, wall clock)
    are for ``ulvs status`` only: they never change what is served."""

    up: bool
    weight: int | None = None
    detail: str = ""
    since: float | None = None

    @property
    def effect(self) -> tuple[bool, int | None]:
        """The part that decides the pool: an update that leaves it alone needs no diff."""
        return (self.up, self.weight if self.up else None)


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """The configuration's say in how a service's overlay is applied."""

    inhibit: frozenset[DestAddr] = frozenset()      # dests kept at weight 0 while down
    sorry: Endpoint | None = None
    sorry_inhibit: bool = False                     # the sorry server at weight 0 while unused


def policies(config: Config) -> dict[ServiceKey, ServicePolicy]:
    """Each service's ``ServicePolicy``, from the configuration model."""
    out: dict[ServiceKey, ServicePolicy] = {}
    for vs in config.services:
        inhibit = frozenset(
            (rs.config.daddr, rs.config.dport) for rs in vs.dests
            if (vs.inhibit_on_failure if rs.inhibit_on_failure is None else rs.inhibit_on_failure))
        out[vs.config.key] = ServicePolicy(inhibit, vs.sorry_server, vs.sorry_server_inhibit)
    return out


def needs_monitor(config: Config) -> bool:
    """Whether the configuration gives a health monitor anything to do: a check, a sorry server,
    a quorum script or passive ejection."""
    return any(rs.checks for vs in config.services for rs in vs.dests) or any(
        vs.sorry_server is not None or vs.quorum_up is not None or vs.quorum_down is not None
        or vs.ejection is not None for vs in config.services)


def _sorry_dest(service: JsonObj, ep: Endpoint, weight: int) -> JsonObj:
    return {"cmd": "add_dest", "service": service,
            "dest": {"daddr": str(ep[0]), "dport": ep[1], "weight": weight, "method": FwdMethod.MASQ.value}}


def apply_overlay(requests: Sequence[JsonObj], overlay: Mapping[OverlayKey, DestHealth],
                  sorry: Collection[ServiceKey],
                  services: Mapping[ServiceKey, ServicePolicy]) -> list[JsonObj]:
    """``requests`` (a configuration's, as ``compile_requests`` makes them) with the overlay
    applied: ``add_dest`` requests dropped or re-weighted, sorry servers added after their
    service's last request.  Requests of other kinds pass unchanged; the input is not modified.
    A sorry server that is also a configured dest of its service is that dest, at weight 1
    while the sorry server is on."""
    out: list[JsonObj] = []
    last: dict[ServiceKey, int] = {}        # service -> index in out of its last request
    present: dict[ServiceKey, set[DestAddr]] = {}
    for req in requests:
        cmd = req.get("cmd")
        if cmd not in ("add_service", "add_dest"):
            out.append(req)
            continue
        key = service_key_from_json(req["service"])
        policy = services.get(key, ServicePolicy())
        if cmd == "add_dest":
            daddr, dport = dest_addr_from_json(req["dest"])
            present.setdefault(key, set()).add((daddr, dport))
            weight = _weight(req["dest"], (daddr, dport), overlay.get((key, daddr, dport)), policy,
                             key in sorry)
            if weight is None:
                continue
            if weight != req["dest"].get("weight", 1):
                req = {**req, "dest": {**req["dest"], "weight": weight}}
        out.append(req)
        last[key] = len(out) - 1
    inserts: list[tuple[int, JsonObj]] = []
    for key, index in last.items():
        policy = services.get(key, ServicePolicy())
        if policy.sorry is None or policy.sorry in present.get(key, set()):
            continue
        on = key in sorry
        if on or policy.sorry_inhibit:
            inserts.append((index + 1, _sorry_dest(service_key_to_json(key), policy.sorry, 1 if on else 0)))
    for index, req in sorted(inserts, key=lambda x: x[0], reverse=True):
        out.insert(index, req)
    return out


def _weight(dest: Mapping[str, Any], addr: DestAddr, health: DestHealth | None, policy: ServicePolicy,
            sorry_on: bool) -> int | None:
    """The weight one configured dest gets, or None when it leaves the pool."""
    if policy.sorry == addr:                         # the sorry server is this dest
        return 1 if sorry_on else dest.get("weight", 1)
    up = health is None or health.up
    if up and not sorry_on:
        return health.weight if health is not None and health.weight is not None else dest.get("weight", 1)
    return 0 if addr in policy.inhibit else None


def configured_dests(requests: Sequence[JsonObj]) -> set[OverlayKey]:
    """Every (service, daddr, dport) the requests add: what an overlay may speak of."""
    out: set[OverlayKey] = set()
    for req in requests:
        if req.get("cmd") == "add_dest":
            daddr, dport = dest_addr_from_json(req["dest"])
            out.add((service_key_from_json(req["service"]), daddr, dport))
    return out


# -- the daemon commands ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthUpdate:
    """A parsed ``health`` command."""

    key: OverlayKey
    up: bool
    weight: int | None
    detail: str


def health_from_json(req: Mapping[str, Any]) -> HealthUpdate:
    """{"cmd": "health", "service": svc, "dest": {"daddr", "dport"}, "up": bool,
    "weight": int|null, "detail": str (optional)}; ``RequestError`` naming the bad field."""
    service = service_key_from_json(get_field(req, "service", MISSING))
    daddr, dport = dest_addr_from_json(get_field(req, "dest", MISSING))
    up = bool_field(req, "up")
    weight = req.get("weight")
    if weight is not None:
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise RequestError("field 'weight' must be a whole number or null")
        if not 0 <= weight <= MAX_WEIGHT:
            raise RequestError(f"field 'weight': {weight} out of range 0..{MAX_WEIGHT}")
    detail = str_field(req, "detail", "")[:MAX_DETAIL]
    return HealthUpdate((service, daddr, dport), up, weight, detail)


def sorry_from_json(req: Mapping[str, Any]) -> tuple[ServiceKey, bool]:
    """{"cmd": "sorry", "service": svc, "on": bool}."""
    return service_key_from_json(get_field(req, "service", MISSING)), bool_field(req, "on")


def health_request(key: OverlayKey, up: bool, weight: int | None, detail: str = "") -> JsonObj:
    """The ``health`` command for ``key`` (what the monitor sends)."""
    service, daddr, dport = key
    return {"cmd": "health", "service": service_key_to_json(service),
            "dest": {"daddr": str(daddr), "dport": dport}, "up": up, "weight": weight, "detail": detail}


def overlay_to_json(overlay: Mapping[OverlayKey, DestHealth], sorry: Collection[ServiceKey]) -> JsonObj:
    """The overlay as ``ulvs status`` shows it: every dest the monitor reported, sorted."""
    def order(k: OverlayKey) -> tuple[int, int, int, int, int]:
        return (int(k[0][0]), int(k[0][1]), k[0][2], int(k[1]), k[2])

    return {
        "dests": [{"service": service_key_to_json(k[0]), "daddr": str(k[1]), "dport": k[2],
                   "up": h.up, "weight": h.weight, "detail": h.detail, "since": h.since}
                  for k, h in sorted(overlay.items(), key=lambda kv: order(kv[0]))],
        "sorry": [service_key_to_json(k) for k in sorted(sorry, key=lambda k: (int(k[0]), int(k[1]), k[2]))],
    }
