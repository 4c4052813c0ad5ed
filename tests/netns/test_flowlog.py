"""The flow log end to end: a director in the lab with ``--flow-log FILE``, one HTTP download of
a known size through the VIP, and the connection's lines in the file.

The oracle is an AF_PACKET capture (``SNIFF``, a stdlib script run in a lab namespace) that sums
the IPv4 Total Length of the flow's packets each way:

* offloads on (the lab's default, GRO switched on by ulvs): the capture runs in the director's
  namespace on ``cli0`` and ``srv0``, receiving the very frames ulvs's rings receive (after GRO,
  GSO super-packets whole), so it counts what the director was handed to forward;
* offloads off and ``--gro keep``: every packet is one wire segment on every hop, nothing is
  merged or split, so the capture runs on the client: what it sent to the VIP and what came
  back from it.

The capture's own drop counter (PACKET_STATISTICS) must be 0, or it proves nothing.  Every wait
is a bounded poll; no timing is asserted.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ulvs.lab import Lab
from ulvs.lab.director import PY, Director, director, nat_rules

pytestmark = pytest.mark.netns
SIZE = 1_000_000
WAIT = 30.0

# Counts IPv4 TCP packets per (interface, outgoing, saddr, sport, daddr, dport): [packets, bytes of
# IP total length]; prints "ready" once listening, and its table and drops as JSON on SIGTERM.
SNIFF = r"""
import json, select, signal, socket, struct, sys
socks = {}
for name in sys.argv[1].split(","):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)          # SO_RCVBUFFORCE
    s.bind((name, 0))
    socks[s.fileno()] = (s, name)
table, stop = {}, []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
print("ready", flush=True)
while not stop:
    try:
        ready, _, _ = select.select(list(socks), [], [], 0.2)
    except InterruptedError:
        continue
    for fd in ready:
        s, name = socks[fd]
        try:
            data, addr = s.recvfrom(128)                     # the headers are enough
        except BlockingIOError:
            continue
        if len(data) < 38 or data[12:14] != b"\x08\x00" or data[14] >> 4 != 4 or data[23] != 6:
            continue
        ihl = (data[14] & 15) * 4
        tot = struct.unpack_from("!H", data, 16)[0]
        sport, dport = struct.unpack_from("!HH", data, 14 + ihl)
        key = "|".join((name, str(int(addr[2] == socket.PACKET_OUTGOING)), socket.inet_ntoa(data[26:30]),
                        str(sport), socket.inet_ntoa(data[30:34]), str(dport)))
        row = table.setdefault(key, [0, 0])
        row[0] += 1
        row[1] += tot
drops = sum(struct.unpack("II", s.getsockopt(263, 6, 8))[1] for s, _ in socks.values())  # PACKET_STATISTICS
print(json.dumps({"table": table, "drops": drops}), flush=True)
"""


class Sniffer:
    def __init__(self, lab: Lab, role: str, interfaces: list[str]) -> None:
        self.proc = lab.popen(role, [PY, "-c", SNIFF, ",".join(interfaces)], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == b"ready"

    def stop(self) -> tuple[list[tuple[str, bool, str, int, str, int, int, int]], int]:
        """(interface, outgoing, saddr, sport, daddr, dport, packets, bytes) rows, and drops."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=WAIT)
        got = json.loads(out)
        rows = []
        for key, (pkts, nbytes) in got["table"].items():
            name, outgoing, saddr, sport, daddr, dport = key.split("|")
            rows.append((name, outgoing == "1", saddr, int(sport), daddr, int(dport), pkts, nbytes))
        return rows, int(got["drops"])


def conn_state(d: Director) -> list[str]:
    out = d.ulvsadm("-L", "-n", "-c")
    assert out.returncode == 0, out.stderr
    return [line.split()[2] for line in out.stdout.splitlines() if line.startswith("TCP")]


def service_counters(d: Director) -> dict[str, int]:
    (svc,) = [s for s in d.status()["snapshot"]["services"] if s["service"]["proto"] == "tcp"]
    counters: dict[str, int] = svc["counters"]
    return counters


