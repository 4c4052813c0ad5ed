"""The configuration model: one frozen description of everything the daemon runs.

Every input format (native TOML, keepalived.conf, Piranha lvs.cf, ipvsadm rules) is parsed into
this model, and everything downstream (the daemon's reload by diff, ``ulvs import``, ``ulvs
check-config``, the health monitor, the VRRP speaker) reads only this model.  Parsers never
touch the dataplane: they produce a ``LoadResult`` (a ``Config`` plus warnings) or raise one
``ConfigError`` that names the file and the line (or the key path) and, where a value is out of
range, the allowed values.

Pure: no I/O.  Parsers take text; ``include`` directives are resolved by a callback the shell
supplies (``Includer``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ulvs.core.model import DestConfig, ServiceConfig

# -- provenance and errors --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Where:
    """Where a value came from: a file, and a line number or a key path (or both)."""

    file: str
    line: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        s = self.file
        if self.line is not None:
            s += f":{self.line}"
        if self.key:
            s += f": {self.key}"
        return s


class ConfigError(ValueError):
    """A configuration that cannot run.  ``str()`` is the whole message for the user:
    ``FILE:LINE: KEY: what is wrong (allowed: ...)``."""

    def __init__(self, message: str, where: Where | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where is not None else message)


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """Something accepted but not (yet) acted on, e.g. an unsupported keepalived keyword."""

    where: Where
    message: str

    def __str__(self) -> str:
        return f"{self.where}: warning: {self.message}"


# -- health checks (run by the health monitor; parsed and validated here) ---------------------

# Keys every socket checker takes (keepalived.conf(5) "common" checker keys).
CHECK_COMMON_KEYS = frozenset({
    "connect_ip", "connect_port", "bindto", "bind_port", "bind_if", "fwmark", "connect_timeout",
    "retry", "delay_before_retry", "warmup", "delay_loop", "alpha", "log_all_failures",
})
# Checker kind -> the keys it accepts beyond the common ones.  ``url`` (HTTP_GET/SSL_GET) is a
# list of url blocks, each a mapping with URL_KEYS.
CHECK_KEYS: dict[str, frozenset[str]] = {
    "TCP_CHECK": CHECK_COMMON_KEYS,
    "HTTP_GET": CHECK_COMMON_KEYS | {"url", "http_protocol", "virtualhost", "fast_recovery"},
    "SSL_GET": CHECK_COMMON_KEYS | {"url", "http_protocol", "virtualhost", "fast_recovery",
                                    "enable_sni", "sni_name", "tls_compliant"},
    "SMTP_CHECK": CHECK_COMMON_KEYS | {"helo_name"},
    "DNS_CHECK": CHECK_COMMON_KEYS | {"type", "name"},
    "UDP_CHECK": CHECK_COMMON_KEYS | {"payload", "require_reply", "min_reply_length",
                                      "max_reply_length"},
    "PING_CHECK": CHECK_COMMON_KEYS,
    "MISC_CHECK": frozenset({"misc_path", "misc_timeout", "misc_dynamic", "user", "warmup",
                             "delay_loop", "alpha"}),
    "FILE_CHECK": frozenset({"track_file", "dynamic", "weight", "delay_loop", "alpha"}),
    # Piranha nanny: empty send = connect only; expect matched literally (or as a regex).
    "NANNY": CHECK_COMMON_KEYS | {"send", "expect", "use_regex", "send_program", "timeout",
                                  "reentry"},
}
URL_KEYS = frozenset({"path", "digest", "status_code", "virtualhost", "regex", "regex_no_match",
                      "regex_options", "regex_min_offset", "regex_max_offset"})


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One health checker of a dest: its kind (a ``CHECK_KEYS`` name) and its options as given
    (values already typed: int, float, bool, str, or a tuple of url mappings for ``url``)."""

    kind: str
    options: tuple[tuple[str, Any], ...] = ()
    where: Where | None = field(default=None, compare=False)

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self.options:
            if k == key:
                return v
        return default

    def as_dict(self) -> dict[str, Any]:
        return dict(self.options)


# -- services ---------------------------------------------------------------------------------

Endpoint = tuple[ipaddress.IPv4Address, int]
Argv = tuple[str, ...]   # a notify script: program and arguments, run without a shell


@dataclass(frozen=True, slots=True)
class RealServer:
    """A dest with its health policy (keepalived ``real_server``)."""

    config: DestConfig
    checks: tuple[CheckSpec, ...] = ()
    inhibit_on_failure: bool | None = None   # None: the service's setting
    notify_up: Argv | None = None
    notify_down: Argv | None = None
    where: Where | None = field(default=None, compare=False)


