"""bench/bench_core.py: the ring loop figure (its in-memory ports carry every frame from the
receive block through the core into the transmit ring, rewritten, and can be reset) and the
connection figures (they run, and check their own setup)."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import bench_core  # noqa: E402

from ulvs.core import FwdMethod, Proto  # noqa: E402
from ulvs.io.afpacket import TX_DATA, VNET_LEN  # noqa: E402
from ulvs.packet import builder  # noqa: E402


def test_every_frame_reaches_the_transmit_ring_rewritten_and_reset_restores_the_block() -> None:
    core = bench_core.make_core(FwdMethod.DROUTE)
    flows = bench_core.establish(core, 8, Proto.TCP)
    frames = [builder.tcp_frame(bench_core.CMAC, bench_core.DMAC, c, bench_core.VIP, p, 80, 0x10, b"x")
              for c, p, _d in flows]
    rx, out, reset = bench_core.ring_ports(frames)
    for _ in range(2):
        reset()
        for b in rx.batches():
            assert b.count == len(frames) and b.ifins == [1] * len(frames)
            core.process_batch(b.bufs, b.offs, b.lens, b.ifins, b.count, 1.0, b.partial)
            for port in (rx, out):
                port.transmit_forwarded(b, core.verdicts, core.egress, b.count)
                port.flush()
        assert list(rx.batches()) == []                                 # the block was given back
        size = out.cfg.tx_slot_size
        txm = out.txmap
        assert txm is not None
        dest_macs = {bytes.fromhex(f"0200000002{i + 16:02x}") for i in range(8)}   # make_core's
        for k, f in enumerate(frames):
            status, length = struct.unpack_from("=II", txm, k * size)
            sent = bytes(txm[k * size + TX_DATA + VNET_LEN:k * size + TX_DATA + length])
            assert status == 1 and length == VNET_LEN + len(f)          # SEND_REQUEST
            # direct routing: new MACs (a dest's, the director's), the IP packet untouched
            assert sent[:6] in dest_macs and sent[6:12] == builder.mac(bench_core.LMAC)
            assert sent[12:] == f[12:]
        assert out.tx_ring_frames == len(frames) * (_ + 1) and rx.tx_ring_frames == 0


def test_the_figure_runs_and_counts_every_frame() -> None:
    assert bench_core.bench_ring(FwdMethod.MASQ, reps=1, batches=2) > 0


def test_the_connection_figures_run_and_check_their_setup() -> None:
    # Each raises SystemExit when its frames did not do what the figure claims (all forwarded,
    # the table full, every handshake ESTABLISHED).
    assert bench_core.bench_new_conn_full(reps=1, batches=1) > 0
    synack, ack = bench_core.bench_handshake(reps=1, batches=1)
    assert synack > 0 and ack > 0
