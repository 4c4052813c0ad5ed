"""The service health policy (ulvs.health.policy) driven with a fake clock: pool changes,
inhibit_on_failure, quorum with hysteresis, sorry server, notify scripts, dynamic weights, slow
start, passive ejection, connection policy, reload by diff, shutdown, and the timer contract.
Time is a number the tests choose; nothing sleeps."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from ulvs.config.schema import CheckSpec, RealServer, VirtualService
from ulvs.core.model import DestConfig, FwdMethod, Proto, ServiceConfig
from ulvs.health.base import Result
from ulvs.health.policy import (
    QUORUM,
    AddDest,
    CheckId,
    ConnPolicy,
    DestKey,
    DestStatus,
    EjectionPolicy,
    Ejector,
    Event,
    ExpireDestConns,
    ProbeDue,
    QuorumGained,
    QuorumLevel,
    QuorumLost,
    RemoveDest,
    RunScript,
    Sample,
    ScriptReason,
    ServiceHealth,
    SetWeight,
    SorryServer,
    migrate,
    quorum_level,
    ramp_next,
    ramp_weight,
)
from ulvs.health.state import CheckerState

A = ipaddress.IPv4Address
VIP = A("10.0.0.1")
SVC = (Proto.TCP, VIP, 80)
SORRY = (A("10.0.9.9"), 80)


def dkey(n: int) -> DestKey:
    return (A(f"10.0.1.{n}"), 80)


def check(retry: int = 0, **options: Any) -> CheckSpec:
    return CheckSpec("TCP_CHECK", tuple(sorted({"retry": retry, **options}.items())))


def real(n: int, weight: int = 1, checks: Sequence[CheckSpec] | None = None, **kw: Any) -> RealServer:
    cfg = DestConfig(A(f"10.0.1.{n}"), 80, weight=weight, method=FwdMethod.MASQ)
    return RealServer(cfg, tuple([check()] if checks is None else checks), **kw)


def service(*dests: RealServer, proto: Proto = Proto.TCP, **kw: Any) -> VirtualService:
    kw.setdefault("delay_loop", 10.0)
    return VirtualService(ServiceConfig(proto, VIP, 80), dests, **kw)


NOTIFY_UP = ("/bin/up",)
NOTIFY_DOWN = ("/bin/down",)
Q_UP = ("/bin/qup",)
Q_DOWN = ("/bin/qdown",)


class Harness:
    """A ServiceHealth, warmup fraction 0 (first probes due at once), and result helpers."""

    def __init__(self, config: VirtualService, now: float = 0.0, **kw: Any) -> None:
        kw.setdefault("rng", lambda: 0.0)
        self.sh = ServiceHealth(config, now, **kw)
        self.start_events = self.sh.pop_events()

    def timer(self, now: float) -> list[Event]:
        self.sh.handle_timer(now)
        return self.sh.pop_events()

    def result(self, n: int, ok: bool, now: float, index: int = 0, weight: int | None = None) -> list[Event]:
        """Run one probe of dest n's checker ``index`` at ``now``: the non-probe events."""
        cid = self.sh.check_ids(dkey(n))[index]
        if not self.sh.check_state(cid).in_flight:
            due = self.sh.check_state(cid).due
            assert due is not None and due <= now, f"probe of {cid} not due at {now} (due {due})"
            self.sh.handle_timer(now)
        assert self.sh.check_state(cid).in_flight
        assert self.sh.handle_result(cid, Result(ok, "ok" if ok else "refused", weight), now)
        return [e for e in self.sh.pop_events() if not isinstance(e, ProbeDue)]

    def fail(self, n: int, now: float, index: int = 0) -> list[Event]:
        return self.result(n, False, now, index)

    def ok(self, n: int, now: float, index: int = 0, weight: int | None = None) -> list[Event]:
        return self.result(n, True, now, index, weight)


def status(n: int, up: bool, reason: str) -> DestStatus:
    return DestStatus(SVC, dkey(n), up, reason)


# -- start-up -----------------------------------------------------------------------------------


def test_plain_start_changes_nothing_and_probes_are_due() -> None:
    h = Harness(service(real(1, 3), real(2, 2)))
    assert h.start_events == []
    assert h.sh.applied() == {dkey(1): 3, dkey(2): 2}
    assert h.sh.quorum_up and not h.sh.sorry_active
    assert h.sh.next_deadline() == 0.0
    probes = h.timer(0.0)
    assert probes == [ProbeDue(SVC, cid, check()) for n in (1, 2) for cid in h.sh.check_ids(dkey(n))]
    assert h.sh.next_deadline() is None                     # both probes running


