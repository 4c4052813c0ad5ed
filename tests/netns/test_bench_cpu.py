"""bench/bench_cpu.py measures on the lab: CPU time per forwarded packet by receive layout, and
the receive CPU left to a user process under a flood.  Short runs; no timing is asserted, only
that every figure was measured and is a plausible quantity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_cpu.py"

pytestmark = pytest.mark.netns


def run(*args: str) -> dict:  # type: ignore[type-arg]
    p = subprocess.run([sys.executable, str(BENCH), "--json", *args], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out: dict = json.loads(p.stdout)  # type: ignore[type-arg]
    return out


def test_cpu_per_packet_for_a_v3_and_a_paced_lanes_daemon() -> None:
    res = run("--configs", "v3,lanes:300", "--rates", "5000", "--seconds", "0.5", "--trials", "1")
    assert set(res) == {"v3", "lanes:300"}
    assert (res["lanes:300"]["rx_ring"], res["lanes:300"]["rx_pace_us"]) == ("lanes", 300)
    for r in res.values():
        row = r["rates"]["5000"]
        assert row["us_per_pkt"] > 0 and row["delivered_pps"] > 0, r
        assert r["ports"], r                     # the daemon's ring counters came back
    assert "rx_wakeups" in res["lanes:300"]["ports"]["cli0"]
    assert "rx_wakeups" not in res["v3"]["ports"]["cli0"]


def test_the_receive_cpu_left_under_a_flood() -> None:
    res = run("--left", "--rates", "5000", "--seconds", "0.5")
    assert set(res["share"]) == {"5000", "full"}
    assert all(0 < v < 2 for v in res["share"].values()), res

