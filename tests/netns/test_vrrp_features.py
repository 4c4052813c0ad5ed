"""The director pair's VRRP features beyond test_vrrp.py: unicast adverts, the graceful (priority 0)
handover, notify scripts, track_interface and FAULT, nopreempt and preempt_delay, and a pair
driven by a keepalived.conf (VRRP, a sync group, lvs_sync_daemon and a NAT virtual_server).

Outcomes are polled with bounded waits, never decided by sleeps; times are measured from capture
timestamps (CLOCK_MONOTONIC, shared by every namespace) or from the speaker's own log lines, and
printed.  The only timing assertions are protocol bounds (Master_Down_Interval, preempt_delay).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.netns.test_vrrp import ADVERT, BACKUP, MASTER, VIP, all_in, states, wait_for
from ulvs.lab import Lab
from ulvs.lab.director import Director, director

pytestmark = pytest.mark.netns
FAULT = 3
GROUP = "224.0.0.18"
CLIENT_ADDRS = ("10.77.0.1", "10.77.0.2")       # director, director2 on cli0
SERVER_ADDRS = ("10.77.2.1", "10.77.2.2")       # director, director2 on srv0
# name, interface, vrid, virtual address, the directors' own addresses on that interface
INSTANCES = {"VI_CLIENT": ("cli0", 51, "10.77.0.254/24", CLIENT_ADDRS),
             "VI_SERVER": ("srv0", 52, "10.77.2.254/24", SERVER_ADDRS)}
BOTH = ("VI_CLIENT", "VI_SERVER")


def skew_time(priority: int) -> float:
    return (256 - priority) * ADVERT / 256


def master_down_interval(priority: int) -> float:
    return 3 * ADVERT + skew_time(priority)


def vrrp_config(index: int, priority: int, *, instances: tuple[str, ...] = BOTH, group: bool = True,
                unicast: bool = False, preempt: bool = True, preempt_delay: float = 0.0,
                track: tuple[str, ...] = (), notify: tuple[Path, Path] | None = None) -> str:
    """A VRRP-only native configuration for director ``index`` (0: director, 1: director2).
    ``notify`` is (script, log file): every instance runs ``script NAME STATE LOG``."""
    out = []
    for name in instances:
        ifname, vrid, vaddr, own = INSTANCES[name]
        lines = [f'name = "{name}"', f'interface = "{ifname}"', f"vrid = {vrid}", f"priority = {priority}",
                 f"advert_int = {ADVERT}", f"preempt = {'true' if preempt else 'false'}",
                 f'virtual_addresses = ["{vaddr}"]']
        if preempt_delay:
            lines.append(f"preempt_delay = {preempt_delay}")
        if unicast:
            lines += [f'unicast_src_ip = "{own[index]}"', f'unicast_peers = ["{own[1 - index]}"]']
        if track:
            lines.append("track_interfaces = [" + ", ".join(f'"{t}"' for t in track) + "]")
        if notify is not None:
            script, logfile = notify
            lines += [f'notify_{state.lower()} = ["{script}", "{name}", "{state}", "{logfile}"]'
                      for state in ("MASTER", "BACKUP", "FAULT")]
        out.append("[[vrrp.instance]]\n" + "\n".join(lines) + "\n")
    if group and len(instances) > 1:
        members = ", ".join(f'"{n}"' for n in instances)
        out.append(f'[[vrrp.sync_group]]\nname = "PAIR"\nmembers = [{members}]\n')
    return "\n".join(out)


def counter(d: Director, name: str, iname: str = "VI_CLIENT") -> int:
    return sum(int(i.get(name, 0)) for i in d.status()["vrrp"] or [] if i["iname"] == iname)


def instance_status(d: Director, iname: str) -> dict[str, Any]:
    found = [i for i in d.status()["vrrp"] or [] if i["iname"] == iname]
    assert len(found) == 1, found
    return dict(found[0])


def addresses(lab: Lab, role: str) -> set[str]:
    """The IPv4 addresses (ADDRESS/PREFIX) on the director's cli0 and srv0."""
    out = lab.run(role, ["ip", "-4", "-o", "addr", "show"], check=True)
    rows = (line.split() for line in out.stdout.splitlines())
    return {w[3] for w in rows if w[1].split("@")[0] in ("cli0", "srv0")}


def vaddrs(instances: tuple[str, ...] = BOTH) -> set[str]:
    return {INSTANCES[n][2] for n in instances}


