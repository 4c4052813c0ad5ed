"""The redundant director pair in the lab: two directors (``director`` and ``director2``) share the
client and server LANs; VRRP moves the floating gateways (10.77.0.254 for the clients, 10.77.2.254
for the real servers) and connection sync copies the connections, so the backup carries on.

Timings are measured from timestamps (CLOCK_MONOTONIC, shared by every namespace), never waited
for with fixed sleeps; the takeover time is recorded as a test property and printed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ulvs.lab import Lab
from ulvs.lab.director import Director, director
from ulvs.lab.pattern import pattern_digest

pytestmark = pytest.mark.netns
VIP = "10.77.1.100"
PROBE = str(Path(__file__).with_name("failover_probe.py"))
MASTER, BACKUP = 2, 1
ADVERT = 0.1


def pair_config(priority: int, *, auth: str | None = "lab-adverts", sync_key: str | None = "lab-sync",
                preempt: bool = True) -> str:
    auth_line = f'auth_key = "{auth}"\n' if auth else ""
    services = []
    for proto, port in (("udp", 5353), ("tcp", 80)):
        services.append(f"""
[[service]]
protocol = "{proto}"
vip = "{VIP}"
port = {port}
scheduler = "rr"
forwarding = "masq"
""" + "".join(f"""
[[service.dest]]
address = "10.77.2.{10 + i}"
""" for i in (1, 2, 3)))
    instances = "".join(f"""
[[vrrp.instance]]
name = "{name}"
interface = "{ifname}"
vrid = {vrid}
priority = {priority}
advert_int = {ADVERT}
preempt = {"true" if preempt else "false"}
virtual_addresses = ["{addr}/24"]
{auth_line}""" for name, ifname, vrid, addr in (("VI_CLIENT", "cli0", 51, "10.77.0.254"),
                                                 ("VI_SERVER", "srv0", 52, "10.77.2.254")))
    key_line = f'key = "{sync_key}"\n' if sync_key else ""
    return f"""
