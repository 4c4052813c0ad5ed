"""Slow start and the failed dests' TCP connections (``slow_start``, ``failed_conns``), end to end.

As in ``test_health``: the real daemon runs a native TOML configuration with delay_loop 1 and
its health monitor probes the lab's real servers; every wait is a bounded poll of ``ulvs status
--json`` or ``ulvsadm -L -n`` (``-c`` for the connection table), never a sleep with a fixed
expectation, and no assertion has a timing threshold.
"""

from __future__ import annotations

import json
import select
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.netns.test_health import (
    HTTP_CHECK,
    RS,
    VIP,
    WAIT,
    is_down,
    is_up,
    monitor_ready,
    pool,
    running,
    wait_for,
)
from ulvs.lab import Lab
from ulvs.lab.director import PY

pytestmark = pytest.mark.netns

RAMP = 6            # s of slow start; rs3's weight 10 then steps 1, 2, 4, 5, 7, 8, 10 (policy.ramp_weight)
WEIGHTS = {"rs1": 1, "rs2": 1, "rs3": 10}


# -- a client that keeps asking while the weight ramps ------------------------------------------

LOOP_CLIENT = """
import json, os, socket, sys, time
vip, stop = sys.argv[1], sys.argv[2]
ok, errors, servers = 0, [], {}
print("ready", flush=True)
while not os.path.exists(stop):
    try:
        with socket.create_connection((vip, 80), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\\r\\nHost: lab\\r\\nConnection: close\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        head, _, body = data.partition(b"\\r\\n\\r\\n")
        if head.startswith(b"HTTP/1.1 200"):
            ok += 1
            name = body.decode().strip()
            servers[name] = servers.get(name, 0) + 1
        else:
            errors.append(head[:60].decode("latin-1"))
    except OSError as e:
        errors.append(repr(e))
    time.sleep(0.05)
print(json.dumps({"ok": ok, "errors": errors, "servers": servers}), flush=True)
"""


