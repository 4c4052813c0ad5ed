"""``ulvs top``: a live view of a running daemon, refreshed every second.

Services and their dests with their active and inactive connections, and conns/s, packets/s
and bytes/s each way; the connection table's fill; the VRRP state of each instance and the sync
role and lag when the daemon runs them.  The rates are the differences between two successive
``status`` replies of the control socket, ``--interval`` seconds apart (over the daemon's own
uptime clock), so the first frame comes after one interval.

The rendering is pure (``top_view``: two status dicts -> rows; ``render``: rows -> a rich
renderable; ``render_plain``: the same as plain text); ``run`` is the loop.  On a terminal the
frame is redrawn in place (rich ``Live``); otherwise (a pipe, a file) a plain text frame without
ANSI codes is printed every interval, and ``--once`` prints one frame and exits.

Exit status: 0; 1 when the daemon cannot be reached or refuses; 2 for usage errors.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from ulvs.cli.daemonctl import duration
from ulvs.cli.ulvsadm import DEFAULT_SOCKET, SOCKET_ENV, ControlClient, ControlError

JsonObj = dict[str, Any]
_RATE_OF = (("conns", "conns"), ("inpkts", "inpkts"), ("outpkts", "outpkts"), ("inbytes", "inbytes"),
            ("outbytes", "outbytes"))      # (rate, the counter it is the derivative of)
_METHOD = {"masq": "Masq", "droute": "Route", "tunnel": "Tunnel"}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("top", help="a live view of the running daemon: services, dests, rates, VRRP, sync")
    p.add_argument("--socket", metavar="PATH",
                   help=f"the daemon's control socket (default ${SOCKET_ENV}, else {DEFAULT_SOCKET})")
    p.add_argument("--interval", type=float, default=1.0, metavar="S",
                   help="seconds between two snapshots, and between frames (default 1)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")


# ==========================================================================================
# The view (pure)
# ==========================================================================================
@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: a service (``dest`` False) or one of its dests."""

    name: str
    detail: str                 # scheduler and flags, or the forwarding method
    weight: int | None
    active: int
    inactive: int
    rates: dict[str, float]     # per second: conns, inpkts, outpkts, inbytes, outbytes
    dest: bool = False


@dataclass(frozen=True, slots=True)
class TopView:
    header: tuple[str, ...]
    rows: tuple[Row, ...]
    interval: float


def _svc_name(svc: JsonObj) -> str:
    if svc["proto"] == "fwm":
        return f"FWM {svc['fwmark']}"
    return f"{svc['proto'].upper()} {svc['vaddr']}:{svc['vport']}"


def _rates(cur: JsonObj, prev: JsonObj | None, elapsed: float) -> dict[str, float]:
    """Per-second differences of two counter sets; a counter that went down (zeroed, or a dest
    re-added) and a missing previous set give 0."""
    out = {}
    for name, field in _RATE_OF:
        delta = 0 if prev is None else cur.get(field, 0) - prev.get(field, 0)
        out[name] = delta / elapsed if delta > 0 and elapsed > 0 else 0.0
    return out


def _elapsed(prev: JsonObj, cur: JsonObj, fallback: float) -> float:
    """Seconds between the two statuses, by the daemon's uptime when both carry it."""
    a, b = (prev.get("daemon") or {}).get("uptime"), (cur.get("daemon") or {}).get("uptime")
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > a:
        return float(b - a)
    return fallback


def si(value: float) -> str:
    """A rate the way top shows it: whole numbers up to 9,999, then k, M, G with 3 digits."""
    if value < 10_000:
        return f"{value:,.0f}"
    for unit, scale in (("k", 1e3), ("M", 1e6), ("G", 1e9)):
        if value < scale * 1000 or unit == "G":
            shown = value / scale
            return f"{shown:.0f}{unit}" if shown >= 100 else f"{shown:.1f}{unit}"
    raise AssertionError("unreachable")


def _header(cur: JsonObj, prev: JsonObj, elapsed: float) -> list[str]:
    lines = []
    d = cur.get("daemon") or {}
    if d:
        workers = d.get("workers", 1)
        lines.append(f"ulvs {d.get('version', '?')}, pid {d.get('pid', '?')}, "
                     f"up {duration(d.get('uptime', 0))}, {d.get('backend', '?')} backend, "
                     f"{workers} worker{'s' if workers != 1 else ''}")
    table = cur.get("conn_table") or {}
    count, limit = table.get("count", 0), table.get("limit", 0)
    fill = f"{100.0 * count / limit:.1f}%" if limit else "-"
    states = ", ".join(f"{k} {v:,}" for k, v in sorted((table.get("states") or {}).items()))
    lines.append(f"conn table {count:,} of {limit:,} ({fill})" + (f": {states}" if states else ""))
    drops, before = cur.get("drops") or {}, prev.get("drops") or {}
    rate = sum(max(0, v - before.get(k, 0)) for k, v in drops.items()) / elapsed if elapsed > 0 else 0.0
    lines.append(f"drops {sum(drops.values()):,} ({si(rate)}/s)")
    for v in cur.get("vrrp") or ():
        line = (f"VRRP {v.get('iname', '?')} on {v.get('intf', '?')} vrid {v.get('vrid', '?')}: "
                f"{v.get('state_name', v.get('state', '?'))}")
        if v.get("priority") is not None:
            line += f", priority {v['priority']}"
        lines.append(line)
    sync = cur.get("sync")
    if sync:
        lag = sync.get("lag_seconds")
        where = f" on {sync['interface']}" if sync.get("interface") else ""
        lines.append(f"sync {sync.get('role', '?')}{where}"
                     + (f", lag {lag:.3f} s" if isinstance(lag, (int, float)) else ", lag -")
                     + ("" if sync.get("ready", True) else " (waiting for the bulk resync)"))
    return lines


