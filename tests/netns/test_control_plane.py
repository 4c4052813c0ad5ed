"""The control plane of a running director, end to end in the lab: ``ulvs status``, ``ulvs
explain`` and ``ulvs reload`` against the real daemon, no listening inet sockets, and hitless
reloads -- a 200 MB download that stays intact while the configuration is rewritten and reloaded
over and over (SIGHUP and ``ulvs reload``), broken configurations included.
"""

from __future__ import annotations

import grp
import json
import os
import signal
import stat
import subprocess
import time

import pytest

from ulvs.cli.ulvsadm import parse_restore
from ulvs.lab import Lab
from ulvs.lab.director import PY, Director, director, nat_rules
from ulvs.lab.pattern import pattern_digest

pytestmark = pytest.mark.netns
VIP = "10.77.1.100"


def ulvs(d: Director, *args: str) -> subprocess.CompletedProcess[str]:
    out: subprocess.CompletedProcess[str] = d.lab.run(
        "director", [PY, "-m", "ulvs", *args, "--socket", d.sock], timeout=60)
    return out


def status(d: Director) -> dict:  # type: ignore[type-arg]
    out = ulvs(d, "status", "--json")
    assert out.returncode == 0, out.stderr
    st: dict = json.loads(out.stdout)  # type: ignore[type-arg]
    return st


def wait_log(d: Director, needle: str, count: int) -> None:
    """Wait (bounded) until ``needle`` appears ``count`` times in the daemon's log."""
    deadline = time.monotonic() + 30
    while d.log_text().count(needle) < count:
        assert time.monotonic() < deadline, d.log_text()
        assert d.proc.poll() is None, d.log_text()
        time.sleep(0.05)


def names_line(message: str, n: int) -> bool:
    """The message names line ``n`` of the rules file (``rules: line N`` or ``rules:N:``)."""
    return f"rules: line {n}:" in message or f"rules:{n}:" in message


def config_of(text: str) -> list[str]:
    """A rules text as a comparable set of requests (order-free)."""
    return sorted(json.dumps(r, sort_keys=True) for _line, r in parse_restore(text))


@pytest.mark.parametrize("backend", ["afpacket", "tap"])
def test_status_explain_and_reload_on_a_running_director(backend: str) -> None:
    with Lab() as lab, director(lab, nat_rules("rr", udp=False), backend) as d:
        st = status(d)
        info = st["daemon"]
        assert info["pid"] == d.proc.pid and info["backend"] == backend and info["protocol"] == 1
        assert info["control_socket"] == d.sock and info["control_socket_mode"] == "0600"
        assert info["config"] == str(d.log.parent / "rules") and info["last_reload"] is None
        if backend == "afpacket":
            assert info["interfaces"] == sorted([lab.director_if_client, lab.director_if_server])
        assert st["conn_table"]["count"] == 0 and st["conn_table"]["limit"] == 1_000_000
        assert [x["dest"]["daddr"] for x in st["snapshot"]["services"][0]["dests"]] == \
            ["10.77.2.11", "10.77.2.12", "10.77.2.13"]
        text = ulvs(d, "status")
        assert text.returncode == 0 and "TCP 10.77.1.100:80" in text.stdout

        # explain names the dest the next connection gets, and changes nothing: ask twice
        client = lab.addr("client")
        for expected in ("rs1", "rs2", "rs3", "rs1"):
            for _ in range(2):
                out = ulvs(d, "explain", "tcp", f"{client}:40000", f"{VIP}:80", "--json")
                assert out.returncode == 0, out.stderr
                e = json.loads(out.stdout)
                assert e["kind"] == "scheduled" and e["sched"] == "rr"
            (r,) = lab.http_get("client", VIP)
            assert r.error is None and r.server == expected
            assert e["daddr"] == f"10.77.2.1{expected[-1]}"
        assert status(d)["conn_table"]["count"] == 4     # the four real ones, none from explain
        out = ulvs(d, "explain", "udp", f"{client}:40000", f"{VIP}:53")
        assert out.returncode == 0 and "no service for 10.77.1.100:53" in out.stdout

        # reload: the number of changes, or the error with the old configuration kept
        rules = d.log.parent / "rules"
        rules.write_text(nat_rules("rr", weights=(1, 2, 3), udp=False))
        out = ulvs(d, "reload")
        assert (out.returncode, out.stdout) == (0, f"reloaded {rules}: 2 change(s)\n"), out.stderr
        good = d.ulvsadm("-S", "-n").stdout
        rules.write_text("-A -t 10.77.1.100:80 -s rr\n-a -t 10.77.1.100:80 -r 10.77.2.11:80 -m -w 99999\n")
        out = ulvs(d, "reload")
        assert out.returncode == 1 and names_line(out.stderr, 2), out.stderr
        assert "configuration unchanged" in out.stderr
        assert d.ulvsadm("-S", "-n").stdout == good
        last = status(d)["daemon"]["last_reload"]
        assert last["ok"] is False and names_line(last["error"], 2) and last["by"] == "reload request"


