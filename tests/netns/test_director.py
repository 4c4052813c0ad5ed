"""End to end: the real daemon between real clients and real servers, in network namespaces.

Every test builds the lab, starts ``ulvs run`` in the director namespace with a rules file,
drives traffic from the client namespace, and stops the daemon by PID. Both dataplane backends
run wherever the forwarding method applies (direct routing needs MAC rewriting, which only the
afpacket backend can do).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter

import pytest

from ulvs.lab import Lab
from ulvs.lab.director import PY, director, nat_rules
from ulvs.lab.pattern import pattern_digest

pytestmark = pytest.mark.netns
BACKENDS = ["afpacket", "tap"]


def servers_of(results: list) -> list[str | None]:  # type: ignore[type-arg]
    assert all(r.error is None and r.status == 200 for r in results), results
    return [r.server for r in results]


@pytest.mark.parametrize("backend", BACKENDS)
def test_nat_rr_http_exact_distribution(backend: str) -> None:
    with Lab() as lab, director(lab, nat_rules("rr"), backend) as d:
        got = servers_of(lab.http_get("client", lab.vip, count=9))
        assert got == ["rs1", "rs2", "rs3"] * 3
        listing = d.listing()
        assert "TCP  10.77.1.100:80 rr" in listing
        for rs in ("10.77.2.11:80", "10.77.2.12:80", "10.77.2.13:80"):
            line = next(x for x in listing.splitlines() if rs in x)
            active, inactive = map(int, line.split()[4:6])
            assert active + inactive == 3, listing   # each served three connections


@pytest.mark.parametrize("backend", BACKENDS)
def test_nat_wrr_http_follows_weights(backend: str) -> None:
    with Lab() as lab, director(lab, nat_rules("wrr", weights=(3, 2, 1), udp=False), backend):
        got = servers_of(lab.http_get("client", lab.vip, count=12))
        # IPVS wrr, weights 3,2,1, dests added one by one (as ipvsadm does): the first pass runs
        # at cw = 1 (A B C), then the weighted cycle A A B A B C repeats.
        cycle = ["rs1", "rs1", "rs2", "rs1", "rs2", "rs3"]
        assert got == ["rs1", "rs2", "rs3"] + cycle + cycle[:3]
        assert [got.count(f"rs{i}") for i in (1, 2, 3)] == [6, 4, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_udp_echo_through_nat_answers_from_the_vip(backend: str) -> None:
    with Lab() as lab, director(lab, nat_rules("rr"), backend):
        # the client's socket is connected to VIP:5353, so only replies from VIP:5353 arrive
        replies = lab.udp_echo("client", lab.vip, "hello", count=6)
        assert replies == ["rs1:hello", "rs2:hello", "rs3:hello"] * 2


def test_direct_routing_http() -> None:
    with Lab(dr=True) as lab, director(lab, nat_rules("rr", method="-g", udp=False)) as d:
        got = servers_of(lab.http_get("client", lab.vip, count=6))
        assert got == ["rs1", "rs2", "rs3"] * 2
        assert "Route" in d.listing()


COUNT_REPLIES = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
s.settimeout(0.2)
n = int(sys.argv[3])
for i in range(n):
    s.sendto(b"d%d" % i, (sys.argv[2], 5353))
    time.sleep(0.005)
replies, end = [], time.monotonic() + 2.0
while time.monotonic() < end:
    try:
        replies.append(s.recv(2048).decode())
    except TimeoutError:
        pass
print(len(replies), len(set(replies)))
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_direct_routing_forwards_each_datagram_once(workers: int) -> None:
    # With fanout (two workers) a worker's own transmissions used to come back to the group as
    # received frames; in DR they still go to the VIP, so each was forwarded again and again.
    with Lab(dr=True) as lab, director(lab, nat_rules("rr", method="-g"),
                                       extra=("--workers", str(workers))) as d:
        out = lab.python("client", COUNT_REPLIES, lab.client_addrs[0], lab.vip, "50", check=True)
        assert out.stdout.split() == ["50", "50"], out.stdout
        # the kernel keeps them from the group (the reader's own check is for kernels without
        # PACKET_FANOUT_FLAG_IGNORE_OUTGOING, which say so in the log)
        outgoing = d.status()["daemon"]["ports"][lab.director_if_server]["rx_outgoing"]
        assert outgoing == 0 or "see outgoing frames" in d.log_text()


def test_direct_routing_is_refused_by_the_tap_backend() -> None:
    with Lab() as lab, director(lab, nat_rules("rr", udp=False), "tap") as d:
        out = d.ulvsadm("-a", "-t", "10.77.1.100:80", "-r", "10.77.2.20:80", "-g")
        assert out.returncode != 0
        assert "not available with this dataplane" in out.stderr


@pytest.mark.parametrize(("backend", "extra"), [("afpacket", ()), ("tap", ()), ("tap", ("--rx-pace", "300"))],
                         ids=["afpacket", "tap", "tap-paced"])
def test_200_mb_download_through_nat(backend: str, extra: tuple[str, ...]) -> None:
    size = 200 * 1024 * 1024
    with Lab() as lab, director(lab, nat_rules("rr", udp=False), backend, extra=extra) as d:
        (r,) = lab.http_get("client", lab.vip, f"/bytes/{size}", timeout=300)
        assert r.error is None and r.status == 200
        assert r.length == size
        assert r.sha256 == pattern_digest(size)
        if extra:   # the TAP wakes ulvs for every frame: a download is read on the timer
            (tap,) = d.status()["daemon"]["ports"].values()
            assert tap["rx_ticks"] > 0 and tap["rx_wakeups"] > 0, tap


MALFORMED = r"""
import os, sys
from scapy.all import IP, TCP, UDP, Ether, Raw, fragment, sendp
dmac, iface, vip = sys.argv[1], sys.argv[2], sys.argv[3]
syn = bytes(Ether(dst=dmac) / IP(src="10.77.0.10", dst=vip) / TCP(sport=40000, dport=80, flags="S"))
frames = [syn[:n] for n in (6, 13, 20, 33, 40, 53)]                     # truncated
for pos, value in ((14, b"\x43"), (14, b"\x65"), (16, b"\x27\x0f"), (16, b"\x00\x0a"),
                   (46, b"\x20")):                                       # bad IHL, version,
    b = bytearray(syn); b[pos:pos + len(value)] = value; frames.append(bytes(b))   # lengths, offset
