"""Service health policy: from checker verdicts and traffic to the dests a service should have.

Pure and sans-I/O (aioquic style): a ``ServiceHealth`` is fed probe results
(``handle_result``), per-interval traffic counters (``observe_traffic``) and timer ticks
(``handle_timer``), each with ``now``; it tells the shell when it next needs a tick
(``next_deadline``) and what to do as frozen events (``pop_events``).  The shell runs the
probes (``ProbeDue``), applies the pool changes (``AddDest``/``SetWeight``/``RemoveDest``/
``SorryServer``) and conn-table commands (``ExpireDestConns``), runs ``RunScript`` argument
vectors without a shell, and logs the rest.

Policy, after keepalived's check/ipwrapper.c unless marked "ulvs":

* A dest is *in service* when every checker counts up (``ulvs.health.state``) and it is not
  ejected.  Out of service it is removed from the pool, or kept at weight 0 with
  ``inhibit_on_failure`` (the real_server's setting, else the service's).
* Its weight in service is the smallest weight a dynamic checker reported, else its configured
  weight; ulvs: ramped up over ``slow_start`` seconds after it (re)enters the pool (not at
  start-up, when no dest is warmer than another).
* Quorum: the sum of the in-service dests' weights (dynamic, not ramped) is compared with
  ``quorum`` and ``hysteresis`` by ``QUORUM``: lost when the sum is 0 or below
  ``quorum - hysteresis``, regained at ``quorum + hysteresis`` or more.  At start the quorum is
  up when the sum reaches ``quorum + hysteresis``.
* The sorry server serves while the quorum is down (with the default quorum 1: while no dest
  with a weight is in service), and then the real dests are withdrawn (kept at weight 0 with
  inhibit); ``sorry_server_inhibit`` keeps it in the pool at weight 0 while unused.
* ``notify_up``/``notify_down`` run when a dest enters/leaves service, ``quorum_up``/
  ``quorum_down`` when the quorum is gained/lost.  With ``alpha`` a dest starts out of service
  and unannounced: its first verdict down is announced (keepalived runs notify_down then), its
  first full pass is announced up.  At start, a quorum that is down is announced only when a
  sorry server takes over (keepalived "Starting with quorum down").
* ``omega``: when dests or the whole service are removed (reload, shutdown), notify_down of the
  dests that were in service and quorum_down (if the quorum was up) run too; without omega those
  removals run no script.
* ulvs: when a dest leaves service, its UDP flows expire at once and its TCP connections follow
  the service's ``ConnPolicy`` (kept until they time out, by default).
* ulvs: passive ejection (``Ejector``): a dest that leaves too many new SYNs unanswered in an
  interval is taken out of service for a back-off that doubles with each consecutive ejection;
  afterwards it returns once each of its checkers has passed a probe again.

Each step lists its pool changes first, ordered so that nothing is unavailable in between:
additions and raised weights (and a sorry server switching on), then lowered weights, removals
(and a sorry server switching off).  The facts (``DestStatus``, quorum events), scripts and
conn-table commands follow, so a failed dest's connections are expired after it left the pool.

Reload is by diff (STYLE rule 10): ``migrate(old, new_config, now)`` keeps the state of every
dest still configured and of every checker whose ``CheckSpec`` is unchanged, so a reload does
not flap health.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from ulvs.config.schema import Argv, CheckSpec, EjectionSettings, Endpoint, RealServer, VirtualService
from ulvs.core.model import Proto
from ulvs.health import state as st
from ulvs.health.base import Result

DestKey = tuple[ipaddress.IPv4Address, int]
ServiceKey = tuple[Proto, ipaddress.IPv4Address, int]


# == events ====================================================================================


@dataclass(frozen=True, slots=True)
class CheckId:
    """One checker of one dest.  Serial numbers are never reused, so a result that arrives for
    a checker a reload removed is recognised (and ignored)."""

    dest: DestKey
    serial: int


@dataclass(frozen=True, slots=True)
class ProbeDue:
    """Start one probe of ``spec`` against ``check.dest``.  Every ProbeDue gets exactly one
    ``handle_result`` (a probe that cannot run is a failed Result): until then the checker is
    not scheduled again."""

    service: ServiceKey
    check: CheckId
    spec: CheckSpec


@dataclass(frozen=True, slots=True)
class AddDest:
    service: ServiceKey
    dest: DestKey
    weight: int


@dataclass(frozen=True, slots=True)
class SetWeight:
    service: ServiceKey
    dest: DestKey
    weight: int


@dataclass(frozen=True, slots=True)
class RemoveDest:
    service: ServiceKey
    dest: DestKey


@dataclass(frozen=True, slots=True)
class SorryServer:
    """``active``: in the pool at weight 1; else at weight 0 if ``inhibit``, else out of it."""

    service: ServiceKey
    endpoint: Endpoint
    active: bool
    inhibit: bool


@dataclass(frozen=True, slots=True)
class ExpireDestConns:
    """Drop the dest's connections of ``proto`` (``reset``: send both ends a RST first)."""

    service: ServiceKey
    dest: DestKey
    proto: Proto
    reset: bool = False


