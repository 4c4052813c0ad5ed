"""Kernel state ulvs adds, kept in one place so that all of it is removed again.

AF_PACKET only *taps* frames: the kernel still receives everything ulvs forwards. An nftables
table of family ``netdev``, with one ingress chain per attached interface, drops the frames that
ulvs owns before the host stack sees them (taps run before the netdev ingress hook:
REFERENCE (e)). That way the kernel neither forwards them a second time nor answers for a served
VIP:port (no RST, no ICMP port unreachable). It drops:

* packets to a served VIP:port (by protocol), or to any port of a port-0 service's VIP;
* NAT replies, i.e. packets from a masq dest's address:port, except those addressed to the
  director itself (its own health checks and management traffic);
* ICMP errors to a VIP, and ICMP errors from masq dest addresses not addressed to the director;
  ulvs relays these itself.

The table is named after the daemon's PID, so two daemons never share it. It is replaced as a
whole (``nft -f`` is atomic) when services change, and deleted on shutdown.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

from ulvs.core.model import FwdMethod, Service


class KernelError(RuntimeError):
    """An nft command failed; the message carries nft's own words."""


@dataclass(frozen=True, slots=True)
class Interception:
    """What the ingress chains must hide from the host stack."""

    services: frozenset[tuple[str, str, int]] = frozenset()     # (vaddr, "tcp"/"udp", vport)
    wild_vips: frozenset[tuple[str, str]] = frozenset()         # (vaddr, proto) of port-0 services
    masq: frozenset[tuple[str, str, int]] = frozenset()         # (daddr, proto, dport)
    masq_any: frozenset[tuple[str, str]] = frozenset()          # (daddr, proto), dport 0
    local: frozenset[str] = frozenset()                         # the director's own addresses

    @property
    def vips(self) -> frozenset[str]:
        return frozenset({s[0] for s in self.services} | {w[0] for w in self.wild_vips})

    @property
    def masq_addrs(self) -> frozenset[str]:
        return frozenset({m[0] for m in self.masq} | {m[0] for m in self.masq_any})


def interception_for(services: Iterable[Service], local: Iterable[str]) -> Interception:
    svcs: set[tuple[str, str, int]] = set()
    wild: set[tuple[str, str]] = set()
    masq: set[tuple[str, str, int]] = set()
    masq_any: set[tuple[str, str]] = set()
    for svc in services:
        entries = svc.config.entries()
        for proto, vaddr, vport in entries:
            p = proto.name.lower()
            if vport:
                svcs.add((str(vaddr), p, vport))
            else:
                wild.add((str(vaddr), p))
        for d in svc.dests:
            if d.config.method != FwdMethod.MASQ:
                continue
            for proto, _vaddr, vport in entries:
                p = proto.name.lower()
                port = d.config.dport or vport
                if port:
                    masq.add((str(d.config.daddr), p, port))
                else:
                    masq_any.add((str(d.config.daddr), p))
    return Interception(frozenset(svcs), frozenset(wild), frozenset(masq), frozenset(masq_any),
                        frozenset(local))


def _set(name: str, typ: str, items: Iterable[tuple[object, ...]] | Iterable[str]) -> str:
    elems = sorted(items, key=str)
    body = f"\t\ttype {typ}\n"
    if elems:
        text = ", ".join(" . ".join(str(x) for x in e) if isinstance(e, tuple) else str(e) for e in elems)
        body += f"\t\telements = {{ {text} }}\n"
    return f"\tset {name} {{\n{body}\t}}\n"


ICMP_ERRORS = "destination-unreachable, source-quench, time-exceeded"


def ruleset(table: str, interfaces: Iterable[str], ic: Interception) -> str:
    """The complete nft script that (re)creates ulvs's table."""
    out = [f"table netdev {table} {{\n"]
    out.append(_set("svc", "ipv4_addr . inet_proto . inet_service", ic.services))
    out.append(_set("svc_any", "ipv4_addr . inet_proto", ic.wild_vips))
    out.append(_set("masq", "ipv4_addr . inet_proto . inet_service", ic.masq))
    out.append(_set("masq_any", "ipv4_addr . inet_proto", ic.masq_any))
    out.append(_set("vips", "ipv4_addr", ic.vips))
    out.append(_set("masq_addrs", "ipv4_addr", ic.masq_addrs))
    out.append(_set("local", "ipv4_addr", ic.local))
    for i, ifname in enumerate(sorted(interfaces)):
        out.append(
            f"\tchain in{i} {{\n"
            f'\t\ttype filter hook ingress device "{ifname}" priority -500; policy accept;\n'
            "\t\tip daddr . meta l4proto . th dport @svc drop\n"
            "\t\tip daddr . meta l4proto @svc_any drop\n"
            "\t\tip daddr != @local ip saddr . meta l4proto . th sport @masq drop\n"
            "\t\tip daddr != @local ip saddr . meta l4proto @masq_any drop\n"
            f"\t\tip daddr @vips icmp type {{ {ICMP_ERRORS} }} drop\n"
            f"\t\tip daddr != @local ip saddr @masq_addrs icmp type {{ {ICMP_ERRORS} }} drop\n"
            "\t}\n")
    out.append("}\n")
    return "".join(out)


