"""The health monitor: the process that runs the checks and reports to the daemon.

    python -m ulvs.health.monitor --config FILE --socket CONTROL_SOCKET [--format FMT]

The daemon starts it as a child of its own (``ulvs.runtime.supervisor``) when its configuration
has checks, a sorry server or quorum scripts, so that probes and scripts never delay the
dataplane (keepalived's checker child; STYLE rule 12).  It is a thin shell around the pure
service policy (``ulvs.health.policy.ServiceHealth``, one per service):

* it loads the configuration (``ulvs.runtime.configfile.load``) and builds one
  ``ServiceHealth`` per service and one checker (``ulvs.health.base.create``) per distinct
  probe: a dest shared by several services with the same check is probed once
  (``Checker.key()``: a probe already running is joined, and a result younger than half the
  asking check's ``delay_loop`` is reused);
* it arms one timer from the policies' ``next_deadline()``, feeds ``handle_timer``,
  ``handle_result`` and ``time.monotonic()`` to them, and runs the probes they ask for
  (``ProbeDue``) concurrently on its own uvloop loop;
* it turns what they decide into control requests to the daemon over the control socket:
  ``health`` (a dest in or out of service, its weight when a dynamic checker or slow start sets
  one, the last probe's detail), ``sorry`` (a service's sorry server on or off) and
  ``expire_dest_conns`` (a failed dest's UDP flows, and its TCP connections when the service
  has ``failed_conns = "expire"``; sent after the dest has left the pool).  A service's
  ``slow_start`` and ``failed_conns`` reach its ``ServiceHealth`` (``conn_policy``), on a reload too.
  The daemon owns what is served; the monitor only reports.  It reports each dest once it is
  judged (every check has had a result) and then on every change, and again after
  reconnecting, so a restarted monitor replaces what an earlier one said without first
  bringing a failed dest back;
* passive ejection: while a service has ``ejection``, every ``TRAFFIC_INTERVAL`` it reads the
  dests' ``syns``/``synacks`` counters from the daemon (a ``snapshot`` without connections, on
  a second control connection) and feeds their deltas to the policy as ``Sample``s; an
  ejected dest is reported down with why ("ejected: 12 of 14 SYNs unanswered, back-off 2 s"),
  and returns once the back-off is over and its checkers pass;
* ``notify_up``/``notify_down``/``quorum_up``/``quorum_down`` run as argument vectors (never a
  shell) in a session of their own, killed with their process group after ``SCRIPT_TIMEOUT``;
* it times every probe it runs and reports the durations and outcomes per checker kind
  (``ulvs.health.stats.ProbeStats``; the control command ``probe_stats``, at most every
  ``STATS_INTERVAL``, on a connection of its own) for the daemon's status and its Prometheus
  exporter;
* SIGHUP reloads the configuration and migrates the health state (``policy.migrate``), so
  unchanged dests keep theirs and run no script; SIGTERM (or SIGINT) exits cleanly.  It also
  exits when the daemon, its parent, goes away (``PR_SET_PDEATHSIG``).

Logs go to stderr (the daemon's log) as ``ulvs-health[PID]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
import sys
import time
from collections.abc import Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ulvs.config.overlay import health_request
from ulvs.config.requests import (
    JsonObj,
    dest_addr_from_json,
    key_name,
    service_key_from_json,
    service_key_to_json,
)
from ulvs.config.schema import CheckSpec, Config, ConfigError, VirtualService
from ulvs.core.model import Proto
from ulvs.health import policy as pol
from ulvs.health import state as st
from ulvs.health.base import DEFAULT_DELAY_LOOP, Checker, CheckerError, Result, Target, create
from ulvs.health.checkers._io import kill_group
from ulvs.health.stats import ProbeStats
from ulvs.runtime import child
from ulvs.runtime.configfile import load

log = logging.getLogger("ulvs.health")

SCRIPT_TIMEOUT = 30.0       # s a notify or quorum script may run before its group is killed
REQUEST_TIMEOUT = 10.0      # s for one control request and its reply
TRAFFIC_INTERVAL = 1.0      # s between two reads of the dests' SYN counters (passive ejection)
RECONNECT_DELAY = 0.5       # s between attempts to reach the control socket
STATS_INTERVAL = 1.0        # s between two reports of the probe statistics (when they moved)
PROTOCOL_VERSION = 1

SETTLED = frozenset({st.CheckerState.UP, st.CheckerState.DOWN})

ServiceKey = pol.ServiceKey
DestKey = pol.DestKey
Report = tuple[bool, int | None, str]          # what a health request says: up, weight, detail


class ControlClient:
    """One connection to the daemon's control socket: a request line, its reply line.  Broken
    connections are re-made; a request is tried until the daemon answers or ``close``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.connections = 0              # successful connects (a new one means: report all)

    async def request(self, req: JsonObj) -> JsonObj:
        line = json.dumps({**req, "v": PROTOCOL_VERSION}).encode() + b"\n"
        while True:
            try:
                if self._writer is None:
                    self._reader, self._writer = await asyncio.open_unix_connection(str(self.path))
                    self.connections += 1
                assert self._reader is not None
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    self._writer.write(line)
                    await self._writer.drain()
                    answer = await self._reader.readline()
                if not answer:
                    raise ConnectionResetError("the daemon closed the control connection")
                reply = json.loads(answer)
                if not isinstance(reply, dict):
                    raise ValueError(f"reply is not an object: {answer!r}")
                return reply
            except (OSError, TimeoutError, ValueError) as e:
                log.warning("control socket %s: %s; retrying", self.path, e)
                self.close()
                await asyncio.sleep(RECONNECT_DELAY)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


