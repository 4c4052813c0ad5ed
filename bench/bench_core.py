#!/usr/bin/env python3
"""In-process cost of the forwarding core: ns per packet and bytes per connection.

Frames sit back to back in one bytearray, as in a TPACKET_V3 ring block, and are handed to
``Core.process_batch`` 1024 at a time.  Rewrites happen in place, so the pristine frames are
copied back (untimed) before every timed batch.  Each figure is the median of ``--reps``
repetitions.

  nat_ns_per_pkt        established NAT flows, half client->VIP, half real server->client
  nat_in_ns / nat_out_ns  the two directions alone
  dr_ns_per_pkt         established direct-routing flows (MAC rewrite only)
  udp_nat_ns_per_pkt    established UDP NAT flows, client->VIP
  ring_dr_ns_per_pkt    established direct-routing flows through the daemon's whole loop: the
                        TPACKET_V3 block reader, the core and the transmit ring (ulvs.io.afpacket
                        over plain memory: the kernel's receive and send are not in it)
  ring_nat_ns_per_pkt   the same for NAT flows, client->VIP
  new_conn_ns           a SYN for a new flow: parse, rr schedule, conn insert, rewrite
  new_conn_full_ns      the same with the table full (limit 20,480): each SYN first evicts an
                        embryonic connection, as under a SYN flood the servers do not answer
  synack_ns             the real server's SYN-ACK for such a connection (NAT, server->client)
  handshake_ack_ns      the client's ACK that completes the handshake (client->VIP)
  conn_bytes_per_entry  RSS growth per NAT connection with 1,000,000 in the table (a NAT
                        connection is found from both directions: two hash entries, two keys)
  conn_bytes_per_entry_dr  the same for direct-routing connections (one hash entry)

With ``--flow-log`` every core counts per connection and captures flow records (ulvs.core.flows),
drained (and dropped) after each batch, as ``ulvs run --flow-log`` does; without it the flow log
is off, as by default.

Usage: bench/bench_core.py [--json] [--quick] [--reps N] [--flow-log]
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import statistics
import struct
import sys
import time
from collections.abc import Callable

from ulvs.core import Core, DestConfig, FwdMethod, Proto, ServiceConfig
from ulvs.io.afpacket import PacketRing, RingConfig
from ulvs.io.base import Batch
from ulvs.packet import builder

CMAC, DMAC = "02:00:00:00:01:01", "02:00:00:00:01:fe"
RMAC, LMAC = "02:00:00:00:02:01", "02:00:00:00:02:fe"
VIP = "10.77.1.100"
BATCH = 1024
FLOW_LOG = False      # --flow-log: per-connection counters and flow records on


def make_core(method: FwdMethod, proto: Proto = Proto.TCP, limit: int = 2_000_000) -> Core:
    core = Core(conn_limit=limit, batch_max=BATCH)
    if FLOW_LOG:
        core.enable_flow_log()
    port = 80 if proto == Proto.TCP else 53
    svc = core.add_service(ServiceConfig(proto, ipaddress.IPv4Address(VIP), port, sched="rr"))
    for i in range(8):
        daddr = ipaddress.IPv4Address(f"10.77.2.{11 + i}")
        core.add_dest(svc.config.key, DestConfig(daddr, port, method=method))
        core.set_neighbor(daddr, 2, bytes.fromhex(f"0200000002{i + 16:02x}"), builder.mac(LMAC))
    return core


def client(i: int) -> tuple[str, int]:
    return f"10.77.{100 + (i >> 14) % 100}.{1 + (i >> 6) % 250}", 1024 + i % 60000


def establish(core: Core, nflows: int, proto: Proto) -> list[tuple[str, int, str]]:
    """Open nflows connections through the core; returns (caddr, cport, daddr) per flow."""
    flows = []
    port = 80 if proto == Proto.TCP else 53
    for i in range(nflows):
        caddr, cport = client(i)
        if proto == Proto.TCP:
            f = bytearray(builder.tcp_frame(CMAC, DMAC, caddr, VIP, cport, port, 0x02))
            core.process(f, 1, 0.0)
            daddr = str(ipaddress.IPv4Address(bytes(f[30:34])))
            core.process(bytearray(builder.tcp_frame(RMAC, LMAC, daddr, caddr, port, cport, 0x12)), 2, 0.0)
            core.process(bytearray(builder.tcp_frame(CMAC, DMAC, caddr, VIP, cport, port, 0x10)), 1, 0.0)
        else:
            f = bytearray(builder.udp_frame(CMAC, DMAC, caddr, VIP, cport, port, b"q" * 18))
            core.process(f, 1, 0.0)
            daddr = str(ipaddress.IPv4Address(bytes(f[30:34])))
        flows.append((caddr, cport, daddr))
    return flows


class Ring:
    """BATCH frames back to back in one buffer, restorable between timed runs."""

    def __init__(self, frames: list[bytes]) -> None:
        self.offs = []
        self.lens = []
        pos = 0
        for f in frames:
            self.offs.append(pos)
            self.lens.append(len(f))
            pos += (len(f) + 15) & ~15
        self.pristine = bytearray(pos)
        for f, o in zip(frames, self.offs, strict=True):
            self.pristine[o:o + len(f)] = f
        self.buf = bytearray(self.pristine)
        self.bufs = [self.buf] * len(frames)

    def restore(self) -> None:
        self.buf[:] = self.pristine


def time_batches(core: Core, ring: Ring, ifins: list[int], batches: int) -> float:
    """ns per packet over ``batches`` timed calls (restores excluded)."""
    n = len(ring.offs)
    total = 0
    pb = core.process_batch
    for _ in range(batches):
        ring.restore()
        t0 = time.perf_counter_ns()
        pb(ring.bufs, ring.offs, ring.lens, ifins, n, 1.0)
        total += time.perf_counter_ns() - t0
    if any(core.verdicts[j] != 1 for j in range(n)):
        raise SystemExit("benchmark frames were not all forwarded: the setup is wrong")
    return total / (batches * n)


def bench_established(method: FwdMethod, proto: Proto, direction: str, reps: int, batches: int) -> float:
    core = make_core(method, proto)
    flows = establish(core, BATCH, proto)
    port = 80 if proto == Proto.TCP else 53
    frames, ifins = [], []
    for k, (caddr, cport, daddr) in enumerate(flows):
        out = direction == "out" or (direction == "mixed" and k % 2)
        if proto == Proto.TCP:
            if out:
                f = builder.tcp_frame(RMAC, LMAC, daddr, caddr, port, cport, 0x10, b"x" * 10)
            else:
                f = builder.tcp_frame(CMAC, DMAC, caddr, VIP, cport, port, 0x10, b"x" * 10)
        else:
            f = builder.udp_frame(CMAC, DMAC, caddr, VIP, cport, port, b"q" * 18)
        frames.append(f)
        ifins.append(2 if out else 1)
    ring = Ring(frames)
    return statistics.median(time_batches(core, ring, ifins, batches) for _ in range(reps))


# --- the ring loop: the afpacket reader and sender around the core, the kernel left out ---------

V3_FIRST = 48        # sizeof(struct tpacket_block_desc): the first frame's header follows it
V3_MAC = 92          # a frame's offset in its tpacket3 slot (header, sockaddr_ll, vnet header)
_V3_DESC = struct.Struct("=IIIII")         # version, offset_to_priv, block_status, num_pkts, first
_V3_PKT = struct.Struct("=IIIIIIHH")       # next_offset, sec, nsec, snaplen, len, status, mac, net


class _Unsent:
    """The transmit ring's socket: what the kernel does with a send is not this figure's."""

    def send(self, data: bytes, flags: int = 0) -> int:
        return 0


def ring_ports(frames: list[bytes]) -> tuple[PacketRing, PacketRing, Callable[[], None]]:
    """Two afpacket ports over plain memory, as tests/unit/test_ring_*.py build them: ``rx``
    (ifindex 1) with ``frames`` in one TPACKET_V3 block handed to userspace, ``out`` (ifindex
    2) with a transmit ring; and the function that puts both back as they were."""
    size = V3_FIRST + sum((V3_MAC + len(f) + 15) & ~15 for f in frames)
    cfg = RingConfig(block_size=1 << (size - 1).bit_length(), block_count=1, tx_slot_count=2 * BATCH)
    ports = []
    for ifindex in (1, 2):
        r = PacketRing.__new__(PacketRing)
        r.cfg, r.ifindex, r.lanes, r.batch = cfg, ifindex, False, Batch()
        r.map = bytearray(cfg.block_size)                # type: ignore[assignment]
        r._next_block = r.rx_resyncs = r.rx_stale = r.rx_other_host = r.rx_outgoing = 0
        txmap = bytearray(cfg.tx_slot_size * cfg.tx_slot_count)
        r.txmap = txmap                                  # type: ignore[assignment]
        r.txview = memoryview(txmap)
        r.txr = r.tx = _Unsent()                         # type: ignore[assignment]
        r._tx_slot = r._tx_pending = r.tx_fallback = r.tx_ring_frames = 0
        ports.append(r)
    rx, out = ports
    m = rx.map
    pos = V3_FIRST
    for k, f in enumerate(frames):     # what tpacket_rcv writes (vnet header: zeros)
        step = (V3_MAC + len(f) + 15) & ~15
        _V3_PKT.pack_into(m, pos, 0 if k == len(frames) - 1 else step, 0, 0, len(f), len(f), 1,
                          V3_MAC, V3_MAC + 14)
        m[pos + V3_MAC:pos + V3_MAC + len(f)] = f
        pos += step
    _V3_DESC.pack_into(m, 0, 1, V3_FIRST, 1, len(frames), V3_FIRST)  # handed over (TP_STATUS_USER)
    pristine = bytes(m[:pos])
    slots = out.txview[0::cfg.tx_slot_size]      # type: ignore[index]  # each slot's status byte
    free = bytes(cfg.tx_slot_count)

    def reset() -> None:
        m[:pos] = pristine
        rx._next_block = 0
        slots[:] = free                # the kernel has sent every slot
        out._tx_slot = 0
    return rx, out, reset


def bench_ring(method: FwdMethod, reps: int, batches: int) -> float:
    """ns per packet through the daemon's loop (PacketRing.batches, Core.process_batch,
    PacketRing.transmit_forwarded and flush on every port) for established flows, client to
    dest; the block restore is not timed."""
    core = make_core(method)
    frames = [builder.tcp_frame(CMAC, DMAC, caddr, VIP, cport, 80, 0x10, b"x" * 10)
              for caddr, cport, _d in establish(core, BATCH, Proto.TCP)]
    rx, out, reset = ring_ports(frames)
    ports = (rx, out)

    def once() -> int:
        reset()
        t0 = time.perf_counter_ns()
        for b in rx.batches():
            n = b.count
            core.process_batch(b.bufs, b.offs, b.lens, b.ifins, n, 1.0, b.partial)
            for port in ports:
                port.transmit_forwarded(b, core.verdicts, core.egress, n)
                port.flush()
        return time.perf_counter_ns() - t0

    results = []
    for _ in range(reps):
        sent = out.tx_ring_frames
        total = sum(once() for _ in range(batches))
        if out.tx_ring_frames - sent != batches * BATCH:
            raise SystemExit("benchmark frames were not all sent: the setup is wrong")
        results.append(total / (batches * BATCH))
    return statistics.median(results)


def syn_frames(first: int) -> list[bytes]:
    """BATCH pure SYNs from clients ``first`` .. ``first + BATCH - 1`` to the VIP."""
    frames = []
    for k in range(BATCH):
        caddr, cport = client(first + k)
        frames.append(builder.tcp_frame(CMAC, DMAC, caddr, VIP, cport, 80, 0x02))
    return frames


def bench_new_conn(reps: int, batches: int) -> float:
    results = []
    for _ in range(reps):
        core = make_core(FwdMethod.MASQ)
        total, n = 0, 0
        for b in range(batches):
            ring = Ring(syn_frames(b * BATCH))
            ifins = [1] * BATCH
            t0 = time.perf_counter_ns()
            core.process_batch(ring.bufs, ring.offs, ring.lens, ifins, BATCH, 1.0)
            total += time.perf_counter_ns() - t0
            n += BATCH
            core.drain_flows()
        if core.conn_count() != n:
            raise SystemExit(f"expected {n} new connections, table has {core.conn_count()}")
        results.append(total / n)
    return statistics.median(results)


def bench_new_conn_full(reps: int, batches: int) -> float:
    """ns per SYN once the table is full: every SYN evicts an embryonic entry first."""
    limit = 20 * BATCH
    results = []
    for _ in range(reps):
        core = make_core(FwdMethod.MASQ, limit=limit)
        ifins = [1] * BATCH
        for b in range(limit // BATCH):
            ring = Ring(syn_frames(b * BATCH))
            core.process_batch(ring.bufs, ring.offs, ring.lens, ifins, BATCH, 1.0)
        total = 0
        for b in range(batches):
            ring = Ring(syn_frames(limit + b * BATCH))
            t0 = time.perf_counter_ns()
            core.process_batch(ring.bufs, ring.offs, ring.lens, ifins, BATCH, 1.0)
            total += time.perf_counter_ns() - t0
            if any(core.verdicts[j] != 1 for j in range(BATCH)):
                raise SystemExit("SYNs to a full table were not all forwarded: the setup is wrong")
        if core.conn_count() != limit:
            raise SystemExit(f"expected a full table of {limit}, it has {core.conn_count()}")
        results.append(total / (batches * BATCH))
    return statistics.median(results)


def bench_handshake(reps: int, batches: int) -> tuple[float, float]:
    """ns per SYN-ACK (server->client) and per handshake-completing ACK (client->VIP), NAT."""
    synack, ack = [], []
    for _ in range(reps):
        core = make_core(FwdMethod.MASQ)
        ifins_c, ifins_s = [1] * BATCH, [2] * BATCH
        t_sa = t_ack = 0
        for b in range(batches):
            syns = Ring(syn_frames(b * BATCH))
            core.process_batch(syns.bufs, syns.offs, syns.lens, ifins_c, BATCH, 1.0)
            answers, acks = [], []
            for k in range(BATCH):
                caddr, cport = client(b * BATCH + k)
                o = syns.offs[k]
                daddr = str(ipaddress.IPv4Address(bytes(syns.buf[o + 30:o + 34])))
                answers.append(builder.tcp_frame(RMAC, LMAC, daddr, caddr, 80, cport, 0x12))
                acks.append(builder.tcp_frame(CMAC, DMAC, caddr, VIP, cport, 80, 0x10))
            for frames, ifins, is_ack in ((answers, ifins_s, False), (acks, ifins_c, True)):
                ring = Ring(frames)
                t0 = time.perf_counter_ns()
                core.process_batch(ring.bufs, ring.offs, ring.lens, ifins, BATCH, 1.1)
                dt = time.perf_counter_ns() - t0
                if any(core.verdicts[j] != 1 for j in range(BATCH)):
                    raise SystemExit("handshake frames were not all forwarded: the setup is wrong")
                if is_ack:
                    t_ack += dt
                else:
                    t_sa += dt
        if core.state_counts().get("ESTABLISHED") != batches * BATCH:
            raise SystemExit("the handshakes did not all complete: the setup is wrong")
        synack.append(t_sa / (batches * BATCH))
        ack.append(t_ack / (batches * BATCH))
    return statistics.median(synack), statistics.median(ack)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


def bench_memory(entries: int, progress: Callable[[str], None], method: FwdMethod = FwdMethod.MASQ) -> float:
    """RSS growth per connection after inserting ``entries`` connections."""
    core = make_core(method, limit=entries)
    template = bytearray(builder.tcp_frame(CMAC, DMAC, "10.77.100.1", VIP, 1024, 80, 0x02))
    frames = [bytes(template)] * BATCH
    ring = Ring(frames)
    ifins = [1] * BATCH
    addr = struct.Struct("!4s")
    gc.collect()
    before = rss_bytes()
    made = 0
    while made < entries:
        n = min(BATCH, entries - made)
        ring.restore()
        for k in range(n):
            i = made + k
            # unique client address/port per connection; checksums are not verified by the core
            caddr = (0x0A000000 | (i >> 8) + (1 << 16)).to_bytes(4, "big")
            addr.pack_into(ring.buf, ring.offs[k] + 26, caddr)
            struct.pack_into("!H", ring.buf, ring.offs[k] + 34, 1024 + (i & 0xFF))
        core.process_batch(ring.bufs, ring.offs, ring.lens, ifins, n, 1.0)
        core.drain_flows()
        made += n
        if made % 200_000 == 0:
            progress(f"  memory: {made:,} connections")
    gc.collect()
    after = rss_bytes()
    if core.conn_count() != entries:
        raise SystemExit(f"expected {entries} connections, table has {core.conn_count()}")
    return (after - before) / entries


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and 100k conns for memory")
    ap.add_argument("--reps", type=int, default=0, help="repetitions per figure (median is reported)")
    ap.add_argument("--flow-log", action="store_true", help="with the flow log's counters and capture on")
    args = ap.parse_args(argv)
    global FLOW_LOG
    FLOW_LOG = args.flow_log
    reps = args.reps or (5 if args.quick else 9)
    batches = 20 if args.quick else 100
    entries = 100_000 if args.quick else 1_000_000

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    res: dict[str, float | int] = {}
    for name, method, proto, direction in (
        ("nat_ns_per_pkt", FwdMethod.MASQ, Proto.TCP, "mixed"),
        ("nat_in_ns", FwdMethod.MASQ, Proto.TCP, "in"),
        ("nat_out_ns", FwdMethod.MASQ, Proto.TCP, "out"),
        ("dr_ns_per_pkt", FwdMethod.DROUTE, Proto.TCP, "in"),
        ("udp_nat_ns_per_pkt", FwdMethod.MASQ, Proto.UDP, "in"),
    ):
        progress(f"{name} ...")
        res[name] = round(bench_established(method, proto, direction, reps, batches), 1)
    for name, method in (("ring_dr_ns_per_pkt", FwdMethod.DROUTE), ("ring_nat_ns_per_pkt", FwdMethod.MASQ)):
        progress(f"{name} ...")
        res[name] = round(bench_ring(method, reps, batches), 1)
    progress("new_conn_ns ...")
    res["new_conn_ns"] = round(bench_new_conn(reps, 5 if args.quick else 20), 1)
    progress("new_conn_full_ns ...")
    res["new_conn_full_ns"] = round(bench_new_conn_full(reps, 5 if args.quick else 20), 1)
    progress("synack_ns, handshake_ack_ns ...")
    sa, ack = bench_handshake(reps, 2 if args.quick else 5)
    res["synack_ns"], res["handshake_ack_ns"] = round(sa, 1), round(ack, 1)
    progress(f"conn_bytes_per_entry ({entries:,} connections) ...")
    res["conn_bytes_per_entry"] = round(bench_memory(entries, progress), 1)
    progress(f"conn_bytes_per_entry_dr ({entries:,} connections) ...")
    res["conn_bytes_per_entry_dr"] = round(bench_memory(entries, progress, FwdMethod.DROUTE), 1)
    res["conn_entries_measured"] = entries
    res["reps"] = reps
    res["flow_log"] = FLOW_LOG
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(f"{k:24} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
