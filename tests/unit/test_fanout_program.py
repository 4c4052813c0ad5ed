"""The fanout steering programs, run by a small classic-BPF interpreter over real frames.

Without a lane tail the program returns the client key (both directions of a NAT connection
give the same key).  With one it returns the member: ``2w`` (worker ``w``'s ring) or ``2w + 1``
(its quick socket), ``w = key % workers``, by worker ``w``'s bit of the lane bits.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ulvs.io import fanout
from ulvs.io.fanout import (
    SKF_AD_OFF,
    SKF_NET_OFF,
    Insn,
    LaneGroup,
    LaneSeat,
    LaneShare,
    client_key_program,
    lane_tail,
)

MASQ = [socket.inet_aton("10.77.1.11"), socket.inet_aton("10.77.1.12")]
CLIENT, VIP, DEST = "10.77.0.2", "10.77.0.100", "10.77.1.12"


def run(prog: list[Insn], ethertype: int, net: bytes) -> int:
    """Interpret ``prog`` over a frame whose network header is ``net``."""
    a = x = 0
    mem = [0] * 16
    pc = 0

    def load(off: int, size: int) -> int:
        off = off - (1 << 32) if off >= 1 << 31 else off
        if off == SKF_AD_OFF:
            return ethertype
        assert off >= SKF_NET_OFF, off
        pos = off - SKF_NET_OFF
        return int.from_bytes(net[pos:pos + size], "big")

    for _ in range(1000):
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == fanout.LD_W_ABS:
            a = load(k, 4)
        elif code == fanout.LD_H_ABS:
            a = load(k, 2)
        elif code == fanout.LD_H_IND:
            a = load((k + x) & 0xFFFFFFFF, 2)
        elif code == fanout.LDX_B_MSH:
            x = (load(k, 1) & 0xF) * 4
        elif code == fanout.LD_IMM:
            a = k
        elif code == fanout.LD_MEM:
            a = mem[k]
        elif code == fanout.LDX_MEM:
            x = mem[k]
        elif code == fanout.ST:
            mem[k] = a
        elif code == fanout.MISC_TAX:
            x = a
        elif code == fanout.MISC_TXA:
            a = x
        elif code == fanout.ALU_XOR_X:
            a ^= x
        elif code == fanout.ALU_MOD_K:
            a %= k
        elif code == fanout.ALU_RSH_X:
            a >>= x
        elif code == fanout.ALU_AND_K:
            a &= k
        elif code == fanout.ALU_LSH_K:
            a = (a << k) & 0xFFFFFFFF
        elif code == fanout.ALU_ADD_X:
            a = (a + x) & 0xFFFFFFFF
        elif code == fanout.JA:
            pc += k
        elif code == fanout.JEQ_K:
            pc += jt if a == k else jf
        elif code == fanout.RET_K:
            return k
        elif code == fanout.RET_A:
            return a
        else:
            raise AssertionError(f"opcode {code:#x} not interpreted")
    raise AssertionError("the program did not return")


def ipv4(src: str, sport: int, dst: str, dport: int, options: int = 0) -> bytes:
    ihl = 5 + options
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 40, 0, 0, 64, 6, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + bytes(4 * options)
    return head + struct.pack("!HH", sport, dport) + bytes(16)


def key(addr: str, port: int) -> int:
    return int.from_bytes(socket.inet_aton(addr), "big") ^ port


@given(st.integers(1024, 65535), st.integers(0, 2))
def test_both_directions_of_a_nat_connection_give_the_clients_key(cport: int, options: int) -> None:
    prog = client_key_program(MASQ)
    out = run(prog, 0x0800, ipv4(CLIENT, cport, VIP, 80, options))
    back = run(prog, 0x0800, ipv4(DEST, 8080, CLIENT, cport, options))
    assert out == back == key(CLIENT, cport)


@given(st.integers(1024, 65535), st.integers(1, 8), st.integers(0, 0xFF), st.integers(0, 2))
def test_the_lane_tail_picks_the_owners_ring_or_quick_socket(cport: int, workers: int, bits: int,
                                                             options: int) -> None:
    prog = client_key_program(MASQ, tail=lane_tail(workers, bits))
    w = key(CLIENT, cport) % workers
    want = 2 * w + (bits >> w & 1)
    assert run(prog, 0x0800, ipv4(CLIENT, cport, VIP, 80, options)) == want
    assert run(prog, 0x0800, ipv4(DEST, 8080, CLIENT, cport, options)) == want


@pytest.mark.parametrize("masq", [[], MASQ, [socket.inet_aton(f"10.77.2.{i}") for i in range(1, 40)]])
def test_frames_that_are_not_ipv4_go_to_worker_0s_chosen_lane(masq: list[bytes]) -> None:
    for bits, want in ((0, 0), (1, 1), (0b10, 0)):
        prog = client_key_program(masq, tail=lane_tail(3, bits))
        assert run(prog, 0x0806, b"") == want
    assert run(client_key_program(masq), 0x0806, b"") == 0


def test_a_reply_from_a_dest_that_is_not_masq_is_keyed_on_its_source() -> None:
    prog = client_key_program(MASQ, tail=lane_tail(4, 0))
    assert run(prog, 0x0800, ipv4("10.77.1.99", 8080, CLIENT, 5000)) == 2 * (key("10.77.1.99", 8080) % 4)


def test_the_tail_takes_at_most_32_workers() -> None:
    lane_tail(32, 0)
    with pytest.raises(ValueError):
        lane_tail(33, 0)
    with pytest.raises(ValueError):
        LaneSeat(workers=33, index=0)
    with pytest.raises(ValueError):
        LaneSeat(workers=2, index=2)


def test_a_lane_group_keeps_the_other_workers_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers share an interface's word: each move sets its own bit only, and every
    program carries both (the file is what a daemon's workers share)."""
    import tempfile

    got: list[tuple[object, list[Insn]]] = []
    monkeypatch.setattr(fanout, "set_program", lambda sock, prog: got.append((sock, prog)))
    with tempfile.TemporaryFile() as f:
        share0, share1 = LaneShare(2, f.fileno()), LaneShare(2, f.fileno())
        g0 = LaneGroup("s0", LaneSeat(2, 0, share0, 1))        # type: ignore[arg-type]
        g1 = LaneGroup("s1", LaneSeat(2, 1, share1, 1))        # type: ignore[arg-type]
        g0.set_masq(MASQ)
        g1.set_masq(MASQ)
        g0.set_quick(True)
        assert share1.get(1) == 0b01 and share1.get(0) == 0
        g1.set_quick(True)
        assert share0.get(1) == 0b11
        g0.set_quick(False)
        assert share1.get(1) == 0b10
        assert got[-1] == ("s0", client_key_program(MASQ, tail=lane_tail(2, 0b10)))
        g1.set_masq(MASQ[:1])                                   # a masq change keeps the lanes
        assert got[-1] == ("s1", client_key_program(MASQ[:1], tail=lane_tail(2, 0b10)))


