#!/usr/bin/env python3
"""Scheduler benchmark: decision cost, simulated load balance, and disruption on dest changes.

(a) decision cost: ns per ``schedule()`` at 8, 64 and 512 dests, with connection counters
    changing between decisions as the core would change them (bind, close, expire, each followed
    by ``conn_changed``); median over repetitions of the mean per call.
(b) a discrete-event simulation: heterogeneous processor-sharing servers (weight = capacity),
    Poisson arrivals, exponential work, a mix of short requests and long-lived connections, and
    IPVS-like counters (active while open, inactive for a TIME_WAIT period after).  Reports the
    utilisation imbalance (max/mean), Jain's fairness index of utilisations and the p99
    response time, with a fixed seed.
(c) disruption: the fraction of flows whose dest changes when one of 10 dests is removed or
    one is added (fresh scheduler state for each run, flows bound as they are scheduled).

Writes bench/results/sched.md and PNG plots; ``--json`` prints the figures as JSON on stdout.
Progress goes to stderr.  ``--quick`` runs a reduced version (< 1 minute).
"""

from __future__ import annotations

import argparse
import heapq
import ipaddress
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ulvs.core  # noqa: E402,F401  (import the core before the schedulers: engine imports ulvs.sched)
from ulvs.core.model import Dest, DestConfig, Proto, Service, ServiceConfig  # noqa: E402
from ulvs.sched import create, names  # noqa: E402
from ulvs.sched.base import Scheduler  # noqa: E402
from ulvs.sched.twos import TwoRandomChoices  # noqa: E402

SIZES = (8, 64, 512)
SEED = 20240611


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_scheduler(name: str, seed: int) -> Scheduler:
    if name == "twos":
        return TwoRandomChoices(rng=random.Random(seed))
    return create(name)


class Svc:
    """A service driven the way the core drives it (see ulvs.core.engine)."""

    def __init__(self, name: str, seed: int = SEED) -> None:
        self.sched = make_scheduler(name, seed)
        self.svc = Service(ServiceConfig(Proto.TCP, ipaddress.IPv4Address("10.77.1.1"), 80, sched=name),
                           self.sched)

    @property
    def dests(self) -> list[Dest]:
        return self.svc.dests

    def add(self, addr: int, w: int) -> Dest:
        d = Dest(DestConfig(ipaddress.IPv4Address(addr), 80, weight=w), self.svc, weight=w, last_weight=w)
        d.index = len(self.dests)
        self.dests.append(d)
        self.sched.add_dest(self.dests, d)
        return d

    def remove(self, d: Dest) -> None:
        self.dests.remove(d)
        for i, x in enumerate(self.dests):
            x.index = i
        d.removed = True
        self.sched.del_dest(self.dests, d)


# ---------------------------------------------------------------------------------------------
# (a) decision cost
# ---------------------------------------------------------------------------------------------
def timer_overhead_ns() -> float:
    pc = time.perf_counter_ns
    samples = []
    for _ in range(5):
        t = 0
        for _ in range(20000):
            t0 = pc()
            t += pc() - t0
        samples.append(t / 20000)
    return min(samples)


