"""``ulvs status``, ``ulvs explain`` and ``ulvs reload``: asking a running daemon over its socket.

* ``status [--json]``: the whole runtime state -- the daemon (pid, version, uptime, backend,
  workers, interfaces, control socket, config file and its last reload), every service with its
  dests (configuration, weights, connections, counters, rates), the connection table, the
  timeouts and the drop counters by reason.  ``--json`` prints the daemon's reply as it is.
* ``explain tcp|udp CADDR:CPORT VADDR:VPORT``: which dest that flow's next packet would get and
  why (an existing connection, a persistence template, or the scheduler's pick), changing
  nothing in the daemon.
* ``reload``: re-read the configuration file and apply the differences, as SIGHUP does; prints
  the number of changes, or the error (the running configuration stays).

Exit status: 0; 1 when the daemon cannot be reached or refuses; 2 for usage errors.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import json
import os
import sys
from typing import IO, Any

from ulvs.cli.ulvsadm import DEFAULT_SOCKET, SOCKET_ENV, ControlClient, ControlError

JsonObj = dict[str, Any]


def add_parsers(sub: Any) -> None:
    help_socket = f"the daemon's control socket (default ${SOCKET_ENV}, else {DEFAULT_SOCKET})"
    p = sub.add_parser("status", help="show the running daemon's whole state")
    p.add_argument("--json", action="store_true", help="print the state as JSON")
    p.add_argument("--socket", metavar="PATH", help=help_socket)
    p = sub.add_parser("explain", help="which dest a flow would get, and why (changes nothing)")
    p.add_argument("proto", choices=("tcp", "udp"))
    p.add_argument("client", metavar="CADDR:CPORT")
    p.add_argument("service", metavar="VADDR:VPORT")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.add_argument("--socket", metavar="PATH", help=help_socket)
    p = sub.add_parser("reload", help="make the running daemon re-read its configuration file")
    p.add_argument("--socket", metavar="PATH", help=help_socket)


def _endpoint(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    try:
        addr = ipaddress.IPv4Address(host)
        number = int(port)
    except ValueError:
        raise ValueError(f"{what} must be IPV4ADDR:PORT, not {text!r}") from None
    if not sep or not 0 <= number <= 65535:
        raise ValueError(f"{what} must be IPV4ADDR:PORT with a port in 0..65535, not {text!r}")
    return str(addr), number


def run(args: argparse.Namespace, *, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    prog = f"ulvs {args.command}"
    client = ControlClient(args.socket or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET)
    try:
        if args.command == "explain":
            caddr, cport = _endpoint(args.client, "the client")
            vaddr, vport = _endpoint(args.service, "the service")
            req: JsonObj = {"cmd": "explain", "proto": args.proto, "caddr": caddr, "cport": cport,
                            "vaddr": vaddr, "vport": vport}
        else:
            req = {"cmd": args.command}
    except ValueError as e:
        err.write(f"{prog}: {e}\n")
        return 2
    try:
        reply = client.request(req)
    except ControlError as e:
        err.write(f"{prog}: {e}\n")
        return 1
    if not reply["ok"]:
        err.write(f"{prog}: {reply.get('error', 'refused')}\n")
        return 1
    try:
        if args.command == "reload":
            out.write(f"reloaded {reply['config']}: {reply['changes']} change(s)\n")
        elif args.command == "explain":
            expl = reply["explanation"]
            out.write(json.dumps(expl, indent=2) + "\n" if args.json else render_explanation(expl))
        elif args.json:
            out.write(json.dumps(reply["status"], indent=2) + "\n")
        else:
            out.write(render_status(reply["status"], color=out.isatty()))
    except (KeyError, TypeError, ValueError) as e:
        err.write(f"{prog}: the daemon sent a malformed reply ({e!r})\n")
        return 1
    return 0


# ==========================================================================================
# Rendering
# ==========================================================================================
def _svc_name(svc: JsonObj) -> str:
    if svc["proto"] == "fwm":
        return f"FWM {svc['fwmark']}"
    return f"{svc['proto'].upper()} {svc['vaddr']}:{svc['vport']}"


_METHOD_LABEL = {"masq": "Masq", "droute": "Route", "tunnel": "Tunnel"}


def render_explanation(e: JsonObj) -> str:
    lines = [e["reason"]]
    if e["kind"] in ("connection", "template", "scheduled"):
        dest = f"{e['daddr']}:{e['dport']} ({_METHOD_LABEL.get(e['method'], e['method'])})"
        lines.append(f"  dest       {dest}")
    if e.get("service") is not None:
        lines.append(f"  service    {_svc_name(e['service'])}, scheduler {e['sched']}")
    if e["kind"] == "connection":
        lines.append(f"  conn       {e['state']}, expires in {e['expires']} s")
    elif e["kind"] == "template":
        lines.append(f"  template   client network {e['client']}/{e['netmask']}, expires in {e['expires']} s")
    if "worker" in e:
        lines.append(f"  worker     {e['worker']} holds it")
    workers = e.get("workers")
    if workers:
        lines.append("  workers    the worker the kernel hands the flow to decides:")
        for i, w in enumerate(workers):
            pick = f"{w['daddr']}:{w['dport']}" if w.get("daddr") else "no destination available"
            lines.append(f"    worker {i}: {pick}")
    lines.append("  (nothing was changed: no connection made, no scheduler state moved)")
    return "\n".join(lines) + "\n"


def duration(seconds: float) -> str:
    """Uptime as ``ulvs status`` and ``ulvs top`` show it: 1d2h3m4s."""
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d" if d else "") + (f"{h}h" if d or h else "") + (f"{m}m" if d or h or m else "") + f"{s}s"


def render_status(st: JsonObj, *, color: bool = False, width: int = 160) -> str:
    """``ulvs status`` for people: a header of facts, one table of services and dests, drops."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system="auto" if color else None,
                      force_terminal=color, highlight=False)
    d = st.get("daemon") or {}
    snap = st["snapshot"]
    table = st["conn_table"]
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    if d:
        workers = d["workers"]
        facts.add_row("daemon", f"ulvs {d['version']}, pid {d['pid']}, up {duration(d['uptime'])}, "
                                f"{d['backend']} backend, {workers} worker{'s' if workers != 1 else ''}"
                      + (f" (pids {', '.join(map(str, d['worker_pids']))})" if d.get("worker_pids") else ""))
        facts.add_row("interfaces", ", ".join(d["interfaces"]) or "-")
        group = f", group {d['control_group']}" if d.get("control_group") else ""
        mode = d.get("control_socket_mode") or "?"
        facts.add_row("control", f"{d['control_socket']} (mode {mode}{group}), protocol v{d['protocol']}")
        config = d.get("config") or "none (started without --config)"
        last = d.get("last_reload")
        if last:
            config += ("; last reload: " + (f"{last['changes']} change(s)" if last["ok"]
                                            else f"FAILED: {last['error']}") + f" (by {last['by']})")
        facts.add_row("config", config)
        if "metrics" in d:
            m = d["metrics"]
            facts.add_row("metrics", "off" if m is None else
                          f"http://{m['listen']}/metrics (exporter pid {m['pid'] or 'restarting'})")
        fl = d.get("flow_log")
        if fl:
            facts.add_row("flow log", f"{'stdout' if fl['path'] == '-' else fl['path']}: {fl['written']:,} "
                                      f"line(s), {fl['suppressed']:,} suppressed (at most {fl['rate']:,}/s)")
    states = ", ".join(f"{k} {v}" for k, v in sorted(table.get("states", {}).items()))
    facts.add_row("connections",
                  f"{table['count']:,} of {table['limit']:,}" + (f" ({states})" if states else ""))
    t = snap["timeouts"]
    facts.add_row("timeouts", f"tcp {t['tcp']} s, tcpfin {t['tcpfin']} s, udp {t['udp']} s")
    drops = {k: v for k, v in st.get("drops", {}).items() if v}
    facts.add_row("drops", ", ".join(f"{k} {v:,}" for k, v in sorted(drops.items())) or "none")
    health = st.get("health") or {}
    monitor = health.get("monitor")
    if monitor is not None or health.get("dests"):
        down = [x for x in health.get("dests", []) if not x["up"]]
        running = (f"monitor pid {monitor['pid']}" if monitor and monitor.get("running")
                   else "monitor not running")
        restarts = f" ({monitor['restarts']} restart(s))" if monitor and monitor.get("restarts") else ""
        facts.add_row("health", f"{running}{restarts}, {len(down)} dest(s) down")
        for x in down:
            facts.add_row("", f"{_svc_name(x['service'])} -> {x['daddr']}:{x['dport']} down: "
                              f"{x['detail'] or '-'}")
        for svc in health.get("sorry", []):
            facts.add_row("", f"{_svc_name(svc)}: the sorry server serves")
    console.print(facts)

    rates = snap.get("rates_estimated", False)
    svc_table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name, justify in (("service / dest", "left"), ("sched / fwd", "left"), ("weight", "right"),
                          ("active", "right"), ("inact", "right"), ("persist", "right"),
                          ("conns", "right"), ("inpkts", "right"), ("outpkts", "right"),
                          ("inbytes", "right"), ("outbytes", "right"), ("cps", "right"),
                          ("in bps", "right"), ("out bps", "right")):
        svc_table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for sv in snap["services"]:
        cfg = sv["service"]
        opts = [cfg["sched"]]
        if cfg.get("persistent"):
            opts.append(f"persistent {cfg['persistent']}")
            if cfg.get("netmask") != "255.255.255.255":
                opts.append(f"mask {cfg['netmask']}")
        if cfg.get("flags"):
            opts.append(",".join(cfg["flags"]))
        if cfg.get("ops"):
            opts.append("ops")
        c, r = sv["counters"], sv.get("rates", {})
        svc_table.add_row(
            _svc_name(cfg), " ".join(opts), "", str(sum(x["activeconns"] for x in sv["dests"])),
            str(sum(x["inactconns"] for x in sv["dests"])), str(sum(x["persistconns"] for x in sv["dests"])),
            f"{c['conns']:,}", f"{c['inpkts']:,}", f"{c['outpkts']:,}", f"{c['inbytes']:,}",
            f"{c['outbytes']:,}", *(_rates(r) if rates else ("-", "-", "-")), style="bold")
        for dv in sv["dests"]:
            dc, c, r = dv["dest"], dv["counters"], dv.get("rates", {})
            fwd = _METHOD_LABEL.get(dc["method"], dc["method"])
            if dv.get("overloaded"):
                fwd += " overloaded"
            if dc.get("u_threshold") or dc.get("l_threshold"):
                fwd += f" [{dc['l_threshold']}..{dc['u_threshold']}]"
            svc_table.add_row(
                f"  -> {dc['daddr']}:{dc['dport']}", fwd, str(dv["weight"]), str(dv["activeconns"]),
                str(dv["inactconns"]), str(dv["persistconns"]), f"{c['conns']:,}", f"{c['inpkts']:,}",
                f"{c['outpkts']:,}", f"{c['inbytes']:,}", f"{c['outbytes']:,}",
                *(_rates(r) if rates else ("-", "-", "-")))
    console.print()
    if snap["services"]:
        console.print(svc_table)
    else:
        console.print("no services")
    return "".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines())


def _rates(r: JsonObj) -> tuple[str, str, str]:
    return f"{r.get('cps', 0):,}", f"{r.get('inbps', 0):,}", f"{r.get('outbps', 0):,}"
