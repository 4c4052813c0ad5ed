"""Both afpacket receive layouts end to end: the TPACKET_V3 ring (the default, which every other
netns test runs too) and the experimental ``lanes`` layout (``--rx-ring lanes``)."""

from __future__ import annotations

import pytest

from ulvs.lab import Lab
from ulvs.lab.director import director, nat_rules
from ulvs.lab.pattern import pattern_digest

pytestmark = pytest.mark.netns


def test_v3_ring_is_the_default_and_serves_nat_in_order() -> None:
    size = 50 * 1024 * 1024
    with Lab() as lab, director(lab, nat_rules("rr", udp=False)) as d:
        got = [r.server for r in lab.http_get("client", lab.vip, count=6)]
        assert got == ["rs1", "rs2", "rs3"] * 2
        (r,) = lab.http_get("client", lab.vip, f"/bytes/{size}", timeout=120)
        assert r.error is None and r.status == 200 and r.sha256 == pattern_digest(size)
        assert "rx ring v3" in d.log_text()


def test_lanes_serve_keepalive_and_a_bulk_download() -> None:
    size = 50 * 1024 * 1024
    with Lab() as lab, director(lab, nat_rules("rr", udp=False), extra=("--rx-ring", "lanes")) as d:
        results = lab.http_get("client", lab.vip, count=30, keepalive=True)
        assert all(r.error is None and r.status == 200 for r in results), results
        assert len({r.server for r in results}) == 1          # one connection, one dest
        (r,) = lab.http_get("client", lab.vip, f"/bytes/{size}", timeout=120)   # GSO: the big lane
        assert r.error is None and r.status == 200 and r.sha256 == pattern_digest(size)
        assert "rx ring lanes" in d.log_text()


def test_a_dead_dataplane_worker_stops_the_director_with_an_error() -> None:
    import json
    import os
    import signal
    import subprocess

    from ulvs.lab.director import PY, DirectorError

    with Lab() as lab:
        try:
            with director(lab, nat_rules("rr", udp=False), extra=("--workers", "2")) as d:
                assert all(r.status == 200 for r in lab.http_get("client", lab.vip, count=2))
                out = lab.run("director", [PY, "-m", "ulvs", "status", "--json", "--socket", d.sock],
                              capture_output=True, text=True, check=True).stdout
                victim = json.loads(out)["daemon"]["worker_pids"][1]
                os.kill(victim, signal.SIGKILL)       # a process of the director we started
                try:
                    d.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    raise AssertionError("the director kept running without its worker") from None
        except DirectorError as e:
            assert "exited with 1" in str(e), e
            assert f"dataplane worker 1 (pid {victim}) exited" in str(e)
        else:
            raise AssertionError("the director exited cleanly after losing a worker")