big = Ether(dst=dmac) / IP(src="10.77.0.10", dst=vip) / UDP(sport=5000, dport=5353) / Raw(b"x" * 3000)
frames += [bytes(f) for f in fragment(big, fragsize=1000)]               # fragments
frames += [os.urandom(n) for n in (1, 13, 60, 200, 1500)]                # garbage
frames += [bytes.fromhex(dmac.replace(":", "")) + os.urandom(n) for n in (8, 50, 500)]
for f in frames:
    sendp(Raw(f), iface=iface, verbose=False)
print(len(frames))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_malformed_frames_leave_the_service_working(backend: str) -> None:
    with Lab() as lab, director(lab, nat_rules("rr"), backend) as d:
        dmac = lab.mac("director", lab.director_if_client)
        out = lab.python("client", MALFORMED, dmac, lab.client_if, lab.vip)
        assert out.returncode == 0, out.stderr
        assert int(out.stdout) > 20
        assert d.proc.poll() is None, d.log_text()
        assert servers_of(lab.http_get("client", lab.vip, count=3)) == ["rs1", "rs2", "rs3"]
        assert lab.udp_echo("client", lab.vip, "still", count=3) == ["rs1:still", "rs2:still", "rs3:still"]


NO_RST = r"""
import sys, time
from scapy.all import IP, TCP, AsyncSniffer, send
vip, iface = sys.argv[1], sys.argv[2]
sniff = AsyncSniffer(iface=iface, filter=f"tcp and src host {vip}")
sniff.start(); time.sleep(0.5)
for sport, flags in ((41000, "A"), (41001, "FA"), (41002, "PA"), (41003, "R")):
    send(IP(src="10.77.0.10", dst=vip) / TCP(sport=sport, dport=80, flags=flags, seq=1, ack=1), verbose=False)
time.sleep(1.5)
got = sniff.stop()
print(sum(1 for p in got if p[TCP].flags & 0x04))
"""


