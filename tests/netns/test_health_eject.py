"""Passive ejection (``[service.ejection]``), end to end in the lab.

A NAT service over the three lab servers has ejection (threshold 0.5, min_syns 5, back-off 2 s
doubling to 8 s) and a TCP_CHECK on the service port that keeps passing: rs2 silently drops the
SYNs of the client LAN only (an nft rule in its namespace matching their source addresses), while
the director's checker, which connects from the server LAN, still gets through.  So only the
SYN counters can take rs2 out: the core counts each new connection sent to it and its answers,
the monitor reads them every second and ejects it; after the back-off its checker re-probes it
and it returns.

As in ``test_health``: every wait is a bounded poll of ``ulvs status --json``, never a sleep
with a fixed expectation, and no assertion has a timing threshold (times are printed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from tests.netns.test_health import (
    RS,
    TIMING,
    VIP,
    WAIT,
    health,
    is_up,
    monitor_ready,
    pool,
    running,
    service,
    status,
    wait_for,
)
from ulvs.lab import Lab
from ulvs.lab.director import Director

pytestmark = pytest.mark.netns

CLIENT_NET = "10.77.0.0/24"
EJECTION = "[service.ejection]\nthreshold = 0.5\nmin_syns = 5\nbackoff = 2\nbackoff_max = 8\n"
TCP_CHECK = f'[service.check]\ntype = "TCP_CHECK"\n{TIMING}'
NFT_TABLE = "ulvs_test_eject"

# ``count`` concurrent HTTP GETs, each with its own connection and ``timeout``: the server that
# answered (X-Real-Server) or null.
BURST = """
import asyncio, json, sys
host, port, count, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
async def one():
    try:
        async with asyncio.timeout(timeout):
            r, w = await asyncio.open_connection(host, port)
            w.write(b"GET / HTTP/1.0\\r\\n\\r\\n")
            await w.drain()
            data = await r.read()
            w.close()
    except (OSError, TimeoutError):
        return None
    for line in data.split(b"\\r\\n"):
        if line.lower().startswith(b"x-real-server:"):
            return line.split(b":", 1)[1].strip().decode()
    return "?"
async def main():
    print(json.dumps(await asyncio.gather(*(one() for _ in range(count)))))
asyncio.run(main())
"""


def burst(lab: Lab, count: int, timeout: float) -> list[str | None]:
    out = lab.python("client", BURST, VIP, "80", str(count), str(timeout), timeout=60)
    assert out.returncode == 0, out.stderr
    got: list[str | None] = json.loads(out.stdout)
    return got


def drop_client_syns(lab: Lab, rs: str) -> None:
    """In ``rs``'s namespace: drop what the client LAN sends to port 80 (so SYNs go unanswered)."""
    rules = (f"add table inet {NFT_TABLE}\n"
             f"add chain inet {NFT_TABLE} input {{ type filter hook input priority 0; }}\n"
             f"add rule inet {NFT_TABLE} input ip saddr {CLIENT_NET} tcp dport 80 drop\n")
    out = lab.run(rs, ["nft", "-f", "-"], input=rules)
    assert out.returncode == 0, out.stderr


def allow_client_syns(lab: Lab, rs: str) -> None:
    out = lab.run(rs, ["nft", "delete", "table", "inet", NFT_TABLE])
    assert out.returncode == 0, out.stderr


def ejected(d: Director, daddr: str, backoff: str | None = None) -> Callable[[], bool]:
    """``daddr`` reported down because it was ejected (for ``backoff`` seconds, if given)."""
    def check() -> bool:
        h = health(d, daddr)
        if h is None or h["up"] or not str(h["detail"]).startswith("ejected:"):
            return False
        return backoff is None or f"back-off {backoff} s" in str(h["detail"])
    return check


def drive_until(d: Director, lab: Lab, what: str, done: Callable[[], bool]) -> float:
    """Bursts of new connections (those to a dest that drops them fail after 1 s) until ``done``;
    at most WAIT seconds; returns how long it took."""
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > WAIT:
            raise AssertionError(f"{what}: not within {WAIT:g} s\n--- daemon log ---\n{d.log_text()[-6000:]}")
        burst(lab, 30, 1.0)
    return time.monotonic() - start


def syn_counters(d: Director, daddr: str) -> dict[str, int]:
    """``daddr``'s passive-health counters in ``ulvs status --json`` ({} when out of the pool)."""
    for s in status(d)["snapshot"]["services"]:
        for x in s["dests"]:
            if x["dest"]["daddr"] == daddr and s["service"].get("vport") == 80:
                c = x["counters"]
                return {k: int(c[k]) for k in ("syns", "synacks", "rsts")}
    return {}


@pytest.mark.parametrize("backend,extra", [("afpacket", ()), ("tap", ()), ("afpacket", ("--workers", "2"))],
                         ids=["afpacket", "tap", "afpacket-2-workers"])
def test_a_dest_that_leaves_syns_unanswered_is_ejected_backs_off_and_returns(
        backend: str, extra: tuple[str, ...]) -> None:
    cfg = service("tcp", 80, TCP_CHECK, extra=EJECTION)
    rs2 = RS["rs2"]
    how = " ".join((backend, *extra))
    with Lab() as lab, running(lab, cfg, backend, extra) as d:
        wait_for(d, "monitor running", monitor_ready(d, 3))
        assert pool(d) == {f"{a}:80": 1 for a in RS.values()}
        assert set(burst(lab, 6, 2.0)) == {"rs1", "rs2", "rs3"}
        answered = syn_counters(d, rs2)
        assert answered["syns"] >= 2 and answered["synacks"] == answered["syns"], answered
        drop_client_syns(lab, "rs2")
        took = drive_until(d, lab, "rs2 ejected", ejected(d, rs2, "2"))
        detail = health(d, rs2)["detail"]                   # type: ignore[index]
        print(f"\nejection ({how}): rs2 drops client SYNs -> ejected in {took:.2f} s ({detail!r})")
        # Its checker still passes, so it returns after each back-off and is ejected again at
        # once, each time for twice as long, up to backoff_max.
        for backoff in ("4", "8"):
            took = drive_until(d, lab, f"rs2 ejected for {backoff} s", ejected(d, rs2, backoff))
            print(f"ejection ({how}): back after its back-off, still dropping -> ejected again "
                  f"(back-off {backoff} s) {took:.2f} s later")
        # While it is out (8 s: room for the checks), every new connection succeeds and none
        # goes to rs2, which has left the pool.
        got = burst(lab, 12, 2.0)
        assert None not in got and "rs2" not in got and set(got) == {"rs1", "rs3"}, got
        assert f"{rs2}:80" not in pool(d)
        assert ejected(d, rs2, "8")()
        # It answers again: back after its back-off, and new connections reach it.
        allow_client_syns(lab, "rs2")
        took = wait_for(d, "rs2 back", is_up(d, rs2))
        print(f"ejection ({how}): rs2 answers again -> back in the pool {took:.2f} s later")
        assert pool(d) == {f"{a}:80": 1 for a in RS.values()}
        got = burst(lab, 12, 2.0)
        assert None not in got and set(got) == {"rs1", "rs2", "rs3"}, got
        log = d.log_text()
        assert "ejected: " in log
