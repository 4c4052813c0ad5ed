"""The health monitor's shell (``ulvs.health.monitor``) with fake probes and a fake daemon: what
it sends (health, sorry, expire_dest_conns, in that order), shared probes run once, scripts run
without a shell and are killed on timeout, a reload with the same file changes nothing."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ulvs.config.requests import JsonObj
from ulvs.config.schema import CheckSpec
from ulvs.health import monitor as mon
from ulvs.health.base import Checker, Result, Target
from ulvs.health.monitor import Monitor

BOUND = 10.0    # s: every wait below is a bounded poll


class FakeCheck(Checker):
    kind = "FAKE"
    healthy: dict[tuple[str, int], bool] = {}
    probes: Counter[tuple[str, int]] = Counter()

    async def probe(self) -> Result:
        where = (self.target.host, self.target.port)
        FakeCheck.probes[where] += 1
        await asyncio.sleep(0)
        ok = FakeCheck.healthy.get(where, True)
        return Result(ok, "fine" if ok else "refused")


class FakeDaemon:
    """Stands in for ``ControlClient``: records every request, answers ok."""

    def __init__(self) -> None:
        self.connections = 1
        self.requests: list[JsonObj] = []

    async def request(self, req: JsonObj) -> JsonObj:
        self.requests.append(req)
        return {"ok": True, "v": 1, **({"expired": 1} if req["cmd"] == "expire_dest_conns" else {})}

    def close(self) -> None:
        pass

    def health(self, daddr: str, vport: int) -> list[tuple[bool, int | None]]:
        return [(r["up"], r["weight"]) for r in self.requests
                if r["cmd"] == "health" and r["dest"]["daddr"] == daddr and r["service"]["vport"] == vport]


def config(tmp_path: Path, notes: Path) -> str:
    check = ('[service.check]\ntype = "TCP_CHECK"\nconnect_timeout = 1\nretry = 1\n'
             'delay_before_retry = 0.05\n')
    web = ""
    for port in (80, 8080):        # two services sharing one dest and one check
        web += (f'[[service]]\nprotocol = "tcp"\nvip = "10.0.0.100"\nport = {port}\nforwarding = "masq"\n'
                f'delay_loop = 0.1\n{check}\n[[service.dest]]\naddress = "10.0.1.11"\nport = 80\n\n')
    dns = ('[[service]]\nprotocol = "udp"\nvip = "10.0.0.100"\nport = 53\nforwarding = "masq"\n'
           f'delay_loop = 0.1\nsorry_server = "10.0.1.99:53"\n{check}\n'
           f'[[service.dest]]\naddress = "10.0.1.12"\n'
           f'notify_down = ["/bin/sh", "-c", "echo down >> {notes}"]\nnotify_up = ["/bin/sleep", "30"]\n')
    return web + dns


async def until(what: str, done: Callable[[], bool]) -> None:
    async with asyncio.timeout(BOUND):
        while not done():
            await asyncio.sleep(0.01)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeDaemon:
    FakeCheck.healthy = {}
    FakeCheck.probes = Counter()
    monkeypatch.setattr(mon, "create", lambda spec, target: FakeCheck(spec, target))
    monkeypatch.setattr(mon, "SCRIPT_TIMEOUT", 0.3)
    return FakeDaemon()


def test_monitor_reports_shares_probes_runs_scripts_and_reloads(
        tmp_path: Path, fake: FakeDaemon, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "ulvs.health")
    notes = tmp_path / "notes"
    path = tmp_path / "lb.toml"
    path.write_text(config(tmp_path, notes))
    delivered: Counter[int] = Counter()

    async def scenario() -> None:
        m = Monitor(path, None, tmp_path / "unused.sock")
        m.client = fake  # type: ignore[assignment]
        deliver = m._deliver

        def counting(waiters: list[Any], result: Result, made: float) -> None:
            for service, _check in waiters:
                delivered[service[2]] += 1
            deliver(waiters, result, made)

        m._deliver = counting  # type: ignore[method-assign]
        task = asyncio.ensure_future(m.run())
        # At start every dest is reported (up, configured weight) and the sorry server off.
        await until("first reports", lambda: len(fake.requests) >= 4)
        assert fake.health("10.0.1.11", 80) == fake.health("10.0.1.11", 8080) == [(True, None)]
        assert {"cmd": "sorry", "service": {"proto": "udp", "vaddr": "10.0.0.100", "vport": 53},
                "on": False} in fake.requests
        # Shared probe: the two web services' checks of 10.0.1.11:80 run one probe between them.
        await until("results", lambda: min(delivered[80], delivered[8080]) >= 6)
        assert FakeCheck.probes[("10.0.1.11", 80)] <= max(delivered[80], delivered[8080]) + 1
        # A failed UDP dest: health down, the sorry server on first, then its flows expire.
        FakeCheck.healthy[("10.0.1.12", 53)] = False
        await until("expire", lambda: any(r["cmd"] == "expire_dest_conns" for r in fake.requests))
        cmds = [(r["cmd"], r.get("on"), r.get("up")) for r in fake.requests if r["service"]["vport"] == 53]
        assert cmds[-3:] == [("sorry", True, None), ("health", None, False),
                             ("expire_dest_conns", None, None)]
        assert fake.requests[-1]["proto"] == "udp" and fake.requests[-1]["dest"]["daddr"] == "10.0.1.12"
        await until("notify_down ran", lambda: notes.exists() and notes.read_text() == "down\n")
        # A reload of the same file changes nothing: no report, no script.
        sent = len(fake.requests)
        m.reload()
        await until("more results", lambda: delivered[80] >= 14)
        assert len(fake.requests) == sent and notes.read_text() == "down\n"
        # Back up: notify_up (sleep 30) is killed after SCRIPT_TIMEOUT.
        FakeCheck.healthy[("10.0.1.12", 53)] = True
        await until("up again", lambda: fake.health("10.0.1.12", 53)[-1] == (True, None))
        await until("script killed", lambda: "notify_up script /bin/sleep 30: still running" in caplog.text)
        assert fake.requests[-1] == {"cmd": "sorry", "service": fake.requests[-1]["service"], "on": False}
        m.stop.set()
        assert await task == 0

    asyncio.run(scenario())
    assert "health monitor stopping" in caplog.text
    assert "UDP 10.0.0.100:53 dest 10.0.1.12:53: 1 UDP connection(s) expired" in caplog.text


def test_target_for_reads_connect_and_bind_options() -> None:
    spec = CheckSpec("TCP_CHECK", (("bindto", "10.0.0.5"), ("connect_ip", "10.0.9.9"),
                                   ("connect_port", 8080)))
    t = mon.target_for(ipaddress.IPv4Address("10.0.1.11"), 80, spec)
    assert t == Target(ipaddress.IPv4Address("10.0.1.11"), 80, ipaddress.IPv4Address("10.0.9.9"), 8080,
                       ipaddress.IPv4Address("10.0.0.5"), None)
    assert (t.host, t.port, t.source) == ("10.0.9.9", 8080, ("10.0.0.5", 0))


def test_service_virtualhost_cascades_into_http_checks_that_set_none() -> None:
    import ipaddress

    from ulvs.config.schema import CheckSpec, RealServer, VirtualService
    from ulvs.core.model import DestConfig, Proto, ServiceConfig
    from ulvs.health.monitor import cascade

    rs = RealServer(DestConfig(ipaddress.IPv4Address("10.77.2.11"), 80), checks=(
        CheckSpec("HTTP_GET", (("url", ({"path": "/"},)),)),
        CheckSpec("HTTP_GET", (("virtualhost", "own.example"),)),
        CheckSpec("TCP_CHECK"),
    ))
    vs = VirtualService(ServiceConfig(Proto.TCP, ipaddress.IPv4Address("10.77.1.100"), 80),
                        dests=(rs,), virtualhost="www.example")
    checks = cascade(vs).dests[0].checks
    assert [c.get("virtualhost") for c in checks] == ["www.example", "own.example", None]
    assert cascade(VirtualService(vs.config, dests=(rs,))).dests[0].checks == rs.checks


def ramp_config(slow_start: float, failed_conns: str) -> str:
    check = ('[service.check]\ntype = "TCP_CHECK"\nconnect_timeout = 1\nretry = 1\n'
             'delay_before_retry = 0.05\n')
    out = ""
    web = f'slow_start = {slow_start}\nfailed_conns = "{failed_conns}"\n'
    for port, daddr, extra in ((80, "10.0.1.11", web), (81, "10.0.1.13", "")):
        out += (f'[[service]]\nprotocol = "tcp"\nvip = "10.0.0.100"\nport = {port}\nforwarding = "masq"\n'
                f'delay_loop = 0.1\n{extra}{check}\n[[service.dest]]\naddress = "{daddr}"\nport = 80\n'
                'weight = 4\n\n')
    return out


def test_slow_start_and_failed_conns_reach_the_policy_and_the_daemon(
        tmp_path: Path, fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """failed_conns = "expire": a failed dest's TCP connections are expired (after its health
    report), "keep" (port 81) sends nothing; slow_start: the returning dest is reported with a
    ramped weight, rising to its configured weight (None in the report); a reload takes new
    values."""
    from ulvs.core.model import Proto
    from ulvs.health import policy as pol

    monkeypatch.setattr(pol, "RAMP_TICK", 0.1)       # steps of a 1 s ramp: 1, 2, 3, 4
    path = tmp_path / "lb.toml"
    path.write_text(ramp_config(1.0, "expire"))
    web, other = (Proto.TCP, ipaddress.IPv4Address("10.0.0.100"), 80), \
        (Proto.TCP, ipaddress.IPv4Address("10.0.0.100"), 81)

    def expired(daddr: str) -> list[JsonObj]:
        return [r for r in fake.requests if r["cmd"] == "expire_dest_conns" and r["dest"]["daddr"] == daddr]

    async def scenario() -> None:
        m = Monitor(path, None, tmp_path / "unused.sock")
        m.client = fake  # type: ignore[assignment]
        task = asyncio.ensure_future(m.run())
        await until("first reports", lambda: len(fake.requests) >= 2)
        assert (m.services[web].slow_start, m.services[web].conn_policy) == (1.0, pol.ConnPolicy.EXPIRE)
        assert (m.services[other].slow_start, m.services[other].conn_policy) == (0.0, pol.ConnPolicy.KEEP)
        FakeCheck.healthy[("10.0.1.11", 80)] = FakeCheck.healthy[("10.0.1.13", 80)] = False
        await until("expired", lambda: bool(expired("10.0.1.11")))
        await until("both down", lambda: (False, None) in fake.health("10.0.1.13", 81))
        await until("all sent", m.outbox.empty)
        (req,) = expired("10.0.1.11")
        assert req["proto"] == "tcp" and req["service"]["vport"] == 80
        web_reqs = [r["cmd"] for r in fake.requests if r["service"]["vport"] == 80]
        assert web_reqs[-2:] == ["health", "expire_dest_conns"]        # out of the pool first
        assert expired("10.0.1.13") == []                               # keep: nothing to do
        # Back up: it re-enters at weight 1 and ramps to its configured weight.
        before = len(fake.health("10.0.1.11", 80))
        FakeCheck.healthy[("10.0.1.11", 80)] = True
        await until("ramped", lambda: fake.health("10.0.1.11", 80)[-1] == (True, None))
        weights = [w for up, w in fake.health("10.0.1.11", 80)[before:]]
        assert weights[0] == 1 and weights[-1] is None
        middle = weights[1:-1]
        assert middle and middle == sorted(set(middle)) and set(middle) <= {2, 3}
        # A reload takes the file's new values.
        path.write_text(ramp_config(0.0, "keep"))
        m.reload()
        assert (m.services[web].slow_start, m.services[web].conn_policy) == (0.0, pol.ConnPolicy.KEEP)
        m.stop.set()
        assert await task == 0

    asyncio.run(scenario())
