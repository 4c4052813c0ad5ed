"""``ulvs run``: command-line front of the daemon (``ulvs.runtime.daemon``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ulvs.config.schema import METRICS_LISTEN, ConfigError, DaemonSettings, MetricsSettings, parse_listen
from ulvs.runtime.configfile import DaemonConfig
from ulvs.runtime.daemon import DEFAULT_SOCKET, Options, run


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="run the director daemon in the foreground (logs to stderr)")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="configuration: native TOML, keepalived.conf, ipvsadm rules (`ulvsadm -S`) or "
                        "Piranha lvs.cf, told apart by name and content; its [daemon] settings apply "
                        "where the command line gives none.  SIGHUP reloads it, applying only the "
                        "differences")
    p.add_argument("--keepalived-conf", type=Path, metavar="FILE",
                   help="--config FILE, read as keepalived.conf whatever its name")
    p.add_argument("--interface", "-i", action="append", default=[], metavar="IF",
                   help="attach to IF (repeatable); default: every UP non-loopback interface")
    p.add_argument("--backend", choices=("afpacket", "tap"),
                   help="dataplane: AF_PACKET rings (default) or a TAP device with policy routing")
    p.add_argument("--control-socket", type=Path, metavar="PATH",
                   help=f"unix socket for ulvsadm (default {DEFAULT_SOCKET}, mode 0600)")
    p.add_argument("--control-group", metavar="GROUP",
                   help="also admit members of GROUP to the control socket (mode 0660, owned by the "
                        "group); otherwise only root and the daemon's own user")
    p.add_argument("--conn-limit", type=int, metavar="N",
                   help="connection table size (default 1,000,000)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="dataplane processes (afpacket): traffic spread by PACKET_FANOUT on the client "
                        "endpoint, so both directions of a connection meet the worker that owns it")
    p.add_argument("--rx-ring", choices=("auto", "lanes", "v3"), default="auto",
                   help="afpacket receive layout: 'auto' (default): a TPACKET_V3 ring under load and "
                        "a socket that hands each frame over at once when the rate is low (below 30 "
                        "kpps), both in one PACKET_FANOUT group whose program picks one (a move is "
                        "one program swap); 'v3': the TPACKET_V3 ring alone (fewer wakeups at light "
                        "load, up to 1 ms of added latency per frame); 'lanes' (experimental): a TPACKET_V2 "
                        "ring for ordinary frames plus a socket for GSO super-packets (under "
                        "sustained overload its ring can fall out of step with the kernel's)")
    p.add_argument("--tx-ring", type=int, default=4096, metavar="SLOTS",
                   help="afpacket transmit ring slots per interface (default 4096, 2 KiB each): "
                        "forwarded frames are copied into a TPACKET_V2 ring and sent with one "
                        "system call per batch; 0 sends each frame with its own send()")
    p.add_argument("--rx-pace", type=int, default=0, metavar="USEC",
                   help="a receive port that hands frames over one at a time (--rx-ring lanes, the "
                        "TAP) and wakes ulvs again within USEC microseconds is read every USEC on a "
                        "timer instead, until a read finds fewer than two frames (default 0: always "
                        "on its socket). Less CPU per packet under a steady load, up to about USEC "
                        "of added latency (e.g. 300)")
    p.add_argument("--gro", choices=("on", "keep"),
                   help="afpacket: switch GRO on for attached interfaces while running (default), or "
                        "leave their offload settings alone")
    p.add_argument("--metrics-listen", metavar="HOST:PORT|off",
                   help=f"serve Prometheus metrics at http://HOST:PORT/metrics from a child process "
                        f"(default: the configuration's [metrics] listen, else {METRICS_LISTEN}); "
                        f"'off': no exporter")
    p.add_argument("--flow-log", metavar="PATH|-|off",
                   help="write a JSON line for every connection open and close (5-tuple, dest, "
                        "packets and bytes both ways, duration, close reason) to PATH (appended to; "
                        "reopened on SIGHUP) or '-' (stdout); default: [daemon] flow_log, else off")
    p.add_argument("--flow-log-rate", type=int, metavar="N",
                   help="flow log lines per second at most (default: [daemon] flow_log_rate, else "
                        "1000); lines over it are counted in a 'suppressed' line")
    p.add_argument("--verbose", "-v", action="store_true", help="log every next-hop change")


def _no_config(path: Path) -> list[dict[str, Any]]:
    return []


def _settings(args: argparse.Namespace, d: DaemonSettings) -> dict[str, Any]:
    """Daemon options: the command line's, else the configuration's [daemon], else defaults."""
    return dict(
        interfaces=args.interface or list(d.interfaces),
        backend=args.backend or d.backend,
        control_socket=args.control_socket or Path(d.control_socket),
        control_group=args.control_group or d.control_group,
        conn_limit=d.conn_limit if args.conn_limit is None else args.conn_limit,
        workers=d.workers if args.workers is None else args.workers,
        gro=d.gro if args.gro is None else args.gro == "on",
        flow_log=None if args.flow_log == "off" else args.flow_log or d.flow_log,
        flow_log_rate=d.flow_log_rate if args.flow_log_rate is None else args.flow_log_rate)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s ulvs[%(process)d] %(levelname)s %(message)s")
    if args.conn_limit is not None and args.conn_limit < 1:
        print("ulvs run: --conn-limit must be at least 1", file=sys.stderr)
        return 2
    if args.workers is not None and not 1 <= args.workers <= 64:
        print("ulvs run: --workers must be between 1 and 64", file=sys.stderr)
        return 2
    if args.tx_ring < 0 or args.tx_ring % 512:
        print("ulvs run: --tx-ring must be 0 or a multiple of 512 (slots per 1 MiB block)", file=sys.stderr)
        return 2
    if not 0 <= args.rx_pace <= 100_000:
        print("ulvs run: --rx-pace must be between 0 and 100000 microseconds", file=sys.stderr)
        return 2
    if args.flow_log_rate is not None and args.flow_log_rate < 1:
        print("ulvs run: --flow-log-rate must be at least 1", file=sys.stderr)
        return 2
    if args.config and args.keepalived_conf:
        print("ulvs run: give --config or --keepalived-conf, not both", file=sys.stderr)
        return 2
    path = args.keepalived_conf or args.config
    config = None
    if path is not None:
        try:
            config = DaemonConfig(path, "keepalived" if args.keepalived_conf else None, args.backend)
        except ConfigError as e:
            print(f"ulvs run: {e}", file=sys.stderr)
            return 2
    settings = _settings(args, config.first.daemon if config is not None else DaemonSettings())
    # The exporter: the command line's address, else [metrics] listen, else METRICS_LISTEN.
    metrics = args.metrics_listen or (config.first.metrics if config else MetricsSettings()).listen
    try:
        listen = None if parse_listen(metrics or METRICS_LISTEN) is None else metrics or METRICS_LISTEN
    except ValueError as e:
        print(f"ulvs run: --metrics-listen: {e}", file=sys.stderr)
        return 2
    opts = Options(config=path, rx_ring=args.rx_ring, tx_ring=args.tx_ring,
                   rx_pace=args.rx_pace * 1e-6, metrics_listen=listen, **settings)
    return run(opts, config if config is not None else _no_config)