def test_warmup_spreads_the_first_probes_with_the_injected_fractions() -> None:
    fractions = iter([0.5, 0.25])
    h = Harness(service(real(1, checks=[check(warmup=8)]), real(2)), now=100.0,
                rng=lambda: next(fractions))
    due = [h.sh.check_state(c).due for n in (1, 2) for c in h.sh.check_ids(dkey(n))]
    assert due == [104.0, 102.5]                             # warmup 8, and delay_loop 10
    assert h.sh.next_deadline() == 102.5


def test_a_dest_without_checkers_is_always_in_service() -> None:
    h = Harness(service(real(1, checks=[]), alpha=True))
    assert h.start_events == []
    assert h.sh.in_service(dkey(1)) and h.sh.next_deadline() is None


# -- down and up ----------------------------------------------------------------------------------


def test_failure_removes_and_success_returns() -> None:
    h = Harness(service(real(1, 2, notify_up=NOTIFY_UP, notify_down=NOTIFY_DOWN), real(2)))
    assert h.fail(1, 0.0) == [RemoveDest(SVC, dkey(1)), status(1, False, "refused"),
                              RunScript(NOTIFY_DOWN, ScriptReason.NOTIFY_DOWN, SVC, dkey(1))]
    assert h.fail(1, 10.0) == []                            # still down: nothing new
    assert h.ok(1, 20.0) == [AddDest(SVC, dkey(1), 2), status(1, True, "ok"),
                             RunScript(NOTIFY_UP, ScriptReason.NOTIFY_UP, SVC, dkey(1))]
    assert h.sh.applied() == {dkey(1): 2, dkey(2): 1}


def test_retries_keep_the_dest_until_the_last_one_fails() -> None:
    h = Harness(service(real(1, checks=[check(retry=2, delay_before_retry=3)]), real(2)))
    cid = h.sh.check_ids(dkey(1))[0]
    assert h.fail(1, 0.0) == []
    assert h.sh.check_state(cid).due == 3.0 and h.sh.next_deadline() == 3.0   # dest 2's probe runs
    assert h.fail(1, 3.0) == []
    assert h.sh.next_deadline() == 6.0
    assert h.fail(1, 6.0)[0] == RemoveDest(SVC, dkey(1))
    assert h.sh.check_state(cid).due == 16.0


def test_alpha_dest_starts_out_and_enters_on_its_first_pass() -> None:
    h = Harness(service(real(1, 4, notify_up=NOTIFY_UP), real(2, inhibit_on_failure=True), alpha=True))
    assert h.start_events == [SetWeight(SVC, dkey(2), 0), RemoveDest(SVC, dkey(1))]
    assert not h.sh.in_service(dkey(1))
    assert not h.sh.quorum_up
    assert h.ok(1, 0.0) == [AddDest(SVC, dkey(1), 4), status(1, True, "ok"),
                            RunScript(NOTIFY_UP, ScriptReason.NOTIFY_UP, SVC, dkey(1)),
                            QuorumGained(SVC, 4, 1)]


def test_alpha_first_verdict_down_is_announced_once() -> None:
    h = Harness(service(real(1, checks=[check(retry=1)], notify_down=NOTIFY_DOWN), real(2), alpha=True))
    assert h.fail(1, 0.0) == []                              # a retry: no verdict yet
    assert h.fail(1, 1.0) == [status(1, False, "refused"),
                              RunScript(NOTIFY_DOWN, ScriptReason.NOTIFY_DOWN, SVC, dkey(1))]
    assert h.fail(1, 11.0) == []


def test_alpha_off_for_one_checker_by_its_own_option() -> None:
    h = Harness(service(real(1, checks=[check(alpha=False)]), alpha=True))
    assert h.start_events == [] and h.sh.in_service(dkey(1))


def test_multiple_checkers_all_must_pass() -> None:
    h = Harness(service(real(1, checks=[check(), check(connect_port=8080)]), real(2)))
    assert h.fail(1, 0.0, index=1)[0] == RemoveDest(SVC, dkey(1))
    assert h.fail(1, 0.0, index=0) == []                    # already out
    assert h.ok(1, 10.0, index=0) == []                     # the other one still fails
    assert h.ok(1, 10.0, index=1)[0] == AddDest(SVC, dkey(1), 1)


