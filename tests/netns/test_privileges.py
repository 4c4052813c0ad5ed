"""Least privilege, end to end: ``ulvs run`` in the lab with CAP_NET_ADMIN and CAP_NET_RAW only.

* root with every other capability dropped (``setpriv``: inheritable, ambient and bounding sets
  reduced to the two) serves NAT on both backends; without CAP_NET_RAW or CAP_NET_ADMIN it stops
  at once with one line naming the missing capability and exit status 2;
* an unprivileged user holding the two as *ambient* capabilities (systemd's
  ``AmbientCapabilities=``, ``DynamicUser=``) serves, with ``nft`` run as its child;
* an unprivileged user whose interpreter carries them as *file* capabilities and who has none
  to inherit (the Docker image: ``setcap`` on the venv's python) serves too: ulvs makes them
  ambient so ``nft`` keeps them;
* a control socket directory the user cannot write is one line and exit status 2.

The unprivileged runs need an interpreter that user can execute: this checkout's, or the
system's Python of the same version with this venv's packages (a scratch venv made for the
test); without one they are skipped, saying why.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ulvs.lab import Lab
from ulvs.lab.director import nat_rules
from ulvs.runtime import caps

pytestmark = pytest.mark.netns
NOBODY = 65534
TWO = "+net_admin,+net_raw"
WAIT = 30.0


def setpriv(inherit: str, *, user: int | None = None, bounding: str | None = None) -> list[str]:
    """A ``setpriv`` prefix: ``inherit`` as inheritable and ambient capabilities, ``bounding``
    (default: the same) as the bounding set, optionally as uid/gid ``user``."""
    argv = ["setpriv"]
    if user is not None:
        argv += [f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    if inherit:
        argv += [f"--inh-caps=-all,{inherit}", f"--ambient-caps=-all,{inherit}"]
    argv += [f"--bounding-set=-all,{bounding if bounding is not None else inherit}", "--"]
    return argv


@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    log: Path
    sock: Path

    def text(self) -> str:
        return self.log.read_text()


@contextmanager
def ulvs_run(lab: Lab, prefix: list[str], python: str, *, backend: str = "afpacket", owner: int = 0,
             extra: tuple[str, ...] = ()) -> Iterator[Run]:
    """``prefix python -m ulvs run`` in the director namespace with NAT rules, the control socket
    in a scratch directory owned by ``owner``; stopped by PID on the way out."""
    tmp = Path(tempfile.mkdtemp(prefix="ulvs-priv-"))
    (tmp / "rules").write_text(nat_rules("rr"))
    os.chmod(tmp / "rules", 0o644)
    os.chmod(tmp, 0o755)
    os.chown(tmp, owner, owner)
    log = tmp / "daemon.log"
    argv = [*prefix, python, "-m", "ulvs", "run", "--config", str(tmp / "rules"), "--control-socket",
            str(tmp / "ulvs.sock"), "--backend", backend, "--metrics-listen", "off", *extra]
    if backend == "afpacket":
        argv += ["-i", lab.director_if_client, "-i", lab.director_if_server]
    with open(log, "w") as f:
        proc = lab.popen("director", argv, stderr=f)
    run = Run(proc, log, tmp / "ulvs.sock")
    try:
        yield run
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def serving(lab: Lab, run: Run) -> None:
    """Wait until the daemon runs, then require it to serve NAT and to stop cleanly later."""
    deadline = time.monotonic() + WAIT
    while "ulvs running" not in run.text():
        assert run.proc.poll() is None, f"ulvs run exited with {run.proc.returncode}:\n{run.text()}"
        assert time.monotonic() < deadline, f"ulvs run did not come up:\n{run.text()}"
        time.sleep(0.05)
    got = [r.server for r in lab.http_get("client", lab.vip, count=3)]
    assert got == ["rs1", "rs2", "rs3"], run.text()
    assert lab.udp_echo("client", lab.vip, "cap", count=1) == ["rs1:cap"]


def stops_cleanly(lab: Lab, run: Run) -> None:
    os.kill(run.proc.pid, signal.SIGTERM)
    assert run.proc.wait(timeout=20) == 0, run.text()
    assert "ulvs_" not in lab.run("director", ["nft", "list", "tables"]).stdout       # table removed


def fails_at_once(run: Run) -> str:
    """The daemon exits with status 2 and one line; returns it."""
    assert run.proc.wait(timeout=WAIT) == 2, run.text()
    lines = run.text().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def held(pid: int) -> caps.CapSets:
    return caps.current(pid)


BIT = {"net_admin": 1 << caps.CAP_NET_ADMIN, "net_raw": 1 << caps.CAP_NET_RAW}


# -- root with two capabilities ---------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["afpacket", "tap"])
def test_root_with_only_net_admin_and_net_raw_serves(backend: str) -> None:
    with Lab() as lab, ulvs_run(lab, setpriv(TWO), sys.executable, backend=backend) as run:
        serving(lab, run)
        sets = held(run.proc.pid)
        assert sets.effective == sets.bounding == BIT["net_admin"] | BIT["net_raw"]
        stops_cleanly(lab, run)


@pytest.mark.parametrize(("keep", "missing"), [("+net_admin", "CAP_NET_RAW"), ("+net_raw", "CAP_NET_ADMIN")])
def test_a_missing_capability_is_one_line_and_exit_2(keep: str, missing: str) -> None:
    with Lab() as lab, ulvs_run(lab, setpriv(keep), sys.executable) as run:
        line = fails_at_once(run)
        assert line.endswith(f"ERROR ulvs run needs {missing} (run as root or grant the capability)")
        assert "ulvs_" not in lab.run("director", ["nft", "list", "tables"]).stdout   # nothing was set up


# -- an unprivileged user ---------------------------------------------------------------------------
def python_for(user: int, tmp: Path, *, copy: bool) -> str:
    """An interpreter ``user`` can run, seeing this venv's packages: this one if it can, else the
    system's of the same version in a scratch venv (``copy``: a real file, for setcap)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [Path(sys.executable).resolve(), Path("/usr/bin") / version]
    for i, real in enumerate(candidates):
        if not real.exists():
            continue
        venv = tmp / f"venv{i}"
        (venv / "bin").mkdir(parents=True)
        (venv / "lib").mkdir()
        (venv / "lib" / version).mkdir()
        os.symlink(sysconfig.get_paths()["purelib"], venv / "lib" / version / "site-packages")
        (venv / "pyvenv.cfg").write_text(f"home = {real.parent}\ninclude-system-site-packages = false\n")
        exe = venv / "bin" / "python"
        if copy:
            shutil.copy2(real, exe)
        else:
            os.symlink(real, exe)
        # it must also start itself again (the daemon's children are sys.executable)
        code = ("import subprocess, sys, ulvs, uvloop, pyroute2, prometheus_client; "
                "subprocess.run([sys.executable, '-c', 'import ulvs'], check=True); print(sys.prefix)")
        probe = subprocess.run(setpriv("", user=user, bounding="+net_admin") + [str(exe), "-c", code],
                               capture_output=True, text=True, timeout=60)
        if probe.returncode == 0 and probe.stdout.strip() == str(venv):
            return str(exe)
    tried = ", ".join(map(str, candidates))
    pytest.skip(f"no Python uid {user} can run with this venv's packages (tried {tried})")


