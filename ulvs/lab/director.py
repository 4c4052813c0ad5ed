"""Run a real ``ulvs run`` daemon inside a lab's director namespace (demo, tests, benchmarks)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ulvs.lab.topology import Lab

PY = sys.executable


class DirectorError(RuntimeError):
    """The daemon did not start, or did not stop cleanly."""


@dataclass
class Director:
    lab: Lab
    proc: subprocess.Popen[bytes]
    sock: str
    log: Path
    backend: str
    role: str = "director"
    killed: bool = False

    def ulvsadm(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        out: subprocess.CompletedProcess[str] = self.lab.run(
            self.role, [PY, "-m", "ulvs.cli.ulvsadm", "--socket", self.sock, *args], input=stdin)
        return out

    def status(self) -> dict[str, Any]:
        """``ulvs status --json`` of this director."""
        out = self.lab.run(self.role, [PY, "-m", "ulvs", "status", "--socket", self.sock, "--json"])
        if out.returncode:
            raise RuntimeError(f"ulvs status failed: {out.stderr}")
        status: dict[str, Any] = json.loads(out.stdout)
        return status

    def kill(self) -> None:
        """A crash: SIGKILL to the daemon's whole process group (its health monitor and VRRP
        speaker too), so nothing resigns gracefully."""
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def listing(self, *args: str) -> str:
        out = self.ulvsadm("-L", "-n", *args)
        if out.returncode:
            raise RuntimeError(f"ulvsadm -L -n failed: {out.stderr}")
        return str(out.stdout)

    def log_text(self) -> str:
        return self.log.read_text()


def nat_rules(sched: str = "rr", weights: tuple[int, ...] = (1, 1, 1), method: str = "-m",
              udp: bool = True) -> str:
    lines = [f"-A -t 10.77.1.100:80 -s {sched}"]
    lines += [f"-a -t 10.77.1.100:80 -r 10.77.2.1{i + 1}:80 {method} -w {w}"
              for i, w in enumerate(weights)]
    if udp:
        lines += ["-A -u 10.77.1.100:5353 -s rr"]
        lines += [f"-a -u 10.77.1.100:5353 -r 10.77.2.1{i + 1}:5353 {method} -w 1"
                  for i in range(len(weights))]
    return "\n".join(lines) + "\n"


def stop_by_pid(proc: subprocess.Popen[bytes], grace: float = 20.0) -> bool:
    """SIGTERM to ``proc`` (by PID), SIGKILL after ``grace`` seconds; True if it stopped on
    SIGTERM (or had already exited)."""
    if proc.poll() is not None:
        return True
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
        return True
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return False


@contextmanager
def director(lab: Lab, rules: str, backend: str = "afpacket",
             extra: tuple[str, ...] = (), config_name: str = "rules",
             role: str = "director", config_flag: str = "--config") -> Iterator[Director]:
    """Start the daemon with ``rules`` in the namespace of ``role`` (``director`` or
    ``director2``) and wait until its control socket answers; on exit stop it with SIGTERM (by
    PID) and require a clean exit (a test that killed it itself is not held to that)."""
    tmp = Path(tempfile.mkdtemp(prefix="ulvs-e2e-"))
    cfg = tmp / config_name
    cfg.write_text(rules)
    sock = str(tmp / "ulvs.sock")
    log = tmp / "daemon.log"
    args = [PY, "-m", "ulvs", "run", config_flag, str(cfg), "--control-socket", sock, "--backend", backend]
    if backend == "afpacket":
        args += ["-i", lab.director_if_client, "-i", lab.director_if_server]
    args += list(extra)
    with open(log, "w") as logf:
        proc = lab.popen(role, args, stderr=logf)
    d = Director(lab, proc, sock, log, backend, role)
    try:
        deadline = time.monotonic() + 20
        while "ulvs running" not in log.read_text():
            if proc.poll() is not None:
                raise DirectorError(f"ulvs run exited with {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise DirectorError(f"ulvs run did not come up:\n{log.read_text()}")
            time.sleep(0.05)
        yield d
    finally:
        if not stop_by_pid(proc):
            raise DirectorError("ulvs run did not stop on SIGTERM")
    if proc.returncode != 0 and not d.killed:
        raise DirectorError(f"ulvs run exited with {proc.returncode}:\n{log.read_text()}")
