"""Per-checker health state: when the next probe is due and what the results so far mean.

Pure: no I/O, no clock.  Every function takes ``now`` and returns a new frozen ``CheckState``;
the service policy (``ulvs.health.policy``) owns the states and turns them into dest changes.

Theory of operation
-------------------

A checker (one ``schema.CheckSpec`` of one dest) is probed by the shell whenever its state is
due, and every probe ends in one ``base.Result``.  A result is classified into one of three
inputs, and ``TRANSITIONS`` maps (state, input) to (next state, which delay until the next
probe).  The classification is the only place the retry counter matters:

* ``OK``          the probe passed;
* ``FAIL_RETRY``  the probe failed and fewer than ``retry`` failures have been absorbed since
                  the last verdict: probe again after ``delay_before_retry``;
* ``FAIL_LAST``   the probe failed and the retries are used up: this is a verdict.

A ``RETRY`` delay adds one to the counter; a ``LOOP`` delay (``delay_loop``) resets it.  So
``retry N`` means N + 1 failed probes in a row, spaced ``delay_before_retry``, before a checker
that was up is down -- keepalived's ``retry`` (check_tcp.c ``tcp_epilog``).  keepalived keeps
retrying while a checker is down too (the spacing changes, never the verdict); so does ulvs.

One passed probe is enough to bring a checker up: keepalived has no rise count, and neither
has ulvs (slow start, in the policy, is what protects a dest that has just come back).

Before its first verdict a checker is PENDING: counted up without ``alpha`` (keepalived starts
real servers in the pool), counted down with ``alpha`` (the dest stays out until its first good
probe).  The first probe is due after a random part of ``warmup`` (default: ``delay_loop``), as
keepalived staggers its checkers; the random fraction is an argument here.

A dest is up when every one of its checkers counts up (keepalived ``num_failed_checkers == 0``);
a dest without checkers is always up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import Enum

from ulvs.config.schema import CheckSpec
from ulvs.core.model import MAX_WEIGHT
from ulvs.health.base import DEFAULT_DELAY_BEFORE_RETRY, DEFAULT_DELAY_LOOP, DEFAULT_RETRY, Result


class CheckerState(Enum):
    PENDING_UP = "pending-up"       # internal: not yet verdicted, counted up (alpha off)
    PENDING_DOWN = "pending-down"   # internal: not yet verdicted, counted down (alpha on)
    UP = "up"
    FAILING = "failing"             # up, but failed probes are being retried
    DOWN = "down"


class CheckInput(Enum):
    OK = "ok"
    FAIL_RETRY = "fail-retry"       # a failure with retries left
    FAIL_LAST = "fail-last"         # a failure with no retry left: a verdict


class Delay(Enum):
    LOOP = "delay_loop"             # the next regular probe; resets the retry counter
    RETRY = "delay_before_retry"    # a retry; counts one retry


S, I, D = CheckerState, CheckInput, Delay

# (state, input) -> (next state, delay until the next probe).  Every pair is defined.
TRANSITIONS: dict[tuple[CheckerState, CheckInput], tuple[CheckerState, Delay]] = {
    #  state             input               next state         next probe after
    (S.PENDING_UP,   I.OK):           (S.UP,             D.LOOP),
    (S.PENDING_UP,   I.FAIL_RETRY):   (S.FAILING,        D.RETRY),
    (S.PENDING_UP,   I.FAIL_LAST):    (S.DOWN,           D.LOOP),
    (S.PENDING_DOWN, I.OK):           (S.UP,             D.LOOP),
    (S.PENDING_DOWN, I.FAIL_RETRY):   (S.PENDING_DOWN,   D.RETRY),
    (S.PENDING_DOWN, I.FAIL_LAST):    (S.DOWN,           D.LOOP),
    (S.UP,           I.OK):           (S.UP,             D.LOOP),
    (S.UP,           I.FAIL_RETRY):   (S.FAILING,        D.RETRY),
    (S.UP,           I.FAIL_LAST):    (S.DOWN,           D.LOOP),
    (S.FAILING,      I.OK):           (S.UP,             D.LOOP),
    (S.FAILING,      I.FAIL_RETRY):   (S.FAILING,        D.RETRY),
    (S.FAILING,      I.FAIL_LAST):    (S.DOWN,           D.LOOP),
    (S.DOWN,         I.OK):           (S.UP,             D.LOOP),
    (S.DOWN,         I.FAIL_RETRY):   (S.DOWN,           D.RETRY),
    (S.DOWN,         I.FAIL_LAST):    (S.DOWN,           D.LOOP),
}

# States whose checker lets its dest be up.
COUNTS_UP = frozenset({S.PENDING_UP, S.UP, S.FAILING})
# States reached only by a verdict (not the initial guess).
VERDICTED = frozenset({S.UP, S.FAILING, S.DOWN})

del S, I, D

# keepalived's per-kind defaults where they differ from the common ones (keepalived.conf(5)):
# DNS_CHECK retries 3 times and waits delay_loop before a retry (None here); HTTP_GET and
# SSL_GET wait 3 s; MISC_CHECK and FILE_CHECK do not retry.
KIND_RETRY = {"DNS_CHECK": 3, "MISC_CHECK": 0, "FILE_CHECK": 0}
KIND_DELAY_BEFORE_RETRY: dict[str, float | None] = {"HTTP_GET": 3.0, "SSL_GET": 3.0, "DNS_CHECK": None}


@dataclass(frozen=True, slots=True)
class Timing:
    """A checker's schedule, resolved from its options, the service and keepalived's defaults."""

    delay_loop: float = DEFAULT_DELAY_LOOP
    retry: int = DEFAULT_RETRY
    delay_before_retry: float = DEFAULT_DELAY_BEFORE_RETRY
    warmup: float = DEFAULT_DELAY_LOOP
    alpha: bool = False

    def __post_init__(self) -> None:
        if self.delay_loop <= 0:
            raise ValueError(f"delay_loop {self.delay_loop} must be > 0")
        if self.retry < 0 or self.delay_before_retry < 0 or self.warmup < 0:
            raise ValueError("retry, delay_before_retry and warmup must be >= 0")

    def wait(self, delay: Delay) -> float:
        return self.delay_loop if delay is Delay.LOOP else self.delay_before_retry


def timing_for(spec: CheckSpec, delay_loop: float = DEFAULT_DELAY_LOOP, alpha: bool = False) -> Timing:
    """The timing of ``spec``: its own keys first (the config layer has already cascaded the
    real_server's and virtual_server's into it), then the service's ``delay_loop``/``alpha``,
    then keepalived's defaults for its kind.  ``warmup`` defaults to ``delay_loop``."""
    loop = float(spec.get("delay_loop", delay_loop))
    kind_delay = KIND_DELAY_BEFORE_RETRY.get(spec.kind, DEFAULT_DELAY_BEFORE_RETRY)
    delay_default = loop if kind_delay is None else kind_delay
    return Timing(
        delay_loop=loop,
        retry=int(spec.get("retry", KIND_RETRY.get(spec.kind, DEFAULT_RETRY))),
        delay_before_retry=float(spec.get("delay_before_retry", delay_default)),
        warmup=float(spec.get("warmup", loop)),
        alpha=bool(spec.get("alpha", alpha)),
    )


