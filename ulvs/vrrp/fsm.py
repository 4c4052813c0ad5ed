"""The state machine of one VRRPv3 instance (RFC 5798 section 6), and keepalived's sync groups.

Pure: no sockets, no clock.  Every call takes ``now`` (seconds, any monotonic origin) and returns
a list of actions; the shell (the VRRP speaker) performs them in order and re-arms one timer at
``next_deadline()`` (aioquic style, STYLE rule 2).

Theory of operation
-------------------

An ``Instance`` is in one of four states: INIT, BACKUP and MASTER are RFC 5798's Initialize,
Backup and Master (sections 6.4.1 to 6.4.3); FAULT is keepalived's internal state for a tracked
interface that is down (never master, adverts ignored).

Everything that happens to an instance -- an API call, a received advert, a timer expiry -- is
first *classified* into one ``Input``.  The classification is the only place that looks at
priorities, addresses and options: for a received advert it answers "priority zero?", "does
the sender outrank us?" and, for a lower-priority sender, "do we preempt it now?".  Then
``RULES`` maps (state, input) to a ``Rule``: the next state (or none), the ``Step``s to run in
order, a reason and the RFC text it implements.  Every pair that can occur is in the table; a
missing pair is a bug and raises.

A sender *outranks* us when its priority is higher, or equal and its primary address (the
advert's IP source, compared as an unsigned 32-bit number) is higher: RFC 5798 section 6.4.3's
tie-break.  A Backup follows any advert whose priority is at least ours, or any advert when
Preempt_Mode is off (section 6.4.2); it discards a lower-priority advert, so that its
Master_Down_Timer fires and it takes over (preemption), unless preemption is held:

* ``preempt_delay`` (keepalived): lower-priority adverts are still followed for that long
  after start-up, or after first seeing a lower-priority master;
* ``hold_preempt(until)`` (ulvs): while a connection-sync bulk resync is pending, the shell
  forbids preemption -- lower-priority adverts are followed, so the master being heard keeps
  its place, and an address owner (priority 255) starts as a Backup instead of as Master.
  When no master is heard at all, Master_Down still fires: someone must own the addresses.

A Master answers a lower-priority advert at once with its own advert and one round of
gratuitous ARP, as keepalived does (and RFC 9568, per keepalived.conf(5)): after a partition
heals, the loser steps down on the first advert and the winner re-announces the addresses
(split-brain re-assertion).  ``lower_prio_no_advert`` restores RFC 5798's silent discard.  When
the winner's advert arrives first, the loser just steps down and nobody re-announces;
``higher_prio_send_advert`` (keepalived) makes the loser send one advert before it yields, so
that the winner re-announces in that order too.

Timers (section 6.1, v3 form; intervals in seconds, carried as centiseconds on the wire)::

    Skew_Time            = ((256 - Priority) * Master_Adver_Interval) / 256
    Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time

where Master_Adver_Interval is our own Advertisement_Interval until a Backup *learns* the
master's from its adverts.  A Master also runs the Adver_Timer and keepalived's GARP timers:
``garp_repeat`` gratuitous ARP rounds on becoming master, as many again ``garp_master_delay``
later, and one every ``garp_refresh`` if set (``min_garp``: a single round, no second burst).
Any state change cancels every timer; the steps after it arm the new state's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum

from ulvs.config.schema import VrrpInstance
from ulvs.vrrp.packet import MAX_ADVER_INT, Advert

# -- states and actions -----------------------------------------------------------------------


class State(IntEnum):
    """Instance states, numbered as keepalived-exporter reports them."""

    INIT = 0        # RFC 5798 section 6.4.1 Initialize
    BACKUP = 1      # RFC 5798 section 6.4.2 Backup
    MASTER = 2      # RFC 5798 section 6.4.3 Master
    FAULT = 3       # internal (keepalived): a tracked interface is down


@dataclass(frozen=True, slots=True)
class SendAdvert:
    """Send one advertisement with this priority (0: the master is leaving)."""

    priority: int


@dataclass(frozen=True, slots=True)
class Transition:
    """The state changed: run the notify script; entering MASTER add the virtual addresses,
    leaving it remove them; tell the dataplane and connection sync."""

    old: State
    new: State
    reason: str


@dataclass(frozen=True, slots=True)
class SendGarp:
    """One round of gratuitous ARP, one for every virtual address."""


Action = SendAdvert | Transition | SendGarp

# -- settings ---------------------------------------------------------------------------------

OWNER_PRIORITY = 255        # the address owner (RFC 5798 section 6.1)


@dataclass(frozen=True, slots=True)
class InstanceSettings:
    """What the state machine needs of one ``vrrp_instance``.

    ``initial_state`` is keepalived's ``state`` keyword, kept for reporting only: as RFC 5798
    section 6.4.1 says, an instance with priority 255 starts as Master and every other one as
    Backup.  (keepalived also starts a configured MASTER below 255 as Backup, but sends one
    advert at once; ulvs does not: a Backup is silent until its Master_Down_Timer fires.)
    """

    name: str
    vrid: int
    priority: int = 100                 # 1..255; 255 = address owner
    advert_int: float = 1.0             # seconds; sent as centiseconds (0.01 .. 40.95)
    preempt: bool = True                # RFC 5798 Preempt_Mode; keepalived ``nopreempt`` = False
    preempt_delay: float = 0.0          # seconds (keepalived ``preempt_delay``)
    initial_state: str = "BACKUP"       # "MASTER" | "BACKUP": see the class docstring
    garp_repeat: int = 5                # GARP rounds per burst (keepalived garp_master_repeat)
    garp_master_delay: float = 5.0      # second burst after this long; 0 = no second burst
    garp_refresh: float = 0.0           # one GARP round this often while master; 0 = off
    min_garp: bool = False              # keepalived vrrp_min_garp: one round, no second burst
    lower_prio_no_advert: bool = False  # RFC 5798: discard lower-priority adverts silently
    higher_prio_send_advert: bool = False  # keepalived: a master yielding sends one advert first

    def __post_init__(self) -> None:
        _check(1 <= self.vrid <= 255, f"vrid {self.vrid} out of range (allowed: 1..255)")
        _check(1 <= self.priority <= OWNER_PRIORITY, f"priority {self.priority} out of range "
               f"(allowed: 1..{OWNER_PRIORITY})")
        _check(1 <= self.adver_int_cs <= MAX_ADVER_INT, f"advert_int {self.advert_int:g} out of range "
               f"(allowed: 0.01 .. {MAX_ADVER_INT / 100} s)")
        _check(self.preempt_delay >= 0, f"preempt_delay {self.preempt_delay:g} is negative")
        _check(self.initial_state in ("MASTER", "BACKUP"),
               f"initial state {self.initial_state!r} (allowed: MASTER, BACKUP)")
        _check(self.garp_repeat >= 1, f"garp_repeat {self.garp_repeat} (allowed: >= 1)")
        _check(self.garp_master_delay >= 0, f"garp_master_delay {self.garp_master_delay:g} is negative")
        _check(self.garp_refresh >= 0, f"garp_refresh {self.garp_refresh:g} is negative")

    @property
    def adver_int_cs(self) -> int:
        """Advertisement_Interval as the wire carries it (12 bits of centiseconds)."""
        return round(self.advert_int * 100)

    @property
    def advertisement_interval(self) -> float:
        """Advertisement_Interval in seconds, rounded to what the wire carries."""
        return self.adver_int_cs / 100

    @classmethod
    def from_config(cls, inst: VrrpInstance) -> InstanceSettings:
        """Settings of a configured instance.  Only VRRPv3 is implemented (v2's timers and
        authentication differ): a version 2 instance raises ``ValueError``.  ``garp_refresh``
        has no configuration key yet and stays off."""
        if inst.version != 3:
            raise ValueError(f"vrrp_instance {inst.name}: VRRP version {inst.version} is not supported "
                             f"(allowed: 3)")
        return cls(name=inst.name, vrid=inst.vrid, priority=inst.priority, advert_int=inst.advert_int,
                   preempt=inst.preempt, preempt_delay=inst.preempt_delay, initial_state=inst.state,
                   garp_repeat=inst.garp_master_repeat, garp_master_delay=inst.garp_master_delay,
                   min_garp=inst.min_garp, lower_prio_no_advert=inst.lower_prio_no_advert,
                   higher_prio_send_advert=inst.higher_prio_send_advert)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# -- the transition table ---------------------------------------------------------------------


class Input(Enum):
    """What happened to an instance, after classification."""

    STARTUP = "startup"                     # start(), not an (unheld) address owner
    STARTUP_OWNER = "startup_owner"         # start(), priority 255, preemption not held
    MASTER_DOWN = "master_down"             # Master_Down_Timer fired
    ADVER_TIMER = "adver_timer"             # Adver_Timer fired
    GARP_DELAY_TIMER = "garp_delay_timer"   # garp_master_delay after becoming master
    GARP_REFRESH_TIMER = "garp_refresh"     # garp_refresh while master
    ADVERT_ZERO = "advert_zero"             # priority 0: the master is leaving
    ADVERT_HIGHER = "advert_higher"         # the sender outranks us (priority, then address)
    ADVERT_HIGHER_ANSWER = "advert_higher_answer"  # Master: as ADVERT_HIGHER, higher_prio_send_advert
    ADVERT_FOLLOW = "advert_follow"         # Backup: Preempt_Mode off, or equal priority
    ADVERT_HELD = "advert_held"             # Backup: lower priority, preemption held by the shell
    ADVERT_DELAYED = "advert_delayed"       # Backup: lower priority, within preempt_delay
    ADVERT_LOWER = "advert_lower"           # lower priority (or equal, lower address), preemptible
    ADVERT_LOWER_QUIET = "advert_lower_quiet"  # Master: as ADVERT_LOWER, with lower_prio_no_advert
    ADVERT_INACTIVE = "advert_inactive"     # any advert while INIT or FAULT
    SHUTDOWN = "shutdown"
    FAULT_DETECTED = "fault_detected"       # fault(): a tracked interface went down
    FAULT_CLEARED = "fault_cleared"         # recover(): it came back
    SYNC_MASTER = "sync_master"             # the sync group goes MASTER
    SYNC_BACKUP = "sync_backup"             # the sync group goes BACKUP
    SYNC_FAULT = "sync_fault"               # the sync group goes FAULT


class Step(Enum):
    """The things a rule does, run in the order the rule lists them."""

    TRANSITION = "transition"       # emit Transition; cancel every timer and the preempt window
    SEND_ADVERT = "send_advert"     # SendAdvert(priority); Adver_Timer := Advertisement_Interval
    SEND_ZERO = "send_zero"         # SendAdvert(0)
    GARP_BURST = "garp_burst"       # garp_repeat SendGarp (1 with min_garp); arm the GARP timers
    GARP_REPEAT = "garp_repeat"     # the second burst: garp_repeat SendGarp
    GARP_ONE = "garp_one"           # one SendGarp
    ARM_GARP_REFRESH = "arm_garp_refresh"
    LEARN_INTERVAL = "learn_interval"   # Master_Adver_Interval := the advert's Max Adver Int
    OWN_INTERVAL = "own_interval"       # Master_Adver_Interval := Advertisement_Interval
    ARM_MASTER_DOWN = "arm_master_down"  # Master_Down_Timer := Master_Down_Interval
    ARM_SKEW = "arm_skew"               # Master_Down_Timer := Skew_Time
    OPEN_PREEMPT_WINDOW = "open_preempt_window"    # preempt_delay starts now (unless running)
    CLOSE_PREEMPT_WINDOW = "close_preempt_window"


@dataclass(frozen=True, slots=True)
class Rule:
    """``next`` None: stay (``reason``, when set, is the counter to bump); otherwise ``reason``
    is the Transition's reason."""

    next: State | None
    steps: tuple[Step, ...]
    reason: str
    rfc: str


