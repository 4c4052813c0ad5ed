"""The container entrypoint (``docker/entrypoint.sh``) without Docker: run with ``sh`` (dash on
Debian) in a lab director's namespace with the environment a container gets.

It turns the environment into the ``ulvs run`` command line and becomes the daemon (``exec``),
which serves the lab and stops cleanly on SIGTERM; arguments are added after the environment's
options, so they win; a keepalived.conf is run as one.  A configuration that would not run
stops it before anything starts, with check-config's message and exit status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ulvs.lab import Lab

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docker" / "entrypoint.sh"
ULVS = str(Path(sys.executable).with_name("ulvs"))
VIP = "10.77.1.100"
WAIT = 30.0

TOML = f"""[[service]]
protocol = "tcp"
vip = "{VIP}"
port = 80
scheduler = "rr"
forwarding = "masq"
""" + "".join(f'\n[[service.dest]]\naddress = "10.77.2.1{i}"\n' for i in (1, 2, 3))

KEEPALIVED = f"""virtual_server {VIP} 80 {{
    lb_algo rr
    lb_kind NAT
    protocol TCP
""" + "".join(f"    real_server 10.77.2.1{i} 80 {{\n        weight 1\n    }}\n" for i in (1, 2, 3)) + "}\n"


def environment(tmp: Path, lab: Lab, **extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ULVS_BIN": ULVS,
           "ULVS_CONFIG": str(tmp / "ulvs.toml"), "ULVS_CONTROL_SOCKET": str(tmp / "ulvs.sock"),
           "ULVS_INTERFACES": f"{lab.director_if_client} {lab.director_if_server}",
           "ULVS_METRICS_LISTEN": "127.0.0.1:9599"}
    env.update(extra)
    return env


@contextmanager
def scratch() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="ulvs-entry-"))
    try:
        yield tmp
    finally:
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.unlink() if not p.is_dir() else p.rmdir()
        tmp.rmdir()


def start(lab: Lab, env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "w") as f:
        return lab.popen("director", ["sh", str(SCRIPT), *args], env=env, stderr=f)


def wait_running(proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + WAIT
    while "ulvs running" not in log.read_text():
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def status(lab: Lab, sock: Path) -> dict[str, object]:
    out = lab.run("director", [ULVS, "status", "--json", "--socket", str(sock)])
    assert out.returncode == 0, out.stderr
    st: dict[str, object] = json.loads(out.stdout)
    return st


def test_the_entrypoint_becomes_a_working_director() -> None:
    with Lab() as lab, scratch() as tmp:
        (tmp / "ulvs.toml").write_text(TOML)
        log = tmp / "log"
        proc = start(lab, environment(tmp, lab, ULVS_CONN_LIMIT="555"), "--conn-limit", "777", log=log)
        try:
            wait_running(proc, log)
            # exec: the entrypoint's process is the daemon itself (SIGTERM reaches it)
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            assert cmdline[1:3] == [ULVS.encode(), b"run"], cmdline              # python, ulvs, run
            text = log.read_text()
            first = text.splitlines()[0]
            ifs = f"--interface {lab.director_if_client} --interface {lab.director_if_server}"
            want = f"ulvs-entrypoint: exec {ULVS} run --config {tmp / 'ulvs.toml'} {ifs} "
            assert first.startswith(want), first
            assert [r.server for r in lab.http_get("client", VIP, count=3)] == ["rs1", "rs2", "rs3"]
            st = status(lab, tmp / "ulvs.sock")
            assert st["conn_table"]["limit"] == 777                          # type: ignore[index]
            assert st["daemon"]["metrics"]["listen"] == "127.0.0.1:9599"     # type: ignore[index]
            assert sorted(st["daemon"]["interfaces"]) == sorted(               # type: ignore[index]
                (lab.director_if_client, lab.director_if_server))
        finally:
            code = stop(proc)
        assert code == 0, log.read_text()
        assert "ulvs_" not in lab.run("director", ["nft", "list", "tables"]).stdout


def test_a_keepalived_conf_is_run_as_one() -> None:
    with Lab() as lab, scratch() as tmp:
        (tmp / "lvs.conf").write_text(KEEPALIVED)
        log = tmp / "log"
        env = environment(tmp, lab, ULVS_CONFIG=str(tmp / "lvs.conf"), ULVS_CONFIG_FORMAT="keepalived",
                          ULVS_METRICS_LISTEN="off")
        proc = start(lab, env, log=log)
        try:
            wait_running(proc, log)
            assert f"run --keepalived-conf {tmp / 'lvs.conf'} " in log.read_text()
            assert [r.server for r in lab.http_get("client", VIP, count=3)] == ["rs1", "rs2", "rs3"]
        finally:
            assert stop(proc) == 0, log.read_text()


@pytest.mark.parametrize(("config", "code", "message"), [
    (TOML.replace('address = "10.77.2.12"', 'address = "10.77.2.12"\nweight = 70000'), 4,
     "ulvs.toml:13: service[0].dest[1].weight: 70000 is out of range (allowed: 0..65535)"),
    (None, 3, "ulvs.toml"),
], ids=["invalid", "missing"])
def test_a_configuration_that_would_not_run_stops_it_first(config: str | None, code: int,
                                                           message: str) -> None:
    with Lab() as lab, scratch() as tmp:
        if config is not None:
            (tmp / "ulvs.toml").write_text(config)
        log = tmp / "log"
        proc = start(lab, environment(tmp, lab), log=log)
        assert proc.wait(timeout=WAIT) == code, log.read_text()
        text = log.read_text()
        assert message in text, text
        assert f"ulvs-entrypoint: {tmp / 'ulvs.toml'} would not run (ulvs check-config exit {code}): " \
               "not starting" in text
        assert "ulvs running" not in text and "exec" not in text
        assert "ulvs_" not in lab.run("director", ["nft", "list", "tables"]).stdout


def test_a_bad_format_and_a_command_instead_of_the_director() -> None:
    with Lab() as lab, scratch() as tmp:
        (tmp / "ulvs.toml").write_text(TOML)
        log = tmp / "log"
        proc = start(lab, environment(tmp, lab, ULVS_CONFIG_FORMAT="yaml"), log=log)
        assert proc.wait(timeout=WAIT) == 2
        assert "ULVS_CONFIG_FORMAT=yaml: use toml, keepalived, ipvsadm or lvs.cf" in log.read_text()
        out = lab.run("director", ["sh", str(SCRIPT), ULVS, "check-config", str(tmp / "ulvs.toml")],
                      env=environment(tmp, lab))
        assert out.returncode == 0 and "configuration OK: 1 service(s), 3 dest(s)" in out.stdout, out.stderr
