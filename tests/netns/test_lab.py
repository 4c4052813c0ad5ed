"""The lab topology itself (no ulvs in the path): addressing, servers, DR preparation, teardown.

Every test here builds namespaces, so the module is marked ``netns`` (skipped unless root).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ulvs.lab import NAT_GW, VIP, Lab, cleanup_stale, destroy, list_namespaces, pattern_digest, status
from ulvs.lab.topology import RUN_DIR

pytestmark = pytest.mark.netns


def _host_snapshot() -> tuple[str, str, str]:
    """The root namespace's links, addresses and routes: the lab must never change them."""

    def ip(*args: str) -> str:
        return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout

    links = "\n".join(line.split()[0] for line in ip("-br", "link").splitlines())
    return links, ip("-br", "addr"), ip("route")


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead, just not yet reaped by its parent


def _assert_gone(lab_id: str, names: tuple[str, ...], pids: list[int]) -> None:
    present = set(list_namespaces())
    assert not present & set(names), f"namespaces left: {present & set(names)}"
    assert not [n for n in present if n.startswith(f"ulvs-{lab_id}-")]
    assert not [p for p in pids if _pid_alive(p)], "lab processes left running"
    assert not (RUN_DIR / lab_id).exists()


@pytest.fixture(scope="module")
def nat_lab() -> Iterator[Lab]:
    with Lab(clients=3) as lab:
        yield lab


@pytest.fixture(scope="module")
def dr_lab() -> Iterator[Lab]:
    with Lab(dr=True) as lab:
        yield lab


# --- addressing and routing --------------------------------------------------------------------------


def test_director_addresses_answer_the_client(nat_lab: Lab) -> None:
    # ping is not installed: a TCP connect that is accepted or refused proves the host answers.
    for addr in (nat_lab.addr("director"), nat_lab.addr("director", "server"), NAT_GW):
        assert nat_lab.reachable("client", addr), addr
    assert not nat_lab.reachable("client", "10.77.0.99", timeout=0.3)  # nobody there


def test_director_forwards_and_lab_leaves_vip_to_ulvs(nat_lab: Lab) -> None:
    assert nat_lab.sysctl("director", "net.ipv4.ip_forward") == "1"
    assert nat_lab.sysctl("director", "net.ipv4.conf.srv0.rp_filter") == "0"
    addrs = nat_lab.run("director", ["ip", "-br", "addr"]).stdout
    assert "10.77.0.1/24" in addrs and "10.77.2.1/24" in addrs and f"{NAT_GW}/24" in addrs
    assert VIP not in addrs
    for rs in nat_lab.real_servers:
        assert VIP not in nat_lab.run(rs, ["ip", "-br", "addr"]).stdout
        assert f"default via {NAT_GW}" in nat_lab.run(rs, ["ip", "route"]).stdout
    assert "default via 10.77.0.1" in nat_lab.run("client", ["ip", "route"]).stdout


def test_each_real_server_answers_its_name(nat_lab: Lab) -> None:
    for rs in nat_lab.real_servers:
        (res,) = nat_lab.http_get("director", nat_lab.addr(rs))
        assert (res.status, res.body, res.server, res.error) == (200, f"{rs}\n", rs, None)


def test_keepalive_and_multiple_client_addresses(nat_lab: Lab) -> None:
    # Client -> real server directly: exercises both default routes through the director's kernel.
    results = nat_lab.http_get(
        "client", nat_lab.addr("rs2"), count=6, keepalive=True, src=nat_lab.client_addrs
    )
    assert [r.body for r in results] == ["rs2\n"] * 6
    assert [r.src for r in results] == list(nat_lab.client_addrs) * 2


def test_udp_echo(nat_lab: Lab) -> None:
    for rs in nat_lab.real_servers:
        assert nat_lab.udp_echo("director", nat_lab.addr(rs), "hello", count=2) == [f"{rs}:hello"] * 2