@pytest.mark.parametrize("local_vip", [False, True], ids=["vip-not-local", "vip-local"])
def test_no_rst_from_the_directors_kernel_for_a_served_port(local_vip: bool) -> None:
    with Lab() as lab:
        if local_vip:
            # with the VIP local, the director's kernel would answer these with RSTs
            lab.run("director", ["ip", "addr", "add", f"{lab.vip}/32", "dev", "lo"], check=True)
        with director(lab, nat_rules("rr", udp=False)) as d:
            out = lab.python("client", NO_RST, lab.vip, lab.client_if)
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == "0"
            # and the service still works, with the kernel out of the way
            assert servers_of(lab.http_get("client", lab.vip, count=3)) == ["rs1", "rs2", "rs3"]
            assert d.proc.poll() is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_shutdown_leaves_no_kernel_state(backend: str) -> None:
    with Lab(offloads_off=True) as lab:   # GRO off before: ulvs turns it on, then back off
        def state() -> tuple[str, str, str, str]:
            return (lab.run("director", ["nft", "list", "ruleset"]).stdout,
                    lab.run("director", ["ip", "rule"]).stdout,
                    lab.run("director", ["ip", "-br", "link"]).stdout,
                    lab.run("director", ["ip", "route", "show", "table", "all"]).stdout)

        before = state()
        ifs = (lab.director_if_client, lab.director_if_server)
        with director(lab, nat_rules("rr"), backend) as d:
            during = state()
            gro_during = [lab.offloads("director", i)["gro"] for i in ifs]
            assert servers_of(lab.http_get("client", lab.vip, count=3)) == ["rs1", "rs2", "rs3"]
            pid = d.proc.pid
        if backend == "afpacket":
            assert f"ulvs_{pid}" in during[0]
            assert gro_during == [True, True]
            assert [lab.offloads("director", i)["gro"] for i in ifs] == [False, False]
        else:
            assert f"ulvs{pid % 100000}" in during[2] and "lookup" in during[1]
        assert state() == before


def test_sighup_reloads_by_diff_keeping_connections() -> None:
    size = 60 * 1024 * 1024
    with Lab() as lab, director(lab, nat_rules("rr", udp=False)) as d:
        rules = d.log.parent / "rules"
        # a download in flight while the configuration changes
        dl = lab.popen("client", [PY, "-m", "ulvs.lab.traffic", "http", lab.vip, "--path", f"/bytes/{size}",
                                  "--timeout", "120"], stdout=subprocess.PIPE)
        time.sleep(0.3)
        rules.write_text(nat_rules("rr", weights=(1, 1, 4), udp=False))
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded" not in d.log_text():
            assert time.monotonic() < deadline, d.log_text()
            time.sleep(0.05)
        out, _ = dl.communicate(timeout=180)
        (row,) = json.loads(out)
        assert row["error"] is None and row["sha256"] == pattern_digest(size)
        line = next(x for x in d.listing().splitlines() if "10.77.2.13:80" in x)
        assert line.split()[3] == "4"
        assert "1 change(s)" in d.log_text()


def _toml_web(weights: tuple[int, int, int]) -> str:
    dests = "".join(f'[[service.dest]]\naddress = "10.77.2.1{i + 1}"\nweight = {w}\n'
                    for i, w in enumerate(weights))
    return ('[timeouts]\nudp = 60\n\n[[service]]\nname = "web"\nprotocol = "tcp"\nvip = "10.77.1.100"\n'
            f'port = 80\nscheduler = "rr"\nforwarding = "masq"\n{dests}')


def test_native_toml_config_serves_and_reloads_by_diff() -> None:
    with Lab() as lab, director(lab, _toml_web((1, 1, 1))) as d:
        assert servers_of(lab.http_get("client", lab.vip, count=3)) == ["rs1", "rs2", "rs3"]
        assert d.ulvsadm("-L", "--timeout").stdout == "Timeout (tcp tcpfin udp): 900 120 60\n"
        (d.log.parent / "rules").write_text(_toml_web((1, 1, 4)))
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded" not in d.log_text():
            assert time.monotonic() < deadline, d.log_text()
            time.sleep(0.05)
        assert "1 change(s)" in d.log_text()
        line = next(x for x in d.listing().splitlines() if "10.77.2.13:80" in x)
        assert line.split()[3] == "4"
        # a broken configuration is refused with its file:line, and the old one keeps serving
        (d.log.parent / "rules").write_text(_toml_web((1, 1, 4)).replace("weight = 4", "weight = -4"))
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "configuration unchanged" not in d.log_text():
            assert time.monotonic() < deadline, d.log_text()
            time.sleep(0.05)
        assert "rules:19: service[0].dest[2].weight: -4 is out of range (allowed: 0..65535)" in d.log_text()
        assert servers_of(lab.http_get("client", lab.vip, count=3)) == ["rs1", "rs2", "rs3"]