def test_control_group_opens_the_socket_to_the_group() -> None:
    nogroup = grp.getgrgid(65534).gr_name
    with Lab() as lab, director(lab, nat_rules("rr"), extra=("--control-group", nogroup)) as d:
        st = os.stat(d.sock)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o660, 0, 65534)
        info = status(d)["daemon"]
        assert (info["control_group"], info["control_socket_mode"]) == (nogroup, "0660")
    with Lab() as lab:
        out = lab.run("director", [PY, "-m", "ulvs", "run", "--control-group", "no-such-group-ulvs",
                                   "--control-socket", "/tmp/ulvs-nogroup.sock"])
        assert out.returncode == 2 and "unknown group 'no-such-group-ulvs'" in out.stderr


def test_status_and_explain_with_two_workers() -> None:
    with Lab() as lab, director(lab, nat_rules("rr"), extra=("--workers", "2")) as d:
        assert lab.udp_echo("client", VIP, "hi")[0] is not None
        st = status(d)
        assert st["daemon"]["workers"] == 2 and len(st["daemon"]["worker_pids"]) == 2
        assert st["conn_table"]["workers"] == 2 and st["conn_table"]["limit"] == 2_000_000
        assert st["conn_table"]["count"] == 1 and st["conn_table"]["states"] == {"UDP": 1}
        # the worker holding the UDP connection answers for it
        (row,) = [x.split() for x in d.listing("-c").splitlines() if x.startswith("UDP")]
        caddr = row[3]                 # pro expire state source virtual destination
        out = ulvs(d, "explain", "udp", caddr, f"{VIP}:5353", "--json")
        assert out.returncode == 0, out.stderr
        e = json.loads(out.stdout)
        assert e["kind"] == "connection" and e["worker"] in (0, 1)
        assert f"{e['daddr']}:{e['dport']}" == row[5]
        # a new flow: each worker's own scheduler choice is listed
        out = ulvs(d, "explain", "tcp", f"{lab.addr('client')}:40001", f"{VIP}:80")
        assert out.returncode == 0 and "worker 0: 10.77.2.11:80" in out.stdout, out.stdout
        assert "worker 1: 10.77.2.11:80" in out.stdout


@pytest.mark.parametrize(("backend", "extra"),
                         [("afpacket", ()), ("tap", ()), ("afpacket", ("--workers", "2"))],
                         ids=["afpacket", "tap", "afpacket-2-workers"])
def test_a_running_director_listens_on_no_inet_socket(backend: str, extra: tuple[str, ...]) -> None:
    with Lab() as lab:
        assert lab.run("director", ["ss", "-ltnuH"]).stdout.strip() == ""
        # the Prometheus exporter (a child, 127.0.0.1:9595 by default) off: the daemon itself
        # never listens (tests/netns/test_metrics.py checks the exporter's one listener)
        with director(lab, nat_rules("rr"), backend, extra=(*extra, "--metrics-listen", "off")) as d:
            assert lab.http_get("client", VIP)[0].error is None       # up and serving
            out = lab.run("director", ["ss", "-ltnuwH"])
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == "", out.stdout               # no TCP/UDP/raw listener
            unix = lab.run("director", ["ss", "-lxH"]).stdout
            assert d.sock in unix                                     # only the control socket


# The download client: reads the body in chunks; after each chunk it reports and waits for a
# line on stdin, so every reload happens with the connection mid-transfer.
CHUNKED = r"""
import hashlib, http.client, json, sys
host, size, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conn = http.client.HTTPConnection(host, 80, timeout=120)
conn.request("GET", f"/bytes/{size}", headers={"Connection": "close"})
resp = conn.getresponse()
server = resp.getheader("X-Real-Server")
h, got, chunk = hashlib.sha256(), 0, size // (steps + 1)
for step in range(steps + 1):
    want = chunk if step < steps else size - got
    while want:
        data = resp.read(min(want, 1 << 18))
        if not data:
            break
        h.update(data); got += len(data); want -= len(data)
    if step < steps:
        print(f"progress {got} {server}", flush=True)
        if sys.stdin.readline().strip() != "go":
            break
print(json.dumps({"status": resp.status, "server": server, "length": got, "sha256": h.hexdigest()}),
      flush=True)
"""

