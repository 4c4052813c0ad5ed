"""The ``ulvs`` command line."""

from __future__ import annotations

import argparse
import os
import sys

from ulvs import __version__


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ulvs",
        description="ulvs: a userspace Linux Virtual Server (IPVS-compatible load balancing).",
    )
    p.add_argument("--version", action="version", version=f"ulvs {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="build a NAT cluster in network namespaces, drive it, show it")
    demo.add_argument("--requests", type=_positive, default=60, help="HTTP requests to send (default 60)")
    demo.add_argument("--backend", choices=("afpacket", "tap"), default="afpacket", help="dataplane backend")
    demo.add_argument("--in-process", action="store_true",
                      help="no namespaces: run the forwarding core in-process on generated traffic")
    demo.add_argument("--clients", type=_positive, default=60,
                      help="with --in-process: client connections to open (default 60)")
    demo.add_argument("--seed", type=int, default=1, help="with --in-process: random seed")
    from ulvs.lab.cli import add_parser as add_lab_parser

    add_lab_parser(sub)
    from ulvs.runtime.cli import add_parser as add_run_parser

    add_run_parser(sub)
    from ulvs.cli.daemonctl import add_parsers as add_daemonctl_parsers

    add_daemonctl_parsers(sub)
    from ulvs.cli.configcmd import add_parsers as add_config_parsers

    add_config_parsers(sub)
    from ulvs.cli.top import add_parser as add_top_parser

    add_top_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        if not args.in_process:
            if os.geteuid() == 0:
                from ulvs.lab.demo import run_lab_demo

                return run_lab_demo(requests=args.requests, backend=args.backend)
            print("ulvs demo: building network namespaces needs root (CAP_NET_ADMIN); showing the "
                  "in-process demo instead (ulvs demo --in-process)", file=sys.stderr)
        from ulvs.demo import run_demo

        sys.stdout.write(run_demo(clients=args.clients, seed=args.seed))
        return 0
    if args.command in ("status", "explain", "reload"):
        from ulvs.cli.daemonctl import run as run_daemonctl

        return run_daemonctl(args)
    if args.command == "top":
        from ulvs.cli.top import run as run_top

        return run_top(args)
    if args.command in ("check-config", "import"):
        from ulvs.cli.configcmd import run as run_configcmd

        return run_configcmd(args)
    if args.command == "run":
        from ulvs.runtime.cli import main as run_daemon

        return run_daemon(args)
    if args.command == "lab":
        from ulvs.lab.cli import run as run_lab

        return run_lab(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
