"""``LanePick``: when an ``auto`` ring moves between its TPACKET_V3 ring and its quick socket."""

from __future__ import annotations

import pytest

from ulvs.io.lanepick import HOLD, QUICK_BELOW_PPS, WINDOW, LanePick


def ring_reads(pick: LanePick, start: float, seconds: float, pps: float, every: float = 0.001) -> list[bool]:
    """Reads of the ring every ``every`` s carrying ``pps``; what ``step`` answered to each."""
    out = []
    t = start
    while t < start + seconds - 1e-9:
        t += every
        out.append(pick.step(t, round(pps * every), False))
    return out


def test_a_port_starts_on_the_ring_and_a_quiet_window_moves_it_to_the_quick_socket() -> None:
    pick = LanePick()
    assert not pick.quick
    moves = ring_reads(pick, 0.0, 2 * WINDOW, QUICK_BELOW_PPS / 2)
    assert pick.quick and moves.count(True) == 1 and pick.to_quick == 1
    # the first read opens the window; the move comes when one whole window has been seen
    assert moves.index(True) == round(WINDOW / 0.001)


def test_a_busy_ring_stays_a_ring() -> None:
    pick = LanePick()
    assert not any(ring_reads(pick, 0.0, 1.0, 2 * QUICK_BELOW_PPS))
    assert not pick.quick and pick.to_quick == 0


def test_the_threshold_is_the_average_over_the_window() -> None:
    pick = LanePick(quick_below_pps=1000, window=0.01)
    pick.step(0.0, 0, False)
    assert not pick.step(0.01, 10, False)          # 1,000 frames/s: not below
    assert pick.step(0.02, 9, False)               # 900 frames/s
    assert pick.quick


def test_the_first_read_after_an_idle_spell_moves_at_once() -> None:
    pick = LanePick()
    ring_reads(pick, 0.0, 0.5, 2 * QUICK_BELOW_PPS)
    assert not pick.quick
    # nothing read for 5 s (a V3 ring hands over nothing while idle): the window is long and quiet
    assert pick.step(5.5, 3, False) and pick.quick


def test_a_full_quick_read_moves_back_and_the_ring_is_held() -> None:
    pick = LanePick()
    ring_reads(pick, 0.0, 2 * WINDOW, 100)
    assert pick.quick
    t = 1.0
    assert not pick.step(t, 64, False)             # busy, but keeping up: stays
    assert pick.step(t + 0.001, 128, True)         # its whole budget waiting: back to the ring
    assert not pick.quick and pick.to_ring == 1
    # quiet windows inside the hold do not move it ...
    assert not any(ring_reads(pick, t + 0.001, HOLD - 0.01, 100))
    assert not pick.quick
    # ... the first whole quiet window after it does
    assert any(ring_reads(pick, t + HOLD, 2 * WINDOW, 100))
    assert pick.quick and pick.to_quick == 2


@pytest.mark.parametrize("full", [False, True])
def test_the_quick_socket_ignores_its_rate(full: bool) -> None:
    pick = LanePick(quick=True)
    assert pick.step(0.0, 10_000, full) is full
    assert pick.quick is not full
