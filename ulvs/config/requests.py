"""The control protocol's request codec: JSON <-> service keys, ``ServiceConfig``, ``DestConfig``.

The wire shapes are documented at the top of ``ulvs.runtime.control``, which applies the
requests; ``ulvsadm``'s grammar (``ulvs.config.ipvsadm``) and the config compiler build them.
Pure: no I/O.  JSON gives ``Any``: every field is checked before use, and every malformed
value raises ``RequestError`` naming the field.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from ulvs.config.schema import Config
from ulvs.core.engine import ServiceKey
from ulvs.core.model import DestConfig, FwdMethod, GroupMember, Proto, ServiceConfig

MAX_TIMEOUT = 86400 * 31        # ipvsadm.c MAX_TIMEOUT: 31 days
MAX_FWMARK = 2**32 - 1

JsonObj = dict[str, Any]

PROTO_BY_NAME = {"tcp": Proto.TCP, "udp": Proto.UDP, "fwm": Proto.FWM}
PROTO_NAME = {v: k for k, v in PROTO_BY_NAME.items()}
METHOD_BY_NAME = {m.value: m for m in FwdMethod}
ANY_ADDR = ipaddress.IPv4Address(0)
HOST_MASK = ipaddress.IPv4Address("255.255.255.255")


class RequestError(ValueError):
    """A malformed request or reply: wrong JSON type, missing field, unknown name."""


# ==========================================================================================
# Typed field access (JSON gives us Any; everything is checked before use)
# ==========================================================================================
MISSING: Any = object()


def as_object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise RequestError(f"{what} must be a JSON object, not {type_name(value)}")
    return value


def type_name(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def get_field(d: Mapping[str, Any], name: str, default: Any) -> Any:
    if name in d:
        return d[name]
    if default is MISSING:
        raise RequestError(f"missing field {name!r}")
    return default


def int_field(d: Mapping[str, Any], name: str, default: Any = MISSING) -> int:
    v = get_field(d, name, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise RequestError(f"field {name!r} must be a whole number, not {type_name(v)}")
    return v


def opt_int_field(d: Mapping[str, Any], name: str) -> int | None:
    if d.get(name) is None:
        return None
    return int_field(d, name)


def str_field(d: Mapping[str, Any], name: str, default: Any = MISSING) -> str:
    v = get_field(d, name, default)
    if not isinstance(v, str):
        raise RequestError(f"field {name!r} must be a string, not {type_name(v)}")
    return v


def bool_field(d: Mapping[str, Any], name: str, default: Any = MISSING) -> bool:
    v = get_field(d, name, default)
    if not isinstance(v, bool):
        raise RequestError(f"field {name!r} must be true or false, not {type_name(v)}")
    return v


def list_field(d: Mapping[str, Any], name: str, default: Any = MISSING) -> list[Any]:
    v = get_field(d, name, default)
    if not isinstance(v, list):
        raise RequestError(f"field {name!r} must be a list, not {type_name(v)}")
    return v


def addr_field(d: Mapping[str, Any], name: str, default: Any = MISSING) -> ipaddress.IPv4Address:
    text = str_field(d, name, default)
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise RequestError(f"field {name!r}: {text!r} is not an IPv4 address") from None


def port_field(d: Mapping[str, Any], name: str, default: Any = MISSING) -> int:
    port = int_field(d, name, default)
    if not 0 <= port <= 65535:
        raise RequestError(f"field {name!r}: port {port} out of range 0..65535")
    return port


def proto_field(d: Mapping[str, Any],
                allowed: tuple[Proto, ...] = (Proto.TCP, Proto.UDP, Proto.FWM)) -> Proto:
    name = str_field(d, "proto")
    proto = PROTO_BY_NAME.get(name)
    if proto is None or proto not in allowed:
        names = "/".join(PROTO_NAME[p] for p in allowed)
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
    return {"proto": PROTO_NAME[proto], "vaddr": str(vaddr), "vport": vport}


def service_key_from_json(value: Any) -> ServiceKey:
    d = as_object(value, "service")
    proto = proto_field(d)
    if proto == Proto.FWM:
        return (Proto.FWM, ANY_ADDR, fwmark_field(d))
    return (proto, addr_field(d, "vaddr"), port_field(d, "vport"))


def fwmark_field(d: Mapping[str, Any]) -> int:
    mark = int_field(d, "fwmark")
    if not 1 <= mark <= MAX_FWMARK:
        raise RequestError(f"field 'fwmark': {mark} out of range 1..{MAX_FWMARK}")
    return mark


def member_to_json(m: GroupMember) -> JsonObj:
    return {"proto": PROTO_NAME[m[0]], "vaddr": str(m[1]), "vport": m[2]}


def member_from_json(value: Any) -> GroupMember:
    d = as_object(value, "service group member")
    return (proto_field(d, (Proto.TCP, Proto.UDP)), addr_field(d, "vaddr"), port_field(d, "vport"))


def service_to_json(cfg: ServiceConfig) -> JsonObj:
    out = service_key_to_json(cfg.key)
    if cfg.proto == Proto.FWM:
        out["members"] = [member_to_json(m) for m in cfg.members]
    out.update(sched=cfg.sched, flags=sorted(cfg.flags), persistent=cfg.persistent,
               netmask=str(cfg.netmask), ops=cfg.ops)
    return out


def service_from_json(value: Any, *, members: tuple[GroupMember, ...] | None = None) -> ServiceConfig:
    """A ``ServiceConfig``; ``members`` is used for a service group whose JSON has none."""
    d = as_object(value, "service")
    proto = proto_field(d)
    flags = list_field(d, "flags", [])
    if not all(isinstance(f, str) for f in flags):
        raise RequestError("field 'flags' must be a list of strings")
    common: dict[str, Any] = dict(
        sched=str_field(d, "sched", "wlc"), flags=frozenset(flags), persistent=opt_int_field(d, "persistent"),
        netmask=addr_field(d, "netmask", str(HOST_MASK)), ops=bool_field(d, "ops", False))
    if proto == Proto.FWM:
        mark = fwmark_field(d)
        if "members" in d:
            members = tuple(member_from_json(m) for m in list_field(d, "members"))
        if not members:
            raise RequestError(
                f"service group {mark} has no members: service groups are defined in the config file "
                "(or given with ulvsadm --group-member proto:addr:port)")
        return ServiceConfig(Proto.FWM, ANY_ADDR, 0, fwmark=mark, members=members, **common)
    return ServiceConfig(proto, addr_field(d, "vaddr"), port_field(d, "vport"), **common)


def dest_to_json(cfg: DestConfig) -> JsonObj:
    return {"daddr": str(cfg.daddr), "dport": cfg.dport, "weight": cfg.weight, "method": cfg.method.value,
            "u_threshold": cfg.u_threshold, "l_threshold": cfg.l_threshold}


def dest_from_json(value: Any) -> DestConfig:
    d = as_object(value, "dest")
    name = str_field(d, "method", FwdMethod.DROUTE.value)
    method = METHOD_BY_NAME.get(name)
    if method is None:
        raise RequestError(f"field 'method' must be masq/droute/tunnel, not {name!r}")
    return DestConfig(addr_field(d, "daddr"), port_field(d, "dport"), weight=int_field(d, "weight", 1),
                      method=method, u_threshold=int_field(d, "u_threshold", 0),
                      l_threshold=int_field(d, "l_threshold", 0))


def dest_addr_from_json(value: Any) -> tuple[ipaddress.IPv4Address, int]:
    d = as_object(value, "dest")
    return addr_field(d, "daddr"), port_field(d, "dport")


def count_field(d: Mapping[str, Any], name: str) -> int:
    """A counter: a whole number, 0 when absent, never negative."""
    v = int_field(d, name, 0)
    if v < 0:
        raise RequestError(f"field {name!r} must not be negative")
    return v




# ==========================================================================================
# A whole configuration as requests
# ==========================================================================================
def compile_requests(config: Config) -> list[JsonObj]:
    """The requests that build ``config``'s services, dests and timeouts from nothing: each
    service followed by its dests, then the timeouts.  The daemon applies them as one batch at
    start and reloads by diffing them against what runs (``control.diff_requests``)."""
    out: list[JsonObj] = []
    for vs in config.services:
        out.append({"cmd": "add_service", "service": service_to_json(vs.config)})
        key = service_key_to_json(vs.config.key)
        out.extend({"cmd": "add_dest", "service": key, "dest": dest_to_json(rs.config)} for rs in vs.dests)
    t = config.timeouts
    out.append({"cmd": "set_timeouts", "tcp": t.tcp, "tcpfin": t.tcpfin, "udp": t.udp})
    return out
