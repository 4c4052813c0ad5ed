"""The per-checker health state machine (ulvs.health.state): every transition of the table,
retry counts and delays, alpha, warmup, timing defaults, dest aggregation, reload carry-over.
Time is a number the tests choose; nothing sleeps."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from ulvs.config.schema import CheckSpec
from ulvs.health import state as st
from ulvs.health.base import Result
from ulvs.health.state import CheckerState as S
from ulvs.health.state import CheckInput as I
from ulvs.health.state import CheckState, Delay, Timing

OK = Result(True, "ok")
FAIL = Result(False, "refused")
T = Timing(delay_loop=10.0, retry=2, delay_before_retry=3.0, warmup=8.0)


def spec(kind: str = "TCP_CHECK", **options: Any) -> CheckSpec:
    return CheckSpec(kind, tuple(sorted(options.items())))


# -- the table ----------------------------------------------------------------------------------


def test_table_defines_every_state_and_input() -> None:
    assert set(st.TRANSITIONS) == {(s, i) for s in S for i in I}


EXPECTED = [
    # state            input           next state        delay
    (S.PENDING_UP,   I.OK,          S.UP,            Delay.LOOP),
    (S.PENDING_UP,   I.FAIL_RETRY,  S.FAILING,       Delay.RETRY),
    (S.PENDING_UP,   I.FAIL_LAST,   S.DOWN,          Delay.LOOP),
    (S.PENDING_DOWN, I.OK,          S.UP,            Delay.LOOP),
    (S.PENDING_DOWN, I.FAIL_RETRY,  S.PENDING_DOWN,  Delay.RETRY),
    (S.PENDING_DOWN, I.FAIL_LAST,   S.DOWN,          Delay.LOOP),
    (S.UP,           I.OK,          S.UP,            Delay.LOOP),
    (S.UP,           I.FAIL_RETRY,  S.FAILING,       Delay.RETRY),
    (S.UP,           I.FAIL_LAST,   S.DOWN,          Delay.LOOP),
    (S.FAILING,      I.OK,          S.UP,            Delay.LOOP),
    (S.FAILING,      I.FAIL_RETRY,  S.FAILING,       Delay.RETRY),
    (S.FAILING,      I.FAIL_LAST,   S.DOWN,          Delay.LOOP),
    (S.DOWN,         I.OK,          S.UP,            Delay.LOOP),
    (S.DOWN,         I.FAIL_RETRY,  S.DOWN,          Delay.RETRY),
    (S.DOWN,         I.FAIL_LAST,   S.DOWN,          Delay.LOOP),
]


@pytest.mark.parametrize(("state", "inp", "nxt", "delay"), EXPECTED,
                         ids=[f"{s.value}-{i.value}" for s, i, _n, _d in EXPECTED])
def test_every_transition(state: S, inp: I, nxt: S, delay: Delay) -> None:
    assert st.TRANSITIONS[(state, inp)] == (nxt, delay)
    # Drive it through on_result: FAIL_RETRY needs retries left, FAIL_LAST none.
    retries = {I.OK: 1, I.FAIL_RETRY: 1, I.FAIL_LAST: T.retry}[inp]
    cs = CheckState(state, None, retries)
    out = st.on_result(cs, OK if inp is I.OK else FAIL, T, now=100.0)
    assert out.state is nxt
    assert out.due == 100.0 + (T.delay_loop if delay is Delay.LOOP else T.delay_before_retry)
    assert out.retries == (retries + 1 if delay is Delay.RETRY else 0)


def test_counts_up() -> None:
    assert {s for s in S if CheckState(s, 0.0).counts_up} == {S.PENDING_UP, S.UP, S.FAILING}


def test_classify() -> None:
    assert st.classify(True, 5, 0) is I.OK
    assert st.classify(False, 0, 1) is I.FAIL_RETRY
    assert st.classify(False, 1, 1) is I.FAIL_LAST
    assert st.classify(False, 0, 0) is I.FAIL_LAST


# -- retries, exactly -----------------------------------------------------------------------------


def test_retry_two_means_three_failures_spaced_delay_before_retry() -> None:
    cs = CheckState(S.UP, None)
    now = 0.0
    seen = []
    for _ in range(3):
        cs = st.on_result(cs, FAIL, T, now)
        seen.append((cs.state, cs.due, cs.retries))
        assert cs.due is not None
        now = cs.due
    assert seen == [(S.FAILING, 3.0, 1), (S.FAILING, 6.0, 2), (S.DOWN, 16.0, 0)]


def test_retry_zero_fails_at_once() -> None:
    t0 = Timing(delay_loop=5.0, retry=0)
    assert st.on_result(CheckState(S.UP, None), FAIL, t0, 1.0) == CheckState(S.DOWN, 6.0, 0, None, "refused")


def test_success_while_retrying_resets_the_counter() -> None:
    cs = st.on_result(CheckState(S.UP, None), FAIL, T, 0.0)
    cs = st.on_result(cs, OK, T, 3.0)
    assert (cs.state, cs.due, cs.retries) == (S.UP, 13.0, 0)
    cs = st.on_result(cs, FAIL, T, 13.0)
    assert (cs.state, cs.retries) == (S.FAILING, 1)


def test_down_checker_keeps_retrying_like_keepalived() -> None:
    cs = CheckState(S.DOWN, None)
    dues = []
    for now in (0.0, 3.0, 6.0, 16.0):
        cs = st.on_result(cs, FAIL, T, now)
        dues.append(cs.due)
        assert cs.state is S.DOWN
    assert dues == [3.0, 6.0, 16.0, 19.0]


def test_one_success_is_up() -> None:
    assert st.on_result(CheckState(S.DOWN, None), OK, T, 0.0).state is S.UP


# -- alpha and warmup -----------------------------------------------------------------------------


def test_alpha_starts_down_until_first_success() -> None:
    alpha = Timing(delay_loop=10.0, retry=1, alpha=True, warmup=0.0)
    cs = st.initial(alpha, 0.0, 0.5)
    assert (cs.state, cs.counts_up) == (S.PENDING_DOWN, False)
    cs = st.on_result(st.started(cs), FAIL, alpha, 0.0)      # a retry: still pending
    assert (cs.state, cs.counts_up, cs.due) == (S.PENDING_DOWN, False, 1.0)
    cs = st.on_result(st.started(cs), OK, alpha, 1.0)
    assert (cs.state, cs.counts_up) == (S.UP, True)


def test_without_alpha_starts_up() -> None:
    cs = st.initial(T, 0.0, 0.0)
    assert (cs.state, cs.counts_up) == (S.PENDING_UP, True)


def test_warmup_uses_the_injected_fraction() -> None:
    assert st.initial(T, 100.0, 0.25).due == 102.0
    assert st.initial(T, 100.0, 0.0).due == 100.0
    assert st.initial(T, 100.0, 1.0).due == 108.0
    assert st.initial(Timing(warmup=0.0), 100.0, 0.9).due == 100.0
    with pytest.raises(ValueError):
        st.initial(T, 0.0, 1.5)


def test_started_marks_in_flight_once() -> None:
    cs = st.started(st.initial(T, 0.0, 0.0))
    assert cs.in_flight and cs.due is None
    with pytest.raises(ValueError):
        st.started(cs)


# -- timing from the configuration --------------------------------------------------------------


@pytest.mark.parametrize(("kind", "retry", "before_retry"), [
    ("TCP_CHECK", 1, 1.0), ("HTTP_GET", 1, 3.0), ("SSL_GET", 1, 3.0), ("DNS_CHECK", 3, 7.0),
    ("MISC_CHECK", 0, 1.0), ("SMTP_CHECK", 1, 1.0),
])
def test_keepalived_defaults_per_kind(kind: str, retry: int, before_retry: float) -> None:
    t = st.timing_for(spec(kind), delay_loop=7.0)
    assert t == Timing(delay_loop=7.0, retry=retry, delay_before_retry=before_retry, warmup=7.0, alpha=False)


def test_checker_options_override_the_service() -> None:
    s = spec(delay_loop=2, retry=4, delay_before_retry=0.5, warmup=0, alpha=True)
    assert st.timing_for(s, delay_loop=60.0, alpha=False) == Timing(2.0, 4, 0.5, 0.0, True)
    assert st.timing_for(spec(alpha=False), alpha=True).alpha is False
    assert st.timing_for(spec(), alpha=True).alpha is True


def test_timing_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Timing(delay_loop=0.0)
    with pytest.raises(ValueError):
        Timing(retry=-1)


# -- dest aggregation and dynamic weight ----------------------------------------------------------


def test_dest_is_up_when_all_checkers_are() -> None:
    up, down = CheckState(S.UP, 0.0), CheckState(S.DOWN, 0.0)
    assert st.dest_up([]) is True
    assert st.dest_up([up, CheckState(S.FAILING, 0.0)]) is True
    assert st.dest_up([up, down]) is False
    assert st.dest_up([CheckState(S.PENDING_DOWN, 0.0)]) is False


def test_dynamic_weight() -> None:
    cs = st.on_result(CheckState(S.UP, None), Result(True, "", weight=7), T, 0.0)
    assert cs.weight == 7
    cs = st.on_result(st.started(cs), FAIL, T, 1.0)           # a failure keeps it
    assert cs.weight == 7
    cs = st.on_result(st.started(cs), OK, T, 2.0)             # a pass without one drops it
    assert cs.weight is None
    assert st.on_result(CheckState(S.UP, None), Result(True, "", weight=10**6), T, 0.0).weight == 65535
    assert st.on_result(CheckState(S.UP, None), Result(True, "", weight=-3), T, 0.0).weight == 0
    assert st.dest_weight(5, []) == 5
    assert st.dest_weight(5, [CheckState(S.UP, 0, weight=9), CheckState(S.UP, 0, weight=3),
                              CheckState(S.UP, 0)]) == 3


# -- reload -------------------------------------------------------------------------------------


def test_carried_caps_retries_and_brings_the_next_probe_forward() -> None:
    cs = CheckState(S.FAILING, 50.0, retries=2, weight=4, detail="x")
    out = st.carried(cs, Timing(delay_loop=5.0, retry=1), now=10.0)
    assert out == CheckState(S.FAILING, 15.0, retries=1, weight=4, detail="x")
    assert st.carried(CheckState(S.UP, None), T, 0.0).due is None          # still in flight
    assert st.carried(CheckState(S.UP, 12.0), T, 10.0).due == 12.0


# -- property: the verdict is "retry + 1 failures in a row after the last pass" -------------------


def reference_up(results: list[bool], retry: int, alpha: bool) -> bool:
    trailing = 0
    for ok in reversed(results):
        if ok:
            break
        trailing += 1
    if trailing > retry:
        return False
    return any(results) or not alpha


@given(hs.lists(hs.booleans(), max_size=40), hs.integers(0, 4), hs.booleans())
def test_state_matches_the_reference(results: list[bool], retry: int, alpha: bool) -> None:
    timing = Timing(delay_loop=10.0, retry=retry, delay_before_retry=1.0, warmup=0.0, alpha=alpha)
    cs = st.initial(timing, 0.0, 0.0)
    now = 0.0
    for ok in results:
        assert cs.due is not None
        now = cs.due
        cs = st.on_result(st.started(cs), OK if ok else FAIL, timing, now)
    assert cs.counts_up == reference_up(results, retry, alpha)
