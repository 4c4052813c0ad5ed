"""The main process's side of ``ulvs run --workers N``: worker links, ARP ports, snapshot merge.

With several workers the main process handles no data traffic. It keeps:
* the control socket;
* the kernel state;
* a reference ``Core`` holding the configuration, which validates every request before it is
  forwarded to the workers;
* ARP: an ``ETH_P_ARP`` packet socket per interface, to resolve next hops and to answer for
  VIPs.

Workers are separate interpreters (``ulvs.runtime.worker``) joined by a stream socket each. A
request is answered in milliseconds, so the main process calls them synchronously.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from ulvs.io.base import Batch, transmit_each
from ulvs.runtime.rxwatch import DEFAULT_INTERVAL

ETH_P_ARP = 0x0806


class WorkerLink:
    """One worker process and the socket to it."""

    def __init__(self, index: int, interfaces: list[str], group_base: int, conn_limit: int,
                 rx_ring: str = "auto", tx_ring: int = 4096, rx_pace: float = DEFAULT_INTERVAL,
                 workers: int = 1, lane_fd: int | None = None) -> None:
        """``lane_fd``: the file the workers' auto rings keep their lane bits in (one for all
        workers, ``ulvs.io.fanout.LaneShare``)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [sys.executable, "-m", "ulvs.runtime.worker", "--control-fd", str(child.fileno()),
                "--index", str(index), "--group-base", str(group_base), "--conn-limit", str(conn_limit),
                "--rx-ring", rx_ring, "--tx-ring", str(tx_ring), "--rx-pace", repr(rx_pace),
                "--workers", str(workers)]
        fds = [child.fileno()]
        if lane_fd is not None:
            argv += ["--lane-fd", str(lane_fd)]
            fds.append(lane_fd)
        for name in interfaces:
            argv += ["--interface", name]
        self.index = index
        self.proc = subprocess.Popen(argv, pass_fds=fds, stdin=subprocess.DEVNULL)
        child.close()
        self.sock = parent
        self.file = parent.makefile("rwb")

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send one message and wait for its reply."""
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        line = self.file.readline()
        if not line:
            raise ConnectionError(f"worker {self.index} (pid {self.proc.pid}) is gone")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def stop(self, timeout: float = 10.0) -> None:
        try:
            self.file.write(b'{"op": "stop"}\n')
            self.file.flush()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()     # our own child, by PID
            self.proc.wait()
        # A worker that died first leaves our stop message in the buffer: closing would try to
        # flush it into the broken pipe again.
        with contextlib.suppress(OSError):
            self.file.close()
        self.sock.close()


class ArpPort:
    """An interface's ARP traffic for the main process: it learns next hops, answers for VIPs."""

    handles_pass = False
    backlog = False     # batches() reads what is queued, 32 frames at most; ARP is never a flood
    paced = False

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.ifindex = socket.if_nametoindex(ifname)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        self.sock.bind((ifname, ETH_P_ARP))
        self.sock.setblocking(False)
        with open(f"/sys/class/net/{ifname}/address") as f:
            self.mac = bytes.fromhex(f.read().strip().replace(":", ""))
        self._bufs = [bytearray(2048) for _ in range(32)]
        self.batch = Batch()

    def fileno(self) -> int:
        fd: int = self.sock.fileno()
        return fd

    def batches(self) -> Iterator[Batch]:
        b = self.batch
        b.clear()
        for buf in self._bufs:
            try:
                n = self.sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            b.bufs.append(buf)
            b.offs.append(0)
            b.lens.append(n)
            b.partial.append(0)
            b.ifins.append(self.ifindex)
        b.count = len(b.offs)
        if b.count:
            yield b

    def transmit(self, buf: Any, vnet_off: int, off: int, length: int) -> None:
        self.send_frame(bytes(memoryview(buf)[off:off + length]))

    def transmit_forwarded(self, b: Batch, verdicts: Any, egress: Any, n: int) -> None:
        transmit_each(self, b, verdicts, egress, n)

    def flush(self) -> None:
        pass  # every frame is written at once

    def send_frame(self, frame: bytes) -> None:
        try:
            self.sock.send(frame)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


