"""PING_CHECK: one ICMP echo request; up when the matching echo reply arrives (keepalived
check_ping.c; RFC 792).

The unprivileged ICMP datagram socket is used when the kernel allows it (``ping_group_range``),
the kernel then owns the identifier and filters replies by it; otherwise a raw ICMP socket
(root), where the reply is matched on source address, identifier and sequence number here.
Each probe uses the next sequence number.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import socket
import struct

from ulvs.config.schema import CheckSpec
from ulvs.health.base import Checker, Result, Target, register
from ulvs.health.checkers._io import Failed, bounded

ECHO_REPLY, ECHO_REQUEST = 0, 8
ICMP_ECHO = struct.Struct("!BBHHH")     # type, code, checksum, identifier, sequence (RFC 792)
PAYLOAD = bytes(range(56))              # ping(8)'s default data size
MAX_PACKET = 2048


def inet_checksum(data: bytes) -> int:
    """RFC 1071 ones' complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    header = ICMP_ECHO.pack(ECHO_REQUEST, 0, 0, ident, seq)
    csum = inet_checksum(header + PAYLOAD)
    return ICMP_ECHO.pack(ECHO_REQUEST, 0, csum, ident, seq) + PAYLOAD


def open_icmp_socket() -> tuple[socket.socket, bool]:
    """(socket, is_raw): the datagram ICMP socket if permitted, else a raw one."""
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP), False
    except OSError as dgram_error:
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), True
        except OSError as raw_error:
            raise Failed(f"cannot open an ICMP socket (datagram: {dgram_error.strerror}; "
                         f"raw: {raw_error.strerror})") from None


def is_reply(packet: bytes, raw: bool, host: str, ident: int, seq: int) -> bool:
    """Our echo reply?  Raw sockets see the IP header and every ICMP packet of the host."""
    if raw:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return False
        if socket.inet_ntoa(packet[12:16]) != host:
            return False
        packet = packet[(packet[0] & 0x0F) * 4:]
    if len(packet) < ICMP_ECHO.size:
        return False
    kind, code, _, rid, rseq = ICMP_ECHO.unpack_from(packet)
    return kind == ECHO_REPLY and code == 0 and rseq == seq and (rid == ident or not raw)


class PingCheck(Checker):
    def __init__(self, spec: CheckSpec, target: Target) -> None:
        super().__init__(spec, target)
        self.ident = secrets.randbelow(1 << 16)
        self._seq = itertools.count(secrets.randbelow(1 << 16))

    async def probe(self) -> Result:
        return await bounded(self._ping, self.connect_timeout, f"ICMP echo to {self.target.host}")

    async def _ping(self) -> Result:
        loop = asyncio.get_running_loop()
        seq = next(self._seq) & 0xFFFF
        sock, raw = open_icmp_socket()
        with sock:
            _prepare(sock, self.target)
            await loop.sock_sendall(sock, echo_request(self.ident, seq))
            while not is_reply(await loop.sock_recv(sock, MAX_PACKET), raw, self.target.host,
                               self.ident, seq):
                pass
        return Result(True, f"echo reply from {self.target.host} (seq {seq})")


def _prepare(sock: socket.socket, target: Target) -> None:
    sock.setblocking(False)
    if target.bindto is not None:
        sock.bind((str(target.bindto), 0))
    sock.connect((target.host, 0))


register("PING_CHECK", PingCheck)