def decision_cost(name: str, n: int, reps: int, calls: int, overhead: float) -> tuple[float, float]:
    """(ns per schedule(), ns per conn_changed()) at n dests: medians over reps of the means."""
    rng = random.Random(SEED + n)
    s = Svc(name)
    for i in range(n):
        w = rng.randint(1, 10)
        d = s.add(0x0A000001 + i, w)
        d.activeconns = rng.randint(0, 2 * w)
        d.inactconns = rng.randint(0, 8 * w)
        s.sched.conn_changed(d)
    sched = s.sched
    dests = s.dests
    caddrs = [rng.getrandbits(32) for _ in range(calls)]
    cports = [rng.randrange(1024, 65536) for _ in range(calls)]
    vaddrs = [0xC6330000 + rng.randrange(256) for _ in range(calls)]
    picks = [rng.randrange(n) for _ in range(2 * calls)]
    for k in range(min(calls, 500)):                          # warm up (lazy table builds)
        sched.schedule(caddrs[k], cports[k], vaddrs[k], 80)
    pc = time.perf_counter_ns
    sched_means, upd_means = [], []
    for _ in range(reps):
        t_sched = t_upd = 0
        n_upd = 0
        for k in range(calls):
            t0 = pc()
            chosen = sched.schedule(caddrs[k], cports[k], vaddrs[k], 80)
            t1 = pc()
            t_sched += t1 - t0
            # The core binds the new conn, and elsewhere a conn closes and one expires.
            if chosen is not None:
                chosen.activeconns += 1
                t0 = pc()
                sched.conn_changed(chosen)
                t_upd += pc() - t0
                n_upd += 1
            x = dests[picks[2 * k]]
            if x.activeconns:
                x.activeconns -= 1
                x.inactconns += 1
                t0 = pc()
                sched.conn_changed(x)
                t_upd += pc() - t0
                n_upd += 1
            y = dests[picks[2 * k + 1]]
            if y.inactconns:
                y.inactconns -= 1
                t0 = pc()
                sched.conn_changed(y)
                t_upd += pc() - t0
                n_upd += 1
        sched_means.append(t_sched / calls - overhead)
        upd_means.append(t_upd / max(n_upd, 1) - overhead)
    return statistics.median(sched_means), statistics.median(upd_means)


# ---------------------------------------------------------------------------------------------
# (b) discrete-event simulation
# ---------------------------------------------------------------------------------------------
CAPACITIES = (1, 1, 1, 2, 2, 3, 4, 6)      # work units per second; weight = capacity
SHORT_WORK = 0.010                           # mean work of a short request (s at capacity 1)
LONG_FRACTION = 0.10                         # share of long-lived connections
LONG_WORK = 0.020                            # mean work of a long-lived connection's request
LONG_HOLD = 10.0                             # mean time a long-lived connection stays open (s)
TIME_WAIT = 2.0                              # inactive period after close (s, scaled down)
LOAD = 0.8                                   # offered load / total capacity
CLIENTS = 5000
ORIGINS = 200                                # destination addresses (dh, lblc, lblcr keys)


@dataclass
class SimResult:
    imbalance: float
    jain: float
    p99_ms: float
    rejected: float
    utilisation: list[float]


class _Server:
    __slots__ = ("cap", "jobs", "v", "last", "version", "busy")

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.jobs: list[tuple[float, int]] = []    # (virtual finish, conn id)
        self.v = 0.0                                 # work attained by every job in service
        self.last = 0.0
        self.version = 0
        self.busy = 0.0

    def advance(self, t: float, t_start: float, t_stop: float) -> None:
        if self.jobs:
            dt = t - self.last
            self.v += dt * self.cap / len(self.jobs)
            self.busy += max(0.0, min(t, t_stop) - max(self.last, t_start))
        self.last = t


