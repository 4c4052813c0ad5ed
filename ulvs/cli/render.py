"""ipvsadm's listing layouts, byte for byte (ipvsadm.c print formats; see REFERENCE (f)).

Pure functions from the core's views to text.
"""

from __future__ import annotations

from ulvs.core.engine import Core, iter_services
from ulvs.core.model import Service

BANNER = "IP Virtual Server version 1.2.1 (size={size})"


def service_name(svc: Service) -> str:
    c = svc.config
    return "%-4s %s" % (c.proto.label, f"{c.vaddr}:{c.vport}")


def service_row(svc: Service) -> str:
    c = svc.config
    row = f"{service_name(svc)} {c.sched}"
    if c.flags:
        row += " (" + ",".join(sorted(c.flags)) + ")"
    if c.persistent is not None:
        row += f" persistent {c.persistent}"
        if str(c.netmask) != "255.255.255.255":
            row += f" mask {c.netmask}"
    if c.ops:
        row += " ops"
    return row


def list_services(core: Core) -> str:
    """``ipvsadm -L -n``."""
    lines = [
        BANNER.format(size=core.table.limit),
        "Prot LocalAddress:Port Scheduler Flags",
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
    ]
    for svc in iter_services(core):
        lines.append(service_row(svc))
        for d in sorted(svc.dests, key=lambda d: (d.config.daddr, d.config.dport)):
            lines.append("  -> %-28s %-7s %-6d %-10u %-10u" % (
                f"{d.config.daddr}:{d.config.dport}", d.config.method.label, d.weight,
                d.activeconns, d.inactconns))
    return "\n".join(lines) + "\n"


def list_conns(core: Core, now: float) -> str:
    """``ipvsadm -L -n -c``."""
    lines = ["IPVS connection entries",
             "pro expire %-11s %-18s %-18s %s" % ("state", "source", "virtual", "destination")]
    for c in sorted(core.conns(now), key=lambda c: (c.proto, c.caddr, c.cport)):
        secs = int(c.expires)
        lines.append("%-3s %-6s %-11s %-18s %-18s %s" % (
            c.proto.label, "%02d:%02d" % (secs // 60, secs % 60), c.state,
            f"{c.caddr}:{c.cport}", f"{c.vaddr}:{c.vport}", f"{c.daddr}:{c.dport}"))
    return "\n".join(lines) + "\n"