S, I, St = State, Input, Step
_STAY = Rule(None, (), "", "nothing to do in this state")
_TO_MASTER = (St.TRANSITION, St.SEND_ADVERT, St.GARP_BURST)
_FOLLOW = (St.LEARN_INTERVAL, St.ARM_MASTER_DOWN)
_TO_BACKUP = (St.TRANSITION, St.OWN_INTERVAL, St.ARM_MASTER_DOWN)
_SYNC = "keepalived vrrp_sync_group: follow the group"

RULES: dict[tuple[State, Input], Rule] = {
    # -- Initialize (RFC 5798 section 6.4.1) ----------------------------------------------------
    (S.INIT, I.STARTUP_OWNER): Rule(S.MASTER, _TO_MASTER, "owner_startup",
                                    "6.4.1: priority 255: send an advert, broadcast GARP, set the "
                                    "Adver_Timer, transition to Master"),
    (S.INIT, I.STARTUP): Rule(S.BACKUP, (*_TO_BACKUP, St.OPEN_PREEMPT_WINDOW), "startup",
                              "6.4.1: else Master_Adver_Interval := Advertisement_Interval, "
                              "Master_Down_Timer := Master_Down_Interval, transition to Backup"),
    (S.INIT, I.ADVERT_INACTIVE): Rule(None, (), "inactive_discarded", "6.4.1: not running"),
    (S.INIT, I.SHUTDOWN): _STAY,
    (S.INIT, I.FAULT_DETECTED): Rule(S.FAULT, (St.TRANSITION,), "fault", "internal: tracked interface down"),
    (S.INIT, I.FAULT_CLEARED): _STAY,
    (S.INIT, I.SYNC_MASTER): _STAY,
    (S.INIT, I.SYNC_BACKUP): _STAY,
    (S.INIT, I.SYNC_FAULT): _STAY,
    # -- Backup (RFC 5798 section 6.4.2) --------------------------------------------------------
    (S.BACKUP, I.MASTER_DOWN): Rule(S.MASTER, _TO_MASTER, "master_down",
                                    "6.4.2: Master_Down_Timer fires: send an advert, broadcast GARP, "
                                    "set the Adver_Timer, transition to Master"),
    (S.BACKUP, I.ADVERT_ZERO): Rule(None, (St.ARM_SKEW,), "",
                                    "6.4.2: priority 0: Master_Down_Timer := Skew_Time"),
    (S.BACKUP, I.ADVERT_HIGHER): Rule(None, (St.CLOSE_PREEMPT_WINDOW, *_FOLLOW), "",
                                      "6.4.2: priority >= ours: learn Master_Adver_Interval, "
                                      "reset Master_Down_Timer"),
    (S.BACKUP, I.ADVERT_FOLLOW): Rule(None, _FOLLOW, "",
                                      "6.4.2: Preempt_Mode False, or priority >= ours: learn "
                                      "Master_Adver_Interval, reset Master_Down_Timer"),
    (S.BACKUP, I.ADVERT_HELD): Rule(None, _FOLLOW, "preempt_held",
                                    "ulvs hold_preempt: follow as if Preempt_Mode were False"),
    (S.BACKUP, I.ADVERT_DELAYED): Rule(None, (St.OPEN_PREEMPT_WINDOW, *_FOLLOW), "preempt_delayed",
                                       "keepalived preempt_delay: follow until the delay is over"),
    (S.BACKUP, I.ADVERT_LOWER): Rule(None, (), "lower_priority_discarded",
                                     "6.4.2: else discard (the Master_Down_Timer will preempt)"),
    (S.BACKUP, I.SHUTDOWN): Rule(S.INIT, (St.TRANSITION,), "shutdown",
                                 "6.4.2: Shutdown: cancel Master_Down_Timer, transition to Initialize"),
    (S.BACKUP, I.FAULT_DETECTED): Rule(S.FAULT, (St.TRANSITION,), "fault",
                                       "internal: tracked interface down"),
    (S.BACKUP, I.FAULT_CLEARED): _STAY,
    (S.BACKUP, I.SYNC_MASTER): Rule(S.MASTER, _TO_MASTER, "sync_group", _SYNC),
    (S.BACKUP, I.SYNC_BACKUP): _STAY,
    (S.BACKUP, I.SYNC_FAULT): Rule(S.FAULT, (St.TRANSITION,), "sync_group", _SYNC),
    # -- Master (RFC 5798 section 6.4.3) --------------------------------------------------------
    (S.MASTER, I.ADVER_TIMER): Rule(None, (St.SEND_ADVERT,), "",
                                    "6.4.3: Adver_Timer fires: send an advert, reset the timer"),
    (S.MASTER, I.GARP_DELAY_TIMER): Rule(None, (St.GARP_REPEAT,), "",
                                         "keepalived garp_master_delay: the second GARP burst"),
    (S.MASTER, I.GARP_REFRESH_TIMER): Rule(None, (St.GARP_ONE, St.ARM_GARP_REFRESH), "",
                                           "keepalived garp_master_refresh"),
    (S.MASTER, I.ADVERT_ZERO): Rule(None, (St.SEND_ADVERT,), "",
                                    "6.4.3: priority 0: send an advert, reset the Adver_Timer"),
    (S.MASTER, I.ADVERT_HIGHER): Rule(S.BACKUP, (St.TRANSITION, *_FOLLOW), "higher_priority",
                                      "6.4.3: higher priority, or equal and higher primary address: "
                                      "cancel Adver_Timer, learn Master_Adver_Interval, "
                                      "Master_Down_Timer := Master_Down_Interval, transition to Backup"),
    (S.MASTER, I.ADVERT_HIGHER_ANSWER): Rule(S.BACKUP, (St.SEND_ADVERT, St.TRANSITION, *_FOLLOW),
                                             "higher_priority",
                                             "6.4.3 as above, with keepalived higher_prio_send_advert: "
                                             "one advert first, so that the winner re-announces"),
    (S.MASTER, I.ADVERT_LOWER): Rule(None, (St.SEND_ADVERT, St.GARP_ONE), "lower_priority_reasserted",
                                     "keepalived / RFC 9568: answer a lower priority at once and "
                                     "re-announce the addresses (split-brain healing)"),
    (S.MASTER, I.ADVERT_LOWER_QUIET): Rule(None, (), "lower_priority_discarded",
                                           "6.4.3: else discard (lower_prio_no_advert)"),
    (S.MASTER, I.SHUTDOWN): Rule(S.INIT, (St.SEND_ZERO, St.TRANSITION), "shutdown",
                                 "6.4.3: Shutdown: cancel Adver_Timer, send an advert with priority 0, "
                                 "transition to Initialize"),
    (S.MASTER, I.FAULT_DETECTED): Rule(S.FAULT, (St.SEND_ZERO, St.TRANSITION), "fault",
                                       "internal: release mastership as a shutdown does"),
    (S.MASTER, I.FAULT_CLEARED): _STAY,
    (S.MASTER, I.SYNC_MASTER): _STAY,
    (S.MASTER, I.SYNC_BACKUP): Rule(S.BACKUP, _TO_BACKUP, "sync_group", _SYNC),
    (S.MASTER, I.SYNC_FAULT): Rule(S.FAULT, (St.SEND_ZERO, St.TRANSITION), "sync_group", _SYNC),
    # -- Fault (internal) -----------------------------------------------------------------------
    (S.FAULT, I.ADVERT_INACTIVE): Rule(None, (), "inactive_discarded", "internal: not running"),
    (S.FAULT, I.SHUTDOWN): Rule(S.INIT, (St.TRANSITION,), "shutdown", "internal: stop"),
    (S.FAULT, I.FAULT_DETECTED): _STAY,
    (S.FAULT, I.FAULT_CLEARED): Rule(S.BACKUP, _TO_BACKUP, "recover",
                                     "internal: leave FAULT as 6.4.1 enters Backup"),
    (S.FAULT, I.SYNC_MASTER): _STAY,
    (S.FAULT, I.SYNC_BACKUP): Rule(S.BACKUP, _TO_BACKUP, "sync_group", _SYNC),
    (S.FAULT, I.SYNC_FAULT): _STAY,
}


