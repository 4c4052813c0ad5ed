"""The VRRPv3 state machine (ulvs.vrrp.fsm), driven instance against instance.

``Segment`` is the test's whole network and clock: a queue of adverts in flight sorted by
arrival time, and the instances' own deadlines.  It always runs the earliest thing next, so
every transition happens at an exact simulated time -- no sleeps, no real clock.  Expected
times come from RFC 5798 section 6.1 and the table in REFERENCE (h).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address

import pytest

from ulvs.config.schema import VrrpInstance
from ulvs.vrrp.fsm import (
    COUNTERS,
    RULES,
    Action,
    Input,
    Instance,
    InstanceSettings,
    SendAdvert,
    SendGarp,
    State,
    Step,
    SyncGroup,
    Transition,
)
from ulvs.vrrp.packet import Advert

GROUP = IPv4Address("224.0.0.18").packed
VIP = IPv4Address("10.0.0.100").packed


def addr(n: int) -> bytes:
    return IPv4Address(f"10.0.0.{n}").packed


def inst(name: str, priority: int, n: int, *, vrid: int = 1, advert_int: float = 1.0,
         **kw: object) -> Instance:
    settings = InstanceSettings(name=name, vrid=vrid, priority=priority, advert_int=advert_int,
                                **kw)  # type: ignore[arg-type]
    return Instance(settings, addr(n))


def advert_from(sender: Instance, priority: int) -> Advert:
    s = sender.settings
    return Advert(s.vrid, priority, s.adver_int_cs, (VIP,), sender.primary_addr, GROUP, 255)


class Segment:
    """One LAN: adverts reach every other running instance of the same VRID after ``delay``."""

    def __init__(self, *instances: Instance, delay: float = 0.0, groups: Iterable[SyncGroup] = ()) -> None:
        self.instances = {i.name: i for i in instances}
        self.groups = list(groups)
        self.delay = delay
        self.now = 0.0
        self.connected = True
        self.refollow = False           # pass the followers' actions through the groups again
        self.dead: set[str] = set()
        self.log: list[tuple[float, str, Action]] = []
        self._queue: list[tuple[float, int, str, Advert]] = []
        self._seq = 0

    # -- driving --

    def start(self, *names: str) -> None:
        for name in names or tuple(self.instances):
            self.perform(name, self.instances[name].start(self.now))

    def call(self, name: str, method: str, *args: object) -> list[Action]:
        actions: list[Action] = getattr(self.instances[name], method)(*args, self.now)
        self.perform(name, actions)
        return actions

    def kill(self, name: str) -> None:
        """The director dies: no more timers, nothing sent."""
        self.dead.add(name)

    def run(self, until: float) -> None:
        for _ in range(100_000):
            when, what = self._next()
            if when is None or when > until:
                self.now = until
                return
            self.now = when
            if what is None:
                _, _, to, adv = heapq.heappop(self._queue)
                if to not in self.dead:
                    self.perform(to, self.instances[to].advert_received(adv, self.now))
            else:
                self.perform(what, self.instances[what].timer(self.now))
        raise AssertionError("the segment does not settle")

    def _next(self) -> tuple[float | None, str | None]:
        """The earliest event: a delivery (name None) before a timer due at the same time."""
        best: tuple[float | None, str | None] = (self._queue[0][0], None) if self._queue else (None, None)
        for name, i in self.instances.items():
            deadline = i.next_deadline()
            if name not in self.dead and deadline is not None and (best[0] is None or deadline < best[0]):
                best = (deadline, name)
        return best

    def perform(self, name: str, actions: Sequence[Action], follow: bool = True) -> None:
        source = self.instances[name]
        for action in actions:
            self.log.append((self.now, name, action))
            if isinstance(action, SendAdvert) and self.connected and name not in self.dead:
                for other in self.instances.values():
                    if other is not source and other.settings.vrid == source.settings.vrid:
                        self._seq += 1
                        heapq.heappush(self._queue, (self.now + self.delay, self._seq, other.name,
                                                     advert_from(source, action.priority)))
        for group in self.groups if follow else ():
            if source in group.members:
                for member, followed in group.follow(source, actions, self.now):
                    self.perform(member.name, followed, follow=self.refollow)

    # -- reading the log --

    def masters(self) -> list[str]:
        return sorted(n for n, i in self.instances.items() if i.state is State.MASTER and n not in self.dead)

    def transitions(self, name: str) -> list[tuple[float, Transition]]:
        return [(t, a) for t, n, a in self.log if n == name and isinstance(a, Transition)]

    def became_master(self, name: str) -> list[float]:
        return [t for t, a in self.transitions(name) if a.new is State.MASTER]

    def sent(self, name: str, kind: type, since: float = float("-inf")) -> list[tuple[float, Action]]:
        return [(t, a) for t, n, a in self.log if n == name and isinstance(a, kind) and t >= since]

    def last_advert(self, name: str) -> float:
        return max(t for t, _ in self.sent(name, SendAdvert))


# -- timers against RFC 5798 section 6.1 and REFERENCE (h) ---------------------------------------


@pytest.mark.parametrize(("advert_int", "priority", "skew", "down"), [
    (1.0, 100, 0.609375, 3.609375),      # REFERENCE: 0.609 s / 3.61 s
    (1.0, 128, 0.5, 3.5),
    (1.0, 254, 0.0078125, 3.0078125),    # 0.008 s / 3.01 s
    (0.1, 100, 0.0609375, 0.3609375),    # v3: 0.061 s / 0.36 s
])
def test_timer_values(advert_int: float, priority: int, skew: float, down: float) -> None:
    i = inst("VI", priority, 1, advert_int=advert_int)
    assert i.master_adver_int == advert_int
    assert i.skew_time == pytest.approx(skew, abs=1e-12)
    assert i.master_down_interval == pytest.approx(down, abs=1e-12)


def test_backup_learns_the_masters_interval() -> None:
    net = Segment(inst("A", 200, 1, advert_int=0.5), inst("B", 100, 2, advert_int=2.0))
    net.start()
    net.run(5.0)
    b = net.instances["B"]
    assert b.state is State.BACKUP and b.master_adver_int == 0.5
    assert b.master_down_interval == pytest.approx(1.5 + 156 * 0.5 / 256)
    net.kill("A")
    net.run(10.0)
    assert net.became_master("B") == [pytest.approx(net.last_advert("A") + 1.5 + 156 * 0.5 / 256)]


# -- election ---------------------------------------------------------------------------------


@pytest.mark.parametrize("priorities", [(100, 200), (200, 100), (50, 150, 100), (254, 253, 1)])
@pytest.mark.parametrize("advert_int", [1.0, 0.1])
def test_exactly_one_master_in_steady_state(priorities: tuple[int, ...], advert_int: float) -> None:
    names = "ABC"[:len(priorities)]
    net = Segment(*(inst(names[k], p, k + 1, advert_int=advert_int) for k, p in enumerate(priorities)))
    net.start()
    net.run(40 * advert_int)
    winner = names[priorities.index(max(priorities))]
    assert net.masters() == [winner]
    assert net.became_master(winner) == [pytest.approx(net.instances[winner].master_down_interval)]
    assert [n for n in names if net.became_master(n)] == [winner]      # nobody else was ever master
    adverts = [t for t, _ in net.sent(winner, SendAdvert)]
    assert len(adverts) == pytest.approx((40 * advert_int - adverts[0]) / advert_int, abs=1)


def test_address_owner_is_master_at_once() -> None:
    owner = inst("A", 255, 1)
    assert owner.start(0.0) == [Transition(State.INIT, State.MASTER, "owner_startup"), SendAdvert(255),
                                *[SendGarp()] * 5]
    assert owner.next_deadline() == 1.0
    net = Segment(inst("B", 254, 2), owner)
    net.start("B")
    net.run(10.0)
    assert net.masters() == ["A"] and net.became_master("B") == []


def test_master_killed_backup_takes_over_at_master_down_interval() -> None:
    net = Segment(inst("A", 150, 1, advert_int=0.1), inst("B", 100, 2, advert_int=0.1))
    net.start()
    net.run(2.0)
    assert net.masters() == ["A"]
    net.kill("A")
    net.run(3.0)
    last = net.last_advert("A")
    assert net.became_master("B") == [pytest.approx(last + 0.3609375, abs=1e-9)]   # REFERENCE: 0.36 s
    b = net.instances["B"]
    assert b.skew_time == pytest.approx(0.0609375) and b.counters["become_master"] == 1


def test_graceful_shutdown_hands_over_after_skew_time() -> None:
    net = Segment(inst("A", 150, 1, advert_int=0.1), inst("B", 100, 2, advert_int=0.1))
    net.start()
    net.run(2.05)
    actions = net.call("A", "shutdown")
    assert actions == [SendAdvert(0), Transition(State.MASTER, State.INIT, "shutdown")]
    assert net.instances["A"].next_deadline() is None
    net.run(3.0)
    assert net.became_master("B") == [pytest.approx(2.05 + 0.0609375, abs=1e-9)]     # REFERENCE: 0.06 s
    assert net.instances["A"].counters["priority_zero_sent"] == 1
    assert net.instances["B"].counters["priority_zero_received"] == 1


def test_master_answers_a_priority_zero_advert_at_once() -> None:
    a, b = inst("A", 200, 1), inst("B", 100, 2)
    a.start(0.0)
    a.timer(a.master_down_interval)
    assert a.state is State.MASTER
    assert a.advert_received(advert_from(b, 0), 4.0) == [SendAdvert(200)]
    assert a.next_deadline() == 5.0                              # the Adver_Timer was reset


@pytest.mark.parametrize("preempt", [True, False])
def test_nopreempt(preempt: bool) -> None:
    net = Segment(inst("A", 100, 1), inst("B", 200, 2, preempt=preempt))
    net.start("A")
    net.run(5.0)
    net.start("B")
    net.run(30.0)
    b = net.instances["B"]
    if preempt:
        assert net.masters() == ["B"]
        assert net.became_master("B") == [pytest.approx(5.0 + b.master_down_interval)]
        assert b.counters["lower_priority_discarded"] >= 3
    else:
        assert net.masters() == ["A"] and net.became_master("B") == []
        assert b.counters["lower_priority_discarded"] == 0
    net.kill("A")
    net.run(40.0)
    assert net.masters() == ["B"]


def test_preempt_delay() -> None:
    """Lower-priority adverts are followed for preempt_delay after start-up, then preempted."""
    net = Segment(inst("A", 100, 1), inst("B", 200, 2, preempt_delay=2.0))
    net.start("A")
    net.run(5.0)
    net.start("B")
    net.run(30.0)
    a_adverts = [t for t, _ in net.sent("A", SendAdvert)]
    followed = [t for t in a_adverts if 5.0 <= t < 7.0]
    assert len(followed) == 2
    b = net.instances["B"]
    assert net.became_master("B") == [pytest.approx(followed[-1] + b.master_down_interval)]
    assert b.counters["preempt_delayed"] == 2 and b.counters["lower_priority_discarded"] >= 1
    assert net.masters() == ["B"]


def test_preempt_delay_counts_from_seeing_a_lower_master() -> None:
    """Following a higher master closes the start-up window; the first lower advert after that
    opens a new one (keepalived: "after startup or seeing a lower priority master")."""
    h, b, low = inst("H", 250, 3), inst("B", 200, 2, preempt_delay=2.0), inst("A", 100, 1)
    b.start(0.0)
    b.advert_received(advert_from(h, 250), 1.0)      # the start-up window (0..2) closes
    for t in (10.0, 11.0):                           # A plays master: followed until 12.0
        assert b.advert_received(advert_from(low, 100), t) == []
    assert b.counters["preempt_delayed"] == 2
    assert b.next_deadline() == pytest.approx(11.0 + b.master_down_interval)
    b.advert_received(advert_from(low, 100), 12.0)   # the delay is over: preempt
    assert b.counters["lower_priority_discarded"] == 1
    assert b.next_deadline() == pytest.approx(11.0 + b.master_down_interval)
    assert b.timer(11.0 + b.master_down_interval)[0] == Transition(State.BACKUP, State.MASTER, "master_down")


@pytest.mark.parametrize("first", ["low", "high"])
def test_equal_priority_higher_address_wins(first: str) -> None:
    """Both backups time out together and both become master; the higher primary address keeps it
    (RFC 5798 section 6.4.3) and re-asserts, whatever order the instances are listed in."""
    low, high = inst("L", 100, 1), inst("H", 100, 2)
    net = Segment(*((low, high) if first == "low" else (high, low)), delay=0.001)
    net.start()
    net.run(20.0)
    assert net.masters() == ["H"]
    assert net.became_master("L") == net.became_master("H") == [pytest.approx(3.609375)]
    assert net.transitions("L")[-1][1] == Transition(State.MASTER, State.BACKUP, "higher_priority")
    assert high.counters["lower_priority_reasserted"] == 1


def test_equal_priority_backup_follows_whoever_is_master() -> None:
    """A Backup follows an advert of equal priority (RFC 5798 section 6.4.2), even from a lower
    address: the tie-break is between masters only."""
    low, high = inst("L", 100, 1), inst("H", 100, 2)
    net = Segment(low)
    net.start()
    net.run(5.0)
    net.instances["H"] = high
    net.start("H")
    net.run(30.0)
    assert net.masters() == ["L"]


# -- split brain --------------------------------------------------------------------------------


def _split(**kw: object) -> Segment:
    net = Segment(inst("A", 200, 1, **kw), inst("B", 100, 2, **kw))
    net.connected = False
    net.start()
    net.run(20.0)
    assert net.masters() == ["A", "B"]
    return net


def test_split_brain_heals_and_the_winner_reannounces() -> None:
    net = _split()
    net.run(20.3)
    net.connected = True            # B's next advert (20.609375) comes before A's (21.21875)
    net.run(30.0)
    assert net.masters() == ["A"]
    assert net.sent("A", SendGarp, since=20.0) == [(pytest.approx(20.609375), SendGarp())]
    assert net.sent("B", SendGarp, since=20.0) == []
    assert net.instances["A"].counters["lower_priority_reasserted"] == 1


def test_split_brain_winner_heard_first() -> None:
    """The winner's advert reaches the loser first: the loser just steps down (keepalived default);
    with higher_prio_send_advert it answers once before yielding, and the winner re-announces."""
    net = _split()
    net.run(20.1)
    net.connected = True            # A's next advert (20.21875) comes before B's (20.609375)
    net.run(30.0)
    assert net.masters() == ["A"] and net.sent("A", SendGarp, since=20.0) == []

    net = _split(higher_prio_send_advert=True)
    net.run(20.1)
    net.connected = True
    net.run(30.0)
    assert net.masters() == ["A"]
    assert net.sent("A", SendGarp, since=20.0) == [(pytest.approx(20.21875), SendGarp())]
    assert net.sent("B", SendAdvert, since=20.1) == [(pytest.approx(20.21875), SendAdvert(100))]


def test_lower_prio_no_advert_stays_silent() -> None:
    net = _split(lower_prio_no_advert=True)
    net.run(20.3)
    net.connected = True
    net.run(30.0)
    assert net.masters() == ["A"]
    assert net.sent("A", SendGarp, since=20.0) == []
    assert net.instances["A"].counters["lower_priority_discarded"] == 1


# -- gratuitous ARP ---------------------------------------------------------------------------


def _garps(net: Segment, name: str) -> list[float]:
    return [t for t, _ in net.sent(name, SendGarp)]


def test_garp_burst_and_delayed_burst() -> None:
    net = Segment(inst("A", 200, 1))
    net.start()
    net.run(30.0)
    t0 = net.became_master("A")[0]
    assert _garps(net, "A") == [t0] * 5 + [pytest.approx(t0 + 5.0)] * 5
    adverts = net.sent("A", SendAdvert)
    assert adverts[0] == (t0, SendAdvert(200))


@pytest.mark.parametrize(("kw", "expect"), [
    ({"min_garp": True}, [0.0]),
    ({"garp_master_delay": 0.0}, [0.0] * 5),
    ({"garp_repeat": 2, "garp_master_delay": 1.5}, [0.0, 0.0, 1.5, 1.5]),
    ({"garp_repeat": 1, "garp_master_delay": 0.0, "garp_refresh": 10.0}, [0.0, 10.0, 20.0]),
    ({"min_garp": True, "garp_refresh": 12.0}, [0.0, 12.0, 24.0]),
])
def test_garp_options(kw: dict[str, object], expect: list[float]) -> None:
    net = Segment(inst("A", 255, 1, **kw))
    net.start()
    net.run(29.0)
    assert _garps(net, "A") == [pytest.approx(t) for t in expect]


def test_no_garp_timers_after_leaving_master() -> None:
    net = Segment(inst("A", 100, 1), inst("B", 200, 2))
    net.start("A")
    net.run(4.0)                    # A master since 3.609375, its second burst due at 8.609375
    net.start("B")
    net.run(30.0)
    assert net.masters() == ["B"]
    assert _garps(net, "A") == [pytest.approx(3.609375)] * 5


# -- fault, recover, hold -----------------------------------------------------------------------


def test_fault_releases_and_recover_returns_as_backup() -> None:
    net = Segment(inst("A", 200, 1), inst("B", 100, 2))
    net.start()
    net.run(10.0)
    actions = net.call("A", "fault")
    assert actions == [SendAdvert(0), Transition(State.MASTER, State.FAULT, "fault")]
    a, b = net.instances["A"], net.instances["B"]
    assert a.next_deadline() is None
    net.run(20.0)
    assert net.became_master("B") == [pytest.approx(10.0 + b.skew_time)]
    assert a.state is State.FAULT and a.counters["inactive_discarded"] >= 9
    assert net.call("A", "fault") == []                          # already FAULT
    assert net.call("A", "recover") == [Transition(State.FAULT, State.BACKUP, "recover")]
    assert net.call("A", "recover") == []                        # no fault left
    net.run(40.0)
    assert net.masters() == ["A"]
    assert net.became_master("A")[-1] == pytest.approx(20.0 + a.master_down_interval)


def test_backup_fault_and_fault_before_start() -> None:
    b = inst("B", 100, 2)
    b.start(0.0)
    assert b.fault(1.0) == [Transition(State.BACKUP, State.FAULT, "fault")]
    assert b.next_deadline() is None and b.timer(100.0) == []
    assert b.shutdown(2.0) == [Transition(State.FAULT, State.INIT, "shutdown")]
    c = inst("C", 255, 3)
    assert c.fault(0.0) == [Transition(State.INIT, State.FAULT, "fault")]
    assert c.recover(1.0) == [Transition(State.FAULT, State.BACKUP, "recover")]
    assert c.next_deadline() == pytest.approx(1.0 + c.master_down_interval)


def test_hold_preempt_follows_a_heard_master_until_released() -> None:
    net = Segment(inst("A", 100, 1), inst("B", 200, 2))
    net.start("A")
    net.run(5.0)
    b = net.instances["B"]
    b.hold_preempt(15.0)
    net.start("B")
    net.run(40.0)
    held = [t for t, _ in net.sent("A", SendAdvert) if 5.0 <= t < 15.0]
    assert b.counters["preempt_held"] == len(held) == 10
    assert net.became_master("B") == [pytest.approx(held[-1] + b.master_down_interval)]


def test_hold_preempt_still_takes_over_when_no_master_is_heard() -> None:
    net = Segment(inst("B", 200, 2))
    b = net.instances["B"]
    b.hold_preempt(100.0)
    net.start()
    net.run(10.0)
    assert net.became_master("B") == [pytest.approx(b.master_down_interval)]


def test_hold_preempt_starts_an_owner_as_backup() -> None:
    owner = inst("A", 255, 1)
    owner.hold_preempt(10.0)
    assert owner.start(0.0) == [Transition(State.INIT, State.BACKUP, "startup")]
    owner2 = inst("A2", 255, 1)
    owner2.hold_preempt(10.0)
    assert owner2.start(10.0)[0] == Transition(State.INIT, State.MASTER, "owner_startup")


def test_timer_early_is_harmless_and_misuse_raises() -> None:
    a = inst("A", 100, 1)
    assert a.next_deadline() is None and a.timer(5.0) == []
    a.start(0.0)
    deadline = a.next_deadline()
    assert deadline is not None
    assert a.timer(deadline - 0.001) == [] and a.state is State.BACKUP
    assert a.timer(deadline)[0] == Transition(State.BACKUP, State.MASTER, "master_down")
    with pytest.raises(ValueError):
        a.start(10.0)
    with pytest.raises(ValueError):
        a.sync(State.INIT, 10.0)


def test_bogus_adverts_are_counted_and_ignored() -> None:
    a, b = inst("A", 100, 1), inst("B", 200, 2)
    a.start(0.0)
    deadline = a.next_deadline()
    own = advert_from(a, 200)
    assert a.advert_received(own, 1.0) == [] and a.counters["own_address_discarded"] == 1
    zero = Advert(1, 200, 0, (VIP,), b.primary_addr, GROUP, 255)
    assert a.advert_received(zero, 1.0) == [] and a.counters["zero_interval_discarded"] == 1
    assert a.next_deadline() == deadline and a.counters["adverts_received"] == 2


# -- sync groups ------------------------------------------------------------------------------


def _pair(refollow: bool) -> Segment:
    a1, a2 = inst("A1", 200, 1, vrid=1), inst("A2", 200, 1, vrid=2)
    b1, b2 = inst("B1", 100, 2, vrid=1), inst("B2", 100, 2, vrid=2)
    net = Segment(a1, a2, b1, b2, groups=[SyncGroup([a1, a2], "GA"), SyncGroup([b1, b2], "GB")])
    net.refollow = refollow
    net.start()
    net.run(10.0)
    assert net.masters() == ["A1", "A2"]
    return net


@pytest.mark.parametrize("refollow", [False, True])
def test_sync_group_fault_moves_the_group(refollow: bool) -> None:
    net = _pair(refollow)
    net.call("A1", "fault")
    assert net.instances["A2"].state is State.FAULT
    assert net.transitions("A2")[-1] == (10.0, Transition(State.MASTER, State.FAULT, "sync_group"))
    net.run(20.0)
    assert net.masters() == ["B1", "B2"]
    # A2's own link is fine, but the group stays FAULT until A1 recovers; then both preempt again
    net.call("A1", "recover")
    assert net.instances["A2"].state is State.BACKUP
    net.run(40.0)
    assert net.masters() == ["A1", "A2"]


def _reasons(net: Segment, names: str, old: State, new: State, since: float = 0.0) -> list[str]:
    """The reasons of the ``old -> new`` transitions of the space-separated ``names``, sorted."""
    return sorted(a.reason for name in names.split() for t, a in net.transitions(name)
                  if (a.old, a.new) == (old, new) and t >= since)


@pytest.mark.parametrize("refollow", [False, True])
def test_sync_group_master_and_backup_follow(refollow: bool) -> None:
    net = _pair(refollow)
    # director A dies: the first of B1/B2 whose timer fires takes the other along
    net.kill("A1")
    net.kill("A2")
    net.run(20.0)
    assert net.masters() == ["B1", "B2"]
    up, down = (State.BACKUP, State.MASTER), (State.MASTER, State.BACKUP)
    assert _reasons(net, "B1 B2", *up) == ["master_down", "sync_group"]
    assert net.became_master("B1") == net.became_master("B2")
    # director A reboots and preempts: the first B instance to hear it takes the other to BACKUP
    for name in ("A1", "A2"):
        net.perform(name, net.instances[name].shutdown(net.now))
        net.dead.discard(name)
    net.start("A1", "A2")
    net.run(40.0)
    assert net.masters() == ["A1", "A2"]
    assert _reasons(net, "B1 B2", *down) == ["higher_priority", "sync_group"]
    assert _reasons(net, "A1 A2", *up, since=20.0) == ["master_down", "sync_group"]


def test_sync_group_member_faulty_on_its_own_blocks_the_group() -> None:
    a1, a2 = inst("A1", 200, 1, vrid=1), inst("A2", 200, 1, vrid=2)
    group = SyncGroup([a1, a2])
    for m in (a1, a2):
        m.start(0.0)
    to_fault = Transition(State.BACKUP, State.FAULT, "sync_group")
    followed = group.follow(a2, a2.fault(1.0), 1.0)
    assert followed == [(a1, [to_fault])]
    assert group.follow(a1, followed[0][1], 1.0) == []          # consistent after one pass
    a1.fault(2.0)                                     # A1 now faulty on its own as well
    back = a1.recover(3.0)
    assert group.follow(a1, back, 3.0) == [(a1, [to_fault])]
    assert a1.state is State.FAULT and not a1.own_fault
    back = a2.recover(4.0)
    assert group.follow(a2, back, 4.0) == [(a1, [Transition(State.FAULT, State.BACKUP, "sync_group")])]
    assert a1.state is a2.state is State.BACKUP
    # whoever becomes master takes the other along
    now = a1.master_down_interval + 4.0
    (member, actions), = group.follow(a1, a1.timer(now), now)
    assert member is a2
    assert actions[:2] == [Transition(State.BACKUP, State.MASTER, "sync_group"), SendAdvert(200)]
    assert a2.state is State.MASTER
    assert group.follow(a2, actions, now) == []


def test_sync_group_rejects_duplicates_and_ignores_strangers() -> None:
    a, b, stranger = inst("A", 100, 1), inst("B", 100, 1, vrid=2), inst("S", 100, 1, vrid=3)
    with pytest.raises(ValueError):
        SyncGroup([a, a])
    group = SyncGroup([a, b])
    for i in (a, b, stranger):
        i.start(0.0)
    assert group.follow(stranger, stranger.fault(1.0), 1.0) == []
    assert a.state is b.state is State.BACKUP


# -- the table and the settings ----------------------------------------------------------------


def test_rules_are_consistent() -> None:
    for (state, inp), rule in RULES.items():
        moves = rule.next is not None
        assert (Step.TRANSITION in rule.steps) == moves, (state, inp)
        assert rule.rfc, (state, inp)
        if not moves and rule.reason:
            assert rule.reason in COUNTERS, (state, inp)
    # every API input has a rule in every state
    for inp in (Input.SHUTDOWN, Input.FAULT_DETECTED, Input.FAULT_CLEARED, Input.SYNC_MASTER,
                Input.SYNC_BACKUP, Input.SYNC_FAULT):
        assert all((s, inp) in RULES for s in State), inp


def test_counters_are_all_present_from_the_start() -> None:
    assert set(inst("A", 100, 1).counters) == set(COUNTERS)


def test_from_config() -> None:
    cfg = VrrpInstance("VI_1", "eth0", 51, priority=150, advert_int=0.5, state="MASTER", preempt=False,
                       preempt_delay=3.0, garp_master_delay=2.0, garp_master_repeat=3, min_garp=True,
                       lower_prio_no_advert=True, higher_prio_send_advert=False)
    s = InstanceSettings.from_config(cfg)
    assert s == InstanceSettings("VI_1", 51, 150, 0.5, False, 3.0, "MASTER", 3, 2.0, 0.0, True, True)
    assert InstanceSettings.from_config(VrrpInstance("VI_3", "eth0", 53)).higher_prio_send_advert
    assert s.adver_int_cs == 50
    with pytest.raises(ValueError, match="version 2"):
        InstanceSettings.from_config(VrrpInstance("VI_2", "eth0", 52, version=2))


@pytest.mark.parametrize("kw", [
    {"priority": 0}, {"priority": 256}, {"vrid": 0}, {"advert_int": 0.001}, {"advert_int": 41.0},
    {"preempt_delay": -1.0}, {"initial_state": "FAULT"}, {"garp_repeat": 0}, {"garp_master_delay": -1.0},
])
def test_settings_reject_bad_values(kw: dict[str, object]) -> None:
    args: dict[str, object] = {"name": "VI", "vrid": 1} | kw
    with pytest.raises(ValueError):
        InstanceSettings(**args)  # type: ignore[arg-type]