def test_inhibit_on_failure_keeps_the_dest_at_weight_zero() -> None:
    h = Harness(service(real(1, 5), real(2, 3, inhibit_on_failure=False), real(3), inhibit_on_failure=True))
    assert h.fail(1, 0.0)[0] == SetWeight(SVC, dkey(1), 0)
    assert h.fail(2, 0.0)[0] == RemoveDest(SVC, dkey(2))    # the real_server overrides
    assert h.ok(1, 10.0)[0] == SetWeight(SVC, dkey(1), 5)
    h2 = Harness(service(real(1, 5, inhibit_on_failure=True), real(2)))
    assert h2.fail(1, 0.0)[0] == SetWeight(SVC, dkey(1), 0)


def test_result_for_a_probe_never_started_is_an_error() -> None:
    h = Harness(service(real(1)))
    with pytest.raises(ValueError):
        h.sh.handle_result(h.sh.check_ids(dkey(1))[0], Result(True), 0.0)
    assert h.sh.handle_result(CheckId(dkey(7), 1), Result(True), 0.0) is False


# -- connection policy ----------------------------------------------------------------------------


def test_tcp_connections_are_kept_by_default() -> None:
    h = Harness(service(real(1), real(2)))
    assert not any(isinstance(e, ExpireDestConns) for e in h.fail(1, 0.0))


@pytest.mark.parametrize(("policy", "reset"), [(ConnPolicy.EXPIRE, False), (ConnPolicy.RESET, True)])
def test_tcp_connections_expire_or_reset_by_policy(policy: ConnPolicy, reset: bool) -> None:
    h = Harness(service(real(1), real(2)), conn_policy=policy)
    assert h.fail(1, 0.0)[-1] == ExpireDestConns(SVC, dkey(1), Proto.TCP, reset=reset)


def test_udp_flows_of_a_failed_dest_expire_at_once() -> None:
    h = Harness(service(real(1), real(2), proto=Proto.UDP))
    assert h.fail(1, 0.0)[-1] == ExpireDestConns((Proto.UDP, VIP, 80), dkey(1), Proto.UDP)
    assert not any(isinstance(e, ExpireDestConns) for e in h.ok(1, 10.0))


def test_service_group_expires_udp_and_applies_the_tcp_policy() -> None:
    members = ((Proto.TCP, VIP, 80), (Proto.UDP, VIP, 53))
    cfg = VirtualService(ServiceConfig(Proto.FWM, A(0), 0, fwmark=5, members=members), (real(1), real(2)))
    h = Harness(cfg, conn_policy=ConnPolicy.EXPIRE)
    key = (Proto.FWM, A(0), 5)
    expired = [e for e in h.fail(1, 0.0) if isinstance(e, ExpireDestConns)]
    assert expired == [ExpireDestConns(key, dkey(1), Proto.TCP), ExpireDestConns(key, dkey(1), Proto.UDP)]


def test_a_dest_never_in_service_has_no_connections_to_expire() -> None:
    h = Harness(service(real(1), real(2), proto=Proto.UDP, alpha=True))
    assert not any(isinstance(e, ExpireDestConns) for e in h.fail(1, 0.0))


# -- quorum ---------------------------------------------------------------------------------------


def test_quorum_table_and_levels() -> None:
    assert set(QUORUM) == {(up, level) for up in (False, True) for level in QuorumLevel}
    assert quorum_level(0, 0, 0) is QuorumLevel.LOW            # an empty pool never has quorum
    assert quorum_level(1, 3, 1) is QuorumLevel.LOW
    assert quorum_level(2, 3, 1) is QuorumLevel.MID
    assert quorum_level(3, 3, 1) is QuorumLevel.MID
    assert quorum_level(4, 3, 1) is QuorumLevel.HIGH


def test_quorum_with_hysteresis_both_ways() -> None:
    h = Harness(service(*(real(n) for n in (1, 2, 3, 4)), quorum=3, hysteresis=1,
                        quorum_up=Q_UP, quorum_down=Q_DOWN))
    assert h.sh.quorum_up                                      # 4 >= 3 + 1
    assert not _quorum(h.fail(1, 0.0))                         # 3: in the band
    assert not _quorum(h.fail(2, 0.0))                         # 2: not below 3 - 1
    assert _quorum(h.fail(3, 0.0)) == [QuorumLost(SVC, 1, 2),
                                       RunScript(Q_DOWN, ScriptReason.QUORUM_DOWN, SVC)]
    assert not _quorum(h.ok(1, 10.0))                          # 2
    assert not _quorum(h.ok(2, 10.0))                          # 3: not yet 3 + 1
    assert _quorum(h.ok(3, 10.0)) == [QuorumGained(SVC, 4, 4),
                                      RunScript(Q_UP, ScriptReason.QUORUM_UP, SVC)]
    assert h.sh.quorum_up