MAX_EJECTION_BACKOFF = 86400.0              # s
MAX_EJECTION_SYNS = 1_000_000


@dataclass(frozen=True, slots=True)
class EjectionSettings:
    """ulvs: passive ejection of a service's masq dests (``ulvs.health.policy.EjectionPolicy``).
    Each second the health monitor reads the new TCP connections the director sent to each dest
    and how many it answered with a SYN-ACK; a dest that got at least ``min_syns`` and left more
    than ``threshold`` of them unanswered (silence or a RST) is taken out of service for
    ``backoff`` seconds, doubled with each consecutive ejection up to ``backoff_max``, then
    re-probed by its checkers.  At most ``max_fraction`` of the service's dests are out at once."""

    threshold: float = 0.5          # fraction unanswered that ejects: 0 <= threshold < 1
    min_syns: int = 10              # SYNs in a second below which a dest is not judged
    backoff: float = 10.0           # s, the first ejection
    backoff_max: float = 300.0      # s, the longest
    max_fraction: float = 0.5       # of the service's dests, 0..1

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"ejection threshold {self.threshold:g} out of range (allowed: 0 <= "
                             "threshold < 1)")
        if not 1 <= self.min_syns <= MAX_EJECTION_SYNS:
            raise ValueError(f"ejection min_syns {self.min_syns} out of range (allowed: "
                             f"1..{MAX_EJECTION_SYNS})")
        if not 0.0 < self.backoff <= MAX_EJECTION_BACKOFF:
            raise ValueError(f"ejection backoff {self.backoff:g} out of range (allowed: "
                             f"0 < backoff <= {MAX_EJECTION_BACKOFF:g})")
        if not self.backoff <= self.backoff_max <= MAX_EJECTION_BACKOFF:
            raise ValueError(f"ejection backoff_max {self.backoff_max:g} out of range (allowed: "
                             f"backoff ({self.backoff:g})..{MAX_EJECTION_BACKOFF:g})")
        if not 0.0 <= self.max_fraction <= 1.0:
            raise ValueError(f"ejection max_fraction {self.max_fraction:g} out of range (allowed: 0..1)")


@dataclass(frozen=True, slots=True)
class VirtualService:
    """A service with its dests and its health policy (keepalived ``virtual_server``)."""

    config: ServiceConfig
    dests: tuple[RealServer, ...] = ()
    name: str | None = None
    delay_loop: float = 60.0                # keepalived default: seconds between checks
    sorry_server: Endpoint | None = None    # serves while no dest is up
    sorry_server_inhibit: bool = False
    quorum: int = 1                         # minimum total weight of live dests
    hysteresis: int = 0
    quorum_up: Argv | None = None
    quorum_down: Argv | None = None
    alpha: bool = False                     # dests start down until their first good check
    omega: bool = False                     # run notify_down/quorum_down on removal too
    inhibit_on_failure: bool = False        # weight 0 instead of removal when a check fails
    virtualhost: str | None = None          # default HTTP Host for HTTP_GET checks
    slow_start: float = 0.0                 # ulvs: s to ramp a returning dest's weight (0 = off)
    failed_conns: str = "keep"              # ulvs: a failed dest's TCP conns (FAILED_CONNS)
    ejection: EjectionSettings | None = None  # ulvs: passive ejection (off unless set)
    where: Where | None = field(default=None, compare=False)


# What happens to a failed dest's TCP connections (``VirtualService.failed_conns``; the health
# policy's ``ConnPolicy`` by value): "keep" them until they time out (they resume if the dest
# returns first), or "expire" them at once.  ``ConnPolicy.RESET`` (a RST to both ends) is not
# offered: the dataplane keeps no TCP sequence numbers, so it cannot make a RST either end would
# accept (``FAILED_CONNS_REFUSED`` says why, for the parsers' errors).
FAILED_CONNS = ("keep", "expire")
FAILED_CONNS_REFUSED = {
    "reset": "'reset' is not available: the dataplane keeps no TCP sequence numbers, so it cannot "
             "send a RST either end would accept",
}
MAX_SLOW_START = 86400.0                    # s


# -- VRRP (run by the director-pair speaker; parsed and validated here) ----------------------


@dataclass(frozen=True, slots=True)
class VirtualAddress:
    address: ipaddress.IPv4Interface
    dev: str | None = None


