"""Existing LVS configurations run unchanged: the shipped keepalived.conf and Piranha lvs.cf
examples (docs/examples/, on the lab's addresses) drive a real director, which serves HTTP
through the VIP with the weights they give.  (``ipvsadm -S`` rules files are what every other
netns test runs.)"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from ulvs.lab import Lab
from ulvs.lab.director import director

pytestmark = pytest.mark.netns
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


@pytest.mark.parametrize("name", ["keepalived.conf", "lvs.cf"])
def test_example_configuration_serves_with_its_weights(name: str) -> None:
    # the lab's directors call the example's eth0/eth1 cli0/srv0
    text = (EXAMPLES / name).read_text().replace("eth0", "cli0").replace("eth1", "srv0")
    with Lab() as lab, director(lab, text, config_name=name) as d:
        listing = d.listing()
        assert "TCP  10.77.1.100:80 wlc" in listing, listing
        weights = {line.split()[1]: int(line.split()[3]) for line in listing.splitlines()
                   if line.strip().startswith("-> 10.77.2.1") and line.split()[1].endswith(":80")}
        assert weights == {"10.77.2.11:80": 3, "10.77.2.12:80": 2, "10.77.2.13:80": 1}, listing
        results = lab.http_get("client", lab.vip, count=12)
        assert all(r.error is None and r.status == 200 for r in results), results
        # wlc: closed connections stay as inactive entries (TIME_WAIT), and overhead/weight
        # keeps the three dests in step with their weights 3:2:1
        assert Counter(r.server for r in results) == {"rs1": 6, "rs2": 4, "rs3": 2}
        log = d.log_text()
        assert "warning" in log.lower()        # the parts parsed but not run yet are reported
