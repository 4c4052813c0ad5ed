"""A dataplane worker process (``ulvs run --workers N``): its own core, its share of the traffic.

The main process starts N workers (``python -m ulvs.runtime.worker``) and keeps one stream
socket to each (newline-delimited JSON, like the control socket). A worker:
* opens a receive port per interface (``--rx-ring``), joining that interface's PACKET_FANOUT
  group (an ``auto`` port: its ring and its quick socket, whose lane bits the workers share in
  the file ``--lane-fd``, see ``ulvs.io.fanout.LaneShare``);
* decides its frames with its own ``Core`` and connection table, and sends them;
* applies the control requests the main process forwards;
* applies neighbour and interface facts, local addresses, and the fanout steering program;
* answers ``snapshot`` requests, which the main process merges.

It has no kernel state of its own and answers no ARP. The main process does both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
import sys
import time
from typing import Any

from ulvs.core import Core
from ulvs.io import fanout
from ulvs.io.afpacket import RING_MODES, PacketRing, RingConfig
from ulvs.runtime.control import RateEstimator, apply_request
from ulvs.runtime.rxwatch import DEFAULT_INTERVAL, RxWatch

log = logging.getLogger("ulvs.worker")


def fanout_group(base: int, ifindex: int) -> int:
    """The fanout group of one interface: the same in every worker of one daemon."""
    return (base + ifindex * 131) & 0xFFFF


class Worker:
    def __init__(self, index: int, interfaces: list[str], group_base: int, conn_limit: int,
                 rx_ring: str = "auto", tx_ring: int = 4096, rx_pace: float = DEFAULT_INTERVAL,
                 workers: int = 1, lane_fd: int | None = None) -> None:
        self.index = index
        self.rx_pace = rx_pace
        self.core = Core(conn_limit=conn_limit)
        self.estimator = RateEstimator()
        self.ports: dict[int, PacketRing] = {}
        share = fanout.LaneShare(len(interfaces), lane_fd) if rx_ring == "auto" else None
        for slot, name in enumerate(interfaces):
            ifindex = socket.if_nametoindex(name)
            seat = fanout.LaneSeat(workers, index, share, slot) if share is not None else None
            ring = PacketRing(name, RingConfig(mode=rx_ring, tx_slot_count=tx_ring),
                              fanout_group=fanout_group(group_base, ifindex), seat=seat)
            if not ring.fanout_ignores_outgoing and index == 0:
                log.info("%s: this kernel's fanout groups see outgoing frames; the ring readers "
                         "skip them (rx_outgoing)", name)
            self.ports[ring.ifindex] = ring
        self._timer: asyncio.TimerHandle | None = None
        self.rx: RxWatch | None = None

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        """One message from the main process; returns the reply."""
        op = msg.get("op")
        core = self.core
        if op == "request":
            reply = apply_request(core, msg["req"], time.monotonic(), estimator=self.estimator)
            if reply.get("ok") and "status" in reply:       # this worker's rings, for the merge
                rx = self.rx
                reply["status"]["ports"] = {p.ifname: {**p.counters(), **(rx.counters(p) if rx else {})}
                                            for p in self.ports.values()}
            return reply
        if op == "neighbor":
            core.set_neighbor(bytes.fromhex(msg["addr"]), msg["egress"], bytes.fromhex(msg["dmac"]),
                              bytes.fromhex(msg["smac"]))
            return {"ok": True}
        if op == "interface":
            import ipaddress

            addr = ipaddress.IPv4Address(msg["addr"]) if msg.get("addr") else None
            core.set_interface(msg["ifindex"], bytes.fromhex(msg["mac"]), addr)
            return {"ok": True}
        if op == "local":
            core.set_local_addrs(msg["addrs"])
            return {"ok": True}
        if op == "fanout":
            masq = [bytes.fromhex(a) for a in msg["masq"]]
            for ring in self.ports.values():
                ring.set_masq(masq)
            return {"ok": True}
        if op == "unresolved":
            addrs = sorted(a.hex() for a in core.unresolved)
            core.unresolved.clear()
            return {"ok": True, "addrs": addrs}
        return {"ok": False, "error": f"unknown worker op {op!r}"}

    def on_rx(self, port: PacketRing) -> int:
        """Forward what ``port`` has received (``RxWatch`` calls this); returns the frames."""
        core, ports = self.core, self.ports
        now = time.monotonic()
        frames = 0
        for b in port.batches():
            n = b.count
            frames += n
            core.process_batch(b.bufs, b.offs, b.lens, b.ifins, n, now, b.partial)
            verdicts, egress = core.verdicts, core.egress
            for each in ports.values():
                each.transmit_forwarded(b, verdicts, egress, n)
                each.flush()
        if core.emitted:
            for frame, eg in core.emitted:
                out = ports.get(eg)
                if out is not None:
                    out.send_frame(frame)
            core.emitted.clear()
        self.arm_timer()
        return frames

    def arm_timer(self) -> None:
        deadline = self.core.next_deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer.when() <= deadline:
                return
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(max(deadline, loop.time()), self.on_timer)

    def on_timer(self) -> None:
        self._timer = None
        self.core.handle_timer(time.monotonic())
        self.arm_timer()

    async def run(self, control: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        # A SIGTERM or SIGINT for the whole process group (systemctl stop, ^C in a shell) reaches
        # the workers too.  Stopping is the main process's to do: it says so on the control
        # socket, whose end of file also stops us when it dies.  A worker that stopped on the
        # signal by itself made the main process log it as a failed worker and exit 1.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: None)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)   # the main process reloads
        rx = self.rx = RxWatch(loop, self.rx_pace)
        for port in self.ports.values():
            rx.watch(port, self.on_rx)
        reader, writer = await asyncio.open_unix_connection(sock=control)

        async def serve() -> None:
            while line := await reader.readline():
                msg = json.loads(line)
                if msg.get("op") == "stop":
                    break
                writer.write(json.dumps(self.handle(msg)).encode() + b"\n")
                await writer.drain()
            stop.set()

        async def rates() -> None:
            while True:
                await asyncio.sleep(RateEstimator.INTERVAL)
                self.estimator.tick(self.core)

        tasks = [asyncio.ensure_future(serve()), asyncio.ensure_future(rates())]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            rx.close()
            writer.close()

    def close(self) -> None:
        for port in self.ports.values():
            port.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ulvs-worker")
    ap.add_argument("--control-fd", type=int, required=True)
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--group-base", type=int, required=True)
    ap.add_argument("--conn-limit", type=int, required=True)
    ap.add_argument("--interface", action="append", default=[])
    ap.add_argument("--rx-ring", choices=RING_MODES, default="auto")
    ap.add_argument("--tx-ring", type=int, default=4096)
    ap.add_argument("--rx-pace", type=float, default=DEFAULT_INTERVAL)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--lane-fd", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s ulvs-worker{args.index}[%(process)d] %(levelname)s %(message)s")
    control = socket.socket(fileno=args.control_fd)
    worker = Worker(args.index, args.interface, args.group_base, args.conn_limit, args.rx_ring, args.tx_ring,
                    args.rx_pace, args.workers, args.lane_fd)
    try:
        try:
            import uvloop

            uvloop.run(worker.run(control))
        except ImportError:
            asyncio.run(worker.run(control))
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