@dataclass(frozen=True, slots=True)
class DestStatus:
    """A dest entered (``up``) or left service; ``reason`` is the probe detail or the cause."""

    service: ServiceKey
    dest: DestKey
    up: bool
    reason: str


@dataclass(frozen=True, slots=True)
class QuorumGained:
    service: ServiceKey
    total: int
    threshold: int


@dataclass(frozen=True, slots=True)
class QuorumLost:
    service: ServiceKey
    total: int
    threshold: int


class ScriptReason(Enum):
    NOTIFY_UP = "notify_up"
    NOTIFY_DOWN = "notify_down"
    QUORUM_UP = "quorum_up"
    QUORUM_DOWN = "quorum_down"


@dataclass(frozen=True, slots=True)
class RunScript:
    """Run ``argv`` (no shell); ``dest`` is None for the service's quorum scripts."""

    argv: Argv
    reason: ScriptReason
    service: ServiceKey
    dest: DestKey | None = None


Event = (ProbeDue | AddDest | SetWeight | RemoveDest | SorryServer | ExpireDestConns | DestStatus
         | QuorumGained | QuorumLost | RunScript)


# == connection policy =========================================================================


class ConnPolicy(Enum):
    """What happens to a failed dest's TCP connections (its UDP flows always expire at once)."""

    KEEP = "keep"       # they carry on until they time out (IPVS default: expire_nodest_conn=0)
    EXPIRE = "expire"   # dropped from the conn table; later packets are scheduled anew
    RESET = "reset"     # both ends get a RST, then dropped


def _service_protos(config: VirtualService) -> tuple[Proto, ...]:
    return tuple(sorted({proto for proto, _vaddr, _vport in config.config.entries()}))


def conn_commands(service: ServiceKey, dest: DestKey, protos: Iterable[Proto],
                  policy: ConnPolicy) -> list[ExpireDestConns]:
    out = []
    for proto in protos:
        if proto == Proto.UDP:
            out.append(ExpireDestConns(service, dest, proto))
        elif policy is not ConnPolicy.KEEP:
            out.append(ExpireDestConns(service, dest, proto, reset=policy is ConnPolicy.RESET))
    return out


# == quorum ====================================================================================


class QuorumLevel(Enum):
    LOW = "low"       # total 0, or below quorum - hysteresis
    MID = "mid"       # in the hysteresis band
    HIGH = "high"     # at least quorum + hysteresis


# (quorum up?, level) -> quorum up?
QUORUM: dict[tuple[bool, QuorumLevel], bool] = {
    #  up      level                 up after
    (False, QuorumLevel.LOW):   False,
    (False, QuorumLevel.MID):   False,
    (False, QuorumLevel.HIGH):  True,
    (True,  QuorumLevel.LOW):   False,
    (True,  QuorumLevel.MID):   True,
    (True,  QuorumLevel.HIGH):  True,
}


def quorum_level(total: int, quorum: int, hysteresis: int) -> QuorumLevel:
    if total == 0 or total < quorum - hysteresis:
        return QuorumLevel.LOW
    if total >= quorum + hysteresis:
        return QuorumLevel.HIGH
    return QuorumLevel.MID


