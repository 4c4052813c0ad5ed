"""PING_CHECK over the unprivileged ICMP datagram socket, and an echo that is never answered.

Each test runs a probe in a fresh, anonymous network namespace (``unshare --net``): there
``net.ipv4.ping_group_range`` can allow datagram ICMP sockets without touching the host's
setting, and a veth pair with nothing behind it gives an address that never answers.  The namespace ends
with the child process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.netns

PROBE = textwrap.dedent("""
    import asyncio, ipaddress, json, sys
    from ulvs.config.schema import CheckSpec
    from ulvs.health.base import Target, create
    from ulvs.health.checkers import ping

    sock, raw = ping.open_icmp_socket()
    sock.close()
    spec = CheckSpec("PING_CHECK", (("connect_timeout", 0.3),))
    result = asyncio.run(create(spec, Target(ipaddress.IPv4Address(sys.argv[1]), 0)).probe())
    print(json.dumps({"raw": raw, "ok": result.ok, "detail": result.detail}))
""")


def probe_in_netns(setup: str, address: str) -> dict[str, object]:
    script = f"set -e; ip link set lo up; {setup}; exec {sys.executable} -c \"$0\" {address}"
    out = subprocess.run(["unshare", "--net", "sh", "-c", script, PROBE], check=True,
                         capture_output=True, text=True, timeout=30)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_ping_over_the_datagram_socket() -> None:
    result = probe_in_netns("echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range", "127.0.0.1")
    assert result["raw"] is False
    assert result["ok"] is True and "echo reply from 127.0.0.1" in str(result["detail"])


def test_ping_unanswered_times_out() -> None:
    setup = ("ip link add v0 type veth peer name v1; ip addr add 10.99.0.1/24 dev v0; "
             "ip link set v0 up; ip link set v1 up")   # 10.99.0.2: ARP goes unanswered
    result = probe_in_netns(setup, "10.99.0.2")
    assert result["ok"] is False and "no answer within 0.3 s" in str(result["detail"])