def test_interface_that_disappears_is_detached_and_the_rest_keep_serving() -> None:
    with Lab() as lab:
        lab.run("director", ["ip", "link", "add", "dum0", "type", "veth", "peer", "name", "dum1"], check=True)
        lab.run("director", ["ip", "link", "set", "dum0", "up"], check=True)
        with director(lab, nat_rules("rr", udp=False), extra=("-i", "dum0")) as d:
            lab.run("director", ["ip", "link", "del", "dum0"], check=True)
            deadline = time.monotonic() + 10
            while "dum0 disappeared" not in d.log_text():
                assert time.monotonic() < deadline, d.log_text()
                time.sleep(0.1)
            assert servers_of(lab.http_get("client", lab.vip, count=3)) == ["rs1", "rs2", "rs3"]


def test_bad_configuration_exits_2_naming_the_line() -> None:
    with Lab() as lab:
        lab.run("director", ["sh", "-c", "printf -- '-A -t 10.77.1.100:80 -s rr\\n-a -t 10.77.1.100:80 "
                             "-r 10.77.2.11:80 -m -w 99999\\n' > /tmp/ulvs-bad.rules"], check=True)
        out = lab.run("director", [PY, "-m", "ulvs", "run", "--config", "/tmp/ulvs-bad.rules",
                                   "--control-socket", "/tmp/ulvs-bad.sock"])
        assert out.returncode == 2
        assert "/tmp/ulvs-bad.rules:2: illegal weight specified" in out.stderr   # file:line
        assert "ulvs_" not in lab.run("director", ["nft", "list", "tables"]).stdout   # nothing applied
        out = lab.run("director", [PY, "-m", "ulvs", "run", "--backend", "nope"])
        assert out.returncode == 2


def test_bad_toml_configuration_exits_2_naming_line_and_key() -> None:
    with Lab() as lab:
        toml = ('[[service]]\nprotocol = \"tcp\"\nvip = \"10.77.1.100\"\nport = 80\nscheduler = \"rr\"\n'
                '[[service.dest]]\naddress = \"10.77.2.11\"\nforwarding = \"masq\"\nweight = 99999\n')
        lab.run("director", ["sh", "-c", f"printf -- '{toml}' > /tmp/ulvs-bad.toml"], check=True)
        out = lab.run("director", [PY, "-m", "ulvs", "run", "--config", "/tmp/ulvs-bad.toml",
                                   "--control-socket", "/tmp/ulvs-bad.sock"])
        assert out.returncode == 2
        assert "/tmp/ulvs-bad.toml:9: service[0].dest[0].weight: 99999 is out of range (allowed: 0..65535)" \
            in out.stderr
        assert "ulvs_" not in lab.run("director", ["nft", "list", "tables"]).stdout   # nothing applied



@pytest.mark.parametrize("backend", BACKENDS)
def test_services_changed_at_runtime_with_ulvsadm(backend: str) -> None:
    with Lab() as lab, director(lab, nat_rules("rr", udp=False), backend) as d:
        rules = "".join(f"-a -u 10.77.1.100:5353 -r 10.77.2.1{i}:5353 -m\n" for i in (1, 2, 3))
        out = d.ulvsadm("-R", stdin="-A -u 10.77.1.100:5353 -s rr\n" + rules)
        assert out.returncode == 0, out.stderr
        assert lab.udp_echo("client", lab.vip, "new", count=3) == ["rs1:new", "rs2:new", "rs3:new"]
        saved = d.ulvsadm("-S", "-n")
        assert saved.returncode == 0 and "-A -u 10.77.1.100:5353 -s rr" in saved.stdout
        assert d.ulvsadm("-D", "-u", "10.77.1.100:5353").returncode == 0
        assert lab.udp_echo("client", lab.vip, "gone", count=1, timeout=1.0) == [None]
        assert servers_of(lab.http_get("client", lab.vip, count=3)) == ["rs1", "rs2", "rs3"]