# == slow start (ulvs) =========================================================================

# A ramp moves at most once per RAMP_TICK seconds, so a large weight does not mean a timer per
# weight unit.
RAMP_TICK = 1.0


def _ramp_ticks(target: int, duration: float) -> int:
    return min(target - 1, max(1, int(duration // RAMP_TICK)))


def _tick_time(since: float, duration: float, ticks: int, j: int) -> float:
    return since + duration * j / ticks


def _ticks_done(since: float, duration: float, ticks: int, now: float) -> int:
    """How many tick times are <= now, judged by ``_tick_time`` itself so that a timer armed
    at a tick time always finds that tick done (no rounding loops)."""
    j = max(0, min(ticks, int((now - since) * ticks / duration)))
    while j < ticks and _tick_time(since, duration, ticks, j + 1) <= now:
        j += 1
    while j > 0 and _tick_time(since, duration, ticks, j) > now:
        j -= 1
    return j


def ramp_weight(target: int, since: float, duration: float, now: float) -> int:
    """Slow start: the weight rises linearly from 1 at ``since`` to ``target`` at ``since +
    duration``, in ``_ramp_ticks`` equal steps of integer weight (1 + (target - 1)·j / ticks)."""
    if target <= 1 or duration <= 0:
        return target
    ticks = _ramp_ticks(target, duration)
    return 1 + (target - 1) * _ticks_done(since, duration, ticks, now) // ticks


def ramp_next(target: int, since: float, duration: float, now: float) -> float | None:
    """When the ramp's weight next changes, or None when it has reached ``target``."""
    if target <= 1 or duration <= 0:
        return None
    ticks = _ramp_ticks(target, duration)
    j = _ticks_done(since, duration, ticks, now)
    return None if j == ticks else _tick_time(since, duration, ticks, j + 1)


# == passive ejection (ulvs) ===================================================================


@dataclass(frozen=True, slots=True)
class EjectionPolicy:
    """Eject a dest when more than ``threshold`` of the new SYNs sent to it in an interval went
    unanswered, if it got at least ``min_syns``.  The n-th consecutive ejection lasts
    ``min(base · 2^(n-1), max)`` seconds; an interval that passes resets n.  At most
    ``max_fraction`` of a service's dests are ejected at once."""

    threshold: float = 0.5
    min_syns: int = 10
    base: float = 10.0
    max: float = 300.0
    max_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"eject threshold {self.threshold} outside 0..1")
        if self.min_syns < 1 or self.base <= 0 or self.max < self.base:
            raise ValueError("eject min_syns must be >= 1 and 0 < base <= max")
        if not 0.0 <= self.max_fraction <= 1.0:
            raise ValueError(f"eject max_fraction {self.max_fraction} outside 0..1")

    @classmethod
    def from_settings(cls, s: EjectionSettings) -> EjectionPolicy:
        """The policy of a service's configured ``ejection`` (``[service.ejection]``)."""
        return cls(threshold=s.threshold, min_syns=s.min_syns, base=s.backoff, max=s.backoff_max,
                   max_fraction=s.max_fraction)

    def backoff(self, count: int) -> float:
        return min(self.base * 2.0 ** (count - 1), self.max)


@dataclass(frozen=True, slots=True)
class Sample:
    """One interval's counters for a dest: new SYNs sent to it, and how many it answered with a
    SYN-ACK (a RST or silence both count as unanswered)."""

    syns: int
    answered: int

    def __post_init__(self) -> None:
        if not 0 <= self.answered <= self.syns:
            raise ValueError(f"answered {self.answered} outside 0..{self.syns}")

    @property
    def unanswered_ratio(self) -> float:
        return (self.syns - self.answered) / self.syns if self.syns else 0.0


@dataclass(frozen=True, slots=True)
class EjectState:
    count: int = 0                  # consecutive ejections
    out: bool = False               # ejected and not yet returned
    until: float | None = None      # end of the back-off (None once it is over)
    detail: str = ""                # why, while out: "ejected: 12 of 14 SYNs unanswered, back-off 2 s"


class Ejector:
    """Ejection bookkeeping for one service's dests; knows nothing of checkers.  A dest is out
    from its ejection until ``release``; its back-off ends at ``until`` (``expire``)."""

    def __init__(self, policy: EjectionPolicy, dests: Iterable[DestKey] = ()) -> None:
        self.policy = policy
        self._state: dict[DestKey, EjectState] = {d: EjectState() for d in dests}

    def track(self, dests: Iterable[DestKey], previous: Ejector | None = None) -> None:
        """Follow exactly ``dests``, keeping ``previous``'s state of those it knew."""
        old = previous._state if previous is not None else self._state
        self._state = {d: old.get(d, EjectState()) for d in dests}

    def ejected(self, dest: DestKey) -> bool:
        return self._state[dest].out

    def state(self, dest: DestKey) -> EjectState:
        return self._state[dest]

    def observe(self, dest: DestKey, sample: Sample, now: float) -> float | None:
        """Judge one interval; returns the back-off if this sample ejects the dest."""
        cur = self._state[dest]
        if cur.out or sample.syns < self.policy.min_syns:
            return None
        if sample.unanswered_ratio <= self.policy.threshold:
            self._state[dest] = EjectState()
            return None
        if not self._room():
            return None
        count = cur.count + 1
        backoff = self.policy.backoff(count)
        detail = (f"ejected: {sample.syns - sample.answered} of {sample.syns} SYNs unanswered, "
                  f"back-off {backoff:g} s")
        self._state[dest] = EjectState(count, True, now + backoff, detail)
        return backoff

    def expire(self, now: float) -> list[DestKey]:
        """The dests whose back-off is over; they stay out until ``release``."""
        done = [d for d, s in self._state.items() if s.until is not None and s.until <= now]
        for d in done:
            self._state[d] = replace(self._state[d], until=None)
        return done

    def release(self, dest: DestKey) -> None:
        """The dest is back (its consecutive count is kept until an interval passes)."""
        self._state[dest] = replace(self._state[dest], out=False, until=None, detail="")

    def next_deadline(self) -> float | None:
        return min((s.until for s in self._state.values() if s.until is not None), default=None)

    def _room(self) -> bool:
        out = sum(1 for s in self._state.values() if s.out)
        return out + 1 <= self.policy.max_fraction * len(self._state)


# == service health ============================================================================


@dataclass(frozen=True, slots=True)
class _Check:
    serial: int
    spec: CheckSpec
    timing: st.Timing
    state: st.CheckState


@dataclass(slots=True)
class _Dest:
    rs: RealServer
    inhibit: bool
    checks: dict[int, _Check]
    in_service: bool
    announced: bool | None          # last in-service state told to the shell (None: not yet)
    serving: bool = False           # in service and in the pool (not withdrawn for the sorry server)
    since: float | None = None      # slow start began here (None: no ramp running)
    ramp_due: float | None = None   # the ramp's next step
    confirm: set[int] = field(default_factory=set)   # checkers to pass before an ejected dest returns

    @property
    def key(self) -> DestKey:
        return (self.rs.config.daddr, self.rs.config.dport)

    @property
    def healthy(self) -> bool:
        return st.dest_up(c.state for c in self.checks.values())

    @property
    def target(self) -> int:
        return st.dest_weight(self.rs.config.weight, (c.state for c in self.checks.values()))

    @property
    def verdicted_down(self) -> bool:
        return any(c.state.state is st.CheckerState.DOWN for c in self.checks.values())

    def detail(self) -> str:
        failed = [c.state.detail for c in self.checks.values() if not c.state.counts_up]
        done = [c.state.detail for c in self.checks.values()]
        return "; ".join(d for d in (failed or done) if d)


def _inhibit(rs: RealServer, config: VirtualService) -> bool:
    return config.inhibit_on_failure if rs.inhibit_on_failure is None else rs.inhibit_on_failure


def _dest_key(rs: RealServer) -> DestKey:
    return (rs.config.daddr, rs.config.dport)


class ServiceHealth:
    """The health of one service's dests and what its pool should be.  See the module docstring.

    ``installed`` is what the pool holds when this object takes over (default: every configured
    dest at its configured weight, as the service was added; with ``previous``: what the old
    object had applied).  ``slow_start`` (seconds) and ``conn_policy`` are the service's
    ``slow_start`` and ``failed_conns``, and ``ejection`` its ``ejection`` settings (the monitor
    passes them; ``EjectionPolicy.from_settings``).  ``rng`` returns the warmup fractions (0..1).
    ``previous`` is the object this one replaces on a reload: use ``migrate``.
    """

    def __init__(self, config: VirtualService, now: float, *, slow_start: float = 0.0,
                 conn_policy: ConnPolicy = ConnPolicy.KEEP, ejection: EjectionPolicy | None = None,
                 rng: Callable[[], float] | None = None,
                 installed: Mapping[DestKey, int] | None = None,
                 previous: ServiceHealth | None = None) -> None:
        if slow_start < 0:
            raise ValueError(f"slow_start {slow_start} must be >= 0")
        self.config = config
        self.key: ServiceKey = config.config.key
        self.slow_start = slow_start
        self.conn_policy = conn_policy
        self._protos = _service_protos(config)
        fallback = previous._rng if previous is not None else random.Random().random
        self._rng: Callable[[], float] = rng or fallback
        self._serial: int = previous._serial if previous is not None else 0
        self._events: list[Event] = list(previous._events) if previous is not None else []
        self._notes: list[Event] = []     # this step's facts and scripts, after its pool changes
        self._closed = False
        self._dests: dict[DestKey, _Dest] = {}
        for rs in config.dests:
            carried = self._carry_dest(rs, previous, now) if previous is not None else None
            self._dests[_dest_key(rs)] = carried or self._new_dest(rs, now, ramp=previous is not None)
        self._ejector: Ejector | None = None
        if ejection is not None:
            self._ejector = Ejector(ejection)
            self._ejector.track(self._dests, previous._ejector if previous is not None else None)
        self._sorry_applied: tuple[Endpoint, bool] | None = None
        self._applied: dict[DestKey, int]
        self._quorum_up: bool
        if previous is not None:
            self._applied = dict(previous._applied)
            self._sorry_applied = previous._sorry_applied
            self._quorum_up = previous._quorum_up
            self._drop_removed(previous)
        else:
            self._applied = {_dest_key(rs): rs.config.weight for rs in config.dests}
            self._quorum_up = self._level() is QuorumLevel.HIGH
            if not self._quorum_up and config.sorry_server is not None:
                self._quorum_event(False)     # keepalived: "Starting with quorum down"
        if installed is not None:
            self._applied = dict(installed)
        self._sync(now)

    # -- queries ---------------------------------------------------------------------------------

    @property
    def quorum_up(self) -> bool:
        return self._quorum_up

    @property
    def sorry_active(self) -> bool:
        return self.config.sorry_server is not None and not self._quorum_up

    def dests(self) -> tuple[DestKey, ...]:
        return tuple(self._dests)

    def in_service(self, dest: DestKey) -> bool:
        return self._dests[dest].in_service

    def ejected(self, dest: DestKey) -> bool:
        return self._ejector is not None and self._ejector.ejected(dest)

    def ejection_detail(self, dest: DestKey) -> str | None:
        """Why an ejected dest is out ("ejected: 12 of 14 SYNs unanswered, back-off 2 s", then
        "...; back-off over, re-probing" until its checkers pass), or None when it is not."""
        if self._ejector is None or not self._ejector.ejected(dest):
            return None
        s = self._ejector.state(dest)
        return s.detail if s.until is not None else f"{s.detail}; back-off over, re-probing"

    def check_ids(self, dest: DestKey) -> tuple[CheckId, ...]:
        return tuple(CheckId(dest, s) for s in self._dests[dest].checks)

    def check_state(self, check: CheckId) -> st.CheckState:
        return self._dests[check.dest].checks[check.serial].state

    def applied(self) -> dict[DestKey, int]:
        """The pool as this object has told the shell to make it (dest -> weight)."""
        return dict(self._applied)

    def total_weight(self) -> int:
        """What the quorum is judged on: the in-service dests' weights, not ramped."""
        return sum(d.target for d in self._dests.values() if d.in_service)

    # -- the sans-I/O interface ------------------------------------------------------------------

    def pop_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        """The earliest time ``handle_timer`` has something to do, or None."""
        if self._closed:
            return None
        times = [c.state.due for d in self._dests.values() for c in d.checks.values()
                 if c.state.due is not None]
        times.extend(d.ramp_due for d in self._dests.values() if d.ramp_due is not None)
        if self._ejector is not None and (t := self._ejector.next_deadline()) is not None:
            times.append(t)
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        """End back-offs, start due probes (``ProbeDue``), step slow-start ramps."""
        if self._closed:
            return
        if self._ejector is not None:
            for key in self._ejector.expire(now):
                self._end_backoff(self._dests[key], now)
        for d in self._dests.values():
            for serial, c in list(d.checks.items()):
                if c.state.due is not None and c.state.due <= now:
                    d.checks[serial] = replace(c, state=st.started(c.state))
                    self._events.append(ProbeDue(self.key, CheckId(d.key, serial), c.spec))
        self._sync(now)

    def handle_result(self, check: CheckId, result: Result, now: float) -> bool:
        """Apply a probe's result.  False (and nothing done) for a checker that no longer exists
        (a reload removed it while its probe ran); a result nobody asked for is an error."""
        d = self._dests.get(check.dest)
        c = d.checks.get(check.serial) if d is not None else None
        if self._closed or d is None or c is None:
            return False
        if not c.state.in_flight:
            raise ValueError(f"result for {check} but no probe of it is running")
        d.checks[check.serial] = replace(c, state=st.on_result(c.state, result, c.timing, now))
        if result.ok and check.serial in d.confirm:
            d.confirm.discard(check.serial)
            if not d.confirm and self._ejector is not None:
                self._ejector.release(d.key)
        self._sync(now)
        return True

    def observe_traffic(self, dest: DestKey, sample: Sample, now: float) -> None:
        """One interval's SYN counters for ``dest`` (no-op without an ejection policy)."""
        if self._closed or self._ejector is None or dest not in self._dests:
            return
        backoff = self._ejector.observe(dest, sample, now)
        if backoff is not None:
            self._dests[dest].confirm = set()
            self._sync(now, reason=self._ejector.state(dest).detail)

    def shutdown(self) -> None:
        """The service is going away: empty its pool (with omega, run the down scripts too)."""
        if self._closed:
            return
        for d in self._dests.values():
            self._retire(d, "shutdown")
        if self._quorum_up:
            self._quorum_up = False
            self._quorum_event(False, scripts=self.config.omega)
        self._apply({}, None)
        self._flush_notes()
        self._closed = True

    # -- building and reload ---------------------------------------------------------------------

    def _new_check(self, spec: CheckSpec, now: float, *, dest_up: bool | None = None) -> _Check:
        """A checker starting now.  ``dest_up`` is the state of the dest it joins on a reload
        (keepalived migrate_checkers): up, it starts counted up whatever ``alpha`` says, so the
        reload does not take the dest out; down, it stays down until it has run, and one failure
        is a verdict."""
        timing = st.timing_for(spec, self.config.delay_loop, self.config.alpha)
        cs = st.initial(timing, now, self._rng())
        if dest_up is True:
            cs = replace(cs, state=st.CheckerState.PENDING_UP)
        elif dest_up is False:
            cs = replace(cs, state=st.CheckerState.PENDING_DOWN, retries=timing.retry)
        self._serial += 1
        return _Check(self._serial, spec, timing, cs)

    def _new_dest(self, rs: RealServer, now: float, *, ramp: bool) -> _Dest:
        checks = [self._new_check(spec, now) for spec in rs.checks]
        d = _Dest(rs, _inhibit(rs, self.config), {c.serial: c for c in checks}, False, None)
        d.in_service = d.healthy
        if d.in_service and not any(c.timing.alpha for c in checks):
            d.announced = True        # in the pool from the start, as keepalived adds it
        d.serving = d.in_service and not ramp    # added by a reload: ramps as it enters the pool
        return d

    def _carry_dest(self, rs: RealServer, previous: ServiceHealth, now: float) -> _Dest | None:
        old = previous._dests.get(_dest_key(rs))
        if old is None:
            return None
        kept: dict[int, _Check] = {}
        unmatched = list(old.checks.values())
        for spec in rs.checks:
            match = next((c for c in unmatched if c.spec == spec), None)
            if match is None:
                c = self._new_check(spec, now, dest_up=old.healthy)
                kept[c.serial] = c
                continue
            unmatched.remove(match)
            timing = st.timing_for(spec, self.config.delay_loop, self.config.alpha)
            kept[match.serial] = _Check(match.serial, spec, timing, st.carried(match.state, timing, now))
        return _Dest(rs, _inhibit(rs, self.config), kept, old.in_service, old.announced, old.serving,
                     old.since, old.ramp_due, {s for s in old.confirm if s in kept})

    def _drop_removed(self, previous: ServiceHealth) -> None:
        """Dests the new configuration dropped (their RemoveDest comes from ``_apply``)."""
        for key, old in previous._dests.items():
            if key not in self._dests:
                self._retire(old, "removed from the configuration")

    def _retire(self, d: _Dest, reason: str) -> None:
        """A dest leaves with its service or its configuration: omega decides the script."""
        if d.announced:
            self._notes.append(DestStatus(self.key, d.key, False, reason))
            if self.config.omega and d.rs.notify_down is not None:
                self._notes.append(RunScript(d.rs.notify_down, ScriptReason.NOTIFY_DOWN, self.key, d.key))
        d.announced = d.in_service = d.serving = False

    def _end_backoff(self, d: _Dest, now: float) -> None:
        """The back-off is over: probe every checker now; the dest returns when all pass."""
        if not d.checks:
            assert self._ejector is not None
            self._ejector.release(d.key)
            return
        d.confirm = set(d.checks)
        for serial, c in d.checks.items():
            if c.state.due is not None and c.state.due > now:
                d.checks[serial] = replace(c, state=replace(c.state, due=now))

    # -- evaluation ------------------------------------------------------------------------------

    def _level(self) -> QuorumLevel:
        return quorum_level(self.total_weight(), self.config.quorum, self.config.hysteresis)

    def _sync(self, now: float, reason: str | None = None) -> None:
        """Re-derive every dest's service state, the quorum and the pool; emit the differences."""
        for d in self._dests.values():
            d.in_service = d.healthy and not self.ejected(d.key)
            self._announce(d, reason)
        up = QUORUM[(self._quorum_up, self._level())]
        if up != self._quorum_up:
            self._quorum_up = up
            self._quorum_event(up)
        withdrawn = self.sorry_active    # the sorry server serves alone
        for d in self._dests.values():
            self._update_ramp(d, d.in_service and not withdrawn, now)
        self._apply(self._desired_pool(now), self._desired_sorry())
        self._flush_notes()

    def _flush_notes(self) -> None:
        self._events.extend(self._notes)
        self._notes.clear()

    def _update_ramp(self, d: _Dest, serving: bool, now: float) -> None:
        """Slow start runs from when a dest enters the pool (after start-up) to its weight."""
        if not serving:
            d.since = None
        elif not d.serving and self.slow_start > 0:
            d.since = now
        d.serving = serving
        d.ramp_due = None if d.since is None else ramp_next(d.target, d.since, self.slow_start, now)
        if d.ramp_due is None:
            d.since = None

    def _announce(self, d: _Dest, reason: str | None) -> None:
        if d.in_service == d.announced:
            return
        ejected = self.ejected(d.key)
        if d.announced is None and not d.in_service and not (ejected or d.verdicted_down):
            return    # alpha: no verdict yet
        was_up = d.announced is True
        d.announced = d.in_service
        why = reason if reason is not None and ejected else ("ejected" if ejected else d.detail())
        self._notes.append(DestStatus(self.key, d.key, d.in_service, why))
        script = d.rs.notify_up if d.in_service else d.rs.notify_down
        if script is not None:
            kind = ScriptReason.NOTIFY_UP if d.in_service else ScriptReason.NOTIFY_DOWN
            self._notes.append(RunScript(script, kind, self.key, d.key))
        if was_up and not d.in_service:
            self._notes.extend(conn_commands(self.key, d.key, self._protos, self.conn_policy))

    def _quorum_event(self, up: bool, scripts: bool = True) -> None:
        total, q, h = self.total_weight(), self.config.quorum, self.config.hysteresis
        if up:
            self._notes.append(QuorumGained(self.key, total, q + h))
        else:
            self._notes.append(QuorumLost(self.key, total, q - h))
        script = self.config.quorum_up if up else self.config.quorum_down
        if scripts and script is not None:
            kind = ScriptReason.QUORUM_UP if up else ScriptReason.QUORUM_DOWN
            self._notes.append(RunScript(script, kind, self.key))

    def _desired_pool(self, now: float) -> dict[DestKey, int]:
        pool: dict[DestKey, int] = {}
        for key, d in self._dests.items():
            if d.serving:
                pool[key] = self._weight(d, now)
            elif d.inhibit:
                pool[key] = 0
        return pool

    def _weight(self, d: _Dest, now: float) -> int:
        if d.since is None:
            return d.target
        return ramp_weight(d.target, d.since, self.slow_start, now)

    def _desired_sorry(self) -> tuple[Endpoint, bool] | None:
        ep = self.config.sorry_server
        if ep is None or (not self.sorry_active and not self.config.sorry_server_inhibit):
            return None
        return (ep, self.sorry_active)

    def _apply(self, pool: dict[DestKey, int], sorry: tuple[Endpoint, bool] | None) -> None:
        """Emit the changes from the applied pool to ``pool``, what adds capacity first."""
        gains: list[Event] = []
        losses: list[Event] = []
        for key, weight in pool.items():
            old = self._applied.get(key)
            if old is None:
                gains.append(AddDest(self.key, key, weight))
            elif weight > old:
                gains.append(SetWeight(self.key, key, weight))
            elif weight < old:
                losses.append(SetWeight(self.key, key, weight))
        losses.extend(RemoveDest(self.key, key) for key in self._applied if key not in pool)
        self._apply_sorry(sorry, gains, losses)
        self._events.extend(gains + losses)
        self._applied = pool

    def _apply_sorry(self, sorry: tuple[Endpoint, bool] | None, gains: list[Event],
                     losses: list[Event]) -> None:
        old = self._sorry_applied
        if sorry == old:
            return
        if old is not None and (sorry is None or sorry[0] != old[0]):
            losses.append(SorryServer(self.key, old[0], False, False))
        if sorry is not None:
            ep, active = sorry
            (gains if active else losses).append(SorryServer(self.key, ep, active,
                                                              self.config.sorry_server_inhibit))
        self._sorry_applied = sorry


class Keep(Enum):
    """``migrate``'s default for an option where None has a meaning of its own."""

    OLD = "old"


def migrate(old: ServiceHealth, new_config: VirtualService, now: float, *,
            slow_start: float | None = None, conn_policy: ConnPolicy | None = None,
            ejection: EjectionPolicy | None | Keep = Keep.OLD,
            installed: Mapping[DestKey, int] | None = None) -> ServiceHealth:
    """Reload by diff: a ServiceHealth for ``new_config`` that keeps ``old``'s state of every
    dest still configured (same daddr:dport) and of every checker whose CheckSpec is unchanged
    (a checker's target is its dest plus its options, so the same spec on the same dest is the
    same probe).  Removed dests leave the pool; added dests start as at start-up but ramp.
    Options left None are ``old``'s, and so is ``ejection`` left out (None: no ejection any
    more, and every ejected dest is back unless its checkers say otherwise); ``old``'s pending
    events move over and ``old`` is closed.
    A service whose key changed is a different service: shut the old one down instead."""
    if old.key != new_config.config.key:
        raise ValueError(f"migrate: service {old.key} is not {new_config.config.key}")
    new = ServiceHealth(
        new_config, now,
        slow_start=old.slow_start if slow_start is None else slow_start,
        conn_policy=old.conn_policy if conn_policy is None else conn_policy,
        ejection=(old._ejector.policy if old._ejector else None) if ejection is Keep.OLD else ejection,
        installed=installed, previous=old)
    old._closed = True
    old._events = []
    return new
