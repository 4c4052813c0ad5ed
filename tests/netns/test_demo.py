"""`ulvs demo` (as `make demo` runs it): a real NAT cluster in namespaces."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ulvs.lab import Lab

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("backend", ["afpacket", "tap"])
def test_demo_builds_serves_and_cleans_up(backend: str) -> None:
    before = {i.lab_id for i in Lab.status()}
    out = subprocess.run([sys.executable, "-m", "ulvs", "demo", "--backend", backend], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    counts = dict(re.findall(r"^  (rs\d): +(\d+)", out.stdout, re.M))
    assert counts == {"rs1": "30", "rs2": "20", "rs3": "10"}
    assert "failed: 0" in out.stdout
    assert "['rs1:hello', 'rs2:hello', 'rs3:hello']" in out.stdout
    assert "TCP  10.77.1.100:80 wlc" in out.stdout
    assert {i.lab_id for i in Lab.status()} == before