def simulate(name: str, arrivals: int, seed: int = SEED) -> SimResult:
    rng = random.Random(seed)
    total_cap = sum(CAPACITIES)
    mean_work = (1 - LONG_FRACTION) * SHORT_WORK + LONG_FRACTION * LONG_WORK
    rate = LOAD * total_cap / mean_work
    horizon = arrivals / rate
    warmup = 0.1 * horizon
    # Concurrent open connections per server ~ rate * share * (hold + work); ovf reads weights
    # as connection capacities, so it gets weights scaled to ~1.5x the expected active conns.
    mean_open = rate * (LONG_FRACTION * LONG_HOLD + mean_work)
    ovf_scale = max(1, round(1.5 * mean_open / total_cap))
    scale = ovf_scale if name == "ovf" else 1
    s = Svc(name, seed)
    servers = []
    for i, cap in enumerate(CAPACITIES):
        s.add(0x0A000001 + i, cap * scale)
        servers.append(_Server(float(cap)))
    sched = s.sched
    dests = s.dests
    clients = [rng.getrandbits(32) for _ in range(CLIENTS)]
    origins = [0xC6330000 + rng.randrange(1 << 16) for _ in range(ORIGINS)]
    timer: Callable[[float], None] | None = getattr(sched, "handle_timer", None)

    events: list[tuple[float, int, int, int, int]] = []   # (t, seq, kind, a, b)
    ARRIVE, DONE, CLOSE, EXPIRE = 0, 1, 2, 3
    seq = 0
    conn_dest: dict[int, int] = {}
    conn_start: dict[int, float] = {}
    long_state: dict[int, int] = {}           # bit 1: work done, bit 2: hold over
    responses: list[float] = []
    rejected = 0
    offered = 0

    def push(t: float, kind: int, a: int = 0, b: int = 0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, a, b))

    def reschedule(si: int, t: float) -> None:
        srv = servers[si]
        srv.version += 1
        if srv.jobs:
            push(t + (srv.jobs[0][0] - srv.v) * len(srv.jobs) / srv.cap, DONE, si, srv.version)

    def close(cid: int, t: float) -> None:
        d = dests[conn_dest[cid]]
        d.activeconns -= 1
        d.inactconns += 1
        sched.conn_changed(d)
        push(t + rng.expovariate(1 / TIME_WAIT), EXPIRE, conn_dest.pop(cid))

    push(rng.expovariate(rate), ARRIVE)
    next_timer = 0.0
    cid = 0
    while events:
        t, _, kind, a, b = heapq.heappop(events)
        if kind == ARRIVE:
            nxt = t + rng.expovariate(rate)
            if nxt < horizon:
                push(nxt, ARRIVE)
            if timer is not None and t >= next_timer:
                timer(t)
                next_timer = t + 60.0
            cid += 1
            is_long = rng.random() < LONG_FRACTION
            work = rng.expovariate(1 / (LONG_WORK if is_long else SHORT_WORK))
            d = sched.schedule(clients[rng.randrange(CLIENTS)], rng.randrange(1024, 65536),
                               origins[rng.randrange(ORIGINS)], 80)
            if t >= warmup:
                offered += 1
            if d is None:
                if t >= warmup:
                    rejected += 1
                continue
            d.activeconns += 1
            sched.conn_changed(d)
            si = d.index
            conn_dest[cid] = si
            conn_start[cid] = t
            srv = servers[si]
            srv.advance(t, warmup, horizon)
            heapq.heappush(srv.jobs, (srv.v + work, cid))
            reschedule(si, t)
            if is_long:
                long_state[cid] = 0
                push(t + rng.expovariate(1 / LONG_HOLD), CLOSE, cid)
        elif kind == DONE:
            srv = servers[a]
            if b != srv.version:
                continue
            srv.advance(t, warmup, horizon)
            _, done = heapq.heappop(srv.jobs)
            reschedule(a, t)
            start = conn_start.pop(done)
            if start >= warmup:
                responses.append(t - start)
            st = long_state.get(done)
            if st is None:
                close(done, t)
            elif st & 2:
                del long_state[done]
                close(done, t)
            else:
                long_state[done] = st | 1
        elif kind == CLOSE:
            st = long_state[a]
            if st & 1:
                del long_state[a]
                close(a, t)
            else:
                long_state[a] = st | 2
        else:  # EXPIRE
            d = dests[a]
            d.inactconns -= 1
            sched.conn_changed(d)
    span = horizon - warmup
    util = [srv.busy / span for srv in servers]
    mean_u = statistics.fmean(util)
    imbalance = max(util) / mean_u if mean_u > 0 else math.inf
    jain = sum(util) ** 2 / (len(util) * sum(u * u for u in util)) if any(util) else 0.0
    responses.sort()
    p99 = responses[min(len(responses) - 1, int(0.99 * len(responses)))] * 1e3 if responses else math.nan
    return SimResult(imbalance, jain, p99, rejected / max(offered, 1), util)


# ---------------------------------------------------------------------------------------------
# (c) disruption
# ---------------------------------------------------------------------------------------------
def _mapping(name: str, weights: list[tuple[int, int]], flows: list[tuple[int, int, int]]) -> list[int]:
    s = Svc(name)
    # ovf reads weights as connection capacities: room for every flow, as in the simulation.
    scale = 1 + 2 * len(flows) // len(weights) if name == "ovf" else 1
    for addr, w in weights:
        s.add(addr, w * scale)
    out = []
    for caddr, cport, vaddr in flows:
        d = s.sched.schedule(caddr, cport, vaddr, 80)
        if d is None:
            out.append(-1)
            continue
        d.activeconns += 1
        s.sched.conn_changed(d)
        out.append(int(d.config.daddr))
    return out