def test_large_download_is_streamed_and_deterministic(nat_lab: Lab) -> None:
    n = 200_000_000
    (res,) = nat_lab.http_get("director", nat_lab.addr("rs1"), f"/bytes/{n}", timeout=30)
    assert (res.status, res.length, res.server) == (200, n, "rs1")
    assert res.sha256 == pattern_digest(n)


def test_stopped_server_refuses_and_restarts(nat_lab: Lab) -> None:
    nat_lab.stop_server("rs3")
    assert not nat_lab.tcp_connect("director", nat_lab.addr("rs3"), 80)
    nat_lab.restart_server("rs3")
    assert nat_lab.http_get("director", nat_lab.addr("rs3"))[0].body == "rs3\n"


# --- DR ------------------------------------------------------------------------------------------------


def test_dr_servers_hold_vip_on_lo_and_do_not_arp_for_it(dr_lab: Lab) -> None:
    for rs in dr_lab.real_servers:
        lo = dr_lab.run(rs, ["ip", "-br", "addr", "show", "dev", "lo"]).stdout
        assert f"{VIP}/32" in lo
        for scope in ("all", "eth0"):
            assert dr_lab.sysctl(rs, f"net.ipv4.conf.{scope}.arp_ignore") == "1"
            assert dr_lab.sysctl(rs, f"net.ipv4.conf.{scope}.arp_announce") == "2"


def test_dr_path_with_kernel_routing(dr_lab: Lab) -> None:
    # Emulate a DR director with a plain route (next hop rs1 = rewrite the MAC only): the reply
    # goes rs1 -> 10.77.2.254 -> client with the VIP as source, UDP included (IP_PKTINFO).
    route = ["ip", "route", "add", f"{VIP}/32", "via", dr_lab.addr("rs1")]
    assert dr_lab.run("director", route).returncode == 0
    try:
        (res,) = dr_lab.http_get("client", VIP)
        assert res.body == "rs1\n"
        assert dr_lab.udp_echo("client", VIP, "dr") == ["rs1:dr"]
    finally:
        dr_lab.run("director", ["ip", "route", "del", f"{VIP}/32"])


# --- variants ------------------------------------------------------------------------------------------


def test_two_directors_and_offloads_off() -> None:
    with Lab(directors=2, offloads_off=True, start_servers=False) as lab:
        assert lab.directors == ("director", "director2")
        assert lab.client_gateway == "10.77.0.254"
        assert lab.reachable("client", lab.addr("director2"))
        assert lab.reachable("client", lab.addr("director2", "server"))  # routed via the gateway
        assert lab.offloads("director", lab.director_if_server) == dict.fromkeys(
            ("tx", "tso", "gso", "gro"), False
        )
        assert lab.offloads("rs1", lab.server_if)["tx"] is False
    with Lab(start_servers=False) as lab:
        assert lab.offloads("director", lab.director_if_server)["tx"] is True  # default: untouched


def test_parallel_labs_do_not_collide(nat_lab: Lab) -> None:
    with Lab(start_servers=False, servers=1) as other:
        assert other.prefix != nat_lab.prefix
        assert other.reachable("client", other.addr("rs1"), port=80)  # refused: no server, but routed
    assert nat_lab.http_get("director", nat_lab.addr("rs1"))[0].body == "rs1\n"


# --- teardown ------------------------------------------------------------------------------------------


def test_teardown_removes_everything_and_leaves_host_alone() -> None:
    before = _host_snapshot()
    t0 = time.monotonic()
    lab = Lab(dr=True).up()
    built = time.monotonic() - t0
    names, pids, lab_id = lab.namespaces, lab.pids, lab.lab_id
    assert len(pids) == 3 and all(_pid_alive(p) for p in pids)
    assert set(names) <= set(list_namespaces())
    t1 = time.monotonic()
    lab.down()
    torn = time.monotonic() - t1
    _assert_gone(lab_id, names, pids)
    assert _host_snapshot() == before
    assert built < 5 and torn < 5, (built, torn)
    lab.down()  # idempotent