class Timer(Enum):
    MASTER_DOWN = I.MASTER_DOWN         # RFC 5798 section 6.2 (Backup)
    ADVER = I.ADVER_TIMER               # RFC 5798 section 6.2 (Master)
    GARP_DELAY = I.GARP_DELAY_TIMER     # keepalived (Master)
    GARP_REFRESH = I.GARP_REFRESH_TIMER  # keepalived (Master)


# Counter names, all present from the start.  The ``*_discarded``/``preempt_*`` ones count
# adverts that changed nothing and why.
COUNTERS = (
    "adverts_sent", "adverts_received", "become_master", "release_master",
    "priority_zero_sent", "priority_zero_received",
    "own_address_discarded",        # the advert's source is our primary address (our own, looped)
    "zero_interval_discarded",      # Max Adver Int 0 would make Master_Down_Interval 0
    "inactive_discarded", "lower_priority_discarded", "lower_priority_reasserted",
    "preempt_held", "preempt_delayed",
)

# -- one instance -----------------------------------------------------------------------------


class Instance:
    """One VRRP instance: RFC 5798 section 6.4, with time as an argument.

    ``primary_addr`` is the 4-byte primary IPv4 address of the instance's interface: what our
    adverts carry as their source, and our side of the equal-priority tie-break.
    """

    def __init__(self, settings: InstanceSettings, primary_addr: bytes) -> None:
        if len(primary_addr) != 4:
            raise ValueError("primary_addr must be a 4-byte packed IPv4 address")
        self.settings = settings
        self.primary_addr = bytes(primary_addr)
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._state = State.INIT
        self._master_adver_int = settings.advertisement_interval
        self._timers: dict[Timer, float] = {}
        self._preempt_window_end: float | None = None
        self._hold_until = float("-inf")
        self._own_fault = False

    # -- observers --

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def state(self) -> State:
        return self._state

    @property
    def own_fault(self) -> bool:
        """True while fault() has not been answered by recover() (a sync group's FAULT is not)."""
        return self._own_fault

    @property
    def master_adver_int(self) -> float:
        """Master_Adver_Interval (seconds): ours, or the one learned from the master's adverts."""
        return self._master_adver_int

    @property
    def skew_time(self) -> float:
        """Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256 (RFC 5798 section 6.1)."""
        return (256 - self.settings.priority) * self._master_adver_int / 256

    @property
    def master_down_interval(self) -> float:
        """Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time (RFC 5798 section 6.1)."""
        return 3 * self._master_adver_int + self.skew_time

    def next_deadline(self) -> float | None:
        """When ``timer()`` must next be called, or None when no timer runs."""
        return min(self._timers.values(), default=None)

    # -- inputs --

    def start(self, now: float) -> list[Action]:
        """The Startup event (RFC 5798 section 6.4.1).  Only from INIT."""
        if self._state is not State.INIT:
            raise ValueError(f"vrrp instance {self.name}: start() in state {self._state.name}")
        owner = self.settings.priority == OWNER_PRIORITY and not self._held(now)
        return self._apply(I.STARTUP_OWNER if owner else I.STARTUP, now)

    def advert_received(self, adv: Advert, now: float) -> list[Action]:
        """An advert for our VRID that passed ``packet.decode_ip`` (the shell checks the VRID)."""
        self.counters["adverts_received"] += 1
        if adv.priority == 0:
            self.counters["priority_zero_received"] += 1
        if adv.src == self.primary_addr:
            self.counters["own_address_discarded"] += 1
            return []
        if adv.max_adver_int == 0:
            self.counters["zero_interval_discarded"] += 1
            return []
        return self._apply(self._classify(adv, now), now, adv)

    def timer(self, now: float) -> list[Action]:
        """Run every timer due at ``now``; calling it early does nothing."""
        out: list[Action] = []
        for t in Timer:
            deadline = self._timers.get(t)
            if deadline is not None and deadline <= now:
                del self._timers[t]
                out += self._apply(t.value, now)
        return out

    def shutdown(self, now: float) -> list[Action]:
        """The Shutdown event: a Master sends a priority-0 advert; every state goes INIT."""
        return self._apply(I.SHUTDOWN, now)

    def fault(self, now: float) -> list[Action]:
        """A tracked interface went down: go FAULT (a Master releases as on shutdown)."""
        self._own_fault = True
        return self._apply(I.FAULT_DETECTED, now)

    def recover(self, now: float) -> list[Action]:
        """The tracked interfaces are back: leave FAULT as BACKUP.  No-op without a fault()."""
        if not self._own_fault:
            return []
        self._own_fault = False
        return self._apply(I.FAULT_CLEARED, now)

    def sync(self, new: State, now: float) -> list[Action]:
        """Follow a sync group into ``new`` (MASTER, BACKUP or FAULT); used by ``SyncGroup``."""
        inputs = {State.MASTER: I.SYNC_MASTER, State.BACKUP: I.SYNC_BACKUP, State.FAULT: I.SYNC_FAULT}
        if new not in inputs:
            raise ValueError(f"a sync group cannot move an instance to {new.name}")
        return self._apply(inputs[new], now)

    def hold_preempt(self, until: float) -> None:
        """Do not preempt a heard master (and do not start as owner-Master) before ``until``."""
        self._hold_until = until

    # -- classification --

    def _held(self, now: float) -> bool:
        return now < self._hold_until

    def _outranked_by(self, adv: Advert) -> bool:
        """RFC 5798 section 6.4.3: higher priority, or equal and higher primary address."""
        theirs = (adv.priority, int.from_bytes(adv.src, "big"))
        return theirs > (self.settings.priority, int.from_bytes(self.primary_addr, "big"))

    def _classify(self, adv: Advert, now: float) -> Input:
        if self._state in (State.INIT, State.FAULT):
            return I.ADVERT_INACTIVE
        if adv.priority == 0:
            return I.ADVERT_ZERO
        if self._outranked_by(adv):
            answer = self._state is State.MASTER and self.settings.higher_prio_send_advert
            return I.ADVERT_HIGHER_ANSWER if answer else I.ADVERT_HIGHER
        if self._state is State.MASTER:
            return I.ADVERT_LOWER_QUIET if self.settings.lower_prio_no_advert else I.ADVERT_LOWER
        # Backup, sender not above us: RFC 5798 section 6.4.2 follows it unless we preempt.
        if not self.settings.preempt or adv.priority == self.settings.priority:
            return I.ADVERT_FOLLOW
        if self._held(now):
            return I.ADVERT_HELD
        if self.settings.preempt_delay > 0 and (self._preempt_window_end is None
                                                or now < self._preempt_window_end):
            return I.ADVERT_DELAYED
        return I.ADVERT_LOWER

    # -- the table and its steps --

    def _apply(self, inp: Input, now: float, adv: Advert | None = None) -> list[Action]:
        rule = RULES.get((self._state, inp))
        if rule is None:
            raise RuntimeError(f"vrrp instance {self.name}: no rule for {inp.name} in {self._state.name}")
        if rule.next is None and rule.reason:
            self.counters[rule.reason] += 1
        out: list[Action] = []
        for step in rule.steps:
            self._run(step, rule, now, adv, out)
        return out

    def _run(self, step: Step, rule: Rule, now: float, adv: Advert | None, out: list[Action]) -> None:
        s = self.settings
        match step:
            case St.TRANSITION:
                assert rule.next is not None
                self._transition(rule.next, rule.reason, out)
            case St.SEND_ADVERT:
                self._send(s.priority, out)
                self._timers[Timer.ADVER] = now + s.advertisement_interval
            case St.SEND_ZERO:
                self._send(0, out)
            case St.GARP_BURST:
                out += [SendGarp()] * (1 if s.min_garp else s.garp_repeat)
                if s.garp_master_delay > 0 and not s.min_garp:
                    self._timers[Timer.GARP_DELAY] = now + s.garp_master_delay
                if s.garp_refresh > 0:
                    self._timers[Timer.GARP_REFRESH] = now + s.garp_refresh
            case St.GARP_REPEAT:
                out += [SendGarp()] * s.garp_repeat
            case St.GARP_ONE:
                out.append(SendGarp())
            case St.ARM_GARP_REFRESH:
                self._timers[Timer.GARP_REFRESH] = now + s.garp_refresh
            case St.LEARN_INTERVAL:
                assert adv is not None
                self._master_adver_int = adv.max_adver_int / 100
            case St.OWN_INTERVAL:
                self._master_adver_int = s.advertisement_interval
            case St.ARM_MASTER_DOWN:
                self._timers[Timer.MASTER_DOWN] = now + self.master_down_interval
            case St.ARM_SKEW:
                self._timers[Timer.MASTER_DOWN] = now + self.skew_time
            case St.OPEN_PREEMPT_WINDOW:
                if s.preempt_delay > 0 and self._preempt_window_end is None:
                    self._preempt_window_end = now + s.preempt_delay
            case St.CLOSE_PREEMPT_WINDOW:
                self._preempt_window_end = None

    def _transition(self, new: State, reason: str, out: list[Action]) -> None:
        old, self._state = self._state, new
        self._timers.clear()
        self._preempt_window_end = None
        if new is State.MASTER:
            self.counters["become_master"] += 1
        if old is State.MASTER:
            self.counters["release_master"] += 1
        out.append(Transition(old, new, reason))

    def _send(self, priority: int, out: list[Action]) -> None:
        self.counters["adverts_sent"] += 1
        if priority == 0:
            self.counters["priority_zero_sent"] += 1
        out.append(SendAdvert(priority))


