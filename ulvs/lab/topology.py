"""The lab: the canonical LVS-NAT/DR topology built from network namespaces, with guaranteed teardown.

Theory of operation
-------------------
Everything lives in namespaces this module creates; the host (root namespace) is never touched:
veth pairs are created from inside the ``lan`` namespace with their peer placed directly in the
member's namespace (``ip -n LAN link add ... peer name eth0 netns MEMBER``), so no interface ever
appears in the root namespace.  Because of that, interface names inside a lab are fixed (``eth0``,
``cli0``, ``srv0``); only namespace names, which are global, carry the lab id::

    ulvs-<6 hex>-client  ulvs-<6 hex>-director  [ulvs-<6 hex>-director2]  ulvs-<6 hex>-lan
    ulvs-<6 hex>-rs1 .. rsN

Addresses (all in 10.77.0.0/16)::

    client LAN 10.77.0.0/24 (bridge br1 in ns lan)     server LAN 10.77.2.0/24 (bridge br0 in ns lan)
      client    eth0 10.77.0.10 (.. .30)                 rsN       eth0 10.77.2.(10+N)
      director  cli0 10.77.0.1                           director  srv0 10.77.2.1 + 10.77.2.254
      director2 cli0 10.77.0.2                           director2 srv0 10.77.2.2
    VIP 10.77.1.100 (its own /24 so it is clearly virtual; the lab does not configure it on a
    director: ulvs serves it).

Routing: the client's default route goes via the director (10.77.0.1; with two directors via the
floating 10.77.0.254, held by ``director``), so the VIP is reached through the director.  Real
servers' default route goes via the floating NAT gateway 10.77.2.254, a secondary address on the
director's ``srv0`` that VRRP will later move.  Directors forward (``ip_forward=1``), with
``rp_filter=0`` and ``accept_local=1`` because LVS paths are asymmetric and, in DR, replies carry the
VIP as source (which the director may hold locally once ulvs serves it).

Both LANs are bridges in one ``lan`` namespace so every director and real server shares an L2
segment (DR rewrites only the MAC, so it needs one) and a second director can join either side.

DR (``dr=True``): each real server has the VIP as 10.77.1.100/32 on ``lo`` and
``arp_ignore=1``/``arp_announce=2`` (``all``, ``default`` and so ``eth0``), so it accepts VIP
traffic without answering ARP for it.  DR replies go straight from the real server to the client,
but the director is the only router between the two LANs: the servers keep their default route via
10.77.2.254 and the director's *kernel* forwards the replies (source VIP) to the client LAN.  ulvs
never sees them, exactly as with IPVS/DR behind a router.

Each real server runs ``python -m ulvs.lab.servers`` (HTTP name server with ``/bytes/N`` and a
UDP echo on 5353), started and tracked by PID.  IPv6 is disabled in every namespace by default so
the segments carry no ND/MLD chatter.  Offloads are left alone unless ``offloads_off=True``, which
runs ``ethtool -K IF tso off gso off gro off tx off`` on every veth end when ethtool is installed
and otherwise does the same through the ethtool ioctls (``ulvs/io/ethtool.py``), logging a note.

Teardown (``down()``, the context manager, ``atexit``) kills the processes the lab started (their
process groups, by PID), then any process still inside the lab's namespaces (found by namespace
inode, killed by PID; without that a straggler would keep the namespace and its veths alive), then
deletes the namespaces, which removes the veths.  Each lab records its owner PID (with its start
time, against PID reuse) in ``/run/ulvs-lab/<id>/lab.json`` before creating anything, so
:func:`cleanup_stale` can remove labs whose owner died.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger("ulvs.lab")

# --- names and addresses ---------------------------------------------------------------------------

NS_PREFIX = "ulvs-"
RUN_DIR = Path("/run/ulvs-lab")
NETNS_DIR = Path("/run/netns")
_NS_RE = re.compile(r"^ulvs-([0-9a-f]{6})-(client|director2?|lan|rs[0-9]+)$")

VIP = "10.77.1.100"
CLIENT_NET = "10.77.0.0/24"
VIP_NET = "10.77.1.0/24"
SERVER_NET = "10.77.2.0/24"
DIRECTOR_CLIENT_ADDRS = ("10.77.0.1", "10.77.0.2")  # director, director2 on cli0
DIRECTOR_SERVER_ADDRS = ("10.77.2.1", "10.77.2.2")  # director, director2 on srv0
CLIENT_FLOAT_GW = "10.77.0.254"  # client gateway with two directors (held by director)
NAT_GW = "10.77.2.254"  # real servers' gateway, floating; held by director
CLIENT_FIRST = 10  # client addresses 10.77.0.10 ..
MAX_CLIENTS = 21  # .. 10.77.0.30
SERVER_FIRST = 11  # rs1 = 10.77.2.11 ..
MAX_SERVERS = 40
HTTP_PORT = 80
UDP_PORT = 5353

CLIENT_IF = "eth0"  # client's only interface
SERVER_IF = "eth0"  # each real server's LAN interface
DIRECTOR_IF_CLIENT = "cli0"
DIRECTOR_IF_SERVER = "srv0"
SERVER_BRIDGE = "br0"  # in ns lan
CLIENT_BRIDGE = "br1"  # in ns lan

_HERE = Path(__file__).resolve().parent
TRAFFIC_SCRIPT = _HERE / "traffic.py"
OFFLOAD_SCRIPT = _HERE.parent / "io" / "ethtool.py"
_READY_TIMEOUT = 15.0
_KILL_GRACE = 2.0


class LabError(RuntimeError):
    """Building or driving the lab failed (an ``ip`` command, a server that did not start...)."""


@dataclass(frozen=True, slots=True)
class LabInfo:
    """One lab found on the host: its id, namespaces and whether its owner process still lives."""

    lab_id: str
    namespaces: tuple[str, ...]
    owner_pid: int | None
    alive: bool


@dataclass(frozen=True, slots=True)
class HttpResult:
    """One HTTP request made by :meth:`Lab.http_get` (``error`` set and the rest empty on failure)."""

    src: str | None
    status: int | None
    server: str | None  # the X-Real-Server header
    length: int
    sha256: str | None
    body: str | None  # only for bodies up to 4 KiB
    error: str | None


# --- small helpers ---------------------------------------------------------------------------------


def _ip(args: Sequence[str], *, ns: str | None = None, batch: Sequence[str] | None = None) -> str:
    """Run one ``ip`` command (or a ``-batch`` of them) optionally inside ``ns``; raise LabError."""
    argv = ["ip"]
    if ns is not None:
        argv += ["-n", ns]
    if batch is not None:
        argv += ["-batch", "-"]
    argv += list(args)
    proc = subprocess.run(
        argv,
        input="\n".join(batch) + "\n" if batch is not None else None,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        what = " ".join(argv) if batch is None else f"{' '.join(argv)} <<{list(batch)}"
        raise LabError(f"{what}: {proc.stderr.strip() or 'exit ' + str(proc.returncode)}")
    return proc.stdout


def _proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def _owner_alive(pid: int | None, start: int | None) -> bool:
    return pid is not None and _proc_start_time(pid) is not None and _proc_start_time(pid) == start


def list_namespaces() -> list[str]:
    """All named network namespaces (``ip netns list``)."""
    out = _ip(["netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pids_in_namespaces(names: Sequence[str]) -> dict[str, list[int]]:
    """PIDs whose network namespace is one of the named ones, matched by nsfs inode."""
    keys: dict[tuple[int, int], str] = {}
    for name in names:
        try:
            st = os.stat(NETNS_DIR / name)
        except OSError:
            continue
        keys[(st.st_dev, st.st_ino)] = name
    found: dict[str, list[int]] = {name: [] for name in names}
    if not keys:
        return found
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        owner = keys.get((st.st_dev, st.st_ino))
        if owner is not None:
            found[owner].append(int(entry))
    return found


def _kill_pids_in(names: Sequence[str]) -> list[int]:
    """SIGKILL every process left inside the named namespaces; return the PIDs signalled."""
    killed: list[int] = []
    for pids in _pids_in_namespaces(names).values():
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + _KILL_GRACE
    while killed and time.monotonic() < deadline:
        if not any(_running(pid) for pid in killed):
            break
        time.sleep(0.01)
    return killed


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a zombie has already left its namespaces; its
    parent, maybe another process's, reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _delete_namespaces(names: Sequence[str]) -> None:
    if names:
        # -force: keep going past namespaces that are already gone.
        subprocess.run(
            ["ip", "-force", "-batch", "-"],
            input="".join(f"netns del {n}\n" for n in names),
            capture_output=True,
            text=True,
            timeout=30,
        )


def _read_record(lab_id: str) -> dict[str, Any]:
    try:
        data = json.loads((RUN_DIR / lab_id / "lab.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def status() -> list[LabInfo]:
    """Every lab on this host: namespaces grouped by lab id, plus labs known only by their record."""
    groups: dict[str, list[str]] = {}
    for name in list_namespaces():
        m = _NS_RE.match(name)
        if m:
            groups.setdefault(m.group(1), []).append(name)
    if RUN_DIR.is_dir():
        for entry in RUN_DIR.iterdir():
            if re.fullmatch(r"[0-9a-f]{6}", entry.name):
                groups.setdefault(entry.name, [])
    infos = []
    for lab_id, names in sorted(groups.items()):
        rec = _read_record(lab_id)
        pid = rec.get("owner_pid")
        start = rec.get("owner_start")
        infos.append(
            LabInfo(
                lab_id,
                tuple(sorted(names)),
                pid if isinstance(pid, int) else None,
                _owner_alive(
                    pid if isinstance(pid, int) else None, start if isinstance(start, int) else None
                ),
            )
        )
    return infos


def destroy(lab_id: str) -> None:
    """Remove one lab by id whoever owns it: its processes, namespaces and record."""
    if not re.fullmatch(r"[0-9a-f]{6}", lab_id):
        raise ValueError(f"not a lab id: {lab_id!r}")
    names = [n for n in list_namespaces() if (m := _NS_RE.match(n)) and m.group(1) == lab_id]
    killed = _kill_pids_in(names)
    if killed:
        log.info("lab %s: killed leftover processes %s", lab_id, killed)
    _delete_namespaces(names)
    shutil.rmtree(RUN_DIR / lab_id, ignore_errors=True)


def cleanup_stale() -> list[str]:
    """Destroy labs whose owner process is gone (or unknown); return their ids."""
    stale = [info.lab_id for info in status() if not info.alive]
    for lab_id in stale:
        destroy(lab_id)
    return stale


def destroy_all() -> list[str]:
    """Destroy every lab on this host, live or stale (``ulvs lab down``); return their ids."""
    ids = [info.lab_id for info in status()]
    for lab_id in ids:
        destroy(lab_id)
    return ids


# --- the lab ---------------------------------------------------------------------------------------


class Lab:
    """One LVS test topology in network namespaces; use as ``with Lab() as lab:``.

    ``dr`` prepares the real servers for direct routing; ``directors`` is 1 or 2; ``clients`` is
    how many client addresses (10.77.0.10 upward, at most 21) the one client namespace holds;
    ``servers`` real servers rs1..rsN; ``offloads_off`` switches off tx-checksum/TSO/GSO/GRO on
    every veth end; ``start_servers=False`` leaves the real servers without HTTP/UDP servers;
    ``floating=False`` leaves the floating gateways (10.77.0.254 with two directors, 10.77.2.254)
    unassigned, for VRRP to hold.
    """

    director_if_client = DIRECTOR_IF_CLIENT
    director_if_server = DIRECTOR_IF_SERVER
    client_if = CLIENT_IF
    server_if = SERVER_IF
    vip = VIP
    nat_gateway = NAT_GW
    http_port = HTTP_PORT
    udp_port = UDP_PORT

    # Host-wide views, also reachable as Lab.status() / Lab.cleanup_stale().
    status = staticmethod(status)
    cleanup_stale = staticmethod(cleanup_stale)
    destroy_all = staticmethod(destroy_all)

    def __init__(
        self,
        *,
        dr: bool = False,
        directors: int = 1,
        clients: int = 1,
        servers: int = 3,
        offloads_off: bool = False,
        start_servers: bool = True,
        ipv6: bool = False,
        clean_stale: bool = True,
        floating: bool = True,
    ) -> None:
        if directors not in (1, 2):
            raise ValueError(f"directors must be 1 or 2, got {directors}")
        if not 1 <= clients <= MAX_CLIENTS:
            raise ValueError(f"clients must be 1..{MAX_CLIENTS}, got {clients}")
        if not 1 <= servers <= MAX_SERVERS:
            raise ValueError(f"servers must be 1..{MAX_SERVERS}, got {servers}")
        self.dr = dr
        self.offloads_off = offloads_off
        self.start_servers = start_servers
        self.ipv6 = ipv6
        self.clean_stale = clean_stale
        self.floating = floating
        self.directors: tuple[str, ...] = ("director", "director2")[:directors]
        self.real_servers: tuple[str, ...] = tuple(f"rs{i}" for i in range(1, servers + 1))
        self.client_addrs: tuple[str, ...] = tuple(f"10.77.0.{CLIENT_FIRST + i}" for i in range(clients))
        self.server_addrs: dict[str, str] = {
            rs: f"10.77.2.{SERVER_FIRST + i}" for i, rs in enumerate(self.real_servers)
        }
        self.client_gateway = DIRECTOR_CLIENT_ADDRS[0] if directors == 1 else CLIENT_FLOAT_GW
        self.roles: tuple[str, ...] = ("client", *self.directors, "lan", *self.real_servers)
        self.lab_id = ""
        self.prefix = ""
        self._procs: list[subprocess.Popen[bytes]] = []
        self._server_procs: dict[str, subprocess.Popen[bytes]] = {}
        self._created: list[str] = []
        self._up = False

    # -- names and addresses --

    def ns(self, role: str) -> str:
        """Namespace name of a lab member (``client``, ``director``, ``director2``, ``lan``, ``rsN``).

        A full namespace name of this lab is accepted and returned unchanged.
        """
        if self.prefix and role.startswith(self.prefix) and role[len(self.prefix) :] in self.roles:
            return role
        if role not in self.roles:
            raise KeyError(f"no lab member {role!r}; members are {', '.join(self.roles)}")
        if not self.prefix:
            raise LabError("lab is not up")
        return self.prefix + role

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(self.ns(r) for r in self.roles)

    def addr(self, role: str, side: str = "client") -> str:
        """Primary IPv4 address of a member.

        ``addr("client")`` 10.77.0.10, ``addr("rs2")`` 10.77.2.12, ``addr("director")`` (client side)
        10.77.0.1, ``addr("director", "server")`` 10.77.2.1, ``addr("director2", ...)`` .2.
        """
        if role == "client":
            return self.client_addrs[0]
        if role in self.server_addrs:
            return self.server_addrs[role]
        if role in self.directors:
            i = self.directors.index(role)
            if side == "client":
                return DIRECTOR_CLIENT_ADDRS[i]
            if side == "server":
                return DIRECTOR_SERVER_ADDRS[i]
            raise ValueError(f"side must be 'client' or 'server', got {side!r}")
        raise KeyError(f"no address for {role!r}")

    def mac(self, role: str, ifname: str) -> str:
        """MAC address of ``ifname`` in member ``role`` (e.g. ``lab.mac("rs1", lab.server_if)``)."""
        out = _ip(["-j", "link", "show", "dev", ifname], ns=self.ns(role))
        return str(json.loads(out)[0]["address"])

    # -- running things inside --

    def _argv(self, role: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(role), *argv]

    def run(self, role: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run(argv)`` inside a member's namespace (text, captured output, 60 s timeout
        unless overridden)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(self._argv(role, argv), **kw)

    def python(self, role: str, code: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``python -c code args...`` (this interpreter) inside a member's namespace."""
        return self.run(role, [sys.executable, "-c", code, *args], **kw)

    def popen(self, role: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start a tracked background process in a member's namespace; ``down()`` kills it.

        It gets its own session (so its whole process group can be signalled) and stdin from
        /dev/null unless overridden.  ``ip netns exec`` execs the command, so ``.pid`` is its PID.
        """
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw["start_new_session"] = True
        proc: subprocess.Popen[bytes] = subprocess.Popen(self._argv(role, argv), **kw)
        self._procs.append(proc)
        self._write_record()
        return proc

    @property
    def pids(self) -> list[int]:
        """PIDs of every process the lab started (live or not)."""
        return [p.pid for p in self._procs]

    # -- traffic helpers (run traffic.py inside a namespace) --

    def _traffic(self, role: str, args: Sequence[str], timeout: float) -> list[dict[str, Any]]:
        proc = self.run(role, [sys.executable, "-I", str(TRAFFIC_SCRIPT), *args], timeout=timeout)
        if proc.returncode != 0:
            raise LabError(f"traffic {' '.join(args)} in {role}: {proc.stderr.strip()}")
        result = json.loads(proc.stdout)
        assert isinstance(result, list)
        return result

    def http_get(
        self,
        role: str,
        host: str,
        path: str = "/",
        *,
        port: int = HTTP_PORT,
        count: int = 1,
        keepalive: bool = False,
        src: str | Sequence[str] | None = None,
        timeout: float = 5.0,
    ) -> list[HttpResult]:
        """``count`` HTTP GETs from member ``role`` to ``host`` (new connection each unless
        ``keepalive``), using source address(es) ``src`` in turn."""
        args = [
            "http",
            host,
            "--port",
            str(port),
            "--path",
            path,
            "--count",
            str(count),
            "--timeout",
            str(timeout),
        ]
        if keepalive:
            args.append("--keepalive")
        if src:
            args += ["--src", src if isinstance(src, str) else ",".join(src)]
        rows = self._traffic(role, args, timeout=60 + timeout * count)
        return [HttpResult(**row) for row in rows]

    def udp_echo(
        self,
        role: str,
        host: str,
        payload: str = "ping",
        *,
        port: int = UDP_PORT,
        count: int = 1,
        src: str | Sequence[str] | None = None,
        timeout: float = 2.0,
    ) -> list[str | None]:
        """Send ``count`` datagrams from member ``role``; return each reply (None on timeout)."""
        args = [
            "udp",
            host,
            "--port",
            str(port),
            "--payload",
            payload,
            "--count",
            str(count),
            "--timeout",
            str(timeout),
        ]
        if src:
            args += ["--src", src if isinstance(src, str) else ",".join(src)]
        return [row["reply"] for row in self._traffic(role, args, timeout=60 + timeout * count)]

    def tcp_connect(self, role: str, host: str, port: int, *, timeout: float = 2.0) -> bool:
        """Whether a TCP connect from member ``role`` to ``host:port`` succeeds."""
        rows = self._traffic(role, ["tcp", host, str(port), "--timeout", str(timeout)], timeout=30 + timeout)
        return bool(rows[0]["ok"])

    def reachable(self, role: str, host: str, *, port: int = 9, timeout: float = 2.0) -> bool:
        """Whether ``host`` answers from member ``role``: a TCP connect that is accepted or refused
        (RST) both prove the host is up and routed.  A ping stand-in (iputils-ping is not needed)."""
        rows = self._traffic(role, ["tcp", host, str(port), "--timeout", str(timeout)], timeout=30 + timeout)
        return bool(rows[0]["ok"] or rows[0]["refused"])

    def offloads(self, role: str, ifname: str) -> dict[str, bool]:
        """Current tx/tso/gso/gro state of an interface in a member."""
        proc = self.run(role, [sys.executable, "-I", str(OFFLOAD_SCRIPT), "get", ifname])
        if proc.returncode != 0:
            raise LabError(f"offload get {ifname} in {role}: {proc.stderr.strip()}")
        return {k: bool(v) for k, v in json.loads(proc.stdout)[ifname].items()}

    def sysctl(self, role: str, key: str) -> str:
        """Read a sysctl (``net.ipv4.ip_forward`` form) inside a member's namespace."""
        path = "/proc/sys/" + key.replace(".", "/")
        proc = self.run(role, ["cat", path])
        if proc.returncode != 0:
            raise LabError(f"sysctl {key} in {role}: {proc.stderr.strip()}")
        return str(proc.stdout).strip()

    # -- real-server processes --

    def start_server(self, rs: str) -> subprocess.Popen[bytes]:
        """Start (or restart) the HTTP/UDP server of real server ``rs`` and wait until it listens."""
        self.stop_server(rs)
        log_file = open(RUN_DIR / self.lab_id / f"{rs}.log", "ab")
        try:
            proc = self.popen(
                rs,
                [
                    sys.executable,
                    "-m",
                    "ulvs.lab.servers",
                    "--name",
                    rs,
                    "--http-port",
                    str(HTTP_PORT),
                    "--udp-port",
                    str(UDP_PORT),
                ],
                stdout=subprocess.PIPE,
                stderr=log_file,
            )
        finally:
            log_file.close()
        self._server_procs[rs] = proc
        return proc

    def _wait_ready(self, procs: dict[str, subprocess.Popen[bytes]]) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        for rs, proc in procs.items():
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            line = b""
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise LabError(f"server {rs} did not start within {_READY_TIMEOUT}s")
                chunk = os.read(fd, 64)
                if not chunk:
                    logtext = (RUN_DIR / self.lab_id / f"{rs}.log").read_text(errors="replace")
                    raise LabError(f"server {rs} exited before ready: {logtext.strip()[-2000:]}")
                line += chunk
            proc.stdout.close()

    def stop_server(self, rs: str) -> None:
        """Stop the HTTP/UDP server of real server ``rs`` (to simulate a dead service)."""
        if rs not in self.real_servers:
            raise KeyError(rs)
        proc = self._server_procs.pop(rs, None)
        if proc is not None:
            self._terminate([proc])

    def restart_server(self, rs: str) -> None:
        """Start ``rs``'s server again and wait until it listens."""
        self._wait_ready({rs: self.start_server(rs)})

    # -- lifecycle --

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    def up(self) -> Lab:
        """Build the topology and start the servers; on any failure tear down and re-raise."""
        if self._up:
            return self
        if self.clean_stale:
            gone = cleanup_stale()
            if gone:
                log.info("removed stale labs %s", gone)
        existing = set(list_namespaces())
        while True:
            self.lab_id = secrets.token_hex(3)
            self.prefix = f"{NS_PREFIX}{self.lab_id}-"
            if not any(n.startswith(self.prefix) for n in existing) and not (RUN_DIR / self.lab_id).exists():
                break
        self._up = True
        atexit.register(self.down)
        try:
            (RUN_DIR / self.lab_id).mkdir(parents=True, exist_ok=False)
            self._write_record()  # before any namespace exists, so a crash mid-build is cleanable
            self._build()
            if self.start_servers:
                self._wait_ready({rs: self.start_server(rs) for rs in self.real_servers})
        except BaseException:
            self.down()
            raise
        return self

    def _write_record(self) -> None:
        if not self.lab_id:
            return
        record = {
            "lab_id": self.lab_id,
            "owner_pid": os.getpid(),
            "owner_start": _proc_start_time(os.getpid()),
            "namespaces": list(self.namespaces),
            "pids": self.pids,
            "dr": self.dr,
        }
        path = RUN_DIR / self.lab_id / "lab.json"
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(record))
            tmp.replace(path)
        except OSError:
            pass  # teardown in progress removed the directory

    def _build(self) -> None:
        lan = self.ns("lan")
        # 1. namespaces
        self._created = list(self.namespaces)
        _ip([], batch=[f"netns add {n}" for n in self._created])
        # 2. namespace-wide sysctls, before interfaces exist so new ones inherit "default"
        for role in self.roles:
            self._set_sysctls(role, self._sysctls(role))
        # 3. bridges and veths, all created from inside ns lan
        links = [
            f"link add name {SERVER_BRIDGE} type bridge stp_state 0",
            f"link add name {CLIENT_BRIDGE} type bridge stp_state 0",
            f"link add name c-client type veth peer name {CLIENT_IF} netns {self.ns('client')}",
        ]
        ports = [(CLIENT_BRIDGE, "c-client")]
        for d in self.directors:
            links.append(f"link add name c-{d} type veth peer name {DIRECTOR_IF_CLIENT} netns {self.ns(d)}")
            links.append(f"link add name s-{d} type veth peer name {DIRECTOR_IF_SERVER} netns {self.ns(d)}")
            ports += [(CLIENT_BRIDGE, f"c-{d}"), (SERVER_BRIDGE, f"s-{d}")]
        for rs in self.real_servers:
            links.append(f"link add name s-{rs} type veth peer name {SERVER_IF} netns {self.ns(rs)}")
            ports.append((SERVER_BRIDGE, f"s-{rs}"))
        links += [f"link set {port} master {br} up" for br, port in ports]
        links += [f"link set {SERVER_BRIDGE} up", f"link set {CLIENT_BRIDGE} up", "link set lo up"]
        _ip([], ns=lan, batch=links)
        # 4. addresses and routes per member
        cmds = ["link set lo up"]
        cmds += [f"addr add {a}/24 dev {CLIENT_IF}" for a in self.client_addrs]
        cmds += [f"link set {CLIENT_IF} up", f"route add default via {self.client_gateway}"]
        _ip([], ns=self.ns("client"), batch=cmds)
        for i, d in enumerate(self.directors):
            cmds = [
                "link set lo up",
                f"addr add {DIRECTOR_CLIENT_ADDRS[i]}/24 dev {DIRECTOR_IF_CLIENT}",
                f"addr add {DIRECTOR_SERVER_ADDRS[i]}/24 dev {DIRECTOR_IF_SERVER}",
            ]
            if i == 0 and self.floating:
                cmds.append(f"addr add {NAT_GW}/24 dev {DIRECTOR_IF_SERVER}")  # secondary
                if len(self.directors) == 2:
                    cmds.append(f"addr add {CLIENT_FLOAT_GW}/24 dev {DIRECTOR_IF_CLIENT}")
            cmds += [f"link set {DIRECTOR_IF_CLIENT} up", f"link set {DIRECTOR_IF_SERVER} up"]
            _ip([], ns=self.ns(d), batch=cmds)
        for rs in self.real_servers:
            cmds = [
                "link set lo up",
                f"addr add {self.server_addrs[rs]}/24 dev {SERVER_IF}",
                f"link set {SERVER_IF} up",
                f"route add default via {NAT_GW}",
            ]
            if self.dr:
                cmds.append(f"addr add {VIP}/32 dev lo")
            _ip([], ns=self.ns(rs), batch=cmds)
        # 5. offloads
        if self.offloads_off:
            self._offloads_off()

    def _sysctls(self, role: str) -> dict[str, str]:
        s: dict[str, str] = {}
        if not self.ipv6:
            s |= {"net/ipv6/conf/all/disable_ipv6": "1", "net/ipv6/conf/default/disable_ipv6": "1"}
        if role in self.directors:
            s |= {"net/ipv4/ip_forward": "1"}
            for scope in ("all", "default"):
                s |= {f"net/ipv4/conf/{scope}/rp_filter": "0", f"net/ipv4/conf/{scope}/accept_local": "1"}
        if role in self.real_servers and self.dr:
            for scope in ("all", "default"):
                s |= {f"net/ipv4/conf/{scope}/arp_ignore": "1", f"net/ipv4/conf/{scope}/arp_announce": "2"}
        return s

    def _set_sysctls(self, role: str, values: dict[str, str]) -> None:
        if not values:
            return
        # IPv6 may be compiled out: its keys are skipped when absent, the others must exist.
        script = "".join(
            (f"[ -e /proc/sys/{k} ] && " if "ipv6" in k else "") + f"echo {v} > /proc/sys/{k}\n"
            for k, v in values.items()
        )
        proc = self.run(role, ["sh", "-ec", script + "true"])
        if proc.returncode != 0:
            raise LabError(f"sysctls in {role}: {proc.stderr.strip()}")

    def _offloads_off(self) -> None:
        veths: dict[str, list[str]] = {"client": [CLIENT_IF]}
        for d in self.directors:
            veths[d] = [DIRECTOR_IF_CLIENT, DIRECTOR_IF_SERVER]
        for rs in self.real_servers:
            veths[rs] = [SERVER_IF]
        veths["lan"] = [f"c-{m}" for m in ("client", *self.directors)]
        veths["lan"] += [f"s-{m}" for m in (*self.directors, *self.real_servers)]
        use_ethtool = shutil.which("ethtool") is not None
        if not use_ethtool:
            log.info("ethtool not installed: switching offloads off with ethtool ioctls instead")
        for role, ifs in veths.items():
            if use_ethtool:
                for ifname in ifs:
                    argv = ["ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off", "tx", "off"]
                    proc = self.run(role, argv)
                    if proc.returncode != 0:
                        raise LabError(f"{' '.join(argv)} in {role}: {proc.stderr.strip()}")
            else:
                proc = self.run(role, [sys.executable, "-I", str(OFFLOAD_SCRIPT), "off", *ifs])
                if proc.returncode != 0:
                    raise LabError(f"offloads off in {role}: {proc.stderr.strip()}")

    def _terminate(self, procs: Sequence[subprocess.Popen[bytes]]) -> None:
        """SIGTERM the process groups of live ``procs`` (ours: start_new_session), then SIGKILL."""
        live = [p for p in procs if p.poll() is None]
        for p in live:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + _KILL_GRACE
        for p in live:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        for p in procs:
            if p.stdout is not None:
                p.stdout.close()
            if p.stderr is not None:
                p.stderr.close()

    def down(self) -> None:
        """Tear everything down; idempotent and safe to call after a partial build."""
        if not self._up:
            return
        self._up = False
        atexit.unregister(self.down)
        try:
            self._terminate(self._procs)
            killed = _kill_pids_in(self._created)
            if killed:
                log.info("lab %s: killed leftover processes %s", self.lab_id, killed)
            _delete_namespaces(self._created)
        finally:
            shutil.rmtree(RUN_DIR / self.lab_id, ignore_errors=True)
            self._server_procs.clear()

    def describe(self) -> str:
        """A human summary: namespaces, addresses and how to enter them."""
        lines = [f"ulvs lab {self.lab_id} ({'DR' if self.dr else 'NAT'}), VIP {VIP}"]
        lines.append(
            f"  {self.ns('client'):<28} {CLIENT_IF} {', '.join(self.client_addrs)}"
            f"  default via {self.client_gateway}"
        )
        for i, d in enumerate(self.directors):
            cli_extra = f" + {CLIENT_FLOAT_GW}" if i == 0 and len(self.directors) == 2 else ""
            extra = f" + {NAT_GW}" if i == 0 else ""
            lines.append(
                f"  {self.ns(d):<28} {DIRECTOR_IF_CLIENT} {DIRECTOR_CLIENT_ADDRS[i]}{cli_extra}  "
                f"{DIRECTOR_IF_SERVER} {DIRECTOR_SERVER_ADDRS[i]}{extra}"
            )
        for rs in self.real_servers:
            vip = f", {VIP}/32 on lo" if self.dr else ""
            lines.append(
                f"  {self.ns(rs):<28} {SERVER_IF} {self.server_addrs[rs]}{vip}  default via {NAT_GW}"
                f"  http :{HTTP_PORT} udp echo :{UDP_PORT}"
            )
        lines.append(
            f"  {self.ns('lan'):<28} bridges {CLIENT_BRIDGE} (client LAN), {SERVER_BRIDGE} (server LAN)"
        )
        lines.append(f"enter a member with: ip netns exec {self.ns('director')} bash")
        return "\n".join(lines)
