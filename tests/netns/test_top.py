"""``ulvs top --once`` against a director in the lab, under a little traffic.

The client holds five connections open through the VIP (rr: rs1, rs2, rs3, rs1, rs2, so 2, 2
and 1 active) and keeps asking for a page on each of them while ``ulvs top`` takes its two
snapshots; three more requests, each on a connection of its own and done before, leave one
TIME_WAIT (inactive) connection on each dest.  Every wait is a bounded poll.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from ulvs.lab import Lab
from ulvs.lab.director import PY, Director, director, nat_rules

pytestmark = pytest.mark.netns
WAIT = 30.0

HOLD = r"""
import socket, sys, time
vip, k = sys.argv[1], int(sys.argv[2])
socks = [socket.create_connection((vip, 80), timeout=10) for _ in range(k)]
print("ready", flush=True)
while True:
    for s in socks:
        s.sendall(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += s.recv(4096)
    time.sleep(0.05)
"""


def active_total(d: Director) -> int:
    out = d.ulvsadm("-L", "-n")
    assert out.returncode == 0, out.stderr
    return sum(int(line.split()[4]) for line in out.stdout.splitlines()
               if line.lstrip().startswith("->") and line.split()[1] != "RemoteAddress:Port")


def test_top_once_names_the_service_and_its_dests_with_their_connections() -> None:
    with Lab() as lab, director(lab, nat_rules("rr", udp=False)) as d:
        hold = lab.popen("client", [PY, "-c", HOLD, lab.vip, "5"], stdout=subprocess.PIPE)
        assert hold.stdout is not None and hold.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + WAIT
        while active_total(d) != 5:
            assert time.monotonic() < deadline, d.listing()
            time.sleep(0.1)
        done = lab.http_get("client", lab.vip, count=3)          # rs3, rs1, rs2: one each
        assert [r.server for r in done] == ["rs3", "rs1", "rs2"]
        out = lab.run("director", [PY, "-m", "ulvs", "top", "--once", "--socket", d.sock])
        assert out.returncode == 0, out.stderr
        text = out.stdout
        assert hold.poll() is None, "the client's connections broke"
        listing = d.listing()
    assert "\x1b" not in text                                     # a pipe: plain text
    rows = {line.split()[1]: line.split() for line in text.splitlines()
            if line.lstrip().startswith(("TCP", "->"))}
    svc = rows["10.77.1.100:80"]
    assert svc[:5] == ["TCP", "10.77.1.100:80", "rr", "5", "3"]
    for rs, active in (("10.77.2.11:80", "2"), ("10.77.2.12:80", "2"), ("10.77.2.13:80", "1")):
        assert rows[rs][:6] == ["->", rs, "Masq", "1", active, "1"], text
        ipvsadm = next(x.split() for x in listing.splitlines() if rs in x)
        assert ipvsadm[4:6] == [active, "1"]                      # ulvsadm -L -n agrees
    assert svc[6] != "0" and svc[7] != "0", text                  # packets/s in and out: traffic flowed
    assert "conn table 8 of 1,000,000" in text
    assert text.index("10.77.2.11:80") < text.index("10.77.2.12:80") < text.index("10.77.2.13:80")
