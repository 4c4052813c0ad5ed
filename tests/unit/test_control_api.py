"""The versioned control API, and its status and explain commands (in-process, and through
``ulvs status`` / ``ulvs explain`` over a real unix socket)."""

from __future__ import annotations

import io
import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_control import web_core
from tests.unit.test_ulvsadm_socket import Daemon, _start
from ulvs.cli.daemonctl import render_status
from ulvs.cli.main import build_parser
from ulvs.cli.main import main as ulvs_main
from ulvs.core import Core, Verdict
from ulvs.packet import builder
from ulvs.runtime.control import PROTOCOL_VERSION, apply_request, handle_line

A = ipaddress.IPv4Address


def syn(core: Core, cport: int, caddr: str = "10.0.0.1", now: float = 1.0) -> None:
    f = bytearray(builder.tcp_frame("02:00:00:00:00:01", "02:00:00:00:00:02", caddr, "10.0.0.100",
                                    cport, 80, 0x02))
    assert core.process(f, 1, now)[0] == Verdict.FORWARD


# ---------------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------------
def test_replies_carry_the_version_and_requests_may_too() -> None:
    core = web_core()
    assert PROTOCOL_VERSION == 1
    assert apply_request(core, {"cmd": "get_timeouts"}, 0.0)["v"] == 1
    assert apply_request(core, {"v": 1, "cmd": "get_timeouts"}, 0.0)["ok"] is True
    bad = apply_request(core, {"v": 1, "cmd": "nope"}, 0.0)
    assert bad["ok"] is False and bad["v"] == 1


@pytest.mark.parametrize(("v", "shown"), [(2, "2"), (0, "0"), ("1", "1"), (True, "true"), (None, "null"),
                                          (1.0, "1.0")])
def test_an_unknown_version_is_refused_unapplied(v: Any, shown: str) -> None:
    core = web_core()
    reply = apply_request(core, {"v": v, "cmd": "clear"}, 0.0)
    assert reply == {"ok": False, "v": 1,
                     "error": f"unsupported protocol version {shown} (this daemon speaks 1)"}
    assert core.services                                   # nothing was cleared
    line = handle_line(core, json.dumps({"v": 7, "cmd": "clear"}), 0.0)
    assert json.loads(line)["error"] == "unsupported protocol version 7 (this daemon speaks 1)"


def test_a_failed_batch_is_still_atomic() -> None:
    core = web_core()
    before = apply_request(core, {"cmd": "snapshot"}, 0.0)["snapshot"]
    reply = apply_request(core, {"v": 1, "cmd": "batch", "requests": [
        {"cmd": "clear"},
        {"cmd": "add_service", "service": {"proto": "tcp", "vaddr": "10.0.0.9", "vport": 80, "sched": "no"}},
    ]}, 0.0)
    assert reply["ok"] is False and reply["v"] == 1 and "v" not in reply["reply"]
    assert apply_request(core, {"cmd": "snapshot"}, 0.0)["snapshot"] == before


# ---------------------------------------------------------------------------------------------
# status and explain requests
# ---------------------------------------------------------------------------------------------
def test_status() -> None:
    core = web_core()
    syn(core, 1000)
    f = bytearray(bytes(12) + b"\x08\x00\x45" + bytes(5))
    assert core.process(f, 1, 1.0)[2] is not None           # a truncated frame: a counted drop
    st = apply_request(core, {"v": 1, "cmd": "status"}, 2.0)["status"]
    assert st["conn_table"] == {"count": 1, "limit": 1024, "states": {"SYN_RECV": 1}}
    assert sum(st["drops"].values()) == 1 and st["drops"]["no_dest"] == 0
    assert st["snapshot"]["conns"] is None
    (svc,) = st["snapshot"]["services"]
    assert svc["service"]["vaddr"] == "10.0.0.100" and len(svc["dests"]) == 2
    assert sum(d["inactconns"] for d in svc["dests"]) == 1
    assert st["snapshot"]["timeouts"] == {"tcp": 900, "tcpfin": 120, "udp": 300}


