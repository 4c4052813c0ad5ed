#!/usr/bin/env python3
"""The daemon's CPU time per forwarded packet at fixed offered rates, by receive layout.

bench_netns.py finds the highest lossless rate; this asks what a packet costs below it, where a
per-frame port (``--rx-ring lanes``) pays a wakeup for nearly every frame and a TPACKET_V3 ring
one per block.  On the bench's lab (ulvs NAT, UDP, 1,000 established flows, the generator
pinned to CPU 0 and the director's receive work steered to the other CPUs, as in
bench_netns.py), each configuration gets a fresh daemon, and each rate one trial of
``--seconds``; the daemon's CPU time comes from ``/proc/PID/schedstat`` (its main thread: the
dataplane loop), divided by the packets the service counted meanwhile (``ulvsadm --stats``).
The kernel's receive work that runs in the daemon's context (softirqs on its system calls) is
included, as it is in the daemon's cost.

``--left`` asks the other question: how much of a CPU the kernel's receive work for the same
flood leaves to *any* user process there.  The daemon is stopped (SIGSTOP: its ring stays
attached and fills, so the kernel drops at the ring, the cheapest way it has) and a busy loop
pinned to the director's receive CPU counts its iterations against an idle baseline.

Usage: bench/bench_cpu.py [--json] [--rates 20000,80000] [--configs auto,v3,lanes,lanes:300] [--left]
  a config is RING or RING:PACE (ulvs run --rx-ring RING --rx-pace PACE)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_netns as bn  # noqa: E402


def runtime_s(pid: int) -> float:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def measure(config: str, rates: list[int], seconds: float, trials: int) -> dict[str, Any]:
    ring, _, pace = config.partition(":")
    s = replace(bn.Settings.make(True), rx_ring=ring, rx_pace=int(pace) if pace else None,
                window=seconds, groups=("pps",))
    notes: list[str] = []
    out: dict[str, Any] = {"rx_ring": ring, "rx_pace_us": int(pace) if pace else 0, "rates": {}}
    with bn.fresh_env("ulvs", s, notes, dr=False) as env:
        env.start_servers({"pps"})
        env.start_ulvs("-m")
        assert env.ulvs_proc is not None
        pid = env.ulvs_proc.pid
        gen = env.generator()
        cfg, nflows = bn.udp_flows_cfg(gen.dmac, 1000, env.lab.client_addrs[0])
        env.establish(cfg, nflows)
        for rate in rates:
            per_pkt, delivered = [], []
            for _ in range(trials):
                in0, r0 = env.ulvs_stats("UDP", bn.PPS_PORT), runtime_s(pid)
                t = gen.trial(cfg, rate)
                in1, r1 = env.ulvs_stats("UDP", bn.PPS_PORT), runtime_s(pid)
                if in0 is None or in1 is None:
                    raise bn.BenchError("ulvsadm --stats did not answer")
                per_pkt.append((r1 - r0) / max(in1[1] - in0[1], 1) * 1e6)   # the service's packets
                delivered.append(t.delivered)
            row = {"us_per_pkt": round(statistics.median(per_pkt), 2),
                   "delivered_pps": round(statistics.median(delivered)),
                   "loss": round(1 - statistics.median(delivered) / rate, 4)}
            out["rates"][str(rate)] = row
            bn.progress(f"  {config} at {rate / 1e3:.0f} kpps: {row['us_per_pkt']:.2f} us of CPU per "
                        f"packet, delivered {row['delivered_pps'] / 1e3:.1f} kpps")
        out["ports"] = env.ulvs_ports()
    out["notes"] = notes
    return out


BURN = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
n, end = 0, time.perf_counter() + float(sys.argv[2])
while time.perf_counter() < end:
    n += 1
print(n)
"""


def burn(cpu: int, seconds: float) -> int:
    p = subprocess.run([sys.executable, "-c", BURN, str(cpu), str(seconds)], capture_output=True,
                       text=True, check=True)
    return int(p.stdout)


def left(rates: list[int | None], seconds: float) -> dict[str, Any]:
    """The share of the receive CPU a busy loop keeps under each flood, the daemon stopped."""
    ncpu = os.cpu_count() or 1
    if ncpu < 2:
        raise bn.BenchError("--left needs two CPUs (the generator's and the director's)")
    cpu = (bn.GEN_CPU + 1) % ncpu          # the first CPU of bench_netns's RPS mask
    s = replace(bn.Settings.make(True), groups=("pps",))
    notes: list[str] = []
    out: dict[str, Any] = {"cpu": cpu, "share": {}}
    with bn.fresh_env("ulvs", s, notes, dr=False) as env:
        env.start_servers({"pps"})
        env.start_ulvs("-m")
        assert env.ulvs_proc is not None
        gen = env.generator()
        cfg, nflows = bn.udp_flows_cfg(gen.dmac, 1000, env.lab.client_addrs[0])
        env.establish(cfg, nflows)
        idle = burn(cpu, seconds)
        os.kill(env.ulvs_proc.pid, signal.SIGSTOP)      # the daemon we started, by PID
        try:
            for rate in rates:
                proc = gen._start(cfg, rate, seconds + 1.0)
                try:
                    time.sleep(0.5)
                    share = burn(cpu, seconds) / idle
                finally:
                    env.procs.stop(proc)
                out["share"][str(rate or "full")] = round(share, 3)
                bn.progress(f"  flood at {'full speed' if rate is None else f'{rate / 1e3:.0f} kpps'}: "
                            f"a busy loop on CPU {cpu} keeps {share:.0%} of its idle speed")
        finally:
            os.kill(env.ulvs_proc.pid, signal.SIGCONT)
    out["notes"] = notes
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rates", default="20000,80000", help="offered pps, comma-separated")
    ap.add_argument("--configs", default="auto,v3,lanes,lanes:300",
                    help="RING or RING:PACE, comma-separated (default auto,v3,lanes,lanes:300)")
    ap.add_argument("--seconds", type=float, default=2.0, help="measured window of a trial")
    ap.add_argument("--trials", type=int, default=3, help="trials per rate (median)")
    ap.add_argument("--left", action="store_true",
                    help="instead: the receive CPU's share a busy loop keeps under each flood (and at "
                         "the generator's full speed), the daemon stopped")
    args = ap.parse_args(argv)
    try:
        rates = [int(x) for x in args.rates.split(",") if x]
    except ValueError:
        ap.error(f"--rates: not a list of integers: {args.rates!r}")
    configs = [c for c in args.configs.split(",") if c]
    for c in configs:
        ring, _, pace = c.partition(":")
        if ring not in ("auto", "v3", "lanes") or (pace and not pace.isdigit()):
            ap.error(f"--configs: {c!r} is not RING or RING:PACE (RING auto, v3 or lanes, PACE in us)")
    if not rates or min(rates) < 1000 or args.seconds <= 0 or args.trials < 1:
        ap.error("--rates of at least 1000 pps, --seconds > 0 and --trials >= 1")
    if os.geteuid() != 0:
        print("bench_cpu: needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.left:
        res = left([*rates, None], args.seconds)
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            for k, v in res["share"].items():
                print(f"flood {k:>8}: {v:.0%} of CPU {res['cpu']} left to a user process")
        return 0
    result = {c: measure(c, rates, args.seconds, args.trials) for c in configs}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{'config':<12}" + "".join(f"{r / 1e3:>10.0f}k" for r in rates) + "   (us of CPU per packet)")
        for c, r in result.items():
            print(f"{c:<12}" + "".join(f"{r['rates'][str(x)]['us_per_pkt']:>11.2f}" for x in rates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