def disruption(name: str, n_flows: int) -> tuple[float, float]:
    rng = random.Random(SEED + 7)
    flows = [(rng.getrandbits(32), rng.randrange(1024, 65536), 0xC6330000 + rng.randrange(1 << 16))
             for _ in range(n_flows)]
    ten = [(0x0A000001 + i, 1) for i in range(10)]
    base = _mapping(name, ten, flows)
    removed = _mapping(name, ten[:3] + ten[4:], flows)
    added = _mapping(name, ten + [(0x0A000001 + 10, 1)], flows)

    def frac(other: list[int]) -> float:
        return sum(1 for x, y in zip(base, other, strict=True) if x != y) / n_flows

    return frac(removed), frac(added)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def write_markdown(path: Path, res: dict[str, dict[str, Any]], meta: dict[str, Any]) -> None:
    lines = [
        "# Scheduler benchmark (bench/bench_sched.py)",
        "",
        f"Mode: {'quick' if meta['quick'] else 'full'}; Python {meta['python']}; "
        f"{meta['reps']} repetitions x {meta['calls']} decisions per size; "
        f"simulation {meta['arrivals']} arrivals; disruption {meta['flows']} flows; seed {SEED}.",
        "",
        "| scheduler | ns @8 | ns @64 | ns @512 | conn_changed ns @512 | imbalance (max/mean) | "
        "Jain | p99 ms | rejected | remap remove 1/10 | remap add 1 |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, r in res.items():
        dn = r["decision_ns"]
        lines.append(
            f"| {name} | {dn['8']:.0f} | {dn['64']:.0f} | {dn['512']:.0f} | {r['update_ns']['512']:.0f} | "
            f"{r['imbalance']:.3f} | {r['jain']:.3f} | {r['p99_ms']:.1f}"
            f"{' †' if max(r['utilisation']) >= 0.99 else ''} | {r['rejected']:.1%} | "
            f"{r['disruption_remove_one']:.3f} | {r['disruption_add_one']:.3f} |")
    lines += [
        "",
        "Decision cost: mean ns per `schedule()` call (timer overhead subtracted), median of the",
        "repetitions; between decisions the chosen dest gets a conn, a random dest closes one and",
        "another expires one, each followed by `conn_changed` (its cost is the conn_changed column).",
        "",
        f"Simulation: {len(CAPACITIES)} processor-sharing servers with capacities {list(CAPACITIES)} "
        f"(weight = capacity; ovf gets weights scaled to connection capacities), load {LOAD}, "
        f"Poisson arrivals, exponential work (short {SHORT_WORK * 1e3:.0f} ms, "
        f"{LONG_FRACTION:.0%} long-lived conns with {LONG_WORK * 1e3:.0f} ms work held open "
        f"~{LONG_HOLD:.0f} s), TIME_WAIT {TIME_WAIT:.0f} s as inactive conns, {CLIENTS} clients, "
        f"{ORIGINS} destination addresses (the dh/lblc/lblcr key).  Utilisation = busy fraction "
        "after a 10% warm-up; imbalance = max/mean utilisation; Jain = (sum u)^2 / (n sum u^2); "
        "p99 = 99th percentile of request completion time; rejected = no dest available.  "
        "† = some server saturated (utilisation >= 0.99): its queue grows through the run, so "
        "that p99 depends on the run length.",
        "",
        "Disruption: flows scheduled on 10 equal dests vs. the same flows with dest 4 removed or "
        "an 11th added (fresh scheduler each time, each flow bound as scheduled; ovf weights are "
        "connection capacities with room for all flows); only the hash schedulers map flows "
        "statelessly, the others reshuffle by design.",
        "",
        "Plots: sched_decision_ns.png, sched_simulation.png, sched_disruption.png.",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(outdir: Path, res: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names_ = list(res)
    x = range(len(names_))
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.27
    for j, n in enumerate(SIZES):
        ax.bar([i + (j - 1) * width for i in x], [res[k]["decision_ns"][str(n)] for k in names_], width,
               label=f"{n} dests")
    ax.axhline(5000, color="red", linestyle="--", linewidth=1, label="5 µs budget")
    ax.set_yscale("log")
    ax.set_xticks(list(x), names_)
    ax.set_ylabel("ns per schedule()")
    ax.set_title("Scheduler decision cost")
    ax.legend()
    fig.tight_layout()
    fig.savefig(outdir / "sched_decision_ns.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, key, label in zip(axes, ("imbalance", "jain", "p99_ms"),
                              ("utilisation max/mean", "Jain's fairness index", "p99 response (ms)"),
                              strict=True):
        vals = [res[k][key] for k in names_]
        ax.bar(list(x), vals, color="tab:blue")
        ax.set_xticks(list(x), names_, rotation=60)
        ax.set_title(label)
        if key == "p99_ms":
            ax.set_yscale("log")
    fig.suptitle("Simulated heterogeneous cluster")
    fig.tight_layout()
    fig.savefig(outdir / "sched_simulation.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(11, 4))
    ax.bar([i - 0.2 for i in x], [res[k]["disruption_remove_one"] for k in names_], 0.4,
           label="remove 1 of 10")
    ax.bar([i + 0.2 for i in x], [res[k]["disruption_add_one"] for k in names_], 0.4, label="add 1 to 10")
    ax.axhline(0.1, color="gray", linestyle=":", linewidth=1, label="1/N")
    ax.set_xticks(list(x), names_)
    ax.set_ylabel("fraction of flows remapped")
    ax.set_title("Disruption on a dest change")
    ax.legend()
    fig.tight_layout()
    fig.savefig(outdir / "sched_disruption.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes (< 1 minute)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                    help="directory for sched.md and the plots (default bench/results)")
    ap.add_argument("--only", nargs="*", default=None, help="restrict to these schedulers")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)

    reps = 5
    calls = 1500 if args.quick else 20000
    arrivals = 60000 if args.quick else 600000
    flows = 3000 if args.quick else 20000
    sched_names = args.only or names()
    t_start = time.perf_counter()
    overhead = timer_overhead_ns()
    log(f"timer overhead {overhead:.0f} ns per perf_counter_ns pair (subtracted)")

    res: dict[str, dict[str, Any]] = {}
    for name in sched_names:
        t0 = time.perf_counter()
        r: dict[str, Any] = {"decision_ns": {}, "update_ns": {}}
        for n in SIZES:
            dns, uns = decision_cost(name, n, reps, calls, overhead)
            r["decision_ns"][str(n)] = round(dns, 1)
            r["update_ns"][str(n)] = round(uns, 1)
        sim = simulate(name, arrivals)
        r.update(imbalance=round(sim.imbalance, 4), jain=round(sim.jain, 4), p99_ms=round(sim.p99_ms, 2),
                 rejected=round(sim.rejected, 4), utilisation=[round(u, 4) for u in sim.utilisation])
        rem, add = disruption(name, flows)
        r.update(disruption_remove_one=round(rem, 4), disruption_add_one=round(add, 4))
        res[name] = r
        log(f"{name:6s} ns@8/64/512 = {r['decision_ns']['8']:.0f}/{r['decision_ns']['64']:.0f}/"
            f"{r['decision_ns']['512']:.0f}  imbalance {sim.imbalance:.3f} jain {sim.jain:.3f} "
            f"p99 {sim.p99_ms:.1f} ms rejected {sim.rejected:.1%}  remap -1 {rem:.3f} +1 {add:.3f}  "
            f"({time.perf_counter() - t0:.1f} s)")

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"quick": args.quick, "python": sys.version.split()[0], "reps": reps, "calls": calls,
            "arrivals": arrivals, "flows": flows}
    write_markdown(args.out / "sched.md", res, meta)
    if not args.no_plots:
        plot(args.out, res)
    log(f"wrote {args.out / 'sched.md'} in {time.perf_counter() - t_start:.1f} s")
    if args.json:
        print(json.dumps({"schedulers": res, "meta": meta}, indent=1))
    else:
        print((args.out / "sched.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