@dataclass
class KernelState:
    """Everything ulvs added to the kernel, and how to take it away."""

    interfaces: list[str]
    table: str = field(default_factory=lambda: f"ulvs_{os.getpid()}")
    installed: bool = False
    gro_switched: list[str] = field(default_factory=list)   # interfaces whose GRO we turned on

    def enable_gro(self) -> None:
        """GRO on every attached interface, so segments arriving one by one reach the rings
        as 64 KiB super-packets (restored by ``remove``)."""
        from ulvs.io import ethtool

        for ifname in self.interfaces:
            try:
                if not ethtool.get(ifname)["gro"]:
                    ethtool.set_feature(ifname, "gro", True)
                    self.gro_switched.append(ifname)
            except OSError:
                pass   # a device without GRO support (or gone): nothing to restore

    def restore_gro(self) -> None:
        from ulvs.io import ethtool

        for ifname in self.gro_switched:
            try:
                ethtool.set_feature(ifname, "gro", False)
            except OSError:
                pass   # the interface is gone
        self.gro_switched = []

    def apply(self, ic: Interception) -> None:
        """Create or atomically replace the table (nothing half-applied: nft -f is a transaction)."""
        script = ruleset(self.table, self.interfaces, ic)
        if self.installed:
            script = f"delete table netdev {self.table}\n" + script
        self._nft(script)
        self.installed = True

    def remove(self) -> None:
        self.restore_gro()
        if self.installed:
            self._nft(f"delete table netdev {self.table}\n")
            self.installed = False

    @staticmethod
    def _nft(script: str) -> None:
        nft = shutil.which("nft")
        if nft is None:
            raise KernelError("nft (the nftables package) is not installed")
        p = subprocess.run([nft, "-f", "-"], input=script, text=True, capture_output=True, check=False)
        if p.returncode:
            raise KernelError(f"nft failed: {p.stderr.strip()}")


def tables_present(prefix: str = "ulvs_") -> list[str]:
    """The netdev tables whose names start with ``prefix`` (for shutdown checks)."""
    nft = shutil.which("nft")
    if nft is None:
        return []
    p = subprocess.run([nft, "list", "tables", "netdev"], text=True, capture_output=True, check=False)
    return [line.split()[-1] for line in p.stdout.splitlines() if line.split()[-1:]
            and line.split()[-1].startswith(prefix)]


def local_addresses() -> list[str]:
    """IPv4 addresses configured in this network namespace."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2)]



@dataclass
class TapSteering:
    """Policy routing that sends ulvs's traffic into the TAP (``tap`` backend).

    A routing table (its number is derived from the PID) holds one route: everything via the
    TAP. Rules send packets into it:
    * packets *to* each VIP;
    * NAT replies *from* each masq dest's address, protocol and port
      (``ip rule ... ipproto P sport N``).

    The kernel's ``local`` rule comes first. A VIP that is a local address would therefore never
    reach the TAP, so the tap backend serves non-local VIPs. The kernel must forward
    (``net.ipv4.ip_forward=1``).

    Rules are installed with iproute2's ``ip rule``, because pyroute2 0.9 cannot encode a
    port range. Everything is removed on shutdown and re-synced when services change.
    """

    tap_ifindex: int
    tap_name: str
    table: int = field(default_factory=lambda: 20000 + os.getpid() % 30000)
    priority: int = 1000
    _rules: list[tuple[str, ...]] = field(default_factory=list)
    _route: bool = False

    def apply(self, ic: Interception) -> None:
        wanted: list[tuple[str, ...]] = [("to", f"{vip}/32") for vip in sorted(ic.vips)]
        for daddr, proto, port in sorted(ic.masq):
            wanted.append(("from", f"{daddr}/32", "ipproto", proto, "sport", str(port)))
        for daddr, proto in sorted(ic.masq_any):
            wanted.append(("from", f"{daddr}/32", "ipproto", proto))
        if not self._route:
            _ip("route", "replace", "default", "dev", self.tap_name, "table", str(self.table))
            self._route = True
        for spec in self._rules:
            if spec not in wanted:
                self._rule("del", spec, check=False)
        for spec in wanted:
            if spec not in self._rules:
                self._rule("add", spec, check=True)
        self._rules = wanted

    def _rule(self, op: str, spec: tuple[str, ...], check: bool) -> None:
        _ip("rule", op, *spec, "lookup", str(self.table), "pref", str(self.priority), check=check)

    def remove(self) -> None:
        for spec in self._rules:
            self._rule("del", spec, check=False)
        self._rules = []
        if self._route:
            _ip("route", "flush", "table", str(self.table), check=False)
            self._route = False

    def present(self) -> list[str]:
        """Rules and routes of this table still in the kernel (for shutdown checks)."""
        rules = subprocess.run(["ip", "rule"], text=True, capture_output=True, check=False).stdout
        routes = subprocess.run(["ip", "route", "show", "table", str(self.table)], text=True,
                                capture_output=True, check=False).stdout
        return [line for line in rules.splitlines() if f"lookup {self.table}" in line] + \
            [line for line in routes.splitlines() if line.strip()]


def _ip(*args: str, check: bool = True) -> None:
    p = subprocess.run(["ip", *args], text=True, capture_output=True, check=False)
    if p.returncode and check:
        raise KernelError(f"ip {' '.join(args)}: {p.stderr.strip()}")


def ip_forwarding() -> bool:
    try:
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            return f.read().strip() == "1"
    except OSError:
        return False
