"""The afpacket receive layouts end to end: ``auto`` (the default, which every other netns test
runs too: the V3 ring under load, a quick socket at light load), the TPACKET_V3 ring alone
(``--rx-ring v3``) and the experimental ``lanes`` (``--rx-ring lanes``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ulvs.lab import Lab
from ulvs.lab.director import director, nat_rules, stop_by_pid
from ulvs.lab.pattern import pattern_digest
from ulvs.packet import builder

PKTGEN = Path(__file__).resolve().parents[2] / "bench" / "tools" / "pktgen.c"


def servers_of(results: list) -> list[str | None]:  # type: ignore[type-arg]
    return [r.server for r in results]

pytestmark = pytest.mark.netns


def test_v3_ring_serves_nat_in_order() -> None:
    size = 50 * 1024 * 1024
    with Lab() as lab, director(lab, nat_rules("rr", udp=False), extra=("--rx-ring", "v3")) as d:
        got = [r.server for r in lab.http_get("client", lab.vip, count=6)]
        assert got == ["rs1", "rs2", "rs3"] * 2
        (r,) = lab.http_get("client", lab.vip, f"/bytes/{size}", timeout=120)
        assert r.error is None and r.status == 200 and r.sha256 == pattern_digest(size)
        assert "rx ring v3" in d.log_text()
        assert "rx_quick" not in d.status()["daemon"]["ports"][lab.director_if_client]


def test_auto_is_the_default_and_takes_light_traffic_on_the_quick_socket() -> None:
    size = 50 * 1024 * 1024
    with Lab() as lab, director(lab, nat_rules("rr", udp=False)) as d:
        assert "rx ring auto" in d.log_text()
        first = lab.http_get("client", lab.vip, count=3)
        time.sleep(0.1)           # a quiet spell: more than one rate window (20 ms)
        got = servers_of(first + lab.http_get("client", lab.vip, count=30, keepalive=True))
        assert got[:3] == ["rs1", "rs2", "rs3"] and len(set(got[3:])) == 1, got
        ports = d.status()["daemon"]["ports"]
        for ifname in (lab.director_if_client, lab.director_if_server):
            c = ports[ifname]
            # both directions of the keep-alive connection came one frame at a time
            assert c["rx_to_quick"] >= 1 and c["rx_quick"] >= 30, (ifname, c)
            assert c["rx_ring_drops"] == 0 and c["rx_lane_refused"] == 0, (ifname, c)
        # a bulk download, GSO super-packets included, whichever lanes it takes, intact
        (r,) = lab.http_get("client", lab.vip, f"/bytes/{size}", timeout=120)
        assert r.error is None and r.status == 200 and r.sha256 == pattern_digest(size)


def test_two_auto_workers_steer_the_quick_sockets_too() -> None:
    """With --workers 2 both workers' rings and quick sockets join one fanout group per
    interface, and each worker moves its own pair (its bit of the group's program): at light
    load every new connection, whichever worker owns it, is served through the quick sockets.
    (The program itself is tests/unit/test_fanout_program.py.)"""
    with Lab(clients=4) as lab, director(lab, nat_rules("rr", udp=False),
                                           extra=("--workers", "2", "--rx-ring", "auto")) as d:
        lab.http_get("client", lab.vip, count=2)
        time.sleep(0.1)                            # quiet: both workers' ports to the quick socket
        results = lab.http_get("client", lab.vip, count=24, src=list(lab.client_addrs))
        assert all(r.error is None and r.status == 200 for r in results), results
        ports = d.status()["daemon"]["ports"]
        for ifname in (lab.director_if_client, lab.director_if_server):
            c = ports[ifname]
            assert c["rx_quick"] >= 24 and c["rx_to_quick"] >= 1 and c["rx_lane_refused"] == 0, c


@pytest.mark.parametrize("pace", [None, "300"])
def test_lanes_serve_keepalive_and_a_bulk_download(pace: str | None) -> None:
    size = 50 * 1024 * 1024
    extra = ("--rx-ring", "lanes", *(("--rx-pace", pace) if pace else ()))
    with Lab() as lab, director(lab, nat_rules("rr", udp=False), extra=extra) as d:
        results = lab.http_get("client", lab.vip, count=30, keepalive=True)
        assert all(r.error is None and r.status == 200 for r in results), results
        assert len({r.server for r in results}) == 1          # one connection, one dest
        (r,) = lab.http_get("client", lab.vip, f"/bytes/{size}", timeout=120)   # GSO: the big lane
        assert r.error is None and r.status == 200 and r.sha256 == pattern_digest(size)
        assert "rx ring lanes" in d.log_text()
        counters = d.status()["daemon"]["ports"][lab.director_if_client]
        if pace:
            # the download's ACKs arrive far faster than every 300 us: read on the timer
            assert counters["rx_ticks"] > 0 and counters["rx_wakeups"] > 0, counters
        else:
            assert "rx_ticks" not in counters, counters


def test_a_dead_dataplane_worker_stops_the_director_with_an_error() -> None:
    import json
    import os
    import signal
    import subprocess

    from ulvs.lab.director import PY, DirectorError

    with Lab() as lab:
        try:
            with director(lab, nat_rules("rr", udp=False),
                                           extra=("--workers", "2", "--rx-ring", "auto")) as d:
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


@pytest.mark.parametrize(("rx_ring", "workers", "pace"),
                         [("auto", 1, "0"), ("auto", 2, "0"), ("v3", 2, "0"), ("lanes", 1, "0"),
                          ("lanes", 2, "0"), ("lanes", 1, "300")])
def test_a_flood_starves_neither_the_control_socket_nor_later_traffic(
        rx_ring: str, workers: int, pace: str, tmp_path: Path) -> None:
    # Seen before: under a flood above capacity the dataplane loop never went back to the event
    # loop (ulvsadm timed out, the daemon needed SIGKILL), and after one the lanes ring waited
    # for ever at a slot the kernel had skipped (every later frame dropped).
    ncpu = os.cpu_count() or 1
    exe = tmp_path / "pktgen"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(PKTGEN)], check=True)
    with Lab() as lab, director(lab, nat_rules("rr"),
                                extra=("--rx-ring", rx_ring, "--workers", str(workers),
                                       "--rx-pace", pace)) as d:
        assert servers_of(lab.http_get("client", lab.vip, count=3)) == ["rs1", "rs2", "rs3"]
        if ncpu > 1:   # as bench/bench_netns.py: the director's receive work off the flood's CPU
            for ifname in (lab.director_if_client, lab.director_if_server):
                lab.run("director", ["sh", "-c", f"echo 2 > /sys/class/net/{ifname}/queues/rx-0/rps_cpus"],
                        check=True)
        for _ in range(3):
            flood = lab.popen("client", ["taskset", "-c", "0", str(exe), "-i", lab.client_if, "-m", "udp",
                                         "-d", lab.mac("director", lab.director_if_client), "-s",
                                         lab.client_addrs[0], "-D", lab.vip, "-p", "5353", "-f", "1000",
                                         "-r", "0", "-t", "3"], stdout=subprocess.DEVNULL)
            try:
                time.sleep(1.5)                    # the rings are overrun by now
                listing = d.ulvsadm("-L", "-n")    # 60 s: lab.run's limit, far above the worst seen
                assert listing.returncode == 0 and "10.77.1.100:5353" in listing.stdout, listing
            finally:
                stop_by_pid(flood)
            time.sleep(0.5)
        counters = d.status()["daemon"]["ports"][lab.director_if_client]
        assert counters["rx_ring_drops"] > 0, counters      # it was a flood
        if rx_ring == "auto":
            # it began on the quick socket (an idle port), which fell behind: to the ring
            assert counters["rx_to_ring"] >= 1, counters
        if pace != "0":
            # Under the flood a paced port may never reach the timer: each read stops at its
            # budget and the backlog brings it back at once.  At 20 kpps (a frame every 50 us,
            # well inside the 300 us interval) it must: the socket wakes it again within one
            # interval, and from then on it is read on the timer.
            steady = lab.popen("client", ["taskset", "-c", "0", str(exe), "-i", lab.client_if, "-m", "udp",
                                          "-d", lab.mac("director", lab.director_if_client), "-s",
                                          lab.client_addrs[0], "-D", lab.vip, "-p", "5353", "-f", "1000",
                                          "-r", "20000", "-t", "1"], stdout=subprocess.DEVNULL)
            try:
                steady.wait(timeout=30)
            finally:
                stop_by_pid(steady)
            counters = d.status()["daemon"]["ports"][lab.director_if_client]
            assert counters["rx_ticks"] > 0, counters
        assert servers_of(lab.http_get("client", lab.vip, count=6)) == ["rs1", "rs2", "rs3"] * 2
        replies = lab.udp_echo("client", lab.vip, "after", count=3)
        assert all(r is not None and r.endswith(":after") for r in replies), replies


# A sequence-numbered UDP stream for the lane-move test: bursts far above what one frame at a
# time is served at (the quick socket falls behind: to the ring, mid-stream), each followed by a
# trickle that outlasts the ring's hold (a quiet window: back to the quick socket, mid-stream).
_SENDER = r"""
import socket, sys, time
vip, port, cycles, burst = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
s.connect((vip, port))
seq = 0
pad = bytes(28)
for _ in range(cycles):
    for _ in range(burst):
        s.send(seq.to_bytes(4, "big") + pad)
        seq += 1
    end = time.monotonic() + 1.4            # the ring's hold (1 s) and a few quiet windows
    while time.monotonic() < end:
        s.send(seq.to_bytes(4, "big") + pad)    # a frame every ~0.1-0.2 ms: a quiet window,
        seq += 1                                # but dense enough that a frame overtaking
        time.sleep(0.0001)                      # another across a move would show
time.sleep(0.5)
for _ in range(3):
    s.send(b"end")
    time.sleep(0.01)
print(seq)
"""

_RECEIVER = r"""
import json, socket, sys
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r.setsockopt(socket.SOL_SOCKET, 33, 1 << 24)   # SO_RCVBUFFORCE: no loss at the receiver
r.bind(("0.0.0.0", int(sys.argv[1])))
r.settimeout(20)
seqs = []
while True:
    try:
        d = r.recv(64)
    except socket.timeout:
        break
    if d == b"end":
        break
    seqs.append(int.from_bytes(d[:4], "big"))
print(json.dumps(seqs))
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_auto_moves_under_traffic_neither_double_nor_reorder_a_frame(workers: int) -> None:
    """Every move of an auto port swaps its fanout group's program once, so each frame reaches
    exactly one of the two lanes, and the lane being left is read out first.  Counted end to end:
    a sequence-numbered UDP stream through many moves in both directions reaches the real
    server with no number twice and in order.  (Checked: with the ring left unread on a move
    to the quick socket, this fails with frames out of order at each move.)  With two workers
    the stream is one connection, so one worker moves its own pair of the shared group."""
    port = 7000
    rules = nat_rules("rr", udp=False) + (f"-A -u 10.77.1.100:{port} -s rr\n"
                                          f"-a -u 10.77.1.100:{port} -r 10.77.2.11:{port} -m -w 1\n")
    cycles = 6
    with Lab() as lab, director(lab, rules, extra=("--workers", str(workers))) as d:
        recv = lab.popen("rs1", [sys.executable, "-c", _RECEIVER, str(port)], stdout=subprocess.PIPE)
        try:
            time.sleep(0.5)
            before = d.status()["daemon"]["ports"][lab.director_if_client]
            sent = lab.run("client", [sys.executable, "-c", _SENDER, lab.vip, str(port), str(cycles), "3000"],
                           timeout=120, check=True)
            out, _ = recv.communicate(timeout=60)
        finally:
            stop_by_pid(recv)
        after = d.status()["daemon"]["ports"][lab.director_if_client]
    total = int(sent.stdout)
    seqs = json.loads(out)
    moves = {k: after[k] - before.get(k, 0) for k in ("rx_to_ring", "rx_to_quick")}
    # the stream did move the port, both ways, under traffic (seen: 5-6 moves each way)
    assert moves["rx_to_ring"] >= cycles // 2 and moves["rx_to_quick"] >= cycles // 2, (moves, after)
    assert after["rx_lane_refused"] == 0, after
    assert len(seqs) == len(set(seqs)), f"{len(seqs) - len(set(seqs))} frames delivered twice"
    disorder = [(a, b) for a, b in zip(seqs, seqs[1:], strict=False) if b <= a]
    assert not disorder, f"{len(disorder)} frames out of order, first {disorder[:5]}"
    # frames may be lost in an overrun (counted as drops), not many: the bursts fit the ring
    assert len(seqs) >= 0.9 * total, (len(seqs), total, after)


_SEND_RAW = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for _ in range(int(sys.argv[3])):
    s.send(bytes.fromhex(sys.argv[2]))
"""


def test_the_quick_socket_counts_frames_for_another_host_and_forwards_none() -> None:
    """The quick socket is read without the sender's address (CPython looks up the interface's
    name with an ioctl for every ``recvfrom``): its filter cuts a frame for another host to a
    marker length instead.  Checked with the kernel's own filter: frames flooded to the director
    for a MAC it does not have are counted, and not one reaches a real server."""
    with Lab() as lab, director(lab, nat_rules("rr")) as d:
        assert lab.udp_echo("client", lab.vip, "before") != [None]
        time.sleep(0.1)                         # quiet: the next read moves the port to the quick socket
        assert lab.udp_echo("client", lab.vip, "again") != [None]
        before = d.status()["daemon"]["ports"][lab.director_if_client]
        # to a MAC nobody has: the bridge floods it, the director sees PACKET_OTHERHOST
        frame = builder.udp_frame(lab.mac("client", lab.client_if), "02:00:00:00:00:99", "10.77.1.10",
                                  lab.vip, 4000, 5353, b"abcd")
        lab.python("client", _SEND_RAW, lab.client_if, frame.hex(), "5", check=True)
        time.sleep(0.3)
        after = d.status()["daemon"]["ports"][lab.director_if_client]
        assert after["rx_quick_now"] == 1, after
        assert after["rx_other_host"] - before["rx_other_host"] == 5, (before, after)
        conns = d.ulvsadm("-L", "-n", "-c")
        replies = lab.udp_echo("client", lab.vip, "after")
        assert replies != [None] and replies[0] is not None and replies[0].endswith(":after"), replies
    # the datagrams from 10.77.1.10:4000 made no connection (one would have been listed)
    assert "10.77.1.10:4000" not in conns.stdout