BROKEN_WEIGHT = "-A -t 10.77.1.100:80 -s rr\n-a -t 10.77.1.100:80 -r 10.77.2.11:80 -m -w 99999\n"
BROKEN_SYNTAX = "-A -t 10.77.1.100:80 -s rr\n-a -t 10.77.1.100:80 -r 10.77.2.11:80 -m\n-X nonsense\n"
BROKEN_SCHED = "-A -t 10.77.1.100:80 -s nosuch\n-a -t 10.77.1.100:80 -r 10.77.2.11:80 -m\n"
BROKEN = (BROKEN_WEIGHT, BROKEN_SYNTAX, BROKEN_SCHED)


def step_rules(i: int) -> str:
    """Configuration i of the hitless test: the weight of rs1 (it serves the download) changes,
    other dests come and go, and a UDP service comes and goes."""
    w1 = (2, 0, 3, 1, 5)[i % 5]
    lines = ["-A -t 10.77.1.100:80 -s rr", f"-a -t 10.77.1.100:80 -r 10.77.2.11:80 -m -w {w1}"]
    others = ["10.77.2.12"] + (["10.77.2.13"] if i % 3 != 1 else []) + (["10.77.2.14"] if i % 2 else [])
    lines += [f"-a -t 10.77.1.100:80 -r {a}:80 -m -w {1 + i % 4}" for a in others]
    if i % 4 in (1, 2):
        lines.append("-A -u 10.77.1.100:5353 -s wrr")
        lines += [f"-a -u 10.77.1.100:5353 -r 10.77.2.1{k}:5353 -m -w {k}" for k in (1, 2, 3)]
    if i % 7 == 3:
        lines.append("-A -t 10.77.1.100:8080 -s wlc -p 60")
        lines.append("-a -t 10.77.1.100:8080 -r 10.77.2.12:8080 -m")
    return "\n".join(lines) + "\n"


def test_200_mb_download_survives_reloads_and_broken_configs() -> None:
    size = 200 * 1024 * 1024
    plan: list[tuple[str, str]] = [(step_rules(i), "sighup" if i % 2 else "reload") for i in range(20)]
    plan.insert(7, (BROKEN_WEIGHT, "reload"))
    plan.insert(14, (BROKEN_SYNTAX, "sighup"))
    plan.insert(18, (BROKEN_SCHED, "reload"))
    with Lab() as lab, director(lab, nat_rules("rr", udp=False)) as d:
        rules = d.log.parent / "rules"
        dl = lab.popen("client", [PY, "-c", CHUNKED, VIP, str(size), str(len(plan))],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert dl.stdin is not None and dl.stdout is not None
        good = rules.read_text()
        reloaded = failed = 0
        try:
            for text, how in plan:
                line = dl.stdout.readline().decode()
                assert line.startswith("progress ") and line.split()[2] == "rs1", (line, d.log_text())
                rules.write_text(text)
                broken = text in BROKEN
                if how == "reload":
                    out = ulvs(d, "reload")
                    if broken:
                        assert out.returncode == 1, out.stdout
                        assert "configuration unchanged" in out.stderr, out.stderr
                        if text == BROKEN_WEIGHT:
                            assert names_line(out.stderr, 2) and "illegal weight" in out.stderr, out.stderr
                        else:
                            assert "unknown scheduler 'nosuch'" in out.stderr, out.stderr
                    else:
                        assert out.returncode == 0, out.stderr
                        assert out.stdout.startswith(f"reloaded {rules}: "), out.stdout
                else:
                    d.proc.send_signal(signal.SIGHUP)
                if broken:
                    failed += 1
                    wait_log(d, "failed, configuration unchanged", failed)
                    # the old configuration still serves, unchanged
                    assert config_of(d.ulvsadm("-S", "-n").stdout) == config_of(good)
                else:
                    reloaded += 1
                    wait_log(d, "reloaded ", reloaded)
                    good = text
                    assert config_of(d.ulvsadm("-S", "-n").stdout) == config_of(text)
                dl.stdin.write(b"go\n")
                dl.stdin.flush()
            out, _ = dl.communicate(timeout=300)
        finally:
            if dl.poll() is None:
                dl.kill()
                dl.wait()
        row = json.loads(out.decode().strip().splitlines()[-1])
        assert row == {"status": 200, "server": "rs1", "length": size, "sha256": pattern_digest(size)}
        assert (reloaded, failed) == (20, 3)
        log = d.log_text()
        # the SIGHUP failure is logged naming the file and the line
        assert any("failed, configuration unchanged" in x and names_line(x, 3) for x in log.splitlines()), log
        # afterwards the daemon serves exactly the configuration last written
        assert config_of(d.ulvsadm("-S", "-n").stdout) == config_of(plan[-1][0])
        st = status(d)
        assert st["daemon"]["last_reload"]["ok"] is True and st["daemon"]["last_reload"]["by"] == "SIGHUP"
        assert st["daemon"]["config"] == str(rules)
        assert d.proc.poll() is None