@dataclass(frozen=True, slots=True)
class CheckState:
    """Where one checker is.  ``due`` is when its next probe starts, None while one is running;
    ``weight`` is the dest weight its last passed probe asked for (dynamic checkers), if any."""

    state: CheckerState
    due: float | None
    retries: int = 0
    weight: int | None = None
    detail: str = ""

    @property
    def counts_up(self) -> bool:
        return self.state in COUNTS_UP

    @property
    def in_flight(self) -> bool:
        return self.due is None


def initial(timing: Timing, now: float, fraction: float) -> CheckState:
    """A new checker: PENDING, first probe after ``fraction`` (0..1, random) of ``warmup``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"warmup fraction {fraction} outside 0..1")
    state = CheckerState.PENDING_DOWN if timing.alpha else CheckerState.PENDING_UP
    return CheckState(state, now + fraction * timing.warmup)


def classify(ok: bool, retries: int, retry: int) -> CheckInput:
    if ok:
        return CheckInput.OK
    return CheckInput.FAIL_RETRY if retries < retry else CheckInput.FAIL_LAST


def started(cs: CheckState) -> CheckState:
    """The shell has started the probe that was due."""
    if cs.in_flight:
        raise ValueError("a probe of this checker is already running")
    return replace(cs, due=None)


def on_result(cs: CheckState, result: Result, timing: Timing, now: float) -> CheckState:
    """Apply one probe's result (``TRANSITIONS``) and schedule the next probe from ``now``."""
    nxt, delay = TRANSITIONS[(cs.state, classify(result.ok, cs.retries, timing.retry))]
    weight = cs.weight
    if result.ok:
        weight = None if result.weight is None else max(0, min(MAX_WEIGHT, result.weight))
    retries = cs.retries + 1 if delay is Delay.RETRY else 0
    return CheckState(nxt, now + timing.wait(delay), retries, weight, result.detail)


def carried(cs: CheckState, timing: Timing, now: float) -> CheckState:
    """An unchanged checker kept over a reload with (possibly) new timing: its verdict and
    weight stay; retries already absorbed are capped at the new ``retry`` (so one more failure
    is a verdict, as keepalived's migrate_checkers); a probe due later than the new delay
    allows is brought forward."""
    due = cs.due if cs.due is None else min(cs.due, now + timing.delay_loop)
    return replace(cs, due=due, retries=min(cs.retries, timing.retry))


def dest_up(checks: Iterable[CheckState]) -> bool:
    """keepalived: a dest is up when none of its checkers has failed; no checkers = up."""
    return all(c.counts_up for c in checks)


def dest_weight(configured: int, checks: Iterable[CheckState]) -> int:
    """The weight a dest should have while up: the smallest weight a dynamic checker asked for
    (the most cautious), else the configured weight."""
    asked = [c.weight for c in checks if c.weight is not None]
    return min(asked) if asked else configured