def test_vip_on_the_client_lan_is_answered_by_arp() -> None:
    with Lab() as lab, director(lab, nat_rules("rr", udp=False)):
        # make the VIP on-link for the client: it must ARP for it, and ulvs answers
        lab.run("client", ["ip", "route", "add", f"{lab.vip}/32", "dev", lab.client_if], check=True)
        assert servers_of(lab.http_get("client", lab.vip, count=3)) == ["rs1", "rs2", "rs3"]
        neigh = lab.run("client", ["ip", "neigh", "show", lab.vip]).stdout
        assert lab.mac("director", lab.director_if_client) in neigh


def test_two_workers_keep_both_directions_together_and_merge_listings() -> None:
    with Lab(clients=8) as lab:
        before = lab.run("director", ["nft", "list", "ruleset"]).stdout
        with director(lab, nat_rules("rr"), extra=("--workers", "2")) as d:
            m = re.search(r"2 dataplane workers \(pids (\d+), (\d+)\)", d.log_text())
            assert m, d.log_text()
            pids = [int(p) for p in m.groups()]
            assert all(os.path.exists(f"/proc/{p}") for p in pids)
            got = servers_of(lab.http_get("client", lab.vip, count=24, src=list(lab.client_addrs)))
            # each worker runs its own rr cursor: the total stays even
            assert Counter(got) == {"rs1": 8, "rs2": 8, "rs3": 8}
            replies = lab.udp_echo("client", lab.vip, "w", count=6)
            assert all(r is not None and r.endswith(":w") for r in replies), replies
            listing = d.listing()
            rows = [line.split() for line in listing.splitlines() if ":80 " in line and "->" in line]
            assert sum(int(r[4]) + int(r[5]) for r in rows) == 24
            conns = [line for line in d.listing("-c").splitlines() if line.startswith("TCP")]
            assert len(conns) == 24
            assert len({line.split()[3].split(":")[0] for line in conns}) == 8   # all 8 clients
        assert lab.run("director", ["nft", "list", "ruleset"]).stdout == before
        assert not any(os.path.exists(f"/proc/{p}") for p in pids)   # workers stopped with the daemon


def test_workers_leave_stopping_to_the_main_process() -> None:
    # systemctl stop (KillMode=control-group) and ^C signal every process of the service at
    # once, the workers possibly first: they must go on until the main process stops them, and
    # it must then exit 0 (a worker that stopped on its own signal made it exit 1).
    with Lab(clients=8) as lab:
        with director(lab, nat_rules("rr"), extra=("--workers", "2")) as d:
            m = re.search(r"2 dataplane workers \(pids (\d+), (\d+)\)", d.log_text())
            assert m, d.log_text()
            pids = [int(p) for p in m.groups()]
            for pid in pids:
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGINT)
            got = servers_of(lab.http_get("client", lab.vip, count=24, src=list(lab.client_addrs)))
            assert Counter(got) == {"rs1": 8, "rs2": 8, "rs3": 8}
            assert all(os.path.exists(f"/proc/{p}") for p in pids)
            os.killpg(d.proc.pid, signal.SIGTERM)
            assert d.proc.wait(timeout=30) == 0, d.log_text()
            assert "exited with" not in d.log_text(), d.log_text()
        assert not any(os.path.exists(f"/proc/{p}") for p in pids)


def test_download_with_segmenting_endpoints_and_gro_at_the_director() -> None:
    # endpoints send MTU-sized segments with full checksums; the director's GRO (switched on by
    # ulvs) coalesces them into CHECKSUM_PARTIAL super-packets that ulvs rewrites and the kernel
    # segments again on the way out
    size = 50 * 1024 * 1024
    with Lab(offloads_off=True) as lab, director(lab, nat_rules("rr", udp=False)):
        (r,) = lab.http_get("client", lab.vip, f"/bytes/{size}", timeout=300)
        assert r.error is None and r.length == size and r.sha256 == pattern_digest(size)