def test_explain_request_changes_nothing() -> None:
    core = web_core()
    syn(core, 1000)
    before = apply_request(core, {"cmd": "snapshot"}, 2.0)
    req = {"v": 1, "cmd": "explain", "proto": "tcp", "caddr": "10.0.0.1", "cport": 2000,
           "vaddr": "10.0.0.100", "vport": 80}
    e = apply_request(core, req, 2.0)["explanation"]
    assert e["kind"] == "scheduled" and e["sched"] == "wlc" and e["method"] == "masq"
    assert apply_request(core, {"cmd": "snapshot"}, 2.0) == before
    e = apply_request(core, {**req, "cport": 1000}, 2.0)["explanation"]
    assert e["kind"] == "connection" and e["state"] == "SYN_RECV"
    e = apply_request(core, {**req, "vport": 81}, 2.0)["explanation"]
    assert e["kind"] == "no_service" and e["daddr"] is None
    bad = apply_request(core, {**req, "proto": "fwm"}, 2.0)
    assert bad["ok"] is False and "field 'proto' must be tcp/udp" in bad["error"]
    assert apply_request(core, {**req, "cport": 70000}, 2.0)["ok"] is False


# ---------------------------------------------------------------------------------------------
# ulvs status / explain / reload over a socket
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    for d in _start(tmp_path, "ulvs.sock"):
        assert d.ok("-A", "-t", "10.0.0.100:80", "-s", "rr") == ""
        for rs in ("192.168.1.11", "192.168.1.12"):
            d.ok("-a", "-t", "10.0.0.100:80", "-r", f"{rs}:80", "-m", "-w", "2")
        yield d


def ulvs(*argv: str) -> tuple[int, str, str]:
    from ulvs.cli import daemonctl

    args = build_parser().parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    rc = daemonctl.run(args, stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def test_ulvs_status_json_and_text(daemon: Daemon) -> None:
    rc, out, err = ulvs("status", "--json", "--socket", daemon.path)
    assert (rc, err) == (0, "")
    st = json.loads(out)
    assert [d["dest"]["daddr"] for d in st["snapshot"]["services"][0]["dests"]] == \
        ["192.168.1.11", "192.168.1.12"]
    rc, out, err = ulvs("status", "--socket", daemon.path)
    assert (rc, err) == (0, "")
    assert "TCP 10.0.0.100:80" in out and "-> 192.168.1.12:80" in out and "Masq" in out
    assert "connections  0 of 4,096" in out and "drops        none" in out


def test_render_status_with_daemon_facts() -> None:
    core = web_core()
    st = apply_request(core, {"cmd": "status"}, 0.0)["status"]
    st["daemon"] = {"pid": 42, "version": "0.1.0", "protocol": 1, "uptime": 3725.5, "backend": "afpacket",
                    "workers": 2, "worker_pids": [43, 44], "interfaces": ["eth0", "eth1"],
                    "control_socket": "/run/ulvs/ulvs.sock", "control_socket_mode": "0660",
                    "control_group": "ulvs", "conn_limit": 1024, "config": "/etc/ulvs/rules",
                    "last_reload": {"at": 0, "by": "SIGHUP", "ok": False, "error": "line 2: bad"}}
    text = render_status(st)
    assert "ulvs 0.1.0, pid 42, up 1h2m5s, afpacket backend, 2 workers (pids 43, 44)" in text
    assert "/run/ulvs/ulvs.sock (mode 0660, group ulvs), protocol v1" in text
    assert "last reload: FAILED: line 2: bad (by SIGHUP)" in text
    assert "\x1b[" not in text


def test_ulvs_explain(daemon: Daemon) -> None:
    rc, out, err = ulvs("explain", "tcp", "10.0.0.1:1234", "10.0.0.100:80", "--socket", daemon.path)
    assert (rc, err) == (0, "")
    assert "scheduler rr of TCP 10.0.0.100:80 picks 192.168.1.11:80" in out
    assert "nothing was changed" in out
    # it changed nothing: asking again gives the same answer
    assert ulvs("explain", "tcp", "10.0.0.1:1234", "10.0.0.100:80", "--socket", daemon.path)[1] == out
    rc, out, _ = ulvs("explain", "udp", "10.0.0.1:1234", "10.0.0.100:80", "--json", "--socket", daemon.path)
    assert rc == 0 and json.loads(out)["kind"] == "no_service"
    rc, _, err = ulvs("explain", "tcp", "10.0.0.1", "10.0.0.100:80", "--socket", daemon.path)
    assert rc == 2 and "the client must be IPV4ADDR:PORT" in err


def test_ulvs_reload_needs_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    # the in-process test server is a bare core: "reload" is the daemon's own command
    rc, _, err = ulvs("reload", "--socket", daemon.path)
    assert rc == 1 and "unknown command 'reload'" in err
    rc, _, err = ulvs("status", "--socket", str(tmp_path / "nothing.sock"))
    assert rc == 1 and "cannot connect to ulvs daemon" in err


def test_ulvs_main_dispatches(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert ulvs_main(["status", "--json", "--socket", daemon.path]) == 0
    assert json.loads(capsys.readouterr().out)["conn_table"]["limit"] == 4096