HTTP_KINDS = frozenset({"HTTP_GET", "SSL_GET"})


def cascade(vs: VirtualService) -> VirtualService:
    """The service's ``virtualhost`` handed down to its HTTP checks that set none, as keepalived
    cascades settings service -> real server -> checker (the parsers already copy the real
    server's own settings into its checks)."""
    if vs.virtualhost is None:
        return vs

    def spec(c: CheckSpec) -> CheckSpec:
        if c.kind not in HTTP_KINDS or c.get("virtualhost") is not None:
            return c
        return replace(c, options=tuple(sorted((*c.options, ("virtualhost", vs.virtualhost)))))

    return replace(vs, dests=tuple(replace(rs, checks=tuple(spec(c) for c in rs.checks)) for rs in vs.dests))


def conn_policy(vs: VirtualService) -> pol.ConnPolicy:
    """The service's ``failed_conns`` as the policy's ``ConnPolicy`` (the same names)."""
    return pol.ConnPolicy(vs.failed_conns)


def ejection_policy(vs: VirtualService) -> pol.EjectionPolicy | None:
    """The service's ``ejection`` settings as the policy's ``EjectionPolicy`` (None: off)."""
    return None if vs.ejection is None else pol.EjectionPolicy.from_settings(vs.ejection)


def target_for(daddr: ipaddress.IPv4Address, dport: int, spec: CheckSpec) -> Target:
    """The probe target of ``spec`` for dest ``daddr:dport`` (connect_ip/port, bindto/bind_port)."""

    def addr(key: str) -> ipaddress.IPv4Address | None:
        v = spec.get(key)
        return None if v is None else ipaddress.IPv4Address(v)

    def port(key: str) -> int | None:
        v = spec.get(key)
        return None if v is None else int(v)

    return Target(daddr, dport, addr("connect_ip"), port("connect_port"), addr("bindto"), port("bind_port"))


@dataclass(slots=True)
class _Probe:
    """A running (or recently finished) probe shared by every check with the same key."""

    checker: Checker
    waiters: list[tuple[ServiceKey, pol.CheckId]] = field(default_factory=list)
    task: asyncio.Task[Result] | None = None