@contextlib.contextmanager
def started_pair(lab: Lab, cfg1: str, cfg2: str,
                 instances: tuple[str, ...] = BOTH) -> Iterator[tuple[Director, Director]]:
    """``director`` up and MASTER first, then ``director2`` joined and following it (a backup that
    has heard 10 adverts of every instance and never became master)."""
    with director(lab, cfg1, config_name="ulvs.toml") as d1:
        wait_for("director MASTER", lambda: all_in(d1, MASTER))
        with director(lab, cfg2, config_name="ulvs.toml", role="director2") as d2:
            wait_for("director2 follows", lambda: settled_backup(d2, instances, 10))
            assert all_in(d1, MASTER)
            yield d1, d2


def settled_backup(d: Director, instances: tuple[str, ...], adverts: int) -> bool:
    vrrp = {i["iname"]: i for i in d.status()["vrrp"] or []}
    return set(vrrp) == set(instances) and all(
        i["state"] == BACKUP and i["adverts_received"] >= adverts and i["become_master"] == 0
        for i in vrrp.values())


# -- a VRRP capture on the LAN bridges -------------------------------------------------------------

# Every frame a director sends enters a bridge once, on its own port (c-director, s-director2,
# ...); ETH_P_ALL because a bridge port's frames reach only the taps, not ETH_P_IP handlers.
# Prints "ready", captures until its stdin closes (or argv[1] seconds), then prints JSON.
VRRP_SNIFFER = r"""
import json, select, socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1]); out = []
while time.monotonic() < end:
    r, _, _ = select.select([s, sys.stdin], [], [], 0.2)
    if sys.stdin in r:
        break
    if s not in r:
        continue
    f, addr = s.recvfrom(2048)
    t = time.monotonic()
    if addr[2] == socket.PACKET_OUTGOING or not addr[0].startswith(("c-", "s-")):
        continue
    if len(f) < 14 + 28 or f[12:14] != b"\x08\x00" or f[14 + 9] != 112:
        continue
    ip = f[14:]; v = ip[(ip[0] & 15) * 4:]
    out.append({"t": t, "port": addr[0], "src": socket.inet_ntoa(ip[12:16]),
                "dst": socket.inet_ntoa(ip[16:20]), "ttl": ip[8], "vrid": v[1], "prio": v[2]})
print(json.dumps(out))
"""


