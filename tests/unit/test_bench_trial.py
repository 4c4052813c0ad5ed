"""bench/bench_netns.py's pass rule for one pps trial."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import bench_netns  # noqa: E402

Trial = bench_netns.Trial


def test_a_lossless_trial_passes_within_counter_jitter() -> None:
    assert Trial(100_000, 100_000, 100_000, 0.0, 0.0).ok
    assert Trial(100_000, 100_000, 100_200, -0.002, -0.002).ok


def test_loss_after_the_drain_or_trailing_in_the_window_fails() -> None:
    assert not Trial(100_000, 100_000, 99_000, 0.0, 0.01).ok
    assert not Trial(100_000, 100_000, 97_000, 0.03, 0.0).ok


def test_delivering_more_than_was_offered_fails() -> None:
    # --workers 2 in DR once delivered 188 kpps of 94 offered: not a lossless rate
    assert not Trial(94_000, 94_000, 188_400, -1.0069, -1.7805).ok
