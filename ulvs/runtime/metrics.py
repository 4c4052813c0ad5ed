"""The Prometheus exporter: a child process of the daemon that answers scrapes from its status.

    python -m ulvs.runtime.metrics --listen 127.0.0.1:9595 --socket /run/ulvs/ulvs.sock

``ulvs run`` starts it (``ulvs.runtime.supervisor.ExporterProcess``, by PID, restarted when it
dies, stopped on shutdown) unless ``--metrics-listen off``.  It runs apart from the dataplane so
a scrape never runs Python on the dataplane's GIL: each scrape sends one ``metrics`` request
(the status, cut down by ``ulvs.runtime.control.metrics_view`` and added up over the workers)
over the control socket and turns the reply into metric families.  It keeps no state, gives up
every capability at start, and exits when the daemon does (``PR_SET_PDEATHSIG``, and a check of
its parent every second).  The HTTP side is prometheus_client's, with a registry of its own
holding only ``UlvsCollector`` (no default process/platform collectors, no global registry).

Names and labels follow node_exporter's ``ipvs`` collector under ``ulvs_`` (REFERENCE (j)), so a
dashboard ports by a prefix swap.  The per-dest label set is ``local_address, local_port,
remote_address, remote_port, proto, local_mark``; a service group (ipvsadm's fwmark service) has
``local_address=""``, ``local_port="0"``, ``proto="FWM"`` and ``local_mark`` its mark as
/proc/net/ip_vs prints it (``%08X``), other services ``local_mark=""``.  ``METRICS`` lists every
family with its type, help and labels; ``families(status)`` is the pure part (unit-tested from a
canned status).

Status keys read (``metrics_view`` keeps exactly these):
  snapshot.services[].service {proto, vaddr, vport | fwmark}, .counters {conns, inpkts, outpkts,
      inbytes, outbytes}, .dests[] {dest {daddr, dport}, weight, activeconns, inactconns}
  conn_table {limit, states {STATE: n}};  drops {reason: n}
  daemon {version, ports {ifname: {rx_ring_drops, rx_stale}}}
  health {dests [{service, daddr, dport, up}], probes {kind: ulvs.health.stats JSON}}
  vrrp (optional) [{iname, intf, vrid, state 0..3 | name, transitions {STATE: n} | become_master}]
  sync (optional) {lag_seconds: float | null}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ulvs import __version__
from ulvs.config.schema import METRICS_LISTEN, parse_listen
from ulvs.core.proto_tcp import STATE_NAMES
from ulvs.core.verdict import DropReason
from ulvs.runtime import child

log = logging.getLogger("ulvs.metrics")

PROTOCOL_VERSION = 1
REQUEST_TIMEOUT = 5.0       # s for the daemon's answer to one scrape's request
PARENT_CHECK = 1.0          # s between two checks that the daemon is still our parent

BACKEND = ("local_address", "local_port", "remote_address", "remote_port", "proto", "local_mark")
VRRP = ("iname", "intf", "vrid")
# RFC 5798 states as keepalived-exporter numbers them (keepalived_vrrp_state): 0 INIT (internal),
# 1 BACKUP, 2 MASTER, 3 FAULT (internal).
VRRP_STATES = ("INIT", "BACKUP", "MASTER", "FAULT")
RING_REASONS = {"rx_ring_drops": "ring_full", "rx_stale": "ring_stale"}   # afpacket ring counters

# Every family the exporter emits: exposition name -> (type, help, labels).
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "ulvs_up": ("gauge", "1 if the daemon answered this scrape's status request, else 0", ()),
    "ulvs_build_info": ("gauge", "ulvs version and Python of the running daemon (always 1)",
                        ("version", "python")),
    "ulvs_connections_total": ("counter", "Connections scheduled, all services", ()),
    "ulvs_incoming_packets_total": ("counter", "Packets from clients, all services", ()),
    "ulvs_outgoing_packets_total": ("counter", "Packets to clients (NAT replies), all services", ()),
    "ulvs_incoming_bytes_total": ("counter", "Bytes from clients, all services", ()),
    "ulvs_outgoing_bytes_total": ("counter", "Bytes to clients (NAT replies), all services", ()),
    "ulvs_backend_connections_active": ("gauge", "Active (ESTABLISHED) connections of a dest", BACKEND),
    "ulvs_backend_connections_inactive": ("gauge", "Inactive connections of a dest", BACKEND),
    "ulvs_backend_weight": ("gauge", "Weight of a dest in its service's pool", BACKEND),
    "ulvs_backend_up": ("gauge", "1 if the dest's health checks pass (or it has none), 0 if down", BACKEND),
    "ulvs_packets_dropped_total": ("counter", "Packets dropped, by reason (core verdicts and receive rings)",
                                   ("reason",)),
    "ulvs_conn_table_entries": ("gauge", "Connection table entries by state (templates: NONE)", ("state",)),
    "ulvs_conn_table_limit": ("gauge", "Connection table size (summed over the dataplane workers)", ()),
    "ulvs_healthcheck_duration_seconds": ("histogram", "Duration of health check probes", ("kind",)),
    "ulvs_healthcheck_results_total": ("counter", "Health check probes by outcome", ("kind", "result")),
    "ulvs_vrrp_state": ("gauge", "VRRP instance state: 0 INIT, 1 BACKUP, 2 MASTER, 3 FAULT", VRRP),
    "ulvs_vrrp_transitions_total": ("counter", "VRRP state transitions, by the state entered",
                                    (*VRRP, "to")),
    "ulvs_sync_lag_seconds": ("gauge", "Seconds since the backup last heard from the sync master", ()),
}
# Families that exist only while VRRP or connection sync runs.
OPTIONAL = frozenset({"ulvs_vrrp_state", "ulvs_vrrp_transitions_total", "ulvs_sync_lag_seconds"})
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count")}


def sample_names() -> dict[str, str]:
    """Every sample name a scrape can show (histograms have _bucket/_sum/_count) -> its family."""
    out = {}
    for name, (kind, _, _) in METRICS.items():
        for suffix in _SUFFIXES.get(kind, ("",)):
            out[name + suffix] = name
    return out


def _family(name: str) -> Any:
    kind, doc, labels = METRICS[name]
    cls = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily,
           "histogram": HistogramMetricFamily}[kind]
    return cls(name, doc, labels=labels)


def _service_labels(svc: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """(local_address, local_port, proto, local_mark) of a service key as node_exporter sets them."""
    if svc["proto"] == "fwm":
        return "", "0", "FWM", f"{int(svc['fwmark']):08X}"
    return str(svc["vaddr"]), str(svc["vport"]), str(svc["proto"]).upper(), ""


def _svc_key(svc: Mapping[str, Any]) -> tuple[Any, ...]:
    if svc["proto"] == "fwm":
        return (svc["proto"], int(svc["fwmark"]))
    return (svc["proto"], str(svc["vaddr"]), int(svc["vport"]))


def _vrrp_state(value: Any) -> int:
    if isinstance(value, str):
        return VRRP_STATES.index(value.upper())
    return int(value)


def families(status: Mapping[str, Any], *, up: bool = True) -> list[Metric]:
    """The metric families of one daemon status (a ``status`` or ``metrics`` reply's body)."""
    version = (status.get("daemon") or {}).get("version") or __version__
    info = _family("ulvs_build_info")
    info.add_metric([str(version), platform.python_version()], 1)
    alive = _family("ulvs_up")
    alive.add_metric([], 1 if up else 0)
    if not up:
        return [alive, info]
    out: list[Metric] = [alive, info]

    services = status["snapshot"]["services"]
    totals = {"conns": 0, "inpkts": 0, "outpkts": 0, "inbytes": 0, "outbytes": 0}
    for s in services:
        for k in totals:
            totals[k] += int(s["counters"].get(k, 0))
    for name, field in (("ulvs_connections_total", "conns"), ("ulvs_incoming_packets_total", "inpkts"),
                        ("ulvs_outgoing_packets_total", "outpkts"), ("ulvs_incoming_bytes_total", "inbytes"),
                        ("ulvs_outgoing_bytes_total", "outbytes")):
        f = _family(name)
        f.add_metric([], totals[field])
        out.append(f)

    health = status.get("health") or {}
    verdicts = {(_svc_key(h["service"]), str(h["daddr"]), int(h["dport"])): bool(h["up"])
                for h in health.get("dests") or ()}
    active = _family("ulvs_backend_connections_active")
    inactive = _family("ulvs_backend_connections_inactive")
    weight, backend_up = _family("ulvs_backend_weight"), _family("ulvs_backend_up")
    listed = set()
    for s in services:
        laddr, lport, proto, mark = _service_labels(s["service"])
        for d in s["dests"]:
            daddr, dport = str(d["dest"]["daddr"]), int(d["dest"]["dport"])
            labels = [laddr, lport, daddr, str(dport), proto, mark]
            active.add_metric(labels, d["activeconns"])
            inactive.add_metric(labels, d["inactconns"])
            weight.add_metric(labels, d["weight"])
            key = (_svc_key(s["service"]), daddr, dport)
            backend_up.add_metric(labels, 1 if verdicts.get(key, True) else 0)
            listed.add(key)
    for h in health.get("dests") or ():     # a dest out of the pool for failing its checks
        key = (_svc_key(h["service"]), str(h["daddr"]), int(h["dport"]))
        if key not in listed:
            laddr, lport, proto, mark = _service_labels(h["service"])
            backend_up.add_metric([laddr, lport, key[1], str(key[2]), proto, mark], 1 if h["up"] else 0)
    out += [active, inactive, weight, backend_up]

    dropped = _family("ulvs_packets_dropped_total")
    drops = dict.fromkeys((r.label for r in DropReason), 0)
    drops.update({str(k): int(v) for k, v in (status.get("drops") or {}).items()})
    ports = (status.get("daemon") or {}).get("ports") or {}
    for counter, reason in RING_REASONS.items():
        drops[reason] = sum(int(p.get(counter, 0)) for p in ports.values())
    for reason, n in drops.items():
        dropped.add_metric([reason], n)
    out.append(dropped)

    table = status.get("conn_table") or {}
    entries = _family("ulvs_conn_table_entries")
    states = dict.fromkeys(STATE_NAMES, 0)
    states.update({str(k): int(v) for k, v in (table.get("states") or {}).items()})
    for state, n in states.items():
        entries.add_metric([state], n)
    limit = _family("ulvs_conn_table_limit")
    limit.add_metric([], int(table.get("limit", 0)))
    out += [entries, limit]

    durations = _family("ulvs_healthcheck_duration_seconds")
    results = _family("ulvs_healthcheck_results_total")
    for kind, p in sorted((health.get("probes") or {}).items()):
        buckets = [(str(float(b)), float(n)) for b, n in p["buckets"]] + [("+Inf", float(p["count"]))]
        durations.add_metric([kind], buckets, float(p["sum"]))
        results.add_metric([kind, "success"], p["success"])
        results.add_metric([kind, "failure"], p["failure"])
    out += [durations, results]

    instances = status.get("vrrp")
    if instances:
        state, moves = _family("ulvs_vrrp_state"), _family("ulvs_vrrp_transitions_total")
        for i in instances:
            labels = [str(i["iname"]), str(i["intf"]), str(i["vrid"])]
            state.add_metric(labels, _vrrp_state(i["state"]))
            entered = i.get("transitions")
            if not isinstance(entered, Mapping):
                entered = {"MASTER": i.get("become_master", 0)}
            for to, n in entered.items():
                moves.add_metric([*labels, str(to).upper()], n)
        out += [state, moves]
    sync = status.get("sync")
    if isinstance(sync, Mapping) and sync.get("lag_seconds") is not None:
        lag = _family("ulvs_sync_lag_seconds")
        lag.add_metric([], float(sync["lag_seconds"]))
        out.append(lag)
    return out


class UlvsCollector:
    """A prometheus_client collector: each ``collect`` asks ``fetch`` for a fresh status."""

    def __init__(self, fetch: Callable[[], Mapping[str, Any]]) -> None:
        self.fetch = fetch

    def collect(self) -> Iterator[Metric]:
        try:
            status = self.fetch()
            found = families(status)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("scrape: no status from the daemon: %s", e)
            found = families({}, up=False)
        yield from found


def fetch_status(path: Path, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    """One ``metrics`` request over the control socket at ``path``; its reply's body."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps({"cmd": "metrics", "v": PROTOCOL_VERSION}).encode() + b"\n")
        chunks: list[bytes] = []
        while not chunks or not chunks[-1].endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                raise ConnectionResetError("the daemon closed the control connection")
            chunks.append(chunk)
    reply = json.loads(b"".join(chunks))
    if not isinstance(reply, dict) or not reply.get("ok"):
        raise ValueError(f"the daemon refused: {reply.get('error') if isinstance(reply, dict) else reply!r}")
    body = reply["metrics"]
    if not isinstance(body, dict):
        raise ValueError("the reply's metrics is not an object")
    return body


def registry_for(fetch: Callable[[], Mapping[str, Any]]) -> CollectorRegistry:
    """A registry of its own with only our collector (the global one is never touched)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(UlvsCollector(fetch))
    return registry


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ulvs.runtime.metrics",
                                description="ulvs Prometheus exporter (started by ulvs run)")
    p.add_argument("--listen", default=METRICS_LISTEN, metavar="HOST:PORT")
    p.add_argument("--socket", type=Path, required=True, metavar="CONTROL_SOCKET")
    args = p.parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s ulvs-metrics[%(process)d] %(levelname)s %(message)s")
    if not child.attach_to_parent("metrics exporter", log):
        return 1
    parent = os.getppid()
    try:
        where = parse_listen(args.listen)
    except ValueError as e:
        log.error("--listen: %s", e)
        return 2
    if where is None:
        return 0
    from ulvs.runtime import caps

    with contextlib.suppress(OSError):
        caps.drop_all()              # it serves HTTP: it holds nothing it does not need
    registry = registry_for(lambda: fetch_status(args.socket))
    try:
        server, _thread = start_http_server(where[1], where[0], registry=registry)
    except OSError as e:
        log.error("cannot listen on %s: %s", args.listen, e.strerror or e)
        return 2
    log.info("metrics exporter serving http://%s/metrics", args.listen)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(PARENT_CHECK):
        if os.getppid() != parent:
            log.error("the daemon (pid %d) is gone: exporter stopping", parent)
            break
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