@contextmanager
def client_loop(lab: Lab) -> Iterator[dict[str, object]]:
    """HTTP GETs from the client, one connection each, until the block ends; the dict then
    holds ``ok`` (how many succeeded), ``errors`` and ``servers`` (who answered, how often)."""
    stop = Path(tempfile.mkdtemp(prefix="ulvs-loop-")) / "stop"
    proc = lab.popen("client", [PY, "-c", LOOP_CLIENT, VIP, str(stop)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    assert ready and proc.stdout.readline().strip() == b"ready", "the client loop did not start"
    result: dict[str, object] = {}
    try:
        yield result
    finally:
        stop.touch()
        out, _ = proc.communicate(timeout=30)
        result.update(json.loads(out))


def test_slow_start_ramps_a_returning_dest_health() -> None:
    dests = "".join(f'\n[[service.dest]]\naddress = "{RS[rs]}"\nweight = {w}\n' for rs, w in WEIGHTS.items())
    cfg = (f'[[service]]\nprotocol = "tcp"\nvip = "{VIP}"\nport = 80\nscheduler = "wrr"\n'
           f'forwarding = "masq"\ndelay_loop = 1\nslow_start = {RAMP}\n\n{HTTP_CHECK}{dests}')
    rs3 = f"{RS['rs3']}:80"
    with Lab() as lab, running(lab, cfg) as d:
        wait_for(d, "monitor running", monitor_ready(d, 3))
        assert pool(d) == {f"{RS[rs]}:80": w for rs, w in WEIGHTS.items()}     # no ramp at start
        lab.stop_server("rs3")
        wait_for(d, "rs3 reported down", is_down(d, RS["rs3"]))
        assert rs3 not in pool(d)
        seen: list[int] = []

        def ramped() -> bool:
            weight = pool(d).get(rs3)
            if weight is not None and (not seen or seen[-1] != weight):
                seen.append(weight)
            return weight == WEIGHTS["rs3"]

        with client_loop(lab) as traffic:
            lab.restart_server("rs3")
            took = wait_for(d, "rs3 back at its configured weight", ramped)
        print(f"\nslow start {RAMP} s: rs3 restarted -> weights {seen} in ulvsadm -L -n, "
              f"weight {WEIGHTS['rs3']} after {took:.2f} s; client: {traffic}")
        assert seen == sorted(seen) and seen[-1] == WEIGHTS["rs3"]            # non-decreasing, to 10
        assert len([w for w in seen if 1 < w < WEIGHTS["rs3"]]) >= 2, seen     # steps on the way
        assert traffic["errors"] == [] and isinstance(traffic["ok"], int) and traffic["ok"] > 0, traffic
        assert isinstance(traffic["servers"], dict) and "rs3" in traffic["servers"], traffic
        assert is_up(d, RS["rs3"])()


# -- a failed dest's established TCP connection: expired at once, or kept -------------------------

KEEPALIVE_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=3)
def get():
    try:
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: lab\\r\\n\\r\\n")
        data = b""
        while b"\\r\\n\\r\\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                return "error closed"
            data += chunk
        head, _, body = data.partition(b"\\r\\n\\r\\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\\r\\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            chunk = s.recv(4096)
            if not chunk:
                return "error closed"
            body += chunk
        return "ok " + body.decode().strip()
    except OSError as e:
        return "error " + repr(e)
print(s.getsockname()[1], get(), flush=True)
for line in sys.stdin:
    print(get(), flush=True)
"""


class KeepAlive:
    """One keep-alive HTTP connection from the client, asked on demand (``get``)."""

    def __init__(self, lab: Lab) -> None:
        self.proc = lab.popen("client", [PY, "-c", KEEPALIVE_CLIENT, VIP],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        port, answer = self._line().split(" ", 1)
        assert answer.startswith("ok "), answer
        self.cport, self.server = int(port), answer[3:]

    def _line(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], WAIT)
        assert ready, "the keep-alive client did not answer"
        return self.proc.stdout.readline().decode().strip()

    def get(self) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"get\n")
        self.proc.stdin.flush()
        return self._line()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def conn_listed(text: str, cport: int, daddr: str) -> bool:
    """``ulvsadm -L -n -c`` lists the client's connection from ``cport`` to dest ``daddr:80``."""
    return any(f":{cport} " in f"{line} " and f"{daddr}:80" in line and "ESTABLISHED" in line
               for line in text.splitlines())


@pytest.mark.parametrize("policy", ["expire", "keep"])
def test_failed_conns_of_a_failed_dest_health(policy: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ulvs-misc-"))
    codes = {rs: tmp / rs for rs in ("rs1", "rs2")}
    dests = ""
    for rs, code in codes.items():
        code.write_text("0\n")
        dests += (f'\n[[service.dest]]\naddress = "{RS[rs]}"\n\n[[service.dest.check]]\ntype = "MISC_CHECK"\n'
                  f"misc_path = \"/bin/sh -c 'exit $(cat {code})'\"\nmisc_timeout = 2\n")
    cfg = (f'[[service]]\nprotocol = "tcp"\nvip = "{VIP}"\nport = 80\nscheduler = "rr"\n'
           f'forwarding = "masq"\ndelay_loop = 1\nfailed_conns = "{policy}"\n{dests}')
    with Lab() as lab, running(lab, cfg) as d:
        wait_for(d, "monitor running", monitor_ready(d, 2))
        conn = KeepAlive(lab)
        try:
            owner, daddr = conn.server, RS[conn.server]
            assert conn_listed(d.listing("-c"), conn.cport, daddr), d.listing("-c")
            codes[owner].write_text("1\n")                    # its check fails; the server runs on
            took = wait_for(d, f"{owner} reported down", is_down(d, daddr))
            print(f"\nfailed_conns = {policy}: {owner} failed -> reported down in {took:.2f} s")
            if policy == "expire":
                wait_for(d, "the connection expired",
                         lambda: not conn_listed(d.listing("-c"), conn.cport, daddr))
                assert "1 TCP connection(s) expired" in d.log_text()
                # gone from the table: its next segment is no connection's, so the request fails
                answer = conn.get()
                print(f"failed_conns = expire: the next request on the connection: {answer}")
                assert answer.startswith("error"), answer
            else:
                assert conn_listed(d.listing("-c"), conn.cport, daddr), d.listing("-c")
                codes[owner].write_text("0\n")
                wait_for(d, f"{owner} reported up", is_up(d, daddr))
                assert conn_listed(d.listing("-c"), conn.cport, daddr), d.listing("-c")
                assert conn.get() == f"ok {owner}"           # the same connection, served again
                assert "TCP connection(s) expired" not in d.log_text()
        finally:
            conn.close()
