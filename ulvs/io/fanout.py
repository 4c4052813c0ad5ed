"""Spreading one interface's traffic over several dataplane workers (PACKET_FANOUT).

Each worker has its own connection table, so both directions of a connection must reach the
same worker. A NAT reply (daddr:dport → caddr:cport) is a different 5-tuple from the request
(caddr:cport → vaddr:vport), so the kernel's symmetric flow hash does not do this: the
*reply-steering problem*, REFERENCE (e). The classic-BPF fanout program built here keys every
IPv4 frame on its **client endpoint**:

* a frame whose source address is a masq dest is a reply, and its client is the destination;
* any other frame comes from the client, which is the source.

The program returns ``client address XOR client port``, and the kernel takes it modulo the
number of sockets in the group. Non-IPv4 frames (ARP...) go to worker 0. Fragments and ICMP
errors are keyed on their outer header and may reach a worker that has no connection for them.
Only those frames are affected.

An ``auto`` ring (``ulvs.io.afpacket``) has two receive sockets on each interface, its TPACKET_V3
ring and its quick socket, and both join the interface's group: each worker joins with its ring
and then its quick socket, so member ``2w`` is worker ``w``'s ring and ``2w + 1`` its quick socket.
The program then ends in a *lane tail*: ``w = key % workers``, and the member is ``2w`` plus
worker ``w``'s bit of ``quick_bits`` (a constant of the program).  A worker that moves its port
from one lane to the other sets its bit and replaces the group's program: the kernel swaps the
program in one store, so every frame goes to exactly one socket, before the swap or after it.
The workers of one daemon keep their bits in a shared file (``LaneShare``), changed under a lock
together with the program, so that no worker's program drops another's bit.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

SOL_PACKET = 263
PACKET_FANOUT = 18
PACKET_FANOUT_DATA = 22
PACKET_FANOUT_CBPF = 6
PACKET_FANOUT_FLAG_ROLLOVER = 0x1000
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000
PACKET_FANOUT_FLAG_IGNORE_OUTGOING = 0x4000

SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0
SKF_NET_OFF = -0x100000

# classic BPF opcodes (linux/filter.h)
LD_H_ABS, LD_W_ABS, LD_H_IND, LD_MEM, LD_IMM = 0x28, 0x20, 0x48, 0x60, 0x00
LDX_B_MSH, LDX_MEM = 0xB1, 0x61
ST = 0x02
JA, JEQ_K = 0x05, 0x15
ALU_XOR_X, ALU_MOD_K, ALU_RSH_X, ALU_AND_K, ALU_LSH_K, ALU_ADD_X = 0xAC, 0x94, 0x7C, 0x54, 0x64, 0x0C
MISC_TAX, MISC_TXA = 0x07, 0x87
RET_K, RET_A = 0x06, 0x16
MAX_LANE_WORKERS = 32      # one bit a worker in the lane tail's constant

Insn = tuple[int, int, int, int]   # code, jt, jf, k


def _key_block(addr_off: int, port_off: int, last: Insn) -> list[Insn]:
    """A = address at net+addr_off XOR port at net+ihl+port_off; then ``last``."""
    return [
        (LD_W_ABS, 0, 0, (SKF_NET_OFF + addr_off) & 0xFFFFFFFF),
        (ST, 0, 0, 0),                                         # M[0] = address
        (LDX_B_MSH, 0, 0, SKF_NET_OFF & 0xFFFFFFFF),           # X = 4 * (IHL)
        (LD_H_IND, 0, 0, (SKF_NET_OFF + port_off) & 0xFFFFFFFF),   # A = port
        (MISC_TAX, 0, 0, 0),                                   # X = port
        (LD_MEM, 0, 0, 0),                                     # A = address
        (ALU_XOR_X, 0, 0, 0),
        last,
    ]


def lane_tail(workers: int, quick_bits: int) -> list[Insn]:
    """A = key: the member ``2 * (key % workers) + bit``, ``bit`` being that worker's bit of
    ``quick_bits`` (1: its quick socket, 0: its ring)."""
    if not 1 <= workers <= MAX_LANE_WORKERS:
        raise ValueError(f"an auto ring's fanout group takes 1 to {MAX_LANE_WORKERS} workers")
    return [
        (ALU_MOD_K, 0, 0, workers),        # A = w
        (MISC_TAX, 0, 0, 0),               # X = w
        (LD_IMM, 0, 0, quick_bits & 0xFFFFFFFF),
        (ALU_RSH_X, 0, 0, 0),
        (ALU_AND_K, 0, 0, 1),              # A = bit w
        (ST, 0, 0, 1),                     # M[1] = bit
        (MISC_TXA, 0, 0, 0),
        (ALU_LSH_K, 0, 0, 1),              # A = 2w
        (LDX_MEM, 0, 0, 1),
        (ALU_ADD_X, 0, 0, 0),              # A = 2w + bit
        (RET_A, 0, 0, 0),
    ]


def client_key_program(masq_addrs: Iterable[bytes], tail: list[Insn] | None = None) -> list[Insn]:
    """The fanout program for the given masq dest addresses (4-byte each): it returns the
    client key (the kernel takes it modulo the members), or, given a ``tail``, runs the tail
    with the key in A (non-IPv4 frames: key 0)."""
    dests = sorted({int.from_bytes(a, "big") for a in masq_addrs})
    n = len(dests)
    if n > 200:
        raise ValueError("too many masq dest addresses for one fanout program (max 200)")
    if tail is None:
        head: list[Insn] = [
            (LD_H_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_PROTOCOL) & 0xFFFFFFFF),   # A = ethertype
            (JEQ_K, 1, 0, 0x0800),
            (RET_K, 0, 0, 0),                                                # not IPv4: key 0
        ]
        from_client = _key_block(12, 0, (RET_A, 0, 0, 0))    # saddr ^ sport
        to_client = _key_block(16, 2, (RET_A, 0, 0, 0))      # daddr ^ dport
    else:
        to_client = _key_block(16, 2, (JA, 0, 0, 0))[:-1]     # falls through into the tail
        from_client = _key_block(12, 0, (JA, 0, 0, len(to_client)))
        head = [
            (LD_H_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_PROTOCOL) & 0xFFFFFFFF),
            (JEQ_K, 2, 0, 0x0800),
            (LD_IMM, 0, 0, 0),                                               # not IPv4: key 0
            (JA, 0, 0, 1 + n + len(from_client) + len(to_client)),           # to the tail
        ]
    head.append((LD_W_ABS, 0, 0, (SKF_NET_OFF + 12) & 0xFFFFFFFF))           # A = saddr
    jumps: list[Insn] = []
    for i, d in enumerate(dests):
        # jump over the remaining comparisons and the from-client block
        jumps.append((JEQ_K, (n - 1 - i) + len(from_client), 0, d))
    return head + jumps + from_client + to_client + (tail or [])


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def join(sock: socket.socket, group: int, unique: bool = False) -> bool:
    """Join fanout group ``group`` (16 bits) in CBPF mode; set a program with ``set_program``.
    ``unique``: make a new group with an id the kernel picks (``group`` must be 0; read it with
    ``group_id``), for other sockets to join by that id.

    A fanout group receives through a hook of its own, and the members' PACKET_IGNORE_OUTGOING
    does not apply to it: without PACKET_FANOUT_FLAG_IGNORE_OUTGOING every frame a worker sends
    comes back to the group as received -- in direct routing (the frame still goes to the VIP)
    it was forwarded again and again, in NAT it cost a lookup.  Returns whether the kernel took
    the flag (Linux 5.19 and later); without it the ring reader skips outgoing frames itself."""
    base = (group & 0xFFFF) | (PACKET_FANOUT_CBPF << 16)
    if unique:
        base |= PACKET_FANOUT_FLAG_UNIQUEID << 16
    try:
        sock.setsockopt(SOL_PACKET, PACKET_FANOUT, base | (PACKET_FANOUT_FLAG_IGNORE_OUTGOING << 16))
        return True
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    sock.setsockopt(SOL_PACKET, PACKET_FANOUT, base)
    return False


def group_id(sock: socket.socket) -> int:
    """The id of the fanout group ``sock`` is in."""
    return sock.getsockopt(SOL_PACKET, PACKET_FANOUT) & 0xFFFF


_libc = ctypes.CDLL(None, use_errno=True)


def set_program(sock: socket.socket, program: list[Insn]) -> None:
    """(Re)place the group's steering program (any member may set it for the whole group).

    The kernel stores the new program at once and then waits out an RCU grace period (frames
    still running the old one on other CPUs) before it returns: measured 8 ms here, up to 16.
    The call goes through ctypes, which lets go of the GIL, so that a ``LaneGroup`` can wait in
    a thread of its own while the worker forwards."""
    arr = (_SockFilter * len(program))(*[_SockFilter(*i) for i in program])
    fprog = _SockFprog(len(program), ctypes.cast(arr, ctypes.POINTER(_SockFilter)))
    if _libc.setsockopt(sock.fileno(), SOL_PACKET, PACKET_FANOUT_DATA, ctypes.byref(fprog),
                        ctypes.sizeof(fprog)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"PACKET_FANOUT_DATA: {os.strerror(err)}")


class LaneShare:
    """The lane bits of every auto ring of one daemon (``quick_bits`` of each interface's group,
    one 32-bit word an interface), in a file the workers share, or in memory for a daemon with
    one worker.  ``locked`` holds a POSIX record lock on the file: between processes a read,
    change and program swap are then one step."""

    def __init__(self, slots: int, fd: int | None = None) -> None:
        self.fd = fd
        self._mem = [0] * slots
        if fd is not None and os.fstat(fd).st_size < 4 * slots:
            os.ftruncate(fd, 4 * slots)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        if self.fd is None:
            yield
            return
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def get(self, slot: int) -> int:
        if self.fd is None:
            return self._mem[slot]
        return int.from_bytes(os.pread(self.fd, 4, 4 * slot), "little")

    def put(self, slot: int, bits: int) -> None:
        if self.fd is None:
            self._mem[slot] = bits
        else:
            os.pwrite(self.fd, bits.to_bytes(4, "little"), 4 * slot)


@dataclass(frozen=True)
class LaneSeat:
    """Where one worker's auto ring sits: ``index`` of ``workers`` workers, its interface's
    word ``slot`` in ``share``."""

    workers: int = 1
    index: int = 0
    share: LaneShare = field(default_factory=lambda: LaneShare(1))
    slot: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.workers <= MAX_LANE_WORKERS:
            raise ValueError(f"an auto ring's fanout group takes 1 to {MAX_LANE_WORKERS} workers")


class LaneGroup:
    """The fanout group of an auto ring's interface: each worker's ring (member ``2w``) and
    quick socket (``2w + 1``), and one program choosing between them; ``sock`` is a member."""

    def __init__(self, sock: socket.socket, seat: LaneSeat, background: bool = False) -> None:
        """``background``: make moves in a thread of this group's (``set_program`` waits)."""
        self.sock = sock
        self.seat = seat
        self.masq: list[bytes] = []
        self.failed = 0         # moves the kernel refused (the port stays where it was)
        # Whether the quick socket can still be handed frames (``quick_closed``): moves asked
        # for (by the reader's thread), moves over (by the mover's), and where the last program
        # the kernel took steers this worker's frames (set before ``done`` is counted).
        self.requested = 0
        self.done = 0
        self.quick_on = False
        # POSIX record locks belong to the process: this one keeps the mover thread and a masq
        # change on the worker's own thread apart.
        self._lock = threading.Lock()
        self._mover = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lanes")
                       if background else None)

    def program(self, quick_bits: int) -> list[Insn]:
        if self.seat.workers == 1:
            return [(RET_K, 0, 0, quick_bits & 1)]
        return client_key_program(self.masq, tail=lane_tail(self.seat.workers, quick_bits))

    def set_masq(self, masq: Iterable[bytes]) -> None:
        """New masq dest addresses (the reply direction's steering); the lanes stay."""
        self.masq = sorted(masq)
        self._apply(None)

    def set_quick(self, quick: bool) -> None:
        """Move this worker's share of the interface to its quick socket (or its ring): one
        program swap, which the kernel makes in one store.  In the background the reader goes
        on meanwhile: it reads both lanes around a move (``PacketRing._auto_batches``)."""
        self.requested += 1
        if self._mover is None:
            self._move(quick)
        else:
            self._mover.submit(self._move, quick)

    def quick_closed(self) -> bool:
        """True when the kernel hands the quick socket nothing more: every move asked for is
        over and the program it left steers to the ring.  (The swap returns only after a grace
        period, so no CPU still runs an older program: what it steered is queued by then.)"""
        return self.done == self.requested and not self.quick_on

    def _move(self, quick: bool) -> None:
        try:
            self._apply(quick)
        except OSError:
            self.failed += 1
        finally:
            self.done += 1

    def close(self) -> None:
        """Wait for a move under way (before the sockets close)."""
        if self._mover is not None:
            self._mover.shutdown(wait=True)

    def _apply(self, quick: bool | None) -> None:
        seat = self.seat
        bit = 1 << seat.index
        with self._lock, seat.share.locked():
            bits = seat.share.get(seat.slot)
            if quick is not None:
                bits = bits | bit if quick else bits & ~bit
                seat.share.put(seat.slot, bits)
            set_program(self.sock, self.program(bits))
            self.quick_on = bool(bits & bit)
