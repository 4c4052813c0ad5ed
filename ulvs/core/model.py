"""Control-plane model: services, dests and their configuration.

Configuration objects are frozen; ``Service`` and ``Dest`` are the runtime records the core and
the schedulers share.  Vocabulary is IPVS's: a *service* is (protocol, vaddr, vport); a *dest*
is a real server (daddr, dport) with a weight and a forwarding method.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ulvs.sched.base import Scheduler


class Proto(IntEnum):
    FWM = 0     # a service group ("firewall-mark service"): matches its member entries
    TCP = 6
    UDP = 17

    @property
    def label(self) -> str:
        return self.name


GroupMember = tuple[Proto, ipaddress.IPv4Address, int]


class FwdMethod(Enum):
    MASQ = "masq"       # NAT: addresses and ports rewritten both ways ("Masq")
    DROUTE = "droute"   # direct routing: only the destination MAC changes ("Route")
    TUNNEL = "tunnel"   # IP-in-IP ("Tunnel"); not yet supported by this dataplane

    @property
    def label(self) -> str:
        return {"masq": "Masq", "droute": "Route", "tunnel": "Tunnel"}[self.value]


MAX_WEIGHT = 65535
MAX_THRESHOLD = 65535


def _check_port(name: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"{name} {port} out of range 0..65535")


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    proto: Proto
    vaddr: ipaddress.IPv4Address
    vport: int
    sched: str = "wlc"
    flags: frozenset[str] = frozenset()
    persistent: int | None = None          # persistence timeout in seconds, None = off
    netmask: ipaddress.IPv4Address = ipaddress.IPv4Address("255.255.255.255")
    ops: bool = False                      # one-packet scheduling (UDP only)
    fwmark: int = 0                        # service group number (proto FWM only)
    members: tuple[GroupMember, ...] = ()  # (proto, vaddr, vport) entries of a group; vport 0 = any

    def __post_init__(self) -> None:
        _check_port("vport", self.vport)
        if self.persistent is not None and not 1 <= self.persistent <= 2**31 - 1:
            raise ValueError(f"persistence timeout {self.persistent} out of range 1..{2**31 - 1}")
        if self.proto == Proto.FWM:
            if not 1 <= self.fwmark <= 2**32 - 1:
                raise ValueError(f"service group (fwmark) number {self.fwmark} out of range 1..4294967295")
            if not self.members:
                raise ValueError(f"service group {self.fwmark} has no members")
            for proto, _vaddr, vport in self.members:
                if proto not in (Proto.TCP, Proto.UDP):
                    raise ValueError("service group members must be TCP or UDP entries")
                _check_port("member port", vport)
            if self.ops and any(m[0] != Proto.UDP for m in self.members):
                raise ValueError("one-packet scheduling (ops) is for UDP services only")
            return
        if self.fwmark or self.members:
            raise ValueError("fwmark and members are only for service groups (proto FWM)")
        if self.ops and self.proto != Proto.UDP:
            raise ValueError("one-packet scheduling (ops) is for UDP services only")
        if self.vport == 0 and self.persistent is None:
            raise ValueError("port 0 is only allowed for persistent services")

    @property
    def key(self) -> tuple[Proto, ipaddress.IPv4Address, int]:
        """(proto, vaddr, vport); a service group is (FWM, 0.0.0.0, fwmark)."""
        if self.proto == Proto.FWM:
            return (Proto.FWM, ipaddress.IPv4Address(0), self.fwmark)
        return (self.proto, self.vaddr, self.vport)

    def entries(self) -> tuple[GroupMember, ...]:
        """The (proto, vaddr, vport) entries this service answers."""
        if self.proto == Proto.FWM:
            return self.members
        return ((self.proto, self.vaddr, self.vport),)


@dataclass(frozen=True, slots=True)
class DestConfig:
    daddr: ipaddress.IPv4Address
    dport: int
    weight: int = 1
    method: FwdMethod = FwdMethod.DROUTE
    u_threshold: int = 0
    l_threshold: int = 0

    def __post_init__(self) -> None:
        _check_port("dport", self.dport)
        if not 0 <= self.weight <= MAX_WEIGHT:
            raise ValueError(f"weight {self.weight} out of range 0..{MAX_WEIGHT}")
        for name, v in (("upper threshold", self.u_threshold), ("lower threshold", self.l_threshold)):
            if not 0 <= v <= MAX_THRESHOLD:
                raise ValueError(f"{name} {v} out of range 0..{MAX_THRESHOLD}")


@dataclass(eq=False, slots=True)
class Dest:
    """A real server of one service, as the core and schedulers see it."""

    config: DestConfig
    service: Service
    index: int = 0                 # position in service.dests (insertion order)
    sid: int = 0                   # row in the core's per-dest statistics arrays
    weight: int = 1                # current weight (0 = quiescent)
    last_weight: int = 1           # latest non-zero weight (Maglev keeps the table on quiesce)
    activeconns: int = 0
    inactconns: int = 0
    persistconns: int = 0
    overloaded: bool = False
    removed: bool = False          # deleted from its service; conns may still point here
    sched_data: Any = None         # per-dest scheduler scratch
    plan: list[Any] | None = None  # in-direction rewrite plan (ulvs.core.xmit)

    @property
    def daddr(self) -> ipaddress.IPv4Address:
        return self.config.daddr

    @property
    def dport(self) -> int:
        return self.config.dport

    @property
    def method(self) -> FwdMethod:
        return self.config.method

    @property
    def available(self) -> bool:
        """May take new connections: weight > 0 and not over its upper threshold."""
        return self.weight > 0 and not self.overloaded

    @property
    def conns(self) -> int:
        return self.activeconns + self.inactconns

    @property
    def overhead(self) -> int:
        """IPVS ip_vs_dest_conn_overhead: active conns weigh 256 inactive ones."""
        return (self.activeconns << 8) + self.inactconns

    def __repr__(self) -> str:
        return f"Dest({self.config.daddr}:{self.config.dport} w={self.weight})"

    def __deepcopy__(self, memo: dict[int, Any]) -> Dest:
        """A dest is an identity shared by the core and its scheduler, never copied: a deep copy
        of a scheduler (``Scheduler.peek``) keeps pointing at the very same dests."""
        return self


@dataclass(eq=False, slots=True)
class Service:
    config: ServiceConfig
    scheduler: Scheduler
    dests: list[Dest] = field(default_factory=list)
    sid: int = 0                   # row in the per-service statistics arrays

    @property
    def proto(self) -> Proto:
        return self.config.proto

    def find(self, daddr: ipaddress.IPv4Address, dport: int) -> Dest | None:
        for d in self.dests:
            if d.config.daddr == daddr and d.config.dport == dport:
                return d
        return None