@dataclass(frozen=True, slots=True)
class VrrpInstance:
    name: str
    interface: str
    vrid: int
    priority: int = 100
    advert_int: float = 1.0                 # seconds (v3 carries centiseconds)
    state: str = "BACKUP"                   # initial state: MASTER or BACKUP
    version: int = 3
    preempt: bool = True
    preempt_delay: float = 0.0
    virtual_addresses: tuple[VirtualAddress, ...] = ()
    unicast_src_ip: ipaddress.IPv4Address | None = None
    unicast_peers: tuple[ipaddress.IPv4Address, ...] = ()
    track_interfaces: tuple[str, ...] = ()
    notify_master: Argv | None = None
    notify_backup: Argv | None = None
    notify_fault: Argv | None = None
    garp_master_delay: float = 5.0
    garp_master_repeat: int = 5             # gratuitous ARPs per burst on becoming master
    min_garp: bool = False                  # keepalived vrrp_min_garp: one GARP, no second burst
    lower_prio_no_advert: bool = False      # RFC 5798: ignore lower-priority adverts (no re-assertion)
    higher_prio_send_advert: bool = True    # advert once before yielding, so the winner re-GARPs
    checksum_as_v2: bool = False            # v3 checksum without the pseudo-header (RFC 9568 style)
    auth_key: str | None = field(default=None, repr=False)  # ulvs pairs only: HMAC trailer on adverts
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class VrrpSyncGroup:
    name: str
    members: tuple[str, ...]
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class SyncSettings:
    """Connection sync (IPVS sync protocol v1) between the directors of a pair."""

    interface: str
    instance: str | None = None             # VRRP instance whose state drives master/backup
    syncid: int = 0
    port: int = 8848
    group: ipaddress.IPv4Address = ipaddress.IPv4Address("224.0.0.81")
    peers: tuple[ipaddress.IPv4Address, ...] = ()   # unicast instead of the multicast group
    key: str | None = field(default=None, repr=False)  # HMAC-SHA256 key; None: unauthenticated
    key_file: str | None = None             # or the key's file (first line), relative to the config


# -- daemon -----------------------------------------------------------------------------------

BACKENDS = ("afpacket", "tap")


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    interfaces: tuple[str, ...] = ()        # empty: every UP non-loopback interface
    backend: str = "afpacket"
    workers: int = 1
    conn_limit: int = 1_000_000
    gro: bool = True
    control_socket: str = "/run/ulvs/ulvs.sock"
    control_group: str | None = None        # a group whose members may use the control socket
    flow_log: str | None = None             # flow log: a file (absolute path) or "-" (stdout); None: off
    flow_log_rate: int = 1000               # flow log lines per second at most


@dataclass(frozen=True, slots=True)
class Timeouts:
    """``ipvsadm --set tcp tcpfin udp`` (seconds)."""

    tcp: int = 900
    tcpfin: int = 120
    udp: int = 300


# The Prometheus exporter's address when neither [metrics] listen nor ulvs run --metrics-listen says.
METRICS_LISTEN = "127.0.0.1:9595"


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    listen: str | None = None               # HOST:PORT, or "off" (no exporter); None = METRICS_LISTEN


def parse_listen(text: str) -> tuple[str, int] | None:
    """A metrics listen address, ``HOST:PORT`` with an IPv4 address or a bracketed IPv6 one
    (``[::1]:9595``), as (host, port); None for ``off``.  Raises ValueError naming the problem."""
    if text == "off":
        return None
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        family: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address] = ipaddress.IPv6Address
    else:
        family = ipaddress.IPv4Address
    try:
        family(host)
    except ValueError:
        sep = ""
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9595 or [::1]:9595, port 1..65535) "
                         "or off")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class Config:
    daemon: DaemonSettings = DaemonSettings()
    timeouts: Timeouts = Timeouts()
    services: tuple[VirtualService, ...] = ()
    vrrp: tuple[VrrpInstance, ...] = ()
    vrrp_sync_groups: tuple[VrrpSyncGroup, ...] = ()
    sync: SyncSettings | None = None
    metrics: MetricsSettings = MetricsSettings()
    router_id: str | None = None
    source: str = "<config>"


@dataclass(frozen=True, slots=True)
class LoadResult:
    config: Config
    warnings: tuple[ConfigWarning, ...] = ()


# Resolves an ``include`` pattern (glob, relative to the including file) to (name, text) pairs.
Includer = Callable[[str, str], list[tuple[str, str]]]
# A format's parser: (text, source name, includer) -> LoadResult.
Parser = Callable[[str, str, "Includer | None"], LoadResult]


def check_tables(options: Mapping[str, Any], kind: str, where: Where | None) -> None:
    """Reject a checker kind or option ulvs does not know, naming the allowed ones."""
    allowed = CHECK_KEYS.get(kind)
    if allowed is None:
        raise ConfigError(f"unknown checker {kind!r} (allowed: {', '.join(sorted(CHECK_KEYS))})", where)
    for k in options:
        if k not in allowed:
            raise ConfigError(f"{kind}: unknown key {k!r} (allowed: {', '.join(sorted(allowed))})", where)