# -- sync groups ------------------------------------------------------------------------------


class SyncGroup:
    """keepalived's ``vrrp_sync_group``: instances that change state together.

    The shell passes every member's actions through ``follow``, which returns the members that
    follow and their actions, to be performed after the source's:

    * a member goes FAULT: every running member goes FAULT;
    * while a member is FAULT on its own account, the group is FAULT: a member that would
      become BACKUP or MASTER (recovering, or starting) goes back to FAULT;
    * a member recovers (FAULT -> BACKUP): the members the group put in FAULT go BACKUP;
    * a member stops being master (MASTER -> BACKUP): the other masters go BACKUP;
    * a member becomes MASTER: the backups become MASTER.

    After one pass the group is consistent, so passing the followers' actions through
    ``follow`` again returns nothing; so does a source that is not a member.
    """

    def __init__(self, instances: Iterable[Instance], name: str = "") -> None:
        self.name = name
        self.members = tuple(instances)
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"vrrp_sync_group {name}: an instance appears twice")

    def follow(self, source: Instance, actions: Sequence[Action],
               now: float) -> list[tuple[Instance, list[Action]]]:
        if source not in self.members:
            return []
        out: list[tuple[Instance, list[Action]]] = []
        for action in actions:
            if isinstance(action, Transition):
                out += [(m, followed) for m, followed in self._follow(source, action, now) if followed]
        return out

    def _follow(self, source: Instance, t: Transition, now: float) -> list[tuple[Instance, list[Action]]]:
        others = [m for m in self.members if m is not source]
        if t.new is State.FAULT:
            return [(m, m.sync(State.FAULT, now)) for m in others if m.state in (State.BACKUP, State.MASTER)]
        faulty = any(m.state is State.FAULT and m.own_fault for m in others)
        if t.new in (State.BACKUP, State.MASTER) and faulty:
            return [(source, source.sync(State.FAULT, now))]
        if t.new is State.BACKUP and t.old in (State.FAULT, State.MASTER):
            return [(m, m.sync(State.BACKUP, now)) for m in others if m.state is t.old]
        if t.new is State.MASTER:
            return [(m, m.sync(State.MASTER, now)) for m in others if m.state is State.BACKUP]
        return []