[sync]
interface = "srv0"
instance = "VI_CLIENT"
{key_line}
{"".join(services)}
{instances}
[[vrrp.sync_group]]
name = "PAIR"
members = ["VI_CLIENT", "VI_SERVER"]
"""


def states(d: Director) -> dict[str, int]:
    return {i["iname"]: i["state"] for i in d.status()["vrrp"] or []}


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def all_in(d: Director, state: int) -> bool:
    s = states(d)
    return bool(s) and all(v == state for v in s.values())


@contextlib.contextmanager
def pair(lab: Lab, prio1: int = 150, prio2: int = 100, **kw: Any) -> Iterator[tuple[Director, Director]]:
    with director(lab, pair_config(prio1, **kw), config_name="ulvs.toml") as d1, \
            director(lab, pair_config(prio2, **kw), config_name="ulvs.toml", role="director2") as d2:
        yield d1, d2


@contextlib.contextmanager
def probe(lab: Lab, seconds: float, size: int, rate: float) -> Iterator[Callable[[], dict[str, Any]]]:
    proc = lab.popen("client", [sys.executable, "-I", PROBE, VIP, str(seconds), str(size), str(rate)],
                     stdout=subprocess.PIPE)

    def result() -> dict[str, Any]:
        out, _ = proc.communicate(timeout=seconds + 30)
        data: dict[str, Any] = json.loads(out)
        return data

    try:
        yield result
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def takeover(rows: list[list[Any]], t_event: float) -> float:
    """Seconds from ``t_event`` to the first answer to a datagram sent after it."""
    answered = [r[2] for r in rows if r[1] >= t_event and r[2] is not None]
    assert answered, "no UDP answer after the failover"
    return float(min(answered)) - t_event


def servers_after(rows: list[list[Any]], t: float) -> set[str]:
    return {r[3] for r in rows if r[1] >= t and r[3] is not None}


def test_one_master_and_kill9_failover_keeps_tcp_and_udp(record_property: Any) -> None:
    with Lab(directors=2, floating=False) as lab, pair(lab) as (d1, d2):
        wait_for("director MASTER", lambda: all_in(d1, MASTER))
        wait_for("director2 BACKUP", lambda: all_in(d2, BACKUP))
        size = 24 << 20
        with probe(lab, 6.0, size, 6e6) as result:
            time.sleep(1.5)              # the flows are established and synced
            before = d2.status()["sync"]
            t_kill = time.monotonic()
            d1.kill()
            wait_for("director2 MASTER", lambda: all_in(d2, MASTER))
            data = result()
        rows, tcp = data["udp"], data["tcp"]
        took = takeover(rows, t_kill)
        record_property("takeover_s", round(took, 3))
        lost = [r for r in rows if r[2] is None and r[1] < rows[-1][1] - 0.5]
        print(f"takeover after kill -9: {took * 1000:.0f} ms; {len(lost)} of {len(rows)} UDP probes "
              "unanswered")
        assert tcp["error"] is None and tcp["status"] == 200, tcp
        assert tcp["length"] == size and tcp["sha256"] == pattern_digest(size)
        before_kill = servers_after([r for r in rows if r[1] < t_kill], 0)
        assert len(before_kill) == 1 and servers_after(rows, t_kill) == before_kill  # same dest
        assert before["records_applied"] > 0 and before["role"] == "backup", before
        # a protocol bound, not a tuning target: Master_Down_Interval is 0.36 s here
        assert took < 2.0
        assert states(d2) == {"VI_CLIENT": MASTER, "VI_SERVER": MASTER}


def test_failback_after_the_master_returns_loses_nothing() -> None:
    with Lab(directors=2, floating=False) as lab:
        with director(lab, pair_config(100), config_name="ulvs.toml", role="director2") as d2:
            wait_for("director2 MASTER alone", lambda: all_in(d2, MASTER))
            size = 24 << 20
            with probe(lab, 7.0, size, 5e6) as result:
                time.sleep(1.0)
                t_join = time.monotonic()
                with director(lab, pair_config(150), config_name="ulvs.toml") as d1:
                    wait_for("director preempts", lambda: all_in(d1, MASTER))
                    wait_for("director2 steps back", lambda: all_in(d2, BACKUP))
                    sync = d1.status()["sync"]
                    assert sync["bulk_completed"] >= 1 and sync["records_applied"] > 0, sync
                    data = result()
        rows, tcp = data["udp"], data["tcp"]
        assert tcp["error"] is None and tcp["length"] == size and tcp["sha256"] == pattern_digest(size), tcp
        before = servers_after([r for r in rows if r[1] < t_join], 0)
        assert len(before) == 1 and servers_after(rows, t_join) == before
        lost = [r for r in rows if r[1] > t_join and r[2] is None and r[1] < rows[-1][1] - 0.5]
        print(f"failback: {len(lost)} of {len(rows)} UDP probes unanswered")


def test_partition_heals_to_one_master_with_fresh_garps() -> None:
    with Lab(directors=2, floating=False) as lab, pair(lab) as (d1, d2):
        wait_for("director MASTER", lambda: all_in(d1, MASTER))
        wait_for("director2 BACKUP", lambda: all_in(d2, BACKUP))
        # the partition: the bridges stop carrying VRRP between the two directors
        nft = ["nft", "-f", "-"]
        lab.run("lan", nft, input="table bridge vrrpcut {\n chain cut {\n"
                                  "  type filter hook forward priority 0;\n  ip protocol 112 drop\n }\n}\n",
                check=True)
        wait_for("split brain", lambda: all_in(d2, MASTER))
        assert all_in(d1, MASTER)
        sniff = lab.popen("client", [sys.executable, "-c", GARP_SNIFFER, "6"], stdout=subprocess.PIPE)
        time.sleep(0.5)
        t_heal = time.monotonic()
        lab.run("lan", ["nft", "delete", "table", "bridge", "vrrpcut"], check=True)
        wait_for("one master again", lambda: all_in(d2, BACKUP))
        assert all_in(d1, MASTER)
        out, _ = sniff.communicate(timeout=30)
        garps = json.loads(out)
        mac1 = lab.mac("director", lab.director_if_client)
        fresh = [g for g in garps if g["t"] >= t_heal and g["mac"] == mac1 and g["ip"] == "10.77.0.254"]
        assert fresh, garps                  # the winner re-announced the gateway after the heal


GARP_SNIFFER = r"""
import json, socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.settimeout(0.2)
end = time.monotonic() + float(sys.argv[1]); out = []
while time.monotonic() < end:
    try:
        f = s.recv(100)
    except OSError:
        continue
    if len(f) >= 42:
        spa, tpa = f[28:32], f[38:42]
        if spa == tpa:
            out.append({"t": time.monotonic(), "mac": f[22:28].hex(":"), "ip": socket.inet_ntoa(spa)})
print(json.dumps(out))
"""


def test_adverts_with_a_wrong_hmac_are_ignored_and_counted() -> None:
    with Lab(directors=2, floating=False) as lab, pair(lab) as (d1, d2):
        wait_for("director MASTER", lambda: all_in(d1, MASTER))
        # a forged advert with priority 254 from the client LAN, keyed wrongly
        forge = r"""
import socket, sys
from ulvs.vrrp import packet
src, dst = socket.inet_aton("10.77.0.10"), socket.inet_aton("224.0.0.18")
p = packet.encode(51, 254, 10, (socket.inet_aton("10.77.0.254"),), src, dst, key=b"wrong", seq=1)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
for _ in range(20):
    s.sendto(p, ("224.0.0.18", 0))
