"""The ``ulvs`` command line."""

from __future__ import annotations

import argparse
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
    demo = sub.add_parser("demo", help="run the forwarding core on generated traffic and show the result")
    demo.add_argument("--clients", type=_positive, default=60, help="client connections to open (default 60)")
    demo.add_argument("--seed", type=int, default=1, help="random seed for arrivals and hang-ups")
    from ulvs.lab.cli import add_parser as add_lab_parser

    add_lab_parser(sub)
    from ulvs.runtime.cli import add_parser as add_run_parser

    add_run_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ulvs.demo import run_demo

        sys.stdout.write(run_demo(clients=args.clients, seed=args.seed))
        return 0
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
