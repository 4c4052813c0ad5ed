#!/usr/bin/env python3
"""200 MB HTTP download through the director: ulvs NAT per backend vs plain kernel routing.

On the lab topology, the client downloads /bytes/N from the VIP. The body is hashed as it
streams, and each run must match the expected sha256. Each figure is the median of ``--runs``
downloads, in MB/s and Gbit/s of payload. Systems:
  ulvs-afpacket   ulvs run --backend afpacket, NAT rr over three real servers
  ulvs-tap        ulvs run --backend tap, same service
  kernel          no ulvs: the director's kernel routes the VIP to rs1, which holds it on lo
                  (the upper limit of this topology)
Needs root (network namespaces). Usage: bench/bench_transfer.py [--json] [--runs N] [--mb N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from ulvs.lab import Lab
from ulvs.lab.director import director
from ulvs.lab.pattern import pattern_digest

RULES = "-A -t 10.77.1.100:80 -s rr\n" + "".join(
    f"-a -t 10.77.1.100:80 -r 10.77.2.1{i}:80 -m -w 1\n" for i in (1, 2, 3))


def download(lab: Lab, size: int) -> float:
    t0 = time.perf_counter()
    (r,) = lab.http_get("client", lab.vip, f"/bytes/{size}", timeout=300)
    elapsed = time.perf_counter() - t0
    if r.error or r.status != 200 or r.sha256 != pattern_digest(size):
        raise SystemExit(f"download failed or corrupted: {r}")
    return elapsed


def measure(system: str, size: int, runs: int, progress: bool) -> list[float]:
    times = []
    if system == "kernel":
        with Lab(dr=True) as lab:
            lab.run("director", ["ip", "route", "add", f"{lab.vip}/32", "via", lab.addr("rs1")], check=True)
            for _ in range(runs):
                times.append(download(lab, size))
    else:
        with Lab() as lab, director(lab, RULES, system.split("-")[1]):
            for _ in range(runs):
                times.append(download(lab, size))
    if progress:
        print(f"  {system}: " + ", ".join(f"{t:.2f}s" for t in times), file=sys.stderr)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mb", type=int, default=200, help="download size in MiB (default 200)")
    args = ap.parse_args(argv)
    size = args.mb * 1024 * 1024
    out: dict[str, dict[str, float]] = {}
    for system in ("ulvs-afpacket", "ulvs-tap", "kernel"):
        print(f"{system} ...", file=sys.stderr, flush=True)
        t = statistics.median(measure(system, size, args.runs, True))
        out[system] = {"seconds": round(t, 3), "MBps": round(size / t / 1e6, 1),
                       "gbps": round(size * 8 / t / 1e9, 2)}
    for system in ("ulvs-afpacket", "ulvs-tap"):
        out[system]["ratio_to_kernel"] = round(out["kernel"]["seconds"] / out[system]["seconds"], 3)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:15} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
