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
"""

from __future__ import annotations

import ctypes
import errno
import socket
from collections.abc import Iterable

SOL_PACKET = 263
PACKET_FANOUT = 18
PACKET_FANOUT_DATA = 22
PACKET_FANOUT_CBPF = 6
PACKET_FANOUT_FLAG_ROLLOVER = 0x1000
PACKET_FANOUT_FLAG_IGNORE_OUTGOING = 0x4000

SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0
SKF_NET_OFF = -0x100000

# classic BPF opcodes (linux/filter.h)
LD_H_ABS, LD_W_ABS, LD_H_IND, LD_MEM = 0x28, 0x20, 0x48, 0x60
LDX_B_MSH = 0xB1
ST = 0x02
JEQ_K = 0x15
ALU_XOR_X = 0xAC
MISC_TAX = 0x07
RET_K, RET_A = 0x06, 0x16

Insn = tuple[int, int, int, int]   # code, jt, jf, k


def _key_block(addr_off: int, port_off: int) -> list[Insn]:
    """A = address at net+addr_off XOR port at net+ihl+port_off; return A."""
    return [
        (LD_W_ABS, 0, 0, (SKF_NET_OFF + addr_off) & 0xFFFFFFFF),
        (ST, 0, 0, 0),                                         # M[0] = address
        (LDX_B_MSH, 0, 0, SKF_NET_OFF & 0xFFFFFFFF),           # X = 4 * (IHL)
        (LD_H_IND, 0, 0, (SKF_NET_OFF + port_off) & 0xFFFFFFFF),   # A = port
        (MISC_TAX, 0, 0, 0),                                   # X = port
        (LD_MEM, 0, 0, 0),                                     # A = address
        (ALU_XOR_X, 0, 0, 0),
        (RET_A, 0, 0, 0),
    ]


def client_key_program(masq_addrs: Iterable[bytes]) -> list[Insn]:
    """The fanout program for the given masq dest addresses (4-byte each)."""
    dests = sorted({int.from_bytes(a, "big") for a in masq_addrs})
    head: list[Insn] = [
        (LD_H_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_PROTOCOL) & 0xFFFFFFFF),   # A = ethertype
        (JEQ_K, 1, 0, 0x0800),
        (RET_K, 0, 0, 0),                                                # not IPv4: worker 0
        (LD_W_ABS, 0, 0, (SKF_NET_OFF + 12) & 0xFFFFFFFF),               # A = saddr
    ]
    from_client = _key_block(12, 0)    # saddr ^ sport
    to_client = _key_block(16, 2)      # daddr ^ dport
    n = len(dests)
    if n > 200:
        raise ValueError("too many masq dest addresses for one fanout program (max 200)")
    jumps: list[Insn] = []
    for i, d in enumerate(dests):
        # jump over the remaining comparisons and the from-client block
        jumps.append((JEQ_K, (n - 1 - i) + len(from_client), 0, d))
    return head + jumps + from_client + to_client


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def join(sock: socket.socket, group: int) -> bool:
    """Join fanout group ``group`` (16 bits) in CBPF mode; set a program with ``set_program``.

    A fanout group receives through a hook of its own, and the members' PACKET_IGNORE_OUTGOING
    does not apply to it: without PACKET_FANOUT_FLAG_IGNORE_OUTGOING every frame a worker sends
    comes back to the group as received -- in direct routing (the frame still goes to the VIP)
    it was forwarded again and again, in NAT it cost a lookup.  Returns whether the kernel took
    the flag (Linux 5.19 and later); without it the ring reader skips outgoing frames itself."""
    base = (group & 0xFFFF) | (PACKET_FANOUT_CBPF << 16)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_FANOUT, base | (PACKET_FANOUT_FLAG_IGNORE_OUTGOING << 16))
        return True
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    sock.setsockopt(SOL_PACKET, PACKET_FANOUT, base)
    return False


def set_program(sock: socket.socket, program: list[Insn]) -> None:
    """(Re)place the group's steering program (any member may set it for the whole group)."""
    arr = (_SockFilter * len(program))(*[_SockFilter(*i) for i in program])
    fprog = _SockFprog(len(program), ctypes.cast(arr, ctypes.POINTER(_SockFilter)))
    sock.setsockopt(SOL_PACKET, PACKET_FANOUT_DATA, bytes(memoryview(fprog)))
