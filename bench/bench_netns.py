#!/usr/bin/env python3
"""Side-by-side dataplane benchmark on the netns lab: ulvs, nftables DNAT, HAProxy, kernel routing.

Every system is measured on a fresh lab (``ulvs.lab.Lab``: client ns -> director ns -> rs1..rs3)
with the same generators and the same real servers:

  ulvs            ``ulvs run`` (afpacket backend) in the director: NAT (``-m``) services; the DR
                  figure on a second, DR lab (``-g``)
  nft_dnat        kernel nftables in the director: ``dnat to numgen inc mod 3 map {...}`` in a nat
                  prerouting chain; replies come back through the director (the real servers'
                  default route), so conntrack undoes the DNAT; no masquerade
  haproxy         HAProxy ``mode tcp``, ``balance roundrobin`` (one thread), listening on the VIP
                  added to the director's ``lo``; the servers see the director's address
  kernel_forward  plain routing: a DR lab (VIP on every server's ``lo``) with the director routing
                  the VIP to rs1: the upper limit of the path

Figures per system (null + a "notes" entry where one does not apply or fails):

  pps_by_flows    64-byte UDP datagrams (60 B frames + FCS) on established flows, 1 / 1,000 /
                  100,000 flows: the highest rate with < 0.1 % loss.  pps_nat is the 1,000-flow
                  point; pps_dr the same on the DR lab (ulvs; kernel_forward's routing has no
                  NAT/DR split, so its pps_dr repeats that figure).
  syn_cps         SYN-only flood, a new 5-tuple per packet (one conn-table insert each): the
                  highest SYN rate reaching the servers with < 0.1 % loss.
  http_cps        wrk, one new connection per request (``Connection: close``), nginx servers.
  http_rps_keepalive  wrk, keep-alive.  Both with 16 connections, where added latency shows.
  http_cps_c256 / http_rps_keepalive_c256  the same with 256 connections: enough that every
                  system here runs out of CPU first (its capacity rather than its latency).
  bulk_gbps / bulk_gbps_4  iperf3, 1 and 4 streams, Gbit/s received.
  lat_p50_us / lat_p99_us  wrk latency percentiles of keep-alive requests paced (wrk ``delay()``)
                  to ~50 % of the system's own keep-alive capacity; kernel_forward is the baseline.

Packet rates: bench/tools/pktgen.c (built with gcc; sendmmsg batches paced against the clock,
since trafgen cannot pace above ~115 kpps) in the client namespace, pinned to CPU 0; the director's
receive processing is steered to the other CPU(s) by RPS on its two interfaces (so the generator
and the system under test do not share a core for kernel work; ``--no-rps`` turns that off).
Real servers drop the test packets at netdev ingress (no replies, no ICMP).  A trial offers a
rate for warm-up + window + drain; sent and received packets are read from the lan namespace's
bridge ports (``c-client`` rx = what the client sent, ``s-rsN`` tx = what reached the servers)
at the window's edges and after the drain.  A trial passes when both the in-window loss and
the loss after the drain are below 0.1 %.  Search: one probe at full generator speed, then a
geometric bisection between a floor and the failing rates (full mode: a step that fails by
less than 2 % loss is run once more); the figure is the delivered rate of the highest passing
rate (full mode: the median of 3 confirmation trials).  A system that never
loses at the generator's top speed is reported at that speed with a "generator-bound" note.

Output: ``--json`` prints ``{SYSTEM: {figures...}, "notes": [...], "meta": {...}}``; the markdown
table with ratios goes to bench/results/netns.md (and the JSON to netns.json), bar plots to
bench/results/netns_*.png; progress lines on stderr.  ``--quick``: shorter trials, fewer steps,
1 and 1,000 flows, < 3 minutes; a full run takes about 17 minutes on this machine.

Needs root, iproute2, nftables, gcc, wrk, nginx, haproxy and iperf3 (see
``SYS_TOOLS`` in the Makefile).  A missing tool turns its figures into null with a note.  Every
process the bench starts is stopped by PID and every namespace removed (the Lab context manager),
also on Ctrl-C, SIGTERM or errors.

Usage: bench/bench_netns.py [--quick] [--json] [--systems ulvs,ulvs_w2,nft_dnat,...]
                            [--figures pps,syn,http,lat,bulk] [--out DIR] [--no-plots] [--no-rps]
                            [--rx-ring auto|v3|lanes]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ulvs.lab import Lab  # noqa: E402

SYSTEMS = ("ulvs", "ulvs_w2", "nft_dnat", "haproxy", "kernel_forward")
ULVS_WORKERS = {"ulvs": 1, "ulvs_w2": 2}   # ulvs_w2: ``ulvs run --workers 2`` (PACKET_FANOUT)
FIGURES = (
    "pps_nat",
    "pps_dr",
    "syn_cps",
    "http_cps",
    "http_rps_keepalive",
    "http_cps_c256",
    "http_rps_keepalive_c256",
    "bulk_gbps",
    "bulk_gbps_4",
    "lat_p50_us",
    "lat_p99_us",
    "overload_ratio",
)
GROUPS = ("pps", "syn", "http", "lat", "bulk")
VIP = Lab.vip
PPS_PORT = 9000  # UDP, counted and dropped at the servers
HIGH_CONNS = 256  # wrk connections of the *_c256 HTTP figures
RETRY_BELOW = 0.02  # a search trial failing with less loss than this is run once more (full runs)
SYN_PORT = 9001  # TCP SYNs, counted and dropped at the servers
IPERF_PORT = 5201
HTTP_PORT = 80
LOSS_MAX = 0.001  # "< 0.1 % loss", counted after the drain
WINDOW_TOL = 0.01  # in the window, delivered may trail offered by this much (samples jitter)
DUP_MAX = 0.01  # after the drain, delivered may exceed offered by this much (counter jitter)
GEN_CPU = 0  # the generator's core
NFLOW_RATE = 20_000  # pps of the pass that establishes flows before a sweep
REQUIRED = {
    "pps": ("gcc",),
    "syn": ("gcc",),
    "http": ("wrk", "nginx"),
    "lat": ("wrk", "nginx"),
    "bulk": ("iperf3",),
}


class BenchError(RuntimeError):
    """A measurement could not be made; the message goes into "notes"."""


# --- settings and progress -------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    quick: bool
    flows: tuple[int, ...]
    warm: float  # s of traffic before a trial's window
    window: float  # s of the measured window
    drain: float  # s after the generator stops before the final count
    steps: int  # bisection steps after the full-speed probe
    confirm: int  # confirmation trials at the found rate (1 = none)
    floor_pps: float  # lowest rate the search tries
    wrk_secs: int
    wrk_conns: int
    wrk_trials: int
    iperf_secs: int
    iperf_trials: int
    lat_secs: int
    rps: bool = True
    groups: tuple[str, ...] = GROUPS
    rx_ring: str = "auto"       # ulvs run --rx-ring
    tx_ring: int = 4096         # ulvs run --tx-ring
    rx_pace: int | None = None  # ulvs run --rx-pace (us); None: ulvs's default
    retry_below: float = RETRY_BELOW   # 0: a failing search step is not run again

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(
                quick=True,
                flows=(1, 1000),
                warm=0.25,
                window=0.6,
                drain=0.25,
                steps=4,
                confirm=1,
                floor_pps=1000,
                wrk_secs=1,
                wrk_conns=16,
                wrk_trials=1,
                iperf_secs=2,
                iperf_trials=1,
                lat_secs=2,
                retry_below=0.0,   # quick figures are single trials anyway; keeps it < 3 min
            )
        return cls(
            quick=False,
            flows=(1, 1000, 100_000),
            warm=0.5,
            window=1.5,
            drain=0.3,
            steps=7,
            confirm=3,
            floor_pps=1000,
            wrk_secs=4,
            wrk_conns=16,
            wrk_trials=3,
            iperf_secs=3,
            iperf_trials=3,
            lat_secs=4,
        )


_T0 = time.monotonic()


def progress(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


# --- processes -------------------------------------------------------------------------------------


def stop_proc(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 5.0) -> int | None:
    """Stop one process we started, by its PID: ``sig``, then SIGKILL after ``grace`` seconds.

    ``Lab.popen`` starts every process as the leader of its own session, so the signal goes to
    the process group whose id is that PID: nginx forks workers that must stop too."""

    def signal_group(s: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, s)

    if proc.poll() is None:
        signal_group(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_group(signal.SIGKILL)
            proc.wait(timeout=10)
    # the leader is gone; workers of its group that outlived it get the same treatment
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, 0)
        signal_group(signal.SIGKILL)
    return proc.returncode


class Procs:
    """Background processes of one system, stopped by PID in reverse start order."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.procs: list[tuple[str, subprocess.Popen[bytes], int]] = []

    def start(
        self, role: str, argv: list[str], name: str, log: Path, stop_sig: int = signal.SIGTERM
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as f:
            proc = self.lab.popen(role, argv, stdout=f, stderr=subprocess.STDOUT)
        self.procs.append((name, proc, stop_sig))
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        for i, (_n, p, sig) in enumerate(self.procs):
            if p is proc:
                stop_proc(p, sig)
                del self.procs[i]
                return

    def stop_all(self) -> None:
        while self.procs:
            _n, p, sig = self.procs.pop()
            with contextlib.suppress(Exception):
                stop_proc(p, sig)


def wait_listening(
    lab: Lab, role: str, port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 10.0
) -> None:
    """Wait until something listens on TCP ``port`` in ``role`` (``proc`` must stay alive)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = lab.run(role, ["ss", "-Hltn", f"sport = :{port}"], timeout=10).stdout
        if out.strip():
            return
        if proc.poll() is not None:
            raise BenchError(f"{role}: the server for port {port} exited ({proc.returncode}): {tail(log)}")
        time.sleep(0.05)
    raise BenchError(f"{role}: nothing listens on port {port} after {timeout:.0f}s: {tail(log)}")


def tail(path: Path, n: int = 400) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip().replace("\n", " | ")
    except OSError:
        return ""


# --- counters --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    t: float
    sent: int  # frames the client put on the wire (lan's c-client rx)
    got: int  # frames delivered to the real servers (lan's s-rsN tx)


def sample(lab: Lab) -> Sample:
    t0 = time.monotonic()
    proc = subprocess.run(
        ["ip", "-n", lab.ns("lan"), "-s", "-j", "link", "show"], capture_output=True, text=True, timeout=10
    )
    t1 = time.monotonic()
    if proc.returncode != 0:
        raise BenchError(f"ip -s link in lan: {proc.stderr.strip()}")
    sent = got = 0
    for link in json.loads(proc.stdout):
        name, st = link.get("ifname", ""), link.get("stats64", {})
        if name == "c-client":
            sent = int(st["rx"]["packets"])
        elif name.startswith("s-rs"):
            got += int(st["tx"]["packets"])
    return Sample((t0 + t1) / 2, sent, got)


def link_rx(lab: Lab, role: str, ifname: str) -> int:
    out = lab.run(role, ["ip", "-s", "-j", "link", "show", "dev", ifname]).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


# --- packet generator ------------------------------------------------------------------------------


def udp_flows_cfg(dmac: str, flows: int, src: str) -> tuple[list[str], int]:
    """pktgen arguments: 60-byte UDP frames to VIP:PPS_PORT cycling over ``flows`` source ports
    (two source addresses above 60,000 flows, see bench/tools/pktgen.c).  Returns the arguments
    and the exact number of distinct flows."""
    if flows > 60000:
        ports = flows // 2 + (1 - (flows // 2) % 2)
        n = 2 * ports
    else:
        n = max(1, flows)
    return ["-m", "udp", "-d", dmac, "-s", src, "-D", VIP, "-p", str(PPS_PORT), "-f", str(n)], n


def syn_cfg(dmac: str, trial_no: int) -> list[str]:
    """SYNs from 10.77.(100+k).1-254 and ports 1024-65534 (coprime periods: 16 M distinct tuples
    per trial, and a different /24 per trial, so every SYN is a new connection)."""
    return ["-m", "syn", "-d", dmac, "-D", VIP, "-p", str(SYN_PORT), "-T", str(100 + trial_no % 150)]


PKTGEN_SRC = ROOT / "bench" / "tools" / "pktgen.c"


def build_pktgen(tmp: Path) -> Path:
    """Compile bench/tools/pktgen.c (gcc) into ``tmp``."""
    exe = tmp / "pktgen"
    if not exe.exists():
        p = subprocess.run(["gcc", "-O2", "-o", str(exe), str(PKTGEN_SRC)], capture_output=True, text=True)
        if p.returncode != 0:
            raise BenchError(f"cannot build pktgen: {p.stderr.strip()[-300:]}")
    return exe


@dataclass
class Trial:
    rate: float | None  # requested pps (None = generator's full speed)
    offered: float  # measured in the window
    delivered: float
    loss_window: float
    loss_total: float

    @property
    def ok(self) -> bool:
        """Lossless (< 0.1 % after the drain) and sustained: in the window the servers got what
        was offered, within the jitter of the samples; this catches an overload that buffers (an
        RX ring) would otherwise hide for a short trial.  Delivering more than was offered is
        no pass either: frames forwarded twice, or a previous trial's backlog (seen with
        ``--workers 2`` in DR: 188 kpps delivered of 94 offered)."""
        return -DUP_MAX < self.loss_total < LOSS_MAX and self.loss_window < WINDOW_TOL

    def row(self) -> dict[str, Any]:
        return {
            "rate": None if self.rate is None else round(self.rate),
            "offered": round(self.offered),
            "delivered": round(self.delivered),
            "loss_window": round(self.loss_window, 5),
            "loss_total": round(self.loss_total, 6),
            "ok": self.ok,
        }


class Generator:
    """pktgen (bench/tools/pktgen.c) in the client namespace, one trial at a time, started and
    stopped by PID."""

    def __init__(self, lab: Lab, s: Settings, tmp: Path, procs: Procs) -> None:
        self.lab, self.s, self.tmp, self.procs = lab, s, tmp, procs
        self.dmac = lab.mac("director", lab.director_if_client)
        self.count = 0
        self.log = tmp / "pktgen.log"
        self.exe = build_pktgen(tmp)

    def _start(self, cfg: list[str], rate: float | None, seconds: float) -> subprocess.Popen[bytes]:
        """Start pktgen offering ``cfg`` at ``rate`` pps (None: full speed) for about ``seconds``
        (plus a margin: the trial stops it with SIGINT, by PID)."""
        argv = [
            "taskset",
            "-c",
            str(GEN_CPU),
            str(self.exe),
            "-i",
            self.lab.client_if,
            *cfg,
            "-r",
            str(0 if rate is None else max(1, int(rate))),
            "-t",
            f"{seconds + 2:.2f}",
        ]
        self.log.write_bytes(b"")
        return self.procs.start("client", argv, "pktgen", self.log, stop_sig=signal.SIGINT)

    def send(self, cfg: list[str], rate: float | None, seconds: float) -> None:
        """Offer ``cfg`` at ``rate`` for about ``seconds``, unmeasured (to establish flows)."""
        log = self.log
        proc = self._start(cfg, rate, seconds)
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end and proc.poll() is None:
                time.sleep(min(0.05, max(0.0, end - time.monotonic())))
            if proc.poll() is not None and proc.returncode != 0:
                raise BenchError(f"pktgen failed ({proc.returncode}): {tail(log)}")
        finally:
            self.procs.stop(proc)

    def trial(self, cfg: list[str], rate: float | None) -> Trial:
        s, lab, log = self.s, self.lab, self.log
        self.count += 1
        start = sample(lab)
        proc = self._start(cfg, rate, s.warm + s.window)
        try:
            time.sleep(s.warm)
            a = sample(lab)
            time.sleep(s.window)
            b = sample(lab)
            early = proc.poll()
        finally:
            self.procs.stop(proc)
        time.sleep(s.drain)
        end = sample(lab)
        if early is not None and early != 0:
            raise BenchError(f"pktgen failed ({early}): {tail(log)}")
        sent = b.sent - a.sent
        if sent <= 0:
            raise BenchError(f"the generator sent nothing in the window: {tail(log)}")
        dt = b.t - a.t
        total_sent = end.sent - start.sent
        return Trial(
            rate,
            sent / dt,
            (b.got - a.got) / dt,
            1 - (b.got - a.got) / sent,
            1 - (end.got - start.got) / total_sent,
        )

    def sweep(self, make_cfg: Callable[[], list[str]], label: str) -> dict[str, Any]:
        """Highest rate with < 0.1 % loss: a full-speed probe, then geometric bisection; a step
        that fails with a small loss (< ``Settings.retry_below``) is tried once more."""
        s = self.s
        trials: list[Trial] = []

        def run(rate: float | None) -> Trial:
            t = self.trial(make_cfg(), rate)
            trials.append(t)
            what = "full speed" if rate is None else f"{rate / 1e3:8.1f} kpps"
            progress(
                f"  {label}: {what}: offered {t.offered / 1e3:8.1f} delivered {t.delivered / 1e3:8.1f} "
                f"kpps, loss {100 * t.loss_window:6.2f}% / {100 * t.loss_total:6.2f}% "
                f"{'ok' if t.ok else 'FAIL'}"
            )
            return t

        probe = run(None)
        out: dict[str, Any] = {
            "probe_offered": round(probe.offered),
            "probe_delivered": round(probe.delivered),
            "generator_bound": False,
        }
        best: Trial | None = None
        if probe.ok:
            best = probe
            out["generator_bound"] = True
        else:
            lo, hi = s.floor_pps, max(probe.offered, s.floor_pps * 2)
            rate = min(0.95 * probe.delivered, 0.95 * hi)
            for _ in range(s.steps):
                if rate <= lo:
                    break
                t = run(rate)
                if not t.ok and t.loss_window < s.retry_below and t.loss_total < s.retry_below:
                    # A small loss may be the host's noise (one trial lost 1.1% at 133 kpps
                    # after 0.5% at 680k, and nftables's figure came out at 120k where it
                    # forwards 490k): once more before the search halves its range.
                    t = run(rate)
                if t.ok:
                    lo, best = rate, t
                else:
                    hi = rate
                if hi / lo < 1.03:
                    break
                rate = math.sqrt(lo * hi)
            if best is None:
                t = run(lo)
                if t.ok:
                    best = t
        if best is not None and s.confirm > 1:
            found = best.rate if best.rate is not None else best.offered
            for _ in range(3):  # step down at most 3 times if the confirmation fails
                conf = [run(best.rate) for _ in range(s.confirm)]
                if sum(c.ok for c in conf) * 2 > len(conf):
                    out["confirmed"] = [round(c.delivered) for c in conf]
                    best = replace(best, delivered=statistics.median([c.delivered for c in conf]))
                    break
                if best.rate is None:
                    best = replace(best, rate=best.offered)
                assert best.rate is not None
                best = replace(best, rate=best.rate * 0.9)
            else:
                best = None
                out["unconfirmed"] = round(found)     # the rate the search found
        out["pps"] = round(best.delivered) if best is not None else None
        out["trials"] = [t.row() for t in trials]
        return out


# --- the systems -----------------------------------------------------------------------------------


def ulvs_rules(method: str) -> str:
    servers = [f"10.77.2.{11 + i}" for i in range(3)]
    lines = []
    services = [("-u", PPS_PORT, ""), ("-t", SYN_PORT, "")]
    if method == "-m":
        services += [("-t", HTTP_PORT, ""), ("-t", IPERF_PORT, " -p 300")]  # iperf3: control + data
    for proto, port, extra in services:
        lines.append(f"-A {proto} {VIP}:{port} -s rr{extra}")
        lines += [f"-a {proto} {VIP}:{port} -r {rip}:{port} {method} -w 1" for rip in servers]
    return "\n".join(lines) + "\n"


NFT_DNAT = """table ip bench {{
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {vip} tcp dport {iperf} dnat to jhash ip saddr mod 3 map {{ {map} }}
    ip daddr {vip} dnat to numgen inc mod 3 map {{ {map} }}
  }}
}}
"""

HAPROXY_CFG = """global
    nbthread 1
    # 2 fds per proxied connection; stays under the 20,000-fd limit of this machine's sessions
    maxconn 8000
    log stdout format raw local0 err

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    maxconn 8000