def _quorum(events: list[Event]) -> list[Event]:
    return [e for e in events if isinstance(e, QuorumGained | QuorumLost)
            or (isinstance(e, RunScript) and e.dest is None)]


def test_quorum_starts_down_quietly_without_a_sorry_server() -> None:
    h = Harness(service(real(1), real(2), quorum=3, quorum_up=Q_UP))
    assert not h.sh.quorum_up and h.start_events == []
    h2 = Harness(service(real(1), real(2), quorum=3, quorum_down=Q_DOWN, sorry_server=SORRY))
    assert h2.start_events == [SorryServer(SVC, SORRY, True, False),
                               RemoveDest(SVC, dkey(1)), RemoveDest(SVC, dkey(2)),
                               QuorumLost(SVC, 2, 3), RunScript(Q_DOWN, ScriptReason.QUORUM_DOWN, SVC)]


def test_quorum_counts_dynamic_weight_and_zero_total_is_lost() -> None:
    h = Harness(service(real(1, 5), quorum=1, hysteresis=1))
    assert h.sh.quorum_up
    events = h.ok(1, 0.0, weight=0)
    assert events == [SetWeight(SVC, dkey(1), 0), QuorumLost(SVC, 0, 0)]
    assert h.sh.in_service(dkey(1))


# -- sorry server ---------------------------------------------------------------------------------


def test_sorry_server_serves_while_no_dest_is_up() -> None:
    h = Harness(service(real(1), real(2), sorry_server=SORRY))
    assert h.fail(1, 0.0)[0] == RemoveDest(SVC, dkey(1))
    events = h.fail(2, 0.0)
    assert events[:2] == [SorryServer(SVC, SORRY, True, False), RemoveDest(SVC, dkey(2))]
    assert h.sh.sorry_active and h.sh.applied() == {}
    events = h.ok(2, 10.0)
    assert events[:2] == [AddDest(SVC, dkey(2), 1), SorryServer(SVC, SORRY, False, False)]
    assert not h.sh.sorry_active


def test_sorry_server_withdraws_the_remaining_dests_when_quorum_is_lost() -> None:
    h = Harness(service(real(1), real(2, inhibit_on_failure=True), real(3), quorum=3, sorry_server=SORRY))
    events = h.fail(3, 0.0)
    assert events[:3] == [SorryServer(SVC, SORRY, True, False), SetWeight(SVC, dkey(2), 0),
                          RemoveDest(SVC, dkey(1))]
    assert h.sh.applied() == {dkey(2): 0}
    events = h.ok(3, 10.0)
    assert events[:4] == [AddDest(SVC, dkey(1), 1), SetWeight(SVC, dkey(2), 1), AddDest(SVC, dkey(3), 1),
                          SorryServer(SVC, SORRY, False, False)]


def test_sorry_server_inhibit_keeps_it_at_weight_zero() -> None:
    h = Harness(service(real(1), sorry_server=SORRY, sorry_server_inhibit=True))
    assert h.start_events == [SorryServer(SVC, SORRY, False, True)]
    assert h.fail(1, 0.0)[0] == SorryServer(SVC, SORRY, True, True)
    assert h.ok(1, 10.0)[:2] == [AddDest(SVC, dkey(1), 1), SorryServer(SVC, SORRY, False, True)]


# -- dynamic weights ------------------------------------------------------------------------------


def test_dynamic_weight_from_the_checker() -> None:
    h = Harness(service(real(1, 5, checks=[check(), check(connect_port=81)]), real(2)))
    assert h.ok(1, 0.0, index=0, weight=8) == [SetWeight(SVC, dkey(1), 8)]
    assert h.ok(1, 0.0, index=1, weight=3) == [SetWeight(SVC, dkey(1), 3)]    # the smallest
    assert h.ok(1, 10.0, index=1) == [SetWeight(SVC, dkey(1), 8)]
    assert h.sh.total_weight() == 9


# -- slow start -----------------------------------------------------------------------------------


def test_ramp_values() -> None:
    assert [ramp_weight(10, 0.0, 10.0, t) for t in (0.0, 1.0, 1.2, 5.0, 9.9, 10.0, 50.0)] == \
        [1, 1, 2, 5, 9, 10, 10]
    assert [ramp_weight(100, 0.0, 10.0, t) for t in (0.0, 0.99, 1.0, 5.5, 9.99, 10.0)] == \
        [1, 1, 10, 50, 90, 100]
    assert ramp_weight(1, 0.0, 10.0, 0.0) == 1 and ramp_weight(0, 0.0, 10.0, 0.0) == 0
    assert ramp_weight(7, 0.0, 0.5, 0.4) == 1 and ramp_weight(7, 0.0, 0.5, 0.5) == 7
    assert ramp_next(100, 0.0, 10.0, 0.0) == 1.0 and ramp_next(100, 0.0, 10.0, 10.0) is None
    assert ramp_next(1, 0.0, 10.0, 0.0) is None