def settle(d: Director) -> dict[str, int]:
    """Wait until the connection is in TIME_WAIT (both FINs went through) and its counters stop
    moving (the last ACK went through too); returns the service's counters."""
    deadline = time.monotonic() + WAIT
    last: dict[str, int] | None = None
    while time.monotonic() < deadline:
        if conn_state(d) == ["TIME_WAIT"]:
            now = service_counters(d)
            if now == last:
                return now
            last = now
        time.sleep(0.5)
    raise AssertionError(f"the connection did not settle: {conn_state(d)}, {last}")


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("where", ["director", "client"],
                         ids=["offloads-on-captured-on-the-director", "offloads-off-captured-on-the-client"])
def test_close_line_counts_the_bytes_the_capture_saw(where: str, tmp_path: Path) -> None:
    path = tmp_path / "flows.jsonl"
    extra: tuple[str, ...] = ("--flow-log", str(path), "--flow-log-rate", "100")
    if where == "client":
        extra += ("--gro", "keep")
    with Lab(offloads_off=where == "client") as lab:
        with director(lab, nat_rules("rr", udp=False), extra=extra) as d:
            if where == "director":
                sniff = Sniffer(lab, "director", [lab.director_if_client, lab.director_if_server])
            else:
                sniff = Sniffer(lab, "client", [lab.client_if])
            (r,) = lab.http_get("client", lab.vip, path=f"/bytes/{SIZE}", timeout=60)
            assert r.error is None and r.status == 200 and r.length == SIZE
            counters = settle(d)
            rows, drops = sniff.stop()
            assert d.proc.poll() is None
        lines = read_lines(path)        # the director has stopped: the shutdown lines are written

    assert drops == 0, "the capture lost packets: it cannot serve as the oracle"
    client, vip = lab.addr("client"), lab.vip
    if where == "director":
        # in: client -> VIP received on cli0; out: real server -> client received on srv0
        ins = [x for x in rows if x[0] == lab.director_if_client and not x[1] and x[2] == client
               and x[4] == vip and x[5] == 80]
        outs = [x for x in rows if x[0] == lab.director_if_server and not x[1] and x[4] == client
                and x[3] == 80 and x[2].startswith("10.77.2.")]
    else:
        ins = [x for x in rows if x[1] and x[2] == client and x[4] == vip and x[5] == 80]
        outs = [x for x in rows if not x[1] and x[2] == vip and x[3] == 80 and x[4] == client]
    (cin,) = ins                        # one connection: one client port each way
    (cout,) = outs
    cport = cin[3]
    assert cout[5] == cport
    want = {"inpkts": cin[6], "inbytes": cin[7], "outpkts": cout[6], "outbytes": cout[7]}

    flows = [x for x in lines if x.get("cport") == cport and x.get("vport") == 80]
    assert [x["event"] for x in flows] == ["open", "close"], lines
    opened, closed = flows
    for x in (opened, closed):
        assert (x["proto"], x["caddr"], x["vaddr"], x["dport"], x["method"]) == (
            "tcp", client, vip, 80, "masq")
        assert x["daddr"] == (cout[2] if where == "director" else "10.77.2.11")   # rr's first: rs1
    assert closed["reason"] == "shutdown" and closed["state"] == "TIME_WAIT"
    assert {k: closed[k] for k in want} == want
    assert closed["outbytes"] > SIZE and closed["duration"] >= 0
    assert closed["start"] == pytest.approx(opened["ts"], abs=0.01)
    # the same packets the service's statistics counted (ipvsadm --stats)
    assert {k: counters[k] for k in want} == want
    assert not [x for x in lines if x["event"] == "suppressed"]


def test_the_rate_limit_counts_what_it_leaves_out(tmp_path: Path) -> None:
    """25 connections at 5 lines a second (25 opens, and 25 closes at shutdown): what is
    written and what the suppressed lines count add up to every line the connections made."""
    path = tmp_path / "flows.jsonl"
    with Lab() as lab:
        extra = ("--flow-log", str(path), "--flow-log-rate", "5")
        with director(lab, nat_rules("rr", udp=False), extra=extra):
            results = lab.http_get("client", lab.vip, count=25)
            assert all(r.error is None and r.status == 200 for r in results)
        lines = read_lines(path)
    suppressed = [x for x in lines if x["event"] == "suppressed"]
    flows = [x for x in lines if x["event"] in ("open", "close")]
    assert suppressed, "50 lines at 5 a second: some must have been left out"
    assert len(flows) + sum(x["count"] for x in suppressed) == 2 * 25   # every close: shutdown
    assert lines[-1]["event"] == "suppressed"     # 25 shutdown lines at once: most are left out
