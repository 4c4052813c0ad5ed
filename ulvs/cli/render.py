"""ipvsadm's listing layouts, byte for byte (ipvsadm.c print formats; see REFERENCE (f)).

Pure functions from a ``Snapshot`` (``ulvs.runtime.control``) to text: ``table`` (``-L``, with
``--stats``, ``--rate``, ``--thresholds``, ``--persistent-conn``, ``--exact``, ``--nosort``),
``connections`` (``-L -c``), ``save`` (``-S``) and ``timeouts`` (``-L --timeout``).  Addresses
are always numeric.  Two ulvs extensions keep ``-S`` output restorable without loss: ``-x``/``-y``
on dests with thresholds and ``--group-member`` on service groups.
"""

from __future__ import annotations

import ipaddress

from ulvs.config.ipvsadm import ListFormat as ListFormat  # the -L options, parsed there
from ulvs.core.engine import Core
from ulvs.core.model import FwdMethod, Proto, ServiceConfig
from ulvs.runtime.control import ConnView, DestView, ServiceView, Snapshot, Timeouts, build_snapshot

BANNER = "IP Virtual Server version {version} (size={size})"

# print_title(): the first matching format wins (stats, rate, thresholds, persistent-conn).
TITLE = ("Prot LocalAddress:Port Scheduler Flags\n"
         "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n")
TITLE_STATS = "%-33s %8s %8s %8s %8s %8s\n  -> RemoteAddress:Port\n" % (
    "Prot LocalAddress:Port", "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes")
TITLE_RATE = "%-33s %8s %8s %8s %8s %8s\n  -> RemoteAddress:Port\n" % (
    "Prot LocalAddress:Port", "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS")
TITLE_THRESHOLDS = "%-33s %-10s %-10s %-10s %-10s\n  -> RemoteAddress:Port\n" % (
    "Prot LocalAddress:Port", "Uthreshold", "Lthreshold", "ActiveConn", "InActConn")
TITLE_PERSISTENT = "%-33s %-9s %-11s %-10s %-10s\n  -> RemoteAddress:Port\n" % (
    "Prot LocalAddress:Port", "Weight", "PersistConn", "ActiveConn", "InActConn")
CONN_TITLE = "IPVS connection entries\n"
CONN_HEADER = "pro expire %-11s %-18s %-18s %s\n" % ("state", "source", "virtual", "destination")
CONN_HEADER_PE = "pro expire %-11s %-18s %-18s %-18s %-16s %s\n" % (
    "state", "source", "virtual", "destination", "pe name", "pe_data")

_HOST_MASK = ipaddress.IPv4Address("255.255.255.255")
_FWD_SWITCH = {FwdMethod.MASQ: "-m", FwdMethod.DROUTE: "-g", FwdMethod.TUNNEL: "-i"}
_RULE_PROTO = {Proto.TCP: "-t", Proto.UDP: "-u"}

# Scheduler flags are three bits (IP_VS_SVC_F_SCHED1..3); ipvsadm names them after the scheduler
# (print_sched_flags), so "sh -b flag-1" lists as sh-fallback.
_FLAG_BIT = {"flag-1": 1, "sh-fallback": 1, "mh-fallback": 1,
             "flag-2": 2, "sh-port": 2, "mh-port": 2,
             "flag-3": 3}
_FLAG_NAMES = {"sh": ("sh-fallback", "sh-port", "flag-3"),
               "mh": ("mh-fallback", "mh-port", "flag-3")}
_GENERIC_FLAG_NAMES = ("flag-1", "flag-2", "flag-3")
_PLAIN = ListFormat()


