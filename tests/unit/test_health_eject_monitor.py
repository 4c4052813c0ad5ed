"""The health monitor's passive ejection: it reads the dests' SYN counters from the daemon every
interval, feeds their deltas to the policy and reports an ejected dest down with why; after the
back-off the dest is re-probed and returns, and a repeat ejection backs off twice as long."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest

from ulvs.config.requests import JsonObj
from ulvs.core.model import Proto
from ulvs.health import monitor as mon
from ulvs.health.base import Checker, Result
from ulvs.health.monitor import Monitor

BOUND = 10.0    # s: every wait below is a bounded poll
VIP = "10.0.0.100"
DESTS = ("10.0.1.11", "10.0.1.12", "10.0.1.13")
SVC = (Proto.TCP, ipaddress.IPv4Address(VIP), 80)


class PassingCheck(Checker):
    kind = "FAKE"

    async def probe(self) -> Result:
        await asyncio.sleep(0)
        return Result(True, "connected")


class FakeDaemon:
    """The control socket for both of the monitor's connections: records the reports, answers
    snapshots from per-dest counters that ``tick`` moves on (a dest reported down is out of the
    pool: absent from the snapshot, and gets no SYNs)."""

    def __init__(self) -> None:
        self.connections = 1
        self.requests: list[JsonObj] = []
        self.counters = {d: [0, 0] for d in DESTS}
        self.answering = dict.fromkeys(DESTS, True)

    def down(self, daddr: str) -> bool:
        reports = [r for r in self.requests if r["cmd"] == "health" and r["dest"]["daddr"] == daddr]
        return bool(reports) and not reports[-1]["up"]

    async def request(self, req: JsonObj) -> JsonObj:
        if req["cmd"] != "snapshot":
            self.requests.append(req)
            return {"ok": True, "v": 1}
        dests = []
        for daddr, c in self.counters.items():
            if self.down(daddr):
                continue
            c[0] += 10
            c[1] += 10 if self.answering[daddr] else 0
            dests.append({"dest": {"daddr": daddr, "dport": 80, "weight": 1, "method": "masq"},
                          "counters": {"conns": c[0], "syns": c[0], "synacks": c[1], "rsts": 0}})
        service = {"proto": "tcp", "vaddr": VIP, "vport": 80, "sched": "rr"}
        return {"ok": True, "v": 1, "snapshot": {"services": [{"service": service, "dests": dests}]}}

    def close(self) -> None:
        pass

    def details(self, daddr: str) -> list[tuple[bool, str]]:
        return [(r["up"], r["detail"]) for r in self.requests
                if r["cmd"] == "health" and r["dest"]["daddr"] == daddr]


def config(ejection: str = "[service.ejection]\nthreshold = 0.5\nmin_syns = 5\nbackoff = 0.3\n"
                           "backoff_max = 1.2\n") -> str:
    out = (f'[[service]]\nprotocol = "tcp"\nvip = "{VIP}"\nport = 80\nforwarding = "masq"\n'
           f'delay_loop = 30\n{ejection}\n[service.check]\ntype = "TCP_CHECK"\n')
    for daddr in DESTS:
        out += f'\n[[service.dest]]\naddress = "{daddr}"\n'
    return out


async def until(done: Callable[[], bool]) -> None:
    async with asyncio.timeout(BOUND):
        while not done():
            await asyncio.sleep(0.01)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeDaemon:
    monkeypatch.setattr(mon, "create", lambda spec, target: PassingCheck(spec, target))
    monkeypatch.setattr(mon, "TRAFFIC_INTERVAL", 0.05)
    return FakeDaemon()


def monitor(tmp_path: Path, fake: FakeDaemon, text: str) -> Monitor:
    path = tmp_path / "lb.toml"
    path.write_text(text)
    m = Monitor(path, None, tmp_path / "unused.sock")
    m.client = fake  # type: ignore[assignment]
    m.poller = fake  # type: ignore[assignment]
    return m


def test_a_dest_leaving_syns_unanswered_is_ejected_backs_off_and_returns(
        tmp_path: Path, fake: FakeDaemon) -> None:
    rs2 = DESTS[1]

    async def scenario() -> None:
        m = monitor(tmp_path, fake, config())
        task = asyncio.ensure_future(m.run())
        fake.answering[rs2] = False
        await until(lambda: fake.down(rs2))
        assert fake.details(rs2) == [(False, "ejected: 10 of 10 SYNs unanswered, back-off 0.3 s")]
        # Back-off over: re-probed (passes), back in the pool, ejected again for twice as long.
        again = (False, "ejected: 10 of 10 SYNs unanswered, back-off 0.6 s")
        await until(lambda: again in fake.details(rs2))
        assert fake.details(rs2)[1:] == [
            (False, "ejected: 10 of 10 SYNs unanswered, back-off 0.3 s; back-off over, re-probing"),
            (True, "connected"), again]
        # It answers again: it comes back after its back-off and stays.
        fake.answering[rs2] = True
        await until(lambda: not fake.down(rs2))
        seen = len(fake.requests)
        await asyncio.sleep(0.3)
        assert not fake.down(rs2) and len(fake.requests) == seen
        assert not any(fake.down(d) for d in (DESTS[0], DESTS[2]))
        m.stop.set()
        assert await task == 0

    asyncio.run(scenario())


def test_first_reads_and_counters_going_back_only_set_the_baseline(tmp_path: Path, fake: FakeDaemon) -> None:
    def snapshot(syns: int, synacks: int) -> JsonObj:
        d = {"dest": {"daddr": DESTS[0], "dport": 80}, "counters": {"syns": syns, "synacks": synacks}}
        return {"services": [{"service": {"proto": "tcp", "vaddr": VIP, "vport": 80}, "dests": [d]}]}

    async def scenario() -> None:
        m = monitor(tmp_path, fake, config("[service.ejection]\nmin_syns = 5\nmax_fraction = 1\n"))
        m.build(m.load(), 0.0)
        sh = m.services[SVC]
        key = (ipaddress.IPv4Address(DESTS[0]), 80)
        m.observe_traffic(snapshot(1000, 0), 1.0)           # first read: baseline only
        assert not sh.ejected(key)
        m.observe_traffic(snapshot(10, 0), 2.0)             # zeroed: baseline again
        assert not sh.ejected(key)
        m.observe_traffic(snapshot(20, 25), 3.0)            # late SYN-ACKs: answered capped at 10
        assert not sh.ejected(key)
        m.observe_traffic({"services": [{"service": {"proto": "tcp", "vaddr": VIP, "vport": 80},
                                         "dests": []}]}, 4.0)
        m.observe_traffic(snapshot(40, 25), 5.0)            # back after an absence: baseline
        assert not sh.ejected(key)
        m.observe_traffic(snapshot(50, 25), 6.0)            # 10 of 10 unanswered
        assert sh.ejected(key)
        assert sh.ejection_detail(key) == "ejected: 10 of 10 SYNs unanswered, back-off 10 s"
        await until(lambda: m.outbox.qsize() > 0)

    asyncio.run(scenario())


def test_a_service_without_ejection_is_not_judged(tmp_path: Path, fake: FakeDaemon) -> None:
    async def scenario() -> None:
        m = monitor(tmp_path, fake, config(""))
        m.build(m.load(), 0.0)
        snap: JsonObj = {"services": [{"service": {"proto": "tcp", "vaddr": VIP, "vport": 80}, "dests": [
            {"dest": {"daddr": DESTS[0], "dport": 80}, "counters": {"syns": 0, "synacks": 0}}]}]}
        for n, now in ((0, 1.0), (100, 2.0)):
            snap["services"][0]["dests"][0]["counters"]["syns"] = n
            m.observe_traffic(snap, now)
        assert not m.services[SVC].ejected((ipaddress.IPv4Address(DESTS[0]), 80)) and m.traffic == {}

    asyncio.run(scenario())