@pytest.fixture
def scratch() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="ulvs-py-"))
    os.chmod(tmp, 0o755)
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def test_an_unprivileged_user_with_ambient_capabilities_serves(scratch: Path) -> None:
    python = python_for(NOBODY, scratch, copy=False)
    with Lab() as lab, ulvs_run(lab, setpriv(TWO, user=NOBODY), python, owner=NOBODY) as run:
        serving(lab, run)
        assert os.stat(run.sock).st_uid == NOBODY
        assert "capabilities made ambient" not in run.text()               # systemd already did
        stops_cleanly(lab, run)


def test_an_unprivileged_user_with_file_capabilities_hands_them_to_nft(scratch: Path) -> None:
    if shutil.which("setcap") is None:
        pytest.skip("setcap is not installed (Debian: apt-get install libcap2-bin)")
    python = python_for(NOBODY, scratch, copy=True)
    subprocess.run(["setcap", "cap_net_admin,cap_net_raw+ep", python], check=True)
    # as docker runs a non-root USER with cap_drop ALL + cap_add NET_ADMIN NET_RAW: nothing to
    # inherit, the two in the bounding set, the interpreter's file capabilities grant them
    prefix = setpriv("", user=NOBODY, bounding=TWO)
    with Lab() as lab, ulvs_run(lab, prefix, python, owner=NOBODY) as run:
        serving(lab, run)
        assert "capabilities made ambient for the children: CAP_NET_ADMIN, CAP_NET_RAW" in run.text()
        sets = held(run.proc.pid)
        assert sets.ambient == sets.effective == BIT["net_admin"] | BIT["net_raw"]
        assert f"ulvs_{run.proc.pid}" in lab.run("director", ["nft", "list", "tables"]).stdout
        stops_cleanly(lab, run)
    # and without the file capabilities the same user is told what is missing
    subprocess.run(["setcap", "-r", python], check=True)
    with Lab() as lab, ulvs_run(lab, prefix, python, owner=NOBODY) as run:
        assert "ulvs run needs CAP_NET_RAW" in fails_at_once(run)


def test_a_socket_directory_the_user_cannot_write_is_one_line(scratch: Path) -> None:
    python = python_for(NOBODY, scratch, copy=False)
    with Lab() as lab, ulvs_run(lab, setpriv(TWO, user=NOBODY), python, owner=0) as run:
        line = fails_at_once(run)
        assert "cannot create the control socket in" in line and f"uid {NOBODY}" in line, line
        assert "ulvs_" not in lab.run("director", ["nft", "list", "tables"]).stdout