@contextlib.contextmanager
def vrrp_capture(lab: Lab) -> Iterator[subprocess.Popen[bytes]]:
    """A capture running in the ``lan`` namespace; ``adverts(proc)`` ends it and returns it."""
    proc = lab.popen("lan", [sys.executable, "-c", VRRP_SNIFFER, "120"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def adverts(proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    out, _ = proc.communicate(timeout=30)
    data: list[dict[str, Any]] = json.loads(out)
    return data


# -- the speaker's log -----------------------------------------------------------------------------

TRANSITION = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ulvs-vrrp\[\d+\] INFO (\w+): "
                        r"(\w+) -> (\w+) \((\w+)\)$")


def transitions(d: Director, iname: str) -> list[tuple[float, str, str, str]]:
    """(wall-clock time, old, new, reason) of every logged transition of ``iname``."""
    out = []
    for line in d.log_text().splitlines():
        m = TRANSITION.match(line)
        if m and m[2] == iname:
            t = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((t, m[3], m[4], m[5]))
    return out


def in_order(seen: list[tuple[str, str]], wanted: list[tuple[str, str]]) -> bool:
    """``wanted`` is a subsequence of ``seen``."""
    it = iter(seen)
    return all(w in it for w in wanted)


# -- 1. unicast peers ---------------------------------------------------------------------------------

def test_unicast_peers_elect_one_master_and_fail_over() -> None:
    with Lab(directors=2, floating=False) as lab, vrrp_capture(lab) as cap:
        with started_pair(lab, vrrp_config(0, 150, unicast=True),
                          vrrp_config(1, 100, unicast=True)) as (d1, d2):
            assert vaddrs() <= addresses(lab, "director")
            assert not vaddrs() & addresses(lab, "director2")
            t_kill = time.monotonic()
            d1.kill()
            wait_for("director2 MASTER", lambda: all_in(d2, MASTER))
            sent = counter(d2, "adverts_sent")
            wait_for("director2 advertises", lambda: counter(d2, "adverts_sent") >= sent + 10)
            assert vaddrs() <= addresses(lab, "director2")
            seen = adverts(cap)
    assert seen, "no VRRP advert captured"
    assert not [a for a in seen if a["dst"] == GROUP], "adverts went to the multicast group"
    assert {a["ttl"] for a in seen} == {255}
    for name, (_, vrid, _, own) in INSTANCES.items():
        for i in (0, 1):
            mine = [a for a in seen if a["src"] == own[i]]
            assert mine, f"no advert of {name} from {own[i]}"
            assert {(a["dst"], a["vrid"]) for a in mine} == {(own[1 - i], vrid)}, mine
    # the director's adverts stop at the kill, director2's start after it
    assert max(a["t"] for a in seen if a["src"] == CLIENT_ADDRS[0]) < t_kill
    first = min(a["t"] for a in seen if a["src"] == CLIENT_ADDRS[1])
    print(f"unicast: {len(seen)} adverts captured; director2's first advert "
          f"{(first - t_kill) * 1000:.0f} ms after kill -9")


# -- 2. graceful handover ------------------------------------------------------------------------------

def test_sigterm_hands_over_after_skew_time_with_a_priority_zero_advert(record_property: Any) -> None:
    with Lab(directors=2, floating=False) as lab, vrrp_capture(lab) as cap:
        with started_pair(lab, vrrp_config(0, 150), vrrp_config(1, 100)) as (d1, d2):
            mdi = instance_status(d2, "VI_CLIENT")["master_down_interval"]
            assert mdi == pytest.approx(master_down_interval(100))     # 0.36 s: learned 0.1 s
            t_term = time.monotonic()
            d1.proc.terminate()
            assert d1.proc.wait(timeout=20) == 0
            wait_for("director2 MASTER", lambda: all_in(d2, MASTER))
            sent = counter(d2, "adverts_sent")
            wait_for("director2 advertises", lambda: counter(d2, "adverts_sent") >= sent + 3)
            assert not vaddrs() & addresses(lab, "director"), addresses(lab, "director")
            assert vaddrs() <= addresses(lab, "director2")
            assert counter(d2, "priority_zero_received") >= 1
            seen = adverts(cap)
    assert {(a["dst"], a["ttl"]) for a in seen} == {(GROUP, 255)}      # multicast without unicast_peers
    for name, (_, vrid, _, own) in INSTANCES.items():
        old = [a for a in seen if a["src"] == own[0] and a["vrid"] == vrid]
        zero = [a["t"] for a in old if a["prio"] == 0]
        assert len(zero) == 1 and zero[0] >= t_term, old[-5:]
        last = max(a["t"] for a in old if a["prio"] == 150 and a["t"] < zero[0])
        new = min(a["t"] for a in seen if a["src"] == own[1] and a["vrid"] == vrid and a["prio"] == 100)
        took, since_last = new - zero[0], new - last
        record_property(f"{name}_handover_s", round(took, 3))
        print(f"{name}: priority-0 advert -> new master's first advert {took * 1000:.0f} ms "
              f"(Skew_Time {skew_time(100) * 1000:.0f} ms, Master_Down_Interval {mdi * 1000:.0f} ms); "
              f"{since_last * 1000:.0f} ms after the old master's last regular advert")
        # the backup did not wait out Master_Down_Interval, neither from the priority-0 advert
        # nor from the last advert it heard: it waited Skew_Time
        assert 0 < took < mdi
        assert since_last < mdi


# -- 3. notify scripts ---------------------------------------------------------------------------------

NOTIFY_SCRIPT = '#!/bin/sh\nprintf "%s %s\\n" "$1" "$2" >> "$3"\n'


def test_notify_scripts_record_startup_failover_and_fault(tmp_path: Path) -> None:
    script = tmp_path / "notify.sh"
    script.write_text(NOTIFY_SCRIPT)
    script.chmod(0o755)
    logs = (tmp_path / "director.log", tmp_path / "director2.log")

    def lines(i: int) -> list[str]:
        return logs[i].read_text().splitlines() if logs[i].exists() else []

    def states_of(i: int, name: str) -> list[str]:
        return [line.split()[1] for line in lines(i) if line.startswith(name + " ")]

    def expect(what: str, want1: list[str], want2: list[str]) -> None:
        """Both instances (a sync group) of each director notified in this order."""
        def done() -> bool:
            return all(states_of(0, n) == want1 and states_of(1, n) == want2 for n in BOTH)
        with contextlib.suppress(AssertionError):
            wait_for(what, done, timeout=10)
        assert {n: (states_of(0, n), states_of(1, n)) for n in BOTH} == dict.fromkeys(BOTH, (want1, want2))

    with Lab(directors=2, floating=False) as lab, \
            started_pair(lab, vrrp_config(0, 150, notify=(script, logs[0])),
                         vrrp_config(1, 100, notify=(script, logs[1]))) as (d1, d2):
        expect("the start-up notifications", ["BACKUP", "MASTER"], ["BACKUP"])
        # FAULT (VI_CLIENT's own interface goes down; the group follows) and the failover
        lab.run("director", ["ip", "link", "set", "cli0", "down"], check=True)
        wait_for("director FAULT", lambda: all_in(d1, FAULT))
        wait_for("director2 MASTER", lambda: all_in(d2, MASTER))
        expect("the fault and failover notifications", ["BACKUP", "MASTER", "FAULT"], ["BACKUP", "MASTER"])
        # back up: BACKUP, then the higher priority preempts
        lab.run("director", ["ip", "link", "set", "cli0", "up"], check=True)
        wait_for("director MASTER again", lambda: all_in(d1, MASTER))
        wait_for("director2 BACKUP again", lambda: all_in(d2, BACKUP))
        expect("the recovery notifications", ["BACKUP", "MASTER", "FAULT", "BACKUP", "MASTER"],
               ["BACKUP", "MASTER", "BACKUP"])
    print("notify director:", lines(0), "director2:", lines(1))


# -- 4. track_interface ------------------------------------------------------------------------------

@pytest.mark.parametrize("instances", [("VI_CLIENT",), BOTH], ids=["alone", "sync-group"])
def test_track_interface_down_faults_and_up_recovers_then_preempts(instances: tuple[str, ...]) -> None:
    cfg1, cfg2 = (vrrp_config(i, prio, instances=instances, track=("srv0",))
                  for i, prio in ((0, 150), (1, 100)))
    with Lab(directors=2, floating=False) as lab, started_pair(lab, cfg1, cfg2, instances) as (d1, d2):
        t_down = time.monotonic()
        lab.run("director", ["ip", "link", "set", "srv0", "down"], check=True)
        wait_for("director FAULT", lambda: states(d1) == dict.fromkeys(instances, FAULT))
        wait_for("director2 MASTER", lambda: states(d2) == dict.fromkeys(instances, MASTER))
        took = time.monotonic() - t_down
        assert not vaddrs(instances) & addresses(lab, "director")
        assert vaddrs(instances) <= addresses(lab, "director2")
        assert "VI_CLIENT: srv0 down: FAULT" in d1.log_text()
        lab.run("director", ["ip", "link", "set", "srv0", "up"], check=True)
        wait_for("director MASTER again", lambda: all_in(d1, MASTER))
        wait_for("director2 BACKUP again", lambda: all_in(d2, BACKUP))
        assert vaddrs(instances) <= addresses(lab, "director")
        assert not vaddrs(instances) & addresses(lab, "director2")
        for name in instances:
            seen = [(old, new) for _, old, new, _ in transitions(d1, name)]
            assert in_order(seen, [("BACKUP", "MASTER"), ("MASTER", "FAULT"), ("FAULT", "BACKUP"),
                                   ("BACKUP", "MASTER")]), seen
            assert seen[-1] == ("BACKUP", "MASTER"), seen
            assert counter(d1, "become_master", name) == 2 and counter(d2, "become_master", name) == 1
    print(f"track_interface ({'+'.join(instances)}): srv0 down -> director2 MASTER seen after "
          f"{took * 1000:.0f} ms")


# -- 5. nopreempt and preempt_delay --------------------------------------------------------------------

def test_nopreempt_higher_priority_joins_as_backup_and_stays() -> None:
    with Lab(directors=2, floating=False) as lab, \
            director(lab, vrrp_config(1, 100), config_name="ulvs.toml", role="director2") as d2:
        wait_for("director2 MASTER alone", lambda: all_in(d2, MASTER))
        with director(lab, vrrp_config(0, 150, preempt=False), config_name="ulvs.toml") as d1:
            # 20 adverts heard is 2 s: over five times its Master_Down_Interval (0.34 s)
            wait_for("director follows 20 adverts", lambda: all(
                counter(d1, "adverts_received", n) >= 20 for n in BOTH))
            assert all_in(d1, BACKUP) and all_in(d2, MASTER)
            for name in BOTH:
                assert counter(d1, "become_master", name) == 0
                assert counter(d2, "become_master", name) == 1 and counter(d2, "release_master", name) == 0
            assert vaddrs() <= addresses(lab, "director2")
            assert not vaddrs() & addresses(lab, "director")


def test_preempt_delay_holds_the_takeover_for_that_long(record_property: Any) -> None:
    delay = 1.0
    with Lab(directors=2, floating=False) as lab, \
            director(lab, vrrp_config(1, 100), config_name="ulvs.toml", role="director2") as d2:
        wait_for("director2 MASTER alone", lambda: all_in(d2, MASTER))
        with director(lab, vrrp_config(0, 150, preempt_delay=delay), config_name="ulvs.toml") as d1:
            wait_for("director preempts", lambda: all_in(d1, MASTER), timeout=delay + 20)
            wait_for("director2 steps back", lambda: all_in(d2, BACKUP))
            for name in BOTH:
                seen = transitions(d1, name)
                start = [t for t, old, new, _ in seen if (old, new) == ("INIT", "BACKUP")]
                master = [t for t, old, new, _ in seen if (old, new) == ("BACKUP", "MASTER")]
                assert len(start) == 1 and len(master) == 1, seen
                took = master[0] - start[0]
                record_property(f"{name}_preempt_after_s", round(took, 3))
                print(f"{name}: start-up -> MASTER after {took * 1000:.0f} ms "
                      f"(preempt_delay {delay * 1000:.0f} ms, Master_Down_Interval "
                      f"{master_down_interval(150) * 1000:.0f} ms)")
                assert took >= delay
                # generous: the delay, then at most a Master_Down_Interval, and slack for a busy host
                assert took < delay + master_down_interval(150) + 2.0
                assert counter(d1, "preempt_delayed", name) > 0


# -- 6. a keepalived.conf pair -------------------------------------------------------------------------

KEEPALIVED_PAIR = """
global_defs {{
    router_id lab-{role}
    vrrp_version 3
    lvs_sync_daemon srv0 VI_CLIENT
}}
vrrp_sync_group PAIR {{
    group {{
        VI_CLIENT
        VI_SERVER
    }}
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
vrrp_instance VI_SERVER {{
    state BACKUP
    interface srv0
    virtual_router_id 52
    priority {priority}
    advert_int {advert}
    virtual_ipaddress {{
        10.77.2.254/24
    }}
}}
virtual_server 10.77.1.100 5353 {{
    lb_algo rr
    lb_kind NAT
    protocol UDP
    real_server 10.77.2.11 5353 {{
        weight 1
    }}
    real_server 10.77.2.12 5353 {{
        weight 1
    }}
    real_server 10.77.2.13 5353 {{
        weight 1
    }}
}}
"""


def keepalived_director(lab: Lab, text: str, role: str) -> contextlib.AbstractContextManager[Director]:
    """``ulvs run --keepalived-conf FILE`` in ``role``'s namespace."""
    return director(lab, text, config_name="keepalived.conf", role=role, config_flag="--keepalived-conf")


def test_keepalived_conf_drives_a_pair_with_connection_sync() -> None:
    def conf(role: str, priority: int) -> str:
        return KEEPALIVED_PAIR.format(role=role, priority=priority, advert=ADVERT)

    with Lab(directors=2, floating=False) as lab, \
            keepalived_director(lab, conf("director", 150), "director") as d1:
        wait_for("director MASTER", lambda: all_in(d1, MASTER))
        with keepalived_director(lab, conf("director2", 100), "director2") as d2:
            wait_for("director2 follows", lambda: settled_backup(d2, BOTH, 10))
            assert all_in(d1, MASTER)
            assert vaddrs() <= addresses(lab, "director") and not vaddrs() & addresses(lab, "director2")
            assert "UDP  10.77.1.100:5353 rr" in d1.listing()
            replies = lab.udp_echo("client", VIP, "through-the-vip", count=6)
            assert all(r is not None for r in replies), replies
            wait_for("records applied on the backup", lambda: d2.status()["sync"]["records_applied"] > 0)
            s1, s2 = d1.status()["sync"], d2.status()["sync"]
            for s in (s1, s2):
                # lvs_sync_daemon srv0 VI_CLIENT: on srv0, id = VI_CLIENT's VRID (keepalived's default)
                assert s["interface"] == "srv0" and s["syncid"] == 51 and s["authenticated"] is False, s
                assert s["instance"] == "VI_CLIENT", s
            assert s1["role"] == "master" and s1["records_sent"] > 0, s1
            assert s2["role"] == "backup" and s2["records_applied"] > 0, s2
            for d in (d1, d2):
                assert "connection sync on srv0 is not authenticated" in d.log_text()
    print(f"keepalived.conf pair: master sent {s1['records_sent']} records, "
          f"backup applied {s2['records_applied']}")
