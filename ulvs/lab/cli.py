"""``ulvs lab up|down|status``: build a lab by hand, remove labs, list them."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType
from typing import TextIO

from ulvs.lab.topology import MAX_CLIENTS, MAX_SERVERS, Lab, LabError, destroy, destroy_all, status

NOT_ROOT = "ulvs lab: needs root (CAP_NET_ADMIN) to manage network namespaces"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``lab`` on the top-level ``ulvs`` subcommand parser."""
    lab = sub.add_parser("lab", help="build, remove or list network-namespace test labs (root)")
    verbs = lab.add_subparsers(dest="lab_command", metavar="up|down|status", required=True)
    up = verbs.add_parser("up", help="build a lab and keep it until Ctrl-C")
    up.add_argument("--dr", action="store_true", help="prepare real servers for direct routing")
    up.add_argument("--directors", type=int, choices=(1, 2), default=1, help="directors (default 1)")
    up.add_argument("--clients", type=int, default=1, help=f"client addresses, 1..{MAX_CLIENTS}")
    up.add_argument("--servers", type=int, default=3, help=f"real servers, 1..{MAX_SERVERS}")
    up.add_argument("--offloads-off", action="store_true", help="switch off veth tx/TSO/GSO/GRO")
    down = verbs.add_parser("down", help="remove labs (live or stale) by namespace prefix")
    down.add_argument("lab_ids", nargs="*", metavar="LAB_ID", help="only these labs (default: all)")
    verbs.add_parser("status", help="list labs")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run one ``ulvs lab`` verb; exit code 2 when not root."""
    if os.geteuid() != 0:
        sys.stderr.write(NOT_ROOT + "\n")
        return 2
    if args.lab_command == "status":
        infos = status()
        if not infos:
            out.write("no ulvs labs\n")
        for info in infos:
            owner = f"owner pid {info.owner_pid}" if info.owner_pid is not None else "owner unknown"
            state = "live" if info.alive else "stale"
            out.write(
                f"{info.lab_id}  {state:<5}  {owner}  {' '.join(info.namespaces) or '(no namespaces)'}\n"
            )
        return 0
    if args.lab_command == "down":
        known = {info.lab_id for info in status()}
        unknown = [i for i in args.lab_ids if i not in known]
        if unknown:
            sys.stderr.write(f"ulvs lab: no such lab: {' '.join(unknown)}\n")
            return 1
        for lab_id in args.lab_ids:
            destroy(lab_id)
        for lab_id in args.lab_ids or destroy_all():
            out.write(f"removed lab {lab_id}\n")
        return 0
    # up: SIGINT/SIGTERM/SIGHUP all end in lab.down().  SIGINT is set explicitly because a shell
    # starts background jobs with it ignored, and Python then installs no KeyboardInterrupt.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    try:
        lab = Lab(
            dr=args.dr,
            directors=args.directors,
            clients=args.clients,
            servers=args.servers,
            offloads_off=args.offloads_off,
        )
    except ValueError as exc:
        sys.stderr.write(f"ulvs lab: {exc}\n")
        return 2
    try:
        lab.up()
        out.write(lab.describe() + "\nPress Ctrl-C to tear the lab down.\n")
        out.flush()
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    except LabError as exc:
        sys.stderr.write(f"ulvs lab: {exc}\n")
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not interrupt teardown
        lab.down()
    out.write(f"lab {lab.lab_id} removed\n")
    return 0
