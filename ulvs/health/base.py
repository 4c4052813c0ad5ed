"""The checker interface: what a probe is given, what it returns, and the registry.

A checker is built from one ``schema.CheckSpec`` (its keepalived kind and options) and one
``Target`` (the dest it checks).  ``probe()`` runs one attempt and returns a ``Result``; it never
raises for anything the network or the server does (refused, reset, timeout, garbage): those
are failed results with a reason.  Retries, delays and the up/down decision belong to the pure
state machine (``ulvs.health.state``), not to the checker.

Checkers register by kind at import time (``register("TCP_CHECK", TcpCheck)``), one module per
checker under ``ulvs.health.checkers``; ``create(spec, target)`` finds the class by kind.

Pure: this module does no I/O itself (the probes do, in their own modules).
"""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass
from typing import ClassVar

from ulvs.config.schema import CheckSpec

# keepalived's defaults for the timing keys every socket checker takes (keepalived.conf(5)).
DEFAULT_CONNECT_TIMEOUT = 5.0     # s
DEFAULT_RETRY = 1                 # extra attempts after a failure before the dest goes down
DEFAULT_DELAY_BEFORE_RETRY = 1.0  # s
DEFAULT_DELAY_LOOP = 60.0         # s between checks (the service's delay_loop)


@dataclass(frozen=True, slots=True)
class Target:
    """The dest a checker probes, and where: ``connect_ip``/``connect_port`` override the dest's
    address and port, ``bindto``/``bind_port`` choose the source."""

    daddr: ipaddress.IPv4Address
    dport: int
    connect_ip: ipaddress.IPv4Address | None = None
    connect_port: int | None = None
    bindto: ipaddress.IPv4Address | None = None
    bind_port: int | None = None

    @property
    def host(self) -> str:
        return str(self.connect_ip or self.daddr)

    @property
    def port(self) -> int:
        return self.connect_port if self.connect_port is not None else self.dport

    @property
    def source(self) -> tuple[str, int] | None:
        if self.bindto is None and self.bind_port is None:
            return None
        return (str(self.bindto or "0.0.0.0"), self.bind_port or 0)


@dataclass(frozen=True, slots=True)
class Result:
    """One probe's outcome.  ``weight`` is set by dynamic checkers (MISC_CHECK ``misc_dynamic``,
    FILE_CHECK ``dynamic``): the weight the dest should have while it is up."""

    ok: bool
    detail: str = ""
    weight: int | None = None


class Checker(ABC):
    kind: ClassVar[str]

    def __init__(self, spec: CheckSpec, target: Target) -> None:
        self.spec = spec
        self.target = target

    @property
    def connect_timeout(self) -> float:
        return float(self.spec.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT))

    def key(self) -> Hashable:
        """Identity for sharing: two services checking the same dest the same way share one
        checker (issue: a dest shared by several services is probed once per distinct check)."""
        return (self.kind, _frozen(self.spec.options), self.target)

    @abstractmethod
    async def probe(self) -> Result:
        """One attempt, bounded by the checker's own timeout; never raises for network input."""


def _frozen(value: object) -> Hashable:
    """``value`` with every mapping and list turned into sorted/plain tuples (url blocks are
    dicts), so checker identities can be dict keys."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


_REGISTRY: dict[str, type[Checker]] = {}


class CheckerError(ValueError):
    """An unknown checker kind or an option a checker cannot use (a configuration error)."""


def register(kind: str, cls: type[Checker]) -> None:
    if kind in _REGISTRY:
        raise CheckerError(f"checker {kind!r} registered twice")
    cls.kind = kind
    _REGISTRY[kind] = cls


def registered() -> tuple[str, ...]:
    _load_all()
    return tuple(sorted(_REGISTRY))


def create(spec: CheckSpec, target: Target) -> Checker:
    _load_all()
    cls = _REGISTRY.get(spec.kind)
    if cls is None:
        raise CheckerError(f"no checker {spec.kind!r} (known: {', '.join(sorted(_REGISTRY))})")
    return cls(spec, target)


def _load_all() -> None:
    import importlib
    import pkgutil

    import ulvs.health.checkers as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")