def _dest_key(d: dict[str, Any]) -> tuple[str, int]:
    return (d["dest"]["daddr"], d["dest"]["dport"])


def _add(into: dict[str, Any], other: dict[str, Any]) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + v


def merge_snapshots(base: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The main process's snapshot (configuration) with every worker's counters, connection
    counts, rates and connections added up. Pure: all arguments are snapshot JSON objects."""
    out: dict[str, Any] = json.loads(json.dumps(base))
    services = {json.dumps(s["service"], sort_keys=True): s for s in out["services"]}
    for s in services.values():
        for k in s["counters"]:
            s["counters"][k] = 0
        for k in s.get("rates", {}):
            s["rates"][k] = 0
        for d in s["dests"]:
            d["activeconns"] = d["inactconns"] = d["persistconns"] = 0
            d["overloaded"] = False
            for k in d["counters"]:
                d["counters"][k] = 0
            for k in d.get("rates", {}):
                d["rates"][k] = 0
    conns: list[Any] = []
    count = 0
    for part in parts:
        count += part.get("conn_count", 0)
        conns.extend(part.get("conns") or [])
        for ws in part["services"]:
            s = services.get(json.dumps(ws["service"], sort_keys=True))
            if s is None:
                continue
            _add(s["counters"], ws["counters"])
            _add(s.setdefault("rates", {}), ws.get("rates", {}))
            dests = {_dest_key(d): d for d in s["dests"]}
            for wd in ws["dests"]:
                d = dests.get(_dest_key(wd))
                if d is None:
                    continue
                for k in ("activeconns", "inactconns", "persistconns"):
                    d[k] += wd[k]
                d["overloaded"] = d["overloaded"] or wd["overloaded"]
                _add(d["counters"], wd["counters"])
                _add(d.setdefault("rates", {}), wd.get("rates", {}))
    out["conn_count"] = count
    if base.get("conns") is not None:
        out["conns"] = conns
    out["rates_estimated"] = all(p.get("rates_estimated", False) for p in parts) if parts else False
    return out


def merge_status(base: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The main process's status (configuration) with every worker's connection table, drop
    counters and ring counters ("ports", by interface) added up: each worker has a table of its
    own, so the limit is their sum."""
    out = dict(base)
    out["snapshot"] = merge_snapshots(base["snapshot"], [p["snapshot"] for p in parts])
    states: dict[str, int] = {}
    drops: dict[str, int] = dict(base.get("drops", {}))
    for p in parts:
        _add(states, p["conn_table"].get("states", {}))
        _add(drops, p.get("drops", {}))
    out["conn_table"] = {"count": sum(p["conn_table"]["count"] for p in parts),
                         "limit": sum(p["conn_table"]["limit"] for p in parts),
                         "states": states, "workers": len(parts)}
    out["drops"] = drops
    ports: dict[str, dict[str, int]] = {}
    for p in parts:                     # each worker's rings (Worker.handle adds them to status)
        for name, counters in p.get("ports", {}).items():
            _add(ports.setdefault(name, {}), counters)
    if ports:
        out["ports"] = ports
    return out


def merge_explanations(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Every worker's explanation of one flow, as one.  A worker holding a connection or a
    template for the flow decides it (``worker`` names it).  Otherwise the worker the kernel's
    fanout hands the flow to decides, so each worker's own choice is listed in ``workers``."""
    for i, p in enumerate(parts):
        if p.get("kind") in ("connection", "template"):
            return {**p, "worker": i}
    return {**parts[0], "workers": parts}


def group_base() -> int:
    return (os.getpid() * 2654435761) & 0xFFFF
