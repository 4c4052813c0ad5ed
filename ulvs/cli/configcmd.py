"""``ulvs check-config`` and ``ulvs import``: configuration files without a daemon.

``check-config FILE`` is ``keepalived -t``: exit 0 when the file would run (warnings on stderr,
one per line, each with file:line), 4 with the error when it would not, 3 when the file cannot
be read.  ``import FORMAT FILE`` prints the equivalent native TOML on stdout (warnings on stderr;
any error exits 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO, Any

from ulvs.config import FORMATS
from ulvs.config.render import render
from ulvs.config.schema import Config, ConfigError, ConfigWarning
from ulvs.runtime.configfile import UnreadableError, check_runnable, inert_warnings, load

EXIT_OK, EXIT_IMPORT_ERROR, EXIT_UNREADABLE, EXIT_INVALID = 0, 2, 3, 4
IMPORT_FORMATS = tuple(f for f in FORMATS if f != "toml")


def add_parsers(sub: Any) -> None:
    check = sub.add_parser("check-config", help="validate a configuration file (exit 0 valid, 4 invalid, "
                                                "3 unreadable)")
    check.add_argument("file", type=Path, metavar="FILE")
    check.add_argument("--format", choices=tuple(FORMATS), metavar="FORMAT",
                       help=f"one of {', '.join(FORMATS)} (default: from the file's name and content)")
    imp = sub.add_parser("import", help="print a keepalived.conf, ipvsadm rules or lvs.cf file as "
                                        "native TOML")
    imp.add_argument("format", choices=IMPORT_FORMATS, metavar="FORMAT", help=" | ".join(IMPORT_FORMATS))
    imp.add_argument("file", type=Path, metavar="FILE")


def _warn(warnings: tuple[ConfigWarning, ...], err: IO[str]) -> None:
    for w in warnings:
        err.write(f"{w}\n")


def _summary(config: Config) -> str:
    dests = sum(len(vs.dests) for vs in config.services)
    parts = [f"{len(config.services)} service(s)", f"{dests} dest(s)"]
    if config.vrrp:
        parts.append(f"{len(config.vrrp)} VRRP instance(s)")
    return ", ".join(parts)


def check_config(path: Path, fmt: str | None, out: IO[str], err: IO[str]) -> int:
    try:
        result = load(path, fmt)
        check_runnable(result.config)
    except UnreadableError as e:
        err.write(f"{e}\n")
        return EXIT_UNREADABLE
    except ConfigError as e:
        err.write(f"{e}\n")
        return EXIT_INVALID
    _warn(result.warnings + inert_warnings(result.config), err)
    out.write(f"{path}: configuration OK: {_summary(result.config)}\n")
    return EXIT_OK


def import_config(fmt: str, path: Path, out: IO[str], err: IO[str]) -> int:
    try:
        result = load(path, fmt)
    except ConfigError as e:
        err.write(f"{e}\n")
        return EXIT_IMPORT_ERROR
    _warn(result.warnings, err)
    out.write(render(result.config, comment=f"Converted from {path} ({fmt}) by ulvs import."))
    return EXIT_OK


def run(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    if args.command == "check-config":
        return check_config(args.file, args.format, out, err)
    return import_config(args.format, args.file, out, err)
