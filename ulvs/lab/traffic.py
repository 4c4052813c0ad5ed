"""Test-traffic client for the lab: HTTP requests, UDP echoes and TCP connects, results as JSON.

Run inside a namespace by path (stdlib only, so it starts fast and needs no ulvs import)::

    python -I traffic.py http 10.77.1.100 --path / --count 10 --src 10.77.0.10,10.77.0.11
    python -I traffic.py udp 10.77.1.100 --payload hello
    python -I traffic.py tcp 10.77.1.100 80

Prints one JSON array on stdout, one object per request/datagram/connect.  ``--src`` takes a
comma-separated list of local addresses used in turn (multi-client tests); ``--keepalive`` reuses
one HTTP/1.1 connection per source address.  Bodies are hashed while streaming, so multi-hundred-MB
downloads cost no memory; the body text itself is returned only when it is short.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import socket
import sys
from typing import Any

_BODY_KEEP = 4096  # return bodies up to this size as text
_READ = 1 << 18


def _http(args: argparse.Namespace) -> list[dict[str, Any]]:
    srcs: list[str | None] = list(args.src.split(",")) if args.src else [None]
    conns: dict[str | None, http.client.HTTPConnection] = {}
    out: list[dict[str, Any]] = []
    for i in range(args.count):
        src = srcs[i % len(srcs)]
        res: dict[str, Any] = {
            "src": src,
            "status": None,
            "server": None,
            "length": 0,
            "sha256": None,
            "body": None,
            "error": None,
        }
        conn = conns.get(src) if args.keepalive else None
        try:
            if conn is None:
                conn = http.client.HTTPConnection(
                    args.host,
                    args.port,
                    timeout=args.timeout,
                    source_address=(src, 0) if src else None,
                )
                if args.keepalive:
                    conns[src] = conn
            headers = {} if args.keepalive else {"Connection": "close"}
            conn.request("GET", args.path, headers=headers)
            resp = conn.getresponse()
            h = hashlib.sha256()
            length = 0
            keep = bytearray()
            while True:
                chunk = resp.read(_READ)
                if not chunk:
                    break
                h.update(chunk)
                length += len(chunk)
                if len(keep) <= _BODY_KEEP:
                    keep += chunk[: _BODY_KEEP + 1 - len(keep)]
            res.update(
                status=resp.status,
                server=resp.getheader("X-Real-Server"),
                length=length,
                sha256=h.hexdigest(),
            )
            if length <= _BODY_KEEP:
                res["body"] = keep.decode("latin-1")
        except (OSError, http.client.HTTPException) as exc:
            res["error"] = f"{type(exc).__name__}: {exc}"
            conns.pop(src, None)
            if conn is not None:
                conn.close()
            conn = None
        if not args.keepalive and conn is not None:
            conn.close()
        out.append(res)
    for c in conns.values():
        c.close()
    return out


def _udp(args: argparse.Namespace) -> list[dict[str, Any]]:
    srcs: list[str | None] = list(args.src.split(",")) if args.src else [None]
    out: list[dict[str, Any]] = []
    for i in range(args.count):
        src = srcs[i % len(srcs)]
        res: dict[str, Any] = {"src": src, "reply": None, "error": None}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(args.timeout)
            try:
                if src:
                    s.bind((src, 0))
                s.connect((args.host, args.port))
                s.send(args.payload.encode())
                res["reply"] = s.recv(65535).decode("latin-1")
            except OSError as exc:
                res["error"] = f"{type(exc).__name__}: {exc}"
        out.append(res)
    return out


def _tcp(args: argparse.Namespace) -> list[dict[str, Any]]:
    # "refused" still proves the host is up and routed: the stand-in for ping (not installed).
    res: dict[str, Any] = {"ok": False, "refused": False, "error": None}
    try:
        src = (args.src, 0) if args.src else None
        with socket.create_connection((args.host, args.port), timeout=args.timeout, source_address=src):
            res["ok"] = True
    except ConnectionRefusedError as exc:
        res["refused"] = True
        res["error"] = f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"
    return [res]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="ulvs lab traffic client (JSON results on stdout)")
    sub = p.add_subparsers(dest="what", required=True)
    h = sub.add_parser("http")
    h.add_argument("host")
    h.add_argument("--port", type=int, default=80)
    h.add_argument("--path", default="/")
    h.add_argument("--count", type=int, default=1)
    h.add_argument("--keepalive", action="store_true")
    h.add_argument("--src", default="")
    h.add_argument("--timeout", type=float, default=5.0)
    u = sub.add_parser("udp")
    u.add_argument("host")
    u.add_argument("--port", type=int, default=5353)
    u.add_argument("--payload", default="ping")
    u.add_argument("--count", type=int, default=1)
    u.add_argument("--src", default="")
    u.add_argument("--timeout", type=float, default=2.0)
    t = sub.add_parser("tcp")
    t.add_argument("host")
    t.add_argument("port", type=int)
    t.add_argument("--src", default="")
    t.add_argument("--timeout", type=float, default=2.0)
    args = p.parse_args(argv)
    run = {"http": _http, "udp": _udp, "tcp": _tcp}[args.what]
    json.dump(run(args), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
