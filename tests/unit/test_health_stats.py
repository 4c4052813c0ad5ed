"""Probe statistics (``ulvs.health.stats``): histogram buckets with Prometheus's ``le`` meaning,
the JSON the monitor reports and the daemon checks, and the monitor timing its probes and
reporting them (``probe_stats``) on a connection of its own."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ulvs.config.requests import JsonObj
from ulvs.health import monitor as mon
from ulvs.health.base import Checker, Result
from ulvs.health.monitor import Monitor
from ulvs.health.stats import BUCKETS, ProbeStats, probes_from_json

BOUND = 10.0


def test_a_duration_on_a_bound_counts_in_that_bucket() -> None:
    stats = ProbeStats()
    for seconds in (0.0, 0.005, 0.0051, 1.0, 30.0, 30.5):
        stats.observe("TCP_CHECK", seconds != 1.0, seconds)
    j = stats.to_json()["TCP_CHECK"]
    cumulative = dict((b, n) for b, n in j["buckets"])
    assert [b for b, _ in j["buckets"]] == list(BUCKETS)
    assert cumulative[0.005] == 2 and cumulative[0.01] == 3 and cumulative[1.0] == 4 and cumulative[30.0] == 5
    assert j["count"] == 6 and j["success"] == 5 and j["failure"] == 1
    assert j["sum"] == pytest.approx(61.5101)
    assert stats.changes == 6


def test_kinds_are_apart_and_sorted() -> None:
    stats = ProbeStats()
    stats.observe("UDP_CHECK", False, 2.0)
    stats.observe("HTTP_GET", True, 0.1)
    assert list(stats.to_json()) == ["HTTP_GET", "UDP_CHECK"]
    assert stats.to_json()["UDP_CHECK"]["failure"] == 1 and stats.to_json()["HTTP_GET"]["failure"] == 0


@pytest.mark.parametrize("seconds", [-0.1, math.nan])
def test_an_impossible_duration_is_a_bug(seconds: float) -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        ProbeStats().observe("TCP_CHECK", True, seconds)


def test_the_json_round_trips_through_the_daemons_check() -> None:
    stats = ProbeStats()
    stats.observe("TCP_CHECK", True, 0.02)
    stats.observe("TCP_CHECK", False, 5.0)
    assert probes_from_json(stats.to_json()) == stats.to_json()
    assert probes_from_json({}) == {}


GOOD: dict[str, Any] = {"buckets": [[0.1, 1], [1.0, 2]], "sum": 1.2, "count": 3, "success": 2, "failure": 1}


@pytest.mark.parametrize(("bad", "why"), [
    ([], "must be an object of checker kinds"),
    ({"K": 1}, "must be an object"),
    ({"K": {**GOOD, "buckets": None}}, "buckets must be a list"),
    ({"K": {**GOOD, "buckets": [[1.0, 2], [0.1, 3]]}}, "in order"),          # bounds go up
    ({"K": {**GOOD, "buckets": [[0.1, 2], [1.0, 1]]}}, "in order"),          # counts are cumulative
    ({"K": {**GOOD, "buckets": [[0.1, 1.5]]}}, "in order"),
    ({"K": {**GOOD, "buckets": [["x", 1]]}}, "in order"),
    ({"K": {**GOOD, "count": -1}}, "count must be a count"),
    ({"K": {**GOOD, "success": True}}, "success must be a count"),
    ({"K": {**GOOD, "count": 1}}, "count at least the last bucket"),
    ({"K": {**GOOD, "sum": math.inf}}, "sum must be a number"),
])
def test_the_daemon_refuses_a_malformed_table(bad: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        probes_from_json(bad)


# -- the monitor ----------------------------------------------------------------------------------
class Flaky(Checker):
    kind = "FLAKY"
    runs: Counter[bool] = Counter()

    async def probe(self) -> Result:
        await asyncio.sleep(0.01)
        ok = self.target.port == 80
        Flaky.runs[ok] += 1
        return Result(ok, "fine" if ok else "refused")


class Recorder:
    """Stands in for a ``ControlClient``."""

    def __init__(self) -> None:
        self.connections = 1
        self.requests: list[JsonObj] = []

    async def request(self, req: JsonObj) -> JsonObj:
        self.requests.append(req)
        return {"ok": True, "v": 1}

    def close(self) -> None:
        pass


def test_the_monitor_times_its_probes_and_reports_them(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mon, "create", lambda spec, target: Flaky(spec, target))
    monkeypatch.setattr(mon, "STATS_INTERVAL", 0.05)
    Flaky.runs = Counter()
    check = '[service.check]\ntype = "TCP_CHECK"\nconnect_timeout = 1\nretry = 0\n'
    path = tmp_path / "lb.toml"
    path.write_text("".join(
        f'[[service]]\nprotocol = "tcp"\nvip = "10.0.0.100"\nport = {port}\nforwarding = "masq"\n'
        f'delay_loop = 0.05\n{check}\n[[service.dest]]\naddress = "10.0.1.11"\n\n' for port in (80, 81)))
    reports, health = Recorder(), Recorder()

    async def scenario() -> dict[str, Any]:
        m = Monitor(path, None, tmp_path / "unused.sock")
        m.client, m.reporter = health, reports  # type: ignore[assignment]
        task = asyncio.ensure_future(m.run())
        async with asyncio.timeout(BOUND):
            while not reports.requests or reports.requests[-1]["probes"]["FLAKY"]["count"] < 6:
                await asyncio.sleep(0.01)
        last = reports.requests[-1]["probes"]["FLAKY"]
        ran = Counter(Flaky.runs)
        m.stop.set()
        assert await task == 0
        assert last["count"] <= sum(ran.values())
        return dict(last)

    last = asyncio.run(scenario())
    assert all(r["cmd"] == "probe_stats" for r in reports.requests)
    assert all(r["cmd"] != "probe_stats" for r in health.requests)       # not on the health connection
    assert last["success"] >= 1 and last["failure"] >= 1
    assert last["success"] + last["failure"] == last["count"]
    assert last["sum"] >= 0.009 * last["count"]                           # each probe slept 10 ms
    assert dict((b, n) for b, n in last["buckets"])[0.005] == 0
    counts = [r["probes"]["FLAKY"]["count"] for r in reports.requests]
    assert counts == sorted(set(counts))                                  # sent only when it moved
    assert probes_from_json(reports.requests[-1]["probes"])