frontend http
    bind {vip}:{http}
    default_backend web

backend web
    balance roundrobin
{web}

frontend iperf
    bind {vip}:{iperf}
    default_backend bulk

backend bulk
    balance source
{bulk}
"""

NGINX_CONF = """worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
user root root;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen {port} backlog=4096;
        location / {{ root {d}/www; }}
    }}
}}
"""

RS_DROP = """table netdev bench {{
  counter udp_pps {{ }}
  counter syn {{ }}
  chain ingress {{
    type filter hook ingress device "{dev}" priority -500; policy accept;
    udp dport {pps} counter name "udp_pps" drop
    tcp dport {syn} counter name "syn" drop
  }}
}}
"""


class Env:
    """One lab prepared for one system: servers, the system itself, and the measurements."""

    def __init__(self, lab: Lab, system: str, s: Settings, tmp: Path, notes: list[str]) -> None:
        self.lab, self.system, self.s, self.tmp, self.notes = lab, system, s, tmp, notes
        self.procs = Procs(lab)
        self.ulvs_proc: subprocess.Popen[bytes] | None = None
        self.ulvs_sock: Path | None = None
        self.ulvs_log = tmp / "ulvs.log"
        self.ulvs_runs = 0
        self.gen: Generator | None = None

    def note(self, msg: str) -> None:
        full = f"{self.system}: {msg}"
        if full not in self.notes:
            self.notes.append(full)
        progress(f"note: {full}")

    # -- common preparation --

    def prepare(self) -> None:
        lab = self.lab
        if self.s.rps:
            ncpu = os.cpu_count() or 1
            mask = ((1 << ncpu) - 1) & ~(1 << GEN_CPU)
            if mask:
                for ifname in (lab.director_if_client, lab.director_if_server):
                    p = lab.run(
                        "director",
                        ["sh", "-c", f"echo {mask:x} > /sys/class/net/{ifname}/queues/rx-0/rps_cpus"],
                    )
                    if p.returncode != 0:
                        self.note(f"RPS on {ifname} not set: {p.stderr.strip()}")
        # wrk opens a connection per request from one client address: three 4 s trials at
        # 12k req/s need 144k ports while each closed one sits in TIME_WAIT for 60 s.  Without
        # these the client runs out of ephemeral ports and the http_cps of the fast systems
        # collapses (seen: the kernel's 11k req/s measured as 675).
        for key, value in (("net.ipv4.ip_local_port_range", "1024 65535"), ("net.ipv4.tcp_tw_reuse", "1")):
            p = lab.run("client", ["sysctl", "-qw", f"{key}={value}"])
            if p.returncode != 0:
                self.note(f"client sysctl {key} not set: {p.stderr.strip()}")
        for rs in lab.real_servers:
            p = lab.run(
                rs, ["nft", "-f", "-"], input=RS_DROP.format(dev=lab.server_if, pps=PPS_PORT, syn=SYN_PORT)
            )
            if p.returncode != 0:
                raise BenchError(f"nft in {rs}: {p.stderr.strip()}")

    def start_servers(self, groups: set[str]) -> None:
        lab = self.lab
        started: list[tuple[str, int, subprocess.Popen[bytes], Path]] = []
        for rs in lab.real_servers:
            d = self.tmp / rs
            if groups & {"http", "lat"} and shutil.which("nginx"):
                (d / "www").mkdir(parents=True, exist_ok=True)
                (d / "tmp").mkdir(exist_ok=True)
                (d / "www" / "index.html").write_text(f"{rs}\n")
                (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, port=HTTP_PORT))
                log = d / "nginx.out"
                p = self.procs.start(
                    rs,
                    ["nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
                    "nginx",
                    log,
                )
                started.append((rs, HTTP_PORT, p, log))
            if "bulk" in groups and shutil.which("iperf3"):
                d.mkdir(parents=True, exist_ok=True)
                log = d / "iperf3.out"
                p = self.procs.start(rs, ["iperf3", "-s", "-p", str(IPERF_PORT)], "iperf3", log)
                started.append((rs, IPERF_PORT, p, log))
        for rs, port, p, log in started:
            wait_listening(lab, rs, port, p, log)

    # -- the systems --

    def start_ulvs(self, method: str) -> None:
        if self.ulvs_proc is not None:
            self.stop_ulvs()
        self.ulvs_runs += 1
        d = self.tmp / f"ulvs-{self.ulvs_runs}"
        d.mkdir()
        (d / "rules").write_text(ulvs_rules(method))
        log = d / "daemon.log"
        sock = d / "ulvs.sock"
        argv = [
            sys.executable,
            "-m",
            "ulvs",
            "run",
            "--config",
            str(d / "rules"),
            "--control-socket",
            str(sock),
            "--backend",
            "afpacket",
            "-i",
            self.lab.director_if_client,
            "-i",
            self.lab.director_if_server,
            "--workers",
            str(ULVS_WORKERS.get(self.system, 1)),
            "--rx-ring",
            self.s.rx_ring,
            "--tx-ring",
            str(self.s.tx_ring),
            *(["--rx-pace", str(self.s.rx_pace)] if self.s.rx_pace is not None else []),
        ]
        proc = self.procs.start("director", argv, "ulvs", log)
        deadline = time.monotonic() + 20
        while "ulvs running" not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                raise BenchError(f"ulvs run exited with {proc.returncode}: {tail(log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"ulvs run did not come up in 20 s: {tail(log)}")
            time.sleep(0.05)
        self.ulvs_proc, self.ulvs_sock, self.ulvs_log = proc, sock, log
        # next hops are resolved right after start; give the resolver a moment
        time.sleep(0.3)

    def stop_ulvs(self) -> None:
        if self.ulvs_proc is not None:
            self.procs.stop(self.ulvs_proc)
            rc = self.ulvs_proc.returncode
            if rc != 0:
                self.note(f"ulvs run exited with {rc} on SIGTERM: {tail(self.ulvs_log)}")
            self.ulvs_proc = None

    def ulvs_stats(self, proto: str, port: int) -> tuple[int, int] | None:
        """(connections, in-packets) of one ulvs service, from ``ulvsadm -L -n --stats``."""
        if self.ulvs_sock is None:
            return None
        out = self.lab.run(
            "director",
            [
                sys.executable,
                "-m",
                "ulvs.cli.ulvsadm",
                "--socket",
                str(self.ulvs_sock),
                "-L",
                "-n",
                "--stats",
            ],
        )
        for line in str(out.stdout).splitlines():
            f = line.split()
            if len(f) >= 4 and f[0] == proto and f[1] == f"{VIP}:{port}":
                return _num(f[2]), _num(f[3])
        return None

    def ulvs_ports(self) -> dict[str, Any] | None:
        """The daemon's per-port ring counters (``ulvs status --json``), None when it does not
        answer."""
        if self.ulvs_sock is None:
            return None
        out = self.lab.run("director", [sys.executable, "-m", "ulvs", "status", "--json", "--socket",
                                        str(self.ulvs_sock)], check=False, timeout=20)
        try:
            ports: dict[str, Any] = json.loads(str(out.stdout))["daemon"]["ports"]
        except (ValueError, KeyError, TypeError):
            return None
        return ports

    def start_nft(self) -> None:
        servers = ", ".join(f"{i} : 10.77.2.{11 + i}" for i in range(3))
        p = self.lab.run(
            "director", ["nft", "-f", "-"], input=NFT_DNAT.format(vip=VIP, iperf=IPERF_PORT, map=servers)
        )
        if p.returncode != 0:
            raise BenchError(f"nft in director: {p.stderr.strip()}")

    def start_haproxy(self) -> None:
        if not shutil.which("haproxy"):
            raise BenchError("haproxy is not installed")
        lab = self.lab
        p = lab.run("director", ["ip", "addr", "add", f"{VIP}/32", "dev", "lo"])
        if p.returncode != 0:
            raise BenchError(f"VIP on director lo: {p.stderr.strip()}")
        web = "\n".join(f"    server {rs} {lab.addr(rs)}:{HTTP_PORT}" for rs in lab.real_servers)
        bulk = "\n".join(f"    server {rs} {lab.addr(rs)}:{IPERF_PORT}" for rs in lab.real_servers)
        d = self.tmp / "haproxy"
        d.mkdir(exist_ok=True)
        (d / "haproxy.cfg").write_text(
            HAPROXY_CFG.format(vip=VIP, http=HTTP_PORT, iperf=IPERF_PORT, web=web, bulk=bulk)
        )
        log = d / "haproxy.out"
        proc = self.procs.start("director", ["haproxy", "-db", "-f", str(d / "haproxy.cfg")], "haproxy", log)
        wait_listening(lab, "director", HTTP_PORT, proc, log)

    def start_kernel_forward(self) -> None:
        rs1 = self.lab.real_servers[0]
        p = self.lab.run("director", ["ip", "route", "add", f"{VIP}/32", "via", self.lab.addr(rs1)])
        if p.returncode != 0:
            raise BenchError(f"route to the VIP: {p.stderr.strip()}")

    # -- measurements --

    def generator(self) -> Generator:
        if self.gen is None:
            self.gen = Generator(self.lab, self.s, self.tmp, self.procs)
        return self.gen

    def establish(self, cfg: list[str], nflows: int) -> None:
        """Send every flow once before a sweep, so ulvs (and conntrack) hold established entries."""
        rate = min(NFLOW_RATE, max(1000, nflows * 5))
        self.generator().send(cfg, rate, nflows / rate + 0.2)
        time.sleep(0.2)

    def pps(self, flows: int, what: str = "") -> dict[str, Any]:
        gen = self.generator()
        src = self.lab.client_addrs[0]
        cfg, nflows = udp_flows_cfg(gen.dmac, flows, src)
        detail: dict[str, Any] = {"flows": nflows}
        if self.system in ("ulvs", "ulvs_w2", "nft_dnat"):
            self.establish(cfg, nflows)
            if self.system in ULVS_WORKERS:
                st = self.ulvs_stats("UDP", PPS_PORT)
                if st is not None:
                    detail["ulvs_conns_before_sweep"] = st[0]
        rx0 = link_rx(self.lab, "director", self.lab.director_if_client)
        in0 = self.ulvs_stats("UDP", PPS_PORT) if self.system in ULVS_WORKERS else None
        detail.update(self.confirmed(gen.sweep(lambda: cfg, f"{self.system} pps {flows} flows"),
                                     what or f"pps with {flows} flows"))
        if detail.get("pps") and not detail.get("generator_bound"):
            detail.update(self.overload(cfg, detail))
        if self.system in ULVS_WORKERS and in0 is not None:
            in1 = self.ulvs_stats("UDP", PPS_PORT)
            rx1 = link_rx(self.lab, "director", self.lab.director_if_client)
            if in1 is not None:
                # frames the director's interface received but ulvs's core never saw: lost in the ring
                detail["cli0_rx"] = rx1 - rx0
                detail["ulvs_in_pkts"] = in1[1] - in0[1]
        return detail

    def overload(self, cfg: list[str], sweep: dict[str, Any]) -> dict[str, Any]:
        """Receive livelock check: offer 3x the lossless rate (or the generator's top speed, if
        lower) and compare what still gets through with the peak delivered rate of the sweep."""
        gen = self.generator()
        lossless = float(sweep["pps"])
        t = gen.trial(cfg, min(3 * lossless, float(sweep["probe_offered"])))
        peak = max([lossless] + [float(r["delivered"]) for r in sweep["trials"]])
        progress(
            f"  {self.system} overload: offered {t.offered / 1e3:8.1f} kpps ({t.offered / lossless:.1f}x "
            f"lossless), delivered {t.delivered / 1e3:8.1f} kpps = {t.delivered / peak:.0%} of the peak"
        )
        return {"overload_offered": round(t.offered), "overload_delivered": round(t.delivered),
                "peak_delivered": round(peak), "overload_ratio": round(t.delivered / peak, 3)}

    def syn(self) -> dict[str, Any]:
        gen = self.generator()
        sweep = gen.sweep(lambda: syn_cfg(gen.dmac, gen.count), f"{self.system} syn")
        return self.confirmed(sweep, "syn_cps")

    def confirmed(self, sweep: dict[str, Any], what: str) -> dict[str, Any]:
        """Say so when a sweep's figure is null because no confirmation held."""
        if sweep.get("unconfirmed") is not None:
            self.note(f"{what}: the search found {sweep['unconfirmed']} pps lossless, but at it and at "
                      "three steps of 10% below fewer than 2 of 3 confirmation trials were: no figure")
        return sweep

    def wrk(self, args: list[str], secs: int, script: Path | None = None) -> dict[str, Any]:
        argv = ["wrk", "-t1", f"-d{secs}s", "--timeout", "2s", *args]
        if script is not None:
            argv += ["--latency", "-s", str(script)]
        argv.append(f"http://{VIP}:{HTTP_PORT}/")
        p = self.lab.run("client", argv, timeout=secs + 30)
        text = str(p.stdout)
        m = re.search(r"Requests/sec:\s+([\d.]+)", text)
        if p.returncode != 0 or not m:
            raise BenchError(f"wrk failed ({p.returncode}): {(text + str(p.stderr))[-300:]}")
        res: dict[str, Any] = {"rps": float(m.group(1))}
        if e := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
            res["socket_errors"] = dict(
                zip(("connect", "read", "write", "timeout"), map(int, e.groups()), strict=True)
            )
        if e := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
            res["non_2xx"] = int(e.group(1))
        for pct, val, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
            res[f"p{pct}_us"] = float(val) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
        return res

    def http(self, fig: dict[str, Any], detail: dict[str, Any]) -> None:
        """New connection per request and keep-alive, with ``wrk_conns`` (16) connections, where
        a system that adds latency shows it, and with 256, where every system here runs out of
        CPU before the connections run out of requests (its capacity)."""
        s = self.s
        cases = []
        for conns, suffix in ((s.wrk_conns, ""), (HIGH_CONNS, f"_c{HIGH_CONNS}")):
            c = f"-c{conns}"
            cases += [(f"http_cps{suffix}", [c, "-H", "Connection: close"]),
                      (f"http_rps_keepalive{suffix}", [c])]
        for key, args in cases:
            runs = []
            for _ in range(s.wrk_trials):
                r = self.wrk(args, s.wrk_secs)
                runs.append(r)
                progress(
                    f"  {self.system} {key}: {r['rps']:.0f}/s "
                    f"{'errors ' + str(r['socket_errors']) if r.get('socket_errors') else ''}"
                )
            detail[key] = runs
            errs = sum(sum(r.get("socket_errors", {}).values()) + r.get("non_2xx", 0) for r in runs)
            if errs:
                self.note(f"{key}: wrk counted {errs} socket errors / non-2xx responses (see meta.details)")
            fig[key] = round(statistics.median(r["rps"] for r in runs))

    def latency(self, fig: dict[str, Any], detail: dict[str, Any], capacity: float | None) -> None:
        s = self.s
        if not capacity:
            r = self.wrk([f"-c{s.wrk_conns}"], s.wrk_secs)
            capacity = r["rps"]
        target = 0.5 * capacity
        delay_ms = 2
        conns = max(1, min(400, round(target * (delay_ms + 0.3) / 1000)))
        script = self.tmp / "pace.lua"
        script.write_text(
            f"-- pace each connection: wait {delay_ms} ms after every response\n"
            f"function delay()\n  return {delay_ms}\nend\n"
        )
        r = self.wrk([f"-c{conns}"], s.lat_secs, script)
        if abs(r["rps"] - target) > 0.2 * target and r["rps"] > 0:  # one recalibration
            conns = max(1, min(400, round(conns * target / r["rps"])))
            r = self.wrk([f"-c{conns}"], s.lat_secs, script)
        r.update({"target_rps": round(target), "connections": conns, "delay_ms": delay_ms})
        detail["latency"] = r
        progress(
            f"  {self.system} latency at {r['rps']:.0f}/s (target {target:.0f}): "
            f"p50 {r.get('p50_us')} us p99 {r.get('p99_us')} us"
        )
        if "p50_us" not in r:
            raise BenchError("wrk printed no latency distribution")
        fig["lat_p50_us"], fig["lat_p99_us"] = r["p50_us"], r["p99_us"]

    def bulk(self, fig: dict[str, Any], detail: dict[str, Any]) -> None:
        s = self.s
        for key, extra in (("bulk_gbps", []), ("bulk_gbps_4", ["-P", "4"])):
            vals = []
            for _ in range(s.iperf_trials):
                p = self.lab.run(
                    "client",
                    [
                        "iperf3",
                        "-c",
                        VIP,
                        "-p",
                        str(IPERF_PORT),
                        "-t",
                        str(s.iperf_secs),
                        "-J",
                        "--connect-timeout",
                        "3000",
                        *extra,
                    ],
                    timeout=s.iperf_secs + 30,
                )
                try:
                    j = json.loads(p.stdout)
                except ValueError:
                    raise BenchError(
                        f"iperf3 {' '.join(extra)}: no JSON ({p.returncode}): {str(p.stderr)[-300:]}"
                    ) from None
                if j.get("error"):
                    raise BenchError(f"iperf3 {' '.join(extra)}: {j['error']}")
                vals.append(j["end"]["sum_received"]["bits_per_second"] / 1e9)
                progress(f"  {self.system} {key}: {vals[-1]:.2f} Gbit/s")
            detail[key] = [round(v, 3) for v in vals]
            fig[key] = round(statistics.median(vals), 3)

    def close(self) -> None:
        self.procs.stop_all()