"""
        out = lab.run("client", [sys.executable, "-c", forge])
        assert out.returncode == 0, out.stderr
        wait_for("the forged adverts counted", lambda: any(
            i["dropped"].get("auth_invalid", 0) >= 20
            for i in d1.status()["vrrp"] if i["iname"] == "VI_CLIENT"))
        assert all_in(d1, MASTER) and all_in(d2, BACKUP)


def test_status_and_ulvsadm_daemon_show_vrrp_and_sync() -> None:
    with Lab(directors=2, floating=False) as lab, pair(lab) as (d1, d2):
        wait_for("director MASTER", lambda: all_in(d1, MASTER))
        wait_for("director2 BACKUP", lambda: all_in(d2, BACKUP))
        assert lab.udp_echo("client", VIP, "x")[0] is not None
        wait_for("the backup's sync lag", lambda: d2.status()["sync"]["lag_seconds"] is not None)
        out = d1.ulvsadm("-L", "--daemon")
        assert out.returncode == 0, out.stderr
        assert "master sync daemon (mcast=srv0, syncid=0" in out.stdout, out.stdout
        assert "VI_CLIENT" in out.stdout and "MASTER" in out.stdout
        out2 = d2.ulvsadm("-L", "--daemon").stdout
        assert "backup sync daemon (mcast=srv0, syncid=0" in out2 and "BACKUP" in out2, out2


# -- interoperability with keepalived (VRRP only) -----------------------------------------------------

KEEPALIVED_CONF = """
global_defs {{
    router_id lab-keepalived
    vrrp_version 3
}}
vrrp_instance VI_CLIENT {{
    state BACKUP
    interface cli0
    virtual_router_id 51
    priority {priority}
    advert_int {advert}
    virtual_ipaddress {{
        10.77.0.254/24
    }}
}}
"""


def ulvs_client_only(priority: int) -> str:
    return f"""
[[vrrp.instance]]
name = "VI_CLIENT"
interface = "cli0"
vrid = 51
priority = {priority}
advert_int = {ADVERT}
virtual_addresses = ["10.77.0.254/24"]
"""


@contextlib.contextmanager
def keepalived(lab: Lab, priority: int) -> Iterator[subprocess.Popen[bytes]]:
    tmp = Path(tempfile.mkdtemp(prefix="ulvs-keepalived-"))
    conf = tmp / "keepalived.conf"
    conf.write_text(KEEPALIVED_CONF.format(priority=priority, advert=ADVERT))
    proc = lab.popen("director2", ["keepalived", "--dont-fork", "--vrrp", "--log-console", "-f", str(conf),
                                   "-p", str(tmp / "k.pid"), "-r", str(tmp / "v.pid")],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def vrrp_counter(d: Director, name: str) -> int:
    return sum(int(i.get(name, 0)) for i in d.status()["vrrp"] or [])


def holds_gateway(lab: Lab, role: str) -> bool:
    out = lab.run(role, ["ip", "-4", "-o", "addr", "show", "dev", "cli0"])
    return "10.77.0.254/24" in str(out.stdout)


@pytest.mark.parametrize(("ulvs_prio", "ka_prio"), [(150, 100), (100, 150)])
def test_keepalived_peer_elects_one_master_and_fails_over_both_ways(ulvs_prio: int, ka_prio: int) -> None:
    with Lab(directors=2, floating=False) as lab, \
            director(lab, ulvs_client_only(ulvs_prio), config_name="ulvs.toml") as d, \
            keepalived(lab, ka_prio) as ka:
        ulvs_wins = ulvs_prio > ka_prio
        # settled: ulvs has heard 20 of keepalived's adverts (a backup) or keepalived has stayed
        # quiet for as long (a master hears nothing from a lower-priority backup)
        wait_for("one master", lambda: all_in(d, MASTER if ulvs_wins else BACKUP)
                 and holds_gateway(lab, "director2") != ulvs_wins
                 and (ulvs_wins or vrrp_counter(d, "adverts_received") >= 20))
        if ulvs_wins:
            sent = vrrp_counter(d, "adverts_sent")
            wait_for("20 more adverts", lambda: vrrp_counter(d, "adverts_sent") >= sent + 20)
        else:
            assert vrrp_counter(d, "become_master") == 0
        assert all_in(d, MASTER if ulvs_wins else BACKUP)
        assert holds_gateway(lab, "director") == ulvs_wins and holds_gateway(lab, "director2") != ulvs_wins
        if ulvs_wins:
            d.ulvsadm("-L")                         # still alive
            # ulvs resigns (SIGTERM: priority 0): keepalived takes over
            d.proc.terminate()
            wait_for("keepalived MASTER", lambda: holds_gateway(lab, "director2"))
        else:
            ka.terminate()                          # keepalived resigns: ulvs takes over
            ka.wait(timeout=10)
            wait_for("ulvs MASTER", lambda: all_in(d, MASTER) and holds_gateway(lab, "director"))