def top_view(prev: JsonObj, cur: JsonObj, elapsed: float) -> TopView:
    """What a frame shows, from two statuses (``status`` replies' ``"status"``) taken
    ``elapsed`` seconds apart (the daemon's uptimes decide when both have one)."""
    elapsed = _elapsed(prev, cur, elapsed)
    before = {_svc_name(s["service"]): s for s in prev["snapshot"]["services"]}
    rows: list[Row] = []
    for sv in cur["snapshot"]["services"]:
        cfg = sv["service"]
        old = before.get(_svc_name(cfg))
        old_dests = {(d["dest"]["daddr"], d["dest"]["dport"]): d for d in (old or {}).get("dests", [])}
        dests = sv["dests"]
        detail = cfg.get("sched", "")
        if cfg.get("persistent"):
            detail += f" persistent {cfg['persistent']}"
        if cfg.get("ops"):
            detail += " ops"
        rows.append(Row(_svc_name(cfg), detail, None, sum(d["activeconns"] for d in dests),
                        sum(d["inactconns"] for d in dests),
                        _rates(sv["counters"], old["counters"] if old else None, elapsed)))
        for dv in dests:
            dc = dv["dest"]
            od = old_dests.get((dc["daddr"], dc["dport"]))
            method = _METHOD.get(dc.get("method", ""), dc.get("method", ""))
            if dv.get("overloaded"):
                method += " overloaded"
            rates = _rates(dv["counters"], od["counters"] if od else None, elapsed)
            rows.append(Row(f"-> {dc['daddr']}:{dc['dport']}", method, dv["weight"], dv["activeconns"],
                            dv["inactconns"], rates, dest=True))
    return TopView(tuple(_header(cur, prev, elapsed)), tuple(rows), elapsed)


_COLUMNS = (("service / dest", "left"), ("sched / fwd", "left"), ("weight", "right"), ("active", "right"),
            ("inact", "right"), ("conn/s", "right"), ("pkt/s in", "right"), ("pkt/s out", "right"),
            ("B/s in", "right"), ("B/s out", "right"))


def render(view: TopView) -> Any:
    """The frame as a rich renderable."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for i, (name, justify) in enumerate(_COLUMNS):
        # the service / dest column is never cut short: "  -> 255.255.255.255:65535" fits
        table.add_column(name, justify=justify, no_wrap=True, min_width=26 if i == 0 else None)  # type: ignore[arg-type]
    for r in view.rows:
        rt = r.rates
        table.add_row(("  " if r.dest else "") + r.name, r.detail, "" if r.weight is None else str(r.weight),
                      f"{r.active:,}", f"{r.inactive:,}",
                      *(si(rt[k]) for k in ("conns", "inpkts", "outpkts", "inbytes", "outbytes")),
                      style=None if r.dest else "bold")
    parts: list[Any] = [Text(line) for line in view.header]
    parts.append(Text(f"rates over {view.interval:.1f} s"))
    parts.append(table if view.rows else Text("no services"))
    return Group(*parts)


def render_plain(view: TopView, width: int = 132) -> str:
    """The frame as plain text: no colour, no ANSI codes, lines stripped on the right."""
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False, highlight=False,
            emoji=False).print(render(view))
    return "".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines())


# ==========================================================================================
# The loop (the shell)
# ==========================================================================================
def _status(client: ControlClient) -> JsonObj:
    reply = client.request({"cmd": "status"})
    if not reply["ok"]:
        raise ControlError(str(reply.get("error", "refused")))
    status: JsonObj = reply["status"]
    return status


def run(args: argparse.Namespace, *, stdout: IO[str] | None = None, stderr: IO[str] | None = None,
        sleep: Callable[[float], None] = time.sleep) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    if not args.interval > 0:
        err.write("ulvs top: --interval must be positive\n")
        return 2
    client = ControlClient(args.socket or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET)

    def frame(prev: JsonObj) -> tuple[JsonObj, TopView]:
        t0 = time.monotonic()
        sleep(args.interval)
        cur = _status(client)
        return cur, top_view(prev, cur, time.monotonic() - t0)

    try:
        prev = _status(client)
        if not out.isatty():
            while True:
                prev, view = frame(prev)
                out.write(render_plain(view))
                out.flush()
                if args.once:
                    return 0
                out.write("\n")
        from rich.console import Console
        from rich.live import Live

        if args.once:
            Console(file=out, highlight=False).print(render(frame(prev)[1]))
            return 0
        with Live(console=Console(file=out, highlight=False), auto_refresh=False, screen=False) as live:
            while True:
                prev, view = frame(prev)
                live.update(render(view), refresh=True)
    except ControlError as e:
        err.write(f"ulvs top: {e}\n")
        return 1
    except (KeyError, TypeError, ValueError) as e:
        err.write(f"ulvs top: the daemon sent a malformed status ({e!r})\n")
        return 1
    except KeyboardInterrupt:
        return 0