# -- pieces -------------------------------------------------------------------------------------
def largenum(n: int, exact: bool = False) -> str:
    """print_largenum: 9 columns, scaled to K/M/G/T (decimal) unless ``exact``."""
    if exact:
        text = str(n)
        return text.rjust(9 if len(text) <= 8 else len(text) + 1)
    if n < 10**8:
        return "%9d" % n
    if n < 10**9:
        return "%8dK" % (n // 10**3)
    if n < 10**11:
        return "%8dM" % (n // 10**6)
    if n < 10**14:
        return "%8dG" % (n // 10**9)
    return "%8dT" % (n // 10**12)


def sched_flags(cfg: ServiceConfig) -> str:
    """The service's scheduler flags, comma-separated, as ipvsadm prints them ('' if none)."""
    bits = {_FLAG_BIT[f] for f in cfg.flags if f in _FLAG_BIT}
    names = _FLAG_NAMES.get(cfg.sched, _GENERIC_FLAG_NAMES)
    return ",".join(names[b - 1] for b in sorted(bits))


def service_name(cfg: ServiceConfig) -> str:
    """``TCP  10.0.0.1:80`` (IPv4 names are cut at 33 characters) or ``FWM  1``."""
    if cfg.proto == Proto.FWM:
        return "FWM  %d" % cfg.fwmark
    return ("%-4s %s" % (cfg.proto.label, f"{cfg.vaddr}:{cfg.vport}"))[:33]


def rule_service(cfg: ServiceConfig) -> str:
    """The virtual-service option of ``-S``: ``-t 10.0.0.1:80``, ``-u ...`` or ``-f 1``."""
    if cfg.proto == Proto.FWM:
        return "-f %d" % cfg.fwmark
    return f"{_RULE_PROTO[cfg.proto]} {cfg.vaddr}:{cfg.vport}"


def dest_name(d: DestView) -> str:
    return f"{d.config.daddr}:{d.config.dport}"


def service_row(cfg: ServiceConfig) -> str:
    row = f"{service_name(cfg)} {cfg.sched}"
    flags = sched_flags(cfg)
    if flags:
        row += f" ({flags})"
    if cfg.persistent is not None:
        row += " persistent %d" % cfg.persistent
        if cfg.netmask != _HOST_MASK:
            row += f" mask {cfg.netmask}"
    if cfg.ops:
        row += " ops"
    return row


def sorted_services(snap: Snapshot, nosort: bool = False) -> list[ServiceView]:
    """ipvs_cmp_services: plain services first by <protocol, address, port>, then service groups
    by mark."""
    if nosort:
        return list(snap.services)
    return sorted(snap.services,
                  key=lambda s: (s.config.fwmark, s.config.proto, s.config.vaddr, s.config.vport))


def sorted_dests(svc: ServiceView, nosort: bool = False) -> list[DestView]:
    """ipvs_cmp_dests: by <address, port>."""
    if nosort:
        return list(svc.dests)
    return sorted(svc.dests, key=lambda d: (d.config.daddr, d.config.dport))


# -- layouts ------------------------------------------------------------------------------------
def table(snap: Snapshot, fmt: ListFormat = _PLAIN, service: ServiceView | None = None) -> str:
    """``-L``: the banner (not for a single service), the title, then services and their dests."""
    out = []
    if service is None:
        out.append(BANNER.format(version=snap.version, size=snap.size) + "\n")
        services = sorted_services(snap, fmt.nosort)
    else:
        services = [service]
    if fmt.stats:
        out.append(TITLE_STATS)
    elif fmt.rate:
        out.append(TITLE_RATE)
    elif fmt.thresholds:
        out.append(TITLE_THRESHOLDS)
    elif fmt.persistent_conn:
        out.append(TITLE_PERSISTENT)
    else:
        out.append(TITLE)
    for svc in services:
        out.append(_service_entry(svc, fmt))
    return "".join(out)


def _service_entry(svc: ServiceView, fmt: ListFormat) -> str:
    ex = fmt.exact
    name = service_name(svc.config)
    if fmt.stats:
        c = svc.counters
        lines = ["%-33s" % name + "".join(largenum(v, ex) for v in (c.conns, c.inpkts, c.outpkts,
                                                                     c.inbytes, c.outbytes))]
    elif fmt.rate:
        r = svc.rates
        lines = ["%-33s" % name + "".join(largenum(v, ex) for v in (r.cps, r.inpps, r.outpps,
                                                                     r.inbps, r.outbps))]
    else:
        lines = [service_row(svc.config)]
    for d in sorted_dests(svc, fmt.nosort):
        dname = dest_name(d)[:28]
        if fmt.stats:
            c = d.counters
            lines.append("  -> %-28s" % dname + "".join(
                largenum(v, ex) for v in (c.conns, c.inpkts, c.outpkts, c.inbytes, c.outbytes)))
        elif fmt.rate:
            r = d.rates
            lines.append("  -> %-28s %8d %8d %8d" % (dname, r.cps, r.inpps, r.outpps)
                         + largenum(r.inbps, ex) + largenum(r.outbps, ex))
        elif fmt.thresholds:
            lines.append("  -> %-28s %-10d %-10d %-10d %-10d" % (
                dname, d.config.u_threshold, d.config.l_threshold, d.activeconns, d.inactconns))
        elif fmt.persistent_conn:
            lines.append("  -> %-28s %-9d %-11d %-10d %-10d" % (
                dname, d.weight, d.persistconns, d.activeconns, d.inactconns))
        else:
            lines.append("  -> %-28s %-7s %-6d %-10d %-10d" % (
                dname, d.config.method.label, d.weight, d.activeconns, d.inactconns))
    return "\n".join(lines) + "\n"


def conn_row(c: ConnView) -> str:
    proto = "IP" if c.proto == Proto.FWM else c.proto.label   # a group's template: IPPROTO_IP
    minutes, seconds = divmod(max(0, c.expires), 60)
    return "%-3s %-6s %-11s %-18s %-18s %s" % (
        proto, "%02d:%02d" % (minutes, seconds), c.state, f"{c.caddr}:{c.cport}",
        f"{c.vaddr}:{c.vport}", f"{c.daddr}:{c.dport}")


def connections(snap: Snapshot, persistent_conn: bool = False) -> str:
    """``-L -c``: entries in the snapshot's order (ipvsadm prints /proc/net/ip_vs_conn unsorted).
    With ``--persistent-conn`` the header grows pe columns; entries without pe data (all of
    ours: ulvs has no persistence engines) keep the plain layout, as in ipvsadm."""
    out = [CONN_TITLE, CONN_HEADER_PE if persistent_conn else CONN_HEADER]
    out.extend(conn_row(c) + "\n" for c in snap.conns or ())
    return "".join(out)


def save(snap: Snapshot) -> str:
    """``-S``: one ``-A`` line per service followed by its ``-a`` lines, sorted as ``-L``."""
    out = []
    for svc in sorted_services(snap):
        cfg = svc.config
        name = rule_service(cfg)
        line = f"-A {name} -s {cfg.sched}"
        if cfg.persistent is not None:
            line += " -p %d" % cfg.persistent
            if cfg.netmask != _HOST_MASK:
                line += f" -M {cfg.netmask}"
        if cfg.ops:
            line += " -o"
        flags = sched_flags(cfg)
        if flags:
            line += f" -b {flags}"
        for proto, vaddr, vport in cfg.members:                    # ulvs extension
            line += f" --group-member {proto.name.lower()}:{vaddr}:{vport}"
        out.append(line + "\n")
        for d in sorted_dests(svc):
            line = "-a %s -r %s %s -w %d" % (name, dest_name(d), _FWD_SWITCH[d.config.method], d.weight)
            if d.config.u_threshold:                                  # ulvs extension
                line += " -x %d" % d.config.u_threshold
            if d.config.l_threshold:
                line += " -y %d" % d.config.l_threshold
            out.append(line + "\n")
    return "".join(out)


def timeouts(t: Timeouts) -> str:
    """``-L --timeout``."""
    return "Timeout (tcp tcpfin udp): %d %d %d\n" % (t.tcp, t.tcpfin, t.udp)


# -- straight from a Core (the in-process demo) ---------------------------------------------------
def list_services(core: Core) -> str:
    """``ipvsadm -L -n`` of an in-process core."""
    return table(build_snapshot(core, 0.0, conns=False))


def list_conns(core: Core, now: float) -> str:
    """``ipvsadm -L -n -c`` of an in-process core."""
    return connections(build_snapshot(core, now))