class Monitor:
    def __init__(self, config_path: Path, fmt: str | None, socket: Path) -> None:
        self.config_path, self.fmt = config_path, fmt
        self.client = ControlClient(socket)
        self.poller = ControlClient(socket)      # its own connection: traffic reads, replies used
        self.reporter = ControlClient(socket)    # and one for the probe statistics
        self.stats = ProbeStats()
        self.traffic: dict[tuple[ServiceKey, DestKey], tuple[int, int]] = {}   # last syns, synacks
        self.services: dict[ServiceKey, pol.ServiceHealth] = {}
        self.configs: dict[ServiceKey, VirtualService] = {}
        self.sent: dict[tuple[ServiceKey, DestKey], Report] = {}
        self.sorry_sent: dict[ServiceKey, bool] = {}
        self.checkers: dict[Hashable, Checker] = {}
        self.running: dict[Hashable, _Probe] = {}
        self.recent: dict[Hashable, tuple[float, Result]] = {}     # last result of each probe
        self.seen: dict[tuple[ServiceKey, pol.CheckId], float] = {}  # when the result a check got was made
        self.settled: set[tuple[ServiceKey, pol.CheckId]] = set()    # checks that have had a verdict
        self.outbox: asyncio.Queue[JsonObj] = asyncio.Queue()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.stop = asyncio.Event()
        self._reported_connection = 1     # the first connection gets the first reports

    # -- configuration --------------------------------------------------------------------------
    def load(self) -> Config:
        result = load(self.config_path, self.fmt)
        return result.config

    def build(self, config: Config, now: float) -> None:
        """Start (or, on reload, migrate) one ServiceHealth per configured service."""
        new: dict[ServiceKey, pol.ServiceHealth] = {}
        config = replace(config, services=tuple(cascade(vs) for vs in config.services))
        for vs in config.services:
            key = vs.config.key
            old = self.services.get(key)
            # slow_start and failed_conns are the new configuration's, also on a reload
            if old is not None:
                new[key] = pol.migrate(old, vs, now, slow_start=vs.slow_start, conn_policy=conn_policy(vs),
                                       ejection=ejection_policy(vs))
            else:
                new[key] = pol.ServiceHealth(vs, now, slow_start=vs.slow_start, conn_policy=conn_policy(vs),
                                             ejection=ejection_policy(vs))
        for key, old in self.services.items():
            if key not in new:
                old.shutdown()
                self._events(old, report=False)      # omega scripts only: the daemon dropped it
        self.services = new
        self.configs = {vs.config.key: vs for vs in config.services}
        keep = {(k, d) for k, sh in new.items() for d in sh.dests()}
        self.sent = {k: v for k, v in self.sent.items() if k in keep}
        self.sorry_sent = {k: v for k, v in self.sorry_sent.items() if k in new}
        self.traffic = {k: v for k, v in self.traffic.items()
                        if k in keep and self.configs[k[0]].ejection is not None}
        wanted = {self._checker_key(rs.config.daddr, rs.config.dport, spec)
                  for vs in config.services for rs in vs.dests for spec in rs.checks}
        self.checkers = {k: c for k, c in self.checkers.items() if k in wanted}
        self.recent = {k: v for k, v in self.recent.items() if k in wanted}
        checks = {(k, c) for k, sh in new.items() for d in sh.dests() for c in sh.check_ids(d)}
        self.seen = {k: v for k, v in self.seen.items() if k in checks}
        self.settled &= checks

    def _checker_key(self, daddr: ipaddress.IPv4Address, dport: int, spec: CheckSpec) -> Hashable:
        checker = self._checker(daddr, dport, spec)
        return checker.key() if checker is not None else ("invalid", spec, daddr, dport)

    def _checker(self, daddr: ipaddress.IPv4Address, dport: int, spec: CheckSpec) -> Checker | None:
        try:
            checker = create(spec, target_for(daddr, dport, spec))
        except (CheckerError, ValueError) as e:
            log.error("%s check of %s:%d cannot run: %s", spec.kind, daddr, dport, e)
            return None
        return self.checkers.setdefault(checker.key(), checker)

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            config = self.load()
        except ConfigError as e:
            log.error("%s", e)
            return 2
        self.build(config, time.monotonic())
        n = sum(len(sh.dests()) for sh in self.services.values())
        log.info("health monitor running: %d service(s), %d dest(s), %d distinct probe(s)",
                 len(self.services), n, len(self.checkers))
        sender = asyncio.ensure_future(self._send_loop())
        poller = asyncio.ensure_future(self._traffic_loop())
        reporter = asyncio.ensure_future(self._stats_loop())
        self.step()
        try:
            await self.stop.wait()
        finally:
            if self.timer is not None:
                self.timer.cancel()
            for task in [sender, poller, reporter, *self.tasks]:
                task.cancel()
            for task in [sender, poller, reporter, *self.tasks]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self.client.close()
            self.poller.close()
            self.reporter.close()
            log.info("health monitor stopping")
        return 0

    def reload(self) -> None:
        try:
            config = self.load()
        except ConfigError as e:
            log.error("reload failed, health checks unchanged: %s", e)
            return
        self.build(config, time.monotonic())
        log.info("health monitor reloaded %s: %d service(s)", self.config_path, len(self.services))
        self.step()

    def step(self) -> None:
        """Give every policy its due timer, act on what they decided, re-arm the one timer."""
        now = time.monotonic()
        for sh in list(self.services.values()):
            deadline = sh.next_deadline()
            if deadline is not None and deadline <= now:
                sh.handle_timer(now)
            self._events(sh)
        self._arm()

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        deadlines = [d for sh in self.services.values() if (d := sh.next_deadline()) is not None]
        if deadlines:
            delay = max(0.0, min(deadlines) - time.monotonic())
            self.timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self.step()

    # -- events ---------------------------------------------------------------------------------
    def _events(self, sh: pol.ServiceHealth, *, report: bool = True) -> None:
        """Act on ``sh``'s events: probes, scripts and logs now; then the dest reports (health,
        sorry) and, last, conn-table commands, so flows expire only once their dest is out."""
        expire: list[pol.ExpireDestConns] = []
        for ev in sh.pop_events():
            if isinstance(ev, pol.ProbeDue):
                self._probe(ev)
            elif isinstance(ev, pol.RunScript):
                self._spawn(self._script(ev))
            elif isinstance(ev, pol.DestStatus):
                log.info("%s dest %s:%d %s: %s", key_name(ev.service), ev.dest[0], ev.dest[1],
                         "up" if ev.up else "down", ev.reason or "-")
            elif isinstance(ev, pol.QuorumGained):
                log.info("%s quorum gained (weight %d >= %d)", key_name(ev.service), ev.total, ev.threshold)
            elif isinstance(ev, pol.QuorumLost):
                log.warning("%s quorum lost (weight %d < %d)", key_name(ev.service), ev.total, ev.threshold)
            elif isinstance(ev, pol.ExpireDestConns):
                expire.append(ev)
            # AddDest / SetWeight / RemoveDest / SorryServer: the pool the policy wants, which
            # _report below sends as the dests' state (the daemon applies it to the pool).
        if report and sh.key in self.services and self.services[sh.key] is sh:
            self._report(sh)
            for ev in expire:
                self.outbox.put_nowait({
                    "cmd": "expire_dest_conns", "service": service_key_to_json(ev.service),
                    "dest": {"daddr": str(ev.dest[0]), "dport": ev.dest[1]},
                    "proto": "udp" if ev.proto == Proto.UDP else "tcp"})

    def _report(self, sh: pol.ServiceHealth) -> None:
        """Queue a health request for each dest whose state differs from the last one sent.

        A dest is reported once it is judged: every check has had a verdict, or it is out of
        service (alpha), or it has no checks.  Until then the daemon keeps what it has (the
        configured pool at start; an earlier monitor's word after a restart), so a restarted
        monitor does not bring a failed dest back before probing it.  The sorry server is
        reported once every dest of its service is judged: switching on first, off last, so
        the service is never left without a dest in between."""
        if self.client.connections > self._reported_connection:
            self._reported_connection = self.client.connections     # a new connection: say all
            self.sent.clear()
            self.sorry_sent.clear()
        vs = self.configs[sh.key]
        judged = {dest: self._judged(sh, dest) for dest in sh.dests()}
        sorry: JsonObj | None = None
        if vs.sorry_server is not None and all(judged.values()) \
                and self.sorry_sent.get(sh.key) != sh.sorry_active:
            self.sorry_sent[sh.key] = sh.sorry_active
            sorry = {"cmd": "sorry", "service": service_key_to_json(sh.key), "on": sh.sorry_active}
            if sh.sorry_active:
                self.outbox.put_nowait(sorry)
        configured = {(rs.config.daddr, rs.config.dport): rs.config.weight for rs in vs.dests}
        applied = sh.applied()
        for dest in sh.dests():
            if not judged[dest]:
                continue
            up = sh.in_service(dest)
            weight = applied.get(dest) if up else None
            if weight == configured[dest]:
                weight = None
            states = [sh.check_state(c) for c in sh.check_ids(dest)]
            failing = [c.detail for c in states if not c.counts_up]
            detail = "; ".join(d for d in (failing or [c.detail for c in states]) if d)
            ejected = sh.ejection_detail(dest)
            if ejected is not None:
                detail = ejected
            report: Report = (up, weight, detail)
            if self.sent.get((sh.key, dest)) != report:
                self.sent[(sh.key, dest)] = report
                self.outbox.put_nowait(health_request((sh.key, dest[0], dest[1]), up, weight, detail))
        if sorry is not None and not sh.sorry_active:
            self.outbox.put_nowait(sorry)

    def _judged(self, sh: pol.ServiceHealth, dest: DestKey) -> bool:
        """Out of service, or every check has settled (been UP or DOWN: a first failure that is
        still being retried is not a verdict yet)."""
        settled = True
        for c in sh.check_ids(dest):
            if sh.check_state(c).state in SETTLED:
                self.settled.add((sh.key, c))
            settled = settled and (sh.key, c) in self.settled
        return settled or not sh.in_service(dest)

    async def _send_loop(self) -> None:
        """Send queued requests in order; a refused one is logged (the daemon said why)."""
        while True:
            req = await self.outbox.get()
            before = self.client.connections
            reply = await self.client.request(req)
            if self.client.connections != before and before:
                # The connection was re-made: the daemon may have missed earlier reports.
                for sh in self.services.values():
                    self._report(sh)
            if reply.get("ok") and req["cmd"] == "expire_dest_conns" and reply.get("expired"):
                log.info("%s dest %s:%d: %d %s connection(s) expired",
                         key_name(service_key_from_json(req["service"])), req["dest"]["daddr"],
                         req["dest"]["dport"], reply["expired"], req["proto"].upper())
            if not reply.get("ok"):
                where = req.get("dest")
                if isinstance(where, dict):
                    with contextlib.suppress(ValueError):
                        daddr, dport = dest_addr_from_json(where)
                        where = f"{daddr}:{dport}"
                log.warning("daemon refused %s %s: %s", req.get("cmd"), where or "", reply.get("error"))

    # -- passive ejection -------------------------------------------------------------------------
    async def _traffic_loop(self) -> None:
        """Every ``TRAFFIC_INTERVAL``, while a service has ``ejection``, read the dests' SYN
        counters (a snapshot without connections, merged across the daemon's workers) and feed
        their deltas to the policies."""
        while True:
            await asyncio.sleep(TRAFFIC_INTERVAL)
            if not any(vs.ejection is not None for vs in self.configs.values()):
                self.traffic.clear()
                continue
            reply = await self.poller.request({"cmd": "snapshot", "conns": False})
            if not reply.get("ok"):
                log.warning("daemon refused snapshot: %s", reply.get("error"))
                continue
            try:
                self.observe_traffic(reply["snapshot"], time.monotonic())
            except (AttributeError, KeyError, TypeError, ValueError) as e:
                log.warning("daemon's snapshot unreadable, traffic not judged: %r", e)

    def observe_traffic(self, snapshot: JsonObj, now: float) -> None:
        """Turn the cumulative ``syns``/``synacks`` of each dest of a service with ejection into
        one interval's ``Sample`` (the deltas since the last read) and act on what the policies
        decide.  A dest seen for the first time, or whose counters went back (zeroed, or the dest
        re-created), only sets the baseline; a dest absent from the snapshot (out of the pool)
        loses it.  A SYN-ACK counted in the interval after its SYN cannot make ``answered``
        exceed ``syns``: it is capped."""
        seen: dict[tuple[ServiceKey, DestKey], tuple[int, int]] = {}
        touched: list[pol.ServiceHealth] = []
        for entry in snapshot["services"]:
            key = service_key_from_json(entry["service"])
            sh, vs = self.services.get(key), self.configs.get(key)
            if sh is None or vs is None or vs.ejection is None:
                continue
            for d in entry["dests"]:
                dest = dest_addr_from_json(d["dest"])
                counters = d["counters"]
                now_counts = (int(counters.get("syns", 0)), int(counters.get("synacks", 0)))
                seen[(key, dest)] = now_counts
                last = self.traffic.get((key, dest))
                if last is None:
                    continue
                syns, answered = now_counts[0] - last[0], now_counts[1] - last[1]
                if syns < 0 or answered < 0:
                    continue
                sh.observe_traffic(dest, pol.Sample(syns, min(answered, syns)), now)
            touched.append(sh)
        self.traffic = seen
        for sh in touched:
            self._events(sh)
        self._arm()

    # -- probe statistics ------------------------------------------------------------------------
    async def _stats_loop(self) -> None:
        """Every ``STATS_INTERVAL``, when probes ran since the last report, send the whole table
        (``probe_stats``): the daemon keeps the latest for its status."""
        sent = 0
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            if self.stats.changes == sent:
                continue
            sent = self.stats.changes
            reply = await self.reporter.request({"cmd": "probe_stats", "probes": self.stats.to_json()})
            if not reply.get("ok"):
                log.warning("daemon refused probe_stats: %s", reply.get("error"))

    # -- probes ---------------------------------------------------------------------------------
    def _probe(self, ev: pol.ProbeDue) -> None:
        checker = self._checker(ev.check.dest[0], ev.check.dest[1], ev.spec)
        if checker is None:
            self._deliver([(ev.service, ev.check)], Result(False, f"{ev.spec.kind}: cannot run"),
                          time.monotonic())
            return
        key = checker.key()
        running = self.running.get(key)
        if running is not None:                       # joined: one probe for every asker
            running.waiters.append((ev.service, ev.check))
            return
        # Another service's result of the same probe is reused when it is news to this check
        # (made after the last result this check got, so no failure counts twice against
        # ``retry``) and younger than this check's delay_loop.
        recent = self.recent.get(key)
        vs = self.configs.get(ev.service)
        window = st.timing_for(ev.spec, vs.delay_loop if vs else DEFAULT_DELAY_LOOP).delay_loop
        if recent is not None and recent[0] > self.seen.get((ev.service, ev.check), -1.0) \
                and time.monotonic() - recent[0] < window:
            made, result = recent
            asyncio.get_running_loop().call_soon(self._deliver, [(ev.service, ev.check)], result, made)
            return
        probe = _Probe(checker, [(ev.service, ev.check)])
        self.running[key] = probe
        probe.task = self._spawn(self._run_probe(key, probe))

    async def _run_probe(self, key: Hashable, probe: _Probe) -> Result:
        started = time.monotonic()
        try:
            result = await probe.checker.probe()
        except asyncio.CancelledError:
            raise
        except Exception as e:   # noqa: BLE001 - a checker bug is a failed probe, not a dead monitor
            log.exception("%s probe raised", probe.checker.kind)
            result = Result(False, f"{probe.checker.kind}: internal error: {e!r}")
        self.running.pop(key, None)
        made = time.monotonic()
        self.stats.observe(probe.checker.kind, result.ok, made - started)
        self.recent[key] = (made, result)
        self._deliver(probe.waiters, result, made)
        return result

    def _deliver(self, waiters: list[tuple[ServiceKey, pol.CheckId]], result: Result, made: float) -> None:
        now = time.monotonic()
        touched: dict[ServiceKey, pol.ServiceHealth] = {}
        for service, check in waiters:
            self.seen[(service, check)] = made
            sh = self.services.get(service)
            if sh is None:
                continue                              # the service went with a reload
            try:
                if sh.handle_result(check, result, now):
                    touched[service] = sh
            except ValueError as e:
                log.error("%s: %s", key_name(service), e)
        for sh in touched.values():
            self._events(sh)
        self._arm()

    # -- scripts --------------------------------------------------------------------------------
    async def _script(self, ev: pol.RunScript) -> None:
        what = f"{ev.reason.value} script {' '.join(ev.argv)}"
        try:
            proc = await asyncio.create_subprocess_exec(*ev.argv, stdin=asyncio.subprocess.DEVNULL,
                                                        start_new_session=True)
        except OSError as e:
            log.error("%s: cannot run: %s", what, e)
            return
        try:
            async with asyncio.timeout(SCRIPT_TIMEOUT):
                code = await proc.wait()
        except TimeoutError:
            await kill_group(proc)
            log.error("%s: still running after %g s: killed", what, SCRIPT_TIMEOUT)
            return
        except asyncio.CancelledError:
            await asyncio.shield(kill_group(proc))
            raise
        if code == 0:
            log.info("%s: exit 0", what)
        else:
            log.warning("%s: %s", what, f"killed by signal {-code}" if code < 0 else f"exit {code}")

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ulvs.health.monitor",
                                description="ulvs health monitor (started by ulvs run)")
    p.add_argument("--config", type=Path, required=True, metavar="FILE")
    p.add_argument("--socket", type=Path, required=True, metavar="CONTROL_SOCKET")
    p.add_argument("--format", metavar="FMT", help="the configuration's format (default: detected)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s ulvs-health[%(process)d] %(levelname)s %(message)s")
    if not child.attach_to_parent("health monitor", log):
        return 1
    return child.run(Monitor(args.config, args.format, args.socket).run())


if __name__ == "__main__":
    sys.exit(main())