def test_exception_inside_with_still_tears_down() -> None:
    lab = Lab()
    with pytest.raises(RuntimeError, match="boom"), lab:
        assert len(lab.pids) == 3
        raise RuntimeError("boom")
    _assert_gone(lab.lab_id, lab.namespaces, lab.pids)


def test_owner_exiting_without_down_tears_down_at_exit() -> None:
    code = "from ulvs.lab import Lab\nlab = Lab().up()\nprint(lab.lab_id, *lab.pids)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lab_id, *pid_text = proc.stdout.split()
    _assert_gone(lab_id, (), [int(p) for p in pid_text])


def test_stale_lab_of_a_dead_owner_is_cleaned_up() -> None:
    code = (
        "import os, signal\n"
        "from ulvs.lab import Lab\n"
        "lab = Lab().up()\n"
        "print(lab.lab_id, *lab.pids, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"  # no teardown at all
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    lab_id, *pid_text = proc.stdout.split()
    pids = [int(p) for p in pid_text]
    names = tuple(f"ulvs-{lab_id}-{role}" for role in ("client", "director", "lan", "rs1", "rs2", "rs3"))
    info = {i.lab_id: i for i in status()}.get(lab_id)
    if info is not None:  # else a concurrent Lab().up() elsewhere already cleaned it up
        assert not info.alive and info.namespaces == tuple(sorted(names))
        assert all(_pid_alive(p) for p in pids)  # orphaned servers still run in the namespaces
        cleanup_stale()
    _assert_gone(lab_id, names, pids)


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float = 30) -> str:
    """Read ``proc``'s stdout until ``marker`` appears (or fail after ``timeout``)."""
    assert proc.stdout is not None
    fd, buf = proc.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while marker not in buf:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], f"timed out; got {buf!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"process exited; got {buf!r}"
        buf += chunk
    return buf.decode()


def _lab_up(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    up = subprocess.Popen([sys.executable, "-m", "ulvs", "lab", "up", *args], stdout=subprocess.PIPE)
    text = _read_until(up, b"Ctrl-C")
    assert "ip netns exec ulvs-" in text
    return up, text.split()[2]  # "ulvs lab <id> (NAT), ..."


def _stop(up: subprocess.Popen[bytes], lab_id: str) -> None:
    """Failure path: let ``ulvs lab up`` tear down (SIGTERM), else kill it and remove its lab."""
    if up.poll() is None:
        up.terminate()
        try:
            up.wait(timeout=10)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
    if lab_id in {i.lab_id for i in status()}:
        destroy(lab_id)


def _ulvs_lab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ulvs", "lab", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_up_status_down() -> None:
    up, lab_id = _lab_up("--dr")
    try:
        out = _ulvs_lab("status")
        assert out.returncode == 0 and f"{lab_id}  live" in out.stdout
        names = tuple(n for n in list_namespaces() if n.startswith(f"ulvs-{lab_id}-"))
        assert len(names) == 6
        up.send_signal(signal.SIGINT)  # Ctrl-C tears down
        assert up.wait(timeout=30) == 0
        _assert_gone(lab_id, names, [])
    finally:
        _stop(up, lab_id)
    # "down LAB_ID" removes a live lab owned by another process (only that one: the
    # module's fixtures are still up); its owner then exits cleanly on SIGTERM.
    up, lab_id = _lab_up()
    try:
        assert _ulvs_lab("down", "ffffff").returncode == 1  # unknown id
        out = _ulvs_lab("down", lab_id)
        assert out.returncode == 0 and out.stdout == f"removed lab {lab_id}\n"
        assert not [n for n in list_namespaces() if n.startswith(f"ulvs-{lab_id}-")]
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=30) == 0
    finally:
        _stop(up, lab_id)
