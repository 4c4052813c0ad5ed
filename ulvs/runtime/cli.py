"""``ulvs run``: command-line front of the daemon (``ulvs.runtime.daemon``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ulvs.runtime.daemon import DEFAULT_SOCKET, DaemonError, Options, run


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="run the director daemon in the foreground (logs to stderr)")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="rules file in `ulvsadm -S` format (one ipvsadm command per line); "
                        "SIGHUP reloads it, applying only the differences")
    p.add_argument("--interface", "-i", action="append", default=[], metavar="IF",
                   help="attach to IF (repeatable); default: every UP non-loopback interface")
    p.add_argument("--backend", choices=("afpacket", "tap"), default="afpacket",
                   help="dataplane: AF_PACKET rings (default) or a TAP device with policy routing")
    p.add_argument("--control-socket", type=Path, default=DEFAULT_SOCKET, metavar="PATH",
                   help=f"unix socket for ulvsadm (default {DEFAULT_SOCKET}, mode 0600)")
    p.add_argument("--conn-limit", type=int, default=1_000_000, metavar="N",
                   help="connection table size (default 1,000,000)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="dataplane processes (afpacket): traffic spread by PACKET_FANOUT on the client "
                        "endpoint, so both directions of a connection meet the worker that owns it")
    p.add_argument("--gro", choices=("on", "keep"), default="on",
                   help="afpacket: switch GRO on for attached interfaces while running (default), or "
                        "leave their offload settings alone")
    p.add_argument("--verbose", "-v", action="store_true", help="log every next-hop change")


def load_rules(path: Path) -> list[dict[str, Any]]:
    """The requests a rules file describes; errors name the file and line."""
    from ulvs.cli.ulvsadm import UsageError, parse_restore

    try:
        text = path.read_text()
    except OSError as e:
        raise DaemonError(f"cannot read configuration {path}: {e.strerror}") from None
    try:
        return [req for _line, req in parse_restore(text)]
    except UsageError as e:
        raise DaemonError(f"{path}: {e}") from None


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s ulvs[%(process)d] %(levelname)s %(message)s")
    if args.conn_limit < 1:
        print("ulvs run: --conn-limit must be at least 1", file=sys.stderr)
        return 2
    if not 1 <= args.workers <= 64:
        print("ulvs run: --workers must be between 1 and 64", file=sys.stderr)
        return 2
    opts = Options(config=args.config, interfaces=args.interface, backend=args.backend,
                   control_socket=args.control_socket, conn_limit=args.conn_limit, workers=args.workers,
                   gro=args.gro == "on")
    return run(opts, load_rules)