def test_one_worker_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[list[Insn]] = []
    monkeypatch.setattr(fanout, "set_program", lambda sock, prog: got.append(prog))
    g = LaneGroup("s", LaneSeat())                             # type: ignore[arg-type]
    g.set_quick(True)
    g.set_quick(False)
    assert [run(p, 0x0800, ipv4(CLIENT, 1, VIP, 80)) for p in got] == [1, 0]


def test_moves_in_the_background_keep_their_order_and_count_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[int] = []

    def swap(sock: object, prog: list[Insn]) -> None:
        if sock == "refuses":
            raise OSError(22, "Invalid argument")
        got.append(run(prog, 0x0800, ipv4(CLIENT, 1, VIP, 80)))

    monkeypatch.setattr(fanout, "set_program", swap)
    g = LaneGroup("s", LaneSeat(), background=True)             # type: ignore[arg-type]
    for quick in (True, False, True, True, False):
        g.set_quick(quick)
    g.close()
    assert got == [1, 0, 1, 1, 0] and g.failed == 0
    bad = LaneGroup("refuses", LaneSeat(), background=True)     # type: ignore[arg-type]
    bad.set_quick(True)
    bad.close()
    assert bad.failed == 1


def test_a_masq_change_and_a_move_in_the_background_do_not_drop_each_others_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The record lock does not keep two threads of one process apart; the group's own lock
    does.  Without it: the mover reads the bits and is slow to write them back, the worker's
    thread reads the old bits for a masq change, and its program, set last, drops the move."""
    import threading
    import time

    got: list[list[Insn]] = []
    entered = threading.Event()
    main = threading.current_thread()

    def swap(sock: object, prog: list[Insn]) -> None:
        if threading.current_thread() is main:
            time.sleep(0.1)         # the kernel's grace period, as it were
        got.append(prog)

    share = LaneShare(1)
    slow_put = share.put

    def put(slot: int, bits: int) -> None:
        entered.set()
        time.sleep(0.05)
        slow_put(slot, bits)

    monkeypatch.setattr(fanout, "set_program", swap)
    monkeypatch.setattr(share, "put", put)
    g = LaneGroup("s", LaneSeat(workers=2, index=0, share=share), background=True)  # type: ignore[arg-type]
    g.set_quick(True)
    assert entered.wait(5)
    g.set_masq(MASQ)
    g.close()
    assert got[-1] == client_key_program(MASQ, tail=lane_tail(2, 0b01))


def test_the_quick_socket_is_closed_only_once_a_swap_to_the_ring_is_over(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``quick_closed`` tells the reader when the kernel can hand the quick socket nothing more:
    not while a move is under way, not after a move to it, and not after a refused move away."""
    release = threading.Event()
    state = {"refuse": False}

    def swap(sock: object, prog: list[Insn]) -> None:
        release.wait(10)
        if state["refuse"]:
            raise OSError(22, "Invalid argument")

    monkeypatch.setattr(fanout, "set_program", swap)
    g = LaneGroup("s", LaneSeat(), background=True)             # type: ignore[arg-type]
    assert g.quick_closed()                                      # a new group: the ring (member 0)
    g.set_quick(True)
    assert not g.quick_closed()
    release.set()
    g.close()
    assert not g.quick_closed()                                  # on the quick socket
    release.clear()
    g = LaneGroup("s", LaneSeat(), background=True)             # type: ignore[arg-type]
    g.set_quick(True)
    g.set_quick(False)
    release.set()
    g.close()
    assert g.quick_closed() and (g.requested, g.done) == (2, 2)
    g = LaneGroup("s", LaneSeat(), background=True)             # type: ignore[arg-type]
    g.set_quick(True)
    deadline = time.monotonic() + 10
    while g.done < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    state["refuse"] = True
    g.set_quick(False)                                           # refused: still on the quick socket
    g.close()
    assert g.failed == 1 and (g.requested, g.done) == (2, 2) and not g.quick_closed()