def test_slow_start_ramps_a_returning_dest_at_each_deadline() -> None:
    h = Harness(service(real(1, 100), real(2)), slow_start=10.0)
    h.fail(1, 0.0)
    assert h.ok(1, 100.0) == [AddDest(SVC, dkey(1), 1), status(1, True, "ok")]
    weights = []
    while (t := h.sh.next_deadline()) is not None and t < 110.0:
        weights += [(t, e.weight) for e in h.timer(t) if isinstance(e, SetWeight)]
    assert weights == [(100.0 + j, 1 + 99 * j // 10) for j in range(1, 10)]
    assert h.timer(110.0) == [ProbeDue(SVC, c, check()) for c in h.sh.check_ids(dkey(1))] + [
        SetWeight(SVC, dkey(1), 100)]
    assert h.sh.total_weight() == 101


def test_slow_start_at_chosen_times_and_quorum_ignores_the_ramp() -> None:
    h = Harness(service(real(1, 10), real(2), quorum=11), slow_start=10.0)
    h.fail(1, 0.0)
    h.ok(1, 20.0)
    assert h.sh.applied()[dkey(1)] == 1 and h.sh.total_weight() == 11 and h.sh.quorum_up
    assert [e for e in h.timer(25.0) if isinstance(e, SetWeight)] == [SetWeight(SVC, dkey(1), 5)]
    assert h.sh.next_deadline() == pytest.approx(20.0 + 50 / 9)
    assert [e for e in h.timer(29.0) if isinstance(e, SetWeight)] == [SetWeight(SVC, dkey(1), 9)]
    assert [e for e in h.timer(30.0) if isinstance(e, SetWeight)] == [SetWeight(SVC, dkey(1), 10)]


def test_slow_start_begins_when_the_sorry_server_hands_back() -> None:
    h = Harness(service(real(1, 10), real(2, 10), quorum=11, sorry_server=SORRY), slow_start=10.0)
    h.fail(1, 0.0)
    h.fail(2, 0.0)
    assert h.ok(1, 10.0) == [status(1, True, "ok")]             # quorum still lost: withdrawn
    events = h.ok(2, 30.0)
    assert events[:3] == [AddDest(SVC, dkey(1), 1), AddDest(SVC, dkey(2), 1),
                          SorryServer(SVC, SORRY, False, False)]
    assert [e for e in h.timer(35.0) if isinstance(e, SetWeight)] == [
        SetWeight(SVC, dkey(1), 5), SetWeight(SVC, dkey(2), 5)]


def test_dests_present_at_start_do_not_ramp() -> None:
    h = Harness(service(real(1, 10)), slow_start=30.0)
    assert h.start_events == [] and h.sh.applied() == {dkey(1): 10}


# -- passive ejection -----------------------------------------------------------------------------

EJECT = EjectionPolicy(threshold=0.5, min_syns=10, base=10.0, max=40.0, max_fraction=1.0)


def test_ejection_threshold_and_minimum() -> None:
    h = Harness(service(real(1), real(2)), ejection=EJECT)
    h.sh.observe_traffic(dkey(1), Sample(9, 0), 0.0)                # too few SYNs to judge
    h.sh.observe_traffic(dkey(1), Sample(10, 5), 0.0)               # 0.5 is not over 0.5
    assert h.sh.pop_events() == [] and h.sh.in_service(dkey(1))
    h.sh.observe_traffic(dkey(1), Sample(10, 4), 0.0)
    assert h.sh.pop_events() == [RemoveDest(SVC, dkey(1)),
                                 status(1, False, "ejected: 6 of 10 SYNs unanswered, back-off 10 s")]
    assert h.sh.ejected(dkey(1))


def test_ejected_dest_returns_after_backoff_when_its_checkers_pass() -> None:
    h = Harness(service(real(1), real(2)), ejection=EJECT)
    h.timer(0.0)
    for n in (1, 2):
        h.sh.handle_result(h.sh.check_ids(dkey(n))[0], Result(True, "ok"), 0.0)   # next probes at 10
    h.sh.pop_events()
    h.sh.observe_traffic(dkey(1), Sample(20, 0), 5.0)
    h.sh.pop_events()
    assert h.sh.next_deadline() == 10.0
    h.timer(10.0)                                 # dest 2's regular probe; dest 1 still out
    cid = h.sh.check_ids(dkey(1))[0]
    assert h.sh.check_state(cid).in_flight        # ... and its probe started at 10 is regular
    h.sh.handle_result(cid, Result(True, "ok"), 10.0)
    assert h.sh.pop_events() == [] and h.sh.ejected(dkey(1))   # passed during the back-off
    assert h.sh.next_deadline() == 15.0                       # the back-off's end
    assert [type(e) for e in h.timer(15.0)] == [ProbeDue]     # re-probe at once
    assert h.ok(1, 16.0) == [AddDest(SVC, dkey(1), 1), status(1, True, "ok")]
    assert not h.sh.ejected(dkey(1))


def test_backoff_doubles_up_to_the_cap_and_resets_after_a_good_interval() -> None:
    h = Harness(service(real(1, checks=[]), real(2, checks=[])), ejection=EJECT)
    bad, good = Sample(10, 0), Sample(10, 10)
    now, backoffs = 0.0, []
    for _ in range(4):
        h.sh.observe_traffic(dkey(1), bad, now)
        assert h.sh.pop_events()[0] == RemoveDest(SVC, dkey(1))
        deadline = h.sh.next_deadline()
        assert deadline is not None
        backoffs.append(deadline - now)
        assert h.timer(deadline)[0] == AddDest(SVC, dkey(1), 1)   # no checkers: back at once
        now = deadline
    assert backoffs == [10.0, 20.0, 40.0, 40.0]
    h.sh.observe_traffic(dkey(1), good, now)
    h.sh.observe_traffic(dkey(1), bad, now)
    assert h.sh.next_deadline() == now + 10.0


def test_ejection_never_takes_more_than_the_allowed_fraction() -> None:
    h = Harness(service(real(1), real(2)), ejection=EjectionPolicy(max_fraction=0.5))
    h.sh.observe_traffic(dkey(1), Sample(100, 0), 0.0)
    h.sh.observe_traffic(dkey(2), Sample(100, 0), 0.0)
    assert h.sh.ejected(dkey(1)) and not h.sh.ejected(dkey(2))


def test_observe_without_a_policy_does_nothing() -> None:
    h = Harness(service(real(1)))
    h.sh.observe_traffic(dkey(1), Sample(100, 0), 0.0)
    assert h.sh.pop_events() == [] and h.sh.in_service(dkey(1))


def test_ejection_inputs_are_checked() -> None:
    with pytest.raises(ValueError):
        Sample(3, 4)
    with pytest.raises(ValueError):
        EjectionPolicy(threshold=1.0)
    with pytest.raises(ValueError):
        EjectionPolicy(base=10.0, max=5.0)
    e = Ejector(EJECT, [dkey(1)])
    assert e.next_deadline() is None and e.expire(100.0) == []


# -- reload by diff -------------------------------------------------------------------------------


def test_migrate_keeps_the_state_of_unchanged_dests_and_checkers() -> None:
    cfg = service(real(1), real(2), real(3))
    h = Harness(cfg)
    h.fail(1, 0.0)
    h.timer(0.0)                                              # 2 and 3 in flight
    h.sh.pop_events()
    before = {n: h.sh.check_state(h.sh.check_ids(dkey(n))[0]) for n in (1, 2, 3)}
    new = migrate(h.sh, cfg, 5.0)
    assert new.pop_events() == []
    assert {n: new.check_state(new.check_ids(dkey(n))[0]) for n in (1, 2, 3)} == before
    assert not new.in_service(dkey(1)) and new.applied() == {dkey(2): 1, dkey(3): 1}
    assert new.handle_result(new.check_ids(dkey(2))[0], Result(True), 6.0)   # in flight carried over
    assert h.sh.next_deadline() is None                                       # the old one is closed


def test_migrate_changed_checker_on_an_up_dest_does_not_flap() -> None:
    h = Harness(service(real(1), real(2), alpha=True))
    h.ok(1, 0.0)
    h.ok(2, 0.0)
    new = migrate(h.sh, service(real(1, checks=[check(connect_port=81)]), real(2), alpha=True), 1.0)
    assert new.pop_events() == [] and new.in_service(dkey(1))
    cid = new.check_ids(dkey(1))[0]
    assert new.check_state(cid).state is CheckerState.PENDING_UP
    assert cid not in h.sh.check_ids(dkey(1))


def test_migrate_new_checker_on_a_down_dest_fails_in_one() -> None:
    h = Harness(service(real(1), real(2)))
    h.fail(1, 0.0)
    new = migrate(h.sh, service(real(1, checks=[check(), check(retry=3, connect_port=81)]), real(2)), 1.0)
    cid = new.check_ids(dkey(1))[1]
    assert new.check_state(cid).state is CheckerState.PENDING_DOWN
    assert new.check_state(cid).retries == 3


def test_migrate_caps_retries_when_retry_is_lowered() -> None:
    h = Harness(service(real(1, checks=[check(retry=3)]), real(2)))
    h.fail(1, 0.0)
    h.fail(1, 1.0)
    new = migrate(h.sh, service(real(1, checks=[check(retry=3)]), real(2)), 2.0)
    assert new.check_state(new.check_ids(dkey(1))[0]).retries == 2


def test_migrate_removed_and_added_dests() -> None:
    old_cfg = service(real(1, notify_down=NOTIFY_DOWN), real(2), omega=True)
    h = Harness(old_cfg, slow_start=10.0)
    h.timer(0.0)
    h.sh.pop_events()
    stale = h.sh.check_ids(dkey(1))[0]
    new = migrate(h.sh, service(real(2), real(3, 10), omega=True), 50.0)
    assert new.pop_events() == [AddDest(SVC, dkey(3), 1), RemoveDest(SVC, dkey(1)),
                                status(1, False, "removed from the configuration"),
                                RunScript(NOTIFY_DOWN, ScriptReason.NOTIFY_DOWN, SVC, dkey(1))]
    assert new.handle_result(stale, Result(True), 51.0) is False            # its probe ran on
    assert new.next_deadline() == 50.0                                     # dest 3's first probe
    new.handle_timer(51.0)
    assert SetWeight(SVC, dkey(3), 1 + 9 * 1 // 9) not in new.pop_events()  # ramp: 1 until 50 + 10/9
    new.handle_timer(55.0)
    assert [e for e in new.pop_events() if isinstance(e, SetWeight)] == [SetWeight(SVC, dkey(3), 5)]


def test_migrate_without_omega_runs_no_script_for_removals() -> None:
    h = Harness(service(real(1, notify_down=NOTIFY_DOWN), real(2)))
    new = migrate(h.sh, service(real(2)), 1.0)
    assert not any(isinstance(e, RunScript) for e in new.pop_events())


def test_migrate_with_a_higher_quorum_loses_it() -> None:
    h = Harness(service(real(1), real(2), quorum_down=Q_DOWN))
    new = migrate(h.sh, service(real(1), real(2), quorum=3, quorum_down=Q_DOWN), 1.0)
    assert new.pop_events() == [QuorumLost(SVC, 2, 3), RunScript(Q_DOWN, ScriptReason.QUORUM_DOWN, SVC)]


def test_migrate_moves_a_changed_sorry_server() -> None:
    other = (A("10.0.9.8"), 80)
    h = Harness(service(real(1), sorry_server=SORRY))
    h.fail(1, 0.0)
    new = migrate(h.sh, service(real(1), sorry_server=other), 1.0)
    assert new.pop_events() == [SorryServer(SVC, other, True, False), SorryServer(SVC, SORRY, False, False)]


def test_migrate_carries_ejection() -> None:
    h = Harness(service(real(1), real(2)), ejection=EJECT)
    h.sh.observe_traffic(dkey(1), Sample(10, 0), 0.0)
    new = migrate(h.sh, service(real(1), real(2)), 1.0)
    assert new.ejected(dkey(1)) and not new.in_service(dkey(1))
    assert h.sh.pop_events() == []
    assert RemoveDest(SVC, dkey(1)) in new.pop_events()       # the old object's undrained events


def test_migrate_with_no_ejection_any_more_brings_an_ejected_healthy_dest_back() -> None:
    h = Harness(service(real(1, checks=[]), real(2, checks=[])), ejection=EJECT)
    h.sh.observe_traffic(dkey(1), Sample(10, 0), 0.0)
    h.sh.pop_events()
    new = migrate(h.sh, service(real(1, checks=[]), real(2, checks=[])), 1.0, ejection=None)
    assert not new.ejected(dkey(1)) and new.in_service(dkey(1))
    assert AddDest(SVC, dkey(1), 1) in new.pop_events()
    assert new.next_deadline() is None


def test_the_ejection_detail_names_the_sample_and_the_backoff_then_the_reprobe() -> None:
    h = Harness(service(real(1), real(2)), ejection=EJECT)
    assert h.sh.ejection_detail(dkey(1)) is None
    h.sh.observe_traffic(dkey(1), Sample(14, 2), 3.0)
    assert h.sh.ejection_detail(dkey(1)) == "ejected: 12 of 14 SYNs unanswered, back-off 10 s"
    h.sh.handle_timer(13.0)
    assert h.sh.ejection_detail(dkey(1)) == ("ejected: 12 of 14 SYNs unanswered, back-off 10 s; "
                                             "back-off over, re-probing")
    assert h.sh.ejection_detail(dkey(2)) is None


# -- shutdown -------------------------------------------------------------------------------------


def test_shutdown_with_omega_runs_the_down_scripts() -> None:
    h = Harness(service(real(1, notify_down=NOTIFY_DOWN), real(2, inhibit_on_failure=True),
                        sorry_server=SORRY, sorry_server_inhibit=True, omega=True, quorum_down=Q_DOWN))
    h.fail(2, 0.0)
    h.sh.shutdown()
    assert h.sh.pop_events() == [
        RemoveDest(SVC, dkey(1)), RemoveDest(SVC, dkey(2)), SorryServer(SVC, SORRY, False, False),
        status(1, False, "shutdown"), RunScript(NOTIFY_DOWN, ScriptReason.NOTIFY_DOWN, SVC, dkey(1)),
        QuorumLost(SVC, 0, 1), RunScript(Q_DOWN, ScriptReason.QUORUM_DOWN, SVC)]
    assert h.sh.next_deadline() is None
    h.sh.handle_timer(100.0)
    assert h.sh.pop_events() == []


def test_shutdown_without_omega_runs_no_script() -> None:
    h = Harness(service(real(1, notify_down=NOTIFY_DOWN), quorum_down=Q_DOWN))
    h.sh.shutdown()
    assert not any(isinstance(e, RunScript) for e in h.sh.pop_events())


# -- the timer contract and the up/down property --------------------------------------------------

Step = tuple[int, int, bool]     # (dest, checker, ok)


@settings(max_examples=150, deadline=None)
@given(hs.lists(hs.tuples(hs.integers(0, 2), hs.integers(0, 1), hs.booleans()), max_size=60),
       hs.integers(0, 2), hs.booleans())
def test_dest_up_is_all_checkers_last_verdicts(steps: list[Step], retry: int, alpha: bool) -> None:
    checks = [check(retry=retry, delay_before_retry=1),
              check(retry=retry, delay_before_retry=1, connect_port=81)]
    h = Harness(service(*(real(n, checks=checks) for n in range(3)), alpha=alpha))
    history: dict[tuple[int, int], list[bool]] = {(n, i): [] for n in range(3) for i in range(2)}
    now = 0.0
    for n, i, ok in steps:
        cid = h.sh.check_ids(dkey(n))[i]
        due = h.sh.check_state(cid).due
        now = now if due is None else max(now, due)     # None: its probe is running already
        h.result(n, ok, now, i)
        history[(n, i)].append(ok)
        for m in range(3):
            expect = all(_reference_up(history[(m, j)], retry, alpha) for j in range(2))
            assert h.sh.in_service(dkey(m)) == expect
            assert (dkey(m) in h.sh.applied()) == expect


def _reference_up(results: list[bool], retry: int, alpha: bool) -> bool:
    trailing = 0
    for ok in reversed(results):
        if ok:
            break
        trailing += 1
    return trailing <= retry and (any(results) or not alpha)


@settings(max_examples=100, deadline=None)
@given(hs.lists(hs.tuples(hs.sampled_from(["ok", "fail", "eject", "weight"]), hs.integers(1, 3)),
                max_size=40))
def test_next_deadline_is_exactly_when_something_is_due(ops: list[tuple[str, int]]) -> None:
    h = Harness(service(real(1, 20), real(2, 5), real(3, 3, checks=[])), slow_start=7.0,
                ejection=EjectionPolicy(threshold=0.5, min_syns=1, base=3.0, max=12.0, max_fraction=1.0))
    now = 0.0
    for op, n in ops:
        deadline = h.sh.next_deadline()
        if deadline is not None:
            assert deadline >= now
            if deadline > now:
                assert h.timer((now + deadline) / 2) == []     # nothing happens before it
            now = deadline
            h.timer(now)                                       # which consumes all that was due
            after = h.sh.next_deadline()
            assert after is None or after > now
        running = [c for c in h.sh.check_ids(dkey(n)) if h.sh.check_state(c).in_flight]
        if op == "eject":
            h.sh.observe_traffic(dkey(n), Sample(5, 0), now)
        elif running:
            h.sh.handle_result(running[0], Result(op != "fail", "", 9 if op == "weight" else None), now)
        h.sh.pop_events()