def _num(text: str) -> int:
    """ipvsadm counters may carry K/M/G suffixes."""
    mult = {"K": 1000, "M": 10**6, "G": 10**9}.get(text[-1:], 1)
    return int(float(text[:-1] if mult != 1 else text) * mult)


# --- one system ------------------------------------------------------------------------------------


def empty_figures(s: Settings) -> dict[str, Any]:
    fig: dict[str, Any] = dict.fromkeys(FIGURES)
    fig["pps_by_flows"] = {str(f): None for f in s.flows}
    return fig


@contextlib.contextmanager
def fresh_env(system: str, s: Settings, notes: list[str], *, dr: bool) -> Iterator[Env]:
    tmp = Path(tempfile.mkdtemp(prefix=f"ulvs-bench-{system}-"))
    try:
        with Lab(dr=dr, start_servers=False, clients=2) as lab:
            env = Env(lab, system, s, tmp, notes)
            try:
                env.prepare()
                yield env
            finally:
                env.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def guarded(env: Env, what: str, fn: Callable[[], None]) -> None:
    """Run one measurement; a failure becomes a note and leaves its figures null."""
    try:
        fn()
    except (BenchError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as e:
        env.note(f"{what} failed: {e}")


def run_system(system: str, s: Settings, notes: list[str], details: dict[str, Any]) -> dict[str, Any]:
    """Measure one system on fresh labs; returns its figures (None where not measured)."""
    fig = empty_figures(s)
    det: dict[str, Any] = details.setdefault(system, {})
    groups = set(s.groups)
    missing = {g for g in groups for tool in REQUIRED[g] if not shutil.which(tool)}
    for g in sorted(missing):
        notes.append(
            f"{system}: {g} not measured: {', '.join(t for t in REQUIRED[g] if not shutil.which(t))} "
            "not installed"
        )
    groups -= missing
    progress(f"== {system}")
    packet_system = system != "haproxy"
    dr_lab = system == "kernel_forward"
    with fresh_env(system, s, notes, dr=dr_lab) as env:
        env.start_servers(groups)
        if system in ULVS_WORKERS:
            env.start_ulvs("-m")
        elif system == "nft_dnat":
            env.start_nft()
        elif system == "haproxy":
            env.start_haproxy()
        else:
            env.start_kernel_forward()

        if "pps" in groups and packet_system:

            def pps() -> None:
                for flows in s.flows:
                    d = env.pps(flows)
                    det[f"pps_{flows}"] = d
                    fig["pps_by_flows"][str(flows)] = d["pps"]
                    if d.get("generator_bound"):
                        env.note(
                            f"pps with {flows} flows: no loss at the generator's full speed "
                            f"({d['pps']} pps): generator-bound, a lower bound"
                        )
                    if "cli0_rx" in d and d["cli0_rx"] - d["ulvs_in_pkts"] > 0.001 * d["cli0_rx"]:
                        env.note(
                            f"pps with {flows} flows: {d['cli0_rx'] - d['ulvs_in_pkts']} of "
                            f"{d['cli0_rx']} frames received on cli0 during the sweep never reached the "
                            "core (lost in the RX ring)"
                        )

            guarded(env, "pps", pps)
            fig["pps_nat"] = fig["pps_by_flows"].get("1000")
            fig["overload_ratio"] = det.get("pps_1000", {}).get("overload_ratio")
            if system == "kernel_forward":
                fig["pps_dr"] = fig["pps_nat"]
            if system in ULVS_WORKERS and groups & {"http", "lat", "bulk"}:
                # Does the daemon that went through the overload sweeps still serve new TCP
                # connections?  Recorded, then a fresh daemon measures the TCP figures.
                res = env.lab.http_get("client", VIP, count=3, timeout=3)
                served = sum(r.error is None and r.status == 200 for r in res)
                det["http_after_pps_sweeps"] = served
                if served < len(res):
                    det["ports_after_pps_sweeps"] = env.ulvs_ports()
                    env.note(f"after the pps sweeps the daemon answered {served} of {len(res)} HTTP "
                             "requests; the TCP figures come from a freshly started daemon; its ring "
                             f"counters then: {det['ports_after_pps_sweeps']}")
                env.start_ulvs("-m")
        if "http" in groups:
            guarded(env, "http", lambda: env.http(fig, det))
        if "lat" in groups:
            guarded(env, "latency", lambda: env.latency(fig, det, fig.get("http_rps_keepalive")))
        if "bulk" in groups:
            guarded(env, "bulk", lambda: env.bulk(fig, det))
        if "syn" in groups and packet_system:

            def syn() -> None:
                if system in ULVS_WORKERS:
                    env.start_ulvs("-m")  # a fresh connection table
                d = env.syn()
                det["syn"] = d
                fig["syn_cps"] = d["pps"]
                if d.get("generator_bound"):
                    env.note(
                        f"syn_cps: no loss at the generator's full speed ({d['pps']}/s): generator-bound"
                    )

            guarded(env, "syn", syn)
        if system in ULVS_WORKERS:
            env.stop_ulvs()

    if system in ULVS_WORKERS and "pps" in groups:
        with fresh_env(system, s, notes, dr=True) as env:
            env.start_ulvs("-g")

            def dr() -> None:
                d = env.pps(1000, "pps_dr")
                det["pps_dr_1000"] = d
                fig["pps_dr"] = d["pps"]

            guarded(env, "pps_dr", dr)
            env.stop_ulvs()

    # figures that do not apply
    if system == "haproxy":
        for key in ("pps_nat", "pps_dr", "syn_cps"):
            fig[key] = None
        fig["pps_by_flows"] = dict.fromkeys(fig["pps_by_flows"])
        notes.append(
            "haproxy: pps_nat, pps_dr, pps_by_flows and syn_cps are null: a proxy terminates "
            "connections and forwards no packets (a SYN ends at its listen socket)"
        )
    if system == "nft_dnat":
        notes.append(
            "nft_dnat: pps_dr is null: DNAT rewrites addresses; direct routing (MAC rewrite only) "
            "is not what a nat chain does"
        )
    if system == "kernel_forward":
        notes.append(
            "kernel_forward: pps_dr repeats pps_nat (plain routing has no NAT/DR split; the figure is "
            "the forwarding ceiling of the path); syn_cps is stateless forwarding of SYNs"
        )
    return fig


# --- reports ---------------------------------------------------------------------------------------


UNITS = {
    "pps_nat": "pps",
    "pps_dr": "pps",
    "syn_cps": "conn/s",
    "http_cps": "req/s",
    "http_rps_keepalive": "req/s",
    "http_cps_c256": "req/s",
    "http_rps_keepalive_c256": "req/s",
    "bulk_gbps": "Gbit/s",
    "bulk_gbps_4": "Gbit/s",
    "lat_p50_us": "us",
    "lat_p99_us": "us",
    "overload_ratio": "of peak",
}


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and v < 100:
        return f"{v:.2f}"
    return f"{round(v):,}"


def ratio(a: Any, b: Any) -> str:
    if a is None or b is None or not b:
        return "–"
    return f"{a / b:.2f}"


def markdown(result: dict[str, Any], systems: tuple[str, ...]) -> str:
    meta = result["meta"]
    lines = [
        "# Dataplane comparison on the netns lab (bench/bench_netns.py)",
        "",
        f"Mode: {'quick' if meta['quick'] else 'full'}; {meta['date']}; kernel {meta['kernel']}; "
        f"{meta['cpus']} CPUs ({meta['cpu_model']}); took {meta['duration_s']:.0f} s.",
        "",
    ]
    peers = ("ulvs_w2", "nft_dnat", "haproxy", "kernel_forward")
    others = [o for o in peers if o in systems and "ulvs" in systems]
    head = ["figure", "unit", *systems, *[f"ulvs/{o}" for o in others]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "--:|" * (len(head) - 2)]
    rows: list[tuple[str, str, Callable[[str], Any]]] = [
        (k, UNITS[k], lambda sy, k=k: result[sy].get(k)) for k in FIGURES
    ]
    flows = sorted({int(f) for sy in systems for f in result[sy].get("pps_by_flows", {})})
    rows += [
        (f"pps, {f:,} flows", "pps", lambda sy, f=f: result[sy].get("pps_by_flows", {}).get(str(f)))
        for f in flows
    ]
    for name, unit, get in rows:
        vals = [get(sy) for sy in systems]
        u = get("ulvs") if "ulvs" in systems else None
        lines.append(
            "| " + " | ".join([name, unit, *map(fmt, vals), *[ratio(u, get(o)) for o in others]]) + " |"
        )
    base = result.get("kernel_forward", {}) if "kernel_forward" in systems else {}
    if base.get("lat_p50_us") is not None:
        lines += [
            "",
            "Added latency against kernel_forward (same paced wrk load relative to each system's "
            "own capacity):",
            "",
            "| system | p50 added us | p99 added us |",
            "|---|--:|--:|",
        ]
        for sy in systems:
            p50, p99 = result[sy].get("lat_p50_us"), result[sy].get("lat_p99_us")
            lines.append(
                f"| {sy} | {fmt(None if p50 is None else p50 - base['lat_p50_us'])} | "
                f"{fmt(None if p99 is None else p99 - base['lat_p99_us'])} |"
            )
    lines += [
        "",
        "Ratios are ulvs divided by the other system (above 1 = ulvs higher; for latencies higher "
        "is worse).  `–` = not measured or not applicable (see notes).",
        "",
        "Method: " + meta["method"],
        "",
        "Notes:",
        "",
    ]
    lines += [f"- {n}" for n in result["notes"]] or ["- none"]
    lines += ["", f"Plots: {', '.join(meta.get('plots', [])) or 'none'}.", ""]
    return "\n".join(lines)


def plots(result: dict[str, Any], systems: tuple[str, ...], outdir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [
        (
            "netns_pps.png",
            "packet and connection rates (kpps / k conn/s)",
            [("pps_nat", "pps NAT"), ("pps_dr", "pps DR"), ("syn_cps", "SYN cps")],
            1e-3,
        ),
        (
            "netns_pps_flows.png",
            "pps by flow count (kpps)",
            [
                (f"flows:{f}", f"{int(f):,} flows")
                for f in sorted({f for sy in systems for f in result[sy].get("pps_by_flows", {})}, key=int)
            ],
            1e-3,
        ),
        (
            "netns_http.png",
            "HTTP through the system (k req/s)",
            [("http_cps", "new conn, 16 conns"), ("http_rps_keepalive", "keep-alive, 16"),
             ("http_cps_c256", "new conn, 256"), ("http_rps_keepalive_c256", "keep-alive, 256")],
            1e-3,
        ),
        (
            "netns_bulk.png",
            "bulk TCP, iperf3 (Gbit/s)",
            [("bulk_gbps", "1 stream"), ("bulk_gbps_4", "4 streams")],
            1,
        ),
        (
            "netns_latency.png",
            "latency at ~50% of capacity (us)",
            [("lat_p50_us", "p50"), ("lat_p99_us", "p99")],
            1,
        ),
    ]
    written = []
    for fname, title, keys, scale in groups:
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.2))
        width = 0.8 / len(systems)
        for i, sy in enumerate(systems):
            vals = []
            for k, _label in keys:
                v = (
                    result[sy].get("pps_by_flows", {}).get(k[6:])
                    if k.startswith("flows:")
                    else result[sy].get(k)
                )
                vals.append(float("nan") if v is None else v * scale)
            xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(keys))]
            bars = ax.bar(xs, vals, width, label=sy)
            for x, v in zip(xs, vals, strict=True):
                ax.text(
                    x,
                    0 if math.isnan(v) else v,
                    "n/a" if math.isnan(v) else f"{v:.3g}",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
            del bars
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([label for _k, label in keys])
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(outdir / fname, dpi=110)
        plt.close(fig)
        written.append(fname)
    return written


def tool_versions() -> dict[str, str | None]:
    cmds = {
        "gcc": ["gcc", "--version"],
        "wrk": ["wrk", "-v"],
        "nginx": ["nginx", "-v"],
        "haproxy": ["haproxy", "-v"],
        "iperf3": ["iperf3", "-v"],
        "nft": ["nft", "--version"],
    }
    out: dict[str, str | None] = {}
    for name, argv in cmds.items():
        if not shutil.which(argv[0]):
            out[name] = None
            continue
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            text = (p.stdout + p.stderr).strip().splitlines()
            out[name] = text[0].strip() if text else None
        except (OSError, subprocess.TimeoutExpired):
            out[name] = None
    return out


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def git_rev() -> str | None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        p = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if p.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            return p.stdout.strip() + ("+dirty" if dirty else "")
    return None


METHOD = (
    "one fresh lab per system (client ns -> director ns -> rs1..rs3 over veth and bridges); pktgen "
    "(bench/tools/pktgen.c, clock-paced sendmmsg) pinned to CPU 0 offers 60-byte UDP frames (64 B with "
    "FCS) or SYN-only frames; the director's interfaces steer receive processing to the other CPU(s) with "
    "RPS; servers drop the test packets at netdev ingress; counts from the lan namespace's bridge ports; "
    "a trial passes with < 0.1 % loss "
    "both in its window and after the drain; search = a full-speed probe, then geometric bisection; "
    "ulvs and nft_dnat get every flow established first. HTTP: wrk -t1 -c16 (and -c256: the *_c256 "
    "figures) against nginx (1 worker) on each server; latency: wrk keep-alive paced with delay() to "
    "~50 % of the system's keep-alive capacity; "
    "bulk: iperf3 1 and 4 streams (ulvs/nft/haproxy keep a client on one server: persistence / jhash / "
    "balance source). Single-threaded systems: ulvs (one process), haproxy nbthread 1, nginx 1 worker."
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="short trials, fewer steps, 1 and 1000 flows (< 3 min)"
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    ap.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}"
    )
    ap.add_argument(
        "--figures", default=",".join(GROUPS), help=f"comma-separated subset of {','.join(GROUPS)}"
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results",
        help="directory for netns.md, netns.json and the plots (default bench/results)",
    )
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--no-rps", action="store_true", help="leave the director's receive processing unsteered")
    ap.add_argument("--rx-ring", choices=("auto", "v3", "lanes"), default="auto",
                    help="ulvs run --rx-ring (auto, ulvs's default)")
    ap.add_argument("--tx-ring", type=int, default=4096, metavar="SLOTS", help="ulvs run --tx-ring (4096)")
    ap.add_argument("--rx-pace", type=int, metavar="USEC", help="ulvs run --rx-pace (ulvs's default)")
    args = ap.parse_args(argv)
    systems = tuple(x for x in args.systems.split(",") if x)
    groups = tuple(x for x in args.figures.split(",") if x)
    if bad := [x for x in systems if x not in SYSTEMS] + [x for x in groups if x not in GROUPS]:
        ap.error(f"unknown system/figure group: {', '.join(bad)}")
    if os.geteuid() != 0:
        print("bench_netns: needs root (network namespaces)", file=sys.stderr)
        return 2
    s = replace(Settings.make(args.quick), rps=not args.no_rps, groups=groups, rx_ring=args.rx_ring,
                tx_ring=args.tx_ring, rx_pace=args.rx_pace)
    result = run(s, systems)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        try:
            result["meta"]["plots"] = plots(result, systems, args.out)
        except Exception as e:  # noqa: BLE001 - plots are optional
            result["notes"].append(f"plots not written: {e}")
    (args.out / "netns.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "netns.md").write_text(markdown(result, systems))
    progress(f"wrote {args.out / 'netns.md'}")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(markdown(result, systems))
    return 0


def run(s: Settings, systems: tuple[str, ...]) -> dict[str, Any]:
    """Measure ``systems``; returns the result document (figures, notes, meta)."""
    t0 = time.monotonic()
    notes: list[str] = []
    details: dict[str, Any] = {}
    result: dict[str, Any] = {}
    prev = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, on_term)
    try:
        for system in systems:
            try:
                result[system] = run_system(system, s, notes, details)
            except BenchError as e:
                notes.append(f"{system}: not measured: {e}")
                result[system] = empty_figures(s)
    finally:
        signal.signal(signal.SIGTERM, prev)
    result["notes"] = notes
    result["meta"] = {
        "quick": s.quick,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "ulvs_commit": git_rev(),
        "tools": tool_versions(),
        "settings": asdict(s),
        "loss_max": LOSS_MAX,
        "generator_cpu": GEN_CPU,
        "director_rps": s.rps,
        "method": METHOD,
        "duration_s": round(time.monotonic() - t0, 1),
        "details": details,
    }
    return result


if __name__ == "__main__":
    sys.exit(main())
